//! [`LoopbackGuard`]: the `Host` and `Origin` checks that defeat DNS
//! rebinding.

use std::future::{ready, Ready};
use std::net::IpAddr;
use std::rc::Rc;

use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HOST, ORIGIN};
use actix_web::http::StatusCode;
use futures_util::future::{Either, Map};
use futures_util::FutureExt;

use crate::jsonrpc;

/// Refuses requests whose `Host` is not a loopback name or address, and
/// requests whose `Origin` is present and not allowed, with 403.
///
/// A page on `http://evil.example` that rebinds its name to 127.0.0.1 can
/// make a browser send requests to a loopback port, but the browser still
/// sends `Host: evil.example` and `Origin: http://evil.example`; the MCP
/// specification asks servers to validate `Origin` for this reason.
///
/// Allowed origins are the listener's own (`http://127.0.0.1:<port>`,
/// `http://localhost:<port>`, `http://[::1]:<port>`) plus the extra ones
/// given. `Origin: null` (sandboxed frames, `file:` pages) is never allowed.
/// Requests without `Origin` (every non-browser client) pass that check.
///
/// # Limitations
///
/// Origins are compared as exact ASCII-case-insensitive strings; there are
/// no wildcards.
#[derive(Clone)]
pub struct LoopbackGuard {
    inner: Rc<Inner>,
}

struct Inner {
    origins: Vec<String>,
    extra_hosts: Vec<String>,
}

impl LoopbackGuard {
    /// A guard for a listener on `port`, also allowing `extra_origins`.
    pub fn new(port: u16, extra_origins: &[String]) -> LoopbackGuard {
        let mut origins: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .flat_map(|host| {
                [
                    format!("http://{host}:{port}"),
                    format!("https://{host}:{port}"),
                ]
            })
            .collect();
        origins.extend(
            extra_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase()),
        );
        LoopbackGuard {
            inner: Rc::new(Inner {
                origins,
                extra_hosts: Vec::new(),
            }),
        }
    }

    /// Also accepts `Host` values naming `host` (with any port): for a
    /// listener deliberately bound to a non-loopback address.
    pub fn allow_host(self, host: &str) -> LoopbackGuard {
        let mut extra_hosts = self.inner.extra_hosts.clone();
        extra_hosts.push(host.to_ascii_lowercase());
        LoopbackGuard {
            inner: Rc::new(Inner {
                origins: self.inner.origins.clone(),
                extra_hosts,
            }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for LoopbackGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = LoopbackGuardMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(LoopbackGuardMiddleware {
            service,
            inner: self.inner.clone(),
        }))
    }
}

/// The service [`LoopbackGuard`] wraps around the inner one.
pub struct LoopbackGuardMiddleware<S> {
    service: S,
    inner: Rc<Inner>,
}

impl<S, B> Service<ServiceRequest> for LoopbackGuardMiddleware<S>
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
        if let Some(reason) = self.refusal(&req) {
            tracing::info!(
                reason,
                peer = ?req.peer_addr(),
                method = %req.method(),
                path = %crate::redact::loggable_path(req.path()),
                outcome = "refused",
                "request refused by the host/origin guard"
            );
            let response = jsonrpc::error_response(
                StatusCode::FORBIDDEN,
                jsonrpc::FORBIDDEN,
                &format!("forbidden: {reason}"),
            );
            return Either::Right(ready(Ok(req.into_response(response).map_into_right_body())));
        }
        Either::Left(self.service.call(req).map(into_left))
    }
}

impl<S> LoopbackGuardMiddleware<S> {
    fn refusal(&self, req: &ServiceRequest) -> Option<&'static str> {
        let headers = req.headers();

        let mut hosts = headers.get_all(HOST);
        let host = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().ok(),
            (Some(_), Some(_)) => return Some("more than one Host header"),
            // HTTP/1.1 requires Host; HTTP/2 carries it in the URI.
            (None, _) => req.uri().authority().map(|a| a.as_str()),
        };
        match host {
            Some(host) if is_loopback_host(host) || self.is_extra_host(host) => {}
            Some(_) => return Some("the Host header is not a loopback name or address"),
            None => return Some("no Host header"),
        }
        // In absolute form (`POST http://host/mcp`) the target names the
        // host and the Host header is to be ignored; both must be loopback.
        if let Some(authority) = req.uri().authority() {
            if !(is_loopback_host(authority.as_str()) || self.is_extra_host(authority.as_str())) {
                return Some("the request target is not a loopback name or address");
            }
        }

        let mut origins = headers.get_all(ORIGIN);
        let origin = origins.next();
        if origins.next().is_some() {
            return Some("more than one Origin header");
        }
        if let Some(origin) = origin {
            let allowed = origin.to_str().is_ok_and(|o| {
                let o = o.trim_end_matches('/');
                self.inner.origins.iter().any(|a| a.eq_ignore_ascii_case(o))
            });
            if !allowed {
                return Some("the Origin is not allowed");
            }
        }
        None
    }

    fn is_extra_host(&self, host: &str) -> bool {
        let name = split_port(host).to_ascii_lowercase();
        self.inner.extra_hosts.contains(&name)
    }
}

/// Whether `host` (a `Host` header value, port optional) names loopback:
/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = split_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// `host` without a trailing `:port`, keeping IPv6 brackets.
fn split_port(host: &str) -> &str {
    if host.starts_with('[') {
        // After the bracket only a port may follow; anything else leaves the
        // whole value, which then parses as no address at all.
        return match host.find(']') {
            Some(end) if is_port_suffix(&host[end + 1..]) => &host[..=end],
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Nothing, or `:` and one or more digits.
fn is_port_suffix(rest: &str) -> bool {
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The admitted branch's response, in the body type both branches share.
pub(crate) fn into_left<B>(
    res: Result<ServiceResponse<B>, actix_web::Error>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    res.map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1",
            "127.1.2.3:8811",
            "[::1]",
            "[::1]:9",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "127.0.0.1.nip.io",
            "",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
