//! The sled store: one `Db`, one atomic batch per group of engine turns,
//! one `flush` per group commit.
//!
//! sled 0.34 calls itself beta, so this file is careful: it opens the data
//! directory exclusively (a second syncd on the same directory is refused),
//! reports corruption instead of starting empty, and never acknowledges a
//! write before `flush` returned.

use std::path::Path;

use super::{Record, Store, StoreError};
use crate::core::Change;

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the data directory. Fails with a one-line message
    /// when another process holds it or when its contents are corrupt.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(dir, e))?;
        Ok(SledStore { db })
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
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| store_error("flush", e))
    }
}
