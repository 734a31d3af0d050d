//! The owner of a loopback TCP client socket, asked of the kernel with one
//! exact `NETLINK_SOCK_DIAG` lookup.
//!
//! The request names the client's socket by its full 4-tuple (its local
//! address is the peer's ephemeral port, its remote address is our
//! listener), without `NLM_F_DUMP`, so the kernel answers from its
//! established-socket hash (`inet_diag_find_one_icsk`) and the cost does not
//! grow with the number of sockets on the machine. Nothing under `/proc` is
//! read here.
//!
//! The messages are written and read as bytes at the offsets of the kernel's
//! `struct inet_diag_req_v2` and `struct inet_diag_msg` (see
//! `include/uapi/linux/inet_diag.h`), which keeps `unsafe` to the syscalls.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{IdentitySource, PeerIdentity, REPLY_TIMEOUT};

// Netlink and sock_diag numbers not all found in `libc` for every target.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;

// TCP states (include/net/tcp_states.h) and the mask bits made from them.
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE_WAIT: u8 = 8;

/// The states a socket can be in while a process still owns it and the
/// connection it made is being accepted. The exact lookup does not filter
/// on it today; the reply's own state is checked below either way.
const STATES: u32 = (1 << TCP_ESTABLISHED)
    | (1 << TCP_SYN_RECV)
    | (1 << TCP_CLOSE_WAIT)
    | (1 << TCP_FIN_WAIT1)
    | (1 << TCP_FIN_WAIT2);

const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`: sport, dport (big endian), src[16], dst[16],
/// if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid, expires,
/// rqueue, wqueue, uid, inode.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const MSG_UID_AT: usize = 4 + SOCKID_LEN + 12;
const MSG_INODE_AT: usize = 4 + SOCKID_LEN + 16;

/// Sequence numbers, so a reply is matched to its request even if a socket
/// were ever reused.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// One end of a connection as the diag request spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    family: u8,
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
}

/// Why a lookup found nothing; turned into [`IdentitySource::Unknown`].
#[derive(Debug)]
enum Miss {
    /// The kernel has no such socket (not on this host, or already gone).
    NotFound,
    /// The socket exists but no process owns it any more (`TIME_WAIT`).
    Orphaned,
    /// No answer within [`REPLY_TIMEOUT`].
    Timeout,
    /// The netlink socket could not be used, or the kernel refused.
    Failed(&'static str),
}

impl Miss {
    fn reason(&self) -> &'static str {
        match self {
            Miss::NotFound => "no such socket on this host",
            Miss::Orphaned => "peer socket has no owner",
            Miss::Timeout => "kernel did not answer in time",
            Miss::Failed(why) => why,
        }
    }
}

/// See [`super::tcp_peer`].
pub(super) fn tcp_peer(local: SocketAddr, peer: SocketAddr) -> PeerIdentity {
    // Plan: the client's socket has the peer's address as its source and our
    // listener as its destination. A v4-mapped pair is looked up as IPv4
    // first (the kernel's TCP hash holds dual-stack sockets under their v4
    // addresses), then as IPv6 in case the kernel disagrees.
    let tuples = plan(local, peer);

    for tuple in tuples.into_iter().flatten() {
        match lookup(&tuple) {
            Ok((uid, inode)) => {
                return PeerIdentity {
                    uid: Some(uid),
                    pid: None,
                    inode: Some(inode),
                    source: IdentitySource::SockDiag,
                }
            }
            Err(Miss::NotFound) => continue,
            Err(miss) => return PeerIdentity::unknown(miss.reason()),
        }
    }
    PeerIdentity::unknown(Miss::NotFound.reason())
}

/// The lookups to try, in order.
fn plan(local: SocketAddr, peer: SocketAddr) -> [Option<Tuple>; 2] {
    let v4 = match (canonical(local.ip()), canonical(peer.ip())) {
        (IpAddr::V4(l), IpAddr::V4(p)) => Some((l, p)),
        _ => None,
    };

    match v4 {
        Some((l, p)) => {
            let as_v4 = Tuple {
                family: libc::AF_INET as u8,
                src: padded(&p.octets()),
                sport: peer.port(),
                dst: padded(&l.octets()),
                dport: local.port(),
            };
            let as_v6 = Tuple {
                family: libc::AF_INET6 as u8,
                src: p.to_ipv6_mapped().octets(),
                sport: peer.port(),
                dst: l.to_ipv6_mapped().octets(),
                dport: local.port(),
            };
            [Some(as_v4), Some(as_v6)]
        }
        None => {
            let as_v6 = Tuple {
                family: libc::AF_INET6 as u8,
                src: v6(peer.ip()).octets(),
                sport: peer.port(),
                dst: v6(local.ip()).octets(),
                dport: local.port(),
            };
            [Some(as_v6), None]
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

fn padded(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(v4);
    out
}

/// One exact query: the owner uid and inode of the socket named by `tuple`.
fn lookup(tuple: &Tuple) -> Result<(u32, u64), Miss> {
    let socket = open().map_err(|_| Miss::Failed("cannot open a sock_diag socket"))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);

    send(&socket, &request(tuple, seq)).map_err(|_| Miss::Failed("cannot send to sock_diag"))?;

    // A fresh socket hears only the kernel's answer to this request; the
    // loop is bounded anyway in case something else ever arrives first.
    let mut buf = [0u8; 8192];
    for _ in 0..4 {
        let len = recv(&socket, &mut buf)?;
        if let Some(answer) = parse(&buf[..len], seq, tuple)? {
            return Ok(answer);
        }
    }
    Err(Miss::Failed("sock_diag answered something else"))
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    let timeout = libc::timeval {
        tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: REPLY_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `timeout` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&timeout as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

/// `nlmsghdr` + `inet_diag_req_v2` for an exact lookup of `tuple`.
fn request(tuple: &Tuple, seq: u32) -> [u8; NLMSG_HDR_LEN + REQ_LEN] {
    let mut msg = [0u8; NLMSG_HDR_LEN + REQ_LEN];

    // nlmsghdr: len, type, flags (no NLM_F_DUMP: one socket, not a walk),
    // seq, pid (0: the kernel fills in ours).
    msg[0..4].copy_from_slice(&((NLMSG_HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());

    // inet_diag_req_v2: family, protocol, no extensions, states.
    let req = &mut msg[NLMSG_HDR_LEN..];
    req[0] = tuple.family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&STATES.to_ne_bytes());

    // inet_diag_sockid: the exact 4-tuple, any interface, and
    // INET_DIAG_NOCOOKIE (all ones) so the kernel does not compare cookies.
    let id = &mut req[8..];
    id[0..2].copy_from_slice(&tuple.sport.to_be_bytes());
    id[2..4].copy_from_slice(&tuple.dport.to_be_bytes());
    id[4..20].copy_from_slice(&tuple.src);
    id[20..36].copy_from_slice(&tuple.dst);
    id[40..48].fill(0xff);
    msg
}

fn send(socket: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are then set.
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;

    loop {
        // SAFETY: `msg` and `kernel` outlive the call and their sizes are
        // passed.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn recv(socket: &OwnedFd, buf: &mut [u8]) -> Result<usize, Miss> {
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let got = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got >= 0 {
            return Ok(got as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Err(Miss::Timeout),
            _ => return Err(Miss::Failed("cannot read from sock_diag")),
        }
    }
}

/// The answer in one datagram: `Some((uid, inode))`, `None` when nothing in
/// it answers request `seq`, or why there is no answer.
fn parse(mut buf: &[u8], seq: u32, tuple: &Tuple) -> Result<Option<(u32, u64)>, Miss> {
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32_at(buf, 0) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let their_seq = u32_at(buf, 8);
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err(Miss::Failed("sock_diag sent a truncated message"));
        }
        let body = &buf[NLMSG_HDR_LEN..len];
        // Messages are 4-byte aligned.
        buf = &buf[((len + 3) & !3).min(buf.len())..];

        if their_seq != seq {
            continue;
        }
        match ty {
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                return Err(match -errno {
                    libc::ENOENT => Miss::NotFound,
                    libc::EPERM | libc::EACCES => Miss::Failed("sock_diag refused the lookup"),
                    _ => Miss::Failed("sock_diag answered with an error"),
                });
            }
            NLMSG_DONE => return Err(Miss::NotFound),
            SOCK_DIAG_BY_FAMILY => return reply(body, tuple).map(Some),
            _ => continue,
        }
    }
    Ok(None)
}

/// `inet_diag_msg` → (uid, inode), after checking it is the socket asked
/// about and that a process still owns it.
fn reply(body: &[u8], tuple: &Tuple) -> Result<(u32, u64), Miss> {
    if body.len() < MSG_LEN {
        return Err(Miss::Failed("sock_diag sent a short reply"));
    }
    let state = body[1];
    let id = &body[4..4 + SOCKID_LEN];

    // The kernel matched on this tuple already; comparing again costs
    // nothing and guards against a kernel that ignores part of the key.
    let same = id[0..2] == tuple.sport.to_be_bytes() && id[2..4] == tuple.dport.to_be_bytes();
    let same_addrs = if body[0] == tuple.family {
        id[4..20] == tuple.src[..] && id[20..36] == tuple.dst[..]
    } else {
        // A dual-stack socket answering a v4 query reports v4-mapped
        // addresses (or the other way round): compare the v4 parts.
        v4_part(tuple.family, &tuple.src) == v4_part(body[0], &id[4..20])
            && v4_part(tuple.family, &tuple.dst) == v4_part(body[0], &id[20..36])
    };
    if !same || !same_addrs {
        return Err(Miss::Failed("sock_diag answered about another socket"));
    }

    let uid = u32_at(body, MSG_UID_AT);
    let inode = u64::from(u32_at(body, MSG_INODE_AT));
    if state == TCP_TIME_WAIT || inode == 0 {
        return Err(Miss::Orphaned);
    }
    Ok((uid, inode))
}

fn v4_part(family: u8, addr: &[u8]) -> Option<[u8; 4]> {
    if i32::from(family) == libc::AF_INET {
        return Some([addr[0], addr[1], addr[2], addr[3]]);
    }
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&addr[..16]);
    Ipv6Addr::from(octets)
        .to_ipv4_mapped()
        .map(|v4| v4.octets())
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_pair_is_asked_as_ipv4_first_then_as_ipv6() {
        let local: SocketAddr = "[::ffff:127.0.0.1]:8811".parse().unwrap();
        let peer: SocketAddr = "[::ffff:127.0.0.1]:50000".parse().unwrap();

        let [first, second] = plan(local, peer);

        let first = first.unwrap();
        assert_eq!(i32::from(first.family), libc::AF_INET);
        assert_eq!(&first.src[..4], &[127, 0, 0, 1]);
        assert_eq!(first.sport, 50000);
        assert_eq!(first.dport, 8811);
        assert_eq!(i32::from(second.unwrap().family), libc::AF_INET6);
    }

    #[test]
    fn request_carries_the_exact_tuple_without_dump_and_with_no_cookie() {
        let tuple = plan(
            "127.0.0.1:8811".parse().unwrap(),
            "127.0.0.2:50000".parse().unwrap(),
        )[0]
        .unwrap();

        let msg = request(&tuple, 7);

        assert_eq!(u16::from_ne_bytes([msg[6], msg[7]]), NLM_F_REQUEST);
        let id = &msg[NLMSG_HDR_LEN + 8..];
        assert_eq!(&id[0..2], &50000u16.to_be_bytes());
        assert_eq!(&id[2..4], &8811u16.to_be_bytes());
        assert_eq!(&id[4..8], &[127, 0, 0, 2]);
        assert_eq!(&id[20..24], &[127, 0, 0, 1]);
        assert!(id[40..48].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn kernel_error_enoent_reads_as_not_found() {
        let tuple = plan(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )[0]
        .unwrap();
        let mut msg = vec![0u8; NLMSG_HDR_LEN + 4];
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[8..12].copy_from_slice(&9u32.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());

        assert!(matches!(parse(&msg, 9, &tuple), Err(Miss::NotFound)));
        assert!(matches!(parse(&msg, 10, &tuple), Ok(None)));
    }
}
