//! Queries: read from `&self` at a given time, without moving the clock,
//! and the same answer as after the clock moved to that time.

use super::Sim;
use crate::core::breaker::BreakerSettings;
use crate::core::token_bucket::BucketSettings;
use crate::core::{Command, Kind, Outcome, Query, Reply, RwMode, WaiterId};

/// A state with one of everything that shows time: holds of every holding
/// kind, waiters, a set event, a bucket, an open breaker, a lost-hold
/// notice. Everything happens at 1 000 ms.
fn busy() -> Sim {
    let mut sim = Sim::new();
    sim.at(1_000);
    let s = sim.session(10_000);
    let t = sim.session(10_000);
    sim.take(s, "l");
    sim.queue(t, "l", None);
    let w = sim.waiter();
    let steps = [
        Command::SemaphoreAcquire {
            session_id: s,
            name: "s".into(),
            waiter: w,
            timeout_ms: None,
            acquire_id: 0,
            capacity: 2,
            permits: 1,
        },
        Command::RwLockAcquire {
            session_id: s,
            name: "rw".into(),
            waiter: WaiterId(w.0 + 1),
            timeout_ms: None,
            acquire_id: 0,
            mode: RwMode::Read,
        },
        Command::EventSet { name: "e".into() },
        Command::QueuePut {
            session_id: s,
            name: "q".into(),
            waiter: WaiterId(w.0 + 2),
            timeout_ms: None,
            value: b"job".to_vec(),
            priority: 0,
            capacity: None,
            max_deliveries: 0,
            put_id: 0,
        },
        Command::QueueGet {
            session_id: s,
            name: "q".into(),
            waiter: WaiterId(w.0 + 3),
            timeout_ms: None,
            visibility_timeout_ms: 60_000,
            no_ack: false,
        },
        Command::PoolCheckout {
            session_id: s,
            name: "p".into(),
            waiter: WaiterId(w.0 + 4),
            timeout_ms: None,
            acquire_id: 0,
            size: 2,
            max_age_ms: 0,
            max_idle_ms: 0,
        },
        Command::BucketTry {
            name: "b".into(),
            settings: BucketSettings {
                rate_per_s: 1,
                capacity: 5,
            },
            tokens: 5,
        },
    ];
    for command in steps {
        let (reply, _) = sim.run(command);
        assert!(reply.is_ok(), "{reply:?}");
    }
    // A breaker opened by a failure: its wait runs down with time.
    let allow = Command::BreakerAllow {
        session_id: s,
        name: "br".into(),
        settings: Some(BreakerSettings {
            failure_threshold: 1,
            open_timeout_ms: 30_000,
            ..BreakerSettings::default()
        }),
        acquire_id: 0,
    };
    let Ok(Reply::BreakerVerdict(verdict)) = sim.apply(allow) else {
        panic!("allow");
    };
    let (fencing_token, _) = verdict.permit.expect("a permit");
    let record = Command::BreakerRecord {
        session_id: s,
        name: "br".into(),
        fencing_token,
        failed: true,
    };
    assert!(sim.run(record).0.is_ok());
    sim
}

fn every_query() -> Vec<Query> {
    let name = |n: &str| n.to_owned();
    vec![
        Query::ListSessions {
            after_session_id: 0,
            limit: 0,
        },
        Query::PendingNotices { session_id: 1 },
        Query::LockDescribe { name: name("l") },
        Query::SemaphoreDescribe { name: name("s") },
        Query::RwLockDescribe { name: name("rw") },
        Query::EventDescribe { name: name("e") },
        Query::ConditionDescribe { name: name("c") },
        Query::BarrierDescribe { name: name("ba") },
        Query::QueueDescribe { name: name("q") },
        Query::PoolDescribe { name: name("p") },
        Query::BucketDescribe { name: name("b") },
        Query::BreakerDescribe { name: name("br") },
        Query::List {
            kind: None,
            prefix: String::new(),
        },
        Query::List {
            kind: Some(Kind::TokenBucket),
            prefix: String::new(),
        },
    ]
}

#[test]
fn a_query_reads_at_its_time_without_moving_the_clock() {
    let mut sim = busy();
    let later = 4_000;
    let before_clock = sim.state.now_ms();
    let before_deadline = sim.state.next_deadline_ms();
    let answers: Vec<_> = (every_query().iter())
        .map(|q| sim.state.query(later, q))
        .collect();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    // Nothing moved: not the clock, not what is due.
    assert_eq!(sim.state.now_ms(), before_clock);
    assert_eq!(sim.state.next_deadline_ms(), before_deadline);
    assert_eq!(sim.state.checkpoint(), busy().state.checkpoint());
    let Ok(Reply::LockDescription(lock)) = &answers[2] else {
        panic!("{:?}", answers[2]);
    };
    let holder = lock.holder.as_ref().expect("held");
    assert_eq!((holder.held_ms, holder.lease_left_ms), (3_000, 7_000));
    assert_eq!(lock.waiters[0].waiting_ms, 3_000);

    // The clock moves to `later` by a command that changes nothing else:
    // every read is the same as it was before.
    sim.at(later);
    let mut out = Outcome::default();
    let nobody = Command::Cancel {
        waiter: WaiterId(u64::MAX),
    };
    assert_eq!(sim.state.apply(later, nobody, &mut out), Ok(Reply::Done));
    assert_eq!(sim.state.now_ms(), later);
    for (query, before) in every_query().iter().zip(&answers) {
        assert_eq!(&sim.state.query(later, query), before, "{query:?}");
    }
}

#[test]
fn a_query_past_a_lease_shows_it_run_out_but_expires_nothing() {
    let sim = busy();
    let past = 20_000;
    let list = Query::ListSessions {
        after_session_id: 0,
        limit: 0,
    };
    let Ok(Reply::SessionList(sessions)) = sim.state.query(past, &list) else {
        panic!("list sessions");
    };
    assert_eq!(sessions.len(), 2, "expiry is the tick's, not the read's");
    assert!(
        sessions.iter().all(|s| s.lease_left_ms == 0),
        "{sessions:?}"
    );
    assert_eq!(sim.state.session_count(), 2);
    // The bucket refills in the answer, not in the state.
    let bucket = Query::BucketDescribe { name: "b".into() };
    let Ok(Reply::BucketDescription(info)) = sim.state.query(past, &bucket) else {
        panic!("describe bucket");
    };
    assert_eq!(info.tokens, 5);
    let Ok(Reply::BucketDescription(info)) = sim.state.query(1_000, &bucket) else {
        panic!("describe bucket");
    };
    assert_eq!(info.tokens, 0);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "before the state's clock")]
fn a_query_from_before_the_clock_is_a_bug() {
    let sim = busy();
    let _ = sim
        .state
        .query(999, &Query::LockDescribe { name: "l".into() });
}
