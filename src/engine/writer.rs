//! The writer thread: the only caller of the store.
//!
//! The engine hands it the changes of each turn with a sequence number and
//! goes on applying commands. The writer takes every job that queued up
//! while it was busy, writes them as one atomic batch, flushes once (with
//! `Durability::Sync`), and reports the highest sequence number that is now
//! durable. That is group commit without a timer: the slower the disk, the
//! more turns share one flush.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Durability;
use crate::core::Change;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The changes of one engine turn.
pub struct Job {
    pub seq: u64,
    pub changes: Vec<Change>,
}

/// What the writer reports: all jobs up to `seq` are written (and flushed,
/// with `Durability::Sync`), or the store failed.
pub type Progress = Result<u64, StoreError>;

pub struct Writer {
    jobs: std_mpsc::SyncSender<Job>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the thread. `queue_max` bounds the jobs waiting for it; the
    /// engine blocks beyond that (backpressure instead of memory growth).
    /// With `metrics`, it records each group commit and the store's size.
    pub fn start<S: Store>(
        store: S,
        durability: Durability,
        queue_max: usize,
        progress: mpsc::UnboundedSender<Progress>,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<Writer> {
        let (jobs, queue) = std_mpsc::sync_channel(queue_max);
        let metrics = metrics.map(StoreMetrics::new);
        let thread = std::thread::Builder::new()
            .name("syncd-writer".into())
            .spawn(move || write_loop(store, durability, queue, progress, metrics))?;
        Ok(Writer { jobs, thread })
    }

    /// Queues a job. Blocks only when `queue_max` jobs are waiting. Returns
    /// false if the writer is gone (it failed and reported why).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Stops the thread after it wrote and flushed everything queued.
    pub fn finish(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
    }
}

/// With `Durability::None`, how long the writer lets jobs gather.
const UNSYNCED_GATHER: Duration = Duration::from_millis(5);

/// How often the store's size on disk is measured, at most.
const SIZE_EVERY: Duration = Duration::from_secs(1);

struct StoreMetrics {
    metrics: Arc<Metrics>,
    /// When the size was last measured.
    sized_at: Option<Instant>,
    /// Written since the size was last measured.
    dirty: bool,
}

impl StoreMetrics {
    fn new(metrics: Arc<Metrics>) -> StoreMetrics {
        StoreMetrics {
            metrics,
            sized_at: None,
            dirty: false,
        }
    }

    /// One group commit of `changes` took `elapsed`.
    fn committed<S: Store>(&mut self, store: &S, changes: usize, elapsed: Duration) {
        self.metrics
            .store_flush_seconds
            .observe(elapsed.as_secs_f64());
        self.metrics.store_batch_changes.observe(changes as f64);
        self.dirty = true;
        self.measure(store);
    }

    /// The next job; while none comes, measures the size once more after
    /// the last writes (the store also writes by itself after a flush).
    /// `None` once the engine stopped.
    fn next_job<S: Store>(&mut self, store: &S, queue: &std_mpsc::Receiver<Job>) -> Option<Job> {
        loop {
            match queue.recv_timeout(SIZE_EVERY) {
                Ok(job) => return Some(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if self.dirty {
                        self.measure(store);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Measures the size on disk, at most every `SIZE_EVERY`.
    fn measure<S: Store>(&mut self, store: &S) {
        if self.sized_at.is_some_and(|at| at.elapsed() < SIZE_EVERY) {
            return;
        }
        self.sized_at = Some(Instant::now());
        self.dirty = false;
        if let Some(bytes) = store.size_on_disk_bytes() {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.metrics.store_size_bytes.set(bytes);
        }
    }
}

fn write_loop<S: Store>(
    mut store: S,
    durability: Durability,
    queue: std_mpsc::Receiver<Job>,
    progress: mpsc::UnboundedSender<Progress>,
    mut metrics: Option<StoreMetrics>,
) {
    if let Some(metrics) = &mut metrics {
        metrics.measure(&store);
    }
    let mut changes = Vec::new();
    loop {
        let next = match &mut metrics {
            Some(metrics) => metrics.next_job(&store, &queue),
            None => queue.recv().ok(),
        };
        let Some(first) = next else { break };
        if durability == Durability::None {
            // Nobody waits for these writes: gather a few milliseconds' worth
            // into one batch instead of paying sled's per-batch cost per turn.
            std::thread::sleep(UNSYNCED_GATHER);
        }
        let mut seq = first.seq;
        changes.extend(first.changes);
        while let Ok(job) = queue.try_recv() {
            seq = job.seq;
            changes.extend(job.changes);
        }
        let started = metrics.as_ref().map(|_| Instant::now());
        let result = store.write(&changes).and_then(|()| match durability {
            Durability::Sync => store.flush(),
            Durability::None => Ok(()),
        });
        let elapsed = started.map(|started| started.elapsed());
        let failed = result.is_err();
        let _ = progress.send(result.map(|()| seq));
        if failed {
            return;
        }
        // After the progress went out: measuring must not delay replies.
        if let (Some(metrics), Some(elapsed)) = (&mut metrics, elapsed) {
            metrics.committed(&store, changes.len(), elapsed);
        }
        changes.clear();
    }
    // The engine is stopping: whatever the durability, leave nothing unflushed.
    if let Err(e) = store.flush() {
        let _ = progress.send(Err(e));
    }
}
