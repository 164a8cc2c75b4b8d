//! Semaphore: up to `capacity` permits held at once, strictly FIFO.
//!
//! Policy:
//! - The capacity is fixed by the request that creates the semaphore; while
//!   it exists (held or awaited) every request must name the same capacity
//!   or 0. A request takes 1 to `capacity` permits as one hold with its own
//!   fencing token.
//! - A request is granted at once only if nobody waits and its permits fit.
//!   Otherwise it queues; the head of the queue is granted as soon as its
//!   permits fit, and a head that does not fit yet blocks smaller requests
//!   behind it, so a large request is never starved by small ones.
//! - Only the holding session, naming the hold's token, may release it:
//!   releasing what one does not hold is refused (the `BoundedSemaphore`
//!   rule), so permits can never exceed the capacity.
//!
//! Invariants:
//! - `permits_held` is the sum of the holds' permits and never exceeds
//!   `capacity`;
//! - after `semaphore_wake`, the head waiter (if any) does not fit;
//! - a semaphore with no holds and no waiters does not exist.

use std::collections::BTreeMap;

use super::holds::{forget_if, Hold, HolderInfo, Queueing, Table, WaiterInfo};
use super::records::{self, HoldExtra};
use super::waitq::{WaitQueue, Waiter};
use super::{
    Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary,
    WaiterId,
};

/// One hold and the permits it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreHold {
    pub hold: Hold,
    pub permits: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreRequest {
    pub acquire_id: u64,
    pub permits: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Semaphore {
    capacity: u32,
    permits_held: u32,
    holds: BTreeMap<FencingToken, SemaphoreHold>,
    waiters: WaitQueue<SemaphoreRequest>,
}

impl Queueing for Semaphore {
    type Request = SemaphoreRequest;
    fn queue(&mut self) -> &mut WaitQueue<SemaphoreRequest> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<SemaphoreRequest> {
        &self.waiters
    }
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        self.holds
            .values()
            .map(|h| (h.hold.fencing_token, h.hold.session_id))
            .collect()
    }
}

impl Semaphore {
    fn fits(&self, permits: u32) -> bool {
        self.permits_held + permits <= self.capacity
    }

    fn is_unused(&self) -> bool {
        self.holds.is_empty() && self.waiters.is_empty()
    }

    fn add_hold(&mut self, hold: SemaphoreHold) {
        self.permits_held += hold.permits;
        debug_assert!(
            self.permits_held <= self.capacity,
            "semaphore over capacity"
        );
        self.holds.insert(hold.hold.fencing_token, hold);
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Adds a restored waiter (after the holds); refuses one that asks for
    /// another capacity or more permits than it has.
    pub(super) fn restore_waiter(
        &mut self,
        capacity: u32,
        waiter: Waiter<SemaphoreRequest>,
    ) -> std::result::Result<(), &'static str> {
        let permits = waiter.request.permits;
        if capacity != self.capacity || permits == 0 || permits > capacity {
            return Err("it names another capacity, or permits beyond it");
        }
        records::waiters::push(self, waiter)
    }

    /// Adds a restored hold; refuses one that does not fit.
    pub(super) fn restore_hold(&mut self, capacity: u32, hold: SemaphoreHold) -> bool {
        if self.capacity == 0 {
            self.capacity = capacity;
        }
        let fits = capacity == self.capacity && hold.permits >= 1 && self.fits(hold.permits);
        if fits {
            self.add_hold(hold);
        }
        fits
    }
}

/// What `describe` shows: holders and waiters with their permits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreInfo {
    pub name: String,
    /// 0 when the semaphore does not exist.
    pub capacity: u32,
    pub permits_held: u32,
    pub holders: Vec<(HolderInfo, u32)>,
    pub waiters: Vec<(WaiterInfo, u32)>,
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn semaphore_acquire(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
        capacity: u32,
        permits: u32,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Semaphore, &name)?;
        self.require_session(session_id)?;
        let permits = permits.max(1);
        let capacity = self.semaphore_capacity(&name, capacity)?;
        if permits > capacity {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "{permits} permits asked of semaphore {name:?}, whose capacity is {capacity}"
                ),
            ));
        }
        let kind = Kind::Semaphore;
        if let Some(fencing_token) = self.retried_grant(session_id, kind, &name, acquire_id) {
            return Ok(Reply::Granted { fencing_token });
        }
        let semaphore = self.semaphores.entry(name.clone()).or_default();
        semaphore.capacity = capacity;
        if semaphore.waiters.is_empty() && semaphore.fits(permits) {
            let request = SemaphoreRequest {
                acquire_id,
                permits,
            };
            let fencing_token = self.grant_semaphore(&name, session_id, &request, out);
            return Ok(Reply::Granted { fencing_token });
        }
        if timeout_ms == Some(0) {
            let free = capacity - semaphore.permits_held;
            let waiting = semaphore.waiters.len();
            self.semaphore_forget_if_unused(&name);
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!(
                    "semaphore {name:?} has {free} of {capacity} permits free and {waiting} waiting"
                ),
            ));
        }
        let request = SemaphoreRequest {
            acquire_id,
            permits,
        };
        let table: Table<Semaphore> = |state| &mut state.semaphores;
        self.enqueue(table, kind, &name, waiter, session_id, timeout_ms, request)
    }

    /// The capacity a request gets: the existing one, which the request
    /// must agree with, or the request's own for a new semaphore.
    fn semaphore_capacity(&self, name: &str, asked: u32) -> Result<u32> {
        let limit = self.limits.semaphore_capacity_max;
        match self.semaphores.get(name) {
            Some(existing) if asked == 0 || asked == existing.capacity => Ok(existing.capacity),
            Some(existing) => Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "semaphore {name:?} exists with capacity {}, not {asked}",
                    existing.capacity
                ),
            )),
            None if asked == 0 => Err(Rejection::new(
                Code::NotFound,
                format!("semaphore {name:?} does not exist; give a capacity to create it"),
            )),
            None if asked > limit => Err(Rejection::new(
                Code::InvalidArgument,
                format!("semaphore capacity {asked} is above the limit of {limit}"),
            )),
            None => Ok(asked),
        }
    }

    /// The hold `token` is gone from the indexes: give its permits back.
    pub(super) fn semaphore_drop_hold(
        &mut self,
        name: &str,
        token: FencingToken,
        out: &mut Outcome,
    ) {
        if let Some(semaphore) = self.semaphores.get_mut(name) {
            if let Some(hold) = semaphore.holds.remove(&token) {
                semaphore.permits_held -= hold.permits;
            }
        }
        out.changes.push(records::hold_delete(token));
    }

    /// Grants waiters from the head while their permits fit; forgets the
    /// semaphore if nobody uses it.
    pub(super) fn semaphore_wake(&mut self, name: &str, out: &mut Outcome) {
        loop {
            let Some(semaphore) = self.semaphores.get_mut(name) else {
                return;
            };
            let fits = semaphore
                .waiters
                .front()
                .is_some_and(|w| semaphore.fits(w.request.permits));
            if !fits {
                break;
            }
            let next = semaphore.waiters.pop_front().expect("front was checked");
            self.unregister_waiter(next.id);
            let fencing_token = self.grant_semaphore(name, next.session_id, &next.request, out);
            out.events
                .push((next.id, Ok(Reply::Granted { fencing_token })));
        }
        self.semaphore_forget_if_unused(name);
    }

    fn semaphore_forget_if_unused(&mut self, name: &str) {
        forget_if(&mut self.semaphores, name, Semaphore::is_unused);
    }

    fn grant_semaphore(
        &mut self,
        name: &str,
        session_id: SessionId,
        request: &SemaphoreRequest,
        out: &mut Outcome,
    ) -> FencingToken {
        let hold = self.new_hold(session_id, Kind::Semaphore, name, request.acquire_id, out);
        let semaphore = self
            .semaphores
            .get_mut(name)
            .expect("granted on an existing semaphore");
        let extra = HoldExtra::Semaphore {
            capacity: semaphore.capacity,
            permits: request.permits,
        };
        out.changes
            .push(records::hold_put(Kind::Semaphore, name, &hold, extra));
        let fencing_token = hold.fencing_token;
        semaphore.add_hold(SemaphoreHold {
            hold,
            permits: request.permits,
        });
        fencing_token
    }

    pub(super) fn semaphore_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Semaphore, name)?;
        let mut info = SemaphoreInfo {
            name: name.to_owned(),
            capacity: 0,
            permits_held: 0,
            holders: Vec::new(),
            waiters: Vec::new(),
        };
        if let Some(semaphore) = self.semaphores.get(name) {
            info.capacity = semaphore.capacity;
            info.permits_held = semaphore.permits_held;
            info.holders = (semaphore.holds.values())
                .map(|h| (self.holder_info(now_ms, &h.hold), h.permits))
                .collect();
            info.waiters = (semaphore.waiters.iter())
                .map(|w| (self.waiter_info(now_ms, w), w.request.permits))
                .collect();
        }
        Ok(Reply::SemaphoreDescription(info))
    }

    pub(super) fn semaphore_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.semaphores, prefix)
            .map(|(name, s)| Summary {
                kind: Kind::Semaphore,
                name: name.clone(),
                state: format!(
                    "{} of {} permits held by {}, {} waiting",
                    s.permits_held,
                    s.capacity,
                    super::holds::count(s.holds.len(), "hold", "holds"),
                    s.waiters.len()
                ),
            })
            .collect()
    }
}
