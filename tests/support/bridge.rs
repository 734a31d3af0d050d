//! Helpers for the `thv-actor bridge` end-to-end tests: a private HOME, a
//! real `thv-actor serve` on it, the bridge as an MCP client launches it
//! (the reduced environment), the real server-everything over HTTP, and the
//! Python and TypeScript SDK clients.
//!
//! Every wait here is bounded; a helper that times out panics with what it
//! was waiting for and the logs that explain it. Processes are stopped when
//! their guard drops (serve with SIGTERM, the others killed).
//!
//! Include with `#[path = "support/bridge.rs"] mod bridge_support;` next to
//! `mod common;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;

/// The longest any single step of these tests waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// The environment an MCP client gives a stdio server on Unix (the SDKs'
/// default inherited variables), with HOME pointing at `home`.
pub fn client_env(cmd: &mut Command, home: &Path) {
    cmd.env_clear().env("HOME", home);
    for var in ["PATH", "USER", "LOGNAME", "SHELL", "TERM"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    // root's shells in containers often lack USER/LOGNAME; the SDKs pass
    // them when they are there, so give them the usual values.
    if std::env::var_os("USER").is_none() {
        cmd.env("USER", "root").env("LOGNAME", "root");
    }
}

/// `$THV_TEST_ENV`: the MCP peers `scripts/setup` installs.
pub fn testenv() -> PathBuf {
    common::require_setup();
    let dir = std::env::var_os("THV_TEST_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join(".testenv"));
    assert!(
        dir.join("py2/bin/python").exists(),
        "{} has no py2 venv: run ./scripts/test",
        dir.display()
    );
    dir
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to completion within `limit`, killing it when it overruns.
pub fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());

    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap();
            panic!(
                "{what} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

/// Lines of a child's output, read on a thread, handed over a channel.
fn line_reader(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A private HOME with serve's state under it, and the keystore everything
/// started here uses. Deletes the keys of every workload it named when
/// dropped.
pub struct Home {
    dir: tempfile::TempDir,
    pub keystore: &'static str,
    workloads: Mutex<Vec<String>>,
}

impl Home {
    pub fn new(keystore: &'static str) -> Home {
        common::require_setup();
        Home {
            dir: tempfile::tempdir().unwrap(),
            keystore,
            workloads: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A unique workload name whose keys are deleted at the end.
    pub fn workload(&self, tag: &str) -> String {
        let name = common::unique(tag);
        self.workloads.lock().unwrap().push(name.clone());
        name
    }

    /// `thv-actor <args>` as the user's shell runs it: HOME here, the
    /// keystore named, the test's D-Bus address.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(common::bin());
        cmd.args(args)
            .env("HOME", self.path())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .env_remove("THV_ACTOR_STATE_DIR")
            .env_remove("THV_ACTOR_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `thv-actor <args>` to completion (bounded).
    pub fn run(&self, args: &[&str]) -> Output {
        run_bounded(self.cmd(args), WAIT, &format!("thv-actor {args:?}"))
    }

    /// Writes a serve config with these `[[workloads]]` blocks.
    pub fn write_config(&self, blocks: &[String]) -> PathBuf {
        let path = self.path().join("config.toml");
        std::fs::write(&path, blocks.join("\n")).unwrap();
        path
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        for w in self.workloads.lock().unwrap().drain(..) {
            let mut cmd = self.cmd(&["key", "delete", &w]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A `[[workloads]]` block for a stdio server serve spawns.
pub fn stdio_workload(name: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| toml_str(a)).collect();
    format!(
        "[[workloads]]\nname = {}\ncommand = [{}]\n",
        toml_str(name),
        argv.join(", ")
    )
}

/// A `[[workloads]]` block for a streamable HTTP server at `url`.
pub fn url_workload(name: &str, url: &str) -> String {
    format!(
        "[[workloads]]\nname = {}\nurl = {}\ntransport = \"streamable-http\"\n",
        toml_str(name),
        toml_str(url)
    )
}

/// The built-in demo server as a workload's command.
pub fn demo_workload(name: &str) -> String {
    stdio_workload(name, &[common::bin(), "demo-server"])
}

/// A running `thv-actor serve` on a [`Home`]'s state, stopped with SIGTERM
/// when dropped.
pub struct Serve {
    child: Option<Child>,
    log: PathBuf,
    urls: BTreeMap<String, String>,
}

impl Serve {
    /// Starts serve with `config` and waits (bounded) until it has printed
    /// the line of every workload in `names`.
    pub fn start(home: &Home, config: &Path, names: &[&str]) -> Serve {
        Serve::start_with(home, config, names, &[])
    }

    /// [`Serve::start`] with extra environment variables.
    pub fn start_with(home: &Home, config: &Path, names: &[&str], env: &[(&str, &str)]) -> Serve {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = home.path().join(format!("serve-{n}.log"));
        let log_file = std::fs::File::create(&log).unwrap();

        let mut cmd = home.cmd(&["serve", "--config", config.to_str().unwrap()]);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().expect("spawn thv-actor serve");
        let lines = line_reader(child.stdout.take().unwrap());

        let mut serve = Serve {
            child: Some(child),
            log,
            urls: BTreeMap::new(),
        };
        let deadline = Instant::now() + WAIT;
        while serve.urls.len() < names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    // `<name>  <url>  (connect an MCP client with: ...)`
                    let mut parts = line.split("  ");
                    if let (Some(name), Some(url)) = (parts.next(), parts.next()) {
                        if names.contains(&name) && parts.next().is_some_and(|r| r.starts_with('('))
                        {
                            serve.urls.insert(name.to_owned(), url.to_owned());
                        }
                    }
                }
                Err(_) => panic!(
                    "serve did not print its workloads {names:?} within {WAIT:?} \
                     (printed {:?}); log:\n{}",
                    serve.urls,
                    serve.log()
                ),
            }
        }
        serve
    }

    /// The URL serve printed for `name`.
    pub fn url(&self, name: &str) -> &str {
        &self.urls[name]
    }

    /// serve's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("serve runs").id()
    }

    /// serve's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until serve's log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log().contains(needle)
    }

    /// SIGTERM, then waits (bounded; SIGKILL after) for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve did not stop within 15 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `thv-actor bridge <workload>` launched as an MCP client does: the
/// reduced environment, JSON-RPC lines on piped stdin and stdout, stderr to
/// a file. Every stdout line must parse as JSON; one that does not fails
/// the test at once.
pub struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: PathBuf,
    /// Every stdout line so far, in order.
    pub seen: Vec<Value>,
    /// Messages read while waiting for something else, not yet taken.
    backlog: Vec<Value>,
}

impl Bridge {
    pub fn spawn(home: &Home, workload: &str, args: &[&str]) -> Bridge {
        static SPAWNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SPAWNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = home.path().join(format!("bridge-{n}.log"));

        let mut cmd = Command::new(common::bin());
        cmd.arg("bridge").arg(workload).args(args);
        client_env(&mut cmd, home.path());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()));
        let mut child = cmd.spawn().expect("spawn thv-actor bridge");
        let lines = line_reader(child.stdout.take().unwrap());
        Bridge {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            seen: Vec::new(),
            backlog: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bridge's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Writes one line to the bridge's stdin.
    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn send(&mut self, message: &Value) {
        self.send_raw(&message.to_string());
    }

    /// Closes stdin (the client went away).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// The next stdout message within `limit`, or `None`.
    pub fn next(&mut self, limit: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        self.read(limit)
    }

    fn read(&mut self, limit: Duration) -> Option<Value> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!(
                        "bridge stdout line is not JSON ({e}): {line:?}; stderr:\n{}",
                        self.stderr()
                    )
                });
                self.seen.push(message.clone());
                Some(message)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits (bounded) for the response with `id`; other messages are kept
    /// for [`Bridge::next`].
    pub fn response(&mut self, id: &Value, limit: Duration) -> Value {
        if let Some(i) = self.backlog.iter().position(|m| is_response_to(m, id)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(message) = self.read(left) else {
                panic!(
                    "no response to id {id} within {limit:?} (silence); stdout so far: {:?}; stderr:\n{}",
                    self.seen,
                    self.stderr()
                );
            };
            if is_response_to(&message, id) {
                return message;
            }
            self.backlog.push(message);
        }
    }

    /// Sends a request and waits for its response.
    pub fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.response(&json!(id), WAIT)
    }

    /// `initialize` and `notifications/initialized`; returns the result.
    pub fn handshake(&mut self, id: u64) -> Value {
        let answer = self.request(
            id,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "thv-bridge-e2e", "version": "1"}}),
        );
        assert!(
            answer["result"]["serverInfo"].is_object(),
            "initialize failed: {answer}; stderr:\n{}",
            self.stderr()
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        answer["result"].clone()
    }

    /// Waits (bounded) for the bridge to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stdout line left until EOF (bounded), checked as JSON.
    pub fn read_to_end(&mut self, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut rest = std::mem::take(&mut self.backlog);
        while let Some(m) = self.read(deadline.saturating_duration_since(Instant::now())) {
            rest.push(m);
        }
        rest
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_response_to(message: &Value, id: &Value) -> bool {
    message.get("id") == Some(id) && message.get("method").is_none()
}

/// The text of a `tools/call` result's first content item.
pub fn tool_text(answer: &Value) -> &str {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not a tool result with text: {answer}"))
}

/// server-everything in streamable HTTP mode on a free loopback port,
/// killed when dropped.
pub struct Everything {
    child: Child,
    pub port: u16,
}

impl Everything {
    pub fn start() -> Everything {
        let entry = testenv()
            .join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        assert!(
            entry.exists(),
            "{} is missing: run ./scripts/test",
            entry.display()
        );
        let port = free_port();
        let child = Command::new("node")
            .arg(&entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node (server-everything)");
        let mut everything = Everything { child, port };

        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = everything.child.try_wait().unwrap() {
                panic!("server-everything exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen on {port} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        everything
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/python/bridge_client.py` with the SDK of `venv` (`py2` or
/// `py1`) against `workload`, and returns its report. The Python process
/// gets only the client environment, so the SDK's default env for the
/// bridge holds HOME = `home` and nothing from the test's own environment.
pub fn python_client(home: &Home, venv: &str, workload: &str, plan: &Value) -> Value {
    let python = testenv().join(venv).join("bin/python");
    let script = common::repo().join("tests/python/bridge_client.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(common::bin())
        .arg(workload)
        .arg(plan.to_string());
    client_env(&mut cmd, home.path());
    report(
        run_bounded(cmd, Duration::from_secs(90), &format!("{venv} client")),
        venv,
    )
}

/// Runs `tests/node/bridge_client.mjs` (the TypeScript SDK) against
/// `workload`: initialize, tools/list, one tools/call.
pub fn node_client(home: &Home, workload: &str, tool: &str, args: &Value) -> Value {
    let modules = testenv().join("node/node_modules");
    let script = common::repo().join("tests/node/bridge_client.mjs");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(&modules)
        .arg(common::bin())
        .arg(workload)
        .arg(tool)
        .arg(args.to_string());
    client_env(&mut cmd, home.path());
    report(
        run_bounded(cmd, Duration::from_secs(60), "node client"),
        "node",
    )
}

fn report(out: Output, who: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{who} client failed ({}); stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{who} client printed no report ({e}): {stdout:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
