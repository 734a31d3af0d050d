//! The legacy HTTP+SSE transport: finding the upstream's `endpoint` event in
//! the event stream and pointing it at this listener instead.
//!
//! Only the stream's head is parsed: bytes are held back only until the
//! first `endpoint` event is complete, then everything else passes through
//! chunk by chunk as it arrives.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::Shared;

/// The path prefix the rewritten endpoint points at on our listener:
/// `/messages` followed by the upstream endpoint's own path.
pub(crate) const MESSAGES_PREFIX: &str = "/messages";

/// How much of the stream's head is held back while looking for the
/// endpoint event. An upstream that sends more than this without one is
/// not speaking the SSE transport.
const MAX_HEAD: usize = 64 * 1024;

/// How many distinct endpoint paths are remembered. Servers normally
/// advertise one path and put the session in the query; servers that put
/// the session in the path get the most recent ones.
const MAX_ADVERTISED: usize = 256;

/// The endpoint paths the upstream has advertised, which are the only paths
/// a client may POST to through `/messages/...`.
#[derive(Default)]
pub(crate) struct AdvertisedPaths(RwLock<VecDeque<Box<str>>>);

impl AdvertisedPaths {
    /// Remembers `path`, forgetting the oldest once [`MAX_ADVERTISED`] are held.
    pub(crate) fn insert(&self, path: &str) {
        if self.contains(path) {
            return;
        }

        let mut paths = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if paths.len() >= MAX_ADVERTISED {
            paths.pop_front();
        }
        paths.push_back(path.into());
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        let paths = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        paths.iter().any(|p| &**p == path)
    }
}

/// An endpoint reference resolved against the upstream's SSE URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Absolute path on the upstream, starting with `/`.
    pub(crate) path: String,
    /// The query without the `?`, if any.
    pub(crate) query: Option<String>,
    /// Whether the reference named a scheme or authority of its own. It is
    /// replaced by the configured upstream's either way.
    pub(crate) named_authority: bool,
}

/// Resolves the `data` of an `endpoint` event against `base_path`, the path of
/// the upstream's SSE URL.
///
/// A scheme and authority in the reference are dropped: messages always go
/// to the configured upstream, so an upstream (or anything that can write to
/// its stream) cannot make this proxy reach another host. Dot segments are
/// refused outright rather than normalised, because servers disagree on how
/// to normalise them.
pub(crate) fn resolve_endpoint(base_path: &str, data: &str) -> Result<Endpoint, &'static str> {
    let data = data.trim();
    let data = data.split_once('#').map_or(data, |(before, _)| before);
    if data.is_empty() {
        return Err("the endpoint is empty");
    }

    // Strip a scheme and an authority, keeping what follows.
    let lower_scheme = data
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let after_scheme = if lower_scheme.starts_with("http://") {
        Some(&data[7..])
    } else if lower_scheme.starts_with("https://") {
        Some(&data[8..])
    } else {
        data.strip_prefix("//")
    };
    let (reference, named_authority) = match after_scheme {
        Some(rest) => {
            let start = rest.find(['/', '?']).unwrap_or(rest.len());
            (&rest[start..], true)
        }
        None if data.contains("://") => return Err("the endpoint has a scheme other than http"),
        None => (data, false),
    };

    // Make the path absolute.
    let (path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (reference, None),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else if path.is_empty() && !named_authority {
        base_path.to_owned()
    } else if path.is_empty() {
        "/".to_owned()
    } else {
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{path}")
    };

    check_path(&path)?;
    if let Some(query) = &query {
        check_query(query)?;
    }

    Ok(Endpoint {
        path,
        query,
        named_authority,
    })
}

/// Refuses paths that could mean something else to the upstream than to us.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("the endpoint path is not absolute");
    }
    if !path.bytes().all(is_path_byte) {
        return Err("the endpoint path has characters a url path cannot hold");
    }

    let dot_segment = |segment: &str| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    if path.split('/').any(dot_segment) {
        return Err("the endpoint path has dot segments");
    }

    Ok(())
}

fn check_query(query: &str) -> Result<(), &'static str> {
    if query.bytes().all(|b| is_path_byte(b) || b == b'?') {
        Ok(())
    } else {
        Err("the endpoint query has characters a url cannot hold")
    }
}

/// Bytes allowed unescaped in a path by RFC 3986 (`pchar` and `/`). The
/// backslash is not among them: some servers read it as `/`.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)
}

enum State {
    /// Holding the stream's head until the endpoint event is complete.
    Scanning(BytesMut),
    /// The endpoint has been rewritten; chunks go out as they come.
    Passing,
    /// The stream has ended or was cut for misbehaviour.
    Done,
}

/// What the head of the buffer held.
enum Scan {
    /// No complete event yet.
    NeedMore,
    /// Complete events before the endpoint, sent on unchanged.
    Forward(Bytes),
    /// Everything up to and including the rewritten endpoint event.
    Rewritten(Bytes),
    /// The endpoint cannot be made to point at this listener.
    Refused(&'static str),
}

/// Wraps the upstream's SSE body, rewriting its first `endpoint` event to
/// `/messages<upstream path>[?query]` on this listener.
///
/// # Security
///
/// If the endpoint cannot be resolved to a path on the configured upstream,
/// the stream is cut with an error rather than passed on unrewritten, so a
/// client is never told to send messages anywhere but this listener.
///
/// # Limitations
///
/// Only the first `endpoint` event is rewritten; the transport sends exactly
/// one, and parsing every later event would cost every streamed byte.
pub(crate) struct EndpointRewrite<S> {
    inner: S,
    shared: Arc<Shared>,
    state: State,
}

impl<S> EndpointRewrite<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        EndpointRewrite {
            inner,
            shared,
            state: State::Scanning(BytesMut::new()),
        }
    }

    fn scan(&self, buf: &mut BytesMut) -> Scan {
        let Some((event_end, next)) = next_event(buf) else {
            return Scan::NeedMore;
        };

        let Some(data) = endpoint_data(&buf[..event_end]) else {
            return Scan::Forward(buf.split_to(next).freeze());
        };

        let endpoint = match resolve_endpoint(self.shared.target.path(), &data) {
            Ok(endpoint) => endpoint,
            Err(reason) => return Scan::Refused(reason),
        };
        if endpoint.named_authority {
            tracing::debug!(
                workload = %self.shared.workload,
                "upstream endpoint names a host; messages go to the configured upstream"
            );
        }
        self.shared.advertised.insert(&endpoint.path);

        // The rewritten event, then whatever followed it in the same chunk
        // (events before it have already gone out as `Forward`).
        let mut out = BytesMut::with_capacity(buf.len() + MESSAGES_PREFIX.len() + 32);
        out.extend_from_slice(b"event: endpoint\ndata: ");
        out.extend_from_slice(MESSAGES_PREFIX.as_bytes());
        out.extend_from_slice(endpoint.path.as_bytes());
        if let Some(query) = &endpoint.query {
            out.extend_from_slice(b"?");
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(&buf[next..]);
        buf.clear();

        Scan::Rewritten(out.freeze())
    }
}

impl<S> Stream for EndpointRewrite<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;

        loop {
            let mut buf = match &mut this.state {
                State::Passing => return Pin::new(&mut this.inner).poll_next(cx),
                State::Done => return Poll::Ready(None),
                State::Scanning(buf) => std::mem::take(buf),
            };

            match this.scan(&mut buf) {
                Scan::Forward(events) => {
                    this.state = State::Scanning(buf);
                    return Poll::Ready(Some(Ok(events)));
                }
                Scan::Rewritten(head) => {
                    this.state = State::Passing;
                    return Poll::Ready(Some(Ok(head)));
                }
                Scan::Refused(reason) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(this.cut(reason))));
                }
                Scan::NeedMore if buf.len() > MAX_HEAD => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(
                        this.cut("no endpoint event in the first 64 KiB")
                    )));
                }
                Scan::NeedMore => {}
            }

            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    buf.extend_from_slice(&chunk);
                    this.state = State::Scanning(buf);
                }
                Poll::Ready(Some(Err(err))) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    this.state = State::Scanning(buf);
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S> EndpointRewrite<S> {
    fn cut(&self, reason: &'static str) -> PayloadError {
        tracing::warn!(
            workload = %self.shared.workload,
            outcome = "endpoint_refused",
            reason,
            "upstream sse stream cut: its endpoint cannot be pointed at this listener"
        );
        PayloadError::Io(std::io::Error::other(reason))
    }
}

/// Finds the first complete event in `buf`: the end of its last line and
/// the offset just past the blank line that ends it.
fn next_event(buf: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0;

    loop {
        let eol = pos + buf[pos..].iter().position(|&b| b == b'\n' || b == b'\r')?;
        let next = match buf[eol] {
            // A lone `\r` at the end of what we have may be half of `\r\n`.
            b'\r' if eol + 1 == buf.len() => return None,
            b'\r' if buf[eol + 1] == b'\n' => eol + 2,
            _ => eol + 1,
        };

        if eol == pos {
            return Some((pos, next));
        }
        pos = next;
    }
}

/// The lines of one event, without their line endings.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|line| !line.is_empty())
}

/// Splits an event line into field and value (one leading space removed).
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

/// The data of `event` if it is an `endpoint` event.
fn endpoint_data(event: &[u8]) -> Option<String> {
    let is_endpoint = lines(event)
        .map(field)
        .filter(|(name, _)| *name == b"event")
        .last()
        .is_some_and(|(_, value)| value == b"endpoint");
    if !is_endpoint {
        return None;
    }

    let data: Vec<&[u8]> = lines(event)
        .map(field)
        .filter(|(name, _)| *name == b"data")
        .map(|(_, value)| value)
        .collect();
    Some(String::from_utf8_lossy(&data.join(&b'\n')).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(
        path: &str,
        query: Option<&str>,
        named_authority: bool,
    ) -> Result<Endpoint, &'static str> {
        Ok(Endpoint {
            path: path.to_owned(),
            query: query.map(str::to_owned),
            named_authority,
        })
    }

    #[test]
    fn resolves_relative_and_absolute_endpoints() {
        assert_eq!(
            resolve_endpoint("/sse", "/message?sessionId=a1"),
            ok("/message", Some("sessionId=a1"), false)
        );
        assert_eq!(
            resolve_endpoint("/mcp/sse", "message?sessionId=a1"),
            ok("/mcp/message", Some("sessionId=a1"), false)
        );
        assert_eq!(
            resolve_endpoint("/sse", "http://127.0.0.1:9/messages/?session_id=ff#frag"),
            ok("/messages/", Some("session_id=ff"), true)
        );
        assert_eq!(
            resolve_endpoint("/sse", "HTTPS://example.com?x=1"),
            ok("/", Some("x=1"), true)
        );
        assert_eq!(
            resolve_endpoint("/sse", "//evil.example/m"),
            ok("/m", None, true)
        );
    }

    #[test]
    fn refuses_endpoints_that_could_escape() {
        assert!(resolve_endpoint("/sse", "/a/../admin").is_err());
        assert!(resolve_endpoint("/sse", "/a/%2E%2e/admin").is_err());
        assert!(resolve_endpoint("/sse", "/a\\b").is_err());
        assert!(resolve_endpoint("/sse", "ftp://x/m").is_err());
        assert!(resolve_endpoint("/sse", "").is_err());
    }

    #[test]
    fn finds_events_across_line_ending_styles() {
        assert_eq!(next_event(b"event: a\ndata: b\n\nrest"), Some((17, 18)));
        assert_eq!(next_event(b"data: b\r\n\r\n"), Some((9, 11)));
        assert_eq!(next_event(b"data: b\r\rx"), Some((8, 9)));
        assert_eq!(next_event(b"data: b\r\r"), None);
        assert_eq!(next_event(b"data: b\r"), None);
        assert_eq!(next_event(b"data: b\n"), None);
    }

    #[test]
    fn reads_endpoint_data_only_from_endpoint_events() {
        assert_eq!(
            endpoint_data(b"event: endpoint\ndata: /m?s=1\n").as_deref(),
            Some("/m?s=1")
        );
        assert_eq!(
            endpoint_data(b"event:endpoint\r\ndata:/m\r\n").as_deref(),
            Some("/m")
        );
        assert_eq!(endpoint_data(b"event: message\ndata: {}\n"), None);
        assert_eq!(endpoint_data(b"data: /m\n"), None);
    }
}
