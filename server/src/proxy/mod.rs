//! Forwarding a workload's listener to its HTTP upstream MCP server: see
//! [`HttpUpstream`] and [`configure`].
//!
//! This module moves requests and responses; it does not authenticate. The
//! caller wraps the routes from [`configure`] in the `SharedKeyAuth`
//! middleware and the Host/Origin guard.

mod headers;
mod sse;

use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, SizedStream};
use actix_web::error::PayloadError;
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::uri::{Authority, PathAndQuery, Scheme};
use actix_web::http::{StatusCode, Uri};
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::SendRequestError;
use bytes::Bytes;
use futures_util::Stream;
use thv_actors::WorkloadName;

use crate::jsonrpc::{error_response, INVALID_REQUEST, UPSTREAM_UNAVAILABLE};
use sse::{AdvertisedPaths, EndpointRewrite, MESSAGES_PREFIX};

/// How long the upstream may take to send a response's status and headers
/// unless [`HttpUpstream::with_response_header_timeout`] says otherwise.
///
/// Five minutes: an upstream answering a POST with plain JSON sends its
/// headers only when the tool call is done, so this bounds the longest tool
/// call such an upstream can run. Upstreams that answer with an event stream
/// send headers at once and then stream for as long as they like: bodies
/// have no timeout.
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a pooled upstream connection may sit idle before it is closed.
/// Shorter than Node's default keep-alive (5 s), so the pool does not hand
/// out a connection the upstream is about to close.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// How long a pooled upstream connection is used at most.
const POOL_LIFETIME: Duration = Duration::from_secs(75);

/// The MCP transport an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTransport {
    /// Streamable HTTP: `POST`, `GET` and `DELETE` on one URL.
    StreamableHttp,
    /// The legacy HTTP+SSE transport: a `GET` event stream whose first
    /// `endpoint` event names where to `POST` messages.
    Sse,
}

/// What [`HttpUpstream::new`] needs to know about an upstream.
#[derive(Clone)]
pub struct UpstreamSpec {
    /// The workload this upstream serves; named in logs and error bodies.
    pub workload: WorkloadName,
    /// The upstream's MCP URL (`http://` or `https://`): the streamable HTTP
    /// endpoint, or the SSE stream's URL.
    pub url: String,
    /// Which transport the upstream speaks.
    pub transport: UpstreamTransport,
    /// Headers added to every request toward the upstream (an upstream API
    /// key, say). They replace a client's header of the same name.
    pub headers: Vec<(String, String)>,
    /// Bound on DNS resolution, TCP connect and TLS handshake.
    pub connect_timeout: Duration,
}

/// Header values may be credentials toward the upstream and the URL's query
/// may carry a token, so neither is printed.
impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("UpstreamSpec")
            .field("workload", &self.workload)
            .field("url", &self.url.split('?').next().unwrap_or(""))
            .field("transport", &self.transport)
            .field("header_names", &names)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why an [`UpstreamSpec`] was refused. Every variant is the configuration's
/// fault; none carries a header value or the URL's query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The URL does not parse.
    #[error("upstream url is not a valid url")]
    InvalidUrl(#[source] actix_web::http::uri::InvalidUri),
    /// The URL's scheme is not `http` or `https`.
    #[error("upstream url must be http or https")]
    UnsupportedScheme,
    /// The URL has no host.
    #[error("upstream url has no host")]
    MissingHost,
    /// The URL carries `user:password@`; credentials belong in a header.
    #[error("upstream url must not carry credentials; configure a header instead")]
    CredentialsInUrl,
    /// A configured header is malformed or one the proxy must own.
    #[error("header {name:?} cannot be sent to the upstream: {reason}")]
    InvalidHeader {
        /// The header's name as configured.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// One upstream MCP server over HTTP, ready to be mounted with [`configure`].
///
/// Cheap to clone, `Send` and `Sync`: build it once and clone it into the
/// `HttpServer` factory. The HTTP client itself is built per worker thread
/// by [`configure`] and pools keep-alive connections to the upstream.
///
/// # Behaviour
///
/// - Request and response bodies are streamed, never buffered; an event
///   stream (`text/event-stream`) reaches the client event by event, as the
///   upstream sends it, for as long as it lasts.
/// - `Mcp-*` headers (`Mcp-Session-Id`, `MCP-Protocol-Version`, headers of
///   later revisions), `Last-Event-ID`, `Content-Type`, `Accept` and any
///   other end-to-end header pass both ways untouched. Hop-by-hop headers
///   are dropped, `Host` is the upstream's, and the configured headers are
///   added.
/// - `Origin` is not forwarded: the Host/Origin guard in front has already
///   checked it, and an upstream's own Origin check would refuse the
///   loopback origin of a local client.
/// - Redirects from the upstream go back to the client; they are not
///   followed.
/// - An upstream that cannot be reached gets the client a `502` with a
///   JSON-RPC error (`id: null`, code
///   [`UPSTREAM_UNAVAILABLE`]) within
///   the connect timeout; one that accepts but sends no response headers in
///   time gets it a `504` with the same code.
///
/// # Security
///
/// - `X-ToolHive-Auth` and `Authorization` from the client are never sent
///   upstream: the key is for this proxy, not for the workload.
/// - Every request goes to the configured upstream's scheme, host and port;
///   no part of the client's request (path, `Host`, an absolute-form request
///   target) can change them. With the SSE transport a client may POST only
///   to an endpoint path the upstream itself advertised.
/// - Configured header values and the URL's query are never logged or
///   printed by `Debug`.
///
/// # Limitations
///
/// - A stream that breaks mid-way (the upstream dies) ends the client's
///   response abruptly; there is no resumption on the client's behalf, and
///   the break is not logged as an upstream failure.
/// - Only the first `endpoint` event of an SSE stream is rewritten.
/// - A client that disconnects while uploading a request body is reported
///   (and logged) as an upstream failure.
/// - A request is not retried when a pooled keep-alive connection turns out
///   to have been closed by the upstream at the same moment; the client gets
///   a `502`. The pool's idle limit (4 s) is kept below Node's keep-alive
///   (5 s) to make this rare.
///
/// ```
/// use std::time::Duration;
/// use thv_server::proxy::{HttpUpstream, UpstreamSpec, UpstreamTransport};
///
/// let upstream = HttpUpstream::new(UpstreamSpec {
///     workload: "time".parse().unwrap(),
///     url: "http://127.0.0.1:8080/mcp".into(),
///     transport: UpstreamTransport::StreamableHttp,
///     headers: vec![],
///     connect_timeout: Duration::from_secs(5),
/// })
/// .unwrap();
///
/// let app = actix_web::App::new().configure(|cfg| thv_server::proxy::configure(cfg, upstream));
/// # drop(app);
/// assert!(HttpUpstream::new(UpstreamSpec {
///     workload: "time".parse().unwrap(),
///     url: "file:///etc/passwd".into(),
///     transport: UpstreamTransport::StreamableHttp,
///     headers: vec![],
///     connect_timeout: Duration::from_secs(5),
/// })
/// .is_err());
/// ```
#[derive(Clone)]
pub struct HttpUpstream {
    shared: Arc<Shared>,
    response_header_timeout: Duration,
}

/// What every worker's forwarder shares about one upstream.
pub(crate) struct Shared {
    /// Named in logs and error messages.
    pub(crate) workload: WorkloadName,
    transport: UpstreamTransport,
    /// The configured URL, parsed once; cloning it is reference counting.
    pub(crate) target: Uri,
    scheme: Scheme,
    authority: Authority,
    /// `Host` toward the upstream, computed once instead of per request.
    host: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    connect_timeout: Duration,
    /// SSE only: the paths the upstream has told clients to POST to.
    pub(crate) advertised: AdvertisedPaths,
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("HttpUpstream")
            .field("workload", &shared.workload)
            .field(
                "upstream",
                &format_args!(
                    "{}://{}{}",
                    shared.scheme,
                    shared.authority,
                    shared.target.path()
                ),
            )
            .field("transport", &shared.transport)
            .field("header_count", &shared.headers.len())
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// Checks `spec` and prepares what every request needs.
    ///
    /// # Errors
    ///
    /// [`ProxyError`] when the URL does not parse, is not `http` or `https`,
    /// has no host or carries credentials, or when a configured header is
    /// malformed or one the proxy sets itself (`Host`, framing, hop-by-hop).
    pub fn new(spec: UpstreamSpec) -> Result<HttpUpstream, ProxyError> {
        let target: Uri = spec.url.parse().map_err(ProxyError::InvalidUrl)?;

        let scheme = match target.scheme_str() {
            Some("http") | Some("https") => target
                .scheme()
                .cloned()
                .ok_or(ProxyError::UnsupportedScheme)?,
            _ => return Err(ProxyError::UnsupportedScheme),
        };
        let authority = target.authority().cloned().ok_or(ProxyError::MissingHost)?;
        if authority.host().is_empty() {
            return Err(ProxyError::MissingHost);
        }
        if authority.as_str().contains('@') {
            return Err(ProxyError::CredentialsInUrl);
        }
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::MissingHost)?;

        let headers = spec
            .headers
            .iter()
            .map(|(name, value)| configured_header(name, value))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(HttpUpstream {
            shared: Arc::new(Shared {
                workload: spec.workload,
                transport: spec.transport,
                target,
                scheme,
                authority,
                host,
                headers,
                connect_timeout: spec.connect_timeout,
                advertised: AdvertisedPaths::default(),
            }),
            response_header_timeout: DEFAULT_RESPONSE_HEADER_TIMEOUT,
        })
    }

    /// Replaces [`DEFAULT_RESPONSE_HEADER_TIMEOUT`]: how long the upstream may
    /// take to start answering a request. Bodies are never timed out.
    pub fn with_response_header_timeout(mut self, timeout: Duration) -> HttpUpstream {
        self.response_header_timeout = timeout;
        self
    }

    /// The workload this upstream serves.
    pub fn workload(&self) -> &WorkloadName {
        &self.shared.workload
    }

    /// The transport the upstream speaks, which decides the routes.
    pub fn transport(&self) -> UpstreamTransport {
        self.shared.transport
    }
}

fn configured_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ProxyError> {
    let invalid = |reason| ProxyError::InvalidHeader {
        name: name.to_owned(),
        reason,
    };

    let header_name = HeaderName::try_from(name).map_err(|_| invalid("not a valid header name"))?;
    headers::configurable(&header_name).map_err(invalid)?;
    let mut header_value = HeaderValue::try_from(value)
        .map_err(|_| invalid("the value is not a valid header value"))?;
    header_value.set_sensitive(true);

    Ok((header_name, header_value))
}

/// Mounts the routes that forward to `upstream`:
///
/// - [`UpstreamTransport::StreamableHttp`]: `POST`, `GET` and `DELETE` on
///   `/mcp`, forwarded to the upstream URL.
/// - [`UpstreamTransport::Sse`]: `GET /sse`, forwarded to the upstream URL
///   with its `endpoint` event rewritten to `/messages<upstream path>?..`;
///   `POST /messages/...` on such a path, forwarded to the upstream's
///   endpoint.
///
/// The client's query string is appended to the upstream URL's.
///
/// Call it inside the `HttpServer` factory closure: it builds the worker's
/// HTTP client (which is not `Send`). Several upstreams may be mounted in one
/// `App` under different scopes; each has its own client.
pub fn configure(cfg: &mut web::ServiceConfig, upstream: HttpUpstream) {
    let forwarder = Rc::new(Forwarder {
        client: build_client(&upstream.shared),
        upstream,
    });

    match forwarder.upstream.shared.transport {
        UpstreamTransport::StreamableHttp => {
            let mcp = forwarder.clone();
            let handler = move |req: HttpRequest, body: web::Payload| {
                let forwarder = mcp.clone();
                async move { forwarder.streamable(req, body).await }
            };
            cfg.service(
                web::resource("/mcp")
                    .route(web::post().to(handler.clone()))
                    .route(web::get().to(handler.clone()))
                    .route(web::delete().to(handler)),
            );
        }
        UpstreamTransport::Sse => {
            let stream = forwarder.clone();
            cfg.service(web::resource("/sse").route(web::get().to(
                move |req: HttpRequest, body: web::Payload| {
                    let forwarder = stream.clone();
                    async move { forwarder.sse_stream(req, body).await }
                },
            )));

            let messages = forwarder.clone();
            cfg.service(web::resource("/messages/{tail:.*}").route(web::post().to(
                move |req: HttpRequest, body: web::Payload| {
                    let forwarder = messages.clone();
                    async move { forwarder.sse_message(req, body).await }
                },
            )));
        }
    }
}

/// Makes sure rustls has a crypto provider before awc asks for the default
/// one (it panics if none can be chosen).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn build_client(shared: &Shared) -> awc::Client {
    install_crypto_provider();

    // No connection limit: every open event stream holds a connection, and a
    // limit would make the next client wait for one to end.
    let connector = awc::Connector::new()
        .timeout(shared.connect_timeout)
        .handshake_timeout(shared.connect_timeout)
        .conn_keep_alive(POOL_IDLE)
        .conn_lifetime(POOL_LIFETIME)
        .limit(0);

    awc::Client::builder()
        .connector(connector)
        .disable_timeout()
        .disable_redirects()
        .no_default_headers()
        .finish()
}

/// One worker's view of an upstream: the shared description and the
/// worker's own pooled client.
struct Forwarder {
    upstream: HttpUpstream,
    client: awc::Client,
}

impl Forwarder {
    /// Streamable HTTP: everything on `/mcp` goes to the upstream URL.
    async fn streamable(&self, req: HttpRequest, body: web::Payload) -> HttpResponse {
        let Some(uri) = self.target_with_query(req.query_string()) else {
            return bad_target();
        };

        match self.send(&req, body, uri).await {
            Ok(res) => relay(res),
            Err(response) => response,
        }
    }

    /// SSE: the event stream, with its endpoint pointed at this listener.
    async fn sse_stream(&self, req: HttpRequest, body: web::Payload) -> HttpResponse {
        let Some(uri) = self.target_with_query(req.query_string()) else {
            return bad_target();
        };

        let res = match self.send(&req, body, uri).await {
            Ok(res) => res,
            Err(response) => return response,
        };

        let is_event_stream = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !res.status().is_success() || !is_event_stream {
            return relay(res);
        }

        let mut response = HttpResponse::new(res.status());
        headers::copy(
            res.headers(),
            response.headers_mut(),
            headers::forward_downstream,
        );
        let body = EndpointRewrite::new(res, self.upstream.shared.clone());
        response
            .set_body(BodyStream::new(body))
            .map_into_boxed_body()
    }

    /// SSE: a message POSTed to a rewritten endpoint.
    async fn sse_message(&self, req: HttpRequest, body: web::Payload) -> HttpResponse {
        let shared = &self.upstream.shared;

        // Only paths the upstream advertised; anything else is not ours to
        // reach, even on the configured host.
        let path = req.path().strip_prefix(MESSAGES_PREFIX).unwrap_or("");
        if !shared.advertised.contains(path) {
            tracing::debug!(workload = %shared.workload, "post to an endpoint the upstream did not advertise");
            return error_response(
                StatusCode::NOT_FOUND,
                INVALID_REQUEST,
                "no such message endpoint",
            );
        }

        let Some(uri) = self.upstream_uri(path, req.query_string()) else {
            return bad_target();
        };

        match self.send(&req, body, uri).await {
            Ok(res) => relay(res),
            Err(response) => response,
        }
    }

    /// The configured URL, with the client's query appended to its own.
    fn target_with_query(&self, query: &str) -> Option<Uri> {
        let target = &self.upstream.shared.target;
        if query.is_empty() {
            return Some(target.clone());
        }

        let joined = match target.query() {
            Some(own) if !own.is_empty() => format!("{}?{own}&{query}", target.path()),
            _ => format!("{}?{query}", target.path()),
        };
        self.uri_from(&joined)
    }

    /// `path` and the client's query on the configured scheme and authority.
    fn upstream_uri(&self, path: &str, query: &str) -> Option<Uri> {
        let path_and_query = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        self.uri_from(&path_and_query)
    }

    /// Builds an upstream URI whose scheme and authority are always the
    /// configured ones: the client only ever supplies the path and query.
    fn uri_from(&self, path_and_query: &str) -> Option<Uri> {
        let shared = &self.upstream.shared;

        let path_and_query = PathAndQuery::try_from(path_and_query).ok()?;
        Uri::builder()
            .scheme(shared.scheme.clone())
            .authority(shared.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .ok()
    }

    /// Sends the client's request on to `uri` and waits for the response
    /// headers, bounded by the response-header timeout.
    async fn send(
        &self,
        req: &HttpRequest,
        body: web::Payload,
        uri: Uri,
    ) -> Result<
        awc::ClientResponse<impl Stream<Item = Result<Bytes, PayloadError>> + Unpin>,
        HttpResponse,
    > {
        let shared = &self.upstream.shared;
        let started = Instant::now();

        // Build the upstream request: filtered client headers, then ours.
        let mut upstream_req = self
            .client
            .request(req.method().clone(), uri)
            .no_decompress();
        let headers = upstream_req.headers_mut();
        headers::copy(req.headers(), headers, headers::forward_upstream);
        headers.insert(actix_web::http::header::HOST, shared.host.clone());
        for (name, value) in &shared.headers {
            headers.insert(name.clone(), value.clone());
        }

        // Stream the body; keep its length when the client gave one.
        let length = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = req
            .headers()
            .contains_key(actix_web::http::header::TRANSFER_ENCODING);
        let sending = match length {
            Some(length) => upstream_req.send_body(SizedStream::new(length, body)),
            None if chunked => upstream_req.send_body(BodyStream::new(body)),
            None => upstream_req.send(),
        };

        let result = actix_rt::time::timeout(self.upstream.response_header_timeout, sending).await;
        let upstream_ms = started.elapsed().as_secs_f64() * 1000.0;

        match result {
            Ok(Ok(res)) => {
                tracing::debug!(
                    workload = %shared.workload,
                    method = %req.method(),
                    status = res.status().as_u16(),
                    upstream_ms,
                    "forwarded"
                );
                Ok(res)
            }
            // TODO: tell a client's broken upload (SendRequestError::Body)
            // apart from an upstream failure (awc folds both into one error
            // type; splitting them needs a wrapper around the payload stream)
            Ok(Err(err)) => Err(self.failed(req, err, upstream_ms)),
            Err(_elapsed) => {
                tracing::warn!(
                    workload = %shared.workload,
                    method = %req.method(),
                    outcome = "upstream_timeout",
                    upstream_ms,
                    "upstream sent no response headers in time"
                );
                let message = format!("workload {} did not answer in time", shared.workload);
                Err(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    UPSTREAM_UNAVAILABLE,
                    &message,
                ))
            }
        }
    }

    /// Logs a failed forward once and turns it into the client's answer. The
    /// client learns which workload failed, not how.
    fn failed(&self, req: &HttpRequest, err: SendRequestError, upstream_ms: f64) -> HttpResponse {
        let shared = &self.upstream.shared;
        tracing::warn!(
            workload = %shared.workload,
            method = %req.method(),
            outcome = "upstream_unavailable",
            upstream_ms,
            error = %err,
            "upstream request failed"
        );

        let (status, message) = match err {
            SendRequestError::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("workload {} did not answer in time", shared.workload),
            ),
            _ => (
                StatusCode::BAD_GATEWAY,
                format!("workload {} is not reachable", shared.workload),
            ),
        };
        error_response(status, UPSTREAM_UNAVAILABLE, &message)
    }
}

/// The answer to a request target that makes no upstream URL.
fn bad_target() -> HttpResponse {
    error_response(
        StatusCode::BAD_REQUEST,
        INVALID_REQUEST,
        "invalid request target",
    )
}

/// The upstream's response as the client's: status, filtered headers, and
/// the body streamed chunk by chunk (with its length when the upstream gave
/// one).
fn relay<S>(res: awc::ClientResponse<S>) -> HttpResponse
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    let mut response = HttpResponse::new(res.status());
    headers::copy(
        res.headers(),
        response.headers_mut(),
        headers::forward_downstream,
    );

    let length = res
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = matches!(
        res.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    match length {
        Some(0) => response,
        None if bodiless => response,
        Some(length) => response
            .set_body(SizedStream::new(length, res))
            .map_into_boxed_body(),
        // TODO: warn when the upstream breaks a stream mid-way (needs a
        // wrapper stream that logs its first error; until then actix-web
        // only closes the client's connection)
        None => response
            .set_body(BodyStream::new(res))
            .map_into_boxed_body(),
    }
}

#[cfg(test)]
mod tests;
