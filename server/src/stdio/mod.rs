//! Hosting a stdio MCP server as streamable HTTP at `/mcp`: [`StdioHost`]
//! starts the server's processes, [`configure`] mounts the endpoint.
//!
//! # How each kind of client is served
//!
//! **Session-bearing clients** (revisions 2024-11-05 to 2025-11-25) get one
//! process each. An `initialize` POST without `Mcp-Session-Id` takes a warm
//! spare (a process started ahead and not yet spoken to), so the client
//! waits for the server's answer only, not for a process start; a new spare
//! is started behind it. The answer carries a fresh `Mcp-Session-Id`, which
//! every later request names. Ids pass through untouched: the process has
//! exactly one client, so every message it writes is that client's. A
//! response goes to the POST that asked; `notifications/progress` to the
//! POST whose request carried the token; any other message (sampling,
//! elicitation and roots requests, log and list-changed notifications) to
//! the oldest open POST that accepts an event stream, else to the GET
//! stream, else to a short backlog the next GET stream receives first. The
//! client's answers to those requests are POSTed and written to the same
//! process. DELETE ends the session and stops its process.
//!
//! **Stateless clients** (revision 2026-07-28, such as the Python SDK 2.x)
//! send no `initialize` and carry no session: every request names its
//! revision in `params._meta["io.modelcontextprotocol/protocolVersion"]`
//! (and in the `MCP-Protocol-Version` and `Mcp-Method` headers; the first
//! request is a `server/discover` probe). All of them share one process,
//! which serve does not initialize: the first enveloped request tells a
//! dual-era server which revision the connection speaks. Request ids and
//! progress tokens are rewritten on the way in and restored on the way out,
//! so two clients using the same id never meet. Closing a request's
//! response stream is a stateless client's cancellation; serve passes it on
//! as `notifications/cancelled`. A server that only knows the handshake
//! answers the probe with an error, and the client falls back to
//! `initialize`, that is, to a session.
//!
//! A POSTed request is answered as `application/json` when its response is
//! the first thing the process writes for it, and as `text/event-stream`
//! when something else comes first (progress) and the client's `Accept`
//! allows it; events are written as they arrive. POSTed notifications and
//! responses get 202 Accepted.
//!
//! # Measured
//!
//! Time from an `initialize` POST to its answer on the 2-core development
//! machine (medians of 5, `warm_spare_initialize_latency` prints them):
//! `mcp-server-time` (Python, mcp 2.3.0) 1.79 s cold (the host just started,
//! the spare still booting) against 15.5 ms with the warm spare; a bare
//! `python3` server 228 ms cold against 4.5 ms warm. A process per session
//! costs one process per client, and the spare one more; the isolation makes
//! server-to-client routing exact without rewriting anything.
//!
//! # Failures
//!
//! A process that exits fails what is in flight with JSON-RPC error -32002;
//! its session is forgotten, so the next request gets 404 and the client
//! initializes again (on the shared process, the next request starts a new
//! one). New processes start after a delay that doubles with every quick
//! crash (100 ms to 30 s). Every queue is bounded: a client whose stream
//! stops reading has that stream cut instead of buffered.
//!
//! # Limitations
//!
//! - No resumability: events carry no ids and `Last-Event-ID` is ignored.
//! - JSON-RPC batches (allowed only by revision 2025-03-26) are refused.
//! - A shared process's messages that name no request (log notifications,
//!   server-to-client requests) are dropped (requests are refused), since
//!   they cannot be attributed to one client.
//!
//! # Idle sessions
//!
//! Clients that exit without `DELETE` (a killed bridge, most clients on a
//! crash) leave their session behind. A session with nothing in flight and
//! no GET stream open ends, and its process is stopped, once it has been
//! idle for [`StdioSpec::session_idle_timeout`] (serve's default:
//! [`DEFAULT_SESSION_IDLE_TIMEOUT`]); its client gets 404 on its next
//! request and initializes again, as the specification asks. When
//! [`MAX_SESSIONS`] are open, a new `initialize` ends the session idle the
//! longest instead of being refused; only when every session is in use is
//! it refused with 503.

mod child;
mod conn;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use rand_core::TryRngCore;
use serde_json::Value;
use thv_actors::WorkloadName;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use self::child::{Backoff, ChildConfig, Registry, Spawned};
use self::conn::{Conn, InFlight, Mode, SubmitError};
use crate::jsonrpc::{
    error_for, error_response, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, UNAVAILABLE,
    UPSTREAM_UNAVAILABLE,
};

/// The tracing target of everything this module logs, children's stderr
/// included.
pub(crate) const TARGET: &str = "thv_server::stdio";

/// The header that carries a session's id.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// Most sessions (and so processes) one workload runs at once.
pub const MAX_SESSIONS: usize = 64;
/// How long serve lets a session sit idle before ending it, unless the
/// workload's `session_idle_timeout` says otherwise.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest wait between two looks for idle sessions.
const SWEEP_MAX: Duration = Duration::from_secs(60);
/// Largest accepted request body.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a request waits for a process to become available.
const SPARE_WAIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the processes to exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What to run for one workload.
pub struct StdioSpec {
    /// The workload, for logs.
    pub workload: WorkloadName,
    /// The program and its arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    /// Variables added to the environment serve itself runs with.
    pub env: BTreeMap<String, String>,
    /// When set, passed to every process as `TOOLHIVE_SHARED_KEY`.
    pub inject_key: Option<Zeroizing<String>>,
    /// End a session (and stop its process) once it has been idle this
    /// long: nothing in flight, no GET stream open. `None` keeps idle
    /// sessions until they are deleted or the host shuts down.
    pub session_idle_timeout: Option<Duration>,
}

impl fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioSpec")
            .field("workload", &self.workload)
            .field("command", &self.command)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field(
                "inject_key",
                &self.inject_key.as_ref().map(|_| "<redacted>"),
            )
            .field("session_idle_timeout", &self.session_idle_timeout)
            .finish()
    }
}

/// Why a workload could not be hosted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdioError {
    /// The caller passed an empty command.
    #[error("the command of workload {workload} is empty")]
    EmptyCommand { workload: WorkloadName },
    /// The first process could not be started: the command is wrong or not
    /// installed (the operator's to fix).
    #[error("cannot start {program} for workload {workload}")]
    Spawn {
        workload: WorkloadName,
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A stdio MCP server served over HTTP: its processes, sessions and routing.
///
/// Cheap to clone; every clone is the same host. [`StdioHost::start`] must
/// be called inside a running actix system: the processes and their pipes
/// are driven on the arbiter that called it, which must outlive the host.
///
/// # Security
///
/// It does no authentication and no Origin check: wrap the routes that
/// [`configure`] adds. The shared key, when injected, is only ever written
/// into the child's environment, never logged. Session ids are 128 random
/// bits, but they identify, they do not authenticate.
///
/// # Limitations
///
/// See the module documentation: no resumability, no batches.
#[derive(Clone)]
pub struct StdioHost {
    inner: Arc<Inner>,
}

struct Inner {
    workload: WorkloadName,
    config: ChildConfig,
    arbiter: actix_rt::ArbiterHandle,
    registry: Arc<Registry>,
    backoff: Arc<Backoff>,
    closing: AtomicBool,
    /// Processes started ahead, waiting for a client.
    spare_rx: tokio::sync::Mutex<mpsc::Receiver<Spawned>>,
    sessions: Mutex<HashMap<String, Arc<Conn>>>,
    /// At most this many sessions; [`MAX_SESSIONS`] except in tests.
    max_sessions: usize,
    idle_timeout: Option<Duration>,
    /// The process stateless clients share, once one has asked.
    shared: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl StdioHost {
    /// Starts the first process (the warm spare) and the task that keeps one
    /// spare ready.
    ///
    /// # Errors
    ///
    /// [`StdioError::EmptyCommand`], or [`StdioError::Spawn`] when the first
    /// process cannot be started.
    ///
    /// # Panics
    ///
    /// Outside an actix system.
    pub fn start(spec: StdioSpec) -> Result<StdioHost, StdioError> {
        StdioHost::start_with_limit(spec, MAX_SESSIONS)
    }

    /// [`StdioHost::start`] with a session limit of `max_sessions`.
    pub(crate) fn start_with_limit(
        spec: StdioSpec,
        max_sessions: usize,
    ) -> Result<StdioHost, StdioError> {
        if spec.command.is_empty() {
            return Err(StdioError::EmptyCommand {
                workload: spec.workload,
            });
        }

        let config = ChildConfig {
            workload: spec.workload.clone(),
            command: spec.command,
            env: spec.env,
            inject_key: spec
                .inject_key
                .map(|key| Arc::new(std::sync::RwLock::new(key))),
        };
        let registry = Arc::new(Registry::default());
        let backoff = Arc::new(Backoff::default());

        // The first spare is started here, so that a wrong command is an
        // error now rather than a log line later.
        let first =
            child::spawn(&config, &registry, &backoff).map_err(|source| StdioError::Spawn {
                workload: spec.workload.clone(),
                program: config.command[0].clone(),
                source,
            })?;
        let (spare_tx, spare_rx) = mpsc::channel(1);
        let room = spare_tx.try_send(first).is_ok();
        debug_assert!(room, "a new channel has room");

        let inner = Arc::new(Inner {
            workload: spec.workload,
            config,
            arbiter: actix_rt::Arbiter::current(),
            registry,
            backoff,
            closing: AtomicBool::new(false),
            spare_rx: tokio::sync::Mutex::new(spare_rx),
            sessions: Mutex::new(HashMap::new()),
            max_sessions,
            idle_timeout: spec.session_idle_timeout.filter(|t| !t.is_zero()),
            shared: tokio::sync::Mutex::new(None),
        });
        actix_rt::spawn(keep_spare(inner.clone(), spare_tx));
        if let Some(timeout) = inner.idle_timeout {
            actix_rt::spawn(expire_idle(Arc::downgrade(&inner), timeout));
        }
        tracing::info!(target: TARGET, workload = %inner.workload, "stdio workload hosted");

        Ok(StdioHost { inner })
    }

    /// Stops every process (SIGTERM, then SIGKILL after two seconds) and
    /// waits up to five seconds for them to be reaped. Requests after this
    /// get 503.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let sessions: Vec<_> = self.inner.sessions.lock().unwrap().drain().collect();
        for (_, conn) in sessions {
            conn.close();
        }
        if let Some(conn) = self.inner.shared.lock().await.take() {
            conn.close();
        }

        let children = self.inner.registry.all();
        for child in &children {
            child.terminate();
        }
        let all_exited = futures_util::future::join_all(children.iter().map(|c| c.exited()));
        if tokio::time::timeout(SHUTDOWN_WAIT, all_exited)
            .await
            .is_err()
        {
            tracing::error!(target: TARGET, workload = %self.inner.workload, "mcp server processes did not exit in time");
        }
        tracing::info!(target: TARGET, workload = %self.inner.workload, "stdio workload stopped");
    }

    /// Gives processes started from now on `key` as `TOOLHIVE_SHARED_KEY`
    /// (after a rotation), and retires the warm spare, which was started
    /// with the old one. Does nothing for a workload started without
    /// `inject_key`.
    ///
    /// # Limitations
    ///
    /// Processes already serving a session, and the shared process of
    /// stateless clients, keep the key they were started with: an
    /// environment cannot be changed from outside a process.
    pub fn replace_injected_key(&self, key: Zeroizing<String>) {
        let Some(slot) = &self.inner.config.inject_key else {
            return;
        };
        *slot.write().unwrap_or_else(|p| p.into_inner()) = key;

        // A spare being taken right now keeps the old key; the next one
        // gets the new.
        if let Ok(mut spare_rx) = self.inner.spare_rx.try_lock() {
            if let Ok(spare) = spare_rx.try_recv() {
                spare.child.terminate();
            }
        }
        tracing::info!(target: TARGET, workload = %self.inner.workload, "new processes get the rotated key");
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().unwrap().len()
    }

    /// The pids of the processes alive now (spares included), for
    /// diagnostics and tests.
    pub fn pids(&self) -> Vec<u32> {
        self.inner
            .registry
            .all()
            .iter()
            .filter_map(|c| c.pid)
            .collect()
    }

    /// The pid of the process serving session `id`.
    pub fn session_pid(&self, id: &str) -> Option<u32> {
        self.inner
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .and_then(|c| c.child.pid)
    }
}

/// Keeps one spare process ready: whenever the spare is taken, starts the
/// next, after the crash backoff.
async fn keep_spare(inner: Arc<Inner>, spare_tx: mpsc::Sender<Spawned>) {
    loop {
        let Ok(permit) = spare_tx.reserve().await else {
            return;
        };
        let delay = inner.backoff.delay();
        if !delay.is_zero() {
            tracing::info!(target: TARGET, workload = %inner.workload, delay = ?delay, "waiting before restarting the mcp server");
            tokio::time::sleep(delay).await;
        }
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }

        match child::spawn(&inner.config, &inner.registry, &inner.backoff) {
            Ok(spawned) => permit.send(spawned),
            Err(error) => {
                inner.backoff.record_failure();
                tracing::error!(target: TARGET, workload = %inner.workload, %error, "cannot start the mcp server");
            }
        }
    }
}

/// Ends sessions idle for `timeout`, looking every half timeout (at most
/// every [`SWEEP_MAX`]), until the host is shut down or dropped.
async fn expire_idle(inner: std::sync::Weak<Inner>, timeout: Duration) {
    let period = (timeout / 2).min(SWEEP_MAX);
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Ordering::SeqCst) {
            return;
        }

        let now = std::time::Instant::now();
        let expired: Vec<(String, Arc<Conn>)> = inner
            .sessions
            .lock()
            .unwrap()
            .extract_if(|_, conn| conn.idle_for(now).is_some_and(|idle| idle >= timeout))
            .collect();
        for (id, conn) in expired {
            conn.close();
            tracing::info!(target: TARGET, workload = %inner.workload, session = %id, idle = ?timeout, "session ended after being idle");
        }
    }
}

impl Inner {
    /// Makes room for one more session: nothing to do below the limit;
    /// at it, ends the session idle the longest. False when every session
    /// is in use.
    fn make_room(&self) -> bool {
        let evicted = {
            let mut sessions = self.sessions.lock().unwrap();
            if sessions.len() < self.max_sessions {
                return true;
            }
            let now = std::time::Instant::now();
            let longest = sessions
                .iter()
                .filter_map(|(id, conn)| conn.idle_for(now).map(|idle| (idle, id)))
                .max_by_key(|(idle, _)| *idle)
                .map(|(_, id)| id.clone());
            let Some(id) = longest else {
                return false;
            };
            sessions.remove(&id).map(|conn| (id, conn))
        };
        if let Some((id, conn)) = evicted {
            conn.close();
            tracing::info!(target: TARGET, workload = %self.workload, session = %id, "session limit reached; the longest idle session ended");
        }
        true
    }

    /// Takes the spare process, waiting for one if it is still starting.
    async fn take_spare(&self) -> Option<Spawned> {
        let mut spare_rx = self.spare_rx.lock().await;
        let deadline = tokio::time::Instant::now() + SPARE_WAIT;
        loop {
            let spawned = tokio::time::timeout_at(deadline, spare_rx.recv())
                .await
                .ok()??;
            if !spawned.child.has_exited() {
                return Some(spawned);
            }
        }
    }

    /// The shared process of stateless clients, started on first use.
    async fn shared_conn(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let mut shared = self.shared.lock().await;
        if let Some(conn) = shared.as_ref().filter(|c| !c.is_gone()) {
            return Some(conn.clone());
        }

        let spawned = self.take_spare().await?;
        let inner = Arc::downgrade(self);
        let conn = Conn::start(spawned, Mode::Shared, &self.arbiter, move |gone| {
            let Some(inner) = inner.upgrade() else { return };
            let gone = gone.clone();
            actix_rt::spawn(async move {
                let mut shared = inner.shared.lock().await;
                if shared.as_ref().is_some_and(|c| Arc::ptr_eq(c, &gone)) {
                    *shared = None;
                }
            });
        });
        *shared = Some(conn.clone());
        Some(conn)
    }
}

/// Mounts POST, GET and DELETE `/mcp`, served by `host`.
pub fn configure(cfg: &mut web::ServiceConfig, host: StdioHost) {
    cfg.service(
        web::resource("/mcp")
            .app_data(web::Data::new(host))
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route(web::post().to(post))
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    );
}

/// What the client's `Accept` lets a POST be answered with.
#[derive(Clone, Copy)]
struct Accepts {
    json: bool,
    sse: bool,
}

fn accepts(req: &HttpRequest) -> Accepts {
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Accepts {
            json: true,
            sse: false,
        };
    };
    let accept = accept.to_ascii_lowercase();
    let any = accept.contains("*/*");
    Accepts {
        json: any || accept.contains("application/json"),
        sse: any || accept.contains("text/event-stream"),
    }
}

fn session_id(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
}

fn is_stateless(message: &Value) -> bool {
    message
        .pointer("/params/_meta")
        .and_then(|m| m.get(crate::demo::PROTOCOL_VERSION_META_KEY))
        .is_some()
}

async fn post(req: HttpRequest, body: Bytes, host: web::Data<StdioHost>) -> HttpResponse {
    let inner = &host.inner;
    if inner.closing.load(Ordering::SeqCst) {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            "the server is shutting down",
        );
    }

    // Parse and classify.
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, PARSE_ERROR, "the body is not JSON");
    };
    if message.is_array() {
        return error_response(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "batches are not supported",
        );
    }
    if !message.is_object() || message.get("jsonrpc") != Some(&Value::from("2.0")) {
        return error_response(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "not a JSON-RPC 2.0 message",
        );
    }
    let is_request = message.get("method").is_some() && message.get("id").is_some();
    let accepts = accepts(&req);
    if is_request && !accepts.json && !accepts.sse {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "accept application/json or text/event-stream",
        );
    }

    // Find the conversation it belongs to.
    match session_id(&req) {
        Some(id) => {
            let conn = inner.sessions.lock().unwrap().get(id).cloned();
            match conn {
                Some(conn) if is_request => answer(conn, message, accepts, None).await,
                Some(conn) => accepted(conn.forward(&message).await),
                None => unknown_session(),
            }
        }
        None if is_request && message["method"] == "initialize" => {
            initialize(inner, message, accepts).await
        }
        None if is_request && is_stateless(&message) => match inner.shared_conn().await {
            Some(conn) => answer(conn, message, accepts, None).await,
            None => starting(),
        },
        // Stateless clients send no notifications over HTTP; one that does
        // loses nothing by being told it was taken.
        None if !is_request
            && message
                .pointer("/params/_meta")
                .map(|_| is_stateless(&message))
                == Some(true) =>
        {
            HttpResponse::Accepted().finish()
        }
        None => error_response(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "missing Mcp-Session-Id header: initialize first",
        ),
    }
}

async fn initialize(inner: &Arc<Inner>, message: Value, accepts: Accepts) -> HttpResponse {
    if !inner.make_room() {
        tracing::warn!(target: TARGET, workload = %inner.workload, "session limit reached and every session in use; initialize refused");
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            "too many sessions",
        );
    }
    let Some(spawned) = inner.take_spare().await else {
        return starting();
    };

    let id = new_session_id();
    let sessions = Arc::downgrade(inner);
    let gone_id = id.clone();
    let conn = Conn::start(spawned, Mode::Session, &inner.arbiter, move |_| {
        if let Some(inner) = sessions.upgrade() {
            inner.sessions.lock().unwrap().remove(&gone_id);
        }
    });
    inner
        .sessions
        .lock()
        .unwrap()
        .insert(id.clone(), conn.clone());
    tracing::info!(target: TARGET, workload = %inner.workload, session = %id, pid = conn.child.pid, "session started");

    answer(conn, message, accepts, Some(id)).await
}

/// Sends a request and answers the POST with what comes back.
async fn answer(
    conn: Arc<Conn>,
    message: Value,
    accepts: Accepts,
    new_session: Option<String>,
) -> HttpResponse {
    let id = message["id"].clone();
    let (in_flight, mut rx) = match conn.request(message, accepts.sse).await {
        Ok(sent) => sent,
        Err(SubmitError::Gone) => return unknown_session(),
        Err(SubmitError::DuplicateId) => {
            return json_reply(
                StatusCode::OK,
                &error_for(&id, INVALID_REQUEST, "a request with this id is in flight"),
            )
        }
        Err(SubmitError::Stalled) => {
            return json_reply(
                StatusCode::OK,
                &error_for(&id, UPSTREAM_UNAVAILABLE, "the mcp server is not reading"),
            )
        }
    };

    let first = rx
        .recv()
        .await
        .unwrap_or_else(|| error_for(&id, INTERNAL_ERROR, "the request ended without a response"));

    let mut reply = if is_response(&first) && (accepts.json || !accepts.sse) {
        drop(in_flight);
        json_reply(StatusCode::OK, &first)
    } else {
        event_stream(first, rx, in_flight)
    };
    if let Some(session) = new_session {
        if let Ok(value) = HeaderValue::from_str(&session) {
            reply
                .headers_mut()
                .insert(header::HeaderName::from_static(SESSION_HEADER), value);
        }
    }
    reply
}

fn is_response(message: &Value) -> bool {
    message.get("method").is_none() && message.get("id").is_some()
}

/// A POST answered as events: `first`, then whatever comes, up to and
/// including the response.
fn event_stream(first: Value, rx: mpsc::Receiver<Value>, in_flight: InFlight) -> HttpResponse {
    let state = (Some(first), rx, Some(in_flight));
    let events = stream::unfold(state, |(next, mut rx, mut in_flight)| async move {
        in_flight.as_ref()?;
        let message = match next {
            Some(message) => message,
            None => rx.recv().await.unwrap_or(Value::Null),
        };
        if message.is_null() {
            return None;
        }
        if is_response(&message) {
            in_flight = None;
        }
        Some((
            Ok::<_, Infallible>(sse_event(&message)),
            (None, rx, in_flight),
        ))
    });
    sse_response(events)
}

fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn sse_response<S>(events: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<Bytes, Infallible>> + 'static,
{
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(events)
}

async fn get(req: HttpRequest, host: web::Data<StdioHost>) -> HttpResponse {
    let Some(id) = session_id(&req) else {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "POST"))
            .content_type("application/json")
            .body(
                crate::jsonrpc::error_body(
                    INVALID_REQUEST,
                    "stateless clients have no event stream",
                )
                .to_string(),
            );
    };
    if !accepts(&req).sse {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            INVALID_REQUEST,
            "accept text/event-stream",
        );
    }
    let conn = host.inner.sessions.lock().unwrap().get(id).cloned();
    let Some(rx) = conn.and_then(|c| c.open_stream()) else {
        return unknown_session();
    };

    let opening =
        stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b": stream open\n\n")) });
    let events = stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        Some((Ok::<_, Infallible>(sse_event(&message)), rx))
    });
    sse_response(futures_util::StreamExt::chain(opening, events))
}

async fn delete(req: HttpRequest, host: web::Data<StdioHost>) -> HttpResponse {
    let Some(id) = session_id(&req) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "missing Mcp-Session-Id header",
        );
    };
    let Some(conn) = host.inner.sessions.lock().unwrap().remove(id) else {
        return unknown_session();
    };
    conn.close();
    tracing::info!(target: TARGET, workload = %host.inner.workload, session = %id, "session ended by the client");
    HttpResponse::NoContent().finish()
}

fn accepted(result: Result<(), SubmitError>) -> HttpResponse {
    match result {
        Ok(()) => HttpResponse::Accepted().finish(),
        Err(SubmitError::Gone) => unknown_session(),
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            UPSTREAM_UNAVAILABLE,
            "the mcp server is not reading",
        ),
    }
}

fn unknown_session() -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        INVALID_REQUEST,
        "unknown or ended session: initialize again",
    )
}

fn starting() -> HttpResponse {
    let mut reply = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        UNAVAILABLE,
        "the mcp server is starting; retry shortly",
    );
    reply
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    reply
}

fn json_reply(status: StatusCode, message: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(message.to_string())
}

fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand_core::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
