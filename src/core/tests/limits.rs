//! The limits that bound what clients can make the server keep: holds and
//! waits per session, and primitives in all. Past one: RESOURCE_EXHAUSTED
//! naming the limit and its value; others go on.

use super::{code, Sim};
use crate::core::token_bucket::{BucketAsk, BucketSettings};
use crate::core::{Code, Command, Limits, Reply};

const TTL: u64 = 60_000;

fn message(reply: &crate::core::Result<Reply>) -> String {
    reply
        .as_ref()
        .err()
        .map(|r| r.message.clone())
        .unwrap_or_default()
}

#[test]
fn a_session_holds_at_most_its_limit_and_others_go_on() {
    let mut sim = Sim::with_limits(Limits {
        holds_per_session_max: 2,
        ..Limits::default()
    });
    let greedy = sim.session(TTL);
    let other = sim.session(TTL);
    sim.take(greedy, "a");
    let b = sim.take(greedy, "b");
    let (_, refused) = sim.acquire(greedy, "c", None);
    assert_eq!(code(&refused), Some(Code::ResourceExhausted));
    assert!(
        message(&refused).starts_with("holds_per_session_max: session 1 already has 2 holds"),
        "{}",
        message(&refused)
    );
    sim.take(other, "c");
    sim.release(greedy, "b", b).0.unwrap();
    sim.take(greedy, "d");
}

#[test]
fn a_session_waits_at_most_its_limit() {
    let mut sim = Sim::with_limits(Limits {
        waiters_per_session_max: 1,
        ..Limits::default()
    });
    let holder = sim.session(TTL);
    let waiter = sim.session(TTL);
    sim.take(holder, "a");
    sim.take(holder, "b");
    sim.queue(waiter, "a", None);
    let (_, refused) = sim.acquire(waiter, "b", None);
    assert_eq!(code(&refused), Some(Code::ResourceExhausted));
    assert!(message(&refused).starts_with("waiters_per_session_max: "));
}

#[test]
fn the_server_keeps_at_most_its_primitives() {
    let mut sim = Sim::with_limits(Limits {
        primitives_max: 2,
        ..Limits::default()
    });
    let s = sim.session(TTL);
    sim.take(s, "a");
    sim.take(s, "b");
    let (_, refused) = sim.acquire(s, "c", None);
    assert_eq!(code(&refused), Some(Code::ResourceExhausted));
    assert_eq!(
        message(&refused),
        "primitives_max: the server already has 2 primitives (limit 2)"
    );
    // What exists can still be used.
    sim.queue(s, "a", None);
    let set = sim.apply(Command::EventSet { name: "e".into() });
    assert_eq!(code(&set), Some(Code::ResourceExhausted), "any kind counts");
    let ask = |name: &str| BucketAsk {
        name: name.into(),
        settings: BucketSettings {
            rate_per_s: 1,
            capacity: 1,
        },
        tokens: 1,
    };
    let many = sim.apply(Command::BucketTryMany {
        asks: vec![ask("x")],
    });
    assert_eq!(code(&many), Some(Code::ResourceExhausted));
    // A lock nobody holds or awaits is gone, and makes room.
    sim.close(s).0.unwrap();
    let s = sim.session(TTL);
    sim.take(s, "c");
}
