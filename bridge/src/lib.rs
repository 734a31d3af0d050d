//! thv-bridge: what `thv-actor bridge <workload>` runs. An MCP client
//! launches it as a stdio server; it relays every message to the workload
//! over HTTP with the header `X-ToolHive-Auth: <key>`, and every message from
//! the workload back to stdout.
//!
//! It speaks streamable HTTP as servers of both generations do (with an
//! `Mcp-Session-Id`, GET stream and resumability up to the 2025-11-25
//! revision; stateless with `Mcp-Method`/`Mcp-Name` headers from 2026-07-28)
//! and the legacy HTTP+SSE transport. It recovers, without the client being
//! restarted, from a rotated key, an expired session and a workload that is
//! not up yet.
//!
//! It does not find workloads, read state files or open keychains: the
//! caller passes the URL and a [`KeySource`].
//!
//! # Guarantees
//!
//! - stdout carries JSON-RPC only, one object per line, in the order the
//!   workload produced the messages on each stream; logs go to stderr through
//!   `tracing`.
//! - Every request read from stdin gets exactly one response or error
//!   (unless the client cancels it, which asks for none).
//! - A message is sent again only when it never reached the workload
//!   (connection refused, 401, 404 for an expired session). A request whose
//!   delivery is uncertain is answered with an error instead.
//!
//! # Limitations
//!
//! - JSON-RPC batches (arrays) on stdin are rejected with -32600; the MCP
//!   revisions since 2025-06-18 have none.
//! - `http://` URLs (the workload is on loopback) and `unix:/abs/path`
//!   sockets only; no TLS.

mod actor;
mod error;
mod rpc;
mod sse;
mod unix;
mod upstream;

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tracing::Instrument as _;

pub use error::{Error, KeySourceError};

use actor::{Bridge, Close, Outbound};
use rpc::{error_message, Claim, Failure, Kind, Out, Outbox, Pending};
use upstream::Upstream;

/// Which HTTP transport the workload speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP: every message is a POST to one URL (`.../mcp`).
    StreamableHttp,
    /// The legacy HTTP+SSE transport: a GET event stream at `.../sse` names
    /// the endpoint that messages are POSTed to; answers come on the stream.
    Sse,
}

/// What one bridge session connects to, and how patient it is.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The workload's name, for log lines and error messages.
    pub workload: String,
    /// `http://127.0.0.1:PORT/mcp` for streamable HTTP, or the `/sse` URL;
    /// or `unix:/abs/path.sock` for a workload on a Unix socket, where the
    /// endpoint is `/mcp` (or `/sse` for [`Transport::Sse`]) and requests
    /// carry `Host: localhost`.
    pub url: String,
    pub transport: Transport,
    /// How long to keep retrying a workload that refuses connections (serve
    /// not up yet, or restarting) before answering the request with an error.
    pub connect_wait: Duration,
    /// How long to wait for a response's headers once a request is sent.
    /// A timeout is an uncertain delivery: answered with an error, not
    /// resent.
    pub response_timeout: Duration,
    /// How long, at stdin EOF or SIGTERM, answers still in flight are waited
    /// for before they are given up with an error.
    pub shutdown_wait: Duration,
}

impl BridgeConfig {
    /// A config with the default waits: 30 s to connect, 10 min for a
    /// response to start, 5 s to drain at exit.
    pub fn new(workload: impl Into<String>, url: impl Into<String>, transport: Transport) -> Self {
        BridgeConfig {
            workload: workload.into(),
            url: url.into(),
            transport,
            connect_wait: Duration::from_secs(30),
            response_timeout: Duration::from_secs(600),
            shutdown_wait: Duration::from_secs(5),
        }
    }
}

/// Where the bridge gets its key. Called at start and again after a 401,
/// since the key may have been rotated.
///
/// # Errors
///
/// A [`KeySourceError`] is shown to the MCP client's user in the JSON-RPC
/// error of the request that needed the key; the bridge keeps running and
/// asks again on the next request.
pub trait KeySource: 'static {
    fn fetch(&self) -> LocalBoxFuture<'static, Result<thv_actors::SharedKey, KeySourceError>>;
}

/// Runs one stdio session over the process's stdin and stdout until stdin
/// closes or SIGTERM arrives. Call inside an actix `System`.
///
/// # Errors
///
/// See [`Error`]; upstream failures are not among them.
pub async fn run_stdio(config: BridgeConfig, keys: Box<dyn KeySource>) -> Result<(), Error> {
    let terminate = terminate_signal()?;
    run_until(
        config,
        keys,
        tokio::io::stdin(),
        tokio::io::stdout(),
        terminate,
    )
    .await
}

/// [`run_stdio`] over any reader and writer, for tests and embedding. Ends
/// at the reader's EOF.
///
/// # Errors
///
/// See [`Error`].
pub async fn run(
    config: BridgeConfig,
    keys: Box<dyn KeySource>,
    input: impl AsyncRead + Unpin + 'static,
    output: impl AsyncWrite + Unpin + 'static,
) -> Result<(), Error> {
    run_until(config, keys, input, output, std::future::pending()).await
}

#[cfg(unix)]
fn terminate_signal() -> Result<LocalBoxFuture<'static, ()>, Error> {
    use futures_util::FutureExt as _;
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    Ok(async move {
        terminate.recv().await;
    }
    .boxed_local())
}

#[cfg(not(unix))]
fn terminate_signal() -> Result<LocalBoxFuture<'static, ()>, Error> {
    use futures_util::FutureExt as _;

    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    }
    .boxed_local())
}

async fn run_until(
    config: BridgeConfig,
    keys: Box<dyn KeySource>,
    input: impl AsyncRead + Unpin + 'static,
    output: impl AsyncWrite + Unpin + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    check_url(&config.url)?;
    let span = tracing::info_span!("bridge", workload = %config.workload);
    session(config, keys, input, output, shutdown)
        .instrument(span)
        .await
}

async fn session(
    config: BridgeConfig,
    keys: Box<dyn KeySource>,
    input: impl AsyncRead + Unpin + 'static,
    output: impl AsyncWrite + Unpin + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // The writer: the only thing that touches stdout.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let outbox = Outbox::new(out_tx);
    let writer = actix_rt::spawn(write_lines(output, out_rx));

    // The HTTP side, in an actor that is restarted if it fails.
    let shutdown_wait = config.shutdown_wait;
    let pending = Pending::new(outbox.clone());
    let upstream = Rc::new(Upstream::new(config, keys, pending.clone()));
    upstream.prefetch_key().await;
    let bridge = {
        let upstream = upstream.clone();
        actix::Supervisor::start(move |_| Bridge::new(upstream))
    };
    tracing::info!(outcome = "started", "bridge session started");

    // The reader: stdin until EOF or the shutdown signal.
    let read = read_lines(input, &pending, &bridge, shutdown).await;

    // Drain: answers in flight get a bounded wait, then the session ends.
    let drained = tokio::time::timeout(shutdown_wait, pending.wait_empty()).await;
    if drained.is_err() {
        tracing::warn!(pending = pending.len(), "answers still in flight at exit");
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), bridge.send(Close)).await;
    pending.fail_all(&Failure::new(
        "shutting_down",
        "the bridge is shutting down and the workload's answer did not arrive in time",
    ));
    outbox.close();
    drop(bridge);

    let written = writer.await.unwrap_or(Err(Error::ActorGone));
    tracing::info!(outcome = "stopped", "bridge session ended");
    read.and(written)
}

async fn read_lines(
    input: impl AsyncRead + Unpin,
    pending: &Pending,
    bridge: &actix::Addr<Bridge>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    tokio::pin!(shutdown);

    loop {
        // `read_until` keeps partial input in `line` if shutdown wins.
        tokio::select! {
            read = input.read_until(b'\n', &mut line) => match read {
                Ok(0) => {
                    tracing::info!("stdin closed");
                    return Ok(());
                }
                Ok(_) => {
                    take_line(&line, pending, bridge);
                    line.clear();
                }
                Err(error) => return Err(Error::Stdin(error)),
            },
            () = &mut shutdown => {
                tracing::info!("terminate signal");
                return Ok(());
            }
        }
    }
}

/// One line from stdin: checked, entered in the pending table if it is a
/// request, and handed to the actor.
fn take_line(line: &[u8], pending: &Pending, bridge: &actix::Addr<Bridge>) {
    let line = line.trim_ascii();
    if line.is_empty() {
        return;
    }
    let outbox = pending.outbox();

    let message: Value = match serde_json::from_slice(line) {
        Ok(message) => message,
        Err(_) => {
            tracing::warn!("stdin line is not json");
            let error = error_message(Value::Null, rpc::PARSE_ERROR, "parse error", "parse_error");
            outbox.send(&error);
            return;
        }
    };

    match rpc::kind(&message) {
        Kind::Request => {
            let id = message["id"].clone();
            if !pending.insert(&id) {
                let error = error_message(
                    id,
                    rpc::INVALID_REQUEST,
                    "a request with this id is already in flight",
                    "duplicate_id",
                );
                outbox.send(&error);
                return;
            }
            tracing::debug!(method = rpc::method(&message), "request from client");
            let claim = Claim::new(rpc::id_key(&id), pending.clone());
            bridge.do_send(Outbound {
                message,
                claim: Some(claim),
            });
        }
        Kind::Notification | Kind::Response => {
            bridge.do_send(Outbound {
                message,
                claim: None,
            });
        }
        Kind::Invalid => {
            let (id, text) = if message.is_array() {
                (Value::Null, "json-rpc batches are not supported")
            } else {
                let id = message.get("id").cloned().unwrap_or(Value::Null);
                (id, "not a json-rpc request, notification or response")
            };
            let error = error_message(id, rpc::INVALID_REQUEST, text, "invalid_request");
            outbox.send(&error);
        }
    }
}

async fn write_lines(
    mut output: impl AsyncWrite + Unpin,
    mut lines: mpsc::UnboundedReceiver<Out>,
) -> Result<(), Error> {
    while let Some(out) = lines.recv().await {
        let Out::Line(line) = out else {
            break;
        };
        output
            .write_all(line.as_bytes())
            .await
            .map_err(Error::Stdout)?;
        output.write_all(b"\n").await.map_err(Error::Stdout)?;

        // Flush once the burst is written, not per line.
        if lines.is_empty() {
            output.flush().await.map_err(Error::Stdout)?;
        }
    }
    output.flush().await.map_err(Error::Stdout)
}

fn check_url(url: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    if url.starts_with(unix::SCHEME) {
        return unix::check(url).map_err(invalid);
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// and unix:/path urls are supported"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("the url has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use futures_util::FutureExt as _;
    use serde_json::json;
    use thv_actors::SharedKey;
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// Hands out keys in order; the last one repeats.
    struct Keys(RefCell<VecDeque<SharedKey>>);

    impl Keys {
        fn boxed(keys: &[&SharedKey]) -> Box<dyn KeySource> {
            Box::new(Keys(RefCell::new(
                keys.iter().map(|k| (*k).clone()).collect(),
            )))
        }
    }

    impl KeySource for Keys {
        fn fetch(&self) -> LocalBoxFuture<'static, Result<SharedKey, KeySourceError>> {
            let mut keys = self.0.borrow_mut();
            let key = if keys.len() > 1 {
                keys.pop_front()
            } else {
                keys.front().cloned()
            };
            async move { key.ok_or_else(|| KeySourceError::new("no key")) }.boxed_local()
        }
    }

    fn config(url: String, transport: Transport) -> BridgeConfig {
        let mut config = BridgeConfig::new("demo", url, transport);
        config.connect_wait = Duration::from_millis(500);
        config.response_timeout = Duration::from_secs(10);
        config.shutdown_wait = Duration::from_secs(5);
        config
    }

    /// Feeds `input` to a bridge, closes stdin, and returns what it wrote.
    async fn session_output(
        config: BridgeConfig,
        keys: Box<dyn KeySource>,
        input: &str,
    ) -> Vec<Value> {
        let (mut stdin_tx, stdin_rx) = tokio::io::duplex(1 << 20);
        let (stdout_tx, mut stdout_rx) = tokio::io::duplex(1 << 20);
        stdin_tx.write_all(input.as_bytes()).await.unwrap();
        drop(stdin_tx);

        let bridge = run(config, keys, stdin_rx, stdout_tx);
        let result = tokio::time::timeout(Duration::from_secs(30), bridge).await;
        result
            .expect("bridge did not finish in time")
            .expect("bridge failed");

        let mut text = String::new();
        stdout_rx.read_to_string(&mut text).await.unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("stdout line is json"))
            .collect()
    }

    fn lines(messages: &[Value]) -> String {
        messages.iter().map(|m| format!("{m}\n")).collect()
    }

    fn by_id<'a>(output: &'a [Value], id: &Value) -> Vec<&'a Value> {
        output
            .iter()
            .filter(|m| m.get("id") == Some(id) && m.get("method").is_none())
            .collect()
    }

    fn initialize(id: u64) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
    }

    fn initialized() -> Value {
        json!({"jsonrpc":"2.0","method":"notifications/initialized"})
    }

    fn request(id: u64, method: &str) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":method,"params":{}})
    }

    fn authorized(request: &HttpRequest, key: &str) -> bool {
        request
            .headers()
            .get("x-toolhive-auth")
            .and_then(|v| v.to_str().ok())
            == Some(key)
    }

    fn header(request: &HttpRequest, name: &str) -> Option<String> {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn result_for(message: &Value, result: Value) -> Value {
        json!({"jsonrpc":"2.0","id":message["id"],"result":result})
    }

    fn init_result(message: &Value) -> Value {
        result_for(
            message,
            json!({"protocolVersion":"2025-06-18","capabilities":{},
            "serverInfo":{"name":"test","version":"1"}}),
        )
    }

    /// Starts an actix-web server on a free loopback port.
    fn serve<F>(factory: F) -> (String, actix_web::dev::ServerHandle)
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        serve_at(factory, None)
    }

    /// Starts an actix-web server on a free loopback port (returning
    /// `http://127.0.0.1:PORT`) or, given a path, on a Unix socket there
    /// (returning `unix:PATH`).
    fn serve_at<F>(
        factory: F,
        socket: Option<&std::path::Path>,
    ) -> (String, actix_web::dev::ServerHandle)
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let server = HttpServer::new(move || App::new().configure(factory.clone()))
            .workers(1)
            .disable_signals();
        let (base, server) = match socket {
            Some(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
                let server = server.listen_uds(listener).unwrap();
                (format!("unix:{}", path.display()), server)
            }
            None => {
                let server = server.bind(("127.0.0.1", 0)).unwrap();
                let port = server.addrs()[0].port();
                (format!("http://127.0.0.1:{port}"), server)
            }
        };
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        (base, handle)
    }

    fn sse_body(chunks: Vec<String>) -> HttpResponse {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
        );
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(stream)
    }

    #[derive(Default)]
    struct Seen {
        methods: Vec<String>,
        posted_responses: Vec<Value>,
        deleted: bool,
    }

    #[actix_rt::test]
    async fn relays_a_session_bearing_server_answering_with_event_streams() {
        let key = SharedKey::generate();
        let text = key.expose_encoded().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));

        let (base, server) = serve({
            let seen = seen.clone();
            move |cfg| {
                let seen = seen.clone();
                let text = text.clone();
                cfg.app_data(web::Data::new((seen, text))).route(
                    "/mcp",
                    web::to(
                        |req: HttpRequest, body: web::Bytes, data: web::Data<(Arc<Mutex<Seen>>, String)>| async move {
                            let (seen, text) = &**data;
                            if !authorized(&req, text) {
                                return HttpResponse::Unauthorized().finish();
                            }
                            if req.method() == "DELETE" {
                                assert_eq!(header(&req, "mcp-session-id").as_deref(), Some("s1"));
                                seen.lock().unwrap().deleted = true;
                                return HttpResponse::Ok().finish();
                            }
                            if req.method() == "GET" {
                                return HttpResponse::MethodNotAllowed().finish();
                            }
                            let message: Value = serde_json::from_slice(&body).unwrap();
                            let method = message["method"].as_str().unwrap_or("").to_string();
                            if method != "initialize" {
                                assert_eq!(header(&req, "mcp-session-id").as_deref(), Some("s1"));
                                assert_eq!(header(&req, "mcp-protocol-version").as_deref(), Some("2025-06-18"));
                            }
                            if message.get("method").is_none() {
                                seen.lock().unwrap().posted_responses.push(message);
                                return HttpResponse::Accepted().finish();
                            }
                            seen.lock().unwrap().methods.push(method.clone());
                            if message.get("id").is_none() {
                                return HttpResponse::Accepted().finish();
                            }
                            let answer = if method == "initialize" { init_result(&message) } else {
                                result_for(&message, json!({"tools":[]}))
                            };
                            if method == "initialize" {
                                let body = format!("event: message\nid: 1\ndata: {answer}\n\n");
                                return HttpResponse::Ok()
                                    .content_type("text/event-stream")
                                    .insert_header(("mcp-session-id", "s1"))
                                    .body(body);
                            }
                            // A progress note, a request to the client, then the
                            // answer, split mid-event and across data lines.
                            let progress = json!({"jsonrpc":"2.0","method":"notifications/progress",
                                "params":{"progressToken":1,"progress":1}});
                            let roots = json!({"jsonrpc":"2.0","id":"srv-1","method":"roots/list"});
                            let answer_text = answer.to_string();
                            let (head, tail) = answer_text.split_at(answer_text.len() / 2);
                            sse_body(vec![
                                format!(": keepalive\n\nid: 2\ndata: {progress}\n\nid: 3\ndata: {roots}"),
                                format!("\n\nid: 4\ndata: {head}\r\ndata: "),
                                format!("{tail}\r\n\r\n"),
                            ])
                        },
                    ),
                );
            }
        });

        let input = lines(&[
            initialize(1),
            initialized(),
            request(2, "tools/list"),
            json!({"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}),
        ]);
        let output = session_output(
            config(format!("{base}/mcp"), Transport::StreamableHttp),
            Keys::boxed(&[&key]),
            &input,
        )
        .await;

        assert_eq!(
            by_id(&output, &json!(1))[0]["result"]["protocolVersion"],
            "2025-06-18"
        );
        assert_eq!(by_id(&output, &json!(2)).len(), 1);
        assert_eq!(by_id(&output, &json!(2))[0]["result"], json!({"tools":[]}));
        // Server messages keep the order the server wrote them in.
        let progress = output
            .iter()
            .position(|m| m["method"] == "notifications/progress")
            .unwrap();
        let roots = output
            .iter()
            .position(|m| m["method"] == "roots/list")
            .unwrap();
        let answer = output.iter().position(|m| m["id"] == json!(2)).unwrap();
        assert!(progress < roots && roots < answer, "{output:?}");

        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.methods,
                ["initialize", "notifications/initialized", "tools/list"]
            );
            assert!(seen.deleted, "session was not deleted at exit");
            assert_eq!(seen.posted_responses[0]["id"], "srv-1");
        }
        server.stop(false).await;
    }

    /// A stateless JSON server that echoes the method and routing headers,
    /// counts initializes, and plays 401/404 tricks when told to.
    #[derive(Default)]
    struct Tricks {
        /// Only this key is accepted.
        accept: String,
        /// 404 the next request carrying this session.
        expire: Option<String>,
        session: Option<String>,
        initializes: usize,
    }

    fn tricky_server(tricks: Arc<Mutex<Tricks>>) -> (String, actix_web::dev::ServerHandle) {
        serve(move |cfg| {
            cfg.app_data(web::Data::new(tricks.clone())).route(
                "/mcp",
                web::to(|req: HttpRequest, body: web::Bytes, data: web::Data<Arc<Mutex<Tricks>>>| async move {
                    let mut t = data.lock().unwrap();
                    if !authorized(&req, &t.accept) {
                        return HttpResponse::Unauthorized().finish();
                    }
                    if req.method() != "POST" {
                        return HttpResponse::MethodNotAllowed().finish();
                    }
                    let message: Value = serde_json::from_slice(&body).unwrap();
                    let sent_session = header(&req, "mcp-session-id");
                    if sent_session.is_some() && sent_session == t.expire {
                        t.expire = None;
                        return HttpResponse::NotFound().finish();
                    }
                    if message.get("id").is_none() || message.get("method").is_none() {
                        return HttpResponse::Accepted().finish();
                    }
                    if message["method"] == "initialize" {
                        t.initializes += 1;
                        let mut response = HttpResponse::Ok();
                        if let Some(prefix) = &t.session {
                            response.insert_header(("mcp-session-id", format!("{prefix}{}", t.initializes)));
                        }
                        return response.json(init_result(&message));
                    }
                    HttpResponse::Ok().json(result_for(&message, json!({
                        "method": message["method"],
                        "mcpMethod": header(&req, "mcp-method"),
                        "mcpName": header(&req, "mcp-name"),
                        "version": header(&req, "mcp-protocol-version"),
                        "session": sent_session,
                    })))
                }),
            );
        })
    }

    #[actix_rt::test]
    async fn stateless_json_server_answers_a_burst_of_fifty_once_each() {
        let key = SharedKey::generate();
        let tricks = Arc::new(Mutex::new(Tricks {
            accept: key.expose_encoded().to_string(),
            ..Default::default()
        }));
        let (base, server) = tricky_server(tricks);

        // A 2026 client: no initialize, the version in every request's _meta.
        let mut messages = vec![
            json!({"jsonrpc":"2.0","id":0,"method":"tools/call","params":{
            "name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
        ];
        messages.extend((1..=50).map(|id| request(id, "tools/list")));
        messages.push(json!("not an object"));
        let input = format!("{}{{broken\n", lines(&messages));
        let output = session_output(
            config(format!("{base}/mcp"), Transport::StreamableHttp),
            Keys::boxed(&[&key]),
            &input,
        )
        .await;

        for id in 0..=50 {
            assert_eq!(by_id(&output, &json!(id)).len(), 1, "id {id}: {output:?}");
        }
        let call = &by_id(&output, &json!(0))[0]["result"];
        assert_eq!(call["mcpMethod"], "tools/call");
        assert_eq!(call["mcpName"], "echo");
        assert_eq!(call["version"], "2026-07-28");
        assert_eq!(call["session"], Value::Null);
        assert!(output
            .iter()
            .any(|m| m["error"]["code"] == rpc::PARSE_ERROR && m["id"].is_null()));
        assert!(output
            .iter()
            .any(|m| m["error"]["code"] == rpc::INVALID_REQUEST));
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn fetches_a_rotated_key_after_401_and_retries() {
        let old = SharedKey::generate();
        let new = SharedKey::generate();
        let tricks = Arc::new(Mutex::new(Tricks {
            accept: new.expose_encoded().to_string(),
            ..Default::default()
        }));
        let (base, server) = tricky_server(tricks);

        let input = lines(&[request(1, "tools/list")]);
        let output = session_output(
            config(format!("{base}/mcp"), Transport::StreamableHttp),
            Keys::boxed(&[&old, &new]),
            &input,
        )
        .await;

        assert_eq!(
            by_id(&output, &json!(1))[0]["result"]["method"],
            "tools/list"
        );
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn refused_key_is_an_error_that_says_what_to_do_and_the_bridge_goes_on() {
        let wrong = SharedKey::generate();
        let tricks = Arc::new(Mutex::new(Tricks {
            accept: "nope".into(),
            ..Default::default()
        }));
        let (base, server) = tricky_server(tricks.clone());

        let input = lines(&[request(1, "tools/list"), request(2, "tools/list")]);
        let output = session_output(
            config(format!("{base}/mcp"), Transport::StreamableHttp),
            Keys::boxed(&[&wrong]),
            &input,
        )
        .await;

        for id in [1, 2] {
            let answer = by_id(&output, &json!(id));
            assert_eq!(answer.len(), 1);
            let message = answer[0]["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("workload 'demo' refused the key"),
                "{message}"
            );
            assert!(message.contains("thv-actor key show demo"), "{message}");
            assert!(!message.contains(&*wrong.expose_encoded()));
        }
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn expired_session_is_reinitialized_without_the_client_noticing() {
        let key = SharedKey::generate();
        let tricks = Arc::new(Mutex::new(Tricks {
            accept: key.expose_encoded().to_string(),
            session: Some("s".into()),
            expire: Some("s1".into()),
            ..Default::default()
        }));
        let (base, server) = tricky_server(tricks.clone());

        let input = lines(&[initialize(1), initialized(), request(2, "tools/list")]);
        let output = session_output(
            config(format!("{base}/mcp"), Transport::StreamableHttp),
            Keys::boxed(&[&key]),
            &input,
        )
        .await;

        // One answer per request: the replayed initialize's answer is swallowed.
        assert_eq!(output.len(), 2, "{output:?}");
        assert_eq!(by_id(&output, &json!(2))[0]["result"]["session"], "s2");
        assert_eq!(
            by_id(&output, &json!(2))[0]["result"]["version"],
            "2025-06-18"
        );
        assert_eq!(tricks.lock().unwrap().initializes, 2);
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn unreachable_workload_is_an_error_after_the_wait_and_later_requests_try_again() {
        // A port that was free a moment ago.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = SharedKey::generate();
        let input = lines(&[request(1, "tools/list")]);

        let started = std::time::Instant::now();
        let output = session_output(
            config(
                format!("http://127.0.0.1:{port}/mcp"),
                Transport::StreamableHttp,
            ),
            Keys::boxed(&[&key]),
            &input,
        )
        .await;

        let answer = by_id(&output, &json!(1));
        assert_eq!(answer.len(), 1);
        assert_eq!(answer[0]["error"]["data"]["reason"], "unreachable");
        assert!(started.elapsed() >= Duration::from_millis(450));
    }

    #[actix_rt::test]
    async fn a_panicking_actor_is_restarted_and_its_request_answered() {
        let key = SharedKey::generate();
        let tricks = Arc::new(Mutex::new(Tricks {
            accept: key.expose_encoded().to_string(),
            ..Default::default()
        }));
        let (base, server) = tricky_server(tricks);

        let (mut stdin_tx, stdin_rx) = tokio::io::duplex(1 << 16);
        let (stdout_tx, stdout_rx) = tokio::io::duplex(1 << 16);
        let config = config(format!("{base}/mcp"), Transport::StreamableHttp);
        let bridge = actix_rt::spawn(run(config, Keys::boxed(&[&key]), stdin_rx, stdout_tx));
        let mut stdout = BufReader::new(stdout_rx).lines();
        async fn next(stdout: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>) -> Value {
            let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line()).await;
            serde_json::from_str(&line.unwrap().unwrap().unwrap()).unwrap()
        }

        // Each panic loses only its own request, answered with an error.
        for (id, method) in [(1, actor::PANIC_IN_HANDLER), (2, actor::PANIC_IN_WORK)] {
            stdin_tx
                .write_all(lines(&[request(id, method)]).as_bytes())
                .await
                .unwrap();
            let answer = next(&mut stdout).await;
            assert_eq!(answer["id"], json!(id));
            assert_eq!(answer["error"]["data"]["reason"], "request_lost");
        }

        // The restarted actor serves the next request.
        stdin_tx
            .write_all(lines(&[request(3, "tools/list")]).as_bytes())
            .await
            .unwrap();
        assert_eq!(next(&mut stdout).await["result"]["method"], "tools/list");
        drop(stdin_tx);
        tokio::time::timeout(Duration::from_secs(10), bridge)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn relays_a_legacy_sse_server() {
        legacy_sse_session(None).await;
    }

    #[actix_rt::test]
    async fn relays_a_legacy_sse_server_over_a_unix_socket() {
        let dir = socket_dir("sse");
        legacy_sse_session(Some(&dir.join("s.sock"))).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A legacy HTTP+SSE server on TCP or at `socket`: the bridge finds the
    /// endpoint on `/sse`, POSTs there and relays the answers.
    async fn legacy_sse_session(socket: Option<&std::path::Path>) {
        type Stream = Arc<Mutex<Option<mpsc::UnboundedSender<Value>>>>;
        let key = SharedKey::generate();
        let text = key.expose_encoded().to_string();
        let stream: Stream = Arc::default();

        let (base, server) = serve_at(
            move |cfg| {
                cfg.app_data(web::Data::new((stream.clone(), text.clone())))
                    .route(
                        "/sse",
                        web::get().to(
                            |req: HttpRequest, data: web::Data<(Stream, String)>| async move {
                                if !authorized(&req, &data.1) {
                                    return HttpResponse::Unauthorized().finish();
                                }
                                let (tx, rx) = mpsc::unbounded_channel::<Value>();
                                *data.0.lock().unwrap() = Some(tx);
                                let first = futures_util::stream::once(async move {
                                    Ok::<_, std::io::Error>(bytes::Bytes::from(
                                        "event: endpoint\ndata: /messages?session=abc\n\n",
                                    ))
                                });
                                let rest = futures_util::stream::unfold(rx, |mut rx| async move {
                                    let message = rx.recv().await?;
                                    Some((
                                        Ok(bytes::Bytes::from(format!(
                                            "event: message\ndata: {message}\n\n"
                                        ))),
                                        rx,
                                    ))
                                });
                                HttpResponse::Ok()
                                    .content_type("text/event-stream")
                                    .streaming(futures_util::StreamExt::chain(first, rest))
                            },
                        ),
                    )
                    .route(
                        "/messages",
                        web::post().to(
                            |req: HttpRequest,
                             body: web::Bytes,
                             data: web::Data<(Stream, String)>| async move {
                                if !authorized(&req, &data.1) || req.query_string() != "session=abc"
                                {
                                    return HttpResponse::Unauthorized().finish();
                                }
                                let message: Value = serde_json::from_slice(&body).unwrap();
                                if message.get("id").is_some() && message.get("method").is_some() {
                                    let answer = if message["method"] == "initialize" {
                                        init_result(&message)
                                    } else {
                                        result_for(&message, json!({"echo": message["method"]}))
                                    };
                                    let tx = data.0.lock().unwrap().clone().unwrap();
                                    let _ = tx.send(answer);
                                }
                                HttpResponse::Accepted().body("Accepted")
                            },
                        ),
                    );
            },
            socket,
        );

        // A unix: url names the socket only; the endpoint is /sse.
        let url = match socket {
            Some(_) => base,
            None => format!("{base}/sse"),
        };
        let input = lines(&[initialize(1), initialized(), request(2, "tools/list")]);
        let output =
            session_output(config(url, Transport::Sse), Keys::boxed(&[&key]), &input).await;

        assert_eq!(by_id(&output, &json!(1)).len(), 1);
        assert_eq!(by_id(&output, &json!(2))[0]["result"]["echo"], "tools/list");
        server.stop(false).await;
    }

    #[actix_rt::test]
    async fn talks_to_the_real_server_everything() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../.testenv/node");
        let entry =
            format!("{dir}/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        assert!(
            std::path::Path::new(&entry).exists(),
            "server-everything is not installed under .testenv; run ./scripts/test, which installs it"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new("node")
            .arg(&entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        // connect_wait covers node's start-up: connection refused until it listens.
        let mut config = config(
            format!("http://127.0.0.1:{port}/mcp"),
            Transport::StreamableHttp,
        );
        config.connect_wait = Duration::from_secs(15);
        let key = SharedKey::generate();
        let input = lines(&[
            initialize(1),
            initialized(),
            request(2, "tools/list"),
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi there"}}}),
        ]);
        let output = session_output(config, Keys::boxed(&[&key]), &input).await;
        let _ = child.kill().await;

        assert!(
            by_id(&output, &json!(1))[0]["result"]["serverInfo"].is_object(),
            "{output:?}"
        );
        let tools = by_id(&output, &json!(2))[0]["result"]["tools"]
            .as_array()
            .unwrap()
            .clone();
        assert!(tools.iter().any(|t| t["name"] == "echo"));
        let echo = by_id(&output, &json!(3))[0]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(echo.contains("hi there"), "{echo}");
    }

    /// A socket path of our own in a fresh 0700 directory, short enough for
    /// `sun_path`.
    fn socket_dir(tag: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;

        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("thvb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[actix_rt::test]
    async fn relays_initialize_and_a_tool_call_over_a_unix_socket() {
        let key = SharedKey::generate();
        let text = key.expose_encoded().to_string();
        let dir = socket_dir("uds");
        let path = dir.join("w.sock");
        let hosts = Arc::new(Mutex::new(Vec::<String>::new()));

        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = HttpServer::new({
            let hosts = hosts.clone();
            move || {
                let hosts = hosts.clone();
                let text = text.clone();
                App::new().route(
                    "/mcp",
                    web::post().to(move |req: HttpRequest, body: web::Bytes| {
                        let hosts = hosts.clone();
                        let text = text.clone();
                        async move {
                            hosts
                                .lock()
                                .unwrap()
                                .push(header(&req, "host").unwrap_or_default());
                            if !authorized(&req, &text) {
                                return HttpResponse::Unauthorized().finish();
                            }
                            let message: Value = serde_json::from_slice(&body).unwrap();
                            if message.get("id").is_none() {
                                return HttpResponse::Accepted().finish();
                            }
                            let answer = match message["method"].as_str() {
                                Some("initialize") => init_result(&message),
                                _ => result_for(
                                    &message,
                                    json!({"content":[{"type":"text",
                                        "text": message["params"]["arguments"]["message"]}]}),
                                ),
                            };
                            HttpResponse::Ok()
                                .content_type("application/json")
                                .body(answer.to_string())
                        }
                    }),
                )
            }
        })
        .workers(1)
        .disable_signals()
        .listen_uds(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);

        let input = lines(&[
            initialize(1),
            initialized(),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
                "params":{"name":"echo","arguments":{"message":"over the socket"}}}),
        ]);
        let output = session_output(
            config(
                format!("unix:{}", path.display()),
                Transport::StreamableHttp,
            ),
            Keys::boxed(&[&key]),
            &input,
        )
        .await;
        handle.stop(false).await;
        let _ = std::fs::remove_dir_all(&dir);

        assert_eq!(
            by_id(&output, &json!(1))[0]["result"]["protocolVersion"],
            "2025-06-18",
            "{output:?}"
        );
        assert_eq!(
            by_id(&output, &json!(2))[0]["result"]["content"][0]["text"],
            "over the socket",
            "{output:?}"
        );
        let hosts = hosts.lock().unwrap();
        assert_eq!(hosts.len(), 3, "{hosts:?}");
        assert!(hosts.iter().all(|h| h == "localhost"), "{hosts:?}");
    }

    #[actix_rt::test]
    async fn a_missing_socket_is_unreachable_after_the_wait_and_names_the_socket() {
        let dir = socket_dir("gone");
        let url = format!("unix:{}", dir.join("none.sock").display());
        let key = SharedKey::generate();

        let started = std::time::Instant::now();
        let output = session_output(
            config(url.clone(), Transport::StreamableHttp),
            Keys::boxed(&[&key]),
            &lines(&[initialize(1)]),
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);

        let answer = by_id(&output, &json!(1));
        assert_eq!(
            answer[0]["error"]["data"]["reason"], "unreachable",
            "{output:?}"
        );
        let message = answer[0]["error"]["message"].as_str().unwrap();
        assert!(message.contains(&url), "{message}");
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[test]
    fn unix_urls_must_name_an_absolute_socket() {
        assert!(check_url("unix:/run/thv/a.sock").is_ok());
        assert!(check_url("http://127.0.0.1:1/mcp").is_ok());
        for bad in [
            "unix:a.sock",
            "unix:",
            "https://127.0.0.1/mcp",
            "http:///mcp",
        ] {
            let error = check_url(bad).unwrap_err().to_string();
            assert!(error.contains("invalid workload url"), "{bad}: {error}");
        }
    }
}
