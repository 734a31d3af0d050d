//! Reaching a workload that `thv-actor serve` publishes on a Unix socket
//! (`listen = "unix:/abs/path.sock"`, published as `unix:/abs/path.sock`).
//!
//! The URL names the socket and nothing else: the MCP endpoint behind it is
//! `/mcp` for streamable HTTP and `/sse` for the legacy transport, as serve
//! routes them. Requests are written as `http://localhost/...` (so `Host:
//! localhost`, which serve's loopback guard accepts) and every connection
//! awc makes, whatever host it was asked for, goes to the socket.
//!
//! Elsewhere than on Unix a `unix:` URL is refused by [`check`] and the
//! connector is not built.

use std::path::Path;

#[cfg(unix)]
use crate::Transport;

#[cfg(unix)]
pub(crate) use connect::client;

/// The prefix of a Unix-socket workload URL.
pub(crate) const SCHEME: &str = "unix:";

/// The socket path of a `unix:/abs/path` URL, or `None` for any other URL.
pub(crate) fn socket_path(url: &str) -> Option<&Path> {
    url.strip_prefix(SCHEME).map(Path::new)
}

/// Why `url`, which starts with `unix:`, cannot name a socket, if it cannot.
pub(crate) fn check(url: &str) -> Result<(), &'static str> {
    if !cfg!(unix) {
        return Err("unix: urls need a Unix system; use the workload's http:// url");
    }
    let path = socket_path(url).ok_or("not a unix: url")?;
    if !path.is_absolute() {
        return Err("a unix: url names an absolute socket path (unix:/run/x.sock)");
    }
    if path.as_os_str().len() >= 108 {
        // sun_path holds 108 bytes with the terminating nul.
        return Err("the socket path is longer than a unix socket address allows");
    }
    Ok(())
}

/// The HTTP URL requests over the socket are written to.
#[cfg(unix)]
pub(crate) fn http_url(transport: Transport) -> String {
    match transport {
        Transport::StreamableHttp => "http://localhost/mcp".into(),
        Transport::Sse => "http://localhost/sse".into(),
    }
}

#[cfg(unix)]
mod connect {
    use std::future::Future;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::rc::Rc;

    use actix_rt::net::UnixStream;
    use actix_service::Service;
    use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
    use awc::http::Uri;

    /// An HTTP client whose every connection is to the socket at `path`, with
    /// no overall timeout (as the TCP client: heads are timed per request).
    ///
    /// A missing socket file or one nobody listens on is a connect error, so
    /// the bridge treats it as "serve not up yet" and retries until its
    /// `connect_wait`.
    pub(crate) fn client(path: PathBuf) -> awc::Client {
        let connector = awc::Connector::new().connector(UnixConnector {
            path: Rc::new(path),
        });
        awc::Client::builder()
            .disable_timeout()
            .connector(connector)
            .finish()
    }

    /// Connects to one socket, ignoring the host and port awc asks for.
    #[derive(Clone, Debug)]
    struct UnixConnector {
        path: Rc<PathBuf>,
    }

    impl Service<ConnectInfo<Uri>> for UnixConnector {
        type Response = Connection<Uri, UnixStream>;
        type Error = ConnectError;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

        actix_service::always_ready!();

        fn call(&self, info: ConnectInfo<Uri>) -> Self::Future {
            let path = self.path.clone();
            let uri = info.request().clone();
            Box::pin(async move {
                let stream = UnixStream::connect(&*path)
                    .await
                    .map_err(ConnectError::Io)?;
                Ok(Connection::new(uri, stream))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_url_names_an_absolute_socket_and_nothing_else() {
        assert_eq!(
            socket_path("unix:/run/thv/a.sock"),
            Some(Path::new("/run/thv/a.sock"))
        );
        assert_eq!(socket_path("http://127.0.0.1:1/mcp"), None);
        assert!(check("unix:/run/thv/a.sock").is_ok());
        assert!(check("unix:run/a.sock").is_err());
        assert!(check("unix:").is_err());
        assert!(check(&format!("unix:/{}", "x".repeat(120))).is_err());
        assert_eq!(http_url(Transport::StreamableHttp), "http://localhost/mcp");
        assert_eq!(http_url(Transport::Sse), "http://localhost/sse");
    }
}
