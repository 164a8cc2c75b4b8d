//! The persisted form of waiters: `waiter/<waiter id BE>` → `WaiterRecord`.
//!
//! Policy:
//! - Every waiter of every kind has a record while it waits: its session,
//!   primitive, request, enqueue time, deadline, and its place in its queue
//!   (`arrival`, see `waitq`). A restore puts each back in its queue in
//!   arrival order, so every queue comes back in exactly its order, whatever
//!   the waiter ids.
//! - The records are written once per step, at its end
//!   (`flush_waiter_records`): a waiter that joined a queue in the step is
//!   put, one that left it is deleted, and one that came and went in the
//!   same step writes nothing. A waiter's record never changes while it
//!   stays in one queue, so a waiter costs one put when it queues and one
//!   delete when it leaves (a condition waiter moving on to its lock's queue
//!   is rewritten once).
//!
//! Invariants:
//! - at the end of every `apply` and `tick`, the stored waiter records are
//!   exactly the waiters in `State::waiters`, each as its queue holds it;
//! - `touched_waiters` is empty between steps.

use prost::Message;

use super::super::holds::{Queueing, WaiterRef};
use super::super::lock::{LockAnswer, LockRequest};
use super::super::pool::CheckoutRequest;
use super::super::rwlock::{RwMode, RwRequest};
use super::super::semaphore::{Semaphore, SemaphoreRequest};
use super::super::waitq::Waiter;
use super::super::{Kind, Outcome, SessionId, State, WaiterId};
use super::{Change, RestoreError};
use crate::proto::store as pb;
use pb::waiter_record::Request;

pub(in crate::core) const WAITER_PREFIX: &[u8] = b"waiter/";

fn waiter_key(id: WaiterId) -> Vec<u8> {
    [WAITER_PREFIX, &id.0.to_be_bytes()].concat()
}

/// What every waiter record keeps besides its request.
#[derive(Clone, Copy, Debug)]
pub(in crate::core) struct Stub {
    pub(in crate::core) id: WaiterId,
    pub(in crate::core) session_id: SessionId,
    pub(in crate::core) enqueued_at_ms: u64,
    pub(in crate::core) arrival: u64,
}

impl Stub {
    pub(in crate::core) fn of<R>(waiter: &Waiter<R>) -> Stub {
        Stub {
            id: waiter.id,
            session_id: waiter.session_id,
            enqueued_at_ms: waiter.enqueued_at_ms,
            arrival: waiter.arrival,
        }
    }

    pub(in crate::core) fn with<R>(self, request: R) -> Waiter<R> {
        Waiter {
            id: self.id,
            session_id: self.session_id,
            enqueued_at_ms: self.enqueued_at_ms,
            arrival: self.arrival,
            request,
        }
    }
}

/// The waiter `id` in a primitive's queue.
fn find<P: Queueing>(primitive: &P, id: WaiterId) -> Option<&Waiter<P::Request>> {
    primitive.waiting().iter().find(|w| w.id == id)
}

/// Puts a restored waiter at the back of a primitive's queue.
pub(in crate::core) fn push<P: Queueing>(
    primitive: &mut P,
    waiter: Waiter<P::Request>,
) -> Result<(), &'static str> {
    (primitive.queue().push_restored(waiter)).map_err(|_| "it is out of order in its queue")
}

impl State {
    /// Notes that waiter `id` joins or leaves a queue in this step;
    /// `stored`: whether its record was stored before the step (the first
    /// note of a step is the one that counts).
    pub(in crate::core) fn touch_waiter(&mut self, id: WaiterId, stored: bool) {
        self.touched_waiters.entry(id).or_insert(stored);
    }

    /// Writes the records of the waiters this step touched (see the module
    /// doc). `apply` and `tick` call it last.
    pub(in crate::core) fn flush_waiter_records(&mut self, out: &mut Outcome) {
        for (id, stored) in std::mem::take(&mut self.touched_waiters) {
            match self.waiters.get(&id) {
                Some(place) => match self.waiter_record(id, place) {
                    Some(record) => out.changes.push(Change::Put {
                        key: waiter_key(id),
                        value: record.encode_to_vec(),
                    }),
                    None => debug_assert!(false, "{id:?} is indexed but not in its queue"),
                },
                None if stored => out.changes.push(Change::Delete {
                    key: waiter_key(id),
                }),
                None => {}
            }
        }
    }

    /// The record of a waiter, as its queue holds it.
    fn waiter_record(&self, id: WaiterId, place: &WaiterRef) -> Option<pb::WaiterRecord> {
        let name = place.name.as_str();
        let (stub, request) = match place.kind {
            Kind::Lock => lock_waiter(find(self.locks.get(name)?, id)?),
            Kind::Semaphore => semaphore_waiter(self.semaphores.get(name)?, id)?,
            Kind::RwLock => rwlock_waiter(find(self.rwlocks.get(name)?, id)?),
            Kind::Event => plain(
                self.events.get(name)?,
                id,
                Request::Event(pb::EventWaiter {}),
            )?,
            Kind::Condition => {
                let condition = self.conditions.get(name)?;
                let lock = condition.lock().to_owned();
                plain(
                    condition,
                    id,
                    Request::Condition(pb::ConditionWaiter { lock }),
                )?
            }
            Kind::Barrier => plain(
                self.barriers.get(name)?,
                id,
                Request::Barrier(pb::BarrierWaiter {}),
            )?,
            Kind::Queue => self.queue_waiter_record(name, id)?,
            Kind::Pool => pool_waiter(find(self.pools.get(name)?, id)?),
            Kind::TokenBucket => {
                let w = find(self.buckets.get(name)?, id)?;
                let tokens = w.request;
                (Stub::of(w), Request::Bucket(pb::BucketWaiter { tokens }))
            }
            Kind::Breaker => plain(
                self.breakers.get(name)?,
                id,
                Request::Breaker(pb::BreakerWatcher {}),
            )?,
        };
        debug_assert_eq!(stub.session_id, place.session_id);
        Some(pb::WaiterRecord {
            session_id: stub.session_id,
            name: place.name.clone(),
            enqueued_at_ms: stub.enqueued_at_ms,
            deadline_ms: place.deadline_ms,
            arrival: stub.arrival,
            request: Some(request),
        })
    }

    /// Puts the stored waiters back in their queues, each queue in arrival
    /// order, and indexes them with their deadlines. Runs after everything
    /// they wait on is restored.
    pub(in crate::core) fn restore_waiters(
        &mut self,
        mut stored: Vec<(WaiterId, pb::WaiterRecord)>,
    ) -> Result<(), RestoreError> {
        stored.sort_by_key(|(id, r)| (r.arrival, *id));
        for (id, r) in stored {
            let bad = |why: &str| {
                RestoreError(format!("waiter {} on {:?} is invalid: {why}", id.0, r.name))
            };
            if self.sessions.get(r.session_id).is_none() {
                return Err(bad("its session is not stored"));
            }
            let Some(request) = r.request else {
                return Err(bad("it has no request"));
            };
            let stub = Stub {
                id,
                session_id: r.session_id,
                enqueued_at_ms: r.enqueued_at_ms,
                arrival: r.arrival,
            };
            let kind = self.place_waiter(&r.name, stub, request).map_err(bad)?;
            self.index_waiter(id, r.session_id, kind, &r.name, r.deadline_ms);
        }
        Ok(())
    }

    /// Puts one restored waiter in its primitive's queue; its kind, or why
    /// it cannot wait there.
    fn place_waiter(
        &mut self,
        name: &str,
        stub: Stub,
        request: Request,
    ) -> Result<Kind, &'static str> {
        match request {
            Request::Lock(r) => {
                let lock = (self.locks.get_mut(name).filter(|l| l.holder.is_some()))
                    .ok_or("its lock is not held")?;
                let answer = match r.reacquire {
                    true => LockAnswer::ConditionWait {
                        timed_out: r.timed_out,
                    },
                    false => LockAnswer::Acquire,
                };
                let acquire_id = r.acquire_id;
                push(lock, stub.with(LockRequest { acquire_id, answer }))?;
                Ok(Kind::Lock)
            }
            Request::Semaphore(r) => {
                // A semaphore with waiters has holds, restored before.
                let semaphore = self
                    .semaphores
                    .get_mut(name)
                    .ok_or("its semaphore is free")?;
                let request = SemaphoreRequest {
                    acquire_id: r.acquire_id,
                    permits: r.permits,
                };
                semaphore.restore_waiter(r.capacity, stub.with(request))?;
                Ok(Kind::Semaphore)
            }
            Request::Rwlock(r) => {
                let rwlock = self.rwlocks.get_mut(name).ok_or("its rwlock is free")?;
                let mode = if r.write { RwMode::Write } else { RwMode::Read };
                let acquire_id = r.acquire_id;
                push(rwlock, stub.with(RwRequest { acquire_id, mode }))?;
                Ok(Kind::RwLock)
            }
            Request::Pool(r) => {
                let request = CheckoutRequest {
                    acquire_id: r.acquire_id,
                    size: r.size,
                    max_age_ms: r.max_age_ms,
                    max_idle_ms: r.max_idle_ms,
                };
                self.restore_pool_waiter(name, stub.with(request))?;
                Ok(Kind::Pool)
            }
            Request::QueuePut(_) | Request::QueueGet(_) | Request::QueueJoin(_) => {
                self.restore_queue_waiter(name, stub, request)?;
                Ok(Kind::Queue)
            }
            other => self.place_plain_waiter(name, stub, other),
        }
    }

    /// `place_waiter` for the kinds whose waiters ask for no hold.
    fn place_plain_waiter(
        &mut self,
        name: &str,
        stub: Stub,
        request: Request,
    ) -> Result<Kind, &'static str> {
        match request {
            Request::Event(_) => {
                let event = self.events.entry(name.to_owned()).or_default();
                event.restore_waiter(stub.with(()))?;
                Ok(Kind::Event)
            }
            Request::Condition(r) => {
                let condition = self.conditions.entry(name.to_owned()).or_default();
                condition.restore_waiter(r.lock, stub.with(()))?;
                Ok(Kind::Condition)
            }
            Request::Barrier(_) => {
                let barrier = self
                    .barriers
                    .get_mut(name)
                    .ok_or("its barrier is not stored")?;
                let waiting = barrier.waiting().len() as u64;
                if barrier.broken || waiting + 1 >= u64::from(barrier.parties) {
                    return Err("its barrier is broken, or has all its parties");
                }
                push(barrier, stub.with(()))?;
                Ok(Kind::Barrier)
            }
            Request::Bucket(r) => {
                self.restore_bucket_waiter(name, stub.with(r.tokens))?;
                Ok(Kind::TokenBucket)
            }
            Request::Breaker(_) => {
                let breaker = self
                    .breakers
                    .get_mut(name)
                    .ok_or("its breaker is not stored")?;
                push(breaker, stub.with(()))?;
                Ok(Kind::Breaker)
            }
            Request::Lock(_)
            | Request::Semaphore(_)
            | Request::Rwlock(_)
            | Request::Pool(_)
            | Request::QueuePut(_)
            | Request::QueueGet(_)
            | Request::QueueJoin(_) => unreachable!("placed by `place_waiter`"),
        }
    }
}

/// A waiter whose request says nothing more than its kind.
fn plain<P: Queueing>(primitive: &P, id: WaiterId, request: Request) -> Option<(Stub, Request)> {
    Some((Stub::of(find(primitive, id)?), request))
}

fn lock_waiter(w: &Waiter<LockRequest>) -> (Stub, Request) {
    let (reacquire, timed_out) = match w.request.answer {
        LockAnswer::Acquire => (false, false),
        LockAnswer::ConditionWait { timed_out } => (true, timed_out),
    };
    let record = pb::LockWaiter {
        acquire_id: w.request.acquire_id,
        reacquire,
        timed_out,
    };
    (Stub::of(w), Request::Lock(record))
}

fn semaphore_waiter(semaphore: &Semaphore, id: WaiterId) -> Option<(Stub, Request)> {
    let w = find(semaphore, id)?;
    let record = pb::SemaphoreWaiter {
        acquire_id: w.request.acquire_id,
        permits: w.request.permits,
        capacity: semaphore.capacity(),
    };
    Some((Stub::of(w), Request::Semaphore(record)))
}

fn rwlock_waiter(w: &Waiter<RwRequest>) -> (Stub, Request) {
    let record = pb::RwLockWaiter {
        acquire_id: w.request.acquire_id,
        write: w.request.mode == RwMode::Write,
    };
    (Stub::of(w), Request::Rwlock(record))
}

fn pool_waiter(w: &Waiter<CheckoutRequest>) -> (Stub, Request) {
    let r = &w.request;
    let record = pb::PoolWaiter {
        acquire_id: r.acquire_id,
        size: r.size,
        max_age_ms: r.max_age_ms,
        max_idle_ms: r.max_idle_ms,
    };
    (Stub::of(w), Request::Pool(record))
}
