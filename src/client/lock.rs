//! Locks: a handle to acquire with, and a guard that holds.
//!
//! A lock has at most one holder; waiters are served first come, first
//! served. An acquire waits on one `Locks.Acquire` stream and is retried with
//! the same retry identity when the server cannot be reached (see
//! [`super::hold`]); a wait that times out or is dropped leaves nothing
//! queued and no hold behind. A [`LockGuard`] releases on
//! [`LockGuard::release`], or in the background when dropped.

use std::time::Duration;

use tonic::{Status, Streaming};

use super::{
    hold::{Held, Hold, HoldKind, HoldRequest},
    loss::HoldLoss,
    session::LeaseDanger,
    wait::{Attempt, Step},
    with_timeout, Client, Error, Transport,
};
use crate::proto::v1::{
    acquire_lock_response::Event, locks_client::LocksClient, AcquireLockRequest,
    AcquireLockResponse, DescribeLockRequest, DescribeLockResponse, ReleaseLockRequest,
};

/// A named lock on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Lock {
    client: Client,
    name: String,
}

/// How locks are acquired and released.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockKind;

impl HoldKind for LockKind {
    type Event = AcquireLockResponse;

    fn what(&self, name: &str) -> String {
        format!("lock {name:?}")
    }

    async fn acquire(
        &self,
        channel: Transport,
        name: &str,
        attempt: &Attempt,
        acquire_id: u64,
    ) -> Result<Streaming<AcquireLockResponse>, Status> {
        let request = attempt.request(AcquireLockRequest {
            session_id: attempt.session_id,
            name: name.to_string(),
            timeout_ms: attempt.timeout_ms(),
            acquire_id,
        });
        Ok(LocksClient::new(channel)
            .acquire(request)
            .await?
            .into_inner())
    }

    fn step(event: AcquireLockResponse) -> Step<u64> {
        match event.event {
            Some(Event::Granted(granted)) => Step::Done(granted.fencing_token),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        }
    }

    async fn release(&self, channel: Transport, held: &Held) -> Result<(), Status> {
        let request = ReleaseLockRequest {
            session_id: held.session_id,
            name: held.name.clone(),
            fencing_token: held.fencing_token,
        };
        LocksClient::new(channel)
            .release(with_timeout(request))
            .await?;
        Ok(())
    }
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
        let hold = self.request().try_acquire().await?;
        Ok(hold.map(|hold| LockGuard { hold }))
    }

    /// Waits at most `timeout` for the lock; [`Error::Timeout`] when it
    /// passes (nothing is left queued).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        self.acquire_within(Some(timeout)).await
    }

    /// The holder and the waiters, as the server sees them now.
    pub async fn describe(&self) -> Result<DescribeLockResponse, Error> {
        let request = DescribeLockRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    LocksClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn acquire_within(&self, timeout: Option<Duration>) -> Result<LockGuard, Error> {
        let hold = self.request().acquire(timeout).await?;
        Ok(LockGuard { hold })
    }

    fn request(&self) -> HoldRequest<LockKind> {
        HoldRequest::new(self.client.clone(), self.name.clone(), LockKind)
    }
}

/// A held lock. Release it with [`LockGuard::release`]; a guard dropped
/// without that is released in the background, best effort (when a tokio
/// runtime is running), and otherwise when the session ends. A guard keeps
/// its client, and so the session's keep-alive, running while it lives.
///
/// A [`super::Condition`] wait gives the lock up and takes it again under a
/// new fencing token, which the guard then shows. If such a wait fails after
/// the server let go of the lock, the guard is dead: the lock is not held,
/// [`LockGuard::release`] fails without asking the server, and dropping it
/// sends nothing.
#[derive(Debug)]
pub struct LockGuard {
    hold: Hold<LockKind>,
}

impl LockGuard {
    /// The grant's fencing token: pass it to whatever the lock protects so
    /// that it can refuse a holder older than the newest it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.hold.name()
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> u64 {
        self.hold.session_id()
    }

    /// Waits until this hold is lost, and returns why. With its session
    /// ([`HoldLoss::Session`]): the session expired, could not be renewed
    /// for a full TTL (the client cannot tell a dead server from an expired
    /// lease, so it assumes the worst), or the client was closed. Or alone
    /// ([`HoldLoss::Taken`]): an operator revoked it, which the server
    /// reports in a keep-alive reply, so within a third of the TTL. Returns
    /// at once if that already happened; never while the hold is safe.
    /// Whatever the lock protects must stop when it returns: someone else
    /// may hold the lock by then.
    pub async fn lost(&self) -> HoldLoss {
        self.hold.lost().await
    }

    /// Waits until the lease of the session that holds the lock is in
    /// danger, and returns how: no keep-alive was confirmed for more than
    /// half its TTL. Returns at once if it is now. The lock is still held,
    /// but will be lost at a full TTL unless a keep-alive gets through (see
    /// [`Client::lease_in_danger`](super::Client::lease_in_danger)); a good
    /// moment to stop starting new work. Never returns once the hold was
    /// lost without its lease having been in danger first.
    pub async fn in_danger(&self) -> LeaseDanger {
        self.hold.in_danger().await
    }

    /// Releases the lock. [`Error::SessionLost`] when the session that held
    /// it is gone (the server released the hold already).
    pub async fn release(self) -> Result<(), Error> {
        self.hold.release().await
    }

    /// The client whose session holds the lock.
    pub(crate) fn client(&self) -> &Client {
        self.hold.client()
    }

    /// The lock is held again under `fencing_token` (a condition wait took
    /// it again).
    pub(crate) fn set_fencing_token(&mut self, fencing_token: u64) {
        self.hold.hold_again(fencing_token);
    }

    /// The lock may no longer be held, because of `why`: the guard is dead
    /// until [`LockGuard::set_fencing_token`].
    pub(crate) fn give_up(&mut self, why: String) {
        self.hold.give_up(why);
    }

    /// Why the guard is dead, if it is.
    pub(crate) fn given_up(&self) -> Option<&str> {
        self.hold.given_up()
    }
}
