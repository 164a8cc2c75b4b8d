//! The pure, deterministic state machine behind syncd.
//!
//! Nothing in `core` does I/O, reads a clock, spawns a task or draws a random
//! number: time comes in as `now_ms`, effects go out as data. The same
//! commands at the same times always give the same replies, events and
//! changes, which is what makes every rule here unit-testable with simulated
//! time and property-testable against a model.
//!
//! # The call contract (for the engine)
//! - [`State::apply`] runs one [`Command`] at `now_ms` and returns the
//!   caller's reply. Side effects on *other* callers (grants to waiters,
//!   timeouts) and the records to persist are appended to an [`Outcome`].
//! - [`State::next_deadline_ms`] says when something will happen by itself
//!   (a lease expiry, a wait deadline); call [`State::tick`] at or after that
//!   time. `now_ms` must never decrease between calls.
//! - Everything a reply or event reveals depends only on changes already in
//!   the same or earlier outcomes, so an engine that persists an outcome's
//!   changes before sending its replies never shows anything that a crash
//!   could take back.

pub mod lock;
pub mod records;
pub mod session;
pub mod waitq;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use records::{Change, RestoreError};
use session::{Session, Sessions};

/// A session's id: from a persisted counter, never reused.
pub type SessionId = u64;
/// A fencing token: from one global counter that only increases.
pub type FencingToken = u64;

/// Identifies one waiting request. Assigned by the caller of `apply` (the
/// engine), unique for the life of the process; waiters are not persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// The kinds of primitive. Each has its own namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Lock,
}

impl Kind {
    pub const ALL: [Kind; 1] = [Kind::Lock];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Bounds on everything a client can make the server keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub session_ttl_ms_min: u64,
    pub session_ttl_ms_max: u64,
    pub sessions_max: usize,
    pub waiters_per_primitive_max: usize,
    pub name_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_ttl_ms_min: 1_000,
            session_ttl_ms_max: 3_600_000,
            sessions_max: 100_000,
            waiters_per_primitive_max: 10_000,
            name_bytes_max: 256,
        }
    }
}

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

impl Outcome {
    pub fn clear(&mut self) {
        self.events.clear();
        self.changes.clear();
    }
}

/// Where a hold lives, indexed by its fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HoldRef {
    session_id: SessionId,
    kind: Kind,
    name: String,
}

/// Where a waiter waits, indexed by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WaiterRef {
    session_id: SessionId,
    kind: Kind,
    name: String,
    deadline_ms: Option<u64>,
}

/// The counters that must survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    last_fencing_token: FencingToken,
    last_session_id: SessionId,
}

/// All state of a syncd server.
#[derive(Debug)]
pub struct State {
    limits: Limits,
    now_ms: u64,
    counters: Counters,
    sessions: Sessions,
    holds: BTreeMap<FencingToken, HoldRef>,
    waiters: BTreeMap<WaiterId, WaiterRef>,
    deadlines: BTreeSet<(u64, WaiterId)>,
    locks: BTreeMap<String, lock::Lock>,
}

impl State {
    pub fn new(limits: Limits) -> State {
        State {
            limits,
            now_ms: 0,
            counters: Counters::default(),
            sessions: Sessions::default(),
            holds: BTreeMap::new(),
            waiters: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            locks: BTreeMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The clock as last seen by `apply`/`tick`.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    pub fn hold_count(&self) -> usize {
        self.holds.len()
    }

    /// Runs one command. See the module doc for the contract.
    pub fn apply(&mut self, now_ms: u64, command: Command, out: &mut Outcome) -> Result<Reply> {
        self.advance(now_ms);
        match command {
            Command::CreateSession {
                ttl_ms,
                client_name,
            } => self.create_session(ttl_ms, client_name, out),
            Command::KeepAlive { session_id } => self.keep_alive(session_id),
            Command::CloseSession { session_id } => {
                self.require_session(session_id)?;
                let released = self.end_session(session_id, SessionEnd::Closed, out);
                Ok(Reply::SessionClosed { released })
            }
            Command::LockAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
            } => self.lock_acquire(session_id, name, waiter, timeout_ms, acquire_id, out),
            Command::LockRelease {
                session_id,
                name,
                fencing_token,
            } => {
                // Checked here, not in `lock_release`: the internal releases
                // (session end, undelivered grant) must work for a restored
                // name that today's limits refuse, and after the session has
                // been removed.
                self.validate_name(Kind::Lock, &name)?;
                self.require_session(session_id)?;
                self.lock_release(session_id, &name, fencing_token, out)
            }
            Command::LockDescribe { name } => self.lock_describe(&name),
            Command::List { kind, prefix } => Ok(Reply::Listing(self.list(kind, &prefix))),
            Command::Cancel { waiter } => {
                self.cancel_waiter(waiter, out);
                Ok(Reply::Done)
            }
            Command::ReleaseUndelivered { fencing_token } => {
                self.release_hold(fencing_token, out);
                Ok(Reply::Done)
            }
        }
    }

    /// Expires sessions and waits whose time has come.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outcome) {
        self.advance(now_ms);
        let expired = self.sessions.expired(now_ms);
        // Drop the waiters of every expiring session before releasing any
        // hold, so that no hold is granted to a session whose lease is over.
        for &session_id in &expired {
            self.drop_session_waiters(session_id, SessionEnd::Expired, out);
        }
        for session_id in expired {
            self.end_session(session_id, SessionEnd::Expired, out);
        }
        let due: Vec<WaiterId> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| *id)
            .collect();
        for waiter in due {
            let Some(place) = self.remove_waiter(waiter) else {
                continue;
            };
            let message = format!(
                "timed out waiting for {} {:?}",
                place.kind.as_str(),
                place.name
            );
            out.events
                .push((waiter, Err(Rejection::new(Code::DeadlineExceeded, message))));
            self.after_waiter_left(&place, out);
        }
    }

    /// When `tick` next has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let wait = self.deadlines.first().map(|(at, _)| *at);
        match (self.sessions.next_expiry_ms(), wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The record of counters and clock, to write with every batch.
    pub fn checkpoint(&self) -> Change {
        records::counters_change(
            self.counters.last_fencing_token,
            self.counters.last_session_id,
            self.now_ms,
        )
    }

    fn advance(&mut self, now_ms: u64) {
        debug_assert!(now_ms >= self.now_ms, "time ran backwards");
        self.now_ms = self.now_ms.max(now_ms);
    }

    // --- sessions -------------------------------------------------------

    fn create_session(
        &mut self,
        ttl_ms: u64,
        client_name: String,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let limits = &self.limits;
        if ttl_ms < limits.session_ttl_ms_min || ttl_ms > limits.session_ttl_ms_max {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "ttl_ms {ttl_ms} is outside the allowed range {}..={} ms",
                    limits.session_ttl_ms_min, limits.session_ttl_ms_max
                ),
            ));
        }
        if client_name.len() > limits.name_bytes_max {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "client_name is {} bytes, the limit is {}",
                    client_name.len(),
                    limits.name_bytes_max
                ),
            ));
        }
        if self.sessions.len() >= limits.sessions_max {
            return Err(Rejection::new(
                Code::ResourceExhausted,
                format!(
                    "sessions_max: {} sessions already open",
                    limits.sessions_max
                ),
            ));
        }
        self.counters.last_session_id += 1;
        let session = Session {
            id: self.counters.last_session_id,
            ttl_ms,
            client_name,
            expires_at_ms: self.now_ms.saturating_add(ttl_ms),
            holds: BTreeSet::new(),
            waiters: BTreeSet::new(),
        };
        out.changes.push(records::session_put(&session));
        out.changes.push(self.checkpoint());
        let reply = Reply::SessionCreated {
            session_id: session.id,
            ttl_ms,
        };
        self.sessions.insert(session);
        Ok(reply)
    }

    fn keep_alive(&mut self, session_id: SessionId) -> Result<Reply> {
        match self.sessions.renew(session_id, self.now_ms) {
            Some(ttl_ms) => Ok(Reply::SessionRenewed { ttl_ms }),
            None => Err(unknown_session(session_id)),
        }
    }

    fn require_session(&self, session_id: SessionId) -> Result<&Session> {
        self.sessions
            .get(session_id)
            .ok_or_else(|| unknown_session(session_id))
    }

    /// Releases everything a session holds and drops its waiters, then
    /// forgets it. Returns the number of holds released.
    fn end_session(&mut self, session_id: SessionId, why: SessionEnd, out: &mut Outcome) -> u32 {
        self.drop_session_waiters(session_id, why, out);
        let Some(session) = self.sessions.remove(session_id) else {
            return 0;
        };
        for token in &session.holds {
            self.release_hold(*token, out);
        }
        out.changes.push(records::session_delete(session_id));
        session.holds.len() as u32
    }

    /// Removes every waiter of a session; each hears that its session ended.
    fn drop_session_waiters(&mut self, session_id: SessionId, why: SessionEnd, out: &mut Outcome) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        for waiter in std::mem::take(&mut session.waiters) {
            let Some(place) = self.remove_waiter(waiter) else {
                continue;
            };
            let message = format!("session {session_id} {} while waiting", why.as_str());
            out.events.push((
                waiter,
                Err(Rejection::new(Code::FailedPrecondition, message)),
            ));
            self.after_waiter_left(&place, out);
        }
    }

    // --- holds and waiters, shared by every primitive ---------------------

    /// Takes the next fencing token.
    fn next_fencing_token(&mut self, out: &mut Outcome) -> FencingToken {
        self.counters.last_fencing_token += 1;
        out.changes.push(self.checkpoint());
        self.counters.last_fencing_token
    }

    /// Records that `session_id` holds `token` on a primitive.
    fn register_hold(
        &mut self,
        token: FencingToken,
        session_id: SessionId,
        kind: Kind,
        name: &str,
    ) {
        let session = self
            .sessions
            .get_mut(session_id)
            .expect("a hold is only granted to a live session");
        session.holds.insert(token);
        self.holds.insert(
            token,
            HoldRef {
                session_id,
                kind,
                name: name.to_owned(),
            },
        );
    }

    /// Forgets a hold in the indexes (the primitive itself is updated by
    /// the caller).
    fn unregister_hold(&mut self, token: FencingToken) -> Option<HoldRef> {
        let hold = self.holds.remove(&token)?;
        if let Some(session) = self.sessions.get_mut(hold.session_id) {
            session.holds.remove(&token);
        }
        Some(hold)
    }

    /// Releases a hold whoever owns it, and wakes whoever can go next.
    fn release_hold(&mut self, token: FencingToken, out: &mut Outcome) {
        let Some(hold) = self.holds.get(&token) else {
            return;
        };
        match hold.kind {
            Kind::Lock => {
                let (session_id, name) = (hold.session_id, hold.name.clone());
                // The index says this hold exists, so the release cannot fail.
                let _ = self.lock_release(session_id, &name, token, out);
            }
        }
    }

    fn register_waiter(
        &mut self,
        waiter: WaiterId,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        timeout_ms: Option<u64>,
    ) {
        let deadline_ms = timeout_ms.map(|t| self.now_ms.saturating_add(t));
        if let Some(at) = deadline_ms {
            self.deadlines.insert((at, waiter));
        }
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.waiters.insert(waiter);
        }
        self.waiters.insert(
            waiter,
            WaiterRef {
                session_id,
                kind,
                name: name.to_owned(),
                deadline_ms,
            },
        );
    }

    /// Forgets a waiter in the indexes (not in its primitive's queue).
    fn unregister_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
        let place = self.waiters.remove(&waiter)?;
        if let Some(at) = place.deadline_ms {
            self.deadlines.remove(&(at, waiter));
        }
        if let Some(session) = self.sessions.get_mut(place.session_id) {
            session.waiters.remove(&waiter);
        }
        Some(place)
    }

    /// Removes a waiter from its primitive's queue and from the indexes.
    fn remove_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
        let place = self.unregister_waiter(waiter)?;
        match place.kind {
            Kind::Lock => self.lock_remove_waiter(&place.name, waiter),
        }
        Some(place)
    }

    fn cancel_waiter(&mut self, waiter: WaiterId, out: &mut Outcome) {
        if let Some(place) = self.remove_waiter(waiter) {
            self.after_waiter_left(&place, out);
        }
    }

    /// A waiter left: others may be able to go now, or the primitive may be
    /// empty and vanish.
    fn after_waiter_left(&mut self, place: &WaiterRef, out: &mut Outcome) {
        match place.kind {
            Kind::Lock => self.lock_wake(&place.name, out),
        }
    }

    fn client_name(&self, session_id: SessionId) -> String {
        self.sessions
            .get(session_id)
            .map(|s| s.client_name.clone())
            .unwrap_or_default()
    }

    fn lease_left_ms(&self, session_id: SessionId) -> u64 {
        self.sessions
            .get(session_id)
            .map_or(0, |s| s.lease_left_ms(self.now_ms))
    }

    fn list(&self, kind: Option<Kind>, prefix: &str) -> Vec<Summary> {
        let mut out = Vec::new();
        if kind.is_none_or(|k| k == Kind::Lock) {
            out.extend(self.lock_summaries(prefix));
        }
        out
    }

    /// Checks a primitive's name: 1 to `name_bytes_max` bytes, no control
    /// characters.
    fn validate_name(&self, kind: Kind, name: &str) -> Result<()> {
        let problem = if name.is_empty() {
            Some("is empty".to_owned())
        } else if name.len() > self.limits.name_bytes_max {
            Some(format!(
                "is {} bytes, the limit is {}",
                name.len(),
                self.limits.name_bytes_max
            ))
        } else if name.chars().any(char::is_control) {
            Some("contains a control character".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Rejection::new(
                Code::InvalidArgument,
                format!("{} name {problem}", kind.as_str()),
            )),
            None => Ok(()),
        }
    }

    fn check_queue_room(&self, kind: Kind, name: &str, len: usize) -> Result<()> {
        let limit = self.limits.waiters_per_primitive_max;
        if len >= limit {
            return Err(Rejection::new(
                Code::ResourceExhausted,
                format!(
                    "waiters_per_primitive_max: {} {name:?} already has {limit} waiters",
                    kind.as_str()
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum SessionEnd {
    Closed,
    Expired,
}

impl SessionEnd {
    fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Closed => "was closed",
            SessionEnd::Expired => "expired",
        }
    }
}

fn unknown_session(session_id: SessionId) -> Rejection {
    Rejection::new(
        Code::NotFound,
        format!("session {session_id} not found (it expired, was closed, or never existed)"),
    )
}

#[cfg(test)]
mod tests;
