//! A property test over every primitive at once: random sequences of
//! acquires, releases, waits, notifications, cancels, session ends and
//! timeouts, checked after every step against the invariants each primitive
//! states in its doc comment, the shared bookkeeping (`check_indexes`), the
//! life of every waiter (one final event, nothing after it), fencing tokens
//! that only increase, FIFO grants on semaphores and read-write locks, and
//! a restore from the persisted records that gives back exactly the same
//! state (`exact::differences`). Waiter ids are scrambled: they need not
//! rise in arrival order, and nothing may depend on it.

mod more;
mod ops;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

pub(super) use self::ops::{arb_op, Op};
use super::{listing, persist, Sim};
use crate::core::{
    Command, FencingToken, Kind, Limits, Reply, Result, RwMode, SessionId, State, WaiterId,
};

const SLOTS: usize = 3;
const NAMES: [&str; 2] = ["a", "b"];

pub(super) fn limits() -> Limits {
    Limits {
        waiters_per_primitive_max: 4,
        ..Limits::default()
    }
}

type Checked = std::result::Result<(), TestCaseError>;

/// Where a queued waiter waits, and when it queued there.
#[derive(Clone, Debug)]
struct Queued {
    kind: Kind,
    name: String,
    seq: u64,
}

pub(super) struct Mixed {
    pub(super) sim: Sim,
    slots: [SessionId; SLOTS],
    /// Waiters that queued and have not had their final event.
    open: BTreeMap<WaiterId, Queued>,
    /// Waiters whose wait is over (a final reply or event).
    done: BTreeSet<WaiterId>,
    last_token: FencingToken,
    seq: u64,
}

impl Mixed {
    pub(super) fn new() -> Mixed {
        Mixed {
            sim: Sim::with_limits(limits()),
            slots: [0; SLOTS],
            open: BTreeMap::new(),
            done: BTreeSet::new(),
            last_token: 0,
            seq: 0,
        }
    }

    pub(super) fn token_pick(
        &self,
        pick: usize,
        kinds: &[Kind],
    ) -> Option<(FencingToken, Kind, String, SessionId)> {
        let holds: Vec<_> = (self.sim.state.holds.iter())
            .filter(|(_, h)| kinds.contains(&h.kind))
            .collect();
        let (token, hold) = holds.get(pick % holds.len().max(1))?;
        Some((**token, hold.kind, hold.name.clone(), hold.session_id))
    }

    pub(super) fn step(&mut self, op: &Op) -> Checked {
        // Waiter ids that do not rise with time, as the engine's need not.
        let waiter = WaiterId(self.sim.waiter().0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let session = |slot: usize| self.slots[slot];
        let command = match op.clone() {
            Op::Create { slot } => {
                let id = self.sim.session(1_000 + 500 * slot as u64);
                self.slots[slot] = id;
                return self.check();
            }
            Op::Close { slot } => Command::CloseSession {
                session_id: session(slot),
                reason: String::new(),
            },
            Op::Advance { ms } => {
                let events = self.sim.tick_at(self.sim.now_ms + ms);
                self.observe_events(&events)?;
                return self.check();
            }
            Op::Lock {
                slot,
                name,
                timeout_ms,
            } => Command::LockAcquire {
                session_id: session(slot),
                name: NAMES[name].into(),
                waiter,
                timeout_ms,
                acquire_id: 0,
            },
            Op::Semaphore {
                slot,
                name,
                permits,
                timeout_ms,
            } => Command::SemaphoreAcquire {
                session_id: session(slot),
                name: NAMES[name].into(),
                waiter,
                timeout_ms,
                acquire_id: 0,
                capacity: 3,
                permits,
            },
            Op::RwLock {
                slot,
                name,
                write,
                timeout_ms,
            } => Command::RwLockAcquire {
                session_id: session(slot),
                name: NAMES[name].into(),
                waiter,
                timeout_ms,
                acquire_id: 0,
                mode: if write { RwMode::Write } else { RwMode::Read },
            },
            Op::Release { pick, by_owner } => {
                let all = [Kind::Lock, Kind::Semaphore, Kind::RwLock];
                let Some((token, kind, name, owner)) = self.token_pick(pick, &all) else {
                    return self.check();
                };
                let session_id = if by_owner { owner } else { owner + 1 };
                let reply = self.run(
                    Command::Release {
                        kind,
                        session_id,
                        name,
                        fencing_token: token,
                    },
                    waiter,
                )?;
                prop_assert_eq!(reply.is_ok(), by_owner, "release by owner: {:?}", reply);
                return self.check();
            }
            Op::Revoke { pick } => {
                let all = [
                    Kind::Lock,
                    Kind::Semaphore,
                    Kind::RwLock,
                    Kind::Queue,
                    Kind::Pool,
                    Kind::Breaker,
                ];
                let Some((token, ..)) = self.token_pick(pick, &all) else {
                    return self.check();
                };
                let reply = self.run(
                    Command::Revoke {
                        fencing_token: token,
                        detail: "test".into(),
                    },
                    waiter,
                )?;
                prop_assert!(reply.is_ok(), "revoke of a live hold: {:?}", reply);
                return self.check();
            }
            Op::Undelivered { pick } => {
                let all = [
                    Kind::Lock,
                    Kind::Semaphore,
                    Kind::RwLock,
                    Kind::Queue,
                    Kind::Pool,
                ];
                let Some((token, ..)) = self.token_pick(pick, &all) else {
                    return self.check();
                };
                Command::ReleaseUndelivered {
                    fencing_token: token,
                }
            }
            Op::Cancel { pick } => {
                let open: Vec<WaiterId> = self.open.keys().copied().collect();
                let Some(&cancelled) = open.get(pick % open.len().max(1)) else {
                    return self.check();
                };
                // A cancelled waiter hears nothing more.
                self.open.remove(&cancelled);
                self.done.insert(cancelled);
                Command::Cancel { waiter: cancelled }
            }
            Op::EventSet { name } => Command::EventSet {
                name: NAMES[name].into(),
            },
            Op::EventClear { name } => Command::EventClear {
                name: NAMES[name].into(),
            },
            Op::EventWait {
                slot,
                name,
                timeout_ms,
            } => Command::EventWait {
                session_id: session(slot),
                name: NAMES[name].into(),
                waiter,
                timeout_ms,
            },
            Op::ConditionWait { pick, timeout_ms } => {
                let (token, name, owner) = match self.token_pick(pick, &[Kind::Lock]) {
                    Some((token, _, name, owner)) => (token, name, owner),
                    None => (1, "a".into(), self.slots[0]),
                };
                Command::ConditionWait {
                    session_id: owner,
                    name: "cond".into(),
                    lock: name,
                    fencing_token: token,
                    waiter,
                    timeout_ms,
                }
            }
            Op::Notify { count } => Command::ConditionNotify {
                name: "cond".into(),
                count,
            },
            Op::BarrierWait {
                slot,
                parties,
                timeout_ms,
            } => Command::BarrierWait {
                session_id: session(slot),
                name: "barrier".into(),
                waiter,
                parties,
                timeout_ms,
            },
            Op::QueuePut {
                slot,
                priority,
                timeout_ms,
                put_id,
            } => Command::QueuePut {
                session_id: session(slot),
                name: "queue".into(),
                waiter,
                timeout_ms,
                value: vec![1, 2, 3],
                priority,
                capacity: Some(2),
                max_deliveries: 2,
                put_id,
            },
            Op::QueueGet {
                slot,
                no_ack,
                timeout_ms,
            } => Command::QueueGet {
                session_id: session(slot),
                name: "queue".into(),
                waiter,
                timeout_ms,
                visibility_timeout_ms: 300,
                no_ack,
            },
            Op::QueueAck { pick, nack } => {
                let Some((token, ..)) = self.token_pick(pick, &[Kind::Queue]) else {
                    return self.check();
                };
                let (name, session_id, item_id) = self.sim.state.queue_item_of(token);
                if nack {
                    Command::QueueNack {
                        session_id,
                        name,
                        item_id,
                    }
                } else {
                    Command::QueueAck {
                        session_id,
                        name,
                        item_id,
                    }
                }
            }
            Op::BarrierReset => Command::BarrierReset {
                name: "barrier".into(),
            },
            Op::BarrierDelete => Command::BarrierDelete {
                name: "barrier".into(),
            },
            Op::QueueJoin { .. }
            | Op::KeepAlive { .. }
            | Op::TickNext
            | Op::PoolCheckout { .. }
            | Op::PoolCheckin { .. }
            | Op::BucketTake { .. }
            | Op::BucketTry { .. }
            | Op::BreakerAllow { .. }
            | Op::BreakerRecord { .. }
            | Op::BreakerWatch { .. }
            | Op::BreakerControl { .. }
            | Op::BucketDelete
            | Op::BreakerDelete
            | Op::Restart => return self.more_step(op, waiter),
        };
        let _ = self.run(command, waiter)?;
        self.check()
    }

    /// Runs a command; notes its reply (as the waiter `waiter`) and events.
    pub(super) fn run(
        &mut self,
        command: Command,
        waiter: WaiterId,
    ) -> std::result::Result<Result<Reply>, TestCaseError> {
        let queue_place = match &command {
            Command::LockAcquire { name, .. } => Some((Kind::Lock, name.clone())),
            Command::SemaphoreAcquire { name, .. } => Some((Kind::Semaphore, name.clone())),
            Command::RwLockAcquire { name, .. } => Some((Kind::RwLock, name.clone())),
            Command::EventWait { name, .. } => Some((Kind::Event, name.clone())),
            Command::ConditionWait { lock, .. } => Some((Kind::Condition, lock.clone())),
            Command::BarrierWait { name, .. } => Some((Kind::Barrier, name.clone())),
            Command::QueuePut { name, .. }
            | Command::QueueGet { name, .. }
            | Command::QueueJoin { name, .. } => Some((Kind::Queue, name.clone())),
            Command::PoolCheckout { name, .. } => Some((Kind::Pool, name.clone())),
            Command::BucketTake { name, .. } => Some((Kind::TokenBucket, name.clone())),
            Command::BreakerWatch { name, .. } => Some((Kind::Breaker, name.clone())),
            _ => None,
        };
        let (reply, events) = self.sim.run(command);
        // The caller's own reply comes first: events of the same step may
        // follow from it (a released lock handed on).
        if let Some((kind, name)) = queue_place {
            match &reply {
                // A watcher's first answer is the state now; it waits on.
                Ok(Reply::Queued { .. } | Reply::BreakerChanged(_)) => {
                    self.seq += 1;
                    self.open.insert(
                        waiter,
                        Queued {
                            kind,
                            name,
                            seq: self.seq,
                        },
                    );
                }
                Ok(Reply::Granted { .. }) => {
                    // Granted at once: nobody may be waiting on it.
                    let waiting = self
                        .open
                        .values()
                        .find(|q| q.kind == kind && q.name == name);
                    prop_assert!(waiting.is_none(), "{:?} barged past {:?}", waiter, waiting);
                    self.done.insert(waiter);
                }
                _ => {
                    self.done.insert(waiter);
                }
            }
            self.note_token(&reply)?;
        }
        self.observe_events(&events)?;
        Ok(reply)
    }

    fn note_token(&mut self, reply: &Result<Reply>) -> Checked {
        if let Some(token) = reply.as_ref().ok().and_then(Reply::granted_token) {
            prop_assert!(
                token > self.last_token,
                "token {} after {}",
                token,
                self.last_token
            );
            self.last_token = token;
        }
        Ok(())
    }

    pub(super) fn observe_events(&mut self, events: &[(WaiterId, Result<Reply>)]) -> Checked {
        for (waiter, event) in events {
            prop_assert!(
                !self.done.contains(waiter),
                "{:?} heard {:?} after its end",
                waiter,
                event
            );
            let Some(place) = self.open.get(waiter).cloned() else {
                return Err(TestCaseError::fail(format!("event for unknown {waiter:?}")));
            };
            let goes_on = event.as_ref().is_ok_and(|r| !r.is_final());
            prop_assert!(!goes_on || place.kind == Kind::Breaker, "a second Queued");
            self.note_token(event)?;
            if goes_on {
                // A watcher heard a change and watches on.
                continue;
            }
            let granted = matches!(event, Ok(Reply::Granted { .. }));
            if granted && matches!(place.kind, Kind::Semaphore | Kind::RwLock) {
                // FIFO: nobody who queued earlier on it is still waiting.
                let overtaken = self.open.iter().find(|(other, q)| {
                    *other != waiter
                        && q.kind == place.kind
                        && q.name == place.name
                        && q.seq < place.seq
                });
                prop_assert!(overtaken.is_none(), "{:?} overtook {:?}", waiter, overtaken);
            }
            self.open.remove(waiter);
            self.done.insert(*waiter);
        }
        Ok(())
    }

    /// The invariants every primitive states, and a restore round trip.
    pub(super) fn check(&mut self) -> Checked {
        let state = &self.sim.state;
        state.check_indexes().map_err(TestCaseError::fail)?;
        prop_assert_eq!(state.waiter_count(), self.open.len(), "open waiters");
        for (name, s) in &state.semaphores {
            let info = match state.semaphore_describe(state.now_ms(), name) {
                Ok(Reply::SemaphoreDescription(info)) => info,
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            };
            let held: u32 = info.holders.iter().map(|(_, p)| p).sum();
            prop_assert!(
                held == info.permits_held && held <= info.capacity,
                "{:?}",
                s
            );
            if let Some((_, head)) = info.waiters.first() {
                prop_assert!(held + head > info.capacity, "head fits but waits: {:?}", s);
            }
            prop_assert!(
                !info.holders.is_empty() || !info.waiters.is_empty(),
                "unused semaphore"
            );
        }
        for name in state.rwlocks.keys() {
            let Ok(Reply::RwLockDescription(info)) = state.rwlock_describe(state.now_ms(), name)
            else {
                return Err(TestCaseError::fail("rwlock describe"));
            };
            let writes = info
                .holders
                .iter()
                .filter(|(_, m)| *m == RwMode::Write)
                .count();
            prop_assert!(writes == 0 || info.holders.len() == 1, "{:?}", info);
            if let Some((_, head)) = info.waiters.first() {
                let admitted = match head {
                    RwMode::Write => info.holders.is_empty(),
                    RwMode::Read => writes == 0,
                };
                prop_assert!(!admitted, "head admitted but waits: {:?}", info);
            }
        }
        for (name, lock) in &state.locks {
            prop_assert!(
                lock.holder.is_some() || state.waiter_infos(state.now_ms(), Some(lock)).is_empty(),
                "free lock {} with waiters",
                name
            );
        }
        for (name, b) in &state.barriers {
            let waiting = state.waiter_infos(state.now_ms(), Some(b)).len() as u32;
            prop_assert!(
                waiting < b.parties && (!b.broken || waiting == 0),
                "barrier {}",
                name
            );
        }
        self.check_restore()
    }

    /// The stored records (with the checkpoint the engine writes) restore
    /// exactly this state.
    fn check_restore(&self) -> Checked {
        let mut store = self.sim.store.clone();
        persist(&mut store, &[self.sim.state.checkpoint()]);
        let restored = State::restore(limits(), store).map_err(|e| TestCaseError::fail(e.0))?;
        restored.check_indexes().map_err(TestCaseError::fail)?;
        let differences = super::exact::differences(&self.sim.state, &restored);
        prop_assert!(differences.is_empty(), "restored: {:#?}", differences);
        Ok(())
    }

    /// Closing every session leaves only set events, barriers, queued
    /// items, idle pool resources, buckets and breakers.
    pub(super) fn finish(&mut self) -> Checked {
        let live: Vec<SessionId> = self.sim.state.sessions.iter().map(|s| s.id).collect();
        for session_id in live {
            let waiter = self.sim.waiter();
            let _ = self.run(
                Command::CloseSession {
                    session_id,
                    reason: String::new(),
                },
                waiter,
            )?;
        }
        self.check()?;
        prop_assert!(self.open.is_empty(), "waiters left: {:?}", self.open);
        let state = &self.sim.state;
        prop_assert_eq!(state.hold_count(), 0);
        let left: Vec<Kind> = listing(state, None, "")
            .into_iter()
            .map(|s| s.kind)
            .collect();
        prop_assert!(
            left.iter().all(|k| matches!(
                k,
                Kind::Event
                    | Kind::Barrier
                    | Kind::Queue
                    | Kind::Pool
                    | Kind::TokenBucket
                    | Kind::Breaker
            )),
            "{:?}",
            left
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0003),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_primitive_keeps_its_invariants_under_random_use(
        ops in proptest::collection::vec(arb_op(), 1..80),
    ) {
        let mut mixed = Mixed::new();
        for slot in 0..SLOTS {
            mixed.step(&Op::Create { slot })?;
        }
        for op in &ops {
            mixed.step(op)?;
        }
        mixed.finish()?;
    }
}
