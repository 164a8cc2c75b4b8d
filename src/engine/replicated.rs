//! The engine on the replicated log: it gathers commands into log entries,
//! proposes them, and delivers what applying them gave.
//!
//! Each turn of its loop:
//! 1. waits for a command, for the core's next deadline (one timer, re-armed
//!    whenever an entry is applied), or for the oldest entry in flight to be
//!    applied;
//! 2. gathers up to `batch_max` commands that are already queued as the
//!    steps of the next entry, stamped with the engine clock's `now_ms`;
//! 3. proposes it once fewer than `entries_in_flight_max` entries are in
//!    flight —
//!    while they are, commands keep gathering, so a slow disk makes bigger
//!    entries (group commit at the entry level, and raft-log shares one
//!    fdatasync among the entries written meanwhile);
//! 4. once an entry is committed and applied, sends its replies and events
//!    (see `deliver.rs`), in log order.
//!
//! Nothing a client hears comes before the entry behind it is in the log
//! (fdatasync'ed, or with `Durability::None` written) and applied. Queries
//! are answered at once from the applied state, which only holds applied
//! entries. A timer that fires proposes an entry without steps: applying
//! any entry ticks the core at its time first.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::clock::Clock;
use super::deliver::Router;
use super::metrics::Tracker;
use super::notices::NoticeBoard;
use super::{Deliveries, Durability, EngineConfig, EngineHandle, Envelope, Event};
use crate::core::{Code, Command, Rejection, WaiterId};
use crate::metrics::StateSizes;
use crate::replica::codec::{self, Step};
use crate::replica::{AppliedEntry, Proposal, Replica, ReplicaError, ReplicaOptions};
use crate::store::StoreError;

/// Opens the replica in `data_dir`, resumes (every session gets a fresh
/// lease, the waits of before the restart end), and starts the engine task.
pub async fn start(
    data_dir: &Path,
    config: EngineConfig,
) -> Result<(EngineHandle, JoinHandle<Result<(), StoreError>>), StoreError> {
    let options = ReplicaOptions {
        sync: config.durability == Durability::Sync,
        limits: config.limits.clone(),
        snapshot_every_entries: config.snapshot_every_entries,
        log_entries_kept: (config.snapshot_every_entries / 10).max(1),
    };
    let replica = Replica::open(data_dir, options)
        .await
        .map_err(store_error)?;
    let clock = Clock::resume_from(replica.read(|state| state.now_ms()));
    // Above the ids of the waits from before the restart, as the log has
    // them: no new wait can be taken for an old one.
    let next_waiter = replica
        .read(|state| state.max_waiter_id())
        .map_or(1, |id| id.0 + 1);
    resume(&replica, &clock).await?;
    let (commands, command_rx) = mpsc::channel(config.queue_capacity);
    let (internal, internal_rx) = mpsc::unbounded_channel();
    let changes = Arc::new(watch::Sender::new(0));
    let notices = Arc::new(NoticeBoard::default());
    let handle = EngineHandle {
        commands,
        acting_as: None,
        internal: internal.clone(),
        next_waiter: Arc::new(AtomicU64::new(next_waiter)),
        clock: clock.clone(),
        changes: changes.clone(),
        notices: notices.clone(),
    };
    let next_deadline_ms = replica.read(|state| state.next_deadline_ms());
    let size_meter = config
        .metrics
        .clone()
        .map(|metrics| tokio::spawn(measure_disk(replica.disk_meter(), metrics)).abort_handle());
    let engine = Replicated {
        replica,
        tracker: config.metrics.clone().map(Tracker::new),
        config,
        clock,
        command_rx,
        internal_rx,
        router: Router::new(internal, changes, notices),
        next: Batch::default(),
        in_flight: VecDeque::new(),
        next_deadline_ms,
        tick_due: false,
        stopping: None,
        size_meter,
    };
    Ok((handle, tokio::spawn(engine.run())))
}

/// The first entry after a start: leases restart, old waits end.
async fn resume(replica: &Replica, clock: &Clock) -> Result<(), StoreError> {
    let entry = codec::Entry {
        now_ms: clock.now_ms(),
        steps: vec![Step {
            identity: None,
            command: Command::Resume,
        }],
    };
    let bytes = codec::encode(&entry).map_err(|e| StoreError(e.to_string()))?;
    let applied = replica.propose(bytes).await.map_err(store_error)?.await;
    applied.map(drop).map_err(store_error)
}

/// How often the bytes on disk are measured for the metrics.
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets the store-size gauge every [`MEASURE_EVERY`] until the log closes.
async fn measure_disk(meter: crate::replica::DiskMeter, metrics: Arc<crate::metrics::Metrics>) {
    loop {
        let Some(bytes) = meter.bytes().await else {
            return;
        };
        metrics
            .store_size_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        tokio::time::sleep(MEASURE_EVERY).await;
    }
}

fn store_error(error: ReplicaError) -> StoreError {
    StoreError(error.to_string())
}

/// Where the reply of one step goes.
enum Target {
    Call(oneshot::Sender<Event>),
    Wait(WaiterId, mpsc::Sender<Event>),
    /// The engine's own command (a cancel or a release of an undelivered
    /// grant); proposed again if its entry fails.
    Internal(Command),
}

/// The steps of the next entry, and where their replies go.
#[derive(Default)]
struct Batch {
    steps: Vec<Step>,
    targets: Vec<Target>,
}

impl Batch {
    fn push(&mut self, step: Step, target: Target) {
        self.steps.push(step);
        self.targets.push(target);
    }

    fn len(&self) -> usize {
        self.steps.len()
    }
}

struct InFlight {
    proposal: Proposal,
    targets: Vec<Target>,
    now_ms: u64,
    /// When it was proposed: until it is applied, it is being committed.
    proposed_at: Instant,
}

/// What `wait` received.
enum Got {
    Applied(Result<AppliedEntry, ReplicaError>),
    Internal(Command),
    Envelope(Option<Envelope>),
    Timer,
}

/// What woke the engine up.
enum Wake {
    Work,
    Applied(Result<AppliedEntry, ReplicaError>),
    /// Shutdown was asked for, or every handle is gone.
    Stop(Option<oneshot::Sender<()>>),
}

struct Replicated {
    replica: Replica,
    tracker: Option<Tracker>,
    config: EngineConfig,
    clock: Clock,
    command_rx: mpsc::Receiver<Envelope>,
    internal_rx: mpsc::UnboundedReceiver<Command>,
    router: Router,
    next: Batch,
    /// Proposed entries in log order; they are applied in that order.
    in_flight: VecDeque<InFlight>,
    /// When the core next has something to do by itself, as of the last
    /// applied entry; `None` once an entry that ticks past it is proposed.
    next_deadline_ms: Option<u64>,
    /// The timer fired: the next entry must be proposed even if empty.
    tick_due: bool,
    /// A shutdown was asked for while gathering (with whom to tell).
    stopping: Option<Option<oneshot::Sender<()>>>,
    /// The task that measures the bytes on disk (with `--metrics-listen`).
    size_meter: Option<tokio::task::AbortHandle>,
}

impl Replicated {
    async fn run(mut self) -> Result<(), StoreError> {
        loop {
            match self.wait().await {
                Wake::Work => {}
                Wake::Applied(result) => self.on_applied(result),
                Wake::Stop(done) => self.stopping = Some(done),
            }
            if self.stopping.is_none() {
                self.gather();
            }
            if let Some(done) = self.stopping.take() {
                let stopped = self.stop().await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return stopped;
            }
            if (self.next.len() > 0 || self.tick_due)
                && self.in_flight.len() < self.config.entries_in_flight_max
            {
                self.propose().await;
            }
        }
    }

    /// Waits for the oldest entry in flight, a command, or the timer.
    async fn wait(&mut self) -> Wake {
        let deadline = self
            .next_deadline_ms
            .map(|at_ms| self.clock.instant_at(at_ms));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut front = self.in_flight.front_mut();
        let applied = poll_fn(move |cx| match front.as_mut() {
            Some(in_flight) => Pin::new(&mut in_flight.proposal).poll(cx),
            None => Poll::Pending,
        });
        let got = tokio::select! {
            biased;
            result = applied => Got::Applied(result),
            Some(command) = self.internal_rx.recv() => Got::Internal(command),
            envelope = self.command_rx.recv() => Got::Envelope(envelope),
            () = sleep => Got::Timer,
        };
        match got {
            Got::Applied(result) => Wake::Applied(result),
            Got::Internal(command) => {
                self.next
                    .push(internal_step(command.clone()), Target::Internal(command));
                Wake::Work
            }
            Got::Envelope(Some(Envelope::Shutdown { done })) => Wake::Stop(Some(done)),
            Got::Envelope(Some(envelope)) => {
                self.take(envelope);
                Wake::Work
            }
            Got::Envelope(None) => Wake::Stop(None),
            Got::Timer => {
                self.tick_due = true;
                Wake::Work
            }
        }
    }

    /// Takes in what is already queued, up to `batch_max` steps.
    fn gather(&mut self) {
        while let Ok(command) = self.internal_rx.try_recv() {
            self.next
                .push(internal_step(command.clone()), Target::Internal(command));
        }
        while self.next.len() < self.config.batch_max {
            match self.command_rx.try_recv() {
                Ok(Envelope::Shutdown { done }) => {
                    self.pending_shutdown(done);
                    return;
                }
                Ok(envelope) => self.take(envelope),
                Err(_) => return,
            }
        }
    }

    fn take(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Call {
                command,
                acting_as,
                reply,
            } => self.next.push(
                Step {
                    identity: acting_as,
                    command,
                },
                Target::Call(reply),
            ),
            Envelope::Wait {
                command,
                acting_as,
                waiter,
                events,
            } => self.next.push(
                Step {
                    identity: acting_as,
                    command,
                },
                Target::Wait(waiter, events),
            ),
            Envelope::Query {
                query,
                acting_as,
                reply,
            } => {
                let now_ms = self.clock.now_ms();
                let answer = self.replica.read(|state| {
                    if let Some(identity) = &acting_as {
                        state.check_query_owner(&query, identity)?;
                    }
                    state.query(now_ms, &query)
                });
                let _ = reply.send(answer);
            }
            Envelope::Sizes { reply } => {
                let _ = reply.send(self.state_sizes());
            }
            Envelope::Shutdown { done } => self.pending_shutdown(done),
        }
    }

    async fn propose(&mut self) {
        let now_ms = self.clock.now_ms();
        let batch = std::mem::take(&mut self.next);
        self.tick_due = false;
        if self.next_deadline_ms.is_some_and(|at_ms| at_ms <= now_ms) {
            self.next_deadline_ms = None;
        }
        if let Some(tracker) = &mut self.tracker {
            tracker.start_turn(batch.len());
        }
        let entry = codec::Entry {
            now_ms,
            steps: batch.steps,
        };
        let proposed = match codec::encode(&entry) {
            Ok(bytes) => self.replica.propose(bytes).await,
            Err(e) => Err(ReplicaError::Raft(format!("cannot encode an entry: {e}"))),
        };
        match proposed {
            Ok(proposal) => self.in_flight.push_back(InFlight {
                proposal,
                targets: batch.targets,
                now_ms,
                proposed_at: Instant::now(),
            }),
            Err(e) => self.fail(batch.targets, &e),
        }
    }

    fn on_applied(&mut self, result: Result<AppliedEntry, ReplicaError>) {
        let in_flight = self.in_flight.pop_front().expect("an entry was in flight");
        let applied = match result {
            Ok(applied) => applied,
            Err(e) => return self.fail(in_flight.targets, &e),
        };
        debug_assert_eq!(applied.replies.len(), in_flight.targets.len());
        let mut deliveries = Deliveries::default();
        for (target, reply) in in_flight.targets.into_iter().zip(applied.replies) {
            match target {
                Target::Call(sender) => deliveries.replies.push((sender, reply)),
                Target::Wait(waiter, sender) => {
                    deliveries.first_events.push((waiter, sender, reply))
                }
                Target::Internal(Command::Cancel { waiter }) => {
                    if let Some(tracker) = &mut self.tracker {
                        tracker.cancelled(waiter);
                    }
                }
                Target::Internal(_) => {}
            }
        }
        let mut outcome = applied.outcome;
        if let Some(tracker) = &mut self.tracker {
            tracker.track(in_flight.now_ms, &outcome, &deliveries);
            // The log is the store now: a commit is an entry made durable
            // (with its siblings of the same fdatasync) and applied.
            let metrics = &tracker.metrics;
            let elapsed = in_flight.proposed_at.elapsed();
            metrics.store_flush_seconds.observe(elapsed.as_secs_f64());
            metrics.store_batch_changes.observe(applied.changes as f64);
        }
        deliveries.changed = applied.changed;
        deliveries.events = std::mem::take(&mut outcome.events);
        deliveries.noticed = std::mem::take(&mut outcome.sessions_noticed);
        self.router.deliver(deliveries);
        self.next_deadline_ms = self.replica.read(|state| state.next_deadline_ms());
    }

    /// An entry that will not be applied: its callers hear why; the
    /// engine's own commands are proposed again.
    fn fail(&mut self, targets: Vec<Target>, error: &ReplicaError) {
        let refusal = || {
            Err(Rejection::new(
                Code::Unavailable,
                format!("the change was not made: {error}"),
            ))
        };
        for target in targets {
            match target {
                Target::Call(sender) => {
                    let _ = sender.send(refusal());
                }
                Target::Wait(_, sender) => {
                    let _ = sender.try_send(refusal());
                }
                Target::Internal(command) => {
                    self.next
                        .push(internal_step(command.clone()), Target::Internal(command));
                }
            }
        }
    }

    fn pending_shutdown(&mut self, done: oneshot::Sender<()>) {
        self.stopping = Some(Some(done));
    }

    fn state_sizes(&self) -> StateSizes {
        self.replica.read(|state| StateSizes {
            sessions: state.session_count(),
            waiters: state.waiter_count(),
            holds: state.hold_count(),
            primitives: state.primitive_count(),
            queue_items_ready: state.queue_items_ready(),
        })
    }

    /// Proposes what was gathered, waits until every entry in flight is
    /// applied and answered, ends the remaining waits with UNAVAILABLE,
    /// then stops the replica (which makes the applied state durable).
    async fn stop(mut self) -> Result<(), StoreError> {
        if self.next.len() > 0 {
            self.propose().await;
        }
        while let Some(in_flight) = self.in_flight.front_mut() {
            let result = (&mut in_flight.proposal).await;
            self.on_applied(result);
        }
        self.router.end_all();
        if let Some(meter) = self.size_meter.take() {
            meter.abort();
        }
        self.replica.shutdown().await.map_err(store_error)
    }
}

fn internal_step(command: Command) -> Step {
    Step {
        identity: None,
        command,
    }
}
