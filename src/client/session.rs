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
//!   a dead server from an expired lease, so it must assume the worst; or
//! - the server refuses the keep-alive for the client's token
//!   (`UNAUTHENTICATED`: the token was removed from the server's file;
//!   `PERMISSION_DENIED`): trying again would only be refused again, and
//!   the session cannot be renewed, so it is taken as lost at once, with
//!   the server's reason ([`LossReason::Refused`]).
//!
//! Either way the task publishes the loss (see [`SessionShared::lost`]),
//! creates a fresh session and publishes its id; a session given up for lack
//! of renewals is closed too if the server still knows it.
//!
//! Half-way there — no keep-alive confirmed for more than half the TTL — the
//! lease is *in danger*: the task publishes that too (see
//! [`SessionShared::in_danger`]), and takes it back as soon as a renewal is
//! confirmed again.

use std::{collections::VecDeque, fmt, future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{
        mpsc::{self, error::TrySendError},
        watch, Notify,
    },
    task::AbortHandle,
    time::{interval_at, sleep, sleep_until, timeout, Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use tracing::{debug, info, warn};

use super::{
    loss::{HoldLoss, LostHold, TakenHolds},
    retry::{Backoff, ATTEMPT_TIMEOUT},
    with_timeout, Transport,
};
use crate::proto::v1::{
    self as pb, sessions_client::SessionsClient, CloseSessionRequest, CreateSessionRequest,
    KeepAliveRequest, KeepAliveResponse,
};
use crate::proto::SESSION_CLOSED_KEY;

/// The shortest keep-alive period, whatever the TTL.
const PERIOD_MIN: Duration = Duration::from_millis(100);
/// The longest keep-alive period, whatever the TTL.
const PERIOD_MAX: Duration = Duration::from_secs(3600);
/// How many keep-alive requests may wait to be sent; past that the server is
/// not reading, and the lease deadline decides.
const IN_FLIGHT_MAX: usize = 4;
/// How often a client whose token the server refuses tries again to open a
/// session (sooner when a call asks for one): the server answers the same
/// until its token file changes.
const REFUSED_RETRY_EVERY: Duration = Duration::from_secs(5);

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
    /// The session was closed on the server by someone else than this
    /// client (an operator, `syncctl revoke --session`); holds the reason
    /// they gave, maybe empty.
    ClosedOnServer(String),
    /// The server refused to renew the session for this client's token
    /// (`UNAUTHENTICATED` or `PERMISSION_DENIED`), e.g. because the token
    /// was removed from its `--auth-tokens` file: the session cannot be
    /// kept alive, so everything it held must be taken as lost. Holds the
    /// server's reason, as the error reads (`not authenticated: ...`).
    Refused(String),
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
        match &self.reason {
            LossReason::Expired => write!(f, "session {id} expired"),
            LossReason::Unrenewed(ttl) => write!(
                f,
                "session {id} could not be renewed for {} (its TTL), so it must be taken as expired",
                crate::duration::format(*ttl)
            ),
            LossReason::Closed => write!(f, "session {id} was closed"),
            LossReason::ClosedOnServer(reason) if reason.is_empty() => {
                write!(f, "session {id} was closed on the server")
            }
            LossReason::ClosedOnServer(reason) => {
                write!(f, "session {id} was closed on the server: {reason}")
            }
            LossReason::Refused(reason) => write!(
                f,
                "session {id} could not be renewed, the server refused its keep-alive: {reason}"
            ),
        }
    }
}

/// A lease in danger: no keep-alive of the session was confirmed for more
/// than half its TTL (the server is unreachable, paused, or the network is
/// broken). At a full TTL the session is taken as lost. It reads like
/// `session 12: no keep-alive confirmed for 5s of its 10s TTL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseDanger {
    /// The session whose lease is in danger.
    pub session_id: u64,
    /// How long no keep-alive had been confirmed when the danger was noticed
    /// (a little more than half the TTL).
    pub unconfirmed_for: Duration,
    /// The session's TTL.
    pub ttl: Duration,
}

impl fmt::Display for LeaseDanger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole milliseconds: nobody wants to read nanoseconds here.
        let millis =
            |d: Duration| Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX));
        write!(
            f,
            "session {}: no keep-alive confirmed for {} of its {} TTL",
            self.session_id,
            crate::duration::format(millis(self.unconfirmed_for)),
            crate::duration::format(self.ttl)
        )
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
    /// Set while the current session's lease is in danger.
    danger: Option<LeaseDanger>,
    /// Holds the server took from the current session, which lives on.
    taken: TakenHolds,
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

    /// Why hold `fencing_token` of `session_id` is lost, or `None` while it
    /// is not (as far as the client knows). A notice for the hold itself
    /// says more than the loss of its session, so it comes first.
    fn hold_loss(&self, session_id: u64, fencing_token: u64) -> Option<HoldLoss> {
        if self.id == session_id {
            if let Some(taken) = self.taken.get(fencing_token) {
                return Some(HoldLoss::Taken(taken.clone()));
            }
        }
        self.loss_of(session_id).map(HoldLoss::Session)
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
            danger: None,
            taken: TakenHolds::default(),
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

    /// Waits until hold `fencing_token` of `session_id` is lost, alone or
    /// with its session; returns why.
    pub(crate) async fn hold_lost(&self, session_id: u64, fencing_token: u64) -> HoldLoss {
        let mut states = self.state.subscribe();
        let mut found = None;
        let _ = states
            .wait_for(|state| {
                found = state.hold_loss(session_id, fencing_token);
                found.is_some()
            })
            .await;
        found.unwrap_or(HoldLoss::Session(SessionLoss {
            session_id,
            reason: LossReason::Closed,
        }))
    }

    /// The holds the server took from the current session, oldest first
    /// (the latest 1,000).
    pub(crate) fn taken_holds(&self) -> Vec<LostHold> {
        self.state.borrow().taken.all().cloned().collect()
    }

    /// The highest lost-hold notice of `session_id` seen, for the server to
    /// forget; 0 if it is not the current session.
    fn notices_seen_through(&self, session_id: u64) -> u64 {
        let state = self.state.borrow();
        if state.id == session_id {
            state.taken.seen_through()
        } else {
            0
        }
    }

    /// Takes in a keep-alive reply's notices of holds taken from
    /// `session_id`; returns the new ones.
    fn note_taken(&self, session_id: u64, notices: Vec<pb::LostHold>) -> Vec<LostHold> {
        if notices.is_empty() {
            return Vec::new();
        }
        let mut new = Vec::new();
        self.state.send_if_modified(|state| {
            if state.id == session_id {
                new = state.taken.note(notices);
            }
            !new.is_empty()
        });
        new
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
            state.danger = None;
            state.taken = TakenHolds::default();
        });
    }

    /// Whether the lease of `session_id` (`None`: the current session) is in
    /// danger now.
    pub(crate) fn danger_of(&self, session_id: Option<u64>) -> Option<LeaseDanger> {
        let state = self.state.borrow();
        let session_id = session_id.unwrap_or(state.id);
        state
            .danger
            .clone()
            .filter(|danger| danger.session_id == session_id)
    }

    /// Waits until the lease of `session_id` (`None`: whichever session is
    /// current then) is in danger; returns at once if it is. Never returns
    /// for a session that is lost without its lease having been in danger;
    /// once the client is closed, no new danger is noted.
    pub(crate) async fn in_danger(&self, session_id: Option<u64>) -> LeaseDanger {
        let mut states = self.state.subscribe();
        let mut found = None;
        let waited = states
            .wait_for(|state| {
                let session_id = session_id.unwrap_or(state.id);
                found = state
                    .danger
                    .clone()
                    .filter(|danger| danger.session_id == session_id);
                found.is_some()
            })
            .await
            .is_ok();
        match found {
            Some(danger) if waited => danger,
            // The sender is gone only with the client: no danger any more.
            _ => std::future::pending().await,
        }
    }

    /// Waits until the current session's lease is not in danger; returns at
    /// once if it is not.
    pub(crate) async fn out_of_danger(&self) {
        let mut states = self.state.subscribe();
        let _ = states
            .wait_for(
                |state| !matches!(&state.danger, Some(danger) if danger.session_id == state.id),
            )
            .await;
    }

    /// Records that the lease of `session_id`, the current session, is in
    /// danger. Returns false if that was known already (or the session is
    /// not the current one).
    fn mark_in_danger(&self, danger: LeaseDanger) -> bool {
        self.state.send_if_modified(|state| {
            if state.id != danger.session_id || state.danger.is_some() {
                return false;
            }
            state.danger = Some(danger);
            true
        })
    }

    /// Records that the lease of `session_id` is no longer in danger.
    fn mark_safe(&self, session_id: u64) {
        self.state.send_if_modified(|state| {
            let in_danger =
                matches!(&state.danger, Some(danger) if danger.session_id == session_id);
            if in_danger {
                state.danger = None;
            }
            in_danger
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

    /// When the lease is in danger: half its TTL after the newest confirmed
    /// renewal. `None` if that is too far away to be represented.
    fn half_way(&self) -> Option<Instant> {
        self.renewed_at.checked_add(self.ttl / 2)
    }

    /// Whether the lease is in danger at `now`.
    fn in_danger_at(&self, now: Instant) -> bool {
        self.half_way().is_some_and(|half_way| now > half_way)
    }

    /// Sleeps until the lease is in danger (forever if that is too far
    /// away): just past [`Lease::half_way`].
    async fn half_gone(&self) {
        match self.half_way() {
            Some(half_way) => sleep_until(half_way + Duration::from_millis(1)).await,
            None => std::future::pending().await,
        }
    }

    /// How long no renewal has been confirmed, at `now`.
    fn unconfirmed_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.renewed_at)
    }
}

/// Why one keep-alive stream ended.
enum StreamEnd {
    /// The server does not know the session any more; `closed`: it says the
    /// session was closed (by an operator), with this reason.
    SessionGone { closed: Option<String> },
    /// No renewal was confirmed for a full TTL.
    Unrenewed,
    /// The server refused the keep-alive for the client's token.
    Refused(Status),
    /// The stream broke; the session may well be fine.
    Broken(Status),
}

/// The background task that keeps one client's session alive.
pub(crate) struct KeepAlive {
    pub(crate) transport: Transport,
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
                StreamEnd::SessionGone { closed } => {
                    let reason = closed.map_or(LossReason::Expired, LossReason::ClosedOnServer);
                    let loss = SessionLoss {
                        session_id,
                        reason: reason.clone(),
                    };
                    self.log_news(&format!(
                        "{loss} (at {}); everything it held is released",
                        self.addr
                    ));
                    self.shared.mark_lost(session_id, reason);
                    self.replace_session(&mut backoff).await;
                    outage = Outage::default();
                }
                StreamEnd::Unrenewed => {
                    self.log_news(&format!(
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
                StreamEnd::Refused(status) => {
                    let reason = super::Error::from_status(status, &self.addr).to_string();
                    self.log_news(&format!(
                        "session {session_id} at {} cannot be renewed: the server refused its \
                         keep-alive: {reason}; taking it as lost, with everything it held",
                        self.addr
                    ));
                    self.shared
                        .mark_lost(session_id, LossReason::Refused(reason));
                    self.replace_session(&mut backoff).await;
                    outage = Outage::default();
                }
                StreamEnd::Broken(status) => {
                    outage.report(&self, &status);
                    self.pause_within_lease(backoff.next_pause()).await;
                }
            }
        }
    }

    /// Logs the loss of the session, or danger to its lease: a warning,
    /// unless someone waits for news of the session (a guard's `lost` or
    /// `in_danger`, `Client::session_lost`, ...) and so reports it.
    fn log_news(&self, message: &str) {
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
        let first = KeepAliveRequest {
            session_id,
            notices_seen_through: self.shared.notices_seen_through(session_id),
        };
        if requests.try_send(first).is_err() {
            return StreamEnd::Broken(Status::internal("keep-alive queue is full"));
        }
        in_flight.push_back(Instant::now());
        let mut client = SessionsClient::new(self.transport.clone());
        let opened = client.keep_alive(ReceiverStream::new(receiver));
        let replies = match self.within_lease(session_id, opened).await {
            Some(Ok(response)) => response.into_inner(),
            Some(Err(status)) => return classify(status),
            None => return StreamEnd::Unrenewed,
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
        let session_id = stream.session_id;
        let mut in_danger = self.shared.danger_of(Some(session_id)).is_some();
        loop {
            let lease = self.lease;
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shared.probe.notified() => {}
                _ = lease.run_out() => return StreamEnd::Unrenewed,
                _ = lease.half_gone(), if !in_danger => {
                    self.note_danger(session_id);
                    in_danger = true;
                    continue;
                }
                reply = replies.message() => match reply {
                    Ok(Some(reply)) if reply.pushed => {
                        // New notices, not a renewal: no request is answered.
                        self.note_taken(session_id, reply.lost_holds);
                        continue;
                    }
                    Ok(Some(reply)) => {
                        self.note_taken(session_id, reply.lost_holds);
                        if let Some(asked) = stream.in_flight.pop_front() {
                            self.lease.renewed(asked);
                        }
                        if in_danger && self.note_confirmed(session_id) {
                            in_danger = false;
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
            let seen_through = self.shared.notices_seen_through(session_id);
            if let Err(end) = stream.send(seen_through) {
                return end;
            }
        }
    }

    /// Creates a fresh session after the old one was lost, retrying until
    /// the server answers, and publishes it. While the server refuses the
    /// token it tries every [`REFUSED_RETRY_EVERY`] (or when probed), with
    /// one warning: the token may be restored on the server.
    async fn replace_session(&mut self, backoff: &mut Backoff) {
        let mut warned = false;
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
                Err(status) if super::error::is_refused(&status) => {
                    let error = super::Error::from_status(status, &self.addr);
                    if warned {
                        debug!("creating a session at {} failed: {error}", self.addr);
                    } else {
                        warned = true;
                        warn!(
                            "cannot open a new session at {}: {error}; trying again every {}",
                            self.addr,
                            crate::duration::format(REFUSED_RETRY_EVERY)
                        );
                    }
                    self.pause(REFUSED_RETRY_EVERY).await;
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
        let request = with_timeout(CloseSessionRequest {
            session_id,
            reason: String::new(),
        });
        let closed = timeout(
            ATTEMPT_TIMEOUT,
            SessionsClient::new(self.transport.clone()).close(request),
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
        create_session(&self.transport, self.ttl, &self.client_name).await
    }

    /// Sleeps for `pause`, or less when someone asks for a renewal now.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = sleep(pause) => {}
            _ = self.shared.probe.notified() => {}
        }
    }

    /// Like [`KeepAlive::pause`], but wakes up when the lease runs out too
    /// (and notes the danger half-way there).
    async fn pause_within_lease(&self, pause: Duration) {
        let session_id = self.shared.id();
        self.within_lease(session_id, self.pause(pause)).await;
    }

    /// Runs `work` until it ends, or until the lease of `session_id` runs
    /// out (`None` then); notes that the lease is in danger if half of it
    /// passes meanwhile.
    async fn within_lease<T>(&self, session_id: u64, work: impl Future<Output = T>) -> Option<T> {
        let lease = self.lease;
        tokio::pin!(work);
        let in_danger = self.shared.danger_of(Some(session_id)).is_some();
        if !in_danger {
            tokio::select! {
                done = &mut work => return Some(done),
                _ = lease.run_out() => return None,
                _ = lease.half_gone() => self.note_danger(session_id),
            }
        }
        tokio::select! {
            done = work => Some(done),
            _ = lease.run_out() => None,
        }
    }

    /// Publishes the holds a keep-alive reply says the server took from
    /// `session_id`, and logs each once.
    fn note_taken(&self, session_id: u64, notices: Vec<pb::LostHold>) {
        for hold in self.shared.note_taken(session_id, notices) {
            self.log_news(&format!(
                "session {session_id} at {} lost a hold: {hold}",
                self.addr
            ));
        }
    }

    /// Publishes that the lease of `session_id` is in danger, and logs it
    /// once: a warning, unless someone waits for news of the session (and
    /// so reports it).
    fn note_danger(&self, session_id: u64) {
        let danger = LeaseDanger {
            session_id,
            unconfirmed_for: self.lease.unconfirmed_for(Instant::now()),
            ttl: self.ttl,
        };
        let message = format!("lease in danger at {}: {danger}", self.addr);
        if self.shared.mark_in_danger(danger) {
            self.log_news(&message);
        }
    }

    /// A renewal of `session_id` was confirmed: unless the lease is still
    /// past half-way (the confirmation was of an old request), it is out of
    /// danger. Returns true if it is.
    fn note_confirmed(&self, session_id: u64) -> bool {
        if self.lease.in_danger_at(Instant::now()) {
            return false;
        }
        self.shared.mark_safe(session_id);
        info!(
            "lease of session {session_id} at {} out of danger",
            self.addr
        );
        true
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
    fn send(&mut self, notices_seen_through: u64) -> Result<(), StreamEnd> {
        let request = KeepAliveRequest {
            session_id: self.session_id,
            notices_seen_through,
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
    transport: &Transport,
    ttl: Duration,
    client_name: &str,
) -> Result<u64, Status> {
    let request = CreateSessionRequest {
        ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
        client_name: client_name.to_string(),
    };
    let response = SessionsClient::new(transport.clone())
        .create(with_timeout(request))
        .await?;
    Ok(response.into_inner().session_id)
}

fn classify(status: Status) -> StreamEnd {
    if status.code() == Code::NotFound {
        let closed = status.metadata().get_bin(SESSION_CLOSED_KEY).map(|reason| {
            let bytes = reason.to_bytes().unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        });
        StreamEnd::SessionGone { closed }
    } else if super::error::is_refused(&status) {
        StreamEnd::Refused(status)
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
    fn a_refused_keep_alive_ends_the_session() {
        let refused = [
            Status::unauthenticated("the token is not known to this server"),
            Status::permission_denied(
                "session 7 belongs to token \"ops\"; token \"ci\" may not use it",
            ),
        ];
        for status in refused {
            assert!(
                matches!(classify(status.clone()), StreamEnd::Refused(_)),
                "{status:?}"
            );
        }
        assert!(matches!(
            classify(Status::not_found("session 7 not found")),
            StreamEnd::SessionGone { closed: None }
        ));
        let mut closed = Status::not_found("session 7 was closed: alice: stuck");
        closed.metadata_mut().insert_bin(
            SESSION_CLOSED_KEY,
            tonic::metadata::MetadataValue::from_bytes("alice: stuck".as_bytes()),
        );
        match classify(closed) {
            StreamEnd::SessionGone {
                closed: Some(reason),
            } => assert_eq!(reason, "alice: stuck"),
            _ => panic!("a closed session is told apart"),
        }
        let loss = SessionLoss {
            session_id: 7,
            reason: LossReason::ClosedOnServer("alice: stuck".into()),
        };
        assert_eq!(
            loss.to_string(),
            "session 7 was closed on the server: alice: stuck"
        );
        assert!(matches!(
            classify(Status::unavailable("restarting")),
            StreamEnd::Broken(_)
        ));

        let reason = "not authenticated: the token is not known to this server".to_string();
        let shared = SessionShared::new(7);
        shared.mark_lost(7, LossReason::Refused(reason.clone()));
        let loss = shared.loss_of(7).unwrap();
        assert_eq!(loss.reason, LossReason::Refused(reason));
        assert_eq!(
            loss.to_string(),
            "session 7 could not be renewed, the server refused its keep-alive: \
             not authenticated: the token is not known to this server"
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

    #[test]
    fn the_lease_is_in_danger_past_half_way() {
        let start = Instant::now();
        let mut lease = Lease::new(start, Duration::from_secs(10));
        assert_eq!(lease.half_way(), Some(start + Duration::from_secs(5)));
        assert!(!lease.in_danger_at(start + Duration::from_secs(5)));
        assert!(lease.in_danger_at(start + Duration::from_millis(5001)));
        assert_eq!(
            lease.unconfirmed_for(start + Duration::from_secs(6)),
            Duration::from_secs(6)
        );
        lease.renewed(start + Duration::from_secs(4));
        assert!(!lease.in_danger_at(start + Duration::from_secs(6)));
        assert_eq!(Lease::new(start, Duration::MAX).half_way(), None);
    }

    #[test]
    fn dangers_read_as_one_line() {
        let danger = LeaseDanger {
            session_id: 12,
            unconfirmed_for: Duration::from_secs(5),
            ttl: Duration::from_secs(10),
        };
        assert_eq!(
            danger.to_string(),
            "session 12: no keep-alive confirmed for 5s of its 10s TTL"
        );
        let danger = LeaseDanger {
            unconfirmed_for: Duration::from_nanos(1_000_400_001),
            ttl: Duration::from_secs(2),
            ..danger
        };
        assert_eq!(
            danger.to_string(),
            "session 12: no keep-alive confirmed for 1s of its 2s TTL"
        );
    }

    fn danger(session_id: u64) -> LeaseDanger {
        LeaseDanger {
            session_id,
            unconfirmed_for: Duration::from_millis(5001),
            ttl: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn danger_is_published_and_taken_back() {
        let shared = Arc::new(SessionShared::new(7));
        assert_eq!(shared.danger_of(None), None);
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.in_danger(None).await }
        });
        assert!(shared.mark_in_danger(danger(7)));
        // Once per episode: a second notice changes nothing.
        assert!(!shared.mark_in_danger(LeaseDanger {
            unconfirmed_for: Duration::from_secs(6),
            ..danger(7)
        }));
        assert_eq!(waiter.await.unwrap(), danger(7));
        assert_eq!(shared.danger_of(None), Some(danger(7)));
        assert_eq!(shared.danger_of(Some(7)), Some(danger(7)));
        // Already in danger: at once.
        assert_eq!(shared.in_danger(Some(7)).await, danger(7));

        shared.mark_safe(7);
        assert_eq!(shared.danger_of(None), None);
        shared.out_of_danger().await;

        // A replaced session takes its danger with it; a guard of the old
        // session never hears of the new one's.
        assert!(shared.mark_in_danger(danger(7)));
        shared.replace(8);
        assert_eq!(shared.danger_of(None), None);
        assert!(!shared.mark_in_danger(danger(7)));
        assert!(shared.mark_in_danger(danger(8)));
        let old = timeout(Duration::from_millis(50), shared.in_danger(Some(7))).await;
        assert!(
            old.is_err(),
            "the old session's guard heard of danger: {old:?}"
        );
        assert_eq!(shared.in_danger(None).await, danger(8));
    }

    /// A server that accepts connections and never answers, like a stopped
    /// one: the lease is in danger half-way through the TTL, and lost at
    /// its end.
    #[tokio::test]
    async fn an_unanswered_lease_is_in_danger_then_lost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect_lazy();
        let ttl = Duration::from_secs(1);
        let shared = Arc::new(SessionShared::new(5));
        let task = KeepAlive {
            transport: super::super::auth::transport(channel, Default::default()),
            shared: shared.clone(),
            addr,
            ttl,
            client_name: "test".into(),
            lease: Lease::new(Instant::now(), ttl),
        }
        .spawn();
        // Bounded only so that a bug cannot hang the test.
        let limit = Duration::from_secs(60);
        let danger = timeout(limit, shared.in_danger(None)).await.unwrap();
        assert_eq!(danger.session_id, 5);
        assert_eq!(danger.ttl, ttl);
        assert!(danger.unconfirmed_for > ttl / 2, "{danger:?}");
        let loss = timeout(limit, shared.lost(5)).await.unwrap();
        assert_eq!(loss.reason, LossReason::Unrenewed(ttl));
        task.abort();
    }
}
