//! Helpers for the `serve` end-to-end tests: a sandbox (temp HOME, config
//! and state directory), a running `thv-actor serve` that is stopped with
//! SIGTERM when dropped, a raw HTTP/1.1 client, and the Python MCP client.
//!
//! Use from a test file with `mod common;` and
//! `#[path = "support/serve.rs"] mod serve_support;`.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;

/// The bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A private HOME, config directory and state directory, and the workload
/// names made for the test; their keys are deleted when it is dropped.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub keystore: &'static str,
    names: Mutex<Vec<String>>,
}

impl Sandbox {
    pub fn new(keystore: &'static str) -> Sandbox {
        common::require_setup();
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home/.config", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Sandbox {
            dir,
            keystore,
            names: Mutex::new(Vec::new()),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A workload name unique to this run, whose keys go at the end.
    pub fn name(&self, tag: &str) -> String {
        let name = common::unique(tag);
        self.track(&name);
        name
    }

    /// Deletes `name`'s keys at the end (for names not made by [`Sandbox::name`]).
    pub fn track(&self, name: &str) {
        self.names.lock().unwrap().push(name.to_owned());
    }

    /// Writes `text` to a config file in the sandbox and returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        let path = self.path("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `thv-actor <args>` in this sandbox.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::bin());
        cmd.args(args)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("THV_ACTOR_STATE_DIR", self.state_dir())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .env_remove("THV_ACTOR_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `thv-actor <args>` to completion, bounded by [`WAIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), WAIT)
    }

    /// The current key of `workload`, from `key show`.
    pub fn key(&self, workload: &str) -> String {
        let out = self.run(&["key", "show", workload]);
        common::ok(&out);
        let key = common::stdout(&out).trim_end().to_owned();
        assert_eq!(key.len(), 43, "key show printed something else");
        key
    }

    /// `list --json`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", "--json"]);
        common::ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("list --json prints JSON")
            .as_array()
            .expect("list --json prints an array")
            .clone()
    }

    /// Starts `thv-actor serve <args>` and waits for its `lines` workload lines.
    pub fn serve(&self, args: &[&str], lines: usize) -> Serve {
        let serve = self.spawn_serve(args);
        serve.wait_lines(lines);
        serve
    }

    /// Starts `thv-actor serve <args>` without waiting.
    pub fn spawn_serve(&self, args: &[&str]) -> Serve {
        let mut cmd = self.cmd(&[&["serve"], args].concat());
        Serve::spawn(&mut cmd)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for name in self.names.lock().unwrap().iter() {
            let _ = run_bounded(self.cmd(&["key", "delete", name]), Duration::from_secs(10));
        }
    }
}

/// Runs `cmd` with piped output, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = read_all(Box::new(out));
    let err = read_all(Box::new(err));
    let status = wait_bounded(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {limit:?}");
    });
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` to exit, at most `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it is true, at most `limit`.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process `pid` still exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// The pids of the children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// A running `thv-actor serve`: its printed workload lines and its stderr.
/// Dropping it sends SIGTERM (SIGKILL after [`WAIT`]).
pub struct Serve {
    pub child: Child,
    lines_rx: mpsc::Receiver<String>,
    lines: RefCell<Vec<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn spawn(cmd: &mut Command) -> Serve {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn thv-actor serve");

        let (tx, lines_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf));
                buf.clear();
            }
        });

        Serve {
            child,
            lines_rx,
            lines: RefCell::new(Vec::new()),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything serve wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until serve has printed `n` lines on stdout.
    pub fn wait_lines(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.lines.borrow().len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => self.lines.borrow_mut().push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "serve printed {} of {n} lines within {WAIT:?}; stderr:\n{}",
                    self.lines.borrow().len(),
                    self.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "serve closed stdout after {} of {n} lines; stderr:\n{}",
                        self.lines.borrow().len(),
                        self.stderr()
                    )
                }
            }
        }
    }

    /// The pids serve logged for `workload`'s MCP server processes
    /// ("mcp server process started workload=<w> pid=<n>").
    pub fn logged_pids(&self, workload: &str) -> Vec<u32> {
        let plain = strip_ansi(&self.stderr());
        let needle = format!("workload={workload} pid=");
        plain
            .lines()
            .filter(|l| l.contains("mcp server process started"))
            .filter_map(|l| l.split_once(&needle))
            .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The printed lines.
    pub fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// The URL serve printed for `workload`.
    pub fn url(&self, workload: &str) -> String {
        let lines = self.lines.borrow();
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(workload))
            .unwrap_or_else(|| panic!("serve printed no line for {workload}: {lines:?}"));
        line.split_whitespace()
            .nth(1)
            .expect("a URL after the name")
            .to_owned()
    }

    /// The port of `workload`'s URL.
    pub fn port(&self, workload: &str) -> u16 {
        port_of(&self.url(workload))
    }

    /// Sends `signal` to serve.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// SIGTERM, then waits for the exit (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for serve to exit on its own (bounded).
    pub fn wait_exit(&mut self) -> ExitStatus {
        match wait_bounded(&mut self.child, WAIT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "serve did not exit within {WAIT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL, as a crash would; returns once it is reaped.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_bounded(&mut self.child, WAIT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// `text` without ANSI colour sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The port of an `http://127.0.0.1:<port>/...` URL.
pub fn port_of(url: &str) -> u16 {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .expect("a loopback URL");
    rest.split('/').next().unwrap().parse().expect("a port")
}

/// A free loopback port (there is a small race until it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something accepts connections on the loopback `port`.
pub fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// A raw HTTP/1.1 request, written byte for byte as given.
pub struct Request {
    port: u16,
    method: String,
    path: String,
    host: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// An `initialize` request body.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"thv-e2e","version":"0"}}}"#;

impl Request {
    pub fn new(method: &str, port: u16, path: &str) -> Request {
        Request {
            port,
            method: method.into(),
            path: path.into(),
            host: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A POST of `initialize` to `/mcp`.
    pub fn initialize(port: u16) -> Request {
        Request::new("POST", port, "/mcp")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(INITIALIZE)
    }

    /// Adds a header (repeat it to send it twice).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the default `Host: 127.0.0.1:<port>`.
    pub fn host(mut self, value: impl AsRef<[u8]>) -> Request {
        self.host = Some(value.as_ref().to_vec());
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = body.as_ref().to_vec();
        self
    }

    /// The bytes sent.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: ", self.method, self.path).into_bytes();
        match &self.host {
            Some(host) => out.extend_from_slice(host),
            None => out.extend_from_slice(format!("127.0.0.1:{}", self.port).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }

    /// Sends it on a new connection and reads the whole answer (bounded).
    pub fn send(&self) -> Response {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream.write_all(&self.bytes()).unwrap();

        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after a complete answer still leaves the answer.
                Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    break
                }
                Err(e) => panic!("reading the answer from {addr}: {e}"),
            }
            if Response::complete(&raw) {
                break;
            }
        }
        Response::parse(&raw)
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The whole answer as received, head and body.
    pub raw: Vec<u8>,
}

impl Response {
    fn head_end(raw: &[u8]) -> Option<usize> {
        raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    fn complete(raw: &[u8]) -> bool {
        let Some(end) = Response::head_end(raw) else {
            return false;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(n) => raw.len() >= end + n,
            None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
            None => false,
        }
    }

    fn parse(raw: &[u8]) -> Response {
        let end = Response::head_end(raw).unwrap_or_else(|| {
            panic!(
                "no complete HTTP head in {:?}",
                String::from_utf8_lossy(raw)
            )
        });
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(&raw[end..])
        } else {
            raw[end..].to_vec()
        };
        Response {
            status,
            headers,
            body,
            raw: raw.to_vec(),
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; an SSE body yields its first `data:` event.
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let json = if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            text.lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap_or("")
                .trim()
                .to_owned()
        } else {
            text.clone()
        };
        serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?} (status {})", self.status))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&data[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap().trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < nl + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[(nl + 4 + size).min(data.len())..];
    }
}

/// `$THV_TEST_ENV`, or a failure saying to run ./scripts/test.
pub fn test_env() -> PathBuf {
    std::env::var_os("THV_TEST_ENV")
        .map(PathBuf::from)
        .expect("THV_TEST_ENV is not set: run ./scripts/test")
}

/// The Python of venv `py1` or `py2`.
pub fn python(venv: &str) -> PathBuf {
    let path = test_env().join(venv).join("bin/python");
    assert!(
        path.exists(),
        "{} missing: run ./scripts/test",
        path.display()
    );
    path
}

/// The repository's `tests/python/<script>`.
pub fn script(name: &str) -> PathBuf {
    common::repo().join("tests/python").join(name)
}

/// Runs `tests/python/mcp_client.py` with `venv`'s Python; `key` goes in
/// `THV_TEST_KEY` (sent as `X-ToolHive-Auth`). Returns the exit status and the
/// JSON it printed on stdout.
pub fn mcp_client(
    venv: &str,
    key: Option<&str>,
    args: &[&str],
) -> (ExitStatus, serde_json::Value, String) {
    let mut cmd = mcp_client_cmd(venv, key, args);
    let out = run_bounded_cmd(&mut cmd);
    parse_client_output(out)
}

/// The command of [`mcp_client`], to start several at once.
pub fn mcp_client_cmd(venv: &str, key: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(python(venv));
    cmd.arg(script("mcp_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("THV_TEST_KEY");
    if let Some(key) = key {
        cmd.env("THV_TEST_KEY", key);
    }
    cmd
}

fn run_bounded_cmd(cmd: &mut Command) -> Output {
    let cmd = std::mem::replace(cmd, Command::new("true"));
    run_bounded(cmd, Duration::from_secs(60))
}

/// The exit status, the JSON on stdout (`null` if none) and stderr.
pub fn parse_client_output(out: Output) -> (ExitStatus, serde_json::Value, String) {
    let stdout = common::stdout(&out);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status, json, common::stderr(&out))
}

/// The text of every `text` content item of a tool result.
pub fn texts(result: &serde_json::Value) -> Vec<String> {
    result["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts `path` does not exist within [`WAIT`].
pub fn assert_gone(path: &Path) {
    assert!(
        eventually(WAIT, || !path.exists()),
        "{} still exists",
        path.display()
    );
}
