//! The bookkeeping every primitive shares: fencing tokens, holds owned by
//! sessions, waiters with deadlines, and the checks on names and queue
//! lengths. A primitive's own file decides who goes next; this file keeps the
//! indexes that let a session's end, a cancel or a timeout find everything in
//! one step.
//!
//! Invariants:
//! - a token in `State::holds` is in its session's `holds` and is the hold
//!   of the primitive it names;
//! - a waiter in `State::waiters` is in its session's `waiters` and in its
//!   primitive's queue, and in `State::deadlines` exactly when it has a
//!   deadline;
//! - fencing tokens only increase: each comes from `Counters`, which is
//!   persisted with every batch.

use super::{Code, FencingToken, Kind, Outcome, Rejection, Result, SessionId, State, WaiterId};

/// Where a hold lives, indexed by its fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HoldRef {
    pub(super) session_id: SessionId,
    pub(super) kind: Kind,
    pub(super) name: String,
}

/// Where a waiter waits, indexed by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WaiterRef {
    pub(super) session_id: SessionId,
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) deadline_ms: Option<u64>,
}

impl State {
    /// Takes the next fencing token.
    pub(super) fn next_fencing_token(&mut self, out: &mut Outcome) -> FencingToken {
        self.counters.last_fencing_token += 1;
        out.changes.push(self.checkpoint());
        self.counters.last_fencing_token
    }

    /// Records that `session_id` holds `token` on a primitive.
    pub(super) fn register_hold(
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
    pub(super) fn unregister_hold(&mut self, token: FencingToken) -> Option<HoldRef> {
        let hold = self.holds.remove(&token)?;
        if let Some(session) = self.sessions.get_mut(hold.session_id) {
            session.holds.remove(&token);
        }
        Some(hold)
    }

    /// Releases a hold whoever owns it, and wakes whoever can go next.
    pub(super) fn release_hold(&mut self, token: FencingToken, out: &mut Outcome) {
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

    pub(super) fn register_waiter(
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
    pub(super) fn unregister_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
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
    pub(super) fn remove_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
        let place = self.unregister_waiter(waiter)?;
        match place.kind {
            Kind::Lock => self.lock_remove_waiter(&place.name, waiter),
        }
        Some(place)
    }

    pub(super) fn cancel_waiter(&mut self, waiter: WaiterId, out: &mut Outcome) {
        if let Some(place) = self.remove_waiter(waiter) {
            self.after_waiter_left(&place, out);
        }
    }

    /// A waiter left: others may be able to go now, or the primitive may be
    /// empty and vanish.
    pub(super) fn after_waiter_left(&mut self, place: &WaiterRef, out: &mut Outcome) {
        match place.kind {
            Kind::Lock => self.lock_wake(&place.name, out),
        }
    }

    pub(super) fn client_name(&self, session_id: SessionId) -> String {
        self.sessions
            .get(session_id)
            .map(|s| s.client_name.clone())
            .unwrap_or_default()
    }

    pub(super) fn lease_left_ms(&self, session_id: SessionId) -> u64 {
        self.sessions
            .get(session_id)
            .map_or(0, |s| s.lease_left_ms(self.now_ms))
    }

    /// Checks a primitive's name: 1 to `name_bytes_max` bytes, no control
    /// characters.
    pub(super) fn validate_name(&self, kind: Kind, name: &str) -> Result<()> {
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

    pub(super) fn check_queue_room(&self, kind: Kind, name: &str, len: usize) -> Result<()> {
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
