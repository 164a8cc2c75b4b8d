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
//! - A condition waiter that was notified queues here like anyone else; its
//!   grant ends its condition wait (`Reply::Reacquired`).
//! - A lock exists while it is held or awaited; then it vanishes. A held
//!   lock has a record, and each waiter its own (`records::waiters`).
//!
//! Invariants:
//! - at most one holder;
//! - a free lock has no waiters once `lock_wake` has run (the first waiter
//!   would have been granted);
//! - the holder's token is in the session's `holds` and in `State::holds`.

use super::holds::{Hold, HolderInfo, Queueing, Table, WaiterInfo};
use super::waitq::WaitQueue;
use super::{
    records, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State,
    Summary, WaiterId,
};

/// A waiting acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRequest {
    /// Retry identity (0 = none).
    pub acquire_id: u64,
    /// What the grant answers.
    pub answer: LockAnswer,
}

/// Whom a lock grant answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockAnswer {
    /// An acquire: `Reply::Granted`.
    Acquire,
    /// A condition wait: `Reply::Reacquired`.
    ConditionWait { timed_out: bool },
}

#[derive(Clone, Debug, Default)]
pub struct Lock {
    pub(super) holder: Option<Hold>,
    waiters: WaitQueue<LockRequest>,
}

impl Queueing for Lock {
    type Request = LockRequest;
    fn queue(&mut self) -> &mut WaitQueue<LockRequest> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<LockRequest> {
        &self.waiters
    }
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        self.holder
            .iter()
            .map(|h| (h.fencing_token, h.session_id))
            .collect()
    }
}

impl Lock {
    pub(super) fn from_hold(hold: Hold) -> Lock {
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
        if let Some(fencing_token) = self.retried_grant(session_id, Kind::Lock, &name, acquire_id) {
            return Ok(Reply::Granted { fencing_token });
        }
        let request = LockRequest {
            acquire_id,
            answer: LockAnswer::Acquire,
        };
        match self.locks.get(&name) {
            Some(lock) if timeout_ms == Some(0) => {
                let holder = lock.holder.as_ref().map_or(0, |h| h.session_id);
                Err(Rejection::new(
                    Code::DeadlineExceeded,
                    format!("lock {name:?} is held by session {holder}"),
                ))
            }
            Some(_) => self.lock_enqueue(&name, waiter, session_id, timeout_ms, request),
            None => {
                let fencing_token = self.grant_lock(&name, session_id, acquire_id, out);
                Ok(Reply::Granted { fencing_token })
            }
        }
    }

    /// Queues a request for the lock (which may be free: `lock_wake`
    /// grants it then).
    pub(super) fn lock_enqueue(
        &mut self,
        name: &str,
        waiter: WaiterId,
        session_id: SessionId,
        timeout_ms: Option<u64>,
        request: LockRequest,
    ) -> Result<Reply> {
        let table: Table<Lock> = |state| &mut state.locks;
        self.enqueue(
            table,
            Kind::Lock,
            name,
            waiter,
            session_id,
            timeout_ms,
            request,
        )
    }

    /// The hold of `token` is gone from the indexes: free the lock.
    pub(super) fn lock_drop_hold(&mut self, name: &str, out: &mut Outcome) {
        if let Some(lock) = self.locks.get_mut(name) {
            lock.holder = None;
        }
        out.changes.push(records::lock_delete(name));
    }

    /// The session's hold of `name` under `fencing_token`, if it has it.
    pub(super) fn lock_held_by(
        &self,
        name: &str,
        session_id: SessionId,
        fencing_token: FencingToken,
    ) -> bool {
        let holder = self.locks.get(name).and_then(|l| l.holder.as_ref());
        holder.is_some_and(|h| h.session_id == session_id && h.fencing_token == fencing_token)
    }

    pub(super) fn lock_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Lock, name)?;
        let mut info = LockInfo {
            name: name.to_owned(),
            holder: None,
            waiters: Vec::new(),
        };
        if let Some(lock) = self.locks.get(name) {
            info.holder = lock.holder.as_ref().map(|h| self.holder_info(now_ms, h));
            info.waiters = self.waiter_infos(now_ms, Some(lock));
        }
        Ok(Reply::LockDescription(info))
    }

    pub(super) fn lock_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.locks, prefix)
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

    /// Grants the lock to the first waiter if it is free, or forgets the
    /// lock if nobody uses it any more.
    pub(super) fn lock_wake(&mut self, name: &str, out: &mut Outcome) {
        let Some(lock) = self.locks.get_mut(name) else {
            return;
        };
        if lock.holder.is_some() {
            return;
        }
        let Some(next) = lock.waiters.pop_front() else {
            self.locks.remove(name);
            return;
        };
        self.unregister_waiter(next.id);
        let request = next.request;
        let fencing_token = self.grant_lock(name, next.session_id, request.acquire_id, out);
        let reply = match request.answer {
            LockAnswer::Acquire => Reply::Granted { fencing_token },
            LockAnswer::ConditionWait { timed_out } => Reply::Reacquired {
                fencing_token,
                timed_out,
            },
        };
        out.events.push((next.id, Ok(reply)));
    }

    /// Makes `session_id` the holder of a free lock.
    fn grant_lock(
        &mut self,
        name: &str,
        session_id: SessionId,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> FencingToken {
        let hold = self.new_hold(session_id, Kind::Lock, name, acquire_id, out);
        out.changes.push(records::lock_put(name, &hold));
        let fencing_token = hold.fencing_token;
        let lock = self.locks.entry(name.to_owned()).or_default();
        debug_assert!(lock.holder.is_none(), "two holders of lock {name:?}");
        lock.holder = Some(hold);
        fencing_token
    }
}
