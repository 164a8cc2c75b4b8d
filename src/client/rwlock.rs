//! Read-write locks: many readers or one writer.
//!
//! Fair to both: requests are served in arrival order, so a waiting writer
//! blocks readers that come after it, and readers at the head of the queue
//! are let in together. Every hold has its own fencing token and belongs to
//! the client's session. An acquire waits on one `RwLocks.Acquire` stream
//! and is retried with the same retry identity when the server cannot be
//! reached, like a lock's; a wait that times out or is dropped leaves
//! nothing queued and no hold behind. An [`RwLockGuard`] releases on
//! [`RwLockGuard::release`], or in the background when dropped.

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
    acquire_rw_lock_response::Event, rw_locks_client::RwLocksClient, AcquireRwLockRequest,
    AcquireRwLockResponse, DescribeRwLockRequest, DescribeRwLockResponse, ReleaseRwLockRequest,
};

/// How a read-write lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RwMode {
    /// Shared with other readers.
    Read,
    /// Exclusive.
    Write,
}

impl RwMode {
    fn as_str(self) -> &'static str {
        match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
        }
    }
}

impl From<RwMode> for crate::proto::v1::RwMode {
    fn from(mode: RwMode) -> crate::proto::v1::RwMode {
        match mode {
            RwMode::Read => crate::proto::v1::RwMode::Read,
            RwMode::Write => crate::proto::v1::RwMode::Write,
        }
    }
}

/// A named read-write lock on the server, seen through one [`Client`]'s
/// session.
#[derive(Clone, Debug)]
pub struct RwLock {
    client: Client,
    name: String,
}

impl HoldKind for RwMode {
    type Event = AcquireRwLockResponse;

    fn what(&self, name: &str) -> String {
        format!("{} hold of rwlock {name:?}", self.as_str())
    }

    async fn acquire(
        &self,
        channel: Transport,
        name: &str,
        attempt: &Attempt,
        acquire_id: u64,
    ) -> Result<Streaming<AcquireRwLockResponse>, Status> {
        let request = attempt.request(AcquireRwLockRequest {
            session_id: attempt.session_id,
            name: name.to_string(),
            mode: crate::proto::v1::RwMode::from(*self).into(),
            timeout_ms: attempt.timeout_ms(),
            acquire_id,
        });
        Ok(RwLocksClient::new(channel)
            .acquire(request)
            .await?
            .into_inner())
    }

    fn step(event: AcquireRwLockResponse) -> Step<u64> {
        match event.event {
            Some(Event::Granted(granted)) => Step::Done(granted.fencing_token),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        }
    }

    async fn release(&self, channel: Transport, held: &Held) -> Result<(), Status> {
        let request = ReleaseRwLockRequest {
            session_id: held.session_id,
            name: held.name.clone(),
            fencing_token: held.fencing_token,
        };
        RwLocksClient::new(channel)
            .release(with_timeout(request))
            .await?;
        Ok(())
    }
}

impl RwLock {
    pub(crate) fn new(client: Client, name: String) -> RwLock {
        RwLock { client, name }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits as long as it takes for a shared hold.
    pub async fn read(&self) -> Result<RwLockGuard, Error> {
        self.acquire(RwMode::Read, None).await
    }

    /// Waits as long as it takes for the exclusive hold.
    pub async fn write(&self) -> Result<RwLockGuard, Error> {
        self.acquire(RwMode::Write, None).await
    }

    /// A shared hold if it can be had now; `None` when a writer holds the
    /// lock or waits for it.
    pub async fn try_read(&self) -> Result<Option<RwLockGuard>, Error> {
        self.try_acquire(RwMode::Read).await
    }

    /// The exclusive hold if the lock is free now; `None` otherwise.
    pub async fn try_write(&self) -> Result<Option<RwLockGuard>, Error> {
        self.try_acquire(RwMode::Write).await
    }

    /// Waits at most `timeout` for a shared hold; [`Error::Timeout`] when it
    /// passes (nothing is left queued).
    pub async fn read_timeout(&self, timeout: Duration) -> Result<RwLockGuard, Error> {
        self.acquire(RwMode::Read, Some(timeout)).await
    }

    /// Waits at most `timeout` for the exclusive hold; [`Error::Timeout`]
    /// when it passes (nothing is left queued).
    pub async fn write_timeout(&self, timeout: Duration) -> Result<RwLockGuard, Error> {
        self.acquire(RwMode::Write, Some(timeout)).await
    }

    /// The holds and the waiters, as the server sees them now.
    pub async fn describe(&self) -> Result<DescribeRwLockResponse, Error> {
        let request = DescribeRwLockRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    RwLocksClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn acquire(&self, mode: RwMode, timeout: Option<Duration>) -> Result<RwLockGuard, Error> {
        let hold = self.request(mode).acquire(timeout).await?;
        Ok(RwLockGuard { hold })
    }

    async fn try_acquire(&self, mode: RwMode) -> Result<Option<RwLockGuard>, Error> {
        let hold = self.request(mode).try_acquire().await?;
        Ok(hold.map(|hold| RwLockGuard { hold }))
    }

    fn request(&self, mode: RwMode) -> HoldRequest<RwMode> {
        HoldRequest::new(self.client.clone(), self.name.clone(), mode)
    }
}

/// A read or write hold. Release it with [`RwLockGuard::release`]; a guard
/// dropped without that is released in the background, best effort (when a
/// tokio runtime is running), and otherwise when the session ends.
#[derive(Debug)]
pub struct RwLockGuard {
    hold: Hold<RwMode>,
}

impl RwLockGuard {
    /// The hold's fencing token, for whatever the lock protects.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token()
    }

    /// Whether this is a shared or the exclusive hold.
    pub fn mode(&self) -> RwMode {
        *self.hold.kind()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.hold.name()
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> u64 {
        self.hold.session_id()
    }

    /// Waits until this hold is lost, alone or with its session, and returns
    /// why; see
    /// [`super::LockGuard::lost`]. Never returns while the hold is safe.
    pub async fn lost(&self) -> HoldLoss {
        self.hold.lost().await
    }

    /// Waits until the lease of the session that has this hold is in
    /// danger; see [`super::LockGuard::in_danger`].
    pub async fn in_danger(&self) -> LeaseDanger {
        self.hold.in_danger().await
    }

    /// Releases the hold. [`Error::SessionLost`] when the session that held
    /// it is gone (the server released it already).
    pub async fn release(self) -> Result<(), Error> {
        self.hold.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_the_wire_and_read_as_words() {
        use crate::proto::v1::RwMode as Wire;
        assert_eq!(Wire::from(RwMode::Read), Wire::Read);
        assert_eq!(Wire::from(RwMode::Write), Wire::Write);
        assert_eq!(RwMode::Write.what("cfg"), "write hold of rwlock \"cfg\"");
    }
}
