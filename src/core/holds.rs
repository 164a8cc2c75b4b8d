//! The bookkeeping every primitive shares: fencing tokens, holds owned by
//! sessions, waiters with deadlines, and the checks on names and queue
//! lengths. A primitive's own file decides who goes next; this file keeps the
//! indexes that let a session's end, a cancel or a timeout find everything in
//! one step.
//!
//! Invariants:
//! - a token in `State::holds` is in its session's `holds` and is the hold
//!   of the primitive it names;
//! - a waiter in `State::waiters` is in its session's `waiters` and in its
//!   primitive's queue, and in `State::deadlines` exactly when it has a
//!   deadline;
//! - fencing tokens only increase: each comes from `Counters`, which is
//!   persisted with every batch.

use std::collections::BTreeMap;

use super::waitq::{QueueFull, WaitQueue, Waiter};
use super::{
    Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, WaiterId,
};

/// Where a hold lives, indexed by its fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HoldRef {
    pub(super) session_id: SessionId,
    pub(super) kind: Kind,
    pub(super) name: String,
    /// The retry identity it was granted under (0 = none).
    pub(super) acquire_id: u64,
}

/// One hold as every holding primitive keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub session_id: SessionId,
    pub fencing_token: FencingToken,
    pub acquired_at_ms: u64,
    pub acquire_id: u64,
}

/// What `describe` shows of a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub session_id: SessionId,
    pub client_name: String,
    /// Where the holding session's client connected from.
    pub host: String,
    /// The identity (token name) of the holding session; empty without
    /// tokens.
    pub identity: String,
    pub fencing_token: FencingToken,
    pub held_ms: u64,
    pub lease_left_ms: u64,
}

/// What `describe` shows of a waiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaiterInfo {
    pub session_id: SessionId,
    pub client_name: String,
    pub host: String,
    pub identity: String,
    pub waiting_ms: u64,
}

/// A primitive with a waiter queue, so that queueing and leaving are
/// written once for all of them.
pub(super) trait Queueing: Default {
    type Request;
    fn queue(&mut self) -> &mut WaitQueue<Self::Request>;
    fn waiting(&self) -> &WaitQueue<Self::Request>;
    /// The holds: `(token, session)`. Checked against the indexes in tests.
    #[cfg_attr(not(test), allow(dead_code))]
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        Vec::new()
    }
}

/// The table of one kind of primitive inside `State`.
pub(super) type Table<P> = fn(&mut State) -> &mut BTreeMap<String, P>;

/// A primitive may exist while nobody uses it only if this says so.
pub(super) fn forget_if<P>(table: &mut BTreeMap<String, P>, name: &str, unused: fn(&P) -> bool) {
    if table.get(name).is_some_and(unused) {
        table.remove(name);
    }
}

/// Where a waiter waits, indexed by its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WaiterRef {
    pub(super) session_id: SessionId,
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) deadline_ms: Option<u64>,
}

impl State {
    /// Takes the next fencing token.
    pub(super) fn next_fencing_token(&mut self, out: &mut Outcome) -> FencingToken {
        self.counters.last_fencing_token += 1;
        out.changes.push(self.checkpoint());
        self.counters.last_fencing_token
    }

    /// Takes a token for a new hold of `session_id` and indexes it; the
    /// primitive stores the returned `Hold` and persists it.
    pub(super) fn new_hold(
        &mut self,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> Hold {
        let fencing_token = self.next_fencing_token(out);
        self.register_hold(fencing_token, session_id, kind, name, acquire_id);
        out.holds_granted.push((kind, fencing_token));
        Hold {
            session_id,
            fencing_token,
            acquired_at_ms: self.now_ms,
            acquire_id,
        }
    }

    /// Records that `session_id` holds `token` on a primitive.
    pub(super) fn register_hold(
        &mut self,
        token: FencingToken,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        acquire_id: u64,
    ) {
        let session = self
            .sessions
            .get_mut(session_id)
            .expect("a hold is only granted to a live session");
        session.holds.insert(token);
        self.holds.insert(
            token,
            HoldRef {
                session_id,
                kind,
                name: name.to_owned(),
                acquire_id,
            },
        );
    }

    /// A retry of an acquire that was granted already: the session holds
    /// `name` under this nonzero `acquire_id`.
    pub(super) fn retried_grant(
        &self,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        acquire_id: u64,
    ) -> Option<FencingToken> {
        if acquire_id == 0 {
            return None;
        }
        let session = self.sessions.get(session_id)?;
        session.holds.iter().copied().find(|token| {
            self.holds.get(token).is_some_and(|hold| {
                hold.kind == kind && hold.name == name && hold.acquire_id == acquire_id
            })
        })
    }

    /// Gives back a hold on a client's request: only the holding session,
    /// naming the hold's token on this primitive, may release it. (The
    /// name and session were checked by `apply`.)
    pub(super) fn release(
        &mut self,
        kind: Kind,
        session_id: SessionId,
        name: &str,
        fencing_token: FencingToken,
        out: &mut Outcome,
    ) -> Result<Reply> {
        let what = format!("{} {name:?}", kind.as_str());
        let problem = match self.holds.get(&fencing_token) {
            Some(hold) if hold.kind != kind || hold.name != name => {
                format!("token {fencing_token} is not a hold of {what}")
            }
            Some(hold) if hold.session_id != session_id => format!(
                "{what} is held under token {fencing_token} by session {}, not by session {session_id}",
                hold.session_id
            ),
            Some(_) => {
                self.release_hold(fencing_token, out);
                return Ok(Reply::Done);
            }
            None => match self.tokens_held(session_id, kind, name).as_slice() {
                [] => format!("{what} is not held by session {session_id}"),
                held => format!(
                    "{what} is held by this session under token {}, not {fencing_token}",
                    join(held)
                ),
            },
        };
        Err(Rejection::new(Code::FailedPrecondition, problem))
    }

    fn tokens_held(&self, session_id: SessionId, kind: Kind, name: &str) -> Vec<FencingToken> {
        let Some(session) = self.sessions.get(session_id) else {
            return Vec::new();
        };
        session
            .holds
            .iter()
            .copied()
            .filter(|token| {
                self.holds
                    .get(token)
                    .is_some_and(|h| h.kind == kind && h.name == name)
            })
            .collect()
    }

    /// Forgets a hold in the indexes (the primitive itself is updated by
    /// the caller).
    pub(super) fn unregister_hold(
        &mut self,
        token: FencingToken,
        out: &mut Outcome,
    ) -> Option<HoldRef> {
        let hold = self.holds.remove(&token)?;
        if let Some(session) = self.sessions.get_mut(hold.session_id) {
            session.holds.remove(&token);
        }
        out.holds_ended.push((hold.kind, token));
        Some(hold)
    }

    /// Releases a hold whoever owns it, and wakes whoever can go next.
    pub(super) fn release_hold(&mut self, token: FencingToken, out: &mut Outcome) {
        let Some(hold) = self.unregister_hold(token, out) else {
            return;
        };
        let name = hold.name.as_str();
        match hold.kind {
            Kind::Lock => self.lock_drop_hold(name, out),
            Kind::Semaphore => self.semaphore_drop_hold(name, token, out),
            Kind::RwLock => self.rwlock_drop_hold(name, token, out),
            Kind::Queue => self.queue_drop_hold(name, token, out),
            Kind::Pool => self.pool_drop_hold(name, token, out),
            Kind::Breaker => {
                self.breaker_drop_hold(name, token, out);
            }
            Kind::Event | Kind::Condition | Kind::Barrier | Kind::TokenBucket => {
                unreachable!("{} has no holds", hold.kind.as_str())
            }
        }
        self.refresh(hold.kind, name, out);
    }

    /// Something changed on a primitive: grant whoever can go now, and
    /// forget the primitive if nobody uses it any more.
    pub(super) fn refresh(&mut self, kind: Kind, name: &str, out: &mut Outcome) {
        match kind {
            Kind::Lock => self.lock_wake(name, out),
            Kind::Semaphore => self.semaphore_wake(name, out),
            Kind::RwLock => self.rwlock_wake(name, out),
            Kind::Event => self.event_forget_if_unused(name),
            Kind::Condition => self.condition_forget_if_unused(name),
            Kind::Barrier | Kind::Breaker => {}
            Kind::Queue => self.queue_wake(name, out),
            Kind::Pool => self.pool_wake(name, out),
            Kind::TokenBucket => self.bucket_wake(name, out),
        }
    }

    /// Puts a waiter at the back of a primitive's queue (creating the
    /// primitive if needed) and indexes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue<P: Queueing>(
        &mut self,
        table: Table<P>,
        kind: Kind,
        name: &str,
        waiter: WaiterId,
        session_id: SessionId,
        timeout_ms: Option<u64>,
        request: P::Request,
    ) -> Result<Reply> {
        let entry = self.waiter_entry(waiter, session_id, request);
        let limit = self.limits.waiters_per_primitive_max;
        let queue = table(self).entry(name.to_owned()).or_default().queue();
        let pushed = queue.push(entry, limit);
        self.admit_waiter(pushed, kind, name, waiter, session_id, timeout_ms)
    }

    /// A waiter's queue entry, enqueued now.
    pub(super) fn waiter_entry<R>(
        &self,
        waiter: WaiterId,
        session_id: SessionId,
        request: R,
    ) -> Waiter<R> {
        Waiter {
            id: waiter,
            session_id,
            enqueued_at_ms: self.now_ms,
            arrival: 0,
            request,
        }
    }

    /// Indexes a waiter that was pushed onto its queue (or explains why the
    /// queue refused it).
    pub(super) fn admit_waiter(
        &mut self,
        pushed: std::result::Result<usize, QueueFull>,
        kind: Kind,
        name: &str,
        waiter: WaiterId,
        session_id: SessionId,
        timeout_ms: Option<u64>,
    ) -> Result<Reply> {
        let position = pushed.map_err(|full| {
            Rejection::new(
                Code::ResourceExhausted,
                format!(
                    "waiters_per_primitive_max: {} {name:?} already has {} waiters",
                    kind.as_str(),
                    full.limit
                ),
            )
        })?;
        self.register_waiter(waiter, session_id, kind, name, timeout_ms);
        Ok(Reply::Queued {
            position: position as u32,
        })
    }

    /// Arms an alarm (see `Alarm`); `tick` rings it at `at_ms`.
    pub(super) fn set_alarm(&mut self, at_ms: u64, alarm: super::Alarm) {
        self.alarms.insert((at_ms, alarm));
    }

    pub(super) fn clear_alarm(&mut self, at_ms: u64, alarm: super::Alarm) {
        self.alarms.remove(&(at_ms, alarm));
    }

    /// A primitive's alarm rang.
    pub(super) fn alarm_rang(&mut self, kind: Kind, name: &str, out: &mut Outcome) {
        match kind {
            Kind::Pool => self.pool_alarm(name, out),
            Kind::TokenBucket => self.bucket_wake(name, out),
            Kind::Breaker => self.breaker_alarm(name, out),
            other => unreachable!("{} sets no alarms", other.as_str()),
        }
    }

    /// Takes the next queue item or pool resource id.
    pub(super) fn next_object_id(&mut self, out: &mut Outcome) -> u64 {
        self.counters.last_object_id += 1;
        out.changes.push(self.checkpoint());
        self.counters.last_object_id
    }

    /// Describes a hold for `describe`, as of `now_ms`.
    pub(super) fn holder_info(&self, now_ms: u64, hold: &Hold) -> HolderInfo {
        HolderInfo {
            session_id: hold.session_id,
            client_name: self.client_name(hold.session_id),
            host: self.host(hold.session_id),
            identity: self.identity(hold.session_id),
            fencing_token: hold.fencing_token,
            held_ms: now_ms.saturating_sub(hold.acquired_at_ms),
            lease_left_ms: self.lease_left_ms(now_ms, hold.session_id),
        }
    }

    /// Describes every waiter of a primitive without a request of its own.
    pub(super) fn waiter_infos<P: Queueing>(
        &self,
        now_ms: u64,
        primitive: Option<&P>,
    ) -> Vec<WaiterInfo> {
        primitive.map_or_else(Vec::new, |p| {
            (p.waiting().iter())
                .map(|w| self.waiter_info(now_ms, w))
                .collect()
        })
    }

    /// Describes a waiter for `describe`, as of `now_ms`.
    pub(super) fn waiter_info<R>(&self, now_ms: u64, waiter: &Waiter<R>) -> WaiterInfo {
        WaiterInfo {
            session_id: waiter.session_id,
            client_name: self.client_name(waiter.session_id),
            host: self.host(waiter.session_id),
            identity: self.identity(waiter.session_id),
            waiting_ms: now_ms.saturating_sub(waiter.enqueued_at_ms),
        }
    }

    pub(super) fn register_waiter(
        &mut self,
        waiter: WaiterId,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        timeout_ms: Option<u64>,
    ) {
        let deadline_ms = timeout_ms.map(|t| self.now_ms.saturating_add(t));
        // A new waiter: its record is not stored yet (unless it left and
        // came back in this same step, as a notified condition waiter does).
        self.touch_waiter(waiter, false);
        self.index_waiter(waiter, session_id, kind, name, deadline_ms);
    }

    /// Indexes a waiter (its session, its deadline) without writing its
    /// record: for `register_waiter`, and for `restore`, which read it.
    pub(super) fn index_waiter(
        &mut self,
        waiter: WaiterId,
        session_id: SessionId,
        kind: Kind,
        name: &str,
        deadline_ms: Option<u64>,
    ) {
        if let Some(at) = deadline_ms {
            self.deadlines.insert((at, waiter));
        }
        if let Some(session) = self.sessions.get_mut(session_id) {
            session.waiters.insert(waiter);
        }
        self.waiters.insert(
            waiter,
            WaiterRef {
                session_id,
                kind,
                name: name.to_owned(),
                deadline_ms,
            },
        );
    }

    /// Forgets a waiter in the indexes (not in its primitive's queue).
    pub(super) fn unregister_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
        let place = self.waiters.remove(&waiter)?;
        self.touch_waiter(waiter, true);
        if let Some(at) = place.deadline_ms {
            self.deadlines.remove(&(at, waiter));
        }
        if let Some(session) = self.sessions.get_mut(place.session_id) {
            session.waiters.remove(&waiter);
        }
        Some(place)
    }

    /// Removes a waiter from its primitive's queue and from the indexes.
    pub(super) fn remove_waiter(&mut self, waiter: WaiterId) -> Option<WaiterRef> {
        fn leave<P: Queueing>(table: &mut BTreeMap<String, P>, name: &str, waiter: WaiterId) {
            if let Some(primitive) = table.get_mut(name) {
                primitive.queue().remove(waiter);
            }
        }
        let place = self.unregister_waiter(waiter)?;
        let name = place.name.as_str();
        match place.kind {
            Kind::Lock => leave(&mut self.locks, name, waiter),
            Kind::Semaphore => leave(&mut self.semaphores, name, waiter),
            Kind::RwLock => leave(&mut self.rwlocks, name, waiter),
            Kind::Event => leave(&mut self.events, name, waiter),
            Kind::Condition => leave(&mut self.conditions, name, waiter),
            Kind::Barrier => leave(&mut self.barriers, name, waiter),
            Kind::Queue => self.queue_remove_waiter(name, waiter),
            Kind::Pool => leave(&mut self.pools, name, waiter),
            Kind::TokenBucket => leave(&mut self.buckets, name, waiter),
            Kind::Breaker => leave(&mut self.breakers, name, waiter),
        }
        Some(place)
    }

    /// Ends the waiters of a primitive that is being deleted (already out
    /// of its table): each hears NOT_FOUND. Returns how many there were.
    pub(super) fn end_waiters(
        &mut self,
        waiters: impl Iterator<Item = WaiterId>,
        why: &str,
        out: &mut Outcome,
    ) -> u32 {
        let mut ended = 0;
        for waiter in waiters {
            self.unregister_waiter(waiter);
            let gone = Rejection::new(Code::NotFound, why.to_owned());
            out.events.push((waiter, Err(gone)));
            ended += 1;
        }
        ended
    }

    pub(super) fn cancel_waiter(&mut self, waiter: WaiterId, out: &mut Outcome) {
        if let Some(place) = self.remove_waiter(waiter) {
            self.after_waiter_left(&place, out);
        }
    }

    /// A waiter left before its wait was over: others may be able to go
    /// now, or the primitive may be empty and vanish; a barrier breaks.
    pub(super) fn after_waiter_left(&mut self, place: &WaiterRef, out: &mut Outcome) {
        match place.kind {
            Kind::Barrier => self.barrier_break(&place.name, out),
            kind => self.refresh(kind, &place.name, out),
        }
    }

    /// A waiter's deadline passed: it hears DEADLINE_EXCEEDED, except a
    /// condition waiter, which goes on to take its lock again.
    pub(super) fn deadline_passed(&mut self, waiter: WaiterId, out: &mut Outcome) {
        let Some(kind) = self.waiters.get(&waiter).map(|w| w.kind) else {
            return;
        };
        if kind == Kind::Condition {
            self.condition_timed_out(waiter, out);
            return;
        }
        let Some(place) = self.remove_waiter(waiter) else {
            return;
        };
        let message = format!(
            "timed out waiting for {} {:?}",
            place.kind.as_str(),
            place.name
        );
        out.events
            .push((waiter, Err(Rejection::new(Code::DeadlineExceeded, message))));
        self.after_waiter_left(&place, out);
    }

    pub(super) fn client_name(&self, session_id: SessionId) -> String {
        self.sessions
            .get(session_id)
            .map(|s| s.client_name.clone())
            .unwrap_or_default()
    }

    pub(super) fn host(&self, session_id: SessionId) -> String {
        self.sessions
            .get(session_id)
            .map(|s| s.host.clone())
            .unwrap_or_default()
    }

    pub(super) fn identity(&self, session_id: SessionId) -> String {
        self.sessions
            .get(session_id)
            .map(|s| s.owner.clone())
            .unwrap_or_default()
    }

    pub(super) fn lease_left_ms(&self, now_ms: u64, session_id: SessionId) -> u64 {
        self.sessions
            .get(session_id)
            .map_or(0, |s| s.lease_left_ms(now_ms))
    }

    /// Checks a primitive's name: 1 to `name_bytes_max` bytes, no control
    /// characters.
    pub(super) fn validate_name(&self, kind: Kind, name: &str) -> Result<()> {
        let problem = if name.is_empty() {
            Some("is empty".to_owned())
        } else if name.len() > self.limits.name_bytes_max {
            Some(format!(
                "is {} bytes, the limit is {}",
                name.len(),
                self.limits.name_bytes_max
            ))
        } else if name.chars().any(char::is_control) {
            Some("contains a control character".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Rejection::new(
                Code::InvalidArgument,
                format!("{} name {problem}", kind.as_str()),
            )),
            None => Ok(()),
        }
    }
}

/// `1 hold`, `3 holds`: for the one-line summaries of `List`.
pub(super) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn join(tokens: &[FencingToken]) -> String {
    let texts: Vec<String> = tokens.iter().map(u64::to_string).collect();
    texts.join(", ")
}

/// Cross-checks the indexes against the primitives (for tests): every hold
/// and waiter is indexed where its primitive says, and nothing else is.
#[cfg(test)]
impl State {
    pub(super) fn check_indexes(&self) -> std::result::Result<(), String> {
        let mut holds = BTreeMap::new();
        let mut waiters = BTreeMap::new();
        collect(Kind::Lock, &self.locks, &mut holds, &mut waiters);
        collect(Kind::Semaphore, &self.semaphores, &mut holds, &mut waiters);
        collect(Kind::RwLock, &self.rwlocks, &mut holds, &mut waiters);
        collect(Kind::Event, &self.events, &mut holds, &mut waiters);
        collect(Kind::Condition, &self.conditions, &mut holds, &mut waiters);
        collect(Kind::Barrier, &self.barriers, &mut holds, &mut waiters);
        collect(Kind::Pool, &self.pools, &mut holds, &mut waiters);
        collect(Kind::TokenBucket, &self.buckets, &mut holds, &mut waiters);
        collect(Kind::Breaker, &self.breakers, &mut holds, &mut waiters);
        self.collect_queues(&mut holds, &mut waiters);
        let indexed_holds: BTreeMap<_, _> = (self.holds.iter())
            .map(|(t, h)| (*t, (h.kind, h.name.clone(), h.session_id)))
            .collect();
        if holds != indexed_holds {
            return Err(format!("holds {holds:?} but index {indexed_holds:?}"));
        }
        let indexed_waiters: BTreeMap<_, _> = (self.waiters.iter())
            .map(|(w, p)| (*w, (p.kind, p.name.clone(), p.session_id)))
            .collect();
        if waiters != indexed_waiters {
            return Err(format!("waiters {waiters:?} but index {indexed_waiters:?}"));
        }
        for session in self.sessions.iter() {
            let own_holds = (self.holds.iter())
                .filter(|(_, h)| h.session_id == session.id)
                .map(|(t, _)| *t)
                .collect();
            let own_waiters = (self.waiters.iter())
                .filter(|(_, w)| w.session_id == session.id)
                .map(|(w, _)| *w)
                .collect();
            if session.holds != own_holds || session.waiters != own_waiters {
                return Err(format!(
                    "session {} lists the wrong holds or waiters",
                    session.id
                ));
            }
        }
        let deadlines: std::collections::BTreeSet<_> = (self.waiters.iter())
            .filter_map(|(w, p)| p.deadline_ms.map(|at| (at, *w)))
            .collect();
        if deadlines != self.deadlines {
            return Err("the deadline index is out of step".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) type Place = (Kind, String, SessionId);

#[cfg(test)]
fn collect<P: Queueing>(
    kind: Kind,
    table: &BTreeMap<String, P>,
    holds: &mut BTreeMap<FencingToken, Place>,
    waiters: &mut BTreeMap<WaiterId, Place>,
) {
    for (name, primitive) in table {
        for (token, session_id) in primitive.held() {
            holds.insert(token, (kind, name.clone(), session_id));
        }
        for waiter in primitive.waiting().iter() {
            waiters.insert(waiter.id, (kind, name.clone(), waiter.session_id));
        }
    }
}
