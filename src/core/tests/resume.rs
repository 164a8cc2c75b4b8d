//! `Command::Resume`, the grace of a restart: after an exact restore, every
//! wait ends with UNAVAILABLE, every lease and visibility timeout starts
//! again in full, and nothing is granted on the way.

use super::{persist, Sim, Store};
use crate::core::token_bucket::BucketSettings;
use crate::core::{Alarm, Code, Command, Kind, Outcome, Reply, SessionId, State, WaiterId};

/// Runs a wait that must queue; returns its waiter.
fn queued(sim: &mut Sim, make: impl FnOnce(WaiterId) -> Command) -> WaiterId {
    let waiter = sim.waiter();
    let (reply, events) = sim.run(make(waiter));
    assert!(
        matches!(reply, Ok(Reply::Queued { .. } | Reply::BreakerChanged(_))),
        "{reply:?}"
    );
    assert_eq!(events, vec![]);
    waiter
}

fn token(reply: &crate::core::Result<Reply>) -> u64 {
    reply
        .as_ref()
        .ok()
        .and_then(Reply::granted_token)
        .unwrap_or_else(|| panic!("no grant: {reply:?}"))
}

fn semaphore(session_id: SessionId, waiter: WaiterId, permits: u32) -> Command {
    Command::SemaphoreAcquire {
        session_id,
        name: "s".into(),
        waiter,
        timeout_ms: None,
        acquire_id: 0,
        capacity: 3,
        permits,
    }
}

fn lock(session_id: SessionId, name: &str, waiter: WaiterId) -> Command {
    Command::LockAcquire {
        session_id,
        name: name.into(),
        waiter,
        timeout_ms: Some(60_000),
        acquire_id: 0,
    }
}

/// Two sessions with a waiter of most kinds, and a queue item in flight.
fn waiting_everywhere() -> (Sim, Vec<WaiterId>, (SessionId, SessionId)) {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(1_000), sim.session(2_000));
    let mut waiters = Vec::new();
    let w = sim.waiter();
    assert!(sim.run(semaphore(a, w, 2)).0.is_ok());
    // b's 3 permits wait at the head; a's 1 behind it would fit alone.
    waiters.push(queued(&mut sim, |w| semaphore(b, w, 3)));
    waiters.push(queued(&mut sim, |w| semaphore(a, w, 1)));
    let w = sim.waiter();
    token(&sim.run(lock(a, "l", w)).0);
    waiters.push(queued(&mut sim, |w| lock(b, "l", w)));
    let w = sim.waiter();
    let m = token(&sim.run(lock(a, "m", w)).0);
    waiters.push(queued(&mut sim, |waiter| Command::ConditionWait {
        session_id: a,
        name: "c".into(),
        lock: "m".into(),
        fencing_token: m,
        waiter,
        timeout_ms: Some(5_000),
    }));
    waiters.push(queued(&mut sim, |waiter| Command::BarrierWait {
        session_id: a,
        name: "bar".into(),
        waiter,
        parties: 3,
        timeout_ms: None,
    }));
    waiters.push(queued(&mut sim, |waiter| Command::EventWait {
        session_id: b,
        name: "e".into(),
        waiter,
        timeout_ms: None,
    }));
    waiters.push(queued(&mut sim, |waiter| Command::QueueGet {
        session_id: b,
        name: "nobody-put".into(),
        waiter,
        timeout_ms: None,
        visibility_timeout_ms: 0,
        no_ack: false,
    }));
    let settings = BucketSettings {
        rate_per_s: 1,
        capacity: 1,
    };
    let w = sim.waiter();
    let take = |session_id, waiter| Command::BucketTake {
        session_id,
        name: "r".into(),
        waiter,
        timeout_ms: None,
        settings,
        tokens: 1,
    };
    assert!(sim.run(take(a, w)).0.is_ok());
    waiters.push(queued(&mut sim, |w| take(b, w)));
    (sim, waiters, (a, b))
}

fn in_flight(sim: &mut Sim, session_id: SessionId) -> u64 {
    let w = sim.waiter();
    let put = Command::QueuePut {
        session_id,
        name: "q".into(),
        waiter: w,
        timeout_ms: None,
        value: b"job".to_vec(),
        priority: 0,
        capacity: None,
        max_deliveries: 0,
        put_id: 0,
    };
    assert!(sim.run(put).0.is_ok());
    let w = sim.waiter();
    let get = Command::QueueGet {
        session_id,
        name: "q".into(),
        waiter: w,
        timeout_ms: Some(0),
        visibility_timeout_ms: 300,
        no_ack: false,
    };
    token(&sim.run(get).0)
}

fn waiter_keys(store: &Store) -> usize {
    store.keys().filter(|k| k.starts_with(b"waiter/")).count()
}

#[test]
fn resume_ends_every_wait_and_renews_every_lease_granting_nothing() {
    let (mut sim, waiters, (a, b)) = waiting_everywhere();
    let item = in_flight(&mut sim, a);
    sim.at(400);
    let mut store = sim.store.clone();
    assert_eq!(waiter_keys(&store), waiters.len(), "one record per waiter");
    persist(&mut store, &[sim.state.checkpoint()]);
    let mut state = State::restore(sim.state.limits().clone(), store.clone()).unwrap();
    assert_eq!(state.waiter_count(), waiters.len(), "restored as they were");

    let mut out = Outcome::default();
    assert_eq!(state.apply(900, Command::Resume, &mut out), Ok(Reply::Done));
    let ended: Vec<WaiterId> = out.events.iter().map(|(w, _)| *w).collect();
    let mut expected = waiters.clone();
    expected.sort();
    assert_eq!(ended, expected, "every waiter ends, once");
    for (_, event) in &out.events {
        let Err(rejection) = event else {
            panic!("a grant during Resume: {event:?}");
        };
        assert_eq!(rejection.code, Code::Unavailable);
        assert!(rejection.message.contains("restarted"), "{rejection:?}");
        assert!(rejection.message.contains("wait again"), "{rejection:?}");
    }
    persist(&mut store, &out.changes);
    assert_eq!(waiter_keys(&store), 0, "every waiter record is deleted");
    assert_eq!(state.waiter_count(), 0);
    state.check_indexes().unwrap();

    // Leases and the visibility timeout start again in full at 900.
    let lease = |id: SessionId| state.sessions.get(id).unwrap().expires_at_ms;
    assert_eq!((lease(a), lease(b)), (1_900, 2_900));
    assert!(state.alarms.contains(&(1_200, Alarm::HoldExpires(item))));
    assert_eq!(state.next_deadline_ms(), Some(1_200));
    // Nothing was granted: the semaphore keeps its one hold of 2 permits,
    // though a's 1 permit would fit once b's 3 left the head.
    assert_eq!(state.hold_count(), sim.state.hold_count(), "none granted");
    let summaries = state.list(state.now_ms(), None, "");
    let line = |kind: Kind, name: &str| {
        let found = summaries.iter().find(|s| s.kind == kind && s.name == name);
        found.map(|s| s.state.clone())
    };
    assert_eq!(
        line(Kind::Semaphore, "s").as_deref(),
        Some("2 of 3 permits held by 1 hold, 0 waiting")
    );
    // A barrier is not broken; what only its waiters kept is forgotten.
    assert_eq!(
        line(Kind::Barrier, "bar").as_deref(),
        Some("ok, 0 of 3 parties waiting, generation 0")
    );
    for (kind, name) in [
        (Kind::Condition, "c"),
        (Kind::Event, "e"),
        (Kind::Queue, "nobody-put"),
    ] {
        assert_eq!(line(kind, name), None, "{} {name}", kind.as_str());
    }
    // And a restore of what Resume wrote is the resumed state.
    persist(&mut store, &[state.checkpoint()]);
    let again = State::restore(state.limits().clone(), store).unwrap();
    assert_eq!(
        super::exact::differences(&state, &again),
        Vec::<String>::new()
    );
}

#[test]
fn a_restore_keeps_waiters_in_line_and_a_late_keep_alive_hears_how_its_session_ended() {
    // The harm an inexact restore did: A holds L, B queues, records are
    // written; A releases and B is told it holds L. A restore of the
    // records from before the release, replaying the release, must grant
    // L to B too.
    let mut sim = Sim::new();
    let (a, b) = (sim.session(10_000), sim.session(10_000));
    let w = sim.waiter();
    let held = token(&sim.run(lock(a, "L", w)).0);
    let wb = queued(&mut sim, |w| lock(b, "L", w));
    let mut snapshot = sim.store.clone();
    persist(&mut snapshot, &[sim.state.checkpoint()]);
    let release = Command::Release {
        kind: Kind::Lock,
        session_id: a,
        name: "L".into(),
        fencing_token: held,
    };
    let (_, live_events) = sim.run(release.clone());
    let mut restored = State::restore(sim.state.limits().clone(), snapshot).unwrap();
    let mut out = Outcome::default();
    restored.apply(sim.now_ms, release, &mut out).unwrap();
    assert_eq!(out.events, live_events);
    assert_eq!(
        out.events,
        vec![(
            wb,
            Ok(Reply::Granted {
                fencing_token: held + 1
            })
        )]
    );

    // Closed and expired sessions are told apart after a restore, too.
    let close = Command::CloseSession {
        session_id: a,
        reason: "ops: stuck".into(),
    };
    assert!(sim.run(close).0.is_ok());
    let mut store = sim.store.clone();
    persist(&mut store, &[sim.state.checkpoint()]);
    let mut restored = State::restore(sim.state.limits().clone(), store).unwrap();
    let renew = Command::KeepAlive {
        session_id: a,
        notices_seen_through: 0,
    };
    let rejection = restored.apply(sim.now_ms, renew, &mut out).unwrap_err();
    assert_eq!(
        rejection.message,
        format!("session {a} was closed: ops: stuck")
    );
    assert_eq!(rejection.session_closed.as_deref(), Some("ops: stuck"));
}
