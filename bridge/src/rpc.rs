//! JSON-RPC bookkeeping shared by the reader, the Bridge actor and the
//! writer: what kind a message is, the table of client requests still owed
//! an answer, and the one channel to stdout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// JSON-RPC 2.0: the input was not JSON.
pub(crate) const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: the input was JSON but not a request we take.
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0: an error on our side of the call. Every error the bridge
/// makes up for a request uses it, with `data.reason` telling them apart.
pub(crate) const INTERNAL_ERROR: i64 = -32603;

/// What one JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

pub(crate) fn kind(message: &Value) -> Kind {
    let Some(object) = message.as_object() else {
        return Kind::Invalid;
    };
    let has_id = object
        .get("id")
        .is_some_and(|id| id.is_string() || id.is_number());
    match (object.get("method").and_then(Value::as_str), has_id) {
        (Some(_), true) => Kind::Request,
        (Some(_), false) => Kind::Notification,
        (None, true) if object.contains_key("result") || object.contains_key("error") => {
            Kind::Response
        }
        // A response to a request the server could not parse carries id null.
        (None, false) if object.get("id").is_some_and(Value::is_null) => Kind::Response,
        _ => Kind::Invalid,
    }
}

pub(crate) fn method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}

/// A map key for an id: `1` and `"1"` are different ids, and stay so.
pub(crate) fn id_key(id: &Value) -> String {
    id.to_string()
}

pub(crate) fn message_id_key(message: &Value) -> Option<String> {
    message.get("id").filter(|id| !id.is_null()).map(id_key)
}

pub(crate) fn error_message(id: Value, code: i64, message: &str, reason: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message, "data": { "reason": reason } },
    })
}

/// One line for stdout, or the order to stop once everything before it is
/// written.
#[derive(Debug)]
pub(crate) enum Out {
    Line(String),
    Close,
}

/// The sending end of the single writer task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox(mpsc::UnboundedSender<Out>);

impl Outbox {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Out>) -> Self {
        Outbox(tx)
    }

    pub(crate) fn send(&self, message: &Value) {
        // serde_json never writes a raw newline inside a value, so one value
        // is one line.
        let line = message.to_string();
        if self.0.send(Out::Line(line)).is_err() {
            tracing::debug!("stdout writer is gone; message dropped");
        }
    }

    pub(crate) fn close(&self) {
        let _ = self.0.send(Out::Close);
    }
}

/// Why the bridge answered a request itself.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// The client requests that are still owed exactly one answer.
///
/// A request is entered when it is read from stdin and leaves when its
/// answer (the server's, or an error the bridge makes) is handed to the
/// writer. Anything arriving for an id no longer here is dropped, so a late
/// server response after a timeout error cannot reach the client twice.
#[derive(Clone)]
pub(crate) struct Pending {
    inner: Arc<PendingInner>,
}

struct PendingInner {
    ids: Mutex<HashMap<String, Value>>,
    outbox: Outbox,
    emptied: Notify,
}

impl Pending {
    pub(crate) fn new(outbox: Outbox) -> Self {
        Pending {
            inner: Arc::new(PendingInner {
                ids: Mutex::new(HashMap::new()),
                outbox,
                emptied: Notify::new(),
            }),
        }
    }

    /// The table; a panic elsewhere while it was held cannot leave it in a
    /// state worse than a missing or extra entry, so poisoning is ignored.
    fn ids(&self) -> MutexGuard<'_, HashMap<String, Value>> {
        self.inner
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// Enters a request; false when one with the same id is still in flight.
    pub(crate) fn insert(&self, id: &Value) -> bool {
        let mut ids = self.ids();
        let key = id_key(id);
        if ids.contains_key(&key) {
            return false;
        }
        ids.insert(key, id.clone());
        true
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.ids().contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.ids().len()
    }

    fn take(&self, key: &str) -> Option<Value> {
        let mut ids = self.ids();
        let taken = ids.remove(key);
        let empty = ids.is_empty();
        drop(ids);
        if taken.is_some() && empty {
            self.inner.emptied.notify_waiters();
        }
        taken
    }

    /// Writes the server's response if its id is still owed one.
    pub(crate) fn respond(&self, response: &Value) -> bool {
        let Some(key) = message_id_key(response) else {
            return false;
        };
        if self.take(&key).is_none() {
            return false;
        }
        self.inner.outbox.send(response);
        true
    }

    /// Answers `key` with an error the bridge makes, if still owed.
    pub(crate) fn fail(&self, key: &str, failure: &Failure) -> bool {
        let Some(id) = self.take(key) else {
            return false;
        };
        tracing::debug!(id = %key, reason = failure.reason, "answering request with an error");
        let message = error_message(id, INTERNAL_ERROR, &failure.message, failure.reason);
        self.inner.outbox.send(&message);
        true
    }

    /// Settles `key` without writing anything: the client cancelled it and
    /// expects no answer.
    pub(crate) fn cancel(&self, key: &str) -> bool {
        self.take(key).is_some()
    }

    pub(crate) fn fail_all(&self, failure: &Failure) {
        let keys: Vec<String> = self.ids().keys().cloned().collect();
        for key in keys {
            self.fail(&key, failure);
        }
    }

    /// Resolves once nothing is pending.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let notified = self.inner.emptied.notified();
            if self.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A request's claim on its pending entry while the Bridge actor works on
/// it. Dropping an armed claim (the actor panicked or stopped, or the work
/// ended without an answer) answers the request with an error, so no request
/// is left unanswered by a crash.
pub(crate) struct Claim {
    key: String,
    pending: Pending,
    armed: bool,
}

impl Claim {
    pub(crate) fn new(key: String, pending: Pending) -> Self {
        Claim {
            key,
            pending,
            armed: true,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Gives up responsibility: the answer will come from elsewhere (an
    /// event stream), or has already been written.
    pub(crate) fn release(mut self) {
        self.armed = false;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            let failure = Failure::new(
                "request_lost",
                "the bridge lost this request while restarting after an internal error; \
                 it may or may not have reached the workload, so it was not sent again",
            );
            self.pending.fail(&self.key, &failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        assert_eq!(
            kind(&json!({"jsonrpc":"2.0","id":1,"method":"x"})),
            Kind::Request
        );
        assert_eq!(
            kind(&json!({"jsonrpc":"2.0","method":"x"})),
            Kind::Notification
        );
        assert_eq!(
            kind(&json!({"jsonrpc":"2.0","id":"a","result":{}})),
            Kind::Response
        );
        assert_eq!(
            kind(&json!({"jsonrpc":"2.0","id":null,"error":{}})),
            Kind::Response
        );
        assert_eq!(kind(&json!({"jsonrpc":"2.0","id":1})), Kind::Invalid);
        assert_eq!(kind(&json!([1])), Kind::Invalid);
    }

    #[test]
    fn numeric_and_string_ids_are_distinct() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
    }
}
