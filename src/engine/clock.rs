//! The engine's clock: monotonic, in milliseconds, and continuing across
//! restarts from the value last persisted (so time never runs backwards and
//! deadlines computed before a restart stay meaningful).

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Clock {
    base_ms: u64,
    started: Instant,
}

impl Clock {
    /// A clock that reads `base_ms` now and runs forward from there.
    pub fn resume_from(base_ms: u64) -> Clock {
        Clock {
            base_ms,
            started: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed_ms)
    }

    /// The instant at which the clock will read `at_ms`.
    pub fn instant_at(&self, at_ms: u64) -> Instant {
        let offset = Duration::from_millis(at_ms.saturating_sub(self.base_ms));
        self.started.checked_add(offset).unwrap_or_else(far_future)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_from_base() {
        let clock = Clock::resume_from(1_000_000);
        assert!(clock.now_ms() >= 1_000_000);
        assert!(clock.instant_at(0) <= Instant::now());
    }
}
