//! The one raw HTTP/1.1 client of the end-to-end tests: it writes exactly
//! the bytes a test asks for (repeated headers, byte-valued headers, a
//! hand-written head) on a new loopback connection with `Connection:
//! close`, and parses whatever comes back.
//!
//! # Limitations
//!
//! One request per connection. The answer is read until it is complete (by
//! `Content-Length` or the last chunk), the peer closes, or the read
//! timeout passes; an open-ended event stream is therefore read until the
//! timeout. A connection closed without an answer gives status 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An `initialize` request body of the 2025-06-18 revision.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"thv-e2e","version":"0"}}}"#;

/// A raw HTTP/1.1 request, written byte for byte as given.
pub struct Request {
    port: u16,
    /// The request line and headers as the test wrote them, instead of the
    /// built ones.
    head: Option<Vec<u8>>,
    method: String,
    path: String,
    host: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Duration,
}

impl Request {
    pub fn new(method: &str, port: u16, path: &str) -> Request {
        Request {
            port,
            head: None,
            method: method.into(),
            path: path.into(),
            host: None,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: super::WAIT,
        }
    }

    /// A request whose request line and headers are `head` (without the
    /// blank line); `Content-Length` and `Connection: close` follow it.
    pub fn with_head(port: u16, head: impl AsRef<[u8]>) -> Request {
        let mut request = Request::new("", port, "");
        request.head = Some(head.as_ref().to_vec());
        request
    }

    /// A POST of `body` to `/mcp` with the JSON and event-stream Accept.
    pub fn mcp(port: u16, body: impl AsRef<[u8]>) -> Request {
        Request::new("POST", port, "/mcp")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body)
    }

    /// A POST of [`INITIALIZE`] to `/mcp`.
    pub fn initialize(port: u16) -> Request {
        Request::mcp(port, INITIALIZE)
    }

    /// Adds a header (repeat it to send it twice).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the default `Host: 127.0.0.1:<port>`.
    pub fn host(mut self, value: impl AsRef<[u8]>) -> Request {
        self.host = Some(value.as_ref().to_vec());
        self
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Request {
        self.body = body.as_ref().to_vec();
        self
    }

    /// How long a read of the answer may stall (default [`super::WAIT`]).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// The bytes sent.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = match &self.head {
            Some(head) => head.clone(),
            None => self.built_head(),
        };
        out.extend_from_slice(
            format!(
                "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out
    }

    fn built_head(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: ", self.method, self.path).into_bytes();
        match &self.host {
            Some(host) => out.extend_from_slice(host),
            None => out.extend_from_slice(format!("127.0.0.1:{}", self.port).as_bytes()),
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
        }
        out
    }

    /// Sends it on a new connection and reads the answer (bounded).
    pub fn send(&self) -> Response {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(self.timeout)).unwrap();
        stream.set_write_timeout(Some(super::WAIT)).unwrap();
        // A server that refuses early may close before the body is written;
        // what it answered is still read below.
        let _ = stream.write_all(&self.bytes());

        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset or the timeout ends the answer; what came is kept.
                Err(_) => break,
            }
            if Response::complete(&raw) {
                break;
            }
        }
        Response::parse(&raw)
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` to `port`, reading for at most 10 s.
pub fn raw(port: u16, head: &[u8], body: &[u8]) -> Response {
    Request::with_head(port, head)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
}

/// POSTs `body` to `/mcp` on `port` with `key` in `X-ToolHive-Auth` and
/// `extra` headers, reading for at most 10 s.
pub fn post(port: u16, key: Option<&str>, extra: &[(&str, &str)], body: &str) -> Response {
    let mut request = Request::mcp(port, body).timeout(Duration::from_secs(10));
    if let Some(key) = key {
        request = request.header("X-ToolHive-Auth", key);
    }
    for (name, value) in extra {
        request = request.header(name, value);
    }
    request.send()
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    /// 0 when no status line came.
    pub status: u16,
    /// Names lowercased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// De-chunked when sent chunked.
    pub body: Vec<u8>,
    /// The whole answer as received, head and body.
    pub raw: Vec<u8>,
}

impl Response {
    fn head_end(raw: &[u8]) -> Option<usize> {
        raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
    }

    fn complete(raw: &[u8]) -> bool {
        let Some(end) = Response::head_end(raw) else {
            return false;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match length {
            Some(n) => raw.len() >= end + n,
            None if head.contains("transfer-encoding: chunked") => raw.ends_with(b"0\r\n\r\n"),
            None => false,
        }
    }

    fn parse(raw: &[u8]) -> Response {
        let end = Response::head_end(raw).unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(&raw[end..])
        } else {
            raw[end..].to_vec()
        };
        Response {
            status,
            headers,
            body,
            raw: raw.to_vec(),
        }
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; an SSE body yields its first `data:` event.
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let json = if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            text.lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap_or("")
                .trim()
                .to_owned()
        } else {
            text.clone()
        };
        serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?} (status {})", self.status))
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&data[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap().trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < nl + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[(nl + 4 + size).min(data.len())..];
    }
}
