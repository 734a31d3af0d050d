//! A running `thv-actor serve` for end-to-end tests, and a raw HTTP/1.1
//! client that can send exactly the bytes a test wants.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A serve process with its own HOME, stopped with SIGTERM on drop.
pub struct Serve {
    pub child: Option<Child>,
    pub home: PathBuf,
    pub keystore: String,
    /// Workload name to URL, from the lines serve printed.
    pub urls: Vec<(String, String)>,
    pub stderr_path: PathBuf,
    env: Vec<(String, String)>,
}

impl Serve {
    /// Starts serve with `config` (TOML) in `home`, waiting for `expect`
    /// workloads to be printed.
    pub fn start(
        home: &Path,
        keystore: &str,
        config: &str,
        expect: usize,
        env: &[(&str, &str)],
    ) -> Serve {
        let cfg_dir = home.join(".config/thv-actor");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        std::fs::write(cfg_dir.join("config.toml"), config).unwrap();
        let mut serve = Serve {
            child: None,
            home: home.to_owned(),
            keystore: keystore.to_owned(),
            urls: Vec::new(),
            stderr_path: home.join("serve.stderr"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        serve.spawn(expect);
        serve
    }

    /// (Re)starts the process, waiting up to 60 s for its lines.
    pub fn spawn(&mut self, expect: usize) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let mut cmd = Command::new(super::common::bin());
        cmd.arg("serve")
            .env("HOME", &self.home)
            .env_remove("THV_ACTOR_STATE_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("THV_ACTOR_CONFIG")
            .env("THV_ACTOR_KEYSTORE", &self.keystore)
            .env("RUST_LOG", "info,actix_server=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut urls = Vec::new();
        while urls.len() < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut parts = line.split_whitespace();
                    if let (Some(name), Some(url)) = (parts.next(), parts.next()) {
                        urls.push((name.to_owned(), url.to_owned()));
                    }
                }
                Err(_) => panic!(
                    "serve printed {} of {expect} workloads in 60 s; stderr:\n{}",
                    urls.len(),
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                ),
            }
        }
        self.urls = urls;
        self.child = Some(child);
    }

    pub fn url(&self, name: &str) -> &str {
        &self
            .urls
            .iter()
            .find(|(n, _)| n == name)
            .expect("workload printed")
            .1
    }

    pub fn port(&self, name: &str) -> u16 {
        let url = self.url(name);
        url.trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `thv-actor <args>` with this serve's HOME and keystore.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(super::common::bin())
            .args(args)
            .env("HOME", &self.home)
            .env_remove("THV_ACTOR_STATE_DIR")
            .env("THV_ACTOR_KEYSTORE", &self.keystore)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The current key of `workload`.
    pub fn key(&self, workload: &str) -> String {
        let out = self.cli(&["key", "show", workload]);
        assert!(
            out.status.success(),
            "key show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }

    /// Sends a control-socket command (`invalidate`, `fault-keystore`, ...).
    pub fn control(&self, workload: &str, op: &str) -> String {
        use std::os::unix::net::UnixStream;
        let socket = self.home.join(".local/state/thv-actor/control.sock");
        let mut stream = UnixStream::connect(&socket).expect("control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /v1/workloads/{workload}/{op} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we spawned; no memory is involved.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Stops serve with SIGTERM and waits (10 s bound); returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills serve with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` to `port`, with `Connection: close`, and reads the whole answer
/// (10 s bound). Event streams are read until the bound or close.
pub fn raw(port: u16, head: &[u8], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = head.to_vec();
    req.extend_from_slice(
        format!(
            "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    stream.write_all(&req).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Response {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// POST `body` to `/mcp` on `port` with optional key and extra headers.
pub fn post(port: u16, key: Option<&str>, extra: &[(&str, &str)], body: &str) -> Response {
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream"
    );
    if let Some(key) = key {
        head.push_str(&format!("\r\nX-ToolHive-Auth: {key}"));
    }
    for (n, v) in extra {
        head.push_str(&format!("\r\n{n}: {v}"));
    }
    raw(port, head.as_bytes(), body.as_bytes())
}

/// An initialize request of the 2025-06-18 revision.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"thv-test","version":"1"}}}"#;

/// A bridge process with piped stdio; lines out arrive on a channel.
pub struct BridgeProc {
    pub child: Child,
    pub stdin: std::process::ChildStdin,
    pub lines: mpsc::Receiver<String>,
}

impl BridgeProc {
    /// Starts `thv-actor bridge <workload>` in an MCP client's reduced
    /// environment (HOME, LOGNAME, PATH, SHELL, TERM, USER).
    pub fn start(home: &Path, workload: &str, extra: &[&str]) -> BridgeProc {
        let mut child = Command::new(super::common::bin())
            .arg("bridge")
            .arg(workload)
            .args(extra)
            .env_clear()
            .env("HOME", home)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("SHELL", "/bin/sh")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(home.join(format!("bridge-{workload}.stderr")))
                    .unwrap(),
            )
            .spawn()
            .expect("spawn bridge");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BridgeProc {
            child,
            stdin,
            lines,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next JSON line, or `None` after `wait`.
    pub fn recv(&self, wait: Duration) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(wait).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("bridge stdout not JSON ({e}): {line}")),
        )
    }

    /// Initializes the session (initialize + initialized).
    pub fn initialize(&mut self) {
        self.send(INITIALIZE);
        let answer = self
            .recv(Duration::from_secs(60))
            .expect("initialize answered");
        assert!(
            answer.get("result").is_some(),
            "initialize failed: {answer}"
        );
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tools/call of the demo server's echo tool.
pub fn echo_call(id: u64, message: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}}
    })
    .to_string()
}

/// A config with `n` demo workloads named `<prefix>-<i>`.
pub fn demo_config(names: &[&str]) -> String {
    let bin = super::common::bin();
    names
        .iter()
        .map(|n| {
            format!("[[workloads]]\nname = \"{n}\"\ncommand = [\"{bin}\", \"demo-server\"]\n\n")
        })
        .collect()
}
