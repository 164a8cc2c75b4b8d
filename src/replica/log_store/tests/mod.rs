//! Tests of the log store: openraft's storage suite, reopening, recovery
//! from torn and damaged files, group commit, durability modes, a full disk.

mod commit;
mod damage;
mod disk_full;
mod memory_sm;
mod records;
mod reopen;
mod suite;

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
};
use raft_log::DumpApi;
use tokio::sync::oneshot;

use super::records::{Done, WalTypes};
use super::{LogStore, LogStoreOptions};

// `Cursor` is the default snapshot type the macro names.
openraft::declare_raft_types!(
    pub(super) TestConfig:
        D = Vec<u8>,
        R = (),
);

type Store = LogStore<TestConfig>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entry `index` of a test log: a blank at 0, a membership at 1, then data
/// whose bytes depend on the index (so a mixed-up entry shows).
fn entry(term: u64, index: u64) -> Entry<TestConfig> {
    let payload = match index {
        0 => EntryPayload::Blank,
        1 => {
            let voters = [1, 2, 3].into_iter().collect();
            let nodes = [
                (1, BasicNode::new("127.0.0.1:1")),
                (4, BasicNode::new("127.0.0.1:4")),
            ];
            let nodes: std::collections::BTreeMap<u64, BasicNode> = nodes.into_iter().collect();
            EntryPayload::Membership(Membership::new(vec![voters], nodes))
        }
        _ => EntryPayload::Normal(
            format!("entry {index} ")
                .repeat(1 + index as usize % 7)
                .into_bytes(),
        ),
    };
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TestConfig>> {
    indexes.map(|index| entry(term, index)).collect()
}

fn open(dir: &Path, options: LogStoreOptions) -> Store {
    match Store::open(dir, options) {
        Ok(store) => store,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

/// Appends and hands back the receiver that hears of the flush.
async fn append_in_flight(
    store: &Store,
    entries: Vec<Entry<TestConfig>>,
) -> io::Result<oneshot::Receiver<io::Result<()>>> {
    let (tx, rx) = oneshot::channel();
    store.append_with(entries, Done::Notify(tx)).await?;
    Ok(rx)
}

/// Appends and waits until the flush is reported.
async fn append_flushed(store: &Store, entries: Vec<Entry<TestConfig>>) -> io::Result<()> {
    let rx = append_in_flight(store, entries).await?;
    rx.await
        .map_err(|_| io::Error::other("flush callback dropped"))?
}

async fn all_entries(store: &mut Store) -> Vec<Entry<TestConfig>> {
    store.try_get_log_entries(0..).await.expect("read the log")
}

async fn last_index(store: &mut Store) -> Option<u64> {
    store
        .get_log_state()
        .await
        .expect("log state")
        .last_log_id
        .map(|log_id| log_id.index)
}

/// Small chunk files, so that a test log spans several.
fn small_chunks() -> LogStoreOptions {
    LogStoreOptions {
        chunk_bytes_max: 4096,
        ..LogStoreOptions::default()
    }
}

/// A record of a chunk file, as raft-log's dump sees it.
#[derive(Clone, Debug)]
struct RecordAt {
    path: PathBuf,
    offset: u64,
    bytes: u64,
    /// The index of the entry, for an append record.
    appended: Option<u64>,
}

/// Every record of the (closed) log in `dir`, in order.
fn records(dir: &Path) -> Vec<RecordAt> {
    let config = Arc::new(raft_log::Config::new(dir.to_str().expect("UTF-8 path")));
    let dump = raft_log::Dump::<WalTypes<TestConfig>>::new(config.clone()).expect("lock for dump");
    let mut found = Vec::new();
    dump.write_with(|chunk_id, _, read| {
        let (segment, record) = read?;
        let appended = match record {
            raft_log::WALRecord::Action(raft_log::RaftLogAction::Append(log_id, _)) => {
                Some(log_id.index)
            }
            _ => None,
        };
        found.push(RecordAt {
            path: PathBuf::from(config.wal.chunk_path(chunk_id)),
            offset: segment.offset,
            bytes: segment.size,
            appended,
        });
        Ok(())
    })
    .expect("dump the log");
    found
}

/// A copy of the log files of `from` in a new directory.
fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("temp dir");
    for file in std::fs::read_dir(from).expect("read dir") {
        let file = file.expect("dir entry");
        if file.file_name() != "LOCK" {
            std::fs::copy(file.path(), to.path().join(file.file_name())).expect("copy");
        }
    }
    to
}

/// The same file in the copy made by [`copy_log`].
fn in_copy(copy: &Path, original: &Path) -> PathBuf {
    copy.join(original.file_name().expect("file name"))
}

/// A small deterministic generator (xorshift64*), for cut points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
