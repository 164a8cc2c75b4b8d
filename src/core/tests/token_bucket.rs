//! Unit tests of the token bucket's rules, and a property test that the
//! rate holds and waiters are served in order, with simulated time.

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

use super::{code, Events, Sim};
use crate::core::token_bucket::{BucketAsk, BucketInfo, BucketSettings};
use crate::core::Query;
use crate::core::{Code, Command, Reply, Result, SessionId, State, WaiterId};

const TTL: u64 = 60_000;

/// The seed's bucket: 5 tokens per second, a burst of 10.
const SEED: BucketSettings = BucketSettings {
    rate_per_s: 5,
    capacity: 10,
};

impl Sim {
    fn take_tokens(
        &mut self,
        session_id: SessionId,
        tokens: u32,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::BucketTake {
            session_id,
            name: "api".into(),
            waiter,
            timeout_ms,
            settings: SEED,
            tokens,
        });
        (waiter, reply, events)
    }

    fn try_tokens(&mut self, tokens: u32) -> Result<Reply> {
        self.apply(Command::BucketTry {
            name: "api".into(),
            settings: SEED,
            tokens,
        })
    }

    fn bucket_info(&mut self) -> BucketInfo {
        match self.query(Query::BucketDescribe { name: "api".into() }) {
            Ok(Reply::BucketDescription(info)) => info,
            other => panic!("describe: {other:?}"),
        }
    }
}

fn taken(reply: &Result<Reply>) -> bool {
    matches!(reply, Ok(Reply::TryTaken { taken: true, .. }))
}

#[test]
fn a_burst_passes_at_once_and_the_rest_at_the_rate() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    for _ in 0..10 {
        assert!(taken(&sim.take_tokens(s, 1, None).1), "the burst passes");
    }
    // The other five wait in line; the timer grants one every 200 ms.
    let waiters: Vec<WaiterId> = (0..5)
        .map(|_| {
            let (waiter, reply, _) = sim.take_tokens(s, 1, None);
            assert!(matches!(reply, Ok(Reply::Queued { .. })), "{reply:?}");
            waiter
        })
        .collect();
    let mut granted_at = Vec::new();
    while granted_at.len() < 5 {
        let at = sim.state.next_deadline_ms().expect("an alarm for the head");
        for (waiter, event) in sim.tick_at(at) {
            assert!(taken(&event), "{event:?}");
            granted_at.push((waiter, at));
        }
    }
    let expected: Vec<_> = waiters
        .iter()
        .zip([200, 400, 600, 800, 1000])
        .map(|(w, t)| (*w, t))
        .collect();
    assert_eq!(granted_at, expected, "FIFO at 5/s: all 15 within about 1 s");
    assert_eq!(
        sim.state.next_deadline_ms(),
        Some(TTL),
        "no alarm without waiters"
    );
    sim.state.check_indexes().unwrap();
}

#[test]
fn try_says_how_long_until_the_tokens_would_be_there() {
    let mut sim = Sim::new();
    assert!(taken(&sim.try_tokens(10)));
    assert_eq!(
        sim.try_tokens(2),
        Ok(Reply::TryTaken {
            taken: false,
            retry_after_ms: 400,
            remaining: 0
        })
    );
    sim.at(300);
    assert_eq!(
        sim.try_tokens(2),
        Ok(Reply::TryTaken {
            taken: false,
            retry_after_ms: 100,
            remaining: 1
        })
    );
    sim.at(400);
    assert!(taken(&sim.try_tokens(2)));
    // Refill stops at the capacity.
    sim.at(100_000);
    assert_eq!(sim.bucket_info().tokens, 10);
}

#[test]
fn nobody_overtakes_a_waiter_and_a_leaving_waiter_lets_the_next_go() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    assert!(taken(&sim.try_tokens(10)));
    let (big, _, _) = sim.take_tokens(s, 5, None);
    // A small request that would fit later still waits behind the big one,
    // and a try is refused while anyone waits.
    sim.at(200);
    let (small, reply, _) = sim.take_tokens(s, 1, None);
    assert!(
        matches!(reply, Ok(Reply::Queued { position: 2 })),
        "{reply:?}"
    );
    assert!(!taken(&sim.try_tokens(1)));
    let (_, events) = sim.run(Command::Cancel { waiter: big });
    assert_eq!(events.len(), 1, "the small one goes as the big one leaves");
    assert_eq!(events[0].0, small);
    sim.state.check_indexes().unwrap();
}

#[test]
fn bad_requests_are_refused() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let (_, reply, _) = sim.take_tokens(s, 11, None);
    assert_eq!(
        code(&reply),
        Some(Code::InvalidArgument),
        "more than the capacity"
    );
    let (_, reply, _) = sim.take_tokens(s, 0, None);
    assert_eq!(code(&reply), Some(Code::InvalidArgument));
    assert!(taken(&sim.try_tokens(1)), "makes the bucket");
    let other = Command::BucketTry {
        name: "api".into(),
        settings: BucketSettings {
            rate_per_s: 50,
            capacity: 10,
        },
        tokens: 1,
    };
    assert_eq!(code(&sim.apply(other)), Some(Code::FailedPrecondition));
    let missing = Command::BucketTry {
        name: "nope".into(),
        settings: BucketSettings {
            rate_per_s: 0,
            capacity: 0,
        },
        tokens: 1,
    };
    assert_eq!(code(&sim.apply(missing)), Some(Code::NotFound));
    let (_, reply, _) = sim.take_tokens(s, 9, Some(0));
    assert!(taken(&reply));
    let (_, reply, _) = sim.take_tokens(s, 1, Some(0));
    assert_eq!(
        code(&reply),
        Some(Code::DeadlineExceeded),
        "try-once refuses"
    );
}

#[test]
fn a_refused_request_creates_no_bucket() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let (_, reply, _) = sim.take_tokens(s, 11, None);
    assert_eq!(code(&reply), Some(Code::InvalidArgument));
    assert_eq!(sim.bucket_info().capacity, 0, "no bucket was made");
    assert!(sim.store.is_empty() || !sim.store.keys().any(|k| k.starts_with(b"bucket/")));
}

fn ask(name: &str, tokens: u32) -> BucketAsk {
    BucketAsk {
        name: name.into(),
        settings: SEED,
        tokens,
    }
}

fn try_many(sim: &mut Sim, asks: Vec<BucketAsk>) -> Result<Reply> {
    sim.apply(Command::BucketTryMany { asks })
}

#[test]
fn a_many_bucket_try_takes_from_all_or_from_none() {
    let mut sim = Sim::new();
    assert!(taken(&sim.try_tokens(8)), "api keeps 2");
    let reply = try_many(&mut sim, vec![ask("user-1", 3), ask("api", 3)]);
    let Ok(Reply::TriedMany { taken, verdicts }) = reply else {
        panic!("{reply:?}")
    };
    assert!(!taken, "api has too few");
    assert!(verdicts[0].enough && !verdicts[1].enough);
    assert_eq!(verdicts[0].remaining, 10, "user-1 was not used up");
    assert_eq!(verdicts[1].retry_after_ms, 200, "1 token at 5/s");
    sim.at(200);
    let reply = try_many(&mut sim, vec![ask("user-1", 3), ask("api", 3)]);
    let Ok(Reply::TriedMany { taken, verdicts }) = reply else {
        panic!("{reply:?}")
    };
    assert!(taken);
    assert_eq!((verdicts[0].remaining, verdicts[1].remaining), (7, 0));
}

#[test]
fn a_many_bucket_try_checks_every_bucket_first() {
    let mut sim = Sim::new();
    let too_big = try_many(&mut sim, vec![ask("user-1", 3), ask("api", 11)]);
    assert_eq!(code(&too_big), Some(Code::InvalidArgument));
    assert_eq!(sim.state.buckets.len(), 0, "nothing was made or taken");
    let twice = try_many(&mut sim, vec![ask("api", 1), ask("api", 1)]);
    assert_eq!(code(&twice), Some(Code::InvalidArgument));
    assert_eq!(
        code(&try_many(&mut sim, vec![])),
        Some(Code::InvalidArgument)
    );
    let many = (0..101).map(|i| ask(&format!("k{i}"), 1)).collect();
    assert_eq!(code(&try_many(&mut sim, many)), Some(Code::InvalidArgument));
}

#[test]
fn a_restart_neither_refills_the_burst_nor_loses_time() {
    let mut sim = Sim::new();
    assert!(taken(&sim.try_tokens(10)));
    sim.at(600);
    let restored = restored(&sim);
    let Ok(Reply::BucketDescription(info)) = restored.bucket_describe(restored.now_ms(), "api")
    else {
        panic!()
    };
    // 3 tokens refilled by 600 ms, as before the restart.
    assert_eq!(info.tokens, 3);
}

fn restored(sim: &Sim) -> State {
    let mut store = sim.store.clone();
    super::persist(&mut store, &[sim.state.checkpoint()]);
    let mut state = State::restore(sim.state.limits().clone(), store).expect("restore");
    let mut out = crate::core::Outcome::default();
    state.tick(sim.now_ms, &mut out);
    state
}

// --- property: the rate holds, in order -------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Take {
        tokens: u32,
        timeout_ms: Option<u64>,
    },
    Try {
        tokens: u32,
    },
    Cancel {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let timeout = prop_oneof![Just(None), Just(Some(0)), (1..2_000u64).prop_map(Some)];
    prop_oneof![
        3 => (1..=4u32, timeout).prop_map(|(tokens, timeout_ms)| Op::Take { tokens, timeout_ms }),
        2 => (1..=4u32).prop_map(|tokens| Op::Try { tokens }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => (1..700u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0005),
        ..ProptestConfig::default()
    })]

    /// Whatever happens, the tokens granted by time t never exceed the burst
    /// plus the rate × t; waiters are granted in the order they queued; and
    /// the indexes agree.
    #[test]
    fn the_rate_holds_and_waiters_go_in_order(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let mut sim = Sim::new();
        let s = sim.session(3_600_000);
        let mut granted: u64 = 0;
        let mut queued: Vec<(WaiterId, u32)> = Vec::new();
        for op in &ops {
            let mut events = Vec::new();
            match *op {
                Op::Take { tokens, timeout_ms } => {
                    let (waiter, reply, e) = sim.take_tokens(s, tokens, timeout_ms);
                    events = e;
                    match reply {
                        Ok(Reply::Queued { .. }) => queued.push((waiter, tokens)),
                        Ok(Reply::TryTaken { taken: true, .. }) => {
                            prop_assert!(queued.is_empty(), "taken past waiters");
                            granted += u64::from(tokens);
                        }
                        other => prop_assert!(other.is_err(), "{:?}", other),
                    }
                }
                Op::Try { tokens } => {
                    if taken(&sim.try_tokens(tokens)) {
                        prop_assert!(queued.is_empty(), "try taken past waiters");
                        granted += u64::from(tokens);
                    }
                }
                Op::Cancel { pick } => {
                    if !queued.is_empty() {
                        let (waiter, _) = queued.remove(pick % queued.len());
                        events = sim.run(Command::Cancel { waiter }).1;
                    }
                }
                Op::Advance { ms } => {
                    let now = sim.now_ms + ms;
                    events = sim.tick_at(now);
                }
            }
            for (waiter, event) in events {
                let position = queued.iter().position(|(w, _)| *w == waiter);
                match event {
                    Ok(Reply::TryTaken { taken: true, .. }) => {
                        prop_assert_eq!(position, Some(0), "granted out of order");
                        granted += u64::from(queued.remove(0).1);
                    }
                    Err(rejection) => {
                        prop_assert_eq!(rejection.code, Code::DeadlineExceeded);
                        let index = position.expect("a waiter timed out");
                        queued.remove(index);
                    }
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                }
            }
            let allowed = 10 + sim.now_ms * 5 / 1000;
            prop_assert!(granted <= allowed, "{} tokens by {} ms", granted, sim.now_ms);
            sim.state.check_indexes().map_err(TestCaseError::fail)?;
            // Nobody waits whose tokens are there (the alarm would have rung).
            if let Some(&(_, head)) = queued.first() {
                let tokens = sim.bucket_info().tokens;
                prop_assert!(tokens < head || sim.state.next_deadline_ms() <= Some(sim.now_ms),
                    "head of {} waits with {} tokens there", head, tokens);
            }
        }
    }
}

#[test]
fn deleting_a_bucket_ends_its_waiters_and_its_record() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    assert!(taken(&sim.try_tokens(10)));
    let (waiter, reply, _) = sim.take_tokens(s, 1, None);
    assert!(matches!(reply, Ok(Reply::Queued { .. })));
    let (reply, events) = sim.run(Command::BucketDelete { name: "api".into() });
    assert_eq!(
        reply,
        Ok(Reply::Deleted {
            waiters_ended: 1,
            holds_dropped: 0
        })
    );
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0, code(&events[0].1)),
        (waiter, Some(Code::NotFound))
    );
    assert_eq!(
        sim.state.next_deadline_ms(),
        Some(TTL),
        "no alarm, only the lease"
    );
    assert!(!sim.store.keys().any(|k| k.starts_with(b"bucket/")));
    sim.state.check_indexes().unwrap();
    let again = sim.apply(Command::BucketDelete { name: "api".into() });
    assert_eq!(code(&again), Some(Code::NotFound));
    assert!(taken(&sim.try_tokens(10)), "made anew, full");
}
