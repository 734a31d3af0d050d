//! The serving side of thv-actor: the `SharedKeyAuth` middleware, the
//! DNS-rebinding guard, the HTTP proxy, stdio hosting, and `serve` itself.

pub mod demo;
pub mod jsonrpc;
pub mod proxy;
pub mod stdio;
