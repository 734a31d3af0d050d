//! The credentials of a Unix-socket peer, from `SO_PEERCRED`.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::{IdentitySource, PeerIdentity};

/// See [`super::unix_peer`].
pub(super) fn unix_peer(fd: RawFd) -> PeerIdentity {
    match peer_cred(fd) {
        Ok(cred) => PeerIdentity {
            uid: Some(cred.uid),
            // The kernel reports 0 when the peer's pid is not visible from
            // our pid namespace.
            pid: u32::try_from(cred.pid).ok().filter(|&pid| pid != 0),
            inode: None,
            source: IdentitySource::PeerCred,
        },
        Err(err) if err.raw_os_error() == Some(libc::ENOTSOCK) => {
            PeerIdentity::unknown("not a socket")
        }
        Err(_) => PeerIdentity::unknown("SO_PEERCRED failed"),
    }
}

fn peer_cred(fd: RawFd) -> io::Result<libc::ucred> {
    // SAFETY: an all-zero ucred is valid and is overwritten by the kernel.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;

    // SAFETY: `cred` and `len` outlive the call and `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short ucred"));
    }
    Ok(cred)
}
