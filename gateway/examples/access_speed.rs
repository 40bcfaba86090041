//! Cost of access control per request: the Cedar policy decision (with its audit entry) plus
//! the rate-limiter admission, over a config of 50 tenants and 12 models under the default
//! policies. Decisions are memoised per (tenant, model, action) after their first Cedar
//! evaluation, whose cost is shown on its own. Prints p50/p99/max in microseconds.
//!
//!     cargo run --release -p rosetta-gateway --example access_speed

use std::sync::Arc;
use std::time::Instant;

use rosetta_gateway::access::Access;
use rosetta_gateway::auth::Principal;
use rosetta_gateway::policy::Action;
use rosetta_gateway::ratelimit::LimitClock;
use rosetta_gateway::tenant::Tenant;

const LICENCES: [&str; 6] = [
    "apache-2.0",
    "llama3.1",
    "cc-by-nc-4.0",
    "llama3.2-vision",
    "qwen",
    "gemma",
];

fn config(audit: &std::path::Path) -> rosetta_config::Config {
    let mut yaml = format!("audit: {{ path: \"{}\" }}\nmodels:\n", audit.display());
    for m in 0..12 {
        yaml += &format!(
            "  - {{ id: model-{m}, path: /nonexistent, licence: {} }}\n",
            LICENCES[m % LICENCES.len()]
        );
    }
    yaml += "tenants:\n";
    for t in 0..50 {
        let region = ["DE", "US", "JP", "FR"][t % 4];
        yaml += &format!(
            "  - id: tenant-{t}\n    keys: [{{ hash: \"sha256:{:064x}\" }}]\n    commercial: {}\n    region: {region}\n    accepted_licences: [llama3.1, gemma]\n    monthly_active_users: {}\n    limits: {{ requests_per_minute: 1000000, tokens_per_minute: 1000000000, max_concurrent: 64 }}\n",
            t + 1,
            t % 2 == 0,
            t * 10_000_000
        );
    }
    rosetta_config::parse_str(&yaml, std::path::Path::new("bench.yaml")).expect("bench config")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(f64::total_cmp);
    println!(
        "{name:<34} p50 {:>6.2} µs   p99 {:>6.2} µs   max {:>7.2} µs   (n = {})",
        percentile(&micros, 0.5),
        percentile(&micros, 0.99),
        micros[micros.len() - 1],
        micros.len()
    );
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(&dir.path().join("audit.jsonl"));
    let clock = LimitClock::monotonic();
    let access = Access::from_config(&config, &clock)?;
    let tenants: Vec<Principal> = config
        .tenants
        .iter()
        .map(|t| Principal {
            tenant: Arc::new(Tenant::new(t, &clock)),
            key_name: None,
        })
        .collect();
    const N: usize = 200_000;
    let mut decide = Vec::with_capacity(N);
    let mut admit = Vec::with_capacity(N);
    let mut total = Vec::with_capacity(N);
    let mut allowed = 0usize;
    for i in 0..N + 10_000 {
        let who = &tenants[i % tenants.len()];
        let model = format!("model-{}", (i / tenants.len()) % 12);
        let t0 = Instant::now();
        let decision = access.decide(who, &model, Action::Invoke, Some("req-bench"));
        let t1 = Instant::now();
        let admission = futures::executor::block_on(access.admit(who, &model, 300));
        let t2 = Instant::now();
        drop(admission);
        if i >= 10_000 {
            // The first 10,000 warm caches and are not counted.
            allowed += decision.allowed as usize;
            decide.push((t1 - t0).as_secs_f64() * 1e6);
            admit.push((t2 - t1).as_secs_f64() * 1e6);
            total.push((t2 - t0).as_secs_f64() * 1e6);
        }
    }
    println!(
        "{N} requests over {} tenants × 12 models; {:.1}% allowed",
        tenants.len(),
        100.0 * allowed as f64 / N as f64
    );
    let mut evaluate = Vec::with_capacity(N / 10);
    for i in 0..N / 10 {
        let who = &tenants[i % tenants.len()];
        let model = format!("model-{}", (i / tenants.len()) % 12);
        let t0 = Instant::now();
        std::hint::black_box(
            access
                .policy
                .evaluate(&who.tenant.id, &model, Action::Invoke),
        );
        evaluate.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    report("Cedar evaluation (first use of a pair)", evaluate);
    report("policy decision + audit entry", decide);
    report("rate-limit admission", admit);
    report("decision + audit + admission", total);
    Ok(())
}
