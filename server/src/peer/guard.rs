//! [`on_connect`], which records a connection's [`PeerIdentity`], and
//! [`PeerGuard`], which refuses requests from peers the policy does not
//! admit.

use std::any::Any;
use std::future::{ready, Ready};
#[cfg(unix)]
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::body::EitherBody;
use actix_web::dev::{
    forward_ready, Extensions, Service, ServiceRequest, ServiceResponse, Transform,
};
use actix_web::http::StatusCode;
use futures_util::future::{Either, Map};
use futures_util::FutureExt;
use thv_actors::WorkloadName;

use super::{describe_pid, pid_of_inode, tcp_peer, PeerDecision, PeerIdentity, PeerPolicy};
use crate::jsonrpc;

/// At most this many refusals have their pid and executable looked up at a
/// time; beyond it the audit event is logged without them, so a flood of
/// refused connections cannot make the server scan `/proc` without end.
const MAX_AUDIT_LOOKUPS: usize = 2;

static AUDIT_LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// Records the [`PeerIdentity`] of a new connection in its data, for
/// `HttpServer::on_connect`.
///
/// A TCP connection is looked up with [`tcp_peer`] (one netlink round trip,
/// bounded by [`super::REPLY_TIMEOUT`], on the worker thread while the
/// connection is set up); a Unix-socket connection with
/// [`super::unix_peer`]. Any other stream (TLS, a test double) is recorded
/// as unknown, which [`PeerGuard`] refuses by default.
///
/// Read it back with `req.conn_data::<PeerIdentity>()`.
///
/// # Limitations
///
/// actix-web calls `on_connect` for listeners given with `bind`, `listen`
/// and `listen_uds`, but not for `bind_uds`: serve a Unix socket with
/// `listen_uds`, or every request on it is refused as unknown.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    let identity = identify(conn);
    tracing::debug!(
        peer_uid = identity.uid,
        peer_pid = identity.pid,
        source = ?identity.source,
        "peer identified"
    );
    ext.insert(identity);
}

fn identify(conn: &dyn Any) -> PeerIdentity {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        return match (tcp.local_addr(), tcp.peer_addr()) {
            (Ok(local), Ok(peer)) => tcp_peer(local, peer),
            _ => PeerIdentity::unknown("the connection has no addresses"),
        };
    }

    #[cfg(unix)]
    if let Some(unix) = conn.downcast_ref::<actix_web::rt::net::UnixStream>() {
        return super::unix_peer(unix.as_raw_fd());
    }

    PeerIdentity::unknown("unsupported connection type")
}

/// Admits a request only when the kernel says its connection comes from a
/// user the [`PeerPolicy`] allows.
///
/// Needs [`on_connect`] on the server; a connection without a recorded
/// identity counts as unknown. Wrap it outermost so nothing else runs for a
/// refused peer.
///
/// A refusal is a response, not an error: 403 with a JSON-RPC error body
/// (`id: null`, code [`jsonrpc::FORBIDDEN`]). Each refusal is one audit
/// event at info (workload, reason, peer_uid, and when known peer_pid and
/// exe), logged after the response is decided: the pid of a TCP peer and
/// any executable are looked up on the blocking pool, so admitted requests
/// never wait for `/proc`. Admitted requests are logged at debug.
///
/// # Security
///
/// The decision rests on the kernel's record of the peer socket's owner,
/// not on anything the client sends; see [`PeerIdentity`] for what that
/// uid does and does not prove.
///
/// # Example
///
/// ```no_run
/// use actix_web::{web, App, HttpResponse, HttpServer};
/// use thv_server::peer::{self, PeerGuard, PeerPolicy};
///
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     HttpServer::new(|| {
///         App::new()
///             .route("/mcp", web::post().to(HttpResponse::Ok))
///             .wrap(PeerGuard::new(PeerPolicy::default(), "time".parse().unwrap()))
///     })
///     .on_connect(peer::on_connect)
///     .bind(("127.0.0.1", 8811))?
///     .run()
///     .await
/// }
/// ```
#[derive(Clone)]
pub struct PeerGuard {
    inner: Rc<Inner>,
}

struct Inner {
    policy: PeerPolicy,
    workload: WorkloadName,
}

impl PeerGuard {
    /// Decides requests to `workload` with `policy`.
    pub fn new(policy: PeerPolicy, workload: WorkloadName) -> PeerGuard {
        PeerGuard {
            inner: Rc::new(Inner { policy, workload }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for PeerGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = PeerGuardMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(PeerGuardMiddleware {
            service,
            inner: self.inner.clone(),
        }))
    }
}

/// The service [`PeerGuard`] wraps around the inner one.
pub struct PeerGuardMiddleware<S> {
    service: S,
    inner: Rc<Inner>,
}

impl<S, B> Service<ServiceRequest> for PeerGuardMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    /// Admitted requests run the inner future as it is, without boxing it.
    type Future = Either<
        Map<
            S::Future,
            fn(Result<ServiceResponse<B>, actix_web::Error>) -> Result<Self::Response, Self::Error>,
        >,
        Ready<Result<Self::Response, Self::Error>>,
    >;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let not_recorded = PeerIdentity::unknown("no identity was recorded on connect");
        let identity = req.conn_data::<PeerIdentity>().unwrap_or(&not_recorded);

        match self.inner.policy.decide(identity) {
            PeerDecision::Admit => {
                tracing::debug!(
                    workload = %self.inner.workload,
                    peer_uid = identity.uid,
                    outcome = "admitted",
                    "peer admitted"
                );
                Either::Left(self.service.call(req).map(crate::guard::into_left))
            }
            PeerDecision::Refuse { reason } => {
                let identity = identity.clone();
                let response = forbidden(&self.inner.workload, &identity);
                audit(Refused {
                    workload: self.inner.workload.clone(),
                    identity,
                    reason,
                    peer: req.peer_addr().map(|addr| addr.to_string()),
                    method: req.method().to_string(),
                    path: crate::redact::loggable_path(req.path()).into_owned(),
                });
                Either::Right(ready(Ok(req.into_response(response).map_into_right_body())))
            }
        }
    }
}

fn forbidden(workload: &WorkloadName, identity: &PeerIdentity) -> actix_web::HttpResponse {
    let message = match identity.uid {
        Some(uid) => format!(
            "forbidden: uid {uid} may not use workload {workload}; connect as the user \
             running thv-actor serve"
        ),
        None => format!(
            "forbidden: the kernel could not tell which user this connection to workload \
             {workload} comes from; connect from this machine over loopback or the unix socket"
        ),
    };
    jsonrpc::error_response(StatusCode::FORBIDDEN, jsonrpc::FORBIDDEN, &message)
}

/// What the audit event of one refusal says.
struct Refused {
    workload: WorkloadName,
    identity: PeerIdentity,
    reason: &'static str,
    peer: Option<String>,
    method: String,
    path: String,
}

/// Logs `refused`, after looking up the peer's pid and executable on the
/// blocking pool when a slot is free.
fn audit(refused: Refused) {
    let taken = AUDIT_LOOKUPS.fetch_add(1, Ordering::AcqRel);
    if taken >= MAX_AUDIT_LOOKUPS {
        AUDIT_LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        log(&refused, refused.identity.pid, None);
        return;
    }

    // The response is already decided; nothing waits on this task.
    drop(actix_web::rt::task::spawn_blocking(move || {
        let pid = refused
            .identity
            .pid
            .or_else(|| refused.identity.inode.and_then(pid_of_inode));
        let exe = pid.and_then(describe_pid);
        AUDIT_LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        log(&refused, pid, exe.as_deref());
    }));
}

fn log(refused: &Refused, pid: Option<u32>, exe: Option<&str>) {
    tracing::info!(
        workload = %refused.workload,
        reason = refused.reason,
        peer_uid = refused.identity.uid,
        peer_pid = pid,
        exe,
        source = ?refused.identity.source,
        peer = refused.peer.as_deref(),
        method = %refused.method,
        path = %refused.path,
        outcome = "refused",
        "peer refused"
    );
}
