//! The sled store: one `Db`, one atomic batch per group of engine turns,
//! one `flush` per group commit.
//!
//! sled 0.34 calls itself beta, so this file is careful: it opens the data
//! directory exclusively (a second syncd on the same directory is refused),
//! reports corruption instead of starting empty, and never acknowledges a
//! write before `flush` returned.
//!
//! sled recovers from a damaged log by dropping what it cannot read, which
//! can leave an empty database that opens without error. So after the first
//! flush that made data durable, a marker file is written next to it; a
//! directory with the marker but an empty database is refused as corrupt
//! instead of being served empty.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Record, Store, StoreError};
use crate::core::Change;

/// Written once data has been flushed; its presence means "this directory
/// holds syncd state".
const MARKER_FILE: &str = "syncd-state";

pub struct SledStore {
    db: sled::Db,
    /// Set until the marker file exists.
    marker_missing: Option<PathBuf>,
}

impl SledStore {
    /// Opens (or creates) the data directory. Fails with a one-line message
    /// when another process holds it or when its contents are corrupt.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let marker = dir.join(MARKER_FILE);
        let marked = marker.exists();
        if marked && db.is_empty() {
            return Err(StoreError(format!(
                "data directory {} held syncd state, but its database is now empty or \
                 unreadable (corrupt?); refusing to start over it. Restore it from a backup, \
                 or move it away to start empty",
                dir.display()
            )));
        }
        Ok(SledStore {
            db,
            marker_missing: (!marked).then_some(marker),
        })
    }

    /// Writes the marker once the database holds durable data.
    fn mark(&mut self) -> Result<(), StoreError> {
        let Some(marker) = &self.marker_missing else {
            return Ok(());
        };
        if self.db.is_empty() {
            return Ok(());
        }
        let written = fs::write(marker, b"syncd data directory, format 1\n")
            .and_then(|()| fs::File::open(marker)?.sync_all());
        written.map_err(|e| StoreError(format!("cannot write {}: {e}", marker.display())))?;
        self.marker_missing = None;
        Ok(())
    }
}

fn open_error(dir: &Path, error: sled::Error) -> StoreError {
    let dir = dir.display();
    let message = match error {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            format!("data directory {dir} is in use by another syncd process (its lock is held)")
        }
        sled::Error::Corruption { .. } => format!(
            "data directory {dir} is corrupt ({error}); refusing to start over it. \
             Restore it from a backup or move it away to start empty"
        ),
        other => format!("cannot open data directory {dir}: {other}"),
    };
    StoreError(message)
}

fn store_error(action: &str, error: sled::Error) -> StoreError {
    StoreError(format!("store {action} failed: {error}"))
}

impl Store for SledStore {
    fn load(&self) -> Result<Vec<Record>, StoreError> {
        self.db
            .iter()
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| store_error("read", e))
            })
            .collect()
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for change in changes {
            match change {
                Change::Put { key, value } => batch.insert(key.as_slice(), value.as_slice()),
                Change::Delete { key } => batch.remove(key.as_slice()),
            }
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| store_error("write", e))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| store_error("flush", e))?;
        self.mark()
    }
}
