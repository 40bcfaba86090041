//! Per-tenant rate limits: requests per minute (governor's GCRA, bursts up to the limit),
//! tokens per minute (reserve the worst case, settle to real usage), concurrent requests, and
//! the same per model. An [`Admission`] holds what a running request took and gives back the
//! unused part when it is dropped, however the request ends.

mod clock;
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
pub use token_bucket::{Shortfall, TokenBucket};

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
}

/// One tenant's limiters.
#[derive(Debug)]
pub struct TenantLimiter {
    tenant: ScopeLimits,
    models: HashMap<String, ScopeLimits>,
    concurrency: Option<(u32, Arc<Semaphore>)>,
}

impl TenantLimiter {
    pub fn new(limits: &Limits, clock: &LimitClock) -> Self {
        let models = limits
            .models
            .iter()
            .map(|(id, l): (&String, &ModelLimits)| {
                (
                    id.clone(),
                    ScopeLimits::new(l.requests_per_minute, l.tokens_per_minute, clock),
                )
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        Self {
            tenant: ScopeLimits::new(limits.requests_per_minute, limits.tokens_per_minute, clock),
            models,
            concurrency: limits
                .max_concurrent
                .map(|n| (n, Arc::new(Semaphore::new(n as usize)))),
        }
    }

    /// No limits at all: admission is free.
    pub fn is_unlimited(&self) -> bool {
        self.tenant.is_empty() && self.models.is_empty() && self.concurrency.is_none()
    }

    /// The header values now, without taking anything: the tenant's limits, else the
    /// model's.
    pub fn peek(&self, model: &str) -> RateState {
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
    pub fn precheck(&self, model: &str) -> Result<(), Rejection> {
        if let Some((limit, sem)) = &self.concurrency {
            if sem.available_permits() == 0 {
                return Err(Rejection::Concurrency {
                    limit: *limit as u64,
                    state: self.peek(model),
                });
            }
        }
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

    pub fn admit(&self, model: &str, tokens: u64) -> Result<Admission, Rejection> {
        let model_limits = self.models.get(model);
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
    use super::*;

    fn limiter(yaml: &str, clock: &LimitClock) -> TenantLimiter {
        let limits: Limits = serde_yaml::from_str(yaml).unwrap();
        TenantLimiter::new(&limits, clock)
    }

    #[test]
    fn a_burst_admits_exactly_the_requests_per_minute() {
        let clock = LimitClock::manual();
        let l = limiter("requests_per_minute: 7", &clock);
        let results: Vec<_> = (0..20).map(|_| l.admit("m", 0)).collect();
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
        let again = (0..20).filter(|_| l.admit("m", 0).is_ok()).count();
        assert_eq!(again, 7);
    }

    #[test]
    fn tokens_settle_to_real_usage() {
        let clock = LimitClock::manual();
        let l = limiter("tokens_per_minute: 1000", &clock);
        let a = l.admit("m", 600).unwrap();
        assert_eq!(a.state().tokens.unwrap().remaining, 400);
        // While it runs, a second 600-token request does not fit...
        match l.admit("m", 600) {
            Err(Rejection::Tokens { wait, .. }) => {
                assert_eq!(wait, Duration::from_secs(12)) // 200 missing at 1000/60 per second
            }
            other => panic!("expected a tokens rejection, got {other:?}"),
        }
        // ...it used 150 of its 600, so 450 come back when it ends.
        a.record_usage(150);
        drop(a);
        let b = l.admit("m", 600).unwrap();
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
            l.admit("m", 1001),
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
        let _running = l.admit("big", 50).unwrap();
        assert!(matches!(
            l.admit("big", 60),
            Err(Rejection::Tokens { model: Some(ref m), .. }) if m == "big"
        ));
        assert!(matches!(
            l.admit("big", 10),
            Err(Rejection::Requests { model: Some(ref m), .. }) if m == "big"
        ));
        // Other models only see the tenant's limit: 10 - 3 = 7 left.
        assert_eq!(
            l.admit("small", 0)
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
        let a = l.admit("m", 0).unwrap();
        let _b = l.admit("m", 0).unwrap();
        assert!(matches!(
            l.admit("m", 0),
            Err(Rejection::Concurrency { limit: 2, .. })
        ));
        drop(a);
        assert!(l.admit("m", 0).is_ok());
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
