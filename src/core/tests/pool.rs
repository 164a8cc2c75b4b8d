//! Unit tests of the resource pool rules, and a property test of its
//! invariants, with simulated time.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};
use prost::Message;

use super::{code, listing, persist, Events, Sim, Store};
use crate::core::pool::{Checkout, Freshness, PoolInfo};
use crate::core::Query;
use crate::core::{
    Alarm, Code, Command, FencingToken, Kind, Limits, Reply, RestoreError, Result, SessionId,
    State, WaiterId,
};
use crate::proto::store as pb;

const TTL: u64 = 10_000;

/// A pool's settings: size, max_age_ms, max_idle_ms.
type Settings = (u32, u64, u64);

impl Sim {
    fn pool_checkout_with(
        &mut self,
        session_id: SessionId,
        (size, max_age_ms, max_idle_ms): Settings,
        timeout_ms: Option<u64>,
        acquire_id: u64,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::PoolCheckout {
            session_id,
            name: "p".to_owned(),
            waiter,
            timeout_ms,
            acquire_id,
            size,
            max_age_ms,
            max_idle_ms,
        });
        (waiter, reply, events)
    }

    /// A checkout that must be served at once.
    fn checkout(&mut self, session_id: SessionId, settings: Settings) -> Checkout {
        let (_, reply, events) = self.pool_checkout_with(session_id, settings, None, 0);
        assert_eq!(events, vec![]);
        checked_out(&reply)
    }

    /// A checkout that must queue: its waiter.
    fn queue_checkout(&mut self, session_id: SessionId, settings: Settings) -> WaiterId {
        let (waiter, reply, _) = self.pool_checkout_with(session_id, settings, None, 0);
        assert!(matches!(reply, Ok(Reply::Queued { .. })), "{reply:?}");
        waiter
    }

    fn checkin(
        &mut self,
        session_id: SessionId,
        fencing_token: FencingToken,
        healthy: bool,
        metadata: Option<&str>,
    ) -> (Result<Reply>, Events) {
        self.run(Command::PoolCheckin {
            session_id,
            name: "p".to_owned(),
            fencing_token,
            healthy,
            metadata: metadata.map(|m| m.as_bytes().to_vec()),
        })
    }

    fn pool_info(&mut self) -> PoolInfo {
        pool_info(&self.state)
    }

    fn restored_pool_state(&self) -> State {
        let mut store = self.store.clone();
        persist(&mut store, &[self.state.checkpoint()]);
        State::restore(self.state.limits().clone(), store).expect("restore")
    }
}

fn pool_info(state: &State) -> PoolInfo {
    match state.pool_describe(state.now_ms(), "p") {
        Ok(Reply::PoolDescription(info)) => info,
        other => panic!("describe: {other:?}"),
    }
}

fn checked_out(reply: &Result<Reply>) -> Checkout {
    match reply {
        Ok(Reply::CheckedOut(checkout)) => checkout.clone(),
        other => panic!("not a checkout: {other:?}"),
    }
}

/// The one event of `events`, which must be a checkout for `waiter`.
fn handed(events: &Events, waiter: WaiterId) -> Checkout {
    match events.as_slice() {
        [(w, reply)] if *w == waiter => checked_out(reply),
        other => panic!("expected one checkout for {waiter:?}, got {other:?}"),
    }
}

fn evicted(reply: &Result<Reply>) -> bool {
    match reply {
        Ok(Reply::CheckedIn { evicted }) => *evicted,
        other => panic!("not a checkin: {other:?}"),
    }
}

/// What describe shows, without the lease times (a restore renews leases).
fn comparable(mut info: PoolInfo) -> PoolInfo {
    for resource in &mut info.resources {
        if let Some(holder) = &mut resource.holder {
            holder.lease_left_ms = 0;
        }
    }
    info.waiters.clear();
    info
}

const PLAIN: Settings = (2, 0, 0);

#[test]
fn checkouts_take_free_slots_then_queue_in_fifo_order() {
    let mut sim = Sim::new();
    let [a, b, c, d] = [(); 4].map(|_| sim.session(TTL));
    let first = sim.checkout(a, PLAIN);
    let second = sim.checkout(b, (0, 0, 0));
    for checkout in [&first, &second] {
        assert_eq!(checkout.freshness, Freshness::New);
        assert_eq!((checkout.metadata.len(), checkout.age_ms), (0, 0));
    }
    assert_ne!(first.resource_id, second.resource_id);
    assert!(second.fencing_token > first.fencing_token);
    let (wc, reply, _) = sim.pool_checkout_with(c, PLAIN, None, 0);
    assert_eq!(reply, Ok(Reply::Queued { position: 1 }));
    let (wd, reply, _) = sim.pool_checkout_with(d, PLAIN, None, 0);
    assert_eq!(reply, Ok(Reply::Queued { position: 2 }));
    let listing = listing(&sim.state, Some(Kind::Pool), "");
    assert_eq!(listing[0].state, "2 of 2 slots out, 0 idle, 2 waiting");

    sim.at(50);
    let (reply, events) = sim.checkin(b, second.fencing_token, true, None);
    assert!(!evicted(&reply));
    let to_c = handed(&events, wc);
    assert_eq!(
        (to_c.resource_id, to_c.freshness, to_c.age_ms),
        (second.resource_id, Freshness::Reused, 50)
    );
    let (_, events) = sim.checkin(a, first.fencing_token, true, None);
    assert_eq!(handed(&events, wd).resource_id, first.resource_id);
    let info = sim.pool_info();
    assert!(info.waiters.is_empty());
    let holders: Vec<_> = (info.resources.iter())
        .map(|r| r.holder.as_ref().map(|h| h.session_id))
        .collect();
    assert_eq!(holders, vec![Some(d), Some(c)]);
    sim.state.check_indexes().unwrap();
}

#[test]
fn a_healthy_checkin_is_reused_with_its_metadata_last_in_first_out() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let one = sim.checkout(s, PLAIN);
    let two = sim.checkout(s, PLAIN);
    sim.at(10);
    sim.checkin(s, one.fencing_token, true, Some("db=1"))
        .0
        .unwrap();
    sim.at(20);
    sim.checkin(s, two.fencing_token, true, Some("db=2"))
        .0
        .unwrap();
    assert_eq!(
        listing(&sim.state, Some(Kind::Pool), "")[0].state,
        "0 of 2 slots out, 2 idle, 0 waiting"
    );
    sim.at(30);
    // The one checked in last goes out first; the other stays idle.
    let again = sim.checkout(s, PLAIN);
    assert_eq!(again.resource_id, two.resource_id);
    assert_eq!(again.freshness, Freshness::Reused);
    assert_eq!(
        (again.metadata.as_slice(), again.age_ms),
        (&b"db=2"[..], 30)
    );
    let info = sim.pool_info();
    let idle: Vec<_> = (info.resources.iter())
        .filter(|r| r.holder.is_none())
        .map(|r| (r.resource_id, r.idle_ms))
        .collect();
    assert_eq!(idle, vec![(one.resource_id, 20)]);
    // A checkin without metadata keeps what the resource had.
    sim.checkin(s, again.fencing_token, true, None).0.unwrap();
    let third = sim.checkout(s, PLAIN);
    assert_eq!(third.metadata, b"db=2");
}

#[test]
fn an_unhealthy_checkin_evicts_and_the_next_checkout_gets_a_new_resource() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let kept = sim.checkout(b, PLAIN);
    let broken = sim.checkout(a, PLAIN);
    let (reply, events) = sim.checkin(a, broken.fencing_token, false, Some("x"));
    assert!(evicted(&reply));
    assert_eq!(events, vec![]);
    let info = sim.pool_info();
    assert_eq!(info.evicted, 1);
    assert_eq!(info.resources.len(), 1);
    let next = sim.checkout(a, PLAIN);
    assert_eq!(next.freshness, Freshness::New);
    assert!(next.resource_id > broken.resource_id);
    assert!(next.metadata.is_empty());
    // The last resource evicted: the pool is gone, with its records.
    sim.checkin(a, next.fencing_token, false, None).0.unwrap();
    sim.checkin(b, kept.fencing_token, false, None).0.unwrap();
    assert_eq!(sim.pool_info().size, 0);
    assert!(sim
        .store
        .keys()
        .all(|k| !k.starts_with(b"pool/") && !k.starts_with(b"pres/")));
    assert_eq!(listing(&sim.state, None, ""), vec![]);
}

#[test]
fn a_stale_idle_resource_is_replaced_at_checkout() {
    for settings in [(2, 1_000, 0), (2, 0, 900)] {
        let mut sim = Sim::new();
        let s = sim.session(TTL);
        let first = sim.checkout(s, settings);
        sim.at(100);
        sim.checkin(s, first.fencing_token, true, Some("old"))
            .0
            .unwrap();
        // Not ticked: the checkout finds it stale by itself.
        sim.at(1_000);
        let next = sim.checkout(s, (0, 0, 0));
        assert_eq!(next.freshness, Freshness::ReplacedStale, "{settings:?}");
        assert!(next.resource_id > first.resource_id);
        assert_eq!((next.metadata.len(), next.age_ms), (0, 0));
        let info = sim.pool_info();
        assert_eq!((info.resources.len(), info.evicted), (1, 1));
        sim.state.check_indexes().unwrap();
    }
}

#[test]
fn the_timer_evicts_idle_stale_resources_nobody_checks_out() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let settings = (3, 1_000, 500);
    let busy = sim.checkout(b, settings);
    let by_idle = sim.checkout(a, settings);
    sim.at(100);
    let by_age = sim.checkout(a, settings);
    assert_eq!(sim.state.next_deadline_ms(), Some(TTL), "nothing idle yet");
    sim.at(300);
    sim.checkin(a, by_idle.fencing_token, true, None).0.unwrap();
    assert_eq!(
        sim.state.next_deadline_ms(),
        Some(800),
        "idle 500 ms after 300"
    );
    sim.at(700);
    sim.checkin(a, by_age.fencing_token, true, None).0.unwrap();
    assert_eq!(sim.state.next_deadline_ms(), Some(800));

    assert_eq!(sim.tick_at(799), vec![]);
    assert_eq!(sim.pool_info().resources.len(), 3);
    assert_eq!(sim.tick_at(800), vec![]);
    let info = sim.pool_info();
    let ids: Vec<u64> = info.resources.iter().map(|r| r.resource_id).collect();
    assert_eq!(ids, vec![busy.resource_id, by_age.resource_id]);
    assert_eq!(info.evicted, 1);
    // by_age was created at 100: stale at 1100 by age, before 700 + 500.
    assert_eq!(sim.state.next_deadline_ms(), Some(1_100));
    sim.tick_at(1_100);
    let info = sim.pool_info();
    assert_eq!((info.resources.len(), info.evicted), (1, 2));
    // The busy one is past max_age but out: it stays until its checkin,
    // which evicts it; the empty pool is gone.
    assert_eq!(sim.state.next_deadline_ms(), Some(TTL));
    let (reply, _) = sim.checkin(b, busy.fencing_token, true, None);
    assert!(evicted(&reply));
    assert_eq!(sim.pool_info().size, 0);
    assert_eq!(sim.state.next_deadline_ms(), Some(TTL));
    assert!(sim.store.keys().all(|k| !k.starts_with(b"pres/")));
}

#[test]
fn a_session_end_recovers_the_resource_for_the_next_waiter() {
    let mut sim = Sim::new();
    let a = sim.session(1_000);
    let b = sim.session(TTL);
    let first = sim.checkout(a, (1, 0, 0));
    sim.checkin(a, first.fencing_token, true, Some("meta"))
        .0
        .unwrap();
    let again = sim.checkout(a, (1, 0, 0));
    assert_eq!(again.freshness, Freshness::Reused);
    let wb = sim.queue_checkout(b, (1, 0, 0));
    assert_eq!(sim.tick_at(999), vec![]);
    let events = sim.tick_at(1_000);
    let got = handed(&events, wb);
    assert_eq!(got.freshness, Freshness::Recovered);
    assert!(
        got.resource_id > first.resource_id,
        "recreated under a new id"
    );
    assert!(got.metadata.is_empty());
    let info = sim.pool_info();
    assert_eq!(info.resources.len(), 1);
    assert_eq!(info.resources[0].holder.as_ref().unwrap().session_id, b);
    assert_eq!(info.evicted, 0);
    // Closing b with nobody waiting leaves it idle; the next is RECOVERED.
    sim.close(b).0.unwrap();
    let c = sim.session(TTL);
    assert_eq!(sim.checkout(c, (1, 0, 0)).freshness, Freshness::Recovered);
    sim.state.check_indexes().unwrap();
}

#[test]
fn an_undelivered_checkout_comes_back_recovered() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let first = sim.checkout(s, (1, 0, 0));
    let token = first.fencing_token;
    sim.apply(Command::ReleaseUndelivered {
        fencing_token: token,
    })
    .unwrap();
    assert_eq!(sim.state.hold_count(), 0);
    assert_eq!(
        code(&sim.checkin(s, token, true, None).0),
        Some(Code::FailedPrecondition)
    );
    let next = sim.checkout(s, (1, 0, 0));
    assert_eq!(next.freshness, Freshness::Recovered);
    assert!(next.fencing_token > token);
}

#[test]
fn settings_are_fixed_by_the_first_checkout() {
    let mut sim = Sim::with_limits(Limits {
        waiters_per_primitive_max: 8,
        item_bytes_max: 4,
        ..Limits::default()
    });
    let s = sim.session(TTL);
    let checkout =
        |sim: &mut Sim, settings: Settings| sim.pool_checkout_with(s, settings, None, 0).1;
    assert_eq!(code(&checkout(&mut sim, (0, 0, 0))), Some(Code::NotFound));
    assert_eq!(
        code(&checkout(&mut sim, (9, 0, 0))),
        Some(Code::InvalidArgument)
    );
    let held = checked_out(&checkout(&mut sim, (2, 1_000, 0)));
    for wrong in [(3, 0, 0), (2, 999, 0), (0, 0, 5)] {
        let reply = checkout(&mut sim, wrong);
        assert_eq!(code(&reply), Some(Code::FailedPrecondition), "{wrong:?}");
        let message = reply.unwrap_err().message;
        assert!(
            message.contains("size 2, max_age_ms 1000, max_idle_ms 0"),
            "{message}"
        );
    }
    checked_out(&checkout(&mut sim, (2, 1_000, 0)));
    // Names, sessions and metadata are checked.
    let bad_name = sim.query(Query::PoolDescribe {
        name: String::new(),
    });
    assert_eq!(code(&bad_name), Some(Code::InvalidArgument));
    let unknown = sim.pool_checkout_with(99, PLAIN, None, 0).1;
    assert_eq!(code(&unknown), Some(Code::NotFound));
    let too_big = sim.checkin(s, held.fencing_token, true, Some("12345")).0;
    assert_eq!(code(&too_big), Some(Code::InvalidArgument));
    assert_eq!(
        code(&sim.checkin(99, held.fencing_token, true, None).0),
        Some(Code::NotFound)
    );
    let other = sim.session(TTL);
    let (reply, _) = sim.checkin(other, held.fencing_token, true, None);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    assert!(reply.unwrap_err().message.contains("not by session"));
    let (reply, _) = sim.checkin(s, 12_345, true, None);
    assert!(reply
        .unwrap_err()
        .message
        .contains("checked out by this session, not 12345"));
    // The resource is still out; its holder can give it back.
    assert!(!evicted(
        &sim.checkin(s, held.fencing_token, true, Some("1234")).0
    ));
}

#[test]
fn try_once_timeouts_and_cancels_leave_no_waiter() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let held = sim.checkout(a, (1, 0, 0));
    let (_, reply, _) = sim.pool_checkout_with(b, (1, 0, 0), Some(0), 0);
    assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
    assert!(reply
        .unwrap_err()
        .message
        .contains("all 1 resources checked out"));
    assert_eq!(sim.state.waiter_count(), 0);
    let (timed, _, _) = sim.pool_checkout_with(b, (1, 0, 0), Some(100), 0);
    let cancelled = sim.queue_checkout(b, (1, 0, 0));
    let events = sim.tick_at(100);
    assert_eq!(
        super::codes(&events),
        vec![(timed, Err(Code::DeadlineExceeded))]
    );
    sim.apply(Command::Cancel { waiter: cancelled }).unwrap();
    assert_eq!(sim.state.waiter_count(), 0);
    let (_, events) = sim.checkin(a, held.fencing_token, true, None);
    assert_eq!(events, vec![]);
    assert_eq!(sim.pool_info().resources.len(), 1);
}

#[test]
fn a_retried_checkout_gets_the_same_resource() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let first = checked_out(&sim.pool_checkout_with(s, PLAIN, None, 7).1);
    sim.at(40);
    let retry = checked_out(&sim.pool_checkout_with(s, (0, 0, 0), None, 7).1);
    assert_eq!(
        retry,
        Checkout {
            age_ms: 40,
            ..first.clone()
        }
    );
    assert_eq!(sim.pool_info().resources.len(), 1);
    // Another session's acquire id is its own.
    let other = sim.session(TTL);
    let theirs = checked_out(&sim.pool_checkout_with(other, PLAIN, None, 7).1);
    assert_ne!(theirs.fencing_token, first.fencing_token);
    // Once checked in, the same id checks out anew.
    sim.checkin(s, first.fencing_token, true, None).0.unwrap();
    let anew = checked_out(&sim.pool_checkout_with(s, PLAIN, None, 7).1);
    assert_eq!(anew.freshness, Freshness::Reused);
    assert!(anew.fencing_token > theirs.fencing_token);
}

/// A pool with an idle resource (with metadata), one out, one recovered
/// and an eviction behind it.
fn pool_history() -> (Sim, SessionId, Checkout) {
    let mut sim = Sim::new();
    let (a, b, c) = (sim.session(TTL), sim.session(TTL), sim.session(1_000));
    let settings = (4, 5_000, 2_000);
    let gone = sim.checkout(a, settings);
    let idle = sim.checkout(a, settings);
    let held = sim.checkout(b, settings);
    sim.checkout(c, settings);
    sim.at(100);
    sim.checkin(a, gone.fencing_token, false, None).0.unwrap();
    sim.checkin(a, idle.fencing_token, true, Some("kept"))
        .0
        .unwrap();
    sim.tick_at(1_000);
    let retried = checked_out(&sim.pool_checkout_with(b, (0, 0, 0), None, 3).1);
    assert_eq!(retried.freshness, Freshness::Reused, "the last checked in");
    sim.at(1_200);
    (sim, b, held)
}

#[test]
fn pools_survive_a_restore() {
    let (mut sim, b, held) = pool_history();
    let live = sim.pool_info();
    assert_eq!((live.resources.len(), live.evicted), (3, 1));
    let mut restored = sim.restored_pool_state();
    restored.check_indexes().unwrap();
    assert_eq!(restored.holds, sim.state.holds);
    assert_eq!(comparable(pool_info(&restored)), comparable(live));
    assert_eq!(restored.alarms, sim.state.alarms);
    assert!(restored
        .alarms
        .iter()
        .any(|(_, a)| *a == Alarm::Primitive(Kind::Pool, "p".into())));
    // The retry identity and the holds work as before.
    let mut out = crate::core::Outcome::default();
    let retry = Command::PoolCheckout {
        session_id: b,
        name: "p".into(),
        waiter: WaiterId(900),
        timeout_ms: None,
        acquire_id: 3,
        size: 0,
        max_age_ms: 0,
        max_idle_ms: 0,
    };
    let again = checked_out(&restored.apply(1_200, retry, &mut out));
    assert_eq!(again.freshness, Freshness::Reused);
    let checkin = Command::PoolCheckin {
        session_id: b,
        name: "p".into(),
        fencing_token: held.fencing_token,
        healthy: true,
        metadata: None,
    };
    assert_eq!(
        restored.apply(1_200, checkin, &mut out),
        Ok(Reply::CheckedIn { evicted: false })
    );
    // The recovered resource (c's, idle since 1000) is evicted when it is
    // idle 2 s, like in the live state.
    restored.tick(2_999, &mut out);
    assert_eq!(pool_info(&restored).evicted, 1);
    restored.tick(3_000, &mut out);
    assert_eq!(pool_info(&restored).evicted, 2);
}

#[test]
fn corrupt_pool_records_are_a_restore_error() {
    let (sim, _, held) = pool_history();
    let mut base = sim.store.clone();
    persist(&mut base, &[sim.state.checkpoint()]);
    assert!(State::restore(Limits::default(), base.clone()).is_ok());
    let resource_key = |id: u64| [b"pres/p\0".as_slice(), &id.to_be_bytes()].concat();
    let resource = |id: u64, token: u64, session_id: u64| pb::PoolResourceRecord {
        id,
        fencing_token: token,
        session_id,
        freshness: 2,
        ..Default::default()
    };
    let put = |key: Vec<u8>, value: Vec<u8>| {
        move |s: &mut Store| {
            s.insert(key.clone(), value.clone());
        }
    };
    type Edit = Box<dyn Fn(&mut Store)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "garbage pool record",
            Box::new(put(b"pool/p".to_vec(), vec![0xff; 3])),
        ),
        (
            "pool of size 0",
            Box::new(put(
                b"pool/p".to_vec(),
                pb::PoolRecord::default().encode_to_vec(),
            )),
        ),
        (
            "resource without its pool",
            Box::new(put(
                [b"pres/q\0".as_slice(), &1u64.to_be_bytes()].concat(),
                resource(1, 0, 0).encode_to_vec(),
            )),
        ),
        (
            "resource key without separator",
            Box::new(put(
                b"pres/p12345678".to_vec(),
                resource(1, 0, 0).encode_to_vec(),
            )),
        ),
        (
            "resource id not its key's",
            Box::new(put(resource_key(2), resource(3, 0, 0).encode_to_vec())),
        ),
        (
            "resource id beyond the counter",
            Box::new(put(resource_key(99), resource(99, 0, 0).encode_to_vec())),
        ),
        (
            "token beyond the counter",
            Box::new(put(resource_key(2), resource(2, 999, 2).encode_to_vec())),
        ),
        (
            "token held twice",
            Box::new(put(
                resource_key(2),
                resource(2, held.fencing_token, 2).encode_to_vec(),
            )),
        ),
        (
            "holder not stored",
            Box::new(put(resource_key(2), resource(2, 1, 77).encode_to_vec())),
        ),
        (
            "unknown freshness",
            Box::new(put(
                resource_key(2),
                pb::PoolResourceRecord {
                    freshness: 9,
                    ..resource(2, 1, 2)
                }
                .encode_to_vec(),
            )),
        ),
        (
            "more resources than slots",
            Box::new(put(
                b"pool/p".to_vec(),
                pb::PoolRecord {
                    size: 1,
                    max_age_ms: 5_000,
                    max_idle_ms: 2_000,
                    evicted: 1,
                }
                .encode_to_vec(),
            )),
        ),
    ];
    for (what, edit) in cases {
        let mut store = base.clone();
        edit(&mut store);
        match State::restore(Limits::default(), store) {
            Err(RestoreError(message)) => {
                assert!(!message.is_empty() && !message.contains('\n'), "{what}")
            }
            Ok(_) => panic!("{what}: restored without error"),
        }
    }
}

// --- property: bounded, fair, evicting, durable --------------------------------

#[derive(Clone, Debug)]
enum Op {
    Checkout {
        slot: usize,
        timeout_ms: Option<u64>,
        acquire_id: u64,
    },
    Checkin {
        pick: usize,
        healthy: bool,
        metadata: bool,
    },
    Undelivered {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    /// Moves the clock without a tick (an engine running late): checkouts
    /// may then find stale resources that the timer has not evicted yet.
    Skip {
        ms: u64,
    },
    Close {
        slot: usize,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let timeout = prop_oneof![Just(None), Just(Some(0)), (1..400u64).prop_map(Some)];
    prop_oneof![
        4 => (0..SLOTS, timeout, prop_oneof![3 => Just(0u64), 1 => 1..3u64]).prop_map(
            |(slot, timeout_ms, acquire_id)| Op::Checkout {
                slot,
                timeout_ms,
                acquire_id
            }
        ),
        4 => (any::<usize>(), prop::bool::weighted(0.8), any::<bool>()).prop_map(
            |(pick, healthy, metadata)| Op::Checkin {
                pick,
                healthy,
                metadata
            }
        ),
        1 => any::<usize>().prop_map(|pick| Op::Undelivered { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        2 => (1..700u64).prop_map(|ms| Op::Advance { ms }),
        1 => (1..700u64).prop_map(|ms| Op::Skip { ms }),
        1 => (0..SLOTS).prop_map(|slot| Op::Close { slot }),
    ]
}

const SLOTS: usize = 3;
const SIZE: u32 = 2;
const MAX_AGE_MS: u64 = 1_500;
const MAX_IDLE_MS: u64 = 400;
const SETTINGS: Settings = (SIZE, MAX_AGE_MS, MAX_IDLE_MS);

type Checked = std::result::Result<(), TestCaseError>;

/// Follows every checkout and checks what the pool promises: at most
/// `size` resources; each out resource under one hold, indexed; a REUSED
/// resource is one checked in healthy, with its metadata; every other
/// checkout is a resource id never seen, without metadata; FIFO without
/// barging; no waiter while it could be served; idle stale resources gone
/// after a tick, the alarm at the next stale time; a restore keeps it all.
struct PoolChecker {
    sim: Sim,
    slots: [SessionId; SLOTS],
    /// Checked in healthy and idle: the metadata it must come back with.
    reusable: BTreeMap<u64, Vec<u8>>,
    /// Out: resource id and its metadata, by token.
    out: BTreeMap<FencingToken, (u64, Vec<u8>)>,
    seen_ids: BTreeSet<u64>,
    /// Waiting checkouts, in the order they queued.
    waiting: Vec<WaiterId>,
    done: BTreeSet<WaiterId>,
    last_token: FencingToken,
}

impl PoolChecker {
    fn new() -> PoolChecker {
        let mut sim = Sim::with_limits(Limits {
            waiters_per_primitive_max: 4,
            ..Limits::default()
        });
        let slots = [sim.session(1_000), sim.session(2_000), sim.session(30_000)];
        PoolChecker {
            sim,
            slots,
            reusable: BTreeMap::new(),
            out: BTreeMap::new(),
            seen_ids: BTreeSet::new(),
            waiting: Vec::new(),
            done: BTreeSet::new(),
            last_token: 0,
        }
    }

    fn pick_out(&self, pick: usize) -> Option<FencingToken> {
        let tokens: Vec<_> = self.out.keys().copied().collect();
        tokens.get(pick % tokens.len().max(1)).copied()
    }

    fn step(&mut self, op: &Op) -> Checked {
        let mut ticked = false;
        let events = match *op {
            Op::Checkout {
                slot,
                timeout_ms,
                acquire_id,
            } => {
                let session = self.slots[slot];
                let live = self.sim.state.sessions.get(session).is_some();
                let retried = (self.sim.state.holds.iter())
                    .find(|(_, h)| {
                        h.session_id == session && acquire_id != 0 && h.acquire_id == acquire_id
                    })
                    .map(|(t, _)| *t);
                let (waiter, reply, events) = self
                    .sim
                    .pool_checkout_with(session, SETTINGS, timeout_ms, acquire_id);
                match (&reply, retried) {
                    (Ok(Reply::CheckedOut(c)), Some(token)) => {
                        prop_assert_eq!(c.fencing_token, token, "a retry gets its checkout");
                        self.done.insert(waiter);
                    }
                    (Ok(Reply::CheckedOut(c)), None) => {
                        prop_assert!(self.waiting.is_empty(), "{:?} barged", waiter);
                        self.observe_checkout(c)?;
                        self.done.insert(waiter);
                    }
                    (Ok(Reply::Queued { position }), _) => {
                        self.waiting.push(waiter);
                        prop_assert_eq!(*position as usize, self.waiting.len());
                    }
                    (Err(e), _) => {
                        let full = timeout_ms == Some(0) && e.code == Code::DeadlineExceeded;
                        let limit = e.code == Code::ResourceExhausted;
                        let gone = !live && e.code == Code::NotFound;
                        prop_assert!(full || limit || gone, "{:?}", e);
                        self.done.insert(waiter);
                    }
                    (other, _) => return Err(TestCaseError::fail(format!("{other:?}"))),
                }
                events
            }
            Op::Checkin {
                pick,
                healthy,
                metadata,
            } => {
                let Some(token) = self.pick_out(pick) else {
                    return self.check(false);
                };
                let session = self.sim.state.holds[&token].session_id;
                let given = metadata.then(|| format!("m{token}"));
                let (reply, events) = self.sim.checkin(session, token, healthy, given.as_deref());
                let evicted = evicted(&reply);
                prop_assert!(healthy || evicted, "an unhealthy checkin evicts");
                let (id, kept) = self.out.remove(&token).expect("picked");
                if !evicted {
                    let metadata = given.map_or(kept, String::into_bytes);
                    self.reusable.insert(id, metadata);
                }
                events
            }
            Op::Undelivered { pick } => {
                let Some(token) = self.pick_out(pick) else {
                    return self.check(false);
                };
                self.sim
                    .run(Command::ReleaseUndelivered {
                        fencing_token: token,
                    })
                    .1
            }
            Op::Cancel { pick } => {
                if self.waiting.is_empty() {
                    return self.check(false);
                }
                let waiter = self.waiting.remove(pick % self.waiting.len());
                self.done.insert(waiter);
                self.sim.run(Command::Cancel { waiter }).1
            }
            Op::Advance { ms } => {
                ticked = true;
                let now = self.sim.now_ms + ms;
                self.sim.tick_at(now)
            }
            Op::Skip { ms } => {
                self.sim.at(self.sim.now_ms + ms);
                Vec::new()
            }
            Op::Close { slot } => {
                let events = self.sim.close(self.slots[slot]).1;
                self.slots[slot] = self.sim.session(1_000 + 1_000 * slot as u64);
                events
            }
        };
        for (waiter, event) in events {
            prop_assert!(!self.done.contains(&waiter), "{:?} heard twice", waiter);
            let place = self.waiting.iter().position(|w| *w == waiter);
            let Some(place) = place else {
                return Err(TestCaseError::fail(format!("event for unknown {waiter:?}")));
            };
            self.waiting.remove(place);
            self.done.insert(waiter);
            match event {
                Ok(Reply::CheckedOut(c)) => {
                    prop_assert_eq!(place, 0, "served out of FIFO order");
                    self.observe_checkout(&c)?;
                }
                Err(e) => prop_assert!(
                    matches!(e.code, Code::DeadlineExceeded | Code::FailedPrecondition),
                    "{:?}",
                    e
                ),
                Ok(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        }
        self.check(ticked)
    }

    fn observe_checkout(&mut self, c: &Checkout) -> Checked {
        prop_assert!(c.fencing_token > self.last_token, "tokens increase");
        self.last_token = c.fencing_token;
        if c.freshness == Freshness::Reused {
            let metadata = self.reusable.remove(&c.resource_id);
            prop_assert_eq!(metadata.as_ref(), Some(&c.metadata), "reused {:?}", c);
        } else {
            prop_assert!(self.seen_ids.insert(c.resource_id), "id reused: {:?}", c);
            prop_assert!(c.metadata.is_empty() && c.age_ms == 0, "{:?}", c);
        }
        self.seen_ids.insert(c.resource_id);
        self.out
            .insert(c.fencing_token, (c.resource_id, c.metadata.clone()));
        Ok(())
    }

    fn check(&mut self, ticked: bool) -> Checked {
        let state = &self.sim.state;
        state.check_indexes().map_err(TestCaseError::fail)?;
        let info = pool_info(state);
        prop_assert!(
            info.resources.len() <= SIZE as usize,
            "over size: {:?}",
            info
        );
        // Holds that ended without a checkin (session end, undelivered) are
        // no longer out, and their resources are not reusable.
        let holds: BTreeMap<FencingToken, u64> = (info.resources.iter())
            .filter_map(|r| r.holder.as_ref().map(|h| (h.fencing_token, r.resource_id)))
            .collect();
        self.out.retain(|token, _| holds.contains_key(token));
        let out: BTreeMap<FencingToken, u64> =
            self.out.iter().map(|(t, (id, _))| (*t, *id)).collect();
        prop_assert_eq!(&out, &holds, "out resources");
        let idle: Vec<_> = info
            .resources
            .iter()
            .filter(|r| r.holder.is_none())
            .collect();
        let ids: BTreeSet<u64> = idle.iter().map(|r| r.resource_id).collect();
        self.reusable.retain(|id, _| ids.contains(id));
        if !info.waiters.is_empty() {
            let full = idle.is_empty() && info.resources.len() == SIZE as usize;
            prop_assert!(full, "a waiter could be served: {:?}", info);
        }
        prop_assert_eq!(info.waiters.len(), self.waiting.len());
        // The alarm is at the earliest stale time of an idle resource.
        let now = state.now_ms();
        let stale_at = |age_ms: u64, idle_ms: u64| {
            (now - age_ms + MAX_AGE_MS).min(now - idle_ms + MAX_IDLE_MS)
        };
        let next = idle.iter().map(|r| stale_at(r.age_ms, r.idle_ms)).min();
        let alarms: Vec<u64> = (state.alarms.iter())
            .filter(|(_, a)| *a == Alarm::Primitive(Kind::Pool, "p".into()))
            .map(|(at, _)| *at)
            .collect();
        prop_assert_eq!(alarms, next.into_iter().collect::<Vec<_>>(), "alarm");
        if ticked {
            prop_assert!(next.is_none_or(|at| at > now), "stale idle after a tick");
        }
        self.check_restore()
    }

    fn check_restore(&self) -> Checked {
        let live = &self.sim.state;
        let mut store = self.sim.store.clone();
        persist(&mut store, &[live.checkpoint()]);
        let restored =
            State::restore(live.limits().clone(), store).map_err(|e| TestCaseError::fail(e.0))?;
        restored.check_indexes().map_err(TestCaseError::fail)?;
        prop_assert_eq!(&restored.holds, &live.holds);
        let expected = comparable(pool_info(live));
        prop_assert_eq!(comparable(pool_info(&restored)), expected);
        prop_assert_eq!(&restored.alarms, &live.alarms);
        Ok(())
    }

    /// Closing every session and waiting out every resource leaves nothing.
    fn finish(&mut self) -> Checked {
        for slot in 0..SLOTS {
            let events = self.sim.close(self.slots[slot]).1;
            for (waiter, _) in events {
                self.waiting.retain(|w| *w != waiter);
            }
        }
        let now = self.sim.now_ms + MAX_AGE_MS;
        prop_assert_eq!(self.sim.tick_at(now), vec![]);
        prop_assert_eq!(pool_info(&self.sim.state).size, 0);
        prop_assert!(self
            .sim
            .store
            .keys()
            .all(|k| !k.starts_with(b"pool/") && !k.starts_with(b"pres/")));
        prop_assert!(self.sim.state.alarms.is_empty());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0005),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_pool_stays_bounded_fair_fresh_and_durable(
        ops in proptest::collection::vec(arb_op(), 1..100),
    ) {
        let mut checker = PoolChecker::new();
        for op in &ops {
            checker.step(op)?;
        }
        checker.finish()?;
    }
}
