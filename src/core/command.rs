//! What goes into the state machine and what comes out: commands, replies,
//! rejections, and the outcome of a step (events for waiters, records to
//! persist).

use std::fmt;

pub use super::rwlock::RwMode;
use super::{
    barrier, breaker, condition, event, lock, pool, queue, rwlock, semaphore, token_bucket, Change,
    FencingToken, Kind, LostHold, SessionId, WaiterId,
};

/// Everything that changes the state machine, asked by a client or by the
/// engine. Reads are `Query`s (see `query.rs`): they change nothing, so
/// they never need to be a step of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateSession {
        ttl_ms: u64,
        client_name: String,
        /// Where the client connected from (the server fills it in).
        host: String,
        /// The identity (token name) that creates it, the only one that may
        /// use it afterwards; empty when the server checks no tokens.
        owner: String,
    },
    KeepAlive {
        session_id: SessionId,
        /// The highest lost-hold notice the client has seen (0: none).
        notices_seen_through: u64,
    },
    /// An operator takes a hold away from its session (see `core::lost`).
    Revoke {
        fencing_token: FencingToken,
        /// Who asked and why; passed on to the holder.
        detail: String,
    },
    CloseSession {
        session_id: SessionId,
        /// Why, when someone else closes it (an operator); told to the
        /// session's client when it next renews. Empty: no reason given.
        reason: String,
    },
    LockAcquire {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        /// `None` waits forever, `Some(0)` tries once.
        timeout_ms: Option<u64>,
        /// Retry identity; 0 = none. See `proto/syncd/v1/lock.proto`.
        acquire_id: u64,
    },
    /// Gives back a hold of a lock, semaphore or read-write lock.
    Release {
        kind: Kind,
        session_id: SessionId,
        name: String,
        fencing_token: FencingToken,
    },
    SemaphoreAcquire {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
        /// 0 = the existing semaphore's capacity.
        capacity: u32,
        /// 0 = 1.
        permits: u32,
    },
    RwLockAcquire {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
        mode: RwMode,
    },
    EventSet {
        name: String,
    },
    EventClear {
        name: String,
    },
    EventWait {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
    },
    ConditionWait {
        session_id: SessionId,
        name: String,
        /// The lock the caller holds under `fencing_token`.
        lock: String,
        fencing_token: FencingToken,
        waiter: WaiterId,
        /// Bounds the wait for a notification, not the re-acquire.
        timeout_ms: Option<u64>,
    },
    ConditionNotify {
        name: String,
        /// `None` wakes every waiter.
        count: Option<u32>,
    },
    BarrierWait {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        /// 0 = the stored barrier's parties.
        parties: u32,
        timeout_ms: Option<u64>,
    },
    BarrierReset {
        name: String,
    },
    BarrierDelete {
        name: String,
    },
    QueuePut {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        value: Vec<u8>,
        priority: u32,
        /// `None` = the existing queue's (0, unbounded, for a new one).
        capacity: Option<u32>,
        /// 0 = the existing queue's (the default for a new one).
        max_deliveries: u32,
        /// Retry identity; 0 = none. See `proto/syncd/v1/queue.proto`.
        put_id: u64,
    },
    QueueGet {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        /// 0 = the default.
        visibility_timeout_ms: u64,
        no_ack: bool,
    },
    QueueAck {
        session_id: SessionId,
        name: String,
        item_id: u64,
    },
    QueueNack {
        session_id: SessionId,
        name: String,
        item_id: u64,
    },
    QueueJoin {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
    },
    PoolCheckout {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
        /// 0 = the existing pool's.
        size: u32,
        /// 0 = never stale by age / by idleness.
        max_age_ms: u64,
        max_idle_ms: u64,
    },
    PoolCheckin {
        session_id: SessionId,
        name: String,
        fencing_token: FencingToken,
        healthy: bool,
        /// `None` keeps what the resource had.
        metadata: Option<Vec<u8>>,
    },
    /// Takes tokens from a bucket, waiting in line for them.
    BucketTake {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        settings: token_bucket::BucketSettings,
        tokens: u32,
    },
    /// Takes tokens from a bucket if they are there now; needs no session.
    BucketTry {
        name: String,
        settings: token_bucket::BucketSettings,
        tokens: u32,
    },
    /// Takes from every named bucket, or from none; needs no session.
    BucketTryMany {
        asks: Vec<token_bucket::BucketAsk>,
    },
    /// Forgets a bucket; its waiters hear NOT_FOUND.
    BucketDelete {
        name: String,
    },
    /// A permit for a call, or a refusal.
    BreakerAllow {
        session_id: SessionId,
        name: String,
        /// `None`: the existing breaker's.
        settings: Option<breaker::BreakerSettings>,
        acquire_id: u64,
    },
    /// A permit given back with its call's outcome.
    BreakerRecord {
        session_id: SessionId,
        name: String,
        fencing_token: FencingToken,
        failed: bool,
    },
    /// Streams the breaker's state until the watcher leaves.
    BreakerWatch {
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
    },
    BreakerControl {
        name: String,
        action: breaker::BreakerAction,
    },
    /// Forgets a breaker, its permits and its watchers.
    BreakerDelete {
        name: String,
    },
    /// The waiter's caller went away: forget it.
    Cancel {
        waiter: WaiterId,
    },
    /// A grant could not be delivered: release it again, whoever holds it.
    ReleaseUndelivered {
        fencing_token: FencingToken,
    },
    /// The grace of a restart, applied by the engine right after `restore`
    /// and before anything else: every lease and visibility timeout starts
    /// again in full, and every waiter ends with UNAVAILABLE (its stream is
    /// gone; the client waits again). Answers `Reply::Done`.
    Resume,
}

/// The answer to a command or a query, or an event for a waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    SessionCreated {
        session_id: SessionId,
        ttl_ms: u64,
    },
    SessionRenewed {
        ttl_ms: u64,
        /// Holds the session lost while it lived on, not yet confirmed.
        lost: Vec<LostHold>,
    },
    /// The unconfirmed notices of a session (`Query::PendingNotices`).
    Notices(Vec<LostHold>),
    Revoked {
        session_id: SessionId,
        kind: Kind,
        name: String,
    },
    SessionClosed {
        released: u32,
    },
    SessionList(Vec<super::session::SessionInfo>),
    /// The request waits; more events follow.
    Queued {
        position: u32,
    },
    /// A hold of a lock, semaphore or read-write lock.
    Granted {
        fencing_token: FencingToken,
    },
    /// A condition wait ended: the lock is held again.
    Reacquired {
        fencing_token: FencingToken,
        timed_out: bool,
    },
    /// An event is set.
    EventIsSet,
    /// A barrier released this party.
    BarrierPassed {
        arrival_index: u32,
        generation: u64,
    },
    /// Waiters woken (event set, condition notify) or aborted (barrier
    /// reset or delete).
    Count(u32),
    /// A queue item is stored (durable once the reply is sent).
    Stored {
        item_id: u64,
    },
    /// A queue item handed out; in flight under `fencing_token` unless it
    /// was a no-ack get.
    Delivered(queue::Delivery),
    Nacked {
        dead_lettered: bool,
    },
    /// Every item put before the join was acked or dead-lettered.
    Joined,
    /// A pool resource checked out, under its fencing token.
    CheckedOut(pool::Checkout),
    CheckedIn {
        evicted: bool,
    },
    /// A bucket's answer: tokens taken, or how long until they would be.
    TryTaken {
        taken: bool,
        retry_after_ms: u64,
        /// Whole tokens left.
        remaining: u32,
    },
    /// A many-bucket answer: taken from all, or from none; one verdict per
    /// bucket, in the request's order.
    TriedMany {
        taken: bool,
        verdicts: Vec<token_bucket::BucketVerdict>,
    },
    /// A primitive was forgotten: its waiters (or watchers) heard NOT_FOUND
    /// and its holds were dropped.
    Deleted {
        waiters_ended: u32,
        holds_dropped: u32,
    },
    /// A breaker's answer to `allow`.
    BreakerVerdict(breaker::Verdict),
    /// A breaker's state after an outcome; `counted` is false for a permit
    /// from an earlier state.
    BreakerRecorded {
        state: breaker::BreakerState,
        counted: bool,
    },
    /// A breaker's state, to a watcher: not final, more follow.
    BreakerChanged(breaker::StateChange),
    /// A breaker's state after an operator's request.
    BreakerStateIs(breaker::BreakerState),
    BreakerDescription(breaker::BreakerInfo),
    QueueDescription(queue::QueueInfo),
    PoolDescription(pool::PoolInfo),
    BucketDescription(token_bucket::BucketInfo),
    LockDescription(lock::LockInfo),
    SemaphoreDescription(semaphore::SemaphoreInfo),
    RwLockDescription(rwlock::RwLockInfo),
    EventDescription(event::EventInfo),
    ConditionDescription(condition::ConditionInfo),
    BarrierDescription(barrier::BarrierInfo),
    Listing(Vec<Summary>),
    Done,
}

impl Reply {
    /// True for a reply that ends a waiter's stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Queued { .. } | Reply::BreakerChanged(_))
    }

    /// The hold a reply grants, if any: used to release a grant that could
    /// not be delivered.
    pub fn granted_token(&self) -> Option<FencingToken> {
        match self {
            Reply::Granted { fencing_token } | Reply::Reacquired { fencing_token, .. } => {
                Some(*fencing_token)
            }
            Reply::Delivered(delivery) => delivery.fencing_token,
            Reply::CheckedOut(checkout) => Some(checkout.fencing_token),
            _ => None,
        }
    }
}

/// One line of `Query::List`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub kind: Kind,
    pub name: String,
    pub state: String,
}

/// Why a command was refused. Mapped to gRPC status codes in one place
/// (`server/status.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    FailedPrecondition,
    NotFound,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    /// A barrier is broken.
    Aborted,
    /// The session belongs to another identity.
    PermissionDenied,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
    /// Set when the refusal is that this session is gone (unknown, or ended
    /// while the call waited). Clients must tell that apart from other
    /// refusals with the same code, so it travels as data, not as wording.
    pub session_gone: Option<SessionId>,
    /// Set with `session_gone` when the session is known to have been
    /// closed (not expired): the reason the closer gave, maybe empty.
    pub session_closed: Option<String>,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            session_gone: None,
            session_closed: None,
        }
    }

    /// A refusal because `session_id` is gone.
    pub fn session_gone(
        code: Code,
        session_id: SessionId,
        message: impl Into<String>,
    ) -> Rejection {
        Rejection {
            session_gone: Some(session_id),
            ..Rejection::new(code, message)
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

pub type Result<T> = std::result::Result<T, Rejection>;

/// Effects of `apply` / `tick` beyond the caller's own reply.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events for waiters, in the order they happened.
    pub events: Vec<(WaiterId, Result<Reply>)>,
    /// Records to persist before any reply or event of this outcome is sent.
    pub changes: Vec<Change>,
    /// Holds granted in this step (each a new fencing token), in order.
    /// Plain data for the engine's metrics; nothing in the core reads it.
    pub holds_granted: Vec<(Kind, FencingToken)>,
    /// Holds that ended in this step, however (released, checked in,
    /// acked, expired with their session, revoked, deleted); as above.
    pub holds_ended: Vec<(Kind, FencingToken)>,
    /// Sessions that got a lost-hold notice in this step, so that the
    /// engine can push it to their open keep-alive streams at once.
    pub sessions_noticed: Vec<SessionId>,
}

/// What a command may add to the state: checked against the limits once,
/// in `State::apply`, for every kind.
#[derive(Debug, Default)]
pub(super) struct Demand<'a> {
    /// A session that may get a new hold or waiter.
    pub session: Option<SessionId>,
    /// The primitive the command creates if it does not exist.
    pub named: Option<(Kind, &'a str)>,
    /// The buckets a many-bucket try creates if they do not exist (kept as
    /// the request's slice: nothing is allocated on the hot path).
    pub buckets: &'a [token_bucket::BucketAsk],
}

impl Command {
    pub(super) fn demand(&self) -> Demand<'_> {
        fn both(session: SessionId, kind: Kind, name: &str) -> Demand<'_> {
            Demand {
                session: Some(session),
                named: Some((kind, name)),
                buckets: &[],
            }
        }
        fn creates(kind: Kind, name: &str) -> Demand<'_> {
            Demand {
                session: None,
                named: Some((kind, name)),
                buckets: &[],
            }
        }
        match self {
            Command::LockAcquire {
                session_id, name, ..
            } => both(*session_id, Kind::Lock, name),
            Command::SemaphoreAcquire {
                session_id, name, ..
            } => both(*session_id, Kind::Semaphore, name),
            Command::RwLockAcquire {
                session_id, name, ..
            } => both(*session_id, Kind::RwLock, name),
            Command::EventWait {
                session_id, name, ..
            } => both(*session_id, Kind::Event, name),
            Command::ConditionWait {
                session_id, name, ..
            } => both(*session_id, Kind::Condition, name),
            Command::BarrierWait {
                session_id, name, ..
            } => both(*session_id, Kind::Barrier, name),
            Command::QueuePut {
                session_id, name, ..
            }
            | Command::QueueGet {
                session_id, name, ..
            } => both(*session_id, Kind::Queue, name),
            Command::QueueJoin { session_id, .. } => Demand {
                session: Some(*session_id),
                ..Demand::default()
            },
            Command::PoolCheckout {
                session_id, name, ..
            } => both(*session_id, Kind::Pool, name),
            Command::BucketTake {
                session_id, name, ..
            } => both(*session_id, Kind::TokenBucket, name),
            Command::BreakerAllow {
                session_id, name, ..
            } => both(*session_id, Kind::Breaker, name),
            Command::BreakerWatch { session_id, .. } => Demand {
                session: Some(*session_id),
                ..Demand::default()
            },
            Command::EventSet { name } => creates(Kind::Event, name),
            Command::BucketTry { name, .. } => creates(Kind::TokenBucket, name),
            Command::BucketTryMany { asks } => Demand {
                session: None,
                named: None,
                buckets: asks,
            },
            // Adds nothing: it renews leases and ends waits.
            Command::Resume => Demand::default(),
            _ => Demand::default(),
        }
    }
}

impl Command {
    /// The session the command acts for, if any: the one whose owner must
    /// be the caller (see `State::check_session_owner`). Every variant is
    /// listed, so that a new command has to say whether it acts for one.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            Command::KeepAlive { session_id, .. }
            | Command::CloseSession { session_id, .. }
            | Command::LockAcquire { session_id, .. }
            | Command::Release { session_id, .. }
            | Command::SemaphoreAcquire { session_id, .. }
            | Command::RwLockAcquire { session_id, .. }
            | Command::EventWait { session_id, .. }
            | Command::ConditionWait { session_id, .. }
            | Command::BarrierWait { session_id, .. }
            | Command::QueuePut { session_id, .. }
            | Command::QueueGet { session_id, .. }
            | Command::QueueAck { session_id, .. }
            | Command::QueueNack { session_id, .. }
            | Command::QueueJoin { session_id, .. }
            | Command::PoolCheckout { session_id, .. }
            | Command::PoolCheckin { session_id, .. }
            | Command::BucketTake { session_id, .. }
            | Command::BreakerAllow { session_id, .. }
            | Command::BreakerRecord { session_id, .. }
            | Command::BreakerWatch { session_id, .. } => Some(*session_id),
            Command::CreateSession { .. }
            | Command::Revoke { .. }
            | Command::EventSet { .. }
            | Command::EventClear { .. }
            | Command::ConditionNotify { .. }
            | Command::BarrierReset { .. }
            | Command::BarrierDelete { .. }
            | Command::BucketTry { .. }
            | Command::BucketTryMany { .. }
            | Command::BucketDelete { .. }
            | Command::BreakerControl { .. }
            | Command::BreakerDelete { .. }
            | Command::Cancel { .. }
            | Command::ReleaseUndelivered { .. }
            | Command::Resume => None,
        }
    }
}
