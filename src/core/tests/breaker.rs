//! Unit tests of the circuit breaker's rules, and a property test against a
//! model of them, with simulated time.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

use super::{code, Events, Sim};
use crate::core::breaker::{
    BreakerAction, BreakerInfo, BreakerSettings, BreakerState, StateChange, Verdict,
};
use crate::core::Query;
use crate::core::{
    Code, Command, FencingToken, Outcome, Reply, Result, SessionId, State, WaiterId,
};

const TTL: u64 = 60_000;

/// The seed's breaker: open after 3 failures, probe after a second.
const SEED: BreakerSettings = BreakerSettings {
    failure_threshold: 3,
    open_timeout_ms: 1_000,
    half_open_max_probes: 1,
    success_threshold: 1,
    window_calls: 0,
    failure_rate_percent: 0,
    min_calls: 0,
};

impl Sim {
    fn allow_with(&mut self, session_id: SessionId, settings: BreakerSettings) -> Verdict {
        self.allow_call(session_id, Some(settings), 0)
    }

    fn allow_call(
        &mut self,
        session_id: SessionId,
        settings: Option<BreakerSettings>,
        acquire_id: u64,
    ) -> Verdict {
        let (reply, _) = self.run(Command::BreakerAllow {
            session_id,
            name: "db".into(),
            settings,
            acquire_id,
        });
        match reply {
            Ok(Reply::BreakerVerdict(verdict)) => verdict,
            other => panic!("allow: {other:?}"),
        }
    }

    fn record(
        &mut self,
        session_id: SessionId,
        token: FencingToken,
        failed: bool,
    ) -> (Result<Reply>, Events) {
        self.run(Command::BreakerRecord {
            session_id,
            name: "db".into(),
            fencing_token: token,
            failed,
        })
    }

    /// One call: allowed, then recorded; returns the state after it.
    fn call(&mut self, session_id: SessionId, failed: bool) -> BreakerState {
        let verdict = self.allow_with(session_id, SEED);
        let (token, _) = verdict.permit.expect("allowed");
        match self.record(session_id, token, failed).0 {
            Ok(Reply::BreakerRecorded { state, counted }) => {
                assert!(counted);
                state
            }
            other => panic!("record: {other:?}"),
        }
    }

    fn breaker(&mut self) -> BreakerInfo {
        match self.query(Query::BreakerDescribe { name: "db".into() }) {
            Ok(Reply::BreakerDescription(info)) => info,
            other => panic!("describe: {other:?}"),
        }
    }

    fn watch(&mut self, session_id: SessionId) -> (WaiterId, Result<Reply>) {
        let waiter = self.waiter();
        let (reply, _) = self.run(Command::BreakerWatch {
            session_id,
            name: "db".into(),
            waiter,
        });
        (waiter, reply)
    }
}

fn changes(events: &Events) -> Vec<BreakerState> {
    events
        .iter()
        .map(|(_, event)| match event {
            Ok(Reply::BreakerChanged(change)) => change.state,
            other => panic!("not a change: {other:?}"),
        })
        .collect()
}

#[test]
fn failures_open_it_a_timeout_half_opens_it_and_a_probe_closes_it() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let b = sim.session(TTL);
    assert_eq!(sim.call(a, true), BreakerState::Closed);
    assert_eq!(sim.call(a, false), BreakerState::Closed, "a success resets");
    assert_eq!(sim.call(a, true), BreakerState::Closed);
    assert_eq!(sim.call(a, true), BreakerState::Closed);
    assert_eq!(sim.call(a, true), BreakerState::Open, "3 in a row");
    assert_eq!(sim.breaker().reason, "3 consecutive failures");
    sim.at(400);
    let refused = sim.allow_with(b, SEED);
    assert_eq!(refused.permit, None, "another process is refused too");
    assert_eq!(refused.state, BreakerState::Open);
    assert_eq!(refused.retry_after_ms, 600);
    // The alarm turns it half-open; one probe at a time.
    assert_eq!(sim.state.next_deadline_ms(), Some(1_000));
    sim.tick_at(1_000);
    assert_eq!(sim.breaker().state, BreakerState::HalfOpen);
    let probe = sim.allow_with(b, SEED);
    let (token, is_probe) = probe.permit.expect("a probe");
    assert!(is_probe);
    let busy = sim.allow_with(a, SEED);
    assert_eq!((busy.permit, busy.state), (None, BreakerState::HalfOpen));
    let (reply, _) = sim.record(b, token, false);
    assert_eq!(
        reply,
        Ok(Reply::BreakerRecorded {
            state: BreakerState::Closed,
            counted: true
        })
    );
    sim.state.check_indexes().unwrap();
}

#[test]
fn a_failed_probe_opens_it_again_for_a_full_timeout() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    for _ in 0..3 {
        sim.call(a, true);
    }
    sim.at(1_500);
    let (token, probe) = sim
        .allow_with(a, SEED)
        .permit
        .expect("due: half-open on request");
    assert!(probe);
    sim.at(1_600);
    let (reply, _) = sim.record(a, token, true);
    assert!(matches!(
        reply,
        Ok(Reply::BreakerRecorded {
            state: BreakerState::Open,
            ..
        })
    ));
    assert_eq!(sim.allow_with(a, SEED).retry_after_ms, 1_000);
    assert_eq!(sim.breaker().reason, "a probe call failed");
}

#[test]
fn an_outcome_from_an_earlier_state_changes_nothing() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let (slow, _) = sim.allow_with(a, SEED).permit.unwrap();
    for _ in 0..3 {
        sim.call(a, true);
    }
    sim.tick_at(1_000);
    let (probe, _) = sim.allow_with(a, SEED).permit.unwrap();
    // The slow call from before the breaker opened succeeds: it must not
    // close the half-open breaker, nor free the probe's slot.
    let (reply, _) = sim.record(a, slow, false);
    assert_eq!(
        reply,
        Ok(Reply::BreakerRecorded {
            state: BreakerState::HalfOpen,
            counted: false
        })
    );
    assert_eq!(sim.breaker().probes_in_flight, 1);
    assert_eq!(sim.allow_with(a, SEED).permit, None);
    sim.record(a, probe, false).0.unwrap();
    assert_eq!(sim.breaker().state, BreakerState::Closed);
}

#[test]
fn a_probe_whose_session_ends_frees_its_slot() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let dying = sim.session(2_000);
    for _ in 0..3 {
        sim.call(a, true);
    }
    sim.tick_at(1_000);
    sim.allow_with(dying, SEED).permit.expect("the probe");
    assert_eq!(sim.allow_with(a, SEED).permit, None, "slot taken");
    // The prober dies: nobody keeps its session alive.
    sim.keep_alive(a).unwrap();
    sim.tick_at(2_000);
    assert_eq!(sim.breaker().probes_in_flight, 0);
    assert_eq!(sim.breaker().state, BreakerState::HalfOpen, "no outcome");
    let (_, probe) = sim.allow_with(a, SEED).permit.expect("slot free");
    assert!(probe);
    sim.state.check_indexes().unwrap();
}

#[test]
fn the_failure_rate_rule_opens_it_once_enough_calls_are_in() {
    let settings = BreakerSettings {
        failure_threshold: 0,
        window_calls: 10,
        failure_rate_percent: 50,
        min_calls: 4,
        ..SEED
    };
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let call = |sim: &mut Sim, failed| {
        let (token, _) = sim.allow_with(a, settings).permit.unwrap();
        match sim.record(a, token, failed).0 {
            Ok(Reply::BreakerRecorded { state, .. }) => state,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(call(&mut sim, true), BreakerState::Closed, "1 call only");
    assert_eq!(call(&mut sim, false), BreakerState::Closed);
    assert_eq!(call(&mut sim, false), BreakerState::Closed);
    assert_eq!(call(&mut sim, true), BreakerState::Open, "2 of 4 failed");
    assert_eq!(sim.breaker().reason, "2 of the last 4 calls failed");
}

#[test]
fn operators_pin_it_and_reset_it() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    sim.call(a, false);
    let control = |sim: &mut Sim, action| {
        let name = "db".into();
        sim.run(Command::BreakerControl { name, action }).0
    };
    let forced = control(&mut sim, BreakerAction::ForceOpen);
    assert_eq!(forced, Ok(Reply::BreakerStateIs(BreakerState::ForcedOpen)));
    let refused = sim.allow_with(a, SEED);
    assert_eq!((refused.permit, refused.retry_after_ms), (None, 0));
    sim.tick_at(50_000);
    assert_eq!(sim.breaker().state, BreakerState::ForcedOpen, "no timeout");
    control(&mut sim, BreakerAction::ForceClose).unwrap();
    for _ in 0..10 {
        let (token, _) = sim.allow_with(a, SEED).permit.expect("always allowed");
        let (reply, _) = sim.record(a, token, true);
        assert!(matches!(
            reply,
            Ok(Reply::BreakerRecorded { counted: false, .. })
        ));
    }
    control(&mut sim, BreakerAction::Reset).unwrap();
    assert_eq!(sim.breaker().state, BreakerState::Closed);
    let missing = Command::BreakerControl {
        name: "nope".into(),
        action: BreakerAction::Reset,
    };
    assert_eq!(code(&sim.apply(missing)), Some(Code::NotFound));
}

#[test]
fn watchers_hear_every_change_in_order() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    sim.call(a, false);
    let (_, first) = sim.watch(a);
    let Ok(Reply::BreakerChanged(StateChange { state, .. })) = first else {
        panic!("{first:?}")
    };
    assert_eq!(state, BreakerState::Closed, "the current state first");
    let mut heard = Vec::new();
    for _ in 0..3 {
        let (token, _) = sim.allow_with(a, SEED).permit.unwrap();
        heard.extend(changes(&sim.record(a, token, true).1));
    }
    heard.extend(changes(&sim.tick_at(1_000)));
    let (token, _) = sim.allow_with(a, SEED).permit.unwrap();
    heard.extend(changes(&sim.record(a, token, false).1));
    use BreakerState::*;
    assert_eq!(heard, vec![Open, HalfOpen, Closed]);
}

#[test]
fn bad_requests_are_refused_and_make_nothing() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let allow = |sim: &mut Sim, settings| {
        sim.run(Command::BreakerAllow {
            session_id: a,
            name: "db".into(),
            settings,
            acquire_id: 0,
        })
        .0
    };
    assert_eq!(code(&allow(&mut sim, None)), Some(Code::NotFound));
    let no_rule = BreakerSettings {
        failure_threshold: 0,
        ..SEED
    };
    assert_eq!(
        code(&allow(&mut sim, Some(no_rule))),
        Some(Code::InvalidArgument)
    );
    let bad_rate = BreakerSettings {
        window_calls: 10,
        failure_rate_percent: 101,
        ..SEED
    };
    assert_eq!(
        code(&allow(&mut sim, Some(bad_rate))),
        Some(Code::InvalidArgument)
    );
    assert_eq!(sim.breaker().settings, None, "nothing made");
    allow(&mut sim, Some(SEED)).unwrap();
    let other = BreakerSettings {
        failure_threshold: 5,
        ..SEED
    };
    assert_eq!(
        code(&allow(&mut sim, Some(other))),
        Some(Code::FailedPrecondition)
    );
    let defaults = BreakerSettings {
        failure_threshold: 3,
        ..BreakerSettings::default()
    };
    assert_eq!(
        code(&allow(&mut sim, Some(defaults))),
        Some(Code::FailedPrecondition),
        "defaults are filled in before comparing: 30 s is not 1 s"
    );
    let (reply, _) = sim.record(a, 999, false);
    assert_eq!(code(&reply), Some(Code::NotFound));
}

#[test]
fn a_retried_allow_gets_the_same_permit() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let first = sim.allow_call(a, Some(SEED), 42);
    let again = sim.allow_call(a, Some(SEED), 42);
    assert_eq!(first, again);
    assert_eq!(sim.breaker().permits.len(), 1);
}

#[test]
fn the_state_and_its_permits_survive_a_restart() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    for _ in 0..3 {
        sim.call(a, true);
    }
    let mut restored = restored(&sim);
    let mut out = Outcome::default();
    restored.tick(1_000, &mut out);
    let Ok(Reply::BreakerDescription(info)) = restored.breaker_describe(restored.now_ms(), "db")
    else {
        panic!()
    };
    assert_eq!(info.state, BreakerState::HalfOpen, "the alarm was re-armed");

    // A probe in flight is still one after a restart.
    sim.tick_at(1_000);
    sim.allow_with(a, SEED).permit.unwrap();
    let restored = restored_at(&sim);
    let Ok(Reply::BreakerDescription(info)) = restored.breaker_describe(restored.now_ms(), "db")
    else {
        panic!()
    };
    assert_eq!((info.probes_in_flight, info.permits.len()), (1, 1));
    restored.check_indexes().unwrap();
}

fn restored(sim: &Sim) -> State {
    let mut store = sim.store.clone();
    super::persist(&mut store, &[sim.state.checkpoint()]);
    State::restore(sim.state.limits().clone(), store).expect("restore")
}

fn restored_at(sim: &Sim) -> State {
    let mut state = restored(sim);
    let mut out = Outcome::default();
    state.tick(sim.now_ms, &mut out);
    state
}

// --- property: the breaker follows its rules ---------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Allow {
        session: usize,
    },
    Record {
        pick: usize,
        failed: bool,
    },
    /// The session dies: its permits are dropped without outcomes.
    Close {
        session: usize,
    },
    Control(BreakerAction),
    Advance {
        ms: u64,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let action = prop_oneof![
        Just(BreakerAction::ForceOpen),
        Just(BreakerAction::ForceClose),
        Just(BreakerAction::Reset),
    ];
    prop_oneof![
        5 => (0..3usize).prop_map(|session| Op::Allow { session }),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(pick, failed)| Op::Record { pick, failed }),
        1 => (0..3usize).prop_map(|session| Op::Close { session }),
        1 => action.prop_map(Op::Control),
        3 => (1..400u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn arb_settings() -> impl Strategy<Value = BreakerSettings> {
    (0..4u32, 100..600u64, 1..3u32, 1..3u32, any::<bool>()).prop_map(
        |(failure_threshold, open_timeout_ms, probes, successes, window)| BreakerSettings {
            failure_threshold: if window {
                failure_threshold
            } else {
                failure_threshold + 1
            },
            open_timeout_ms,
            half_open_max_probes: probes,
            success_threshold: successes,
            window_calls: if window { 5 } else { 0 },
            failure_rate_percent: if window { 60 } else { 0 },
            min_calls: if window { 3 } else { 0 },
        },
    )
}

/// The rules restated plainly, to compare the breaker with.
#[derive(Debug)]
struct Model {
    s: BreakerSettings,
    state: BreakerState,
    era: u64,
    consecutive: u32,
    window: VecDeque<bool>,
    successes: u32,
    open_until_ms: u64,
    /// Permits in flight: token → (session index, era).
    permits: BTreeMap<FencingToken, (usize, u64)>,
    changes: Vec<BreakerState>,
}

impl Model {
    fn turn(&mut self, to: BreakerState, now_ms: u64) {
        self.state = to;
        self.era += 1;
        self.consecutive = 0;
        self.window.clear();
        self.successes = 0;
        self.open_until_ms = now_ms + self.s.open_timeout_ms;
        self.changes.push(to);
    }

    fn catch_up(&mut self, now_ms: u64) {
        if self.state == BreakerState::Open && now_ms >= self.open_until_ms {
            self.turn(BreakerState::HalfOpen, now_ms);
        }
    }

    fn probes(&self) -> u32 {
        let probing = self.state == BreakerState::HalfOpen;
        (self.permits.values())
            .filter(|(_, era)| probing && *era == self.era)
            .count() as u32
    }

    fn admits(&self) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::ForcedClosed => true,
            BreakerState::HalfOpen => self.probes() < self.s.half_open_max_probes,
            BreakerState::Open | BreakerState::ForcedOpen => false,
        }
    }

    fn outcome(&mut self, failed: bool, now_ms: u64) {
        match self.state {
            BreakerState::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if self.s.window_calls > 0 {
                    self.window.push_back(failed);
                    if self.window.len() > self.s.window_calls as usize {
                        self.window.pop_front();
                    }
                }
                let seen = self.window.len() as u32;
                let failures = self.window.iter().filter(|f| **f).count() as u32;
                let by_count =
                    self.s.failure_threshold > 0 && self.consecutive >= self.s.failure_threshold;
                let by_rate = self.s.window_calls > 0
                    && seen >= self.s.min_calls
                    && failures * 100 >= self.s.failure_rate_percent * seen;
                if by_count || by_rate {
                    self.turn(BreakerState::Open, now_ms);
                }
            }
            BreakerState::HalfOpen if failed => self.turn(BreakerState::Open, now_ms),
            BreakerState::HalfOpen => {
                self.successes += 1;
                if self.successes >= self.s.success_threshold {
                    self.turn(BreakerState::Closed, now_ms);
                }
            }
            _ => {}
        }
    }
}

fn check(sim: &mut Sim, model: &Model) -> std::result::Result<(), TestCaseError> {
    let info = sim.breaker();
    prop_assert_eq!(info.state, model.state);
    prop_assert_eq!(info.consecutive_failures, model.consecutive);
    prop_assert_eq!(info.half_open_successes, model.successes);
    prop_assert_eq!(info.window_calls_seen as usize, model.window.len());
    prop_assert_eq!(info.probes_in_flight, model.probes());
    prop_assert!(info.probes_in_flight <= model.s.half_open_max_probes);
    prop_assert_eq!(info.permits.len(), model.permits.len());
    let alarmed = sim
        .state
        .alarms
        .iter()
        .any(|(at, _)| *at == model.open_until_ms);
    prop_assert_eq!(
        alarmed,
        model.state == BreakerState::Open,
        "alarm while open"
    );
    sim.state.check_indexes().map_err(TestCaseError::fail)?;
    // A restart keeps the state, the counts and the probes in flight.
    let restored = restored_at(sim);
    prop_assert_eq!(&restored.alarms, &sim.state.alarms, "the alarm is re-armed");
    let Ok(Reply::BreakerDescription(again)) = restored.breaker_describe(restored.now_ms(), "db")
    else {
        return Err(TestCaseError::fail("no breaker after restore"));
    };
    // Exactly: the leases of its permits and its watchers too.
    prop_assert_eq!(again, info);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0008),
        ..ProptestConfig::default()
    })]

    /// Whatever the calls, outcomes, deaths and operators do, the breaker
    /// is where its rules say, never lets more probes through than allowed,
    /// never admits a call while open, tells its watcher every change, and
    /// comes back the same after a restart.
    #[test]
    fn the_breaker_follows_its_rules(
        settings in arb_settings(),
        ops in proptest::collection::vec(arb_op(), 1..80),
    ) {
        let mut sim = Sim::new();
        let watcher_session = sim.session(3_600_000);
        let mut sessions: Vec<SessionId> = (0..3).map(|_| sim.session(3_600_000)).collect();
        sim.allow_with(watcher_session, settings);
        let mut model = Model {
            s: settings.normalized().unwrap(),
            state: BreakerState::Closed,
            era: 0,
            consecutive: 0,
            window: VecDeque::new(),
            successes: 0,
            open_until_ms: 0,
            permits: BTreeMap::new(),
            changes: Vec::new(),
        };
        // The setup's permit, never recorded.
        let setup = *sim.breaker().permits.first().map(|p| &p.fencing_token).unwrap();
        model.permits.insert(setup, (usize::MAX, 0));
        let (watcher, first) = sim.watch(watcher_session);
        prop_assert!(matches!(first, Ok(Reply::BreakerChanged(_))));
        let mut heard = Vec::new();
        for op in &ops {
            let events = match *op {
                Op::Allow { session } => {
                    model.catch_up(sim.now_ms);
                    let (reply, events) = sim.run(Command::BreakerAllow {
                        session_id: sessions[session],
                        name: "db".into(),
                        settings: None,
                        acquire_id: 0,
                    });
                    let Ok(Reply::BreakerVerdict(verdict)) = reply else {
                        return Err(TestCaseError::fail(format!("allow: {reply:?}")));
                    };
                    prop_assert_eq!(verdict.state, model.state);
                    prop_assert_eq!(verdict.permit.is_some(), model.admits());
                    if let Some((token, probe)) = verdict.permit {
                        prop_assert_eq!(probe, model.state == BreakerState::HalfOpen);
                        model.permits.insert(token, (session, model.era));
                    }
                    events
                }
                Op::Record { pick, failed } => {
                    let mine: Vec<_> = (model.permits.iter())
                        .filter(|(_, (s, _))| *s != usize::MAX)
                        .map(|(t, (s, e))| (*t, *s, *e))
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let (token, session, era) = mine[pick % mine.len()];
                    model.permits.remove(&token);
                    let (reply, events) = sim.record(sessions[session], token, failed);
                    let counted = era == model.era
                        && matches!(model.state, BreakerState::Closed | BreakerState::HalfOpen);
                    if counted {
                        model.outcome(failed, sim.now_ms);
                    }
                    prop_assert_eq!(
                        reply,
                        Ok(Reply::BreakerRecorded { state: model.state, counted })
                    );
                    events
                }
                Op::Close { session } => {
                    model.permits.retain(|_, (s, _)| *s != session);
                    let (reply, events) = sim.close(sessions[session]);
                    reply.unwrap();
                    sessions[session] = sim.session(3_600_000);
                    events
                }
                Op::Control(action) => {
                    let (reply, events) = sim.run(Command::BreakerControl {
                        name: "db".into(),
                        action,
                    });
                    let to = match action {
                        BreakerAction::ForceOpen => BreakerState::ForcedOpen,
                        BreakerAction::ForceClose => BreakerState::ForcedClosed,
                        BreakerAction::Reset => BreakerState::Closed,
                    };
                    // Forcing it into the forced state it is in is a no-op.
                    if model.state != to || to == BreakerState::Closed {
                        model.turn(to, sim.now_ms);
                    }
                    prop_assert_eq!(reply, Ok(Reply::BreakerStateIs(to)));
                    events
                }
                Op::Advance { ms } => {
                    let now_ms = sim.now_ms + ms;
                    let events = sim.tick_at(now_ms);
                    model.catch_up(now_ms);
                    events
                }
            };
            for (to, event) in events {
                prop_assert_eq!(to, watcher, "only the watcher hears events");
                let Ok(Reply::BreakerChanged(change)) = event else {
                    return Err(TestCaseError::fail(format!("event: {event:?}")));
                };
                heard.push(change.state);
            }
            check(&mut sim, &model)?;
        }
        prop_assert_eq!(heard, model.changes, "the watcher heard every change in order");
    }
}

#[test]
fn deleting_a_breaker_drops_its_permits_and_ends_its_watchers() {
    let mut sim = Sim::new();
    let a = sim.session(TTL);
    let (token, _) = sim.allow_with(a, SEED).permit.unwrap();
    let (watcher, _) = sim.watch(a);
    for _ in 0..3 {
        sim.call(a, true);
    }
    let (reply, events) = sim.run(Command::BreakerDelete { name: "db".into() });
    assert_eq!(
        reply,
        Ok(Reply::Deleted {
            waiters_ended: 1,
            holds_dropped: 1
        })
    );
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0, code(&events[0].1)),
        (watcher, Some(Code::NotFound))
    );
    assert_eq!(sim.breaker().settings, None);
    assert_eq!(code(&sim.record(a, token, false).0), Some(Code::NotFound));
    assert_eq!(
        sim.state.next_deadline_ms(),
        Some(TTL),
        "the open alarm is gone"
    );
    assert!(!sim
        .store
        .keys()
        .any(|k| k.starts_with(b"breaker/") || k.starts_with(b"hold/")));
    sim.state.check_indexes().unwrap();
    let missing = sim.apply(Command::BreakerDelete { name: "db".into() });
    assert_eq!(code(&missing), Some(Code::NotFound));
}
