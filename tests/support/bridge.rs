//! `thv-actor bridge` as an MCP client launches it (the reduced
//! environment, JSON-RPC lines on stdio), driven by hand with [`Bridge`] or
//! by the real Python and TypeScript SDK clients.
//!
//! Every wait here is bounded; a helper that times out panics with what it
//! was waiting for and the bridge's stderr. The bridge is killed when its
//! guard drops.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::peers::test_env;
use super::WAIT;

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
    /// Starts `thv-actor bridge <workload> <args>` with HOME = `home`
    /// (a path, or a [`super::serve::Sandbox`]); stderr goes to a file there.
    pub fn spawn(home: impl AsRef<Path>, workload: &str, args: &[&str]) -> Bridge {
        static SPAWNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SPAWNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let home = home.as_ref();
        let stderr = home.join(format!("bridge-{n}.log"));

        let mut cmd = Command::new(super::bin());
        cmd.arg("bridge").arg(workload).args(args);
        client_env(&mut cmd, home);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()));
        let mut child = cmd.spawn().expect("spawn thv-actor bridge");
        let lines = super::line_reader(child.stdout.take().unwrap());
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
        super::wait_bounded(&mut self.child, limit)
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

/// A `tools/call` of the demo server's echo tool.
pub fn echo_call(id: u64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}}
    })
}

/// Runs `tests/python/bridge_client.py` with the SDK of `venv` (`py2` or
/// `py1`) against `workload`, and returns its report. The Python process
/// gets only the client environment, so the SDK's default env for the
/// bridge holds HOME = `home` and nothing from the test's own environment.
pub fn python_client(home: impl AsRef<Path>, venv: &str, workload: &str, plan: &Value) -> Value {
    let python = test_env().join(venv).join("bin/python");
    let script = super::repo().join("tests/python/bridge_client.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(super::bin())
        .arg(workload)
        .arg(plan.to_string());
    client_env(&mut cmd, home.as_ref());
    report(super::run_bounded(cmd, Duration::from_secs(90)), venv)
}

/// Runs `tests/node/bridge_client.mjs` (the TypeScript SDK) against
/// `workload`: initialize, tools/list, one tools/call.
pub fn node_client(home: impl AsRef<Path>, workload: &str, tool: &str, args: &Value) -> Value {
    let modules = test_env().join("node/node_modules");
    let script = super::repo().join("tests/node/bridge_client.mjs");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(&modules)
        .arg(super::bin())
        .arg(workload)
        .arg(tool)
        .arg(args.to_string());
    client_env(&mut cmd, home.as_ref());
    report(super::run_bounded(cmd, Duration::from_secs(60)), "node")
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
