//! The data directory's layout, its marker, and the checks made before
//! anything in it is written.
//!
//! ```text
//! DIR/syncd-state            marker: "syncd data directory, format 2"
//! DIR/db, conf, blobs/, snap.*   sled: the applied state + last applied log id
//! DIR/log/                   raft-log: the write-ahead log (r-*.wal chunks, LOCK)
//! ```
//!
//! Format 1 (syncd before the log) kept the same sled files and no `log/`.
//! Such a directory is migrated in place on first start: after the old
//! checks (its marker's counters against sled's), its records become the
//! applied state as of "before the first entry", the log starts empty, and
//! the marker says format 2 once the node has initialized. Nothing is
//! rewritten, so a crash during the migration leaves a format-1 directory
//! that migrates again.
//!
//! A format-2 directory must have its log; and the log must still hold
//! every entry after the applied state's last one (the log is purged only
//! behind a durable applied state, so a gap means lost changes): else the
//! directory is refused, never served.

use std::fs;
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use openraft::LogId;

use super::applied::AppliedStore;
use super::log_store::LogStore;
use super::types::{NodeId, TypeConfig};
use super::ReplicaError;
use crate::proto::store::Counters;
use crate::store::sled as format_1;

const MARKER_FILE: &str = "syncd-state";
const FORMAT_1: &str = "syncd data directory, format 1";
const FORMAT_2: &str = "syncd data directory, format 2";
const LOG_DIR: &str = "log";

/// What `prepare` found.
#[derive(Debug)]
pub struct Layout {
    pub log_dir: PathBuf,
    marker: PathBuf,
    /// The marker already says format 2.
    current: bool,
    /// A format-1 directory: the counters its marker holds (`None`: no
    /// marker), to check against sled's once it is open.
    format_1: Option<Option<Counters>>,
}

/// Creates the directory if needed and checks what is there; migrates a
/// format-1 directory's checks (see the module doc).
pub fn prepare(dir: &Path) -> Result<Layout, ReplicaError> {
    fs::create_dir_all(dir).map_err(|e| {
        ReplicaError::Io(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    let marker = dir.join(MARKER_FILE);
    let log_dir = dir.join(LOG_DIR);
    let header = read_header(&marker)?;
    let (current, format_1) = match header.as_deref() {
        Some(FORMAT_2) => {
            if !log_dir.is_dir() {
                return Err(damaged(dir, "its write-ahead log (log/) is missing"));
            }
            (true, None)
        }
        // A `log/` beside a format-1 marker is a migration that stopped
        // before its marker was rewritten: it goes on. The checks syncd
        // made before the log come first.
        Some(FORMAT_1) | None => {
            let marked =
                format_1::check_before_open(dir).map_err(|e| ReplicaError::Corrupt(e.0))?;
            (false, Some(marked))
        }
        Some(other) => {
            return Err(ReplicaError::Corrupt(format!(
                "{} is not a syncd marker this version knows ({other:?}); \
                 is the data directory from a newer syncd?",
                marker.display()
            )))
        }
    };
    Ok(Layout {
        log_dir,
        marker,
        current,
        format_1,
    })
}

impl Layout {
    /// The rest of a format-1 directory's checks, once sled has it open: a
    /// marker whose counters are ahead of sled's means flushed changes were
    /// lost.
    pub fn check_opened(&self, store: &AppliedStore) -> Result<(), ReplicaError> {
        let Some(marked) = self.format_1 else {
            return Ok(());
        };
        let dir = self.marker.parent().unwrap_or(Path::new("."));
        format_1::check_after_open(dir, store.db(), marked).map_err(|e| ReplicaError::Corrupt(e.0))
    }

    /// Marks the directory as format 2 (write, sync, rename, sync the
    /// directory), once the node runs on it.
    pub fn finish(&self) -> Result<(), ReplicaError> {
        if self.current {
            return Ok(());
        }
        let temp = self.marker.with_extension("tmp");
        let dir = self.marker.parent().unwrap_or(Path::new("."));
        let written = fs::write(&temp, format!("{FORMAT_2}\n"))
            .and_then(|()| fs::File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &self.marker))
            .and_then(|()| fs::File::open(dir)?.sync_all());
        written
            .map_err(|e| ReplicaError::Io(format!("cannot write {}: {e}", self.marker.display())))
    }
}

/// Refuses a log that no longer holds the entries after `applied` (purged
/// past it), or that ends before it (the log lost entries the applied state
/// has: whatever came after them, acknowledged, is gone too).
pub async fn check_log_covers(
    log: &mut LogStore<TypeConfig>,
    applied: Option<&LogId<NodeId>>,
) -> Result<(), ReplicaError> {
    let state = log
        .get_log_state()
        .await
        .map_err(|e| ReplicaError::Io(format!("cannot read the write-ahead log: {e}")))?;
    let purged = state.last_purged_log_id.map(|id| id.index);
    let applied_index = applied.map(|id| id.index);
    if purged > applied_index {
        return Err(ReplicaError::Corrupt(format!(
            "the applied state ends at log entry {} but the log was purged up to {}: \
             the changes in between are lost; restore the data directory from a backup",
            applied_index.map_or("none".to_owned(), |i| i.to_string()),
            purged.unwrap_or(0)
        )));
    }
    let last = state.last_log_id.map(|id| id.index);
    if last < applied_index {
        return Err(ReplicaError::Corrupt(format!(
            "the write-ahead log ends at entry {} but the applied state includes entry {}:              the log lost entries, and acknowledged changes after them are gone;              restore the data directory from a backup",
            last.map_or("none".to_owned(), |i| i.to_string()),
            applied_index.unwrap_or(0)
        )));
    }
    Ok(())
}

fn read_header(marker: &Path) -> Result<Option<String>, ReplicaError> {
    match fs::read_to_string(marker) {
        Ok(text) => Ok(Some(text.lines().next().unwrap_or("").to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReplicaError::Io(format!(
            "cannot read {}: {e}",
            marker.display()
        ))),
    }
}

fn damaged(dir: &Path, why: &str) -> ReplicaError {
    ReplicaError::Corrupt(format!(
        "data directory {} held syncd state, but {why}: it is corrupt or truncated; \
         refusing to start over it. Restore it from a backup, or move it away to start empty",
        dir.display()
    ))
}
