//! Rosetta's gateway: the OpenAI-compatible HTTP API and everything on the request path in
//! front of the engines (see DESIGN.md): authentication, licence policies, rate limits,
//! language detection, routing and the engine pool.
//! The `rosetta` binary (main.rs) is its command line.

pub mod access;
pub mod api;
pub mod assistant;
pub mod auth;
pub mod drain;
pub mod ids;
pub mod language;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod ratelimit;
pub mod registry;
pub mod reload;
pub mod reply;
pub mod router;
pub mod secrets;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tenant;
