//! The client's session: its current id, shared by every clone of a
//! [`super::Client`], and the one background task that keeps it alive.
//!
//! The task holds one `KeepAlive` stream open and sends a request every
//! third of the TTL. When the stream breaks (the server restarts or cannot be
//! reached) it reopens it with the same session id after a backoff: sessions
//! survive server restarts. When the server answers `NOT_FOUND` the session
//! is gone (it expired while the client was cut off); the task creates a
//! fresh one and publishes its id, and the holds of the old one are lost.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch, Notify},
    task::AbortHandle,
    time::{interval_at, sleep, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Status, Streaming};
use tracing::{debug, info, warn};

use super::retry::Backoff;
use crate::proto::v1::{
    sessions_client::SessionsClient, CreateSessionRequest, KeepAliveRequest, KeepAliveResponse,
};

/// The shortest keep-alive period, whatever the TTL.
const PERIOD_MIN: Duration = Duration::from_millis(100);

/// The session state every clone of a client shares with the keep-alive
/// task.
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// The current session id; replaced when the session is lost.
    id: watch::Sender<u64>,
    /// Asks the keep-alive task to renew now (and so find out at once
    /// whether the session still exists).
    probe: Notify,
    /// Set by `Client::close`: the session is over for good.
    closed: AtomicBool,
}

impl SessionShared {
    pub(crate) fn new(session_id: u64) -> SessionShared {
        SessionShared {
            id: watch::Sender::new(session_id),
            probe: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// The current session id.
    pub(crate) fn id(&self) -> u64 {
        *self.id.borrow()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Waits, at most `limit`, until the session id is no longer `old`.
    /// Returns true when it changed. Asks the keep-alive task to check the
    /// session at once, so a lost session is noticed quickly.
    pub(crate) async fn wait_for_replacement(&self, old: u64, limit: Duration) -> bool {
        let mut ids = self.id.subscribe();
        self.probe.notify_one();
        let changed = tokio::time::timeout(limit, ids.wait_for(|id| *id != old)).await;
        matches!(changed, Ok(Ok(_)))
    }

    fn replace(&self, session_id: u64) {
        self.id.send_replace(session_id);
    }
}

/// Why one keep-alive stream ended.
enum StreamEnd {
    /// The server does not know the session any more.
    SessionGone,
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
}

impl KeepAlive {
    /// Starts the task; abort the handle to stop it.
    pub(crate) fn spawn(self) -> AbortHandle {
        tokio::spawn(self.run()).abort_handle()
    }

    async fn run(self) {
        let mut backoff = Backoff::default();
        let mut outage = Outage::default();
        loop {
            match self.stream_once(&mut backoff, &mut outage).await {
                StreamEnd::SessionGone => self.replace_session(&mut backoff).await,
                StreamEnd::Broken(status) => {
                    outage.report(&self, &status);
                    self.pause(backoff.next_pause()).await;
                }
            }
        }
    }

    /// Renews the session over one stream until it ends.
    async fn stream_once(&self, backoff: &mut Backoff, outage: &mut Outage) -> StreamEnd {
        let session_id = self.shared.id();
        let (requests, receiver) = mpsc::channel(4);
        let request = KeepAliveRequest { session_id };
        if requests.try_send(request).is_err() {
            return StreamEnd::Broken(Status::internal("keep-alive queue is full"));
        }
        let mut client = SessionsClient::new(self.channel.clone());
        let replies = match client.keep_alive(ReceiverStream::new(receiver)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return classify(status),
        };
        self.pump(session_id, requests, replies, backoff, outage)
            .await
    }

    /// Sends a request every period (or when probed) and reads replies.
    async fn pump(
        &self,
        session_id: u64,
        requests: mpsc::Sender<KeepAliveRequest>,
        mut replies: Streaming<KeepAliveResponse>,
        backoff: &mut Backoff,
        outage: &mut Outage,
    ) -> StreamEnd {
        let period = (self.ttl / 3).max(PERIOD_MIN);
        let mut ticker = interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shared.probe.notified() => {}
                reply = replies.message() => match reply {
                    Ok(Some(_)) => {
                        backoff.reset();
                        outage.end(self, session_id);
                        continue;
                    }
                    Ok(None) => {
                        return StreamEnd::Broken(Status::unavailable("keep-alive stream ended"))
                    }
                    Err(status) => return classify(status),
                },
            }
            if requests
                .send(KeepAliveRequest { session_id })
                .await
                .is_err()
            {
                return StreamEnd::Broken(Status::unavailable("keep-alive stream closed"));
            }
        }
    }

    /// Creates a fresh session after the old one was lost, retrying until
    /// the server answers.
    async fn replace_session(&self, backoff: &mut Backoff) {
        let old = self.shared.id();
        loop {
            match self.create_session().await {
                Ok(new) => {
                    warn!(
                        "session {old} at {} is gone (it expired while this client could not \
                         renew it); everything it held is released; continuing with new session {new}",
                        self.addr
                    );
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
    let response = SessionsClient::new(channel.clone()).create(request).await?;
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
