//! Sessions: the leases that own every hold and every waiter.
//!
//! A session lives until `expires_at_ms`; each keep-alive moves that to
//! `now + ttl_ms`. When it expires or is closed, the caller (`State`) releases
//! everything listed in `holds` and removes everything in `waiters`, in the
//! same `apply` step, so no hold outlives its session.
//!
//! Persisted: each session (`session/<id>`), its lease (`lease/<id>`, the
//! only record a keep-alive writes), and how the latest
//! [`ENDED_REMEMBERED_MAX`] ended sessions ended (`ended/<id>`).
//!
//! Invariants:
//! - `expiry` holds exactly one `(expires_at_ms, id)` entry per live session;
//! - a session id is never reused: ids come from a persisted counter;
//! - every change of `expires_at_ms` and of the ring of ended sessions is in
//!   the same step's changes, so a restore gives back exactly the same
//!   leases and the same answers to late keep-alives;
//! - a restore does not renew anything: the grace after a restart (every
//!   lease restarts at `now + ttl_ms`, so downtime never costs a holder its
//!   lease) is `Command::Resume`, which the engine applies right after
//!   restoring.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::lost::LostNotices;
use super::records::{self, Change};
use super::{
    Code, Command, FencingToken, Kind, Outcome, Query, Rejection, Reply, Result, SessionId, State,
    WaiterId,
};

#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    pub ttl_ms: u64,
    pub client_name: String,
    /// Where the client connected from when it created the session.
    pub host: String,
    /// The identity that created it; only it may use the session (empty:
    /// created while the server checked no tokens).
    pub owner: String,
    pub expires_at_ms: u64,
    /// Fencing tokens of the holds this session owns.
    pub holds: BTreeSet<FencingToken>,
    /// Waiters this session has queued anywhere.
    pub waiters: BTreeSet<WaiterId>,
    /// Holds it lost while it lived on, not yet confirmed by its client.
    pub lost: LostNotices,
}

impl Session {
    pub fn lease_left_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }
}

/// All live sessions with an index by expiry time, and how the latest ones
/// that ended did.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    by_id: BTreeMap<SessionId, Session>,
    expiry: BTreeSet<(u64, SessionId)>,
    /// How the latest [`ENDED_REMEMBERED_MAX`] ended sessions ended, and
    /// their ids in the order they ended (the oldest end is forgotten
    /// first), each with its place in that order: one above the previous
    /// end's, stored with it so that a restore rebuilds the same ring.
    ended: BTreeMap<SessionId, Ended>,
    ended_order: VecDeque<(u64, SessionId)>,
}

/// How many ended sessions are remembered, so that a client that renews
/// late hears whether its session expired or was closed (and why).
pub const ENDED_REMEMBERED_MAX: usize = 10_000;

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ended {
    Expired,
    /// Closed by someone else than its client, with the reason given.
    Closed {
        reason: String,
    },
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

    /// Forgets a session, remembering how it ended; the records of both go
    /// to `changes`.
    fn remove(
        &mut self,
        id: SessionId,
        ended: Ended,
        changes: &mut Vec<Change>,
    ) -> Option<Session> {
        let session = self.by_id.remove(&id)?;
        self.expiry.remove(&(session.expires_at_ms, id));
        changes.push(records::session_delete(id));
        changes.push(records::lease_delete(id));
        let order = (self.ended_order.back()).map_or(0, |(o, _)| o.saturating_add(1));
        let closed = match &ended {
            Ended::Expired => None,
            Ended::Closed { reason } => Some(reason.as_str()),
        };
        changes.push(records::ended_put(id, order, closed));
        self.ended.insert(id, ended);
        self.ended_order.push_back((order, id));
        if self.ended_order.len() > ENDED_REMEMBERED_MAX {
            if let Some((_, oldest)) = self.ended_order.pop_front() {
                self.ended.remove(&oldest);
                changes.push(records::ended_delete(oldest));
            }
        }
        Some(session)
    }

    /// Puts back a stored end (`closed`: with its reason), in order: false
    /// if `order` is not above the last one's.
    pub(super) fn restore_ended(
        &mut self,
        order: u64,
        id: SessionId,
        closed: Option<String>,
    ) -> bool {
        let in_order = self.ended_order.back().is_none_or(|(o, _)| *o < order);
        if !in_order || self.ended.contains_key(&id) {
            return false;
        }
        let ended = match closed {
            None => Ended::Expired,
            Some(reason) => Ended::Closed { reason },
        };
        self.ended.insert(id, ended);
        self.ended_order.push_back((order, id));
        if self.ended_order.len() > ENDED_REMEMBERED_MAX {
            if let Some((_, oldest)) = self.ended_order.pop_front() {
                self.ended.remove(&oldest);
            }
        }
        true
    }

    /// The refusal for a session that does not live: NOT_FOUND, saying how
    /// it ended when that is remembered.
    pub fn not_found(&self, session_id: SessionId) -> Rejection {
        let (why, closed) = match self.ended.get(&session_id) {
            None => (
                "not found (it expired, was closed, or never existed)".to_owned(),
                None,
            ),
            Some(Ended::Expired) => ("expired".to_owned(), None),
            Some(Ended::Closed { reason }) if reason.is_empty() => {
                ("was closed".to_owned(), Some(reason.clone()))
            }
            Some(Ended::Closed { reason }) => {
                (format!("was closed: {reason}"), Some(reason.clone()))
            }
        };
        Rejection {
            session_closed: closed,
            ..Rejection::session_gone(
                Code::NotFound,
                session_id,
                format!("session {session_id} {why}"),
            )
        }
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

// --- the session rules of `State` -----------------------------------------

impl State {
    pub(super) fn create_session(
        &mut self,
        ttl_ms: u64,
        client_name: String,
        host: String,
        owner: String,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let limits = &self.limits;
        if ttl_ms < limits.session_ttl_ms_min || ttl_ms > limits.session_ttl_ms_max {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "session TTL of {ttl_ms} ms (ttl_ms) is outside the allowed range \
                     {} ms to {} ms",
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
        for (field, value) in [("host", &host), ("owner", &owner)] {
            if value.len() > limits.name_bytes_max {
                return Err(Rejection::new(
                    Code::InvalidArgument,
                    format!(
                        "{field} is {} bytes, the limit is {}",
                        value.len(),
                        limits.name_bytes_max
                    ),
                ));
            }
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
            host,
            owner,
            expires_at_ms: self.now_ms.saturating_add(ttl_ms),
            holds: BTreeSet::new(),
            waiters: BTreeSet::new(),
            lost: LostNotices::default(),
        };
        out.changes.push(records::session_put(&session));
        out.changes.push(records::lease_put(&session));
        out.changes.push(self.checkpoint());
        let reply = Reply::SessionCreated {
            session_id: session.id,
            ttl_ms,
        };
        self.sessions.insert(session);
        Ok(reply)
    }

    /// Live sessions in id order after `after_session_id`: at most `limit`
    /// (capped at [`SESSIONS_LISTED_MAX`]), each with what it holds.
    pub(super) fn list_sessions(
        &self,
        now_ms: u64,
        after_session_id: SessionId,
        limit: u32,
    ) -> Reply {
        // 0 asks for a full page, as the proto says.
        let limit = match limit as usize {
            0 => SESSIONS_LISTED_MAX,
            asked => asked.min(SESSIONS_LISTED_MAX),
        };
        let infos = self
            .sessions
            .by_id
            .range(after_session_id.saturating_add(1)..)
            .take(limit)
            .map(|(_, session)| self.session_info(now_ms, session))
            .collect();
        Reply::SessionList(infos)
    }

    fn session_info(&self, now_ms: u64, session: &Session) -> SessionInfo {
        let holds = session
            .holds
            .iter()
            .filter_map(|token| {
                let hold = self.holds.get(token)?;
                Some(HeldBy {
                    kind: hold.kind,
                    name: hold.name.clone(),
                    fencing_token: *token,
                })
            })
            .collect();
        SessionInfo {
            session_id: session.id,
            client_name: session.client_name.clone(),
            host: session.host.clone(),
            identity: session.owner.clone(),
            ttl_ms: session.ttl_ms,
            lease_left_ms: session.lease_left_ms(now_ms),
            holds,
            waiting: session.waiters.len() as u32,
            lost_holds_unconfirmed: session.lost.unconfirmed().count() as u32,
        }
    }

    /// Refuses a command that acts for a session created by another
    /// identity: a session is usable only by the token that created it. An
    /// unknown session passes (the command itself answers NOT_FOUND).
    pub fn check_session_owner(&self, command: &Command, identity: &str) -> Result<()> {
        self.check_owner(command.session_id(), identity)
    }

    /// As [`State::check_session_owner`], for a query: another identity
    /// may not read a session's notices either.
    pub fn check_query_owner(&self, query: &Query, identity: &str) -> Result<()> {
        self.check_owner(query.session_id(), identity)
    }

    fn check_owner(&self, session_id: Option<SessionId>, identity: &str) -> Result<()> {
        let Some(session) = session_id.and_then(|id| self.sessions.get(id)) else {
            return Ok(());
        };
        if session.owner == identity {
            return Ok(());
        }
        let owner = if session.owner.is_empty() {
            "was created without a token".to_owned()
        } else {
            format!("belongs to token {:?}", session.owner)
        };
        Err(Rejection::new(
            Code::PermissionDenied,
            format!(
                "session {} {owner}; token {identity:?} may not use it",
                session.id
            ),
        ))
    }

    pub(super) fn require_session(&self, session_id: SessionId) -> Result<&Session> {
        self.sessions
            .get(session_id)
            .ok_or_else(|| self.sessions.not_found(session_id))
    }

    /// Releases everything a session holds and drops its waiters, then
    /// forgets it. Returns the number of holds released.
    pub(super) fn end_session(
        &mut self,
        session_id: SessionId,
        why: SessionEnd,
        out: &mut Outcome,
    ) -> u32 {
        self.drop_session_waiters(session_id, &why, out);
        let ended = match why {
            SessionEnd::Closed { reason } => Ended::Closed { reason },
            SessionEnd::Expired => Ended::Expired,
        };
        let Some(session) = self.sessions.remove(session_id, ended, &mut out.changes) else {
            return 0;
        };
        for token in &session.holds {
            self.release_hold(*token, out);
        }
        self.forget_put_ids(session_id, out);
        session.holds.len() as u32
    }

    /// Removes every waiter of a session; each hears that its session ended.
    pub(super) fn drop_session_waiters(
        &mut self,
        session_id: SessionId,
        why: &SessionEnd,
        out: &mut Outcome,
    ) {
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
                Err(Rejection::session_gone(
                    Code::FailedPrecondition,
                    session_id,
                    message,
                )),
            ));
            self.after_waiter_left(&place, out);
        }
    }
}

/// The most sessions one `ListSessions` returns; page with its
/// `after_session_id`.
pub const SESSIONS_LISTED_MAX: usize = 1_000;

/// What `ListSessions` shows of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub client_name: String,
    pub host: String,
    /// The identity that created it (see `Session::owner`).
    pub identity: String,
    pub ttl_ms: u64,
    pub lease_left_ms: u64,
    /// What it holds, in fencing-token order.
    pub holds: Vec<HeldBy>,
    /// How many waits it has queued.
    pub waiting: u32,
    /// Lost-hold notices its client has not confirmed yet.
    pub lost_holds_unconfirmed: u32,
}

/// One hold of a listed session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBy {
    pub kind: Kind,
    pub name: String,
    pub fencing_token: FencingToken,
}

#[derive(Clone, Debug)]
pub(super) enum SessionEnd {
    /// `reason`: why, when someone else than its client closed it.
    Closed {
        reason: String,
    },
    Expired,
}

impl SessionEnd {
    fn as_str(&self) -> &'static str {
        match self {
            SessionEnd::Closed { .. } => "was closed",
            SessionEnd::Expired => "expired",
        }
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
            host: String::new(),
            owner: String::new(),
            expires_at_ms: now_ms + ttl_ms,
            holds: BTreeSet::new(),
            waiters: BTreeSet::new(),
            lost: LostNotices::default(),
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
        assert!(sessions
            .remove(1, Ended::Expired, &mut Vec::new())
            .is_some());
        assert_eq!(sessions.next_expiry_ms(), None);
        assert!(sessions.renew(1, 10).is_none());
    }

    #[test]
    fn an_ended_session_is_not_found_with_how_it_ended() {
        let mut sessions = Sessions::default();
        for id in 1..=3 {
            sessions.insert(session(id, 1_000, 0));
        }
        sessions.remove(1, Ended::Expired, &mut Vec::new());
        let reason = "alice: stuck".to_owned();
        sessions.remove(2, Ended::Closed { reason }, &mut Vec::new());
        let expired = sessions.not_found(1);
        assert_eq!(
            (
                expired.message.as_str(),
                expired.session_closed,
                expired.session_gone
            ),
            ("session 1 expired", None, Some(1))
        );
        let closed = sessions.not_found(2);
        assert_eq!(closed.message, "session 2 was closed: alice: stuck");
        assert_eq!(closed.session_closed.as_deref(), Some("alice: stuck"));
        let unknown = sessions.not_found(9);
        assert!(unknown.message.contains("never existed"));

        // Only the latest ends are remembered, whatever the ids: session 3,
        // the oldest, ends last and is kept.
        for id in 10..9 + ENDED_REMEMBERED_MAX as u64 {
            sessions.insert(session(id, 1_000, 0));
            sessions.remove(id, Ended::Expired, &mut Vec::new());
        }
        sessions.remove(3, Ended::Expired, &mut Vec::new());
        assert!(sessions.not_found(1).message.contains("never existed"));
        assert!(sessions.not_found(2).message.contains("never existed"));
        assert_eq!(sessions.not_found(3).message, "session 3 expired");
        assert_eq!(sessions.ended.len(), ENDED_REMEMBERED_MAX);
    }
}
