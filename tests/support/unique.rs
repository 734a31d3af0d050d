//! Names no other test, and no earlier run, uses (workloads, and so keychain
//! entries, outlive a failed test). `tests/support` declares it; the
//! actors and server crates' tests include it by path.

use std::sync::atomic::{AtomicU32, Ordering};

/// `<prefix>-<tag>-<pid>-<n>-<nanos>`: the prefix says which suite made a
/// leftover entry, the pid and counter keep parallel tests apart, the
/// nanoseconds keep runs apart.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{tag}-{}-{n}-{nanos}", std::process::id())
}
