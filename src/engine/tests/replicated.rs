//! The engine on the write-ahead log keeps the promises of the engine on
//! sled: state survives a clean stop and a crash, concurrent commands share
//! entries, a waiter that leaves leaves nothing behind, shutdown ends waits.

use std::path::Path;

use tokio_stream::StreamExt;

use super::{acquire, create_session, describe, eventually, granted_token, release, session};
use crate::core::{Code, Reply};
use crate::engine::{start_replicated, EngineConfig, EngineHandle};

async fn open(dir: &Path) -> EngineHandle {
    let (engine, _task) = start_replicated(dir, EngineConfig::default())
        .await
        .expect("the engine starts");
    engine
}

#[tokio::test]
async fn holds_and_tokens_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let owner = session(&engine).await;
    let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    engine.shutdown().await;

    let engine = open(dir.path()).await;
    let holder = describe(&engine).await.holder.expect("still held");
    assert_eq!((holder.session_id, holder.fencing_token), (owner, held));
    let other = session(&engine).await;
    assert!(other > owner, "session ids are never reused");
    assert_eq!(engine.call(release(owner, held)).await, Ok(Reply::Done));
    let next = granted_token(&mut engine.wait(|w| acquire(other, w)).await).await;
    assert!(next > held, "token {next} after {held}");
    engine.shutdown().await;
}

/// A runtime dropped without a shutdown stops every task where it is: the
/// applied state is not made durable, so the next start replays the log.
#[test]
fn holds_and_tokens_survive_a_crash_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = || tokio::runtime::Runtime::new().unwrap();
    let (owner, held) = runtime().block_on(async {
        let engine = open(dir.path()).await;
        let owner = session(&engine).await;
        let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
        (owner, held)
    });
    runtime().block_on(async {
        let engine = open(dir.path()).await;
        let holder = describe(&engine).await.holder.expect("still held");
        assert_eq!((holder.session_id, holder.fencing_token), (owner, held));
        let other = session(&engine).await;
        assert!(other > owner);
        engine.shutdown().await;
    });
}

#[tokio::test]
async fn concurrent_commands_share_entries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(create_session()).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
    engine.shutdown().await;
    let entries = crate::replica::log_entries_on_disk(dir.path()).await;
    assert!(
        entries < 100,
        "{entries} entries for 200 commands: no batching"
    );
}

#[tokio::test]
async fn a_dropped_waiter_leaves_the_queue_and_an_unread_grant_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let owner = session(&engine).await;
    let other = session(&engine).await;
    let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    let mut waiting = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        waiting.next().await,
        Some(Ok(Reply::Queued { position: 1 }))
    ));
    drop(waiting);
    eventually(|| async { describe(&engine).await.waiters.is_empty() }).await;

    let mut waiting = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        waiting.next().await,
        Some(Ok(Reply::Queued { .. }))
    ));
    assert_eq!(engine.call(release(owner, held)).await, Ok(Reply::Done));
    eventually(|| async { describe(&engine).await.holder.is_some() }).await;
    drop(waiting);
    eventually(|| async { describe(&engine).await.holder.is_none() }).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_waits_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let owner = session(&engine).await;
    let other = session(&engine).await;
    granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    let mut waiting = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        waiting.next().await,
        Some(Ok(Reply::Queued { .. }))
    ));
    engine.shutdown().await;
    let end = waiting.next().await;
    assert!(
        matches!(&end, Some(Err(r)) if r.code == Code::Unavailable),
        "{end:?}"
    );
    let after = engine.call(create_session()).await;
    assert!(matches!(after, Err(r) if r.code == Code::Unavailable));
}

/// Many snapshots and purges: the log is cut behind each, the state stays
/// whole, and a crash after them (the applied state replayed from the last
/// durable point) and a clean restart both find it.
#[test]
fn snapshots_purge_the_log_and_keep_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        snapshot_every_entries: 20,
        ..EngineConfig::default()
    };
    let runtime = || tokio::runtime::Runtime::new().unwrap();
    let (owner, held, sessions) = runtime().block_on(async {
        let (engine, _task) = start_replicated(dir.path(), config.clone()).await.unwrap();
        let owner = session(&engine).await;
        let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
        let mut sessions = vec![owner];
        // One at a time: one entry each, 300 entries, 15 snapshots.
        for _ in 0..300 {
            sessions.push(session(&engine).await);
        }
        (owner, held, sessions)
    });
    runtime().block_on(async {
        let (engine, _task) = start_replicated(dir.path(), config.clone()).await.unwrap();
        let holder = describe(&engine).await.holder.expect("still held");
        assert_eq!((holder.session_id, holder.fencing_token), (owner, held));
        let listed = engine
            .query(crate::core::Query::ListSessions {
                after_session_id: 0,
                limit: 1_000,
            })
            .await;
        let Ok(Reply::SessionList(listed)) = listed else {
            panic!("{listed:?}");
        };
        assert_eq!(listed.len(), sessions.len());
        engine.shutdown().await;
    });
    let kept = runtime().block_on(crate::replica::log_entries_on_disk(dir.path()));
    assert!(kept < 100, "{kept} entries kept: the log was not purged");
    runtime().block_on(async {
        let (engine, _task) = start_replicated(dir.path(), config).await.unwrap();
        let holder = describe(&engine).await.holder.expect("still held");
        assert_eq!(holder.fencing_token, held);
        engine.shutdown().await;
    });
}
