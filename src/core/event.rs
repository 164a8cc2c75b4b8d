//! Event: a persisted flag; `set` wakes every waiter at once.
//!
//! Policy:
//! - `set` marks the event set and wakes all its waiters in the same step;
//!   setting a set event changes nothing. `clear` marks it clear.
//! - `wait` on a set event returns at once; on a clear one it queues until
//!   the next `set` (or its timeout, or its session's end). A `timeout_ms`
//!   of 0 only checks.
//! - Setting and clearing need no session; waiting does.
//! - The flag is persisted while set, and each waiter as a waiter record; a
//!   clear event without waiters does not exist.
//!
//! Invariants:
//! - a set event has no waiters;
//! - an event in memory is set, or has waiters.

use super::holds::{forget_if, Queueing, Table, WaiterInfo};
use super::records;
use super::waitq::{WaitQueue, Waiter};
use super::{Code, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary, WaiterId};

#[derive(Clone, Debug, Default)]
pub struct Event {
    /// When it was set; `None` while clear.
    set_at_ms: Option<u64>,
    waiters: WaitQueue<()>,
}

impl Queueing for Event {
    type Request = ();
    fn queue(&mut self) -> &mut WaitQueue<()> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<()> {
        &self.waiters
    }
}

impl Event {
    pub(super) fn set_at(set_at_ms: u64) -> Event {
        Event {
            set_at_ms: Some(set_at_ms),
            waiters: WaitQueue::default(),
        }
    }

    fn is_unused(&self) -> bool {
        self.set_at_ms.is_none() && self.waiters.is_empty()
    }

    /// Adds a restored waiter; a set event has none.
    pub(super) fn restore_waiter(
        &mut self,
        waiter: Waiter<()>,
    ) -> std::result::Result<(), &'static str> {
        if self.set_at_ms.is_some() {
            return Err("its event is set");
        }
        records::waiters::push(self, waiter)
    }
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    pub name: String,
    pub is_set: bool,
    /// How long ago it was set (0 while clear).
    pub set_ms: u64,
    pub waiters: Vec<WaiterInfo>,
}

impl State {
    pub(super) fn event_set(&mut self, name: String, out: &mut Outcome) -> Result<Reply> {
        self.validate_name(Kind::Event, &name)?;
        let now_ms = self.now_ms;
        let event = self.events.entry(name.clone()).or_default();
        if event.set_at_ms.is_some() {
            return Ok(Reply::Count(0));
        }
        event.set_at_ms = Some(now_ms);
        let woken = event.waiters.take_all();
        for waiter in &woken {
            self.unregister_waiter(waiter.id);
            out.events.push((waiter.id, Ok(Reply::EventIsSet)));
        }
        out.changes.push(records::event_put(&name, now_ms));
        Ok(Reply::Count(woken.len() as u32))
    }

    pub(super) fn event_clear(&mut self, name: String, out: &mut Outcome) -> Result<Reply> {
        self.validate_name(Kind::Event, &name)?;
        if let Some(event) = self.events.get_mut(&name) {
            if event.set_at_ms.take().is_some() {
                out.changes.push(records::event_delete(&name));
            }
        }
        self.event_forget_if_unused(&name);
        Ok(Reply::Done)
    }

    pub(super) fn event_wait(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
    ) -> Result<Reply> {
        self.validate_name(Kind::Event, &name)?;
        self.require_session(session_id)?;
        let is_set = self
            .events
            .get(&name)
            .is_some_and(|e| e.set_at_ms.is_some());
        if is_set {
            return Ok(Reply::EventIsSet);
        }
        if timeout_ms == Some(0) {
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!("event {name:?} is not set"),
            ));
        }
        let table: Table<Event> = |state| &mut state.events;
        self.enqueue(
            table,
            Kind::Event,
            &name,
            waiter,
            session_id,
            timeout_ms,
            (),
        )
    }

    pub(super) fn event_forget_if_unused(&mut self, name: &str) {
        forget_if(&mut self.events, name, Event::is_unused);
    }

    pub(super) fn event_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Event, name)?;
        let event = self.events.get(name);
        let set_at_ms = event.and_then(|e| e.set_at_ms);
        let waiters = self.waiter_infos(now_ms, event);
        Ok(Reply::EventDescription(EventInfo {
            name: name.to_owned(),
            is_set: set_at_ms.is_some(),
            set_ms: set_at_ms.map_or(0, |at| now_ms.saturating_sub(at)),
            waiters,
        }))
    }

    pub(super) fn event_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::named(&self.events, prefix)
            .map(|(name, e)| Summary {
                kind: Kind::Event,
                name: name.clone(),
                state: match e.set_at_ms {
                    Some(_) => "set".to_owned(),
                    None => format!("clear, {} waiting", e.waiters.len()),
                },
            })
            .collect()
    }
}
