//! Faults from the supervision and rotation design, each end to end with
//! the real binaries. In every case: no request without a valid key passes,
//! every request with one is answered by the workload or refused with an
//! error it can recover from, every bridge request gets exactly one answer,
//! and nothing hangs.

mod support;

use std::time::{Duration, Instant};

use support::bridge::{echo_call, Bridge};
use support::http::{post, INITIALIZE};
use support::serve::Serve;

fn home() -> tempfile::TempDir {
    support::require_setup();
    tempfile::tempdir().unwrap()
}

/// serve on the kernel keyring with the demo workload `w`, started.
fn demo_serve(home: &std::path::Path, w: &str) -> Serve {
    Serve::start(home, "keyutils", &support::serve::demo_config(&[w]), 1, &[])
}

#[test]
fn keystore_panic_mid_request_is_a_503_and_the_next_request_passes() {
    let dir = home();
    let w = support::unique("ksp");
    let serve = demo_serve(dir.path(), &w);
    let port = serve.port(&w);
    let key = serve.key(&w);
    assert_eq!(post(port, Some(&key), &[], INITIALIZE).status, 200);

    // Arm the fault, then empty the caches so the next request must ask the
    // KeyStore, whose backend call panics.
    assert!(serve.control(&w, "fault-keystore").contains("armed"));
    serve.control(&w, "invalidate");
    let during = post(port, Some(&key), &[], INITIALIZE);
    assert_eq!(during.status, 503, "{during:?}");
    assert_eq!(during.header("retry-after"), Some("1"));

    let after = post(port, Some(&key), &[], INITIALIZE);
    assert_eq!(after.status, 200, "{after:?}");
    assert!(
        serve.stderr().contains("actor restarted"),
        "restart not logged"
    );
    assert_eq!(post(port, None, &[], INITIALIZE).status, 401);
    serve.cli(&["rm", &w]);
}

#[test]
fn validator_panic_with_fifty_requests_in_flight_never_passes_a_bad_key() {
    let dir = home();
    let w = support::unique("vp");
    let serve = demo_serve(dir.path(), &w);
    let port = serve.port(&w);
    let key = serve.key(&w);
    let wrong = thv_actors::SharedKey::generate()
        .expose_encoded()
        .to_string();
    // A GET without a session is refused by the workload with 405 after the
    // key check: cheap, and it tells an accepted key from a refused one.
    let get = move |key: &str| {
        let head = format!(
            "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nX-ToolHive-Auth: {key}"
        );
        support::http::raw(port, head.as_bytes(), b"").status
    };
    assert_eq!(get(&key), 405);

    serve.control(&w, "fault-validator");
    let handles: Vec<_> = (0..60)
        .map(|i| {
            let k = if i % 6 == 5 {
                wrong.clone()
            } else {
                key.clone()
            };
            std::thread::spawn(move || (i % 6 == 5, get(&k)))
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        let (bad, status) = h.join().unwrap();
        if bad {
            assert!(status == 401 || status == 503, "a wrong key got {status}");
        } else {
            assert!(status == 405 || status == 503, "a good key got {status}");
        }
        failed += usize::from(status == 503);
    }
    // One armed Validator per worker: at most that many requests fail.
    assert!((1..=4).contains(&failed), "{failed} requests got 503");
    assert_eq!(get(&key), 405, "validator did not come back");
    serve.cli(&["rm", &w]);
}

#[test]
fn serial_keychain_outage_serves_cached_keys_for_the_bounded_time_then_fails_closed() {
    let dir = home();
    let w = support::unique("outage");
    let keyring =
        std::env::var("THV_TEST_KEYRING_ENV").expect("scripts/test sets THV_TEST_KEYRING_ENV");
    let serve = Serve::start(
        dir.path(),
        "secret-service",
        &support::serve::demo_config(&[&w]),
        1,
        &[
            ("THV_ACTOR_TEST_MAX_STALE_MS", "4000"),
            (
                "RUST_LOG",
                "info,actix_server=warn,thv_actors::validator=debug",
            ),
        ],
    );
    let port = serve.port(&w);
    let key = serve.key(&w);
    assert_eq!(post(port, Some(&key), &[], INITIALIZE).status, 200);

    // Every worker's Validator preloads the keys at start; the outage must
    // not begin before the last preload has read them (on a loaded machine
    // one worker's read can still be queued behind the key's creation).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let loaded = || {
        serve
            .stderr()
            .matches("keys loaded into the validator cache")
            .count()
    };
    assert!(
        support::eventually(Duration::from_secs(10), || loaded() >= workers),
        "only {} of {workers} workers loaded the keys; serve's log:\n{}",
        loaded(),
        serve.stderr()
    );

    let stopped = std::process::Command::new(&keyring)
        .arg("stop-secret-service")
        .status()
        .unwrap();
    assert!(stopped.success());
    let outage = Instant::now();

    // Cached keys keep validating while the outage is young.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        post(port, Some(&key), &[], INITIALIZE).status,
        200,
        "cached key refused; serve's log:\n{}",
        serve.stderr()
    );
    assert_eq!(
        post(port, Some("A".repeat(43).as_str()), &[], INITIALIZE).status,
        401
    );

    // A new workload cannot get a key, and says why.
    let other = support::unique("outage-new");
    let created = serve.cli(&["key", "create", &other]);
    assert!(!created.status.success());
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(
        err.contains("secret-service") && err.contains("unreachable"),
        "{err}"
    );

    // Past the bound, it fails closed.
    while outage.elapsed() < Duration::from_millis(5000) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = post(port, Some(&key), &[], INITIALIZE);
    assert_eq!(
        closed.status, 503,
        "stale keys still validating: {closed:?}"
    );
    assert!(serve.stderr().contains("keychain unreachable"));

    let started = std::process::Command::new(&keyring)
        .arg("start-secret-service")
        .status()
        .unwrap();
    assert!(started.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if post(port, Some(&key), &[], INITIALIZE).status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not come back with the keychain"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.cli(&["rm", &w]);
}

#[test]
fn a_killed_stdio_process_gives_a_recoverable_error_and_a_new_session_works() {
    let dir = home();
    let w = support::unique("kill");
    let serve = demo_serve(dir.path(), &w);
    let port = serve.port(&w);
    let key = serve.key(&w);
    let init = post(port, Some(&key), &[], INITIALIZE);
    assert_eq!(init.status, 200);
    let session = init.header("mcp-session-id").expect("session").to_owned();

    // Kill every MCP server process serve runs.
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        serve.pid(),
        serve.pid()
    ))
    .unwrap_or_default();
    let mut killed = 0;
    for pid in children.split_whitespace() {
        // SAFETY: kill on a child pid of the serve we started.
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
        killed += 1;
    }
    assert!(killed >= 1, "no child processes found");
    std::thread::sleep(Duration::from_millis(300));

    let call = echo_call(2, "after the crash").to_string();
    let lost = post(port, Some(&key), &[("Mcp-Session-Id", &session)], &call);
    assert!(
        lost.status == 404 || lost.text().contains("\"error\""),
        "a dead session answered as if alive: {lost:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = post(port, Some(&key), &[], INITIALIZE);
        if again.status == 200 {
            break;
        }
        assert!(again.status == 503 || again.status == 502, "{again:?}");
        assert!(Instant::now() < deadline, "no new session after the crash");
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.cli(&["rm", &w]);
}

#[test]
fn an_http_upstream_that_dies_is_a_502_and_serving_resumes_when_it_returns() {
    let dir = home();
    let w = support::unique("upstream");
    let upstream_port = free_port();
    let script = format!(
        r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get('content-length', 0)); self.rfile.read(n)
        body = json.dumps({{"jsonrpc": "2.0", "id": 1, "result": {{}}}}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', {upstream_port}), H).serve_forever()
"#
    );
    let start_upstream = || {
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .spawn()
            .unwrap();
        wait_port(upstream_port);
        KillOnDrop(child)
    };
    let upstream = start_upstream();
    let config =
        format!("[[workloads]]\nname = \"{w}\"\nurl = \"http://127.0.0.1:{upstream_port}/mcp\"\n");
    let serve = Serve::start(dir.path(), "keyutils", &config, 1, &[]);
    let port = serve.port(&w);
    let key = serve.key(&w);
    assert_eq!(post(port, Some(&key), &[], INITIALIZE).status, 200);

    drop(upstream);
    let started = Instant::now();
    let dead = post(port, Some(&key), &[], INITIALIZE);
    assert_eq!(dead.status, 502, "{dead:?}");
    assert!(
        dead.text().contains("\"id\":null") && dead.text().contains(&w),
        "{}",
        dead.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "502 took {:?}",
        started.elapsed()
    );
    assert_eq!(
        post(port, None, &[], INITIALIZE).status,
        401,
        "no key must still be refused"
    );

    let _upstream = start_upstream();
    assert_eq!(post(port, Some(&key), &[], INITIALIZE).status, 200);
    serve.cli(&["rm", &w]);
}

#[test]
fn serve_killed_and_restarted_under_three_live_bridges() {
    let dir = home();
    let w = support::unique("restart3");
    let mut serve = Serve::start(
        dir.path(),
        "keyutils",
        &support::serve::demo_config(&[&w]),
        1,
        &[],
    );
    let port = serve.port(&w);
    let mut bridges: Vec<Bridge> = (0..3).map(|_| Bridge::spawn(dir.path(), &w, &[])).collect();
    for b in &mut bridges {
        b.handshake(1);
        b.send(&echo_call(10, "before"));
        let answer = b.next(Duration::from_secs(30)).unwrap();
        assert_eq!(answer["result"]["content"][0]["text"], "before");
    }

    serve.kill();
    for (i, b) in bridges.iter_mut().enumerate() {
        b.send(&echo_call(20 + i as u64, "during"));
    }
    std::thread::sleep(Duration::from_millis(500));
    serve.restart(1);
    assert_eq!(serve.port(&w), port, "the port changed across the restart");

    // Each bridge answers its in-gap request exactly once (a result or an
    // error), then works again.
    for (i, b) in bridges.iter_mut().enumerate() {
        let answer = b
            .next(Duration::from_secs(60))
            .expect("the in-gap request was answered");
        assert_eq!(answer["id"], 20 + i as u64);
        b.send(&echo_call(30 + i as u64, "after"));
        let mut after = b
            .next(Duration::from_secs(60))
            .expect("answered after restart");
        if after.get("error").is_some() {
            b.send(&echo_call(40 + i as u64, "after"));
            after = b.next(Duration::from_secs(60)).expect("answered on retry");
        }
        assert_eq!(after["result"]["content"][0]["text"], "after", "{after}");
        assert!(
            b.next(Duration::from_millis(300)).is_none(),
            "a request was answered twice"
        );
    }
    serve.cli(&["rm", &w]);
}

#[test]
fn a_rotation_under_twenty_requests_per_second_through_a_bridge_loses_nothing() {
    let dir = home();
    let w = support::unique("rot20");
    let serve = demo_serve(dir.path(), &w);
    let mut bridge = Bridge::spawn(dir.path(), &w, &[]);
    bridge.handshake(1);
    let old = serve.key(&w);

    let total = 100u64;
    let started = Instant::now();
    for i in 0..total {
        // 20 per second, for five seconds; revoke the old key at once
        // half-way, so the bridge meets a 401 and must re-read the key.
        while started.elapsed() < Duration::from_millis(50 * i) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if i == total / 2 {
            let rotated = serve.cli(&["key", "rotate", &w, "--overlap", "0s"]);
            assert!(rotated.status.success());
        }
        bridge.send(&echo_call(1000 + i, &format!("m{i}")));
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < total as usize {
        let answer = bridge
            .next(Duration::from_secs(30))
            .expect("every request answered");
        assert!(
            answer.get("result").is_some(),
            "the client saw an error: {answer}"
        );
        assert!(
            seen.insert(answer["id"].as_u64().unwrap()),
            "answered twice: {answer}"
        );
    }
    assert_ne!(serve.key(&w), old);
    let port = serve.port(&w);
    assert_eq!(
        post(port, Some(&old), &[], INITIALIZE).status,
        401,
        "revoked key still valid"
    );
    serve.cli(&["rm", &w]);
}

#[test]
fn a_rotated_key_stops_validating_within_a_second_and_the_overlap_is_honoured() {
    let dir = home();
    let w = support::unique("rot1s");
    let serve = demo_serve(dir.path(), &w);
    let port = serve.port(&w);
    let first = serve.key(&w);
    assert_eq!(post(port, Some(&first), &[], INITIALIZE).status, 200);

    assert!(serve
        .cli(&["key", "rotate", &w, "--overlap", "2s"])
        .status
        .success());
    let second = serve.key(&w);
    assert_eq!(post(port, Some(&second), &[], INITIALIZE).status, 200);
    assert_eq!(
        post(port, Some(&first), &[], INITIALIZE).status,
        200,
        "overlap not honoured"
    );
    let listed = serve.cli(&["key", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == w.as_str())
        .unwrap();
    assert_eq!(row["previous_keys"].as_array().unwrap().len(), 1);
    assert!(!support::stdout(&listed).contains(&first[..20]));

    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(
        post(port, Some(&first), &[], INITIALIZE).status,
        401,
        "expired key still valid"
    );

    // Rotated away with no overlap, by another process: refused within a
    // second, through the control socket or the cache's refresh.
    assert!(serve
        .cli(&["key", "rotate", &w, "--overlap", "0s"])
        .status
        .success());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(post(port, Some(&second), &[], INITIALIZE).status, 401);
    serve.cli(&["rm", &w]);
}

#[test]
fn scheduled_rotation_follows_the_key_age_across_a_restart() {
    let dir = home();
    let w = support::unique("sched");
    let bin = support::bin();
    let config = format!(
        "[[workloads]]\nname = \"{w}\"\ncommand = [\"{bin}\", \"demo-server\"]\nkey_rotation_days = 1\nrotation_overlap = \"1h\"\n"
    );
    // A "day" of eight seconds, checked every 200 ms. Key times are kept in
    // whole seconds, so a day this short still leaves room for a restart.
    let env = [
        ("THV_ACTOR_TEST_DAY_MS", "8000"),
        ("THV_ACTOR_TEST_MAINTENANCE_MS", "200"),
    ];
    let mut serve = Serve::start(dir.path(), "keyutils", &config, 1, &env);
    let first = serve.key(&w);

    // Restarting inside the day does not rotate: the schedule comes from
    // the key's own times, not from uptime.
    std::thread::sleep(Duration::from_millis(1500));
    serve.stop();
    serve.restart(1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(serve.key(&w), first, "rotated early after a restart");

    let deadline = Instant::now() + Duration::from_secs(15);
    while serve.key(&w) == first {
        assert!(Instant::now() < deadline, "no scheduled rotation");
        std::thread::sleep(Duration::from_millis(200));
    }
    let port = serve.port(&w);
    assert_eq!(
        post(port, Some(&first), &[], INITIALIZE).status,
        200,
        "overlap key refused"
    );
    serve.cli(&["rm", &w]);
}

#[test]
fn load_of_sixty_four_clients_with_mixed_keys_has_no_wrong_decision() {
    let dir = home();
    let names: Vec<String> = (0..3)
        .map(|i| support::unique(&format!("load{i}")))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let serve = Serve::start(
        dir.path(),
        "keyutils",
        &support::serve::demo_config(&refs),
        3,
        &[],
    );
    let targets: Vec<(u16, String)> = names
        .iter()
        .map(|n| (serve.port(n), serve.key(n)))
        .collect();

    let per_client = 40;
    let handles: Vec<_> = (0..64)
        .map(|c| {
            let targets = targets.clone();
            std::thread::spawn(move || {
                let mut counts = [0u32; 6]; // right-accept, right-reject, wrong-accept, wrong-reject, 5xx, total
                for i in 0..per_client {
                    let t = (c + i) % 3;
                    let (port, key) = &targets[t];
                    let (presented, valid) = match (c * 7 + i) % 4 {
                        0 => (Some(key.clone()), true),
                        1 => (
                            Some(
                                thv_actors::SharedKey::generate()
                                    .expose_encoded()
                                    .to_string(),
                            ),
                            false,
                        ),
                        2 => (Some(targets[(t + 1) % 3].1.clone()), false),
                        _ => (None, false),
                    };
                    let mut head = format!(
                        "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream"
                    );
                    if let Some(k) = &presented {
                        head.push_str(&format!("\r\nX-ToolHive-Auth: {k}"));
                    }
                    let status = support::http::raw(*port, head.as_bytes(), b"").status;
                    let accepted = status == 405;
                    match (valid, accepted, status >= 500) {
                        (_, _, true) => counts[4] += 1,
                        (true, true, _) => counts[0] += 1,
                        (false, false, _) => counts[1] += 1,
                        (false, true, _) => counts[2] += 1,
                        (true, false, _) => counts[3] += 1,
                    }
                    counts[5] += 1;
                }
                counts
            })
        })
        .collect();
    let mut totals = [0u32; 6];
    for h in handles {
        for (t, c) in totals.iter_mut().zip(h.join().unwrap()) {
            *t += c;
        }
    }
    println!(
        "load: {} requests: {} right accepts, {} right rejects, {} wrong accepts, {} wrong rejects, {} 5xx",
        totals[5], totals[0], totals[1], totals[2], totals[3], totals[4]
    );
    assert_eq!(totals[5], 64 * per_client as u32);
    assert_eq!((totals[2], totals[3], totals[4]), (0, 0, 0));
    for n in &names {
        serve.cli(&["rm", n]);
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}
