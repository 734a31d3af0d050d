//! A second, real user for the peer-identity tests: created when missing,
//! so a client can run as someone other than the user running the server.
//! `tests/support` declares it, and `server/tests/peer_identity.rs` includes
//! it by path: the server crate's tests need the same user without the rest
//! of the end-to-end support.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

/// The uid of this process.
pub fn our_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// The uid and gid of the system user `name`, creating it when missing.
///
/// Needs root (CI runs as root) and says so when it is missing, rather than
/// skipping: the tests that call it check what a second user cannot do.
pub fn other_user(name: &str) -> (u32, u32) {
    assert_eq!(
        our_uid(),
        0,
        "this test needs root: it creates the system user {name} and runs a client as it \
         (run the test suite as root, as CI does)"
    );

    // Test processes run in parallel (nextest): one creates the user while
    // the others wait, or two useradd runs could hand out two uids.
    let lock = std::fs::File::create(std::env::temp_dir().join(format!("{name}.useradd.lock")))
        .expect("create the useradd lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    if !id(&["-u", name]).0 {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", name])
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name} failed: {status}");
    }

    let (ok_u, uid) = id(&["-u", name]);
    let (ok_g, gid) = id(&["-g", name]);
    drop(lock);
    assert!(ok_u && ok_g, "user {name} does not exist");
    (uid.parse().unwrap(), gid.parse().unwrap())
}

fn id(args: &[&str]) -> (bool, String) {
    let out = Command::new("id").args(args).output().expect("run id");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// A python any user can run (root's pyenv shims are not the other user's).
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}
