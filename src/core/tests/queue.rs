//! Unit tests of the queue rules, and a property test of its delivery
//! guarantees, with simulated time.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

use super::{code, listing, Events, Sim};
use crate::core::queue::{Delivery, QueueInfo};
use crate::core::Query;
use crate::core::{Code, Command, Limits, Reply, Result, SessionId, State, WaiterId};

const TTL: u64 = 10_000;

impl Sim {
    fn put_with(
        &mut self,
        session_id: SessionId,
        name: &str,
        value: &str,
        priority: u32,
        capacity: Option<u32>,
        put_id: u64,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::QueuePut {
            session_id,
            name: name.to_owned(),
            waiter,
            timeout_ms: None,
            value: value.as_bytes().to_vec(),
            priority,
            capacity,
            max_deliveries: 0,
            put_id,
        });
        (waiter, reply, events)
    }

    fn put(&mut self, session_id: SessionId, value: &str, priority: u32) -> u64 {
        match self.put_with(session_id, "q", value, priority, None, 0).1 {
            Ok(Reply::Stored { item_id }) => item_id,
            other => panic!("put: {other:?}"),
        }
    }

    fn get_with(
        &mut self,
        session_id: SessionId,
        timeout_ms: Option<u64>,
        visibility_timeout_ms: u64,
        no_ack: bool,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::QueueGet {
            session_id,
            name: "q".to_owned(),
            waiter,
            timeout_ms,
            visibility_timeout_ms,
            no_ack,
        });
        (waiter, reply, events)
    }

    fn get(&mut self, session_id: SessionId) -> Delivery {
        match self.get_with(session_id, Some(0), 1_000, false).1 {
            Ok(Reply::Delivered(delivery)) => delivery,
            other => panic!("get: {other:?}"),
        }
    }

    fn ack(&mut self, session_id: SessionId, item_id: u64) -> (Result<Reply>, Events) {
        self.run(Command::QueueAck {
            session_id,
            name: "q".into(),
            item_id,
        })
    }

    fn nack(&mut self, session_id: SessionId, item_id: u64) -> (Result<Reply>, Events) {
        self.run(Command::QueueNack {
            session_id,
            name: "q".into(),
            item_id,
        })
    }

    fn queue_info(&mut self, name: &str) -> QueueInfo {
        match self.query(Query::QueueDescribe { name: name.into() }) {
            Ok(Reply::QueueDescription(info)) => info,
            other => panic!("describe: {other:?}"),
        }
    }
}

fn value(delivery: &Delivery) -> String {
    String::from_utf8(delivery.value.clone()).unwrap()
}

fn delivered(events: &Events, waiter: WaiterId) -> Delivery {
    match events.iter().find(|(w, _)| *w == waiter) {
        Some((_, Ok(Reply::Delivered(d)))) => d.clone(),
        other => panic!("expected a delivery for {waiter:?}, got {other:?} in {events:?}"),
    }
}

#[test]
fn items_come_out_by_priority_then_in_put_order() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    for (name, priority) in [("LOW", 3), ("CRITICAL", 1), ("HIGH", 2), ("NORMAL", 3)] {
        sim.put(s, name, priority);
    }
    let order: Vec<String> = (0..4).map(|_| value(&sim.get(s))).collect();
    assert_eq!(order, ["CRITICAL", "HIGH", "LOW", "NORMAL"]);
}

#[test]
fn a_full_queue_holds_puts_back_until_an_ack_makes_room() {
    let mut sim = Sim::new();
    let (producer, consumer) = (sim.session(TTL), sim.session(TTL));
    for i in 0..3 {
        sim.put_with(producer, "q", &i.to_string(), 0, Some(3), 0)
            .1
            .unwrap();
    }
    let (blocked, reply, _) = sim.put_with(producer, "q", "3", 0, Some(3), 0);
    assert!(matches!(reply, Ok(Reply::Queued { .. })), "{reply:?}");
    assert_eq!(sim.queue_info("q").waiting_puts, 1);
    // In flight still counts against the capacity; the ack makes room.
    let first = sim.get(consumer);
    assert_eq!(sim.queue_info("q").waiting_puts, 1);
    let (_, events) = sim.ack(consumer, first.id);
    assert!(matches!(events[..], [(w, Ok(Reply::Stored { .. }))] if w == blocked));
    let info = sim.queue_info("q");
    assert_eq!((info.ready, info.in_flight, info.waiting_puts), (3, 0, 0));
}

#[test]
fn a_waiting_get_receives_the_next_put() {
    let mut sim = Sim::new();
    let (producer, consumer) = (sim.session(TTL), sim.session(TTL));
    let (waiter, reply, _) = sim.get_with(consumer, None, 0, false);
    assert!(matches!(reply, Ok(Reply::Queued { .. })));
    // The queue waited for by a get takes the settings of the first put.
    let (_, reply, events) = sim.put_with(producer, "q", "x", 0, Some(2), 0);
    assert!(matches!(reply, Ok(Reply::Stored { .. })));
    assert_eq!(value(&delivered(&events, waiter)), "x");
    assert_eq!(sim.queue_info("q").capacity, 2);
}

#[test]
fn nack_timeout_and_session_end_put_an_item_back_at_its_place() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(1_500));
    sim.put(a, "first", 0);
    sim.put(a, "second", 0);
    let item = sim.get(a);
    assert_eq!(
        sim.nack(a, item.id).0,
        Ok(Reply::Nacked {
            dead_lettered: false
        })
    );
    let again = sim.get(a);
    assert_eq!(
        (again.id, again.deliveries),
        (item.id, 2),
        "back at the front"
    );
    // The visibility timeout (1 s in `get`) brings it back too.
    let events = sim.tick_at(1_000);
    assert_eq!(events, vec![]);
    assert_eq!(sim.queue_info("q").ready, 2);
    let third = sim.get(b);
    assert_eq!((third.id, third.deliveries), (item.id, 3));
    // b's session expires: back again.
    sim.tick_at(2_000);
    let info = sim.queue_info("q");
    assert_eq!((info.ready, info.in_flight), (2, 0));
    sim.state.check_indexes().unwrap();
}

#[test]
fn an_item_delivered_too_often_goes_to_the_dead_letter_queue() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    sim.put(s, "poison", 0);
    for delivery in 1..=5 {
        let item = sim.get(s);
        assert_eq!(item.deliveries, delivery);
        let dead = delivery == 5;
        assert_eq!(
            sim.nack(s, item.id).0,
            Ok(Reply::Nacked {
                dead_lettered: dead
            })
        );
    }
    assert_eq!(
        code(&sim.get_with(s, Some(0), 0, false).1),
        Some(Code::DeadlineExceeded)
    );
    let dlq = sim.queue_info("q.dlq");
    assert_eq!(dlq.ready, 1);
    let waiter = sim.waiter();
    let reply = sim.apply(Command::QueueGet {
        session_id: s,
        name: "q.dlq".into(),
        waiter,
        timeout_ms: Some(0),
        visibility_timeout_ms: 0,
        no_ack: true,
    });
    let Ok(Reply::Delivered(item)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((value(&item), item.deliveries), ("poison".into(), 1));
    assert_eq!(listing(&sim.state, None, ""), vec![], "nothing left behind");
}

#[test]
fn ack_and_nack_need_the_item_in_flight_for_this_session() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let id = sim.put(a, "x", 0);
    assert_eq!(
        code(&sim.ack(a, id).0),
        Some(Code::FailedPrecondition),
        "not delivered"
    );
    let item = sim.get(a);
    assert_eq!(code(&sim.ack(b, item.id).0), Some(Code::FailedPrecondition));
    assert_eq!(
        code(&sim.nack(b, item.id).0),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(sim.ack(a, item.id).0, Ok(Reply::Done));
    assert_eq!(
        code(&sim.ack(a, item.id).0),
        Some(Code::NotFound),
        "acked twice"
    );
}

#[test]
fn a_retried_put_is_stored_once() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let first = sim.put_with(s, "q", "x", 0, None, 77).1;
    let Ok(Reply::Stored { item_id }) = first else {
        panic!("{first:?}")
    };
    // Even after the item was consumed, the retry answers the same id.
    let item = sim.get(s);
    sim.ack(s, item.id).0.unwrap();
    assert_eq!(
        sim.put_with(s, "q", "x", 0, None, 77).1,
        Ok(Reply::Stored { item_id })
    );
    assert_eq!(listing(&sim.state, None, ""), vec![]);
    // It survives a restore; the session's end forgets it.
    let mut restored = sim.restored_queue_state();
    let mut out = crate::core::Outcome::default();
    let retry = Command::QueuePut {
        session_id: s,
        name: "q".into(),
        waiter: WaiterId(999),
        timeout_ms: None,
        value: b"x".to_vec(),
        priority: 0,
        capacity: None,
        max_deliveries: 0,
        put_id: 77,
    };
    assert_eq!(
        restored.apply(sim.now_ms, retry, &mut out),
        Ok(Reply::Stored { item_id })
    );
    sim.close(s).0.unwrap();
    assert!(sim.store.keys().all(|k| !k.starts_with(b"putid/")));
}

#[test]
fn join_waits_for_every_item_put_before_it() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let first = sim.put(s, "a", 0);
    let waiter = sim.waiter();
    let reply = sim.apply(Command::QueueJoin {
        session_id: s,
        name: "q".into(),
        waiter,
        timeout_ms: None,
    });
    assert!(matches!(reply, Ok(Reply::Queued { .. })));
    // Items put after the join do not hold it back.
    sim.put(s, "b", 5);
    let item = sim.get(s);
    assert_eq!(item.id, first);
    let (_, events) = sim.ack(s, item.id);
    assert_eq!(events, vec![(waiter, Ok(Reply::Joined))]);
}

#[test]
fn limits_on_item_size_and_queue_length_are_enforced() {
    let mut sim = Sim::with_limits(Limits {
        item_bytes_max: 4,
        queue_items_max: 2,
        ..Limits::default()
    });
    let s = sim.session(TTL);
    let (_, reply, _) = sim.put_with(s, "q", "12345", 0, None, 0);
    assert_eq!(code(&reply), Some(Code::InvalidArgument));
    sim.put(s, "a", 0);
    sim.put(s, "b", 0);
    let (_, reply, _) = sim.put_with(s, "q", "c", 0, None, 0);
    assert_eq!(code(&reply), Some(Code::ResourceExhausted));
    let (_, reply, _) = sim.put_with(s, "q", "c", 0, Some(5), 0);
    assert_eq!(
        code(&reply),
        Some(Code::FailedPrecondition),
        "capacity differs"
    );
    let long = "q".repeat(253);
    let (_, reply, _) = sim.put_with(s, &long, "c", 0, None, 0);
    assert_eq!(
        code(&reply),
        Some(Code::InvalidArgument),
        "no room for .dlq"
    );
}

#[test]
fn ready_and_in_flight_items_survive_a_restore() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    sim.put(s, "a", 1);
    sim.put(s, "b", 0);
    let flying = sim.get(s);
    assert_eq!(value(&flying), "b");
    let mut restored = sim.restored_queue_state();
    restored.check_indexes().unwrap();
    let mut out = crate::core::Outcome::default();
    let ack = Command::QueueAck {
        session_id: s,
        name: "q".into(),
        item_id: flying.id,
    };
    assert_eq!(restored.apply(sim.now_ms, ack, &mut out), Ok(Reply::Done));
    let describe = Query::QueueDescribe { name: "q".into() };
    let Ok(Reply::QueueDescription(info)) = restored.query(sim.now_ms, &describe) else {
        panic!()
    };
    assert_eq!((info.ready, info.in_flight), (1, 0));
}

impl Sim {
    fn restored_queue_state(&self) -> State {
        let mut store = self.store.clone();
        super::persist(&mut store, &[self.state.checkpoint()]);
        State::restore(self.state.limits().clone(), store).expect("restore")
    }
}

// --- property: at least once, nothing lost -----------------------------------

#[derive(Clone, Debug)]
enum Op {
    Put { slot: usize, priority: u32 },
    Get { slot: usize, no_ack: bool },
    Ack { pick: usize },
    Nack { pick: usize },
    Cancel { pick: usize },
    Advance { ms: u64 },
    Close { slot: usize },
    Restore,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3u32).prop_map(|(slot, priority)| Op::Put { slot, priority }),
        3 => (0..3usize, prop::bool::weighted(0.1))
            .prop_map(|(slot, no_ack)| Op::Get { slot, no_ack }),
        2 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Nack { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (1..800u64).prop_map(|ms| Op::Advance { ms }),
        1 => (0..3usize).prop_map(|slot| Op::Close { slot }),
        1 => Just(Op::Restore),
    ]
}

const CAPACITY: u32 = 4;

type Checked = std::result::Result<(), TestCaseError>;

/// Follows every item from its put to its end and checks what the queue
/// promises: every stored item is in the queue, in its dead-letter queue,
/// or was acked or taken by a no-ack get, exactly one of these; nothing
/// unknown is delivered; the capacity holds; a delivery is the first ready
/// item by (priority, id); the indexes agree; a restore keeps every item.
struct QueueChecker {
    sim: Sim,
    slots: [SessionId; 3],
    /// Stored, not yet acked, taken or dead-lettered.
    live: BTreeSet<u64>,
    /// Handed out in flight, with the session holding it.
    flying: BTreeMap<u64, SessionId>,
    waiting: BTreeSet<WaiterId>,
    gone: BTreeSet<u64>,
}

impl QueueChecker {
    fn new() -> QueueChecker {
        let mut sim = Sim::with_limits(Limits {
            waiters_per_primitive_max: 3,
            ..Limits::default()
        });
        let slots = [sim.session(1_000), sim.session(2_000), sim.session(30_000)];
        QueueChecker {
            sim,
            slots,
            live: BTreeSet::new(),
            flying: BTreeMap::new(),
            waiting: BTreeSet::new(),
            gone: BTreeSet::new(),
        }
    }

    fn first_ready(&self) -> Option<u64> {
        self.sim.state.queues.get("q").and_then(|q| q.first_ready())
    }

    fn step(&mut self, op: &Op) -> Checked {
        let expected_first = self.first_ready();
        let events = match *op {
            Op::Put { slot, priority } => {
                let session = self.slots[slot];
                let (waiter, reply, events) =
                    self.sim
                        .put_with(session, "q", "v", priority, Some(CAPACITY), 0);
                self.observe(waiter, reply, None)?;
                events
            }
            Op::Get { slot, no_ack } => {
                let (waiter, reply, events) =
                    self.sim.get_with(self.slots[slot], None, 500, no_ack);
                self.observe(waiter, reply, expected_first)?;
                events
            }
            Op::Ack { pick } | Op::Nack { pick } => {
                let Some((&id, &session)) = self.flying.iter().nth(pick % self.flying.len().max(1))
                else {
                    return Ok(());
                };
                let ack = matches!(op, Op::Ack { .. });
                let (reply, events) = if ack {
                    self.sim.ack(session, id)
                } else {
                    self.sim.nack(session, id)
                };
                prop_assert!(reply.is_ok(), "{:?} of a flying item: {:?}", op, reply);
                self.flying.remove(&id);
                if ack {
                    self.end(id)?;
                }
                events
            }
            Op::Cancel { pick } => {
                let Some(&waiter) = self.waiting.iter().nth(pick % self.waiting.len().max(1))
                else {
                    return Ok(());
                };
                self.waiting.remove(&waiter);
                self.sim.run(Command::Cancel { waiter }).1
            }
            Op::Advance { ms } => {
                let now = self.sim.now_ms + ms;
                let events = self.sim.tick_at(now);
                // Expired sessions come back as new ones, like clients do.
                for slot in 0..self.slots.len() {
                    if self.sim.state.sessions.get(self.slots[slot]).is_none() {
                        self.slots[slot] = self.sim.session(1_000 + 1_000 * slot as u64);
                    }
                }
                events
            }
            Op::Close { slot } => {
                let events = self.sim.close(self.slots[slot]).1;
                self.slots[slot] = self.sim.session(1_000 + 1_000 * slot as u64);
                events
            }
            Op::Restore => {
                let restored = self.sim.restored_queue_state();
                restored.check_indexes().map_err(TestCaseError::fail)?;
                prop_assert_eq!(
                    item_ids(&restored),
                    item_ids(&self.sim.state),
                    "restored items"
                );
                Vec::new()
            }
        };
        for (waiter, event) in events {
            prop_assert!(
                self.waiting.remove(&waiter),
                "event for {:?}, which does not wait",
                waiter
            );
            self.observe_final(event)?;
        }
        self.check()
    }

    /// A put's or get's own reply. `first` is the item a get must receive
    /// if it is served at once.
    fn observe(&mut self, waiter: WaiterId, reply: Result<Reply>, first: Option<u64>) -> Checked {
        if let (Some(first), Ok(Reply::Delivered(d))) = (first, &reply) {
            prop_assert_eq!(d.id, first, "not the first ready item");
        }
        match reply {
            Ok(Reply::Queued { .. }) => {
                self.waiting.insert(waiter);
                Ok(())
            }
            other => self.observe_final(other),
        }
    }

    fn observe_final(&mut self, event: Result<Reply>) -> Checked {
        match event {
            Ok(Reply::Stored { item_id }) => {
                prop_assert!(!self.gone.contains(&item_id) && self.live.insert(item_id));
            }
            Ok(Reply::Delivered(d)) => {
                prop_assert!(
                    self.live.contains(&d.id),
                    "unknown item {:?} delivered",
                    d.id
                );
                match d.fencing_token {
                    Some(_) => {
                        self.flying.insert(d.id, self.holder_of(d.id));
                    }
                    None => self.end(d.id)?,
                }
            }
            Ok(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            Err(rejection) => prop_assert!(
                matches!(
                    rejection.code,
                    Code::FailedPrecondition | Code::DeadlineExceeded | Code::ResourceExhausted
                ),
                "{:?}",
                rejection
            ),
        }
        Ok(())
    }

    fn holder_of(&self, id: u64) -> SessionId {
        let queue = self.sim.state.queues.get("q");
        queue.and_then(|q| q.holder_of(id)).unwrap_or(0)
    }

    fn end(&mut self, id: u64) -> Checked {
        prop_assert!(self.live.remove(&id), "item {} ended twice", id);
        self.gone.insert(id);
        Ok(())
    }

    fn check(&mut self) -> Checked {
        let state = &self.sim.state;
        state.check_indexes().map_err(TestCaseError::fail)?;
        // Items that came back or were dead-lettered are not in flight.
        let in_flight: BTreeMap<u64, SessionId> = state
            .queues
            .get("q")
            .map(|q| q.in_flight_items().collect())
            .unwrap_or_default();
        self.flying.retain(|id, _| in_flight.contains_key(id));
        prop_assert_eq!(&self.flying, &in_flight, "in flight");
        // Dead-lettered items leave `q` for `q.dlq`; every live item is in
        // one of the two, and nothing else is.
        let mut held: BTreeSet<u64> = item_ids(state);
        if let Some(dead) = state.queues.get("q.dlq") {
            held.extend(dead.ids());
        }
        prop_assert_eq!(&held, &self.live, "items held vs. stored and not ended");
        if let Some(q) = state.queues.get("q") {
            prop_assert!(q.ids().count() <= CAPACITY as usize, "over capacity");
        }
        Ok(())
    }
}

fn item_ids(state: &State) -> BTreeSet<u64> {
    state
        .queues
        .get("q")
        .map(|q| q.ids().collect())
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0004),
        ..ProptestConfig::default()
    })]

    #[test]
    fn nothing_stored_is_lost_and_nothing_unknown_is_delivered(
        ops in proptest::collection::vec(arb_op(), 1..120),
    ) {
        let mut checker = QueueChecker::new();
        for op in &ops {
            checker.step(op)?;
        }
    }
}
