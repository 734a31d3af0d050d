//! `thv-actor bridge` when things go wrong around it, with the real binaries:
//! serve restarted or started late, the key rotated, the upstream session
//! gone, bursts, garbage on stdin, the client going away, and no serve at
//! all. The bridge is driven directly with JSON-RPC lines, as an MCP client
//! would, in the environment an MCP client gives it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::bridge::{client_env, tool_text, Bridge};
use support::serve::{demo_workload, Sandbox, Serve};
use support::{run_bounded, WAIT};

fn echo(bridge: &mut Bridge, id: u64, message: &str) -> Value {
    bridge.request(
        id,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": message}}),
    )
}

/// A home with serve hosting the demo as one workload, and a bridge to it
/// past the handshake.
fn demo_session(tag: &str) -> (Sandbox, Serve, String, Bridge) {
    let home = Sandbox::in_home("keyutils");
    let name = home.name(tag);
    let config = home.config(&[demo_workload(&name)].join("\n"));
    let serve = home.serve_config(&config, &[&name]);
    let mut bridge = Bridge::spawn(&home, &name, &[]);
    bridge.handshake(1);
    (home, serve, name, bridge)
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn serve_restarted_under_a_live_bridge_answers_every_request() {
    let (home, mut serve, name, mut bridge) = demo_session("restart");
    assert_eq!(tool_text(&echo(&mut bridge, 2, "before")), "before");
    let url = serve.url(&name).to_owned();

    serve.stop();

    // Requests in the gap: sent while nothing listens.
    for id in [10, 11] {
        bridge.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": format!("gap {id}")}}}));
    }
    std::thread::sleep(Duration::from_millis(800));
    let config = home.path("config.toml");
    let serve = home.serve_config(&config, &[&name]);
    assert_eq!(serve.url(&name), url, "serve came back on another port");

    // Each gap request gets one answer: success after waiting, or an error
    // the client can read. Never silence (`response` panics on that).
    for id in [10, 11] {
        let answer = bridge.response(&json!(id), WAIT);
        eprintln!("gap request {id}: {answer}");
        match (&answer.get("result"), &answer.get("error")) {
            (Some(_), None) => assert_eq!(tool_text(&answer), format!("gap {id}")),
            (None, Some(error)) => assert!(error["message"].is_string(), "{answer}"),
            _ => panic!("neither result nor error: {answer}"),
        }
    }
    assert_eq!(tool_text(&echo(&mut bridge, 12, "after")), "after");
}

#[test]
fn serve_down_longer_than_connect_wait_is_an_error_then_recovers() {
    let home = Sandbox::in_home("keyutils");
    let name = home.name("outage");
    let config = home.config(&[demo_workload(&name)].join("\n"));
    let mut serve = home.serve_config(&config, &[&name]);
    let mut bridge = Bridge::spawn(&home, &name, &["--connect-wait", "1s"]);
    bridge.handshake(1);
    serve.stop();

    // Nothing listens for longer than the bridge waits: a JSON-RPC error
    // that says so, after about the wait, and the bridge stays up.
    let started = Instant::now();
    let answer = echo(&mut bridge, 2, "into the void");
    let waited = started.elapsed();
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error while serve is down: {answer}"));
    assert!(message.contains(&name), "{message}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );

    let _serve = home.serve_config(&config, &[&name]);
    assert_eq!(tool_text(&echo(&mut bridge, 3, "back")), "back");
}

#[test]
fn key_rotated_under_a_live_bridge_is_invisible_to_the_client() {
    let (home, serve, name, mut bridge) = demo_session("rotate");
    let before = home.run(&["key", "show", &name]);
    support::ok(&before);

    let mut id = 2;
    for _ in 0..3 {
        assert_eq!(tool_text(&echo(&mut bridge, id, "old key")), "old key");
        id += 1;
    }

    // The rotation runs while the client keeps calling; the old key stops
    // working at once.
    let mut rotate = home.cmd(&["key", "rotate", &name, "--overlap", "0s"]);
    rotate
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut rotating = rotate.spawn().unwrap();
    let started = Instant::now();
    while rotating.try_wait().unwrap().is_none() {
        let answer = echo(&mut bridge, id, "during");
        assert!(
            answer.get("error").is_none(),
            "client saw an error: {answer}"
        );
        id += 1;
        assert!(started.elapsed() < WAIT, "key rotate did not finish");
    }
    assert!(rotating.wait().unwrap().success(), "key rotate failed");
    let after = home.run(&["key", "show", &name]);
    assert_ne!(after.stdout, before.stdout, "the key did not change");

    for _ in 0..3 {
        let answer = echo(&mut bridge, id, "new key");
        assert!(
            answer.get("error").is_none(),
            "client saw an error: {answer}"
        );
        assert_eq!(tool_text(&answer), "new key");
        id += 1;
    }
    // The bridge did meet the revoked key (a 401) and recovered from it.
    assert!(
        serve.wait_log("shared key refused", Duration::from_secs(10)),
        "serve refused nothing, so the rotation was not exercised:\n{}",
        serve.stderr()
    );
}

#[test]
fn expired_upstream_session_is_reestablished_transparently() {
    let (home, mut serve, name, mut bridge) = demo_session("expire");
    assert_eq!(tool_text(&echo(&mut bridge, 2, "first")), "first");

    // A new serve knows nothing of the bridge's session: its next request
    // meets a 404, and the bridge replays the handshake on its own.
    serve.stop();
    let config = home.path("config.toml");
    let serve = home.serve_config(&config, &[&name]);

    let answer = echo(&mut bridge, 3, "second");
    assert!(
        answer.get("error").is_none(),
        "client saw an error: {answer}"
    );
    assert_eq!(tool_text(&answer), "second");
    assert!(
        bridge
            .stderr()
            .contains("session expired; replaying the handshake"),
        "{}",
        bridge.stderr()
    );
    assert!(
        serve.stderr().contains("session started"),
        "{}",
        serve.stderr()
    );
    // The client got exactly the answers it asked for: no stray response
    // to the replayed initialize.
    let extra = bridge.next(Duration::from_millis(300));
    assert!(extra.is_none(), "unexpected message: {extra:?}");
}

#[test]
fn bridge_started_before_serve_waits_for_it() {
    let home = Sandbox::in_home("keyutils");
    let name = home.name("early");
    let config = home.config(&[demo_workload(&name)].join("\n"));

    let mut bridge = Bridge::spawn(&home, &name, &["--connect-wait", "20s"]);
    bridge.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "early", "version": "1"}}}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        bridge.wait(Duration::ZERO).is_none(),
        "bridge gave up early"
    );

    let _serve = home.serve_config(&config, &[&name]);
    let answer = bridge.response(&json!(1), WAIT);
    assert_eq!(
        answer["result"]["serverInfo"]["name"],
        "thv-actor-demo",
        "{answer}; stderr:\n{}",
        bridge.stderr()
    );
    bridge.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    assert_eq!(tool_text(&echo(&mut bridge, 2, "late serve")), "late serve");
}

#[test]
fn burst_of_50_concurrent_requests_gets_exactly_one_answer_each() {
    let (_home, _serve, _name, mut bridge) = demo_session("burst");

    let ids: Vec<u64> = (100..150).collect();
    let burst: String = ids
        .iter()
        .map(|id| {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": format!("n{id}")}}})
            .to_string()
                + "\n"
        })
        .collect();
    bridge.send_raw(burst.trim_end());

    let mut answers: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while answers.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = bridge.next(left) else {
            panic!(
                "only {} of 50 answered within {WAIT:?}; stderr:\n{}",
                answers.len(),
                bridge.stderr()
            );
        };
        let id = message["id"].as_u64().expect("answer with a numeric id");
        answers.entry(id).or_default().push(message);
    }
    // Nothing more arrives: no duplicates.
    while let Some(message) = bridge.next(Duration::from_millis(500)) {
        answers
            .entry(message["id"].as_u64().unwrap_or(0))
            .or_default()
            .push(message);
    }

    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), ids);
    for (id, got) in &answers {
        assert_eq!(got.len(), 1, "id {id} answered {} times", got.len());
        assert_eq!(tool_text(&got[0]), format!("n{id}"));
    }
}

#[test]
fn invalid_json_is_a_parse_error_and_the_bridge_keeps_going() {
    let (_home, _serve, _name, mut bridge) = demo_session("garbage");

    bridge.send_raw("{this is not json");
    let error = bridge.response(&Value::Null, WAIT);
    assert_eq!(error["error"]["code"], -32700, "{error}");

    bridge.send_raw("[]");
    let error = bridge.response(&Value::Null, WAIT);
    assert_eq!(error["error"]["code"], -32600, "{error}");

    assert_eq!(tool_text(&echo(&mut bridge, 2, "still here")), "still here");
    assert!(bridge.wait(Duration::ZERO).is_none(), "the bridge exited");
}

#[test]
fn stdin_eof_exits_zero_and_deletes_the_session() {
    let (_home, serve, _name, mut bridge) = demo_session("eof");
    assert_eq!(tool_text(&echo(&mut bridge, 2, "bye")), "bye");
    let ended_before = count(&serve.stderr(), "session ended by the client");

    bridge.close_stdin();
    exits_zero_having_ended_its_session(&mut bridge, &serve, ended_before, "at EOF");
}

#[test]
fn sigterm_delivers_the_answer_in_flight_deletes_the_session_and_exits_zero() {
    let (_home, serve, _name, mut bridge) = demo_session("term");
    let ended_before = count(&serve.stderr(), "session ended by the client");

    // A call that takes a while (progress steps), then SIGTERM while it runs.
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 5}, "_meta": {"progressToken": "t"}}
    }));
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: kill(2) on the bridge we spawned; no memory is involved.
    assert_eq!(unsafe { libc::kill(bridge.pid() as i32, libc::SIGTERM) }, 0);

    let answer = bridge.response(&json!(7), Duration::from_secs(15));
    assert!(
        answer.get("result").is_some(),
        "the call in flight was not answered: {answer}"
    );
    exits_zero_having_ended_its_session(&mut bridge, &serve, ended_before, "after SIGTERM");
}

/// The bridge exits 0 within 15 s (`when`: what should have made it),
/// having deleted its session, and serve logs one more session ended by
/// the client than `ended_before` within 10 s.
fn exits_zero_having_ended_its_session(
    bridge: &mut Bridge,
    serve: &Serve,
    ended_before: usize,
    when: &str,
) {
    let status = bridge
        .wait(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("bridge did not exit {when}"));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        bridge.stderr()
    );
    assert!(
        bridge.stderr().contains("session deleted"),
        "{}",
        bridge.stderr()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&serve.stderr(), "session ended by the client") == ended_before {
        assert!(
            Instant::now() < deadline,
            "serve never saw the session end:\n{}",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdout_carries_only_json_lines_and_logs_go_to_stderr() {
    let (_home, _serve, _name, mut bridge) = demo_session("stdout");

    // A mix: results, progress notifications, a parse error, an unknown
    // method, a notification from the client.
    bridge.request(
        2,
        "tools/call",
        json!({"name": "progress", "arguments": {"steps": 3},
               "_meta": {"progressToken": "p"}}),
    );
    bridge.send_raw("garbage");
    bridge.request(3, "no/such/method", json!({}));
    bridge.send(&json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}));
    echo(&mut bridge, 4, "last");
    bridge.close_stdin();
    bridge.read_to_end(Duration::from_secs(15));
    assert!(bridge.wait(Duration::from_secs(15)).is_some(), "no exit");

    // `Bridge` parsed every stdout line as JSON as it came (and would have
    // failed on any other); here: what it saw is JSON-RPC, and the logs
    // are on stderr.
    let seen = &bridge.seen;
    assert!(seen.len() >= 8, "{seen:?}");
    assert!(seen.iter().all(|m| m["jsonrpc"] == "2.0"), "{seen:?}");
    let progress = seen
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 3, "{seen:?}");
    let stderr = bridge.stderr();
    assert!(stderr.contains("bridge session started"), "{stderr}");
    assert!(stderr.contains("stdin line is not json"), "{stderr}");
}

#[test]
fn no_serve_and_no_state_is_a_one_line_error() {
    let home = Sandbox::in_home("keyutils");
    let mut cmd = std::process::Command::new(support::bin());
    cmd.args(["bridge", "x", "--connect-wait", "1s"]);
    client_env(&mut cmd, home.home());

    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(15));

    assert!(!out.status.success(), "bridge succeeded without serve");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(out.stdout.is_empty(), "stdout: {:?}", support::stdout(&out));
    let stderr = support::stderr(&out);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("thv-actor: error: "), "{stderr}");
    assert!(errors[0].contains("serve is not running"), "{stderr}");
}
