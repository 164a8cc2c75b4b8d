//! Condition: wait for a notification while giving up a lock.
//!
//! Policy:
//! - `wait` needs the caller's session to hold the named lock under the
//!   given token. In one step it releases that hold (waking the lock's next
//!   waiter) and joins the condition's queue, so no notification can slip
//!   in between.
//! - `notify(n)` moves the first `n` waiters (`notify_all`: every waiter), in
//!   order, to the back of the lock's queue. A moved waiter's wait ends when
//!   the lock is granted to it, under a new fencing token
//!   (`Reply::Reacquired`). Notify needs no lock: it is atomic here anyway.
//! - A wait whose timeout passes before a notification also moves to the
//!   lock's queue, and its answer says `timed_out` (Python's semantics: the
//!   lock is always held again when `wait` returns). Taking the lock again is
//!   not bounded by the timeout.
//! - While it has waiters, a condition is bound to one lock; a wait naming
//!   another lock is refused.
//!
//! Invariants:
//! - a waiter is in the condition's queue or in the lock's queue, never
//!   both; in the lock's queue it has no deadline;
//! - a condition without waiters does not exist: it has no record of its
//!   own; its waiters' records name its lock (`records::waiters`).

use super::holds::{forget_if, Queueing, Table, WaiterInfo};
use super::lock::{LockAnswer, LockRequest};
use super::waitq::{WaitQueue, Waiter};
use super::{
    records, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State,
    Summary, WaiterId,
};

#[derive(Clone, Debug, Default)]
pub struct Condition {
    /// The lock its waiters gave up and will take again.
    lock: String,
    waiters: WaitQueue<()>,
}

impl Queueing for Condition {
    type Request = ();
    fn queue(&mut self) -> &mut WaitQueue<()> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<()> {
        &self.waiters
    }
}

impl Condition {
    /// The lock its waiters gave up.
    pub(super) fn lock(&self) -> &str {
        &self.lock
    }

    /// Adds a restored waiter; every waiter of a condition names the same
    /// lock.
    pub(super) fn restore_waiter(
        &mut self,
        lock: String,
        waiter: Waiter<()>,
    ) -> std::result::Result<(), &'static str> {
        if lock.is_empty() || (!self.lock.is_empty() && self.lock != lock) {
            return Err("it names no lock, or another lock than its condition's");
        }
        self.lock = lock;
        records::waiters::push(self, waiter)
    }
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionInfo {
    pub name: String,
    /// Empty when nobody waits.
    pub lock: String,
    pub waiters: Vec<WaiterInfo>,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn condition_wait(
        &mut self,
        session_id: SessionId,
        name: String,
        lock: String,
        fencing_token: FencingToken,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Condition, &name)?;
        self.validate_name(Kind::Lock, &lock)?;
        self.require_session(session_id)?;
        if !self.lock_held_by(&lock, session_id, fencing_token) {
            return Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "waiting on condition {name:?} needs lock {lock:?} held by session \
                     {session_id} under token {fencing_token}"
                ),
            ));
        }
        if let Some(bound) = self.conditions.get(&name).map(|c| &c.lock) {
            if *bound != lock {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    format!("condition {name:?} is in use with lock {bound:?}, not {lock:?}"),
                ));
            }
        }
        let table: Table<Condition> = |state| &mut state.conditions;
        let kind = Kind::Condition;
        let queued = self.enqueue(table, kind, &name, waiter, session_id, timeout_ms, ())?;
        self.conditions.get_mut(&name).expect("just queued").lock = lock;
        self.release_hold(fencing_token, out);
        Ok(queued)
    }

    /// Moves up to `count` waiters (all with `None`) to the lock's queue.
    pub(super) fn condition_notify(
        &mut self,
        name: String,
        count: Option<u32>,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Condition, &name)?;
        let Some(condition) = self.conditions.get_mut(&name) else {
            return Ok(Reply::Count(0));
        };
        let count = count.map_or(usize::MAX, |n| n.max(1) as usize);
        let lock = condition.lock.clone();
        let mut woken = Vec::new();
        while woken.len() < count {
            match condition.waiters.pop_front() {
                Some(waiter) => woken.push(waiter),
                None => break,
            }
        }
        for waiter in &woken {
            self.unregister_waiter(waiter.id);
            self.move_to_lock(&lock, waiter, false, out);
        }
        self.lock_wake(&lock, out);
        self.condition_forget_if_unused(&name);
        Ok(Reply::Count(woken.len() as u32))
    }

    /// A condition wait's timeout passed: it goes on to take the lock.
    pub(super) fn condition_timed_out(&mut self, waiter: WaiterId, out: &mut Outcome) {
        let Some(place) = self.waiters.get(&waiter) else {
            return;
        };
        let name = place.name.clone();
        let Some(condition) = self.conditions.get_mut(&name) else {
            return;
        };
        let lock = condition.lock.clone();
        let Some(entry) = condition.waiters.remove(waiter) else {
            return;
        };
        self.unregister_waiter(waiter);
        self.move_to_lock(&lock, &entry, true, out);
        self.lock_wake(&lock, out);
        self.condition_forget_if_unused(&name);
    }

    /// Queues a former condition waiter for the lock, under its own id.
    fn move_to_lock(
        &mut self,
        lock: &str,
        waiter: &Waiter<()>,
        timed_out: bool,
        out: &mut Outcome,
    ) {
        let request = LockRequest {
            acquire_id: 0,
            answer: LockAnswer::ConditionWait { timed_out },
        };
        let queued = self.lock_enqueue(lock, waiter.id, waiter.session_id, None, request);
        // Only a full lock queue refuses; the waiter hears why (it holds
        // nothing: its lock was released when it began to wait).
        if let Err(rejection) = queued {
            out.events.push((waiter.id, Err(rejection)));
        }
    }

    pub(super) fn condition_forget_if_unused(&mut self, name: &str) {
        forget_if(&mut self.conditions, name, |c| c.waiters.is_empty());
    }

    pub(super) fn condition_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Condition, name)?;
        let condition = self.conditions.get(name);
        Ok(Reply::ConditionDescription(ConditionInfo {
            name: name.to_owned(),
            lock: condition.map(|c| c.lock.clone()).unwrap_or_default(),
            waiters: self.waiter_infos(now_ms, condition),
        }))
    }

    pub(super) fn condition_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.conditions, prefix)
            .map(|(name, c)| Summary {
                kind: Kind::Condition,
                name: name.clone(),
                state: format!("{} waiting, with lock {:?}", c.waiters.len(), c.lock),
            })
            .collect()
    }
}
