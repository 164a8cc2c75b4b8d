//! What goes into the state machine and what comes out: commands, replies,
//! rejections, and the outcome of a step (events for waiters, records to
//! persist).

use std::fmt;

use super::{lock, Change, FencingToken, Kind, SessionId, WaiterId};

/// Everything a client (or the engine) can ask of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateSession {
        ttl_ms: u64,
        client_name: String,
    },
    KeepAlive {
        session_id: SessionId,
    },
    CloseSession {
        session_id: SessionId,
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
    LockRelease {
        session_id: SessionId,
        name: String,
        fencing_token: FencingToken,
    },
    LockDescribe {
        name: String,
    },
    List {
        kind: Option<Kind>,
        prefix: String,
    },
    /// The waiter's caller went away: forget it.
    Cancel {
        waiter: WaiterId,
    },
    /// A grant could not be delivered: release it again, whoever holds it.
    ReleaseUndelivered {
        fencing_token: FencingToken,
    },
}

/// The answer to a command, or an event for a waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    SessionCreated {
        session_id: SessionId,
        ttl_ms: u64,
    },
    SessionRenewed {
        ttl_ms: u64,
    },
    SessionClosed {
        released: u32,
    },
    /// The request waits; more events follow.
    Queued {
        position: u32,
    },
    LockGranted {
        fencing_token: FencingToken,
    },
    LockDescription(lock::LockInfo),
    Listing(Vec<Summary>),
    Done,
}

impl Reply {
    /// True for a reply that ends a waiter's stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Queued { .. })
    }

    /// The hold a reply grants, if any: used to release a grant that could
    /// not be delivered.
    pub fn granted_token(&self) -> Option<FencingToken> {
        match self {
            Reply::LockGranted { fencing_token } => Some(*fencing_token),
            _ => None,
        }
    }
}

/// One line of `List`.
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
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
}
