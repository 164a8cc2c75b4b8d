//! Opening a log directory: raft-log's recovery, and what we check around it.
//!
//! Policy:
//! - raft-log replays every chunk file. It cuts off a torn record at the end
//!   of the newest file (a write a crash interrupted), and deletes a newest
//!   file whose first record is incomplete; anything else it cannot decode
//!   fails the open. We log what it cut off, file by file.
//! - When the open fails, we look for the first damaged record ourselves
//!   (raft-log's dump) and say which file, at which byte, and what is wrong
//!   with it: raft-log's own message names a chunk id, not a file.
//! - A log whose committed id lies past its last entry lost committed
//!   entries: refused.
//!
//! Invariants:
//! - a log that opens holds every record of every file but a torn tail of
//!   the newest one (the guarded payload header in `records` keeps a damaged
//!   older record from passing for a torn tail).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_log::{ChunkId, Config, DumpApi, RaftLog};

use super::records::WalTypes;
use super::{LogConfig, LogStoreOptions, Wal};

/// Payload bytes a chunk's replay reads at a time.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

pub(super) fn open_wal<C: LogConfig>(dir: &Path, options: &LogStoreOptions) -> io::Result<Wal<C>> {
    create_dir(dir)?;
    let dir_str = dir.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not UTF-8", dir.display()),
        )
    })?;
    let config = Arc::new(raft_config(dir_str, options));
    let sizes_before = chunk_file_sizes(dir)?;
    let log = match RaftLog::<WalTypes<C>>::open(config.clone()) {
        Ok(log) => log,
        Err(e) => return Err(explain_failure::<C>(dir, &config, e)),
    };
    report_cut_tail(dir, &sizes_before)?;
    let state = log.log_state();
    if state.committed() > state.last() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "raft log {}: committed entries are missing: the log ends at {:?} but {:?} \
                 was committed",
                dir.display(),
                state.last(),
                state.committed()
            ),
        ));
    }
    let mut wal = Wal {
        log,
        first_index: None,
    };
    wal.first_index = wal.read_first_index()?;
    Ok(wal)
}

fn raft_config(dir: &str, options: &LogStoreOptions) -> Config {
    let mut config = Config::new(dir);
    config.log_cache_max_items = Some(options.cache_entries_max);
    config.log_cache_capacity = Some(options.cache_bytes_max);
    config.wal.chunk_max_size = Some(options.chunk_bytes_max);
    config.wal.read_buffer_size = Some(REPLAY_READ_BYTES);
    config.wal.flush_batch_wait = Some(options.flush_batch_wait);
    config.wal.truncate_incomplete_record = Some(true);
    config
}

/// Creates `dir` and, when it is new, makes its name durable.
fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn chunk_file_sizes(dir: &Path) -> io::Result<BTreeMap<PathBuf, u64>> {
    let mut sizes = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if raft_log::chunked_wal::Config::parse_chunk_file_name(&name.to_string_lossy()).is_ok() {
            sizes.insert(entry.path(), entry.metadata()?.len());
        }
    }
    Ok(sizes)
}

fn report_cut_tail(dir: &Path, sizes_before: &BTreeMap<PathBuf, u64>) -> io::Result<()> {
    let sizes_after = chunk_file_sizes(dir)?;
    for (path, &before) in sizes_before {
        match sizes_after.get(path) {
            None => tracing::warn!(
                "raft log: removed {} ({before} bytes): a chunk file begun by a rotation that was \
                 interrupted",
                path.display()
            ),
            Some(&after) if after < before => tracing::warn!(
                "raft log: cut {} bytes off the end of {}: a write that was interrupted (a crash, or a failed write such as a full disk)",
                before - after,
                path.display()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Where the first undecodable record is, found by reading every file.
struct Damage {
    path: String,
    offset: u64,
    error: io::Error,
}

fn explain_failure<C: LogConfig>(dir: &Path, config: &Arc<Config>, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        return io::Error::new(
            e.kind(),
            format!(
                "raft log {}: already open in another store or process: {e}",
                dir.display()
            ),
        );
    }
    match find_damage::<C>(config) {
        Ok(Some(damage)) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "raft log {}: {} is damaged at byte {}: {}; raft-log recovers only from a torn \
                 write at the end of the newest file, and this is not one, so the log was not \
                 opened rather than lose the entries after it",
                dir.display(),
                damage.path,
                damage.offset,
                damage.error
            ),
        ),
        Ok(None) | Err(_) => io::Error::new(
            e.kind(),
            format!("raft log {}: cannot open: {e}", dir.display()),
        ),
    }
}

fn find_damage<C: LogConfig>(config: &Arc<Config>) -> io::Result<Option<Damage>> {
    let dump = raft_log::Dump::<WalTypes<C>>::new(config.clone())?;
    let mut ends: BTreeMap<ChunkId, u64> = BTreeMap::new();
    let mut damages = Vec::new();
    dump.write_with(|chunk_id, _, read| {
        match read {
            Ok((segment, _)) => {
                ends.insert(chunk_id, segment.offset + segment.size);
            }
            Err(error) => damages.push((chunk_id, error)),
        }
        Ok(())
    })?;
    // A torn end of the newest file is what raft-log recovers from: it is
    // not why the open failed.
    let newest = ends
        .keys()
        .chain(damages.iter().map(|(chunk_id, _)| chunk_id))
        .max()
        .copied();
    let damage = damages.into_iter().find(|(chunk_id, error)| {
        !(Some(*chunk_id) == newest && error.kind() == io::ErrorKind::UnexpectedEof)
    });
    Ok(damage.map(|(chunk_id, error)| Damage {
        path: config.wal.chunk_path(chunk_id),
        offset: ends.get(&chunk_id).copied().unwrap_or(0),
        error,
    }))
}

/// Bytes free for unprivileged use on the file system holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` only writes the struct it is given, and `path` is a
    // NUL-terminated string that outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between targets (`fsblkcnt_t`, `c_ulong`).
    #[allow(clippy::useless_conversion)]
    let free_bytes = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Ok(free_bytes)
}
