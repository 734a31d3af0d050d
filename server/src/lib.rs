//! The serving side of thv-actor: the `SharedKeyAuth` middleware, the
//! DNS-rebinding guard, per-connection peer identity, the HTTP proxy, stdio
//! hosting, and `serve` itself.
//!
//! It does not manage keys (that is `thv-actors`), speak the client side of
//! MCP (that is `thv-bridge`), terminate TLS, or rate-limit.

pub mod auth;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod demo;
mod error;
pub mod guard;
pub mod jsonrpc;
pub mod peer;
pub mod proxy;
pub mod redact;
#[cfg(unix)]
pub mod serve;
pub mod state;
pub mod stdio;

pub use error::Error;
