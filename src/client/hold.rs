//! Holds taken by an `Acquire` stream and given back by `Release`: locks,
//! semaphore permits, read-write lock holds, pool checkouts (`Checkout` /
//! `Checkin`). One acquire machinery and one guard core serve them all; a
//! [`HoldKind`] says what differs, and a [`Grant`] what a grant carries
//! besides its fencing token.
//!
//! An acquire opens one `Acquire` stream and reads it until `granted`. When
//! the stream breaks because the server cannot be reached, the call is
//! retried with the same `acquire_id`, so that a grant lost on the way is
//! handed back instead of queueing the session behind its own hold (see
//! [`super::wait`] for deadlines and session renewal). An acquire that is
//! dropped while it waits, or that gave up without an answer, leaves a
//! [`CancelledAcquire`] behind to release a grant nobody heard of.
//!
//! A [`Hold`] releases on `release`, or, best effort, in the background when
//! dropped; otherwise the server releases it when the session ends.

use std::{
    fmt::Debug,
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use prost::Message;
use tonic::{Code, Status, Streaming};
use tracing::{debug, warn};

use super::{
    loss::HoldLoss,
    retry,
    session::LeaseDanger,
    wait::{read_to_end, Attempt, Step, Wait},
    Client, Error, Transport,
};

/// What differs between the kinds of hold: how to open the `Acquire`
/// stream, how to read its messages, how to release.
pub(crate) trait HoldKind: Clone + Debug + Send + Sync + 'static {
    /// A message of the `Acquire` stream.
    type Event: Message + Default + Send + 'static;

    /// Names the hold in messages, e.g. `lock "db"` or
    /// `2 permits of semaphore "db"`.
    fn what(&self, name: &str) -> String;

    /// Opens one `Acquire` stream with the attempt's session and timeout
    /// (see [`Attempt::request`]).
    fn acquire(
        &self,
        channel: Transport,
        name: &str,
        attempt: &Attempt,
        acquire_id: u64,
    ) -> impl Future<Output = Result<Streaming<Self::Event>, Status>> + Send;

    /// What one message of the stream says; `Done` carries the fencing token.
    fn step(event: Self::Event) -> Step<u64>;

    /// One `Release` call.
    fn release(
        &self,
        channel: Transport,
        held: &Held,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// What an `Acquire` stream's final message grants: at least a fencing
/// token (a lock's grant is nothing more; a pool's carries its resource).
pub(crate) trait Grant: Send + 'static {
    fn fencing_token(&self) -> u64;
}

impl Grant for u64 {
    fn fencing_token(&self) -> u64 {
        *self
    }
}

/// What a `Release` call names.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) session_id: u64,
    pub(crate) name: String,
    pub(crate) fencing_token: u64,
}

/// A request for one kind of hold on one named primitive, through one
/// client's session.
#[derive(Clone, Debug)]
pub(crate) struct HoldRequest<K> {
    client: Client,
    name: String,
    kind: K,
}

impl<K: HoldKind> HoldRequest<K> {
    pub(crate) fn new(client: Client, name: String, kind: K) -> HoldRequest<K> {
        HoldRequest { client, name, kind }
    }

    /// Waits at most `timeout` (`None`: as long as it takes) for the hold;
    /// [`Error::Timeout`] when it passes, and nothing is left queued.
    pub(crate) async fn acquire(&self, timeout: Option<Duration>) -> Result<Hold<K>, Error> {
        let (hold, _) = self.acquire_granting(timeout, K::step).await?;
        Ok(hold)
    }

    /// Like [`HoldRequest::acquire`], for a kind whose grant carries more
    /// than its fencing token: `step` reads the stream's messages into the
    /// grant, which comes back with the hold.
    pub(crate) async fn acquire_granting<G: Grant>(
        &self,
        timeout: Option<Duration>,
        step: fn(K::Event) -> Step<G>,
    ) -> Result<(Hold<K>, G), Error> {
        let acquire_id = retry::acquire_id();
        let mut cancelled = CancelledAcquire {
            request: Some(self.clone()),
            acquire_id,
        };
        let what = self.kind.what(&self.name);
        let wait = Wait::new(&self.client, &what, timeout);
        let answer = wait
            .with_retries(|attempt| self.attempt(attempt, acquire_id, &what, step))
            .await;
        // Reached only if this future was not dropped while waiting.
        match answer {
            Ok((session_id, grant)) => {
                cancelled.disarm();
                let hold = Hold::new(self, session_id, grant.fencing_token());
                Ok((hold, grant))
            }
            Err(failed) => {
                if !failed.unanswered {
                    cancelled.disarm();
                }
                Err(failed.error)
            }
        }
    }

    /// Takes the hold if it can be had now; `None` when it cannot.
    pub(crate) async fn try_acquire(&self) -> Result<Option<Hold<K>>, Error> {
        let granted = self.try_acquire_granting(K::step).await?;
        Ok(granted.map(|(hold, _)| hold))
    }

    /// Like [`HoldRequest::try_acquire`], with the grant that `step` reads
    /// (see [`HoldRequest::acquire_granting`]).
    pub(crate) async fn try_acquire_granting<G: Grant>(
        &self,
        step: fn(K::Event) -> Step<G>,
    ) -> Result<Option<(Hold<K>, G)>, Error> {
        match self.acquire_granting(Some(Duration::ZERO), step).await {
            Ok(granted) => Ok(Some(granted)),
            Err(Error::Timeout(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One `Acquire` stream: the grant, as `step` reads it, or why not.
    async fn attempt<G>(
        &self,
        attempt: Attempt,
        acquire_id: u64,
        what: &str,
        step: fn(K::Event) -> Step<G>,
    ) -> Result<G, Status> {
        let stream = self
            .kind
            .acquire(self.client.transport(), &self.name, &attempt, acquire_id)
            .await?;
        read_to_end(stream, what, step).await
    }
}

/// Cleans up after an acquire whose future was dropped (a caller's own
/// timeout, a `select!`), or that gave up without an answer from the server:
/// if the grant had already left the server, the session holds it without
/// anyone knowing. A try-once acquire with the same `acquire_id` returns that
/// grant (or takes a free one), and the cleanup releases whatever it got.
struct CancelledAcquire<K: HoldKind> {
    /// `None` once the acquire ended normally.
    request: Option<HoldRequest<K>>,
    acquire_id: u64,
}

impl<K: HoldKind> CancelledAcquire<K> {
    fn disarm(&mut self) {
        self.request = None;
    }
}

impl<K: HoldKind> Drop for CancelledAcquire<K> {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acquire_id = self.acquire_id;
        runtime.spawn(async move {
            let what = request.kind.what(&request.name);
            let wait = Wait::new(&request.client, &what, Some(Duration::ZERO));
            let attempt = wait.attempt(request.client.session_id());
            let grant = attempt
                .bounded(request.attempt(attempt, acquire_id, &what, K::step))
                .await;
            let Ok(fencing_token) = grant else {
                return;
            };
            debug!("{what}: releasing the grant of a cancelled acquire");
            let held = Held {
                session_id: attempt.session_id,
                name: request.name.clone(),
                fencing_token,
            };
            if let Err(error) = release_hold(&request.client, &request.kind, &held).await {
                warn!("releasing the grant of a cancelled acquire of {what} failed: {error}");
            }
        });
    }
}

/// The core of every guard: a hold that the session has under a fencing
/// token. Released by [`Hold::release`]; a hold dropped without that is
/// released in the background, best effort (when a tokio runtime is
/// running), and otherwise when the session ends. It keeps its client, and
/// so the session's keep-alive, running while it lives.
#[derive(Debug)]
pub(crate) struct Hold<K: HoldKind> {
    client: Client,
    kind: K,
    held: Held,
    /// False once released explicitly or given up: then drop has nothing
    /// to do.
    armed: bool,
    /// Why the session no longer holds this, when the client knows it
    /// without the server (see [`Hold::give_up`]).
    given_up: Option<String>,
}

impl<K: HoldKind> Hold<K> {
    fn new(request: &HoldRequest<K>, session_id: u64, fencing_token: u64) -> Hold<K> {
        Hold {
            client: request.client.clone(),
            kind: request.kind.clone(),
            held: Held {
                session_id,
                name: request.name.clone(),
                fencing_token,
            },
            armed: true,
            given_up: None,
        }
    }

    pub(crate) fn fencing_token(&self) -> u64 {
        self.held.fencing_token
    }

    pub(crate) fn name(&self) -> &str {
        &self.held.name
    }

    pub(crate) fn session_id(&self) -> u64 {
        self.held.session_id
    }

    pub(crate) fn kind(&self) -> &K {
        &self.kind
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Waits until this hold is lost, alone or with its session; see the
    /// guards' `lost`.
    pub(crate) async fn lost(&self) -> HoldLoss {
        let held = &self.held;
        self.client
            .session()
            .hold_lost(held.session_id, held.fencing_token)
            .await
    }

    /// Waits until the lease of the session that has this hold is in
    /// danger; see the guards' `in_danger`.
    pub(crate) async fn in_danger(&self) -> LeaseDanger {
        self.client
            .session()
            .in_danger(Some(self.held.session_id))
            .await
    }

    /// Releases the hold. [`Error::SessionLost`] when the session that had
    /// it is gone (the server released it already); a `FAILED_PRECONDITION`
    /// status, without asking the server, when it was given up.
    pub(crate) async fn release(mut self) -> Result<(), Error> {
        self.armed = false;
        if let Some(why) = &self.given_up {
            return Err(Error::Status(Status::failed_precondition(format!(
                "{} (token {}) is not held: {why}",
                self.kind.what(&self.held.name),
                self.held.fencing_token
            ))));
        }
        release_hold(&self.client, &self.kind, &self.held).await
    }

    /// The session holds this again, under a new fencing token (a condition
    /// wait took the lock again).
    pub(crate) fn hold_again(&mut self, fencing_token: u64) {
        self.held.fencing_token = fencing_token;
        self.armed = true;
        self.given_up = None;
    }

    /// The session may no longer have this hold, for the reason `why`: drop
    /// sends nothing and `release` fails at once, until
    /// [`Hold::hold_again`].
    pub(crate) fn give_up(&mut self, why: String) {
        self.armed = false;
        self.given_up = Some(why);
    }

    /// Why the hold was given up, if it was.
    pub(crate) fn given_up(&self) -> Option<&str> {
        self.given_up.as_deref()
    }
}

impl<K: HoldKind> Drop for Hold<K> {
    fn drop(&mut self) {
        let session_id = self.held.session_id;
        if !self.armed || self.client.session().loss_of(session_id).is_some() {
            return;
        }
        let what = self.kind.what(&self.held.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            debug!("{what} dropped outside a runtime: it is released when the session ends");
            return;
        };
        let client = self.client.clone();
        let kind = self.kind.clone();
        let held = self.held.clone();
        runtime.spawn(async move {
            if let Err(error) = release_hold(&client, &kind, &held).await {
                let token = held.fencing_token;
                warn!("releasing dropped {what} (token {token}) failed: {error}");
            }
        });
    }
}

/// `Release` with retries. A `FAILED_PRECONDITION` that follows a failed
/// attempt means an earlier attempt did release the hold.
pub(crate) async fn release_hold<K: HoldKind>(
    client: &Client,
    kind: &K,
    held: &Held,
) -> Result<(), Error> {
    let lost = |why: &dyn std::fmt::Display| {
        Error::SessionLost(format!(
            "{} (token {}) was lost: {why}",
            kind.what(&held.name),
            held.fencing_token
        ))
    };
    if let Some(loss) = client.session().loss_of(held.session_id) {
        return Err(lost(&loss));
    }
    let attempts = AtomicU32::new(0);
    let released = client
        .unary(|channel| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async move { kind.release(channel, held).await.map(tonic::Response::new) }
        })
        .await;
    match released {
        Err(Error::Status(status))
            if status.code() == Code::FailedPrecondition
                && attempts.load(Ordering::Relaxed) > 1 =>
        {
            debug!(
                "{} was released by an earlier attempt: {status}",
                kind.what(&held.name)
            );
            Ok(())
        }
        Err(Error::Status(status)) if status.code() == Code::NotFound => {
            Err(lost(&status.message()))
        }
        other => other,
    }
}
