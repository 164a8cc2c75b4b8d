//! A data directory that cannot be trusted is refused: syncd exits with
//! code 3 and one clear line on stderr, never prints `listening on`, and
//! does not write into the directory, so that whoever looks at it next (a
//! person, a backup restore) finds it as it was. A fresh directory still
//! starts.
//!
//! "Does not write" is checked at two strengths. sled 0.34 has no read-only
//! mode and writes on every open (recovery extends `db` to a full segment
//! and replaces its `snap.*` file), so once syncd has opened sled, the
//! files cannot stay byte-for-byte the same. Hence:
//! - damage syncd can see before it opens sled (the marker file is there
//!   but `db` is empty or gone): every file's size and mtime must stay the
//!   same, and nothing may be created;
//! - damage only sled or the decoder can see: the records (as sled reads
//!   them from a copy of the directory) and every other file (the marker
//!   `syncd-state`, sled's `conf`) must stay the same; sled's own
//!   housekeeping of `db` and `snap.*` may change.
//!
//! These are the checks of the store without the write-ahead log (sled
//! alone, today's default): every syncd here runs on it, whatever the
//! environment says (see [`sled_alone`]). On the log, a lost or damaged
//! sled is rebuilt from the log, and damage to the log is refused: see
//! `tests/write_ahead_log.rs`.
//!
//! Damage covered: sled's `db` file truncated to half, emptied to zero
//! bytes, or deleted (the marker file `syncd-state` says there was state);
//! and records that sled reads fine but syncd cannot decode (a garbage
//! value under a real key prefix, an unknown key), written with the `sled`
//! crate directly while syncd is stopped.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use common::rpc::open_channel;
use common::{Syncd, HANG_GUARD};
use syncd::proto::v1::{
    acquire_lock_response, acquire_semaphore_response, events_client::EventsClient,
    locks_client::LocksClient, semaphores_client::SemaphoresClient,
    sessions_client::SessionsClient, system_client::SystemClient, AcquireLockRequest,
    AcquireSemaphoreRequest, ClearEventRequest, CreateSessionRequest, ListRequest, SetEventRequest,
};

/// Exit code of syncd when the data directory cannot be used.
const EXIT_DATA: i32 = 3;

/// Starts syncd on a fresh directory, leaves some state in it (a session, a
/// held lock, a semaphore hold, a set event), and stops it cleanly. The
/// returned `Syncd` owns the temporary directory; keep it while testing.
/// Pins every syncd of this test binary to the store without the log:
/// `SYNCD_WRITE_AHEAD_LOG` is how the whole suite is run on the log, and
/// these checks are of the other store. (Every test sets the same value,
/// so tests running at once agree.)
fn sled_alone() {
    std::env::set_var("SYNCD_WRITE_AHEAD_LOG", "false");
}

async fn stopped_with_state() -> Syncd {
    sled_alone();
    let mut syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let owner = SessionsClient::new(channel.clone())
        .create(CreateSessionRequest {
            ttl_ms: 60_000,
            client_name: "data-dir-test".into(),
        })
        .await
        .expect("session")
        .into_inner()
        .session_id;
    // Batches that leave no record, so that the first half of sled's log
    // holds complete batches from before the grants below, however large a
    // record is: a cut at half keeps those and loses the grants.
    let mut events = EventsClient::new(channel.clone());
    for _ in 0..8 {
        let warm_up = || "warm-up".to_owned();
        events
            .set(SetEventRequest { name: warm_up() })
            .await
            .expect("set");
        events
            .clear(ClearEventRequest { name: warm_up() })
            .await
            .expect("clear");
    }
    let mut lock = LocksClient::new(channel.clone())
        .acquire(AcquireLockRequest {
            session_id: owner,
            name: "precious".into(),
            timeout_ms: Some(0),
            acquire_id: 0,
        })
        .await
        .expect("lock")
        .into_inner();
    let granted = common::rpc::next(&mut lock).await.event;
    assert!(
        matches!(granted, Some(acquire_lock_response::Event::Granted(_))),
        "{granted:?}"
    );
    let mut permits = SemaphoresClient::new(channel.clone())
        .acquire(AcquireSemaphoreRequest {
            session_id: owner,
            name: "slots".into(),
            capacity: 3,
            permits: 2,
            timeout_ms: Some(0),
            acquire_id: 0,
        })
        .await
        .expect("semaphore")
        .into_inner();
    let granted = common::rpc::next(&mut permits).await.event;
    assert!(
        matches!(granted, Some(acquire_semaphore_response::Event::Granted(_))),
        "{granted:?}"
    );
    EventsClient::new(channel.clone())
        .set(SetEventRequest {
            name: "ready".into(),
        })
        .await
        .expect("set event");
    drop((lock, permits, channel));
    let syncd = tokio::task::spawn_blocking(move || {
        let status = syncd.terminate();
        assert_eq!(status.code(), Some(0), "a clean stop");
        syncd
    })
    .await
    .expect("stop syncd");
    let data = syncd.data_dir();
    assert!(data.join("db").is_file(), "sled keeps its log in `db`");
    assert!(data.join("syncd-state").is_file(), "the marker file");
    syncd
}

/// Every file and directory under `dir` with its size and mtime.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut found = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let len = if meta.is_dir() { 0 } else { meta.len() };
        found.insert(path.clone(), (len, meta.modified().expect("mtime")));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                todo.push(entry.expect("dir entry").path());
            }
        }
    }
    found
}

/// Runs `syncd serve` on `dir` (bounded). Fails the test at once if syncd
/// prints `listening on` (it must not serve this directory). Returns the
/// exit code and stderr.
fn run_syncd(dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(common::syncd_bin())
        .env("SYNCD_WRITE_AHEAD_LOG", "false")
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncd");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        if let Ok(line) = lines.try_recv() {
            if line.starts_with("listening on") {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "syncd started serving {}: {line:?}; stderr: {stderr}",
                    dir.display()
                );
            }
        }
        if let Some(status) = child.try_wait().expect("wait for syncd") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("syncd neither served nor exited within {HANG_GUARD:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = stderr.join().expect("stderr reader");
    for line in lines.try_iter() {
        assert!(!line.starts_with("listening on"), "syncd printed {line:?}");
    }
    (status.code(), stderr)
}

/// How unchanged a refused directory must be (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Untouched {
    /// Every file's size and mtime, and no file created or removed.
    Files,
    /// The records (as sled reads them from a copy), and every file but
    /// sled's `db` and `snap.*`.
    Records,
}

/// Runs syncd on a damaged directory and checks that it refuses it: exit
/// code 3, exactly one line on stderr that contains every one of `words`,
/// and the directory left as it was (to the given strength).
fn assert_refused(dir: &Path, words: &[&str], untouched: Untouched) {
    let before = snapshot(dir);
    let records_before = (untouched == Untouched::Records).then(|| records(dir));
    let (code, stderr) = run_syncd(dir);
    println!(
        "syncd on {}: exit {code:?}, stderr: {stderr}",
        dir.display()
    );
    assert_eq!(code, Some(EXIT_DATA), "exit code; stderr: {stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(line.starts_with("syncd: "), "{line:?}");
    for word in words {
        assert!(line.contains(word), "{word:?} is not in {line:?}");
    }
    let after = snapshot(dir);
    let mut changed = changes(&before, &after);
    if let Some(records_before) = records_before {
        // sled's own housekeeping on open: `db` (extended to a segment),
        // `snap.*` (replaced), and so the directory's mtime.
        let sled_housekeeping = |path: &Path| {
            let name = path.file_name().and_then(|n| n.to_str());
            path == dir || name == Some("db") || name.is_some_and(|n| n.starts_with("snap."))
        };
        changed.retain(|(path, _)| !sled_housekeeping(path));
        let records_after = records(dir);
        if records_after != records_before {
            let what = format!(
                "records before: {:?}; after: {:?}",
                keys(&records_before),
                keys(&records_after)
            );
            changed.push((dir.to_path_buf(), what));
        }
    }
    let changed: Vec<String> = (changed.iter())
        .map(|(path, what)| format!("{}: {what}", path.display()))
        .collect();
    assert_eq!(
        changed,
        Vec::<String>::new(),
        "syncd wrote into the directory it refused ({untouched:?})"
    );
}

/// The records of a data directory as sled reads them, from a copy (sled
/// writes on open, and the directory itself must not change).
fn records(dir: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dir(dir, copy.path());
    let db = sled::open(copy.path()).expect("sled opens the copy");
    let records = db
        .iter()
        .map(|entry| {
            let (k, v) = entry.expect("read record");
            (k.to_vec(), v.to_vec())
        })
        .collect();
    drop(db);
    records
}

/// The stored counters record, decoded.
fn counters(records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Option<syncd::proto::store::Counters> {
    use prost::Message;
    let value = records.get(b"meta/counters".as_slice())?;
    syncd::proto::store::Counters::decode(value.as_slice()).ok()
}

fn keys(records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
    (records.keys())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// What differs between two snapshots, one line per path.
fn changes(
    before: &BTreeMap<PathBuf, (u64, SystemTime)>,
    after: &BTreeMap<PathBuf, (u64, SystemTime)>,
) -> Vec<(PathBuf, String)> {
    let mut changed = Vec::new();
    for (path, was) in before {
        let what = match after.get(path) {
            None => "removed".to_owned(),
            Some(now) if now.0 != was.0 => format!("size {} -> {}", was.0, now.0),
            Some(now) if now.1 != was.1 => "modified (same size)".to_owned(),
            Some(_) => continue,
        };
        changed.push((path.clone(), what));
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            changed.push((path.clone(), format!("created ({} bytes)", now.0)));
        }
    }
    changed
}

/// Opens the stopped syncd's sled database directly (the default tree, as
/// `store/sled.rs` uses it), inserts one record, flushes, and closes it.
fn insert_raw(dir: &Path, key: &[u8], value: &[u8]) {
    let db = sled::open(dir).expect("open syncd's sled database");
    db.insert(key, value).expect("insert");
    db.flush().expect("flush");
    drop(db);
}

#[tokio::test]
async fn a_db_file_truncated_to_half_is_refused() {
    let syncd = stopped_with_state().await;
    let db = syncd.data_dir().join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    let whole = records(syncd.data_dir());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    println!("db cut from {len} to {} bytes", len / 2);
    // What sled makes of the cut log: it takes a torn tail for a crash in
    // the middle of a write and recovers the records before it, silently.
    let cut = records(syncd.data_dir());
    println!(
        "records before the cut: {:?} ({:?}); sled recovers: {:?} ({:?})",
        keys(&whole),
        counters(&whole),
        keys(&cut),
        counters(&cut)
    );
    assert_refused(
        syncd.data_dir(),
        &["counters went back", "changes were lost"],
        Untouched::Records,
    );
}

#[tokio::test]
async fn a_db_file_emptied_to_zero_bytes_under_the_marker_is_refused() {
    let syncd = stopped_with_state().await;
    let db = syncd.data_dir().join("db");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&db)
        .unwrap();
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    assert_refused(syncd.data_dir(), &["empty", "refusing"], Untouched::Files);
}

#[tokio::test]
async fn a_deleted_db_file_under_the_marker_is_refused() {
    let syncd = stopped_with_state().await;
    std::fs::remove_file(syncd.data_dir().join("db")).unwrap();
    assert_refused(syncd.data_dir(), &["empty", "refusing"], Untouched::Files);
}

#[tokio::test]
async fn a_garbage_record_under_a_real_key_prefix_is_refused_naming_the_key() {
    let syncd = stopped_with_state().await;
    // `hold/` + an 8-byte token (printable, so the message shows it as is),
    // and a value that is no protobuf at all (an endless varint).
    insert_raw(syncd.data_dir(), b"hold/GARBAGE!", &[0xff; 11]);
    assert_refused(
        syncd.data_dir(),
        &["hold/GARBAGE!", "invalid"],
        Untouched::Records,
    );
}

#[tokio::test]
async fn an_unknown_key_is_refused_naming_the_key() {
    let syncd = stopped_with_state().await;
    insert_raw(syncd.data_dir(), b"mystery/key", b"whatever");
    assert_refused(
        syncd.data_dir(),
        &["mystery/key", "unknown key"],
        Untouched::Records,
    );
}

/// The control for the tests above: the same state, undamaged, is served
/// again after a restart (so the refusals are about the damage).
#[tokio::test]
async fn an_undamaged_directory_starts_again_with_its_state() {
    let mut syncd = stopped_with_state().await;
    let syncd = tokio::task::spawn_blocking(move || {
        syncd.restart();
        syncd
    })
    .await
    .expect("restart");
    let channel = open_channel(&syncd).await;
    let mut names: Vec<String> = SystemClient::new(channel)
        .list(ListRequest {
            kind: String::new(),
            prefix: String::new(),
        })
        .await
        .expect("list")
        .into_inner()
        .primitives
        .into_iter()
        .map(|p| format!("{} {}", p.kind, p.name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["event ready", "lock precious", "semaphore slots"]
    );
}

#[tokio::test]
async fn a_fresh_directory_starts_and_stops_cleanly() {
    sled_alone();
    // A directory that does not exist yet (syncd creates it) ...
    let mut syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    SystemClient::new(channel.clone())
        .ping(syncd::proto::v1::PingRequest {})
        .await
        .expect("ping");
    drop(channel);
    let status = tokio::task::spawn_blocking(move || syncd.terminate())
        .await
        .expect("stop");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");

    // ... and one that exists but is empty.
    let empty = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(common::syncd_bin())
        .arg("serve")
        .arg("--data")
        .arg(empty.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn syncd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(HANG_GUARD).unwrap_or_default();
    assert!(line.starts_with("listening on"), "first line: {line:?}");
    common::send_signal(child.id(), "TERM");
    let status = common::wait_bounded(&mut child, HANG_GUARD).expect("syncd exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}
