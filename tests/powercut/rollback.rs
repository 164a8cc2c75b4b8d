//! The power cut itself: after `kill -9`, undo what the journal says was
//! not yet durable.
//!
//! Policy: for each file, every change recorded after its last sync (of
//! that file, or of all files) is undone, newest first: its old bytes go
//! back and the file is cut to its old size. That leaves the worst a power
//! cut may leave under the model of `shim.c` (every unsynced byte lost).
//! Files are found by inode under the data directory, so renames since the
//! change do not matter; an inode no longer there was unlinked, and
//! metadata is durable at once in this model, so it stays gone. A journal
//! that saw a writable shared mapping of a tracked file is refused: writes
//! through it escaped the journal.
//!
//! Invariants: a change is undone only when its number is at or above the
//! file's synced-through number (the highest `seq` of a sync of that file,
//! of all files, or of its inode's end); undoing the newest first makes the
//! final size the old size of the oldest change undone.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::journal::{self, FileId, Record, SyncCall, Undo};

/// What a rollback did and saw.
#[derive(Debug, Default)]
pub struct Rollback {
    /// Changes undone (data lost to the power cut), per file name.
    pub undone: BTreeMap<String, usize>,
    /// Changes of files no longer there (not undone).
    pub of_gone_files: usize,
    /// Changes that a sync had made durable (kept).
    pub kept: usize,
    /// Sync calls of tracked files, by kind.
    pub syncs: BTreeMap<String, usize>,
    /// `sync_file_range` calls of tracked files (no durability here).
    pub sync_file_ranges: usize,
    /// The journal's last record was cut short by the kill.
    pub cut_tail: bool,
}

impl Rollback {
    pub fn undone_total(&self) -> usize {
        self.undone.values().sum()
    }
}

/// Undoes in `data` every change of `journal` that no sync covered.
pub fn roll_back(journal: &Path, data: &Path) -> Result<Rollback, String> {
    let bytes =
        std::fs::read(journal).map_err(|e| format!("cannot read {}: {e}", journal.display()))?;
    let (records, cut_tail) = journal::parse(&bytes)?;
    let writers = (records.iter())
        .filter(|r| matches!(r, Record::Header { .. }))
        .count();
    if writers > 1 {
        // Each process numbers its changes from 0: they cannot be ordered.
        return Err(format!("{writers} processes wrote the journal; one may"));
    }
    let mut rollback = Rollback {
        cut_tail,
        ..Rollback::default()
    };
    let pending = pending(&records, &mut rollback)?;
    let files = files_under(data)?;
    for undo in pending {
        match files.get(&undo.file) {
            Some(path) => {
                apply(path, undo)?;
                *rollback.undone.entry(undo.path.clone()).or_default() += 1;
            }
            None => rollback.of_gone_files += 1,
        }
    }
    Ok(rollback)
}

/// The changes no sync covers, newest first; counts the rest.
fn pending<'a>(records: &'a [Record], rollback: &mut Rollback) -> Result<Vec<&'a Undo>, String> {
    let mut synced_through: HashMap<FileId, u64> = HashMap::new();
    let mut all_synced_through = 0;
    let mut count_sync = |call: &SyncCall| {
        *rollback.syncs.entry(format!("{call:?}")).or_default() += 1;
    };
    for record in records {
        match record {
            Record::Synced {
                seq, file, call, ..
            } => {
                let through = synced_through.entry(*file).or_default();
                *through = (*through).max(*seq);
                count_sync(call);
            }
            Record::Gone { seq, file, .. } => {
                let through = synced_through.entry(*file).or_default();
                *through = (*through).max(*seq);
            }
            Record::SyncedAll { seq, call } => {
                all_synced_through = all_synced_through.max(*seq);
                count_sync(call);
            }
            Record::SyncFileRange { .. } => rollback.sync_file_ranges += 1,
            Record::Unmodelled { path, .. } => {
                return Err(format!(
                    "{path} was changed in a way the power-cut model does not cover (a \
                     writable shared mmap, or a fallocate that moves data): the rollback \
                     would be incomplete"
                ))
            }
            Record::Header { .. } | Record::Write(_) => {}
        }
    }
    let mut pending: Vec<&Undo> = Vec::new();
    for record in records {
        if let Record::Write(undo) = record {
            let through = synced_through.get(&undo.file).copied().unwrap_or(0);
            if undo.seq >= through.max(all_synced_through) {
                pending.push(undo);
            } else {
                rollback.kept += 1;
            }
        }
    }
    pending.sort_by_key(|undo| std::cmp::Reverse(undo.seq));
    Ok(pending)
}

/// Every file under `dir` (itself included), by inode.
fn files_under(dir: &Path) -> Result<HashMap<FileId, PathBuf>, String> {
    let mut files = HashMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            for entry in entries {
                todo.push(entry.map_err(|e| e.to_string())?.path());
            }
        } else if meta.is_file() {
            let id = FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            files.insert(id, path);
        }
    }
    Ok(files)
}

fn apply(path: &Path, undo: &Undo) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot undo a write of {}: {e}", path.display());
    let file = OpenOptions::new().write(true).open(path).map_err(fail)?;
    file.write_all_at(&undo.old, undo.off).map_err(fail)?;
    file.set_len(undo.old_size).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id(path: &Path) -> FileId {
        let meta = fs::metadata(path).unwrap();
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// A write as the shim journals it: the undo record first, then the
    /// change.
    fn write(log: &mut Vec<Record>, seq: u64, path: &Path, off: u64, data: &[u8]) {
        let before = fs::read(path).unwrap_or_default();
        if before.is_empty() && !path.exists() {
            fs::write(path, b"").unwrap();
        }
        let start = (off as usize).min(before.len());
        let end = (off as usize + data.len()).min(before.len());
        log.push(Record::Write(Undo {
            seq,
            file: id(path),
            off,
            old_size: before.len() as u64,
            old: before[start..end].to_vec(),
            path: path.display().to_string(),
        }));
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(data, off).unwrap();
    }

    fn synced(log: &mut Vec<Record>, seq: u64, path: &Path) {
        log.push(Record::Synced {
            seq,
            file: id(path),
            call: SyncCall::Fdatasync,
            path: path.display().to_string(),
        });
    }

    fn roll(dir: &Path, log: &[Record]) -> Result<Rollback, String> {
        let journal = dir.join("journal");
        fs::write(&journal, journal::encode(log)).unwrap();
        roll_back(&journal, &dir.join("data"))
    }

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("data")).unwrap();
        let file = dir.path().join("data/file");
        (dir, file)
    }

    #[test]
    fn write_sync_write_rolls_back_to_the_synced_bytes() {
        let (dir, file) = setup();
        let mut log = vec![Record::Header { version: 1, pid: 1 }];
        write(&mut log, 0, &file, 0, b"hello");
        synced(&mut log, 1, &file);
        write(&mut log, 1, &file, 5, b" world");
        write(&mut log, 2, &file, 0, b"HELLO");
        assert_eq!(fs::read(&file).unwrap(), b"HELLO world");
        let rollback = roll(dir.path(), &log).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"hello");
        assert_eq!(rollback.undone_total(), 2);
        assert_eq!(rollback.kept, 1);
    }

    #[test]
    fn a_file_never_synced_ends_empty_and_a_sync_of_another_file_does_not_help() {
        let (dir, file) = setup();
        let other = dir.path().join("data/other");
        let mut log = Vec::new();
        write(&mut log, 0, &file, 0, b"lost");
        write(&mut log, 1, &other, 0, b"kept");
        synced(&mut log, 2, &other);
        roll(dir.path(), &log).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"");
        assert_eq!(fs::read(&other).unwrap(), b"kept");
    }

    #[test]
    fn a_write_that_began_before_a_sync_returned_is_not_covered_by_it() {
        let (dir, file) = setup();
        let mut log = Vec::new();
        write(&mut log, 0, &file, 0, b"aa");
        // The sync was called when change 1 was next: change 1 raced it.
        write(&mut log, 1, &file, 2, b"bb");
        synced(&mut log, 1, &file);
        roll(dir.path(), &log).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"aa");
    }

    #[test]
    fn a_sync_of_everything_covers_every_file() {
        let (dir, file) = setup();
        let mut log = Vec::new();
        write(&mut log, 0, &file, 0, b"kept");
        log.push(Record::SyncedAll {
            seq: 1,
            call: SyncCall::Syncfs,
        });
        write(&mut log, 1, &file, 4, b"-lost");
        roll(dir.path(), &log).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"kept");
    }

    #[test]
    fn a_file_renamed_after_its_write_is_found_by_its_inode() {
        let (dir, file) = setup();
        let mut log = Vec::new();
        write(&mut log, 0, &file, 0, b"lost");
        let renamed = dir.path().join("data/renamed");
        fs::rename(&file, &renamed).unwrap();
        let rollback = roll(dir.path(), &log).unwrap();
        assert_eq!(fs::read(&renamed).unwrap(), b"");
        assert_eq!(rollback.undone_total(), 1);
    }

    #[test]
    fn a_cut_tail_is_dropped_and_a_writable_mapping_is_refused() {
        let (dir, file) = setup();
        let mut log = Vec::new();
        write(&mut log, 0, &file, 0, b"x");
        let mut bytes = journal::encode(&log);
        let whole = bytes.len();
        bytes.extend(&journal::encode(&log)[..7]);
        let (records, cut) = journal::parse(&bytes).unwrap();
        assert!(cut);
        assert_eq!(records, log);
        assert_eq!(
            journal::parse(&bytes[..whole]).unwrap(),
            (log.clone(), false)
        );
        log.push(Record::Unmodelled {
            file: id(&file),
            path: file.display().to_string(),
        });
        let refused = roll(dir.path(), &log).unwrap_err();
        assert!(refused.contains("does not cover"), "{refused}");
    }
}
