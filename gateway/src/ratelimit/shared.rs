//! Limits kept in Redis, shared by every gateway replica: requests per minute by GCRA and
//! tokens per minute by a bucket that reserves a request's worst case and settles to its real
//! use, each in one atomic script over all the request's scopes (tenant, tenant on model).
//! While Redis cannot be reached, the caller falls back to its local limits (or refuses);
//! the store is tried again at most once a second meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{RateState, WindowState};

/// Takes one request from every request scope (GCRA, bursts up to the limit), then the
/// tokens from every token scope; all or nothing within each kind, as the local limiter.
/// KEYS: request keys, then token keys. ARGV: #request keys, #token keys, tokens, then one
/// limit per key. Returns {code, scope, wait_ms, req_limit, req_remaining, req_reset_ms,
/// tok_limit, tok_remaining, tok_reset_ms}; code 1 admitted, 0 over requests, 2 more tokens
/// than the limit, 3 over tokens.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nreq = tonumber(ARGV[1])
local ntok = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local rl, rr, rreset, tl, tr, treset = 0, 0, 0, 0, 0, 0
local tats = {}
for i = 1, nreq do
  local limit = tonumber(ARGV[3 + i])
  local step = 60000 / limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + step
  local allow_at = new_tat - limit * step
  if now < allow_at then
    local reset = math.ceil(tat - now)
    return {0, i, math.ceil(allow_at - now), limit, 0, reset, 0, 0, 0}
  end
  tats[i] = new_tat
  if i == 1 then
    rl = limit
    rr = math.floor((now - (new_tat - limit * step)) / step)
    rreset = math.ceil(new_tat - now)
  end
end
for i = 1, nreq do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 1000)
end
local avail = {}
for j = 1, ntok do
  local key = KEYS[nreq + j]
  local limit = tonumber(ARGV[3 + nreq + j])
  local v = redis.call('HMGET', key, 't', 'ts')
  local a = tonumber(v[1]) or limit
  local ts = tonumber(v[2]) or now
  a = math.min(limit, a + (now - ts) * limit / 60000)
  if want > limit then return {2, j, 0, rl, rr, rreset, limit, math.floor(math.max(a, 0)), 0} end
  if a < want then
    local wait = math.ceil((want - a) * 60000 / limit)
    return {3, j, wait, rl, rr, rreset, limit, math.floor(math.max(a, 0)), math.ceil((limit - a) * 60000 / limit)}
  end
  avail[j] = a
end
for j = 1, ntok do
  local key = KEYS[nreq + j]
  local limit = tonumber(ARGV[3 + nreq + j])
  local left = avail[j] - want
  redis.call('HSET', key, 't', tostring(left), 'ts', tostring(now))
  redis.call('PEXPIRE', key, 120000)
  if j == 1 then
    tl = limit
    tr = math.floor(math.max(left, 0))
    treset = math.ceil((limit - left) * 60000 / limit)
  end
end
return {1, 0, 0, rl, rr, rreset, tl, tr, treset}
"#;

/// Would admission surely refuse now (no request or token left in some scope)? Reads only.
/// KEYS and ARGV as ADMIT's. Returns {refused, scope, wait_ms, kind}.
const PEEK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nreq = tonumber(ARGV[1])
local ntok = tonumber(ARGV[2])
for i = 1, nreq do
  local limit = tonumber(ARGV[3 + i])
  local step = 60000 / limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local allow_at = tat + step - limit * step
  if now < allow_at then return {1, i, math.ceil(allow_at - now), 0} end
end
for j = 1, ntok do
  local limit = tonumber(ARGV[3 + nreq + j])
  local v = redis.call('HMGET', KEYS[nreq + j], 't', 'ts')
  local a = tonumber(v[1]) or limit
  local ts = tonumber(v[2]) or now
  a = math.min(limit, a + (now - ts) * limit / 60000)
  if a < 1 then return {1, j, math.ceil((1 - a) * 60000 / limit), 1} end
end
return {0, 0, 0, 0}
"#;

/// Settles token scopes: ARGV[1] tokens to give back (negative: to charge, as debt), then
/// one limit per key.
const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delta = tonumber(ARGV[1])
for j = 1, #KEYS do
  local limit = tonumber(ARGV[1 + j])
  local v = redis.call('HMGET', KEYS[j], 't', 'ts')
  local a = tonumber(v[1]) or limit
  local ts = tonumber(v[2]) or now
  a = math.min(limit, math.min(limit, a + (now - ts) * limit / 60000) + delta)
  redis.call('HSET', KEYS[j], 't', tostring(a), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[j], 120000)
end
return {1}
"#;

/// The Redis keys and limits of one request's scopes.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    /// (key, requests per minute), the tenant's first.
    pub requests: Vec<(String, u64)>,
    /// (key, tokens per minute), the tenant's first.
    pub tokens: Vec<(String, u64)>,
    /// Per scope: the model it is for (None: tenant-wide), in the same order.
    pub request_models: Vec<Option<String>>,
    pub token_models: Vec<Option<String>>,
}

impl Scopes {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.tokens.is_empty()
    }
}

/// What Redis decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Admitted(RateState),
    OverRequests {
        scope: usize,
        wait: Duration,
        state: RateState,
    },
    TooLarge {
        scope: usize,
    },
    OverTokens {
        scope: usize,
        wait: Duration,
        state: RateState,
    },
}

/// The store could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the rate-limit store is unavailable: {0}")]
pub struct StoreDown(pub String);

pub struct SharedStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    admit: Script,
    peek: Script,
    settle: Script,
    /// Whether the last call reached Redis.
    up: AtomicBool,
    /// While down: when (ms since `epoch`) to try Redis again.
    retry_at_ms: AtomicU64,
    epoch: Instant,
    /// `rosetta_ratelimit_store_up`.
    gauge: prometheus::IntGauge,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store at `url`; nothing is connected until the first request (Redis may come up
    /// after the gateway).
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        gauge: prometheus::IntGauge,
    ) -> anyhow::Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("ratelimit.redis.url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("ratelimit.redis: {e}"))?;
        gauge.set(1);
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
            admit: Script::new(ADMIT),
            peek: Script::new(PEEK),
            settle: Script::new(SETTLE),
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            gauge,
        })
    }

    /// A scope's key: the tenant in a hash tag, so a tenant's keys share a cluster slot.
    pub fn key(&self, tenant: &str, model: Option<&str>, kind: &str) -> String {
        match model {
            Some(m) => format!("{}:{{{tenant}}}:model:{m}:{kind}", self.prefix),
            None => format!("{}:{{{tenant}}}:{kind}", self.prefix),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether to ask Redis at all: yes while up, and once a second while down.
    fn should_try(&self) -> bool {
        self.up.load(Ordering::Acquire) || self.now_ms() >= self.retry_at_ms.load(Ordering::Acquire)
    }

    fn went_down(&self, why: &str) {
        self.retry_at_ms
            .store(self.now_ms() + 1000, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            self.gauge.set(0);
            tracing::warn!(
                error = why,
                "rate-limit store (Redis) unavailable; limits are judged locally until it is back"
            );
        }
    }

    fn came_back(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.gauge.set(1);
            tracing::info!("rate-limit store (Redis) is back; limits are shared again");
        }
    }

    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, StoreDown> {
        if !self.should_try() {
            return Err(StoreDown("down; not retried yet".into()));
        }
        let mut conn = self.conn.clone();
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let out = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreDown(e.to_string())),
            Err(_) => Err(StoreDown(format!("no answer within {:?}", self.timeout))),
        };
        match &out {
            Ok(_) => self.came_back(),
            Err(e) => self.went_down(&e.0),
        }
        out
    }

    fn prepare<'a>(&'a self, script: &'a Script, scopes: &Scopes) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for (k, _) in scopes.requests.iter().chain(&scopes.tokens) {
            inv.key(k);
        }
        inv.arg(scopes.requests.len()).arg(scopes.tokens.len());
        inv
    }

    /// Takes a request and `tokens` from every scope, or says which one refuses.
    pub async fn admit(&self, scopes: &Scopes, tokens: u64) -> Result<Verdict, StoreDown> {
        if scopes.is_empty() {
            return Ok(Verdict::Admitted(RateState::default()));
        }
        let mut inv = self.prepare(&self.admit, scopes);
        inv.arg(tokens);
        for (_, limit) in scopes.requests.iter().chain(&scopes.tokens) {
            inv.arg(*limit);
        }
        let v = self.run(inv).await?;
        let get = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
        let window = |limit: u64, remaining: u64, reset_ms: u64| {
            (limit > 0).then_some(WindowState {
                limit,
                remaining,
                reset: Duration::from_millis(reset_ms),
            })
        };
        let state = RateState {
            requests: window(get(3), get(4), get(5)),
            tokens: window(get(6), get(7), get(8)),
        };
        let scope = (get(1) as usize).saturating_sub(1);
        let wait = Duration::from_millis(get(2));
        Ok(match get(0) {
            1 => Verdict::Admitted(state),
            0 => Verdict::OverRequests { scope, wait, state },
            2 => Verdict::TooLarge { scope },
            _ => Verdict::OverTokens { scope, wait, state },
        })
    }

    /// Whether admission would surely refuse now: `Some((is_tokens, scope, wait))`.
    pub async fn peek(
        &self,
        scopes: &Scopes,
    ) -> Result<Option<(bool, usize, Duration)>, StoreDown> {
        if scopes.is_empty() {
            return Ok(None);
        }
        let mut inv = self.prepare(&self.peek, scopes);
        // ARGV as ADMIT's: the tokens (one, at least) before the limits.
        inv.arg(1);
        for (_, limit) in scopes.requests.iter().chain(&scopes.tokens) {
            inv.arg(*limit);
        }
        let v = self.run(inv).await?;
        let get = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok((get(0) == 1).then(|| {
            (
                get(3) == 1,
                (get(1) as usize).saturating_sub(1),
                Duration::from_millis(get(2)),
            )
        }))
    }

    /// Gives back `delta` tokens (or charges them, when negative) to each token scope.
    pub async fn settle(&self, keys: &[(String, u64)], delta: i64) {
        if keys.is_empty() || delta == 0 {
            return;
        }
        let mut inv = self.settle.prepare_invoke();
        for (k, _) in keys {
            inv.key(k);
        }
        inv.arg(delta);
        for (_, limit) in keys {
            inv.arg(*limit);
        }
        // A settlement lost while Redis is down only errs towards the tenant's side.
        let _ = self.run(inv).await;
    }
}

/// A request's reservation in Redis, settled when its admission ends.
#[derive(Debug)]
pub struct SharedReservation {
    pub store: Arc<SharedStore>,
    pub keys: Vec<(String, u64)>,
}
