//! How a breaker changes state: the open timeout's alarm, operators'
//! requests, watchers told of every change; and making, describing and
//! listing breakers.

use super::super::records as hold_records;
use super::super::{
    Code, Kind, LossCause, Outcome, Rejection, Reply, Result, SessionId, State, Summary, WaiterId,
};
use super::records::{breaker_delete, breaker_put};
use super::{alarm, Breaker, BreakerAction, BreakerInfo, BreakerSettings, BreakerState};

impl State {
    /// Streams the state to a watcher: now, then at every change.
    pub(in crate::core) fn breaker_watch(
        &mut self,
        session_id: SessionId,
        name: &str,
        waiter: WaiterId,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Breaker, name)?;
        self.require_session(session_id)?;
        self.breaker_existing(name)?;
        self.breaker_half_open_if_due(name, out);
        let entry = self.waiter_entry(waiter, session_id, ());
        let limit = self.limits.waiters_per_primitive_max;
        let breaker = self.breakers.get_mut(name).expect("exists");
        let pushed = breaker.watchers.push(entry, limit);
        let current = breaker.change(self.now_ms);
        self.admit_waiter(pushed, Kind::Breaker, name, waiter, session_id, None)?;
        Ok(Reply::BreakerChanged(current))
    }

    pub(in crate::core) fn breaker_control(
        &mut self,
        name: &str,
        action: BreakerAction,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Breaker, name)?;
        self.breaker_existing(name)?;
        let (next, reason) = match action {
            BreakerAction::ForceOpen => (BreakerState::ForcedOpen, "forced open by an operator"),
            BreakerAction::ForceClose => {
                (BreakerState::ForcedClosed, "forced closed by an operator")
            }
            BreakerAction::Reset => (BreakerState::Closed, "reset by an operator"),
        };
        // Forcing the state it is already forced into changes nothing, so
        // a retried request neither wakes watchers nor voids permits.
        let already = self.breakers[name].state == next && next != BreakerState::Closed;
        if !already {
            self.breaker_turn(name, next, reason.to_owned(), out);
        }
        Ok(Reply::BreakerStateIs(next))
    }

    /// The alarm of an open breaker rang.
    pub(in crate::core) fn breaker_alarm(&mut self, name: &str, out: &mut Outcome) {
        self.breaker_half_open_if_due(name, out);
    }

    pub(super) fn breaker_half_open_if_due(&mut self, name: &str, out: &mut Outcome) {
        let due = self
            .breakers
            .get(name)
            .is_some_and(|b| b.state == BreakerState::Open && b.open_until_ms <= self.now_ms);
        if due {
            let reason = "the open timeout passed".to_owned();
            self.breaker_turn(name, BreakerState::HalfOpen, reason, out);
        }
    }

    /// Moves a breaker to a new state (a new era), persists it and tells
    /// every watcher.
    pub(super) fn breaker_turn(
        &mut self,
        name: &str,
        next: BreakerState,
        reason: String,
        out: &mut Outcome,
    ) {
        let now_ms = self.now_ms;
        let breaker = self.breakers.get_mut(name).expect("exists");
        let was_open_until = (breaker.state == BreakerState::Open).then_some(breaker.open_until_ms);
        breaker.state = next;
        breaker.reason = reason;
        breaker.era += 1;
        breaker.consecutive_failures = 0;
        breaker.window.clear();
        breaker.half_open_successes = 0;
        breaker.probes_in_flight = 0;
        breaker.open_until_ms = match next {
            BreakerState::Open => now_ms.saturating_add(breaker.settings.open_timeout_ms),
            _ => 0,
        };
        let change = breaker.change(now_ms);
        out.changes.push(breaker_put(name, breaker));
        for watcher in breaker.watchers.iter() {
            let event = Ok(Reply::BreakerChanged(change.clone()));
            out.events.push((watcher.id, event));
        }
        if let Some(at) = was_open_until {
            self.clear_alarm(at, alarm(name));
        }
        if next == BreakerState::Open {
            let at = self.breakers[name].open_until_ms;
            self.set_alarm(at, alarm(name));
        }
    }

    /// Checks the settings a request names, or makes the breaker.
    pub(super) fn breaker_for(
        &mut self,
        name: &str,
        asked: Option<BreakerSettings>,
        out: &mut Outcome,
    ) -> Result<()> {
        let invalid = |problem| {
            Rejection::new(
                Code::InvalidArgument,
                format!("breaker {name:?}: {problem}"),
            )
        };
        let asked = asked.map(BreakerSettings::normalized).transpose();
        let asked = asked.map_err(invalid)?;
        match (self.breakers.get(name), asked) {
            (Some(existing), Some(asked)) if existing.settings != asked => Err(Rejection::new(
                Code::FailedPrecondition,
                format!(
                    "breaker {name:?} exists with other settings ({}), not ({asked})",
                    existing.settings
                ),
            )),
            (Some(_), _) => Ok(()),
            (None, None) => self.breaker_existing(name),
            (None, Some(settings)) => {
                let breaker = Breaker {
                    settings,
                    reason: "new".to_owned(),
                    ..Breaker::default()
                };
                out.changes.push(breaker_put(name, &breaker));
                self.breakers.insert(name.to_owned(), breaker);
                Ok(())
            }
        }
    }

    pub(super) fn breaker_existing(&self, name: &str) -> Result<()> {
        if self.breakers.contains_key(name) {
            return Ok(());
        }
        Err(Rejection::new(
            Code::NotFound,
            format!("breaker {name:?} does not exist; give its settings to create it"),
        ))
    }

    /// Forgets a breaker: its permits are dropped (a later record is
    /// NOT_FOUND) and its watchers hear NOT_FOUND.
    pub(in crate::core) fn breaker_delete(
        &mut self,
        name: &str,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Breaker, name)?;
        self.breaker_existing(name)?;
        let breaker = self.breakers.remove(name).expect("exists");
        if breaker.state == BreakerState::Open {
            self.clear_alarm(breaker.open_until_ms, alarm(name));
        }
        for token in breaker.permits.keys() {
            self.note_lost_hold(*token, LossCause::Deleted, out);
            self.unregister_hold(*token, out);
            out.changes.push(hold_records::hold_delete(*token));
        }
        let why = format!("breaker {name:?} was deleted");
        let waiters_ended = self.end_waiters(breaker.watchers.iter().map(|w| w.id), &why, out);
        out.changes.push(breaker_delete(name));
        Ok(Reply::Deleted {
            waiters_ended,
            holds_dropped: breaker.permits.len() as u32,
        })
    }

    pub(in crate::core) fn breaker_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Breaker, name)?;
        let mut info = BreakerInfo {
            name: name.to_owned(),
            ..BreakerInfo::default()
        };
        if let Some(b) = self.breakers.get(name) {
            info.settings = Some(b.settings);
            info.state = b.state;
            info.reason = b.reason.clone();
            info.retry_after_ms = b.retry_after_ms(now_ms);
            info.consecutive_failures = b.consecutive_failures;
            info.window_calls_seen = b.window.len() as u32;
            info.window_failures = b.window.iter().filter(|f| **f).count() as u32;
            info.half_open_successes = b.half_open_successes;
            info.probes_in_flight = b.probes_in_flight;
            info.permits = (b.permits.values())
                .map(|p| self.holder_info(now_ms, &p.hold))
                .collect();
            info.watchers = b.watchers.len() as u32;
        }
        Ok(Reply::BreakerDescription(info))
    }

    pub(in crate::core) fn breaker_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::super::named(&self.breakers, prefix)
            .map(|(name, b)| Summary {
                kind: Kind::Breaker,
                name: name.clone(),
                state: format!(
                    "{} ({}), {} permits in flight",
                    b.state.as_str(),
                    b.reason,
                    b.permits.len()
                ),
            })
            .collect()
    }
}
