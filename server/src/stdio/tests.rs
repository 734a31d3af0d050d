//! Real processes behind a real listener: mcp-server-time from the test
//! venv, and a small Python server that asks its client questions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::*;

/// A stdio MCP server that sends sampling requests and progress, so that
/// routing can be checked exactly.
const ASKING_SERVER: &str = r#"
import json, os, sys, time
def send(m):
    sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()
waiting = {}
for line in sys.stdin:
    m = json.loads(line)
    if "method" not in m:
        asked = waiting.pop(m.get("id"), None)
        if asked is not None:
            text = m["result"]["content"]["text"]
            send({"jsonrpc": "2.0", "id": asked, "result": {"content": [{"type": "text", "text": text}]}})
        continue
    if "id" not in m:
        continue
    i, p = m["id"], m.get("params") or {}
    def result(text):
        send({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": text}]}})
    if m["method"] == "initialize":
        send({"jsonrpc": "2.0", "id": i, "result": {"protocolVersion": p.get("protocolVersion"),
              "capabilities": {"tools": {}}, "serverInfo": {"name": "asking", "version": "1"}}})
    elif m["method"] == "tools/call":
        name, args = p["name"], p.get("arguments") or {}
        if name == "ask":
            waiting["ask-%s" % i] = i
            send({"jsonrpc": "2.0", "id": "ask-%s" % i, "method": "sampling/createMessage",
                  "params": {"messages": [{"role": "user", "content": {"type": "text", "text": args["q"]}}],
                             "maxTokens": 5}})
        elif name == "progress":
            for k in range(3):
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": p["_meta"]["progressToken"], "progress": k + 1, "total": 3}})
            result("done")
        elif name == "sleep":
            time.sleep(float(args["seconds"])); result("slept")
        elif name == "pid":
            result(str(os.getpid()))
        elif name == "env":
            result(os.environ.get(args["name"], ""))
    else:
        send({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "no"}})
"#;

fn py2_bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.testenv/py2/bin")
        .join(name)
}

fn time_server() -> Vec<String> {
    vec![py2_bin("mcp-server-time").to_string_lossy().into_owned()]
}

fn asking_server() -> Vec<String> {
    vec!["python3".into(), "-c".into(), ASKING_SERVER.into()]
}

fn spec(command: Vec<String>) -> StdioSpec {
    StdioSpec {
        workload: "test".parse().unwrap(),
        command,
        env: BTreeMap::new(),
        inject_key: None,
        session_idle_timeout: None,
    }
}

/// Hosts `host` on 127.0.0.1 and returns the `/mcp` URL.
fn listen(host: &StdioHost) -> (String, actix_web::dev::ServerHandle) {
    let host = host.clone();
    let server = HttpServer::new(move || {
        let host = host.clone();
        App::new().configure(move |cfg| configure(cfg, host))
    })
    .workers(2)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr: SocketAddr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://{addr}/mcp"), handle)
}

/// One HTTP answer, with its JSON-RPC messages (one for JSON, every event
/// for an event stream).
struct Reply {
    status: u16,
    session: Option<String>,
    content_type: String,
    messages: Vec<Value>,
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn post(url: &str, session: Option<&str>, body: Value) -> Reply {
    let mut request = client()
        .post(url)
        .insert_header(("accept", "application/json, text/event-stream"))
        .insert_header(("content-type", "application/json"));
    if let Some(session) = session {
        request = request.insert_header((SESSION_HEADER, session));
    }
    let mut response = request.send_body(body.to_string()).await.unwrap();
    read_reply(&mut response).await
}

async fn read_reply<S>(response: &mut awc::ClientResponse<S>) -> Reply
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let session = header(SESSION_HEADER);
    let content_type = header("content-type").unwrap_or_default();
    let body = response.body().limit(MAX_BODY).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let messages = if content_type.starts_with("text/event-stream") {
        text.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    } else if text.is_empty() {
        Vec::new()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    Reply {
        status: response.status().as_u16(),
        session,
        content_type,
        messages,
    }
}

/// Reads one server-sent event's data from a streaming body.
async fn next_event<S>(body: &mut S, buffer: &mut String) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                return Some(serde_json::from_str(data).unwrap());
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .ok()??
            .ok()?;
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

fn request(id: Value, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

fn initialize_request() -> Value {
    request(
        json!(0),
        "initialize",
        json!({ "protocolVersion": "2025-06-18", "capabilities": { "sampling": {} },
                "clientInfo": { "name": "thv-test", "version": "1" } }),
    )
}

/// initialize + notifications/initialized; returns the session id.
async fn open_session(url: &str) -> String {
    let reply = post(url, None, initialize_request()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.messages);
    assert!(
        reply.messages[0]["result"]["protocolVersion"].is_string(),
        "{:?}",
        reply.messages
    );
    let session = reply
        .session
        .expect("initialize answer carries Mcp-Session-Id");

    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    assert_eq!(post(url, Some(&session), initialized).await.status, 202);
    session
}

async fn call_tool(url: &str, session: &str, id: u64, name: &str, arguments: Value) -> Reply {
    post(
        url,
        Some(session),
        request(
            json!(id),
            "tools/call",
            json!({ "name": name, "arguments": arguments }),
        ),
    )
    .await
}

fn text_of(reply: &Reply) -> String {
    let last = reply.messages.last().expect("a message");
    last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn envelope(method: &str, id: Value, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "thv-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    request(id, method, params)
}

fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; only a reaped process is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

/// Opens the session's GET stream and returns it; the stream stays open
/// (and the session in use) until it is dropped.
async fn open_get_stream(
    url: &str,
    session: &str,
) -> awc::ClientResponse<
    impl futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>>,
> {
    let stream = client()
        .get(url)
        .insert_header(("accept", "text/event-stream"))
        .insert_header((SESSION_HEADER, session))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    stream
}

/// Waits until `done` holds, at most `limit`.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn serves_mcp_server_time_through_a_session() {
    let host = StdioHost::start(spec(time_server())).unwrap();
    let (url, server) = listen(&host);

    let session = open_session(&url).await;

    let tools = post(
        &url,
        Some(&session),
        request(json!(1), "tools/list", json!({})),
    )
    .await;
    assert_eq!(tools.content_type, "application/json");
    let names: Vec<_> = tools.messages[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"get_current_time".to_owned()), "{names:?}");

    let now = call_tool(
        &url,
        &session,
        2,
        "get_current_time",
        json!({ "timezone": "Etc/UTC" }),
    )
    .await;
    assert_eq!(now.messages[0]["id"], 2);
    assert!(text_of(&now).contains("Etc/UTC"), "{:?}", now.messages);

    let deleted = client()
        .delete(&url)
        .insert_header((SESSION_HEADER, session.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let after = post(
        &url,
        Some(&session),
        request(json!(3), "tools/list", json!({})),
    )
    .await;
    assert_eq!(after.status, 404);

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn stateless_clients_share_one_process_with_their_own_ids() {
    let host = StdioHost::start(spec(time_server())).unwrap();
    let (url, server) = listen(&host);

    let discover = post(&url, None, envelope("server/discover", json!(1), json!({}))).await;
    assert_eq!(discover.status, 200, "{:?}", discover.messages);
    assert!(discover.session.is_none());
    assert_eq!(discover.messages[0]["id"], 1);
    assert_eq!(
        discover.messages[0]["result"]["supportedVersions"],
        json!(["2026-07-28"])
    );

    // Two clients, same id, at once: each gets its own answer back under
    // its own id.
    let list = envelope("tools/list", json!(7), json!({}));
    let call = envelope(
        "tools/call",
        json!(7),
        json!({ "name": "get_current_time",
                                                      "arguments": { "timezone": "Asia/Tokyo" } }),
    );
    let (listed, called) = tokio::join!(post(&url, None, list), post(&url, None, call));
    assert_eq!(listed.messages[0]["id"], 7);
    assert!(
        listed.messages[0]["result"]["tools"].is_array(),
        "{:?}",
        listed.messages
    );
    assert_eq!(called.messages[0]["id"], 7);
    assert!(
        text_of(&called).contains("Asia/Tokyo"),
        "{:?}",
        called.messages
    );

    // A non-enveloped request without a session is refused.
    let bare = post(&url, None, request(json!(1), "tools/list", json!({}))).await;
    assert_eq!(bare.status, 400);

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn two_sessions_never_see_each_others_requests() {
    let host = StdioHost::start(spec(asking_server())).unwrap();
    let (url, server) = listen(&host);
    let first = open_session(&url).await;
    let second = open_session(&url).await;
    assert_ne!(first, second);
    assert_ne!(host.session_pid(&first), host.session_pid(&second));

    // Each session's tool asks its own client; each client answers with its
    // own text; each result must carry its own answer.
    let ask = |session: String, answer: &'static str| {
        let url = url.clone();
        async move {
            let body = request(
                json!(1),
                "tools/call",
                json!({ "name": "ask", "arguments": { "q": answer } }),
            );
            let mut response = client()
                .post(&url)
                .insert_header(("accept", "application/json, text/event-stream"))
                .insert_header((SESSION_HEADER, session.as_str()))
                .send_body(body.to_string())
                .await
                .unwrap();
            assert!(response
                .headers()
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"));

            let mut buffer = String::new();
            let question = next_event(&mut response, &mut buffer).await.unwrap();
            assert_eq!(question["method"], "sampling/createMessage");
            assert_eq!(question["params"]["messages"][0]["content"]["text"], answer);

            let reply = json!({ "jsonrpc": "2.0", "id": question["id"],
                                "result": { "role": "assistant", "model": "m",
                                            "content": { "type": "text", "text": format!("{answer}!") } } });
            assert_eq!(post(&url, Some(&session), reply).await.status, 202);

            let result = next_event(&mut response, &mut buffer).await.unwrap();
            assert_eq!(result["id"], 1);
            result["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (a, b) = tokio::join!(ask(first.clone(), "alpha"), ask(second.clone(), "beta"));
    assert_eq!(a, "alpha!");
    assert_eq!(b, "beta!");

    // Progress rides the POST's own event stream, before the response.
    let params = json!({ "name": "progress", "arguments": {}, "_meta": { "progressToken": 42 } });
    let progress = post(&url, Some(&first), request(json!(2), "tools/call", params)).await;
    assert_eq!(progress.content_type, "text/event-stream");
    assert_eq!(progress.messages.len(), 4, "{:?}", progress.messages);
    assert_eq!(progress.messages[0]["params"]["progressToken"], 42);
    assert_eq!(progress.messages[3]["id"], 2);

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn a_session_survives_another_ending() {
    let host = StdioHost::start(spec(asking_server())).unwrap();
    let (url, server) = listen(&host);
    let staying = open_session(&url).await;
    let leaving = open_session(&url).await;
    let leaving_pid = host.session_pid(&leaving).unwrap();

    let deleted = client()
        .delete(&url)
        .insert_header((SESSION_HEADER, leaving.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);

    let still = call_tool(&url, &staying, 5, "pid", json!({})).await;
    assert_eq!(
        text_of(&still),
        host.session_pid(&staying).unwrap().to_string()
    );
    eventually(
        "the ended session's process is gone",
        Duration::from_secs(5),
        || !is_alive(leaving_pid),
    )
    .await;

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn killed_process_fails_in_flight_then_the_client_recovers() {
    let host = StdioHost::start(spec(asking_server())).unwrap();
    let (url, server) = listen(&host);
    let session = open_session(&url).await;
    let pid = host.session_pid(&session).unwrap();

    // A request in flight when the process dies gets -32002.
    let in_flight = call_tool(&url, &session, 1, "sleep", json!({ "seconds": 30 }));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    };
    let (failed, ()) = tokio::join!(in_flight, killer);
    assert_eq!(failed.messages[0]["id"], 1);
    assert_eq!(failed.messages[0]["error"]["code"], UPSTREAM_UNAVAILABLE);

    // The session is gone: 404, and a new initialize works.
    let gone = call_tool(&url, &session, 2, "pid", json!({})).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.messages[0]["error"]["code"], INVALID_REQUEST);
    let again = open_session(&url).await;
    let answer = call_tool(&url, &again, 3, "pid", json!({})).await;
    assert_ne!(text_of(&answer), pid.to_string());

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn unknown_session_and_bad_json_get_jsonrpc_errors() {
    let host = StdioHost::start(spec(asking_server())).unwrap();
    let (url, server) = listen(&host);

    let unknown = post(
        &url,
        Some("0123"),
        request(json!(1), "tools/list", json!({})),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.messages[0]["jsonrpc"], "2.0");

    let mut response = client()
        .post(&url)
        .insert_header(("accept", "application/json, text/event-stream"))
        .send_body("{nope")
        .await
        .unwrap();
    let bad = read_reply(&mut response).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.messages[0]["error"]["code"], PARSE_ERROR);
    assert_eq!(bad.messages[0]["id"], Value::Null);

    let get = client()
        .get(&url)
        .insert_header(("accept", "text/event-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn get_stream_carries_messages_no_post_can() {
    let host = StdioHost::start(spec(asking_server())).unwrap();
    let (url, server) = listen(&host);
    let session = open_session(&url).await;

    let mut stream = open_get_stream(&url, &session).await;

    // A client that takes only JSON cannot get the question on its POST,
    // so it comes on the GET stream.
    let body = request(
        json!(9),
        "tools/call",
        json!({ "name": "ask", "arguments": { "q": "via get" } }),
    );
    let post_url = url.clone();
    let session_for_post = session.clone();
    let pending = actix_rt::spawn(async move {
        let mut response = client()
            .post(&post_url)
            .insert_header(("accept", "application/json"))
            .insert_header((SESSION_HEADER, session_for_post.as_str()))
            .send_body(body.to_string())
            .await
            .unwrap();
        read_reply(&mut response).await.messages
    });

    let mut buffer = String::new();
    let question = next_event(&mut stream, &mut buffer).await.unwrap();
    assert_eq!(question["method"], "sampling/createMessage");
    let reply = json!({ "jsonrpc": "2.0", "id": question["id"],
                        "result": { "content": { "type": "text", "text": "heard" } } });
    assert_eq!(post(&url, Some(&session), reply).await.status, 202);

    let messages = pending.await.unwrap();
    assert_eq!(messages[0]["result"]["content"][0]["text"], "heard");

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn injects_the_key_and_shutdown_reaps_every_process() {
    let mut spec = spec(asking_server());
    spec.inject_key = Some(Zeroizing::new("not-a-real-key".into()));
    let host = StdioHost::start(spec).unwrap();
    let (url, server) = listen(&host);
    let session = open_session(&url).await;

    let env = call_tool(
        &url,
        &session,
        1,
        "env",
        json!({ "name": "TOOLHIVE_SHARED_KEY" }),
    )
    .await;
    assert_eq!(text_of(&env), "not-a-real-key");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = host.pids();
    assert!(pids.len() >= 2, "a session process and a spare: {pids:?}");
    host.shutdown().await;
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived shutdown");
    }
    assert!(host.pids().is_empty());

    server.stop(true).await;
}

#[actix_rt::test]
async fn start_refuses_a_command_that_cannot_run() {
    let error = StdioHost::start(spec(vec!["/nonexistent/mcp-server".into()]))
        .err()
        .unwrap();
    assert!(matches!(error, StdioError::Spawn { .. }));
    assert!(error.to_string().contains("/nonexistent/mcp-server"));
}

/// Prints how long `initialize` takes with a warm spare and without one
/// (a cold start: the host was just started, so the spare is still
/// booting). Run with `--ignored --nocapture`.
#[ignore = "benchmark: prints initialize latency with and without a warm spare; run with --ignored --nocapture"]
#[actix_rt::test]
async fn warm_spare_initialize_latency() {
    for (label, command) in [
        ("mcp-server-time", time_server()),
        ("python asking server", asking_server()),
    ] {
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..5 {
            let host = StdioHost::start(spec(command.clone())).unwrap();
            let (url, server) = listen(&host);

            let began = Instant::now();
            let reply = post(&url, None, initialize_request()).await;
            assert_eq!(reply.status, 200);
            cold.push(began.elapsed());

            // The next spare is started as soon as the first is taken.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let began = Instant::now();
            let reply = post(&url, None, initialize_request()).await;
            assert_eq!(reply.status, 200);
            warm.push(began.elapsed());

            host.shutdown().await;
            server.stop(true).await;
        }
        cold.sort();
        warm.sort();
        println!(
            "{label}: initialize cold median {:?} (min {:?}, max {:?}); warm spare median {:?} (min {:?}, max {:?})",
            cold[2], cold[0], cold[4], warm[2], warm[0], warm[4]
        );
    }
}

/// The Python SDK 2.3.0 client, in its default (`auto`: stateless
/// 2026-07-28) and `legacy` (session) modes, against mcp-server-time.
#[actix_rt::test]
async fn python_sdk_clients_of_both_eras_are_served() {
    const CLIENT: &str = r#"
import asyncio, sys
from mcp.client.client import Client
async def main(url, mode):
    async with Client(url, mode=mode) as client:
        tools = await client.list_tools()
        result = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        print(mode, sorted(t.name for t in tools.tools), result.content[0].text)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let host = StdioHost::start(spec(time_server())).unwrap();
    let (url, server) = listen(&host);

    for mode in ["auto", "legacy"] {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(py2_bin("python"))
                .args(["-c", CLIENT, &url, mode])
                .output(),
        )
        .await
        .expect("the python client finishes")
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && stdout.contains("get_current_time")
                && stdout.contains("Europe/Paris"),
            "{mode}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The auto client stayed stateless (it used the shared process); only
    // the legacy client held a session, and it deleted it on close.
    assert!(host.inner.shared.lock().await.is_some());
    assert_eq!(host.session_count(), 0);

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn idle_sessions_end_and_sessions_in_use_stay() {
    let timeout = Duration::from_millis(600);
    let host = StdioHost::start(StdioSpec {
        session_idle_timeout: Some(timeout),
        ..spec(asking_server())
    })
    .unwrap();
    let (url, server) = listen(&host);

    let idle = open_session(&url).await;
    let streaming = open_session(&url).await;
    let working = open_session(&url).await;
    let idle_pid = host.session_pid(&idle).unwrap();
    let _stream = open_get_stream(&url, &streaming).await;
    let slow = call_tool(&url, &working, 1, "sleep", json!({ "seconds": 2.5 }));

    let watch = async {
        eventually(
            "the idle session's process is gone",
            Duration::from_secs(10),
            || !is_alive(idle_pid),
        )
        .await;
        assert_eq!(host.session_pid(&idle), None);
        let gone = call_tool(&url, &idle, 2, "pid", json!({})).await;
        assert_eq!(gone.status, 404, "an expired session is unknown");

        // Well past the timeout: a session with an open stream stays.
        let still = call_tool(&url, &streaming, 3, "pid", json!({})).await;
        assert_eq!(
            text_of(&still),
            host.session_pid(&streaming).unwrap().to_string()
        );
    };
    let (slept, ()) = tokio::join!(slow, watch);
    // And one whose request ran longer than the timeout got its answer.
    assert_eq!(text_of(&slept), "slept");
    assert!(host.session_pid(&working).is_some());

    // Once its request is done, it is idle too, and ends in its turn.
    eventually(
        "the finished session expires",
        Duration::from_secs(10),
        || host.session_pid(&working).is_none(),
    )
    .await;
    assert!(host.session_pid(&streaming).is_some());

    host.shutdown().await;
    server.stop(true).await;
}

#[actix_rt::test]
async fn at_the_session_limit_the_longest_idle_session_makes_room() {
    let host = StdioHost::start_with_limit(spec(asking_server()), 2).unwrap();
    let (url, server) = listen(&host);

    let oldest = open_session(&url).await;
    let newer = open_session(&url).await;
    let oldest_pid = host.session_pid(&oldest).unwrap();
    // `newer` was used last, so `oldest` is the one to go.
    let third = open_session(&url).await;
    assert_eq!(host.session_count(), 2);
    assert_eq!(host.session_pid(&oldest), None);
    eventually(
        "the evicted session's process is gone",
        Duration::from_secs(10),
        || !is_alive(oldest_pid),
    )
    .await;
    assert_eq!(
        call_tool(&url, &oldest, 1, "pid", json!({})).await.status,
        404
    );
    for session in [&newer, &third] {
        let answer = call_tool(&url, session, 2, "pid", json!({})).await;
        assert_eq!(
            text_of(&answer),
            host.session_pid(session).unwrap().to_string()
        );
    }

    // With every session in use, a new one is refused, not made room for.
    let _a = open_get_stream(&url, &newer).await;
    let _b = open_get_stream(&url, &third).await;
    let refused = post(&url, None, initialize_request()).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.messages[0]["error"]["code"], UNAVAILABLE);
    assert_eq!(host.session_count(), 2);

    host.shutdown().await;
    server.stop(true).await;
}
