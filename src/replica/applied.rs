//! The applied state on disk: sled holds the core's records and the id of
//! the last log entry they include.
//!
//! Policy: every `apply` of the state machine writes the changes of all the
//! entries it applied, the last applied log id and (when it changed) the
//! membership as **one** sled batch, so that after a crash the records and
//! the applied id always agree: an entry is never applied twice nor
//! skipped. sled is not flushed per batch: the log is what makes a reply
//! durable, and a restart replays the log after the applied id. Before the
//! log may be purged up to an index, [`AppliedStore::make_durable`] flushes
//! sled and then `fsync`s its files itself (sled's own flush is
//! `sync_file_range` on Linux, which is not an fsync).
//!
//! Invariants:
//! - the applied id on disk never runs ahead of the log on disk (entries
//!   are applied only once committed, that is, written to the log);
//! - keys under `raft/` are ours; every other key is a record of the core.

use std::fs;
use std::path::{Path, PathBuf};

use openraft::{BasicNode, LogId, StoredMembership};

use super::types::NodeId;
use super::ReplicaError;
use crate::core::Change;
use crate::store::Record;

/// The last applied log id (JSON of `Option<LogId>`).
const APPLIED_KEY: &[u8] = b"raft/applied";
/// The last applied membership (JSON of `StoredMembership`).
const MEMBERSHIP_KEY: &[u8] = b"raft/membership";
const RAFT_PREFIX: &[u8] = b"raft/";

pub type Membership = StoredMembership<NodeId, BasicNode>;

/// What the applied state holds when it is opened.
pub struct Loaded {
    /// The core's records, in key order.
    pub records: Vec<Record>,
    pub applied: Option<LogId<NodeId>>,
    pub membership: Membership,
}

/// sled's handle; clones share the same database.
#[derive(Clone)]
pub struct AppliedStore {
    db: sled::Db,
    dir: PathBuf,
}

impl AppliedStore {
    /// Opens (or creates) sled in `dir`.
    pub fn open(dir: &Path) -> Result<AppliedStore, ReplicaError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(dir, e))?;
        Ok(AppliedStore {
            db,
            dir: dir.to_owned(),
        })
    }

    pub fn load(&self) -> Result<Loaded, ReplicaError> {
        let mut records = Vec::new();
        let mut applied = None;
        let mut membership = Membership::default();
        for entry in self.db.iter() {
            let (key, value) = entry.map_err(|e| sled_error("read", e))?;
            if key.as_ref() == APPLIED_KEY {
                applied = decode_json(APPLIED_KEY, &value)?;
            } else if key.as_ref() == MEMBERSHIP_KEY {
                membership = decode_json(MEMBERSHIP_KEY, &value)?;
            } else if key.starts_with(RAFT_PREFIX) {
                return Err(ReplicaError::Corrupt(format!(
                    "the applied state holds an unknown key {:?}",
                    String::from_utf8_lossy(&key)
                )));
            } else {
                records.push((key.to_vec(), value.to_vec()));
            }
        }
        Ok(Loaded {
            records,
            applied,
            membership,
        })
    }

    /// Writes the changes of the entries up to `applied` as one batch (not
    /// durable yet: see the module doc).
    pub fn write(
        &self,
        changes: &[Change],
        applied: &LogId<NodeId>,
        membership: Option<&Membership>,
    ) -> Result<(), ReplicaError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            debug_assert!(!change_key(change).starts_with(RAFT_PREFIX));
            match change {
                Change::Put { key, value } => batch.insert(key.as_slice(), value.as_slice()),
                Change::Delete { key } => batch.remove(key.as_slice()),
            }
        }
        batch.insert(APPLIED_KEY, encode_json(&Some(applied)));
        if let Some(membership) = membership {
            batch.insert(MEMBERSHIP_KEY, encode_json(membership));
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| sled_error("write", e))
    }

    /// Replaces everything with `records` (installing a snapshot), durably.
    pub fn replace(
        &self,
        records: &[Record],
        applied: Option<&LogId<NodeId>>,
        membership: &Membership,
    ) -> Result<(), ReplicaError> {
        let mut batch = sled::Batch::default();
        for key in self.db.iter().keys() {
            batch.remove(key.map_err(|e| sled_error("read", e))?);
        }
        for (key, value) in records {
            batch.insert(key.as_slice(), value.as_slice());
        }
        batch.insert(APPLIED_KEY, encode_json(&applied));
        batch.insert(MEMBERSHIP_KEY, encode_json(membership));
        self.db
            .apply_batch(batch)
            .map_err(|e| sled_error("write", e))?;
        self.make_durable()
    }

    /// Makes everything written so far durable: sled's flush, then an
    /// `fsync` of each of its files and of the directories that hold them.
    pub fn make_durable(&self) -> Result<(), ReplicaError> {
        self.db.flush().map_err(|e| sled_error("flush", e))?;
        sync_tree(&self.dir).map_err(|e| {
            ReplicaError::Io(format!(
                "cannot fsync the applied state in {}: {e}",
                self.dir.display()
            ))
        })
    }

    /// sled itself, for the checks of a directory of the format before the
    /// log (see `dir.rs`).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Bytes sled takes on disk.
    pub fn size_on_disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

fn change_key(change: &Change) -> &[u8] {
    match change {
        Change::Put { key, .. } | Change::Delete { key } => key,
    }
}

/// The names of sled's files in a data directory: the log and config at
/// the top, blobs below `blobs/`, snapshots as `snap.*`.
fn is_sled_file(name: &str) -> bool {
    name == "db" || name == "conf" || name.starts_with("snap.")
}

/// fsyncs sled's files in `dir` (not the write-ahead log's, which syncs
/// itself), then `blobs/` and `dir`.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() && is_sled_file(&name.to_string_lossy()) {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    let blobs = dir.join("blobs");
    if blobs.is_dir() {
        for entry in fs::read_dir(&blobs)? {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        fs::File::open(&blobs)?.sync_all()?;
    }
    fs::File::open(dir)?.sync_all()
}

fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("openraft's ids and memberships serialize")
}

fn decode_json<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, ReplicaError> {
    serde_json::from_slice(value).map_err(|e| {
        ReplicaError::Corrupt(format!(
            "the applied state's {:?} is unreadable: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

fn open_error(dir: &Path, error: sled::Error) -> ReplicaError {
    let shown = dir.display();
    match error {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            ReplicaError::InUse(format!(
                "data directory {shown} is in use by another syncd process (its lock is held)"
            ))
        }
        sled::Error::Corruption { .. } => {
            ReplicaError::Corrupt(format!("the applied state in {shown} is corrupt ({error})"))
        }
        other => ReplicaError::Io(format!("cannot open the applied state in {shown}: {other}")),
    }
}

fn sled_error(action: &str, error: sled::Error) -> ReplicaError {
    ReplicaError::Io(format!("applied state {action} failed: {error}"))
}
