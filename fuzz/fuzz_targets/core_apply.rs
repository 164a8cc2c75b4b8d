//! Arbitrary command sequences → `State::apply`/`tick` (and reads through
//! `State::query`) at simulated, never-decreasing times. After every step: cheap invariants visible
//! through the public API (describe replies, fencing tokens). At the end: a
//! restore from the persisted changes must succeed and be exact (the same
//! listing, counts and next deadline, waiters included), and then answer
//! every cancel and the final tick exactly as the live state does.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use syncd::core::breaker::{BreakerAction, BreakerSettings};
use syncd::core::token_bucket::{BucketAsk, BucketSettings};
use syncd::core::{
    Change, Command, Kind, Limits, Outcome, Query, Reply, Result, RwMode, State, Summary,
    WaiterId,
};

/// Small, so that commands meet each other on the same primitives.
fn limits() -> Limits {
    Limits {
        waiters_per_primitive_max: 8,
        semaphore_capacity_max: 16,
        item_bytes_max: 64,
        queue_items_max: 16,
        put_ids_per_session_max: 4,
        buckets_per_request_max: 4,
        holds_per_session_max: 16,
        waiters_per_session_max: 16,
        primitives_max: 32,
        ..Limits::default()
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Timeout {
    Forever,
    Try,
    Ms(u16),
}

impl Timeout {
    fn ms(self) -> Option<u64> {
        match self {
            Timeout::Forever => None,
            Timeout::Try => Some(0),
            Timeout::Ms(ms) => Some(u64::from(ms)),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HoldKind {
    Lock,
    Semaphore,
    RwLock,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Create {
        ttl: u16,
    },
    KeepAlive {
        s: u8,
        seen: u8,
    },
    Revoke {
        tok: u8,
    },
    Close {
        s: u8,
    },
    Lock {
        s: u8,
        n: u8,
        t: Timeout,
        acquire_id: u8,
    },
    Release {
        kind: HoldKind,
        s: u8,
        n: u8,
        tok: u8,
    },
    Semaphore {
        s: u8,
        n: u8,
        t: Timeout,
        acquire_id: u8,
        capacity: u8,
        permits: u8,
    },
    RwLock {
        s: u8,
        n: u8,
        t: Timeout,
        acquire_id: u8,
        write: bool,
    },
    EventSet {
        n: u8,
    },
    EventClear {
        n: u8,
    },
    EventWait {
        s: u8,
        n: u8,
        t: Timeout,
    },
    ConditionWait {
        s: u8,
        n: u8,
        lock: u8,
        tok: u8,
        t: Timeout,
    },
    ConditionNotify {
        n: u8,
        count: Option<u8>,
    },
    BarrierWait {
        s: u8,
        n: u8,
        parties: u8,
        t: Timeout,
    },
    BarrierReset {
        n: u8,
    },
    BarrierDelete {
        n: u8,
    },
    QueuePut {
        s: u8,
        n: u8,
        t: Timeout,
        len: u8,
        priority: u8,
        capacity: Option<u8>,
        max_deliveries: u8,
        put_id: u8,
    },
    QueueGet {
        s: u8,
        n: u8,
        t: Timeout,
        visibility_ms: u16,
        no_ack: bool,
    },
    QueueAck {
        s: u8,
        n: u8,
        item: u8,
    },
    QueueNack {
        s: u8,
        n: u8,
        item: u8,
    },
    QueueJoin {
        s: u8,
        n: u8,
        t: Timeout,
    },
    PoolCheckout {
        s: u8,
        n: u8,
        t: Timeout,
        acquire_id: u8,
        size: u8,
        max_age_ms: u16,
        max_idle_ms: u16,
    },
    PoolCheckin {
        s: u8,
        n: u8,
        tok: u8,
        healthy: bool,
        metadata: Option<u8>,
    },
    BucketTake {
        s: u8,
        n: u8,
        t: Timeout,
        rate: u8,
        capacity: u8,
        tokens: u8,
    },
    BucketTry {
        n: u8,
        rate: u8,
        capacity: u8,
        tokens: u8,
    },
    BucketTryMany {
        asks: Vec<(u8, u8, u8, u8)>,
    },
    BucketDelete {
        n: u8,
    },
    BreakerAllow {
        s: u8,
        n: u8,
        settings: Option<(u8, u16, u8, u8, u8, u8, u8)>,
        acquire_id: u8,
    },
    BreakerRecord {
        s: u8,
        n: u8,
        tok: u8,
        failed: bool,
    },
    BreakerWatch {
        s: u8,
        n: u8,
    },
    BreakerControl {
        n: u8,
        action: u8,
    },
    BreakerDelete {
        n: u8,
    },
    Describe {
        kind: u8,
        n: u8,
    },
    List {
        kind: Option<u8>,
        prefix: bool,
    },
    Cancel {
        w: u8,
    },
    ReleaseUndelivered {
        tok: u8,
    },
    Tick {
        dt: u16,
    },
    Advance {
        dt: u16,
    },
}

struct Sim {
    state: State,
    now: u64,
    store: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: Vec<u64>,
    /// Every token seen, with the primitive name it was seen for.
    tokens: BTreeMap<u64, String>,
    token_list: Vec<u64>,
    max_token: u64,
    items: Vec<u64>,
    waiters: Vec<WaiterId>,
    /// The primitive each waiter's grant is for (see `command_name`).
    waiter_names: BTreeMap<WaiterId, String>,
    open: BTreeSet<WaiterId>,
    next_waiter: u64,
}

fn pick<T: Copy>(list: &[T], i: u8, fallback: T) -> T {
    // One index past the end (and an empty list) gives the fallback: a
    // session, token or item that does not exist.
    if list.is_empty() || usize::from(i) % (list.len() + 1) == list.len() {
        fallback
    } else {
        list[usize::from(i) % (list.len() + 1)]
    }
}

fn name(n: u8) -> String {
    NAMES[usize::from(n) % NAMES.len()].to_owned()
}

fn kind_of(k: u8) -> Kind {
    Kind::ALL[usize::from(k) % Kind::ALL.len()]
}

impl Sim {
    fn new() -> Sim {
        Sim {
            state: State::new(limits()),
            now: 1_000,
            store: BTreeMap::new(),
            sessions: Vec::new(),
            tokens: BTreeMap::new(),
            token_list: Vec::new(),
            max_token: 0,
            items: Vec::new(),
            waiters: Vec::new(),
            waiter_names: BTreeMap::new(),
            open: BTreeSet::new(),
            next_waiter: 1,
        }
    }

    fn s(&self, i: u8) -> u64 {
        pick(&self.sessions, i, 999_999)
    }

    fn tok(&self, i: u8) -> u64 {
        pick(&self.token_list, i, self.max_token + 1)
    }

    fn waiter(&mut self) -> WaiterId {
        let w = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        self.waiters.push(w);
        w
    }

    fn persist(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Put { key, value } => {
                    self.store.insert(key.clone(), value.clone());
                }
                Change::Delete { key } => {
                    self.store.remove(key);
                }
            }
        }
    }

    /// A token in a reply: new ones must be above every token seen before;
    /// a token seen before (a retried acquire) must be for the same name.
    fn note_token(&mut self, token: u64, name: &str) {
        assert!(token != 0, "fencing token 0 handed out for {name:?}");
        match self.tokens.get(&token) {
            Some(seen) => assert_eq!(seen, name, "token {token} reused for another name"),
            None => {
                assert!(
                    token > self.max_token,
                    "new token {token} for {name:?} not above {}",
                    self.max_token
                );
                self.max_token = token;
                self.tokens.insert(token, name.to_owned());
                self.token_list.push(token);
            }
        }
    }

    fn observe(&mut self, reply: &Result<Reply>, name: &str) {
        let Ok(reply) = reply else { return };
        match reply {
            Reply::SessionCreated { session_id, .. } => {
                assert!(!self.sessions.contains(session_id), "session id reused");
                self.sessions.push(*session_id);
            }
            Reply::Granted { fencing_token } | Reply::Reacquired { fencing_token, .. } => {
                self.note_token(*fencing_token, name)
            }
            Reply::Delivered(d) => {
                if let Some(t) = d.fencing_token {
                    self.note_token(t, name);
                }
                if !self.items.contains(&d.id) {
                    self.items.push(d.id);
                }
            }
            Reply::Stored { item_id } if !self.items.contains(item_id) => {
                self.items.push(*item_id);
            }
            Reply::CheckedOut(c) => self.note_token(c.fencing_token, name),
            Reply::BreakerVerdict(v) => {
                if let Some((t, _)) = v.permit {
                    self.note_token(t, name);
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, command: Command, waiter: Option<WaiterId>) {
        let name = command_name(&command);
        if let Some(w) = waiter {
            self.waiter_names.insert(w, name.clone());
        }
        let mut out = Outcome::default();
        let reply = self.state.apply(self.now, command, &mut out);
        if let Some(w) = waiter {
            if matches!(
                reply,
                Ok(Reply::Queued { .. }) | Ok(Reply::BreakerChanged(_))
            ) {
                self.open.insert(w);
            }
        }
        self.observe(&reply, &name);
        self.outcome(out);
    }

    /// A read: it changes nothing, not even the clock.
    fn ask(&self, query: &Query) -> Result<Reply> {
        let clock = self.state.now_ms();
        let reply = self.state.query(self.now, query);
        assert_eq!(self.state.now_ms(), clock, "a query moved the clock");
        reply
    }

    fn outcome(&mut self, out: Outcome) {
        self.persist(&out.changes);
        for (w, event) in &out.events {
            if let Ok(r) = event {
                if let Some(t) = r.granted_token() {
                    let name = self.waiter_names.get(w).cloned().unwrap_or_default();
                    self.note_token(t, &name);
                }
            }
            let ends = match event {
                Ok(r) => r.is_final(),
                Err(_) => true,
            };
            if ends {
                self.open.remove(w);
            }
        }
    }

    fn step(&mut self, op: Op) {
        use Op::*;
        let cmd = match op {
            Create { ttl } => Command::CreateSession {
                ttl_ms: u64::from(ttl) * 4,
                client_name: "fuzz".into(),
                host: String::new(),
                owner: String::new(),
            },
            KeepAlive { s, seen } => Command::KeepAlive {
                session_id: self.s(s),
                notices_seen_through: u64::from(seen),
            },
            Revoke { tok } => Command::Revoke {
                fencing_token: self.tok(tok),
                detail: "fuzz".into(),
            },
            Close { s } => Command::CloseSession {
                session_id: self.s(s),
                reason: "fuzz".into(),
            },
            Lock {
                s,
                n,
                t,
                acquire_id,
            } => Command::LockAcquire {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                acquire_id: u64::from(acquire_id),
            },
            Release { kind, s, n, tok } => Command::Release {
                kind: match kind {
                    HoldKind::Lock => Kind::Lock,
                    HoldKind::Semaphore => Kind::Semaphore,
                    HoldKind::RwLock => Kind::RwLock,
                },
                session_id: self.s(s),
                name: name(n),
                fencing_token: self.tok(tok),
            },
            Semaphore {
                s,
                n,
                t,
                acquire_id,
                capacity,
                permits,
            } => Command::SemaphoreAcquire {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                acquire_id: u64::from(acquire_id),
                capacity: u32::from(capacity % 20),
                permits: u32::from(permits % 20),
            },
            RwLock {
                s,
                n,
                t,
                acquire_id,
                write,
            } => Command::RwLockAcquire {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                acquire_id: u64::from(acquire_id),
                mode: if write { RwMode::Write } else { RwMode::Read },
            },
            EventSet { n } => Command::EventSet { name: name(n) },
            EventClear { n } => Command::EventClear { name: name(n) },
            EventWait { s, n, t } => Command::EventWait {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
            },
            ConditionWait { s, n, lock, tok, t } => Command::ConditionWait {
                session_id: self.s(s),
                name: name(n),
                lock: name(lock),
                fencing_token: self.tok(tok),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
            },
            ConditionNotify { n, count } => Command::ConditionNotify {
                name: name(n),
                count: count.map(u32::from),
            },
            BarrierWait { s, n, parties, t } => Command::BarrierWait {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                parties: u32::from(parties % 6),
                timeout_ms: t.ms(),
            },
            BarrierReset { n } => Command::BarrierReset { name: name(n) },
            BarrierDelete { n } => Command::BarrierDelete { name: name(n) },
            QueuePut {
                s,
                n,
                t,
                len,
                priority,
                capacity,
                max_deliveries,
                put_id,
            } => Command::QueuePut {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                value: vec![len; usize::from(len % 80)],
                priority: u32::from(priority % 4),
                capacity: capacity.map(|c| u32::from(c % 8)),
                max_deliveries: u32::from(max_deliveries % 4),
                put_id: u64::from(put_id % 8),
            },
            QueueGet {
                s,
                n,
                t,
                visibility_ms,
                no_ack,
            } => Command::QueueGet {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                visibility_timeout_ms: u64::from(visibility_ms),
                no_ack,
            },
            QueueAck { s, n, item } => Command::QueueAck {
                session_id: self.s(s),
                name: name(n),
                item_id: pick(&self.items, item, 12_345),
            },
            QueueNack { s, n, item } => Command::QueueNack {
                session_id: self.s(s),
                name: name(n),
                item_id: pick(&self.items, item, 12_345),
            },
            QueueJoin { s, n, t } => Command::QueueJoin {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
            },
            PoolCheckout {
                s,
                n,
                t,
                acquire_id,
                size,
                max_age_ms,
                max_idle_ms,
            } => Command::PoolCheckout {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                acquire_id: u64::from(acquire_id),
                size: u32::from(size % 5),
                max_age_ms: u64::from(max_age_ms),
                max_idle_ms: u64::from(max_idle_ms),
            },
            PoolCheckin {
                s,
                n,
                tok,
                healthy,
                metadata,
            } => Command::PoolCheckin {
                session_id: self.s(s),
                name: name(n),
                fencing_token: self.tok(tok),
                healthy,
                metadata: metadata.map(|m| vec![m; usize::from(m % 70)]),
            },
            BucketTake {
                s,
                n,
                t,
                rate,
                capacity,
                tokens,
            } => Command::BucketTake {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
                timeout_ms: t.ms(),
                settings: BucketSettings {
                    rate_per_s: u32::from(rate),
                    capacity: u32::from(capacity),
                },
                tokens: u32::from(tokens),
            },
            BucketTry {
                n,
                rate,
                capacity,
                tokens,
            } => Command::BucketTry {
                name: name(n),
                settings: BucketSettings {
                    rate_per_s: u32::from(rate),
                    capacity: u32::from(capacity),
                },
                tokens: u32::from(tokens),
            },
            BucketTryMany { asks } => Command::BucketTryMany {
                asks: asks
                    .into_iter()
                    .take(6)
                    .map(|(n, rate, capacity, tokens)| BucketAsk {
                        name: name(n),
                        settings: BucketSettings {
                            rate_per_s: u32::from(rate),
                            capacity: u32::from(capacity),
                        },
                        tokens: u32::from(tokens),
                    })
                    .collect(),
            },
            BucketDelete { n } => Command::BucketDelete { name: name(n) },
            BreakerAllow {
                s,
                n,
                settings,
                acquire_id,
            } => Command::BreakerAllow {
                session_id: self.s(s),
                name: name(n),
                settings: settings.map(|(f, open, probes, succ, window, rate, min)| {
                    BreakerSettings {
                        failure_threshold: u32::from(f % 8),
                        open_timeout_ms: u64::from(open),
                        half_open_max_probes: u32::from(probes % 4),
                        success_threshold: u32::from(succ % 4),
                        window_calls: u32::from(window % 16),
                        failure_rate_percent: u32::from(rate % 120),
                        min_calls: u32::from(min % 16),
                    }
                }),
                acquire_id: u64::from(acquire_id),
            },
            BreakerRecord { s, n, tok, failed } => Command::BreakerRecord {
                session_id: self.s(s),
                name: name(n),
                fencing_token: self.tok(tok),
                failed,
            },
            BreakerWatch { s, n } => Command::BreakerWatch {
                session_id: self.s(s),
                name: name(n),
                waiter: self.waiter(),
            },
            BreakerControl { n, action } => Command::BreakerControl {
                name: name(n),
                action: match action % 3 {
                    0 => BreakerAction::ForceOpen,
                    1 => BreakerAction::ForceClose,
                    _ => BreakerAction::Reset,
                },
            },
            BreakerDelete { n } => Command::BreakerDelete { name: name(n) },
            Describe { kind, n } => {
                let _ = self.ask(&describe(kind_of(kind), name(n)));
                return;
            }
            List { kind, prefix } => {
                let list = Query::List {
                    kind: kind.map(kind_of),
                    prefix: if prefix { "a".into() } else { String::new() },
                };
                let _ = self.ask(&list);
                return;
            }
            Cancel { w } => {
                let waiter = pick(&self.waiters, w, WaiterId(u64::MAX));
                self.open.remove(&waiter);
                Command::Cancel { waiter }
            }
            ReleaseUndelivered { tok } => Command::ReleaseUndelivered {
                fencing_token: self.tok(tok),
            },
            Tick { dt } => {
                self.now += u64::from(dt);
                let mut out = Outcome::default();
                self.state.tick(self.now, &mut out);
                self.outcome(out);
                return;
            }
            Advance { dt } => {
                // Time passes without a tick: the next command sees it.
                self.now += u64::from(dt);
                return;
            }
        };
        let waiter = command_waiter(&cmd);
        self.run(cmd, waiter);
    }

    /// Invariants readable from outside, on every name.
    fn check(&self) {
        for n in NAMES {
            let r = self.ask(&describe(Kind::Lock, n.into()));
            if let Ok(Reply::LockDescription(info)) = r {
                assert!(
                    info.holder.is_some() || info.waiters.is_empty(),
                    "free lock {n} with waiters: {info:?}"
                );
            } else {
                panic!("lock describe: {r:?}");
            }
            let r = self.ask(&describe(Kind::Semaphore, n.into()));
            if let Ok(Reply::SemaphoreDescription(info)) = r {
                let held: u32 = info.holders.iter().map(|(_, p)| p).sum();
                assert_eq!(held, info.permits_held, "{info:?}");
                assert!(held <= info.capacity, "over capacity: {info:?}");
                if let Some((_, head)) = info.waiters.first() {
                    assert!(held + head > info.capacity, "head fits but waits: {info:?}");
                }
            } else {
                panic!("semaphore describe: {r:?}");
            }
            let r = self.ask(&describe(Kind::RwLock, n.into()));
            if let Ok(Reply::RwLockDescription(info)) = r {
                let writes = info
                    .holders
                    .iter()
                    .filter(|(_, m)| *m == RwMode::Write)
                    .count();
                assert!(writes == 0 || info.holders.len() == 1, "{info:?}");
                if let Some((_, head)) = info.waiters.first() {
                    let admitted = match head {
                        RwMode::Write => info.holders.is_empty(),
                        RwMode::Read => writes == 0,
                    };
                    assert!(!admitted, "head admitted but waits: {info:?}");
                }
            } else {
                panic!("rwlock describe: {r:?}");
            }
        }
        assert_eq!(self.state.waiter_count(), self.open.len(), "open waiters");
    }

    fn finish(&mut self) {
        let mut store = self.store.clone();
        if let Change::Put { key, value } = self.state.checkpoint() {
            store.insert(key, value);
        }
        let mut restored = match State::restore(limits(), store) {
            Ok(s) => s,
            Err(e) => panic!("restore of a live state failed: {e:?}"),
        };
        assert_eq!(restored.now_ms(), self.state.now_ms(), "clock");
        let counts = |s: &State| (s.session_count(), s.hold_count(), s.waiter_count());
        assert_eq!(counts(&restored), counts(&self.state), "sessions, holds, waiters");
        assert_eq!(
            restored.next_deadline_ms(),
            self.state.next_deadline_ms(),
            "next deadline after restore"
        );
        let live = listing(&self.state, self.now);
        let back = listing(&restored, self.now);
        assert_eq!(live, back, "listing after restore");
        // From here on both must behave the same: end every waiter, then
        // let every lease run out.
        let far = self.now + 10 * 3_600_000;
        let mut inputs: Vec<Option<Command>> = (self.waiters.iter())
            .map(|&waiter| Some(Command::Cancel { waiter }))
            .collect();
        inputs.push(None);
        for input in inputs {
            let (mut a, mut b) = (Outcome::default(), Outcome::default());
            match input {
                Some(command) => {
                    let live = self.state.apply(self.now, command.clone(), &mut a);
                    let back = restored.apply(self.now, command, &mut b);
                    assert_eq!(live, back, "reply after restore");
                }
                None => {
                    self.state.tick(far, &mut a);
                    restored.tick(far, &mut b);
                }
            }
            assert_eq!(a.events, b.events, "events after restore");
            assert_eq!(a.changes, b.changes, "changes after restore");
        }
        assert_eq!(self.state.waiter_count(), 0, "waiters left after cancelling all");
        assert_eq!(counts(&restored), counts(&self.state), "at the end");
    }
}

fn describe(kind: Kind, name: String) -> Query {
    match kind {
        Kind::Lock => Query::LockDescribe { name },
        Kind::Semaphore => Query::SemaphoreDescribe { name },
        Kind::RwLock => Query::RwLockDescribe { name },
        Kind::Event => Query::EventDescribe { name },
        Kind::Condition => Query::ConditionDescribe { name },
        Kind::Barrier => Query::BarrierDescribe { name },
        Kind::Queue => Query::QueueDescribe { name },
        Kind::Pool => Query::PoolDescribe { name },
        Kind::TokenBucket => Query::BucketDescribe { name },
        Kind::Breaker => Query::BreakerDescribe { name },
    }
}

fn command_waiter(c: &Command) -> Option<WaiterId> {
    match c {
        Command::LockAcquire { waiter, .. }
        | Command::SemaphoreAcquire { waiter, .. }
        | Command::RwLockAcquire { waiter, .. }
        | Command::EventWait { waiter, .. }
        | Command::ConditionWait { waiter, .. }
        | Command::BarrierWait { waiter, .. }
        | Command::QueuePut { waiter, .. }
        | Command::QueueGet { waiter, .. }
        | Command::QueueJoin { waiter, .. }
        | Command::PoolCheckout { waiter, .. }
        | Command::BucketTake { waiter, .. }
        | Command::BreakerWatch { waiter, .. } => Some(*waiter),
        _ => None,
    }
}

/// The primitive a command is about, to tell retried tokens from reused
/// ones; a condition wait re-acquires its lock.
fn command_name(c: &Command) -> String {
    match c {
        Command::ConditionWait { lock, .. } => lock.clone(),
        Command::LockAcquire { name, .. }
        | Command::SemaphoreAcquire { name, .. }
        | Command::RwLockAcquire { name, .. }
        | Command::QueueGet { name, .. }
        | Command::PoolCheckout { name, .. }
        | Command::BreakerAllow { name, .. } => name.clone(),
        _ => String::new(),
    }
}

fn listing(state: &State, now: u64) -> Vec<Summary> {
    let list = Query::List {
        kind: None,
        prefix: String::new(),
    };
    match state.query(now, &list) {
        Ok(Reply::Listing(lines)) => lines,
        other => panic!("list: {other:?}"),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut sim = Sim::new();
    for op in ops.into_iter().take(200) {
        sim.step(op);
        sim.check();
    }
    sim.finish();
});
