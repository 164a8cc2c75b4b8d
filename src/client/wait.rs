//! The machinery every waiting call shares: one attempt of a waiting stream
//! with its deadline, the retry loop around attempts, and reading a stream
//! up to its final message.
//!
//! The server enforces a wait's timeout (`timeout_ms`, recomputed for every
//! attempt); the client keeps one deadline across its retries, and gives the
//! server [`DEADLINE_MARGIN`] more to answer before it gives up on its own. A
//! timeout too large to represent means no deadline at all.
//!
//! Who may retry is the caller's decision: [`Wait::with_retries`] is for
//! waits that are safe to send twice (an acquire with a retry identity, an
//! event wait); a condition or barrier wait makes one [`Attempt`] only,
//! because a second one would not mean the same thing.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tonic::{Code, Request, Status, Streaming};
use tracing::{debug, warn};

use crate::proto::SESSION_GONE_KEY;

use super::{
    no_answer,
    retry::{Backoff, Unreachable, RETRY_BUDGET},
    Client, Error,
};

/// How much longer than the wait itself the client gives the server to
/// answer before it gives up on its own.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The longest gRPC deadline the client sets on a wait. gRPC cannot encode
/// every duration (tonic panics on absurd ones); the server enforces the
/// wait's own `timeout_ms` anyway, so longer waits go without one.
const GRPC_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// One waiting call as the retry loop sees it: whose it is, what it waits
/// for (for log lines), and until when.
pub(crate) struct Wait<'a> {
    client: &'a Client,
    /// Names what is awaited in log lines, e.g. `lock "db"`.
    what: &'a str,
    /// `None`: no deadline.
    deadline: Option<Instant>,
}

/// A failed wait, and whether the server may have granted it without the
/// client hearing of it (the last attempt got no answer).
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) unanswered: bool,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The server could not be reached: pause, then try again.
    Retry,
    /// The session is gone: wait for its replacement, then try again.
    RenewSession,
    /// Give the error to the caller.
    Fail,
}

impl<'a> Wait<'a> {
    /// A wait that may last `timeout` (`None`: as long as it takes) from now.
    pub(crate) fn new(client: &'a Client, what: &'a str, timeout: Option<Duration>) -> Wait<'a> {
        Wait {
            client,
            what,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    /// The retry loop around `attempt`, which makes one attempt in the
    /// session it is given. Returns that session with the answer. While the
    /// server cannot be reached it keeps trying until the deadline (with no
    /// deadline: forever, with a warning every so often), then fails with
    /// [`Error::Unavailable`]; when the server says the session is gone it
    /// waits for the replacement and tries again in that.
    pub(crate) async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<(u64, T), Failed>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = Backoff::default();
        let mut unreachable = Unreachable::default();
        loop {
            let session_id = self.usable_session().await;
            let this = self.attempt(session_id);
            let status = match this.bounded(attempt(this)).await {
                Ok(answer) => return Ok((session_id, answer)),
                Err(status) => status,
            };
            let fail = |unanswered| Failed {
                error: self.client.error(status.clone()),
                unanswered,
            };
            match next_step(&status, session_id) {
                Next::Retry => {
                    let Some(pause) = pause_before_retry(backoff.next_pause(), self.deadline)
                    else {
                        return Err(fail(true));
                    };
                    self.note_unreachable(&mut unreachable, &status, pause);
                    sleep(pause).await;
                }
                Next::RenewSession => {
                    unreachable.reset();
                    self.await_new_session(session_id, status.clone())
                        .await
                        .map_err(|error| Failed {
                            error,
                            unanswered: false,
                        })?
                }
                Next::Fail => return Err(fail(false)),
            }
        }
    }

    /// One attempt in `session_id`, with whatever is left of the deadline.
    pub(crate) fn attempt(&self, session_id: u64) -> Attempt {
        Attempt {
            session_id,
            remaining: self
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now())),
        }
    }

    /// The session to wait in: when the current one is known to be lost (it
    /// could not be renewed for a full TTL), its replacement, if it comes
    /// soon enough.
    pub(crate) async fn usable_session(&self) -> u64 {
        let session = self.client.session();
        let current = session.id();
        if session.loss_of(current).is_some() && !session.is_closed() {
            session
                .wait_for_replacement(current, limit_within(self.deadline))
                .await;
        }
        session.id()
    }

    /// Logs a failure to reach the server: at debug level each time, and a
    /// warning every [`super::retry::UNREACHABLE_WARNING_EVERY`].
    fn note_unreachable(&self, unreachable: &mut Unreachable, status: &Status, pause: Duration) {
        debug!(
            "waiting for {} failed: {status}; retrying in {pause:?}",
            self.what
        );
        if let Some(unreachable_for) = unreachable.failed(Instant::now()) {
            warn!(
                "still waiting for {}: {} (for {}); retrying",
                self.what,
                self.client.error(status.clone()),
                crate::duration::format(round_to_seconds(unreachable_for))
            );
        }
    }

    /// After the server said the session is gone: waits for the keep-alive
    /// task to open a new one, unless the client was closed.
    async fn await_new_session(&self, old: u64, status: Status) -> Result<(), Error> {
        let session = self.client.session();
        if session.is_closed() {
            return Err(Error::SessionLost(format!(
                "the client was closed: {}",
                status.message()
            )));
        }
        if session
            .wait_for_replacement(old, limit_within(self.deadline))
            .await
        {
            return Ok(());
        }
        if status.code() == Code::NotFound {
            Err(Error::SessionLost(status.message().to_string()))
        } else {
            Err(self.client.error(status))
        }
    }
}

/// One attempt of a waiting call: the session it waits in and how much of
/// the wait's timeout is left (`None`: no timeout).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    pub(crate) session_id: u64,
    remaining: Option<Duration>,
}

impl Attempt {
    /// The request's `timeout_ms`: what is left of the timeout.
    pub(crate) fn timeout_ms(&self) -> Option<u64> {
        self.remaining
            .map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX))
    }

    /// `message` as a request whose gRPC deadline is the time left plus
    /// [`DEADLINE_MARGIN`] (none without a timeout, or beyond what gRPC
    /// encodes).
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(grpc_timeout) = self.limit().and_then(grpc_timeout) {
            request.set_timeout(grpc_timeout);
        }
        request
    }

    /// Runs `call` for at most the time left plus [`DEADLINE_MARGIN`]. No
    /// answer by then counts as a server that cannot be reached.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let Some(limit) = self.limit() else {
            return call.await;
        };
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(no_answer(limit)))
    }

    fn limit(&self) -> Option<Duration> {
        self.remaining.map(|r| r.saturating_add(DEADLINE_MARGIN))
    }
}

/// What one message of a waiting stream says.
pub(crate) enum Step<T> {
    /// Still waiting, at this position.
    Queued(u32),
    /// The final answer.
    Done(T),
    /// A message without an event (from a newer server): ignore it.
    Nothing,
}

/// Reads a waiting stream until its final message, which `step` turns into
/// the answer. `what` names the wait in log lines and errors.
pub(crate) async fn read_to_end<E, T>(
    mut stream: Streaming<E>,
    what: &str,
    mut step: impl FnMut(E) -> Step<T>,
) -> Result<T, Status> {
    while let Some(message) = stream.message().await? {
        match step(message) {
            Step::Done(answer) => {
                // The answer is the last message: read the stream's end too,
                // so that it closes cleanly instead of being reset.
                let _ = stream.message().await;
                return Ok(answer);
            }
            Step::Queued(position) => debug!("{what}: queued at position {position}"),
            Step::Nothing => {}
        }
    }
    Err(Status::unavailable(format!(
        "the wait for {what} ended without an answer"
    )))
}

/// True when `status` says that `session_id` is gone: unknown to the server
/// (`NOT_FOUND`), or ended while the call waited (`FAILED_PRECONDITION`).
/// The server marks both with [`SESSION_GONE_KEY`]; the same codes also mean
/// other things (a semaphore created with another capacity, a barrier that
/// does not exist), which must not send the client after a new session.
pub(crate) fn is_session_gone(status: &Status, session_id: u64) -> bool {
    let marked = status.metadata().get(SESSION_GONE_KEY);
    matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
        && marked.is_some_and(|id| id.to_str().ok() == Some(session_id.to_string().as_str()))
}

/// The error for a failed single-attempt wait: a gone session reads as
/// [`Error::SessionLost`], everything else as the client reads any status.
pub(crate) fn single_attempt_error(client: &Client, status: Status, session_id: u64) -> Error {
    if is_session_gone(&status, session_id) {
        Error::SessionLost(status.message().to_string())
    } else {
        client.error(status)
    }
}

/// Classifies a failed attempt.
fn next_step(status: &Status, session_id: u64) -> Next {
    if super::error::is_transient(status) {
        Next::Retry
    } else if is_session_gone(status, session_id) {
        Next::RenewSession
    } else {
        Next::Fail
    }
}

/// How long to pause before the next attempt: `pause`, cut short at the
/// deadline; `None` once the deadline has passed (with a zero timeout: after
/// the first attempt).
fn pause_before_retry(pause: Duration, deadline: Option<Instant>) -> Option<Duration> {
    let Some(deadline) = deadline else {
        return Some(pause);
    };
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then(|| pause.min(left))
}

/// The gRPC deadline to set on a wait that may last `limit`: none above
/// [`GRPC_TIMEOUT_MAX`].
fn grpc_timeout(limit: Duration) -> Option<Duration> {
    (limit <= GRPC_TIMEOUT_MAX).then_some(limit)
}

/// How long to wait for a new session: [`RETRY_BUDGET`], but not past the
/// deadline.
fn limit_within(deadline: Option<Instant>) -> Duration {
    deadline.map_or(RETRY_BUDGET, |d| {
        d.saturating_duration_since(Instant::now())
            .min(RETRY_BUDGET)
    })
}

/// Whole seconds, for log lines.
fn round_to_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_deadline() {
        let pause = Duration::from_millis(800);
        assert_eq!(pause_before_retry(pause, None), Some(pause));
        let passed = Instant::now();
        assert_eq!(pause_before_retry(pause, Some(passed)), None);
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(pause_before_retry(pause, Some(far)), Some(pause));
        let near = Instant::now() + Duration::from_millis(300);
        let cut = pause_before_retry(pause, Some(near)).unwrap();
        assert!(cut <= Duration::from_millis(300), "{cut:?}");
    }

    #[test]
    fn session_waits_stay_within_the_deadline() {
        assert_eq!(limit_within(None), RETRY_BUDGET);
        assert_eq!(limit_within(Some(Instant::now())), Duration::ZERO);
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(limit_within(Some(far)), RETRY_BUDGET);
    }

    #[test]
    fn grpc_deadlines_stay_encodable() {
        // tonic panics on durations of more than about 11,000 years; the
        // cap keeps every deadline the client sets far below that.
        assert_eq!(grpc_timeout(Duration::MAX), None);
        assert_eq!(
            grpc_timeout(GRPC_TIMEOUT_MAX + Duration::from_secs(1)),
            None
        );
        let day = grpc_timeout(GRPC_TIMEOUT_MAX).unwrap();
        let mut request = Request::new(());
        request.set_timeout(day);
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "86400000m");
    }

    #[test]
    fn attempts_carry_what_is_left_of_the_timeout() {
        let unbounded = Attempt {
            session_id: 1,
            remaining: None,
        };
        assert_eq!(unbounded.timeout_ms(), None);
        assert!(unbounded
            .request(())
            .metadata()
            .get("grpc-timeout")
            .is_none());
        let bounded = Attempt {
            session_id: 1,
            remaining: Some(Duration::from_millis(1500)),
        };
        assert_eq!(bounded.timeout_ms(), Some(1500));
        let mut expected = Request::new(());
        expected.set_timeout(Duration::from_millis(1500) + DEADLINE_MARGIN);
        assert_eq!(
            bounded.request(()).metadata().get("grpc-timeout"),
            expected.metadata().get("grpc-timeout")
        );
        let huge = Attempt {
            session_id: 1,
            remaining: Some(Duration::MAX),
        };
        assert_eq!(huge.timeout_ms(), Some(u64::MAX));
        assert!(huge.request(()).metadata().get("grpc-timeout").is_none());
    }

    #[test]
    fn only_a_gone_session_renews_it() {
        use crate::core::{Code as Why, Rejection};
        let gone = |code, message| Status::from(Rejection::session_gone(code, 7, message));
        let expired = gone(Why::FailedPrecondition, "session 7 expired while waiting");
        let unknown = gone(Why::NotFound, "session 7 not found");
        // The wording alone does not count.
        let unmarked = Status::failed_precondition("session 7 expired while waiting");
        assert_eq!(next_step(&unmarked, 7), Next::Fail);
        assert_eq!(next_step(&expired, 7), Next::RenewSession);
        assert_eq!(next_step(&unknown, 7), Next::RenewSession);
        // Another session's message, or the same codes for other reasons,
        // are the caller's to see.
        assert_eq!(next_step(&expired, 70), Next::Fail);
        let mismatch =
            Status::failed_precondition("semaphore \"db\" exists with capacity 3, not 2");
        assert_eq!(next_step(&mismatch, 7), Next::Fail);
        let missing = Status::not_found("barrier \"b\" does not exist; give its parties");
        assert_eq!(next_step(&missing, 7), Next::Fail);
        assert_eq!(
            next_step(&Status::unavailable("restarting"), 7),
            Next::Retry
        );
        assert_eq!(next_step(&Status::aborted("broken"), 7), Next::Fail);
        // A refused token gets the same answer every time.
        let unknown = Status::unauthenticated("the token is not known to this server");
        assert_eq!(next_step(&unknown, 7), Next::Fail);
        let denied =
            Status::permission_denied("token \"ci\" has role read; this call needs role use");
        assert_eq!(next_step(&denied, 7), Next::Fail);
    }
}
