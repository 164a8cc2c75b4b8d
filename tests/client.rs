//! The Rust client library against the real server: try/timeout semantics,
//! guards released on drop, cancelled acquires that leave nothing behind,
//! close releasing everything, and a session that survives a server restart.

mod common;

use std::time::Duration;

use common::Syncd;
use syncd::client::{Client, ClientOptions, Error};

async fn connect(syncd: &Syncd) -> Client {
    let options = ClientOptions {
        session_ttl: Duration::from_secs(10),
        client_name: "client-test".into(),
        ..ClientOptions::default()
    };
    Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect")
}

async fn eventually_free(client: &Client, name: &str) {
    let lock = client.lock(name);
    for _ in 0..5_000 {
        let state = lock.describe().await.expect("describe");
        if state.holder.is_none() && state.waiters.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("lock {name} never became free");
}

#[tokio::test]
async fn try_and_timeout_report_a_held_lock() {
    let syncd = Syncd::start();
    let (a, b) = (connect(&syncd).await, connect(&syncd).await);
    let guard = a.lock("t").try_acquire().await.unwrap().expect("free lock");
    assert!(b.lock("t").try_acquire().await.unwrap().is_none());
    let timed_out = b
        .lock("t")
        .acquire_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(timed_out, Error::Timeout(_)), "{timed_out}");
    let description = b.lock("t").describe().await.unwrap();
    assert_eq!(
        description.holder.unwrap().fencing_token,
        guard.fencing_token()
    );
    assert!(description.waiters.is_empty(), "a timed-out wait left");
    let token = guard.fencing_token();
    guard.release().await.unwrap();
    let next = b.lock("t").try_acquire().await.unwrap().expect("released");
    assert!(next.fencing_token() > token);
}

#[tokio::test]
async fn a_dropped_guard_is_released() {
    let syncd = Syncd::start();
    let (a, b) = (connect(&syncd).await, connect(&syncd).await);
    let guard = a.lock("d").acquire().await.unwrap();
    let waiter = tokio::spawn({
        let lock = b.lock("d");
        async move { lock.acquire_timeout(Duration::from_secs(60)).await }
    });
    drop(guard);
    let next = waiter.await.unwrap().expect("granted after the drop");
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_nothing_behind() {
    let syncd = Syncd::start();
    let (a, b) = (connect(&syncd).await, connect(&syncd).await);
    let guard = a.lock("c").acquire().await.unwrap();
    // The caller's own timeout drops the acquire future while it waits.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), b.lock("c").acquire()).await;
    assert!(gave_up.is_err(), "the lock was held: the acquire must wait");
    guard.release().await.unwrap();
    // Neither a waiter nor a forgotten hold of b's session blocks the lock.
    eventually_free(&a, "c").await;
    let again = a
        .lock("c")
        .acquire_timeout(Duration::from_secs(60))
        .await
        .expect("free again");
    again.release().await.unwrap();
}

#[tokio::test]
async fn close_releases_every_hold() {
    let syncd = Syncd::start();
    let (a, b) = (connect(&syncd).await, connect(&syncd).await);
    let _one = a.lock("x").acquire().await.unwrap();
    let _two = a.lock("y").acquire().await.unwrap();
    a.clone().close().await.unwrap();
    for name in ["x", "y"] {
        let lock = b.lock(name);
        let guard = lock
            .try_acquire()
            .await
            .unwrap()
            .expect("released by close");
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn the_session_and_its_hold_survive_a_server_restart() {
    let mut syncd = Syncd::start();
    let client = connect(&syncd).await;
    let session = client.session_id();
    let guard = client.lock("r").acquire().await.unwrap();
    let mut syncd = tokio::task::spawn_blocking(move || {
        syncd.kill9();
        syncd.restart();
        syncd
    })
    .await
    .unwrap();
    // Same session, same hold; the release goes through after reconnecting.
    let state = client
        .lock("r")
        .describe()
        .await
        .expect("describe after restart");
    assert_eq!(state.holder.unwrap().session_id, session);
    guard.release().await.expect("release after restart");
    assert_eq!(client.session_id(), session);
    let other = connect(&syncd).await;
    other.lock("r").try_acquire().await.unwrap().expect("free");
    syncd.kill9();
}
