//! The [`KeyStore`] actor: the one owner of keychain access.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::backend::{Backend, BackendKind};
use crate::error::Error;
use crate::records::{KeyInfo, KeySet, Records, Rotated};
use crate::supervise::RestartTracker;
use crate::WorkloadName;

/// Owns every keychain call: generates, reads, rotates and deletes keys.
///
/// Keychain calls block (a Secret Service call is a D-Bus round trip), so the
/// actor runs on a [`SyncArbiter`] thread of its own and never on an async
/// worker. One thread serialises the calls of this process; a lock file
/// serialises updates across processes (see the entry layout in
/// [`crate::records`]).
///
/// # Supervision
///
/// A panic inside a backend call is caught: the caller gets
/// [`Error::ActorFailed`], the actor stops, and the arbiter builds a fresh
/// one (after a backoff when restarts come in a storm; each is logged at
/// warn with a count). Messages queued behind the failed one are kept and
/// answered by the new actor. A message whose handler panicked may or may not
/// have reached the keychain.
///
/// # Example
///
/// ```no_run
/// use thv_actors::{Backend, BackendChoice, CreateKey, KeyStore, WorkloadName};
///
/// # async fn demo() -> Result<(), thv_actors::Error> {
/// let backend = Backend::open(BackendChoice::Auto)?;
/// let keystore = KeyStore::start(backend)?;
/// let name = WorkloadName::new("time")?;
/// let created = keystore
///     .send(CreateKey { workload: name })
///     .await
///     .map_err(|e| thv_actors::Error::from_mailbox("keystore", e))??;
/// # let _ = created;
/// # Ok(()) }
/// ```
pub struct KeyStore {
    records: Records,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

impl KeyStore {
    /// Starts the actor on its own thread. Call inside a running actix
    /// `System`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directory of the cross-process lock
    /// ([`crate::keystore_lock_dir`]) cannot be created.
    pub fn start(backend: Backend) -> Result<Addr<KeyStore>, Error> {
        KeyStore::start_tracked(backend, RestartTracker::new())
    }

    /// As [`KeyStore::start`], counting restarts in `restarts`.
    ///
    /// # Errors
    ///
    /// As [`KeyStore::start`].
    pub fn start_tracked(
        backend: Backend,
        restarts: RestartTracker,
    ) -> Result<Addr<KeyStore>, Error> {
        let lock_dir: PathBuf = crate::paths::keystore_lock_dir()?;
        let started = std::sync::atomic::AtomicBool::new(false);
        Ok(SyncArbiter::start(1, move || {
            // The arbiter calls this once at start and again each time the
            // actor stops; every call after the first is a restart.
            if started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let backoff = restarts.record("keystore");
                // A sync actor's own thread: sleeping here delays only the
                // keychain calls, which would fail the same way right now.
                std::thread::sleep(backoff);
            }
            KeyStore {
                records: Records::new(backend.clone(), &lock_dir),
                #[cfg(feature = "fault-injection")]
                panic_next: false,
            }
        }))
    }

    /// Runs one keychain operation, turning a panic into
    /// [`Error::ActorFailed`] and a restart.
    fn guarded<T>(
        &mut self,
        ctx: &mut SyncContext<Self>,
        op: &'static str,
        f: impl FnOnce(&Records) -> Result<T, Error>,
    ) -> Result<T, Error> {
        #[cfg(feature = "fault-injection")]
        let inject = std::mem::take(&mut self.panic_next);
        let records = &self.records;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if inject {
                panic!("injected keystore fault");
            }
            f(records)
        }));
        match outcome {
            Ok(result) => {
                if let Err(err) = &result {
                    tracing::debug!(op, error = %err, "keystore operation failed");
                }
                result
            }
            Err(_) => {
                tracing::error!(op, "keystore backend call panicked; restarting the actor");
                ctx.stop();
                Err(Error::ActorFailed { actor: "keystore" })
            }
        }
    }
}

impl Actor for KeyStore {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(keystore = %self.records.backend().kind(), "keystore actor started");
    }
}

/// Generate and store a key for `workload` unless it has one. Answers
/// whether a key was created.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, Error>")]
pub struct CreateKey {
    /// The workload.
    pub workload: WorkloadName,
}

/// The current key of `workload` and the previous keys still valid.
#[derive(Debug, Message)]
#[rtype(result = "Result<KeySet, Error>")]
pub struct GetKeys {
    /// The workload.
    pub workload: WorkloadName,
}

/// Make a new current key; the old one stays valid for `overlap`.
#[derive(Debug, Message)]
#[rtype(result = "Result<Rotated, Error>")]
pub struct RotateKey {
    /// The workload.
    pub workload: WorkloadName,
    /// How long the replaced key keeps working; zero revokes it at once.
    pub overlap: Duration,
}

/// Delete every key of `workload`. Answers whether there was any.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, Error>")]
pub struct DeleteKeys {
    /// The workload.
    pub workload: WorkloadName,
}

/// Workloads with keys, with their times; never the keys.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<KeyInfo>, Error>")]
pub struct ListKeys;

/// The times of one workload's keys (`None` when it has none); one keychain
/// read, where [`ListKeys`] reads every workload's.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<KeyInfo>, Error>")]
pub struct GetKeyInfo {
    /// The workload.
    pub workload: WorkloadName,
}

/// Delete previous keys of `workload` whose overlap has ended. Answers
/// whether any were.
#[derive(Debug, Message)]
#[rtype(result = "Result<bool, Error>")]
pub struct PruneKeys {
    /// The workload.
    pub workload: WorkloadName,
}

/// Keep the backend's storage alive (the kernel keyring's persistent
/// keyring expires after days unused).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct RefreshBackend;

/// Which backend this KeyStore uses.
#[derive(Debug, Message)]
#[rtype(result = "BackendKind")]
pub struct WhichBackend;

/// Test builds only: the next keychain operation panics inside the backend
/// call.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InjectBackendPanic;

impl Handler<CreateKey> for KeyStore {
    type Result = Result<bool, Error>;

    fn handle(&mut self, msg: CreateKey, ctx: &mut Self::Context) -> Self::Result {
        let created = self.guarded(ctx, "create", |r| r.create(&msg.workload))?;
        if created {
            tracing::info!(workload = %msg.workload, "key created");
        }
        Ok(created)
    }
}

impl Handler<GetKeys> for KeyStore {
    type Result = Result<KeySet, Error>;

    fn handle(&mut self, msg: GetKeys, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "get", |r| r.get(&msg.workload, SystemTime::now()))
    }
}

impl Handler<RotateKey> for KeyStore {
    type Result = Result<Rotated, Error>;

    fn handle(&mut self, msg: RotateKey, ctx: &mut Self::Context) -> Self::Result {
        let rotated = self.guarded(ctx, "rotate", |r| {
            r.rotate(&msg.workload, msg.overlap, SystemTime::now())
        })?;
        tracing::info!(
            workload = %msg.workload,
            overlap_s = msg.overlap.as_secs(),
            previous_valid = rotated.previous_count,
            "key rotated"
        );
        Ok(rotated)
    }
}

impl Handler<DeleteKeys> for KeyStore {
    type Result = Result<bool, Error>;

    fn handle(&mut self, msg: DeleteKeys, ctx: &mut Self::Context) -> Self::Result {
        let existed = self.guarded(ctx, "delete", |r| r.delete(&msg.workload))?;
        tracing::info!(workload = %msg.workload, existed, "keys deleted");
        Ok(existed)
    }
}

impl Handler<ListKeys> for KeyStore {
    type Result = Result<Vec<KeyInfo>, Error>;

    fn handle(&mut self, _msg: ListKeys, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "list", Records::list)
    }
}

impl Handler<GetKeyInfo> for KeyStore {
    type Result = Result<Option<KeyInfo>, Error>;

    fn handle(&mut self, msg: GetKeyInfo, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "info", |r| r.info(&msg.workload))
    }
}

impl Handler<PruneKeys> for KeyStore {
    type Result = Result<bool, Error>;

    fn handle(&mut self, msg: PruneKeys, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "prune", |r| r.prune(&msg.workload, SystemTime::now()))
    }
}

impl Handler<RefreshBackend> for KeyStore {
    type Result = Result<(), Error>;

    fn handle(&mut self, _msg: RefreshBackend, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, "refresh", |r| r.backend().refresh())
    }
}

impl Handler<WhichBackend> for KeyStore {
    type Result = MessageResult<WhichBackend>;

    fn handle(&mut self, _msg: WhichBackend, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.records.backend().kind())
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectBackendPanic> for KeyStore {
    type Result = ();

    fn handle(&mut self, _msg: InjectBackendPanic, _ctx: &mut Self::Context) {
        tracing::warn!("fault injection: the next keystore operation will panic");
        self.panic_next = true;
    }
}
