//! serve's runtime state: which workloads run where, for `list`, `rm` and
//! the bridge.
//!
//! Files in the state directory ([`thv_actors::state_dir`]), none holding a
//! key:
//!
//! | file | holds |
//! |---|---|
//! | `serve.lock` | locked (`flock`) by the running serve for its lifetime; free means no serve |
//! | `serve.json` | [`ServeState`], written when every listener accepts connections, removed at exit |
//! | `ports.json` | the port each workload was given, reused on the next start |
//! | `control.sock` | serve's control socket (HTTP over a Unix socket, mode 0600) |

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The state file's format version.
pub const STATE_VERSION: u32 = 1;

/// What a running serve tells other processes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServeState {
    /// Format version.
    pub version: u32,
    /// serve's pid.
    pub pid: u32,
    /// The keystore serve uses (`secret-service`, `keyutils`, ...); the
    /// bridge uses the same.
    pub keystore: thv_actors::BackendKind,
    /// The session bus serve reached the Secret Service on, for a bridge
    /// started without `DBUS_SESSION_BUS_ADDRESS`.
    pub dbus_session_bus_address: Option<String>,
    /// The control socket.
    pub control_socket: PathBuf,
    /// The workloads, in config order.
    pub workloads: Vec<WorkloadState>,
}

/// One workload as `list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadState {
    /// Its name.
    pub name: String,
    /// What a client connects to.
    pub url: String,
    /// What a client speaks to serve: `streamable-http` or `sse`.
    pub transport: String,
    /// What serve speaks to the workload: `stdio`, `streamable-http`, `sse`.
    pub upstream: String,
    /// Whether the key is required.
    pub shared_key_auth: bool,
    /// serve's pid.
    pub pid: u32,
}

/// The lock that makes one serve per state directory. Held until dropped;
/// the kernel releases it if serve dies, so stale state is detected by
/// taking the lock.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
    dir: PathBuf,
}

impl ServeLock {
    /// Takes the lock, or says which serve holds it.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] when another serve holds it; [`Error::State`]
    /// when the file cannot be used.
    pub fn acquire(dir: &Path) -> Result<ServeLock, Error> {
        let path = dir.join("serve.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::state("cannot open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = read_state(dir).ok().flatten().map(|s| s.pid);
                return Err(Error::AlreadyRunning {
                    pid,
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::state("cannot lock", &path, e))
            }
        }

        // Whatever a dead serve left is stale now.
        let _ = std::fs::remove_file(dir.join("serve.json"));
        let _ = std::fs::remove_file(dir.join("control.sock"));
        file.set_len(0).ok();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(ServeLock {
            _file: file,
            dir: dir.to_owned(),
        })
    }

    /// Writes `state` for other processes, atomically, mode 0600.
    ///
    /// # Errors
    ///
    /// [`Error::State`] when it cannot be written.
    pub fn publish(&self, state: &ServeState) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(state).expect("plain data serialises");
        write_private(&self.dir.join("serve.json"), text.as_bytes())
    }

    /// Removes the published state (at exit).
    pub fn withdraw(&self) {
        let _ = std::fs::remove_file(self.dir.join("serve.json"));
        let _ = std::fs::remove_file(self.dir.join("control.sock"));
    }
}

/// Whether a serve holds the lock of `dir`.
pub fn serve_is_running(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join("serve.lock")) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// The running serve's state, or `None` when no serve runs.
///
/// # Errors
///
/// [`Error::State`] when the file exists but cannot be read.
pub fn running_state(dir: &Path) -> Result<Option<ServeState>, Error> {
    if !serve_is_running(dir) {
        return Ok(None);
    }
    read_state(dir)
}

fn read_state(dir: &Path) -> Result<Option<ServeState>, Error> {
    let path = dir.join("serve.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::state("cannot read", &path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::state("cannot parse", &path, std::io::Error::other(e)))
}

/// Ports given to workloads without a configured `port`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Ports(BTreeMap<String, u16>);

impl Ports {
    /// Reads `ports.json`; a missing or unreadable file is an empty map
    /// (ports are then picked afresh).
    pub fn load(dir: &Path) -> Ports {
        std::fs::read_to_string(dir.join("ports.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The remembered port of `workload`.
    pub fn get(&self, workload: &str) -> Option<u16> {
        self.0.get(workload).copied()
    }

    /// Remembers `port` for `workload`.
    pub fn set(&mut self, workload: &str, port: u16) {
        self.0.insert(workload.to_owned(), port);
    }

    /// Forgets `workload` (removed with `rm`).
    pub fn remove(&mut self, workload: &str) {
        self.0.remove(workload);
    }

    /// Writes `ports.json`.
    ///
    /// # Errors
    ///
    /// [`Error::State`] when it cannot be written.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("plain data serialises");
        write_private(&dir.join("ports.json"), text.as_bytes())
    }
}

/// Writes `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    written.map_err(|e| Error::state("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::state("cannot replace", path, e))
}
