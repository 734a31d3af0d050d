//! Where thv-actor keeps the files that are not keys: the state directory.

use std::path::PathBuf;

use crate::error::Error;

/// Overrides the state directory (tests, or a second independent setup).
pub const STATE_DIR_ENV: &str = "THV_ACTOR_STATE_DIR";

/// The directory for serve's runtime state and the keystore's lock file.
///
/// `$THV_ACTOR_STATE_DIR` when set, else `$HOME/.local/state/thv-actor`.
/// `XDG_STATE_HOME` and `XDG_RUNTIME_DIR` are deliberately not consulted: an
/// MCP client starts the bridge with only HOME, LOGNAME, PATH, SHELL, TERM and
/// USER, and the bridge must find the same directory serve uses. Without
/// HOME, the home directory comes from the password database.
///
/// The directory is created with mode 0700 when missing.
///
/// # Errors
///
/// [`Error::Io`] when it cannot be created.
pub fn state_dir() -> Result<PathBuf, Error> {
    let dir = match std::env::var_os(STATE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_dir()?.join(".local/state/thv-actor"),
    };
    create_private_dir(&dir)?;
    Ok(dir)
}

/// The directory of the lock that serialises keychain updates across
/// processes: `<home>/.local/state/thv-actor`, with the home directory taken
/// from the password database before `$HOME`.
///
/// The keychain belongs to the user, not to a state directory, so the lock
/// does too: two processes with different `HOME` or `THV_ACTOR_STATE_DIR`
/// still update the same keychain entries, and must take the same lock.
///
/// # Errors
///
/// [`Error::Io`] when it cannot be created.
pub fn keystore_lock_dir() -> Result<PathBuf, Error> {
    let home = match passwd_home() {
        Some(home) => home,
        None => home_dir()?,
    };
    let dir = home.join(".local/state/thv-actor");
    create_private_dir(&dir)?;
    Ok(dir)
}

/// Creates `dir` (and parents) with mode 0700 on Unix.
///
/// # Errors
///
/// [`Error::Io`] when it cannot be created.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), Error> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| Error::Io {
        what: "cannot create directory",
        path: dir.to_owned(),
        source,
    })
}

/// `$HOME`, or the home directory of the current user in the password database.
///
/// # Errors
///
/// [`Error::Io`] when neither gives one.
pub fn home_dir() -> Result<PathBuf, Error> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    passwd_home().ok_or_else(|| Error::Io {
        what: "cannot find the home directory (HOME is unset) for",
        path: PathBuf::from("~"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

#[cfg(unix)]
fn passwd_home() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;

    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory owned by this frame, sized as
    // passed; getpwuid_r writes only within them.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated by getpwuid_r.
    let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}

#[cfg(not(unix))]
fn passwd_home() -> Option<PathBuf> {
    std::env::var_os("USERPROFILE").map(PathBuf::from)
}
