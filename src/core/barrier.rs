//! Barrier: `parties` waiters meet, then all go on together.
//!
//! Policy:
//! - The number of parties is fixed when the barrier is created (by its
//!   first wait); later waits must name the same number, or 0.
//! - Arrivals are numbered 0..parties-1 within a generation. The last to
//!   arrive releases everyone in the same step, and the next generation
//!   begins.
//! - A party that leaves while waiting (timeout, cancelled stream, session
//!   end) breaks the barrier: every waiting party gets ABORTED, and every
//!   later wait fails at once with ABORTED until `reset`. A CI pipeline
//!   wants exactly this when one job dies. A try-once wait (`timeout_ms` 0)
//!   that is not the last arrival leaves at once, so it breaks it too.
//! - `reset` mends a broken barrier; `reset` and `delete` abort the parties
//!   waiting at that moment.
//! - The barrier (parties, generation, broken) is persisted until `delete`,
//!   and each waiting party as a waiter record. A restart ends their waits
//!   (`Command::Resume`) without breaking the barrier: they may arrive
//!   again.
//!
//! Invariants:
//! - fewer than `parties` waiters;
//! - a broken barrier has no waiters;
//! - `generation` counts every release and every break, and only grows.

use super::holds::{Queueing, Table, WaiterInfo};
use super::records;
use super::waitq::WaitQueue;
use super::{Code, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary, WaiterId};

#[derive(Clone, Debug, Default)]
pub struct Barrier {
    pub(super) parties: u32,
    pub(super) generation: u64,
    pub(super) broken: bool,
    waiters: WaitQueue<()>,
}

impl Queueing for Barrier {
    type Request = ();
    fn queue(&mut self) -> &mut WaitQueue<()> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<()> {
        &self.waiters
    }
}

impl Barrier {
    pub(super) fn restored(parties: u32, generation: u64, broken: bool) -> Barrier {
        Barrier {
            parties,
            generation,
            broken,
            waiters: WaitQueue::default(),
        }
    }
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarrierInfo {
    pub name: String,
    /// 0 when the barrier does not exist.
    pub parties: u32,
    pub generation: u64,
    pub broken: bool,
    pub waiters: Vec<WaiterInfo>,
}

fn broken(name: &str) -> Rejection {
    Rejection::new(
        Code::Aborted,
        format!("barrier {name:?} is broken: a party left while waiting; reset it to use it again"),
    )
}

impl State {
    pub(super) fn barrier_wait(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        parties: u32,
        timeout_ms: Option<u64>,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Barrier, &name)?;
        self.require_session(session_id)?;
        self.barrier_for_wait(&name, parties, out)?;
        let barrier = self.barriers.get_mut(&name).expect("made above");
        let arrival_index = barrier.waiters.len() as u32;
        let parties = barrier.parties;
        if arrival_index + 1 == parties {
            let generation = barrier.generation;
            self.barrier_release(&name, out);
            return Ok(Reply::BarrierPassed {
                arrival_index,
                generation,
            });
        }
        if timeout_ms == Some(0) {
            self.barrier_break(&name, out);
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!(
                    "barrier {name:?}: party {} of {} did not wait, and broke it",
                    arrival_index + 1,
                    parties
                ),
            ));
        }
        let table: Table<Barrier> = |state| &mut state.barriers;
        self.enqueue(
            table,
            Kind::Barrier,
            &name,
            waiter,
            session_id,
            timeout_ms,
            (),
        )
    }

    /// Checks a wait against the stored barrier, or creates it.
    fn barrier_for_wait(&mut self, name: &str, parties: u32, out: &mut Outcome) -> Result<()> {
        match self.barriers.get(name) {
            Some(b) if parties != 0 && parties != b.parties => Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "barrier {name:?} has {} parties, not {parties} (delete it to change that)",
                    b.parties
                ),
            )),
            Some(b) if b.broken => Err(broken(name)),
            Some(_) => Ok(()),
            None if parties == 0 => Err(Rejection::new(
                Code::NotFound,
                format!("barrier {name:?} does not exist; give its parties to create it"),
            )),
            None if parties as usize > self.limits.waiters_per_primitive_max => {
                Err(Rejection::new(
                    Code::InvalidArgument,
                    format!(
                        "a barrier of {parties} parties is above waiters_per_primitive_max ({})",
                        self.limits.waiters_per_primitive_max
                    ),
                ))
            }
            None => {
                let barrier = Barrier::restored(parties, 0, false);
                out.changes.push(records::barrier_put(name, &barrier));
                self.barriers.insert(name.to_owned(), barrier);
                Ok(())
            }
        }
    }

    /// The last party arrived: everyone waiting passes.
    fn barrier_release(&mut self, name: &str, out: &mut Outcome) {
        let barrier = self
            .barriers
            .get_mut(name)
            .expect("released barrier exists");
        let generation = barrier.generation;
        let waiting = barrier.waiters.take_all();
        barrier.generation += 1;
        out.changes.push(records::barrier_put(name, barrier));
        for (arrival_index, waiter) in waiting.into_iter().enumerate() {
            self.unregister_waiter(waiter.id);
            let passed = Reply::BarrierPassed {
                arrival_index: arrival_index as u32,
                generation,
            };
            out.events.push((waiter.id, Ok(passed)));
        }
    }

    /// A party left while waiting: the barrier breaks, and everyone
    /// waiting hears ABORTED.
    pub(super) fn barrier_break(&mut self, name: &str, out: &mut Outcome) {
        let Some(barrier) = self.barriers.get_mut(name) else {
            return;
        };
        if barrier.broken {
            return;
        }
        barrier.broken = true;
        barrier.generation += 1;
        out.changes.push(records::barrier_put(name, barrier));
        self.barrier_abort_waiters(name, broken(name), out);
    }

    fn barrier_abort_waiters(&mut self, name: &str, why: Rejection, out: &mut Outcome) -> u32 {
        let Some(barrier) = self.barriers.get_mut(name) else {
            return 0;
        };
        let waiting = barrier.waiters.take_all();
        for waiter in &waiting {
            self.unregister_waiter(waiter.id);
            out.events.push((waiter.id, Err(why.clone())));
        }
        waiting.len() as u32
    }

    pub(super) fn barrier_reset(&mut self, name: String, out: &mut Outcome) -> Result<Reply> {
        self.validate_name(Kind::Barrier, &name)?;
        let Some(barrier) = self.barriers.get_mut(&name) else {
            return Err(not_found(&name));
        };
        let waiting = !barrier.waiters.is_empty();
        if !barrier.broken && !waiting {
            return Ok(Reply::Count(0));
        }
        barrier.broken = false;
        if waiting {
            // The waiters' generation ends without passing.
            barrier.generation += 1;
        }
        out.changes.push(records::barrier_put(&name, barrier));
        let why = Rejection::new(Code::Aborted, format!("barrier {name:?} was reset"));
        let aborted = self.barrier_abort_waiters(&name, why, out);
        Ok(Reply::Count(aborted))
    }

    pub(super) fn barrier_delete(&mut self, name: String, out: &mut Outcome) -> Result<Reply> {
        self.validate_name(Kind::Barrier, &name)?;
        if !self.barriers.contains_key(&name) {
            return Err(not_found(&name));
        }
        let why = Rejection::new(Code::Aborted, format!("barrier {name:?} was deleted"));
        let aborted = self.barrier_abort_waiters(&name, why, out);
        self.barriers.remove(&name);
        out.changes.push(records::barrier_delete(&name));
        Ok(Reply::Count(aborted))
    }

    pub(super) fn barrier_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Barrier, name)?;
        let barrier = self.barriers.get(name);
        Ok(Reply::BarrierDescription(BarrierInfo {
            name: name.to_owned(),
            parties: barrier.map_or(0, |b| b.parties),
            generation: barrier.map_or(0, |b| b.generation),
            broken: barrier.is_some_and(|b| b.broken),
            waiters: self.waiter_infos(now_ms, barrier),
        }))
    }

    pub(super) fn barrier_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.barriers, prefix)
            .map(|(name, b)| Summary {
                kind: Kind::Barrier,
                name: name.clone(),
                state: format!(
                    "{}, {} of {} parties waiting, generation {}",
                    if b.broken { "broken" } else { "ok" },
                    b.waiters.len(),
                    b.parties,
                    b.generation
                ),
            })
            .collect()
    }
}

fn not_found(name: &str) -> Rejection {
    Rejection::new(Code::NotFound, format!("barrier {name:?} does not exist"))
}
