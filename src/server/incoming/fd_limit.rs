//! The process's open-file limit: raised at start, and what it leaves for
//! client connections.
//!
//! Policy: the soft limit is raised to the hard one (Go's runtime and Redis
//! do the same); the default `--max-connections` is
//! [`DEFAULT_MAX_CONNECTIONS`], or the soft limit less [`FDS_RESERVED`]
//! when that is lower.
//!
//! Invariant: [`fd_budget`] is at least 1, so a server always takes one
//! connection.

use std::io;

use super::DEFAULT_MAX_CONNECTIONS;

/// Descriptors kept out of the default `max_connections`: stdio, the two
/// listeners, the runtime's epoll and signal descriptors, sled's files in
/// the data directory and the marker being rewritten, the metrics
/// endpoint's 16 connections, the spare descriptor, up to 32 refused
/// connections being answered, the token and TLS files when read, with room
/// to spare.
pub const FDS_RESERVED: u64 = 96;

/// The open-file limit (RLIMIT_NOFILE) in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before [`raise_fd_limit`] raised it.
    pub raised_from: Option<u64>,
    /// Why the soft limit could not be raised to the hard one.
    pub not_raised: Option<String>,
}

/// Raises the soft open-file limit to the hard one, as Go's runtime and
/// Redis do: the soft limit (often 1024) is a default for programs that
/// use `select`, not a budget an administrator chose.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into `limit`, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = FdLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
        raised_from: None,
        not_raised: None,
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            found.raised_from = Some(found.soft);
            found.soft = raised.rlim_cur;
        } else {
            found.not_raised = Some(io::Error::last_os_error().to_string());
        }
    }
    Ok(found)
}

/// The connections a soft fd limit leaves room for: the limit less
/// [`FDS_RESERVED`], at least 1.
pub fn fd_budget(soft_fd_limit: u64) -> usize {
    let budget = soft_fd_limit.saturating_sub(FDS_RESERVED).max(1);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// `--max-connections` when not given: [`DEFAULT_MAX_CONNECTIONS`], or the
/// [`fd_budget`] when that is lower.
pub fn default_max_connections(soft_fd_limit: u64) -> usize {
    DEFAULT_MAX_CONNECTIONS.min(fd_budget(soft_fd_limit))
}

/// The open-file limit in force and the `max_connections` it led to;
/// logged once syncd is ready, so that a refusal to start stays one line.
pub struct ConnectionCap {
    limit: io::Result<FdLimit>,
    pub max_connections: usize,
    requested: bool,
}

impl ConnectionCap {
    /// Raises the soft open-file limit to the hard one and settles
    /// `max_connections`: `requested`, or the default the limit allows
    /// (see `--max-connections`).
    pub fn new(requested: Option<usize>) -> ConnectionCap {
        let limit = raise_fd_limit();
        let max_connections = match (requested, &limit) {
            (Some(n), _) => n,
            (None, Ok(limit)) => default_max_connections(limit.soft),
            (None, Err(_)) => DEFAULT_MAX_CONNECTIONS,
        };
        ConnectionCap {
            limit,
            max_connections,
            requested: requested.is_some(),
        }
    }

    /// Logs the limit at info, and at warn what went wrong or does not fit.
    pub fn log(&self) {
        let max_connections = self.max_connections;
        let limit = match &self.limit {
            Ok(limit) => limit,
            Err(e) => {
                tracing::warn!(max_connections, "cannot read the open-file limit: {e}");
                return;
            }
        };
        if let Some(e) = &limit.not_raised {
            tracing::warn!(
                "cannot raise the open-file limit from {} to the hard limit {}: {e}",
                limit.soft,
                limit.hard
            );
        }
        let raised = match limit.raised_from {
            Some(from) => format!(" (raised from {from})"),
            None => String::new(),
        };
        tracing::info!(
            fd_limit = limit.soft,
            fd_limit_hard = limit.hard,
            max_connections,
            "open-file limit {}{raised}, hard limit {}; max_connections {max_connections}{}",
            limit.soft,
            limit.hard,
            if self.requested { "" } else { " (default)" }
        );
        let budget = fd_budget(limit.soft);
        if max_connections > budget {
            tracing::warn!(
                max_connections,
                "max_connections {max_connections} is more than the open-file limit {} leaves \
                 room for ({budget}, with {} kept for files): when the descriptors run out, new \
                 connections are shed and writes may fail",
                limit.soft,
                FDS_RESERVED
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fits_the_fd_limit() {
        assert_eq!(default_max_connections(1024), 928);
        assert_eq!(default_max_connections(4096), 4000);
        assert_eq!(default_max_connections(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(default_max_connections(u64::MAX), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(fd_budget(10), 1, "never 0");
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise_fd_limit().expect("getrlimit");
        if limit.not_raised.is_none() {
            assert_eq!(limit.soft, limit.hard);
        }
        // Idempotent: a second call finds nothing to raise.
        let again = raise_fd_limit().expect("getrlimit");
        assert_eq!((again.soft, again.raised_from), (limit.soft, None));
    }
}
