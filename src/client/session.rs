//! The client's session: its current id, shared by every clone of a
//! [`super::Client`], whether (and why) it was lost, and the one background
//! task that keeps it alive.
//!
//! The task holds one `KeepAlive` stream open and sends a request every
//! third of the TTL. When the stream breaks (the server restarts or cannot be
//! reached) it reopens it with the same session id after a backoff: sessions
//! survive server restarts. The session is lost, and so is everything it
//! holds, when
//! - the server answers `NOT_FOUND`: the session is gone (it expired while
//!   the client was cut off); or
//! - no keep-alive has been confirmed for a full TTL: the client cannot tell
//!   a dead server from an expired lease, so it must assume the worst.
//!
//! Either way the task publishes the loss (see [`SessionShared::lost`]),
//! creates a fresh session and publishes its id; a session given up for lack
//! of renewals is closed too if the server still knows it.

use std::{collections::VecDeque, fmt, sync::Arc, time::Duration};

use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        watch, Notify,
    },
    task::AbortHandle,
    time::{interval_at, sleep, sleep_until, timeout, timeout_at, Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Status, Streaming};
use tracing::{debug, info, warn};

use super::{
    retry::{Backoff, ATTEMPT_TIMEOUT},
    with_timeout,
};
use crate::proto::v1::{
    sessions_client::SessionsClient, CloseSessionRequest, CreateSessionRequest, KeepAliveRequest,
    KeepAliveResponse,
};

/// The shortest keep-alive period, whatever the TTL.
const PERIOD_MIN: Duration = Duration::from_millis(100);
/// The longest keep-alive period, whatever the TTL.
const PERIOD_MAX: Duration = Duration::from_secs(3600);
/// How many keep-alive requests may wait to be sent; past that the server is
/// not reading, and the lease deadline decides.
const IN_FLIGHT_MAX: usize = 4;

/// Why a session, and every hold it had, is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The server no longer knows the session: it expired while the client
    /// could not renew it.
    Expired,
    /// No keep-alive was confirmed for this long, a full TTL: the server may
    /// have released everything, and the client must assume it did.
    Unrenewed(Duration),
    /// The client was closed, which closes the session.
    Closed,
}

/// A lost session: which one, and why. It reads like `session 101 expired`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLoss {
    /// The session that was lost.
    pub session_id: u64,
    /// Why it was lost.
    pub reason: LossReason,
}

impl fmt::Display for SessionLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.session_id;
        match self.reason {
            LossReason::Expired => write!(f, "session {id} expired"),
            LossReason::Unrenewed(ttl) => write!(
                f,
                "session {id} could not be renewed for {} (its TTL), so it must be taken as expired",
                crate::duration::format(ttl)
            ),
            LossReason::Closed => write!(f, "session {id} was closed"),
        }
    }
}

/// What every clone of a client and the keep-alive task know about the
/// session.
#[derive(Debug)]
struct State {
    /// The current session id; replaced when the session is lost.
    id: u64,
    /// The latest session this client lost, and why.
    loss: Option<SessionLoss>,
    /// Set by `Client::close`: the session is over for good.
    closed: bool,
}

impl State {
    /// Why `session_id` is lost, or `None` while it is not. A session that is
    /// no longer the current one is lost.
    fn loss_of(&self, session_id: u64) -> Option<SessionLoss> {
        match &self.loss {
            Some(loss) if loss.session_id == session_id => Some(loss.clone()),
            _ if self.id != session_id => Some(SessionLoss {
                session_id,
                reason: LossReason::Expired,
            }),
            _ => None,
        }
    }

    /// Records that the current session is lost, unless it already is.
    fn lose_current(&mut self, reason: LossReason) -> bool {
        if self.loss_of(self.id).is_some() {
            return false;
        }
        self.loss = Some(SessionLoss {
            session_id: self.id,
            reason,
        });
        true
    }
}

/// The session state every clone of a client shares with the keep-alive
/// task.
#[derive(Debug)]
pub(crate) struct SessionShared {
    state: watch::Sender<State>,
    /// Asks the keep-alive task to renew now (and so find out at once
    /// whether the session still exists).
    probe: Notify,
}

impl SessionShared {
    pub(crate) fn new(session_id: u64) -> SessionShared {
        let state = State {
            id: session_id,
            loss: None,
            closed: false,
        };
        SessionShared {
            state: watch::Sender::new(state),
            probe: Notify::new(),
        }
    }

    /// The current session id.
    pub(crate) fn id(&self) -> u64 {
        self.state.borrow().id
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Marks the client closed: its session, and every hold in it, is over.
    pub(crate) fn mark_closed(&self) {
        self.state.send_modify(|state| {
            state.closed = true;
            state.lose_current(LossReason::Closed);
        });
    }

    /// Why `session_id` is lost, or `None` while the client holds it.
    pub(crate) fn loss_of(&self, session_id: u64) -> Option<SessionLoss> {
        self.state.borrow().loss_of(session_id)
    }

    /// Waits until `session_id` is lost; returns why.
    pub(crate) async fn lost(&self, session_id: u64) -> SessionLoss {
        let mut states = self.state.subscribe();
        let mut found = None;
        // An error means the sender is gone, which only happens when the
        // client itself is: the session is over then too.
        let _ = states
            .wait_for(|state| {
                found = state.loss_of(session_id);
                found.is_some()
            })
            .await;
        found.unwrap_or(SessionLoss {
            session_id,
            reason: LossReason::Closed,
        })
    }

    /// Waits, at most `limit`, until the session id is no longer `old`.
    /// Returns true when it changed. Asks the keep-alive task to check the
    /// session at once, so a lost session is noticed quickly.
    pub(crate) async fn wait_for_replacement(&self, old: u64, limit: Duration) -> bool {
        let mut states = self.state.subscribe();
        self.probe.notify_one();
        let changed = timeout(limit, states.wait_for(|state| state.id != old)).await;
        matches!(changed, Ok(Ok(_)))
    }

    /// True while someone waits for a change (a loss, a replacement).
    fn is_watched(&self) -> bool {
        self.state.receiver_count() > 0
    }

    /// Records that `session_id`, the current session, is lost.
    fn mark_lost(&self, session_id: u64, reason: LossReason) {
        self.state
            .send_if_modified(|state| state.id == session_id && state.lose_current(reason));
    }

    /// Publishes the session that replaces a lost one.
    fn replace(&self, session_id: u64) {
        self.state.send_modify(|state| {
            state.lose_current(LossReason::Expired);
            state.id = session_id;
        });
    }
}

/// The client's view of the lease: when the newest renewal the server
/// confirmed was asked for. The server cannot expire the session before that
/// moment plus the TTL, but may at any time after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    renewed_at: Instant,
    ttl: Duration,
}

impl Lease {
    /// A lease whose session was created (or last renewed) by a request sent
    /// at `asked`.
    pub(crate) fn new(asked: Instant, ttl: Duration) -> Lease {
        Lease {
            renewed_at: asked,
            ttl,
        }
    }

    /// The server confirmed a renewal asked for at `asked`.
    fn renewed(&mut self, asked: Instant) {
        self.renewed_at = self.renewed_at.max(asked);
    }

    /// When the lease may have run out, as far as the client can know;
    /// `None` if that is too far away to be represented.
    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl)
    }

    /// Sleeps until [`Lease::deadline`] (forever if there is none).
    async fn run_out(&self) {
        match self.deadline() {
            Some(deadline) => sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

/// Why one keep-alive stream ended.
enum StreamEnd {
    /// The server does not know the session any more.
    SessionGone,
    /// No renewal was confirmed for a full TTL.
    Unrenewed,
    /// The stream broke; the session may well be fine.
    Broken(Status),
}

/// The background task that keeps one client's session alive.
pub(crate) struct KeepAlive {
    pub(crate) channel: Channel,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) addr: String,
    pub(crate) ttl: Duration,
    pub(crate) client_name: String,
    /// The lease of the session `connect` created.
    pub(crate) lease: Lease,
}

impl KeepAlive {
    /// Starts the task; abort the handle to stop it.
    pub(crate) fn spawn(self) -> AbortHandle {
        tokio::spawn(self.run()).abort_handle()
    }

    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut outage = Outage::default();
        loop {
            let session_id = self.shared.id();
            match self
                .stream_once(session_id, &mut backoff, &mut outage)
                .await
            {
                StreamEnd::SessionGone => {
                    self.log_loss(&format!(
                        "session {session_id} at {} is gone (it expired while this client could \
                         not renew it); everything it held is released",
                        self.addr
                    ));
                    self.shared.mark_lost(session_id, LossReason::Expired);
                    self.replace_session(&mut backoff).await;
                    outage = Outage::default();
                }
                StreamEnd::Unrenewed => {
                    self.log_loss(&format!(
                        "session {session_id} at {} could not be renewed for its TTL of {}: \
                         taking it as expired, with everything it held",
                        self.addr,
                        crate::duration::format(self.ttl)
                    ));
                    self.shared
                        .mark_lost(session_id, LossReason::Unrenewed(self.ttl));
                    self.replace_session(&mut backoff).await;
                    self.close_abandoned(session_id).await;
                    outage = Outage::default();
                }
                StreamEnd::Broken(status) => {
                    outage.report(&self, &status);
                    self.pause_within_lease(backoff.next_pause()).await;
                }
            }
        }
    }

    /// Logs the loss of the session: a warning, unless someone waits for it
    /// (a guard's `lost`, `Client::session_lost`) and so reports it.
    fn log_loss(&self, message: &str) {
        if self.shared.is_watched() {
            info!("{message}");
        } else {
            warn!("{message}");
        }
    }

    /// Renews the session over one stream until it ends.
    async fn stream_once(
        &mut self,
        session_id: u64,
        backoff: &mut Backoff,
        outage: &mut Outage,
    ) -> StreamEnd {
        let (requests, receiver) = mpsc::channel(IN_FLIGHT_MAX);
        let mut in_flight = VecDeque::new();
        if requests.try_send(KeepAliveRequest { session_id }).is_err() {
            return StreamEnd::Broken(Status::internal("keep-alive queue is full"));
        }
        in_flight.push_back(Instant::now());
        let mut client = SessionsClient::new(self.channel.clone());
        let opened = client.keep_alive(ReceiverStream::new(receiver));
        let opened = match self.lease.deadline() {
            Some(deadline) => timeout_at(deadline, opened).await,
            None => Ok(opened.await),
        };
        let replies = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return classify(status),
            Err(_) => return StreamEnd::Unrenewed,
        };
        let stream = Stream {
            session_id,
            requests,
            in_flight,
        };
        self.pump(stream, replies, backoff, outage).await
    }

    /// Sends a request every period (or when probed) and reads replies,
    /// until the stream ends or the lease runs out unrenewed.
    async fn pump(
        &mut self,
        mut stream: Stream,
        mut replies: Streaming<KeepAliveResponse>,
        backoff: &mut Backoff,
        outage: &mut Outage,
    ) -> StreamEnd {
        let period = (self.ttl / 3).clamp(PERIOD_MIN, PERIOD_MAX);
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let lease = self.lease;
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shared.probe.notified() => {}
                _ = lease.run_out() => return StreamEnd::Unrenewed,
                reply = replies.message() => match reply {
                    Ok(Some(_)) => {
                        if let Some(asked) = stream.in_flight.pop_front() {
                            self.lease.renewed(asked);
                        }
                        backoff.reset();
                        outage.end(self, stream.session_id);
                        continue;
                    }
                    Ok(None) => {
                        return StreamEnd::Broken(Status::unavailable("keep-alive stream ended"))
                    }
                    Err(status) => return classify(status),
                },
            }
            if let Err(end) = stream.send() {
                return end;
            }
        }
    }

    /// Creates a fresh session after the old one was lost, retrying until
    /// the server answers, and publishes it.
    async fn replace_session(&mut self, backoff: &mut Backoff) {
        loop {
            let asked = Instant::now();
            match self.create_session().await {
                Ok(new) => {
                    info!("continuing with new session {new} at {}", self.addr);
                    self.lease = Lease::new(asked, self.ttl);
                    self.shared.replace(new);
                    backoff.reset();
                    return;
                }
                Err(status) => {
                    debug!("creating a session at {} failed: {status}", self.addr);
                    self.pause(backoff.next_pause()).await;
                }
            }
        }
    }

    /// Closes a session given up for lack of renewals, in case the server
    /// still knows it: what it holds is released now rather than when its
    /// lease runs out. One attempt; failing is harmless.
    async fn close_abandoned(&self, session_id: u64) {
        let request = with_timeout(CloseSessionRequest { session_id });
        let closed = timeout(
            ATTEMPT_TIMEOUT,
            SessionsClient::new(self.channel.clone()).close(request),
        )
        .await;
        match closed {
            Ok(Ok(response)) => info!(
                "closed abandoned session {session_id}, {} holds released",
                response.into_inner().released
            ),
            Ok(Err(status)) => debug!("closing abandoned session {session_id}: {status}"),
            Err(_) => debug!("closing abandoned session {session_id}: no answer"),
        }
    }

    async fn create_session(&self) -> Result<u64, Status> {
        create_session(&self.channel, self.ttl, &self.client_name).await
    }

    /// Sleeps for `pause`, or less when someone asks for a renewal now.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = sleep(pause) => {}
            _ = self.shared.probe.notified() => {}
        }
    }

    /// Like [`KeepAlive::pause`], but wakes up when the lease runs out too.
    async fn pause_within_lease(&self, pause: Duration) {
        tokio::select! {
            _ = self.pause(pause) => {}
            _ = self.lease.run_out() => {}
        }
    }
}

/// The sending side of one keep-alive stream.
struct Stream {
    session_id: u64,
    requests: mpsc::Sender<KeepAliveRequest>,
    /// When each request not answered yet was sent, oldest first: the
    /// server answers each in order.
    in_flight: VecDeque<Instant>,
}

impl Stream {
    /// Queues one renewal. A full queue means the server is not reading: the
    /// request is skipped and the lease deadline decides.
    fn send(&mut self) -> Result<(), StreamEnd> {
        let request = KeepAliveRequest {
            session_id: self.session_id,
        };
        match self.requests.try_send(request) {
            Ok(()) => {
                self.in_flight.push_back(Instant::now());
                Ok(())
            }
            Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(StreamEnd::Broken(Status::unavailable(
                "keep-alive stream closed",
            ))),
        }
    }
}

/// Opens a session with `Sessions.Create`; returns its id.
pub(crate) async fn create_session(
    channel: &Channel,
    ttl: Duration,
    client_name: &str,
) -> Result<u64, Status> {
    let request = CreateSessionRequest {
        ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
        client_name: client_name.to_string(),
    };
    let response = SessionsClient::new(channel.clone())
        .create(with_timeout(request))
        .await?;
    Ok(response.into_inner().session_id)
}

fn classify(status: Status) -> StreamEnd {
    if status.code() == Code::NotFound {
        StreamEnd::SessionGone
    } else {
        StreamEnd::Broken(status)
    }
}

/// Tracks one period in which the session cannot be renewed, so that it is
/// logged once when it starts, loudly when the lease is in danger, and once
/// when it ends.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    warned: bool,
}

impl Outage {
    fn report(&mut self, keep_alive: &KeepAlive, status: &Status) {
        let since = *self.since.get_or_insert_with(Instant::now);
        let session_id = keep_alive.shared.id();
        let addr = &keep_alive.addr;
        if !self.warned && since.elapsed() >= keep_alive.ttl / 2 {
            self.warned = true;
            warn!(
                "cannot renew session {session_id} at {addr} for {:?} (its TTL is {:?}): {}; retrying",
                since.elapsed(),
                keep_alive.ttl,
                super::Error::from_status(status.clone(), addr)
            );
        } else {
            info!(
                "keep-alive stream of session {session_id} broke: {}; retrying",
                super::Error::from_status(status.clone(), addr)
            );
        }
    }

    fn end(&mut self, keep_alive: &KeepAlive, session_id: u64) {
        if let Some(since) = self.since.take() {
            info!(
                "session {session_id} at {} renewed again after {:?}",
                keep_alive.addr,
                since.elapsed()
            );
        }
        self.warned = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_session_is_lost() {
        let shared = SessionShared::new(7);
        assert_eq!(shared.loss_of(7), None);
        shared.replace(8);
        assert_eq!(shared.id(), 8);
        assert_eq!(
            shared.loss_of(7),
            Some(SessionLoss {
                session_id: 7,
                reason: LossReason::Expired
            })
        );
        assert_eq!(shared.loss_of(8), None);
    }

    #[test]
    fn the_first_reason_is_kept() {
        let shared = SessionShared::new(7);
        let ttl = Duration::from_secs(2);
        shared.mark_lost(7, LossReason::Unrenewed(ttl));
        shared.mark_lost(7, LossReason::Expired);
        shared.replace(8);
        assert_eq!(
            shared.loss_of(7).map(|loss| loss.reason),
            Some(LossReason::Unrenewed(ttl))
        );
        // Marking a session that is no longer current changes nothing.
        shared.mark_lost(7, LossReason::Closed);
        assert_eq!(shared.loss_of(8), None);
    }

    #[tokio::test]
    async fn lost_resolves_when_the_session_is_lost() {
        let shared = Arc::new(SessionShared::new(3));
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.lost(3).await }
        });
        shared.mark_closed();
        let loss = waiter.await.unwrap();
        assert_eq!(loss.reason, LossReason::Closed);
        assert!(shared.is_closed());
        assert_eq!(loss.to_string(), "session 3 was closed");
    }

    #[test]
    fn losses_read_as_one_line() {
        let loss = |reason| SessionLoss {
            session_id: 101,
            reason,
        };
        assert_eq!(loss(LossReason::Expired).to_string(), "session 101 expired");
        assert_eq!(
            loss(LossReason::Unrenewed(Duration::from_secs(10))).to_string(),
            "session 101 could not be renewed for 10s (its TTL), so it must be taken as expired"
        );
    }

    #[test]
    fn the_lease_runs_from_the_newest_confirmed_request() {
        let start = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut lease = Lease::new(start, ttl);
        assert_eq!(lease.deadline(), Some(start + ttl));
        lease.renewed(start + Duration::from_secs(1));
        // An older confirmation never moves the deadline back.
        lease.renewed(start);
        assert_eq!(lease.deadline(), Some(start + Duration::from_secs(4)));
        assert_eq!(Lease::new(start, Duration::MAX).deadline(), None);
    }
}
