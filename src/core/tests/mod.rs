//! Tests of the pure core, all with simulated time (`now_ms` is just a
//! number we pass in).
//!
//! - unit tests: one rule each (grants, FIFO, timeouts, cancel, leases,
//!   close, errors, limits, retries, fencing, deadlines);
//! - restore: the changes of an `Outcome` collected into a map (a fake
//!   store) must rebuild the same holders, sessions and counters;
//! - a property test: random command sequences checked step by step against
//!   an independent model of the lock rules, plus explicit invariants (one
//!   holder per lock, tokens strictly increase, every queued waiter ends
//!   exactly once) and a restore round trip after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseError};

use super::lock::LockInfo;
use super::*;
use crate::proto::store as pb;
use prost::Message;

// --- harness ---------------------------------------------------------------

type Store = BTreeMap<Vec<u8>, Vec<u8>>;
type Events = Vec<(WaiterId, Result<Reply>)>;

/// Applies changes to the fake store the way a real store would.
fn persist(store: &mut Store, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Put { key, value } => {
                store.insert(key.clone(), value.clone());
            }
            Change::Delete { key } => {
                store.remove(key);
            }
        }
    }
}

/// A `State` driven at simulated times, with every change persisted into a
/// fake store as the engine does (the checkpoint with every batch that
/// changed something). With a `twin` (see `exact`), every command and tick
/// also runs on a state restored from that store, which must behave the
/// same.
struct Sim {
    state: State,
    now_ms: u64,
    store: Store,
    next_waiter: u64,
    twin: Option<State>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Sim {
        Sim {
            state: State::new(limits),
            now_ms: 0,
            store: Store::new(),
            next_waiter: 0,
            twin: None,
        }
    }

    /// Moves the clock without ticking (commands at this time follow).
    fn at(&mut self, now_ms: u64) {
        assert!(now_ms >= self.now_ms, "tests never move time backwards");
        self.now_ms = now_ms;
    }

    /// Runs a command at the current time: its reply and the events.
    fn run(&mut self, command: Command) -> (Result<Reply>, Events) {
        let mut out = Outcome::default();
        let twin_command = self.twin.is_some().then(|| command.clone());
        let reply = self.state.apply(self.now_ms, command, &mut out);
        self.persist(&out);
        if let Some(command) = twin_command {
            self.twin_apply(command, &reply, &out);
        }
        (reply, out.events)
    }

    /// What the engine writes for a step: its changes, and the checkpoint
    /// if there were any.
    fn persist(&mut self, out: &Outcome) {
        if !out.changes.is_empty() {
            persist(&mut self.store, &out.changes);
            persist(&mut self.store, &[self.state.checkpoint()]);
        }
    }

    /// Runs a command that must not cause events for anyone else.
    fn apply(&mut self, command: Command) -> Result<Reply> {
        let (reply, events) = self.run(command);
        assert_eq!(events, vec![], "unexpected events");
        reply
    }

    /// Answers a query at the current time.
    fn query(&self, query: Query) -> Result<Reply> {
        self.state.query(self.now_ms, &query)
    }

    /// Moves the clock to `now_ms` and ticks.
    fn tick_at(&mut self, now_ms: u64) -> Events {
        self.at(now_ms);
        let mut out = Outcome::default();
        self.state.tick(now_ms, &mut out);
        self.persist(&out);
        if self.twin.is_some() {
            self.twin_tick(&out);
        }
        out.events
    }

    fn session(&mut self, ttl_ms: u64) -> SessionId {
        let command = Command::CreateSession {
            ttl_ms,
            client_name: format!("client-{}", self.state.session_count()),
            host: "127.0.0.1:1".into(),
            owner: String::new(),
        };
        match self.apply(command) {
            Ok(Reply::SessionCreated {
                session_id,
                ttl_ms: granted,
            }) => {
                assert_eq!(granted, ttl_ms);
                session_id
            }
            other => panic!("create session: {other:?}"),
        }
    }

    fn waiter(&mut self) -> WaiterId {
        self.next_waiter += 1;
        WaiterId(self.next_waiter)
    }

    fn acquire_with(
        &mut self,
        session_id: SessionId,
        name: &str,
        timeout_ms: Option<u64>,
        acquire_id: u64,
    ) -> (WaiterId, Result<Reply>) {
        let waiter = self.waiter();
        let reply = self.apply(Command::LockAcquire {
            session_id,
            name: name.to_owned(),
            waiter,
            timeout_ms,
            acquire_id,
        });
        (waiter, reply)
    }

    fn acquire(
        &mut self,
        session_id: SessionId,
        name: &str,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>) {
        self.acquire_with(session_id, name, timeout_ms, 0)
    }

    /// Acquires a lock that must be granted at once.
    fn take(&mut self, session_id: SessionId, name: &str) -> FencingToken {
        match self.acquire(session_id, name, None).1 {
            Ok(Reply::Granted { fencing_token }) => fencing_token,
            other => panic!("take {name:?}: {other:?}"),
        }
    }

    /// Queues on a lock that must be held: returns the waiter.
    fn queue(&mut self, session_id: SessionId, name: &str, timeout_ms: Option<u64>) -> WaiterId {
        let (waiter, reply) = self.acquire(session_id, name, timeout_ms);
        assert!(
            matches!(reply, Ok(Reply::Queued { .. })),
            "queue on {name:?}: {reply:?}"
        );
        waiter
    }

    fn release(
        &mut self,
        session_id: SessionId,
        name: &str,
        fencing_token: FencingToken,
    ) -> (Result<Reply>, Events) {
        self.run(Command::Release {
            kind: Kind::Lock,
            session_id,
            name: name.to_owned(),
            fencing_token,
        })
    }

    fn keep_alive(&mut self, session_id: SessionId) -> Result<Reply> {
        self.apply(Command::KeepAlive {
            session_id,
            notices_seen_through: 0,
        })
    }

    fn close(&mut self, session_id: SessionId) -> (Result<Reply>, Events) {
        self.run(Command::CloseSession {
            session_id,
            reason: String::new(),
        })
    }

    fn describe(&self, name: &str) -> LockInfo {
        describe(&self.state, self.now_ms, name)
    }

    fn holder(&self, name: &str) -> Option<(SessionId, FencingToken)> {
        self.describe(name)
            .holder
            .map(|h| (h.session_id, h.fencing_token))
    }

    fn waiting_sessions(&self, name: &str) -> Vec<SessionId> {
        self.describe(name)
            .waiters
            .iter()
            .map(|w| w.session_id)
            .collect()
    }
}

fn describe(state: &State, now_ms: u64, name: &str) -> LockInfo {
    let query = Query::LockDescribe {
        name: name.to_owned(),
    };
    match state.query(now_ms, &query) {
        Ok(Reply::LockDescription(info)) => info,
        other => panic!("describe {name:?}: {other:?}"),
    }
}

/// The state's `List` lines at its own clock.
fn listing(state: &State, kind: Option<Kind>, prefix: &str) -> Vec<Summary> {
    state.list(state.now_ms(), kind, prefix)
}

fn code(reply: &Result<Reply>) -> Option<Code> {
    reply.as_ref().err().map(|r| r.code)
}

fn granted(fencing_token: FencingToken) -> Result<Reply> {
    Ok(Reply::Granted { fencing_token })
}

fn token_of(reply: &Result<Reply>) -> FencingToken {
    match reply {
        Ok(Reply::Granted { fencing_token }) => *fencing_token,
        other => panic!("not a grant: {other:?}"),
    }
}

/// Events reduced to what a client sees: the reply or the status code.
fn codes(events: &Events) -> Vec<(WaiterId, std::result::Result<Reply, Code>)> {
    events
        .iter()
        .map(|(w, r)| (*w, r.clone().map_err(|e| e.code)))
        .collect()
}

// --- unit tests: locks -------------------------------------------------------

#[test]
fn a_free_lock_is_granted_at_once() {
    let mut sim = Sim::new();
    let s = sim.session(10_000);
    let (_, reply) = sim.acquire(s, "db", None);
    assert_eq!(reply, granted(1));
    let info = sim.describe("db");
    let holder = info.holder.expect("held");
    assert_eq!((holder.session_id, holder.fencing_token), (s, 1));
    assert_eq!(holder.lease_left_ms, 10_000);
    assert!(info.waiters.is_empty());
    assert_eq!(sim.state.hold_count(), 1);
    assert_eq!(sim.state.waiter_count(), 0);
    // A try-once on a free lock is granted too.
    let (_, reply) = sim.acquire(s, "other", Some(0));
    assert_eq!(reply, granted(2));
}

#[test]
fn waiters_are_granted_in_fifo_order() {
    let mut sim = Sim::new();
    let owner = sim.session(60_000);
    let (s1, s2, s3) = (
        sim.session(60_000),
        sim.session(60_000),
        sim.session(60_000),
    );
    let t0 = sim.take(owner, "db");
    let mut waiters = Vec::new();
    for (i, s) in [s1, s2, s3].into_iter().enumerate() {
        let (w, reply) = sim.acquire(s, "db", None);
        assert_eq!(
            reply,
            Ok(Reply::Queued {
                position: i as u32 + 1
            })
        );
        waiters.push(w);
    }
    assert_eq!(sim.waiting_sessions("db"), vec![s1, s2, s3]);

    let (reply, events) = sim.release(owner, "db", t0);
    assert_eq!(reply, Ok(Reply::Done));
    assert_eq!(events, vec![(waiters[0], granted(t0 + 1))]);
    assert_eq!(sim.holder("db"), Some((s1, t0 + 1)));
    assert_eq!(sim.waiting_sessions("db"), vec![s2, s3]);

    let (_, events) = sim.release(s1, "db", t0 + 1);
    assert_eq!(events, vec![(waiters[1], granted(t0 + 2))]);
    let (_, events) = sim.release(s2, "db", t0 + 2);
    assert_eq!(events, vec![(waiters[2], granted(t0 + 3))]);
    let (_, events) = sim.release(s3, "db", t0 + 3);
    assert_eq!(events, vec![]);
    // A lock nobody holds or awaits vanishes.
    let listing = sim.query(Query::List {
        kind: None,
        prefix: String::new(),
    });
    assert_eq!(listing, Ok(Reply::Listing(vec![])));
}

#[test]
fn try_once_on_a_held_lock_is_deadline_exceeded_and_queues_nothing() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(10_000), sim.session(20_000));
    let t = sim.take(a, "db");
    let (_, reply) = sim.acquire(b, "db", Some(0));
    assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
    assert!(sim.describe("db").waiters.is_empty());
    assert_eq!(sim.state.waiter_count(), 0);
    // Only the leases are deadlines: the refused try left no wait behind.
    assert_eq!(sim.state.next_deadline_ms(), Some(10_000));
    let (_, events) = sim.release(a, "db", t);
    assert_eq!(events, vec![]);
    assert_eq!(sim.holder("db"), None);
}

#[test]
fn a_wait_deadline_passing_in_tick_times_out_the_waiter() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(60_000), sim.session(60_000));
    let t = sim.take(a, "db");
    sim.at(100);
    let w = sim.queue(b, "db", Some(500));
    assert_eq!(sim.state.next_deadline_ms(), Some(600));
    assert_eq!(sim.tick_at(599), vec![]);
    assert_eq!(sim.waiting_sessions("db"), vec![b]);

    let events = sim.tick_at(600);
    assert_eq!(codes(&events), vec![(w, Err(Code::DeadlineExceeded))]);
    assert!(sim.describe("db").waiters.is_empty());
    assert_eq!(sim.state.waiter_count(), 0);
    assert_eq!(sim.state.next_deadline_ms(), Some(60_000));
    // Nobody is left to grant.
    let (_, events) = sim.release(a, "db", t);
    assert_eq!(events, vec![]);
    assert_eq!(sim.tick_at(10_000), vec![]);
}

#[test]
fn cancel_removes_a_waiter_and_the_next_still_gets_the_lock() {
    let mut sim = Sim::new();
    let (a, b, c) = (
        sim.session(60_000),
        sim.session(60_000),
        sim.session(60_000),
    );
    let t = sim.take(a, "db");
    let wb = sim.queue(b, "db", Some(1_000));
    let wc = sim.queue(c, "db", Some(5_000));
    assert_eq!(sim.state.next_deadline_ms(), Some(1_000));

    assert_eq!(sim.apply(Command::Cancel { waiter: wb }), Ok(Reply::Done));
    assert_eq!(sim.waiting_sessions("db"), vec![c]);
    assert_eq!(sim.state.waiter_count(), 1);
    assert_eq!(sim.state.next_deadline_ms(), Some(5_000));

    let (_, events) = sim.release(a, "db", t);
    assert_eq!(events, vec![(wc, granted(t + 1))]);
    // Cancelling a waiter that is gone (cancelled or granted) does nothing.
    assert_eq!(sim.apply(Command::Cancel { waiter: wb }), Ok(Reply::Done));
    assert_eq!(sim.apply(Command::Cancel { waiter: wc }), Ok(Reply::Done));
    assert_eq!(sim.holder("db"), Some((c, t + 1)));
    // The cancelled waiter's deadline no longer fires.
    assert_eq!(sim.tick_at(1_000), vec![]);
}

#[test]
fn an_expired_lease_hands_its_lock_to_the_next_waiter_and_drops_its_waiters() {
    let mut sim = Sim::new();
    let a = sim.session(1_000);
    let (b, c) = (sim.session(10_000), sim.session(10_000));
    let ta = sim.take(a, "db");
    let tc = sim.take(c, "other");
    let wa = sim.queue(a, "other", None);
    let wb = sim.queue(b, "db", None);
    assert_eq!(sim.state.next_deadline_ms(), Some(1_000));
    assert_eq!(sim.tick_at(999), vec![]);

    let events = sim.tick_at(1_000);
    assert_eq!(
        codes(&events),
        vec![
            (wa, Err(Code::FailedPrecondition)),
            (
                wb,
                Ok(Reply::Granted {
                    fencing_token: tc + 1
                })
            ),
        ]
    );
    assert!(tc > ta);
    assert_eq!(sim.holder("db"), Some((b, tc + 1)));
    assert_eq!(sim.holder("other"), Some((c, tc)));
    assert!(sim.describe("other").waiters.is_empty());
    assert_eq!(code(&sim.keep_alive(a)), Some(Code::NotFound));
    assert_eq!(sim.state.session_count(), 2);
    assert_eq!(sim.state.next_deadline_ms(), Some(10_000));
}

#[test]
fn keep_alive_postpones_expiry() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(1_000), sim.session(100_000));
    let t = sim.take(a, "db");
    let wb = sim.queue(b, "db", None);
    sim.at(800);
    assert_eq!(
        sim.keep_alive(a),
        Ok(Reply::SessionRenewed {
            ttl_ms: 1_000,
            lost: vec![]
        })
    );
    assert_eq!(sim.state.next_deadline_ms(), Some(1_800));
    assert_eq!(sim.tick_at(1_000), vec![]);
    let holder = sim.describe("db").holder.expect("still held");
    assert_eq!(holder.lease_left_ms, 800);
    assert_eq!(holder.held_ms, 1_000);
    assert_eq!(sim.tick_at(1_799), vec![]);
    assert_eq!(sim.tick_at(1_800), vec![(wb, granted(t + 1))]);
    assert_eq!(sim.holder("db"), Some((b, t + 1)));
}

#[test]
fn close_session_releases_every_hold_and_counts_them() {
    let mut sim = Sim::new();
    let (a, b, c, d) = (
        sim.session(60_000),
        sim.session(60_000),
        sim.session(60_000),
        sim.session(60_000),
    );
    let tx = sim.take(a, "x");
    let ty = sim.take(a, "y");
    let tz = sim.take(b, "z");
    let wa = sim.queue(a, "z", None);
    let wc = sim.queue(c, "x", None);
    let wd = sim.queue(d, "y", Some(30_000));

    let (reply, events) = sim.close(a);
    assert_eq!(reply, Ok(Reply::SessionClosed { released: 2 }));
    assert_eq!(
        codes(&events),
        vec![
            (wa, Err(Code::FailedPrecondition)),
            (
                wc,
                Ok(Reply::Granted {
                    fencing_token: tz + 1
                })
            ),
            (
                wd,
                Ok(Reply::Granted {
                    fencing_token: tz + 2
                })
            ),
        ]
    );
    assert!(tx < ty && ty < tz);
    assert_eq!(sim.holder("x"), Some((c, tz + 1)));
    assert_eq!(sim.holder("y"), Some((d, tz + 2)));
    assert_eq!(sim.holder("z"), Some((b, tz)));
    assert!(sim.describe("z").waiters.is_empty());
    assert_eq!(code(&sim.close(a).0), Some(Code::NotFound));
    assert_eq!(code(&sim.keep_alive(a)), Some(Code::NotFound));
    // Closing a session that holds nothing releases nothing.
    let e = sim.session(1_000);
    assert_eq!(
        sim.close(e),
        (Ok(Reply::SessionClosed { released: 0 }), vec![])
    );
    assert_eq!(sim.state.session_count(), 3);
    assert_eq!(sim.state.hold_count(), 3);
}

#[test]
fn a_session_queued_behind_its_own_hold_is_cleaned_up_on_close() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(60_000), sim.session(60_000));
    let t = sim.take(a, "db");
    // Locks are not reentrant: without a matching acquire_id the same
    // session queues behind itself.
    let wa = sim.queue(a, "db", None);
    let wb = sim.queue(b, "db", None);
    let (reply, events) = sim.close(a);
    assert_eq!(reply, Ok(Reply::SessionClosed { released: 1 }));
    assert_eq!(
        codes(&events),
        vec![
            (wa, Err(Code::FailedPrecondition)),
            (
                wb,
                Ok(Reply::Granted {
                    fencing_token: t + 1
                })
            ),
        ]
    );
}

#[test]
fn releasing_what_you_do_not_hold_is_failed_precondition() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(60_000), sim.session(60_000));
    let t = sim.take(a, "db");
    // Another session, naming the right token.
    assert_eq!(
        code(&sim.release(b, "db", t).0),
        Some(Code::FailedPrecondition)
    );
    // The holder, naming a wrong token.
    assert_eq!(
        code(&sim.release(a, "db", t + 1).0),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(
        code(&sim.release(a, "db", 0).0),
        Some(Code::FailedPrecondition)
    );
    // A lock that is not held at all.
    assert_eq!(
        code(&sim.release(a, "free", t).0),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(sim.holder("db"), Some((a, t)));

    assert_eq!(sim.release(a, "db", t), (Ok(Reply::Done), vec![]));
    // Releasing twice: no longer held.
    assert_eq!(
        code(&sim.release(a, "db", t).0),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(sim.state.hold_count(), 0);
}

#[test]
fn an_unknown_session_is_not_found() {
    let mut sim = Sim::new();
    let a = sim.session(60_000);
    let t = sim.take(a, "db");
    let closed = sim.session(60_000);
    sim.close(closed).0.unwrap();
    for ghost in [closed, 42] {
        assert_eq!(code(&sim.keep_alive(ghost)), Some(Code::NotFound));
        assert_eq!(code(&sim.close(ghost).0), Some(Code::NotFound));
        for timeout_ms in [None, Some(0), Some(1_000)] {
            for name in ["db", "free"] {
                let (_, reply) = sim.acquire(ghost, name, timeout_ms);
                assert_eq!(code(&reply), Some(Code::NotFound), "acquire {name}");
            }
        }
        assert_eq!(code(&sim.release(ghost, "db", t).0), Some(Code::NotFound));
        assert_eq!(code(&sim.release(ghost, "free", t).0), Some(Code::NotFound));
    }
    // Nothing was created or queued on behalf of a ghost.
    assert_eq!(sim.holder("db"), Some((a, t)));
    assert_eq!(sim.holder("free"), None);
    assert_eq!(sim.state.waiter_count(), 0);
    assert_eq!(sim.state.hold_count(), 1);
}

#[test]
fn bad_lock_names_are_invalid_argument() {
    let mut sim = Sim::new();
    let a = sim.session(60_000);
    let bad = [
        String::new(),
        "x".repeat(257),
        "é".repeat(129), // 258 bytes in 129 chars
        "line\nbreak".to_owned(),
        "tab\there".to_owned(),
        "nul\0".to_owned(),
        "del\u{7f}".to_owned(),
        "c1\u{85}".to_owned(),
    ];
    for name in &bad {
        let (_, reply) = sim.acquire(a, name, None);
        assert_eq!(
            code(&reply),
            Some(Code::InvalidArgument),
            "acquire {name:?}"
        );
        let reply = sim.release(a, name, 1).0;
        assert_eq!(
            code(&reply),
            Some(Code::InvalidArgument),
            "release {name:?}"
        );
        let reply = sim.query(Query::LockDescribe { name: name.clone() });
        assert_eq!(
            code(&reply),
            Some(Code::InvalidArgument),
            "describe {name:?}"
        );
    }
    assert_eq!(sim.state.hold_count(), 0);
    // The edges of what is allowed.
    let good = [
        "x".repeat(256),
        "é".repeat(128),
        "名前 with space".to_owned(),
    ];
    for name in &good {
        let (_, reply) = sim.acquire(a, name, None);
        assert!(matches!(reply, Ok(Reply::Granted { .. })), "{name:?}");
    }
}

#[test]
fn session_ttl_and_name_outside_the_limits_are_invalid_argument() {
    let mut sim = Sim::new();
    let limits = Limits::default();
    for ttl_ms in [
        0,
        limits.session_ttl_ms_min - 1,
        limits.session_ttl_ms_max + 1,
        u64::MAX,
    ] {
        let reply = sim.apply(Command::CreateSession {
            ttl_ms,
            client_name: String::new(),
            host: String::new(),
            owner: String::new(),
        });
        assert_eq!(code(&reply), Some(Code::InvalidArgument), "ttl {ttl_ms}");
    }
    let reply = sim.apply(Command::CreateSession {
        ttl_ms: 10_000,
        client_name: "n".repeat(257),
        host: String::new(),
        owner: String::new(),
    });
    assert_eq!(code(&reply), Some(Code::InvalidArgument));
    assert_eq!(sim.state.session_count(), 0);
    assert!(sim.store.is_empty(), "a refused command persists nothing");
    sim.session(limits.session_ttl_ms_min);
    sim.session(limits.session_ttl_ms_max);
    assert_eq!(sim.state.session_count(), 2);
}

#[test]
fn the_session_limit_is_resource_exhausted() {
    let mut sim = Sim::with_limits(Limits {
        sessions_max: 2,
        ..Limits::default()
    });
    let a = sim.session(10_000);
    sim.session(10_000);
    let reply = sim.apply(Command::CreateSession {
        ttl_ms: 10_000,
        client_name: String::new(),
        host: String::new(),
        owner: String::new(),
    });
    assert_eq!(code(&reply), Some(Code::ResourceExhausted));
    sim.close(a).0.unwrap();
    sim.session(10_000);
}

#[test]
fn the_waiter_limit_is_resource_exhausted() {
    let mut sim = Sim::with_limits(Limits {
        waiters_per_primitive_max: 2,
        ..Limits::default()
    });
    let s: Vec<SessionId> = (0..5).map(|_| sim.session(60_000)).collect();
    sim.take(s[0], "db");
    let w1 = sim.queue(s[1], "db", None);
    sim.queue(s[2], "db", None);
    let (_, reply) = sim.acquire(s[3], "db", None);
    assert_eq!(code(&reply), Some(Code::ResourceExhausted));
    // A try-once is refused for being held, before the limit matters.
    let (_, reply) = sim.acquire(s[3], "db", Some(0));
    assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
    assert_eq!(sim.waiting_sessions("db"), vec![s[1], s[2]]);
    // The limit is per lock.
    sim.take(s[4], "other");
    sim.queue(s[3], "other", None);
    // Room again once a waiter leaves.
    sim.apply(Command::Cancel { waiter: w1 }).unwrap();
    let (_, reply) = sim.acquire(s[3], "db", None);
    assert_eq!(reply, Ok(Reply::Queued { position: 2 }));
}

#[test]
fn a_retry_with_the_same_acquire_id_gets_the_same_grant() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(60_000), sim.session(60_000));
    let (_, reply) = sim.acquire_with(a, "db", None, 7);
    let t = token_of(&reply);
    let store_before = sim.store.clone();
    for timeout_ms in [None, Some(0), Some(5_000)] {
        let (_, reply) = sim.acquire_with(a, "db", timeout_ms, 7);
        assert_eq!(reply, granted(t));
    }
    assert_eq!(sim.store, store_before, "a retry changes nothing");
    assert_eq!(sim.state.waiter_count(), 0);
    assert_eq!(sim.state.hold_count(), 1);
    // Another acquire_id, or none, is a new request: it waits.
    assert_eq!(
        code(&sim.acquire_with(a, "db", Some(0), 8).1),
        Some(Code::DeadlineExceeded)
    );
    assert_eq!(
        code(&sim.acquire_with(a, "db", Some(0), 0).1),
        Some(Code::DeadlineExceeded)
    );
    // Acquire ids belong to a session.
    let (wb, reply) = sim.acquire_with(b, "db", None, 7);
    assert_eq!(reply, Ok(Reply::Queued { position: 1 }));

    let (_, events) = sim.release(a, "db", t);
    assert_eq!(events, vec![(wb, granted(t + 1))]);
    // The grant is over: the old id no longer matches.
    assert_eq!(
        code(&sim.acquire_with(a, "db", Some(0), 7).1),
        Some(Code::DeadlineExceeded)
    );
    assert_eq!(sim.acquire_with(b, "db", Some(0), 7).1, granted(t + 1));
}

#[test]
fn release_undelivered_frees_the_lock_and_grants_the_next() {
    let mut sim = Sim::new();
    let (a, b, c) = (
        sim.session(60_000),
        sim.session(60_000),
        sim.session(60_000),
    );
    let ta = sim.take(a, "db");
    let wb = sim.queue(b, "db", None);
    let wc = sim.queue(c, "db", None);
    let (_, events) = sim.release(a, "db", ta);
    assert_eq!(events, vec![(wb, granted(ta + 1))]);
    // b's stream was gone: the engine gives the grant back.
    let (reply, events) = sim.run(Command::ReleaseUndelivered {
        fencing_token: ta + 1,
    });
    assert_eq!(reply, Ok(Reply::Done));
    assert_eq!(events, vec![(wc, granted(ta + 2))]);
    assert_eq!(sim.holder("db"), Some((c, ta + 2)));
    // A stale or unknown token releases nothing.
    for fencing_token in [ta, ta + 1, 999] {
        let reply = sim.apply(Command::ReleaseUndelivered { fencing_token });
        assert_eq!(reply, Ok(Reply::Done));
    }
    assert_eq!(sim.holder("db"), Some((c, ta + 2)));
    // An immediate grant can be given back too.
    let tb = sim.take(b, "other");
    sim.apply(Command::ReleaseUndelivered { fencing_token: tb })
        .unwrap();
    assert_eq!(sim.holder("other"), None);
    assert_eq!(sim.state.hold_count(), 1);
}

#[test]
fn fencing_tokens_strictly_increase_across_all_grants() {
    let mut sim = Sim::new();
    let mut tokens = Vec::new();
    fn note(events: &Events, tokens: &mut Vec<FencingToken>) {
        tokens.extend(
            events
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok()?.granted_token()),
        );
    }
    let (a, b, c) = (sim.session(1_000), sim.session(5_000), sim.session(5_000));
    tokens.push(sim.take(a, "x"));
    tokens.push(sim.take(b, "y"));
    sim.queue(b, "x", None);
    sim.queue(c, "x", None);
    sim.queue(c, "y", None);
    // a expires: x goes to b.
    let events = sim.tick_at(1_000);
    note(&events, &mut tokens);
    // b closes: x goes to c, y goes to c.
    let (_, events) = sim.close(b);
    note(&events, &mut tokens);
    let (x, y) = (sim.holder("x").unwrap(), sim.holder("y").unwrap());
    assert_eq!((x.0, y.0), (c, c));
    let (_, events) = sim.release(c, "x", x.1);
    note(&events, &mut tokens);
    tokens.push(sim.take(c, "x"));
    tokens.push(sim.take(c, "z"));
    assert_eq!(tokens.len(), 7);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens {tokens:?} must strictly increase"
    );
}

#[test]
fn next_deadline_follows_leases_and_wait_deadlines() {
    let mut sim = Sim::new();
    assert_eq!(sim.state.next_deadline_ms(), None);
    let a = sim.session(5_000);
    assert_eq!(sim.state.next_deadline_ms(), Some(5_000));
    sim.at(1_000);
    let b = sim.session(2_000);
    assert_eq!(sim.state.next_deadline_ms(), Some(3_000));
    sim.take(a, "db");
    let w = sim.queue(b, "db", Some(500));
    assert_eq!(sim.state.next_deadline_ms(), Some(1_500));
    assert_eq!(
        codes(&sim.tick_at(1_500)),
        vec![(w, Err(Code::DeadlineExceeded))]
    );
    assert_eq!(sim.state.next_deadline_ms(), Some(3_000));
    sim.at(2_500);
    sim.keep_alive(b).unwrap();
    assert_eq!(sim.state.next_deadline_ms(), Some(4_500));
    // A wait without a timeout adds no deadline.
    sim.queue(b, "db", None);
    assert_eq!(sim.state.next_deadline_ms(), Some(4_500));
    sim.close(b).0.unwrap();
    assert_eq!(sim.state.next_deadline_ms(), Some(5_000));
    sim.close(a).0.unwrap();
    assert_eq!(sim.state.next_deadline_ms(), None);
}

#[test]
fn a_lease_expiring_in_the_same_tick_never_receives_a_grant() {
    // a holds; b waits first, c second. a and b expire at the same moment:
    // the lock must go to c, not to b, whose lease is over as well.
    let mut sim = Sim::new();
    let (a, b) = (sim.session(1_000), sim.session(1_000));
    let c = sim.session(5_000);
    let t = sim.take(a, "db");
    let wb = sim.queue(b, "db", None);
    let wc = sim.queue(c, "db", None);
    let events = sim.tick_at(1_000);
    assert_eq!(
        codes(&events),
        vec![
            (wb, Err(Code::FailedPrecondition)),
            (
                wc,
                Ok(Reply::Granted {
                    fencing_token: t + 1
                })
            ),
        ]
    );
    assert_eq!(sim.holder("db"), Some((c, t + 1)));
    assert_eq!(sim.state.session_count(), 1);
}

#[test]
fn describe_and_list_show_holders_waiters_and_times() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(10_000), sim.session(10_000));
    sim.at(100);
    let t = sim.take(a, "jobs/1");
    sim.take(b, "jobs/2");
    sim.at(300);
    sim.queue(b, "jobs/1", None);
    sim.at(1_000);
    let info = sim.describe("jobs/1");
    let holder = info.holder.expect("held");
    assert_eq!(holder.session_id, a);
    assert_eq!(holder.client_name, "client-0");
    assert_eq!(holder.fencing_token, t);
    assert_eq!(holder.held_ms, 900);
    assert_eq!(holder.lease_left_ms, 9_000);
    assert_eq!(info.waiters.len(), 1);
    assert_eq!(info.waiters[0].session_id, b);
    assert_eq!(info.waiters[0].client_name, "client-1");
    assert_eq!(info.waiters[0].waiting_ms, 700);
    assert_eq!(sim.describe("never").holder, None);

    let listing = sim.query(Query::List {
        kind: Some(Kind::Lock),
        prefix: "jobs/".to_owned(),
    });
    let Ok(Reply::Listing(lines)) = listing else {
        panic!("{listing:?}");
    };
    let names: Vec<&str> = lines.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["jobs/1", "jobs/2"]);
    assert!(lines[0].state.contains("1 waiting"), "{}", lines[0].state);
    let listing = sim.query(Query::List {
        kind: None,
        prefix: "jobs/2".to_owned(),
    });
    assert!(matches!(listing, Ok(Reply::Listing(lines)) if lines.len() == 1));
}

// --- restore -----------------------------------------------------------------

/// A history with grants, hand-overs, a release, a close and an expiry.
/// Returns the simulation and every token handed out.
fn history() -> (Sim, Vec<FencingToken>) {
    let mut sim = Sim::new();
    let mut tokens = Vec::new();
    let a = sim.session(2_000);
    let b = sim.session(5_000);
    let c = sim.session(3_000);
    let d = sim.session(1_500);
    let e = sim.session(1_000);
    tokens.push(sim.take(a, "x"));
    tokens.push(sim.take(b, "y"));
    tokens.push(sim.take(d, "z"));
    tokens.push(sim.take(e, "w"));
    sim.queue(c, "x", None);
    sim.queue(a, "y", Some(10_000));
    let wa = sim.queue(a, "z", None);
    sim.at(500);
    let (_, events) = sim.close(d);
    tokens.push(token_of(&events[0].1));
    assert_eq!(events[0].0, wa);
    // a now holds x and z; c waits on x; a waits on y (held by b).
    sim.at(900);
    for s in [a, b, c] {
        sim.keep_alive(s).unwrap();
    }
    // e expires at 1000 holding w.
    assert_eq!(sim.tick_at(1_000), vec![]);
    assert_eq!(sim.holder("w"), None);
    tokens.push(sim.take(c, "w"));
    let (_, events) = sim.release(c, "w", *tokens.last().unwrap());
    assert_eq!(events, vec![]);
    sim.at(1_200);
    let z = sim.holder("z").unwrap().1;
    assert_eq!(sim.release(a, "z", z), (Ok(Reply::Done), vec![]));
    tokens.push(sim.take(b, "v"));
    assert_eq!(sim.holder("x").map(|h| h.0), Some(a));
    assert_eq!(sim.waiting_sessions("x"), vec![c]);
    (sim, tokens)
}

const HISTORY_NAMES: [&str; 5] = ["v", "w", "x", "y", "z"];

#[test]
fn restore_rebuilds_holders_sessions_and_counters() {
    let (mut sim, tokens) = history();
    // The engine writes the checkpoint with every batch.
    let mut store = sim.store.clone();
    persist(&mut store, &[sim.state.checkpoint()]);
    let mut restored = State::restore(Limits::default(), store).expect("restore");
    let now = sim.now_ms;
    assert_eq!(restored.now_ms(), now);
    assert_eq!(restored.session_count(), sim.state.session_count());
    assert_eq!(restored.hold_count(), sim.state.hold_count());
    assert_eq!(restored.waiter_count(), 2, "c waits on x, a on y");
    assert_eq!(restored.next_deadline_ms(), sim.state.next_deadline_ms());
    // After a restart the engine applies Resume: the waiters end, and every
    // lease starts over.
    let mut out = Outcome::default();
    assert_eq!(
        restored.apply(now, Command::Resume, &mut out),
        Ok(Reply::Done)
    );
    let ended: Vec<Option<Code>> = out.events.iter().map(|(_, e)| code(e)).collect();
    assert_eq!(ended, vec![Some(Code::Unavailable); 2]);
    assert_eq!(restored.waiter_count(), 0);

    let ttl = |s: SessionId| [2_000, 5_000, 3_000, 1_500, 1_000][s as usize - 1];
    for name in HISTORY_NAMES {
        let live = sim.describe(name);
        let back = describe(&restored, now, name);
        assert!(back.waiters.is_empty());
        match (live.holder, back.holder) {
            (None, None) => {}
            (Some(l), Some(r)) => {
                assert_eq!(r.session_id, l.session_id, "{name}");
                assert_eq!(r.fencing_token, l.fencing_token, "{name}");
                assert_eq!(r.client_name, l.client_name, "{name}");
                assert_eq!(r.held_ms, l.held_ms, "{name}");
                // The lease restarts: a full TTL from the restored clock.
                assert_eq!(r.lease_left_ms, ttl(r.session_id), "{name}");
            }
            (l, r) => panic!("{name}: live {l:?}, restored {r:?}"),
        }
    }
    // Every session's lease restarts at the restored clock + its TTL; the
    // shortest of a (2 s), b (5 s), c (3 s) comes first.
    assert_eq!(restored.next_deadline_ms(), Some(now + 2_000));
    // The same sessions exist, with the same TTLs.
    for id in 1..=6 {
        let live = sim.keep_alive(id);
        let mut out = Outcome::default();
        let back = restored.apply(
            now,
            Command::KeepAlive {
                session_id: id,
                notices_seen_through: 0,
            },
            &mut out,
        );
        // How an ended session ended is kept too.
        assert_eq!(back, live, "session {id}");
    }
    // The next grant's token is larger than every earlier one.
    let mut out = Outcome::default();
    let reply = restored.apply(
        now,
        Command::LockAcquire {
            session_id: 2,
            name: "fresh".to_owned(),
            waiter: WaiterId(1),
            timeout_ms: None,
            acquire_id: 0,
        },
        &mut out,
    );
    let fresh = token_of(&reply);
    assert!(tokens.iter().all(|t| *t < fresh), "{fresh} vs {tokens:?}");
    // And a new session id is fresh too.
    let reply = restored.apply(
        now,
        Command::CreateSession {
            ttl_ms: 1_000,
            client_name: String::new(),
            host: String::new(),
            owner: String::new(),
        },
        &mut out,
    );
    assert!(matches!(reply, Ok(Reply::SessionCreated { session_id, .. }) if session_id > 5));
}

#[test]
fn restored_leases_run_from_the_restored_clock_after_resume() {
    let (sim, _) = history();
    // The clock is the one of the last stored counters (written with the
    // last step that changed something, at 1200).
    let mut restored = State::restore(Limits::default(), sim.store.clone()).unwrap();
    let clock = restored.now_ms();
    assert_eq!(clock, 1_200);
    // Restored as they were: a's lease (renewed at 900) ends at 2900.
    assert_eq!(restored.next_deadline_ms(), Some(900 + 2_000));
    let mut out = Outcome::default();
    restored.apply(clock, Command::Resume, &mut out).unwrap();
    assert_eq!(restored.next_deadline_ms(), Some(clock + 2_000));
    // a (ttl 2 s, holding x) survives until clock + 2 s, then lets go.
    let mut out = Outcome::default();
    restored.tick(clock + 1_999, &mut out);
    assert_eq!(restored.session_count(), 3);
    assert_eq!(restored.hold_count(), 3);
    restored.tick(clock + 2_000, &mut out);
    assert_eq!(restored.session_count(), 2);
    assert!(describe(&restored, clock + 2_000, "x").holder.is_none());
    assert!(out.events.is_empty());
    restored.tick(clock + 5_000, &mut out);
    assert_eq!(restored.session_count(), 0);
    assert_eq!(restored.hold_count(), 0);
    assert_eq!(restored.next_deadline_ms(), None);
}

#[test]
fn an_empty_store_restores_an_empty_state() {
    let mut state = State::restore(Limits::default(), Store::new()).unwrap();
    assert_eq!(state.session_count(), 0);
    assert_eq!(state.next_deadline_ms(), None);
    let mut out = Outcome::default();
    let reply = state.apply(
        0,
        Command::CreateSession {
            ttl_ms: 1_000,
            client_name: String::new(),
            host: String::new(),
            owner: String::new(),
        },
        &mut out,
    );
    assert!(matches!(
        reply,
        Ok(Reply::SessionCreated { session_id: 1, .. })
    ));
}

#[test]
fn a_restored_lock_whose_name_is_now_too_long_is_still_released() {
    // Limits are flags: a restart may lower `name_bytes_max` below the
    // length of a name that is already held. A command naming it is bad
    // input now, but the hold must still end with its session, and an
    // undelivered grant must still be given back.
    let mut sim = Sim::new();
    let a = sim.session(1_000);
    let b = sim.session(1_000);
    let ta = sim.take(a, "a-long-lock-name");
    sim.take(b, "another-long-name");
    let mut store = sim.store.clone();
    persist(&mut store, &[sim.state.checkpoint()]);
    let limits = Limits {
        name_bytes_max: 4,
        ..Limits::default()
    };
    let mut restored = State::restore(limits, store).expect("restore");
    assert_eq!(restored.hold_count(), 2);
    let mut out = Outcome::default();
    let reply = restored.apply(
        0,
        Command::Release {
            kind: Kind::Lock,
            session_id: a,
            name: "a-long-lock-name".to_owned(),
            fencing_token: ta,
        },
        &mut out,
    );
    assert_eq!(code(&reply), Some(Code::InvalidArgument));
    restored
        .apply(
            0,
            Command::ReleaseUndelivered { fencing_token: ta },
            &mut out,
        )
        .unwrap();
    assert_eq!(restored.hold_count(), 1);
    restored.tick(1_000, &mut out);
    assert_eq!(restored.session_count(), 0);
    assert_eq!(
        restored.hold_count(),
        0,
        "the expired session's hold is gone"
    );
    let listing = restored.query(
        1_000,
        &Query::List {
            kind: None,
            prefix: String::new(),
        },
    );
    assert_eq!(listing, Ok(Reply::Listing(vec![])));
}

fn lock_record(session_id: u64, fencing_token: u64) -> Vec<u8> {
    pb::LockRecord {
        session_id,
        fencing_token,
        acquired_at_ms: 0,
        acquire_id: 0,
    }
    .encode_to_vec()
}

fn session_record(id: u64) -> Vec<u8> {
    pb::SessionRecord {
        id,
        ttl_ms: 1_000,
        client_name: String::new(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn session_key(id: u64) -> Vec<u8> {
    [b"session/".as_slice(), &id.to_be_bytes()].concat()
}

fn lease_key(id: u64) -> Vec<u8> {
    [b"lease/".as_slice(), &id.to_be_bytes()].concat()
}

fn lease_record(expires_at_ms: u64) -> Vec<u8> {
    pb::LeaseRecord { expires_at_ms }.encode_to_vec()
}

fn ended_key(id: u64) -> Vec<u8> {
    [b"ended/".as_slice(), &id.to_be_bytes()].concat()
}

fn ended_record(order: u64) -> Vec<u8> {
    let record = pb::EndedSessionRecord {
        order,
        closed: false,
        reason: String::new(),
    };
    record.encode_to_vec()
}

fn waiter_key(id: u64) -> Vec<u8> {
    [b"waiter/".as_slice(), &id.to_be_bytes()].concat()
}

/// The first stored waiter record.
fn some_waiter(store: &Store) -> (Vec<u8>, pb::WaiterRecord) {
    let (key, value) = (store.iter())
        .find(|(key, _)| key.starts_with(b"waiter/"))
        .expect("a stored waiter");
    (
        key.clone(),
        pb::WaiterRecord::decode(value.as_slice()).unwrap(),
    )
}

#[test]
fn corrupt_records_are_a_restore_error() {
    let (sim, _) = history();
    let base = sim.store.clone();
    assert!(State::restore(Limits::default(), base.clone()).is_ok());
    let x = b"lock/x".to_vec();
    let held_token = {
        let record = pb::LockRecord::decode(base[&x].as_slice()).unwrap();
        record.fencing_token
    };
    type Edit = Box<dyn Fn(&mut Store)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "garbage lock record",
            Box::new(|s| {
                s.insert(b"lock/x".to_vec(), vec![0xff; 7]);
            }),
        ),
        (
            "truncated lock record",
            Box::new(move |s| {
                let v = s[&b"lock/x".to_vec()].clone();
                s.insert(b"lock/x".to_vec(), v[..v.len() - 1].to_vec());
            }),
        ),
        (
            "unknown key",
            Box::new(|s| {
                s.insert(b"mystery/1".to_vec(), b"?".to_vec());
            }),
        ),
        (
            "lock name not UTF-8",
            Box::new(|s| {
                s.insert(b"lock/\xff\xfe".to_vec(), lock_record(1, 1));
            }),
        ),
        (
            "garbage counters",
            Box::new(|s| {
                s.insert(b"meta/counters".to_vec(), vec![0x0a, 0xff]);
            }),
        ),
        (
            "lock of a session that is not stored",
            Box::new(|s| {
                s.remove(&session_key(1));
            }),
        ),
        (
            "lock token zero",
            Box::new(|s| {
                s.insert(b"lock/q".to_vec(), lock_record(2, 0));
            }),
        ),
        (
            "lock token beyond the counter",
            Box::new(|s| {
                s.insert(b"lock/q".to_vec(), lock_record(2, 1_000));
            }),
        ),
        (
            "token held twice",
            Box::new(move |s| {
                s.insert(b"lock/q".to_vec(), lock_record(2, held_token));
            }),
        ),
        (
            "session id does not match its key",
            Box::new(|s| {
                s.insert(session_key(2), session_record(3));
            }),
        ),
        (
            "session key of the wrong length",
            Box::new(|s| {
                s.insert(b"session/\x01".to_vec(), session_record(1));
            }),
        ),
        (
            "session newer than the counter",
            Box::new(|s| {
                s.insert(session_key(77), session_record(77));
            }),
        ),
        (
            "counters missing",
            Box::new(|s| {
                s.remove(b"meta/counters".as_slice());
            }),
        ),
        (
            "lease of a session that is not stored",
            Box::new(|s| {
                s.insert(lease_key(77), lease_record(5_000));
            }),
        ),
        (
            "garbage lease record",
            Box::new(|s| {
                s.insert(lease_key(1), vec![0xff; 3]);
            }),
        ),
        (
            "lease key of the wrong length",
            Box::new(|s| {
                s.insert(b"lease/\x01".to_vec(), lease_record(5_000));
            }),
        ),
        (
            "a live session stored as ended",
            Box::new(|s| {
                s.insert(ended_key(1), ended_record(9));
            }),
        ),
        (
            "two ends in the same place",
            Box::new(|s| {
                s.insert(ended_key(5), ended_record(0));
            }),
        ),
        (
            "waiter of a session that is not stored",
            Box::new(|s| {
                let (key, mut record) = some_waiter(s);
                record.session_id = 77;
                s.insert(key, record.encode_to_vec());
            }),
        ),
        (
            "waiter on a lock nobody holds",
            Box::new(|s| {
                let (key, mut record) = some_waiter(s);
                record.name = "free".to_owned();
                s.insert(key, record.encode_to_vec());
            }),
        ),
        (
            "waiter without a request",
            Box::new(|s| {
                let (key, mut record) = some_waiter(s);
                record.request = None;
                s.insert(key, record.encode_to_vec());
            }),
        ),
        (
            "two waiters in the same place of a queue",
            Box::new(|s| {
                let (_, record) = some_waiter(s);
                s.insert(waiter_key(1_000), record.encode_to_vec());
            }),
        ),
    ];
    for (what, edit) in cases {
        let mut store = base.clone();
        edit(&mut store);
        match State::restore(Limits::default(), store) {
            Err(RestoreError(message)) => assert!(!message.is_empty(), "{what}"),
            Ok(_) => panic!("{what}: restored without error"),
        }
    }
}

/// A key among the known prefixes (and some unknown), with random suffixes.
fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![
        Just(b"meta/counters".to_vec()),
        Just(b"session/".to_vec()),
        Just(b"lease/".to_vec()),
        Just(b"ended/".to_vec()),
        Just(b"lock/".to_vec()),
        Just(b"waiter/".to_vec()),
        Just(b"meta/".to_vec()),
        Just(Vec::new()),
    ];
    let suffix = prop_oneof![
        Just(Vec::new()),
        (0u64..4).prop_map(|id| id.to_be_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..10),
    ];
    (prefix, suffix).prop_map(|(p, s)| [p, s].concat())
}

/// Raw bytes, or a well-formed record with odd field values.
fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    let small = prop_oneof![0u64..5, Just(u64::MAX)];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        (small.clone(), small.clone(), small.clone()).prop_map(|(a, b, c)| pb::Counters {
            last_fencing_token: a,
            last_session_id: b,
            clock_ms: c,
            last_object_id: a,
        }
        .encode_to_vec()),
        (small.clone(), small.clone()).prop_map(|(id, ttl_ms)| pb::SessionRecord {
            id,
            ttl_ms,
            client_name: "x".to_owned(),
            ..Default::default()
        }
        .encode_to_vec()),
        (small.clone(), small.clone(), small.clone()).prop_map(|(s, t, at)| pb::LockRecord {
            session_id: s,
            fencing_token: t,
            acquired_at_ms: at,
            acquire_id: 1,
        }
        .encode_to_vec()),
        small.clone().prop_map(lease_record),
        small.clone().prop_map(ended_record),
        (small.clone(), small, any::<bool>()).prop_map(|(s, at, reacquire)| {
            let lock = pb::LockWaiter {
                acquire_id: 0,
                reacquire,
                timed_out: false,
            };
            pb::WaiterRecord {
                session_id: s,
                name: "x".to_owned(),
                enqueued_at_ms: at,
                deadline_ms: Some(at),
                arrival: at,
                request: Some(pb::waiter_record::Request::Lock(lock)),
            }
            .encode_to_vec()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0001),
        ..ProptestConfig::default()
    })]

    /// Whatever the store holds, restore answers Ok or Err and never
    /// panics; a state it accepts can run until every lease is over and
    /// then holds nothing.
    #[test]
    fn restore_never_panics_on_arbitrary_records(
        records in proptest::collection::btree_map(arb_key(), arb_value(), 0..8)
    ) {
        if let Ok(mut state) = State::restore(Limits::default(), records) {
            let mut out = Outcome::default();
            state.tick(u64::MAX, &mut out);
            prop_assert_eq!(state.session_count(), 0);
            prop_assert_eq!(state.hold_count(), 0);
            prop_assert_eq!(state.next_deadline_ms(), None);
            let listing = state.query(
                u64::MAX,
                &Query::List { kind: None, prefix: String::new() },
            );
            prop_assert_eq!(listing, Ok(Reply::Listing(vec![])));
        }
    }
}

// --- property test: random command sequences against a model --------------

const LOCKS: [&str; 2] = ["alpha", "beta"];
const SLOTS: usize = 4;
/// A session id no one ever gets.
const GHOST: SessionId = 999_999;
/// Small, so that the limit is reached now and then.
const WAITERS_MAX: usize = 3;

fn model_limits() -> Limits {
    Limits {
        waiters_per_primitive_max: WAITERS_MAX,
        ..Limits::default()
    }
}

type Seen = std::result::Result<Reply, Code>;

fn seen(reply: Result<Reply>) -> Seen {
    reply.map_err(|r| r.code)
}

/// One step of a random sequence. A `slot` below `SLOTS` names the session
/// last created in that slot (maybe gone, or never made: then an unknown
/// session); a larger one picks one of the live sessions.
#[derive(Clone, Debug)]
enum Op {
    Create {
        slot: usize,
        ttl_ms: u64,
    },
    KeepAlive {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Acquire {
        slot: usize,
        lock: usize,
        timeout_ms: Option<u64>,
        acquire_id: u64,
    },
    Release {
        slot: usize,
        lock: usize,
        wrong_token: bool,
    },
    Cancel {
        pick: usize,
    },
    ReleaseUndelivered {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    /// What the engine's timer does: tick at `next_deadline_ms`.
    TickAtNextDeadline,
}

fn arb_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => prop_oneof![Just(1_000u64), Just(2_000), Just(3_000), Just(5_000)],
        1 => prop_oneof![Just(0u64), Just(Limits::default().session_ttl_ms_max + 1)],
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let slot = 0..2 * SLOTS;
    let lock = 0..LOCKS.len();
    let timeout = prop_oneof![
        2 => Just(None),
        2 => Just(Some(0u64)),
        3 => (1u64..1_500).prop_map(Some),
    ];
    prop_oneof![
        3 => (slot.clone(), arb_ttl()).prop_map(|(slot, ttl_ms)| Op::Create { slot, ttl_ms }),
        6 => slot.clone().prop_map(|slot| Op::KeepAlive { slot }),
        1 => slot.clone().prop_map(|slot| Op::Close { slot }),
        8 => (slot.clone(), lock.clone(), timeout, 0u64..3).prop_map(
            |(slot, lock, timeout_ms, acquire_id)| Op::Acquire { slot, lock, timeout_ms, acquire_id }
        ),
        5 => (slot, lock, proptest::bool::weighted(0.2)).prop_map(
            |(slot, lock, wrong_token)| Op::Release { slot, lock, wrong_token }
        ),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseUndelivered { pick }),
        4 => prop_oneof![6 => 0u64..300, 1 => 300u64..3_000].prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::TickAtNextDeadline),
    ]
}

#[derive(Clone, Debug)]
struct ModelHold {
    session_id: SessionId,
    fencing_token: FencingToken,
    acquire_id: u64,
    acquired_at_ms: u64,
}

#[derive(Clone, Debug)]
struct ModelWaiter {
    id: WaiterId,
    session_id: SessionId,
    acquire_id: u64,
    deadline_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct ModelSession {
    ttl_ms: u64,
    expires_at_ms: u64,
    client_name: String,
}

/// The lock rules, written independently of the core: plain vectors and
/// linear scans. It predicts every reply and every event exactly.
#[derive(Debug, Default)]
struct Model {
    now_ms: u64,
    last_session_id: SessionId,
    last_token: FencingToken,
    sessions: BTreeMap<SessionId, ModelSession>,
    holders: [Option<ModelHold>; 2],
    queues: [VecDeque<ModelWaiter>; 2],
}

type ModelEvents = Vec<(WaiterId, Seen)>;

impl Model {
    fn live(&self, session_id: SessionId) -> bool {
        self.sessions.contains_key(&session_id)
    }

    fn create(&mut self, ttl_ms: u64, client_name: String) -> Seen {
        let limits = model_limits();
        if ttl_ms < limits.session_ttl_ms_min || ttl_ms > limits.session_ttl_ms_max {
            return Err(Code::InvalidArgument);
        }
        self.last_session_id += 1;
        let session = ModelSession {
            ttl_ms,
            expires_at_ms: self.now_ms + ttl_ms,
            client_name,
        };
        self.sessions.insert(self.last_session_id, session);
        Ok(Reply::SessionCreated {
            session_id: self.last_session_id,
            ttl_ms,
        })
    }

    fn keep_alive(&mut self, session_id: SessionId) -> Seen {
        let now_ms = self.now_ms;
        match self.sessions.get_mut(&session_id) {
            Some(s) => {
                s.expires_at_ms = now_ms + s.ttl_ms;
                Ok(Reply::SessionRenewed {
                    ttl_ms: s.ttl_ms,
                    lost: vec![],
                })
            }
            None => Err(Code::NotFound),
        }
    }

    fn close(&mut self, session_id: SessionId, events: &mut ModelEvents) -> Seen {
        if !self.live(session_id) {
            return Err(Code::NotFound);
        }
        let released = self.end_session(session_id, events);
        Ok(Reply::SessionClosed { released })
    }

    /// Removes a session's waiters (in id order): each hears that its
    /// session ended.
    fn drop_waiters(&mut self, session_id: SessionId, events: &mut ModelEvents) {
        let mut ids: Vec<WaiterId> = self
            .queues
            .iter()
            .flatten()
            .filter(|w| w.session_id == session_id)
            .map(|w| w.id)
            .collect();
        ids.sort();
        for id in ids {
            self.remove_waiter(id);
            events.push((id, Err(Code::FailedPrecondition)));
        }
    }

    /// Drops the waiters, then releases the holds in token order.
    fn end_session(&mut self, session_id: SessionId, events: &mut ModelEvents) -> u32 {
        self.drop_waiters(session_id, events);
        self.sessions.remove(&session_id);
        let mut held: Vec<(FencingToken, usize)> = (0..LOCKS.len())
            .filter_map(|i| {
                let h = self.holders[i].as_ref()?;
                (h.session_id == session_id).then_some((h.fencing_token, i))
            })
            .collect();
        held.sort();
        for (_, lock) in &held {
            self.holders[*lock] = None;
            self.wake(*lock, events);
        }
        held.len() as u32
    }

    fn remove_waiter(&mut self, id: WaiterId) -> bool {
        for queue in &mut self.queues {
            if let Some(i) = queue.iter().position(|w| w.id == id) {
                queue.remove(i);
                return true;
            }
        }
        false
    }

    fn wake(&mut self, lock: usize, events: &mut ModelEvents) {
        if self.holders[lock].is_some() {
            return;
        }
        if let Some(next) = self.queues[lock].pop_front() {
            let fencing_token = self.grant(lock, next.session_id, next.acquire_id);
            events.push((next.id, Ok(Reply::Granted { fencing_token })));
        }
    }

    fn grant(&mut self, lock: usize, session_id: SessionId, acquire_id: u64) -> FencingToken {
        assert!(self.holders[lock].is_none(), "model: two holders");
        assert!(self.live(session_id), "model: grant to a dead session");
        self.last_token += 1;
        self.holders[lock] = Some(ModelHold {
            session_id,
            fencing_token: self.last_token,
            acquire_id,
            acquired_at_ms: self.now_ms,
        });
        self.last_token
    }

    fn acquire(
        &mut self,
        session_id: SessionId,
        lock: usize,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        acquire_id: u64,
    ) -> Seen {
        if !self.live(session_id) {
            return Err(Code::NotFound);
        }
        if let Some(h) = &self.holders[lock] {
            if acquire_id != 0 && h.session_id == session_id && h.acquire_id == acquire_id {
                return Ok(Reply::Granted {
                    fencing_token: h.fencing_token,
                });
            }
        }
        if self.holders[lock].is_none() && self.queues[lock].is_empty() {
            let fencing_token = self.grant(lock, session_id, acquire_id);
            return Ok(Reply::Granted { fencing_token });
        }
        if timeout_ms == Some(0) {
            return Err(Code::DeadlineExceeded);
        }
        if self.queues[lock].len() >= WAITERS_MAX {
            return Err(Code::ResourceExhausted);
        }
        self.queues[lock].push_back(ModelWaiter {
            id: waiter,
            session_id,
            acquire_id,
            deadline_ms: timeout_ms.map(|t| self.now_ms + t),
        });
        Ok(Reply::Queued {
            position: self.queues[lock].len() as u32,
        })
    }

    fn release(
        &mut self,
        session_id: SessionId,
        lock: usize,
        fencing_token: FencingToken,
        events: &mut ModelEvents,
    ) -> Seen {
        if !self.live(session_id) {
            return Err(Code::NotFound);
        }
        match &self.holders[lock] {
            Some(h) if h.session_id == session_id && h.fencing_token == fencing_token => {
                self.holders[lock] = None;
                self.wake(lock, events);
                Ok(Reply::Done)
            }
            _ => Err(Code::FailedPrecondition),
        }
    }

    fn release_undelivered(&mut self, fencing_token: FencingToken, events: &mut ModelEvents) {
        let lock = (0..LOCKS.len()).find(|i| {
            self.holders[*i]
                .as_ref()
                .is_some_and(|h| h.fencing_token == fencing_token)
        });
        if let Some(lock) = lock {
            self.holders[lock] = None;
            self.wake(lock, events);
        }
    }

    /// Sessions whose lease is over at `now_ms`, by (expiry, id).
    fn expiring(&self, now_ms: u64) -> Vec<SessionId> {
        let mut due: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at_ms <= now_ms)
            .map(|(id, s)| (s.expires_at_ms, *id))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id).collect()
    }

    fn tick(&mut self, now_ms: u64, events: &mut ModelEvents) {
        self.now_ms = now_ms;
        let expiring = self.expiring(now_ms);
        // All the waiters of expiring sessions go first: no grant may go to
        // a session whose lease is over.
        for session_id in &expiring {
            self.drop_waiters(*session_id, events);
        }
        for session_id in expiring {
            self.end_session(session_id, events);
        }
        let mut due: Vec<(u64, WaiterId)> = self
            .queues
            .iter()
            .flatten()
            .filter_map(|w| Some((w.deadline_ms?, w.id)))
            .filter(|(at, _)| *at <= now_ms)
            .collect();
        due.sort();
        for (_, id) in due {
            self.remove_waiter(id);
            events.push((id, Err(Code::DeadlineExceeded)));
        }
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        let leases = self.sessions.values().map(|s| s.expires_at_ms);
        let waits = self.queues.iter().flatten().filter_map(|w| w.deadline_ms);
        leases.chain(waits).min()
    }

    fn lock_of_token(&self, fencing_token: FencingToken) -> Option<usize> {
        (0..LOCKS.len()).find(|i| {
            self.holders[*i]
                .as_ref()
                .is_some_and(|h| h.fencing_token == fencing_token)
        })
    }
}

/// Drives a `Sim` and a `Model` with the same operations and checks them
/// against each other, and against invariants derived only from what the
/// core's replies and events show.
struct Checker {
    sim: Sim,
    model: Model,
    slots: [Option<SessionId>; SLOTS],
    /// Every waiter that was told `Queued`, with its lock and session.
    queued: BTreeMap<WaiterId, (usize, SessionId)>,
    /// Final events seen per queued waiter.
    finals: BTreeMap<WaiterId, u32>,
    /// Waiters the test cancelled before they had a final event.
    cancelled: BTreeSet<WaiterId>,
    /// Holders as observed from grants (replies and events) and cleared on
    /// successful releases, closes and expiries.
    observed: [Option<(SessionId, FencingToken)>; 2],
    /// The highest token observed in any grant.
    max_token: FencingToken,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            sim: Sim::with_limits(model_limits()),
            model: Model::default(),
            slots: [None; SLOTS],
            queued: BTreeMap::new(),
            finals: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            observed: [None, None],
            max_token: 0,
        }
    }

    /// Slots below `SLOTS` name the session last created there (maybe
    /// gone by now); the others pick any live session, so that most
    /// commands reach one.
    fn slot_session(&self, slot: usize) -> SessionId {
        if slot < SLOTS {
            return self.slots[slot].unwrap_or(GHOST);
        }
        let live: Vec<SessionId> = self.model.sessions.keys().copied().collect();
        if live.is_empty() {
            GHOST
        } else {
            live[(slot - SLOTS) % live.len()]
        }
    }

    fn step(&mut self, op: &Op) -> std::result::Result<(), TestCaseError> {
        let mut expected_events = ModelEvents::new();
        // The command, the model's reply, and (waiter, lock, session) for
        // an acquire.
        let (command, expected, new_waiter) = match *op {
            Op::Create { slot, ttl_ms } => {
                if self.model.sessions.len() >= SLOTS {
                    return Ok(());
                }
                let client_name = format!("slot-{slot}");
                let expected = self.model.create(ttl_ms, client_name.clone());
                let command = Command::CreateSession {
                    ttl_ms,
                    client_name,
                    host: String::new(),
                    owner: String::new(),
                };
                (command, expected, None)
            }
            Op::KeepAlive { slot } => {
                let session_id = self.slot_session(slot);
                let expected = self.model.keep_alive(session_id);
                (
                    Command::KeepAlive {
                        session_id,
                        notices_seen_through: 0,
                    },
                    expected,
                    None,
                )
            }
            Op::Close { slot } => {
                let session_id = self.slot_session(slot);
                if self.model.live(session_id) {
                    self.clear_observed_session(session_id);
                }
                let expected = self.model.close(session_id, &mut expected_events);
                (
                    Command::CloseSession {
                        session_id,
                        reason: String::new(),
                    },
                    expected,
                    None,
                )
            }
            Op::Acquire {
                slot,
                lock,
                timeout_ms,
                acquire_id,
            } => {
                let session_id = self.slot_session(slot);
                let waiter = self.sim.waiter();
                let expected = self
                    .model
                    .acquire(session_id, lock, waiter, timeout_ms, acquire_id);
                let command = Command::LockAcquire {
                    session_id,
                    name: LOCKS[lock].to_owned(),
                    waiter,
                    timeout_ms,
                    acquire_id,
                };
                (command, expected, Some((waiter, lock, session_id)))
            }
            Op::Release {
                slot,
                lock,
                wrong_token,
            } => {
                let session_id = self.slot_session(slot);
                let held = self.model.holders[lock].as_ref();
                let mine = held
                    .filter(|h| h.session_id == session_id)
                    .map(|h| h.fencing_token);
                // The token the test believes the session holds; otherwise
                // whatever token the lock has (someone else's) or a stale one.
                let right = mine
                    .or(held.map(|h| h.fencing_token))
                    .unwrap_or(self.model.last_token);
                let fencing_token = if wrong_token { right + 1 } else { right };
                if self.model.live(session_id) && mine == Some(fencing_token) {
                    self.observed[lock] = None;
                }
                let expected =
                    self.model
                        .release(session_id, lock, fencing_token, &mut expected_events);
                let command = Command::Release {
                    kind: Kind::Lock,
                    session_id,
                    name: LOCKS[lock].to_owned(),
                    fencing_token,
                };
                (command, expected, None)
            }
            Op::Cancel { pick } => {
                let waiters: Vec<WaiterId> = self.queued.keys().copied().collect();
                let waiter = if waiters.is_empty() {
                    WaiterId(u64::MAX)
                } else {
                    waiters[pick % waiters.len()]
                };
                if self.model.remove_waiter(waiter) {
                    prop_assert_eq!(self.finals[&waiter], 0);
                    self.cancelled.insert(waiter);
                }
                (Command::Cancel { waiter }, Ok(Reply::Done), None)
            }
            Op::ReleaseUndelivered { pick } => {
                let fencing_token = match pick % 3 {
                    0 | 1 => self.model.holders[pick % 3]
                        .as_ref()
                        .map_or(self.model.last_token, |h| h.fencing_token),
                    _ => (pick as u64) % (self.model.last_token + 2),
                };
                if let Some(lock) = self.model.lock_of_token(fencing_token) {
                    self.observed[lock] = None;
                }
                self.model
                    .release_undelivered(fencing_token, &mut expected_events);
                let command = Command::ReleaseUndelivered { fencing_token };
                (command, Ok(Reply::Done), None)
            }
            Op::Advance { ms } => return self.tick_at(self.sim.now_ms + ms),
            Op::TickAtNextDeadline => {
                let next = self.model.next_deadline_ms();
                return self.tick_at(next.unwrap_or(self.sim.now_ms).max(self.sim.now_ms));
            }
        };

        let (reply, events) = self.sim.run(command);
        let reply = seen(reply);
        prop_assert_eq!(&reply, &expected, "reply to {:?}", op);
        if let Ok(Reply::SessionCreated { session_id, .. }) = reply {
            if let Op::Create { slot, .. } = op {
                self.slots[*slot % SLOTS] = Some(session_id);
            }
        }
        if let Some((waiter, lock, session_id)) = new_waiter {
            match reply {
                Ok(Reply::Queued { .. }) => {
                    self.queued.insert(waiter, (lock, session_id));
                    self.finals.insert(waiter, 0);
                }
                Ok(Reply::Granted { fencing_token }) => {
                    self.observe_grant(lock, session_id, fencing_token)?;
                }
                _ => {}
            }
        }
        self.check_events(events, expected_events)?;
        self.check_state()
    }

    fn tick_at(&mut self, now_ms: u64) -> std::result::Result<(), TestCaseError> {
        let mut expected_events = ModelEvents::new();
        for session_id in self.model.expiring(now_ms) {
            self.clear_observed_session(session_id);
        }
        self.model.tick(now_ms, &mut expected_events);
        let events = self.sim.tick_at(now_ms);
        self.check_events(events, expected_events)?;
        self.check_state()
    }

    fn clear_observed_session(&mut self, session_id: SessionId) {
        for hold in &mut self.observed {
            if hold.is_some_and(|(s, _)| s == session_id) {
                *hold = None;
            }
        }
    }

    /// A grant seen in a reply or an event: the lock must be free as far
    /// as the observations go, and the token must be new and the largest
    /// yet, unless it is a retry that returns the current hold.
    fn observe_grant(
        &mut self,
        lock: usize,
        session_id: SessionId,
        fencing_token: FencingToken,
    ) -> std::result::Result<(), TestCaseError> {
        if self.observed[lock] == Some((session_id, fencing_token)) {
            return Ok(()); // a retry by acquire_id
        }
        prop_assert!(
            self.observed[lock].is_none(),
            "two holders of {}: {:?} and ({}, {})",
            LOCKS[lock],
            self.observed[lock],
            session_id,
            fencing_token
        );
        prop_assert!(
            fencing_token > self.max_token,
            "token {} after {}",
            fencing_token,
            self.max_token
        );
        self.max_token = fencing_token;
        self.observed[lock] = Some((session_id, fencing_token));
        Ok(())
    }

    fn check_events(
        &mut self,
        events: Events,
        expected: ModelEvents,
    ) -> std::result::Result<(), TestCaseError> {
        let events: ModelEvents = events.into_iter().map(|(w, r)| (w, seen(r))).collect();
        prop_assert_eq!(&events, &expected, "events");
        for (waiter, reply) in events {
            let Some(&(lock, session_id)) = self.queued.get(&waiter) else {
                return Err(TestCaseError::fail(format!(
                    "event for {waiter:?}, which never queued"
                )));
            };
            prop_assert!(!self.cancelled.contains(&waiter), "event after cancel");
            let finals = self.finals.get_mut(&waiter).expect("queued");
            *finals += 1;
            prop_assert_eq!(*finals, 1, "a second final event for {:?}", waiter);
            if let Ok(Reply::Granted { fencing_token }) = reply {
                prop_assert!(
                    self.model.live(session_id),
                    "grant to a session that is gone"
                );
                self.observe_grant(lock, session_id, fencing_token)?;
            }
        }
        Ok(())
    }

    /// The core's view (describe, counts, next deadline) equals the
    /// model's and the observations; the stored changes restore the same.
    fn check_state(&mut self) -> std::result::Result<(), TestCaseError> {
        for (lock, name) in LOCKS.iter().enumerate() {
            let info = self.sim.describe(name);
            let holder = info
                .holder
                .as_ref()
                .map(|h| (h.session_id, h.fencing_token));
            let modeled = self.model.holders[lock]
                .as_ref()
                .map(|h| (h.session_id, h.fencing_token));
            prop_assert_eq!(holder, modeled, "holder of {}", name);
            prop_assert_eq!(holder, self.observed[lock], "observed holder of {}", name);
            let waiting: Vec<SessionId> = info.waiters.iter().map(|w| w.session_id).collect();
            let modeled: Vec<SessionId> = self.model.queues[lock]
                .iter()
                .map(|w| w.session_id)
                .collect();
            prop_assert_eq!(waiting, modeled, "waiters of {}", name);
        }
        let state = &self.sim.state;
        prop_assert_eq!(state.session_count(), self.model.sessions.len());
        prop_assert_eq!(
            state.waiter_count(),
            self.model.queues.iter().map(VecDeque::len).sum::<usize>()
        );
        prop_assert_eq!(
            state.hold_count(),
            self.model.holders.iter().flatten().count()
        );
        prop_assert_eq!(state.next_deadline_ms(), self.model.next_deadline_ms());
        state.check_indexes().map_err(TestCaseError::fail)?;
        self.check_restore()
    }

    /// Restores from the fake store (plus the checkpoint the engine writes
    /// with every batch) and compares with the live state.
    fn check_restore(&mut self) -> std::result::Result<(), TestCaseError> {
        let now = self.sim.now_ms;
        let mut store = self.sim.store.clone();
        persist(&mut store, &[self.sim.state.checkpoint()]);
        let mut restored = match State::restore(model_limits(), store) {
            Ok(state) => state,
            Err(e) => return Err(TestCaseError::fail(format!("restore: {e}"))),
        };
        prop_assert_eq!(restored.now_ms(), now);
        prop_assert_eq!(restored.waiter_count(), self.sim.state.waiter_count());
        prop_assert_eq!(
            restored.next_deadline_ms(),
            self.sim.state.next_deadline_ms()
        );
        // What the engine does after a restart: the waiters end, every
        // lease starts over.
        let mut resumed = Outcome::default();
        prop_assert_eq!(
            restored.apply(now, Command::Resume, &mut resumed),
            Ok(Reply::Done)
        );
        prop_assert_eq!(resumed.events.len(), self.sim.state.waiter_count());
        prop_assert_eq!(restored.session_count(), self.model.sessions.len());
        prop_assert_eq!(restored.waiter_count(), 0);
        for (lock, name) in LOCKS.iter().enumerate() {
            let back = describe(&restored, now, name);
            prop_assert!(back.waiters.is_empty());
            match (&self.model.holders[lock], &back.holder) {
                (None, None) => {}
                (Some(m), Some(r)) => {
                    let session = &self.model.sessions[&m.session_id];
                    prop_assert_eq!(r.session_id, m.session_id);
                    prop_assert_eq!(r.fencing_token, m.fencing_token);
                    prop_assert_eq!(&r.client_name, &session.client_name);
                    prop_assert_eq!(r.held_ms, now - m.acquired_at_ms);
                    prop_assert_eq!(r.lease_left_ms, session.ttl_ms);
                }
                (m, r) => {
                    return Err(TestCaseError::fail(format!(
                        "{name}: model {m:?}, restored {r:?}"
                    )))
                }
            }
        }
        let shortest = self.model.sessions.values().map(|s| s.ttl_ms).min();
        prop_assert_eq!(restored.next_deadline_ms(), shortest.map(|t| now + t));
        let mut out = Outcome::default();
        for id in 1..=self.model.last_session_id + 1 {
            let reply = seen(restored.apply(
                now,
                Command::KeepAlive {
                    session_id: id,
                    notices_seen_through: 0,
                },
                &mut out,
            ));
            let expected = match self.model.sessions.get(&id) {
                Some(s) => Ok(Reply::SessionRenewed {
                    ttl_ms: s.ttl_ms,
                    lost: vec![],
                }),
                None => Err(Code::NotFound),
            };
            prop_assert_eq!(reply, expected, "session {} after restore", id);
        }
        // The next grant's token is beyond every earlier one.
        let session_id = match self.model.sessions.keys().next() {
            Some(id) => *id,
            None => match restored.apply(
                now,
                Command::CreateSession {
                    ttl_ms: 1_000,
                    client_name: String::new(),
                    host: String::new(),
                    owner: String::new(),
                },
                &mut out,
            ) {
                Ok(Reply::SessionCreated { session_id, .. }) => {
                    prop_assert_eq!(session_id, self.model.last_session_id + 1);
                    session_id
                }
                other => return Err(TestCaseError::fail(format!("create: {other:?}"))),
            },
        };
        let reply = restored.apply(
            now,
            Command::LockAcquire {
                session_id,
                name: "probe".to_owned(),
                waiter: WaiterId(u64::MAX),
                timeout_ms: Some(0),
                acquire_id: 0,
            },
            &mut out,
        );
        prop_assert_eq!(
            reply,
            Ok(Reply::Granted {
                fencing_token: self.model.last_token + 1
            })
        );
        prop_assert!(self.model.last_token >= self.max_token);
        Ok(())
    }

    /// Ends everything: every queued waiter must then have had exactly one
    /// final event, unless the test cancelled it first.
    fn finish(&mut self) -> std::result::Result<(), TestCaseError> {
        let sessions: Vec<SessionId> = self.model.sessions.keys().copied().collect();
        for session_id in sessions {
            let mut expected_events = ModelEvents::new();
            self.clear_observed_session(session_id);
            let expected = self.model.close(session_id, &mut expected_events);
            let (reply, events) = self.sim.close(session_id);
            prop_assert_eq!(seen(reply), expected);
            self.check_events(events, expected_events)?;
            self.check_state()?;
        }
        let far = self.sim.now_ms + 10 * 3_600_000;
        prop_assert_eq!(self.sim.tick_at(far), vec![]);
        for (waiter, count) in &self.finals {
            let cancelled = self.cancelled.contains(waiter);
            prop_assert!(
                (*count == 1 && !cancelled) || (*count == 0 && cancelled),
                "{:?}: {} final events, cancelled: {}",
                waiter,
                count,
                cancelled
            );
        }
        let state = &mut self.sim.state;
        prop_assert_eq!(state.session_count(), 0);
        prop_assert_eq!(state.waiter_count(), 0);
        prop_assert_eq!(state.hold_count(), 0);
        prop_assert_eq!(state.next_deadline_ms(), None);
        let listing = state.query(
            far,
            &Query::List {
                kind: None,
                prefix: String::new(),
            },
        );
        prop_assert_eq!(listing, Ok(Reply::Listing(vec![])));
        // Only the counters and how the sessions ended remain on "disk".
        prop_assert!(self
            .sim
            .store
            .keys()
            .all(|k| k == b"meta/counters" || k.starts_with(b"ended/")));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0002),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_command_sequences_match_the_model(
        ttls in proptest::collection::vec(arb_ttl(), 1..=SLOTS),
        ops in proptest::collection::vec(arb_op(), 1..60),
    ) {
        let mut checker = Checker::new();
        for (slot, ttl_ms) in ttls.into_iter().enumerate() {
            checker.step(&Op::Create { slot, ttl_ms })?;
        }
        for op in &ops {
            checker.step(op)?;
        }
        checker.finish()?;
    }
}

mod breaker;
mod exact;
mod limits;
mod lost;
mod mixed;
mod owner;
mod pool;
mod primitives;
mod query;
mod queue;
mod resume;
mod token_bucket;
