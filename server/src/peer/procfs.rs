//! Names for a peer in an audit event: its pid from a socket inode, and its
//! executable. Both read `/proc` and are for refusals only, off the request
//! path.

use std::fs;
use std::path::Path;

/// See [`super::describe_pid`].
pub(super) fn describe_pid(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.to_string_lossy().into_owned())
}

/// See [`super::pid_of_inode`].
pub(super) fn pid_of_inode(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");

    // /proc lists pids in ascending order; the first holder is returned
    // (after a fork the parent, which most often made the socket).
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path().join("fd")))
        })
        .find(|(_, fd_dir)| holds(fd_dir, &wanted))
        .map(|(pid, _)| pid)
}

fn holds(fd_dir: &Path, wanted: &str) -> bool {
    // Processes we may not look into, and ones that exit mid-scan, are
    // skipped.
    let Ok(fds) = fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| target.as_os_str() == wanted)
            .unwrap_or(false)
    })
}
