//! The persisted form of the state: keys, protobuf records, and restore.
//!
//! Policy: the records are the whole state. `State::restore` of the records
//! written up to some step gives a state that behaves exactly like the one
//! that wrote them (the same replies, events, changes and deadlines for the
//! same later commands), which is what replaying a log after a snapshot
//! needs. The grace a restart gives (fresh leases, waits ended) is not
//! restore's business: it is `Command::Resume`, which the engine applies
//! right after restoring.
//!
//! Layout (one keyspace, ordered; ids and tokens as u64 big-endian):
//! - `meta/counters`          → `Counters` (last token, session id, object
//!   id, and the clock), written with every batch;
//! - `session/<id>`           → `SessionRecord` (with its lost-hold notices);
//! - `lease/<id>`             → `LeaseRecord` (when it expires), rewritten by
//!   every keep-alive;
//! - `ended/<id>`             → `EndedSessionRecord`, for the latest
//!   [`ENDED_REMEMBERED_MAX`](super::session::ENDED_REMEMBERED_MAX) ended
//!   sessions;
//! - `lock/<name>`            → `LockRecord` (only held locks are stored);
//! - `hold/<token>`           → `HoldRecord` (semaphore, rwlock and breaker
//!   holds);
//! - `event/<name>`           → `EventRecord` (only set events are stored);
//! - `barrier/<name>`         → `BarrierRecord`;
//! - `waiter/<waiter id>`     → `WaiterRecord`: every waiter of every kind,
//!   with its request, deadline and place in its queue (one put when it
//!   queues, one delete when it leaves: see `records::waiters`);
//! - `queue/`, `qitem/`, `putid/` (see `queue::records`), `pool/`, `pres/`
//!   (`pool::records`), `bucket/` (`token_bucket`), `breaker/`
//!   (`breaker::records`).
//!
//! What is not stored is derived on restore: the indexes of holds and
//! waiters, the deadline index, a semaphore's permits held, a breaker's
//! probes in flight, and the alarms of pools (the earliest stale idle
//! resource), buckets (when the head's tokens are there) and open breakers
//! (`open_until_ms`); a queue item's visibility alarm is stored with it.

pub(in crate::core) mod waiters;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use prost::Message;

use super::barrier::Barrier;
use super::event::Event;
use super::holds::Hold;
use super::lock::Lock;
use super::lost::{LossCause, LostHold, LostNotices};
use super::rwlock::RwMode;
use super::semaphore::SemaphoreHold;
use super::session::Session;
use super::{Counters, FencingToken, Kind, Limits, SessionId, State, WaiterId};
use crate::proto::store as pb;

pub const COUNTERS_KEY: &[u8] = b"meta/counters";
const SESSION_PREFIX: &[u8] = b"session/";
const LOCK_PREFIX: &[u8] = b"lock/";
const HOLD_PREFIX: &[u8] = b"hold/";
const EVENT_PREFIX: &[u8] = b"event/";
const BARRIER_PREFIX: &[u8] = b"barrier/";
const LEASE_PREFIX: &[u8] = b"lease/";
const ENDED_PREFIX: &[u8] = b"ended/";

/// One write to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

pub(super) fn counters_change(counters: &Counters, clock_ms: u64) -> Change {
    let record = pb::Counters {
        last_fencing_token: counters.last_fencing_token,
        last_session_id: counters.last_session_id,
        clock_ms,
        last_object_id: counters.last_object_id,
    };
    Change::Put {
        key: COUNTERS_KEY.to_vec(),
        value: record.encode_to_vec(),
    }
}

fn session_key(id: SessionId) -> Vec<u8> {
    [SESSION_PREFIX, &id.to_be_bytes()].concat()
}

pub(super) fn session_put(session: &Session) -> Change {
    let lost_holds = session
        .lost
        .unconfirmed()
        .map(|notice| pb::LostHoldRecord {
            seq: notice.seq,
            fencing_token: notice.fencing_token,
            kind: notice.kind.as_str().to_owned(),
            name: notice.name.clone(),
            reason: notice.cause.code(),
            detail: notice.cause.detail().to_owned(),
            lost_at_ms: notice.lost_at_ms,
        })
        .collect();
    let record = pb::SessionRecord {
        id: session.id,
        ttl_ms: session.ttl_ms,
        client_name: session.client_name.clone(),
        host: session.host.clone(),
        owner: session.owner.clone(),
        lost_holds,
        last_notice_seq: session.lost.last_seq(),
    };
    Change::Put {
        key: session_key(session.id),
        value: record.encode_to_vec(),
    }
}

pub(super) fn session_delete(id: SessionId) -> Change {
    Change::Delete {
        key: session_key(id),
    }
}

fn lease_key(id: SessionId) -> Vec<u8> {
    [LEASE_PREFIX, &id.to_be_bytes()].concat()
}

pub(super) fn lease_put(session: &Session) -> Change {
    let record = pb::LeaseRecord {
        expires_at_ms: session.expires_at_ms,
    };
    Change::Put {
        key: lease_key(session.id),
        value: record.encode_to_vec(),
    }
}

pub(super) fn lease_delete(id: SessionId) -> Change {
    Change::Delete { key: lease_key(id) }
}

fn ended_key(id: SessionId) -> Vec<u8> {
    [ENDED_PREFIX, &id.to_be_bytes()].concat()
}

/// How a session ended (`closed`: with the closer's reason), at `order` in
/// the ring of ended sessions.
pub(super) fn ended_put(id: SessionId, order: u64, closed: Option<&str>) -> Change {
    let record = pb::EndedSessionRecord {
        order,
        closed: closed.is_some(),
        reason: closed.unwrap_or_default().to_owned(),
    };
    Change::Put {
        key: ended_key(id),
        value: record.encode_to_vec(),
    }
}

pub(super) fn ended_delete(id: SessionId) -> Change {
    Change::Delete { key: ended_key(id) }
}

fn lock_key(name: &str) -> Vec<u8> {
    [LOCK_PREFIX, name.as_bytes()].concat()
}

pub(super) fn lock_put(name: &str, hold: &Hold) -> Change {
    let record = pb::LockRecord {
        session_id: hold.session_id,
        fencing_token: hold.fencing_token,
        acquired_at_ms: hold.acquired_at_ms,
        acquire_id: hold.acquire_id,
    };
    Change::Put {
        key: lock_key(name),
        value: record.encode_to_vec(),
    }
}

pub(super) fn lock_delete(name: &str) -> Change {
    Change::Delete {
        key: lock_key(name),
    }
}

/// What a hold record keeps beyond the `Hold` itself.
#[derive(Clone, Copy, Debug)]
pub(super) enum HoldExtra {
    Semaphore { capacity: u32, permits: u32 },
    RwLock { mode: RwMode },
    Breaker { era: u64 },
}

fn hold_key(token: FencingToken) -> Vec<u8> {
    [HOLD_PREFIX, &token.to_be_bytes()].concat()
}

pub(super) fn hold_put(kind: Kind, name: &str, hold: &Hold, extra: HoldExtra) -> Change {
    let mut record = pb::HoldRecord {
        kind: kind.as_str().to_owned(),
        name: name.to_owned(),
        session_id: hold.session_id,
        fencing_token: hold.fencing_token,
        acquired_at_ms: hold.acquired_at_ms,
        acquire_id: hold.acquire_id,
        ..Default::default()
    };
    match extra {
        HoldExtra::Semaphore { capacity, permits } => {
            record.capacity = capacity;
            record.permits = permits;
        }
        HoldExtra::RwLock { mode } => record.write = mode == RwMode::Write,
        HoldExtra::Breaker { era } => record.era = era,
    }
    Change::Put {
        key: hold_key(hold.fencing_token),
        value: record.encode_to_vec(),
    }
}

pub(super) fn hold_delete(token: FencingToken) -> Change {
    Change::Delete {
        key: hold_key(token),
    }
}

fn named_key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

pub(super) fn event_put(name: &str, set_at_ms: u64) -> Change {
    Change::Put {
        key: named_key(EVENT_PREFIX, name),
        value: pb::EventRecord { set_at_ms }.encode_to_vec(),
    }
}

pub(super) fn event_delete(name: &str) -> Change {
    Change::Delete {
        key: named_key(EVENT_PREFIX, name),
    }
}

pub(super) fn barrier_put(name: &str, barrier: &Barrier) -> Change {
    let record = pb::BarrierRecord {
        parties: barrier.parties,
        generation: barrier.generation,
        broken: barrier.broken,
    };
    Change::Put {
        key: named_key(BARRIER_PREFIX, name),
        value: record.encode_to_vec(),
    }
}

pub(super) fn barrier_delete(name: &str) -> Change {
    Change::Delete {
        key: named_key(BARRIER_PREFIX, name),
    }
}

/// The stored data does not describe a valid state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreError(pub String);

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

pub(super) fn corrupt(key: &[u8], why: impl fmt::Display) -> RestoreError {
    RestoreError(format!(
        "stored record {:?} is invalid: {why}",
        String::from_utf8_lossy(key)
    ))
}

pub(super) fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, RestoreError> {
    M::decode(value).map_err(|e| corrupt(key, e))
}

/// A session's stored lost-hold notices: known kinds and causes, `seq`
/// rising, none above `last_notice_seq`.
fn restore_notices(record: &pb::SessionRecord) -> Result<LostNotices, RestoreError> {
    let bad = |why: String| RestoreError(format!("session {}: {why}", record.id));
    let mut notices = Vec::with_capacity(record.lost_holds.len());
    let mut previous_seq = 0;
    for r in &record.lost_holds {
        let kind = Kind::parse(&r.kind)
            .ok_or_else(|| bad(format!("lost-hold notice of unknown kind {:?}", r.kind)))?;
        let cause = LossCause::from_code(r.reason, r.detail.clone())
            .ok_or_else(|| bad(format!("lost-hold notice with unknown reason {}", r.reason)))?;
        if r.seq <= previous_seq || r.seq > record.last_notice_seq {
            return Err(bad(format!(
                "lost-hold notice {} out of order (after {previous_seq}, last {})",
                r.seq, record.last_notice_seq
            )));
        }
        previous_seq = r.seq;
        notices.push(LostHold {
            seq: r.seq,
            fencing_token: r.fencing_token,
            kind,
            name: r.name.clone(),
            cause,
            lost_at_ms: r.lost_at_ms,
        });
    }
    Ok(LostNotices::restored(record.last_notice_seq, notices))
}

/// Records `restore` reads before it can place them: first the sessions,
/// then what they own, then what waits on that.
#[derive(Default)]
struct Stash {
    sessions: Vec<pb::SessionRecord>,
    leases: BTreeMap<SessionId, u64>,
    ended: Vec<(SessionId, pb::EndedSessionRecord)>,
    locks: Vec<(String, pb::LockRecord)>,
    holds: Vec<pb::HoldRecord>,
    waiters: Vec<(WaiterId, pb::WaiterRecord)>,
}

fn utf8(key: &[u8], name: &[u8]) -> Result<String, RestoreError> {
    String::from_utf8(name.to_vec()).map_err(|e| corrupt(key, e))
}

/// The id in a key `<prefix><id as 8 bytes>`.
fn id_of(key: &[u8], rest: &[u8]) -> Result<u64, RestoreError> {
    let bytes = <[u8; 8]>::try_from(rest).map_err(|_| corrupt(key, "not <prefix><8-byte id>"))?;
    Ok(u64::from_be_bytes(bytes))
}

impl State {
    /// Rebuilds the state from stored records, exactly as it was when they
    /// were written (see the module doc); `Command::Resume` then gives the
    /// grace of a restart.
    pub fn restore(
        limits: Limits,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<State, RestoreError> {
        let mut state = State::new(limits);
        let mut stash = Stash::default();
        for (key, value) in records {
            state.take_record(&key, &value, &mut stash)?;
        }
        state.restore_sessions(stash.sessions, stash.leases)?;
        state.restore_ended(stash.ended)?;
        for (name, record) in stash.locks {
            state.restore_lock(name, record)?;
        }
        for record in stash.holds {
            state.restore_hold(record)?;
        }
        state.finish_queue_restore()?;
        state.restore_waiters(stash.waiters)?;
        state.finish_pool_restore()?;
        state.finish_bucket_restore();
        Ok(state)
    }

    /// Reads one record into the state or the stash.
    fn take_record(
        &mut self,
        key: &[u8],
        value: &[u8],
        stash: &mut Stash,
    ) -> Result<(), RestoreError> {
        if key == COUNTERS_KEY {
            let c: pb::Counters = decode(key, value)?;
            self.counters = Counters {
                last_fencing_token: c.last_fencing_token,
                last_session_id: c.last_session_id,
                last_object_id: c.last_object_id,
            };
            self.now_ms = c.clock_ms;
        } else if let Some(id) = key.strip_prefix(SESSION_PREFIX) {
            let record: pb::SessionRecord = decode(key, value)?;
            if id != record.id.to_be_bytes() {
                return Err(corrupt(key, "session id does not match its key"));
            }
            stash.sessions.push(record);
        } else if let Some(id) = key.strip_prefix(LEASE_PREFIX) {
            let record: pb::LeaseRecord = decode(key, value)?;
            stash.leases.insert(id_of(key, id)?, record.expires_at_ms);
        } else if let Some(id) = key.strip_prefix(ENDED_PREFIX) {
            let record: pb::EndedSessionRecord = decode(key, value)?;
            stash.ended.push((id_of(key, id)?, record));
        } else if let Some(name) = key.strip_prefix(LOCK_PREFIX) {
            stash.locks.push((utf8(key, name)?, decode(key, value)?));
        } else if let Some(token) = key.strip_prefix(HOLD_PREFIX) {
            let record: pb::HoldRecord = decode(key, value)?;
            if token != record.fencing_token.to_be_bytes() {
                return Err(corrupt(key, "fencing token does not match its key"));
            }
            stash.holds.push(record);
        } else if let Some(name) = key.strip_prefix(EVENT_PREFIX) {
            let record: pb::EventRecord = decode(key, value)?;
            let event = Event::set_at(record.set_at_ms);
            self.events.insert(utf8(key, name)?, event);
        } else if let Some(name) = key.strip_prefix(BARRIER_PREFIX) {
            let r: pb::BarrierRecord = decode(key, value)?;
            if r.parties == 0 {
                return Err(corrupt(key, "a barrier of 0 parties"));
            }
            let barrier = Barrier::restored(r.parties, r.generation, r.broken);
            self.barriers.insert(utf8(key, name)?, barrier);
        } else if let Some(id) = key.strip_prefix(waiters::WAITER_PREFIX) {
            let id = WaiterId(id_of(key, id)?);
            stash.waiters.push((id, decode(key, value)?));
        } else if !(self.restore_queue_record(key, value)?
            || self.restore_pool_record(key, value)?
            || self.restore_bucket_record(key, value)?
            || self.restore_breaker_record(key, value)?)
        {
            return Err(corrupt(key, "unknown key"));
        }
        Ok(())
    }

    /// Puts the stored sessions back with their leases as stored. A session
    /// without a lease record (written by an older syncd, which renewed
    /// every lease at restore) gets a full TTL from the stored clock.
    fn restore_sessions(
        &mut self,
        records: Vec<pb::SessionRecord>,
        mut leases: BTreeMap<SessionId, u64>,
    ) -> Result<(), RestoreError> {
        for record in records {
            if record.id > self.counters.last_session_id {
                return Err(RestoreError(format!(
                    "session {} is newer than the session counter",
                    record.id
                )));
            }
            let lost = restore_notices(&record)?;
            let expires_at_ms = (leases.remove(&record.id))
                .unwrap_or_else(|| self.now_ms.saturating_add(record.ttl_ms));
            self.sessions.insert(Session {
                id: record.id,
                ttl_ms: record.ttl_ms,
                client_name: record.client_name,
                host: record.host,
                owner: record.owner,
                expires_at_ms,
                holds: BTreeSet::new(),
                waiters: BTreeSet::new(),
                lost,
            });
        }
        match leases.keys().next() {
            Some(id) => Err(RestoreError(format!(
                "a lease of session {id}, which is not stored"
            ))),
            None => Ok(()),
        }
    }

    /// Puts back the ring of ended sessions in the order they ended.
    fn restore_ended(
        &mut self,
        mut records: Vec<(SessionId, pb::EndedSessionRecord)>,
    ) -> Result<(), RestoreError> {
        records.sort_by_key(|(_, r)| r.order);
        for (id, r) in records {
            if id > self.counters.last_session_id || self.sessions.get(id).is_some() {
                return Err(RestoreError(format!(
                    "session {id} is stored as ended, but it lives or is newer than the counter"
                )));
            }
            let closed = r.closed.then_some(r.reason);
            if !self.sessions.restore_ended(r.order, id, closed) {
                return Err(RestoreError(format!(
                    "ended session {id} is out of order (order {})",
                    r.order
                )));
            }
        }
        Ok(())
    }

    /// Checks a restored hold's token and session, and indexes it.
    pub(super) fn restore_hold_ref(
        &mut self,
        kind: Kind,
        name: &str,
        session_id: SessionId,
        token: FencingToken,
        acquire_id: u64,
    ) -> Result<(), RestoreError> {
        let what = format!("{} {name:?}", kind.as_str());
        if token == 0 || token > self.counters.last_fencing_token {
            return Err(RestoreError(format!(
                "{what} has token {token}, beyond the token counter"
            )));
        }
        if self.holds.contains_key(&token) {
            return Err(RestoreError(format!("fencing token {token} is held twice")));
        }
        if self.sessions.get(session_id).is_none() {
            return Err(RestoreError(format!(
                "{what} is held by session {session_id}, which is not stored"
            )));
        }
        self.register_hold(token, session_id, kind, name, acquire_id);
        Ok(())
    }

    fn restore_hold(&mut self, r: pb::HoldRecord) -> Result<(), RestoreError> {
        let kind = Kind::parse(&r.kind)
            .filter(|k| matches!(k, Kind::Semaphore | Kind::RwLock | Kind::Breaker))
            .ok_or_else(|| RestoreError(format!("a hold of unknown kind {:?}", r.kind)))?;
        let token = r.fencing_token;
        self.restore_hold_ref(kind, &r.name, r.session_id, token, r.acquire_id)?;
        let hold = Hold {
            session_id: r.session_id,
            fencing_token: token,
            acquired_at_ms: r.acquired_at_ms,
            acquire_id: r.acquire_id,
        };
        let fits = match kind {
            Kind::Breaker => {
                return self.breaker_restore_permit(&r.name, hold, r.era);
            }
            Kind::Semaphore => {
                let hold = SemaphoreHold {
                    hold,
                    permits: r.permits,
                };
                let semaphore = self.semaphores.entry(r.name.clone()).or_default();
                semaphore.restore_hold(r.capacity, hold)
            }
            _ => {
                let mode = if r.write { RwMode::Write } else { RwMode::Read };
                self.rwlocks
                    .entry(r.name.clone())
                    .or_default()
                    .restore_hold(hold, mode)
            }
        };
        if !fits {
            return Err(RestoreError(format!(
                "the holds of {} {:?} do not fit together",
                kind.as_str(),
                r.name
            )));
        }
        Ok(())
    }

    fn restore_lock(&mut self, name: String, record: pb::LockRecord) -> Result<(), RestoreError> {
        let token = record.fencing_token;
        self.restore_hold_ref(
            Kind::Lock,
            &name,
            record.session_id,
            token,
            record.acquire_id,
        )?;
        let hold = Hold {
            session_id: record.session_id,
            fencing_token: token,
            acquired_at_ms: record.acquired_at_ms,
            acquire_id: record.acquire_id,
        };
        self.locks.insert(name, Lock::from_hold(hold));
        Ok(())
    }
}
