//! Locks: a handle to acquire with, and a guard that holds.
//!
//! An acquire opens one `Locks.Acquire` stream and reads it until `granted`.
//! When the stream breaks because the server cannot be reached, the call is
//! retried with the same `acquire_id`, so that a grant lost on the way is
//! handed back instead of queueing the session behind its own hold. The
//! server enforces the wait's timeout (`timeout_ms`, recomputed for every
//! retry); the gRPC deadline set on the request is only a safety margin.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tokio::time::{sleep, Instant};
use tonic::{Code, Request, Status};
use tracing::{debug, warn};

use super::{
    retry::{self, Backoff, RETRY_BUDGET},
    with_timeout, Client, Error,
};
use crate::proto::v1::{
    acquire_lock_response::Event, locks_client::LocksClient, AcquireLockRequest,
    DescribeLockRequest, DescribeLockResponse, ReleaseLockRequest,
};

/// How much longer than the wait itself the client gives the server to
/// answer before it gives up on its own.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

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

    /// The retry loop around acquire attempts. While the server cannot be
    /// reached it keeps trying until the wait's deadline, but for at least
    /// [`RETRY_BUDGET`], so that a quick restart does not end a short wait.
    async fn acquire_within(&self, timeout: Option<Duration>) -> Result<LockGuard, Error> {
        let acquire_id = retry::acquire_id();
        let mut cancelled = CancelledAcquire {
            lock: Some(self.clone()),
            acquire_id,
        };
        let result = self.acquire_with_retries(acquire_id, timeout).await;
        // Reached only if this future was not dropped while waiting.
        cancelled.disarm();
        result
    }

    async fn acquire_with_retries(
        &self,
        acquire_id: u64,
        timeout: Option<Duration>,
    ) -> Result<LockGuard, Error> {
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let retry_until = deadline.map(|d| d.max(started + RETRY_BUDGET));
        let mut backoff = Backoff::default();
        loop {
            let session_id = self.client.session_id();
            let status = match self.attempt(session_id, acquire_id, deadline).await {
                Ok(token) => return Ok(LockGuard::new(self, session_id, token)),
                Err(status) => status,
            };
            match next_step(&status) {
                Next::Retry => {
                    let pause = backoff.next_pause();
                    if retry_until.is_some_and(|until| Instant::now() + pause > until) {
                        return Err(self.client.error(status));
                    }
                    debug!(
                        "acquire {:?} failed: {status}; retrying in {pause:?}",
                        self.name
                    );
                    sleep(pause).await;
                }
                Next::RenewSession => self.await_new_session(session_id, status, deadline).await?,
                Next::Fail => return Err(self.client.error(status)),
            }
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
        let limit = remaining + DEADLINE_MARGIN;
        request.set_timeout(limit);
        tokio::time::timeout(limit, self.read_grant(request))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer from syncd while waiting for lock {:?}",
                    self.name
                )))
            })
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
        let limit = deadline.map_or(RETRY_BUDGET, |d| {
            d.saturating_duration_since(Instant::now())
                .min(RETRY_BUDGET)
        });
        if session.wait_for_replacement(old, limit).await {
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
/// timeout, a `select!`): if the grant had already left the server, the
/// session holds the lock without anyone knowing. A try-once acquire with the
/// same `acquire_id` returns that grant (or takes the free lock), and the
/// cleanup releases whatever it got.
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
        if !self.armed || self.client.session().is_closed() {
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
    if client.session().is_closed() {
        return Err(Error::SessionLost(format!(
            "lock {name:?} (token {fencing_token}) was released when the client was closed"
        )));
    }
    if client.session_id() != session_id {
        return Err(Error::SessionLost(format!(
            "lock {name:?} (token {fencing_token}) was lost with session {session_id}, \
             which ended before the release"
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
