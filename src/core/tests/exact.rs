//! Restore is exact: a state restored from the records of step k, driven
//! with the same commands and ticks as the original from step k+1 on,
//! gives the same replies, events and changes, the same next deadline, the
//! same listing and counts, and is the same state in every field, at every
//! step after.
//!
//! The random steps are those of `mixed` (every kind of wait, timeouts,
//! cancels, ticks, session expiry, keep-alives, revokes, undelivered grants,
//! visibility timeouts, pool eviction, buckets, breakers and their
//! watchers), with `Op::Restart` among them: it restores a twin from the
//! fake store, which holds exactly what the engine would have written (the
//! changes of every step, and the checkpoint with every step that changed
//! something). From then on `Sim` runs every command and tick on both.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::mixed::{arb_op, Mixed, Op};
use super::{Outcome, Sim};
use crate::core::{Command, Reply, Result, State};

/// The fields in which two states differ (each with both values), or none.
/// Every field of `State` is listed, so a new one must be compared too.
pub(super) fn differences(a: &State, b: &State) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |field: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{field}:\n  {x}\n  {y}"));
        }
    };
    let State {
        limits,
        now_ms,
        counters,
        sessions,
        holds,
        waiters,
        deadlines,
        alarms,
        locks,
        semaphores,
        rwlocks,
        events,
        conditions,
        barriers,
        queues,
        pools,
        buckets,
        breakers,
        put_ids,
        queue_restore,
        touched_waiters,
    } = a;
    macro_rules! fields {
        ($($field:ident),*) => {
            $(compare(stringify!($field), format!("{:?}", $field), format!("{:?}", b.$field));)*
        };
    }
    fields!(
        limits,
        now_ms,
        counters,
        sessions,
        holds,
        waiters,
        deadlines,
        alarms,
        locks,
        semaphores,
        rwlocks,
        events,
        conditions,
        barriers,
        queues,
        pools,
        buckets,
        breakers,
        put_ids,
        queue_restore,
        touched_waiters
    );
    out
}

impl Sim {
    /// A restart: the twin is restored from what is stored now.
    pub(super) fn restart_twin(&mut self) {
        let limits = self.state.limits().clone();
        let twin = State::restore(limits, self.store.clone()).expect("restore");
        twin.check_indexes().expect("restored indexes");
        // The stored clock is the one of the last step that changed
        // something; everything else is the same at once.
        let mut differences = differences(&self.state, &twin);
        differences.retain(|d| !d.starts_with("now_ms:"));
        assert!(differences.is_empty(), "restored: {differences:#?}");
        assert!(twin.now_ms() <= self.state.now_ms());
        assert_eq!(twin.next_deadline_ms(), self.state.next_deadline_ms());
        self.twin = Some(twin);
    }

    /// Runs on the twin what the state just ran, and compares.
    pub(super) fn twin_apply(&mut self, command: Command, reply: &Result<Reply>, out: &Outcome) {
        let twin = self.twin.as_mut().expect("a twin");
        let mut twin_out = Outcome::default();
        let what = format!("{command:?}");
        let twin_reply = twin.apply(self.now_ms, command, &mut twin_out);
        assert_eq!(&twin_reply, reply, "the reply to {what}");
        self.compare_twin(out, &twin_out, &what);
    }

    /// Ticks the twin as the state just ticked, and compares.
    pub(super) fn twin_tick(&mut self, out: &Outcome) {
        let twin = self.twin.as_mut().expect("a twin");
        let mut twin_out = Outcome::default();
        twin.tick(self.now_ms, &mut twin_out);
        self.compare_twin(out, &twin_out, &format!("a tick at {}", self.now_ms));
    }

    fn compare_twin(&self, out: &Outcome, twin_out: &Outcome, what: &str) {
        let twin = self.twin.as_ref().expect("a twin");
        assert_eq!(twin_out.events, out.events, "the events of {what}");
        assert_eq!(twin_out.changes, out.changes, "the changes of {what}");
        let effects = |o: &Outcome| {
            let granted = o.holds_granted.clone();
            (granted, o.holds_ended.clone(), o.sessions_noticed.clone())
        };
        assert_eq!(effects(twin_out), effects(out), "the effects of {what}");
        let live = &self.state;
        assert_eq!(
            twin.next_deadline_ms(),
            live.next_deadline_ms(),
            "after {what}"
        );
        assert_eq!(
            twin.list(twin.now_ms(), None, ""),
            live.list(live.now_ms(), None, ""),
            "after {what}"
        );
        let counts = |s: &State| {
            let sizes = (s.session_count(), s.waiter_count(), s.hold_count());
            (sizes, s.primitive_count(), s.queue_items_ready())
        };
        assert_eq!(counts(twin), counts(live), "the counts after {what}");
        let differences = differences(live, twin);
        assert!(differences.is_empty(), "after {what}: {differences:#?}");
    }
}

/// Mostly `mixed`'s steps, with more waits that block (so that restarts
/// find waiters of every kind), and a restart now and then.
fn arb_step() -> impl Strategy<Value = Op> {
    prop_oneof![12 => arb_op(), 3 => arb_blocking(), 1 => Just(Op::Restart)]
}

/// Acquires that queue unless the primitive is free.
fn arb_blocking() -> impl Strategy<Value = Op> {
    let slot = 0..3usize;
    let timeout_ms = prop_oneof![Just(None), (200..2_000u64).prop_map(Some)];
    prop_oneof![
        (slot.clone(), 0..2usize, timeout_ms.clone()).prop_map(|(slot, name, timeout_ms)| {
            Op::Lock {
                slot,
                name,
                timeout_ms,
            }
        }),
        (slot.clone(), 0..2usize, 2..=3u32, timeout_ms.clone()).prop_map(
            |(slot, name, permits, timeout_ms)| Op::Semaphore {
                slot,
                name,
                permits,
                timeout_ms,
            }
        ),
        (slot.clone(), 0..2usize, any::<bool>(), timeout_ms.clone()).prop_map(
            |(slot, name, write, timeout_ms)| Op::RwLock {
                slot,
                name,
                write,
                timeout_ms,
            }
        ),
        (slot.clone(), timeout_ms.clone())
            .prop_map(|(slot, timeout_ms)| Op::PoolCheckout { slot, timeout_ms }),
        (slot, timeout_ms).prop_map(|(slot, timeout_ms)| Op::BucketTake {
            slot,
            tokens: 3,
            timeout_ms
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0010),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_restored_state_behaves_exactly_like_the_one_that_wrote_its_records(
        ops in proptest::collection::vec(arb_step(), 1..150),
    ) {
        let mut mixed = Mixed::new();
        for slot in 0..3 {
            mixed.step(&Op::Create { slot })?;
        }
        // A first restart at once, so that every later step is compared;
        // more come at random points (each from the store of its time).
        mixed.step(&Op::Restart)?;
        for op in &ops {
            mixed.step(op)?;
        }
        mixed.finish()?;
        prop_assert!(mixed.sim.twin.is_some());
    }
}
