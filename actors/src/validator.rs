//! The [`Validator`] actor: the key cache the request path asks.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::keystore::{GetKeys, KeyStore};
use crate::records::KeySet;
use crate::supervise::RestartTracker;
use crate::{SharedKey, WorkloadName};

/// How long cached keys are trusted before the keychain is asked again.
pub const DEFAULT_REFRESH: Duration = Duration::from_millis(500);

/// How long cached keys keep validating while the keychain cannot be
/// reached.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(300);

/// How a [`Validator`] caches.
#[derive(Debug, Clone, Copy)]
pub struct ValidatorConfig {
    /// Cached keys older than this are re-read from the KeyStore before they
    /// answer; so a key rotated away or deleted by another process stops
    /// validating within this long.
    pub refresh: Duration,
    /// While the keychain is unreachable, cached keys keep validating until
    /// they are this old (counted from the last successful read), then
    /// validation fails closed.
    pub max_stale: Duration,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        ValidatorConfig {
            refresh: DEFAULT_REFRESH,
            max_stale: DEFAULT_MAX_STALE,
        }
    }
}

/// The answer to [`Validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key is the workload's current key or a previous key inside its
    /// overlap.
    Accepted,
    /// The workload has keys and this is none of them.
    WrongKey,
    /// The workload has no key at all (never created, or deleted).
    NoKey,
}

/// Is `presented` a valid key of `workload`?
///
/// Answers `Err` only when the Validator cannot decide (the keychain is
/// unreachable and nothing usable is cached, or the actor failed): callers
/// must then refuse the request, never pass it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Verdict, Error>")]
pub struct Validate {
    /// The workload the request is for.
    pub workload: WorkloadName,
    /// The key the request carried, already parsed.
    pub presented: SharedKey,
}

/// Forget cached keys: of one workload, or of all with `None`. Sent after a
/// rotation or deletion.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Invalidate {
    /// The workload, or every workload.
    pub workload: Option<WorkloadName>,
}

/// Read `workload`'s keys into the cache now, before any request needs
/// them: a Validator that has never read a workload's keys has nothing to
/// validate with during a keychain outage.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Preload {
    /// The workload.
    pub workload: WorkloadName,
}

/// Test builds only: the next validation panics inside the handler.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InjectValidatorPanic;

/// Caches each workload's valid keys and answers [`Validate`].
///
/// On a miss, or when the cached keys are older than
/// [`ValidatorConfig::refresh`], it asks the [`KeyStore`]; concurrent
/// validations of one workload share that one read. Comparisons are constant
/// time over every valid key.
///
/// # Keychain outages
///
/// "Keychain unreachable" and "key gone" are told apart: when the KeyStore
/// answers that the workload has no key, the cache entry is dropped and
/// validation answers [`Verdict::NoKey`]; when it cannot reach the keychain,
/// the cached keys keep answering (with a warning) until they are
/// [`ValidatorConfig::max_stale`] old, and after that validation fails with
/// the error.
///
/// # Supervision
///
/// Start it with [`Validator::start`], under an [`actix::Supervisor`]. A
/// panic while validating is caught: that caller gets
/// [`Error::ActorFailed`], validations waiting on a keychain read get the
/// same, and the actor restarts with an empty cache. Messages still queued
/// in the mailbox survive the restart.
///
/// # Example
///
/// ```no_run
/// use thv_actors::{KeyStore, Validate, Validator, ValidatorConfig, Verdict};
/// # async fn demo(keystore: actix::Addr<KeyStore>, key: thv_actors::SharedKey)
/// # -> Result<(), thv_actors::Error> {
/// let validator = Validator::start(keystore, ValidatorConfig::default());
/// let verdict = validator
///     .send(Validate { workload: "time".parse()?, presented: key })
///     .await
///     .map_err(|e| thv_actors::Error::from_mailbox("validator", e))??;
/// assert_eq!(verdict, Verdict::Accepted);
/// # Ok(()) }
/// ```
pub struct Validator {
    keystore: Addr<KeyStore>,
    config: ValidatorConfig,
    restarts: RestartTracker,
    cache: HashMap<WorkloadName, Cached>,
    waiting: HashMap<WorkloadName, Vec<Waiter>>,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

struct Cached {
    keys: KeySet,
    /// When the KeyStore last answered with these keys.
    verified_at: Instant,
    /// When the KeyStore was last asked, successfully or not.
    asked_at: Instant,
}

struct Waiter {
    presented: SharedKey,
    reply_tx: oneshot::Sender<Result<Verdict, Error>>,
}

impl Validator {
    /// Starts a supervised Validator on the current arbiter.
    pub fn start(keystore: Addr<KeyStore>, config: ValidatorConfig) -> Addr<Validator> {
        Validator::start_tracked(keystore, config, RestartTracker::new())
    }

    /// As [`Validator::start`], counting restarts in `restarts`.
    pub fn start_tracked(
        keystore: Addr<KeyStore>,
        config: ValidatorConfig,
        restarts: RestartTracker,
    ) -> Addr<Validator> {
        Supervisor::start(move |_| Validator {
            keystore,
            config,
            restarts,
            cache: HashMap::new(),
            waiting: HashMap::new(),
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        })
    }

    /// Decides from the cache, or `None` when the keychain must be asked.
    fn cached_verdict(&self, workload: &WorkloadName, presented: &SharedKey) -> Option<Verdict> {
        let cached = self.cache.get(workload)?;
        if cached.asked_at.elapsed() >= self.config.refresh {
            return None;
        }
        Some(verdict(&cached.keys, presented))
    }

    /// Asks the KeyStore for `workload`'s keys; the answer goes to
    /// [`Validator::finish_read`].
    fn read_keys(&mut self, workload: WorkloadName, ctx: &mut Context<Self>) {
        let read = self.keystore.send(GetKeys {
            workload: workload.clone(),
        });
        ctx.spawn(read.into_actor(self).map(move |res, act, _| {
            let res = res
                .map_err(|e| Error::from_mailbox("keystore", e))
                .and_then(|r| r);
            act.finish_read(workload, res);
        }));
    }

    /// Records the KeyStore's answer for `workload` and answers everyone
    /// waiting on it.
    fn finish_read(&mut self, workload: WorkloadName, read: Result<KeySet, Error>) {
        let waiters = self.waiting.remove(&workload).unwrap_or_default();
        let now = Instant::now();

        let outcome: Result<Option<&KeySet>, Error> = match read {
            Ok(keys) => {
                if !self.cache.contains_key(&workload) {
                    // Once per worker and workload, and after each
                    // invalidation: tests wait for it before an outage.
                    tracing::debug!(workload = %workload, "keys loaded into the validator cache");
                }
                let entry = Cached {
                    keys,
                    verified_at: now,
                    asked_at: now,
                };
                Ok(Some(
                    &self
                        .cache
                        .entry(workload.clone())
                        .insert_entry(entry)
                        .into_mut()
                        .keys,
                ))
            }
            Err(Error::NoKey { .. }) => {
                self.cache.remove(&workload);
                Ok(None)
            }
            Err(err) if err.is_keychain_unreachable() => match self.cache.get_mut(&workload) {
                Some(cached) if cached.verified_at.elapsed() < self.config.max_stale => {
                    tracing::warn!(
                        workload = %workload,
                        error = %err,
                        stale_s = cached.verified_at.elapsed().as_secs(),
                        "keychain unreachable; validating with cached keys"
                    );
                    // Ask again after another refresh interval, not on
                    // every request.
                    cached.asked_at = now;
                    Ok(Some(&cached.keys))
                }
                _ => {
                    self.cache.remove(&workload);
                    Err(err)
                }
            },
            Err(err) => Err(err),
        };

        match outcome {
            Ok(keys) => {
                for waiter in waiters {
                    let answer = keys.map_or(Verdict::NoKey, |k| verdict(k, &waiter.presented));
                    let _ = waiter.reply_tx.send(Ok(answer));
                }
            }
            Err(err) => {
                tracing::warn!(workload = %workload, error = %err, "cannot validate: keychain unreachable");
                for waiter in waiters {
                    let _ = waiter.reply_tx.send(Err(clone_unreachable(&err)));
                }
            }
        }
    }
}

fn verdict(keys: &KeySet, presented: &SharedKey) -> Verdict {
    if keys.accepts(presented, SystemTime::now()) {
        Verdict::Accepted
    } else {
        Verdict::WrongKey
    }
}

/// Errors are not `Clone` (their sources are boxed); waiters sharing one
/// failed read each get an equivalent error without the source.
fn clone_unreachable(err: &Error) -> Error {
    match err {
        Error::BackendUnavailable {
            backend,
            hint,
            source,
        } => Error::BackendUnavailable {
            backend: *backend,
            hint,
            source: source.to_string().into(),
        },
        Error::BackendLocked {
            backend,
            hint,
            source,
        } => Error::BackendLocked {
            backend: *backend,
            hint,
            source: source.to_string().into(),
        },
        Error::ActorFailed { actor } => Error::ActorFailed { actor },
        Error::ActorUnavailable { actor, reason } => Error::ActorUnavailable { actor, reason },
        _ => Error::ActorUnavailable {
            actor: "keystore",
            reason: "the keychain read failed",
        },
    }
}

impl Actor for Validator {
    type Context = Context<Self>;
}

impl Supervised for Validator {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        // Whoever waited on a keychain read gets an answer now rather than
        // a dropped channel later.
        for (_, waiters) in self.waiting.drain() {
            for waiter in waiters {
                let _ = waiter
                    .reply_tx
                    .send(Err(Error::ActorFailed { actor: "validator" }));
            }
        }
        self.cache.clear();

        let backoff = self.restarts.record("validator");
        if !backoff.is_zero() {
            // Hold the mailbox shut while backing off, so a storm of
            // failing messages cannot spin the arbiter.
            ctx.wait(actix::clock::sleep(backoff).into_actor(self));
        }
    }
}

impl Handler<Validate> for Validator {
    type Result = actix::Response<Result<Verdict, Error>>;

    fn handle(&mut self, msg: Validate, ctx: &mut Self::Context) -> Self::Result {
        #[cfg(feature = "fault-injection")]
        let inject = std::mem::take(&mut self.panic_next);
        let this = &*self;
        let cached = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if inject {
                panic!("injected validator fault");
            }
            this.cached_verdict(&msg.workload, &msg.presented)
        }));

        // A hit answers at once; the request path pays no allocation here.
        let cached = match cached {
            Ok(cached) => cached,
            Err(_) => {
                tracing::error!(workload = %msg.workload, "validator panicked; restarting it");
                ctx.stop();
                return actix::Response::reply(Err(Error::ActorFailed { actor: "validator" }));
            }
        };
        if let Some(verdict) = cached {
            return actix::Response::reply(Ok(verdict));
        }

        // A miss waits for one shared keychain read per workload.
        let (reply_tx, reply_rx) = oneshot::channel();
        let waiters = self.waiting.entry(msg.workload.clone()).or_default();
        let first = waiters.is_empty();
        waiters.push(Waiter {
            presented: msg.presented,
            reply_tx,
        });
        if first {
            self.read_keys(msg.workload, ctx);
        }
        actix::Response::fut(async move {
            reply_rx
                .await
                .unwrap_or(Err(Error::ActorFailed { actor: "validator" }))
        })
    }
}

impl Handler<Preload> for Validator {
    type Result = ();

    fn handle(&mut self, msg: Preload, ctx: &mut Self::Context) {
        let waiters = self.waiting.entry(msg.workload.clone()).or_default();
        if waiters.is_empty() {
            self.read_keys(msg.workload, ctx);
        }
    }
}

impl Handler<Invalidate> for Validator {
    type Result = ();

    fn handle(&mut self, msg: Invalidate, _ctx: &mut Self::Context) {
        match msg.workload {
            Some(workload) => {
                self.cache.remove(&workload);
            }
            None => self.cache.clear(),
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectValidatorPanic> for Validator {
    type Result = ();

    fn handle(&mut self, _msg: InjectValidatorPanic, _ctx: &mut Self::Context) {
        tracing::warn!("fault injection: the next validation will panic");
        self.panic_next = true;
    }
}

/// Every Validator of a process, so that a rotation or deletion reaches all
/// their caches (serve runs one Validator per worker thread, each asked
/// without crossing threads). Cheap to clone.
#[derive(Clone, Default)]
pub struct Validators {
    addrs: Arc<Mutex<Vec<Addr<Validator>>>>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validators").finish_non_exhaustive()
    }
}

impl Validators {
    /// An empty set.
    pub fn new() -> Validators {
        Validators::default()
    }

    /// Adds a Validator to be told of invalidations.
    pub fn register(&self, addr: &Addr<Validator>) {
        self.lock().push(addr.clone());
    }

    /// Tells every registered Validator to drop cached keys. Validators
    /// whose arbiter has gone are forgotten.
    pub fn invalidate(&self, workload: Option<&WorkloadName>) {
        let msg = Invalidate {
            workload: workload.cloned(),
        };
        self.lock()
            .retain(|addr| addr.connected() && addr.try_send(msg.clone()).is_ok());
    }

    /// Test builds only: the next validation of every Validator panics.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self) {
        for addr in self.lock().iter() {
            let _ = addr.try_send(InjectValidatorPanic);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Addr<Validator>>> {
        self.addrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
