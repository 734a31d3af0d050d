//! The crate's one error type, and the error a [`KeySource`](crate::KeySource)
//! returns.

use std::io;

/// Why [`run`](crate::run) or [`run_stdio`](crate::run_stdio) stopped.
///
/// Almost nothing stops a bridge: upstream failures (a refused key, serve not
/// running, an expired session) become JSON-RPC errors for the one request
/// they hit, and the session goes on. What is left here is what makes the
/// stdio session itself impossible.
///
/// # Security
///
/// No variant carries a key, and no message prints one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured URL is not an absolute `http://` or `unix:/path` URL.
    /// The caller (the CLI, from state it read) is at fault.
    #[error("invalid workload url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },

    /// Reading stdin failed for a reason other than end of file. The MCP
    /// client or the operating system is at fault.
    #[error("cannot read from stdin")]
    Stdin(#[source] io::Error),

    /// Writing or flushing stdout failed, usually because the MCP client went
    /// away without closing our stdin.
    #[error("cannot write to stdout")]
    Stdout(#[source] io::Error),

    /// The SIGTERM handler could not be installed. The operating system is at
    /// fault.
    #[error("cannot listen for sigterm")]
    Signal(#[source] io::Error),

    /// The Bridge actor could no longer be reached and its supervisor did not
    /// bring it back. An internal bug.
    #[error("bridge actor is gone (internal bug)")]
    ActorGone,
}

/// Why a [`KeySource`](crate::KeySource) could not produce a key.
///
/// The message is shown to the MCP client's user in a JSON-RPC error, so it
/// says what to do; it must never contain the key.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeySourceError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + 'static>>,
}

impl KeySourceError {
    /// An error with a message for the user, such as "no key for workload
    /// 'x' in the keystore: run thv-actor key show x".
    pub fn new(message: impl Into<String>) -> Self {
        KeySourceError {
            message: message.into(),
            source: None,
        }
    }

    /// The same, keeping the underlying cause as the error's source.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + 'static,
    ) -> Self {
        KeySourceError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}
