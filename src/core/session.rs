//! Sessions: the leases that own every hold and every waiter.
//!
//! A session lives until `expires_at_ms`; each keep-alive moves that to
//! `now + ttl_ms`. When it expires or is closed, the caller (`State`) releases
//! everything listed in `holds` and removes everything in `waiters`, in the
//! same `apply` step, so no hold outlives its session.
//!
//! Invariants:
//! - `expiry` holds exactly one `(expires_at_ms, id)` entry per live session;
//! - a session id is never reused: ids come from a persisted counter;
//! - after a restore every session's lease restarts at `now + ttl_ms`, so
//!   downtime never costs a holder its lease.

use std::collections::{BTreeMap, BTreeSet};

use super::{FencingToken, SessionId, WaiterId};

#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub ttl_ms: u64,
    pub client_name: String,
    pub expires_at_ms: u64,
    /// Fencing tokens of the holds this session owns.
    pub holds: BTreeSet<FencingToken>,
    /// Waiters this session has queued anywhere.
    pub waiters: BTreeSet<WaiterId>,
}

impl Session {
    pub fn lease_left_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }
}

/// All live sessions with an index by expiry time.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    by_id: BTreeMap<SessionId, Session>,
    expiry: BTreeSet<(u64, SessionId)>,
}

impl Sessions {
    pub fn insert(&mut self, session: Session) {
        self.expiry.insert((session.expires_at_ms, session.id));
        let previous = self.by_id.insert(session.id, session);
        debug_assert!(previous.is_none(), "session id reused");
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.by_id.get_mut(&id)
    }

    /// Moves a session's expiry to `now + ttl`; returns the TTL granted.
    pub fn renew(&mut self, id: SessionId, now_ms: u64) -> Option<u64> {
        let session = self.by_id.get_mut(&id)?;
        self.expiry.remove(&(session.expires_at_ms, id));
        session.expires_at_ms = now_ms.saturating_add(session.ttl_ms);
        self.expiry.insert((session.expires_at_ms, id));
        Some(session.ttl_ms)
    }

    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let session = self.by_id.remove(&id)?;
        self.expiry.remove(&(session.expires_at_ms, id));
        Some(session)
    }

    /// The earliest expiry time, if any session lives.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Ids of the sessions whose lease ran out at `now_ms`, oldest first.
    pub fn expired(&self, now_ms: u64) -> Vec<SessionId> {
        self.expiry
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| *id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: SessionId, ttl_ms: u64, now_ms: u64) -> Session {
        Session {
            id,
            ttl_ms,
            client_name: String::new(),
            expires_at_ms: now_ms + ttl_ms,
            holds: BTreeSet::new(),
            waiters: BTreeSet::new(),
        }
    }

    #[test]
    fn renew_moves_expiry() {
        let mut sessions = Sessions::default();
        sessions.insert(session(1, 1_000, 0));
        sessions.insert(session(2, 5_000, 0));
        assert_eq!(sessions.next_expiry_ms(), Some(1_000));
        assert_eq!(sessions.renew(1, 4_500), Some(1_000));
        assert_eq!(sessions.next_expiry_ms(), Some(5_000));
        assert_eq!(sessions.expired(5_000), vec![2]);
        assert_eq!(sessions.expired(5_500), vec![2, 1]);
    }

    #[test]
    fn remove_clears_index() {
        let mut sessions = Sessions::default();
        sessions.insert(session(1, 1_000, 0));
        assert!(sessions.remove(1).is_some());
        assert_eq!(sessions.next_expiry_ms(), None);
        assert!(sessions.renew(1, 10).is_none());
    }
}
