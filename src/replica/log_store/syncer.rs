//! With `Durability::None`: the thread that syncs what was written unsynced.
//!
//! Policy:
//! - Every unsynced write pokes the syncer after its request is queued; the
//!   syncer waits `delay` (pokes meanwhile share the wait), then queues one
//!   `flush(sync)`. raft-log's flush thread works in order, so that sync
//!   covers every write poked before it was queued.
//! - The syncer stops when its store closes, without a last sync: closing
//!   raft-log syncs everything anyway.
//!
//! Invariants:
//! - at most one poke is pending (a full channel means a sync is coming).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft_log::api::raft_log_writer::RaftLogWriter;

use super::{LogConfig, Wal};

pub(super) struct Syncer {
    pokes: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn spawn<C: LogConfig>(
        wal: Arc<RwLock<Wal<C>>>,
        failed: Arc<AtomicBool>,
        delay: Duration,
    ) -> io::Result<Self> {
        let (pokes, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("raft-log-syncer".to_string())
            .spawn(move || sync_loop(&wal, &failed, &rx, delay))?;
        Ok(Syncer {
            pokes: Some(pokes),
            thread: Some(thread),
        })
    }

    pub(super) fn poke(&self) {
        let Some(pokes) = &self.pokes else {
            return;
        };
        match pokes.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            // The thread ended after a failed sync; `failed` already says so.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.pokes.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the raft log syncer thread panicked");
            }
        }
    }
}

fn sync_loop<C: LogConfig>(
    wal: &RwLock<Wal<C>>,
    failed: &AtomicBool,
    pokes: &Receiver<()>,
    delay: Duration,
) {
    while pokes.recv().is_ok() {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match pokes.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let flushed = match wal.write() {
            Ok(mut wal) => wal.log.flush(true, None),
            Err(_) => Err(io::Error::other("a raft log call panicked")),
        };
        if let Err(e) = flushed {
            tracing::error!("raft log: the sync of unsynced entries failed: {e}");
            failed.store(true, Ordering::Release);
            return;
        }
    }
}
