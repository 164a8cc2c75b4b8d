//! The writer thread: the only caller of the store.
//!
//! The engine hands it the changes of each turn with a sequence number and
//! goes on applying commands. The writer takes every job that queued up
//! while it was busy, writes them as one atomic batch, flushes once (with
//! `Durability::Sync`), and reports the highest sequence number that is now
//! durable. That is group commit without a timer: the slower the disk, the
//! more turns share one flush.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Durability;
use crate::core::Change;
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
    pub fn start<S: Store>(
        store: S,
        durability: Durability,
        queue_max: usize,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> std::io::Result<Writer> {
        let (jobs, queue) = std_mpsc::sync_channel(queue_max);
        let thread = std::thread::Builder::new()
            .name("syncd-writer".into())
            .spawn(move || write_loop(store, durability, queue, progress))?;
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

fn write_loop<S: Store>(
    mut store: S,
    durability: Durability,
    queue: std_mpsc::Receiver<Job>,
    progress: mpsc::UnboundedSender<Progress>,
) {
    let mut changes = Vec::new();
    while let Ok(first) = queue.recv() {
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
        let result = store.write(&changes).and_then(|()| match durability {
            Durability::Sync => store.flush(),
            Durability::None => Ok(()),
        });
        changes.clear();
        let failed = result.is_err();
        let _ = progress.send(result.map(|()| seq));
        if failed {
            return;
        }
    }
    // The engine is stopping: whatever the durability, leave nothing unflushed.
    if let Err(e) = store.flush() {
        let _ = progress.send(Err(e));
    }
}
