//! The proxy between real sockets: a real actix-web upstream on 127.0.0.1,
//! the proxy on its own listener, and awc (or a raw TCP stream) as the
//! client; and the real `@modelcontextprotocol/server-everything`.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::*;

/// Every test ends within this, pass or fail.
const TEST_BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: Future<Output = ()>>(test: F) {
    actix_rt::time::timeout(TEST_BOUND, test)
        .await
        .expect("test did not finish in time");
}

fn spec(url: String, transport: UpstreamTransport) -> UpstreamSpec {
    UpstreamSpec {
        workload: "echo-upstream".parse().unwrap(),
        url,
        transport,
        headers: vec![("X-Upstream-Key".into(), "configured-value".into())],
        connect_timeout: Duration::from_secs(2),
    }
}

/// Runs the proxy for `url` on a fresh loopback port, with [`spec`]'s
/// settings.
fn proxy_to(url: String, transport: UpstreamTransport) -> (SocketAddr, ServerHandle) {
    start_proxy(HttpUpstream::new(spec(url, transport)).unwrap())
}

/// Runs the proxy for `upstream` on a fresh loopback port.
fn start_proxy(upstream: HttpUpstream) -> (SocketAddr, ServerHandle) {
    let server = HttpServer::new(move || {
        let upstream = upstream.clone();
        App::new().configure(move |cfg| configure(cfg, upstream))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, handle)
}

/// What the test upstream saw and what it waits for.
#[derive(Default)]
struct UpstreamState {
    /// Paths of every request that reached the upstream.
    hits: Mutex<Vec<String>>,
    /// Released by the test once it has seen the first event of a stream.
    gate: Notify,
    /// Messages POSTed to the SSE endpoint, echoed onto the SSE stream.
    messages_tx: Mutex<Option<mpsc::UnboundedSender<String>>>,
    messages_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

fn headers_json(req: &HttpRequest) -> Value {
    let mut seen = serde_json::Map::new();
    for (name, value) in req.headers() {
        seen.insert(
            name.as_str().to_owned(),
            json!(value.to_str().unwrap_or("?")),
        );
    }
    json!({ "method": req.method().as_str(), "query": req.query_string(), "headers": seen })
}

fn event(text: &str) -> Result<Bytes, actix_web::Error> {
    Ok(Bytes::from(format!("event: message\ndata: {text}\n\n")))
}

/// An event stream: one event, then the second only after the test has
/// released the gate, then the end.
fn gated_stream(state: web::Data<UpstreamState>) -> HttpResponse {
    let events = stream::unfold(0, move |step| {
        let state = state.clone();
        async move {
            match step {
                0 => Some((event("first"), 1)),
                1 => {
                    state.gate.notified().await;
                    Some((event("last"), 2))
                }
                _ => None,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("mcp-session-id", "session-7"))
        .streaming(events)
}

async fn upstream_mcp(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<UpstreamState>,
) -> HttpResponse {
    state.hits.lock().unwrap().push(req.path().to_owned());

    if req.method() == actix_web::http::Method::GET || req.headers().contains_key("x-want-stream") {
        return gated_stream(state);
    }

    let mut echoed = headers_json(&req);
    echoed["body"] = json!(String::from_utf8_lossy(&body));
    HttpResponse::Ok()
        .insert_header(("mcp-session-id", "session-7"))
        .insert_header(("mcp-future-header", "later-revision"))
        .json(echoed)
}

/// A legacy SSE stream announcing `endpoint`, then echoing every message
/// POSTed to it as a `message` event.
fn sse_stream(state: web::Data<UpstreamState>, endpoint: &'static str) -> HttpResponse {
    let rx = state
        .messages_rx
        .lock()
        .unwrap()
        .take()
        .expect("one sse stream per test");
    let head = stream::once(async move {
        Ok::<_, actix_web::Error>(Bytes::from(format!(
            ": hello\n\nevent: endpoint\ndata: {endpoint}\n\n"
        )))
    });
    let messages = stream::unfold(rx, |mut rx| async move {
        let text = rx.recv().await?;
        Some((event(&text), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(head.chain(messages))
}

async fn upstream_message(
    req: HttpRequest,
    body: Bytes,
    state: web::Data<UpstreamState>,
) -> HttpResponse {
    state.hits.lock().unwrap().push(req.path().to_owned());

    let text = format!(
        "{}?{} {}",
        req.path(),
        req.query_string(),
        String::from_utf8_lossy(&body)
    );
    if let Some(tx) = state.messages_tx.lock().unwrap().as_ref() {
        let _ = tx.send(text);
    }
    HttpResponse::Accepted().finish()
}

async fn upstream_other(req: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.lock().unwrap().push(req.path().to_owned());
    HttpResponse::NotFound().finish()
}

fn start_upstream() -> (SocketAddr, Arc<UpstreamState>, ServerHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = web::Data::new(UpstreamState {
        messages_tx: Mutex::new(Some(tx)),
        messages_rx: Mutex::new(Some(rx)),
        ..UpstreamState::default()
    });
    let shared = state.clone().into_inner();

    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/mcp", web::route().to(upstream_mcp))
            .route(
                "/sse",
                web::get().to(|s: web::Data<UpstreamState>| async move {
                    sse_stream(s, "/message?sessionId=rel1")
                }),
            )
            .route(
                "/sub/sse-abs",
                web::get().to(|s: web::Data<UpstreamState>| async move {
                    sse_stream(s, "http://evil.example:9/sub/message?sessionId=abs2")
                }),
            )
            .route(
                "/sse-bad",
                web::get()
                    .to(|s: web::Data<UpstreamState>| async move { sse_stream(s, "/a/../admin") }),
            )
            .route("/message", web::post().to(upstream_message))
            .route("/sub/message", web::post().to(upstream_message))
            .default_service(web::to(upstream_other))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, shared, handle)
}

fn test_client() -> awc::Client {
    awc::Client::builder().disable_timeout().finish()
}

/// Reads `body` until the text so far contains `needle`, or fails after 5 s.
async fn read_until<S>(body: &mut S, seen: &mut String, needle: &str)
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = actix_rt::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {seen:?}"))
            .expect("stream ended early")
            .expect("stream failed");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[actix_rt::test]
async fn forwards_mcp_headers_and_keeps_credentials_and_origin_back() {
    bounded(async {
        let (up_addr, _state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(
            format!("http://{up_addr}/mcp"),
            UpstreamTransport::StreamableHttp,
        );

        let mut res = test_client()
            .post(format!("http://{addr}/mcp?probe=1"))
            .insert_header(("x-toolhive-auth", "the-shared-key"))
            .insert_header(("authorization", "Bearer for-the-proxy"))
            .insert_header(("origin", "http://localhost:1234"))
            .insert_header(("mcp-session-id", "session-7"))
            .insert_header(("mcp-protocol-version", "2025-06-18"))
            .insert_header(("mcp-method", "tools/call"))
            .insert_header(("last-event-id", "ev-3"))
            .insert_header(("accept", "application/json, text/event-stream"))
            .insert_header(("x-upstream-key", "client-tried-to-set-this"))
            .insert_header(("proxy-authorization", "Basic x"))
            .content_type("application/json")
            .send_body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .await
            .unwrap();

        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get("mcp-session-id").unwrap(), "session-7");
        assert_eq!(
            res.headers().get("mcp-future-header").unwrap(),
            "later-revision"
        );

        let echoed: Value = res.json().await.unwrap();
        let seen = &echoed["headers"];
        assert!(
            seen.get("x-toolhive-auth").is_none(),
            "shared key forwarded: {seen}"
        );
        assert!(
            seen.get("authorization").is_none(),
            "authorization forwarded: {seen}"
        );
        assert!(seen.get("origin").is_none(), "origin forwarded: {seen}");
        assert!(
            seen.get("proxy-authorization").is_none(),
            "proxy credentials forwarded: {seen}"
        );
        assert_eq!(seen["mcp-session-id"], "session-7");
        assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
        assert_eq!(seen["mcp-method"], "tools/call");
        assert_eq!(seen["last-event-id"], "ev-3");
        assert_eq!(seen["accept"], "application/json, text/event-stream");
        assert_eq!(seen["content-type"], "application/json");
        assert_eq!(seen["x-upstream-key"], "configured-value");
        assert_eq!(seen["host"], up_addr.to_string());
        assert_eq!(echoed["query"], "probe=1");
        assert_eq!(
            echoed["body"],
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#
        );
    })
    .await;
}

#[actix_rt::test]
async fn first_event_reaches_the_client_before_the_upstream_sends_the_last() {
    bounded(async {
        let (up_addr, state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(
            format!("http://{up_addr}/mcp"),
            UpstreamTransport::StreamableHttp,
        );
        let client = test_client();

        // The GET stream and a POST answered with a stream: the upstream holds
        // the last event back until the test has read the first through the
        // proxy, so a buffering proxy fails here.
        for post in [false, true] {
            let request = if post {
                client
                    .post(format!("http://{addr}/mcp"))
                    .insert_header(("x-want-stream", "1"))
            } else {
                client.get(format!("http://{addr}/mcp"))
            };
            let mut res = request
                .insert_header(("accept", "text/event-stream"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers().get("content-type").unwrap(),
                "text/event-stream"
            );
            assert_eq!(res.headers().get("mcp-session-id").unwrap(), "session-7");

            let mut seen = String::new();
            read_until(&mut res, &mut seen, "data: first\n\n").await;
            assert!(!seen.contains("last"));

            state.gate.notify_one();
            read_until(&mut res, &mut seen, "data: last\n\n").await;
            let end = actix_rt::time::timeout(Duration::from_secs(5), res.next())
                .await
                .unwrap();
            assert!(end.is_none(), "stream did not end after the upstream's");
        }
    })
    .await;
}

#[actix_rt::test]
async fn dead_upstream_gets_502_json_rpc_error_within_connect_timeout() {
    bounded(async {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (addr, _proxy) = proxy_to(
            format!("http://127.0.0.1:{port}/mcp"),
            UpstreamTransport::StreamableHttp,
        );

        let started = Instant::now();
        let mut res = test_client()
            .post(format!("http://{addr}/mcp"))
            .send_body("{}")
            .await
            .unwrap();
        let elapsed = started.elapsed();

        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], Value::Null);
        assert_eq!(body["error"]["code"], UPSTREAM_UNAVAILABLE);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("echo-upstream"), "{message}");
        assert!(
            !message.contains("127.0.0.1") && !message.contains("refused"),
            "{message}"
        );
    })
    .await;
}

#[actix_rt::test]
async fn upstream_that_never_answers_gets_504_after_header_timeout() {
    bounded(async {
        // Accepts connections and reads, but never writes a byte.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().take(4) {
                held.push(conn);
            }
            std::thread::sleep(Duration::from_secs(20));
        });

        let upstream = HttpUpstream::new(spec(
            format!("http://{up_addr}/mcp"),
            UpstreamTransport::StreamableHttp,
        ))
        .unwrap()
        .with_response_header_timeout(Duration::from_millis(300));
        let (addr, _proxy) = start_proxy(upstream);

        let started = Instant::now();
        let mut res = test_client()
            .post(format!("http://{addr}/mcp"))
            .send_body("{}")
            .await
            .unwrap();
        let elapsed = started.elapsed();

        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
            "took {elapsed:?}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], UPSTREAM_UNAVAILABLE);
    })
    .await;
}

/// Opens the proxy's SSE stream and returns it with the endpoint it announced.
async fn open_sse(
    addr: SocketAddr,
) -> (
    awc::ClientResponse<impl Stream<Item = Result<Bytes, PayloadError>> + Unpin>,
    String,
) {
    let mut res = test_client()
        .get(format!("http://{addr}/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let mut seen = String::new();
    read_until(&mut res, &mut seen, "event: endpoint\ndata: ").await;
    read_until(&mut res, &mut seen, "\n\n").await;
    let endpoint = seen
        .split("event: endpoint\ndata: ")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .unwrap()
        .to_owned();
    assert!(
        seen.starts_with(": hello\n\n"),
        "events before the endpoint were lost: {seen:?}"
    );
    (res, endpoint)
}

#[actix_rt::test]
async fn sse_relative_endpoint_is_rewritten_and_messages_reach_the_upstream() {
    bounded(async {
        let (up_addr, state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(format!("http://{up_addr}/sse"), UpstreamTransport::Sse);

        let (mut stream, endpoint) = open_sse(addr).await;
        assert_eq!(endpoint, "/messages/message?sessionId=rel1");

        let res = test_client()
            .post(format!("http://{addr}{endpoint}"))
            .insert_header(("x-toolhive-auth", "the-shared-key"))
            .send_body(r#"{"id":1}"#)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);

        let mut seen = String::new();
        read_until(
            &mut stream,
            &mut seen,
            r#"data: /message?sessionId=rel1 {"id":1}"#,
        )
        .await;
        assert_eq!(state.hits.lock().unwrap().as_slice(), ["/message"]);
    })
    .await;
}

#[actix_rt::test]
async fn sse_absolute_endpoint_naming_another_host_still_goes_to_the_upstream() {
    bounded(async {
        let (up_addr, state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(
            format!("http://{up_addr}/sub/sse-abs"),
            UpstreamTransport::Sse,
        );

        let (mut stream, endpoint) = open_sse(addr).await;
        assert_eq!(endpoint, "/messages/sub/message?sessionId=abs2");

        let res = test_client()
            .post(format!("http://{addr}{endpoint}"))
            .send_body(r#"{"id":2}"#)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);

        let mut seen = String::new();
        read_until(
            &mut stream,
            &mut seen,
            r#"data: /sub/message?sessionId=abs2 {"id":2}"#,
        )
        .await;
        assert_eq!(state.hits.lock().unwrap().as_slice(), ["/sub/message"]);
    })
    .await;
}

#[actix_rt::test]
async fn sse_endpoint_with_dot_segments_cuts_the_stream() {
    bounded(async {
        let (up_addr, _state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(format!("http://{up_addr}/sse-bad"), UpstreamTransport::Sse);

        // The cut may come before the response head is flushed: then the
        // request itself fails, which also tells the client nothing.
        let Ok(mut res) = test_client().get(format!("http://{addr}/sse")).send().await else {
            return;
        };
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match actix_rt::time::timeout(left, res.next())
                .await
                .expect("stream was not cut")
            {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(_)) | None => break,
            }
        }
        assert!(
            !seen.contains("admin"),
            "unrewritten endpoint reached the client: {seen:?}"
        );
    })
    .await;
}

#[actix_rt::test]
async fn crafted_paths_and_targets_cannot_reach_another_host_or_path() {
    bounded(async {
        let (up_addr, state, _up) = start_upstream();
        let (sse_addr, _sse_proxy) =
            proxy_to(format!("http://{up_addr}/sse"), UpstreamTransport::Sse);
        let client = test_client();

        // Before and after the upstream advertised its endpoint, no other
        // path is forwarded.
        let (_stream, _endpoint) = open_sse(sse_addr).await;
        for crafted in [
            "/messages/http://evil.example/x",
            "/messages//evil.example/x",
            "/messages/@evil.example/x",
            "/messages/admin",
            "/messages/message/../admin",
            "/messages/%2e%2e/admin",
        ] {
            let res = client
                .post(format!("http://{sse_addr}{crafted}"))
                .send_body("{}")
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{crafted}");
        }
        assert!(
            state.hits.lock().unwrap().is_empty(),
            "{:?}",
            state.hits.lock().unwrap()
        );

        // An absolute-form request target naming another host still goes to
        // the configured upstream.
        let (mcp_addr, _mcp_proxy) = proxy_to(
            format!("http://{up_addr}/mcp"),
            UpstreamTransport::StreamableHttp,
        );
        let response = actix_rt::task::spawn_blocking(move || {
            let mut conn = TcpStream::connect(mcp_addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            conn.write_all(
                b"POST http://evil.example:81/mcp HTTP/1.1\r\nHost: evil.example:81\r\n\
                  Content-Length: 2\r\nConnection: close, x-hop-req\r\nX-Hop-Req: 1\r\n\r\n{}",
            )
            .unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.contains(&format!(r#""host":"{up_addr}""#)),
            "{response}"
        );
        assert!(
            !response.contains("x-hop-req"),
            "a header named in connection was forwarded"
        );
        assert_eq!(state.hits.lock().unwrap().as_slice(), ["/mcp"]);
    })
    .await;
}

#[test]
fn refuses_urls_that_are_not_plain_http_upstreams() {
    let attempt =
        |url: &str| HttpUpstream::new(spec(url.into(), UpstreamTransport::StreamableHttp));

    assert!(matches!(
        attempt("ftp://127.0.0.1/mcp"),
        Err(ProxyError::UnsupportedScheme)
    ));
    assert!(matches!(
        attempt("/mcp"),
        Err(ProxyError::UnsupportedScheme)
    ));
    assert!(matches!(
        attempt("http://user:pw@127.0.0.1/mcp"),
        Err(ProxyError::CredentialsInUrl)
    ));
    assert!(matches!(
        attempt("http://exa mple/"),
        Err(ProxyError::InvalidUrl(_))
    ));
    assert!(attempt("https://example.com/mcp").is_ok());

    let mut bad_header = spec(
        "http://127.0.0.1/mcp".into(),
        UpstreamTransport::StreamableHttp,
    );
    bad_header.headers = vec![("Host".into(), "elsewhere".into())];
    assert!(matches!(
        HttpUpstream::new(bad_header),
        Err(ProxyError::InvalidHeader { .. })
    ));
}

#[test]
fn debug_output_hides_header_values_and_url_query() {
    let mut spec = spec(
        "http://127.0.0.1/mcp?token=url-secret".into(),
        UpstreamTransport::StreamableHttp,
    );
    spec.headers = vec![("Authorization".into(), "Bearer header-secret".into())];
    let upstream = HttpUpstream::new(spec.clone()).unwrap();

    for printed in [format!("{spec:?}"), format!("{upstream:?}")] {
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("echo-upstream"), "{printed}");
    }
}

// --- the real MCP server ---------------------------------------------------

const EVERYTHING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.testenv/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
);

/// The everything server as a child process, killed when dropped.
struct Everything(Child);

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the everything server in `mode` and waits until it listens.
async fn start_everything(mode: &str) -> (Everything, u16) {
    assert!(
        std::path::Path::new(EVERYTHING).exists(),
        "{EVERYTHING} is not installed"
    );
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = Command::new("node")
        .arg(EVERYTHING)
        .arg(mode)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node did not start");
    let child = Everything(child);

    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "everything server did not listen on {port}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

fn rpc(id: u64, method: &str, params: Value) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
}

fn initialize(id: u64) -> String {
    rpc(
        id,
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "thv-proxy-test", "version": "0" }
        }),
    )
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The JSON-RPC message with `id` in a JSON or event-stream body.
fn message_with_id(body: &str, id: u64) -> Value {
    let candidates = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .chain(std::iter::once(body));
    candidates
        .filter_map(|text| serde_json::from_str::<Value>(text.trim()).ok())
        .find(|msg| msg["id"] == json!(id))
        .unwrap_or_else(|| panic!("no message with id {id} in {body:?}"))
}

#[actix_rt::test]
async fn real_everything_server_over_streamable_http_through_the_proxy() {
    bounded(async {
        let (_server, port) = start_everything("streamableHttp").await;
        let (addr, _proxy) = proxy_to(
            format!("http://127.0.0.1:{port}/mcp"),
            UpstreamTransport::StreamableHttp,
        );
        let client = test_client();
        let url = format!("http://{addr}/mcp");
        let post = |session: Option<&str>| {
            let mut req = client
                .post(&url)
                .insert_header(("accept", "application/json, text/event-stream"))
                .insert_header(("origin", "http://127.0.0.1"))
                .content_type("application/json");
            if let Some(session) = session {
                req = req
                    .insert_header(("mcp-session-id", session.to_owned()))
                    .insert_header(("mcp-protocol-version", "2025-06-18"));
            }
            req
        };

        let mut res = post(None).send_body(initialize(1)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let session = res
            .headers()
            .get("mcp-session-id")
            .expect("no session id")
            .to_str()
            .unwrap()
            .to_owned();
        let body = res.body().await.unwrap();
        let init = message_with_id(&String::from_utf8_lossy(&body), 1);
        assert!(init["result"]["serverInfo"]["name"].is_string(), "{init}");

        let res = post(Some(&session)).send_body(INITIALIZED).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);

        let mut res = post(Some(&session))
            .send_body(rpc(2, "tools/list", json!({})))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.body().limit(1 << 20).await.unwrap();
        let tools = message_with_id(&String::from_utf8_lossy(&body), 2);
        let names: Vec<&str> = tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"echo"), "{names:?}");

        let res = client
            .delete(&url)
            .insert_header(("mcp-session-id", session))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    })
    .await;
}

#[actix_rt::test]
async fn real_everything_server_over_sse_through_the_proxy() {
    bounded(async {
        let (_server, port) = start_everything("sse").await;
        let (addr, _proxy) = proxy_to(
            format!("http://127.0.0.1:{port}/sse"),
            UpstreamTransport::Sse,
        );
        let client = test_client();

        let mut stream = client
            .get(format!("http://{addr}/sse"))
            .insert_header(("accept", "text/event-stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "event: endpoint\ndata: ").await;
        read_until(&mut stream, &mut seen, "\n\n").await;
        let endpoint = seen
            .split("data: ")
            .nth(1)
            .and_then(|rest| rest.split('\n').next())
            .unwrap()
            .to_owned();
        assert!(
            endpoint.starts_with("/messages/message?sessionId="),
            "{endpoint}"
        );

        let post = |body: String| {
            client
                .post(format!("http://{addr}{endpoint}"))
                .content_type("application/json")
                .send_body(body)
        };

        assert_eq!(
            post(initialize(1)).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        read_until(&mut stream, &mut seen, r#""id":1"#).await;
        read_until(&mut stream, &mut seen, "\n\n").await;
        assert_eq!(
            post(INITIALIZED.to_owned()).await.unwrap().status(),
            StatusCode::ACCEPTED
        );

        assert_eq!(
            post(rpc(2, "tools/list", json!({})))
                .await
                .unwrap()
                .status(),
            StatusCode::ACCEPTED
        );
        read_until(&mut stream, &mut seen, r#""id":2"#).await;
        read_until(&mut stream, &mut seen, "\"name\":\"echo\"").await;
    })
    .await;
}

#[actix_rt::test]
async fn https_upstream_that_fails_the_handshake_gets_502() {
    bounded(async {
        // A plain HTTP server behind an https:// URL: the TLS handshake fails,
        // which shows the rustls connector is built and used.
        let (up_addr, _state, _up) = start_upstream();
        let (addr, _proxy) = proxy_to(
            format!("https://{up_addr}/mcp"),
            UpstreamTransport::StreamableHttp,
        );

        let res = test_client()
            .post(format!("http://{addr}/mcp"))
            .send_body("{}")
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    })
    .await;
}
