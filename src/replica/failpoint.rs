//! Crash points for tests, in debug builds only (the integration tests run
//! debug binaries; a release build has none of this).
//!
//! `SYNCD_CRASH_AT=POINT:N` makes the process abort — as a `kill -9`
//! would stop it, with nothing flushed on the way out — the N-th time
//! (from 1) it passes POINT:
//! - `apply`: an entry of syncd's (not one of openraft's blank or
//!   membership entries) is committed (in the log) and about to be
//!   applied;
//! - `state-write`: the core applied the entries of one `apply` call, one
//!   of syncd's among them, and their batch for sled is about to be
//!   written.

#[cfg(debug_assertions)]
mod enabled {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static CRASH_AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);

    fn crash_at() -> &'static Option<(String, u64)> {
        CRASH_AT.get_or_init(|| {
            let spec = std::env::var("SYNCD_CRASH_AT").ok()?;
            let (point, count) = spec.split_once(':')?;
            Some((point.to_owned(), count.parse().ok()?))
        })
    }

    pub fn pass(point: &str) {
        let Some((at, count)) = crash_at() else {
            return;
        };
        if at == point && PASSED.fetch_add(1, Ordering::SeqCst) + 1 == *count {
            eprintln!("syncd: crash point {point}:{count} reached, aborting");
            std::process::abort();
        }
    }
}

/// Passes a crash point (see the module doc).
#[cfg(debug_assertions)]
pub fn pass(point: &str) {
    enabled::pass(point);
}

/// Release builds have no crash points.
#[cfg(not(debug_assertions))]
pub fn pass(_point: &str) {}
