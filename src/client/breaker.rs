//! Circuit breakers: one shared view of a downstream for every process.
//!
//! A breaker is closed (calls go through), open (calls are refused at once,
//! so a failing downstream gets time to recover) or half-open (a bounded
//! number of probe calls test whether it has). Every process that names the
//! breaker sees the same state: failures recorded by one open it for all.
//! Operators can pin it open or closed, and reset it. The settings (see
//! [`BreakerSettings`]) are fixed by the first [`CircuitBreaker::allow`] that
//! sends them; a handle without [`CircuitBreaker::with_settings`] uses the
//! existing breaker's.
//!
//! The protocol is allow, then record:
//! - [`CircuitBreaker::allow`] never waits: it gives an [`Allowed::Permit`]
//!   or an [`Allowed::Rejected`] with the state and the time until the next
//!   probe may go. A **permit** is a hold of the client's session with a
//!   fencing token, like a semaphore permit; in the half-open state it is a
//!   *probe*, and only `half_open_max_probes` probes are out at once.
//! - [`BreakerPermit::success`] / [`BreakerPermit::failure`] give the permit
//!   back with the call's outcome. An outcome under a permit from an earlier
//!   state (the breaker has changed since) is accepted but changes nothing:
//!   a slow call from before the breaker opened cannot close it.
//! - [`CircuitBreaker::call`] does all of it around a future.
//!
//! **A permit dropped without an outcome** (or whose call's future was
//! dropped) records nothing: it stays in flight on the server until the
//! session ends, the client is closed or its lease runs out. A half-open
//! probe slot taken by it is freed only then, with the lease, so do record
//! an outcome. The same happens to a permit whose `allow` gave up without
//! an answer from the server.
//!
//! Retries: `allow` sends a random nonzero retry identity, so an `allow`
//! retried after a lost answer gets the same permit back instead of a second
//! one; it is retried for about 5 s while the server cannot be reached, and
//! goes on in a new session when the client's session was lost. A record is
//! retried too: a retry that finds the permit no longer in flight, after an
//! attempt that may have landed without an answer, counts as done; a
//! permit whose session is gone reads as [`Error::SessionLost`] (the server
//! dropped it without an outcome). The operator calls and `describe` are
//! plain calls, retried while the server cannot be reached.
//!
//! [`CircuitBreaker::watch`] streams the state: the current one first, then
//! every change, in order. After a broken connection or a lost session it
//! watches again by itself; changes made while it was cut off are not
//! replayed (it reports the state it finds, unless that is the one it
//! reported last).

use std::{error::Error as StdError, fmt, future::Future, time::Duration};

use tokio::time::sleep;
use tonic::{Code, Status, Streaming};
use tracing::{debug, warn};

use super::{
    error::is_transient,
    retry::{self, Backoff, RETRY_BUDGET},
    wait::{is_session_gone, Attempt, Wait},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    allow_call_response::Verdict, circuit_breakers_client::CircuitBreakersClient, AllowCallRequest,
    AllowCallResponse, BreakerSettings, BreakerState, CallOutcome, ControlBreakerRequest,
    DeleteBreakerRequest, DescribeBreakerRequest, DescribeBreakerResponse, RecordCallRequest,
    WatchBreakerRequest, WatchBreakerResponse,
};

/// A named circuit breaker on the server, seen through one [`Client`]'s
/// session: closed (calls go through), open (calls are refused) or
/// half-open (a bounded number of probe calls test the downstream). Every
/// process that names it shares its state.
///
/// Ask with [`CircuitBreaker::allow`] and record the outcome with the
/// permit, or let [`CircuitBreaker::call`] do both around a future.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    client: Client,
    name: String,
    /// Sent with every allow; `None`: the existing breaker's.
    settings: Option<BreakerSettings>,
}

/// The answer of [`CircuitBreaker::allow`].
#[derive(Debug)]
pub enum Allowed {
    /// The call may go; record its outcome with the permit.
    Permit(BreakerPermit),
    /// The call must not go.
    Rejected {
        /// Open, half-open with every probe slot taken, or forced open.
        state: BreakerState,
        /// How long until a probe may go; zero when no time is known
        /// (forced open, or half-open with every probe slot taken).
        retry_after: Duration,
    },
}

/// Leave to make one call, held by the client's session under a fencing
/// token until its outcome is recorded with [`BreakerPermit::success`],
/// [`BreakerPermit::failure`] or [`BreakerPermit::record`].
///
/// Dropped without an outcome, it records nothing and stays in flight on the
/// server until its session ends (the client is closed, or its lease runs
/// out): a half-open probe slot it takes is freed only with the lease.
#[derive(Debug)]
pub struct BreakerPermit {
    client: Client,
    name: String,
    session_id: u64,
    fencing_token: u64,
    probe: bool,
    state: BreakerState,
}

/// Why [`CircuitBreaker::call`] did not return the call's value.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker refused the call, which did not run.
    Rejected {
        state: BreakerState,
        /// How long until a probe may go (zero: not known).
        retry_after: Duration,
    },
    /// The call ran and failed; the failure was recorded (or, if recording
    /// failed, logged).
    Failed(E),
    /// Asking the breaker failed; the call did not run.
    Breaker(Error),
}

/// A state of a breaker, as [`BreakerWatch::next`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerChange {
    pub state: BreakerState,
    /// Why it is in this state, e.g. `3 consecutive failures`.
    pub reason: String,
    /// Open: how long until it turns half-open.
    pub retry_after: Duration,
}

impl From<WatchBreakerResponse> for BreakerChange {
    fn from(message: WatchBreakerResponse) -> BreakerChange {
        BreakerChange {
            state: message.state(),
            reason: message.reason,
            retry_after: Duration::from_millis(message.retry_after_ms),
        }
    }
}

impl BreakerChange {
    /// The same state for the same reason (the time left aside, which only
    /// shrinks).
    fn repeats(&self, other: &BreakerChange) -> bool {
        self.state == other.state && self.reason == other.reason
    }
}

impl CircuitBreaker {
    pub(crate) fn new(client: Client, name: String) -> CircuitBreaker {
        CircuitBreaker {
            client,
            name,
            settings: None,
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `settings` with every allow: the first creates the breaker with
    /// them; on an existing breaker they must match its own (after
    /// defaults), or the allow fails with `FAILED_PRECONDITION`.
    pub fn with_settings(mut self, settings: BreakerSettings) -> CircuitBreaker {
        self.settings = Some(settings);
        self
    }

    /// A permit, or a refusal; never waits for the breaker. `NOT_FOUND`
    /// when the breaker does not exist and this handle has no settings to
    /// create it.
    pub async fn allow(&self) -> Result<Allowed, Error> {
        let acquire_id = retry::acquire_id();
        let what = format!("a permit of breaker {:?}", self.name);
        let wait = Wait::new(&self.client, &what, Some(RETRY_BUDGET));
        let (session_id, response) = wait
            .with_retries(|attempt| {
                let this = self.clone();
                async move { this.allow_attempt(attempt, acquire_id).await }
            })
            .await
            .map_err(|failed| failed.error)?;
        let state = response.state();
        match response.verdict {
            Some(Verdict::Permit(permit)) => Ok(Allowed::Permit(BreakerPermit {
                client: self.client.clone(),
                name: self.name.clone(),
                session_id,
                fencing_token: permit.fencing_token,
                probe: permit.probe,
                state,
            })),
            Some(Verdict::Rejected(rejected)) => Ok(Allowed::Rejected {
                state,
                retry_after: Duration::from_millis(rejected.retry_after_ms),
            }),
            None => Err(Error::Status(Status::unknown(format!(
                "the server answered an allow of breaker {:?} with neither a permit nor a \
                 refusal",
                self.name
            )))),
        }
    }

    /// Runs `call` if the breaker allows it, and records its outcome: `Ok`
    /// as a success, `Err` as a failure. A refusal is
    /// [`CallError::Rejected`] and `call` does not run. A failure to record
    /// the outcome is logged as a warning and does not hide the call's own
    /// result. If this future is dropped while `call` runs, the permit stays
    /// in flight until the session ends.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = match self.allow().await.map_err(CallError::Breaker)? {
            Allowed::Permit(permit) => permit,
            Allowed::Rejected { state, retry_after } => {
                return Err(CallError::Rejected { state, retry_after })
            }
        };
        let result = call().await;
        let token = permit.fencing_token;
        if let Err(error) = permit.record(result.is_ok()).await {
            let outcome = if result.is_ok() { "success" } else { "failure" };
            warn!(
                "recording the {outcome} of a call under permit {token} of breaker {:?} \
                 failed: {error}",
                self.name
            );
        }
        result.map_err(CallError::Failed)
    }

    /// Streams the breaker's state: the current one first, then each change
    /// (see [`BreakerWatch`]). `NOT_FOUND` when the breaker does not exist.
    pub async fn watch(&self) -> Result<BreakerWatch, Error> {
        let (session_id, (stream, first)) = self.open_watch(Some(RETRY_BUDGET)).await?;
        Ok(BreakerWatch {
            breaker: self.clone(),
            stream: Some(stream),
            session_id,
            pending: Some(first.into()),
            last: None,
            backoff: Backoff::default(),
            rewatch_pause: None,
        })
    }

    /// The settings, the state and its counts, and the permits in flight,
    /// as the server sees them (`exists` false when there is no breaker).
    pub async fn describe(&self) -> Result<DescribeBreakerResponse, Error> {
        let request = DescribeBreakerRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    CircuitBreakersClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    /// Pins the breaker open: every call is refused until
    /// [`CircuitBreaker::reset`] or [`CircuitBreaker::force_close`].
    /// Returns the state after it.
    pub async fn force_open(&self) -> Result<BreakerState, Error> {
        self.control(Control::ForceOpen).await
    }

    /// Pins the breaker closed: every call is allowed, and outcomes change
    /// nothing, until [`CircuitBreaker::reset`] or
    /// [`CircuitBreaker::force_open`]. Returns the state after it.
    pub async fn force_close(&self) -> Result<BreakerState, Error> {
        self.control(Control::ForceClose).await
    }

    /// Closes the breaker with its counts cleared. Returns the state after
    /// it.
    pub async fn reset(&self) -> Result<BreakerState, Error> {
        self.control(Control::Reset).await
    }

    /// Forgets the breaker (to make it again with other settings, or to
    /// clean up): its permits are dropped and its watches end with
    /// NOT_FOUND. Returns the permits that were in flight. Retried only
    /// when the attempt surely did not reach the server.
    pub async fn delete(&self) -> Result<u32, Error> {
        let request = DeleteBreakerRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary_at_most_once(|channel| {
                let request = request.clone();
                async move {
                    CircuitBreakersClient::new(channel)
                        .delete(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.permits_dropped)
    }

    /// One `Allow` call in the attempt's session.
    async fn allow_attempt(
        &self,
        attempt: Attempt,
        acquire_id: u64,
    ) -> Result<AllowCallResponse, Status> {
        let request = attempt.request(AllowCallRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
            settings: self.settings,
            acquire_id,
        });
        let response = CircuitBreakersClient::new(self.client.transport())
            .allow(request)
            .await?;
        Ok(response.into_inner())
    }

    /// Opens a `Watch` stream and reads its first message, retrying for at
    /// most `timeout` (`None`: as long as it takes) while the server cannot
    /// be reached; goes on in a new session when the session was lost.
    async fn open_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<(u64, (Streaming<WatchBreakerResponse>, WatchBreakerResponse)), Error> {
        let what = format!("the state of breaker {:?}", self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        wait.with_retries(|attempt| self.watch_attempt(attempt))
            .await
            .map_err(|failed| failed.error)
    }

    /// One `Watch` stream, up to its first message. The stream has no
    /// deadline: it lasts as long as the watch.
    async fn watch_attempt(
        &self,
        attempt: Attempt,
    ) -> Result<(Streaming<WatchBreakerResponse>, WatchBreakerResponse), Status> {
        let request = WatchBreakerRequest {
            session_id: attempt.session_id,
            name: self.name.clone(),
        };
        let mut stream = CircuitBreakersClient::new(self.client.transport())
            .watch(request)
            .await?
            .into_inner();
        match stream.message().await? {
            Some(first) => Ok((stream, first)),
            None => Err(Status::unavailable(format!(
                "the watch of breaker {:?} ended before its first message",
                self.name
            ))),
        }
    }

    async fn control(&self, control: Control) -> Result<BreakerState, Error> {
        let request = ControlBreakerRequest {
            name: self.name.clone(),
        };
        let response = self
            .client
            .unary(|channel| {
                let request = with_timeout(request.clone());
                async move {
                    let mut client = CircuitBreakersClient::new(channel);
                    match control {
                        Control::ForceOpen => client.force_open(request).await,
                        Control::ForceClose => client.force_close(request).await,
                        Control::Reset => client.reset(request).await,
                    }
                }
            })
            .await?;
        Ok(response.state())
    }
}

/// What an operator call asks.
#[derive(Clone, Copy, Debug)]
enum Control {
    ForceOpen,
    ForceClose,
    Reset,
}

impl BreakerPermit {
    /// The permit's fencing token, for whatever the call reaches.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Whether this is a half-open probe, whose outcome decides the
    /// breaker's next state.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The state the permit was given in.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Records that the call succeeded; returns the breaker's state after
    /// it. See [`BreakerPermit::record`].
    pub async fn success(self) -> Result<BreakerState, Error> {
        self.record(true).await
    }

    /// Records that the call failed; returns the breaker's state after it.
    /// See [`BreakerPermit::record`].
    pub async fn failure(self) -> Result<BreakerState, Error> {
        self.record(false).await
    }

    /// Records the call's outcome and gives the permit back; returns the
    /// breaker's state after it. Retried while the server cannot be
    /// reached: a retry that finds the permit no longer in flight, after an
    /// attempt that may have landed without an answer, counts as done, and
    /// the state is then read afresh (`Unspecified` if that fails too).
    /// [`Error::SessionLost`] when the permit's session is gone: the server
    /// dropped the permit without an outcome.
    pub async fn record(self, succeeded: bool) -> Result<BreakerState, Error> {
        let session_id = self.session_id;
        let token = self.fencing_token;
        let lost = |why: &dyn fmt::Display| {
            Error::SessionLost(format!(
                "permit {token} of breaker {:?} was dropped without an outcome: {why}",
                self.name
            ))
        };
        if let Some(loss) = self.client.session().loss_of(session_id) {
            return Err(lost(&loss));
        }
        let outcome = if succeeded {
            CallOutcome::Success
        } else {
            CallOutcome::Failure
        };
        let request = RecordCallRequest {
            session_id,
            name: self.name.clone(),
            fencing_token: token,
            outcome: outcome as i32,
        };
        let recorded = self
            .client
            .unary_settling(
                |channel| {
                    let request = with_timeout(request.clone());
                    async move { CircuitBreakersClient::new(channel).record(request).await }
                },
                |status| status.code() == Code::NotFound && !is_session_gone(status, session_id),
            )
            .await;
        match recorded {
            Ok(Some(response)) => Ok(response.state()),
            Ok(None) => {
                debug!(
                    "permit {token} of breaker {:?} was recorded by an earlier attempt",
                    self.name
                );
                Ok(self.state_now().await)
            }
            Err(Error::Status(status)) if is_session_gone(&status, session_id) => {
                Err(lost(&status.message()))
            }
            Err(error) => Err(error),
        }
    }

    /// The breaker's state now, or `Unspecified` when it cannot be read.
    async fn state_now(&self) -> BreakerState {
        let breaker = CircuitBreaker::new(self.client.clone(), self.name.clone());
        match breaker.describe().await {
            Ok(description) => description.state(),
            Err(error) => {
                debug!("reading the state of breaker {:?}: {error}", self.name);
                BreakerState::Unspecified
            }
        }
    }
}

/// A stream of a breaker's states from [`CircuitBreaker::watch`]: first the
/// state when the watch began, then every change, in order. It belongs to
/// the client's session and keeps the client alive while it lives.
///
/// When the stream breaks (the server cannot be reached or restarted, the
/// server cut off a watcher that fell behind) or the session is lost,
/// [`BreakerWatch::next`] watches again, in the session current then, and
/// skips the new stream's first state if it repeats the last one reported
/// (same state, same reason). Changes while it was cut off are not
/// replayed.
pub struct BreakerWatch {
    breaker: CircuitBreaker,
    /// `None` after it broke, until watched again.
    stream: Option<Streaming<WatchBreakerResponse>>,
    /// The session of the current stream.
    session_id: u64,
    /// A state read with a stream's first message, not yet reported.
    pending: Option<BreakerChange>,
    /// The last state reported.
    last: Option<BreakerChange>,
    /// Pauses between watches that bring no change.
    backoff: Backoff,
    /// The pause before the next watch; `None` when the last one brought a
    /// change (or there was none).
    rewatch_pause: Option<Duration>,
}

impl fmt::Debug for BreakerWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerWatch")
            .field("name", &self.breaker.name)
            .field("session_id", &self.session_id)
            .field("last", &self.last)
            .finish()
    }
}

/// What waiting on a watch stream brought.
enum Received {
    Message(Result<Option<WatchBreakerResponse>, Status>),
    SessionLost,
}

impl BreakerWatch {
    /// The next state: the current one on the first call, then each change.
    /// Waits as long as it takes; while the server cannot be reached it
    /// keeps trying to watch again, with a warning every so often. Fails
    /// when the breaker cannot be watched (the client was closed, or the
    /// server refuses the watch).
    pub async fn next(&mut self) -> Result<BreakerChange, Error> {
        loop {
            if let Some(change) = self.pending.take() {
                self.last = Some(change.clone());
                return Ok(change);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.rewatch().await?;
                continue;
            };
            let session = self.breaker.client.session();
            let received = tokio::select! {
                message = stream.message() => Received::Message(message),
                _ = session.lost(self.session_id) => Received::SessionLost,
            };
            match received {
                Received::Message(Ok(Some(message))) => {
                    self.backoff.reset();
                    self.rewatch_pause = None;
                    let change = BreakerChange::from(message);
                    self.last = Some(change.clone());
                    return Ok(change);
                }
                Received::Message(Ok(None)) => {
                    debug!(
                        "the watch of breaker {:?} ended; watching again",
                        self.breaker.name
                    );
                    self.stream = None;
                }
                Received::Message(Err(status)) if self.rewatch_after(&status) => {
                    debug!(
                        "the watch of breaker {:?} broke: {status}; watching again",
                        self.breaker.name
                    );
                    self.stream = None;
                }
                Received::Message(Err(status)) => return Err(self.breaker.client.error(status)),
                Received::SessionLost => {
                    debug!(
                        "session {} of the watch of breaker {:?} was lost; watching again",
                        self.session_id, self.breaker.name
                    );
                    self.stream = None;
                }
            }
        }
    }

    /// Whether a stream that ended with `status` should be opened again: the
    /// server could not be reached, the session is gone, or the server cut
    /// off a watcher that fell behind.
    fn rewatch_after(&self, status: &Status) -> bool {
        is_transient(status)
            || is_session_gone(status, self.session_id)
            || status.code() == Code::ResourceExhausted
    }

    /// Opens a new stream; keeps its first state unless it repeats the last
    /// one reported.
    async fn rewatch(&mut self) -> Result<(), Error> {
        if let Some(pause) = self.rewatch_pause.replace(self.backoff.next_pause()) {
            // The last stream broke before it brought a change: do not
            // hammer a server that keeps ending watches.
            sleep(pause).await;
        }
        let (session_id, (stream, first)) = self.breaker.open_watch(None).await?;
        let first = BreakerChange::from(first);
        self.stream = Some(stream);
        self.session_id = session_id;
        if self.last.as_ref().is_some_and(|last| last.repeats(&first)) {
            debug!(
                "breaker {:?} is still {:?}; not reporting it again",
                self.breaker.name, first.state
            );
        } else {
            self.pending = Some(first);
        }
        Ok(())
    }
}

/// A state as people read it: `open`, `half-open`, `forced closed`.
fn state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
        BreakerState::ForcedOpen => "forced open",
        BreakerState::ForcedClosed => "forced closed",
        BreakerState::Unspecified => "in an unknown state",
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected { state, retry_after } => {
                write!(f, "the circuit breaker is {}", state_name(*state))?;
                if *state == BreakerState::HalfOpen {
                    f.write_str(" and every probe slot is taken")?;
                }
                if !retry_after.is_zero() {
                    let wait = crate::duration::format(*retry_after);
                    write!(f, "; next probe in {wait}")?;
                }
                Ok(())
            }
            CallError::Failed(error) => error.fmt(f),
            CallError::Breaker(error) => write!(f, "circuit breaker: {error}"),
        }
    }
}

impl<E: StdError + 'static> StdError for CallError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CallError::Rejected { .. } => None,
            CallError::Failed(error) => Some(error),
            CallError::Breaker(error) => Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_when_the_next_probe_may_go() {
        let open: CallError<std::io::Error> = CallError::Rejected {
            state: BreakerState::Open,
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(
            open.to_string(),
            "the circuit breaker is open; next probe in 1s 500ms"
        );
        let busy: CallError<std::io::Error> = CallError::Rejected {
            state: BreakerState::HalfOpen,
            retry_after: Duration::ZERO,
        };
        assert_eq!(
            busy.to_string(),
            "the circuit breaker is half-open and every probe slot is taken"
        );
        let failed = CallError::Failed(std::io::Error::other("downstream said no"));
        assert_eq!(failed.to_string(), "downstream said no");
        assert!(failed.source().is_some());
    }

    #[test]
    fn a_repeat_ignores_the_time_left() {
        let open = |ms| BreakerChange {
            state: BreakerState::Open,
            reason: "3 consecutive failures".into(),
            retry_after: Duration::from_millis(ms),
        };
        assert!(open(900).repeats(&open(400)));
        let probe_failed = BreakerChange {
            reason: "a probe call failed".into(),
            ..open(900)
        };
        assert!(!open(900).repeats(&probe_failed));
    }
}
