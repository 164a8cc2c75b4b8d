//! The engine's promises: replies wait for the flush, concurrent turns share
//! flushes, state survives a restart over the same store, and a waiter that
//! goes away leaves nothing behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use tokio_stream::StreamExt;

use super::*;
use crate::core::lock::LockInfo;
use crate::store::{MemoryStore, Record};

mod replicated;

/// A memory store whose flush blocks until the test lets it through.
struct GatedStore {
    inner: MemoryStore,
    gate: Mutex<std_mpsc::Receiver<()>>,
    flushes: Arc<AtomicUsize>,
}

impl Store for GatedStore {
    fn load(&self) -> Result<Vec<Record>, StoreError> {
        self.inner.load()
    }

    fn write(&mut self, changes: &[core::Change]) -> Result<(), StoreError> {
        self.inner.write(changes)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // A closed gate (the test is over) lets everything through.
        let _ = self.gate.lock().unwrap().recv();
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn gated() -> (GatedStore, std_mpsc::Sender<()>, Arc<AtomicUsize>) {
    let (open, gate) = std_mpsc::channel();
    let flushes = Arc::new(AtomicUsize::new(0));
    let store = GatedStore {
        inner: MemoryStore::new(),
        gate: Mutex::new(gate),
        flushes: flushes.clone(),
    };
    (store, open, flushes)
}

fn create_session() -> Command {
    Command::CreateSession {
        ttl_ms: 10_000,
        client_name: "test".into(),
        host: String::new(),
        owner: String::new(),
    }
}

async fn session(engine: &EngineHandle) -> u64 {
    match engine.call(create_session()).await {
        Ok(Reply::SessionCreated { session_id, .. }) => session_id,
        other => panic!("expected a session, got {other:?}"),
    }
}

fn acquire(session_id: u64, waiter: WaiterId) -> Command {
    Command::LockAcquire {
        session_id,
        name: "l".into(),
        waiter,
        timeout_ms: None,
        acquire_id: 0,
    }
}

fn release(session_id: u64, fencing_token: u64) -> Command {
    Command::Release {
        kind: crate::core::Kind::Lock,
        session_id,
        name: "l".into(),
        fencing_token,
    }
}

/// A fresh engine where one session holds lock "l" and another waits for
/// it (its stream has seen `Queued` at position 1). Returns the engine, its
/// task, the holder's session and token, and the waiting stream.
async fn held_and_waiting() -> (
    EngineHandle,
    JoinHandle<std::result::Result<(), StoreError>>,
    u64,
    u64,
    WaitStream,
) {
    let (engine, task) = start(MemoryStore::new(), EngineConfig::default()).unwrap();
    let owner = session(&engine).await;
    let other = session(&engine).await;
    let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    let mut waiting = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        waiting.next().await,
        Some(Ok(Reply::Queued { position: 1 }))
    ));
    (engine, task, owner, held, waiting)
}

async fn describe(engine: &EngineHandle) -> LockInfo {
    match engine.query(Query::LockDescribe { name: "l".into() }).await {
        Ok(Reply::LockDescription(info)) => info,
        other => panic!("expected a description, got {other:?}"),
    }
}

async fn granted_token(stream: &mut WaitStream) -> u64 {
    loop {
        match stream.next().await {
            Some(Ok(Reply::Granted { fencing_token })) => return fencing_token,
            Some(Ok(Reply::Queued { .. })) => continue,
            other => panic!("expected a grant, got {other:?}"),
        }
    }
}

/// Polls `check` until it holds; the bound only stops a hung test.
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..5_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn replies_wait_until_their_changes_are_flushed() {
    let (store, open, flushes) = gated();
    let (engine, _task) = start(store, EngineConfig::default()).unwrap();
    let created = tokio::spawn({
        let engine = engine.clone();
        async move { engine.call(create_session()).await }
    });
    // A read after the change is held too: it could reveal the change.
    let listed = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .query(Query::List {
                    kind: None,
                    prefix: String::new(),
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!created.is_finished(), "replied before the flush");
    assert!(!listed.is_finished(), "a later read overtook the flush");
    assert_eq!(flushes.load(Ordering::SeqCst), 0);

    open.send(()).unwrap();
    let reply = created.await.unwrap();
    assert!(
        matches!(reply, Ok(Reply::SessionCreated { .. })),
        "{reply:?}"
    );
    assert!(listed.await.unwrap().is_ok());
    assert_eq!(flushes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_commands_share_flushes() {
    let (store, open, flushes) = gated();
    let (engine, _task) = start(store, EngineConfig::default()).unwrap();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(create_session()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(open); // Let every flush through from now on.
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
    let flushes = flushes.load(Ordering::SeqCst);
    assert!(
        flushes < 50,
        "{flushes} flushes for 50 commands: no group commit"
    );
}

#[tokio::test]
async fn holds_and_tokens_survive_a_restart_over_the_same_store() {
    let store = MemoryStore::new();
    let (engine, task) = start(store.clone(), EngineConfig::default()).unwrap();
    let owner = session(&engine).await;
    let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    engine.shutdown().await;
    task.await.unwrap().unwrap();

    let (engine, _task) = start(store, EngineConfig::default()).unwrap();
    let holder = describe(&engine).await.holder.expect("still held");
    assert_eq!((holder.session_id, holder.fencing_token), (owner, held));
    let other = session(&engine).await;
    assert!(other > owner, "session ids are never reused");
    assert_eq!(engine.call(release(owner, held)).await, Ok(Reply::Done));
    let next = granted_token(&mut engine.wait(|w| acquire(other, w)).await).await;
    assert!(next > held);
}

#[tokio::test]
async fn a_restart_ends_the_stored_waits_before_serving() {
    let store = MemoryStore::new();
    let (engine, task) = start(store.clone(), EngineConfig::default()).unwrap();
    let owner = session(&engine).await;
    let other = session(&engine).await;
    let held = granted_token(&mut engine.wait(|w| acquire(owner, w)).await).await;
    let mut waiting = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        waiting.next().await,
        Some(Ok(Reply::Queued { .. }))
    ));
    engine.shutdown().await;
    task.await.unwrap().unwrap();
    let stored_waiters = |store: &MemoryStore| {
        let records = store.load().unwrap();
        (records.iter())
            .filter(|(key, _)| key.starts_with(b"waiter/"))
            .count()
    };
    assert_eq!(stored_waiters(&store), 1, "the waiter is stored");

    // `start` returns once Resume's changes are written: the wait is over.
    let (engine, _task) = start(store.clone(), EngineConfig::default()).unwrap();
    assert_eq!(stored_waiters(&store), 0);
    let info = describe(&engine).await;
    assert!(info.waiters.is_empty(), "{info:?}");
    let holder = info.holder.expect("still held");
    assert_eq!((holder.session_id, holder.fencing_token), (owner, held));
    // The waiting session lives on and may wait again.
    let mut again = engine.wait(|w| acquire(other, w)).await;
    assert!(matches!(
        again.next().await,
        Some(Ok(Reply::Queued { position: 1 }))
    ));
}

#[tokio::test]
async fn a_dropped_waiter_leaves_the_queue() {
    let (engine, _task, _, _, waiting) = held_and_waiting().await;
    drop(waiting);
    eventually(|| async { describe(&engine).await.waiters.is_empty() }).await;
}

#[tokio::test]
async fn a_grant_that_was_never_read_is_given_back() {
    let (engine, _task, owner, held, waiting) = held_and_waiting().await;
    assert_eq!(engine.call(release(owner, held)).await, Ok(Reply::Done));
    // The grant now sits unread in the waiter's stream; the client leaves.
    eventually(|| async { describe(&engine).await.holder.is_some() }).await;
    drop(waiting);
    eventually(|| async { describe(&engine).await.holder.is_none() }).await;
}

#[tokio::test]
async fn shutdown_ends_waits_with_unavailable() {
    let (engine, task, _, _, mut waiting) = held_and_waiting().await;
    engine.shutdown().await;
    let end = waiting.next().await;
    assert!(
        matches!(&end, Some(Err(r)) if r.code == Code::Unavailable),
        "{end:?}"
    );
    task.await.unwrap().unwrap();
    let after = engine.call(create_session()).await;
    assert!(matches!(after, Err(r) if r.code == Code::Unavailable));
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_and_cut_off() {
    use crate::core::breaker::{BreakerAction, BreakerSettings};
    let (engine, _task) = start(MemoryStore::new(), EngineConfig::default()).unwrap();
    let s = session(&engine).await;
    let settings = BreakerSettings {
        failure_threshold: 1,
        ..BreakerSettings::default()
    };
    let allow = Command::BreakerAllow {
        session_id: s,
        name: "b".into(),
        settings: Some(settings),
        acquire_id: 0,
    };
    assert!(engine.call(allow).await.is_ok());
    let watch = |waiter| Command::BreakerWatch {
        session_id: s,
        name: "b".into(),
        waiter,
    };
    let mut watching = engine.watch(watch).await;
    // The watcher reads nothing while the breaker changes 100 times.
    for i in 0..100 {
        let action = [BreakerAction::ForceOpen, BreakerAction::ForceClose][i % 2];
        let control = Command::BreakerControl {
            name: "b".into(),
            action,
        };
        assert!(engine.call(control).await.is_ok());
    }
    let mut changes = 0;
    let end = loop {
        match watching.next().await {
            Some(Ok(Reply::BreakerChanged(_))) => changes += 1,
            other => break other,
        }
    };
    assert_eq!(changes, WATCH_BACKLOG_MAX - 1, "the backlog, then why");
    assert!(
        matches!(&end, Some(Err(r)) if r.code == Code::ResourceExhausted),
        "{end:?}"
    );
    assert!(watching.next().await.is_none(), "the stream is over");
    let describe = || Query::BreakerDescribe { name: "b".into() };
    eventually(|| async {
        matches!(engine.query(describe()).await,
            Ok(Reply::BreakerDescription(info)) if info.watchers == 0)
    })
    .await;
}

#[tokio::test]
async fn a_handle_acting_for_an_identity_may_only_use_its_own_sessions() {
    let (engine, _task) = start(MemoryStore::new(), EngineConfig::default()).unwrap();
    let ci = engine.acting_as(Identity::from("ci"));
    let ops = engine.acting_as(Identity::from("ops"));
    let create = Command::CreateSession {
        ttl_ms: 10_000,
        client_name: "test".into(),
        host: String::new(),
        owner: "ci".into(),
    };
    let session_id = match ci.call(create).await {
        Ok(Reply::SessionCreated { session_id, .. }) => session_id,
        other => panic!("expected a session, got {other:?}"),
    };

    let mut held = ci.wait(|waiter| acquire(session_id, waiter)).await;
    let fencing_token = granted_token(&mut held).await;
    // Another identity can neither wait nor release through the session.
    let mut refused = ops.wait(|waiter| acquire(session_id, waiter)).await;
    match refused.next().await {
        Some(Err(rejection)) => assert_eq!(rejection.code, Code::PermissionDenied),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let refused = ops.call(release(session_id, fencing_token)).await;
    assert_eq!(refused.map_err(|r| r.code), Err(Code::PermissionDenied));
    // Nor read its notices: a query that names a session is checked too.
    let notices = Query::PendingNotices { session_id };
    let refused = ops.query(notices.clone()).await;
    assert_eq!(refused.map_err(|r| r.code), Err(Code::PermissionDenied));
    assert_eq!(ci.query(notices).await, Ok(Reply::Notices(Vec::new())));
    // The owner can, and so can a handle that checks no identity (a server
    // without tokens, or an admin closing the session).
    assert_eq!(
        ci.call(release(session_id, fencing_token)).await,
        Ok(Reply::Done)
    );
    let close = Command::CloseSession {
        session_id,
        reason: String::new(),
    };
    assert!(matches!(
        engine.call(close).await,
        Ok(Reply::SessionClosed { .. })
    ));
}

#[tokio::test]
async fn a_lost_hold_notice_is_posted_to_the_sessions_subscribers() {
    let (engine, _task) = start(MemoryStore::new(), EngineConfig::default()).unwrap();
    let session_id = session(&engine).await;
    let bystander = session(&engine).await;
    let subscription = engine.notices_of(session_id);
    let unrelated = engine.notices_of(bystander);
    let mut held = engine.wait(|waiter| acquire(session_id, waiter)).await;
    let fencing_token = granted_token(&mut held).await;
    let revoke = Command::Revoke {
        fencing_token,
        detail: String::new(),
    };
    assert!(matches!(
        engine.call(revoke).await,
        Ok(Reply::Revoked { .. })
    ));
    // Only a hang guard: the post comes with the revoke's own turn.
    tokio::time::timeout(Duration::from_secs(60), subscription.notified())
        .await
        .expect("the holder's session is told");
    let nothing = tokio::time::timeout(Duration::from_millis(50), unrelated.notified()).await;
    assert!(nothing.is_err(), "another session is not told");
}
