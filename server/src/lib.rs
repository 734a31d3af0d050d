//! The serving side of thv-actor: the `SharedKeyAuth` middleware, the
//! DNS-rebinding guard, the HTTP proxy, stdio hosting, and `serve` itself.

pub mod auth;
pub mod config;
pub mod control;
pub mod demo;
mod error;
pub mod guard;
pub mod jsonrpc;
pub mod proxy;
pub mod serve;
pub mod state;
pub mod stdio;

pub use error::Error;
