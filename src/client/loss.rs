//! How a hold is lost, as the client tells it: with its whole session
//! ([`SessionLoss`]), or alone, taken from a session that lives on
//! ([`LostHold`]: revoked by an operator, a queue item's visibility timeout,
//! its primitive deleted).
//!
//! The server pushes a hold taken alone down the session's keep-alive
//! stream at once, and repeats it in every keep-alive reply, numbered per
//! session, until the client confirms it has seen them; [`TakenHolds`] is the client's record of those notices: the highest
//! number seen (sent back with every keep-alive) and the latest notices by
//! fencing token, for guards that wait on their own.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use super::session::SessionLoss;
use crate::proto::v1 as pb;

/// How many notices a client remembers for its guards; the oldest are
/// forgotten first. (The server keeps as many per session.)
const REMEMBERED_MAX: usize = 1_000;

/// Why the server took a hold from a session that lives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldLossReason {
    /// A queue item was not acknowledged within its visibility timeout.
    VisibilityExpired,
    /// An operator revoked the hold, giving this reason.
    Revoked { reason: String },
    /// The primitive was deleted.
    Deleted,
    /// A reason this client does not know (a newer server).
    Other(i32),
}

/// A hold the server took from this client's session, which lives on. It
/// reads like `lock "db" (fencing token 42) was revoked: alice: stuck`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostHold {
    /// The fencing token of the hold.
    pub fencing_token: u64,
    /// The kind of primitive: "lock", "semaphore", "queue", ...
    pub kind: String,
    /// The primitive's name.
    pub name: String,
    pub reason: HoldLossReason,
    /// When, in the server's clock (milliseconds; see `Client::ping`).
    pub lost_at_ms: u64,
}

impl From<pb::LostHold> for LostHold {
    fn from(notice: pb::LostHold) -> LostHold {
        let reason = match pb::HoldLossReason::try_from(notice.reason) {
            Ok(pb::HoldLossReason::VisibilityExpired) => HoldLossReason::VisibilityExpired,
            Ok(pb::HoldLossReason::Revoked) => HoldLossReason::Revoked {
                reason: notice.detail,
            },
            Ok(pb::HoldLossReason::Deleted) => HoldLossReason::Deleted,
            Ok(pb::HoldLossReason::Unspecified) | Err(_) => HoldLossReason::Other(notice.reason),
        };
        LostHold {
            fencing_token: notice.fencing_token,
            kind: notice.kind,
            name: notice.name,
            reason,
            lost_at_ms: notice.lost_at_ms,
        }
    }
}

/// Reads like `was revoked: alice: stuck`.
impl fmt::Display for HoldLossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldLossReason::VisibilityExpired => f.write_str(
                "was not acknowledged within its visibility timeout, and went back to the queue",
            ),
            HoldLossReason::Revoked { reason } if reason.is_empty() => f.write_str("was revoked"),
            HoldLossReason::Revoked { reason } => write!(f, "was revoked: {reason}"),
            HoldLossReason::Deleted => f.write_str("was deleted"),
            HoldLossReason::Other(code) => write!(f, "was taken away (reason {code})"),
        }
    }
}

impl fmt::Display for LostHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name, token) = (&self.kind, &self.name, self.fencing_token);
        let delivery = if kind == "queue" {
            "a delivery of "
        } else {
            ""
        };
        write!(
            f,
            "{delivery}{kind} {name:?} (fencing token {token}) {}",
            self.reason
        )
    }
}

/// Why a hold is lost: its session is, or the server took it alone. Reads
/// like the [`SessionLoss`] or the [`LostHold`] it carries; see
/// [`HoldLoss::why`] for a shorter form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldLoss {
    /// The session is lost, and with it every hold it had.
    Session(SessionLoss),
    /// The server took this hold; the session lives on.
    Taken(LostHold),
}

impl HoldLoss {
    /// Why, for a line that names the hold already: `session 4 expired`,
    /// `it was revoked: alice: stuck`.
    pub fn why(&self) -> String {
        match self {
            HoldLoss::Session(loss) => loss.to_string(),
            HoldLoss::Taken(hold) => format!("it {}", hold.reason),
        }
    }
}

impl fmt::Display for HoldLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldLoss::Session(loss) => loss.fmt(f),
            HoldLoss::Taken(hold) => hold.fmt(f),
        }
    }
}

/// The notices of holds taken from the current session.
#[derive(Debug, Default)]
pub(crate) struct TakenHolds {
    /// The highest notice number seen: the keep-alive sends it back so
    /// that the server forgets those.
    seen_through: u64,
    by_token: BTreeMap<u64, LostHold>,
    /// Tokens in the order their notices came, to forget the oldest.
    order: VecDeque<u64>,
}

impl TakenHolds {
    pub(crate) fn seen_through(&self) -> u64 {
        self.seen_through
    }

    /// Takes in the notices of one keep-alive reply (which repeats those
    /// not confirmed yet); returns the new ones.
    pub(crate) fn note(&mut self, notices: Vec<pb::LostHold>) -> Vec<LostHold> {
        let mut new = Vec::new();
        for notice in notices {
            if notice.seq <= self.seen_through {
                continue;
            }
            self.seen_through = notice.seq;
            let hold = LostHold::from(notice);
            if self.order.len() >= REMEMBERED_MAX {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_token.remove(&oldest);
                }
            }
            self.order.push_back(hold.fencing_token);
            self.by_token.insert(hold.fencing_token, hold.clone());
            new.push(hold);
        }
        new
    }

    /// The notice for hold `fencing_token`, if one came.
    pub(crate) fn get(&self, fencing_token: u64) -> Option<&LostHold> {
        self.by_token.get(&fencing_token)
    }

    /// The notices remembered, oldest first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &LostHold> {
        self.order
            .iter()
            .filter_map(|token| self.by_token.get(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(seq: u64, token: u64) -> pb::LostHold {
        pb::LostHold {
            seq,
            fencing_token: token,
            kind: "lock".into(),
            name: "db".into(),
            reason: pb::HoldLossReason::Revoked as i32,
            detail: "alice: stuck".into(),
            lost_at_ms: 5,
        }
    }

    #[test]
    fn repeated_notices_are_taken_once() {
        let mut taken = TakenHolds::default();
        let new = taken.note(vec![notice(1, 40), notice(2, 41)]);
        assert_eq!(new.len(), 2);
        assert_eq!(taken.seen_through(), 2);
        // The next reply repeats what was not confirmed yet, and adds one.
        let new = taken.note(vec![notice(2, 41), notice(3, 42)]);
        assert_eq!(
            new.iter().map(|n| n.fencing_token).collect::<Vec<_>>(),
            [42]
        );
        assert_eq!(taken.seen_through(), 3);
        assert!(taken.get(40).is_some() && taken.get(43).is_none());
    }

    #[test]
    fn the_oldest_notices_are_forgotten() {
        let mut taken = TakenHolds::default();
        let many: Vec<_> = (1..=REMEMBERED_MAX as u64 + 3)
            .map(|seq| notice(seq, 100 + seq))
            .collect();
        taken.note(many);
        assert_eq!(taken.all().count(), REMEMBERED_MAX);
        assert!(taken.get(101).is_none() && taken.get(103).is_none());
        assert!(taken.get(104).is_some());
    }

    #[test]
    fn it_reads_like_a_sentence() {
        let hold = LostHold::from(notice(1, 42));
        assert_eq!(
            hold.to_string(),
            "lock \"db\" (fencing token 42) was revoked: alice: stuck"
        );
        let unknown = pb::LostHold {
            reason: 99,
            ..notice(1, 7)
        };
        assert_eq!(LostHold::from(unknown).reason, HoldLossReason::Other(99));
    }
}
