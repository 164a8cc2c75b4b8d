//! Semaphores: up to `capacity` permits held at once.
//!
//! Each acquire takes one or more permits as one hold, under its own fencing
//! token, owned by the client's session. Waiters are served strictly first
//! come, first served: a request at the head of the queue that does not fit
//! yet blocks later, smaller ones, so nobody starves. An acquire waits on one
//! `Semaphores.Acquire` stream and is retried with the same retry identity
//! when the server cannot be reached, like a lock's; a wait that times out or
//! is dropped leaves nothing queued and no permits taken. A
//! [`SemaphoreGuard`] gives its permits back on [`SemaphoreGuard::release`],
//! or in the background when dropped; the server gives them back when the
//! session ends.
//!
//! The capacity is fixed by whoever creates the semaphore (the first
//! acquire); an acquire that names another capacity fails at once with the
//! server's message saying what exists.

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
    acquire_semaphore_response::Event, semaphores_client::SemaphoresClient,
    AcquireSemaphoreRequest, AcquireSemaphoreResponse, DescribeSemaphoreRequest,
    DescribeSemaphoreResponse, ReleaseSemaphoreRequest,
};

/// A named semaphore on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Semaphore {
    client: Client,
    name: String,
    capacity: u32,
}

/// How permits of a semaphore are acquired and released.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SemaphoreKind {
    capacity: u32,
    /// At least 1.
    permits: u32,
}

impl HoldKind for SemaphoreKind {
    type Event = AcquireSemaphoreResponse;

    fn what(&self, name: &str) -> String {
        match self.permits {
            1 => format!("a permit of semaphore {name:?}"),
            n => format!("{n} permits of semaphore {name:?}"),
        }
    }

    async fn acquire(
        &self,
        channel: Transport,
        name: &str,
        attempt: &Attempt,
        acquire_id: u64,
    ) -> Result<Streaming<AcquireSemaphoreResponse>, Status> {
        let request = attempt.request(AcquireSemaphoreRequest {
            session_id: attempt.session_id,
            name: name.to_string(),
            capacity: self.capacity,
            permits: self.permits,
            timeout_ms: attempt.timeout_ms(),
            acquire_id,
        });
        let response = SemaphoresClient::new(channel).acquire(request).await?;
        Ok(response.into_inner())
    }

    fn step(event: AcquireSemaphoreResponse) -> Step<u64> {
        match event.event {
            Some(Event::Granted(granted)) => Step::Done(granted.fencing_token),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        }
    }

    async fn release(&self, channel: Transport, held: &Held) -> Result<(), Status> {
        let request = ReleaseSemaphoreRequest {
            session_id: held.session_id,
            name: held.name.clone(),
            fencing_token: held.fencing_token,
        };
        SemaphoresClient::new(channel)
            .release(with_timeout(request))
            .await?;
        Ok(())
    }
}

impl Semaphore {
    /// `capacity` 0 means "whatever the existing semaphore has" (an acquire
    /// fails with `NOT_FOUND` if none exists).
    pub(crate) fn new(client: Client, name: String, capacity: u32) -> Semaphore {
        Semaphore {
            client,
            name,
            capacity,
        }
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capacity this handle asks for (0: whatever exists).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Waits as long as it takes for `permits` permits (0 counts as 1), then
    /// holds them. More than the capacity is an error at once.
    pub async fn acquire(&self, permits: u32) -> Result<SemaphoreGuard, Error> {
        self.acquire_within(permits, None).await
    }

    /// Takes `permits` permits if they can be had now; `None` when they
    /// cannot (too few are free, or others wait first).
    pub async fn try_acquire(&self, permits: u32) -> Result<Option<SemaphoreGuard>, Error> {
        let hold = self.request(permits).try_acquire().await?;
        Ok(hold.map(|hold| SemaphoreGuard { hold }))
    }

    /// Waits at most `timeout` for `permits` permits; [`Error::Timeout`]
    /// when it passes (nothing is left queued).
    pub async fn acquire_timeout(
        &self,
        permits: u32,
        timeout: Duration,
    ) -> Result<SemaphoreGuard, Error> {
        self.acquire_within(permits, Some(timeout)).await
    }

    /// The capacity, the holds and the waiters, as the server sees them now.
    pub async fn describe(&self) -> Result<DescribeSemaphoreResponse, Error> {
        let request = DescribeSemaphoreRequest {
            name: self.name.clone(),
        };
        self.client
            .unary(|channel| {
                let request = request.clone();
                async move {
                    SemaphoresClient::new(channel)
                        .describe(with_timeout(request))
                        .await
                }
            })
            .await
    }

    async fn acquire_within(
        &self,
        permits: u32,
        timeout: Option<Duration>,
    ) -> Result<SemaphoreGuard, Error> {
        let hold = self.request(permits).acquire(timeout).await?;
        Ok(SemaphoreGuard { hold })
    }

    fn request(&self, permits: u32) -> HoldRequest<SemaphoreKind> {
        let kind = SemaphoreKind {
            capacity: self.capacity,
            permits: permits.max(1),
        };
        HoldRequest::new(self.client.clone(), self.name.clone(), kind)
    }
}

/// Permits held as one hold. Release them with [`SemaphoreGuard::release`];
/// a guard dropped without that is released in the background, best effort
/// (when a tokio runtime is running), and otherwise when the session ends.
#[derive(Debug)]
pub struct SemaphoreGuard {
    hold: Hold<SemaphoreKind>,
}

impl SemaphoreGuard {
    /// The hold's fencing token, for whatever the permits protect.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token()
    }

    /// How many permits this hold takes.
    pub fn permits(&self) -> u32 {
        self.hold.kind().permits
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        self.hold.name()
    }

    /// The session that holds the permits.
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

    /// Gives the permits back. [`Error::SessionLost`] when the session that
    /// held them is gone (the server gave them back already).
    pub async fn release(self) -> Result<(), Error> {
        self.hold.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_read_as_permits_of_a_semaphore() {
        let one = SemaphoreKind {
            capacity: 3,
            permits: 1,
        };
        assert_eq!(one.what("db"), "a permit of semaphore \"db\"");
        let two = SemaphoreKind {
            capacity: 3,
            permits: 2,
        };
        assert_eq!(two.what("db"), "2 permits of semaphore \"db\"");
    }
}
