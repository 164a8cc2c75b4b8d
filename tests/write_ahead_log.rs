//! The data directory on the write-ahead log (`syncd serve
//! --write-ahead-log`): what a crash at each point leaves, what damage to
//! the log or the applied state does, and the migration of a directory of
//! the format before the log.
//!
//! - Crash points (debug builds have them: `SYNCD_CRASH_AT=POINT:N`, see
//!   `src/replica/failpoint.rs`): a put whose entry is committed but not
//!   applied, or applied but not yet in sled, is there exactly once after
//!   the restart, and its retry (same put id) is answered with the same
//!   item.
//! - A torn last record (a write the crash cut short: bytes after the last
//!   complete record) starts and serves everything acknowledged; a record
//!   damaged before the tail refuses to start with one line naming the
//!   file; a log that lost entries the applied state has is refused.
//! - A lost applied state (sled's files deleted) is rebuilt from the log
//!   while the log holds every entry.
//! - A directory written without the log is migrated in place.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::rpc::open_channel;
use common::{run_bounded, Syncd};
use syncd::proto::v1::{
    put_response, queues_client::QueuesClient, sessions_client::SessionsClient,
    CreateSessionRequest, DescribeQueueRequest, PutRequest,
};
use tonic::transport::Channel;

const QUEUE: &str = "wal";
/// Exit code of syncd when the data directory cannot be used.
const EXIT_DATA: i32 = 3;

fn env(write_ahead_log: bool, crash_at: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![(
        "SYNCD_WRITE_AHEAD_LOG".to_owned(),
        write_ahead_log.to_string(),
    )];
    if let Some(point) = crash_at {
        env.push(("SYNCD_CRASH_AT".to_owned(), point.to_owned()));
    }
    env
}

fn start(data: &Path, env: &[(String, String)]) -> Syncd {
    Syncd::start_in(data, &[], env)
}

async fn session(channel: &Channel) -> u64 {
    let request = CreateSessionRequest {
        ttl_ms: 60_000,
        client_name: "wal-test".into(),
    };
    let mut sessions = SessionsClient::new(channel.clone());
    sessions
        .create(request)
        .await
        .expect("session")
        .into_inner()
        .session_id
}

/// One put with a put id; `None` when the server went away before it
/// answered.
async fn put(channel: &Channel, session_id: u64, n: u64) -> Option<u64> {
    let request = PutRequest {
        session_id,
        name: QUEUE.into(),
        value: format!("item {n}").into_bytes(),
        put_id: n,
        ..PutRequest::default()
    };
    let mut stream = QueuesClient::new(channel.clone())
        .put(request)
        .await
        .ok()?
        .into_inner();
    loop {
        match stream.message().await.ok()??.event? {
            put_response::Event::Stored(stored) => return Some(stored.item_id),
            put_response::Event::Queued(_) => continue,
        }
    }
}

async fn ready(channel: &Channel) -> u64 {
    let request = DescribeQueueRequest { name: QUEUE.into() };
    let queue = QueuesClient::new(channel.clone()).describe(request).await;
    queue.expect("describe").into_inner().ready
}

/// The newest chunk file of the log.
fn newest_chunk(data: &Path) -> PathBuf {
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .expect("log/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    chunks.sort();
    chunks.pop().expect("a chunk file")
}

/// Runs syncd on `data` expecting a refusal: exit 3 and one line.
fn refused(data: &Path) -> String {
    let output = run_bounded(
        Command::new(common::syncd_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("SYNCD_WRITE_AHEAD_LOG", "true")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(EXIT_DATA), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    stderr
}

/// Puts until the crash point stops syncd; returns the session, the items
/// the server answered, and the put id it did not answer (the one in the
/// entry it crashed on).
async fn puts_until_the_crash(syncd: &Syncd) -> (u64, Vec<u64>, u64) {
    let channel = open_channel(syncd).await;
    let session_id = session(&channel).await;
    let mut answered = Vec::new();
    for n in 1..=100 {
        match put(&channel, session_id, n).await {
            Some(item_id) => answered.push(item_id),
            None => return (session_id, answered, n),
        }
    }
    panic!("the crash point was never reached");
}

/// A crash at `point`, the 5th time it is passed: the entries with steps
/// are the restart's Resume, the session, then one per put, so it is the
/// third put's. That put is stored exactly once after the restart (its
/// entry was committed: the replay applies it), a second replay does not
/// apply it again, and its retry (same session, same put id) is answered
/// without storing it twice.
async fn crash_at_keeps_the_committed_put_once(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut syncd = start(&data, &env(true, Some(&format!("{point}:5"))));
    let (session_id, answered, unanswered) = puts_until_the_crash(&syncd).await;
    assert_eq!((answered.len(), unanswered), (2, 3), "{answered:?}");
    syncd.kill9(); // Reaps the aborted process.
    syncd.set_env(&env(true, None));
    syncd.restart();
    let channel = open_channel(&syncd).await;
    assert_eq!(ready(&channel).await, 3, "the committed put was replayed");
    drop(channel);
    syncd.kill9();
    syncd.restart();
    let channel = open_channel(&syncd).await;
    assert_eq!(ready(&channel).await, 3, "a replayed entry is applied once");
    let retried = put(&channel, session_id, unanswered)
        .await
        .expect("retry answered");
    assert!(
        answered.iter().all(|&item| item < retried),
        "{retried} {answered:?}"
    );
    assert_eq!(ready(&channel).await, 3, "the retry stored nothing new");
    syncd.terminate();
}

#[tokio::test]
async fn a_crash_between_commit_and_apply_keeps_the_put() {
    crash_at_keeps_the_committed_put_once("apply").await;
}

#[tokio::test]
async fn a_crash_between_apply_and_the_state_write_keeps_the_put() {
    crash_at_keeps_the_committed_put_once("state-write").await;
}

/// Puts `count` items and stops syncd with SIGKILL.
async fn acknowledged_then_killed(syncd: &mut Syncd, count: u64) -> Vec<u64> {
    let channel = open_channel(syncd).await;
    let session_id = session(&channel).await;
    let mut items = Vec::new();
    for n in 1..=count {
        items.push(put(&channel, session_id, n).await.expect("put answered"));
    }
    drop(channel);
    syncd.kill9();
    items
}

/// A crash in the middle of writing a record leaves the first bytes of
/// it. The test makes one: it notes the log's length, makes one more put
/// (whose records are then the log's last bytes), and after the kill
/// appends the first few bytes of those records again: the start of a
/// record (its header says it is longer) that the crash cut short. (The
/// log store's own tests cut the log at every kind of point.)
#[tokio::test]
async fn a_torn_last_record_starts_and_serves_everything_acknowledged() {
    for torn in [1usize, 5, 9, 13] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut syncd = start(&data, &env(true, None));
        let channel = open_channel(&syncd).await;
        let session_id = session(&channel).await;
        let mut items = Vec::new();
        for n in 1..=20 {
            items.push(put(&channel, session_id, n).await.expect("put answered"));
        }
        let chunk_path = newest_chunk(&data);
        let before = std::fs::metadata(&chunk_path).unwrap().len() as usize;
        items.push(put(&channel, session_id, 21).await.expect("put answered"));
        drop(channel);
        syncd.kill9();
        let bytes = std::fs::read(&chunk_path).unwrap();
        assert!(
            bytes.len() > before + torn,
            "the last put wrote {} bytes",
            bytes.len() - before
        );
        let mut chunk = std::fs::OpenOptions::new()
            .append(true)
            .open(&chunk_path)
            .unwrap();
        chunk.write_all(&bytes[before..before + torn]).unwrap();
        drop(chunk);
        syncd.restart();
        let channel = open_channel(&syncd).await;
        assert_eq!(
            ready(&channel).await,
            items.len() as u64,
            "torn {torn} bytes"
        );
        let session_id = session(&channel).await;
        put(&channel, session_id, 1_000)
            .await
            .expect("writes go on");
        syncd.terminate();
    }
}

#[tokio::test]
async fn a_record_damaged_before_the_tail_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut syncd = start(&data, &env(true, None));
    acknowledged_then_killed(&mut syncd, 20).await;
    let chunk = newest_chunk(&data);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&chunk, &bytes).unwrap();
    let said = refused(&data);
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
    assert!(said.contains(&name), "{said}");
}

#[tokio::test]
async fn a_log_that_lost_entries_the_applied_state_has_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut syncd = start(&data, &env(true, None));
    acknowledged_then_killed(&mut syncd, 5).await;
    // A clean stop makes the applied state durable up to the last entry.
    syncd.restart();
    syncd.terminate();
    std::fs::remove_file(newest_chunk(&data)).unwrap();
    let said = refused(&data);
    assert!(said.contains("the log lost entries"), "{said}");
}

#[tokio::test]
async fn a_lost_applied_state_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut syncd = start(&data, &env(true, None));
    let items = acknowledged_then_killed(&mut syncd, 10).await;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "db" || name == "conf" || name.starts_with("snap.") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    syncd.restart();
    let channel = open_channel(&syncd).await;
    assert_eq!(ready(&channel).await, items.len() as u64);
}

#[tokio::test]
async fn a_directory_of_the_format_before_the_log_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut syncd = start(&data, &env(false, None));
    let items = acknowledged_then_killed(&mut syncd, 10).await;
    assert!(!data.join("log").exists());
    syncd.set_env(&env(true, None));
    syncd.restart();
    let channel = open_channel(&syncd).await;
    assert_eq!(ready(&channel).await, items.len() as u64);
    let session_id = session(&channel).await;
    let next = put(&channel, session_id, 500).await.expect("put");
    assert!(
        items.iter().all(|&item| item < next),
        "item ids go on rising"
    );
    syncd.terminate();
    let marker = std::fs::read_to_string(data.join("syncd-state")).unwrap();
    assert!(
        marker.starts_with("syncd data directory, format 2"),
        "{marker}"
    );
    assert!(data.join("log").is_dir());
    // The store without the log refuses it, saying what to do.
    let output = run_bounded(
        Command::new(common::syncd_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .env("SYNCD_WRITE_AHEAD_LOG", "false")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_DATA), "{stderr}");
    assert!(
        stderr.contains("start syncd with --write-ahead-log"),
        "{stderr}"
    );
    // Again, now as a directory of the new format.
    syncd.restart();
    let channel = open_channel(&syncd).await;
    assert_eq!(ready(&channel).await, items.len() as u64 + 1);
}
