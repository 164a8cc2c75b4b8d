//! Unit tests of the semaphore, read-write lock, event, condition and
//! barrier rules, with simulated time.

use super::{code, listing, Events, Sim};
use crate::core::Query;
use crate::core::{
    barrier::BarrierInfo, semaphore::SemaphoreInfo, Code, Command, FencingToken, Kind, Limits,
    Reply, Result, RwMode, SessionId, State, WaiterId,
};

const TTL: u64 = 10_000;

impl Sim {
    fn sem(
        &mut self,
        session_id: SessionId,
        name: &str,
        permits: u32,
    ) -> (WaiterId, Result<Reply>) {
        self.sem_with(session_id, name, 3, permits, None)
    }

    fn sem_with(
        &mut self,
        session_id: SessionId,
        name: &str,
        capacity: u32,
        permits: u32,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>) {
        let waiter = self.waiter();
        let reply = self.apply(Command::SemaphoreAcquire {
            session_id,
            name: name.to_owned(),
            waiter,
            timeout_ms,
            acquire_id: 0,
            capacity,
            permits,
        });
        (waiter, reply)
    }

    fn rw(&mut self, session_id: SessionId, name: &str, mode: RwMode) -> (WaiterId, Result<Reply>) {
        let waiter = self.waiter();
        let reply = self.apply(Command::RwLockAcquire {
            session_id,
            name: name.to_owned(),
            waiter,
            timeout_ms: None,
            acquire_id: 0,
            mode,
        });
        (waiter, reply)
    }

    fn give_back(
        &mut self,
        kind: Kind,
        session_id: SessionId,
        name: &str,
        fencing_token: FencingToken,
    ) -> (Result<Reply>, Events) {
        self.run(Command::Release {
            kind,
            session_id,
            name: name.to_owned(),
            fencing_token,
        })
    }

    fn sem_info(&mut self, name: &str) -> SemaphoreInfo {
        match self.query(Query::SemaphoreDescribe {
            name: name.to_owned(),
        }) {
            Ok(Reply::SemaphoreDescription(info)) => info,
            other => panic!("describe: {other:?}"),
        }
    }

    fn event_wait(
        &mut self,
        session_id: SessionId,
        name: &str,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>) {
        let waiter = self.waiter();
        let reply = self.apply(Command::EventWait {
            session_id,
            name: name.to_owned(),
            waiter,
            timeout_ms,
        });
        (waiter, reply)
    }

    fn cond_wait(
        &mut self,
        session_id: SessionId,
        lock_token: FencingToken,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::ConditionWait {
            session_id,
            name: "cond".to_owned(),
            lock: "lock".to_owned(),
            fencing_token: lock_token,
            waiter,
            timeout_ms,
        });
        (waiter, reply, events)
    }

    fn arrive(
        &mut self,
        session_id: SessionId,
        parties: u32,
        timeout_ms: Option<u64>,
    ) -> (WaiterId, Result<Reply>, Events) {
        let waiter = self.waiter();
        let (reply, events) = self.run(Command::BarrierWait {
            session_id,
            name: "b".to_owned(),
            waiter,
            parties,
            timeout_ms,
        });
        (waiter, reply, events)
    }

    fn barrier_info(&mut self) -> BarrierInfo {
        match self.query(Query::BarrierDescribe { name: "b".into() }) {
            Ok(Reply::BarrierDescription(info)) => info,
            other => panic!("describe: {other:?}"),
        }
    }

    pub(super) fn restored(&self) -> State {
        let records = self.store.clone().into_iter();
        State::restore(Limits::default(), records).expect("restore")
    }
}

fn granted(reply: &Result<Reply>) -> FencingToken {
    match reply {
        Ok(Reply::Granted { fencing_token }) => *fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn queued(reply: &Result<Reply>) -> u32 {
    match reply {
        Ok(Reply::Queued { position }) => *position,
        other => panic!("expected to queue, got {other:?}"),
    }
}

fn granted_event(events: &Events, waiter: WaiterId) -> FencingToken {
    let found = events.iter().find(|(w, _)| *w == waiter);
    match found {
        Some((_, Ok(Reply::Granted { fencing_token }))) => *fencing_token,
        other => panic!("expected a grant for {waiter:?}, got {other:?} in {events:?}"),
    }
}

// --- semaphore ---------------------------------------------------------------

#[test]
fn a_semaphore_grants_up_to_its_capacity_then_queues() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let tokens: Vec<_> = (0..3).map(|_| granted(&sim.sem(s, "api", 1).1)).collect();
    let (fourth, reply) = sim.sem(s, "api", 1);
    assert_eq!(queued(&reply), 1);
    assert_eq!(sim.sem_info("api").permits_held, 3);
    let (reply, events) = sim.give_back(Kind::Semaphore, s, "api", tokens[1]);
    assert_eq!(reply, Ok(Reply::Done));
    assert!(granted_event(&events, fourth) > tokens[2]);
    sim.state.check_indexes().unwrap();
}

#[test]
fn a_large_request_at_the_head_blocks_smaller_ones_behind_it() {
    let mut sim = Sim::new();
    let (a, b, c) = (sim.session(TTL), sim.session(TTL), sim.session(TTL));
    let held = granted(&sim.sem(a, "s", 2).1);
    let (big, reply) = sim.sem(b, "s", 3);
    queued(&reply);
    // One permit is free, but the request for 3 is first in line.
    let (small, reply) = sim.sem(c, "s", 1);
    assert_eq!(queued(&reply), 2);
    let (_, events) = sim.give_back(Kind::Semaphore, a, "s", held);
    let big_token = granted_event(&events, big);
    assert_eq!(events.len(), 1, "only the head fits: {events:?}");
    let (_, events) = sim.give_back(Kind::Semaphore, b, "s", big_token);
    granted_event(&events, small);
}

#[test]
fn releasing_what_the_session_does_not_hold_is_refused() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let token = granted(&sim.sem(a, "s", 1).1);
    let (reply, _) = sim.give_back(Kind::Semaphore, b, "s", token);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    let (reply, _) = sim.give_back(Kind::Semaphore, a, "s", token + 100);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    let (reply, _) = sim.give_back(Kind::RwLock, a, "s", token);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    assert_eq!(
        sim.give_back(Kind::Semaphore, a, "s", token).0,
        Ok(Reply::Done)
    );
    // Over-release: the same hold twice.
    let (reply, _) = sim.give_back(Kind::Semaphore, a, "s", token);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    assert_eq!(
        listing(&sim.state, None, ""),
        vec![],
        "nothing is left behind"
    );
}

#[test]
fn semaphore_capacity_and_permits_are_checked() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    assert_eq!(
        code(&sim.sem_with(s, "s", 0, 1, None).1),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(&sim.sem_with(s, "s", 2, 3, None).1),
        Some(Code::InvalidArgument)
    );
    let too_big = Limits::default().semaphore_capacity_max + 1;
    assert_eq!(
        code(&sim.sem_with(s, "s", too_big, 1, None).1),
        Some(Code::InvalidArgument)
    );
    granted(&sim.sem_with(s, "s", 2, 0, None).1);
    assert_eq!(
        code(&sim.sem_with(s, "s", 5, 1, None).1),
        Some(Code::FailedPrecondition)
    );
    granted(&sim.sem_with(s, "s", 0, 1, None).1);
    let (_, reply) = sim.sem_with(s, "s", 2, 1, Some(0));
    assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
    assert_eq!(sim.sem_info("s").waiters, vec![], "try-once queues nothing");
}

#[test]
fn an_expired_session_gives_its_permits_back() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(1_000), sim.session(TTL));
    granted(&sim.sem(a, "s", 3).1);
    let (waiter, reply) = sim.sem(b, "s", 2);
    queued(&reply);
    let events = sim.tick_at(1_000);
    granted_event(&events, waiter);
    assert_eq!(sim.sem_info("s").permits_held, 2);
}

#[test]
fn semaphore_holds_survive_a_restore() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let token = granted(&sim.sem(s, "s", 2).1);
    let restored = sim.restored();
    let info = restored.query(sim.now_ms, &Query::SemaphoreDescribe { name: "s".into() });
    let Ok(Reply::SemaphoreDescription(info)) = info else {
        panic!("{info:?}")
    };
    assert_eq!((info.capacity, info.permits_held), (3, 2));
    assert_eq!(info.holders[0].0.fencing_token, token);
    restored.check_indexes().unwrap();
}

// --- read-write lock -----------------------------------------------------------

#[test]
fn readers_share_and_a_writer_excludes() {
    let mut sim = Sim::new();
    let (a, b, c) = (sim.session(TTL), sim.session(TTL), sim.session(TTL));
    let r1 = granted(&sim.rw(a, "rw", RwMode::Read).1);
    let r2 = granted(&sim.rw(b, "rw", RwMode::Read).1);
    let (writer, reply) = sim.rw(c, "rw", RwMode::Write);
    queued(&reply);
    let (_, events) = sim.give_back(Kind::RwLock, a, "rw", r1);
    assert_eq!(events, vec![], "the writer waits for every reader");
    let (_, events) = sim.give_back(Kind::RwLock, b, "rw", r2);
    let w = granted_event(&events, writer);
    let (reader, reply) = sim.rw(a, "rw", RwMode::Read);
    queued(&reply);
    let (_, events) = sim.give_back(Kind::RwLock, c, "rw", w);
    granted_event(&events, reader);
}

#[test]
fn a_waiting_writer_is_not_starved_by_a_stream_of_readers() {
    let mut sim = Sim::new();
    let readers: Vec<_> = (0..4).map(|_| sim.session(TTL)).collect();
    let writer_session = sim.session(TTL);
    let mut held = granted(&sim.rw(readers[0], "rw", RwMode::Read).1);
    let (writer, reply) = sim.rw(writer_session, "rw", RwMode::Write);
    queued(&reply);
    // Readers keep coming while the first one holds: each queues behind
    // the writer instead of joining the readers.
    let mut later = Vec::new();
    for &r in &readers[1..] {
        let (waiter, reply) = sim.rw(r, "rw", RwMode::Read);
        queued(&reply);
        later.push(waiter);
    }
    let (_, events) = sim.give_back(Kind::RwLock, readers[0], "rw", held);
    held = granted_event(&events, writer);
    assert_eq!(events.len(), 1);
    // When the writer is done, the readers behind it go together.
    let (_, events) = sim.give_back(Kind::RwLock, writer_session, "rw", held);
    for waiter in later {
        granted_event(&events, waiter);
    }
    sim.state.check_indexes().unwrap();
}

// --- event ------------------------------------------------------------------------

#[test]
fn set_wakes_every_waiter_and_later_waits_return_at_once() {
    let mut sim = Sim::new();
    let sessions: Vec<_> = (0..3).map(|_| sim.session(TTL)).collect();
    let waiters: Vec<_> = sessions
        .iter()
        .map(|&s| {
            let (waiter, reply) = sim.event_wait(s, "ready", None);
            queued(&reply);
            waiter
        })
        .collect();
    let (reply, events) = sim.run(Command::EventSet {
        name: "ready".into(),
    });
    assert_eq!(reply, Ok(Reply::Count(3)));
    let woken: Vec<_> = events.iter().map(|(w, e)| (*w, e.clone())).collect();
    let expected: Vec<_> = waiters
        .iter()
        .map(|w| (*w, Ok(Reply::EventIsSet)))
        .collect();
    assert_eq!(woken, expected);
    assert_eq!(
        sim.event_wait(sessions[0], "ready", None).1,
        Ok(Reply::EventIsSet)
    );
    assert_eq!(
        sim.apply(Command::EventSet {
            name: "ready".into()
        }),
        Ok(Reply::Count(0))
    );
    sim.state.check_indexes().unwrap();
}

#[test]
fn an_event_is_persisted_while_set_and_forgotten_when_cleared() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    sim.apply(Command::EventSet { name: "e".into() }).unwrap();
    let restored = sim.restored();
    assert_eq!(listing(&restored, Some(Kind::Event), "").len(), 1);
    sim.apply(Command::EventClear { name: "e".into() }).unwrap();
    assert_eq!(listing(&sim.state, None, ""), vec![]);
    assert_eq!(listing(&sim.restored(), None, ""), vec![]);
    let (_, reply) = sim.event_wait(s, "e", Some(0));
    assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
    let (waiter, reply) = sim.event_wait(s, "e", Some(50));
    queued(&reply);
    let events = sim.tick_at(50);
    assert_eq!(
        super::codes(&events),
        vec![(waiter, Err(Code::DeadlineExceeded))]
    );
    assert_eq!(
        listing(&sim.state, None, ""),
        vec![],
        "a timed-out wait leaves nothing"
    );
}

// --- condition --------------------------------------------------------------------

fn reacquired(events: &Events, waiter: WaiterId) -> (FencingToken, bool) {
    match events.iter().find(|(w, _)| *w == waiter) {
        Some((
            _,
            Ok(Reply::Reacquired {
                fencing_token,
                timed_out,
            }),
        )) => (*fencing_token, *timed_out),
        other => panic!("expected a re-acquire for {waiter:?}, got {other:?} in {events:?}"),
    }
}

#[test]
fn condition_wait_releases_the_lock_and_notify_hands_it_back_with_a_new_token() {
    let mut sim = Sim::new();
    let (consumer, producer) = (sim.session(TTL), sim.session(TTL));
    let held = sim.take(consumer, "lock");
    let (producer_waiter, reply) = sim.acquire(producer, "lock", None);
    queued(&reply);
    let (waiter, reply, events) = sim.cond_wait(consumer, held, None);
    assert_eq!(queued(&reply), 1);
    // The producer gets the lock the consumer gave up, in the same step.
    let producer_token = granted_event(&events, producer_waiter);
    let (reply, events) = sim.run(Command::ConditionNotify {
        name: "cond".into(),
        count: None,
    });
    assert_eq!(reply, Ok(Reply::Count(1)));
    assert_eq!(events, vec![], "the lock is still the producer's");
    let (_, events) = sim.give_back(Kind::Lock, producer, "lock", producer_token);
    let (token, timed_out) = reacquired(&events, waiter);
    assert!(token > producer_token && !timed_out);
    assert_eq!(sim.holder("lock"), Some((consumer, token)));
    sim.state.check_indexes().unwrap();
}

#[test]
fn condition_wait_needs_the_lock_under_that_token() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(TTL));
    let (_, reply, _) = sim.cond_wait(a, 1, None);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    let token = sim.take(a, "lock");
    let (_, reply, _) = sim.cond_wait(b, token, None);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    let (_, reply, _) = sim.cond_wait(a, token + 1, None);
    assert_eq!(code(&reply), Some(Code::FailedPrecondition));
    assert_eq!(
        sim.holder("lock"),
        Some((a, token)),
        "a refused wait keeps the lock"
    );
}

#[test]
fn a_timed_out_condition_wait_takes_the_lock_again_and_says_so() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let token = sim.take(s, "lock");
    let (waiter, reply, _) = sim.cond_wait(s, token, Some(100));
    queued(&reply);
    assert_eq!(sim.holder("lock"), None);
    let events = sim.tick_at(100);
    let (again, timed_out) = reacquired(&events, waiter);
    assert!(timed_out && again > token);
    assert_eq!(sim.holder("lock"), Some((s, again)));
    assert_eq!(listing(&sim.state, Some(Kind::Condition), ""), vec![]);
}

#[test]
fn notify_wakes_the_given_number_in_order() {
    let mut sim = Sim::new();
    let sessions: Vec<_> = (0..3).map(|_| sim.session(TTL)).collect();
    let mut waiters = Vec::new();
    for &s in &sessions {
        let token = sim.take(s, "lock");
        let (waiter, reply, _) = sim.cond_wait(s, token, None);
        queued(&reply);
        waiters.push(waiter);
    }
    let (reply, events) = sim.run(Command::ConditionNotify {
        name: "cond".into(),
        count: Some(2),
    });
    assert_eq!(reply, Ok(Reply::Count(2)));
    // The first is granted at once (the lock is free), the second queues.
    let (first, _) = reacquired(&events, waiters[0]);
    assert_eq!(events.len(), 1);
    let (_, events) = sim.give_back(Kind::Lock, sessions[0], "lock", first);
    reacquired(&events, waiters[1]);
    let (reply, _) = sim.run(Command::ConditionNotify {
        name: "cond".into(),
        count: Some(5),
    });
    assert_eq!(reply, Ok(Reply::Count(1)));
    sim.state.check_indexes().unwrap();
}

// --- barrier ----------------------------------------------------------------------

#[test]
fn a_barrier_releases_everyone_when_the_last_party_arrives() {
    let mut sim = Sim::new();
    let sessions: Vec<_> = (0..3).map(|_| sim.session(TTL)).collect();
    let (w0, reply, _) = sim.arrive(sessions[0], 3, None);
    assert_eq!(queued(&reply), 1);
    let (w1, reply, _) = sim.arrive(sessions[1], 3, None);
    assert_eq!(queued(&reply), 2);
    let (_, reply, events) = sim.arrive(sessions[2], 3, None);
    let passed = |arrival_index| {
        Ok(Reply::BarrierPassed {
            arrival_index,
            generation: 0,
        })
    };
    assert_eq!(reply, passed(2));
    assert_eq!(events, vec![(w0, passed(0)), (w1, passed(1))]);
    // Reusable: the next generation starts empty.
    let info = sim.barrier_info();
    assert_eq!((info.parties, info.generation, info.broken), (3, 1, false));
    assert_eq!(info.waiters, vec![]);
    let (_, reply, _) = sim.arrive(sessions[0], 0, None);
    assert_eq!(queued(&reply), 1);
}

#[test]
fn a_party_that_times_out_breaks_the_barrier_until_reset() {
    let mut sim = Sim::new();
    let (a, b, c) = (sim.session(TTL), sim.session(TTL), sim.session(TTL));
    let (patient, _, _) = sim.arrive(a, 3, None);
    let (hasty, _, _) = sim.arrive(b, 3, Some(100));
    let events = sim.tick_at(100);
    assert_eq!(
        super::codes(&events),
        vec![
            (hasty, Err(Code::DeadlineExceeded)),
            (patient, Err(Code::Aborted))
        ]
    );
    let (_, reply, _) = sim.arrive(c, 3, None);
    assert_eq!(
        code(&reply),
        Some(Code::Aborted),
        "later waits fail at once"
    );
    assert!(sim.restored().barriers["b"].broken, "broken is persisted");
    assert_eq!(
        sim.apply(Command::BarrierReset { name: "b".into() }),
        Ok(Reply::Count(0))
    );
    let (_, reply, _) = sim.arrive(c, 3, None);
    queued(&reply);
    let info = sim.barrier_info();
    assert_eq!((info.generation, info.broken), (1, false));
}

#[test]
fn a_cancelled_or_expired_party_breaks_the_barrier() {
    let mut sim = Sim::new();
    let (a, b) = (sim.session(TTL), sim.session(1_000));
    let (first, _, _) = sim.arrive(a, 3, None);
    let (second, _, _) = sim.arrive(b, 3, None);
    let events = sim.tick_at(1_000);
    assert_eq!(
        super::codes(&events),
        vec![
            (second, Err(Code::FailedPrecondition)),
            (first, Err(Code::Aborted))
        ]
    );
    sim.apply(Command::BarrierReset { name: "b".into() })
        .unwrap();
    let (waiting, _, _) = sim.arrive(a, 3, None);
    let other = sim.session(TTL);
    let (leaving, _, _) = sim.arrive(other, 3, None);
    let (_, events) = sim.run(Command::Cancel { waiter: leaving });
    assert_eq!(super::codes(&events), vec![(waiting, Err(Code::Aborted))]);
}

#[test]
fn barrier_parties_are_fixed_and_delete_forgets_it() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    assert_eq!(code(&sim.arrive(s, 0, None).1), Some(Code::NotFound));
    let (waiter, _, _) = sim.arrive(s, 2, None);
    assert_eq!(
        code(&sim.arrive(s, 3, None).1),
        Some(Code::FailedPrecondition)
    );
    let (reply, events) = sim.run(Command::BarrierDelete { name: "b".into() });
    assert_eq!(reply, Ok(Reply::Count(1)));
    assert_eq!(super::codes(&events), vec![(waiter, Err(Code::Aborted))]);
    assert_eq!(listing(&sim.state, None, ""), vec![]);
    assert_eq!(listing(&sim.restored(), None, ""), vec![]);
    let (reply, _) = sim.run(Command::BarrierReset { name: "b".into() });
    assert_eq!(code(&reply), Some(Code::NotFound));
}

#[test]
fn a_single_party_barrier_passes_at_once() {
    let mut sim = Sim::new();
    let s = sim.session(TTL);
    let (_, reply, _) = sim.arrive(s, 1, None);
    assert_eq!(
        reply,
        Ok(Reply::BarrierPassed {
            arrival_index: 0,
            generation: 0
        })
    );
    let (_, reply, _) = sim.arrive(s, 1, Some(0));
    assert_eq!(
        reply,
        Ok(Reply::BarrierPassed {
            arrival_index: 0,
            generation: 1
        })
    );
}
