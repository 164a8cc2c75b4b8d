//! The engine: one task that owns the [`State`], and one writer thread
//! that owns the store.
//!
//! Each turn of the engine's loop:
//! 1. waits for a command, for the core's next deadline (one timer,
//!    re-armed every turn to [`State::next_deadline_ms`]), or for the writer
//!    to report progress;
//! 2. drains up to `batch_max` more commands that are already queued;
//! 3. ticks the core, then applies every command at the same `now`, and
//!    answers every query ([`State::query`]) in its place among them;
//! 4. hands the turn's changes to the writer thread (numbered), and holds
//!    the turn's replies and events;
//! 5. sends held replies in order once the writer reports their changes
//!    durable (with [`Durability::None`]: at once).
//!
//! So nothing a client hears can be lost by a crash, and the engine never
//! waits for the disk: while the writer flushes, the engine applies the
//! next commands, and the writer then writes all that queued up as one
//! batch with one flush (group commit, see `writer.rs`). A turn that changed
//! nothing is still held behind earlier turns, because what it reveals may
//! depend on their changes; so is a query's answer, for the same reason.
//!
//! Waiters: a waiting RPC gets a [`WaitStream`]. When the client goes away
//! the stream is dropped, and its `Drop` tells the engine (`Cancel`, and
//! `ReleaseUndelivered` for a grant it received but never passed on). The
//! engine also checks, when it delivers, whether the receiver is still
//! there, which covers a waiter dropped before the engine saw it.

mod clock;
mod deliver;
mod metrics;
mod notices;
mod replicated;
mod writer;

pub use self::replicated::start as start_replicated;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;

pub use self::clock::Clock;
use self::deliver::Router;
use self::metrics::Tracker;
use self::notices::NoticeBoard;
pub use self::notices::NoticeSubscription;
use self::writer::{Job, Progress, Writer};
use crate::core::{self, Code, Command, Limits, Outcome, Query, Rejection, Reply, State, WaiterId};
use crate::metrics::{Metrics, StateSizes};
use crate::store::{Store, StoreError};

/// An event for a waiter: a reply, or the reason its wait ended.
pub type Event = core::Result<Reply>;

/// Whether replies wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Flush before replying: an acknowledged change survives a crash.
    Sync,
    /// Reply before the flush: faster, but a crash may lose the last
    /// moments of acknowledged changes (the store still flushes by itself
    /// every half second).
    None,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub durability: Durability,
    /// Commands applied in one turn at most (and so sharing one flush).
    pub batch_max: usize,
    /// Commands queued for the engine at most; callers wait beyond it.
    pub queue_capacity: usize,
    /// On the write-ahead log: entries proposed and not yet applied, at
    /// most. While that many are in flight, commands gather into the next
    /// entry (openraft writes one entry's append and fdatasync after the
    /// other, so more in flight mostly means smaller entries).
    pub entries_in_flight_max: usize,
    /// On the write-ahead log: a snapshot is taken (and the log purged
    /// behind it) after this many entries.
    pub snapshot_every_entries: u64,
    pub limits: Limits,
    /// Where to record grants, waits, holds and the store's work (`None`:
    /// nothing is recorded).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            durability: Durability::Sync,
            batch_max: 1024,
            entries_in_flight_max: 2,
            snapshot_every_entries: 10_000,
            queue_capacity: 16 * 1024,
            limits: Limits::default(),
            metrics: None,
        }
    }
}

enum Envelope {
    Call {
        command: Command,
        acting_as: Option<Identity>,
        reply: oneshot::Sender<Event>,
    },
    /// A read: answered in its turn, from the state as the commands before
    /// it left it, and held with the turn's replies (see `turn`).
    Query {
        query: Query,
        acting_as: Option<Identity>,
        reply: oneshot::Sender<Event>,
    },
    Wait {
        command: Command,
        acting_as: Option<Identity>,
        waiter: WaiterId,
        events: mpsc::Sender<Event>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// A metrics scrape asks how big the state is.
    Sizes {
        reply: oneshot::Sender<StateSizes>,
    },
}

/// The name of the token a caller authenticated with.
pub type Identity = Arc<str>;

/// The way into the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Envelope>,
    /// Set on a handle made by [`EngineHandle::acting_as`]: its commands may
    /// only act for sessions this identity created.
    acting_as: Option<Identity>,
    /// Unbounded so that `Drop` can always send; bounded in practice by the
    /// number of waiters (at most two messages each).
    internal: mpsc::UnboundedSender<Command>,
    next_waiter: Arc<AtomicU64>,
    clock: Clock,
    /// Counts the turns that changed the state, once they are durable.
    changes: Arc<watch::Sender<u64>>,
    /// Where keep-alive streams hear of new lost-hold notices.
    notices: Arc<NoticeBoard>,
}

/// Events a watcher may leave unread before it is cut off.
const WATCH_BACKLOG_MAX: usize = 64;

fn shutting_down() -> Rejection {
    Rejection::new(Code::Unavailable, "the server is shutting down")
}

impl EngineHandle {
    /// A handle whose commands act for `identity`: a command naming a
    /// session created by another identity is refused with
    /// PERMISSION_DENIED, and new sessions belong to `identity`. Checked in
    /// the engine's turn, so no other command can come in between.
    pub fn acting_as(&self, identity: Identity) -> EngineHandle {
        EngineHandle {
            acting_as: Some(identity),
            ..self.clone()
        }
    }

    /// The identity this handle acts for (see [`EngineHandle::acting_as`]).
    pub fn identity(&self) -> Option<&Identity> {
        self.acting_as.as_ref()
    }

    /// Runs a command that answers once.
    pub async fn call(&self, command: Command) -> Event {
        let acting_as = self.acting_as.clone();
        let envelope = |reply| Envelope::Call {
            command,
            acting_as,
            reply,
        };
        self.answered(envelope).await
    }

    /// Answers a read. It changes nothing, but it is answered in turn
    /// order and held like a reply: what it shows was applied before it and
    /// is durable when the answer arrives.
    pub async fn query(&self, query: Query) -> Event {
        let acting_as = self.acting_as.clone();
        let envelope = |reply| Envelope::Query {
            query,
            acting_as,
            reply,
        };
        self.answered(envelope).await
    }

    /// Sends what `envelope` makes of a reply channel; the answer.
    async fn answered(&self, envelope: impl FnOnce(oneshot::Sender<Event>) -> Envelope) -> Event {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(envelope(reply)).await.is_err() {
            return Err(shutting_down());
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Runs a command that may wait. `make` receives the waiter's id.
    pub async fn wait(&self, make: impl FnOnce(WaiterId) -> Command) -> WaitStream {
        let infallible = |waiter| Ok::<_, Infallible>(make(waiter));
        self.try_wait(infallible)
            .await
            .unwrap_or_else(|never| match never {})
    }

    /// As [`EngineHandle::wait`], for a command that `make` may refuse to
    /// build (a request that names no valid mode, say): then nothing is
    /// sent and its error is returned.
    pub async fn try_wait<E>(
        &self,
        make: impl FnOnce(WaiterId) -> Result<Command, E>,
    ) -> Result<WaitStream, E> {
        // Room for every event a waiter can get: `Queued`, then one final.
        self.open_stream(4, make).await
    }

    /// Runs a command whose events go on until the caller leaves (a
    /// breaker's watch). A watcher that falls `WATCH_BACKLOG_MAX` events
    /// behind is cut off with RESOURCE_EXHAUSTED rather than slowing the
    /// engine.
    pub async fn watch(&self, make: impl FnOnce(WaiterId) -> Command) -> WaitStream {
        let infallible = |waiter| Ok::<_, Infallible>(make(waiter));
        self.try_watch(infallible)
            .await
            .unwrap_or_else(|never| match never {})
    }

    /// As [`EngineHandle::watch`], for a command that `make` may refuse to
    /// build.
    pub async fn try_watch<E>(
        &self,
        make: impl FnOnce(WaiterId) -> Result<Command, E>,
    ) -> Result<WaitStream, E> {
        self.open_stream(WATCH_BACKLOG_MAX, make).await
    }

    async fn open_stream<E>(
        &self,
        backlog: usize,
        make: impl FnOnce(WaiterId) -> Result<Command, E>,
    ) -> Result<WaitStream, E> {
        // A refused build wastes its id: ids need only be unique.
        let waiter = WaiterId(self.next_waiter.fetch_add(1, Ordering::Relaxed));
        let command = make(waiter)?;
        let (events, receiver) = mpsc::channel(backlog);
        let envelope = Envelope::Wait {
            command,
            acting_as: self.acting_as.clone(),
            waiter,
            events,
        };
        let mut stream = WaitStream {
            waiter,
            events: receiver,
            internal: self.internal.clone(),
            peeked: None,
            finished: false,
        };
        if self.commands.send(envelope).await.is_err() {
            stream.peeked = Some(Err(shutting_down()));
            stream.finished = true;
        }
        Ok(stream)
    }

    /// Asks the engine to stop: waiters get UNAVAILABLE, the store is
    /// flushed. Returns when that is done.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self
            .commands
            .send(Envelope::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = finished.await;
        }
    }

    /// How big the state is now (for a metrics scrape); `None` once the
    /// engine stopped. Answered between commands, without waiting for the
    /// disk.
    pub async fn state_sizes(&self) -> Option<StateSizes> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Envelope::Sizes { reply }).await.ok()?;
        answer.await.ok()
    }

    /// The engine's clock, in milliseconds; never runs backwards.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Tells when the state changed: the value counts the turns that changed
    /// something (a hold, a waiter, a record), bumped once their changes are
    /// durable. A new receiver has seen the current count; `changed()`
    /// fails once the engine stopped.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells when `session_id` got a lost-hold notice, once it is durable
    /// (see `notices.rs`), until the subscription is dropped.
    pub fn notices_of(&self, session_id: u64) -> NoticeSubscription {
        self.notices.subscribe(session_id)
    }
}

/// The events of one waiting command. Ends after the final event. Dropping
/// it early cancels the wait and gives back a grant it did not pass on.
pub struct WaitStream {
    waiter: WaiterId,
    events: mpsc::Receiver<Event>,
    internal: mpsc::UnboundedSender<Command>,
    /// An event taken from the channel (by `peek`) but not yet yielded.
    peeked: Option<Event>,
    /// The final event was taken from the channel: the wait is over.
    finished: bool,
}

impl WaitStream {
    /// The next event, without consuming it. The server uses this to turn
    /// an immediate refusal into the call's own status.
    pub async fn peek(&mut self) -> Option<&Event> {
        if self.peeked.is_none() {
            self.peeked = std::future::poll_fn(|cx| self.poll_channel(cx)).await;
        }
        self.peeked.as_ref()
    }

    fn poll_channel(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let event = match self.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => event,
            // The engine is gone.
            Poll::Ready(None) => Err(shutting_down()),
            Poll::Pending => return Poll::Pending,
        };
        self.finished = event.as_ref().map_or(true, Reply::is_final);
        Poll::Ready(Some(event))
    }
}

impl Stream for WaitStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let Some(event) = self.peeked.take() {
            return Poll::Ready(Some(event));
        }
        self.poll_channel(cx)
    }
}

impl Drop for WaitStream {
    fn drop(&mut self) {
        let mut undelivered: Vec<Event> = self.peeked.take().into_iter().collect();
        if !self.finished {
            while let Ok(event) = self.events.try_recv() {
                undelivered.push(event);
            }
            let _ = self.internal.send(Command::Cancel {
                waiter: self.waiter,
            });
        }
        for event in undelivered {
            if let Some(fencing_token) = event.ok().and_then(|r| r.granted_token()) {
                let _ = self
                    .internal
                    .send(Command::ReleaseUndelivered { fencing_token });
            }
        }
    }
}

/// Loads the state from `store` and starts the engine task and its writer
/// thread. The task ends with an error if the store fails.
pub fn start<S: Store>(
    mut store: S,
    config: EngineConfig,
) -> Result<(EngineHandle, JoinHandle<Result<(), StoreError>>), StoreError> {
    let records = store.load()?;
    let mut state = State::restore(config.limits.clone(), records)
        .map_err(|e| StoreError(format!("the data directory holds invalid state: {e}")))?;
    let clock = Clock::resume_from(state.now_ms());
    resume(&mut state, &mut store, clock.now_ms())?;
    let (progress_tx, progress) = mpsc::unbounded_channel();
    let writer_metrics = config.metrics.clone();
    let writer = Writer::start(
        store,
        config.durability,
        WRITER_QUEUE_MAX,
        progress_tx,
        writer_metrics,
    )
    .map_err(|e| StoreError(format!("cannot start the writer thread: {e}")))?;
    let (commands, command_rx) = mpsc::channel(config.queue_capacity);
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let changes = Arc::new(watch::Sender::new(0));
    let notices = Arc::new(NoticeBoard::default());
    let handle = EngineHandle {
        commands,
        acting_as: None,
        internal: internal.clone(),
        next_waiter: Arc::new(AtomicU64::new(1)),
        clock: clock.clone(),
        changes: changes.clone(),
        notices: notices.clone(),
    };
    let engine = Engine {
        state,
        tracker: config.metrics.clone().map(Tracker::new),
        config,
        clock,
        command_rx,
        internal_rx,
        router: Router::new(internal, changes, notices),
        writer: Some(writer),
        progress,
        submitted_seq: 0,
        durable_seq: 0,
        held: VecDeque::new(),
    };
    Ok((handle, tokio::spawn(engine.run())))
}

/// Gives the grace of a restart (`Command::Resume`: fresh leases and
/// visibility timeouts, every restored wait ended) before anything else is
/// applied, and makes its changes durable before the engine serves: what a
/// client sees after a restart does not depend on a later write.
fn resume<S: Store>(state: &mut State, store: &mut S, now_ms: u64) -> Result<(), StoreError> {
    let mut outcome = Outcome::default();
    let _ = state.apply(now_ms, Command::Resume, &mut outcome);
    // Nobody listens to the ended waits: their streams went with the old
    // process.
    if !outcome.events.is_empty() || state.session_count() > 0 {
        tracing::info!(
            sessions = state.session_count(),
            waits_ended = outcome.events.len(),
            "resumed: every lease starts again with its full TTL"
        );
    }
    if outcome.changes.is_empty() {
        return Ok(());
    }
    outcome.changes.push(state.checkpoint());
    store.write(&outcome.changes)?;
    store.flush()
}

/// Turns whose changes may wait for the writer at once; beyond it the engine
/// waits (backpressure).
const WRITER_QUEUE_MAX: usize = 4096;

struct Engine {
    state: State,
    /// Records grants, waits and holds (with `--metrics-listen`).
    tracker: Option<Tracker>,
    config: EngineConfig,
    clock: Clock,
    command_rx: mpsc::Receiver<Envelope>,
    internal_rx: mpsc::UnboundedReceiver<Command>,
    /// Delivers replies and events, keeps the senders of waiting streams
    /// (and gives the engine commands for its next turn).
    router: Router,
    writer: Option<Writer>,
    progress: mpsc::UnboundedReceiver<Progress>,
    /// The last sequence number handed to the writer.
    submitted_seq: u64,
    /// Everything up to this sequence number is durable.
    durable_seq: u64,
    /// Replies and events waiting for their turn's changes to be durable,
    /// in turn order.
    held: VecDeque<(u64, Deliveries)>,
}

/// What one turn sends once its changes (and all earlier ones) are durable.
#[derive(Default)]
struct Deliveries {
    replies: Vec<(oneshot::Sender<Event>, Event)>,
    first_events: Vec<(WaiterId, mpsc::Sender<Event>, Event)>,
    events: Vec<(WaiterId, Event)>,
    /// The turn changed the state (what `List` and `Describe` show).
    changed: bool,
    /// Sessions that got a lost-hold notice in the turn.
    noticed: Vec<u64>,
}

/// What woke the engine up.
enum Wake {
    Work,
    Progress(Progress),
    /// Shutdown was asked for, or every handle is gone.
    Stop(Option<oneshot::Sender<()>>),
}

impl Engine {
    async fn run(mut self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(self.config.batch_max);
        let mut internal = Vec::new();
        loop {
            match self.next_batch(&mut batch, &mut internal).await {
                Wake::Progress(progress) => self.on_progress(progress?),
                Wake::Work => {}
                Wake::Stop(done) => {
                    // Commands already taken in are answered before stopping.
                    self.turn(&mut batch, &mut internal).await?;
                    self.stop().await?;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return Ok(());
                }
            }
            self.turn(&mut batch, &mut internal).await?;
        }
    }

    /// Waits for work, the next deadline, or the writer; collects what is
    /// queued.
    async fn next_batch(&mut self, batch: &mut Vec<Envelope>, internal: &mut Vec<Command>) -> Wake {
        let deadline = self
            .state
            .next_deadline_ms()
            .map(|at_ms| self.clock.instant_at(at_ms));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            biased;
            Some(progress) = self.progress.recv() => return Wake::Progress(progress),
            Some(command) = self.internal_rx.recv() => {
                internal.push(command);
                Wake::Work
            }
            envelope = self.command_rx.recv() => match envelope {
                Some(Envelope::Shutdown { done }) => return Wake::Stop(Some(done)),
                Some(envelope) => {
                    batch.push(envelope);
                    Wake::Work
                }
                None => return Wake::Stop(None),
            },
            () = sleep => Wake::Work,
        };
        while let Ok(command) = self.internal_rx.try_recv() {
            internal.push(command);
        }
        while batch.len() < self.config.batch_max {
            match self.command_rx.try_recv() {
                Ok(Envelope::Shutdown { done }) => return Wake::Stop(Some(done)),
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        wake
    }

    /// Applies what was collected, hands the changes to the writer, and
    /// sends or holds the answers.
    async fn turn(
        &mut self,
        batch: &mut Vec<Envelope>,
        internal: &mut Vec<Command>,
    ) -> Result<(), StoreError> {
        let mut outcome = Outcome::default();
        let mut deliveries = Deliveries::default();
        let now_ms = self.clock.now_ms();
        if let Some(tracker) = &mut self.tracker {
            tracker.start_turn(internal.len() + batch.len());
        }
        // A wait queues (or leaves) a waiter: that changes what `List`
        // shows too.
        let waiters_moved =
            !internal.is_empty() || batch.iter().any(|e| matches!(e, Envelope::Wait { .. }));
        self.state.tick(now_ms, &mut outcome);
        for command in internal.drain(..) {
            if let (Some(tracker), Command::Cancel { waiter }) = (&mut self.tracker, &command) {
                tracker.cancelled(*waiter);
            }
            let _ = self.state.apply(now_ms, command, &mut outcome);
        }
        for envelope in batch.drain(..) {
            match envelope {
                Envelope::Call {
                    command,
                    acting_as,
                    reply,
                } => {
                    let result = self.apply_as(now_ms, command, acting_as, &mut outcome);
                    deliveries.replies.push((reply, result));
                }
                Envelope::Query {
                    query,
                    acting_as,
                    reply,
                } => {
                    // Held with the turn's replies: the commands before it
                    // may not be durable yet.
                    let result = self.query_as(now_ms, &query, acting_as);
                    deliveries.replies.push((reply, result));
                }
                Envelope::Wait {
                    command,
                    acting_as,
                    waiter,
                    events,
                } => {
                    let result = self.apply_as(now_ms, command, acting_as, &mut outcome);
                    deliveries.first_events.push((waiter, events, result));
                }
                Envelope::Sizes { reply } => {
                    let _ = reply.send(self.state_sizes());
                }
                Envelope::Shutdown { .. } => unreachable!("next_batch stops at a shutdown"),
            }
        }
        if let Some(tracker) = &mut self.tracker {
            tracker.track(now_ms, &outcome, &deliveries);
        }
        deliveries.changed =
            waiters_moved || !outcome.changes.is_empty() || !outcome.events.is_empty();
        deliveries.events = outcome.events;
        deliveries.noticed = std::mem::take(&mut outcome.sessions_noticed);
        if !outcome.changes.is_empty() {
            outcome.changes.push(self.state.checkpoint());
            self.submit(outcome.changes).await?;
        }
        let needs_seq = match self.config.durability {
            Durability::Sync => self.submitted_seq,
            Durability::None => 0,
        };
        self.held.push_back((needs_seq, deliveries));
        self.deliver_durable();
        Ok(())
    }

    /// Applies a caller's command, first checking that a session it names
    /// belongs to the caller's identity (when the server checks tokens).
    fn apply_as(
        &mut self,
        now_ms: u64,
        command: Command,
        acting_as: Option<Identity>,
        outcome: &mut Outcome,
    ) -> Event {
        if let Some(identity) = acting_as {
            self.state.check_session_owner(&command, &identity)?;
        }
        self.state.apply(now_ms, command, outcome)
    }

    /// Answers a caller's query, first checking that a session it names
    /// belongs to the caller's identity (as `apply_as`).
    fn query_as(&self, now_ms: u64, query: &Query, acting_as: Option<Identity>) -> Event {
        if let Some(identity) = acting_as {
            self.state.check_query_owner(query, &identity)?;
        }
        self.state.query(now_ms, query)
    }

    fn state_sizes(&self) -> StateSizes {
        StateSizes {
            sessions: self.state.session_count(),
            waiters: self.state.waiter_count(),
            holds: self.state.hold_count(),
            primitives: self.state.primitive_count(),
            queue_items_ready: self.state.queue_items_ready(),
        }
    }

    async fn submit(&mut self, changes: Vec<core::Change>) -> Result<(), StoreError> {
        self.submitted_seq += 1;
        let job = Job {
            seq: self.submitted_seq,
            changes,
        };
        let writer = self.writer.as_ref().expect("the writer runs until stop");
        if writer.submit(job) {
            return Ok(());
        }
        // The writer is gone: it reported why.
        match self.progress.recv().await {
            Some(Err(e)) => Err(e),
            _ => Err(StoreError("the writer thread stopped".into())),
        }
    }

    fn on_progress(&mut self, durable_seq: u64) {
        self.durable_seq = self.durable_seq.max(durable_seq);
        self.deliver_durable();
    }

    /// Sends every held turn whose changes are durable, in order.
    fn deliver_durable(&mut self) {
        while let Some((needs_seq, _)) = self.held.front() {
            if *needs_seq > self.durable_seq {
                return;
            }
            let (_, deliveries) = self.held.pop_front().expect("front exists");
            self.router.deliver(deliveries);
        }
    }

    /// Waits until everything handed to the writer is durable and answered,
    /// ends every remaining wait with UNAVAILABLE, and stops the writer
    /// (which flushes).
    async fn stop(&mut self) -> Result<(), StoreError> {
        while self.durable_seq < self.submitted_seq {
            match self.progress.recv().await {
                Some(progress) => self.on_progress(progress?),
                None => return Err(StoreError("the writer thread stopped".into())),
            }
        }
        self.deliver_durable();
        self.router.end_all();
        let writer = self.writer.take().expect("the writer runs until stop");
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| StoreError(format!("the writer thread failed: {e}")))?;
        // A failure of the final flush is reported on the progress channel.
        while let Ok(progress) = self.progress.try_recv() {
            progress?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
