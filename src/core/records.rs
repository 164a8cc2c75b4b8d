//! The persisted form of the state: keys, protobuf records, and restore.
//!
//! Layout (one keyspace, ordered):
//! - `meta/counters`       → `Counters` (last token, last session id, clock)
//! - `session/<id as u64 BE>` → `SessionRecord`
//! - `lock/<name>`         → `LockRecord` (only held locks are stored)
//! - `hold/<token as u64 BE>` → `HoldRecord` (semaphore and rwlock holds)
//! - `event/<name>`        → `EventRecord` (only set events are stored)
//! - `barrier/<name>`      → `BarrierRecord`
//!
//! Waiters are not persisted: they belong to open streams, which a restart
//! ends anyway; clients retry.

use std::collections::BTreeSet;
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
use super::{Counters, FencingToken, Kind, Limits, SessionId, State};
use crate::proto::store as pb;

pub const COUNTERS_KEY: &[u8] = b"meta/counters";
const SESSION_PREFIX: &[u8] = b"session/";
const LOCK_PREFIX: &[u8] = b"lock/";
const HOLD_PREFIX: &[u8] = b"hold/";
const EVENT_PREFIX: &[u8] = b"event/";
const BARRIER_PREFIX: &[u8] = b"barrier/";

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

impl State {
    /// Rebuilds the state from stored records. Every session gets a full TTL
    /// from the restored clock: time the server was down never counts
    /// against a lease.
    pub fn restore(
        limits: Limits,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<State, RestoreError> {
        let mut state = State::new(limits);
        let mut locks = Vec::new();
        let mut holds = Vec::new();
        let mut sessions = Vec::new();
        for (key, value) in records {
            if key == COUNTERS_KEY {
                let c: pb::Counters = decode(&key, &value)?;
                state.counters = Counters {
                    last_fencing_token: c.last_fencing_token,
                    last_session_id: c.last_session_id,
                    last_object_id: c.last_object_id,
                };
                state.now_ms = c.clock_ms;
            } else if let Some(id) = key.strip_prefix(SESSION_PREFIX) {
                let record: pb::SessionRecord = decode(&key, &value)?;
                if id != record.id.to_be_bytes() {
                    return Err(corrupt(&key, "session id does not match its key"));
                }
                sessions.push(record);
            } else if let Some(name) = key.strip_prefix(LOCK_PREFIX) {
                let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(&key, e))?;
                let record: pb::LockRecord = decode(&key, &value)?;
                locks.push((name, record));
            } else if let Some(token) = key.strip_prefix(HOLD_PREFIX) {
                let record: pb::HoldRecord = decode(&key, &value)?;
                if token != record.fencing_token.to_be_bytes() {
                    return Err(corrupt(&key, "fencing token does not match its key"));
                }
                holds.push(record);
            } else if let Some(name) = key.strip_prefix(EVENT_PREFIX) {
                let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(&key, e))?;
                let record: pb::EventRecord = decode(&key, &value)?;
                state.events.insert(name, Event::set_at(record.set_at_ms));
            } else if let Some(name) = key.strip_prefix(BARRIER_PREFIX) {
                let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(&key, e))?;
                let r: pb::BarrierRecord = decode(&key, &value)?;
                if r.parties == 0 {
                    return Err(corrupt(&key, "a barrier of 0 parties"));
                }
                let barrier = Barrier::restored(r.parties, r.generation, r.broken);
                state.barriers.insert(name, barrier);
            } else if state.restore_queue_record(&key, &value)?
                || state.restore_pool_record(&key, &value)?
                || state.restore_bucket_record(&key, &value)?
                || state.restore_breaker_record(&key, &value)?
            {
                // Taken by the queue or the pool; checked in `finish_restore`.
            } else {
                return Err(corrupt(&key, "unknown key"));
            }
        }
        for record in sessions {
            if record.id > state.counters.last_session_id {
                return Err(RestoreError(format!(
                    "session {} is newer than the session counter",
                    record.id
                )));
            }
            let lost = restore_notices(&record)?;
            state.sessions.insert(Session {
                id: record.id,
                ttl_ms: record.ttl_ms,
                client_name: record.client_name,
                host: record.host,
                owner: record.owner,
                expires_at_ms: state.now_ms.saturating_add(record.ttl_ms),
                holds: BTreeSet::new(),
                waiters: BTreeSet::new(),
                lost,
            });
        }
        for (name, record) in locks {
            state.restore_lock(name, record)?;
        }
        for record in holds {
            state.restore_hold(record)?;
        }
        state.finish_queue_restore()?;
        state.finish_pool_restore()?;
        Ok(state)
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
