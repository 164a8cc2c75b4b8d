//! The persisted form of the state: keys, protobuf records, and restore.
//!
//! Layout (one keyspace, ordered):
//! - `meta/counters`       → `Counters` (last token, last session id, clock)
//! - `session/<id as u64 BE>` → `SessionRecord`
//! - `lock/<name>`         → `LockRecord` (only held locks are stored)
//!
//! Waiters are not persisted: they belong to open streams, which a restart
//! ends anyway; clients retry.

use std::collections::BTreeSet;
use std::fmt;

use prost::Message;

use super::lock::{Lock, LockHold};
use super::session::Session;
use super::{Counters, HoldRef, Kind, Limits, SessionId, State};
use crate::proto::store as pb;

const COUNTERS_KEY: &[u8] = b"meta/counters";
const SESSION_PREFIX: &[u8] = b"session/";
const LOCK_PREFIX: &[u8] = b"lock/";

/// One write to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

pub(super) fn counters_change(
    last_fencing_token: u64,
    last_session_id: u64,
    clock_ms: u64,
) -> Change {
    let record = pb::Counters {
        last_fencing_token,
        last_session_id,
        clock_ms,
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
    let record = pb::SessionRecord {
        id: session.id,
        ttl_ms: session.ttl_ms,
        client_name: session.client_name.clone(),
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

pub(super) fn lock_put(name: &str, hold: &LockHold) -> Change {
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

/// The stored data does not describe a valid state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreError(pub String);

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

fn corrupt(key: &[u8], why: impl fmt::Display) -> RestoreError {
    RestoreError(format!(
        "stored record {:?} is invalid: {why}",
        String::from_utf8_lossy(key)
    ))
}

fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, RestoreError> {
    M::decode(value).map_err(|e| corrupt(key, e))
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
        let mut sessions = Vec::new();
        for (key, value) in records {
            if key == COUNTERS_KEY {
                let c: pb::Counters = decode(&key, &value)?;
                state.counters = Counters {
                    last_fencing_token: c.last_fencing_token,
                    last_session_id: c.last_session_id,
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
            state.sessions.insert(Session {
                id: record.id,
                ttl_ms: record.ttl_ms,
                client_name: record.client_name,
                expires_at_ms: state.now_ms.saturating_add(record.ttl_ms),
                holds: BTreeSet::new(),
                waiters: BTreeSet::new(),
            });
        }
        for (name, record) in locks {
            state.restore_lock(name, record)?;
        }
        Ok(state)
    }

    fn restore_lock(&mut self, name: String, record: pb::LockRecord) -> Result<(), RestoreError> {
        let token = record.fencing_token;
        if token == 0 || token > self.counters.last_fencing_token {
            return Err(RestoreError(format!(
                "lock {name:?} has token {token}, beyond the token counter"
            )));
        }
        if self.holds.contains_key(&token) {
            return Err(RestoreError(format!("fencing token {token} is held twice")));
        }
        let Some(session) = self.sessions.get_mut(record.session_id) else {
            return Err(RestoreError(format!(
                "lock {name:?} is held by session {}, which is not stored",
                record.session_id
            )));
        };
        session.holds.insert(token);
        self.holds.insert(
            token,
            HoldRef {
                session_id: record.session_id,
                kind: Kind::Lock,
                name: name.clone(),
            },
        );
        let hold = LockHold {
            session_id: record.session_id,
            fencing_token: token,
            acquired_at_ms: record.acquired_at_ms,
            acquire_id: record.acquire_id,
        };
        self.locks.insert(name, Lock::from_hold(hold));
        Ok(())
    }
}
