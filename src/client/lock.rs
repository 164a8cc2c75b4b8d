//! Locks: a handle to acquire with, and a guard that holds.
//!
//! An acquire opens one `Locks.Acquire` stream and reads it until `granted`.
//! When the stream breaks because the server cannot be reached, the call is
//! retried with the same `acquire_id`, so that a grant lost on the way is
//! handed back instead of queueing the session behind its own hold. The
//! server enforces the wait's timeout (`timeout_ms`, recomputed for every
//! retry); the client keeps the same deadline for its retries, and gives the
//! server [`DEADLINE_MARGIN`] more to answer before it gives up on its own.
//! A timeout too large to represent means no deadline at all.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::time::{sleep, Instant};
use tonic::{Code, Request, Status};
use tracing::{debug, warn};

use super::{
    no_answer,
    retry::{self, Backoff, Unreachable, RETRY_BUDGET},
    session::SessionLoss,
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    acquire_lock_response::Event, locks_client::LocksClient, AcquireLockRequest,
    DescribeLockRequest, DescribeLockResponse, ReleaseLockRequest,
};

/// How much longer than the wait itself the client gives the server to
/// answer before it gives up on its own.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// The longest gRPC deadline the client sets on a wait. gRPC cannot encode
/// every duration (tonic panics on absurd ones); the server enforces the
/// wait's own `timeout_ms` anyway, so longer waits go without one.
const GRPC_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// A named lock on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Lock {
    client: Client,
    name: String,
}

/// What to do after a failed acquire attempt.
enum Next {
    /// The server could not be reached: pause, then try again.
    Retry,
    /// The session is gone: wait for its replacement, then try again.
    RenewSession,
    /// Give the error to the caller.
    Fail,
}

/// A failed acquire, and whether the server may have granted the lock
/// without the client hearing of it (the last attempt got no answer).
struct Failed {
    error: Error,
    unanswered: bool,
}

impl Lock {
    pub(crate) fn new(client: Client, name: String) -> Lock {
        Lock { client, name }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits as long as it takes for the lock, then holds it.
    pub async fn acquire(&self) -> Result<LockGuard, Error> {
        self.acquire_within(None).await
    }

    /// Takes the lock if it is free now; `None` when someone else holds it.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>, Error> {
        match self.acquire_within(Some(Duration::ZERO)).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Timeout(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Waits at most `timeout` for the lock; [`Error::Timeout`] when it
    /// passes (nothing is left queued).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        self.acquire_within(Some(timeout)).await
    }

    /// The holder and the waiters, as the server sees them now.
    pub async fn describe(&self) -> Result<DescribeLockResponse, Error> {
        let name = self.name.clone();
        self.client
            .unary(|channel| {
                let request = DescribeLockRequest { name: name.clone() };
                async move {
                    LocksClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    /// Runs the retry loop; cleans up after it (see [`CancelledAcquire`])
    /// when it is dropped, or when it failed without an answer.
    async fn acquire_within(&self, timeout: Option<Duration>) -> Result<LockGuard, Error> {
        let acquire_id = retry::acquire_id();
        let mut cancelled = CancelledAcquire {
            lock: Some(self.clone()),
            acquire_id,
        };
        // Reached only if this future was not dropped while waiting.
        match self.acquire_with_retries(acquire_id, timeout).await {
            Ok(guard) => {
                cancelled.disarm();
                Ok(guard)
            }
            Err(failed) => {
                if !failed.unanswered {
                    cancelled.disarm();
                }
                Err(failed.error)
            }
        }
    }

    /// The retry loop around acquire attempts. While the server cannot be
    /// reached it keeps trying until the wait's deadline (with no deadline:
    /// forever, with a warning every so often), then fails with
    /// [`Error::Unavailable`].
    async fn acquire_with_retries(
        &self,
        acquire_id: u64,
        timeout: Option<Duration>,
    ) -> Result<LockGuard, Failed> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut backoff = Backoff::default();
        let mut unreachable = Unreachable::default();
        loop {
            let session_id = self.usable_session(deadline).await;
            let status = match self.attempt(session_id, acquire_id, deadline).await {
                Ok(token) => return Ok(LockGuard::new(self, session_id, token)),
                Err(status) => status,
            };
            let fail = |unanswered| Failed {
                error: self.client.error(status.clone()),
                unanswered,
            };
            match next_step(&status) {
                Next::Retry => {
                    let Some(pause) = pause_before_retry(backoff.next_pause(), deadline) else {
                        return Err(fail(true));
                    };
                    self.note_unreachable(&mut unreachable, &status, pause);
                    sleep(pause).await;
                }
                Next::RenewSession => {
                    unreachable.reset();
                    self.await_new_session(session_id, status.clone(), deadline)
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

    /// The session to wait in: when the current one is known to be lost (it
    /// could not be renewed for a full TTL), its replacement, if it comes
    /// soon enough.
    async fn usable_session(&self, deadline: Option<Instant>) -> u64 {
        let session = self.client.session();
        let current = session.id();
        if session.loss_of(current).is_some() && !session.is_closed() {
            session
                .wait_for_replacement(current, limit_within(deadline))
                .await;
        }
        session.id()
    }

    /// Logs a failure to reach the server: at debug level each time, and a
    /// warning every [`retry::UNREACHABLE_WARNING_EVERY`].
    fn note_unreachable(&self, unreachable: &mut Unreachable, status: &Status, pause: Duration) {
        debug!(
            "acquire {:?} failed: {status}; retrying in {pause:?}",
            self.name
        );
        if let Some(unreachable_for) = unreachable.failed(Instant::now()) {
            warn!(
                "still waiting for lock {:?}: {} (for {}); retrying",
                self.name,
                self.client.error(status.clone()),
                crate::duration::format(round_to_seconds(unreachable_for))
            );
        }
    }

    /// One `Acquire` stream: the fencing token of the grant, or why not.
    async fn attempt(
        &self,
        session_id: u64,
        acquire_id: u64,
        deadline: Option<Instant>,
    ) -> Result<u64, Status> {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut request = Request::new(AcquireLockRequest {
            session_id,
            name: self.name.clone(),
            timeout_ms: remaining.map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
            acquire_id,
        });
        let Some(remaining) = remaining else {
            return self.read_grant(request).await;
        };
        let limit = remaining.saturating_add(DEADLINE_MARGIN);
        if let Some(grpc_timeout) = grpc_timeout(limit) {
            request.set_timeout(grpc_timeout);
        }
        // No answer in time counts as a server that cannot be reached.
        tokio::time::timeout(limit, self.read_grant(request))
            .await
            .unwrap_or_else(|_| Err(no_answer(limit)))
    }

    /// Reads the `Acquire` stream until the grant.
    async fn read_grant(&self, request: Request<AcquireLockRequest>) -> Result<u64, Status> {
        let mut stream = LocksClient::new(self.client.channel())
            .acquire(request)
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            match message.event {
                Some(Event::Granted(granted)) => {
                    // The grant is the last message: read the stream's end
                    // too, so that it closes cleanly instead of being reset.
                    let _ = stream.message().await;
                    return Ok(granted.fencing_token);
                }
                Some(Event::Queued(queued)) => {
                    debug!(
                        "lock {:?}: queued at position {}",
                        self.name, queued.position
                    )
                }
                None => {}
            }
        }
        Err(Status::unavailable(format!(
            "the wait for lock {:?} ended without a grant",
            self.name
        )))
    }

    /// After the server said the session is gone: waits for the keep-alive
    /// task to open a new one, unless the client was closed.
    async fn await_new_session(
        &self,
        old: u64,
        status: Status,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let session = self.client.session();
        if session.is_closed() {
            return Err(Error::SessionLost(format!(
                "the client was closed: {}",
                status.message()
            )));
        }
        if session
            .wait_for_replacement(old, limit_within(deadline))
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

/// Cleans up after an acquire whose future was dropped (a caller's own
/// timeout, a `select!`), or that gave up without an answer from the server:
/// if the grant had already left the server, the session holds the lock
/// without anyone knowing. A try-once acquire with the same `acquire_id`
/// returns that grant (or takes the free lock), and the cleanup releases
/// whatever it got.
struct CancelledAcquire {
    /// `None` once the acquire ended normally.
    lock: Option<Lock>,
    acquire_id: u64,
}

impl CancelledAcquire {
    fn disarm(&mut self) {
        self.lock = None;
    }
}

impl Drop for CancelledAcquire {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acquire_id = self.acquire_id;
        runtime.spawn(async move {
            let session_id = lock.client.session_id();
            let Ok(token) = lock
                .attempt(session_id, acquire_id, Some(Instant::now()))
                .await
            else {
                return;
            };
            debug!(
                "lock {:?}: releasing the grant of a cancelled acquire",
                lock.name
            );
            if let Err(error) = release_hold(&lock.client, &lock.name, session_id, token).await {
                warn!(
                    "releasing the grant of a cancelled acquire of {:?} failed: {error}",
                    lock.name
                );
            }
        });
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

/// Classifies a failed acquire attempt. For `Acquire`, `NOT_FOUND` can only
/// mean an unknown session and `FAILED_PRECONDITION` a session that ended
/// while waiting.
fn next_step(status: &Status) -> Next {
    match status.code() {
        _ if super::error::is_transient(status) => Next::Retry,
        Code::NotFound | Code::FailedPrecondition => Next::RenewSession,
        _ => Next::Fail,
    }
}

/// A held lock. Release it with [`LockGuard::release`]; a guard dropped
/// without that is released in the background, best effort (when a tokio
/// runtime is running), and otherwise when the session ends. A guard keeps
/// its client, and so the session's keep-alive, running while it lives.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: String,
    session_id: u64,
    fencing_token: u64,
    /// False once released explicitly: then drop has nothing to do.
    armed: bool,
}

impl LockGuard {
    fn new(lock: &Lock, session_id: u64, fencing_token: u64) -> LockGuard {
        LockGuard {
            client: lock.client.clone(),
            name: lock.name.clone(),
            session_id,
            fencing_token,
            armed: true,
        }
    }

    /// The grant's fencing token: pass it to whatever the lock protects so
    /// that it can refuse a holder older than the newest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Waits until this hold is lost, and returns why: its session expired,
    /// could not be renewed for a full TTL (the client cannot tell a dead
    /// server from an expired lease, so it assumes the worst), or the client
    /// was closed. Returns at once if that already happened; never while the
    /// hold is safe. Whatever the lock protects must stop when it returns:
    /// someone else may hold the lock by then.
    pub async fn lost(&self) -> SessionLoss {
        self.client.session().lost(self.session_id).await
    }

    /// Releases the lock. [`Error::SessionLost`] when the session that held
    /// it is gone (the server released the hold already).
    pub async fn release(mut self) -> Result<(), Error> {
        self.armed = false;
        release_hold(
            &self.client,
            &self.name,
            self.session_id,
            self.fencing_token,
        )
        .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.armed || self.client.session().loss_of(self.session_id).is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!(
                "lock {:?} dropped outside a runtime: it is released when the session ends",
                self.name
            );
            return;
        };
        let client = self.client.clone();
        let name = std::mem::take(&mut self.name);
        let (session_id, token) = (self.session_id, self.fencing_token);
        runtime.spawn(async move {
            if let Err(error) = release_hold(&client, &name, session_id, token).await {
                warn!("releasing dropped lock {name:?} (token {token}) failed: {error}");
            }
        });
    }
}

/// `Locks.Release` with retries. A `FAILED_PRECONDITION` that follows a
/// failed attempt means an earlier attempt did release the lock.
async fn release_hold(
    client: &Client,
    name: &str,
    session_id: u64,
    fencing_token: u64,
) -> Result<(), Error> {
    if let Some(loss) = client.session().loss_of(session_id) {
        return Err(Error::SessionLost(format!(
            "lock {name:?} (token {fencing_token}) was lost: {loss}"
        )));
    }
    let attempts = AtomicU32::new(0);
    let released = client
        .unary(|channel| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let request = ReleaseLockRequest {
                session_id,
                name: name.to_string(),
                fencing_token,
            };
            async move {
                LocksClient::new(channel)
                    .release(with_timeout(request))
                    .await
            }
        })
        .await;
    match released {
        Err(Error::Status(status))
            if status.code() == Code::FailedPrecondition
                && attempts.load(Ordering::Relaxed) > 1 =>
        {
            debug!("lock {name:?} was released by an earlier attempt: {status}");
            Ok(())
        }
        Err(Error::Status(status)) if status.code() == Code::NotFound => {
            Err(Error::SessionLost(format!(
                "lock {name:?} (token {fencing_token}) was lost: {}",
                status.message()
            )))
        }
        other => other.map(|_| ()),
    }
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
}
