//! Retry policy shared by every call: a doubling backoff, the retry budget
//! of unary calls, periodic warnings while the server cannot be reached, and
//! retry identities for `Acquire`.

use std::{
    process,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

/// How long a unary call keeps retrying a server that cannot be reached
/// before it gives up with [`super::Error::Unavailable`]: long enough to
/// ride out a quick server restart.
pub(crate) const RETRY_BUDGET: Duration = Duration::from_secs(5);

/// The longest one unary attempt may take before it counts as a failure to
/// reach the server.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a wait that cannot reach the server logs a warning about it.
pub(crate) const UNREACHABLE_WARNING_EVERY: Duration = Duration::from_secs(10);

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pauses between retries: 100 ms, doubling up to 1 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The pause to take now; the following one is twice as long (capped).
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        pause
    }

    /// Starts again from the shortest pause, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// One stretch of failures to reach the server, to warn about it every
/// [`UNREACHABLE_WARNING_EVERY`] rather than once or on every retry.
#[derive(Debug, Default)]
pub(crate) struct Unreachable {
    since: Option<Instant>,
    warned_at: Option<Instant>,
}

impl Unreachable {
    /// Records a failure at `now`. Returns how long the server has been
    /// unreachable when a warning is due: once that reaches
    /// [`UNREACHABLE_WARNING_EVERY`], then every that long again.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.since.get_or_insert(now);
        let last = self.warned_at.unwrap_or(since);
        if now.saturating_duration_since(last) < UNREACHABLE_WARNING_EVERY {
            return None;
        }
        self.warned_at = Some(now);
        Some(now.saturating_duration_since(since))
    }

    /// The server answered: the stretch is over.
    pub(crate) fn reset(&mut self) {
        *self = Unreachable::default();
    }
}

/// A nonzero number that identifies one `acquire` call across its retries,
/// so that a grant lost with a broken connection is returned on the retry
/// instead of queueing the session behind its own hold.
///
/// Unique enough without a random number generator: a process-wide counter
/// mixed with the process id and the start time, through splitmix64.
pub(crate) fn acquire_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos ^ (u64::from(process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    match splitmix64(seed) {
        0 => 1,
        id => id,
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..6)
            .map(|_| backoff.next_pause().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(100));
    }

    #[test]
    fn unreachable_servers_are_warned_about_periodically() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut unreachable = Unreachable::default();
        let warnings: Vec<Option<u64>> = [0, 5, 10, 15, 19, 20, 31]
            .into_iter()
            .map(|secs| unreachable.failed(at(secs)).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            warnings,
            [None, None, Some(10), None, None, Some(20), Some(31)]
        );
        unreachable.reset();
        assert_eq!(unreachable.failed(at(40)), None);
        assert_eq!(unreachable.failed(at(50)), Some(Duration::from_secs(10)));
    }

    #[test]
    fn acquire_ids_are_nonzero_and_distinct() {
        let ids: HashSet<u64> = (0..10_000).map(|_| acquire_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }
}
