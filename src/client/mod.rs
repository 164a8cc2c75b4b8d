//! The Rust client library: sessions, keep-alive, retries and streams
//! behind a small async API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), syncd::client::Error> {
//! use syncd::client::Client;
//!
//! let client = Client::connect("http://127.0.0.1:7420").await?;
//! let guard = client.lock("db-migration").acquire().await?;
//! // Pass the fencing token to whatever the lock protects.
//! println!("holding {} with token {}", guard.name(), guard.fencing_token());
//! guard.release().await?;
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What the library does for you:
//! - [`Client::connect`] opens a session with a TTL and starts one background
//!   task per client that keeps it alive over one `KeepAlive` stream. After a
//!   server restart the task resumes the same session (sessions are durable);
//!   if the session is gone it opens a new one and logs a warning (unless
//!   someone waits on [`LockGuard::lost`] to report it): the holds of the
//!   old one are lost, as the lease promised.
//! - A session is lost when the server no longer knows it, and also when no
//!   keep-alive was confirmed for a full TTL: the client cannot tell a dead
//!   server from an expired lease, so it assumes the worst.
//!   [`LockGuard::lost`] and [`Client::session_lost`] tell when that happens;
//!   whatever a lost hold protects must stop at once.
//! - Unary calls (release, describe, ping, list, event set/clear) retry a
//!   server that cannot be reached for about 5 s before returning
//!   [`Error::Unavailable`]. Those that must not be applied twice
//!   ([`Condition::notify`], [`Barrier::reset`], [`Barrier::delete`]) are
//!   retried only when the failed attempt surely did not reach the server.
//! - Handles: [`Client::lock`], [`Client::semaphore`], [`Client::rwlock`],
//!   [`Client::event`], [`Client::condition`], [`Client::barrier`],
//!   [`Client::queue`], [`Client::pool`], [`Client::rate_limit`],
//!   [`Client::breaker`]. Creating one sends nothing.
//! - [`Lock::acquire`], [`Semaphore::acquire`] and [`RwLock::read`] /
//!   [`RwLock::write`] retry a broken wait with the same retry identity, so a
//!   grant lost with a connection is returned rather than queued behind;
//!   [`Event::wait`] retries too (waiting holds nothing). A wait with a
//!   timeout keeps its deadline also while the server cannot be reached; one
//!   without keeps trying and logs a warning every 10 s.
//! - [`Queue::put`] retries with the same retry identity, so a put whose
//!   answer was lost is stored once (within one session); [`Queue::get`]
//!   retries too: delivery is at least once, and an item whose answer was
//!   lost comes back after its visibility timeout. [`Queue::ack`],
//!   [`Queue::nack`] and [`PooledResource::checkin`] are retried, and a
//!   retry that finds the work done by an unanswered attempt counts as
//!   done. [`Pool::checkout`] retries like an acquire.
//! - [`RateLimit::acquire`] retries like an event wait; a take granted
//!   without its answer reaching the client is lost tokens, so retries can
//!   only under-use a rate, never exceed it. [`CircuitBreaker::allow`]
//!   retries with a retry identity (the same permit comes back), and
//!   [`BreakerPermit::record`] retries like an ack.
//! - [`Condition::wait`] and [`Barrier::wait`] are never retried: a second
//!   request would not mean the same (the lock was given up; a party that
//!   left broke the barrier). Their errors come back as they are.
//! - [`LockGuard`], [`SemaphoreGuard`] and [`RwLockGuard`] release on
//!   `release`, or, best effort, when dropped; a [`PooledResource`] dropped
//!   without [`PooledResource::checkin`] is checked in as unhealthy.
//! - An `https://` address means TLS; [`ClientOptions::tls`] says which CA
//!   to trust (default: the well-known public CAs) and, for mutual TLS,
//!   which client certificate to present. A failed handshake is an
//!   [`Error::Unavailable`] that says `tls handshake failed: ...`.
//! - [`ClientOptions::token`] is sent with every call (session, keep-alive,
//!   every primitive, watches, inspection) as `authorization: Bearer
//!   SECRET`, for a server started with `--auth-tokens`. A server that does
//!   not know the token answers [`Error::Unauthenticated`]; one whose token
//!   may not do a call (its role, or a name outside its prefixes) answers
//!   [`Error::PermissionDenied`]. Neither is ever retried, and a keep-alive
//!   refused so ends the session at once ([`LossReason::Refused`]).

mod auth;
mod barrier;
mod breaker;
mod condition;
mod error;
mod event;
mod hold;
mod lock;
mod loss;
mod pool;
mod queue;
mod ratelimit;
mod retry;
mod rwlock;
mod semaphore;
mod session;
mod tls;
mod wait;
mod watch;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{task::AbortHandle, time::sleep};
use tonic::{
    transport::{Channel, Endpoint},
    Code, Response, Status,
};
use tracing::debug;

pub use auth::{check_token, Bearer, Transport, TOKEN_BYTES_MAX};
pub use barrier::{Barrier, BarrierPassed};
pub use breaker::{Allowed, BreakerChange, BreakerPermit, BreakerWatch, CallError, CircuitBreaker};
pub use condition::Condition;
pub use error::Error;
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use loss::{HoldLoss, HoldLossReason, LostHold};
pub use pool::{Freshness, Pool, PooledResource};
pub use queue::{Queue, QueueItem};
pub use ratelimit::{ManyTaken, RateLimit, Taken};
pub use rwlock::{RwLock, RwLockGuard, RwMode};
pub use semaphore::{Semaphore, SemaphoreGuard};
pub use session::{LeaseDanger, LossReason, SessionLoss};
pub use tls::TlsOptions;
pub use watch::{StateChange, StateWatch};

pub use crate::proto::v1::{BreakerSettings, BreakerState, SessionHold, SessionInfo};

/// What [`Client::revoke`] took away: a hold of `kind` `name`, from
/// session `session_id` (which lives on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub session_id: u64,
    pub kind: String,
    pub name: String,
}

use crate::proto::v1::{
    sessions_client::SessionsClient, system_client::SystemClient, CloseSessionRequest, ListRequest,
    ListSessionsRequest, PingRequest, PrimitiveSummary, RevokeRequest,
};
use retry::{Backoff, ATTEMPT_TIMEOUT, RETRY_BUDGET};
use session::{KeepAlive, Lease, SessionShared};

/// How often HTTP/2 pings check that the connection is alive.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long an HTTP/2 ping may go unanswered before the connection is
/// considered dead.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`Client`] connects and what its session looks like.
#[derive(Clone)]
pub struct ClientOptions {
    /// The session's lease: if the client cannot renew it for this long
    /// (crash, partition), the server releases everything it holds, and the
    /// client takes all of it as lost too (see [`LockGuard::lost`]).
    /// Default 10 s.
    pub session_ttl: Duration,
    /// A label shown by `describe`. Default `<exe-name>@<hostname>:<pid>`.
    pub client_name: String,
    /// How long to wait for a TCP connection to the server, and for the
    /// session to be created by `connect` (the TLS handshake included).
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// TLS settings for an `https://` address (ignored for `http://`): the
    /// CA to trust, a client certificate for mutual TLS. Default: trust the
    /// public CAs, present no certificate.
    pub tls: TlsOptions,
    /// The secret of a token from the server's `--auth-tokens` file, for a
    /// server that checks tokens. Sent with every call, the session's
    /// keep-alives included, as the metadata `authorization: Bearer
    /// SECRET`; over `http://` it travels in clear, so use `https://`
    /// beyond a trusted network. It must be printable ASCII without spaces
    /// (see [`check_token`]), or `connect` fails with
    /// [`Error::InvalidAddress`] before sending anything. Default: none
    /// (no header is sent).
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    /// Like a derived `Debug`, but the token's secret is not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("session_ttl", &self.session_ttl)
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field(
                "token",
                &format_args!(
                    "{}",
                    if self.token.is_some() {
                        "Some(<secret>)"
                    } else {
                        "None"
                    }
                ),
            )
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            session_ttl: Duration::from_secs(10),
            client_name: default_client_name(),
            connect_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
            token: None,
        }
    }
}

/// A connection to syncd with one session. Cheap to clone: clones share the
/// connection, the session and its keep-alive task, which stops when the last
/// clone is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    channel: Channel,
    /// `channel` with the token added to every request: what every call
    /// uses.
    transport: Transport,
    session: Arc<SessionShared>,
    keep_alive: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("session_id", &self.session_id())
            .finish()
    }
}

impl Client {
    /// Connects to the server at `addr` (`http://127.0.0.1:7420`, or
    /// `127.0.0.1:7420` without a scheme; `https://` for TLS, trusting the
    /// public CAs) with default options and opens a session.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with the given options and opens a session. Fails with
    /// [`Error::Unavailable`] when the server cannot be reached; it does not
    /// retry. A server that checks tokens refuses a missing or unknown
    /// token with [`Error::Unauthenticated`].
    pub async fn connect_with(
        addr: impl Into<String>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let addr = normalize_addr(&addr.into())?;
        let bearer = Bearer::new(options.token.as_deref())?;
        let channel = endpoint(&addr, &options)?.connect_lazy();
        let transport = auth::transport(channel.clone(), bearer);
        let asked = tokio::time::Instant::now();
        let created = tokio::time::timeout(
            options.connect_timeout,
            session::create_session(&transport, options.session_ttl, &options.client_name),
        )
        .await
        .unwrap_or_else(|_| Err(no_answer(options.connect_timeout)));
        let session_id = created
            .map_err(|status| with_tls_hint(Error::from_status(status, &addr), &addr, &options))?;
        debug!("session {session_id} opened at {addr}");
        let session = Arc::new(SessionShared::new(session_id));
        let keep_alive = KeepAlive {
            transport: transport.clone(),
            shared: session.clone(),
            addr: addr.clone(),
            ttl: options.session_ttl,
            client_name: options.client_name,
            lease: Lease::new(asked, options.session_ttl),
        }
        .spawn();
        let inner = Inner {
            addr,
            channel,
            transport,
            session,
            keep_alive,
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The current session's id. It changes only when the session was lost
    /// and replaced by a new one.
    pub fn session_id(&self) -> u64 {
        self.inner.session.id()
    }

    /// Waits until the current session (the one [`Client::session_id`]
    /// returns now) is lost, and with it everything it holds: the server
    /// said it expired, no keep-alive was confirmed for a full TTL, or the
    /// client was closed. Returns which session and why. The client goes on
    /// with a new session.
    pub async fn session_lost(&self) -> SessionLoss {
        let session_id = self.session_id();
        self.inner.session.lost(session_id).await
    }

    /// The holds the server took from the current session while it lived
    /// on (revoked, a queue item's visibility timeout, a deleted primitive),
    /// oldest first: the latest 1,000 of them. The server reports them in
    /// keep-alive replies, so they show here within a third of the TTL.
    pub fn lost_holds(&self) -> Vec<LostHold> {
        self.inner.session.taken_holds()
    }

    /// Waits until hold `fencing_token` of the current session is lost,
    /// alone (see [`Client::lost_holds`]) or with its session; returns why.
    pub async fn hold_lost(&self, fencing_token: u64) -> HoldLoss {
        let session_id = self.session_id();
        self.inner
            .session
            .hold_lost(session_id, fencing_token)
            .await
    }

    /// Takes the hold with `fencing_token` away from whichever session has
    /// it (an operator's tool for a stuck holder); whoever waits next is
    /// granted at once, and the holder is told, with `reason`, at once (the
    /// server pushes the notice down its keep-alive stream). `reason` (at
    /// most 256 bytes) should say who asks and
    /// why; the server logs it. An [`Error::Status`] with code `NOT_FOUND`
    /// when no hold has that token (also when a retry follows an attempt
    /// that did revoke it).
    pub async fn revoke(&self, fencing_token: u64, reason: &str) -> Result<Revoked, Error> {
        let request = RevokeRequest {
            fencing_token,
            reason: reason.to_string(),
        };
        let response = self
            .unary(|channel| {
                let request = request.clone();
                async move {
                    SessionsClient::new(channel)
                        .revoke(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(Revoked {
            session_id: response.session_id,
            kind: response.kind,
            name: response.name,
        })
    }

    /// Ends another session now (an operator's tool): everything it holds
    /// is released and its waits end; its client finds out at its next
    /// keep-alive, with `reason` ([`LossReason::ClosedOnServer`]). `reason`
    /// (at most 256 bytes) says who asks and why; the server logs it. Returns how many holds were released. An
    /// [`Error::Status`] with code `NOT_FOUND` when no such session lives.
    pub async fn close_session(&self, session_id: u64, reason: &str) -> Result<u32, Error> {
        let request = CloseSessionRequest {
            session_id,
            reason: reason.to_string(),
        };
        let response = self
            .unary(|channel| {
                let request = request.clone();
                async move {
                    SessionsClient::new(channel)
                        .close(with_timeout(request))
                        .await
                }
            })
            .await?;
        Ok(response.released)
    }

    /// Every live session on the server, in id order, each with its client
    /// name, host, lease and holds (`Sessions.List`, a page of 1,000 at a
    /// time).
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        const PAGE: u32 = 1_000;
        let mut sessions: Vec<SessionInfo> = Vec::new();
        loop {
            let request = ListSessionsRequest {
                after_session_id: sessions.last().map_or(0, |s| s.session_id),
                limit: PAGE,
            };
            let page = self
                .unary(|channel| async move {
                    SessionsClient::new(channel)
                        .list(with_timeout(request))
                        .await
                })
                .await?
                .sessions;
            let last_page = page.len() < PAGE as usize;
            sessions.extend(page);
            if last_page {
                return Ok(sessions);
            }
        }
    }

    /// Waits until the current session's lease is in danger: no keep-alive
    /// was confirmed for more than half its TTL (the server is unreachable,
    /// paused, or the network is broken). Returns at once if it is now. At a
    /// full TTL the session is taken as lost (see [`Client::session_lost`]);
    /// until then a confirmed keep-alive takes the danger back (see
    /// [`Client::is_lease_in_danger`]). Once the client is closed, no new
    /// danger is noted.
    pub async fn lease_in_danger(&self) -> LeaseDanger {
        self.inner.session.in_danger(None).await
    }

    /// Whether the current session's lease is in danger now; see
    /// [`Client::lease_in_danger`].
    pub fn is_lease_in_danger(&self) -> bool {
        self.inner.session.danger_of(None).is_some()
    }

    /// Waits until the current session's lease is not in danger (a
    /// keep-alive was confirmed again, or the session was replaced); returns
    /// at once if it is not. See [`Client::lease_in_danger`].
    pub async fn lease_out_of_danger(&self) {
        self.inner.session.out_of_danger().await
    }

    /// The gRPC channel all of this client's calls share: raw access for
    /// tests and tools. It carries no token: calls made on it send no
    /// `authorization` header (see [`Client::transport`] for one that
    /// does).
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// The channel with this client's token ([`ClientOptions::token`])
    /// added to every request: what the client's own calls use. Build any
    /// generated client on it, e.g.
    /// `syncd::proto::v1::locks_client::LocksClient::new(client.transport())`.
    /// Without a token it sends what [`Client::channel`] sends.
    pub fn transport(&self) -> Transport {
        self.inner.transport.clone()
    }

    /// The server's address, with its scheme.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Calls `System.Ping`: the cheapest round trip to the server.
    pub async fn ping(&self) -> Result<(), Error> {
        self.unary(|channel| async move {
            SystemClient::new(channel)
                .ping(with_timeout(PingRequest {}))
                .await
        })
        .await?;
        Ok(())
    }

    /// Lists the primitives of `kind` (empty: every kind) whose names start
    /// with `prefix` (empty: all).
    pub async fn list(&self, kind: &str, prefix: &str) -> Result<Vec<PrimitiveSummary>, Error> {
        let request = ListRequest {
            kind: kind.to_string(),
            prefix: prefix.to_string(),
        };
        let response = self
            .unary(|channel| {
                let request = request.clone();
                async move { SystemClient::new(channel).list(with_timeout(request)).await }
            })
            .await?;
        Ok(response.primitives)
    }

    /// A handle on the lock `name`. Nothing is sent until it is used.
    pub fn lock(&self, name: impl Into<String>) -> Lock {
        Lock::new(self.clone(), name.into())
    }

    /// A handle on the semaphore `name` with `capacity` permits. The first
    /// acquire creates it with that capacity; later ones must name the same
    /// (0: whatever it has). Nothing is sent until it is used.
    pub fn semaphore(&self, name: impl Into<String>, capacity: u32) -> Semaphore {
        Semaphore::new(self.clone(), name.into(), capacity)
    }

    /// A handle on the read-write lock `name`. Nothing is sent until it is
    /// used.
    pub fn rwlock(&self, name: impl Into<String>) -> RwLock {
        RwLock::new(self.clone(), name.into())
    }

    /// A handle on the event `name`. Nothing is sent until it is used.
    pub fn event(&self, name: impl Into<String>) -> Event {
        Event::new(self.clone(), name.into())
    }

    /// A handle on the condition `name`, which waits with a [`LockGuard`].
    /// Nothing is sent until it is used.
    pub fn condition(&self, name: impl Into<String>) -> Condition {
        Condition::new(self.clone(), name.into())
    }

    /// A handle on the barrier `name` for `parties` parties. The first wait
    /// creates it with that number; later ones must name the same (0:
    /// whatever it has). Nothing is sent until it is used.
    pub fn barrier(&self, name: impl Into<String>, parties: u32) -> Barrier {
        Barrier::new(self.clone(), name.into(), parties)
    }

    /// A handle on the queue `name`. Its puts declare no capacity (the
    /// existing queue's, or unbounded for a new one) unless
    /// [`Queue::with_capacity`] says. Nothing is sent until it is used.
    pub fn queue(&self, name: impl Into<String>) -> Queue {
        Queue::new(self.clone(), name.into())
    }

    /// A handle on the resource pool `name` with `size` slots. The first
    /// checkout creates it with that size; later ones must name the same
    /// (0: whatever it has). Nothing is sent until it is used.
    pub fn pool(&self, name: impl Into<String>, size: u32) -> Pool {
        Pool::new(self.clone(), name.into(), size)
    }

    /// A handle on the token bucket `name`: `rate_per_s` tokens per second,
    /// `burst` at most. The first acquire creates it with those (full);
    /// later ones must name the same (0, 0: whatever it has). Nothing is
    /// sent until it is used.
    pub fn rate_limit(&self, name: impl Into<String>, rate_per_s: u32, burst: u32) -> RateLimit {
        RateLimit::new(self.clone(), name.into(), rate_per_s, burst)
    }

    /// Takes `tokens` from every bucket of `asks`, or from none when any one
    /// has too few (one `TryTakeMany` call; answers at once). At most 100
    /// buckets, each named once; one bad bucket refuses the whole request.
    pub async fn try_acquire_many(&self, asks: &[(&RateLimit, u32)]) -> Result<ManyTaken, Error> {
        ratelimit::try_acquire_many(self, asks).await
    }

    /// A handle on the circuit breaker `name`. It uses the existing
    /// breaker's settings; give them with [`CircuitBreaker::with_settings`]
    /// to create it. Nothing is sent until it is used.
    pub fn breaker(&self, name: impl Into<String>) -> CircuitBreaker {
        CircuitBreaker::new(self.clone(), name.into())
    }

    /// Closes the session, which releases everything it holds, and stops
    /// the keep-alive task (for every clone of this client).
    pub async fn close(self) -> Result<(), Error> {
        self.inner.session.mark_closed();
        self.inner.keep_alive.abort();
        let session_id = self.session_id();
        let closed = self
            .unary(|channel| async move {
                SessionsClient::new(channel)
                    .close(with_timeout(CloseSessionRequest {
                        session_id,
                        reason: String::new(),
                    }))
                    .await
            })
            .await;
        match closed {
            Ok(response) => {
                debug!(
                    "session {session_id} closed, {} holds released",
                    response.released
                );
                Ok(())
            }
            Err(Error::Status(status)) if status.code() == Code::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Runs a unary call, retrying while the server cannot be reached, for
    /// about [`RETRY_BUDGET`]. `call` gets the transport and makes one
    /// attempt.
    /// Only for calls that may safely be applied twice.
    pub(crate) async fn unary<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.unary_retrying(call, error::is_transient).await
    }

    /// Like [`Client::unary`], for a call that must not be applied twice
    /// (a notify, a barrier reset): retried only when the failed attempt
    /// surely did not reach the server.
    pub(crate) async fn unary_at_most_once<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.unary_retrying(call, error::surely_not_applied).await
    }

    /// Like [`Client::unary`], for a call that ends something the session
    /// has (an ack, a nack, a checkin), which the server refuses with
    /// `FAILED_PRECONDITION` once it is done. A retry may find that an
    /// earlier attempt whose answer was lost did it already: that refusal
    /// counts as done, `Ok(None)`, but only when an earlier attempt of this
    /// call may have reached the server without an answer (it broke
    /// mid-call or was not answered in time), and `done_already` agrees
    /// that the refusal may mean the call's work is done (a refusal that
    /// proves otherwise, say "in flight for another session", does not).
    /// Otherwise the refusal is the caller's error.
    pub(crate) async fn unary_settling<T, F, Fut>(
        &self,
        mut call: F,
        done_already: impl Fn(&Status) -> bool,
    ) -> Result<Option<T>, Error>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let attempts = Attempts::default();
        let answer = self
            .unary(|channel| {
                attempts.starting();
                let attempt = call(channel);
                let attempts = &attempts;
                async move {
                    let answer = attempt.await;
                    attempts.answered(answer.as_ref().err());
                    answer
                }
            })
            .await;
        match answer {
            Ok(answer) => Ok(Some(answer)),
            Err(Error::Status(status)) if attempts.maybe_applied() && done_already(&status) => {
                debug!("done by an earlier attempt whose answer was lost: {status}");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn unary_retrying<T, F, Fut>(
        &self,
        mut call: F,
        retry: fn(&Status) -> bool,
    ) -> Result<T, Error>
    where
        F: FnMut(Transport) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, call(self.transport())).await;
            let status = match attempt {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => no_answer(ATTEMPT_TIMEOUT),
            };
            let pause = backoff.next_pause();
            if !retry(&status) || started.elapsed() + pause > RETRY_BUDGET {
                return Err(self.error(status));
            }
            debug!(
                "call to {} failed: {status}; retrying in {pause:?}",
                self.addr()
            );
            sleep(pause).await;
        }
    }

    /// Translates a status into this client's error, naming its address.
    pub(crate) fn error(&self, status: Status) -> Error {
        Error::from_status(status, &self.inner.addr)
    }

    pub(crate) fn session(&self) -> &SessionShared {
        &self.inner.session
    }
}

/// The attempts of one [`Client::unary_settling`] call, as far as they tell
/// whether the call may have been applied already.
#[derive(Debug, Default)]
struct Attempts {
    /// The last attempt started and has no answer that rules out that the
    /// server applied it (it is running, broke mid-call, or was dropped at
    /// its time limit).
    unresolved: AtomicBool,
    /// An earlier attempt may have been applied without an answer.
    maybe_applied: AtomicBool,
}

impl Attempts {
    fn starting(&self) {
        if self.unresolved.swap(true, Ordering::Relaxed) {
            self.maybe_applied.store(true, Ordering::Relaxed);
        }
    }

    /// The attempt ended: `None` on success, or the status it failed with.
    fn answered(&self, failed: Option<&Status>) {
        let unresolved =
            failed.is_some_and(|s| error::is_transient(s) && !error::surely_not_applied(s));
        self.unresolved.store(unresolved, Ordering::Relaxed);
    }

    fn maybe_applied(&self) -> bool {
        self.maybe_applied.load(Ordering::Relaxed)
    }
}

/// A request with the per-attempt gRPC deadline set.
fn with_timeout<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ATTEMPT_TIMEOUT);
    request
}

/// The status for a server that did not answer in time: it counts as not
/// reachable.
fn no_answer(waited: Duration) -> Status {
    Status::unavailable(format!(
        "no answer within {}",
        crate::duration::format(waited)
    ))
}

/// Adds `http://` when the address has no scheme; refuses an empty one and
/// any scheme but `http` and `https`.
fn normalize_addr(addr: &str) -> Result<String, Error> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return Err(Error::InvalidAddress(
            "the server address is empty; write e.g. http://127.0.0.1:7420".to_string(),
        ));
    }
    match addr.split_once("://") {
        None => Ok(format!("http://{addr}")),
        Some(("http" | "https", _)) => Ok(addr.to_string()),
        Some((scheme, _)) => Err(Error::InvalidAddress(format!(
            "unsupported scheme {scheme:?} in server address {addr:?}; use http://HOST:PORT \
             (or https://HOST:PORT for TLS)"
        ))),
    }
}

/// A failed first contact whose cause is likely TLS, said so: a plaintext
/// client talking to a TLS server reads the TLS alert as a broken HTTP/2
/// frame, and a server that requires a client certificate drops a client
/// without one only after the handshake.
fn with_tls_hint(error: Error, addr: &str, options: &ClientOptions) -> Error {
    let Error::Unavailable(message) = error else {
        return error;
    };
    let tls = addr.starts_with("https://");
    let dropped = [
        "frame with invalid size",
        "broken pipe",
        "reset",
        "connection closed",
    ]
    .iter()
    .any(|sign| message.contains(sign));
    let hint = if !tls && dropped {
        " (is the server using TLS? then use an https:// address)"
    } else if tls
        && options.tls.client_certificate_pem.is_none()
        && (dropped || message.contains("CertificateRequired"))
    {
        " (does the server require a client certificate? mutual TLS needs one)"
    } else {
        ""
    };
    Error::Unavailable(format!("{message}{hint}"))
}

fn endpoint(addr: &str, options: &ClientOptions) -> Result<Endpoint, Error> {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| Error::InvalidAddress(format!("invalid server address {addr:?}: {e}")))?;
    let endpoint = endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !addr.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = options
        .tls
        .client_config()?
        .timeout(options.connect_timeout);
    endpoint.tls_config(tls).map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        Error::InvalidAddress(format!("the TLS settings cannot be used: {reason}"))
    })
}

/// `<exe-name>@<hostname>:<pid>`.
fn default_client_name() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "client".to_string());
    format!("{exe}@{}:{}", hostname(), std::process::id())
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for `buffer.len()` bytes; gethostname
    // writes at most that many and we stop at the first NUL.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if result != 0 || end == 0 {
        return "localhost".to_string();
    }
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            normalize_addr("127.0.0.1:7420").unwrap(),
            "http://127.0.0.1:7420"
        );
        assert_eq!(
            normalize_addr(" http://localhost:1/ ").unwrap(),
            "http://localhost:1"
        );
        assert!(matches!(
            normalize_addr("  "),
            Err(Error::InvalidAddress(_))
        ));
    }

    #[test]
    fn only_http_and_https_are_accepted() {
        assert_eq!(normalize_addr("https://h:2/").unwrap(), "https://h:2");
        let other = normalize_addr("ftp://h:2").unwrap_err().to_string();
        assert!(other.contains("unsupported scheme \"ftp\""), "{other}");
    }

    #[test]
    fn https_gets_tls_settings_checked() {
        let options = ClientOptions::default();
        assert!(endpoint("https://127.0.0.1:7420", &options).is_ok());
        let options = ClientOptions {
            tls: TlsOptions {
                ca_certificate_pem: Some(b"junk".to_vec()),
                ..TlsOptions::default()
            },
            ..ClientOptions::default()
        };
        assert!(matches!(
            endpoint("https://127.0.0.1:7420", &options),
            Err(Error::InvalidAddress(_))
        ));
        // Not looked at for plain HTTP.
        assert!(endpoint("http://127.0.0.1:7420", &options).is_ok());
    }

    #[test]
    fn only_an_unanswered_earlier_attempt_may_have_settled_a_call() {
        let reset = || {
            let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            Status::from_error(Box::new(io))
        };
        let refused = || {
            let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            Status::from_error(Box::new(io))
        };
        let refusal = Status::failed_precondition("not in flight");

        // The first attempt's own refusal is the caller's.
        let first = Attempts::default();
        first.starting();
        first.answered(Some(&refusal));
        assert!(!first.maybe_applied());

        // A connection that broke mid-call may have delivered it.
        let broken = Attempts::default();
        broken.starting();
        broken.answered(Some(&reset()));
        broken.starting();
        broken.answered(Some(&refusal));
        assert!(broken.maybe_applied());

        // One that could not be made did not.
        let never_sent = Attempts::default();
        never_sent.starting();
        never_sent.answered(Some(&refused()));
        never_sent.starting();
        never_sent.answered(Some(&refusal));
        assert!(!never_sent.maybe_applied());

        // An attempt dropped at its time limit has no answer either.
        let timed_out = Attempts::default();
        timed_out.starting();
        timed_out.starting();
        assert!(timed_out.maybe_applied());
    }

    #[test]
    fn invalid_addresses_are_refused() {
        let options = ClientOptions::default();
        assert!(endpoint("http://bad host:1", &options).is_err());
        assert!(endpoint("http://127.0.0.1:7420", &options).is_ok());
    }

    #[test]
    fn default_client_name_names_exe_host_and_pid() {
        let name = ClientOptions::default().client_name;
        let pid = format!(":{}", std::process::id());
        assert!(name.ends_with(&pid), "{name}");
        assert!(name.contains('@'), "{name}");
    }

    #[tokio::test]
    async fn a_token_that_cannot_be_sent_fails_before_connecting() {
        // Nothing listens there: the token is refused before any attempt.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        for token in ["", "two words", "tab\t", "ünïcode"] {
            let options = ClientOptions {
                token: Some(token.to_string()),
                ..ClientOptions::default()
            };
            let error = Client::connect_with(addr.to_string(), options)
                .await
                .unwrap_err();
            assert!(matches!(error, Error::InvalidAddress(_)), "{error:?}");
            let message = error.to_string();
            assert!(
                message.starts_with("the token cannot be used: "),
                "{message}"
            );
        }
    }

    #[test]
    fn options_do_not_show_the_token() {
        let options = ClientOptions {
            token: Some("hunter2hunter2".into()),
            ..ClientOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("token: Some(<secret>)"), "{shown}");
        let shown = format!("{:?}", ClientOptions::default());
        assert!(shown.contains("token: None"), "{shown}");
    }

    #[tokio::test]
    async fn connect_to_nothing_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = Client::connect(addr.to_string()).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::Unavailable(_)), "{message}");
        assert!(
            message.starts_with(&format!("cannot reach syncd at http://{addr}")),
            "{message}"
        );
    }
}
