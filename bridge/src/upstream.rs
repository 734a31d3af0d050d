//! The HTTP side of one stdio session: everything the Bridge actor knows
//! about the workload (key, session id, negotiated protocol version, the
//! client's handshake for replay) and the exchanges it makes with it.
//!
//! The state lives in [`Upstream`], which the actor owns through an `Rc` and
//! lends to the futures it spawns; those futures run on the actor's context
//! and die with it, while the state survives a restart.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::error::SendRequestError;
use awc::http::header::{HeaderName, HeaderValue};
use awc::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable, LocalBoxFuture};
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{json, Value};
use thv_actors::SharedKey;
use tokio::sync::{oneshot, Mutex};

use crate::rpc::{self, kind, message_id_key, method, Claim, Failure, Kind, Pending};
use crate::sse::SseParser;
use crate::{BridgeConfig, KeySource, Transport};

const AUTH_HEADER: &str = "x-toolhive-auth";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";
const LAST_EVENT_HEADER: &str = "last-event-id";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const ACCEPT_SSE: &str = "text/event-stream";

/// Where a request carries its protocol version under the 2026 revision.
const VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

/// The first revision without sessions, GET streams or client notifications
/// over HTTP. Revisions are dates, so they compare as strings.
const FIRST_STATELESS_REVISION: &str = "2026-07-28";

/// Largest JSON body or single event-stream line taken from the workload.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How often a dropped POST stream is resumed with `Last-Event-ID` before
/// the request is answered with an error.
const RESUME_ATTEMPTS: u32 = 2;

/// How often the GET stream is reopened in a row without a success.
const GET_STREAM_ATTEMPTS: u32 = 30;

const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Upstream {
    config: BridgeConfig,
    /// The HTTP URL requests go to: `config.url`, or for a `unix:` socket
    /// `http://localhost/mcp` (or `/sse`) over that socket.
    url: String,
    client: awc::Client,
    keys: Box<dyn KeySource>,
    pending: Pending,
    state: RefCell<State>,
    /// Held while a key is fetched, so that many 401s make one fetch.
    key_lock: Mutex<()>,
    /// Held while a session is (re)established, so that many 404s make one
    /// re-initialize.
    session_lock: Mutex<()>,
    closing: Cell<bool>,
    replays: Cell<u64>,
}

#[derive(Default)]
struct State {
    key: Option<SharedKey>,
    /// Bumped on every fetch: a request that got 401 with key `n` fetches
    /// again only if no one else has since.
    key_epoch: u64,
    session: Option<String>,
    protocol_version: Option<String>,
    /// The client's own `initialize` and `notifications/initialized`, kept
    /// to replay when the workload forgets the session.
    initialize: Option<Value>,
    initialized: Option<Value>,
    initialize_key: Option<String>,
    get_stream: Option<AbortHandle>,
    legacy: Option<Legacy>,
    legacy_generation: u64,
    /// Requests POSTed to a legacy endpoint whose answer is due on its stream.
    legacy_posted: HashSet<String>,
    /// Responses the bridge itself waits for (replayed handshakes), by id.
    waiters: HashMap<String, oneshot::Sender<Value>>,
    /// In-flight requests, to abort their POST on a 2026 cancellation.
    aborts: HashMap<String, (AbortHandle, bool)>,
}

struct Legacy {
    endpoint: String,
    stream: AbortHandle,
}

/// How one attempt to reach the workload went.
enum Sent {
    Answered(awc::ClientResponse),
    /// The connection was never made, so the message never left: safe to
    /// send again.
    NotDelivered(String),
    /// The connection was made and then failed or timed out: the workload may
    /// have acted on the message.
    Uncertain(String),
}

impl Upstream {
    pub(crate) fn new(config: BridgeConfig, keys: Box<dyn KeySource>, pending: Pending) -> Self {
        // Response heads get `response_timeout` per request; bodies (event
        // streams that live as long as the session) get none.
        let (client, url) = match crate::unix::socket_path(&config.url) {
            // Elsewhere `check_url` has refused `unix:` urls before this.
            #[cfg(unix)]
            Some(path) => (
                crate::unix::client(path.to_owned()),
                crate::unix::http_url(config.transport),
            ),
            _ => (
                awc::Client::builder().disable_timeout().finish(),
                config.url.clone(),
            ),
        };
        Upstream {
            config,
            url,
            client,
            keys,
            pending,
            state: RefCell::new(State::default()),
            key_lock: Mutex::new(()),
            session_lock: Mutex::new(()),
            closing: Cell::new(false),
            replays: Cell::new(0),
        }
    }

    fn workload(&self) -> &str {
        &self.config.workload
    }

    /// Fetches the key once at start. A failure is logged and tried again
    /// on the first message.
    pub(crate) async fn prefetch_key(&self) {
        if let Err(failure) = self.key().await {
            tracing::warn!(workload = self.workload(), error = %failure.message, "no key yet");
        }
    }

    // ---- the client's messages -------------------------------------------

    /// Sends one message from the client. For a request, `claim` is its
    /// pending entry; the request is answered exactly once, here or by a
    /// stream.
    pub(crate) async fn forward(self: Rc<Self>, message: Value, claim: Option<Claim>) {
        let kind = kind(&message);
        self.remember_handshake(&message, kind);

        let Some(claim) = claim else {
            self.forward_one(message, kind, None).await;
            return;
        };

        // Keep a handle to abort the POST if the client cancels under 2026.
        let key = claim.key().to_string();
        let modern = is_modern(self.version_for(&message).as_deref());
        let (handle, registration) = AbortHandle::new_pair();
        self.state
            .borrow_mut()
            .aborts
            .insert(key.clone(), (handle, modern));

        let work = self.clone().forward_one(message, kind, Some(claim));
        let _ = Abortable::new(work, registration).await;
        self.state.borrow_mut().aborts.remove(&key);
    }

    fn remember_handshake(&self, message: &Value, kind: Kind) {
        let mut state = self.state.borrow_mut();
        match (method(message), kind) {
            (Some("initialize"), Kind::Request) => {
                state.initialize = Some(message.clone());
                state.initialize_key = message_id_key(message);
            }
            (Some("notifications/initialized"), Kind::Notification) => {
                state.initialized = Some(message.clone());
            }
            _ => {}
        }
    }

    /// A `notifications/cancelled` from the client. Settles the cancelled
    /// request (the client expects no answer) and, where the request spoke
    /// the 2026 revision, aborts its POST instead of sending the
    /// notification, as that revision wants. Returns whether to send it on.
    pub(crate) fn client_cancelled(&self, notification: &Value) -> bool {
        let Some(id) = notification.pointer("/params/requestId") else {
            return true;
        };
        let key = rpc::id_key(id);
        self.pending.cancel(&key);

        let aborted = self.state.borrow_mut().aborts.remove(&key);
        match aborted {
            Some((handle, true)) => {
                handle.abort();
                false
            }
            _ => true,
        }
    }

    async fn forward_one(self: Rc<Self>, message: Value, kind: Kind, claim: Option<Claim>) {
        match self.config.transport {
            Transport::StreamableHttp => self.forward_streamable(message, kind, claim).await,
            Transport::Sse => self.forward_legacy(message, claim).await,
        }
    }

    async fn forward_streamable(self: Rc<Self>, message: Value, kind: Kind, claim: Option<Claim>) {
        let body = Bytes::from(message.to_string());
        let is_initialize = method(&message) == Some("initialize") && kind == Kind::Request;

        let response = match self.post(&message, &body, !is_initialize).await {
            Ok(response) => response,
            Err(failure) => {
                self.give_up(claim, &message, &failure);
                return;
            }
        };

        if is_initialize && response.status().is_success() {
            self.take_session(&response);
        }

        match claim {
            Some(claim) => self.read_answer(response, claim).await,
            None => self.after_one_way(response, &message).await,
        }
    }

    /// A notification or response was delivered; nothing comes back.
    async fn after_one_way(self: &Rc<Self>, mut response: awc::ClientResponse, message: &Value) {
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(
                workload = self.workload(),
                status = status.as_u16(),
                method = method(message).unwrap_or("(response)"),
                "workload refused a one-way message"
            );
            return;
        }

        // A server may still answer with a stream carrying messages of its own.
        if is_event_stream(&response) {
            let mut parser = SseParser::new(MAX_BODY);
            self.read_events(&mut response, &mut parser, None).await;
        }

        if method(message) == Some("notifications/initialized") {
            self.ensure_get_stream();
        }
    }

    /// Reads the answer to a request from its POST response.
    async fn read_answer(self: &Rc<Self>, mut response: awc::ClientResponse, claim: Claim) {
        let status = response.status();
        let key = claim.key().to_string();

        if status == StatusCode::ACCEPTED {
            if self.state.borrow().get_stream.is_some() {
                // Some servers deliver the answer on the GET stream.
                claim.release();
            } else {
                self.fail(
                    claim,
                    "no_answer",
                    "the workload accepted the request but will not answer it",
                );
            }
            return;
        }

        if !status.is_success() {
            self.answer_from_error_status(response, claim).await;
            return;
        }

        if is_event_stream(&response) {
            let mut parser = SseParser::new(MAX_BODY);
            self.read_events(&mut response, &mut parser, Some(&key))
                .await;
            self.resume_if_cut(&mut parser, &key).await;
            if self.pending.contains(&key) {
                self.fail(
                    claim,
                    "stream_closed",
                    "the workload closed the response stream before answering; the request \
                     was not sent again because it may already have run",
                );
            } else {
                claim.release();
            }
            return;
        }

        if is_json(&response) {
            match response.body().limit(MAX_BODY).await {
                Ok(body) => match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Array(messages)) => messages.into_iter().for_each(|m| self.route(m)),
                    Ok(message) => self.route(message),
                    Err(_) => {
                        tracing::warn!(workload = self.workload(), "workload sent invalid json")
                    }
                },
                Err(error) => {
                    tracing::warn!(workload = self.workload(), %error, "cannot read body")
                }
            }
            if self.pending.contains(&key) {
                self.fail(
                    claim,
                    "no_answer",
                    "the workload's reply did not answer the request",
                );
            } else {
                claim.release();
            }
            return;
        }

        self.fail(
            claim,
            "bad_content_type",
            "the workload answered with an unexpected content type",
        );
    }

    /// A 4xx or 5xx: pass the workload's own JSON-RPC error on when it sent
    /// one, or make one from the status.
    async fn answer_from_error_status(&self, mut response: awc::ClientResponse, claim: Claim) {
        let status = response.status();
        let body = response.body().limit(1024 * 1024).await.ok();
        let error = body
            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
            .and_then(|value| value.get("error").cloned());

        if let Some(error) = error {
            let id = serde_json::from_str::<Value>(claim.key()).unwrap_or(Value::Null);
            self.pending
                .respond(&json!({ "jsonrpc": "2.0", "id": id, "error": error }));
            claim.release();
            return;
        }

        let message = format!(
            "workload '{}' answered http {}",
            self.workload(),
            status.as_u16()
        );
        self.fail(claim, "http_status", &message);
    }

    /// A POST stream that ended before the answer is resumed with a GET and
    /// `Last-Event-ID`, where the server numbered its events.
    async fn resume_if_cut(self: &Rc<Self>, parser: &mut SseParser, key: &str) {
        for attempt in 1..=RESUME_ATTEMPTS {
            let Some(last_id) = parser.last_event_id().map(str::to_owned) else {
                return;
            };
            if !self.pending.contains(key) || self.closing.get() {
                return;
            }

            tracing::debug!(
                workload = self.workload(),
                attempt,
                "resuming a cut response stream"
            );
            let Ok(mut response) = self.open_get(Some(&last_id)).await else {
                return;
            };
            if !response.status().is_success() || !is_event_stream(&response) {
                return;
            }
            self.read_events(&mut response, parser, Some(key)).await;
        }
    }

    fn give_up(&self, claim: Option<Claim>, message: &Value, failure: &Failure) {
        match claim {
            Some(claim) => self.fail(claim, failure.reason, &failure.message),
            None => tracing::warn!(
                workload = self.workload(),
                method = method(message).unwrap_or("(response)"),
                reason = failure.reason,
                error = %failure.message,
                "one-way message not delivered"
            ),
        }
    }

    fn fail(&self, claim: Claim, reason: &'static str, message: &str) {
        self.pending
            .fail(claim.key(), &Failure::new(reason, message));
        claim.release();
    }

    // ---- messages from the workload ---------------------------------------

    /// Hands one message from the workload on: a response to its waiter or
    /// to the client (once), anything else to the client.
    fn route(&self, message: Value) {
        match kind(&message) {
            Kind::Response => {
                let key = message_id_key(&message).unwrap_or_default();
                let waiter = self.state.borrow_mut().waiters.remove(&key);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                    return;
                }

                if self.state.borrow().initialize_key.as_deref() == Some(key.as_str()) {
                    self.take_protocol_version(&message);
                }
                if !self.pending.respond(&message) {
                    tracing::debug!(workload = self.workload(), id = %key, "dropped a response no request waits for");
                }
            }
            Kind::Request | Kind::Notification => self.pending.outbox().send(&message),
            Kind::Invalid => {
                tracing::warn!(
                    workload = self.workload(),
                    "workload sent a message that is not json-rpc"
                )
            }
        }
    }

    /// Reads events until the stream ends or, with `until`, that request is
    /// answered.
    async fn read_events(
        &self,
        response: &mut awc::ClientResponse,
        parser: &mut SseParser,
        until: Option<&str>,
    ) {
        while let Some(chunk) = response.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::debug!(workload = self.workload(), %error, "event stream broke");
                    return;
                }
            };
            let Ok(events) = parser.feed(&chunk) else {
                tracing::warn!(workload = self.workload(), "event stream line too long");
                return;
            };

            for event in events {
                if event.event != "message" {
                    continue;
                }
                match serde_json::from_str::<Value>(&event.data) {
                    Ok(message) => self.route(message),
                    Err(_) => {
                        tracing::warn!(workload = self.workload(), "event carried invalid json")
                    }
                }
            }

            if until.is_some_and(|key| !self.pending.contains(key)) {
                return;
            }
        }
    }

    fn take_session(&self, response: &awc::ClientResponse) {
        let session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if session.is_some() {
            tracing::info!(workload = self.workload(), "workload opened a session");
        }
        self.state.borrow_mut().session = session;
    }

    fn take_protocol_version(&self, response: &Value) {
        if let Some(version) = response
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        {
            tracing::debug!(
                workload = self.workload(),
                version,
                "negotiated protocol version"
            );
            self.state.borrow_mut().protocol_version = Some(version.to_string());
        }
    }

    // ---- sending -----------------------------------------------------------

    /// POSTs one message to the streamable HTTP endpoint, recovering from
    /// what can be recovered: a rotated key (401, once), an expired session
    /// (404, once, by replaying the handshake) and a workload not up yet
    /// (connection refused, until `connect_wait`).
    async fn post(
        self: &Rc<Self>,
        message: &Value,
        body: &Bytes,
        may_reinitialize: bool,
    ) -> Result<awc::ClientResponse, Failure> {
        let mut retried_key = false;
        let mut reinitialized = !may_reinitialize;
        let mut backoff = Backoff::new(self.config.connect_wait);

        loop {
            let (key, epoch) = self.key().await?;
            let session = self.state.borrow().session.clone();
            let headers = self.message_headers(message, session.as_deref());

            let mut request = self
                .client
                .post(&self.url)
                .timeout(self.config.response_timeout)
                .insert_header(("accept", ACCEPT_BOTH))
                .insert_header(("content-type", "application/json"))
                .insert_header((AUTH_HEADER, auth_value(&key)));
            for (name, value) in headers {
                request = request.insert_header((name, value));
            }
            drop(key);

            match self.classify(request.send_body(body.clone()).await) {
                Sent::Answered(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if retried_key {
                        return Err(self.key_refused());
                    }
                    retried_key = true;
                    self.refresh_key(epoch).await?;
                }
                Sent::Answered(response)
                    if response.status() == StatusCode::NOT_FOUND
                        && session.is_some()
                        && !reinitialized =>
                {
                    reinitialized = true;
                    self.reinitialize(session).await?;
                }
                Sent::Answered(response) => return Ok(response),
                Sent::NotDelivered(error) => {
                    if !backoff.wait().await {
                        return Err(self.unreachable(&error));
                    }
                }
                Sent::Uncertain(error) => return Err(self.uncertain(&error)),
            }
        }
    }

    fn classify(&self, result: Result<awc::ClientResponse, SendRequestError>) -> Sent {
        match result {
            Ok(response) => Sent::Answered(response),
            Err(SendRequestError::Connect(error)) => Sent::NotDelivered(error.to_string()),
            Err(SendRequestError::Timeout) => {
                Sent::Uncertain("timed out waiting for the workload's answer".into())
            }
            Err(error) => Sent::Uncertain(error.to_string()),
        }
    }

    /// The MCP headers one message travels with: the session, the protocol
    /// version, and the 2026 routing headers (`Mcp-Method`, `Mcp-Name`),
    /// which servers of earlier revisions ignore.
    fn message_headers(
        &self,
        message: &Value,
        session: Option<&str>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::new();
        let mut push = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(&header_text(value)) {
                headers.push((HeaderName::from_static(name), value));
            }
        };

        if let Some(session) = session {
            push(SESSION_HEADER, session);
        }
        let method = method(message);
        if method != Some("initialize") {
            if let Some(version) = self.version_for(message) {
                push(VERSION_HEADER, &version);
            }
        }
        if let Some(method) = method {
            push(METHOD_HEADER, method);
            let name_field = match method {
                "tools/call" | "prompts/get" => Some("name"),
                "resources/read" => Some("uri"),
                _ => None,
            };
            let name = name_field.and_then(|field| message.get("params")?.get(field)?.as_str());
            if let Some(name) = name {
                push(NAME_HEADER, name);
            }
        }
        // TODO: `Mcp-Param-*` headers that a 2026 tool schema asks for with
        // `x-mcp-header` (needs the tools/list result cached per session).
        headers
    }

    /// The revision a message speaks: its own `_meta` (2026 clients stamp
    /// every request) or the one `initialize` negotiated.
    fn version_for(&self, message: &Value) -> Option<String> {
        message
            .pointer("/params/_meta")
            .and_then(|meta| meta.get(VERSION_META_KEY))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.state.borrow().protocol_version.clone())
    }

    fn key_refused(&self) -> Failure {
        let workload = self.workload();
        Failure::new(
            "key_refused",
            format!(
                "workload '{workload}' refused the key: check that serve and the bridge use the \
                 same keystore (thv-actor key show {workload}); if the key was rotated or the \
                 workload redeployed, restart serve or wait for it to reload its keys"
            ),
        )
    }

    fn unreachable(&self, error: &str) -> Failure {
        Failure::new(
            "unreachable",
            format!(
                "workload '{}' is not reachable at {} after waiting {:?} ({error}): is \
                 `thv-actor serve` running? the next request will try again",
                self.workload(),
                self.config.url,
                self.config.connect_wait
            ),
        )
    }

    fn uncertain(&self, error: &str) -> Failure {
        Failure::new(
            "delivery_uncertain",
            format!(
                "lost contact with workload '{}' after sending the request ({error}); it was not \
                 sent again because it may already have run",
                self.workload()
            ),
        )
    }

    // ---- the key -----------------------------------------------------------

    async fn key(&self) -> Result<(SharedKey, u64), Failure> {
        {
            let state = self.state.borrow();
            if let Some(key) = &state.key {
                return Ok((key.clone(), state.key_epoch));
            }
        }
        let epoch = self.state.borrow().key_epoch;
        self.refresh_key(epoch).await?;

        let state = self.state.borrow();
        match &state.key {
            Some(key) => Ok((key.clone(), state.key_epoch)),
            None => Err(Failure::new("key_unavailable", "no key for the workload")),
        }
    }

    /// Fetches the key again, unless someone has since `seen_epoch`.
    async fn refresh_key(&self, seen_epoch: u64) -> Result<(), Failure> {
        let _guard = self.key_lock.lock().await;
        if self.state.borrow().key_epoch != seen_epoch {
            return Ok(());
        }

        tracing::debug!(workload = self.workload(), "fetching the key");
        let fetched = self.keys.fetch().await;
        let mut state = self.state.borrow_mut();
        state.key_epoch += 1;
        match fetched {
            Ok(key) => {
                state.key = Some(key);
                Ok(())
            }
            Err(error) => {
                state.key = None;
                Err(Failure::new(
                    "key_unavailable",
                    format!(
                        "cannot get the key for workload '{}': {error}",
                        self.workload()
                    ),
                ))
            }
        }
    }

    // ---- sessions ----------------------------------------------------------

    /// The workload forgot session `stale` (404): replay the client's
    /// handshake to get a new one. Boxed because it sends through
    /// [`Upstream::post`], which called it.
    fn reinitialize(
        self: &Rc<Self>,
        stale: Option<String>,
    ) -> LocalBoxFuture<'static, Result<(), Failure>> {
        let this = self.clone();
        async move {
            let _guard = this.session_lock.lock().await;
            if this.state.borrow().session != stale {
                // Another request already did it.
                return Ok(());
            }

            tracing::info!(
                workload = this.workload(),
                "session expired; replaying the handshake"
            );
            this.stop_get_stream();
            this.state.borrow_mut().session = None;
            this.replay_handshake().await
        }
        .boxed_local()
    }

    /// Sends the client's `initialize` again (under an id of the bridge's
    /// own, its answer swallowed) and then `notifications/initialized`.
    async fn replay_handshake(self: &Rc<Self>) -> Result<(), Failure> {
        let (initialize, initialized) = {
            let state = self.state.borrow();
            (state.initialize.clone(), state.initialized.clone())
        };
        let Some(mut initialize) = initialize else {
            return Err(Failure::new(
                "session_lost",
                "the workload ended the session before it was initialized",
            ));
        };

        let replay = self.replays.get() + 1;
        self.replays.set(replay);
        initialize["id"] = json!(format!("thv-bridge-replay-{replay}"));
        let (answer_tx, answer_rx) = oneshot::channel();
        self.state
            .borrow_mut()
            .waiters
            .insert(rpc::id_key(&initialize["id"]), answer_tx);

        self.send_replayed(&initialize).await?;
        let answer = tokio::time::timeout(self.config.response_timeout, answer_rx).await;
        match answer {
            Ok(Ok(answer)) if answer.get("result").is_some() => self.take_protocol_version(&answer),
            _ => {
                return Err(Failure::new(
                    "session_lost",
                    "the workload ended the session and refused to start a new one",
                ))
            }
        }

        if let Some(initialized) = initialized {
            self.send_replayed(&initialized).await?;
        }
        tracing::info!(workload = self.workload(), "session re-established");
        Ok(())
    }

    async fn send_replayed(self: &Rc<Self>, message: &Value) -> Result<(), Failure> {
        let body = Bytes::from(message.to_string());
        match self.config.transport {
            Transport::StreamableHttp => {
                let mut response = self.post(message, &body, false).await?;
                if !response.status().is_success() {
                    return Err(Failure::new(
                        "session_lost",
                        format!(
                            "the workload refused a replayed handshake (http {})",
                            response.status().as_u16()
                        ),
                    ));
                }
                if method(message) == Some("initialize") {
                    self.take_session(&response);
                }
                if is_event_stream(&response) {
                    let mut parser = SseParser::new(MAX_BODY);
                    self.read_events(&mut response, &mut parser, None).await;
                } else if is_json(&response) {
                    if let Ok(body) = response.body().limit(MAX_BODY).await {
                        if let Ok(message) = serde_json::from_slice::<Value>(&body) {
                            self.route(message);
                        }
                    }
                }
                if method(message) == Some("notifications/initialized") {
                    self.ensure_get_stream();
                }
                Ok(())
            }
            Transport::Sse => {
                let endpoint = self
                    .state
                    .borrow()
                    .legacy
                    .as_ref()
                    .map(|l| l.endpoint.clone());
                let Some(endpoint) = endpoint else {
                    return Err(Failure::new(
                        "session_lost",
                        "the workload's event stream closed",
                    ));
                };
                self.post_legacy(&endpoint, &body).await.map(drop)
            }
        }
    }

    // ---- the GET stream ----------------------------------------------------

    /// Opens the GET stream after initialization, where the server may
    /// offer one: not under the 2026 revision, which has none.
    pub(crate) fn ensure_get_stream(self: &Rc<Self>) {
        if self.config.transport != Transport::StreamableHttp || self.closing.get() {
            return;
        }
        {
            let state = self.state.borrow();
            if state.get_stream.is_some()
                || state.initialized.is_none()
                || is_modern(state.protocol_version.as_deref())
            {
                return;
            }
        }

        let (handle, registration) = AbortHandle::new_pair();
        self.state.borrow_mut().get_stream = Some(handle);
        let this = self.clone();
        actix_rt::spawn(Abortable::new(
            async move {
                this.get_stream_loop().await;
                this.state.borrow_mut().get_stream = None;
            },
            registration,
        ));
    }

    fn stop_get_stream(&self) {
        if let Some(handle) = self.state.borrow_mut().get_stream.take() {
            handle.abort();
        }
    }

    async fn get_stream_loop(self: &Rc<Self>) {
        let mut parser = SseParser::new(MAX_BODY);
        let mut failures = 0;
        let mut retried_key = false;

        while !self.closing.get() && failures < GET_STREAM_ATTEMPTS {
            let last_id = parser.last_event_id().map(str::to_owned);
            let epoch = self.state.borrow().key_epoch;
            let mut response = match self.open_get(last_id.as_deref()).await {
                Ok(response) => response,
                Err(()) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20))))
                        .await;
                    continue;
                }
            };

            match response.status() {
                StatusCode::METHOD_NOT_ALLOWED => {
                    tracing::debug!(workload = self.workload(), "workload offers no get stream");
                    return;
                }
                StatusCode::UNAUTHORIZED if !retried_key => {
                    retried_key = true;
                    if self.refresh_key(epoch).await.is_err() {
                        return;
                    }
                }
                StatusCode::NOT_FOUND => {
                    tracing::debug!(workload = self.workload(), "session gone; get stream ends");
                    return;
                }
                status if status.is_success() && is_event_stream(&response) => {
                    tracing::debug!(workload = self.workload(), "get stream open");
                    failures = 0;
                    retried_key = false;
                    self.read_events(&mut response, &mut parser, None).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                status => {
                    tracing::warn!(
                        workload = self.workload(),
                        status = status.as_u16(),
                        "get stream refused"
                    );
                    return;
                }
            }
        }
    }

    async fn open_get(&self, last_event_id: Option<&str>) -> Result<awc::ClientResponse, ()> {
        let (key, _) = self.key().await.map_err(drop)?;
        let (session, version) = {
            let state = self.state.borrow();
            (state.session.clone(), state.protocol_version.clone())
        };

        let mut request = self
            .client
            .get(&self.url)
            .insert_header(("accept", ACCEPT_SSE))
            .insert_header((AUTH_HEADER, auth_value(&key)));
        drop(key);
        if let Some(session) = session {
            request = request.insert_header((SESSION_HEADER, session));
        }
        if let Some(version) = version {
            request = request.insert_header((VERSION_HEADER, version));
        }
        if let Some(id) = last_event_id {
            request = request.insert_header((LAST_EVENT_HEADER, id));
        }

        let response = tokio::time::timeout(self.config.response_timeout, request.send()).await;
        match response {
            Ok(Ok(response)) => Ok(response),
            _ => Err(()),
        }
    }

    // ---- legacy HTTP+SSE ---------------------------------------------------

    async fn forward_legacy(self: Rc<Self>, message: Value, claim: Option<Claim>) {
        let body = Bytes::from(message.to_string());

        // A 404 means the endpoint's session is gone and the message was not
        // taken: reconnect once and send it again.
        for attempt in 0..2 {
            let endpoint = match self.legacy_endpoint().await {
                Ok(endpoint) => endpoint,
                Err(failure) => return self.give_up(claim, &message, &failure),
            };

            let response = match self.post_legacy(&endpoint, &body).await {
                Ok(response) => response,
                Err(failure) => return self.give_up(claim, &message, &failure),
            };

            let status = response.status();
            if status == StatusCode::NOT_FOUND && attempt == 0 {
                self.drop_legacy_stream(&endpoint);
                continue;
            }
            if !status.is_success() {
                let failure = Failure::new(
                    "http_status",
                    format!(
                        "workload '{}' answered http {}",
                        self.workload(),
                        status.as_u16()
                    ),
                );
                return self.give_up(claim, &message, &failure);
            }

            // The answer comes on the event stream.
            if let Some(claim) = claim {
                self.state
                    .borrow_mut()
                    .legacy_posted
                    .insert(claim.key().to_string());
                claim.release();
            }
            return;
        }
    }

    async fn post_legacy(
        &self,
        endpoint: &str,
        body: &Bytes,
    ) -> Result<awc::ClientResponse, Failure> {
        let mut retried_key = false;
        let mut backoff = Backoff::new(self.config.connect_wait);

        loop {
            let (key, epoch) = self.key().await?;
            let request = self
                .client
                .post(endpoint)
                .timeout(self.config.response_timeout)
                .insert_header(("content-type", "application/json"))
                .insert_header((AUTH_HEADER, auth_value(&key)));
            drop(key);

            match self.classify(request.send_body(body.clone()).await) {
                Sent::Answered(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if retried_key {
                        return Err(self.key_refused());
                    }
                    retried_key = true;
                    self.refresh_key(epoch).await?;
                }
                Sent::Answered(response) => return Ok(response),
                Sent::NotDelivered(error) => {
                    if !backoff.wait().await {
                        return Err(self.unreachable(&error));
                    }
                }
                Sent::Uncertain(error) => return Err(self.uncertain(&error)),
            }
        }
    }

    /// The POST endpoint of the current legacy event stream, opening the
    /// stream (and replaying the handshake on a reconnect) when there is none.
    async fn legacy_endpoint(self: &Rc<Self>) -> Result<String, Failure> {
        if let Some(legacy) = &self.state.borrow().legacy {
            return Ok(legacy.endpoint.clone());
        }

        let _guard = self.session_lock.lock().await;
        if let Some(legacy) = &self.state.borrow().legacy {
            return Ok(legacy.endpoint.clone());
        }

        let (mut response, mut parser, endpoint) = self.open_legacy_stream().await?;
        let (handle, registration) = AbortHandle::new_pair();
        let generation = {
            let mut state = self.state.borrow_mut();
            state.legacy = Some(Legacy {
                endpoint: endpoint.clone(),
                stream: handle,
            });
            state.legacy_generation += 1;
            state.legacy_generation
        };

        let this = self.clone();
        let stream_endpoint = endpoint.clone();
        actix_rt::spawn(Abortable::new(
            async move {
                this.read_events(&mut response, &mut parser, None).await;
                tracing::info!(
                    workload = this.workload(),
                    "workload closed the event stream"
                );
                this.drop_legacy_stream(&stream_endpoint);
            },
            registration,
        ));

        let reconnect = generation > 1 && self.state.borrow().initialize.is_some();
        if reconnect {
            self.replay_handshake().await?;
        }
        Ok(endpoint)
    }

    async fn open_legacy_stream(
        &self,
    ) -> Result<(awc::ClientResponse, SseParser, String), Failure> {
        let mut retried_key = false;
        let mut backoff = Backoff::new(self.config.connect_wait);

        let mut response = loop {
            let (key, epoch) = self.key().await?;
            let request = self
                .client
                .get(&self.url)
                .insert_header(("accept", ACCEPT_SSE))
                .insert_header((AUTH_HEADER, auth_value(&key)));
            drop(key);

            let sent = tokio::time::timeout(self.config.response_timeout, request.send()).await;
            let sent = match sent {
                Ok(result) => self.classify(result),
                Err(_) => Sent::Uncertain("timed out opening the event stream".into()),
            };
            match sent {
                Sent::Answered(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if retried_key {
                        return Err(self.key_refused());
                    }
                    retried_key = true;
                    self.refresh_key(epoch).await?;
                }
                Sent::Answered(response) if response.status().is_success() => break response,
                Sent::Answered(response) => {
                    return Err(Failure::new(
                        "http_status",
                        format!(
                            "workload '{}' refused the event stream (http {})",
                            self.workload(),
                            response.status().as_u16()
                        ),
                    ))
                }
                Sent::NotDelivered(error) => {
                    if !backoff.wait().await {
                        return Err(self.unreachable(&error));
                    }
                }
                Sent::Uncertain(error) => return Err(self.uncertain(&error)),
            }
        };

        // The first event names the endpoint to POST to.
        let mut parser = SseParser::new(MAX_BODY);
        let deadline = tokio::time::Instant::now() + self.config.response_timeout;
        loop {
            let chunk = tokio::time::timeout_at(deadline, response.next()).await;
            let Ok(Some(Ok(chunk))) = chunk else {
                return Err(Failure::new(
                    "no_endpoint",
                    format!(
                        "workload '{}' sent no endpoint on its event stream",
                        self.workload()
                    ),
                ));
            };
            let events = parser.feed(&chunk).unwrap_or_default();
            let mut endpoint = None;
            for event in events {
                match event.event.as_str() {
                    "endpoint" if endpoint.is_none() => {
                        endpoint = Some(resolve(&self.url, event.data.trim()))
                    }
                    "message" => {
                        if let Ok(message) = serde_json::from_str::<Value>(&event.data) {
                            self.route(message);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(endpoint) = endpoint {
                tracing::info!(workload = self.workload(), "event stream open");
                return Ok((response, parser, endpoint));
            }
        }
    }

    /// The legacy stream behind `endpoint` is gone: requests whose answers
    /// were due on it cannot get them.
    fn drop_legacy_stream(&self, endpoint: &str) {
        let posted = {
            let mut state = self.state.borrow_mut();
            if state.legacy.as_ref().map(|l| l.endpoint.as_str()) != Some(endpoint) {
                return;
            }
            if let Some(legacy) = state.legacy.take() {
                legacy.stream.abort();
            }
            std::mem::take(&mut state.legacy_posted)
        };

        let failure = Failure::new(
            "stream_closed",
            "the workload closed its event stream before answering; the request was not sent \
             again because it may already have run",
        );
        for key in posted {
            self.pending.fail(&key, &failure);
        }
    }

    // ---- the end -----------------------------------------------------------

    /// Ends the session with the workload: streams closed, the session
    /// DELETEd where there is one (a 405 is a server that does not allow it).
    pub(crate) async fn close(&self) {
        self.closing.set(true);
        self.stop_get_stream();
        let legacy = self.state.borrow_mut().legacy.take();
        if let Some(legacy) = legacy {
            legacy.stream.abort();
        }

        let session = self.state.borrow().session.clone();
        let Some(session) = session else {
            return;
        };
        let Ok((key, _)) = self.key().await else {
            return;
        };
        let mut request = self
            .client
            .delete(&self.url)
            .timeout(DELETE_TIMEOUT)
            .insert_header((AUTH_HEADER, auth_value(&key)))
            .insert_header((SESSION_HEADER, session));
        drop(key);
        let version = self.state.borrow().protocol_version.clone();
        if let Some(version) = version {
            request = request.insert_header((VERSION_HEADER, version));
        }

        match request.send().await {
            Ok(response) => tracing::info!(
                workload = self.workload(),
                status = response.status().as_u16(),
                "session deleted"
            ),
            Err(error) => {
                tracing::debug!(workload = self.workload(), %error, "session delete failed")
            }
        }
    }
}

/// Exponential backoff for a workload that refuses connections, bounded by
/// a total wait.
struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    fn new(total: Duration) -> Self {
        Backoff {
            deadline: Instant::now() + total,
            next: Duration::from_millis(50),
        }
    }

    /// Sleeps before the next try; false once the total wait is used up.
    async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let sleep = self.next.min(self.deadline - now);
        tokio::time::sleep(sleep).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
        true
    }
}

fn auth_value(key: &SharedKey) -> HeaderValue {
    let mut value =
        HeaderValue::from_str(&key.expose_encoded()).expect("a key's text form is a header value");
    value.set_sensitive(true);
    value
}

/// A header value as the 2026 revision writes one: verbatim when it is
/// plain printable ASCII without edge whitespace, else base64 in a
/// `=?base64?...?=` sentinel.
fn header_text(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && value.trim() == value
        && !(value.starts_with("=?base64?") && value.ends_with("?="));
    if plain {
        value.to_string()
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        format!("=?base64?{encoded}?=")
    }
}

fn is_modern(version: Option<&str>) -> bool {
    version.is_some_and(|v| v >= FIRST_STATELESS_REVISION)
}

fn content_type(response: &awc::ClientResponse) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn is_event_stream(response: &awc::ClientResponse) -> bool {
    content_type(response).starts_with("text/event-stream")
}

fn is_json(response: &awc::ClientResponse) -> bool {
    content_type(response).starts_with("application/json")
}

/// Resolves the legacy `endpoint` event's URI against the SSE URL.
fn resolve(base: &str, reference: &str) -> String {
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.to_string();
    }

    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let origin = &base[..path_start];
    if reference.starts_with('/') {
        return format!("{origin}{reference}");
    }

    let path = &base[path_start..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let directory = path.rfind('/').map(|i| &path[..=i]).unwrap_or("/");
    format!("{origin}{directory}{reference}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_endpoint_references() {
        let base = "http://127.0.0.1:8080/mcp/sse?x=1";
        assert_eq!(
            resolve(base, "/messages?s=1"),
            "http://127.0.0.1:8080/messages?s=1"
        );
        assert_eq!(
            resolve(base, "messages?s=1"),
            "http://127.0.0.1:8080/mcp/messages?s=1"
        );
        assert_eq!(
            resolve(base, "http://127.0.0.1:9/m"),
            "http://127.0.0.1:9/m"
        );
        assert_eq!(resolve("http://h:1", "m"), "http://h:1/m");
    }

    #[test]
    fn header_values_outside_printable_ascii_are_wrapped() {
        assert_eq!(header_text("echo"), "echo");
        assert_eq!(header_text("café"), "=?base64?Y2Fmw6k=?=");
        assert_eq!(header_text(" x"), "=?base64?IHg=?=");
    }

    #[test]
    fn revisions_compare_by_date() {
        assert!(is_modern(Some("2026-07-28")));
        assert!(!is_modern(Some("2025-11-25")));
        assert!(!is_modern(None));
    }
}
