//! The engine: one task that owns the [`State`] and is the only writer of
//! the store.
//!
//! Each turn of its loop:
//! 1. waits for a command, or for the core's next deadline (one timer,
//!    re-armed every turn to [`State::next_deadline_ms`]);
//! 2. drains up to `batch_max` more commands that are already queued;
//! 3. ticks the core, then applies every command at the same `now`;
//! 4. writes all their changes in one atomic batch and, with
//!    [`Durability::Sync`], flushes once (group commit);
//! 5. only then sends the replies and the waiters' events.
//!
//! So nothing a client hears can be lost by a crash. Commands that arrive
//! during a flush wait in the channel and form the next batch; the busier
//! the server, the more commands share one flush.
//!
//! Waiters: a waiting RPC gets a [`WaitStream`]. When the client goes away
//! the stream is dropped, and its `Drop` tells the engine (`Cancel`, and
//! `ReleaseUndelivered` for a grant it received but never passed on). The
//! engine also checks, when it delivers, whether the receiver is still
//! there, which covers a waiter dropped before the engine saw it.

mod clock;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::Stream;

pub use self::clock::Clock;
use crate::core::{self, Code, Command, Limits, Outcome, Rejection, Reply, State, WaiterId};
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
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            durability: Durability::Sync,
            batch_max: 1024,
            queue_capacity: 16 * 1024,
            limits: Limits::default(),
        }
    }
}

enum Envelope {
    Call {
        command: Command,
        reply: oneshot::Sender<Event>,
    },
    Wait {
        command: Command,
        waiter: WaiterId,
        events: mpsc::Sender<Event>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The way into the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Envelope>,
    /// Unbounded so that `Drop` can always send; bounded in practice by the
    /// number of waiters (at most two messages each).
    internal: mpsc::UnboundedSender<Command>,
    next_waiter: Arc<AtomicU64>,
    clock: Clock,
}

fn shutting_down() -> Rejection {
    Rejection::new(Code::Unavailable, "the server is shutting down")
}

impl EngineHandle {
    /// Runs a command that answers once.
    pub async fn call(&self, command: Command) -> Event {
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope::Call { command, reply };
        if self.commands.send(envelope).await.is_err() {
            return Err(shutting_down());
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Runs a command that may wait. `make` receives the waiter's id.
    pub async fn wait(&self, make: impl FnOnce(WaiterId) -> Command) -> WaitStream {
        let waiter = WaiterId(self.next_waiter.fetch_add(1, Ordering::Relaxed));
        // Room for every event a waiter can get: `Queued`, then one final.
        let (events, receiver) = mpsc::channel(4);
        let envelope = Envelope::Wait {
            command: make(waiter),
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
        stream
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

    /// The engine's clock, in milliseconds; never runs backwards.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
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

/// Loads the state from `store` and starts the engine task.
pub fn start<S: Store>(
    store: S,
    config: EngineConfig,
) -> Result<(EngineHandle, JoinHandle<Result<(), StoreError>>), StoreError> {
    let records = store.load()?;
    let state = State::restore(config.limits.clone(), records)
        .map_err(|e| StoreError(format!("the data directory holds invalid state: {e}")))?;
    let clock = Clock::resume_from(state.now_ms());
    let (commands, command_rx) = mpsc::channel(config.queue_capacity);
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let handle = EngineHandle {
        commands,
        internal: internal.clone(),
        next_waiter: Arc::new(AtomicU64::new(1)),
        clock: clock.clone(),
    };
    let engine = Engine {
        state,
        store,
        config,
        clock,
        command_rx,
        internal_rx,
        loopback: internal,
        waiting: HashMap::new(),
    };
    Ok((handle, tokio::spawn(engine.run())))
}

struct Engine<S> {
    state: State,
    store: S,
    config: EngineConfig,
    clock: Clock,
    command_rx: mpsc::Receiver<Envelope>,
    internal_rx: mpsc::UnboundedReceiver<Command>,
    /// Commands the engine gives itself for its next turn.
    loopback: mpsc::UnboundedSender<Command>,
    /// Senders of waiters that got `Queued` and wait for their final event.
    waiting: HashMap<WaiterId, mpsc::Sender<Event>>,
}

/// What one turn must send once its changes are durable.
#[derive(Default)]
struct Turn {
    outcome: Outcome,
    replies: Vec<(oneshot::Sender<Event>, Event)>,
    first_events: Vec<(WaiterId, mpsc::Sender<Event>, Event)>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Whether the command channel closed: every handle is gone.
    closed: bool,
}

impl<S: Store> Engine<S> {
    async fn run(mut self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(self.config.batch_max);
        let mut internal = Vec::new();
        loop {
            let closed = self.next_batch(&mut batch, &mut internal).await;
            let mut turn = Turn {
                closed,
                ..Turn::default()
            };
            self.apply_all(&mut batch, &mut internal, &mut turn);
            self.persist(&mut turn.outcome).await?;
            self.deliver(&mut turn);
            if turn.closed || turn.shutdown.is_some() {
                self.stop().await?;
                if let Some(done) = turn.shutdown {
                    let _ = done.send(());
                }
                return Ok(());
            }
        }
    }

    /// Waits for work (or the next deadline) and collects what is queued.
    /// Returns true when every handle is gone.
    async fn next_batch(&mut self, batch: &mut Vec<Envelope>, internal: &mut Vec<Command>) -> bool {
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
        tokio::select! {
            biased;
            Some(command) = self.internal_rx.recv() => internal.push(command),
            envelope = self.command_rx.recv() => match envelope {
                Some(envelope) => batch.push(envelope),
                None => return true,
            },
            () = sleep => {}
        }
        while let Ok(command) = self.internal_rx.try_recv() {
            internal.push(command);
        }
        while batch.len() < self.config.batch_max {
            match self.command_rx.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        false
    }

    fn apply_all(
        &mut self,
        batch: &mut Vec<Envelope>,
        internal: &mut Vec<Command>,
        turn: &mut Turn,
    ) {
        let now_ms = self.clock.now_ms();
        let out = &mut turn.outcome;
        self.state.tick(now_ms, out);
        for command in internal.drain(..) {
            let _ = self.state.apply(now_ms, command, out);
        }
        for envelope in batch.drain(..) {
            match envelope {
                Envelope::Call { command, reply } => {
                    let result = self.state.apply(now_ms, command, out);
                    turn.replies.push((reply, result));
                }
                Envelope::Wait {
                    command,
                    waiter,
                    events,
                } => {
                    let result = self.state.apply(now_ms, command, out);
                    turn.first_events.push((waiter, events, result));
                }
                Envelope::Shutdown { done } => turn.shutdown = Some(done),
            }
        }
    }

    async fn persist(&mut self, outcome: &mut Outcome) -> Result<(), StoreError> {
        if outcome.changes.is_empty() {
            return Ok(());
        }
        outcome.changes.push(self.state.checkpoint());
        self.store.write(&outcome.changes)?;
        if self.config.durability == Durability::Sync {
            self.store.flush().await?;
        }
        Ok(())
    }

    fn deliver(&mut self, turn: &mut Turn) {
        for (reply, result) in turn.replies.drain(..) {
            let _ = reply.send(result);
        }
        // First events before the outcome's events: a waiter queued in this
        // turn may already have been granted or timed out in it.
        for (waiter, sender, event) in turn.first_events.drain(..) {
            let is_final = event.as_ref().map_or(true, Reply::is_final);
            if self.send(waiter, &sender, event) && !is_final {
                self.waiting.insert(waiter, sender);
            }
        }
        for (waiter, event) in turn.outcome.events.drain(..) {
            let Some(sender) = self.waiting.remove(&waiter) else {
                continue;
            };
            let is_final = event.as_ref().map_or(true, Reply::is_final);
            if self.send(waiter, &sender, event) && !is_final {
                self.waiting.insert(waiter, sender);
            }
        }
    }

    /// Sends an event; if the waiter is gone, undoes what the event gave it
    /// (next turn). Returns whether the waiter is still there.
    fn send(&self, waiter: WaiterId, sender: &mpsc::Sender<Event>, event: Event) -> bool {
        let granted = event.as_ref().ok().and_then(Reply::granted_token);
        let queued = matches!(event, Ok(Reply::Queued { .. }));
        if sender.try_send(event).is_ok() {
            return true;
        }
        // The receiver was dropped (a full channel cannot happen: it has
        // room for every event a waiter gets).
        if let Some(fencing_token) = granted {
            let _ = self
                .loopback
                .send(Command::ReleaseUndelivered { fencing_token });
        }
        if queued {
            let _ = self.loopback.send(Command::Cancel { waiter });
        }
        false
    }

    /// Ends every wait with UNAVAILABLE and makes everything durable.
    async fn stop(&mut self) -> Result<(), StoreError> {
        for (_, sender) in self.waiting.drain() {
            let _ = sender.try_send(Err(shutting_down()));
        }
        self.store.flush().await
    }
}
