//! Lost-hold notices: how a session hears that it lost a hold while it
//! lived on.
//!
//! Most holds end at their holder's request, or with their session, and the
//! client hears of those by itself (its release is answered; its keep-alive
//! is refused). A few end under a living session: a queue item's visibility
//! timeout passes, an operator revokes a hold, a primitive is deleted with
//! holds out. For each of those the session keeps a notice — which hold
//! (kind, name, fencing token), why, and when — and every keep-alive reply
//! carries the notices the client has not confirmed yet. The client confirms
//! by sending the highest `seq` it has seen with its next keep-alive, and
//! the server forgets those.
//!
//! Invariants:
//! - a session's notices are numbered 1, 2, 3, ... by `seq`, which never
//!   goes back while the session lives, also across restarts (the notices
//!   and `last_seq` are stored in the session's record);
//! - at most [`LOST_NOTICES_MAX`] notices wait per session; past that the
//!   oldest is dropped, which the client sees as a gap in `seq`;
//! - a notice is added in the same step that releases the hold, so the
//!   client can never see the hold granted to someone else before the
//!   notice exists.

use std::collections::VecDeque;

use super::records;
use super::{Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State};

/// How many unconfirmed notices one session keeps (the oldest go first).
/// A client confirms every keep-alive, a third of its TTL, so only a
/// client that stopped reading its replies comes near this.
pub const LOST_NOTICES_MAX: usize = 1_000;

/// The longest reason an operator may give with a revoke, in bytes.
pub const REVOKE_DETAIL_BYTES_MAX: usize = 256;

/// Why a session lost a hold while it lived on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// A queue item was not acknowledged within its visibility timeout.
    VisibilityExpired,
    /// An operator revoked the hold, saying this.
    Revoked { detail: String },
    /// The primitive was deleted with the hold out.
    Deleted,
}

impl LossCause {
    /// The stored and wire number (`syncd.v1.HoldLossReason`).
    pub fn code(&self) -> u32 {
        match self {
            LossCause::VisibilityExpired => 1,
            LossCause::Revoked { .. } => 2,
            LossCause::Deleted => 3,
        }
    }

    /// The inverse of [`LossCause::code`]; `None` for an unknown number.
    pub fn from_code(code: u32, detail: String) -> Option<LossCause> {
        match code {
            1 => Some(LossCause::VisibilityExpired),
            2 => Some(LossCause::Revoked { detail }),
            3 => Some(LossCause::Deleted),
            _ => None,
        }
    }

    /// The operator's words for a revoke; empty otherwise.
    pub fn detail(&self) -> &str {
        match self {
            LossCause::Revoked { detail } => detail,
            LossCause::VisibilityExpired | LossCause::Deleted => "",
        }
    }
}

/// One notice: a hold its session lost, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostHold {
    pub seq: u64,
    pub fencing_token: FencingToken,
    pub kind: Kind,
    pub name: String,
    pub cause: LossCause,
    pub lost_at_ms: u64,
}

/// A session's notices that its client has not confirmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LostNotices {
    last_seq: u64,
    unconfirmed: VecDeque<LostHold>,
}

impl LostNotices {
    /// Notices as stored; `unconfirmed` must be in `seq` order, none above
    /// `last_seq`.
    pub fn restored(last_seq: u64, unconfirmed: Vec<LostHold>) -> LostNotices {
        LostNotices {
            last_seq,
            unconfirmed: unconfirmed.into(),
        }
    }

    /// The `seq` of the newest notice ever given.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The notices not confirmed yet, oldest first.
    pub fn unconfirmed(&self) -> impl Iterator<Item = &LostHold> {
        self.unconfirmed.iter()
    }

    /// Adds a notice under the next `seq`, dropping the oldest past the
    /// bound.
    fn add(&mut self, mut notice: LostHold) {
        self.last_seq += 1;
        notice.seq = self.last_seq;
        if self.unconfirmed.len() >= LOST_NOTICES_MAX {
            self.unconfirmed.pop_front();
        }
        self.unconfirmed.push_back(notice);
    }

    /// Forgets the notices up to `seen_through`; true if any went.
    pub fn confirm(&mut self, seen_through: u64) -> bool {
        let before = self.unconfirmed.len();
        while self
            .unconfirmed
            .front()
            .is_some_and(|notice| notice.seq <= seen_through)
        {
            self.unconfirmed.pop_front();
        }
        self.unconfirmed.len() != before
    }
}

impl State {
    /// Takes a hold away from its session, which lives on, and tells the
    /// session why: the hold's primitive lets it go and wakes whoever is
    /// next.
    pub(super) fn lose_hold(&mut self, token: FencingToken, cause: LossCause, out: &mut Outcome) {
        self.note_lost_hold(token, cause, out);
        self.release_hold(token, out);
    }

    /// Leaves the session of hold `token` a notice that it lost the hold;
    /// the caller releases or drops the hold itself. Does nothing for a
    /// hold or session that is gone.
    pub(super) fn note_lost_hold(
        &mut self,
        token: FencingToken,
        cause: LossCause,
        out: &mut Outcome,
    ) {
        let Some(hold) = self.holds.get(&token) else {
            return;
        };
        let notice = LostHold {
            seq: 0,
            fencing_token: token,
            kind: hold.kind,
            name: hold.name.clone(),
            cause,
            lost_at_ms: self.now_ms,
        };
        let Some(session) = self.sessions.get_mut(hold.session_id) else {
            return;
        };
        session.lost.add(notice);
        out.changes.push(records::session_put(session));
        out.sessions_noticed.push(session.id);
    }

    /// An operator takes hold `token` away from its session.
    pub(super) fn revoke(
        &mut self,
        token: FencingToken,
        detail: String,
        out: &mut Outcome,
    ) -> Result<Reply> {
        if detail.len() > REVOKE_DETAIL_BYTES_MAX {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "reason is {} bytes, the limit is {REVOKE_DETAIL_BYTES_MAX}",
                    detail.len()
                ),
            ));
        }
        let Some(hold) = self.holds.get(&token) else {
            return Err(Rejection::new(
                Code::NotFound,
                format!("no hold has fencing token {token} (it was released, or never granted)"),
            ));
        };
        let reply = Reply::Revoked {
            session_id: hold.session_id,
            kind: hold.kind,
            name: hold.name.clone(),
        };
        self.lose_hold(token, LossCause::Revoked { detail }, out);
        Ok(reply)
    }

    /// Renews a session; forgets the notices its client has seen, and
    /// answers with the TTL and the notices still unconfirmed.
    pub(super) fn keep_alive(
        &mut self,
        session_id: SessionId,
        notices_seen_through: u64,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let ttl_ms = self
            .sessions
            .renew(session_id, self.now_ms)
            .ok_or_else(|| self.sessions.not_found(session_id))?;
        let session = self.sessions.get_mut(session_id).expect("renewed above");
        out.changes.push(records::lease_put(session));
        if session.lost.confirm(notices_seen_through) {
            out.changes.push(records::session_put(session));
        }
        Ok(Reply::SessionRenewed {
            ttl_ms,
            lost: session.lost.unconfirmed().cloned().collect(),
        })
    }

    /// The notices a session's client has not confirmed; renews nothing.
    pub(super) fn pending_notices(&self, session_id: SessionId) -> Result<Reply> {
        let session = self.require_session(session_id)?;
        Ok(Reply::Notices(
            session.lost.unconfirmed().cloned().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(token: FencingToken) -> LostHold {
        LostHold {
            seq: 0,
            fencing_token: token,
            kind: Kind::Lock,
            name: "db".into(),
            cause: LossCause::Deleted,
            lost_at_ms: 0,
        }
    }

    fn seqs(notices: &LostNotices) -> Vec<u64> {
        notices.unconfirmed().map(|n| n.seq).collect()
    }

    #[test]
    fn notices_are_numbered_and_confirmed_in_order() {
        let mut notices = LostNotices::default();
        for token in 10..13 {
            notices.add(notice(token));
        }
        assert_eq!(seqs(&notices), vec![1, 2, 3]);
        assert!(!notices.confirm(0), "nothing seen, nothing forgotten");
        assert!(notices.confirm(2));
        assert_eq!(seqs(&notices), vec![3]);
        assert!(!notices.confirm(2), "confirming again changes nothing");
        notices.add(notice(13));
        assert_eq!(seqs(&notices), vec![3, 4]);
        assert!(notices.confirm(u64::MAX));
        assert_eq!(notices.last_seq(), 4, "seq never goes back");
    }

    #[test]
    fn the_oldest_notice_goes_past_the_bound() {
        let mut notices = LostNotices::default();
        for token in 0..LOST_NOTICES_MAX as u64 + 5 {
            notices.add(notice(token));
        }
        let kept = seqs(&notices);
        assert_eq!(kept.len(), LOST_NOTICES_MAX);
        assert_eq!(kept[0], 6, "seq 1 to 5 were dropped: a gap the client sees");
        assert_eq!(*kept.last().unwrap(), LOST_NOTICES_MAX as u64 + 5);
    }

    #[test]
    fn cause_codes_round_trip() {
        for cause in [
            LossCause::VisibilityExpired,
            LossCause::Revoked {
                detail: "alice: stuck".into(),
            },
            LossCause::Deleted,
        ] {
            let back = LossCause::from_code(cause.code(), cause.detail().to_owned());
            assert_eq!(back, Some(cause));
        }
        assert_eq!(LossCause::from_code(0, String::new()), None);
        assert_eq!(LossCause::from_code(4, String::new()), None);
    }
}
