//! Per-tenant rate limits: requests per minute (governor's GCRA, bursts up to the limit),
//! tokens per minute (reserve the worst case, settle to real usage), concurrent requests, and
//! the same per model. An [`Admission`] holds what a running request took and gives back the
//! unused part when it is dropped, however the request ends.

mod clock;
mod shared;
mod token_bucket;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rosetta_config::{Limits, ModelLimits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use clock::LimitClock;
pub use shared::{SharedStore, StoreDown};
pub use token_bucket::{Shortfall, TokenBucket};

use shared::{Scopes, SharedReservation, Verdict};

/// How this process's limits relate to other gateway replicas'.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// Requests and tokens per minute kept in Redis (`ratelimit.backend: redis`).
    pub store: Option<Arc<SharedStore>>,
    /// `ratelimit.gateway_replicas`: local limits and concurrency caps are divided by it.
    pub replicas: u32,
    /// `ratelimit.on_store_error: deny`: refuse while the store is unreachable.
    pub deny_on_store_error: bool,
}

impl Default for Sharing {
    fn default() -> Self {
        Self {
            store: None,
            replicas: 1,
            deny_on_store_error: false,
        }
    }
}

/// One process's share of a limit kept for `replicas` processes.
fn share_of<T: Into<u64> + Copy>(limit: T, replicas: u32) -> u64 {
    limit.into().div_ceil(u64::from(replicas.max(1))).max(1)
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, LimitClock, StateInformationMiddleware>;

/// Requests per minute.
#[derive(Debug)]
struct RequestLimit {
    limit: u32,
    gcra: Gcra,
    clock: LimitClock,
    /// When the window was last read by a take, and what it said: a governor window cannot
    /// be read without taking from it, so other responses' headers start from here.
    last: std::sync::Mutex<Option<(Duration, WindowState)>>,
}

impl RequestLimit {
    fn new(limit: u32, clock: &LimitClock) -> Option<Self> {
        let per_minute = NonZeroU32::new(limit)?;
        let gcra = RateLimiter::direct_with_clock(Quota::per_minute(per_minute), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Some(Self {
            limit,
            gcra,
            clock: clock.clone(),
            last: std::sync::Mutex::new(None),
        })
    }

    fn remember(&self, state: WindowState) {
        let now = self.clock.elapsed();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, state));
    }

    /// The window now, from the last take plus the requests replenished since: exact for
    /// `limit` and `reset`, a lower bound for `remaining` (it may be one higher).
    fn peek(&self) -> WindowState {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        let Some((at, s)) = last else {
            return WindowState {
                limit: self.limit as u64,
                remaining: self.limit as u64,
                reset: Duration::ZERO,
            };
        };
        let since = self.clock.elapsed().saturating_sub(at);
        let back = (since.as_nanos() / self.per_request().as_nanos().max(1)) as u64;
        WindowState {
            limit: s.limit,
            remaining: (s.remaining + back).min(s.limit),
            reset: s.reset.saturating_sub(since),
        }
    }

    /// One cell's replenish time.
    fn per_request(&self) -> Duration {
        Duration::from_secs(60) / self.limit
    }

    /// Takes one request; on success the state after it, else the wait for the next.
    fn take(&self) -> Result<WindowState, (Duration, WindowState)> {
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.limit);
                let state = WindowState {
                    limit: self.limit as u64,
                    remaining: remaining as u64,
                    reset: self.per_request() * (self.limit - remaining),
                };
                self.remember(state);
                Ok(state)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let state = WindowState {
                    limit: self.limit as u64,
                    remaining: 0,
                    reset: wait + self.per_request() * (self.limit - 1),
                };
                self.remember(state);
                Err((wait, state))
            }
        }
    }
}

/// What the `x-ratelimit-*` headers say about one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub limit: u64,
    pub remaining: u64,
    /// Time until the limit is fully replenished.
    pub reset: Duration,
}

/// The header values of a response: the tenant's limits, else the model's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateState {
    pub requests: Option<WindowState>,
    pub tokens: Option<WindowState>,
}

fn token_state(b: &TokenBucket) -> WindowState {
    let (remaining, reset) = b.remaining();
    WindowState {
        limit: b.limit(),
        remaining,
        reset,
    }
}

/// Limits of one scope (a tenant, or a tenant on one model).
#[derive(Debug, Default)]
struct ScopeLimits {
    requests: Option<RequestLimit>,
    tokens: Option<Arc<TokenBucket>>,
}

impl ScopeLimits {
    fn new(rpm: Option<u32>, tpm: Option<u64>, clock: &LimitClock) -> Self {
        Self {
            requests: rpm.and_then(|l| RequestLimit::new(l, clock)),
            tokens: tpm.map(|l| Arc::new(TokenBucket::new(l, clock.clone()))),
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Over requests per minute; retry after the wait.
    Requests {
        limit: u64,
        model: Option<String>,
        wait: Duration,
        state: RateState,
    },
    /// Over tokens per minute; retry after the wait.
    Tokens {
        limit: u64,
        requested: u64,
        model: Option<String>,
        wait: Duration,
        state: RateState,
    },
    /// The request alone needs more tokens than the per-minute limit.
    TooLarge {
        limit: u64,
        requested: u64,
        model: Option<String>,
    },
    /// Too many of the tenant's requests are running.
    Concurrency { limit: u64, state: RateState },
    /// The shared store cannot be reached and `on_store_error` is `deny`.
    StoreUnavailable,
}

/// One tenant's limiters.
#[derive(Debug)]
pub struct TenantLimiter {
    tenant: ScopeLimits,
    models: HashMap<String, ScopeLimits>,
    concurrency: Option<(u32, Arc<Semaphore>)>,
    /// Limits kept in Redis (the local ones above are then the fallback).
    shared: Option<SharedLimits>,
}

/// A tenant's limits as kept in the shared store: full limits, not this process's share.
#[derive(Debug)]
struct SharedLimits {
    store: Arc<SharedStore>,
    tenant: String,
    requests: Option<u64>,
    tokens: Option<u64>,
    models: HashMap<String, (Option<u64>, Option<u64>)>,
    deny: bool,
    /// The state the store last reported, for the headers of other responses.
    last: std::sync::Mutex<Option<RateState>>,
}

impl SharedLimits {
    /// The keys and limits of a request to `model`: the tenant's scope first.
    fn scopes(&self, model: &str) -> Scopes {
        let mut s = Scopes::default();
        let model_limits = self.models.get(model).copied().unwrap_or((None, None));
        for (m, (rpm, tpm)) in [
            (None, (self.requests, self.tokens)),
            (Some(model), model_limits),
        ] {
            if let Some(l) = rpm {
                s.requests
                    .push((self.store.key(&self.tenant, m, "requests"), l));
                s.request_models.push(m.map(str::to_string));
            }
            if let Some(l) = tpm {
                s.tokens
                    .push((self.store.key(&self.tenant, m, "tokens"), l));
                s.token_models.push(m.map(str::to_string));
            }
        }
        s
    }

    fn rejection(&self, verdict: Verdict, scopes: &Scopes, tokens: u64) -> Rejection {
        let request_scope = |i: usize| {
            (
                scopes.requests.get(i).map_or(0, |r| r.1),
                scopes.request_models.get(i).cloned().flatten(),
            )
        };
        let token_scope = |i: usize| {
            (
                scopes.tokens.get(i).map_or(0, |r| r.1),
                scopes.token_models.get(i).cloned().flatten(),
            )
        };
        match verdict {
            Verdict::Admitted(_) => Rejection::StoreUnavailable,
            Verdict::OverRequests { scope, wait, state } => {
                let (limit, model) = request_scope(scope);
                Rejection::Requests {
                    limit,
                    model,
                    wait,
                    state,
                }
            }
            Verdict::TooLarge { scope } => {
                let (limit, model) = token_scope(scope);
                Rejection::TooLarge {
                    limit,
                    requested: tokens,
                    model,
                }
            }
            Verdict::OverTokens { scope, wait, state } => {
                let (limit, model) = token_scope(scope);
                Rejection::Tokens {
                    limit,
                    requested: tokens,
                    model,
                    wait,
                    state,
                }
            }
        }
    }
}

impl TenantLimiter {
    pub fn new(limits: &Limits, clock: &LimitClock) -> Self {
        Self::shared("", limits, clock, &Sharing::default())
    }

    /// Limits of tenant `id`, kept as `sharing` says: local limits (all of them, or the
    /// fallback of a shared store) and concurrency caps are this process's share.
    pub fn shared(id: &str, limits: &Limits, clock: &LimitClock, sharing: &Sharing) -> Self {
        let n = sharing.replicas;
        let rpm = |l: Option<u32>| l.map(|l| u32::try_from(share_of(l, n)).unwrap_or(u32::MAX));
        let tpm = |l: Option<u64>| l.map(|l| share_of(l, n));
        let models = limits
            .models
            .iter()
            .map(|(id, l): (&String, &ModelLimits)| {
                (
                    id.clone(),
                    ScopeLimits::new(rpm(l.requests_per_minute), tpm(l.tokens_per_minute), clock),
                )
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let shared = sharing.store.as_ref().map(|store| SharedLimits {
            store: store.clone(),
            tenant: id.to_string(),
            requests: limits.requests_per_minute.map(u64::from),
            tokens: limits.tokens_per_minute,
            models: limits
                .models
                .iter()
                .map(|(m, l)| {
                    (
                        m.clone(),
                        (l.requests_per_minute.map(u64::from), l.tokens_per_minute),
                    )
                })
                .filter(|(_, l)| l.0.is_some() || l.1.is_some())
                .collect(),
            deny: sharing.deny_on_store_error,
            last: std::sync::Mutex::new(None),
        });
        Self {
            tenant: ScopeLimits::new(
                rpm(limits.requests_per_minute),
                tpm(limits.tokens_per_minute),
                clock,
            ),
            models,
            concurrency: limits.max_concurrent.map(|n_max| {
                let share = share_of(n_max, n) as u32;
                (share, Arc::new(Semaphore::new(share as usize)))
            }),
            shared,
        }
    }

    /// No limits at all: admission is free.
    pub fn is_unlimited(&self) -> bool {
        self.tenant.is_empty() && self.models.is_empty() && self.concurrency.is_none()
    }

    /// The header values now, without taking anything: the tenant's limits, else the
    /// model's (with a shared store: as it last reported them).
    pub fn peek(&self, model: &str) -> RateState {
        if let Some(last) = self
            .shared
            .as_ref()
            .and_then(|s| *s.last.lock().unwrap_or_else(|p| p.into_inner()))
        {
            return last;
        }
        self.peek_local(model)
    }

    fn peek_local(&self, model: &str) -> RateState {
        let model = self.models.get(model);
        let tokens = self
            .tenant
            .tokens
            .as_deref()
            .or_else(|| model.and_then(|m| m.tokens.as_deref()));
        let requests = self
            .tenant
            .requests
            .as_ref()
            .or_else(|| model.and_then(|m| m.requests.as_ref()));
        RateState {
            requests: requests.map(RequestLimit::peek),
            tokens: tokens.map(token_state),
        }
    }

    /// Admits a request to `model` that may use up to `tokens` tokens, or says why not.
    /// Order: concurrency, then requests (tenant, model), then tokens (tenant, model); a
    /// request refused for tokens has still used a request of the minute, as at OpenAI.
    /// Refuses, without taking anything, a request that admission would surely refuse now
    /// (no request, token or concurrency left): so that a refused tenant cannot make the
    /// server render and tokenize its prompts first.
    pub async fn precheck(&self, model: &str) -> Result<(), Rejection> {
        if let Some((limit, sem)) = &self.concurrency {
            if sem.available_permits() == 0 {
                return Err(Rejection::Concurrency {
                    limit: *limit as u64,
                    state: self.peek(model),
                });
            }
        }
        if let Some(shared) = &self.shared {
            let scopes = shared.scopes(model);
            match shared.store.peek(&scopes).await {
                Ok(None) => return Ok(()),
                Ok(Some((tokens, scope, wait))) => {
                    let state = self.peek(model);
                    let verdict = if tokens {
                        Verdict::OverTokens { scope, wait, state }
                    } else {
                        Verdict::OverRequests { scope, wait, state }
                    };
                    return Err(shared.rejection(verdict, &scopes, 1));
                }
                Err(_) if shared.deny => return Err(Rejection::StoreUnavailable),
                // Judged locally until the store is back.
                Err(_) => {}
            }
        }
        self.precheck_local(model)
    }

    fn precheck_local(&self, model: &str) -> Result<(), Rejection> {
        let model_limits = self.models.get(model);
        let scopes = [(Some(&self.tenant), None), (model_limits, Some(model))];
        for (scope, model_name) in scopes {
            let Some(scope) = scope else { continue };
            if let Some(req) = &scope.requests {
                let window = req.peek();
                if window.remaining == 0 {
                    return Err(Rejection::Requests {
                        limit: req.limit as u64,
                        model: model_name.map(str::to_string),
                        wait: req.per_request(),
                        state: self.peek(model),
                    });
                }
            }
            if let Some(bucket) = &scope.tokens {
                let (remaining, reset) = bucket.remaining();
                if remaining == 0 {
                    return Err(Rejection::Tokens {
                        limit: bucket.limit(),
                        requested: 1,
                        model: model_name.map(str::to_string),
                        wait: reset.min(Duration::from_secs(60)),
                        state: self.peek(model),
                    });
                }
            }
        }
        Ok(())
    }

    pub async fn admit(&self, model: &str, tokens: u64) -> Result<Admission, Rejection> {
        let permit = match &self.concurrency {
            None => None,
            Some((limit, sem)) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(Rejection::Concurrency {
                        limit: *limit as u64,
                        state: self.peek(model),
                    })
                }
            },
        };
        if let Some(shared) = &self.shared {
            let scopes = shared.scopes(model);
            match shared.store.admit(&scopes, tokens).await {
                Ok(Verdict::Admitted(state)) => {
                    *shared.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
                    return Ok(Admission {
                        reserved: tokens,
                        used: AtomicU64::new(0),
                        buckets: Vec::new(),
                        shared: Some(SharedReservation {
                            store: shared.store.clone(),
                            keys: scopes.tokens,
                        }),
                        _permit: permit,
                        state,
                    });
                }
                Ok(verdict) => return Err(shared.rejection(verdict, &scopes, tokens)),
                Err(_) if shared.deny => return Err(Rejection::StoreUnavailable),
                // Judged locally until the store is back.
                Err(_) => {}
            }
        }
        self.admit_local(model, tokens, permit)
    }

    fn admit_local(
        &self,
        model: &str,
        tokens: u64,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Admission, Rejection> {
        let model_limits = self.models.get(model);
        let mut state = RateState::default();
        let scopes = [(Some(&self.tenant), None), (model_limits, Some(model))];
        for (scope, model_name) in scopes {
            let Some(req) = scope.and_then(|s| s.requests.as_ref()) else {
                continue;
            };
            match req.take() {
                Ok(s) => {
                    state.requests.get_or_insert(s);
                }
                Err((wait, s)) => {
                    state.requests.get_or_insert(s);
                    state.tokens = self.peek(model).tokens;
                    return Err(Rejection::Requests {
                        limit: req.limit as u64,
                        model: model_name.map(str::to_string),
                        wait,
                        state,
                    });
                }
            }
        }
        let mut taken: Vec<Arc<TokenBucket>> = Vec::new();
        for (scope, model_name) in scopes {
            let Some(bucket) = scope.and_then(|s| s.tokens.as_ref()) else {
                continue;
            };
            if let Err(shortfall) = bucket.take(tokens) {
                for b in &taken {
                    b.give_back(tokens);
                }
                let model = model_name.map(str::to_string);
                return Err(match shortfall {
                    Shortfall::TooLarge => Rejection::TooLarge {
                        limit: bucket.limit(),
                        requested: tokens,
                        model,
                    },
                    Shortfall::Wait(wait) => {
                        state.tokens = Some(token_state(bucket));
                        Rejection::Tokens {
                            limit: bucket.limit(),
                            requested: tokens,
                            model,
                            wait,
                            state,
                        }
                    }
                });
            }
            state.tokens.get_or_insert_with(|| token_state(bucket));
            taken.push(bucket.clone());
        }
        Ok(Admission {
            reserved: tokens,
            used: AtomicU64::new(0),
            buckets: taken,
            shared: None,
            _permit: permit,
            state,
        })
    }
}

/// A running request's share of its tenant's limits. Dropping it gives back the reserved
/// tokens it did not use (see [`Admission::record_usage`]) and its concurrency slot.
#[derive(Debug)]
pub struct Admission {
    reserved: u64,
    used: AtomicU64,
    buckets: Vec<Arc<TokenBucket>>,
    /// Reserved in the shared store instead.
    shared: Option<SharedReservation>,
    _permit: Option<OwnedSemaphorePermit>,
    state: RateState,
}

impl Admission {
    /// An admission with no limits behind it.
    pub fn unlimited() -> Self {
        Self {
            reserved: 0,
            used: AtomicU64::new(0),
            buckets: Vec::new(),
            shared: None,
            _permit: None,
            state: RateState::default(),
        }
    }

    /// The limits as they stood right after admission, for the response headers.
    pub fn state(&self) -> RateState {
        self.state
    }

    /// Tokens the request has used so far (prompt plus generated); what it keeps when it ends.
    pub fn record_usage(&self, tokens: u64) {
        self.used.store(tokens, Ordering::Relaxed);
    }
}

impl Drop for Admission {
    /// Settles in both directions: gives back what was reserved and not used, and charges
    /// (as debt) what was used beyond the reservation (an upstream's usage can exceed the
    /// gateway's estimate).
    fn drop(&mut self) {
        let used = self.used.load(Ordering::Relaxed);
        let unused = self.reserved.saturating_sub(used);
        let over = used.saturating_sub(self.reserved);
        for b in &self.buckets {
            if unused > 0 {
                b.give_back(unused);
            }
            if over > 0 {
                b.charge(over);
            }
        }
        if let Some(shared) = self.shared.take() {
            let delta =
                i64::try_from(unused).unwrap_or(i64::MAX) - i64::try_from(over).unwrap_or(i64::MAX);
            // Settled in the background: dropping an admission never waits on Redis.
            if let (true, Ok(rt)) = (delta != 0, tokio::runtime::Handle::try_current()) {
                rt.spawn(async move { shared.store.settle(&shared.keys, delta).await });
            }
        }
    }
}

/// A duration the way OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    /// The local limiter never waits on I/O: its futures complete at once.
    trait Now {
        fn admit_now(&self, model: &str, tokens: u64) -> Result<Admission, Rejection>;
    }

    impl Now for TenantLimiter {
        fn admit_now(&self, model: &str, tokens: u64) -> Result<Admission, Rejection> {
            futures::executor::block_on(self.admit(model, tokens))
        }
    }

    use super::*;

    fn limiter(yaml: &str, clock: &LimitClock) -> TenantLimiter {
        let limits: Limits = serde_yaml::from_str(yaml).unwrap();
        TenantLimiter::new(&limits, clock)
    }

    #[test]
    fn a_burst_admits_exactly_the_requests_per_minute() {
        let clock = LimitClock::manual();
        let l = limiter("requests_per_minute: 7", &clock);
        let results: Vec<_> = (0..20).map(|_| l.admit_now("m", 0)).collect();
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, 7);
        let remaining: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.state().requests.unwrap().remaining)
            .collect();
        assert_eq!(remaining, vec![6, 5, 4, 3, 2, 1, 0]);
        match &results[7] {
            Err(Rejection::Requests { wait, state, .. }) => {
                // One request comes back every 60 s / 7.
                assert_eq!(*wait, Duration::from_secs(60) / 7);
                assert_eq!(state.requests.unwrap().remaining, 0);
            }
            other => panic!("expected a requests rejection, got {other:?}"),
        }
        // Without taking, the window reads as the last take left it, replenished since.
        let peek = l.peek("m").requests.unwrap();
        assert_eq!((peek.limit, peek.remaining), (7, 0));
        clock.advance(Duration::from_secs(60) / 7 * 2);
        assert_eq!(l.peek("m").requests.unwrap().remaining, 2);
        // A minute later the whole burst is available again.
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.peek("m").requests.unwrap().remaining, 7);
        assert_eq!(l.peek("m").requests.unwrap().reset, Duration::ZERO);
        let again = (0..20).filter(|_| l.admit_now("m", 0).is_ok()).count();
        assert_eq!(again, 7);
    }

    #[test]
    fn tokens_settle_to_real_usage() {
        let clock = LimitClock::manual();
        let l = limiter("tokens_per_minute: 1000", &clock);
        let a = l.admit_now("m", 600).unwrap();
        assert_eq!(a.state().tokens.unwrap().remaining, 400);
        // While it runs, a second 600-token request does not fit...
        match l.admit_now("m", 600) {
            Err(Rejection::Tokens { wait, .. }) => {
                assert_eq!(wait, Duration::from_secs(12)) // 200 missing at 1000/60 per second
            }
            other => panic!("expected a tokens rejection, got {other:?}"),
        }
        // ...it used 150 of its 600, so 450 come back when it ends.
        a.record_usage(150);
        drop(a);
        let b = l.admit_now("m", 600).unwrap();
        assert_eq!(b.state().tokens.unwrap().remaining, 250);
        b.record_usage(600);
        drop(b);
        assert_eq!(l.peek("m").tokens.unwrap().remaining, 250);
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            l.peek("m").tokens.unwrap(),
            WindowState {
                limit: 1000,
                remaining: 1000,
                reset: Duration::ZERO
            }
        );
        assert!(matches!(
            l.admit_now("m", 1001),
            Err(Rejection::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn model_limits_apply_on_top_of_the_tenants() {
        let clock = LimitClock::manual();
        let l = limiter(
            "requests_per_minute: 10\nmodels: {big: {requests_per_minute: 2, tokens_per_minute: 100}}",
            &clock,
        );
        // Held (running): its 50 tokens stay reserved.
        let _running = l.admit_now("big", 50).unwrap();
        assert!(matches!(
            l.admit_now("big", 60),
            Err(Rejection::Tokens { model: Some(ref m), .. }) if m == "big"
        ));
        assert!(matches!(
            l.admit_now("big", 10),
            Err(Rejection::Requests { model: Some(ref m), .. }) if m == "big"
        ));
        // Other models only see the tenant's limit: 10 - 3 = 7 left.
        assert_eq!(
            l.admit_now("small", 0)
                .unwrap()
                .state()
                .requests
                .unwrap()
                .remaining,
            6
        );
    }

    #[test]
    fn concurrency_slots_come_back_when_requests_end() {
        let clock = LimitClock::manual();
        let l = limiter("max_concurrent: 2", &clock);
        let a = l.admit_now("m", 0).unwrap();
        let _b = l.admit_now("m", 0).unwrap();
        assert!(matches!(
            l.admit_now("m", 0),
            Err(Rejection::Concurrency { limit: 2, .. })
        ));
        drop(a);
        assert!(l.admit_now("m", 0).is_ok());
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_text(Duration::from_secs(1)), "1s");
        assert_eq!(duration_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration_text(Duration::from_secs(3725)), "1h2m5s");
    }
}
