//! Who is on the other end of a connection, asked of the kernel when the
//! connection is accepted, and the [`PeerGuard`] that admits only the users
//! allowed to talk to a workload.
//!
//! A loopback TCP peer is looked up with one exact `NETLINK_SOCK_DIAG`
//! query for the client's socket ([`tcp_peer`]); a Unix-socket peer with
//! `SO_PEERCRED` ([`unix_peer`]). [`on_connect`] records the answer on the
//! connection and [`PeerGuard`] decides each request from it with a
//! [`PeerPolicy`].
//!
//! This module does not authenticate a workload (that is the shared key's
//! job) and does not look at anything the client sends.
//!
//! # Limitations
//!
//! Linux only. Elsewhere every lookup is [`IdentitySource::Unknown`] and the
//! default policy lets unknown peers through.
//! TODO: `getpeereid`/`LOCAL_PEERCRED` on macOS and the owning pid from
//! `GetExtendedTcpTable` on Windows (they wait for a machine to test on).

mod guard;
#[cfg(target_os = "linux")]
mod procfs;
#[cfg(target_os = "linux")]
mod sockdiag;
#[cfg(target_os = "linux")]
mod ucred;

use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::RawFd;

pub use guard::{on_connect, PeerGuard, PeerGuardMiddleware};

/// The kernel's word on who owns the peer's end of a connection.
///
/// Put into a connection's data by [`on_connect`]; read it in a handler or
/// middleware with `req.conn_data::<PeerIdentity>()`.
///
/// # Security
///
/// The uid is the one the kernel recorded for the peer's socket: for TCP the
/// user that created the client socket, for a Unix socket the user that
/// called `connect`. A descriptor handed to another process (over
/// `SCM_RIGHTS`, or across `fork` and `setuid`) keeps that uid. Uids are as
/// seen from this process's user namespace (unmapped ones read as the
/// overflow uid, usually 65534).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The uid owning the peer's socket, when known.
    pub uid: Option<u32>,
    /// The peer's pid, when the kernel gives it with the answer
    /// (`SO_PEERCRED`). For TCP it is never filled in here: see
    /// [`pid_of_inode`].
    pub pid: Option<u32>,
    /// The inode of the peer's socket, when known (TCP), for
    /// [`pid_of_inode`] and for telling sockets apart.
    pub inode: Option<u64>,
    /// How the answer was obtained, or why there is none.
    pub source: IdentitySource,
}

/// Where a [`PeerIdentity`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// A `NETLINK_SOCK_DIAG` lookup of the client's TCP socket.
    SockDiag,
    /// `SO_PEERCRED` on a Unix socket.
    PeerCred,
    /// Nothing could be learned; the text says why (for logs).
    Unknown(&'static str),
}

impl PeerIdentity {
    /// An identity with nothing known, for `why`.
    pub fn unknown(why: &'static str) -> PeerIdentity {
        PeerIdentity {
            uid: None,
            pid: None,
            inode: None,
            source: IdentitySource::Unknown(why),
        }
    }
}

/// Who owns the client socket of a loopback TCP connection accepted on
/// `local` from `peer`.
///
/// One exact `NETLINK_SOCK_DIAG` query for the socket whose local address is
/// `peer` and whose remote address is `local`, waiting at most
/// [`REPLY_TIMEOUT`] (200 ms) for the kernel; IPv4, IPv6 and v4-mapped
/// addresses are handled. The cost does not depend on how many sockets the
/// machine has, and `/proc` is not read. `pid` is always `None`.
///
/// # Errors
///
/// Never fails: a peer on another host or in another network namespace, a
/// socket already closed, a kernel without `inet_diag`, or a timeout give
/// [`IdentitySource::Unknown`] with the reason.
pub fn tcp_peer(local: SocketAddr, peer: SocketAddr) -> PeerIdentity {
    #[cfg(target_os = "linux")]
    return sockdiag::tcp_peer(local, peer);

    #[cfg(not(target_os = "linux"))]
    {
        let _ = (local, peer);
        PeerIdentity::unknown("tcp peer lookup is implemented on linux only")
    }
}

/// How long [`tcp_peer`] waits for the kernel.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// The uid and pid of the process on the other end of the connected Unix
/// socket `fd`, from `SO_PEERCRED` (the credentials at `connect` time).
///
/// # Errors
///
/// Never fails: a descriptor that is not a connected Unix socket gives
/// [`IdentitySource::Unknown`].
#[cfg(unix)]
pub fn unix_peer(fd: RawFd) -> PeerIdentity {
    #[cfg(target_os = "linux")]
    return ucred::unix_peer(fd);

    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        PeerIdentity::unknown("unix peer lookup is implemented on linux only")
    }
}

/// The executable of process `pid` (the target of `/proc/<pid>/exe`), for
/// audit events; `None` when the process is gone or not ours to look at.
///
/// Reads `/proc`: call it off the request path (refusals only).
pub fn describe_pid(pid: u32) -> Option<String> {
    #[cfg(target_os = "linux")]
    return procfs::describe_pid(pid);

    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// The pid of a process holding the socket with `inode` (the first in
/// `/proc` order), found by reading every `/proc/<pid>/fd`.
///
/// # Limitations
///
/// The cost grows with the number of processes and open files on the
/// machine, and processes of other users are visible only to root: call it
/// only for the audit event of a refusal, off the request path, as
/// [`PeerGuard`] does. A socket shared by several processes names one of
/// them.
pub fn pid_of_inode(inode: u64) -> Option<u32> {
    #[cfg(target_os = "linux")]
    return procfs::pid_of_inode(inode);

    #[cfg(not(target_os = "linux"))]
    {
        let _ = inode;
        None
    }
}

/// Which peers may use a workload.
///
/// # Example
///
/// ```
/// use thv_server::peer::{IdentitySource, PeerDecision, PeerIdentity, PeerPolicy};
///
/// let policy = PeerPolicy::default();
/// let me = PeerIdentity {
///     uid: policy.allowed_uids.first().copied(),
///     pid: None,
///     inode: None,
///     source: IdentitySource::SockDiag,
/// };
/// assert_eq!(policy.decide(&me), PeerDecision::Admit);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Uids admitted. Default: the uid running this process.
    pub allowed_uids: Vec<u32>,
    /// When false every peer is admitted (the check is off).
    pub enabled: bool,
    /// What to do with a peer the kernel could not name.
    pub on_unknown: UnknownPolicy,
}

/// What [`PeerPolicy`] does with a peer whose uid is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Refuse (the default on Linux, where a lookup should always succeed
    /// for a local peer).
    Refuse,
    /// Admit (the default elsewhere, where no lookup is implemented).
    Allow,
}

/// The outcome of [`PeerPolicy::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerDecision {
    /// Let the request through.
    Admit,
    /// Answer 403; `reason` is the audit event's.
    Refuse {
        /// `uid_not_allowed` or `identity_unknown`.
        reason: &'static str,
    },
}

impl Default for PeerPolicy {
    fn default() -> PeerPolicy {
        PeerPolicy {
            allowed_uids: current_uid().into_iter().collect(),
            enabled: true,
            on_unknown: if cfg!(target_os = "linux") {
                UnknownPolicy::Refuse
            } else {
                UnknownPolicy::Allow
            },
        }
    }
}

impl PeerPolicy {
    /// Admits `id` when the check is off, when its uid is allowed, or when
    /// it is unknown and unknown peers are allowed.
    pub fn decide(&self, id: &PeerIdentity) -> PeerDecision {
        if !self.enabled {
            return PeerDecision::Admit;
        }
        match id.uid {
            Some(uid) if self.allowed_uids.contains(&uid) => PeerDecision::Admit,
            Some(_) => PeerDecision::Refuse {
                reason: "uid_not_allowed",
            },
            None if self.on_unknown == UnknownPolicy::Allow => PeerDecision::Admit,
            None => PeerDecision::Refuse {
                reason: "identity_unknown",
            },
        }
    }
}

fn current_uid() -> Option<u32> {
    #[cfg(unix)]
    // SAFETY: getuid has no preconditions and cannot fail.
    return Some(unsafe { libc::getuid() });

    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_uid(uid: Option<u32>) -> PeerIdentity {
        PeerIdentity {
            uid,
            pid: None,
            inode: None,
            source: IdentitySource::SockDiag,
        }
    }

    #[test]
    fn default_policy_admits_only_our_own_uid() {
        let policy = PeerPolicy::default();
        let me = current_uid().unwrap();

        assert_eq!(policy.decide(&with_uid(Some(me))), PeerDecision::Admit);
        assert_eq!(
            policy.decide(&with_uid(Some(me + 1))),
            PeerDecision::Refuse {
                reason: "uid_not_allowed"
            }
        );
    }

    #[test]
    fn unknown_peer_follows_on_unknown_and_disabled_admits_all() {
        let mut policy = PeerPolicy {
            allowed_uids: vec![1000],
            enabled: true,
            on_unknown: UnknownPolicy::Refuse,
        };
        let unknown = PeerIdentity::unknown("test");

        assert_eq!(
            policy.decide(&unknown),
            PeerDecision::Refuse {
                reason: "identity_unknown"
            }
        );
        policy.on_unknown = UnknownPolicy::Allow;
        assert_eq!(policy.decide(&unknown), PeerDecision::Admit);
        policy.on_unknown = UnknownPolicy::Refuse;
        policy.enabled = false;
        assert_eq!(policy.decide(&with_uid(Some(4242))), PeerDecision::Admit);
    }
}
