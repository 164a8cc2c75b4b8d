//! openraft's storage traits on the log store: each call runs one raft-log
//! call on the blocking pool and maps its error to openraft's.
//!
//! Policy: see the parent module; the rules openraft's docs set (no holes,
//! writes serialized, `save_vote` durable before it returns, `truncate` and
//! `purge` inclusive) are kept here call by call.
//!
//! Invariants:
//! - every write updates `Wal::first_index` with raft-log's log (the parent
//!   asserts it after each write in debug builds).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use raft_log::api::raft_log_writer::RaftLogWriter;
use tokio::sync::oneshot;

use super::records::{Done, WalLogId, WalVote};
use super::{LogConfig, LogReader, LogStore, Shared};

/// `[from, to)` of a range of indexes.
fn index_span(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

fn read_entries<C: LogConfig>(shared: &Shared<C>, from: u64, to: u64) -> io::Result<Vec<Entry<C>>> {
    let wal = shared.read()?;
    wal.log
        .read(from, to)
        .map(|entry| {
            entry.map(|(log_id, payload)| Entry {
                log_id: log_id.into(),
                payload: payload.0,
            })
        })
        .collect()
}

fn storage_error(verb: fn(AnyError) -> StorageIOError<u64>, e: io::Error) -> StorageError<u64> {
    StorageError::from(verb(AnyError::new(&e)))
}

impl<C: LogConfig> RaftLogReader<C> for LogReader<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        let (from, to) = index_span(&range);
        let read = self
            .shared
            .blocking(move |shared| read_entries(shared, from, to))
            .await;
        read.map_err(|e| storage_error(StorageIOError::read_logs, e))
    }
}

impl<C: LogConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        LogReader {
            shared: self.shared.clone(),
        }
        .try_get_log_entries(range)
        .await
    }
}

impl<C: LogConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let state = self.shared.blocking(|shared| {
            let wal = shared.read()?;
            let state = wal.log.log_state();
            Ok(LogState {
                last_purged_log_id: state.purged().map(|&log_id| log_id.into()),
                last_log_id: state.last().map(|&log_id| log_id.into()),
            })
        });
        state
            .await
            .map_err(|e| storage_error(StorageIOError::read_logs, e))
    }

    async fn get_log_reader(&mut self) -> LogReader<C> {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = WalVote::from(vote);
        let (tx, rx) = oneshot::channel();
        let saved = async {
            self.shared
                .blocking(move |shared| {
                    shared.write(|wal| {
                        wal.log.save_vote(vote)?;
                        wal.log.flush(true, Some(shared.flushed(Done::Notify(tx))))
                    })
                })
                .await?;
            match rx.await {
                Ok(synced) => synced,
                Err(_) => Err(io::Error::other(
                    "raft log: the flush thread dropped the vote",
                )),
            }
        };
        saved
            .await
            .map_err(|e| storage_error(StorageIOError::write_vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let vote = self.shared.blocking(|shared| {
            Ok(shared
                .read()?
                .log
                .log_state()
                .vote()
                .map(|&vote| Vote::from(vote)))
        });
        vote.await
            .map_err(|e| storage_error(StorageIOError::read_vote, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let Some(committed) = committed.map(WalLogId::from) else {
            return Ok(());
        };
        let saved = self.shared.blocking(move |shared| {
            shared.write(|wal| {
                let state = wal.log.log_state();
                // The committed id is a hint for replay (openraft's docs): one
                // that would go back, or past the log's end, is not kept
                // rather than failing the node.
                if Some(&committed) <= state.committed() || Some(&committed) > state.last() {
                    return Ok(());
                }
                wal.log.commit(committed)?;
                wal.log.flush(false, None)
            })
        });
        saved
            .await
            .map_err(|e| storage_error(StorageIOError::write_logs, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let committed = self.shared.blocking(|shared| {
            Ok(shared
                .read()?
                .log
                .log_state()
                .committed()
                .map(|&log_id| log_id.into()))
        });
        committed
            .await
            .map_err(|e| storage_error(StorageIOError::read_logs, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let appended = self.append_with(entries, Done::Raft(callback)).await;
        appended.map_err(|e| storage_error(StorageIOError::write_logs, e))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let index = log_id.index;
        let truncated = self.shared.blocking(move |shared| {
            shared.write(|wal| {
                if wal.last_index().is_none_or(|last| index > last) {
                    return Ok(());
                }
                wal.log.truncate(index)?;
                if wal.first_index.is_some_and(|first| first >= index) {
                    wal.first_index = None;
                }
                wal.log.flush(false, None)
            })
        });
        truncated
            .await
            .map_err(|e| storage_error(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let upto = WalLogId::from(log_id);
        let purged = self.shared.blocking(move |shared| {
            shared.write(|wal| {
                let last_before = wal.last_index();
                wal.log.purge(upto)?;
                if wal.first_index.is_some_and(|first| first <= upto.index) {
                    let rest = last_before.is_some_and(|last| last > upto.index);
                    wal.first_index = rest.then_some(upto.index + 1);
                }
                wal.log.flush(true, None)
            })
        });
        purged
            .await
            .map_err(|e| storage_error(StorageIOError::write_logs, e))
    }
}
