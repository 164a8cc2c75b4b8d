//! Circuit breaker: one shared view of a downstream for every process.
//!
//! Policy:
//! - Closed: calls get permits. `failure_threshold` failures in a row, or
//!   (when the window rule is on) at least `failure_rate_percent` failures
//!   among the last `window_calls` outcomes once `min_calls` are in, open it.
//! - Open: calls are refused with the time left; after `open_timeout_ms`
//!   the engine's alarm turns it half-open (also checked on every request,
//!   so a late alarm never refuses a call that is due).
//! - Half-open: at most `half_open_max_probes` probe permits at once;
//!   `success_threshold` successful probes close it, one failed probe opens
//!   it again.
//! - Operators pin it open or closed (`ForcedOpen`, `ForcedClosed`) until a
//!   reset.
//! - A permit is a hold of the caller's session. A permit whose session ends
//!   is dropped without an outcome: a dead probe frees its slot once its
//!   lease is over.
//!
//! Invariants:
//! - every change of state bumps `era`; a permit keeps the era it was given
//!   in, and only outcomes of the current era count, so a slow call from
//!   before the breaker opened can neither close nor reopen it later;
//! - `probes_in_flight` is the number of permits of the current era while
//!   half-open, and never exceeds `half_open_max_probes`;
//! - an open breaker has exactly one alarm, at `open_until_ms`; no other
//!   state has one;
//! - every watcher hears every change of state, in order.

mod records;
mod transitions;

use std::collections::{BTreeMap, VecDeque};

use self::records::breaker_put;
use super::holds::{Hold, HolderInfo, Queueing};
use super::records::{self as hold_records, HoldExtra};
use super::waitq::WaitQueue;
use super::{Alarm, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State};

const DEFAULT_OPEN_TIMEOUT_MS: u64 = 30_000;
const OPEN_TIMEOUT_MS_MAX: u64 = 86_400_000;
const PROBES_MAX: u32 = 1_000;
const SUCCESS_THRESHOLD_MAX: u32 = 1_000;
const WINDOW_CALLS_MAX: u32 = 1_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
            BreakerState::ForcedOpen => "forced open",
            BreakerState::ForcedClosed => "forced closed",
        }
    }
}

/// Fixed when the breaker is made. Zero fields take the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_timeout_ms: u64,
    pub half_open_max_probes: u32,
    pub success_threshold: u32,
    pub window_calls: u32,
    pub failure_rate_percent: u32,
    pub min_calls: u32,
}

impl BreakerSettings {
    /// Fills in the defaults and checks the bounds.
    pub fn normalized(self) -> std::result::Result<BreakerSettings, String> {
        let mut s = self;
        if s.failure_threshold == 0 && s.window_calls == 0 {
            return Err("a breaker needs failure_threshold or window_calls (or both)".into());
        }
        s.open_timeout_ms = nonzero_or(s.open_timeout_ms, DEFAULT_OPEN_TIMEOUT_MS);
        s.half_open_max_probes = nonzero_or(s.half_open_max_probes, 1);
        s.success_threshold = nonzero_or(s.success_threshold, 1);
        s.min_calls = nonzero_or(s.min_calls, s.window_calls);
        let out_of_range = [
            (s.open_timeout_ms > OPEN_TIMEOUT_MS_MAX).then_some("open_timeout_ms above 86400000"),
            (s.half_open_max_probes > PROBES_MAX).then_some("half_open_max_probes above 1000"),
            (s.success_threshold > SUCCESS_THRESHOLD_MAX).then_some("success_threshold above 1000"),
            (s.window_calls > WINDOW_CALLS_MAX).then_some("window_calls above 1000"),
            (s.window_calls > 0 && !(1..=100).contains(&s.failure_rate_percent))
                .then_some("failure_rate_percent must be 1 to 100 with window_calls"),
            (s.window_calls == 0 && (s.failure_rate_percent != 0 || s.min_calls != 0))
                .then_some("failure_rate_percent and min_calls need window_calls"),
            (s.min_calls > s.window_calls).then_some("min_calls above window_calls"),
        ];
        match out_of_range.into_iter().flatten().next() {
            Some(problem) => Err(problem.to_owned()),
            None => Ok(s),
        }
    }
}

impl std::fmt::Display for BreakerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "failure_threshold {}, open_timeout_ms {}, half_open_max_probes {}, \
             success_threshold {}",
            self.failure_threshold,
            self.open_timeout_ms,
            self.half_open_max_probes,
            self.success_threshold
        )?;
        if self.window_calls > 0 {
            write!(
                f,
                ", window_calls {}, failure_rate_percent {}, min_calls {}",
                self.window_calls, self.failure_rate_percent, self.min_calls
            )?;
        }
        Ok(())
    }
}

fn nonzero_or<T: Default + PartialEq>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

/// What an operator asks of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerAction {
    ForceOpen,
    ForceClose,
    Reset,
}

/// The answer to `allow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The permit's token and whether it is a half-open probe; `None` when
    /// the call is refused.
    pub permit: Option<(FencingToken, bool)>,
    pub state: BreakerState,
    /// When refused: milliseconds until a probe may go (0 = unknown).
    pub retry_after_ms: u64,
}

/// A state as watchers hear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub state: BreakerState,
    pub reason: String,
    /// Open: milliseconds until half-open.
    pub retry_after_ms: u64,
}

/// What `describe` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerInfo {
    pub name: String,
    /// `None` when the breaker does not exist.
    pub settings: Option<BreakerSettings>,
    pub state: BreakerState,
    pub reason: String,
    pub retry_after_ms: u64,
    pub consecutive_failures: u32,
    pub window_calls_seen: u32,
    pub window_failures: u32,
    pub half_open_successes: u32,
    pub probes_in_flight: u32,
    pub permits: Vec<HolderInfo>,
    pub watchers: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Permit {
    hold: Hold,
    era: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    reason: String,
    era: u64,
    consecutive_failures: u32,
    /// The last outcomes while closed, oldest first: true = failure.
    window: VecDeque<bool>,
    half_open_successes: u32,
    probes_in_flight: u32,
    open_until_ms: u64,
    permits: BTreeMap<FencingToken, Permit>,
    watchers: WaitQueue<()>,
}

impl Queueing for Breaker {
    type Request = ();
    fn queue(&mut self) -> &mut WaitQueue<()> {
        &mut self.watchers
    }
    fn waiting(&self) -> &WaitQueue<()> {
        &self.watchers
    }
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        (self.permits.iter())
            .map(|(token, p)| (*token, p.hold.session_id))
            .collect()
    }
}

impl Breaker {
    fn is_probe(&self, permit_era: u64) -> bool {
        self.state == BreakerState::HalfOpen && permit_era == self.era
    }

    /// Counts an outcome of the current era; says what the breaker should
    /// turn into, and why.
    fn count(&mut self, failed: bool) -> Option<(BreakerState, String)> {
        let s = self.settings;
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = if failed {
                    self.consecutive_failures + 1
                } else {
                    0
                };
                if s.window_calls > 0 {
                    if self.window.len() == s.window_calls as usize {
                        self.window.pop_front();
                    }
                    self.window.push_back(failed);
                }
                let failures = self.window.iter().filter(|f| **f).count() as u64;
                let seen = self.window.len() as u64;
                if s.failure_threshold > 0 && self.consecutive_failures >= s.failure_threshold {
                    let reason = counted(self.consecutive_failures, "consecutive failure");
                    Some((BreakerState::Open, reason))
                } else if s.window_calls > 0
                    && seen >= u64::from(s.min_calls)
                    && failures * 100 >= u64::from(s.failure_rate_percent) * seen
                {
                    let reason = format!("{failures} of the last {seen} calls failed");
                    Some((BreakerState::Open, reason))
                } else {
                    None
                }
            }
            BreakerState::HalfOpen if failed => {
                Some((BreakerState::Open, "a probe call failed".to_owned()))
            }
            BreakerState::HalfOpen => {
                self.half_open_successes += 1;
                (self.half_open_successes >= s.success_threshold).then(|| {
                    let reason = counted(self.half_open_successes, "successful probe call");
                    (BreakerState::Closed, reason)
                })
            }
            _ => None,
        }
    }

    fn retry_after_ms(&self, now_ms: u64) -> u64 {
        match self.state {
            BreakerState::Open => self.open_until_ms.saturating_sub(now_ms),
            _ => 0,
        }
    }

    fn change(&self, now_ms: u64) -> StateChange {
        StateChange {
            state: self.state,
            reason: self.reason.clone(),
            retry_after_ms: self.retry_after_ms(now_ms),
        }
    }
}

/// "1 thing", "3 things".
fn counted(n: u32, thing: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {thing}{s}")
}

fn alarm(name: &str) -> Alarm {
    Alarm::Primitive(Kind::Breaker, name.to_owned())
}

impl State {
    /// A permit, or a refusal with the state and the time left.
    pub(super) fn breaker_allow(
        &mut self,
        session_id: SessionId,
        name: String,
        settings: Option<BreakerSettings>,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Breaker, &name)?;
        self.require_session(session_id)?;
        self.breaker_for(&name, settings, out)?;
        self.breaker_half_open_if_due(&name, out);
        let now_ms = self.now_ms;
        let breaker = self.breakers.get(&name).expect("made above");
        let state = breaker.state;
        if let Some(token) = self.retried_grant(session_id, Kind::Breaker, &name, acquire_id) {
            let era = breaker.permits[&token].era;
            let permit = Some((token, breaker.is_probe(era)));
            return Ok(Reply::BreakerVerdict(Verdict {
                permit,
                state,
                retry_after_ms: 0,
            }));
        }
        let admits = match state {
            BreakerState::Closed | BreakerState::ForcedClosed => true,
            BreakerState::HalfOpen => {
                breaker.probes_in_flight < breaker.settings.half_open_max_probes
            }
            BreakerState::Open | BreakerState::ForcedOpen => false,
        };
        if !admits {
            return Ok(Reply::BreakerVerdict(Verdict {
                permit: None,
                state,
                retry_after_ms: breaker.retry_after_ms(now_ms),
            }));
        }
        let limit = self.limits.waiters_per_primitive_max;
        if breaker.permits.len() >= limit {
            return Err(Rejection::new(
                Code::ResourceExhausted,
                format!(
                    "waiters_per_primitive_max: breaker {name:?} has {limit} permits in flight"
                ),
            ));
        }
        let hold = self.new_hold(session_id, Kind::Breaker, &name, acquire_id, out);
        let token = hold.fencing_token;
        let breaker = self.breakers.get_mut(&name).expect("made above");
        let era = breaker.era;
        let probe = breaker.is_probe(era);
        breaker.probes_in_flight += u32::from(probe);
        let extra = HoldExtra::Breaker { era };
        out.changes
            .push(hold_records::hold_put(Kind::Breaker, &name, &hold, extra));
        breaker.permits.insert(token, Permit { hold, era });
        Ok(Reply::BreakerVerdict(Verdict {
            permit: Some((token, probe)),
            state,
            retry_after_ms: 0,
        }))
    }

    /// Gives a permit back with its call's outcome.
    pub(super) fn breaker_record(
        &mut self,
        session_id: SessionId,
        name: &str,
        token: FencingToken,
        failed: bool,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Breaker, name)?;
        self.require_session(session_id)?;
        self.check_permit(session_id, name, token)?;
        self.unregister_hold(token, out);
        let era = self.breaker_drop_hold(name, token, out);
        let breaker = self
            .breakers
            .get_mut(name)
            .expect("a permit's breaker exists");
        let counted = era == Some(breaker.era)
            && matches!(breaker.state, BreakerState::Closed | BreakerState::HalfOpen);
        if counted {
            match breaker.count(failed) {
                Some((next, reason)) => self.breaker_turn(name, next, reason, out),
                None => out.changes.push(breaker_put(name, breaker)),
            }
        }
        let state = self.breakers[name].state;
        Ok(Reply::BreakerRecorded { state, counted })
    }

    /// A recorded permit must be in flight, on this breaker, of this session.
    fn check_permit(&self, session_id: SessionId, name: &str, token: FencingToken) -> Result<()> {
        let problem = match self.holds.get(&token) {
            None => {
                return Err(Rejection::new(
                    Code::NotFound,
                    format!(
                        "permit {token} of breaker {name:?} is not in flight: \
                         recorded already, or its session ended"
                    ),
                ))
            }
            Some(hold) if hold.kind != Kind::Breaker || hold.name != name => {
                format!("token {token} is not a permit of breaker {name:?}")
            }
            Some(hold) if hold.session_id != session_id => format!(
                "permit {token} of breaker {name:?} belongs to session {}, not {session_id}",
                hold.session_id
            ),
            Some(_) => return Ok(()),
        };
        Err(Rejection::new(Code::FailedPrecondition, problem))
    }

    /// Forgets a permit (recorded, or its session ended); returns its era.
    pub(super) fn breaker_drop_hold(
        &mut self,
        name: &str,
        token: FencingToken,
        out: &mut Outcome,
    ) -> Option<u64> {
        out.changes.push(hold_records::hold_delete(token));
        let breaker = self.breakers.get_mut(name)?;
        let permit = breaker.permits.remove(&token)?;
        if breaker.is_probe(permit.era) {
            breaker.probes_in_flight -= 1;
        }
        Some(permit.era)
    }
}
