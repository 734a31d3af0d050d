//! [`SharedKeyAuth`]: the middleware that admits only requests carrying the
//! workload's key.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpResponse};
use futures_util::future::LocalBoxFuture;
use thv_actors::{SharedKey, Validate, Validator, Verdict, WorkloadName};

use crate::jsonrpc;

/// The header a bridge sends the key in.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-toolhive-auth");

/// The challenge sent with every 401. A scheme of our own: `Bearer` would
/// make MCP clients start OAuth discovery.
pub const CHALLENGE: &str = r#"ToolHive-Shared-Key realm="thv-actor", header="X-ToolHive-Auth""#;

/// Put into the request extensions of every request [`SharedKeyAuth`]
/// admitted, for handlers and the audit trail downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedWorkload {
    /// The workload whose key the request carried.
    pub workload: WorkloadName,
}

/// Why a request was refused; the `reason` field of the audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential header.
    Missing,
    /// `X-ToolHive-Auth` appeared more than once, or `Authorization` did.
    Repeated,
    /// `X-ToolHive-Auth` and `Authorization: Bearer` disagree.
    Conflicting,
    /// The value is not a 43-character base64url key.
    Malformed,
    /// A well-formed key that is not one of this workload's.
    WrongKey,
    /// The workload has no key at all.
    NoKey,
    /// The Validator could not decide (keychain unreachable, actor
    /// restarting): 503, never a pass.
    Undecided,
}

impl Refusal {
    /// The audit event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Repeated => "repeated",
            Refusal::Conflicting => "conflicting",
            Refusal::Malformed => "malformed",
            Refusal::WrongKey => "wrong_key",
            Refusal::NoKey => "no_key",
            Refusal::Undecided => "undecided",
        }
    }
}

/// Counts of the middleware's decisions, shared by every worker.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Requests admitted.
    pub accepted: AtomicU64,
    /// Requests refused with 401.
    pub refused: AtomicU64,
    /// Requests answered 503 because no decision could be made.
    pub undecided: AtomicU64,
}

/// Admits a request only when it carries the workload's key.
///
/// The key is read from `X-ToolHive-Auth: <key>` or `Authorization: Bearer
/// <key>`. A request is refused when neither is present, when a header is
/// repeated, when both are present and disagree, when the value is not a
/// well-formed key, or when the [`Validator`] says it is not a valid key of
/// this workload. Admitted requests carry [`AuthenticatedWorkload`] in their
/// extensions and lose the credential headers, so nothing downstream (a
/// proxy, a log) sees the key.
///
/// Refusals are responses, not errors, so middleware wrapped outside this
/// one (CORS, logging) still runs: 401 with a JSON-RPC error body (`id:
/// null`) naming the header to send and a `WWW-Authenticate` challenge in a
/// scheme of its own; 503 with `Retry-After` when the Validator cannot
/// answer. Each refusal is one audit event at info (workload, reason, peer,
/// method, path); acceptances are counted and logged at debug.
///
/// # Security
///
/// The presented value never reaches the response body or a log line. The
/// comparison is constant time (see [`SharedKey::ct_eq_any`]); the length
/// of a malformed value is not secret. A key in the query string is never
/// looked at.
///
/// # Example
///
/// ```no_run
/// use actix_web::{web, App, HttpResponse, HttpServer};
/// use thv_actors::{Backend, BackendChoice, KeyStore, Validator, ValidatorConfig};
/// use thv_server::auth::SharedKeyAuth;
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let backend = Backend::open(BackendChoice::Auto).expect("a keychain");
///     let keystore = KeyStore::start(backend).expect("a lock directory");
///     HttpServer::new(move || {
///         let validator = Validator::start(keystore.clone(), ValidatorConfig::default());
///         App::new()
///             .wrap(SharedKeyAuth::new("time".parse().unwrap(), validator))
///             .route("/mcp", web::post().to(HttpResponse::Ok))
///     })
///     .bind(("127.0.0.1", 8811))?
///     .run()
///     .await
/// }
/// ```
#[derive(Clone)]
pub struct SharedKeyAuth {
    inner: Rc<Inner>,
}

struct Inner {
    workload: WorkloadName,
    validator: Addr<Validator>,
    stats: Arc<AuthStats>,
}

impl SharedKeyAuth {
    /// Checks requests against `workload`'s keys, asking `validator`.
    pub fn new(workload: WorkloadName, validator: Addr<Validator>) -> SharedKeyAuth {
        SharedKeyAuth::with_stats(workload, validator, Arc::default())
    }

    /// As [`SharedKeyAuth::new`], counting decisions into `stats`.
    pub fn with_stats(
        workload: WorkloadName,
        validator: Addr<Validator>,
        stats: Arc<AuthStats>,
    ) -> SharedKeyAuth {
        SharedKeyAuth {
            inner: Rc::new(Inner {
                workload,
                validator,
                stats,
            }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for SharedKeyAuth
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SharedKeyAuthMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SharedKeyAuthMiddleware {
            service: Rc::new(service),
            inner: self.inner.clone(),
        }))
    }
}

/// The service [`SharedKeyAuth`] wraps around the inner one.
pub struct SharedKeyAuthMiddleware<S> {
    service: Rc<S>,
    inner: Rc<Inner>,
}

impl<S, B> Service<ServiceRequest> for SharedKeyAuthMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let inner = self.inner.clone();

        Box::pin(async move {
            // Parse: the credential, before anything is asked of an actor.
            let presented = match presented_key(&req) {
                Ok(key) => key,
                Err(refusal) => return Ok(refuse(req, &inner, refusal)),
            };

            // Check: the Validator's answer; no answer is a refusal.
            let asked = inner
                .validator
                .send(Validate {
                    workload: inner.workload.clone(),
                    presented,
                })
                .await;
            match asked {
                Ok(Ok(Verdict::Accepted)) => {}
                Ok(Ok(Verdict::WrongKey)) => return Ok(refuse(req, &inner, Refusal::WrongKey)),
                Ok(Ok(Verdict::NoKey)) => return Ok(refuse(req, &inner, Refusal::NoKey)),
                Ok(Err(err)) => {
                    tracing::warn!(workload = %inner.workload, error = %err, "cannot validate the key");
                    return Ok(refuse(req, &inner, Refusal::Undecided));
                }
                Err(err) => {
                    tracing::warn!(workload = %inner.workload, error = %err, "validator unreachable");
                    return Ok(refuse(req, &inner, Refusal::Undecided));
                }
            }

            // Act: mark the request, and keep the key from going further.
            inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(workload = %inner.workload, outcome = "accepted", "shared key accepted");
            strip_credentials(&mut req);
            req.extensions_mut().insert(AuthenticatedWorkload {
                workload: inner.workload.clone(),
            });
            service
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        })
    }
}

/// The key the request presents, or why there is none to check.
fn presented_key(req: &ServiceRequest) -> Result<SharedKey, Refusal> {
    let headers = req.headers();

    let mut own = headers.get_all(KEY_HEADER);
    let own_value = own.next();
    if own.next().is_some() {
        return Err(Refusal::Repeated);
    }

    let mut auth = headers.get_all(AUTHORIZATION);
    let auth_value = auth.next();
    if auth.next().is_some() {
        return Err(Refusal::Repeated);
    }
    let bearer = auth_value.and_then(bearer_token);

    let value = match (own_value, bearer) {
        (Some(own), Some(bearer)) if own.as_bytes() != bearer => return Err(Refusal::Conflicting),
        (Some(own), _) => own.as_bytes(),
        (None, Some(bearer)) => bearer,
        (None, None) => return Err(Refusal::Missing),
    };
    SharedKey::parse_bytes(value).map_err(|_| Refusal::Malformed)
}

/// The token of `Authorization: Bearer <token>`; the scheme is
/// case-insensitive, other schemes are not ours.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let scheme = bytes.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| &bytes[7..])
}

fn strip_credentials(req: &mut ServiceRequest) {
    let headers = req.headers_mut();
    headers.remove(KEY_HEADER);
    if headers.get(AUTHORIZATION).and_then(bearer_token).is_some() {
        headers.remove(AUTHORIZATION);
    }
}

fn refuse<B>(
    req: ServiceRequest,
    inner: &Inner,
    refusal: Refusal,
) -> ServiceResponse<EitherBody<B>> {
    let peer = req.peer_addr();
    tracing::info!(
        workload = %inner.workload,
        reason = refusal.as_str(),
        peer = ?peer,
        method = %req.method(),
        path = %crate::redact::loggable_path(req.path()),
        outcome = "refused",
        "shared key refused"
    );

    let response = if refusal == Refusal::Undecided {
        inner.stats.undecided.fetch_add(1, Ordering::Relaxed);
        let mut response = jsonrpc::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            jsonrpc::UNAVAILABLE,
            "the key could not be checked right now; retry shortly",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        unauthorized(&inner.workload, refusal)
    };
    req.into_response(response).map_into_right_body()
}

fn unauthorized(workload: &WorkloadName, refusal: Refusal) -> HttpResponse {
    let problem = match refusal {
        Refusal::Missing => "no key was sent",
        Refusal::Repeated => "the key header was sent more than once",
        Refusal::Conflicting => "X-ToolHive-Auth and Authorization carry different keys",
        Refusal::Malformed => "the key is not 43 base64url characters",
        Refusal::WrongKey | Refusal::NoKey | Refusal::Undecided => {
            "the key is not valid for this workload"
        }
    };
    let message = format!(
        "unauthorized: {problem}; send the header X-ToolHive-Auth: <key> once \
         (connect through `thv-actor bridge {workload}`, which adds it)"
    );
    let mut response =
        jsonrpc::error_response(StatusCode::UNAUTHORIZED, jsonrpc::UNAUTHORIZED, &message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}
