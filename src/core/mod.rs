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
//! - [`State::query`] answers one [`Query`] (a describe, a listing, a
//!   session's pending notices) from `&self` at a `now_ms` no earlier than
//!   the last `apply`/`tick`: it changes nothing, not even the clock, so
//!   reads need not be steps of a log, and a node that answers them stays
//!   the same as one that does not.
//! - Everything a reply or event reveals depends only on changes already in
//!   the same or earlier outcomes, so an engine that persists an outcome's
//!   changes before sending its replies never shows anything that a crash
//!   could take back. A query reveals every change applied so far: an
//!   engine that applies before it persists holds a query's answer until
//!   the changes applied before it are durable, like a reply.
//! - The changes of all outcomes so far, plus [`State::checkpoint`], are the
//!   whole state: [`State::restore`] of them gives back a state that behaves
//!   exactly like the one that wrote them (same replies, events, changes and
//!   deadlines for the same later commands and ticks), waiters and leases
//!   included. So a node may restore the records of log entry k and replay
//!   entries k+1.. through `apply`/`tick`.
//! - Restore gives no grace. After a restart the engine applies
//!   [`Command::Resume`] first, before any other command, and persists its
//!   changes before serving: every lease restarts with its full TTL (time
//!   the server was down never costs a holder its lease), every queue item
//!   in flight gets its full visibility timeout again, and every waiter
//!   ends with `UNAVAILABLE` (its stream went with the old process; the
//!   client waits again).

pub mod barrier;
pub mod breaker;
mod command;
pub mod condition;
pub mod event;
mod holds;
pub mod lock;
pub mod lost;
pub mod pool;
mod query;
pub mod queue;
pub mod records;
mod resume;
pub mod rwlock;
pub mod semaphore;
pub mod session;
pub mod token_bucket;
pub mod waitq;

use std::collections::{BTreeMap, BTreeSet};

use command::Demand;
pub use command::{Code, Command, Outcome, Rejection, Reply, Result, RwMode, Summary};
pub use holds::{Hold, HolderInfo, WaiterInfo};
use holds::{HoldRef, WaiterRef};
pub use lost::{LossCause, LostHold};
pub use query::Query;
pub use records::{Change, RestoreError};
use session::{SessionEnd, Sessions};

/// A session's id: from a persisted counter, never reused.
pub type SessionId = u64;
/// A fencing token: from one global counter that only increases.
pub type FencingToken = u64;

/// Identifies one waiting request. Assigned by the caller of `apply` (the
/// engine), unique among the waiters that live. Waiters are persisted with
/// their ids (`waiter/<id>`); their order in a queue is kept apart from the
/// ids (see `waitq`), which need not rise in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// The kinds of primitive. Each has its own namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Lock,
    Semaphore,
    RwLock,
    Event,
    Condition,
    Barrier,
    Queue,
    Pool,
    TokenBucket,
    Breaker,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Lock,
        Kind::Semaphore,
        Kind::RwLock,
        Kind::Event,
        Kind::Condition,
        Kind::Barrier,
        Kind::Queue,
        Kind::Pool,
        Kind::TokenBucket,
        Kind::Breaker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Semaphore => "semaphore",
            Kind::RwLock => "rwlock",
            Kind::Event => "event",
            Kind::Condition => "condition",
            Kind::Barrier => "barrier",
            Kind::Queue => "queue",
            Kind::Pool => "pool",
            Kind::TokenBucket => "ratelimit",
            Kind::Breaker => "breaker",
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
    pub semaphore_capacity_max: u32,
    /// Largest queue item (and pool metadata), in bytes.
    pub item_bytes_max: usize,
    /// Items one queue may hold (ready, in flight and waiting to be put).
    pub queue_items_max: usize,
    /// Put ids each session remembers for retried puts.
    pub put_ids_per_session_max: usize,
    /// Buckets one many-bucket try may name.
    pub buckets_per_request_max: usize,
    /// Holds one session may have; a request for more is refused.
    pub holds_per_session_max: usize,
    /// Waiters (and watches) one session may have at once.
    pub waiters_per_session_max: usize,
    /// Primitives of all kinds together; creating more is refused.
    pub primitives_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_ttl_ms_min: 1_000,
            session_ttl_ms_max: 3_600_000,
            sessions_max: 100_000,
            waiters_per_primitive_max: 10_000,
            name_bytes_max: 256,
            semaphore_capacity_max: 1_000_000,
            item_bytes_max: 64 * 1024,
            queue_items_max: 1_000_000,
            put_ids_per_session_max: 256,
            buckets_per_request_max: 100,
            holds_per_session_max: 10_000,
            waiters_per_session_max: 10_000,
            primitives_max: 1_000_000,
        }
    }
}

/// The counters that must survive restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    last_fencing_token: FencingToken,
    last_session_id: SessionId,
    /// Queue item and pool resource ids.
    last_object_id: u64,
}

/// Something the core must do by itself at a time, besides lease expiry
/// and wait deadlines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Alarm {
    /// A hold runs out (a queue item's visibility timeout): release it.
    HoldExpires(FencingToken),
    /// A primitive has timed work (a pool evicting stale resources).
    Primitive(Kind, String),
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
    alarms: BTreeSet<(u64, Alarm)>,
    locks: BTreeMap<String, lock::Lock>,
    semaphores: BTreeMap<String, semaphore::Semaphore>,
    rwlocks: BTreeMap<String, rwlock::RwLock>,
    events: BTreeMap<String, event::Event>,
    conditions: BTreeMap<String, condition::Condition>,
    barriers: BTreeMap<String, barrier::Barrier>,
    queues: BTreeMap<String, queue::Queue>,
    pools: BTreeMap<String, pool::Pool>,
    buckets: BTreeMap<String, token_bucket::Bucket>,
    breakers: BTreeMap<String, breaker::Breaker>,
    /// The put ids each session made (for retried puts).
    put_ids: BTreeMap<SessionId, queue::PutIds>,
    /// Queue records read by `restore`, until `finish_queue_restore`.
    queue_restore: queue::QueueRestore,
    /// Waiters that joined or left a queue in the current step, and whether
    /// their record was stored before it (see `records::waiters`).
    touched_waiters: BTreeMap<WaiterId, bool>,
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
            alarms: BTreeSet::new(),
            locks: BTreeMap::new(),
            semaphores: BTreeMap::new(),
            rwlocks: BTreeMap::new(),
            events: BTreeMap::new(),
            conditions: BTreeMap::new(),
            barriers: BTreeMap::new(),
            queues: BTreeMap::new(),
            pools: BTreeMap::new(),
            buckets: BTreeMap::new(),
            breakers: BTreeMap::new(),
            put_ids: BTreeMap::new(),
            queue_restore: queue::QueueRestore::default(),
            touched_waiters: BTreeMap::new(),
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

    /// The highest id of a waiter in the state (restored ones included), so
    /// that an engine can hand out new ids above every one in use.
    pub fn max_waiter_id(&self) -> Option<WaiterId> {
        self.waiters.keys().next_back().copied()
    }

    pub fn hold_count(&self) -> usize {
        self.holds.len()
    }

    /// Queue items ready for a get, over every queue. O(queues): for a
    /// metrics scrape, not for every command.
    pub fn queue_items_ready(&self) -> usize {
        self.queues.values().map(queue::Queue::ready_len).sum()
    }

    /// Runs one command. See the module doc for the contract.
    pub fn apply(&mut self, now_ms: u64, command: Command, out: &mut Outcome) -> Result<Reply> {
        let reply = self.run_command(now_ms, command, out);
        self.flush_waiter_records(out);
        reply
    }

    fn run_command(&mut self, now_ms: u64, command: Command, out: &mut Outcome) -> Result<Reply> {
        self.advance(now_ms);
        self.check_room(&command.demand())?;
        match command {
            Command::CreateSession {
                ttl_ms,
                client_name,
                host,
                owner,
            } => self.create_session(ttl_ms, client_name, host, owner, out),
            Command::KeepAlive {
                session_id,
                notices_seen_through,
            } => self.keep_alive(session_id, notices_seen_through, out),
            Command::Revoke {
                fencing_token,
                detail,
            } => self.revoke(fencing_token, detail, out),
            Command::CloseSession { session_id, reason } => {
                self.require_session(session_id)?;
                let released = self.end_session(session_id, SessionEnd::Closed { reason }, out);
                Ok(Reply::SessionClosed { released })
            }
            Command::LockAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
            } => self.lock_acquire(session_id, name, waiter, timeout_ms, acquire_id, out),
            Command::Release {
                kind,
                session_id,
                name,
                fencing_token,
            } => {
                self.validate_name(kind, &name)?;
                self.require_session(session_id)?;
                self.release(kind, session_id, &name, fencing_token, out)
            }
            Command::SemaphoreAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
                capacity,
                permits,
            } => self.semaphore_acquire(
                session_id, name, waiter, timeout_ms, acquire_id, capacity, permits, out,
            ),
            Command::RwLockAcquire {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
                mode,
            } => {
                let request = rwlock::RwRequest { acquire_id, mode };
                self.rwlock_acquire(session_id, name, waiter, timeout_ms, request, out)
            }
            Command::EventSet { name } => self.event_set(name, out),
            Command::EventClear { name } => self.event_clear(name, out),
            Command::EventWait {
                session_id,
                name,
                waiter,
                timeout_ms,
            } => self.event_wait(session_id, name, waiter, timeout_ms),
            Command::ConditionWait {
                session_id,
                name,
                lock,
                fencing_token,
                waiter,
                timeout_ms,
            } => self.condition_wait(
                session_id,
                name,
                lock,
                fencing_token,
                waiter,
                timeout_ms,
                out,
            ),
            Command::ConditionNotify { name, count } => self.condition_notify(name, count, out),
            Command::BarrierWait {
                session_id,
                name,
                waiter,
                parties,
                timeout_ms,
            } => self.barrier_wait(session_id, name, waiter, parties, timeout_ms, out),
            Command::BarrierReset { name } => self.barrier_reset(name, out),
            Command::BarrierDelete { name } => self.barrier_delete(name, out),
            Command::QueuePut {
                session_id,
                name,
                waiter,
                timeout_ms,
                value,
                priority,
                capacity,
                max_deliveries,
                put_id,
            } => {
                let put = queue::PutRequest {
                    value,
                    priority,
                    capacity,
                    max_deliveries,
                    put_id,
                };
                self.queue_put(session_id, name, waiter, timeout_ms, put, out)
            }
            Command::QueueGet {
                session_id,
                name,
                waiter,
                timeout_ms,
                visibility_timeout_ms,
                no_ack,
            } => {
                let get = queue::GetRequest {
                    visibility_timeout_ms,
                    no_ack,
                };
                self.queue_get(session_id, name, waiter, timeout_ms, get, out)
            }
            Command::QueueAck {
                session_id,
                name,
                item_id,
            } => self.queue_ack(session_id, name, item_id, out),
            Command::QueueNack {
                session_id,
                name,
                item_id,
            } => self.queue_nack(session_id, name, item_id, out),
            Command::QueueJoin {
                session_id,
                name,
                waiter,
                timeout_ms,
            } => self.queue_join(session_id, name, waiter, timeout_ms),
            Command::PoolCheckout {
                session_id,
                name,
                waiter,
                timeout_ms,
                acquire_id,
                size,
                max_age_ms,
                max_idle_ms,
            } => {
                let request = pool::CheckoutRequest {
                    acquire_id,
                    size,
                    max_age_ms,
                    max_idle_ms,
                };
                self.pool_checkout(session_id, name, waiter, timeout_ms, request, out)
            }
            Command::PoolCheckin {
                session_id,
                name,
                fencing_token,
                healthy,
                metadata,
            } => self.pool_checkin(session_id, name, fencing_token, healthy, metadata, out),
            Command::BucketTake {
                session_id,
                name,
                waiter,
                timeout_ms,
                settings,
                tokens,
            } => self.bucket_take(session_id, name, waiter, timeout_ms, settings, tokens, out),
            Command::BucketTry {
                name,
                settings,
                tokens,
            } => self.bucket_try(&name, settings, tokens, out),
            Command::BucketTryMany { asks } => self.bucket_try_many(asks, out),
            Command::BucketDelete { name } => self.bucket_delete(&name, out),
            Command::BreakerAllow {
                session_id,
                name,
                settings,
                acquire_id,
            } => self.breaker_allow(session_id, name, settings, acquire_id, out),
            Command::BreakerRecord {
                session_id,
                name,
                fencing_token,
                failed,
            } => self.breaker_record(session_id, &name, fencing_token, failed, out),
            Command::BreakerWatch {
                session_id,
                name,
                waiter,
            } => self.breaker_watch(session_id, &name, waiter, out),
            Command::BreakerControl { name, action } => self.breaker_control(&name, action, out),
            Command::BreakerDelete { name } => self.breaker_delete(&name, out),
            Command::Cancel { waiter } => {
                self.cancel_waiter(waiter, out);
                Ok(Reply::Done)
            }
            Command::ReleaseUndelivered { fencing_token } => {
                self.release_hold(fencing_token, out);
                Ok(Reply::Done)
            }
            Command::Resume => Ok(self.resume(out)),
        }
    }

    /// Expires sessions and waits whose time has come.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outcome) {
        self.advance(now_ms);
        let expired = self.sessions.expired(now_ms);
        // Drop the waiters of every expiring session before releasing any
        // hold, so that no hold is granted to a session whose lease is over.
        for &session_id in &expired {
            self.drop_session_waiters(session_id, &SessionEnd::Expired, out);
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
            self.deadline_passed(waiter, out);
        }
        while let Some((at, alarm)) = self.alarms.first().cloned() {
            if at > now_ms {
                break;
            }
            self.alarms.remove(&(at, alarm.clone()));
            match alarm {
                Alarm::HoldExpires(token) => {
                    self.lose_hold(token, LossCause::VisibilityExpired, out)
                }
                Alarm::Primitive(kind, name) => self.alarm_rang(kind, &name, out),
            }
        }
        self.flush_waiter_records(out);
    }

    /// When `tick` next has something to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let wait = self.deadlines.first().map(|(at, _)| *at);
        let alarm = self.alarms.first().map(|(at, _)| *at);
        [self.sessions.next_expiry_ms(), wait, alarm]
            .into_iter()
            .flatten()
            .min()
    }

    /// The record of counters and clock, to write with every batch.
    pub fn checkpoint(&self) -> Change {
        records::counters_change(&self.counters, self.now_ms)
    }

    /// Refuses a command that would take a session past its holds or
    /// waiters, or the server past its number of primitives. (A waiter
    /// granted later may still take its session one hold past the limit
    /// per waiter: the bound is holds + waiters.)
    fn check_room(&self, demand: &Demand) -> Result<()> {
        let exhausted = |message: String| Err(Rejection::new(Code::ResourceExhausted, message));
        if let Some(session) = demand.session.and_then(|id| self.sessions.get(id)) {
            let (holds, waiters) = (session.holds.len(), session.waiters.len());
            if holds >= self.limits.holds_per_session_max {
                return exhausted(format!(
                    "holds_per_session_max: session {} already has {holds} holds (limit {})",
                    session.id, self.limits.holds_per_session_max
                ));
            }
            if waiters >= self.limits.waiters_per_session_max {
                return exhausted(format!(
                    "waiters_per_session_max: session {} already has {waiters} waits (limit {})",
                    session.id, self.limits.waiters_per_session_max
                ));
            }
        }
        let named = demand.named.iter();
        let buckets = (demand.buckets.iter()).map(|ask| (Kind::TokenBucket, ask.name.as_str()));
        let new = (named.copied().chain(buckets))
            .filter(|(kind, name)| !self.exists(*kind, name))
            .count();
        let count = self.primitive_count();
        if new > 0 && count + new > self.limits.primitives_max {
            return exhausted(format!(
                "primitives_max: the server already has {count} primitives (limit {})",
                self.limits.primitives_max
            ));
        }
        Ok(())
    }

    fn exists(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Lock => self.locks.contains_key(name),
            Kind::Semaphore => self.semaphores.contains_key(name),
            Kind::RwLock => self.rwlocks.contains_key(name),
            Kind::Event => self.events.contains_key(name),
            Kind::Condition => self.conditions.contains_key(name),
            Kind::Barrier => self.barriers.contains_key(name),
            Kind::Queue => self.queues.contains_key(name),
            Kind::Pool => self.pools.contains_key(name),
            Kind::TokenBucket => self.buckets.contains_key(name),
            Kind::Breaker => self.breakers.contains_key(name),
        }
    }

    /// Primitives of every kind that exist now.
    pub fn primitive_count(&self) -> usize {
        self.locks.len()
            + self.semaphores.len()
            + self.rwlocks.len()
            + self.events.len()
            + self.conditions.len()
            + self.barriers.len()
            + self.queues.len()
            + self.pools.len()
            + self.buckets.len()
            + self.breakers.len()
    }

    fn advance(&mut self, now_ms: u64) {
        debug_assert!(now_ms >= self.now_ms, "time ran backwards");
        self.now_ms = self.now_ms.max(now_ms);
    }
}

/// The entries of a table whose names start with `prefix`, in name order.
fn named<'a, P>(
    table: &'a BTreeMap<String, P>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a P)> + 'a {
    table
        .range(prefix.to_owned()..)
        .take_while(move |(name, _)| name.starts_with(prefix))
}

#[cfg(test)]
mod tests;
