//! The peer check end to end, with the real binary and a client running as
//! a second, real user (`thv-peer-e2e`, created when missing): that user is
//! refused over loopback TCP and over a Unix socket even with the right key,
//! also once the socket's file modes would let it in; serve's own user and
//! an allow-listed uid are admitted; `peer_check = false` admits anyone and
//! says so loudly. And a `listen = "unix:..."` workload is usable through
//! `thv-actor bridge`, published as a `unix:` URL, mode 0600, and removed
//! when serve stops.
//!
//! These tests need root (CI runs as root): they create the user and run
//! the client with `setpriv`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::bridge::{echo_call, Bridge};
use support::http::INITIALIZE;
use support::other_user::other_user;
use support::other_user::python;
use support::peers::Everything;
use support::serve::Serve;

const OTHER_USER: &str = "thv-peer-e2e";

/// How long any one wait in these tests may take.
const WAIT: Duration = Duration::from_secs(20);

fn home() -> tempfile::TempDir {
    support::require_setup();
    tempfile::tempdir().unwrap()
}

/// Reads the key from its first stdin line (so it is in no argv), sends one
/// initialize with it over TCP (`tcp <port>`) or a Unix socket (`unix
/// <path>`), prints the outcome as one JSON line, and then holds its socket
/// open until stdin closes, so that serve can still find its pid.
const CLIENT: &str = r#"
import json, socket, sys
kind, target, body = sys.argv[1], sys.argv[2], sys.argv[3]
key = sys.stdin.readline().strip()
try:
    if kind == "tcp":
        s = socket.create_connection(("127.0.0.1", int(target)), timeout=10)
        host = "127.0.0.1:" + target
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(target)
        host = "localhost"
except OSError as e:
    print(json.dumps({"connect_error": type(e).__name__, "errno": e.errno}), flush=True)
    sys.stdin.read()
    sys.exit(0)
head = ("POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nX-ToolHive-Auth: %s\r\n"
        "Content-Length: %d\r\nConnection: close\r\n\r\n" % (host, key, len(body)))
s.sendall(head.encode() + body.encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
status = int(head.split()[1]) if head else 0
print(json.dumps({"status": status, "body": rest.decode("utf-8", "replace")}), flush=True)
sys.stdin.read()
"#;

/// Where the client connects.
#[derive(Clone)]
enum Target {
    Tcp(u16),
    Unix(PathBuf),
}

/// A client process that has answered, still holding its connection.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    outcome: Value,
}

impl Client {
    /// Runs [`CLIENT`] as `user` (uid, gid) or, with `None`, as us.
    fn run(user: Option<(u32, u32)>, target: &Target, key: &str) -> Client {
        let mut cmd = match user {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(python());
                cmd
            }
            None => Command::new(python()),
        };
        let (kind, where_) = match target {
            Target::Tcp(port) => ("tcp", port.to_string()),
            Target::Unix(path) => ("unix", path.display().to_string()),
        };
        // setpriv execs in place: the child's pid is the client's.
        let mut child = cmd
            .arg("-c")
            .arg(CLIENT)
            .args([kind, &where_, INITIALIZE])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the client");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{key}").unwrap();
        stdin.flush().unwrap();

        let outcome = first_line(child.stdout.take().unwrap());
        Client {
            child,
            stdin: Some(stdin),
            outcome,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status(&self) -> u64 {
        self.outcome["status"].as_u64().unwrap_or_else(|| {
            panic!("the client got no response: {}", self.outcome);
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's one output line, read on a thread so that a hung client
/// fails the test after [`WAIT`] instead of hanging it.
fn first_line(stdout: ChildStdout) -> Value {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the client printed nothing in time");
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("the client's line is not json ({e}): {line:?}"))
}

/// Asserts a peer-check refusal: 403 with a JSON-RPC error body naming the
/// uid.
fn assert_refused(client: &Client, uid: u32) {
    assert_eq!(client.status(), 403, "{}", client.outcome);
    let body: Value = serde_json::from_str(client.outcome["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("403 body is not json ({e}): {}", client.outcome));
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert_eq!(body["id"], Value::Null, "{body}");
    assert_eq!(body["error"]["code"], -32003, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("uid {uid}")), "{message}");
}

/// Waits for serve's audit line of a refusal of `pid`, and returns it.
fn audit_line(serve: &Serve, workload: &str, pid: u32) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let stderr = support::strip_ansi(&serve.stderr());
        let found = stderr.lines().find(|l| {
            l.contains("peer refused")
                && l.contains(workload)
                && l.contains(&format!("peer_pid={pid}"))
        });
        if let Some(line) = found {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for pid {pid} on {workload}; serve's stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A demo workload table with `extra` lines.
fn demo(name: &str, extra: &str) -> String {
    format!(
        "[[workloads]]\nname = \"{name}\"\ncommand = [\"{}\", \"demo-server\"]\n{extra}\n",
        support::bin()
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Opens the way to `socket` for every user: the directories above it
/// (up to `home`) and the socket file itself.
fn open_modes(home: &Path, socket: &Path) {
    chmod(home, 0o755);
    chmod(socket.parent().unwrap(), 0o777);
    chmod(socket, 0o777);
    assert_eq!(mode(socket), 0o777);
}

fn rm(serve: &Serve, workloads: &[&str]) {
    for w in workloads {
        let out = serve.cli(&["rm", w]);
        assert!(
            out.status.success(),
            "rm {w}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn another_user_is_refused_over_tcp_and_unix_even_with_the_key_while_serves_user_is_admitted() {
    let other = other_user(OTHER_USER);
    let dir = home();
    let tcp = support::unique("peer-tcp");
    let unix = support::unique("peer-uds");
    let socket = dir.path().join("sock").join("w.sock");
    let config = format!(
        "{}{}",
        demo(&tcp, ""),
        demo(&unix, &format!("listen = \"unix:{}\"", socket.display()))
    );
    let serve = Serve::start(dir.path(), "keyutils", &config, 2, &[]);
    let port = serve.port(&tcp);
    let tcp_key = serve.key(&tcp);
    let unix_key = serve.key(&unix);

    // Loopback TCP: the other user is refused with the right key, and the
    // refusal is audited with its uid, pid and executable.
    let refused = Client::run(Some(other), &Target::Tcp(port), &tcp_key);
    assert_refused(&refused, other.0);
    let line = audit_line(&serve, &tcp, refused.pid());
    assert!(line.contains(&format!("peer_uid={}", other.0)), "{line}");
    assert!(line.contains("exe=") && line.contains("python"), "{line}");
    assert!(!line.contains(&tcp_key), "the key is in the audit line");
    drop(refused);

    let admitted = Client::run(None, &Target::Tcp(port), &tcp_key);
    assert_eq!(admitted.status(), 200, "{}", admitted.outcome);

    // The Unix socket: the file modes keep the other user out first...
    let target = Target::Unix(socket.clone());
    let kept_out = Client::run(Some(other), &target, &unix_key);
    assert_eq!(
        kept_out.outcome["connect_error"], "PermissionError",
        "{}",
        kept_out.outcome
    );
    drop(kept_out);

    // ...and with them opened, the kernel's peer credentials alone refuse.
    open_modes(dir.path(), &socket);
    let refused = Client::run(Some(other), &target, &unix_key);
    assert_refused(&refused, other.0);
    let line = audit_line(&serve, &unix, refused.pid());
    assert!(line.contains(&format!("peer_uid={}", other.0)), "{line}");
    assert!(line.contains("exe=") && line.contains("python"), "{line}");
    drop(refused);

    let admitted = Client::run(None, &target, &unix_key);
    assert_eq!(admitted.status(), 200, "{}", admitted.outcome);
    drop(admitted);

    rm(&serve, &[&tcp, &unix]);
}

#[test]
fn an_allow_listed_uid_is_admitted_and_peer_check_off_admits_anyone_with_a_loud_warning() {
    let other = other_user(OTHER_USER);
    let dir = home();
    let listed_tcp = support::unique("allow-tcp");
    let listed_unix = support::unique("allow-uds");
    let open = support::unique("nocheck");
    let socket = dir.path().join("sock").join("a.sock");
    let config = format!(
        "{}{}{}",
        demo(&listed_tcp, &format!("allowed_uids = [0, {}]", other.0)),
        demo(
            &listed_unix,
            &format!(
                "listen = \"unix:{}\"\nallowed_uids = [0, {}]",
                socket.display(),
                other.0
            )
        ),
        demo(&open, "peer_check = false"),
    );
    let serve = Serve::start(dir.path(), "keyutils", &config, 3, &[]);

    let stderr = support::strip_ansi(&serve.stderr());
    let warning = stderr
        .lines()
        .find(|l| l.contains("PEER CHECK IS OFF") && l.contains(&open))
        .map(str::to_owned);
    let warning = warning.expect("no warning that the peer check is off");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("PEER CHECK IS OFF") && l.contains(&listed_tcp)),
        "warned about a workload whose peer check is on"
    );

    let listed = Client::run(
        Some(other),
        &Target::Tcp(serve.port(&listed_tcp)),
        &serve.key(&listed_tcp),
    );
    assert_eq!(listed.status(), 200, "{}", listed.outcome);
    drop(listed);

    open_modes(dir.path(), &socket);
    let listed = Client::run(
        Some(other),
        &Target::Unix(socket.clone()),
        &serve.key(&listed_unix),
    );
    assert_eq!(listed.status(), 200, "{}", listed.outcome);
    drop(listed);

    let unchecked = Client::run(
        Some(other),
        &Target::Tcp(serve.port(&open)),
        &serve.key(&open),
    );
    assert_eq!(unchecked.status(), 200, "{}", unchecked.outcome);
    drop(unchecked);

    // Being let past the peer check is not being let past the key.
    let no_key = Client::run(Some(other), &Target::Tcp(serve.port(&open)), "nope");
    assert_eq!(no_key.status(), 401, "{}", no_key.outcome);
    drop(no_key);

    rm(&serve, &[&listed_tcp, &listed_unix, &open]);
}

#[test]
fn bridge_reaches_a_unix_socket_workload_published_as_a_unix_url_and_the_socket_goes_at_stop() {
    let dir = home();
    let w = support::unique("bridge-uds");
    let socket = dir.path().join("sock").join("b.sock");
    let config = demo(&w, &format!("listen = \"unix:{}\"", socket.display()));
    let mut serve = Serve::start(dir.path(), "keyutils", &config, 1, &[]);
    let url = format!("unix:{}", socket.display());

    // Published as the socket, with nothing after the path.
    assert_eq!(serve.url(&w), url);
    let list = serve.cli(&["list", "--json"]);
    assert!(list.status.success());
    let list: Value = serde_json::from_slice(&list.stdout).expect("list --json is json");
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == w.as_str())
        .unwrap_or_else(|| panic!("{w} not listed: {list}"))
        .clone();
    assert_eq!(entry["url"], url.as_str(), "{entry}");

    // The socket is ours alone.
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);

    // The bridge, finding the workload in serve's state.
    let mut bridge = Bridge::spawn(dir.path(), &w, &[]);
    bridge.handshake(1);
    bridge.send(&echo_call(2, "through the socket"));
    let answer = bridge.response(&Value::from(2), WAIT);
    assert_eq!(answer["id"], 2, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"));
    assert!(text.contains("through the socket"), "{answer}");
    drop(bridge);

    // And with --url naming the socket.
    let mut bridge = Bridge::spawn(dir.path(), &w, &["--url", &url]);
    bridge.handshake(1);
    bridge.send(&echo_call(3, "by url"));
    let answer = bridge.response(&Value::from(3), WAIT);
    assert!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("by url")),
        "{answer}"
    );
    drop(bridge);

    // SIGTERM: serve stops the workload and removes its socket.
    assert!(socket.exists());
    assert_eq!(
        serve.stop().and_then(|s| s.code()),
        Some(0),
        "{}",
        serve.stderr()
    );
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "the socket file is left after serve stopped"
    );

    // Its keys, with serve stopped.
    rm(&serve, &[&w]);
}

#[test]
fn bridge_takes_the_sse_transport_of_a_unix_socket_workload_from_serves_state() {
    let dir = home();
    let upstream = Everything::start_sse();
    let w = support::unique("bridge-uds-sse");
    let socket = dir.path().join("sock").join("s.sock");
    let config = format!(
        "[[workloads]]\nname = \"{w}\"\nurl = \"http://127.0.0.1:{}/sse\"\ntransport = \"sse\"\nlisten = \"unix:{}\"\n",
        upstream.port,
        socket.display()
    );
    let serve = Serve::start(dir.path(), "keyutils", &config, 1, &[]);
    assert_eq!(serve.url(&w), format!("unix:{}", socket.display()));

    let mut bridge = Bridge::spawn(dir.path(), &w, &[]);
    bridge.handshake(1);
    bridge.send(&echo_call(2, "legacy over the socket"));
    let answer = bridge.response(&Value::from(2), WAIT);
    assert_eq!(answer["id"], 2, "{answer}");
    assert!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("legacy over the socket")),
        "{answer}"
    );
    drop(bridge);

    rm(&serve, &[&w]);
}
