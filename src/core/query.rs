//! Reads: what a client can ask without changing anything.
//!
//! Policy:
//! - A [`Query`] is answered from the state as it is, at a time the caller
//!   gives: `State::query(&self, now_ms, ..)`. It is never a step of the
//!   log and never a record: a node answers it from its applied state.
//! - The time only ages what a reply shows (how long a hold was held, a
//!   lease's time left, a bucket's refill, a breaker's wait); it does not
//!   move the state's clock, expire a session or refill a bucket for real.
//!   At the time of the state's clock it gives what the same read gave when
//!   it was a command applied at that time.
//! - A query that names a session (`PendingNotices`) is checked against the
//!   caller's identity like a command (`State::check_query_owner`).
//!
//! Invariants:
//! - `query` takes `&self`: it has no effects, not even on `now_ms`, so two
//!   nodes at the same applied state that answer different reads stay the
//!   same;
//! - `now_ms` is at least the state's clock (asserted in debug builds; a
//!   release build reads at the state's clock instead, as `apply` would).

use super::{Kind, Reply, Result, SessionId, State, Summary};

/// Everything a client can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Live sessions in id order, after `after_session_id`, at most `limit`.
    ListSessions {
        after_session_id: SessionId,
        limit: u32,
    },
    /// The unconfirmed lost-hold notices of a session, without renewing it
    /// (what a keep-alive stream pushes when a notice is added).
    PendingNotices {
        session_id: SessionId,
    },
    LockDescribe {
        name: String,
    },
    SemaphoreDescribe {
        name: String,
    },
    RwLockDescribe {
        name: String,
    },
    EventDescribe {
        name: String,
    },
    ConditionDescribe {
        name: String,
    },
    BarrierDescribe {
        name: String,
    },
    QueueDescribe {
        name: String,
    },
    PoolDescribe {
        name: String,
    },
    BucketDescribe {
        name: String,
    },
    BreakerDescribe {
        name: String,
    },
    /// One line per primitive whose name starts with `prefix`, of one kind
    /// or of all.
    List {
        kind: Option<Kind>,
        prefix: String,
    },
}

impl Query {
    /// The session the query reads for, if any: the one whose owner must be
    /// the caller (see `State::check_query_owner`). Every variant is listed,
    /// so that a new query has to say whether it reads for one.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            Query::PendingNotices { session_id } => Some(*session_id),
            Query::ListSessions { .. }
            | Query::LockDescribe { .. }
            | Query::SemaphoreDescribe { .. }
            | Query::RwLockDescribe { .. }
            | Query::EventDescribe { .. }
            | Query::ConditionDescribe { .. }
            | Query::BarrierDescribe { .. }
            | Query::QueueDescribe { .. }
            | Query::PoolDescribe { .. }
            | Query::BucketDescribe { .. }
            | Query::BreakerDescribe { .. }
            | Query::List { .. } => None,
        }
    }
}

impl State {
    /// Answers one query as of `now_ms`, changing nothing. See the module
    /// doc.
    pub fn query(&self, now_ms: u64, query: &Query) -> Result<Reply> {
        debug_assert!(
            now_ms >= self.now_ms,
            "a query at {now_ms} ms, before the state's clock ({} ms)",
            self.now_ms
        );
        let now_ms = now_ms.max(self.now_ms);
        match query {
            Query::ListSessions {
                after_session_id,
                limit,
            } => Ok(self.list_sessions(now_ms, *after_session_id, *limit)),
            Query::PendingNotices { session_id } => self.pending_notices(*session_id),
            Query::LockDescribe { name } => self.lock_describe(now_ms, name),
            Query::SemaphoreDescribe { name } => self.semaphore_describe(now_ms, name),
            Query::RwLockDescribe { name } => self.rwlock_describe(now_ms, name),
            Query::EventDescribe { name } => self.event_describe(now_ms, name),
            Query::ConditionDescribe { name } => self.condition_describe(now_ms, name),
            Query::BarrierDescribe { name } => self.barrier_describe(now_ms, name),
            Query::QueueDescribe { name } => self.queue_describe(now_ms, name),
            Query::PoolDescribe { name } => self.pool_describe(now_ms, name),
            Query::BucketDescribe { name } => self.bucket_describe(now_ms, name),
            Query::BreakerDescribe { name } => self.breaker_describe(now_ms, name),
            Query::List { kind, prefix } => Ok(Reply::Listing(self.list(now_ms, *kind, prefix))),
        }
    }

    pub(super) fn list(&self, now_ms: u64, kind: Option<Kind>, prefix: &str) -> Vec<Summary> {
        let mut out = Vec::new();
        for each in Kind::ALL {
            if kind.is_some_and(|k| k != each) {
                continue;
            }
            out.extend(match each {
                Kind::Lock => self.lock_summaries(prefix),
                Kind::Semaphore => self.semaphore_summaries(prefix),
                Kind::RwLock => self.rwlock_summaries(prefix),
                Kind::Event => self.event_summaries(prefix),
                Kind::Condition => self.condition_summaries(prefix),
                Kind::Barrier => self.barrier_summaries(prefix),
                Kind::Queue => self.queue_summaries(prefix),
                Kind::Pool => self.pool_summaries(prefix),
                Kind::TokenBucket => self.bucket_summaries(now_ms, prefix),
                Kind::Breaker => self.breaker_summaries(prefix),
            });
        }
        out
    }
}
