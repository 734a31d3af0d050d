//! Which headers cross the proxy, in each direction.
//!
//! The rules are a deny list: anything not named here passes through
//! untouched, so `Mcp-Session-Id`, `MCP-Protocol-Version`, `Last-Event-ID`,
//! headers a later MCP revision adds (`Mcp-*`), `Content-Type` and `Accept`
//! all reach the other side as they were sent.

use actix_web::http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST,
    ORIGIN, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// The header the bridge carries the shared key in. Spelled here rather than
/// imported so that the proxy drops it even if the middleware is not in front.
pub(crate) const SHARED_KEY_HEADER: &str = "x-toolhive-auth";

/// Whether a client's request header may be sent on to the upstream.
///
/// Dropped: hop-by-hop headers (they describe our connection, not theirs),
/// `Host` (set to the upstream's), `Content-Length` (the body type sets it),
/// `Expect` (actix-web has already answered it), the credentials
/// `X-ToolHive-Auth` and `Authorization` (meant for this proxy, never for the
/// workload), and `Origin` (the Host/Origin guard has checked it; an
/// upstream's own check would refuse the loopback origin of a local client).
pub(crate) fn forward_upstream(name: &HeaderName, connection: Option<&HeaderValue>) -> bool {
    match *name {
        HOST | ORIGIN | AUTHORIZATION | CONTENT_LENGTH | EXPECT => false,
        CONNECTION | TE | TRAILER | TRANSFER_ENCODING | UPGRADE => false,
        PROXY_AUTHORIZATION | PROXY_AUTHENTICATE => false,
        _ => {
            let name = name.as_str();
            name != SHARED_KEY_HEADER && !is_other_hop_by_hop(name, connection)
        }
    }
}

/// Whether an upstream's response header may be sent on to the client.
///
/// Dropped: hop-by-hop headers and `Content-Length`, which actix-web writes
/// from the body it streams.
pub(crate) fn forward_downstream(name: &HeaderName, connection: Option<&HeaderValue>) -> bool {
    match *name {
        CONTENT_LENGTH | CONNECTION | TE | TRAILER | TRANSFER_ENCODING | UPGRADE => false,
        PROXY_AUTHORIZATION | PROXY_AUTHENTICATE => false,
        _ => !is_other_hop_by_hop(name.as_str(), connection),
    }
}

/// Copies the headers of `from` that `keep` lets through onto `to`.
///
/// Header values are reference counted, so a copy costs no allocation for
/// the value itself.
pub(crate) fn copy(
    from: &HeaderMap,
    to: &mut HeaderMap,
    keep: fn(&HeaderName, Option<&HeaderValue>) -> bool,
) {
    let connection = from.get(CONNECTION);

    for (name, value) in from.iter() {
        if keep(name, connection) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The hop-by-hop headers that have no constant in `http`: `Keep-Alive`,
/// every `Proxy-*`, and whatever the `Connection` header itself lists.
fn is_other_hop_by_hop(name: &str, connection: Option<&HeaderValue>) -> bool {
    if name == "keep-alive" || name.starts_with("proxy-") {
        return true;
    }

    let Some(listed) = connection.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    listed
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case(name))
}

/// Whether `name` may be configured as an extra header toward the upstream.
///
/// The proxy owns framing and routing headers; a configured `Host` or
/// `Transfer-Encoding` would break the request, so they are refused when the
/// upstream is built rather than silently overwritten per request.
pub(crate) fn configurable(name: &HeaderName) -> Result<(), &'static str> {
    match *name {
        HOST => Err("the proxy sets host to the upstream's"),
        CONTENT_LENGTH | TRANSFER_ENCODING | CONNECTION | TE | TRAILER | UPGRADE | EXPECT => {
            Err("it is a framing or hop-by-hop header")
        }
        _ if is_other_hop_by_hop(name.as_str(), None) => Err("it is a hop-by-hop header"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    #[test]
    fn credentials_origin_and_hop_by_hop_stay_behind() {
        for dropped in [
            "x-toolhive-auth",
            "authorization",
            "origin",
            "host",
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "content-length",
        ] {
            assert!(
                !forward_upstream(&name(dropped), None),
                "{dropped} was forwarded"
            );
        }
    }

    #[test]
    fn mcp_and_content_headers_pass_both_ways() {
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "mcp-method",
            "last-event-id",
            "content-type",
            "accept",
        ] {
            assert!(
                forward_upstream(&name(kept), None),
                "{kept} was dropped upstream"
            );
            assert!(
                forward_downstream(&name(kept), None),
                "{kept} was dropped downstream"
            );
        }
    }

    #[test]
    fn headers_listed_in_connection_are_hop_by_hop() {
        let listed = HeaderValue::from_static("close, X-Secret-Hop");

        assert!(!forward_upstream(&name("x-secret-hop"), Some(&listed)));
        assert!(!forward_downstream(&name("x-secret-hop"), Some(&listed)));
        assert!(forward_upstream(&name("x-other"), Some(&listed)));
    }

    #[test]
    fn framing_headers_cannot_be_configured() {
        assert!(configurable(&name("host")).is_err());
        assert!(configurable(&name("transfer-encoding")).is_err());
        assert!(configurable(&name("proxy-connection")).is_err());
        assert!(configurable(&name("authorization")).is_ok());
        assert!(configurable(&name("x-api-key")).is_ok());
    }
}
