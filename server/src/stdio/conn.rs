//! One conversation with one child: which HTTP stream each message the
//! child writes belongs to.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::child::{Child, Spawned};
use super::TARGET;
use crate::jsonrpc::{error_for, UPSTREAM_UNAVAILABLE};

/// Messages queued for one HTTP stream before the stream counts as stalled
/// and is cut.
const STREAM_QUEUE: usize = 64;
/// Messages kept for a session's GET stream while none is open.
const BACKLOG: usize = 64;
/// How long a request waits for room in a child's stdin queue.
const STDIN_WAIT: Duration = Duration::from_secs(10);

/// Who a conversation serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One session-bearing client: ids pass through untouched.
    Session,
    /// Any number of stateless clients: ids and progress tokens are
    /// rewritten so that they cannot collide.
    Shared,
}

/// One child and the HTTP streams waiting on it.
pub(crate) struct Conn {
    pub child: Arc<Child>,
    pub mode: Mode,
    next_id: AtomicU64,
    routes: Mutex<Routes>,
}

struct Routes {
    /// Set when the child is gone; no new request is accepted.
    gone: bool,
    /// Requests in flight, by the id the child knows them by (JSON text).
    pending: HashMap<String, Pending>,
    /// Progress tokens the child knows, to the pending key they belong to.
    progress: HashMap<String, String>,
    /// The session's GET stream, if one is open.
    get_tx: Option<mpsc::Sender<Value>>,
    /// Session messages that had nowhere to go yet.
    backlog: VecDeque<Value>,
    serial: u64,
    /// When the conversation started, the client last sent something, or a
    /// request of its ended.
    last_active: Instant,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            gone: false,
            pending: HashMap::new(),
            progress: HashMap::new(),
            get_tx: None,
            backlog: VecDeque::new(),
            serial: 0,
            last_active: Instant::now(),
        }
    }
}

struct Pending {
    tx: mpsc::Sender<Value>,
    /// The POST may be answered as an event stream, so it can carry messages
    /// other than its response.
    sse: bool,
    serial: u64,
    original_id: Value,
    original_token: Option<Value>,
}

/// Why a message could not be handed to the child.
pub(crate) enum SubmitError {
    /// The child has exited.
    Gone,
    /// A request with the same id is still in flight on this session.
    DuplicateId,
    /// The child did not take the message in time.
    Stalled,
}

/// A request in flight. Dropping it before the response came (the client
/// went away) forgets the request, and on a shared child cancels it.
pub(crate) struct InFlight {
    conn: Arc<Conn>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let abandoned = {
            let mut routes = self.conn.routes.lock().unwrap();
            routes.last_active = Instant::now();
            routes.progress.retain(|_, key| *key != self.key);
            routes.pending.remove(&self.key).is_some()
        };

        // A session client cancels with its own notification; a stateless
        // client's only way to cancel is to close the response stream.
        if abandoned && self.conn.mode == Mode::Shared {
            let id: Value = serde_json::from_str(&self.key).unwrap_or(Value::Null);
            self.conn.child.try_send(&json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": { "requestId": id, "reason": "the client closed the request" },
            }));
        }
    }
}

impl Conn {
    /// Wraps a started child and starts routing what it writes, on the
    /// current arbiter. `on_gone` runs once the child's stdout ends.
    pub fn start(
        spawned: Spawned,
        mode: Mode,
        arbiter: &actix_rt::ArbiterHandle,
        on_gone: impl FnOnce(&Arc<Conn>) + Send + 'static,
    ) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            child: spawned.child,
            mode,
            next_id: AtomicU64::new(1),
            routes: Mutex::new(Routes::new()),
        });

        let router = conn.clone();
        let mut stdout_rx = spawned.stdout_rx;
        arbiter.spawn(async move {
            while let Some(message) = stdout_rx.recv().await {
                router.route(message);
            }
            router.fail_all();
            on_gone(&router);
        });

        conn
    }

    pub fn is_gone(&self) -> bool {
        self.routes.lock().unwrap().gone || self.child.has_exited()
    }

    /// Sends a request to the child and returns where its answer will come.
    pub async fn request(
        self: &Arc<Self>,
        mut message: Value,
        sse: bool,
    ) -> Result<(InFlight, mpsc::Receiver<Value>), SubmitError> {
        let original_id = message["id"].clone();
        let original_token = message.pointer("/params/_meta/progressToken").cloned();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);

        // Register before writing, so that a fast answer finds its way.
        let key = {
            let mut routes = self.routes.lock().unwrap();
            if routes.gone {
                return Err(SubmitError::Gone);
            }
            routes.last_active = Instant::now();

            let key = match self.mode {
                Mode::Session => original_id.to_string(),
                Mode::Shared => {
                    let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                    message["id"] = json!(n);
                    if let Some(token) = message.pointer_mut("/params/_meta/progressToken") {
                        *token = json!(format!("thv-{n}"));
                    }
                    n.to_string()
                }
            };
            if routes.pending.contains_key(&key) {
                return Err(SubmitError::DuplicateId);
            }
            if let Some(token) = message.pointer("/params/_meta/progressToken") {
                routes.progress.insert(token.to_string(), key.clone());
            }
            routes.serial += 1;
            let serial = routes.serial;
            routes.pending.insert(
                key.clone(),
                Pending {
                    tx,
                    sse,
                    serial,
                    original_id,
                    original_token,
                },
            );
            key
        };
        let in_flight = InFlight {
            conn: self.clone(),
            key,
        };

        self.child
            .send(&message, STDIN_WAIT)
            .await
            .map_err(|()| SubmitError::Stalled)?;
        Ok((in_flight, rx))
    }

    /// Sends a notification or a response from the client to the child.
    pub async fn forward(&self, message: &Value) -> Result<(), SubmitError> {
        if self.is_gone() {
            return Err(SubmitError::Gone);
        }

        // A cancelled request gets no response; end its stream instead of
        // leaving the client's POST open forever.
        {
            let mut routes = self.routes.lock().unwrap();
            routes.last_active = Instant::now();
            if message["method"] == "notifications/cancelled" {
                if let Some(id) = message.pointer("/params/requestId") {
                    routes.pending.remove(&id.to_string());
                }
            }
        }

        self.child
            .send(message, STDIN_WAIT)
            .await
            .map_err(|()| SubmitError::Stalled)
    }

    /// Opens the session's GET stream, replacing any earlier one, and hands
    /// it what waited for it.
    pub fn open_stream(&self) -> Option<mpsc::Receiver<Value>> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut routes = self.routes.lock().unwrap();
        if routes.gone {
            return None;
        }
        while let Some(message) = routes.backlog.pop_front() {
            if tx.try_send(message).is_err() {
                break;
            }
        }
        routes.get_tx = Some(tx);
        routes.last_active = Instant::now();
        Some(rx)
    }

    /// How long the session has been idle at `now`: nothing in flight, no
    /// GET stream open, and nothing sent since. `None` while it is in use.
    ///
    /// A GET stream counts as open until the client's connection is gone
    /// (actix-web then drops the stream's receiving end).
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        let routes = self.routes.lock().unwrap();
        let streaming = routes.get_tx.as_ref().is_some_and(|tx| !tx.is_closed());
        if !routes.pending.is_empty() || streaming {
            return None;
        }
        Some(now.saturating_duration_since(routes.last_active))
    }

    /// Ends the conversation: stops the child and fails what is in flight.
    pub fn close(&self) {
        self.child.terminate();
        self.fail_all();
    }

    /// Sends one message the child wrote to the stream it belongs to.
    fn route(&self, mut message: Value) {
        let mut routes = self.routes.lock().unwrap();

        // A response goes to the POST that asked.
        let is_response = message.get("method").is_none() && message.get("id").is_some();
        if is_response {
            let key = message["id"].to_string();
            let Some(pending) = routes.pending.remove(&key) else {
                tracing::debug!(target: TARGET, id = %key, "response nobody waits for; dropped");
                return;
            };
            routes.progress.retain(|_, k| *k != key);
            message["id"] = pending.original_id;
            if pending.tx.try_send(message).is_err() {
                tracing::warn!(target: TARGET, id = %key, "client stream stalled; response dropped");
            }
            return;
        }

        // Progress goes to the POST whose request carried the token.
        if message["method"] == "notifications/progress" {
            let token = message
                .pointer("/params/progressToken")
                .map(Value::to_string);
            let key = token.and_then(|t| routes.progress.get(&t).cloned());
            if let Some(pending) = key.as_ref().and_then(|k| routes.pending.get(k)) {
                if pending.sse {
                    if let Some(original) = &pending.original_token {
                        message["params"]["progressToken"] = original.clone();
                    }
                    deliver(&mut routes, key.as_deref().unwrap(), message);
                    return;
                }
            }
        }

        match self.mode {
            // A shared child's other messages belong to no one we can name.
            Mode::Shared => {
                if message.get("id").is_some() {
                    let refusal = error_for(
                        &message["id"],
                        -32601,
                        "stateless clients cannot be sent requests through serve",
                    );
                    self.child.try_send(&refusal);
                }
                tracing::debug!(target: TARGET, method = %message["method"], "unroutable message from shared server; dropped");
            }

            // In a session everything is the one client's: the oldest POST
            // that can stream takes it, else the GET stream, else the
            // backlog.
            Mode::Session => {
                let oldest = routes
                    .pending
                    .iter()
                    .filter(|(_, p)| p.sse)
                    .min_by_key(|(_, p)| p.serial)
                    .map(|(k, _)| k.clone());
                if let Some(key) = oldest {
                    deliver(&mut routes, &key, message);
                    return;
                }
                if let Some(get_tx) = &routes.get_tx {
                    match get_tx.try_send(message) {
                        Ok(()) => return,
                        Err(mpsc::error::TrySendError::Full(m))
                        | Err(mpsc::error::TrySendError::Closed(m)) => {
                            // A stream that stopped reading is cut; its
                            // messages wait for the next one.
                            routes.get_tx = None;
                            message = m;
                        }
                    }
                }
                if routes.backlog.len() == BACKLOG {
                    routes.backlog.pop_front();
                    tracing::warn!(target: TARGET, "no client stream open; oldest queued message dropped");
                }
                routes.backlog.push_back(message);
            }
        }
    }

    /// Answers everything in flight with an error the client can act on and
    /// refuses what comes later.
    fn fail_all(&self) {
        let mut routes = self.routes.lock().unwrap();
        routes.gone = true;
        routes.get_tx = None;
        routes.progress.clear();
        let text = match self.mode {
            Mode::Session => "the mcp server process exited; initialize a new session",
            Mode::Shared => "the mcp server process exited; retry the request",
        };
        for (_, pending) in routes.pending.drain() {
            let error = error_for(&pending.original_id, UPSTREAM_UNAVAILABLE, text);
            let _ = pending.tx.try_send(error);
        }
    }
}

/// Hands `message` to the POST stream `key`; a stream that stopped reading
/// is cut rather than allowed to grow.
fn deliver(routes: &mut Routes, key: &str, message: Value) {
    let stalled = match routes.pending.get(key) {
        Some(pending) => pending.tx.try_send(message).is_err(),
        None => false,
    };
    if stalled {
        tracing::warn!(target: TARGET, id = %key, "client stream stalled; cut");
        routes.pending.remove(key);
    }
}
