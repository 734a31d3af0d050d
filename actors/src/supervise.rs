//! Restart accounting shared by the supervised actors: a count for the logs
//! and a backoff so that a restart storm slows down instead of spinning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Restarts within this long of the previous one count as a storm.
const STORM_WINDOW: Duration = Duration::from_secs(10);
/// The first backoff of a storm, doubled per restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Counts the restarts of one kind of actor and decides how long to wait
/// before the next one. Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct RestartTracker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    total: AtomicU64,
    storm: Mutex<Storm>,
}

#[derive(Debug, Default)]
struct Storm {
    last: Option<Instant>,
    streak: u32,
}

impl RestartTracker {
    /// A tracker with no restarts yet.
    pub fn new() -> RestartTracker {
        RestartTracker::default()
    }

    /// How many restarts there have been.
    pub fn count(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Records a restart of `actor`, logs it at warn with the running count,
    /// and returns how long to wait before the new actor takes messages:
    /// zero for an isolated restart, then 50 ms doubling to 5 s while
    /// restarts keep coming within 10 s of each other.
    pub fn record(&self, actor: &'static str) -> Duration {
        let total = self.inner.total.fetch_add(1, Ordering::Relaxed) + 1;

        let mut storm = self.inner.storm.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let in_storm = storm
            .last
            .is_some_and(|last| now.duration_since(last) < STORM_WINDOW);
        storm.streak = if in_storm { storm.streak + 1 } else { 0 };
        storm.last = Some(now);
        let backoff = match storm.streak {
            0 => Duration::ZERO,
            n => FIRST_BACKOFF
                .saturating_mul(1 << (n - 1).min(16))
                .min(MAX_BACKOFF),
        };
        drop(storm);

        tracing::warn!(
            actor,
            restarts = total,
            backoff_ms = backoff.as_millis() as u64,
            "actor restarted"
        );
        backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_backs_off_and_caps() {
        let tracker = RestartTracker::new();
        assert_eq!(tracker.record("test"), Duration::ZERO);
        assert_eq!(tracker.record("test"), FIRST_BACKOFF);
        assert_eq!(tracker.record("test"), FIRST_BACKOFF * 2);
        for _ in 0..20 {
            tracker.record("test");
        }
        assert_eq!(tracker.record("test"), MAX_BACKOFF);
        assert_eq!(tracker.count(), 24);
    }
}
