//! One stdio MCP server process: its pipes, its stderr, its exit.

use std::collections::{BTreeMap, HashMap};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use thv_actors::WorkloadName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use zeroize::Zeroizing;

use super::TARGET;

/// Lines queued for a child's stdin before a writer has to wait.
const STDIN_QUEUE: usize = 64;
/// Messages read from a child's stdout before the reader stops reading (and
/// so the child blocks on its own stdout).
const STDOUT_QUEUE: usize = 256;
/// How long a terminated child has to exit before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// A child that exits sooner than this after starting counts as a crash for
/// the restart backoff.
const QUICK_EXIT: Duration = Duration::from_secs(5);

/// What every child of one workload is started with.
pub(crate) struct ChildConfig {
    pub workload: WorkloadName,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The key new processes get as `TOOLHIVE_SHARED_KEY`; serve replaces
    /// it after a rotation.
    pub inject_key: Option<std::sync::Arc<std::sync::RwLock<Zeroizing<String>>>>,
}

/// A running (or exited) child. Dropping the last handle does not kill it;
/// [`Child::terminate`] does, and the registry's shutdown does.
pub(crate) struct Child {
    pub pid: Option<u32>,
    pub stdin_tx: mpsc::Sender<Bytes>,
    started: Instant,
    term_tx: Mutex<Option<oneshot::Sender<()>>>,
    exited_rx: watch::Receiver<bool>,
}

impl Child {
    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        *self.exited_rx.borrow()
    }

    /// Asks the process to stop: SIGTERM, then SIGKILL after a grace period.
    /// Returns at once; see [`Child::exited`].
    pub fn terminate(&self) {
        if let Some(term_tx) = self.term_tx.lock().unwrap().take() {
            let _ = term_tx.send(());
        }
    }

    /// Resolves once the process has exited and been reaped.
    pub async fn exited(&self) {
        let mut exited_rx = self.exited_rx.clone();
        let _ = exited_rx.wait_for(|exited| *exited).await;
    }

    /// Queues one JSON-RPC message for stdin.
    pub async fn send(&self, message: &Value, wait: Duration) -> Result<(), ()> {
        let mut line = serde_json::to_vec(message).map_err(|_| ())?;
        line.push(b'\n');
        match tokio::time::timeout(wait, self.stdin_tx.send(Bytes::from(line))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Queues one message without waiting; dropped if the queue is full.
    pub fn try_send(&self, message: &Value) {
        if let Ok(mut line) = serde_json::to_vec(message) {
            line.push(b'\n');
            let _ = self.stdin_tx.try_send(Bytes::from(line));
        }
    }
}

/// Consecutive quick crashes, and the delay they earn the next start.
#[derive(Default)]
pub(crate) struct Backoff {
    failures: AtomicU32,
}

impl Backoff {
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn record_exit(&self, lived: Duration) {
        if lived < QUICK_EXIT {
            self.record_failure();
        } else {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// 0 after a healthy run, then 100 ms doubling up to 30 s.
    pub fn delay(&self) -> Duration {
        match self.failures.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            n => Duration::from_millis(100u64 << (n - 1).min(9)).min(Duration::from_secs(30)),
        }
    }
}

/// Every child still alive, so that shutdown can reach them all.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    children: Mutex<HashMap<u64, Arc<Child>>>,
}

impl Registry {
    pub fn all(&self) -> Vec<Arc<Child>> {
        self.children.lock().unwrap().values().cloned().collect()
    }
}

/// A freshly started child and the messages it writes to stdout.
pub(crate) struct Spawned {
    pub child: Arc<Child>,
    pub stdout_rx: mpsc::Receiver<Value>,
}

/// Starts one child and the tasks that feed its stdin, read its stdout and
/// stderr, and reap it. Must run inside an actix arbiter: the tasks are
/// spawned on the current one.
pub(crate) fn spawn(
    config: &ChildConfig,
    registry: &Arc<Registry>,
    backoff: &Arc<Backoff>,
) -> std::io::Result<Spawned> {
    let mut command = Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .envs(&config.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(key) = &config.inject_key {
        let key = key.read().unwrap_or_else(|p| p.into_inner());
        command.env("TOOLHIVE_SHARED_KEY", key.as_str());
    }

    let mut process = command.spawn()?;
    let pid = process.id();
    let workload = config.workload.clone();
    tracing::info!(target: TARGET, workload = %workload, pid, "mcp server process started");

    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    let (stdout_tx, stdout_rx) = mpsc::channel::<Value>(STDOUT_QUEUE);
    let (term_tx, term_rx) = oneshot::channel();
    let (exited_tx, exited_rx) = watch::channel(false);

    // Feed stdin until every sender is gone or the pipe breaks.
    let mut stdin = process.stdin.take().expect("stdin is piped");
    actix_rt::spawn(async move {
        while let Some(line) = stdin_rx.recv().await {
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });

    // Parse stdout, one message a line; the router downstream decides where
    // each goes. Waiting on a full queue pushes back on the child.
    let stdout = process.stdout.take().expect("stdout is piped");
    let stdout_workload = workload.clone();
    actix_rt::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(message) => {
                    if stdout_tx.send(message).await.is_err() {
                        break;
                    }
                }
                Err(_) => tracing::warn!(
                    target: TARGET,
                    workload = %stdout_workload,
                    "mcp server wrote a line to stdout that is not JSON; dropped"
                ),
            }
        }
    });

    let stderr = process.stderr.take().expect("stderr is piped");
    let stderr_workload = workload.clone();
    actix_rt::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: TARGET, workload = %stderr_workload, pid, stderr = %line);
        }
    });

    let child = Arc::new(Child {
        pid,
        stdin_tx,
        started: Instant::now(),
        term_tx: Mutex::new(Some(term_tx)),
        exited_rx,
    });

    let serial = registry.next.fetch_add(1, Ordering::Relaxed);
    registry
        .children
        .lock()
        .unwrap()
        .insert(serial, child.clone());

    let registry = registry.clone();
    let backoff = backoff.clone();
    let started = child.started;
    actix_rt::spawn(async move {
        let (status, asked) = reap(process, term_rx).await;
        if !asked {
            backoff.record_exit(started.elapsed());
        }
        registry.children.lock().unwrap().remove(&serial);
        let _ = exited_tx.send(true);

        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        if asked {
            tracing::info!(target: TARGET, workload = %workload, pid, %status, "mcp server process stopped");
        } else {
            tracing::warn!(target: TARGET, workload = %workload, pid, %status, "mcp server process exited");
        }
    });

    Ok(Spawned { child, stdout_rx })
}

/// Waits for the child to exit by itself or to be told to stop; returns the
/// status and whether it was told.
async fn reap(
    mut process: tokio::process::Child,
    term_rx: oneshot::Receiver<()>,
) -> (std::io::Result<ExitStatus>, bool) {
    tokio::select! {
        status = process.wait() => (status, false),
        _ = term_rx => {
            politely_stop(&process);
            match tokio::time::timeout(TERM_GRACE, process.wait()).await {
                Ok(status) => (status, true),
                Err(_) => {
                    let _ = process.start_kill();
                    (process.wait().await, true)
                }
            }
        }
    }
}

#[cfg(unix)]
fn politely_stop(process: &tokio::process::Child) {
    if let Some(pid) = process.id() {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped
        // yet, so the pid cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
fn politely_stop(_process: &tokio::process::Child) {}
