//! Support for the end-to-end tests, in one place: the binary under test,
//! bounded process helpers, and the pieces below. Every test file includes
//! it with `mod support;` and uses the subset it needs.
//!
//! - [`serve`]: a [`serve::Sandbox`] (private HOME, keystore, tracked
//!   workload names) and the one [`serve::Serve`] driver, plus config blocks.
//! - [`http`]: the raw HTTP/1.1 client ([`http::Request`], [`http::Response`]).
//! - [`bridge`]: the `thv-actor bridge` driver and the SDK clients that launch it.
//! - [`peers`]: server-everything and the Python MCP client over HTTP.
//! - [`other_user`]: a second, real user for the peer-identity tests.
//!
//! Every wait is bounded; a helper that times out panics with what it was
//! waiting for.

#![allow(dead_code)]

pub mod bridge;
pub mod http;
pub mod other_user;
pub mod peers;
pub mod serve;
pub mod unique;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The bound on a single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_thv-actor")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test with what to run when the suite's set-up is missing, so
/// that a keychain test never passes by skipping.
pub fn require_setup() {
    if std::env::var_os("THV_TEST_SETUP").is_none()
        && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
    {
        panic!(
            "these tests need the real keychains that ./scripts/test starts; run ./scripts/test"
        );
    }
}

/// A workload name unique to this test run.
pub fn unique(tag: &str) -> String {
    unique::unique_name("e2e", tag)
}

/// A private state directory and the keystore the commands use.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub keystore: &'static str,
}

impl Env {
    pub fn new(keystore: &'static str) -> Env {
        require_setup();
        Env {
            dir: tempfile::tempdir().unwrap(),
            keystore,
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `thv-actor <args>` with this environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("THV_ACTOR_STATE_DIR", self.dir.path())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `thv-actor <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn thv-actor")
    }

    /// Runs it in a new session keyring of its own (`keyctl session -`), as
    /// a process of a separate login would be.
    pub fn run_in_new_session(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("keyctl");
        cmd.arg("session")
            .arg("-")
            .arg(bin())
            .args(args)
            .env("THV_ACTOR_STATE_DIR", self.dir.path())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .stdin(Stdio::null());
        cmd.output()
            .expect("spawn keyctl (scripts/setup installs keyutils)")
    }
}

/// Both Linux keystores, by their CLI names.
pub const KEYSTORES: [&str; 2] = ["secret-service", "keyutils"];

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr when not.
pub fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "exit {:?}; stderr:\n{}",
        o.status,
        stderr(o)
    );
    o
}

/// Runs `cmd` (stdin closed, output piped) to completion within `limit`;
/// kills it and panics with its stderr when it overruns.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());

    let Some(status) = wait_bounded(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
            String::from_utf8_lossy(&err.join().unwrap())
        );
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Reads all of `from` on a thread.
fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        bytes
    })
}

/// Lines of a child's output, read on a thread, handed over a channel.
pub fn line_reader(from: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
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

/// `text` without ANSI colour sequences (serve colours its log even into a
/// file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
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

/// The port of an `http://127.0.0.1:<port>/...` URL.
pub fn port_of(url: &str) -> u16 {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .expect("a loopback URL");
    rest.split('/').next().unwrap().parse().expect("a port")
}

/// Asserts `path` does not exist within [`WAIT`].
pub fn assert_gone(path: &Path) {
    assert!(
        eventually(WAIT, || !path.exists()),
        "{} still exists",
        path.display()
    );
}
