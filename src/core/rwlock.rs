//! Read-write lock: many readers or one writer, fair to both.
//!
//! Policy:
//! - Requests are served in arrival order. A request is granted at once only
//!   if nobody waits and it is compatible with the holds (a read with other
//!   reads, a write with nothing). Otherwise it queues.
//! - When holds change, waiters are granted from the head while compatible:
//!   consecutive readers at the head go together; a writer at the head waits
//!   for every hold to end, and readers behind it wait for the writer. So a
//!   steady stream of readers cannot starve a writer, nor writers readers.
//! - Each hold has its own fencing token; only its session may release it.
//!
//! Invariants:
//! - the holds are either all reads, or exactly one write;
//! - after `rwlock_wake`, the head waiter (if any) is incompatible with the
//!   holds;
//! - a read-write lock with no holds and no waiters does not exist.

use std::collections::BTreeMap;

use super::holds::{forget_if, Hold, HolderInfo, Queueing, Table, WaiterInfo};
use super::records::{self, HoldExtra};
use super::waitq::WaitQueue;
use super::{Code, WaiterId};
use super::{FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary};

/// Read (shared) or write (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RwMode {
    Read,
    Write,
}

impl RwMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RwRequest {
    pub acquire_id: u64,
    pub mode: RwMode,
}

#[derive(Clone, Debug, Default)]
pub struct RwLock {
    holds: BTreeMap<FencingToken, (Hold, RwMode)>,
    waiters: WaitQueue<RwRequest>,
}

impl Queueing for RwLock {
    type Request = RwRequest;
    fn queue(&mut self) -> &mut WaitQueue<RwRequest> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<RwRequest> {
        &self.waiters
    }
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        self.holds
            .values()
            .map(|(h, _)| (h.fencing_token, h.session_id))
            .collect()
    }
}

impl RwLock {
    /// Whether a request of `mode` is compatible with the current holds.
    fn admits(&self, mode: RwMode) -> bool {
        match mode {
            RwMode::Write => self.holds.is_empty(),
            RwMode::Read => self.holds.values().all(|(_, m)| *m == RwMode::Read),
        }
    }

    fn is_unused(&self) -> bool {
        self.holds.is_empty() && self.waiters.is_empty()
    }

    /// Adds a restored hold; refuses one that is incompatible.
    pub(super) fn restore_hold(&mut self, hold: Hold, mode: RwMode) -> bool {
        let admitted = self.admits(mode);
        if admitted {
            self.holds.insert(hold.fencing_token, (hold, mode));
        }
        admitted
    }
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RwLockInfo {
    pub name: String,
    pub holders: Vec<(HolderInfo, RwMode)>,
    pub waiters: Vec<(WaiterInfo, RwMode)>,
}

impl State {
    pub(super) fn rwlock_acquire(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        request: RwRequest,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::RwLock, &name)?;
        self.require_session(session_id)?;
        let kind = Kind::RwLock;
        if let Some(fencing_token) = self.retried_grant(session_id, kind, &name, request.acquire_id)
        {
            return Ok(Reply::Granted { fencing_token });
        }
        let rwlock = self.rwlocks.get(&name);
        if rwlock.is_none_or(|l| l.waiters.is_empty() && l.admits(request.mode)) {
            let fencing_token = self.grant_rwlock(&name, session_id, &request, out);
            return Ok(Reply::Granted { fencing_token });
        }
        if timeout_ms == Some(0) {
            let rwlock = rwlock.expect("a missing lock was granted above");
            let held = match rwlock.holds.values().next() {
                Some((_, RwMode::Write)) => "write-locked".to_owned(),
                Some(_) => format!("read-locked by {} holds", rwlock.holds.len()),
                None => "free".to_owned(),
            };
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!(
                    "rwlock {name:?} is {held}, {} waiting",
                    rwlock.waiters.len()
                ),
            ));
        }
        let table: Table<RwLock> = |state| &mut state.rwlocks;
        self.enqueue(table, kind, &name, waiter, session_id, timeout_ms, request)
    }

    /// The hold `token` is gone from the indexes: drop it here too.
    pub(super) fn rwlock_drop_hold(&mut self, name: &str, token: FencingToken, out: &mut Outcome) {
        if let Some(rwlock) = self.rwlocks.get_mut(name) {
            rwlock.holds.remove(&token);
        }
        out.changes.push(records::hold_delete(token));
    }

    /// Grants waiters from the head while they are compatible; forgets the
    /// lock if nobody uses it.
    pub(super) fn rwlock_wake(&mut self, name: &str, out: &mut Outcome) {
        loop {
            let Some(rwlock) = self.rwlocks.get_mut(name) else {
                return;
            };
            let admitted = rwlock
                .waiters
                .front()
                .is_some_and(|w| rwlock.admits(w.request.mode));
            if !admitted {
                break;
            }
            let next = rwlock.waiters.pop_front().expect("front was checked");
            self.unregister_waiter(next.id);
            let fencing_token = self.grant_rwlock(name, next.session_id, &next.request, out);
            out.events
                .push((next.id, Ok(Reply::Granted { fencing_token })));
        }
        forget_if(&mut self.rwlocks, name, RwLock::is_unused);
    }

    fn grant_rwlock(
        &mut self,
        name: &str,
        session_id: SessionId,
        request: &RwRequest,
        out: &mut Outcome,
    ) -> FencingToken {
        let hold = self.new_hold(session_id, Kind::RwLock, name, request.acquire_id, out);
        let extra = HoldExtra::RwLock { mode: request.mode };
        out.changes
            .push(records::hold_put(Kind::RwLock, name, &hold, extra));
        let fencing_token = hold.fencing_token;
        let rwlock = self.rwlocks.entry(name.to_owned()).or_default();
        debug_assert!(rwlock.admits(request.mode), "incompatible rwlock grant");
        rwlock.holds.insert(fencing_token, (hold, request.mode));
        fencing_token
    }

    pub(super) fn rwlock_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::RwLock, name)?;
        let mut info = RwLockInfo {
            name: name.to_owned(),
            holders: Vec::new(),
            waiters: Vec::new(),
        };
        if let Some(rwlock) = self.rwlocks.get(name) {
            info.holders = (rwlock.holds.values())
                .map(|(hold, mode)| (self.holder_info(now_ms, hold), *mode))
                .collect();
            info.waiters = (rwlock.waiters.iter())
                .map(|w| (self.waiter_info(now_ms, w), w.request.mode))
                .collect();
        }
        Ok(Reply::RwLockDescription(info))
    }

    pub(super) fn rwlock_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.rwlocks, prefix)
            .map(|(name, l)| {
                let held = match l.holds.values().next() {
                    Some((hold, RwMode::Write)) => format!(
                        "write-held by session {} (token {})",
                        hold.session_id, hold.fencing_token
                    ),
                    Some(_) => format!(
                        "read-held by {}",
                        super::holds::count(l.holds.len(), "hold", "holds")
                    ),
                    None => "free".to_owned(),
                };
                Summary {
                    kind: Kind::RwLock,
                    name: name.clone(),
                    state: format!("{held}, {} waiting", l.waiters.len()),
                }
            })
            .collect()
    }
}
