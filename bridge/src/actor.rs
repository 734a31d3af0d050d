//! The Bridge actor: takes the client's messages in stdin order and starts
//! the HTTP work for each on its own context.

use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use actix::prelude::*;
use futures_util::future::{LocalBoxFuture, Shared};
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::rpc::{method, Claim};
use crate::upstream::Upstream;

/// A method that makes the handler panic, so tests can watch the restart.
#[cfg(test)]
pub(crate) const PANIC_IN_HANDLER: &str = "thv-bridge/test/panic-in-handler";
/// A method that makes the spawned work panic.
#[cfg(test)]
pub(crate) const PANIC_IN_WORK: &str = "thv-bridge/test/panic-in-work";

/// One stdio session's actor.
///
/// # Supervision
///
/// Started under [`actix::Supervisor`]. A panic in a handler or in the work
/// it spawned is caught and turned into a stop, which the supervisor turns
/// into a restart with the same [`Upstream`] (session, key and handshake
/// survive). Work in flight at that moment is dropped; each dropped request's
/// [`Claim`] answers it with an error. Messages still in the mailbox are
/// handled after the restart.
pub(crate) struct Bridge {
    upstream: Rc<Upstream>,
    /// Resolves when the last handshake message (`initialize` or
    /// `notifications/initialized`) has been delivered; later messages wait
    /// for it, so the workload never sees them out of handshake order.
    barrier: Option<Shared<LocalBoxFuture<'static, ()>>>,
}

impl Bridge {
    pub(crate) fn new(upstream: Rc<Upstream>) -> Self {
        Bridge {
            upstream,
            barrier: None,
        }
    }

    fn dispatch(&mut self, outbound: Outbound, ctx: &mut Context<Self>) {
        let Outbound { message, claim } = outbound;
        let method = method(&message).unwrap_or_default().to_string();

        #[cfg(test)]
        if method == PANIC_IN_HANDLER {
            panic!("injected panic in the bridge handler");
        }

        if method == "notifications/cancelled" && !self.upstream.client_cancelled(&message) {
            return;
        }

        // Handshake messages become the barrier that later ones wait on.
        let wait = self.barrier.clone();
        let done_tx = if matches!(method.as_str(), "initialize" | "notifications/initialized") {
            let (done_tx, done_rx) = oneshot::channel::<()>();
            self.barrier = Some(done_rx.map(drop).boxed_local().shared());
            Some(done_tx)
        } else {
            None
        };

        let upstream = self.upstream.clone();
        let work = async move {
            if let Some(wait) = wait {
                wait.await;
            }

            #[cfg(test)]
            if method == PANIC_IN_WORK {
                panic!("injected panic in the bridge's work");
            }

            upstream.forward(message, claim).await;
            drop(done_tx);
        };

        let work = AssertUnwindSafe(work).catch_unwind();
        ctx.spawn(work.into_actor(self).map(|result, _, ctx| {
            if result.is_err() {
                tracing::error!(
                    outcome = "panic",
                    "bridge work panicked; restarting the actor"
                );
                ctx.stop();
            }
        }));
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        tracing::debug!("bridge actor started");
        // After a restart, reopen the GET stream if it was lost.
        self.upstream.ensure_get_stream();
    }
}

impl Supervised for Bridge {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::warn!(outcome = "restart", "bridge actor restarting");
        self.barrier = None;
    }
}

/// One message read from stdin, with the claim of its pending entry when it
/// is a request.
pub(crate) struct Outbound {
    pub(crate) message: Value,
    pub(crate) claim: Option<Claim>,
}

impl Message for Outbound {
    type Result = ();
}

impl Handler<Outbound> for Bridge {
    type Result = ();

    fn handle(&mut self, outbound: Outbound, ctx: &mut Context<Self>) {
        // A panic here would end the actor's task for good; caught, it is a
        // stop, and the supervisor restarts. The message's claim is dropped
        // while unwinding, which answers the request.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.dispatch(outbound, ctx)));
        if result.is_err() {
            tracing::error!(
                outcome = "panic",
                "bridge handler panicked; restarting the actor"
            );
            ctx.stop();
        }
    }
}

/// Ends the session with the workload (DELETE) before the bridge exits.
pub(crate) struct Close;

impl Message for Close {
    type Result = ();
}

impl Handler<Close> for Bridge {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, _ctx: &mut Context<Self>) -> Self::Result {
        let upstream = self.upstream.clone();
        Box::pin(async move { upstream.close().await })
    }
}
