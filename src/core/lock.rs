//! Lock: exclusive, FIFO-fair, owned by a session, fenced.
//!
//! Policy:
//! - A free lock with nobody waiting is granted at once; otherwise the
//!   request joins the back of the queue (a `timeout_ms` of 0 refuses
//!   instead of queueing). When the holder releases (or its session ends),
//!   the first waiter gets the lock: nobody overtakes.
//! - Every grant takes a new fencing token from the global counter.
//! - Only the holding session, naming the hold's token, may release it.
//! - A retry that names the `acquire_id` of a grant the session already
//!   holds gets that grant back instead of queueing behind itself.
//! - A lock exists while it is held or awaited; then it vanishes. Only a held
//!   lock is persisted (waiters live in memory, with their streams).
//!
//! Invariants:
//! - at most one holder;
//! - a free lock has no waiters once `lock_wake` has run (the first waiter
//!   would have been granted);
//! - the holder's token is in the session's `holds` and in `State::holds`.

use super::waitq::{WaitQueue, Waiter};
use super::{
    records, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State,
    Summary, WaiterId,
};

/// The current hold of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHold {
    pub session_id: SessionId,
    pub fencing_token: FencingToken,
    pub acquired_at_ms: u64,
    pub acquire_id: u64,
}

/// A waiting acquire: its retry identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub acquire_id: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Lock {
    pub(super) holder: Option<LockHold>,
    waiters: WaitQueue<LockRequest>,
}

impl Lock {
    /// A lock in this state can be forgotten.
    fn is_unused(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty()
    }

    pub(super) fn from_hold(hold: LockHold) -> Lock {
        Lock {
            holder: Some(hold),
            waiters: WaitQueue::default(),
        }
    }
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub name: String,
    pub holder: Option<HolderInfo>,
    pub waiters: Vec<WaiterInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub session_id: SessionId,
    pub client_name: String,
    pub fencing_token: FencingToken,
    pub held_ms: u64,
    pub lease_left_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    pub session_id: SessionId,
    pub client_name: String,
    pub waiting_ms: u64,
}

impl State {
    pub(super) fn lock_acquire(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Lock, &name)?;
        self.require_session(session_id)?;
        let lock = self.locks.get(&name);
        if let Some(hold) = lock.and_then(|l| l.holder.as_ref()) {
            if acquire_id != 0 && hold.session_id == session_id && hold.acquire_id == acquire_id {
                return Ok(Reply::LockGranted {
                    fencing_token: hold.fencing_token,
                });
            }
        }
        if lock.is_none_or(Lock::is_unused) {
            let fencing_token = self.grant_lock(&name, session_id, acquire_id, out);
            return Ok(Reply::LockGranted { fencing_token });
        }
        let lock = lock.expect("an unused lock was granted above");
        if timeout_ms == Some(0) {
            let holder = lock.holder.as_ref().map_or(0, |h| h.session_id);
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("lock {name:?} is held by session {holder}"),
            ));
        }
        self.check_queue_room(Kind::Lock, &name, lock.waiters.len())?;
        let entry = Waiter {
            id: waiter,
            session_id,
            enqueued_at_ms: self.now_ms,
            request: LockRequest { acquire_id },
        };
        let limit = self.limits.waiters_per_primitive_max;
        let lock = self.locks.get_mut(&name).expect("checked above");
        let position = lock
            .waiters
            .push(entry, limit)
            .expect("room was checked above");
        self.register_waiter(waiter, session_id, Kind::Lock, &name, timeout_ms);
        Ok(Reply::Queued {
            position: position as u32,
        })
    }

    pub(super) fn lock_release(
        &mut self,
        session_id: SessionId,
        name: &str,
        fencing_token: FencingToken,
        out: &mut Outcome,
    ) -> Result<Reply> {
        // The name and the session are checked by `apply`, not here: see
        // `Command::LockRelease` there.
        let holder = self.locks.get(name).and_then(|l| l.holder.as_ref());
        match holder {
            Some(h) if h.session_id == session_id && h.fencing_token == fencing_token => {}
            Some(h) if h.session_id == session_id => {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    format!(
                        "lock {name:?} is held by this session under token {}, not {fencing_token}",
                        h.fencing_token
                    ),
                ))
            }
            Some(h) => {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    format!(
                        "lock {name:?} is held by session {}, not by session {session_id}",
                        h.session_id
                    ),
                ))
            }
            None => {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    format!("lock {name:?} is not held"),
                ))
            }
        }
        self.locks.get_mut(name).expect("holder found above").holder = None;
        self.unregister_hold(fencing_token);
        out.changes.push(records::lock_delete(name));
        self.lock_wake(name, out);
        Ok(Reply::Done)
    }

    pub(super) fn lock_describe(&self, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Lock, name)?;
        let mut info = LockInfo {
            name: name.to_owned(),
            holder: None,
            waiters: Vec::new(),
        };
        if let Some(lock) = self.locks.get(name) {
            info.holder = lock.holder.as_ref().map(|h| HolderInfo {
                session_id: h.session_id,
                client_name: self.client_name(h.session_id),
                fencing_token: h.fencing_token,
                held_ms: self.now_ms.saturating_sub(h.acquired_at_ms),
                lease_left_ms: self.lease_left_ms(h.session_id),
            });
            info.waiters = lock
                .waiters
                .iter()
                .map(|w| WaiterInfo {
                    session_id: w.session_id,
                    client_name: self.client_name(w.session_id),
                    waiting_ms: self.now_ms.saturating_sub(w.enqueued_at_ms),
                })
                .collect();
        }
        Ok(Reply::LockDescription(info))
    }

    pub(super) fn lock_summaries(&self, prefix: &str) -> Vec<Summary> {
        self.locks
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, lock)| {
                let held = match &lock.holder {
                    Some(h) => format!(
                        "held by session {} (token {})",
                        h.session_id, h.fencing_token
                    ),
                    None => "free".to_owned(),
                };
                Summary {
                    kind: Kind::Lock,
                    name: name.clone(),
                    state: format!("{held}, {} waiting", lock.waiters.len()),
                }
            })
            .collect()
    }

    /// Removes a waiter from the lock's queue (indexes are the caller's).
    pub(super) fn lock_remove_waiter(&mut self, name: &str, waiter: WaiterId) {
        if let Some(lock) = self.locks.get_mut(name) {
            lock.waiters.remove(waiter);
        }
    }

    /// Grants the lock to the first waiter if it is free, or forgets the
    /// lock if nobody uses it any more.
    pub(super) fn lock_wake(&mut self, name: &str, out: &mut Outcome) {
        let Some(lock) = self.locks.get_mut(name) else {
            return;
        };
        if lock.holder.is_some() {
            return;
        }
        match lock.waiters.pop_front() {
            Some(next) => {
                self.unregister_waiter(next.id);
                let fencing_token =
                    self.grant_lock(name, next.session_id, next.request.acquire_id, out);
                out.events
                    .push((next.id, Ok(Reply::LockGranted { fencing_token })));
            }
            None => {
                self.locks.remove(name);
            }
        }
    }

    /// Makes `session_id` the holder of a free lock.
    fn grant_lock(
        &mut self,
        name: &str,
        session_id: SessionId,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> FencingToken {
        let fencing_token = self.next_fencing_token(out);
        let hold = LockHold {
            session_id,
            fencing_token,
            acquired_at_ms: self.now_ms,
            acquire_id,
        };
        out.changes.push(records::lock_put(name, &hold));
        let lock = self.locks.entry(name.to_owned()).or_default();
        debug_assert!(lock.holder.is_none(), "two holders of lock {name:?}");
        lock.holder = Some(hold);
        self.register_hold(fencing_token, session_id, Kind::Lock, name);
        fencing_token
    }
}
