//! The write-ahead log under openraft: [`LogStore`] keeps the Raft log, the
//! vote and the committed log id in a raft-log directory (chunk files of
//! CRC-checked records, and one flush thread that can share an fdatasync
//! among the requests that reach it within a time window).
//!
//! openraft 0.9.25 waits for each append's flush before it makes its next
//! log write (`RaftCore::append_to_log`), so a node never has two appends in
//! flight and that window has nothing to gather: group commit has to happen
//! above openraft, by putting many steps in one entry.
//!
//! Policy:
//! - Writes reach raft-log in the order openraft makes them (it awaits each
//!   call), and raft-log's one flush thread writes them, syncs them and calls
//!   their callbacks in that order, so a flush callback also covers every
//!   write before it.
//! - `append` returns once the entries are in raft-log's memory, where
//!   readers find them. openraft hears they are flushed (`LogFlushed`) after
//!   fdatasync with [`Durability::Sync`]; once written to the OS, before their
//!   sync, with [`Durability::None`], and a syncer thread then asks for the
//!   sync within [`LogStoreOptions::unsynced_sync_delay`].
//! - An appended entry at or below the purge point is left out: the snapshot
//!   the purge stands for covers it. (openraft's storage suite appends such
//!   entries after `get_initial_state` purged up to the state machine's last
//!   applied id; raft-log would refuse them as going back.)
//! - `save_vote` returns only once the vote is fdatasync'ed, whatever the
//!   durability. `save_committed` and `truncate` are handed to the flush
//!   thread without a wait: a crash that loses one loses every later record
//!   too, so the log on disk is always a prefix of what was written. `purge`
//!   asks for a sync, since raft-log deletes purged chunk files only behind
//!   one.
//! - Every raft-log call runs on tokio's blocking pool, never on a runtime
//!   worker: raft-log does file I/O on the caller's thread (reads of entries
//!   evicted from its cache, creating a chunk file and fsyncing the
//!   directory, waiting while its write queue is full).
//! - After a failed write (a flush error, e.g. a full disk) the store refuses
//!   every later call: raft-log's flush thread has stopped for good and its
//!   memory may hold entries the disk does not. Reopen the directory to go
//!   on; that cuts off the part of the failed write that reached the file.
//!
//! Invariants:
//! - the log holds the entries `first_index..=last` without a hole, and
//!   `purged < first_index` (checked by raft-log on every append);
//! - `committed <= last` (checked at open: otherwise committed entries went
//!   missing, and the store refuses to open);
//! - `Wal::first_index` is the index of raft-log's first entry (asserted
//!   after every write in debug builds).

mod open;
mod records;
mod storage;
mod syncer;
#[cfg(test)]
mod tests;

use std::fmt::{self, Debug};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use openraft::{BasicNode, Entry, RaftTypeConfig, TokioRuntime};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::RaftLog;

use self::records::{Done, Flushed, WalLogId, WalPayload, WalTypes};
use self::syncer::Syncer;

/// The openraft type configurations a [`LogStore`] serves.
pub trait LogConfig:
    RaftTypeConfig<
    NodeId = u64,
    Node = BasicNode,
    Entry = Entry<Self>,
    AsyncRuntime = TokioRuntime,
    D: LogPayload,
>
{
}

impl<C> LogConfig for C where
    C: RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<C>,
        AsyncRuntime = TokioRuntime,
        D: LogPayload,
    >
{
}

/// The application's part of a log entry, stored as opaque bytes.
pub trait LogPayload: Clone + Debug + Send + Sync + 'static {
    /// The bytes the log stores for this payload.
    fn as_log_bytes(&self) -> &[u8];

    /// The payload back from the bytes [`LogPayload::as_log_bytes`] gave.
    fn from_log_bytes(bytes: Vec<u8>) -> io::Result<Self>;
}

impl LogPayload for Vec<u8> {
    fn as_log_bytes(&self) -> &[u8] {
        self
    }

    fn from_log_bytes(bytes: Vec<u8>) -> io::Result<Self> {
        Ok(bytes)
    }
}

/// When openraft hears that appended entries are flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After they are fdatasync'ed: they survive a crash.
    Sync,
    /// Once they are written to the OS, before their sync (which follows
    /// within `unsynced_sync_delay`): a crash of the machine may lose them.
    None,
}

/// How a [`LogStore`] writes.
#[derive(Clone, Debug)]
pub struct LogStoreOptions {
    pub durability: Durability,
    /// With [`Durability::None`]: how long after an unsynced write the
    /// syncer asks for an fdatasync (writes meanwhile share it).
    pub unsynced_sync_delay: Duration,
    /// How long raft-log's flush thread waits, after the first request of a
    /// batch, for more requests to share its write and fdatasync; it waits
    /// that long even when nothing else comes. openraft 0.9 waits for each
    /// append's flush before its next log write, so nothing would come: the
    /// default is no wait (a 1 ms window made each append ~1.2 ms slower).
    pub flush_batch_wait: Duration,
    /// Past this size a chunk file is closed and a new one begun. Purging
    /// deletes whole chunk files only, so this is also how much purged log
    /// can linger on disk.
    pub chunk_bytes_max: usize,
    /// Entry payloads kept in memory at most (count and bytes); older ones
    /// are read back from disk. Payloads not yet synced always stay.
    pub cache_entries_max: usize,
    pub cache_bytes_max: usize,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            durability: Durability::Sync,
            unsynced_sync_delay: Duration::from_millis(5),
            flush_batch_wait: Duration::ZERO,
            chunk_bytes_max: 64 * 1024 * 1024,
            cache_entries_max: 100_000,
            cache_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// openraft's log storage, on a raft-log directory.
///
/// The log closes when the store and all its readers are dropped: that
/// writes and syncs whatever is queued, joins raft-log's flush thread (a
/// short block, on whichever thread drops the last one) and releases the
/// directory lock.
pub struct LogStore<C: LogConfig> {
    shared: Arc<Shared<C>>,
}

/// Reads the log for openraft's replication tasks; shares the store's log.
pub struct LogReader<C: LogConfig> {
    shared: Arc<Shared<C>>,
}

/// The store's numbers for metrics, without keeping the log open.
#[derive(Clone)]
pub struct LogProbe<C: LogConfig> {
    shared: Weak<Shared<C>>,
}

/// What a [`LogProbe`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of the chunk files still in use (purged files not yet deleted
    /// are not counted).
    pub disk_bytes: u64,
    /// Bytes free for unprivileged use on the log's file system. openraft
    /// stops a node whose log write fails, so writes must be refused before
    /// they reach the log when this runs low.
    pub disk_free_bytes: u64,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Write requests handed to the flush thread, the batches it made of
    /// them, and those of its batches that ended with an fdatasync.
    pub flush_requests: u64,
    pub flush_batches: u64,
    pub fdatasyncs: u64,
}

struct Shared<C: LogConfig> {
    dir: PathBuf,
    durability: Durability,
    /// Declared before `wal`: dropping it joins the syncer thread, which
    /// holds the other reference to `wal`, so the log closes (and releases
    /// its directory lock) when `Shared` drops.
    syncer: Option<Syncer>,
    wal: Arc<RwLock<Wal<C>>>,
    /// Set once a write or flush failed; raft-log cannot go on after that.
    failed: Arc<AtomicBool>,
}

/// raft-log's log, and the first index it holds (raft-log does not say).
struct Wal<C: LogConfig> {
    log: RaftLog<WalTypes<C>>,
    first_index: Option<u64>,
}

impl<C: LogConfig> LogStore<C> {
    /// Opens the log in `dir`, creating it if needed. Blocks (it replays the
    /// whole log): call it before the runtime serves, or on a blocking thread.
    ///
    /// Refused if another store has `dir` open (in this process or another),
    /// and if a record before the end of the newest chunk file is damaged;
    /// a torn record at its very end is cut off (the write it belonged to was
    /// never acknowledged with [`Durability::Sync`]).
    pub fn open(dir: &Path, options: LogStoreOptions) -> io::Result<Self> {
        let wal = Arc::new(RwLock::new(open::open_wal::<C>(dir, &options)?));
        let failed = Arc::new(AtomicBool::new(false));
        let syncer = match options.durability {
            Durability::Sync => None,
            Durability::None => Some(Syncer::spawn(
                wal.clone(),
                failed.clone(),
                options.unsynced_sync_delay,
            )?),
        };
        let shared = Shared {
            dir: dir.to_path_buf(),
            durability: options.durability,
            syncer,
            wal,
            failed,
        };
        Ok(LogStore {
            shared: Arc::new(shared),
        })
    }

    /// A handle for metrics that does not keep the log open.
    pub fn probe(&self) -> LogProbe<C> {
        LogProbe {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Appends `entries` and tells `done` when they are flushed (see
    /// [`Durability`]); `append` of the openraft trait, for any callback.
    async fn append_with(&self, entries: Vec<Entry<C>>, done: Done<C>) -> io::Result<()> {
        let records: Vec<(WalLogId, WalPayload<C>)> = entries
            .into_iter()
            .map(|e| (WalLogId::from(e.log_id), WalPayload(e.payload)))
            .collect();
        let sync = self.shared.durability == Durability::Sync;
        self.shared
            .blocking(move |shared| {
                shared.write(|wal| {
                    let purged = wal.log.log_state().purged().map(|log_id| log_id.index);
                    let records = records
                        .into_iter()
                        .filter(|(log_id, _)| Some(log_id.index) > purged);
                    let records: Vec<_> = records.collect();
                    let first = records.first().map(|(log_id, _)| log_id.index);
                    wal.log.append(records)?;
                    wal.first_index = wal.first_index.or(first);
                    wal.log.flush(sync, Some(shared.flushed(done)))?;
                    Ok(())
                })?;
                shared.poke_syncer();
                Ok(())
            })
            .await
    }
}

impl<C: LogConfig> LogProbe<C> {
    /// `None` once the store is closed.
    pub async fn stats(&self) -> Option<io::Result<LogStats>> {
        let shared = self.shared.upgrade()?;
        Some(shared.blocking(|shared| shared.stats()).await)
    }
}

impl<C: LogConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl<C: LogConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl<C: LogConfig> Shared<C> {
    /// Runs `f` on tokio's blocking pool (see the policy above).
    async fn blocking<R, F>(self: &Arc<Self>, f: F) -> io::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Shared<C>) -> io::Result<R> + Send + 'static,
    {
        let shared = self.clone();
        match tokio::task::spawn_blocking(move || f(&shared)).await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("a raft log task failed: {e}"))),
        }
    }

    /// Reads too are refused after a failure: raft-log's memory may hold
    /// entries its disk does not.
    fn read(&self) -> io::Result<RwLockReadGuard<'_, Wal<C>>> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.broken("an earlier write failed; reopen the log"));
        }
        self.wal
            .read()
            .map_err(|_| self.broken("a raft log call panicked"))
    }

    /// Runs one write; any error leaves the store refusing writes, since a
    /// half-done write cannot be taken back out of raft-log's memory.
    fn write<R>(&self, f: impl FnOnce(&mut Wal<C>) -> io::Result<R>) -> io::Result<R> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.broken("an earlier write failed; reopen the log"));
        }
        let mut wal: RwLockWriteGuard<'_, Wal<C>> = self
            .wal
            .write()
            .map_err(|_| self.broken("a raft log call panicked"))?;
        let result = f(&mut wal);
        match &result {
            Ok(_) => {
                #[cfg(debug_assertions)]
                wal.debug_assert_first_index();
            }
            Err(_) => self.failed.store(true, Ordering::Release),
        }
        result
    }

    fn flushed(&self, done: Done<C>) -> Flushed<C> {
        Flushed::new(done, self.failed.clone())
    }

    fn poke_syncer(&self) {
        if let Some(syncer) = &self.syncer {
            syncer.poke();
        }
    }

    fn broken(&self, why: &str) -> io::Error {
        io::Error::other(format!("raft log {}: {why}", self.dir.display()))
    }

    fn stats(&self) -> io::Result<LogStats> {
        let wal = self.read()?;
        let state = wal.log.log_state();
        let flush = wal.log.stat().flush_metrics;
        Ok(LogStats {
            disk_bytes: wal.log.on_disk_size(),
            disk_free_bytes: open::free_bytes(&self.dir)?,
            first_index: wal.first_index,
            last_index: state.last().map(|log_id| log_id.index),
            purged_index: state.purged().map(|log_id| log_id.index),
            flush_requests: flush.write_request_count,
            flush_batches: flush.batch_count,
            fdatasyncs: flush.sync_batch_count,
        })
    }
}

impl<C: LogConfig> Wal<C> {
    /// The first entry's index, read from raft-log (one entry: maybe a disk
    /// read).
    fn read_first_index(&self) -> io::Result<Option<u64>> {
        match self.log.read(0, u64::MAX).next() {
            None => Ok(None),
            Some(entry) => entry.map(|(log_id, _)| Some(log_id.index)),
        }
    }

    #[cfg(debug_assertions)]
    fn debug_assert_first_index(&self) {
        if let Ok(first) = self.read_first_index() {
            debug_assert_eq!(self.first_index, first, "first_index drifted from raft-log");
        }
    }

    fn last_index(&self) -> Option<u64> {
        self.log.log_state().last().map(|log_id| log_id.index)
    }
}
