//! The sled store: one `Db`, one atomic batch per group of engine turns,
//! one `flush` per group commit.
//!
//! sled 0.34 calls itself beta, so this file is careful: it opens the data
//! directory exclusively (a second syncd on the same directory is refused),
//! reports corruption instead of starting empty, and never acknowledges a
//! write before `flush` returned.
//!
//! sled recovers from a damaged log by dropping what it cannot read: a
//! truncated log opens without error, with the changes after the cut gone
//! (an empty database, or one whose fencing token counter went back). So a
//! marker file beside the database records the counters of the last flushed
//! batch (rewritten at most once a second and on a clean stop; write, sync,
//! rename). A directory with the marker whose database is missing, empty, or
//! has counters below the marker's is refused as damaged instead of being
//! served: it would hand out fencing tokens again. The counters only ever
//! grow and the marker only records flushed ones, so a crash (which loses
//! nothing flushed) never trips this check.
//!
//! A marker that cannot be rewritten (no file descriptor left, a full disk)
//! is a warning, not a store failure: the data is flushed already, the old
//! marker still holds counters no higher than the flushed ones, and the next
//! attempt (a second later) records them. Only the check is weaker
//! meanwhile, never wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;

use super::{Record, Store, StoreError};
use crate::core::records::COUNTERS_KEY;
use crate::core::Change;
use crate::proto::store::Counters;

/// Its presence means "this directory holds syncd state"; it holds the
/// counters last known flushed.
const MARKER_FILE: &str = "syncd-state";
const MARKER_HEADER: &str = "syncd data directory, format 1";
/// The checks of a format-1 directory (sled alone) made before sled opens
/// it and writes into it: a marker over a missing or empty database file is
/// damage. Returns the counters the marker holds (`None`: no marker).
pub(crate) fn check_before_open(dir: &Path) -> Result<Option<Counters>, StoreError> {
    let marked = read_marker(&dir.join(MARKER_FILE))?;
    let log = dir.join("db");
    let log_empty = fs::metadata(&log).map_or(true, |m| m.len() == 0);
    if marked.is_some() && log_empty {
        return Err(damaged(dir, "its database file is missing or empty"));
    }
    Ok(marked)
}

/// The checks of a format-1 directory once sled has it open: the counters
/// must not be below what the marker says was flushed.
pub(crate) fn check_after_open(
    dir: &Path,
    db: &sled::Db,
    marked: Option<Counters>,
) -> Result<(), StoreError> {
    if let Some(marked) = marked {
        let stored = db
            .get(COUNTERS_KEY)
            .map_err(|e| store_error("read", e))?
            .map(|value| Counters::decode(value.as_ref()).unwrap_or_default());
        match stored {
            None => return Err(damaged(dir, "its database is empty or unreadable")),
            Some(stored) if went_back(&stored, &marked) => {
                return Err(damaged(
                    dir,
                    &format!(
                        "its counters went back (fencing token {} after {} had been \
                             flushed): changes were lost",
                        stored.last_fencing_token, marked.last_fencing_token
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// How often a flush may rewrite the marker.
const MARK_EVERY: Duration = Duration::from_secs(1);

pub struct SledStore {
    db: sled::Db,
    marker: PathBuf,
    /// The counters record of the last batch written, and of the last one
    /// flushed.
    written_counters: Option<Vec<u8>>,
    flushed_counters: Option<Vec<u8>>,
    /// When the marker was last written (`None`: not yet by this process).
    marked_at: Option<Instant>,
}

impl SledStore {
    /// Opens (or creates) the data directory. Fails with a one-line message
    /// when another process holds it or when its contents are corrupt.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let marker = dir.join(MARKER_FILE);
        let marked = check_before_open(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_error(dir, e))?;
        check_after_open(dir, &db, marked)?;
        Ok(SledStore {
            db,
            marker,
            written_counters: None,
            flushed_counters: None,
            marked_at: None,
        })
    }

    /// Records the flushed counters in the marker (at most every
    /// `MARK_EVERY`, unless `now`). A failed attempt also waits
    /// `MARK_EVERY` before the next, so that a lasting failure is one
    /// warning a second, not one a flush.
    fn mark(&mut self, now: bool) -> Result<(), StoreError> {
        let Some(counters) = &self.flushed_counters else {
            return Ok(());
        };
        if !now && self.marked_at.is_some_and(|at| at.elapsed() < MARK_EVERY) {
            return Ok(());
        }
        self.marked_at = Some(Instant::now());
        let text = format!("{MARKER_HEADER}\ncounters {}\n", hex(counters));
        let temp = self.marker.with_extension("tmp");
        let written = fs::write(&temp, text)
            .and_then(|()| fs::File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &self.marker));
        written.map_err(|e| {
            // Best effort: a half-written temp file is harmless (never
            // read) but untidy.
            let _ = fs::remove_file(&temp);
            StoreError(format!("cannot write {}: {e}", self.marker.display()))
        })
    }
}

impl Drop for SledStore {
    /// A clean stop records the final counters (everything was flushed).
    fn drop(&mut self) {
        if self.db.flush().is_ok() {
            self.flushed_counters = self
                .written_counters
                .take()
                .or(self.flushed_counters.take());
            if let Err(e) = self.mark(true) {
                tracing::warn!("{}", e.0);
            }
        }
    }
}

/// The counters the marker holds: `None` without a marker; counters of 0
/// for a marker from before it kept them.
fn read_marker(marker: &Path) -> Result<Option<Counters>, StoreError> {
    let text = match fs::read_to_string(marker) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError(format!("cannot read {}: {e}", marker.display()))),
    };
    let bad = || StoreError(format!("{} is not a syncd marker file", marker.display()));
    let mut lines = text.lines();
    match lines.next() {
        Some(MARKER_HEADER) => {}
        // Written by syncd on the write-ahead log (`replica/dir.rs`).
        Some("syncd data directory, format 2") => {
            return Err(StoreError(format!(
                "data directory {} is on the write-ahead log (format 2): \
                 start syncd with --write-ahead-log",
                marker.parent().unwrap_or(marker).display()
            )))
        }
        _ => return Err(bad()),
    }
    let Some(encoded) = lines.next().and_then(|l| l.strip_prefix("counters ")) else {
        return Ok(Some(Counters::default()));
    };
    let bytes = unhex(encoded).ok_or_else(bad)?;
    Counters::decode(bytes.as_slice())
        .map(Some)
        .map_err(|_| bad())
}

/// Whether any counter is below what was flushed before.
fn went_back(stored: &Counters, marked: &Counters) -> bool {
    stored.last_fencing_token < marked.last_fencing_token
        || stored.last_session_id < marked.last_session_id
        || stored.last_object_id < marked.last_object_id
        || stored.clock_ms < marked.clock_ms
}

fn damaged(dir: &Path, why: &str) -> StoreError {
    StoreError(format!(
        "data directory {} held syncd state, but {why}: it is corrupt or truncated; \
         refusing to start over it. Restore it from a backup, or move it away to start empty",
        dir.display()
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
                Change::Put { key, value } if key.as_slice() == COUNTERS_KEY => {
                    self.written_counters = Some(value.clone());
                    batch.insert(key.as_slice(), value.as_slice());
                }
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
        if let Some(counters) = self.written_counters.take() {
            self.flushed_counters = Some(counters);
        }
        // Not a failure of the flush: see the module's doc.
        if let Err(e) = self.mark(false) {
            tracing::warn!("{e}; the data is flushed; retried at a flush a second from now");
        }
        Ok(())
    }

    fn size_on_disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters_put(last_fencing_token: u64) -> Change {
        let counters = Counters {
            last_fencing_token,
            ..Counters::default()
        };
        Change::Put {
            key: COUNTERS_KEY.to_vec(),
            value: counters.encode_to_vec(),
        }
    }

    fn stored_once(dir: &Path, last_fencing_token: u64) {
        let mut store = SledStore::open(dir).expect("opens");
        store.write(&[counters_put(last_fencing_token)]).unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn counters_that_went_back_are_refused_and_grown_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        stored_once(dir.path(), 5);
        stored_once(dir.path(), 9);
        // Changes lost behind syncd's back: the counter is older than the
        // marker's.
        {
            let db = sled::open(dir.path()).unwrap();
            let old = Counters {
                last_fencing_token: 7,
                ..Counters::default()
            };
            db.insert(COUNTERS_KEY, old.encode_to_vec()).unwrap();
            db.flush().unwrap();
        }
        let refused = SledStore::open(dir.path()).err().expect("refused");
        assert!(
            refused
                .0
                .contains("fencing token 7 after 9 had been flushed"),
            "{}",
            refused.0
        );
    }

    #[test]
    fn a_marker_without_a_database_file_is_refused_before_sled_writes() {
        let dir = tempfile::tempdir().unwrap();
        stored_once(dir.path(), 1);
        fs::remove_file(dir.path().join("db")).unwrap();
        let refused = SledStore::open(dir.path()).err().expect("refused");
        assert!(refused.0.contains("missing or empty"), "{}", refused.0);
        assert!(!dir.path().join("db").exists(), "nothing was written");
    }

    #[test]
    fn a_marker_that_cannot_be_written_does_not_fail_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        stored_once(dir.path(), 3);
        let mut store = SledStore::open(dir.path()).expect("opens");
        // A directory where the temp file goes: the rewrite fails, as it
        // would without a file descriptor left.
        let blocker = dir.path().join(MARKER_FILE).with_extension("tmp");
        fs::create_dir(&blocker).unwrap();
        store.write(&[counters_put(8)]).unwrap();
        store.flush().expect("the flush stands");
        let marked = || read_marker(&dir.path().join(MARKER_FILE)).unwrap().unwrap();
        assert_eq!(marked().last_fencing_token, 3, "the old marker is kept");
        // The next attempt, once the obstacle is gone, records the counters.
        fs::remove_dir(&blocker).unwrap();
        store.marked_at = None;
        store.flush().unwrap();
        assert_eq!(marked().last_fencing_token, 8);
        drop(store);
        assert!(SledStore::open(dir.path()).is_ok());
    }

    #[test]
    fn the_marker_keeps_the_counters_as_hex() {
        let bytes = vec![0, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
