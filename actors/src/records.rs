//! The keychain schema: which entries hold a workload's keys and metadata,
//! and the create / get / rotate / delete / list operations on them.
//!
//! Every entry belongs to service `thv-actor`. For workload `<name>`:
//!
//! | account | holds |
//! |---|---|
//! | `workload:<name>:shared-key` | the current key, 43 characters of base64url |
//! | `workload:<name>:shared-key:previous` | JSON `[{"key": "...", "expires_at": <unix s>}]`: keys still inside a rotation overlap |
//! | `workload:<name>:shared-key:meta` | JSON `{"created_at", "rotated_at", "previous_expiries"}` in unix seconds; no key |
//! | `index:workloads` | JSON list of the workload names that have keys (a keychain cannot be listed portably) |
//!
//! Updates from several processes are serialised by an exclusive `flock` on
//! `keystore.lock` in the user's own state directory
//! ([`crate::keystore_lock_dir`]), so two `key create` runs of the
//! same workload cannot store two different keys, and the index loses no
//! name.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::backend::Backend;
use crate::error::Error;
use crate::key::SharedKey;
use crate::name::WorkloadName;

const INDEX_ACCOUNT: &str = "index:workloads";

/// The keys a workload accepts now.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// The key bridges should send.
    pub current: SharedKey,
    /// Keys replaced by a rotation, each valid until its expiry.
    pub previous: Vec<PreviousKey>,
}

impl KeySet {
    /// Whether `presented` is the current key or a previous key that has not
    /// expired at `now`. Constant time in the number of keys.
    pub fn accepts(&self, presented: &SharedKey, now: SystemTime) -> bool {
        let live = self.previous.iter().filter(|p| p.expires_at > now);
        presented.ct_eq_any(std::iter::once(&self.current).chain(live.map(|p| &p.key)))
    }
}

/// A key kept valid for the overlap after a rotation.
#[derive(Debug, Clone)]
pub struct PreviousKey {
    /// The key.
    pub key: SharedKey,
    /// When it stops being accepted.
    pub expires_at: SystemTime,
}

/// What `list` shows of a workload: times, never keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// The workload.
    pub workload: WorkloadName,
    /// When its first key was made.
    #[serde(with = "unix_seconds")]
    pub created_at: SystemTime,
    /// When it was last rotated, if ever.
    #[serde(with = "unix_seconds::option")]
    pub rotated_at: Option<SystemTime>,
    /// Until when each previous key stays valid, soonest first.
    #[serde(with = "unix_seconds::vec")]
    pub previous_expiries: Vec<SystemTime>,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// Until when the key that was current stays valid; `None` when the
    /// overlap was zero and it was revoked at once.
    pub previous_valid_until: Option<SystemTime>,
    /// How many previous keys are valid after the rotation.
    pub previous_count: usize,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Meta {
    created_at: u64,
    rotated_at: Option<u64>,
    #[serde(default)]
    previous_expiries: Vec<u64>,
}

/// A previous key as stored; its text is wiped on drop.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPrevious {
    key: String,
    expires_at: u64,
}

fn current_account(w: &WorkloadName) -> String {
    format!("workload:{w}:shared-key")
}

fn previous_account(w: &WorkloadName) -> String {
    format!("workload:{w}:shared-key:previous")
}

fn meta_account(w: &WorkloadName) -> String {
    format!("workload:{w}:shared-key:meta")
}

/// The key records in one backend, with the cross-process lock.
#[derive(Debug)]
pub struct Records {
    backend: Backend,
    lock_path: PathBuf,
}

impl Records {
    /// Records in `backend`, with updates serialised by a lock file in
    /// `lock_dir` (see [`crate::keystore_lock_dir`]).
    pub fn new(backend: Backend, lock_dir: &Path) -> Records {
        Records {
            backend,
            lock_path: lock_dir.join("keystore.lock"),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Generates and stores a key unless the workload has one. `true` when
    /// it made one.
    pub fn create(&self, workload: &WorkloadName) -> Result<bool, Error> {
        let _lock = self.lock()?;

        if self.backend.get(&current_account(workload))?.is_some() {
            self.index_add(workload)?;
            return Ok(false);
        }

        let key = SharedKey::generate();
        self.backend
            .set(&current_account(workload), &key.expose_encoded())?;
        let meta = Meta {
            created_at: unix(SystemTime::now()),
            ..Meta::default()
        };
        self.write_meta(workload, &meta)?;
        self.index_add(workload)?;
        Ok(true)
    }

    /// The current key and the previous keys still valid at `now`. Expired
    /// previous keys found on the way are deleted from the keychain.
    pub fn get(&self, workload: &WorkloadName, now: SystemTime) -> Result<KeySet, Error> {
        let current = self.read_current(workload)?;
        let stored = self.read_previous(workload)?;

        let now_s = unix(now);
        if stored.iter().any(|p| p.expires_at <= now_s) {
            self.prune(workload, now)?;
        }

        let mut previous = Vec::new();
        for entry in stored.iter().filter(|p| p.expires_at > now_s) {
            previous.push(PreviousKey {
                key: parse_stored(&entry.key, &previous_account(workload))?,
                expires_at: from_unix(entry.expires_at),
            });
        }
        Ok(KeySet { current, previous })
    }

    /// Makes a new current key; the old one stays valid for `overlap` (not
    /// at all when zero). Previous keys still inside their own overlap are
    /// kept.
    pub fn rotate(
        &self,
        workload: &WorkloadName,
        overlap: Duration,
        now: SystemTime,
    ) -> Result<Rotated, Error> {
        let _lock = self.lock()?;

        let old = self.read_current(workload)?;
        let now_s = unix(now);
        let mut previous: Vec<StoredPrevious> = self
            .read_previous(workload)?
            .into_iter()
            .filter(|p| p.expires_at > now_s)
            .collect();
        let valid_until = if overlap.is_zero() {
            None
        } else {
            let until = now_s
                .checked_add(overlap.as_secs().max(1))
                .filter(|t| *t < i64::MAX as u64)
                .ok_or(Error::OverlapTooLong {
                    seconds: overlap.as_secs(),
                })?;
            previous.push(StoredPrevious {
                key: old.expose_encoded().to_string(),
                expires_at: until,
            });
            Some(until)
        };

        // The previous keys are written before the current key changes: a
        // crash in between leaves the old key both current and previous,
        // which accepts exactly what it did before.
        self.write_previous(workload, &previous)?;
        let key = SharedKey::generate();
        self.backend
            .set(&current_account(workload), &key.expose_encoded())?;

        let mut meta = self.read_meta(workload)?.unwrap_or(Meta {
            created_at: now_s,
            ..Meta::default()
        });
        meta.rotated_at = Some(now_s);
        meta.previous_expiries = previous.iter().map(|p| p.expires_at).collect();
        meta.previous_expiries.sort_unstable();
        self.write_meta(workload, &meta)?;

        Ok(Rotated {
            previous_valid_until: valid_until.map(from_unix),
            previous_count: meta.previous_expiries.len(),
        })
    }

    /// Deletes every key and record of the workload. `true` when there was
    /// anything to delete.
    pub fn delete(&self, workload: &WorkloadName) -> Result<bool, Error> {
        let _lock = self.lock()?;

        let mut existed = self.backend.delete(&current_account(workload))?;
        existed |= self.backend.delete(&previous_account(workload))?;
        existed |= self.backend.delete(&meta_account(workload))?;
        existed |= self.index_remove(workload)?;
        Ok(existed)
    }

    /// The times of one workload's keys, `None` when it has none.
    pub fn info(&self, workload: &WorkloadName) -> Result<Option<KeyInfo>, Error> {
        let Some(meta) = self.read_meta(workload)? else {
            return Ok(None);
        };
        Ok(Some(info_from(workload.clone(), meta)))
    }

    /// Every workload with a key, with its times, sorted by name.
    pub fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        let mut infos = Vec::new();
        for workload in self.read_index()? {
            // An index entry without records is left by a process that died
            // between writes; it is not a workload with a key.
            let Some(meta) = self.read_meta(&workload)? else {
                continue;
            };
            infos.push(info_from(workload, meta));
        }
        Ok(infos)
    }

    /// Removes previous keys that expired by `now`. `true` when any did.
    pub fn prune(&self, workload: &WorkloadName, now: SystemTime) -> Result<bool, Error> {
        let _lock = self.lock()?;

        let now_s = unix(now);
        let mut stored = self.read_previous(workload)?;
        let before = stored.len();
        stored.retain(|p| p.expires_at > now_s);
        if stored.len() == before {
            return Ok(false);
        }

        if stored.is_empty() {
            self.backend.delete(&previous_account(workload))?;
        } else {
            self.write_previous(workload, &stored)?;
        }
        if let Some(mut meta) = self.read_meta(workload)? {
            meta.previous_expiries = stored.iter().map(|p| p.expires_at).collect();
            meta.previous_expiries.sort_unstable();
            self.write_meta(workload, &meta)?;
        }
        Ok(true)
    }

    fn read_current(&self, workload: &WorkloadName) -> Result<SharedKey, Error> {
        let account = current_account(workload);
        match self.backend.get(&account)? {
            Some(text) => parse_stored(&text, &account),
            None => Err(Error::NoKey {
                workload: workload.clone(),
            }),
        }
    }

    fn read_previous(&self, workload: &WorkloadName) -> Result<Vec<StoredPrevious>, Error> {
        let account = previous_account(workload);
        match self.backend.get(&account)? {
            Some(text) => serde_json::from_str(&text).map_err(|_| Error::CorruptEntry {
                account,
                reason: "not a JSON list of previous keys",
            }),
            None => Ok(Vec::new()),
        }
    }

    fn write_previous(
        &self,
        workload: &WorkloadName,
        previous: &[StoredPrevious],
    ) -> Result<(), Error> {
        let account = previous_account(workload);
        if previous.is_empty() {
            self.backend.delete(&account)?;
            return Ok(());
        }
        let text = Zeroizing::new(serde_json::to_string(previous).expect("plain data serialises"));
        self.backend.set(&account, &text)
    }

    fn read_meta(&self, workload: &WorkloadName) -> Result<Option<Meta>, Error> {
        let account = meta_account(workload);
        match self.backend.get(&account)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| Error::CorruptEntry {
                    account,
                    reason: "not key metadata JSON",
                }),
            None => Ok(None),
        }
    }

    fn write_meta(&self, workload: &WorkloadName, meta: &Meta) -> Result<(), Error> {
        let text = serde_json::to_string(meta).expect("plain data serialises");
        self.backend.set(&meta_account(workload), &text)
    }

    fn read_index(&self) -> Result<Vec<WorkloadName>, Error> {
        let Some(text) = self.backend.get(INDEX_ACCOUNT)? else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = serde_json::from_str(&text).map_err(|_| Error::CorruptEntry {
            account: INDEX_ACCOUNT.to_owned(),
            reason: "not a JSON list of names",
        })?;
        // A name that fails validation was not written by us; skip it
        // rather than refuse to list the rest.
        let mut names: Vec<WorkloadName> = names
            .iter()
            .filter_map(|n| WorkloadName::new(n).ok())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn index_add(&self, workload: &WorkloadName) -> Result<(), Error> {
        let mut names = self.read_index()?;
        if names.contains(workload) {
            return Ok(());
        }
        names.push(workload.clone());
        names.sort();
        self.write_index(&names)
    }

    fn index_remove(&self, workload: &WorkloadName) -> Result<bool, Error> {
        let mut names = self.read_index()?;
        let before = names.len();
        names.retain(|n| n != workload);
        if names.len() == before {
            return Ok(false);
        }
        self.write_index(&names)?;
        Ok(true)
    }

    fn write_index(&self, names: &[WorkloadName]) -> Result<(), Error> {
        let text = serde_json::to_string(names).expect("plain data serialises");
        self.backend.set(INDEX_ACCOUNT, &text)
    }

    fn lock(&self) -> Result<FileLock, Error> {
        FileLock::exclusive(&self.lock_path)
    }
}

fn info_from(workload: WorkloadName, meta: Meta) -> KeyInfo {
    KeyInfo {
        workload,
        created_at: from_unix(meta.created_at),
        rotated_at: meta.rotated_at.map(from_unix),
        // Every expiry, passed or not: an expired one that is still listed
        // tells the caller that pruning is due.
        previous_expiries: meta.previous_expiries.into_iter().map(from_unix).collect(),
    }
}

fn parse_stored(text: &str, account: &str) -> Result<SharedKey, Error> {
    SharedKey::parse(text).map_err(|_| Error::CorruptEntry {
        account: account.to_owned(),
        reason: "not a 43-character base64url key",
    })
}

impl Drop for StoredPrevious {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
    }
}

/// An exclusive advisory lock, released on drop.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock, Error> {
        let io_err = |what, source| Error::Io {
            what,
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_err("cannot open the keystore lock", e))?;
        file.lock().map_err(|e| io_err("cannot lock", e))?;
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::unix(*t))
    }

    pub mod option {
        use std::time::SystemTime;

        pub fn serialize<S: serde::Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&super::super::unix(*t)),
                None => s.serialize_none(),
            }
        }
    }

    pub mod vec {
        use std::time::SystemTime;

        pub fn serialize<S: serde::Serializer>(t: &[SystemTime], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(t.iter().map(|t| super::super::unix(*t)))
        }
    }
}
