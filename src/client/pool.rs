//! Resource pools: at most `size` resources checked out at once, kept
//! healthy by age and idleness.
//!
//! The server cannot open a connection for you: it keeps the books. A
//! checkout waits (strictly first come, first served) until a slot is free,
//! then hands out a [`PooledResource`]: a resource id, the metadata its last
//! checkin stored, and its [`Freshness`], which says whether the real
//! resource exists (`Reused`) or must be created now (anything else: a new
//! slot, a stale resource replaced, or one whose last holder died without a
//! checkin). Resources older than `max_age` or idle longer than `max_idle`
//! are stale: replaced at checkout, and evicted by the server while idle.
//!
//! What it guarantees:
//! - A checkout is a hold of the client's session with its own fencing
//!   token, like a semaphore permit: only that checkout can check the
//!   resource in, and if the session ends (the client crashed, or could not
//!   renew it for a full TTL) the server takes the resource back and the
//!   next checkout sees it as [`Freshness::Recovered`].
//!   [`PooledResource::lost`] tells when that happened: stop using the
//!   resource then.
//! - A checkout is retried with the same retry identity when the server
//!   cannot be reached, so a grant lost with a connection is handed back
//!   rather than taking a second slot; a checkout that times out or is
//!   dropped leaves nothing queued and nothing checked out (a grant nobody
//!   heard of is checked in as unhealthy in the background).
//! - [`PooledResource::checkin`] gives the resource back, healthy (kept,
//!   with new metadata if given) or not (evicted); it is retried, and a
//!   retry that finds it was checked in by an attempt whose answer was lost
//!   counts as done. A [`PooledResource`] dropped without a checkin is
//!   checked in as unhealthy in the background, best effort (when a tokio
//!   runtime is running), and otherwise when the session ends.
//!
//! The size, `max_age` and `max_idle` are fixed by the checkout that creates
//! the pool; a checkout that names others fails at once with the server's
//! message saying what exists.

use std::time::{Duration, Instant};

use tonic::{Code, Status, Streaming};

use super::{
    hold::{Grant, Held, Hold, HoldKind, HoldRequest},
    loss::HoldLoss,
    session::LeaseDanger,
    wait::{is_session_gone, Attempt, Step},
    with_timeout, Client, Error, Transport,
};
use crate::proto::v1::{
    checkout_response::Event, pools_client::PoolsClient, CheckinRequest, CheckoutRequest,
    CheckoutResponse, DescribePoolRequest, DescribePoolResponse, Freshness as WireFreshness,
    Resource,
};

/// A named pool on the server, seen through one [`Client`]'s session.
#[derive(Clone, Debug)]
pub struct Pool {
    client: Client,
    name: String,
    kind: PoolKind,
}

/// Whether a checked-out resource exists already or must be (re)created by
/// the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// Used before and checked in healthy: the real resource exists; its
    /// metadata is what the last checkin stored.
    Reused,
    /// A new slot: create the resource.
    New,
    /// The resource was stale (`max_age` / `max_idle`) and is replaced:
    /// create a new one.
    ReplacedStale,
    /// Its last holder's session ended without a checkin (a crash): create
    /// it again.
    Recovered,
}

impl From<WireFreshness> for Freshness {
    /// An unspecified value (from a server this client does not know) reads
    /// as [`Freshness::New`]: the safe side is to create the resource.
    fn from(wire: WireFreshness) -> Freshness {
        match wire {
            WireFreshness::Reused => Freshness::Reused,
            WireFreshness::ReplacedStale => Freshness::ReplacedStale,
            WireFreshness::Recovered => Freshness::Recovered,
            WireFreshness::New | WireFreshness::Unspecified => Freshness::New,
        }
    }
}

/// How resources of a pool are checked out and, when a checkout is dropped
/// or cancelled, checked in as unhealthy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolKind {
    /// 0: the existing pool's.
    size: u32,
    max_age_ms: u64,
    max_idle_ms: u64,
}

impl Grant for Resource {
    fn fencing_token(&self) -> u64 {
        self.fencing_token
    }
}

impl PoolKind {
    /// Reads a `Checkout` stream's messages into the resource granted.
    fn resource_step(event: CheckoutResponse) -> Step<Resource> {
        match event.event {
            Some(Event::Resource(resource)) => Step::Done(resource),
            Some(Event::Queued(queued)) => Step::Queued(queued.position),
            None => Step::Nothing,
        }
    }
}

impl HoldKind for PoolKind {
    type Event = CheckoutResponse;

    fn what(&self, name: &str) -> String {
        format!("a resource of pool {name:?}")
    }

    async fn acquire(
        &self,
        channel: Transport,
        name: &str,
        attempt: &Attempt,
        acquire_id: u64,
    ) -> Result<Streaming<CheckoutResponse>, Status> {
        let request = attempt.request(CheckoutRequest {
            session_id: attempt.session_id,
            name: name.to_string(),
            size: self.size,
            max_age_ms: self.max_age_ms,
            max_idle_ms: self.max_idle_ms,
            timeout_ms: attempt.timeout_ms(),
            acquire_id,
        });
        let response = PoolsClient::new(channel).checkout(request).await?;
        Ok(response.into_inner())
    }

    fn step(event: CheckoutResponse) -> Step<u64> {
        match PoolKind::resource_step(event) {
            Step::Done(resource) => Step::Done(resource.fencing_token),
            Step::Queued(position) => Step::Queued(position),
            Step::Nothing => Step::Nothing,
        }
    }

    /// A checkout given back without a word from its user (dropped, or
    /// granted to a cancelled checkout): unhealthy, since nobody can say
    /// what became of it.
    async fn release(&self, channel: Transport, held: &Held) -> Result<(), Status> {
        let request = CheckinRequest {
            session_id: held.session_id,
            name: held.name.clone(),
            fencing_token: held.fencing_token,
            healthy: false,
            metadata: None,
        };
        PoolsClient::new(channel)
            .checkin(with_timeout(request))
            .await?;
        Ok(())
    }
}

impl Pool {
    /// `size` 0 means "whatever the existing pool has" (a checkout fails
    /// with `NOT_FOUND` if none exists).
    pub(crate) fn new(client: Client, name: String, size: u32) -> Pool {
        Pool {
            client,
            name,
            kind: PoolKind {
                size,
                max_age_ms: 0,
                max_idle_ms: 0,
            },
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size this handle asks for (0: whatever exists).
    pub fn size(&self) -> u32 {
        self.kind.size
    }

    /// This handle's checkouts declare that a resource is stale `max_age`
    /// after its creation (zero, the default: never by age). Fixed by the
    /// checkout that creates the pool.
    pub fn with_max_age(mut self, max_age: Duration) -> Pool {
        self.kind.max_age_ms = millis_at_least_one(max_age);
        self
    }

    /// This handle's checkouts declare that a resource is stale after
    /// `max_idle` checked in (zero, the default: never by idleness). Fixed
    /// by the checkout that creates the pool.
    pub fn with_max_idle(mut self, max_idle: Duration) -> Pool {
        self.kind.max_idle_ms = millis_at_least_one(max_idle);
        self
    }

    /// Waits as long as it takes for a resource, then holds it.
    pub async fn checkout(&self) -> Result<PooledResource, Error> {
        self.checkout_within(None).await
    }

    /// Checks a resource out if one can be had now (an idle resource or a
    /// free slot, and nobody waiting first); `None` when it cannot.
    pub async fn try_checkout(&self) -> Result<Option<PooledResource>, Error> {
        let granted = self
            .request()
            .try_acquire_granting(PoolKind::resource_step)
            .await?;
        Ok(granted.map(|(hold, resource)| PooledResource::new(hold, resource)))
    }

    /// Waits at most `timeout` for a resource; [`Error::Timeout`] when it
    /// passes (nothing is left queued or checked out).
    pub async fn checkout_timeout(&self, timeout: Duration) -> Result<PooledResource, Error> {
        self.checkout_within(Some(timeout)).await
    }

    /// The settings, the resources (idle or out, and to whom) and the
    /// waiters, as the server sees them now (size 0: no such pool).
    pub async fn describe(&self) -> Result<DescribePoolResponse, Error> {
        describe(&self.client, &self.name).await
    }

    async fn checkout_within(&self, timeout: Option<Duration>) -> Result<PooledResource, Error> {
        let (hold, resource) = self
            .request()
            .acquire_granting(timeout, PoolKind::resource_step)
            .await?;
        Ok(PooledResource::new(hold, resource))
    }

    fn request(&self) -> HoldRequest<PoolKind> {
        HoldRequest::new(self.client.clone(), self.name.clone(), self.kind)
    }
}

/// A checked-out resource. Give it back with [`PooledResource::checkin`]; one
/// dropped without that is checked in as unhealthy (evicted) in the
/// background, best effort (when a tokio runtime is running), and otherwise
/// when the session ends (then the next checkout sees it as
/// [`Freshness::Recovered`]). It keeps its client, and so the session's
/// keep-alive, running while it lives.
#[derive(Debug)]
pub struct PooledResource {
    hold: Hold<PoolKind>,
    resource_id: u64,
    freshness: Freshness,
    metadata: Vec<u8>,
    /// The age the server reported at checkout ...
    age_at_checkout: Duration,
    /// ... and when the client received it.
    checked_out_at: Instant,
}

impl PooledResource {
    fn new(hold: Hold<PoolKind>, resource: Resource) -> PooledResource {
        PooledResource {
            hold,
            resource_id: resource.resource_id,
            freshness: resource.freshness().into(),
            metadata: resource.metadata,
            age_at_checkout: Duration::from_millis(resource.age_ms),
            checked_out_at: Instant::now(),
        }
    }

    /// The resource's id: a new one whenever the resource is (re)created,
    /// the same as last time when it is [`Freshness::Reused`].
    pub fn resource_id(&self) -> u64 {
        self.resource_id
    }

    /// The checkout's fencing token, for whatever the resource protects.
    pub fn fencing_token(&self) -> u64 {
        self.hold.fencing_token()
    }

    /// Whether the real resource exists or must be created now.
    pub fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// True when the client must create the real resource: anything but
    /// [`Freshness::Reused`].
    pub fn is_fresh(&self) -> bool {
        self.freshness != Freshness::Reused
    }

    /// What the last checkin stored with the resource; empty for a fresh
    /// one.
    pub fn metadata(&self) -> &[u8] {
        &self.metadata
    }

    /// How long ago the resource was created: its age at checkout, as the
    /// server said, plus the time since.
    pub fn age(&self) -> Duration {
        self.age_at_checkout
            .saturating_add(self.checked_out_at.elapsed())
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        self.hold.name()
    }

    /// The session that has the resource checked out.
    pub fn session_id(&self) -> u64 {
        self.hold.session_id()
    }

    /// Waits until this checkout is lost, alone or with its session, and
    /// returns why; see [`super::LockGuard::lost`]. Never returns while the checkout is
    /// safe. Stop using the resource when it returns: the server has taken
    /// it back.
    pub async fn lost(&self) -> HoldLoss {
        self.hold.lost().await
    }

    /// Waits until the lease of the session that has this hold is in
    /// danger; see [`super::LockGuard::in_danger`].
    pub async fn in_danger(&self) -> LeaseDanger {
        self.hold.in_danger().await
    }

    /// Gives the resource back. `healthy`: keep it for the next checkout,
    /// with `metadata` if given (otherwise what it had); not healthy: evict
    /// it (the next checkout creates a new one). Returns true when the
    /// resource was evicted (unhealthy, or stale by now).
    /// [`Error::SessionLost`] when the session that had it is gone (the
    /// server took it back already). When a retry finds the checkin done by
    /// an attempt whose answer was lost, whether that evicted the resource
    /// is read from the pool: true when the resource is no longer there.
    pub async fn checkin(self, healthy: bool, metadata: Option<Vec<u8>>) -> Result<bool, Error> {
        let mut hold = self.hold;
        // From here on, dropping the hold sends nothing: this is its checkin.
        hold.give_up("it was checked in".to_string());
        let client = hold.client().clone();
        let what = hold.kind().what(hold.name());
        let session_id = hold.session_id();
        let fencing_token = hold.fencing_token();
        let lost = |why: &dyn std::fmt::Display| {
            Error::SessionLost(format!("{what} (token {fencing_token}) was lost: {why}"))
        };
        if let Some(loss) = client.session().loss_of(session_id) {
            return Err(lost(&loss));
        }
        let request = CheckinRequest {
            session_id,
            name: hold.name().to_string(),
            fencing_token,
            healthy,
            metadata,
        };
        let checked_in = client
            .unary_settling(
                |channel| {
                    let request = request.clone();
                    async move {
                        PoolsClient::new(channel)
                            .checkin(with_timeout(request))
                            .await
                    }
                },
                |status| {
                    status.code() == Code::FailedPrecondition
                        && !is_session_gone(status, session_id)
                },
            )
            .await;
        match checked_in {
            Ok(Some(response)) => Ok(response.evicted),
            Ok(None) if !healthy => Ok(true),
            Ok(None) => {
                let pool = describe(&client, hold.name()).await?;
                let kept = (pool.resources.iter()).any(|r| r.resource_id == self.resource_id);
                Ok(!kept)
            }
            Err(Error::Status(status)) if status.code() == Code::NotFound => {
                Err(lost(&status.message()))
            }
            Err(error) => Err(error),
        }
    }
}

async fn describe(client: &Client, name: &str) -> Result<DescribePoolResponse, Error> {
    let request = DescribePoolRequest {
        name: name.to_string(),
    };
    client
        .unary(|channel| {
            let request = request.clone();
            async move {
                PoolsClient::new(channel)
                    .describe(with_timeout(request))
                    .await
            }
        })
        .await
}

/// Whole milliseconds, saturating; a nonzero duration is at least 1 ms
/// (0 would mean "never").
fn millis_at_least_one(duration: Duration) -> u64 {
    match u64::try_from(duration.as_millis()).unwrap_or(u64::MAX) {
        0 if !duration.is_zero() => 1,
        ms => ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_reads_unknown_values_as_new() {
        assert_eq!(Freshness::from(WireFreshness::Reused), Freshness::Reused);
        assert_eq!(Freshness::from(WireFreshness::New), Freshness::New);
        assert_eq!(
            Freshness::from(WireFreshness::ReplacedStale),
            Freshness::ReplacedStale
        );
        assert_eq!(
            Freshness::from(WireFreshness::Recovered),
            Freshness::Recovered
        );
        assert_eq!(Freshness::from(WireFreshness::Unspecified), Freshness::New);
        let unknown = Resource {
            freshness: 99,
            ..Resource::default()
        };
        assert_eq!(Freshness::from(unknown.freshness()), Freshness::New);
    }

    #[test]
    fn a_resource_grant_carries_its_token() {
        let granted = CheckoutResponse {
            event: Some(Event::Resource(Resource {
                resource_id: 4,
                fencing_token: 17,
                freshness: WireFreshness::Reused as i32,
                metadata: b"dsn".to_vec(),
                age_ms: 1500,
            })),
        };
        assert!(matches!(PoolKind::step(granted.clone()), Step::Done(17)));
        let Step::Done(resource) = PoolKind::resource_step(granted) else {
            panic!("a resource is the final message");
        };
        assert_eq!(
            (resource.resource_id, resource.metadata),
            (4, b"dsn".to_vec())
        );
        let queued = CheckoutResponse {
            event: Some(Event::Queued(crate::proto::v1::Queued { position: 2 })),
        };
        assert!(matches!(PoolKind::step(queued), Step::Queued(2)));
        assert!(matches!(
            PoolKind::step(CheckoutResponse::default()),
            Step::Nothing
        ));
    }

    #[test]
    fn durations_become_milliseconds_but_never_zero_by_rounding() {
        assert_eq!(millis_at_least_one(Duration::ZERO), 0);
        assert_eq!(millis_at_least_one(Duration::from_micros(10)), 1);
        assert_eq!(millis_at_least_one(Duration::from_secs(2)), 2000);
        assert_eq!(millis_at_least_one(Duration::MAX), u64::MAX);
    }
}
