//! Shared helpers for the end-to-end tests: the real binary, real keychains.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_thv-actor")
}

/// Fails the test with what to run when the suite's set-up is missing, so
/// that a keychain test never passes by skipping.
pub fn require_setup() {
    if std::env::var_os("THV_TEST_SETUP").is_none()
        && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
    {
        panic!(
            "these tests need the real keychains that ./scripts/test starts; run ./scripts/test"
        );
    }
}

/// A workload name unique to this test run.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("e2e-{tag}-{}-{n}-{nanos}", std::process::id())
}

/// A private state directory and the keystore the commands use.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub keystore: &'static str,
}

impl Env {
    pub fn new(keystore: &'static str) -> Env {
        require_setup();
        Env {
            dir: tempfile::tempdir().unwrap(),
            keystore,
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `thv-actor <args>` with this environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("THV_ACTOR_STATE_DIR", self.dir.path())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `thv-actor <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn thv-actor")
    }

    /// Runs it in a new session keyring of its own (`keyctl session -`), as
    /// a process of a separate login would be.
    pub fn run_in_new_session(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("keyctl");
        cmd.arg("session")
            .arg("-")
            .arg(bin())
            .args(args)
            .env("THV_ACTOR_STATE_DIR", self.dir.path())
            .env("THV_ACTOR_KEYSTORE", self.keystore)
            .stdin(Stdio::null());
        cmd.output()
            .expect("spawn keyctl (scripts/setup installs keyutils)")
    }
}

/// Both Linux keystores, by their CLI names.
pub const KEYSTORES: [&str; 2] = ["secret-service", "keyutils"];

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success, showing stderr when not.
pub fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "exit {:?}; stderr:\n{}",
        o.status,
        stderr(o)
    );
    o
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
