//! Peer identity against the real kernel: sock_diag lookups of loopback TCP
//! clients, `SO_PEERCRED` on Unix sockets, a client running as another
//! user, and `PeerGuard` in a real actix-web server.
//!
//! The other-user tests need root (to create the user `thv-peer-test` and
//! run a client as it); they fail with a message saying so otherwise.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use thv_server::peer::{
    self, describe_pid, pid_of_inode, tcp_peer, unix_peer, IdentitySource, PeerGuard, PeerIdentity,
    PeerPolicy,
};

#[path = "../../tests/support/other_user.rs"]
mod other_user;

use other_user::{other_user, our_uid, python};

const OTHER_USER: &str = "thv-peer-test";

/// The inode of the socket behind `fd`, as the client sees it.
fn inode_of(fd: &impl AsRawFd) -> u64 {
    // SAFETY: an all-zero stat is valid and is overwritten by fstat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` outlives the call.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) };
    assert_eq!(rc, 0, "fstat failed");
    stat.st_ino
}

/// A connected client and the server's end of it.
fn connect(listener: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(to).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

fn lookup(server_end: &TcpStream) -> PeerIdentity {
    tcp_peer(
        server_end.local_addr().unwrap(),
        server_end.peer_addr().unwrap(),
    )
}

/// A directory of our own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "thv-peer-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` with `args` as `thv-peer-test`. setpriv execs in place, so
/// the child's pid is the client's pid.
fn run_as_other(script: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let (uid, gid) = other_user(OTHER_USER);
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run setpriv");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

fn first_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read the client's output");
    line.trim().to_owned()
}

/// Connects, prints the local port (TCP) or `connected` (Unix), and holds
/// the connection until stdin closes.
const HOLD_CLIENT: &str = r#"
import socket, sys
kind, target = sys.argv[1], sys.argv[2]
if kind == "tcp":
    host, port = target.rsplit(":", 1)
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    print(s.getsockname()[1], flush=True)
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(target)
    print("connected", flush=True)
sys.stdin.read()
"#;

/// Sends one HTTP GET and prints the status code, then the body.
const HTTP_CLIENT: &str = r#"
import socket, sys
kind, target = sys.argv[1], sys.argv[2]
if kind == "tcp":
    host, port = target.rsplit(":", 1)
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(target)
s.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b" ")[1].decode(), flush=True)
print(body.decode(), flush=True)
sys.stdin.read()
"#;

#[test]
fn tcp_peer_names_our_uid_and_the_client_socket_over_ipv4_and_ipv6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(bind).unwrap();
        let (client, server) = connect(&listener, listener.local_addr().unwrap());

        let id = lookup(&server);

        assert_eq!(id.source, IdentitySource::SockDiag, "{bind}: {id:?}");
        assert_eq!(id.uid, Some(our_uid()), "{bind}");
        assert_eq!(id.inode, Some(inode_of(&client)), "{bind}");
        assert_eq!(id.pid, None);
    }
}

#[test]
fn tcp_peer_finds_dual_stack_clients_and_listeners() {
    // An IPv6 client socket connecting to a v4-mapped address, accepted by
    // an IPv4 listener: the server sees plain IPv4 addresses.
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", v4.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let (client, server) = connect(&v4, mapped);
    assert!(server.peer_addr().unwrap().is_ipv4());
    assert_eq!(lookup(&server).inode, Some(inode_of(&client)));

    // An IPv4 client accepted by a dual-stack [::] listener: the server sees
    // v4-mapped addresses.
    let dual = TcpListener::bind("[::]:0").unwrap();
    let to: SocketAddr = format!("127.0.0.1:{}", dual.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let (client, server) = connect(&dual, to);
    assert!(server.peer_addr().unwrap().is_ipv6());
    let id = lookup(&server);
    assert_eq!(id.uid, Some(our_uid()), "{id:?}");
    assert_eq!(id.inode, Some(inode_of(&client)));
}

#[test]
fn tcp_peer_of_a_socket_that_does_not_exist_is_unknown() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();

    let id = tcp_peer(local, "127.0.0.1:9".parse().unwrap());

    assert_eq!(id.uid, None);
    assert_eq!(
        id.source,
        IdentitySource::Unknown("no such socket on this host")
    );
}

#[test]
fn tcp_peer_of_a_client_that_already_closed_is_unknown() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (client, server) = connect(&listener, listener.local_addr().unwrap());

    // The client's socket lingers in FIN_WAIT2 with no process owning it.
    drop(client);
    thread::sleep(Duration::from_millis(50));
    let id = lookup(&server);

    assert_eq!(id.uid, None, "{id:?}");
    assert_eq!(
        id.source,
        IdentitySource::Unknown("peer socket has no owner")
    );
}

#[test]
fn unix_peer_names_our_uid_and_pid() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let _client = UnixStream::connect(&path).unwrap();
    let (server, _) = listener.accept().unwrap();

    let id = unix_peer(server.as_raw_fd());

    assert_eq!(id.source, IdentitySource::PeerCred);
    assert_eq!(id.uid, Some(our_uid()));
    assert_eq!(id.pid, Some(std::process::id()));
    assert!(describe_pid(std::process::id()).is_some_and(|exe| exe.contains("peer_identity")));
}

#[test]
fn unix_peer_of_a_file_that_is_not_a_socket_is_unknown() {
    let file = std::fs::File::open("/proc/self/status").unwrap();

    let id = unix_peer(file.as_raw_fd());

    assert!(matches!(id.source, IdentitySource::Unknown(_)), "{id:?}");
}

#[test]
fn concurrent_lookups_never_attribute_a_socket_to_another_connection() {
    const CLIENTS: usize = 200;
    const ACCEPTORS: usize = 4;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    // Acceptors look each connection up as soon as it arrives, while other
    // clients are still connecting.
    let (found_tx, found_rx) = mpsc::channel();
    let acceptors: Vec<_> = (0..ACCEPTORS)
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            let found_tx = found_tx.clone();
            thread::spawn(move || {
                let mut held = Vec::new();
                for _ in 0..CLIENTS / ACCEPTORS {
                    let (server, peer) = listener.accept().unwrap();
                    found_tx.send((peer, lookup(&server))).unwrap();
                    held.push(server);
                }
                held
            })
        })
        .collect();
    drop(found_tx);

    let (client_tx, client_rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client_tx = client_tx.clone();
            thread::spawn(move || {
                let client = TcpStream::connect(addr).unwrap();
                let local = client.local_addr().unwrap();
                client_tx.send((local, inode_of(&client), client)).unwrap();
            })
        })
        .collect();
    drop(client_tx);
    for client in clients {
        client.join().unwrap();
    }

    let expected: HashMap<SocketAddr, (u64, TcpStream)> = client_rx
        .iter()
        .map(|(local, inode, stream)| (local, (inode, stream)))
        .collect();
    let found: Vec<(SocketAddr, PeerIdentity)> = found_rx.iter().collect();
    let _held: Vec<_> = acceptors.into_iter().map(|a| a.join().unwrap()).collect();

    assert_eq!(
        expected.len(),
        CLIENTS,
        "clients connected from distinct ports"
    );
    assert_eq!(found.len(), CLIENTS);
    for (peer, id) in &found {
        let (inode, _) = &expected[peer];
        assert_eq!(id.inode, Some(*inode), "connection from {peer}: {id:?}");
        assert_eq!(id.uid, Some(our_uid()));
    }
}

#[test]
fn a_client_running_as_another_user_is_named_with_that_uid() {
    let (other_uid, _) = other_user(OTHER_USER);

    // TCP: the client prints its ephemeral port; find our end of it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let (mut child, mut out) = run_as_other(HOLD_CLIENT, &["tcp", &target]);
    let (server, peer) = listener.accept().unwrap();
    let port: u16 = first_line(&mut out).parse().expect("the client's port");
    assert_eq!(peer.port(), port);

    let id = lookup(&server);

    assert_eq!(id.uid, Some(other_uid), "{id:?}");
    let pid = id.inode.and_then(pid_of_inode);
    assert_eq!(pid, Some(child.id()), "the audit lookup finds the client");
    assert!(describe_pid(child.id()).is_some_and(|exe| exe.contains("python")));
    drop(child.stdin.take());
    child.wait().unwrap();

    // Unix: a socket anyone may connect to.
    let dir = TempDir::new("other-unix");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (mut child, mut out) = run_as_other(HOLD_CLIENT, &["unix", path.to_str().unwrap()]);
    let (server, _) = listener.accept().unwrap();
    assert_eq!(first_line(&mut out), "connected");

    let id = unix_peer(server.as_raw_fd());

    assert_eq!(id.uid, Some(other_uid), "{id:?}");
    assert_eq!(id.pid, Some(child.id()));
    drop(child.stdin.take());
    child.wait().unwrap();
}

/// An actix-web server with `on_connect` and `PeerGuard` on a TCP and a
/// Unix listener, in a thread of its own.
struct GuardedServer {
    tcp: SocketAddr,
    unix: PathBuf,
    _dir: TempDir,
    handle: actix_web::dev::ServerHandle,
}

impl GuardedServer {
    fn start(policy: PeerPolicy) -> GuardedServer {
        let dir = TempDir::new("guard");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let unix = dir.path().join("mcp.sock");
        let tcp_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = tcp_listener.local_addr().unwrap();
        let unix_listener = UnixListener::bind(&unix).unwrap();
        // Only the kernel check may refuse: the file lets anyone connect.
        std::fs::set_permissions(&unix, std::fs::Permissions::from_mode(0o777)).unwrap();

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .route("/hello", web::get().to(hello))
                        .wrap(PeerGuard::new(policy.clone(), "time".parse().unwrap()))
                })
                .on_connect(peer::on_connect)
                .workers(1)
                .listen(tcp_listener)
                .unwrap()
                .listen_uds(unix_listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                server.await.unwrap();
            });
        });
        let handle = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        GuardedServer {
            tcp,
            unix,
            _dir: dir,
            handle,
        }
    }

    /// Status and body of `GET /hello` from this process.
    fn get_as_us(&self, over_unix: bool) -> (u16, String) {
        let request = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        if over_unix {
            let mut s = UnixStream::connect(&self.unix).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request).unwrap();
            s.read_to_string(&mut response).unwrap();
        } else {
            let mut s = TcpStream::connect(self.tcp).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request).unwrap();
            s.read_to_string(&mut response).unwrap();
        }
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    /// Status and body of `GET /hello` from a client running as
    /// `thv-peer-test`.
    fn get_as_other(&self, over_unix: bool) -> (u16, String) {
        let (status, body, _client) = self.get_as_other_and_hold(over_unix);
        (status, body)
    }

    /// As [`GuardedServer::get_as_other`], keeping the client process
    /// alive until the returned [`HeldClient`] is dropped.
    fn get_as_other_and_hold(&self, over_unix: bool) -> (u16, String, HeldClient) {
        let target = if over_unix {
            self.unix.to_str().unwrap().to_owned()
        } else {
            self.tcp.to_string()
        };
        let kind = if over_unix { "unix" } else { "tcp" };
        let (child, mut out) = run_as_other(HTTP_CLIENT, &[kind, &target]);
        let status = first_line(&mut out);
        let body = first_line(&mut out);
        (
            status.parse().expect("a status code"),
            body,
            HeldClient(child),
        )
    }
}

/// A client process that exits when dropped.
struct HeldClient(Child);

impl Drop for HeldClient {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let status = self.0.wait().unwrap();
        if !thread::panicking() {
            assert!(status.success(), "the client failed: {status}");
        }
    }
}

/// The text of every log line this process writes from now on, whichever
/// thread writes it.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first captured line containing every one of `needles`, waiting up
/// to 10 s for it.
fn wait_for_line(logs: &Mutex<Vec<u8>>, needles: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if let Some(line) = text
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return Some(line.to_owned());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for GuardedServer {
    fn drop(&mut self) {
        actix_rt::System::new().block_on(self.handle.stop(false));
    }
}

async fn hello() -> HttpResponse {
    HttpResponse::Ok().body("hello")
}

#[test]
fn peer_guard_admits_our_uid_and_refuses_another_user_over_tcp_and_unix() {
    other_user(OTHER_USER);
    let server = GuardedServer::start(PeerPolicy::default());

    for over_unix in [false, true] {
        let (status, body) = server.get_as_us(over_unix);
        assert_eq!((status, body.as_str()), (200, "hello"), "unix: {over_unix}");

        let (status, body) = server.get_as_other(over_unix);
        assert_eq!(status, 403, "unix: {over_unix}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], thv_server::jsonrpc::FORBIDDEN);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not use workload time"));
    }
}

#[test]
fn a_refusal_is_audited_with_the_peer_pid_and_executable_over_tcp_and_unix() {
    let (other_uid, _) = other_user(OTHER_USER);
    let logs = capture_logs();
    let server = GuardedServer::start(PeerPolicy::default());

    for over_unix in [false, true] {
        let (status, _, client) = server.get_as_other_and_hold(over_unix);
        assert_eq!(status, 403);

        // For TCP the pid comes from the /proc scan done after the
        // response; the client is still alive, so it must be found.
        let pid = format!("peer_pid={}", client.0.id());
        let uid = format!("peer_uid={other_uid}");
        let line = wait_for_line(
            &logs,
            &["peer refused", &uid, &pid, "exe=", "workload=time"],
        );
        assert!(
            line.as_deref().is_some_and(|l| l.contains("python")),
            "no audit line for unix: {over_unix} with {pid}: {line:?}"
        );
    }
}

#[test]
fn peer_guard_admits_an_allow_listed_uid() {
    let (other_uid, _) = other_user(OTHER_USER);
    let mut policy = PeerPolicy::default();
    policy.allowed_uids.push(other_uid);
    let server = GuardedServer::start(policy);

    for over_unix in [false, true] {
        let (status, body) = server.get_as_other(over_unix);
        assert_eq!((status, body.as_str()), (200, "hello"), "unix: {over_unix}");
    }
}

#[test]
fn peer_guard_refuses_when_only_another_uid_is_allowed() {
    let policy = PeerPolicy {
        allowed_uids: vec![our_uid() + 4242],
        ..PeerPolicy::default()
    };
    let server = GuardedServer::start(policy);

    let (status, _) = server.get_as_us(false);

    assert_eq!(status, 403);
}

/// Raises the open-file limit to at least `want`.
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` outlives both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(limit.rlim_cur >= want, "need {want} open files");
}

/// µs per lookup over `n` fresh connections.
fn time_lookups(n: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pairs: Vec<_> = (0..n).map(|_| connect(&listener, addr)).collect();

    let started = Instant::now();
    for (_, server) in &pairs {
        assert_eq!(lookup(server).source, IdentitySource::SockDiag);
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[test]
#[ignore = "benchmark: prints the cost of a lookup with few and with many sockets open"]
fn bench_lookup_cost_with_10_and_10000_other_sockets() {
    const LOOKUPS: usize = 1000;
    const OTHER_PAIRS: usize = 5000;
    raise_nofile((2 * (OTHER_PAIRS + LOOKUPS) + 256) as u64);

    // Warm up the netlink and diag modules, then measure with the machine
    // nearly idle.
    time_lookups(50);
    let few = time_lookups(LOOKUPS);

    let crowd = TcpListener::bind("127.0.0.1:0").unwrap();
    let crowd_addr = crowd.local_addr().unwrap();
    let _others: Vec<_> = (0..OTHER_PAIRS)
        .map(|_| connect(&crowd, crowd_addr))
        .collect();
    let many = time_lookups(LOOKUPS);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (client, _server) = connect(&listener, listener.local_addr().unwrap());
    let started = Instant::now();
    let pid = pid_of_inode(inode_of(&client));
    let scan = started.elapsed();

    println!("sock_diag lookup, ~10 other sockets:     {few:.1} µs");
    println!("sock_diag lookup, 10,000 other sockets:  {many:.1} µs");
    println!("ratio many/few:                          {:.2}", many / few);
    println!(
        "pid_of_inode /proc scan (refusal audit only), 10,000 sockets: {:.1} ms (found: {})",
        scan.as_secs_f64() * 1e3,
        pid.is_some()
    );
}
