//! The `embed` example, built and run as a user would run it: with
//! `cargo run`, a real keychain and real HTTP on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thv_actors::{Backend, BackendChoice, BackendKind, DeleteKeys, KeyStore, WorkloadName};

/// The first build of the example in a fresh target directory is slow, and
/// other engineers' builds may hold the lock.
const BUILD_AND_RUN: Duration = Duration::from_secs(300);

/// How long the example may take to stop after SIGTERM.
const STOP: Duration = Duration::from_secs(30);

fn workload(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("embed-{tag}-{}-{nanos}", std::process::id())
}

/// `cargo run --quiet -p thv-server --example embed`, stderr to a file.
fn example(scratch: &std::path::Path, workload: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "--quiet", "-p", "thv-server", "--example", "embed"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("EMBED_WORKLOAD", workload)
        .env("EMBED_PORT", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(scratch.join("stderr.log")).unwrap());
    cmd
}

/// Waits for `child` to exit, killing it after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn stderr_of(scratch: &std::path::Path) -> String {
    std::fs::read_to_string(scratch.join("stderr.log")).unwrap_or_default()
}

#[test]
fn self_test_mode_refuses_without_the_key_admits_with_it_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let name = workload("self");

    // The keystore is left to `auto`, as a user would leave it.
    let mut child = example(dir.path(), &name)
        .env("EMBED_SELF_TEST", "1")
        .spawn()
        .expect("cargo runs");
    let status = wait_bounded(&mut child, BUILD_AND_RUN);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let stderr = stderr_of(dir.path());

    let status = status.unwrap_or_else(|| {
        panic!("the example did not finish within {BUILD_AND_RUN:?}\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("listening on http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("self-test ok"), "{stdout}");
    assert!(
        stderr.contains("shared key refused"),
        "the 401 was not audited:\n{stderr}"
    );
    assert!(
        stderr.contains("keys deleted"),
        "the key was not deleted:\n{stderr}"
    );
}

#[test]
fn serve_mode_answers_until_sigterm_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let name = workload("sigterm");

    // The kernel keyring, so that this test can delete the key afterwards
    // from the same backend.
    let mut child = example(dir.path(), &name)
        .env("THV_ACTOR_KEYSTORE", "keyutils")
        .spawn()
        .expect("cargo runs");

    // Read: the line that names the port, from a thread, so that a hang
    // cannot outlast the limit.
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let port = loop {
        match line_rx.recv_timeout(BUILD_AND_RUN) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening on http://127.0.0.1:") {
                    break addr.trim().parse::<u16>().unwrap();
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening on` line\n{}", stderr_of(dir.path()));
            }
        }
    };

    // Check: the public route answers, the protected one refuses.
    assert!(get(port, "/public/health").starts_with("HTTP/1.1 200"));
    let refused = get(port, "/api/whoami");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    // Act: SIGTERM, as a service manager sends it.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; pid is our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_bounded(&mut child, STOP);

    delete_key(&name);
    let status = status.unwrap_or_else(|| panic!("still running {STOP:?} after SIGTERM"));
    assert!(status.success(), "exit {status}\n{}", stderr_of(dir.path()));
}

/// A plain HTTP/1.1 GET on loopback; the whole response as text.
fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn delete_key(name: &str) {
    let backend = Backend::open(BackendChoice::Named(BackendKind::Keyutils)).unwrap();
    let workload = WorkloadName::new(name).unwrap();
    let deleted = actix::System::new().block_on(async move {
        KeyStore::start(backend)
            .unwrap()
            .send(DeleteKeys { workload })
            .await
    });
    assert!(
        deleted.unwrap().unwrap(),
        "the example did not leave the key it created"
    );
}

/// The Rust excerpts in docs/embedding.md that say they come from the
/// example: each one's lines must appear in the example, in order.
#[test]
fn docs_excerpts_match_the_example() {
    const MARKER: &str = "// from server/examples/embed.rs";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../docs/embedding.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/embed.rs")).unwrap();
    let source: Vec<&str> = example.lines().map(str::trim).collect();

    let mut excerpts = 0;
    for block in docs.split("```rust\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut lines = block.lines();
        if lines.next().map(str::trim) != Some(MARKER) {
            continue;
        }
        excerpts += 1;

        // Each line must come after the previous one's match.
        let mut at = 0;
        for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
            match source[at..].iter().position(|s| *s == line) {
                Some(found) => at += found + 1,
                None => panic!(
                    "docs/embedding.md quotes a line the example does not have (in this \
                     order): {line:?}\nupdate the excerpt from server/examples/embed.rs"
                ),
            }
        }
    }
    assert!(
        excerpts >= 4,
        "only {excerpts} checked excerpts in docs/embedding.md"
    );
}
