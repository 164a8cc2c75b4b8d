//! Back-off for accept loops and a rate limit for log lines.
//!
//! Policy: within an episode of failures the sleeps are 10 ms doubling to
//! 1 s; the first success ends the episode and the next failure starts
//! again at 10 ms. A rate-limited line goes out at most once per period and
//! carries the count of events since the last one.
//!
//! Invariant: every delay lies in `BACKOFF_FIRST..=BACKOFF_MAX`.

use std::time::{Duration, Instant};

/// The shortest and longest back-off sleep.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An episode of failures: sleeps of 10 ms doubling to 1 s, ended by a
/// success. Also used by the metrics endpoint's accept loop.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Episode {
    started: Instant,
    failures: u64,
    next_delay: Duration,
}

impl Backoff {
    /// Counts a failure; true if it starts an episode (log it then).
    pub(crate) fn failed(&mut self) -> bool {
        match &mut self.episode {
            Some(episode) => {
                episode.failures += 1;
                false
            }
            None => {
                self.episode = Some(Episode {
                    started: Instant::now(),
                    failures: 1,
                    next_delay: BACKOFF_FIRST,
                });
                true
            }
        }
    }

    /// The sleep after the failure just counted; each is twice the last,
    /// up to [`BACKOFF_MAX`].
    pub(crate) fn delay(&mut self) -> Duration {
        let episode = self.episode.get_or_insert(Episode {
            started: Instant::now(),
            failures: 1,
            next_delay: BACKOFF_FIRST,
        });
        let delay = episode.next_delay;
        episode.next_delay = (delay * 2).min(BACKOFF_MAX);
        debug_assert!(delay >= BACKOFF_FIRST && delay <= BACKOFF_MAX);
        delay
    }

    /// A success: the failures and length of the episode it ends, if any.
    pub(crate) fn succeeded(&mut self) -> Option<(u64, Duration)> {
        let episode = self.episode.take()?;
        Some((episode.failures, episode.started.elapsed()))
    }
}

/// Lets a line through at most once per period, counting the others.
#[derive(Debug)]
pub(super) struct RateLimited {
    every: Duration,
    last_at: Option<Instant>,
    unlogged: u64,
}

impl RateLimited {
    pub(super) fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last_at: None,
            unlogged: 0,
        }
    }

    /// Counts an event; `Some(count since the last line)` when a line is
    /// due.
    pub(super) fn note(&mut self) -> Option<u64> {
        self.unlogged += 1;
        if self.last_at.is_some_and(|at| at.elapsed() < self.every) {
            return None;
        }
        self.last_at = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_second_and_a_success_starts_over() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.succeeded(), None, "no episode yet");
        let mut delays = Vec::new();
        for i in 0..10 {
            assert_eq!(backoff.failed(), i == 0, "only the first starts it");
            delays.push(backoff.delay().as_millis());
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        let (failures, _) = backoff.succeeded().expect("an episode ended");
        assert_eq!(failures, 10);
        assert!(backoff.failed(), "a new episode");
        assert_eq!(backoff.delay(), BACKOFF_FIRST);
    }

    #[test]
    fn a_rate_limited_line_carries_the_count() {
        let mut limited = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(limited.note(), Some(1));
        assert_eq!(limited.note(), None);
        assert_eq!(limited.note(), None);
        limited.last_at = Instant::now().checked_sub(Duration::from_secs(3601));
        assert_eq!(limited.note(), Some(3));
        let mut always = RateLimited::new(Duration::ZERO);
        assert_eq!((always.note(), always.note()), (Some(1), Some(1)));
    }
}
