//! A remote replica: an OpenAI-compatible upstream reached over HTTP. It is sent a body built
//! from the validated request, with the upstream's model name; its answer is read into the
//! same replies as the native engine's (`upstream_reply`). A stream is committed to the client
//! only once its first chunk has arrived, so until then a failure can be retried elsewhere;
//! after that, a failure ends the stream with an error event.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use rosetta_config::RemoteReplica;
use serde_json::Value;

/// The upstream's own report of its load for this model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpstreamLoad {
    pub running: usize,
    pub waiting: usize,
    /// KV cache in use, 0 to 1.
    pub kv_usage: f64,
}

#[derive(Debug)]
pub struct RemoteClient {
    base: String,
    upstream_model: String,
    load_path: Option<String>,
    load: std::sync::Mutex<Option<UpstreamLoad>>,
    api_key: Option<String>,
    health_path: String,
    first_token: Duration,
    request: Duration,
    forward_fields: Vec<String>,
    cache_salt: bool,
    http: reqwest::Client,
}

/// A request for a remote replica, built from a validated one: the path and the body,
/// without `model` (the replica names its own).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRequest {
    pub path: &'static str,
    pub body: serde_json::Map<String, Value>,
}

/// Why a forward failed.
#[derive(Debug)]
pub enum ForwardError {
    /// Down, overloaded or too slow before anything was sent to the client: try elsewhere.
    Unavailable(String),
    /// The upstream refused the request itself (a 4xx): the client's answer.
    Refused(UpstreamRefusal),
    /// The upstream refused the gateway (401, 403): its configuration is wrong.
    Unauthorized(u16),
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A started answer.
pub enum Forwarded {
    Json(Value),
    /// The first chunk (already received) and the rest.
    Stream(Bytes, ByteStream),
}

/// Who the request is for, passed to `rosetta --engine-only` upstreams so their schedulers
/// apply the tenant's tier and fairness, and salt its prefix cache.
#[derive(Debug, Clone)]
pub struct OnBehalf<'a> {
    pub tenant: &'a str,
    pub priority: u8,
    /// The tenant's keyed salt, for upstreams configured with `cache_salt`.
    pub cache_salt: String,
}

impl RemoteClient {
    pub fn new(config: &RemoteReplica, model_id: &str) -> Result<Self, reqwest::Error> {
        let base = config.url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base).to_string();
        let api_key = config.api_key.clone().or_else(|| {
            config
                .api_key_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base,
            upstream_model: config.model.clone().unwrap_or_else(|| model_id.to_string()),
            api_key,
            health_path: config.health_path.clone(),
            load_path: config.load_path.clone(),
            load: std::sync::Mutex::new(None),
            first_token: Duration::from_millis(config.first_token_timeout_ms),
            request: Duration::from_millis(config.request_timeout_ms),
            forward_fields: config.forward_fields.clone(),
            cache_salt: config.cache_salt,
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET the health path; true on 2xx within the first-token timeout.
    pub async fn check_health(&self) -> bool {
        let url = format!("{}{}", self.base, self.health_path);
        let req = self
            .http
            .get(url)
            .timeout(self.first_token.min(Duration::from_secs(5)));
        matches!(req.send().await, Ok(r) if r.status().is_success())
    }

    /// The load the upstream last reported, if it reports one.
    pub fn upstream_load(&self) -> Option<UpstreamLoad> {
        *self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the upstream's load from `load_path` (a no-op without one).
    pub async fn refresh_load(&self) {
        let Some(path) = &self.load_path else { return };
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(url).timeout(Duration::from_secs(5));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let text = match req.send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let load = text.and_then(|t| parse_load(&t, &self.upstream_model));
        *self.load.lock().unwrap_or_else(|p| p.into_inner()) = load;
    }

    /// The body for the upstream: the request's, the extension fields this replica's
    /// config lists (taken from `sent`, the client's body, read only when it lists any), and
    /// the upstream's model name.
    fn upstream_body(&self, request: &UpstreamRequest, sent: &[u8]) -> Value {
        let mut out = request.body.clone();
        let sent: Value = if self.forward_fields.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(sent).unwrap_or(Value::Null)
        };
        for field in &self.forward_fields {
            if let Some(v) = sent.get(field).filter(|v| !v.is_null()) {
                out.insert(field.clone(), v.clone());
            }
        }
        out.insert("model".into(), Value::String(self.upstream_model.clone()));
        Value::Object(out)
    }

    /// Sends `request` (with the upstream's model name, and the extension fields its config
    /// lists from `sent`, the client's body).
    pub async fn forward(
        &self,
        request: &UpstreamRequest,
        sent: &[u8],
        who: &OnBehalf<'_>,
    ) -> Result<Forwarded, ForwardError> {
        let path = request.path;
        let mut body = self.upstream_body(request, sent);
        if self.cache_salt {
            body["cache_salt"] = Value::String(who.cache_salt.clone());
        }
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(self.request)
            .header("x-rosetta-tenant", who.tenant)
            .header("x-rosetta-priority", who.priority.to_string())
            .json(&body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        // The request's trace goes on in the replica.
        let mut trace = reqwest::header::HeaderMap::new();
        crate::telemetry::inject_trace_context(&mut trace);
        req = req.headers(trace);
        let unavailable = |what: String| ForwardError::Unavailable(what);
        let resp = match tokio::time::timeout(self.first_token, req.send()).await {
            Err(_) => {
                return Err(unavailable(
                    "no response within the first-token timeout".into(),
                ))
            }
            // Without the URL: it may carry credentials, and errors reach clients.
            Ok(Err(e)) => return Err(unavailable(format!("request failed: {}", e.without_url()))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(unavailable(format!("upstream answered {status}")));
        }
        if matches!(status.as_u16(), 401 | 403 | 407) {
            return Err(ForwardError::Unauthorized(status.as_u16()));
        }
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(ForwardError::Refused(upstream_error(status, &body)));
        }
        // An upstream that answers a stream request with one JSON body (it does not stream)
        // is read as a whole answer.
        let json_body = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        if !stream || json_body {
            let read = tokio::time::timeout(self.request, read_capped(resp, MAX_ANSWER_BYTES));
            return match read.await {
                Ok(Ok(bytes)) => serde_json::from_slice(&bytes)
                    .map(Forwarded::Json)
                    .map_err(|e| unavailable(format!("unreadable answer: {e}"))),
                Ok(Err(why)) => Err(unavailable(why)),
                Err(_) => Err(unavailable("the answer did not arrive in time".into())),
            };
        }
        let mut chunks = resp.bytes_stream();
        let first = match tokio::time::timeout(self.first_token, chunks.next()).await {
            Err(_) => {
                return Err(unavailable(
                    "no first chunk within the first-token timeout".into(),
                ))
            }
            Ok(None) => {
                return Err(unavailable(
                    "the stream ended before its first chunk".into(),
                ))
            }
            Ok(Some(Err(e))) => {
                return Err(unavailable(format!("stream failed: {}", e.without_url())))
            }
            Ok(Some(Ok(b))) => b,
        };
        let rest = chunks.map(|r| r.map_err(|e| e.without_url().to_string()));
        Ok(Forwarded::Stream(first, Box::pin(rest)))
    }
}

/// Largest whole answer read from an upstream: beyond any real completion (a stream's events
/// are capped one by one in `upstream_reply`), so a broken upstream cannot fill memory.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The body, or why not: a transport failure, or more than `limit` bytes.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("unreadable answer: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {} MiB", limit >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An upstream's 4xx: its status, message and parameter, passed on to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRefusal {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
}

fn upstream_error(status: reqwest::StatusCode, body: &Value) -> UpstreamRefusal {
    UpstreamRefusal {
        status: status.as_u16(),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("The upstream refused the request.")
            .to_string(),
        param: body["error"]["param"].as_str().map(str::to_string),
    }
}

/// A load report: Rosetta's `/load` JSON (`models.<id>.running`, ...) or vLLM's Prometheus
/// gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
/// `vllm:gpu_cache_usage_perc` or `vllm:kv_cache_usage_perc`).
pub fn parse_load(text: &str, model: &str) -> Option<UpstreamLoad> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let m = &v["models"][model];
        let n = |k: &str| m[k].as_u64().map(|x| x as usize);
        let total = n("kv_blocks_total").unwrap_or(0);
        return Some(UpstreamLoad {
            running: n("running")?,
            waiting: n("waiting")?,
            kv_usage: if total > 0 {
                n("kv_blocks_used").unwrap_or(0) as f64 / total as f64
            } else {
                0.0
            },
        });
    }
    let mut load = UpstreamLoad::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let metric = name.split('{').next().unwrap_or(name);
        match metric {
            "vllm:num_requests_running" => load.running += value as usize,
            "vllm:num_requests_waiting" => load.waiting += value as usize,
            "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" => load.kv_usage = value,
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_whole_answer_past_the_cap_is_refused_not_buffered() {
        let answer =
            |len: usize| reqwest::Response::from(axum::http::Response::new(vec![b'x'; len]));
        assert_eq!(
            read_capped(answer(100), 100).await.map(|b| b.len()),
            Ok(100)
        );
        let refused = read_capped(answer(101), 100).await.unwrap_err();
        assert!(refused.contains("larger than"), "{refused}");
    }

    #[test]
    fn reads_rosetta_and_vllm_load_reports() {
        let rosetta = r#"{"models": {"m": {"running": 3, "waiting": 2, "kv_blocks_used": 25, "kv_blocks_total": 100}}}"#;
        assert_eq!(
            parse_load(rosetta, "m"),
            Some(UpstreamLoad {
                running: 3,
                waiting: 2,
                kv_usage: 0.25
            })
        );
        assert_eq!(parse_load(rosetta, "other"), None);
        let vllm = "# HELP vllm:num_requests_running x\nvllm:num_requests_running{model_name=\"m\"} 4.0\nvllm:num_requests_waiting{model_name=\"m\"} 1.0\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(
            parse_load(vllm, "m"),
            Some(UpstreamLoad {
                running: 4,
                waiting: 1,
                kv_usage: 0.5
            })
        );
        assert_eq!(parse_load("garbage", "m"), None);
    }
}
