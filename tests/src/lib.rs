//! End-to-end test harness: starts the real `rosetta` binary on a free port with a config
//! written into a fresh temporary folder, and talks to it over real HTTP.
//!
//! The binary is `$ROSETTA_BIN` if set, else `target/<profile>/rosetta` next to the test
//! executable; build it first with `cargo build --bin rosetta` (scripts/test.sh does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use reqwest::StatusCode;
pub use serde_json::{json, Value};

/// How long the server may take to print its `listening on` line.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to load every model (and generate demo models).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for any single HTTP request made by the tests: nothing may hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The default test config: a tiny ChatML model (`tiny`, max_context 256), a tiny Llama-3
/// template model (`tiny-llama`) and a tiny model with the full 2048 context (`tiny-long`).
pub const DEFAULT_CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - id: tiny
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
    max_context: 256
    engine: { kv_block_size: 16, kv_cache_bytes: 16777216, max_num_seqs: 64 }
  - id: tiny-llama
    demo: { arch: llama, size: tiny, seed: 1 }
    licence: llama3.1
    max_context: 256
  - id: tiny-long
    demo: { arch: qwen3, size: tiny, seed: 1 }
    licence: apache-2.0
"#;

/// The path of the `rosetta` binary under test.
pub fn rosetta_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROSETTA_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ROSETTA_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/rosetta
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable has no target/<profile> folder");
    let bin = profile_dir.join(format!("rosetta{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        panic!(
            "the rosetta binary is missing at {}: run `cargo build --bin rosetta` first \
             (scripts/test.sh does), or set ROSETTA_BIN",
            bin.display()
        );
    }
    bin
}

/// A `Command` for the `rosetta` binary, logging quietly.
pub fn rosetta_cmd() -> Command {
    let mut c = Command::new(rosetta_bin());
    c.env("NO_COLOR", "1");
    c
}

/// Output of a finished CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `rosetta ARGS` to completion with a time limit (a CLI command must never hang).
pub fn run_cli(args: &[&str], cwd: Option<&Path>, timeout: Duration) -> CliOutput {
    let mut cmd = rosetta_cmd();
    cmd.args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    run_with_timeout(&mut cmd, timeout)
}

/// Runs a command to completion, capturing its output; kills it and panics after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CliOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stdout so far:\n{}\nstderr so far:\n{}",
                out.0.lock().unwrap(),
                err.0.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The readers end at EOF, which comes once the process (and any children) closed the pipes.
    let _ = out.1.join();
    let _ = err.1.join();
    let stdout = out.0.lock().unwrap().clone();
    let stderr = err.0.lock().unwrap().clone();
    CliOutput {
        code: status.code(),
        stdout,
        stderr,
    }
}

fn drain<R: Read + Send + 'static>(r: R) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    let h = std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    });
    (buf, h)
}

/// A running `rosetta serve`; killed when dropped.
pub struct Server {
    child: Child,
    base_url: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    stderr: Arc<Mutex<String>>,
    client: reqwest::Client,
}

impl Server {
    /// Starts a server with `config_yaml` and waits until `/ready` says 200.
    ///
    /// The YAML is written to `config.yaml` in a fresh temporary folder; `{tmp}` is replaced by
    /// that folder. A `{cache}` placeholder is replaced by this test process's demo-model cache
    /// ([`shared_cache_dir`]: generated once per test binary, then reused by its servers);
    /// a config with neither `{cache}` nor a `cache_dir` key gets that cache prepended. For a
    /// cache of the server's own, write `cache_dir: "{tmp}/cache"`.
    pub fn start(config_yaml: &str) -> Server {
        Self::start_serialised(config_yaml)
    }

    /// The default config ([`DEFAULT_CONFIG`]).
    pub fn start_default() -> Server {
        Self::start(DEFAULT_CONFIG)
    }

    /// Starts `rosetta serve --config FILE EXTRA_ARGS...` and waits only for the
    /// `listening on` line. Not serialised: give such a config a cache of its own
    /// (`cache_dir: "{tmp}/cache"`) if it generates demo models.
    pub fn start_unready(config_yaml: &str, extra_args: &[&str]) -> Server {
        Self::start_unready_with_env(config_yaml, extra_args, &[])
    }

    fn start_unready_with_env(
        config_yaml: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("rosetta-e2e-")
            .tempdir()
            .expect("tempdir");
        let config_path = write_config(dir.path(), config_yaml);
        let cwd = dir.path().to_path_buf();
        Self::spawn(dir, config_path, extra_args, &cwd, env)
    }

    /// Like [`Server::start`], with extra environment variables for the server process.
    pub fn start_with_env(config_yaml: &str, env: &[(&str, &str)]) -> Server {
        let _guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let s = Self::start_unready_with_env(config_yaml, &["--listen", "127.0.0.1:0"], env);
        s.wait_ready(READY_TIMEOUT);
        s
    }

    /// `rosetta serve --config FILE ARGS...` with extra environment variables, once ready.
    pub fn start_with_args_and_env(
        config_yaml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let _guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let s = Self::start_unready_with_env(config_yaml, args, env);
        s.wait_ready(READY_TIMEOUT);
        s
    }

    /// Writes the config into `dir` (which may already hold files the config refers to),
    /// starts the server with `cwd` as its working folder, and waits until it is ready.
    pub fn start_in(dir: tempfile::TempDir, config_yaml: &str, cwd: &Path) -> Server {
        let _guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let config_path = write_config(dir.path(), config_yaml);
        let s = Self::spawn(dir, config_path, &["--listen", "127.0.0.1:0"], cwd, &[]);
        s.wait_ready(READY_TIMEOUT);
        s
    }

    /// Like [`Server::start`], but serialised with every other start in this process that
    /// uses the shared cache, so that only one server generates a demo model at a time.
    fn start_serialised(config_yaml: &str) -> Server {
        Self::start_with_args(config_yaml, &["--listen", "127.0.0.1:0"])
    }

    /// `rosetta serve --config FILE ARGS...`, waiting until ready (serialised like `start`).
    pub fn start_with_args(config_yaml: &str, args: &[&str]) -> Server {
        let _guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let s = Self::start_unready(config_yaml, args);
        s.wait_ready(READY_TIMEOUT);
        s
    }

    fn spawn(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        extra_args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = rosetta_cmd();
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn rosetta serve");
        let stderr = drain(child.stderr.take().unwrap()).0;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        let start = Instant::now();
        let url = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        break url.trim().to_string();
                    }
                    // Other stdout lines are tolerated but only this one matters.
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "rosetta serve closed stdout without printing `listening on` \
                         (exit status {status:?}); stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
            if start.elapsed() > LISTEN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rosetta serve printed no `listening on` line within {LISTEN_TIMEOUT:?}; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        // Tests listen on loopback only (127.0.0.0/8).
        if !url.starts_with("http://127.") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected listening line `listening on {url}`");
        }
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("bad address in `listening on {url}`: {e}"));
        assert_ne!(addr.port(), 0, "server printed port 0");
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("reqwest client");
        Server {
            child,
            base_url: url.trim_end_matches('/').to_string(),
            addr,
            dir,
            config_path,
            stderr,
            client,
        }
    }

    /// Polls `/ready` until it answers 200; panics (with the server log) on timeout or exit.
    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(200) = self.raw_get_status("/ready") {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "server at {} was not ready within {timeout:?}; stderr:\n{}",
                    self.base_url,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A blocking GET that needs no async runtime (usable anywhere); returns the status.
    pub fn raw_get_status(&self, path: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status)?;
        status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))
    }

    /// The server's resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection with a 16 KiB receive buffer, for a client that does not read: the
    /// server's writes back up after a few kilobytes, whatever the system's TCP defaults.
    pub fn connect_unread(&self) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        socket.connect(&self.addr.into()).expect("connect");
        socket.into()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The temporary folder holding config.yaml (and the cache, unless the config says otherwise).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server process (SIGKILL: no graceful shutdown) and waits for it.
    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit on its own; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn get(&self, path: &str) -> Resp {
        let r = self.client.get(self.url(path)).send().await;
        Resp::read(r, &format!("GET {path}")).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        let r = self.client.post(self.url(path)).json(body).send().await;
        Resp::read(r, &format!("POST {path} {body}")).await
    }

    /// GET with `Authorization: Bearer <key>`.
    pub async fn get_as(&self, key: &str, path: &str) -> Resp {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await;
        Resp::read(r, &format!("GET {path} (as a key)")).await
    }

    /// POST JSON with `Authorization: Bearer <key>`.
    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> Resp {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await;
        Resp::read(r, &format!("POST {path} {body} (as a key)")).await
    }

    /// POSTs `body` (as `key`, if given) every 100 ms until it gets 200; panics after
    /// 20 s. For slots (concurrency, queue bounds) that come back asynchronously.
    pub async fn post_until_ok(&self, key: Option<&str>, path: &str, body: &Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = match key {
                Some(k) => self.post_as(k, path, body).await,
                None => self.post(path, body).await,
            };
            if r.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered 200: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POST with an arbitrary body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> Resp {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        Resp::read(r, &format!("POST {path} (raw body)")).await
    }

    /// POST /v1/chat/completions; asserts 200 and returns the body.
    pub async fn chat(&self, body: Value) -> Value {
        self.post("/v1/chat/completions", &body).await.ok()
    }

    /// POST /v1/completions; asserts 200 and returns the body.
    pub async fn complete(&self, body: Value) -> Value {
        self.post("/v1/completions", &body).await.ok()
    }

    /// POST a streaming request, read the whole SSE body, and return its events.
    /// Asserts 200, an event-stream content type, and a final `[DONE]`.
    pub async fn stream(&self, path: &str, body: Value) -> Vec<Value> {
        let r = self.post(path, &body).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "streaming POST {path} {body}: {}",
            r.text
        );
        let ct = r.content_type.clone().unwrap_or_default();
        assert!(
            ct.starts_with("text/event-stream"),
            "streaming POST {path}: content-type is {ct:?}, want text/event-stream"
        );
        sse_json(&r.text)
    }

    /// Greedy chat content for one user message.
    pub async fn greedy_chat(&self, model: &str, prompt: &str, max_tokens: u32) -> Value {
        self.chat(json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "ignore_eos": true,
        }))
        .await
    }

    /// POST /tokenize for a prompt string; returns the token ids.
    pub async fn tokenize(&self, model: &str, prompt: &str, add_special_tokens: bool) -> Vec<u64> {
        let v = self
            .post(
                "/tokenize",
                &json!({"model": model, "prompt": prompt, "add_special_tokens": add_special_tokens}),
            )
            .await
            .ok();
        ids(&v["tokens"])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: String = {
                let lines: Vec<&str> = logs.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!(
                "---- rosetta server log (last 60 lines) ----\n{tail}\n---- end of server log ----"
            );
        }
    }
}

/// Writes the config into `dir/config.yaml`, filling in the placeholders.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let cache = shared_cache_dir();
    let mut text = yaml
        .replace("{cache}", &cache.display().to_string())
        .replace("{tmp}", &dir.display().to_string());
    let has_cache_key = text
        .lines()
        .any(|l| l.trim_start().starts_with("cache_dir:"));
    if !has_cache_key {
        text = format!("cache_dir: \"{}\"\n{text}", cache.display());
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

static START_LOCK: Mutex<()> = Mutex::new(());

/// The demo-model cache shared by the servers of this test process:
/// `<target dir>/tmp/rosetta-e2e-cache/<pid>`. Folders left by earlier test processes that are no
/// longer running are removed when it is first made. `$ROSETTA_TEST_CACHE` overrides it.
pub fn shared_cache_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(p) = std::env::var_os("ROSETTA_TEST_CACHE") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test-binary> -> target/tmp (cargo's own scratch folder).
        let root = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("tmp")))
            .unwrap_or_else(std::env::temp_dir)
            .join("rosetta-e2e-cache");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let alive = name
                    .parse::<u32>()
                    .map(|pid| Path::new(&format!("/proc/{pid}")).exists())
                    .unwrap_or(true);
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create the test model cache");
        dir
    })
    .clone()
}

/// An HTTP response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` if it is not JSON.
    pub json: Value,
    /// What was sent, for messages.
    pub request: String,
}

impl Resp {
    async fn read(r: reqwest::Result<reqwest::Response>, request: &str) -> Resp {
        let r = r.unwrap_or_else(|e| panic!("{request}: request failed: {e}"));
        let status = r.status();
        let headers = r.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("{request}: reading the body failed: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        let request: String = request.chars().take(400).collect();
        Resp {
            status,
            content_type,
            headers,
            text,
            json,
            request,
        }
    }

    /// Asserts 200 and returns the JSON body.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}\n  expected 200, got {}: {}",
            self.request,
            self.status,
            self.text
        );
        assert!(
            !self.json.is_null(),
            "{}: 200 body is not JSON: {}",
            self.request,
            self.text
        );
        self.json
    }

    /// Asserts an OpenAI error: the status, a JSON content type,
    /// `{"error": {message, type, param, code}}` with a non-empty message, the given type and
    /// the given code (when `Some`).
    pub fn assert_error(&self, status: u16, typ: Option<&str>, code: Option<&str>) {
        if let Err(e) = self.check_error(status, typ, code) {
            panic!("{e}");
        }
    }

    /// [`Resp::assert_error`] without panicking: a description of what is wrong.
    pub fn check_error(
        &self,
        status: u16,
        typ: Option<&str>,
        code: Option<&str>,
    ) -> Result<(), String> {
        let body: String = self.text.chars().take(300).collect();
        let fail = |what: String| {
            Err(format!(
                "{}\n    expected {what}; got {} {body}",
                self.request, self.status
            ))
        };
        if self.status.as_u16() != status {
            return fail(format!("status {status}"));
        }
        let e = &self.json["error"];
        if !e.is_object() {
            return fail(format!(
                "status {status} with an OpenAI error body {{\"error\": {{...}}}}"
            ));
        }
        if !self
            .content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("application/json")
        {
            return fail(format!(
                "content-type application/json, not {:?}",
                self.content_type
            ));
        }
        if e["message"].as_str().unwrap_or("").is_empty() {
            return fail("a non-empty error.message".into());
        }
        if !e["type"].is_string() {
            return fail("error.type to be a string".into());
        }
        let obj = e.as_object().unwrap();
        if !obj.contains_key("param") || !obj.contains_key("code") {
            return fail("error.param and error.code keys (null allowed)".into());
        }
        if let Some(t) = typ {
            if e["type"] != t {
                return fail(format!("error.type {t:?}"));
            }
        }
        if let Some(c) = code {
            if e["code"] != c {
                return fail(format!("error.code {c:?}"));
            }
        }
        Ok(())
    }

    /// 400 invalid_request_error.
    pub fn assert_invalid(&self) {
        self.assert_error(400, Some("invalid_request_error"), None);
    }
}

/// Splits an SSE body into the payloads of its `data:` fields, one per event.
pub fn sse_data(body: &str) -> Vec<String> {
    let normalised = body.replace("\r\n", "\n");
    let mut out = Vec::new();
    for event in normalised.split("\n\n") {
        let mut data: Vec<&str> = Vec::new();
        for line in event.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                data.push(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// Parses an SSE body: asserts the last event is `[DONE]` and no other event is, and that
/// every other payload is a JSON object; returns those objects.
pub fn sse_json(body: &str) -> Vec<Value> {
    let data = sse_data(body);
    assert!(!data.is_empty(), "SSE body has no data events: {body:?}");
    assert_eq!(
        data.last().unwrap(),
        "[DONE]",
        "SSE body does not end with data: [DONE]: {body:?}"
    );
    assert!(
        body.replace("\r\n", "\n").ends_with("data: [DONE]\n\n"),
        "SSE body does not end with `data: [DONE]\\n\\n`: {:?}",
        &body[body.len().saturating_sub(80)..]
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| {
            assert_ne!(d, "[DONE]", "[DONE] appears before the end of the stream");
            let v: Value = serde_json::from_str(d)
                .unwrap_or_else(|e| panic!("SSE payload is not JSON ({e}): {d}"));
            assert!(v.is_object(), "SSE payload is not a JSON object: {d}");
            v
        })
        .collect()
}

/// Concatenates `choices[].delta.content` (chat) or `choices[].text` (completions) of the
/// chunks for choice `index`.
pub fn stream_text(chunks: &[Value], index: u64) -> String {
    let mut s = String::new();
    for c in chunks {
        for ch in c["choices"].as_array().into_iter().flatten() {
            if ch["index"].as_u64() == Some(index) {
                if let Some(t) = ch["delta"]["content"].as_str() {
                    s.push_str(t);
                }
                if let Some(t) = ch["text"].as_str() {
                    s.push_str(t);
                }
            }
        }
    }
    s
}

/// The finish reason given for choice `index` in a stream (the one non-null value); panics if
/// there is none or more than one.
pub fn stream_finish_reason(chunks: &[Value], index: u64) -> String {
    let reasons: Vec<String> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|ch| ch["index"].as_u64() == Some(index))
        .filter_map(|ch| ch["finish_reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        reasons.len(),
        1,
        "choice {index}: want exactly one finish_reason in the stream, got {reasons:?}"
    );
    reasons[0].clone()
}

/// A JSON array of integers as `Vec<u64>`.
pub fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of token ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap_or_else(|| panic!("not a token id: {x}")))
        .collect()
}

/// Asserts usage {prompt_tokens, completion_tokens, total_tokens} adds up; returns
/// (prompt, completion).
pub fn check_usage(usage: &Value) -> (u64, u64) {
    let p = usage["prompt_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.prompt_tokens: {usage}"));
    let c = usage["completion_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.completion_tokens: {usage}"));
    let t = usage["total_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.total_tokens: {usage}"));
    assert_eq!(
        t,
        p + c,
        "usage.total_tokens != prompt + completion: {usage}"
    );
    assert!(p > 0, "usage.prompt_tokens is 0: {usage}");
    (p, c)
}

/// `choices[0].message.content` of a chat completion.
pub fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("choices[0].message.content is not a string: {v}"))
        .to_string()
}

/// `choices[0].text` of a completion.
pub fn text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("choices[0].text is not a string: {v}"))
        .to_string()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts `created` is a Unix timestamp within a few minutes of now.
pub fn check_created(v: &Value) {
    let c = v["created"]
        .as_u64()
        .unwrap_or_else(|| panic!("created is not an integer: {v}"));
    let now = now_secs();
    assert!(
        c + 600 >= now && c <= now + 600,
        "created {c} is not near now ({now})"
    );
}

/// A multilingual sentence used across tests.
pub const MULTILINGUAL: &str = "Habari ya asubuhi, 你好, नमस्ते, Привет";

/// A folder in the repository, for files the tests ship (tests/clients/...).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `config` with each placeholder replaced by the hash of a fresh key, and the keys in the
/// placeholders' order.
pub fn with_new_keys<const N: usize>(
    config: &str,
    placeholders: [&str; N],
) -> (String, [String; N]) {
    let mut config = config.to_string();
    let keys = placeholders.map(|placeholder| {
        let (key, hash) = new_key();
        config = config.replace(placeholder, &hash);
        key
    });
    (config, keys)
}

/// A fresh API key and its config hash, made by `rosetta keys new`.
pub fn new_key() -> (String, String) {
    let out = run_cli(
        &["keys", "new", "--tenant", "t"],
        None,
        Duration::from_secs(30),
    );
    assert!(out.success(), "rosetta keys new failed: {out:?}");
    let key = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("rsk-"))
        .unwrap_or_else(|| panic!("no key in {}", out.stdout))
        .to_string();
    let hash = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no hash in {}", out.stdout))
        .to_string();
    (key, hash)
}

impl Resp {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A numeric response header.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.parse().ok())
    }
}

/// The addresses a test DNS zone answers with; change them while it serves.
pub type Zone = Arc<Mutex<Vec<std::net::Ipv4Addr>>>;

/// A DNS server on a loopback UDP port (hickory's own message types): A queries for `name`
/// (a fully qualified name, e.g. `engines.test.`) get the zone's addresses with TTL 1, every
/// other query an empty answer.
pub async fn dns_zone_server(name: &str, zone: Zone) -> SocketAddr {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let name = name.to_ascii_lowercase();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.metadata.authoritative = true;
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.response_code = ResponseCode::NoError;
            answer.queries = query.queries.clone();
            for q in &query.queries {
                let ours = q.name().to_ascii().to_ascii_lowercase() == name;
                if ours && q.query_type() == RecordType::A {
                    for ip in zone.lock().unwrap().iter() {
                        answer.answers.push(Record::from_rdata(
                            q.name().clone(),
                            1,
                            RData::A(A(*ip)),
                        ));
                    }
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

/// A TCP port free on 127.0.0.1 now (for a server the test starts itself, such as Redis).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
