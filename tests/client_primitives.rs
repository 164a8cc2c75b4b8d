//! The client library's semaphore, read-write lock, event, condition and
//! barrier handles against the real server, with one client (and so one
//! session) per party. Waits are observed through `describe`, never guessed
//! with sleeps; the long timeouts only stop a hung test.

mod common;

use std::time::Duration;

use common::rpc::{answer, kill9_and_restart, until};
use common::Syncd;
use syncd::client::{Client, Error, RwMode};
use tonic::Code;

/// How long a wait that should succeed may take: only there to stop a hang.
const LONG: Duration = Duration::from_secs(60);

/// A wait that must time out: nobody will ever answer it.
const SHORT: Duration = Duration::from_millis(200);

async fn connect(syncd: &Syncd) -> Client {
    common::rpc::client(syncd, "client-primitives-test").await
}

async fn clients(syncd: &Syncd, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(connect(syncd).await);
    }
    clients
}

#[tokio::test]
async fn a_semaphore_of_two_lets_a_third_client_in_after_a_release() {
    let syncd = Syncd::start();
    let [a, b, c] = <[Client; 3]>::try_from(clients(&syncd, 3).await).unwrap();
    let first = a.semaphore("pool", 2).acquire(1).await.unwrap();
    let second = b.semaphore("pool", 2).acquire(1).await.unwrap();
    assert!(second.fencing_token() > first.fencing_token());
    assert!(c
        .semaphore("pool", 2)
        .try_acquire(1)
        .await
        .unwrap()
        .is_none());

    let third = tokio::spawn({
        let semaphore = c.semaphore("pool", 2);
        async move { semaphore.acquire_timeout(1, LONG).await }
    });
    let pool = a.semaphore("pool", 2);
    until("the third client waits", async || {
        pool.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    assert!(!third.is_finished(), "no permit was free");

    let second_token = second.fencing_token();
    second.release().await.unwrap();
    let third = answer(third).await.expect("granted after the release");
    assert!(third.fencing_token() > second_token);
    assert_eq!(third.permits(), 1);
    assert_eq!(third.session_id(), c.session_id());
    let state = pool.describe().await.unwrap();
    assert_eq!((state.capacity, state.permits_held), (2, 2));
    let tokens: Vec<u64> = state.holders.iter().map(|h| h.fencing_token).collect();
    assert!(tokens.contains(&first.fencing_token()) && tokens.contains(&third.fencing_token()));
}

#[tokio::test]
async fn a_dropped_semaphore_guard_gives_its_permits_back() {
    let syncd = Syncd::start();
    let [a, b] = <[Client; 2]>::try_from(clients(&syncd, 2).await).unwrap();
    let guard = a.semaphore("one", 1).acquire(1).await.unwrap();
    // Another capacity is refused at once with the server's reason, not
    // taken for a lost session and retried.
    let mismatch = b.semaphore("one", 3).try_acquire(1).await.unwrap_err();
    match &mismatch {
        Error::Status(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert!(status.message().contains("capacity 1"), "{mismatch}");
        }
        other => panic!("expected a status, got {other:?}"),
    }

    let waiter = tokio::spawn({
        let semaphore = b.semaphore("one", 1);
        async move { semaphore.acquire_timeout(1, LONG).await }
    });
    let one = a.semaphore("one", 1);
    until("b waits", async || {
        one.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    drop(guard);
    let next = answer(waiter).await.expect("granted after the drop");
    next.release().await.unwrap();
    until("the semaphore is free", async || {
        one.describe().await.unwrap().permits_held == 0
    })
    .await;
}

#[tokio::test]
async fn readers_share_an_rwlock_and_a_writer_excludes_them() {
    let syncd = Syncd::start();
    let [a, b, c] = <[Client; 3]>::try_from(clients(&syncd, 3).await).unwrap();
    let reader_a = a.rwlock("cfg").read().await.unwrap();
    let reader_b = b.rwlock("cfg").try_read().await.unwrap().expect("shared");
    assert_eq!(reader_b.mode(), RwMode::Read);
    assert!(c.rwlock("cfg").try_write().await.unwrap().is_none());

    let writer = tokio::spawn({
        let rwlock = c.rwlock("cfg");
        async move { rwlock.write_timeout(LONG).await }
    });
    let cfg = a.rwlock("cfg");
    until("the writer waits", async || {
        cfg.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    // Fair: a waiting writer keeps new readers out.
    assert!(a.rwlock("cfg").try_read().await.unwrap().is_none());

    let last_read = reader_b.fencing_token();
    reader_a.release().await.unwrap();
    reader_b.release().await.unwrap();
    let writer = answer(writer)
        .await
        .expect("granted after the readers left");
    assert_eq!(writer.mode(), RwMode::Write);
    assert!(writer.fencing_token() > last_read);
    assert!(b.rwlock("cfg").try_read().await.unwrap().is_none());
    writer.release().await.unwrap();
    let reader = b.rwlock("cfg").try_read().await.unwrap();
    assert!(reader.is_some(), "free again after the writer");
}

#[tokio::test]
async fn setting_an_event_wakes_another_clients_wait() {
    let syncd = Syncd::start();
    let [a, b] = <[Client; 2]>::try_from(clients(&syncd, 2).await).unwrap();
    let go = b.event("go");
    let timed_out = go.wait_timeout(SHORT).await.unwrap_err();
    assert!(matches!(timed_out, Error::Timeout(_)), "{timed_out}");

    let waiter = tokio::spawn({
        let go = go.clone();
        async move { go.wait().await }
    });
    until("b waits", async || {
        go.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    assert_eq!(a.event("go").set().await.unwrap(), 1);
    answer(waiter).await.expect("woken by set");
    assert!(go.is_set().await.unwrap());
    go.wait_timeout(Duration::ZERO)
        .await
        .expect("set: returns at once");
    a.event("go").clear().await.unwrap();
    assert!(!go.is_set().await.unwrap());
}

#[tokio::test]
async fn a_condition_wait_gives_up_its_lock_and_takes_it_again_when_notified() {
    let syncd = Syncd::start();
    let [a, b] = <[Client; 2]>::try_from(clients(&syncd, 2).await).unwrap();
    let mut guard = a.lock("m").acquire().await.unwrap();
    let first_token = guard.fencing_token();
    let waiter = tokio::spawn({
        let ready = a.condition("ready");
        async move {
            let waited = ready.wait(&mut guard).await;
            (waited, guard)
        }
    });
    let ready = b.condition("ready");
    until("a waits on the condition", async || {
        ready.describe().await.unwrap().waiters.len() == 1
    })
    .await;

    // The wait gave the lock up: b can take it, and notify while holding it.
    let held_by_b = b.lock("m").try_acquire().await.unwrap().expect("free");
    assert_eq!(ready.notify(1).await.unwrap(), 1);
    let b_token = held_by_b.fencing_token();
    held_by_b.release().await.unwrap();
    let (waited, guard) = answer(waiter).await;
    waited.expect("notified and taken again");
    assert!(guard.fencing_token() > b_token && b_token > first_token);
    let holder = b.lock("m").describe().await.unwrap().holder.unwrap();
    assert_eq!(holder.fencing_token, guard.fencing_token());
    guard
        .release()
        .await
        .expect("the guard holds the lock again");
}

#[tokio::test]
async fn a_condition_wait_that_times_out_still_holds_the_lock() {
    let syncd = Syncd::start();
    let a = connect(&syncd).await;
    let mut guard = a.lock("m").acquire().await.unwrap();
    let before = guard.fencing_token();
    let notified = a
        .condition("never")
        .wait_timeout(&mut guard, SHORT)
        .await
        .unwrap();
    assert!(!notified, "nobody notified");
    assert!(guard.fencing_token() > before);
    let holder = a.lock("m").describe().await.unwrap().holder.unwrap();
    assert_eq!(holder.fencing_token, guard.fencing_token());
    guard.release().await.unwrap();
}

#[tokio::test]
async fn three_parties_pass_a_barrier_together() {
    let syncd = Syncd::start();
    let parties = clients(&syncd, 3).await;
    let waits: Vec<_> = parties
        .iter()
        .map(|client| {
            let barrier = client.barrier("meet", 3);
            tokio::spawn(async move { barrier.wait_timeout(LONG).await })
        })
        .collect();
    let mut passed = Vec::new();
    for wait in waits {
        passed.push(answer(wait).await.expect("all three arrived"));
    }
    let mut indexes: Vec<u32> = passed.iter().map(|p| p.arrival_index).collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);
    assert!(passed.iter().all(|p| p.generation == passed[0].generation));
}

#[tokio::test]
async fn a_party_that_times_out_breaks_the_barrier_until_reset() {
    let syncd = Syncd::start();
    let [a, b, c] = <[Client; 3]>::try_from(clients(&syncd, 3).await).unwrap();
    let patient = tokio::spawn({
        let barrier = a.barrier("gate", 3);
        async move { barrier.wait_timeout(LONG).await }
    });
    let gate = c.barrier("gate", 3);
    until("a waits at the barrier", async || {
        gate.describe().await.unwrap().waiters.len() == 1
    })
    .await;

    let impatient = b.barrier("gate", 3).wait_timeout(SHORT).await.unwrap_err();
    assert!(matches!(impatient, Error::Timeout(_)), "{impatient}");
    let broken = answer(patient).await.unwrap_err();
    assert!(matches!(broken, Error::Broken(_)), "{broken}");
    let late = gate.wait_timeout(LONG).await.unwrap_err();
    assert!(matches!(late, Error::Broken(_)), "{late}");
    let state = gate.describe().await.unwrap();
    assert!(state.broken);
    assert_eq!(state.generation, 1, "the broken generation 0 counts");

    assert_eq!(gate.reset().await.unwrap(), 0, "nobody was waiting");
    assert!(!gate.describe().await.unwrap().broken);
    let waits: Vec<_> = [&a, &b, &c]
        .into_iter()
        .map(|client| {
            let barrier = client.barrier("gate", 3);
            tokio::spawn(async move { barrier.wait_timeout(LONG).await })
        })
        .collect();
    for wait in waits {
        let passed = answer(wait).await.expect("mended by reset");
        assert_eq!(passed.generation, 1);
    }
}

#[tokio::test]
async fn semaphore_and_rwlock_holds_set_events_and_barrier_state_survive_kill9() {
    let syncd = Syncd::start();
    let holder = connect(&syncd).await;
    let permits = holder.semaphore("s", 3).acquire(2).await.unwrap();
    let read = holder.rwlock("rw").read().await.unwrap();
    holder.event("ready").set().await.unwrap();
    // One barrier that passed once, one that a party broke.
    holder.barrier("passed", 1).wait().await.unwrap();
    let hasty = holder
        .barrier("broken", 2)
        .wait_timeout(Duration::ZERO)
        .await;
    assert!(matches!(hasty, Err(Error::Timeout(_))), "{hasty:?}");
    let before = permits.fencing_token().max(read.fencing_token());

    let syncd = kill9_and_restart(syncd).await;

    let semaphore = holder.semaphore("s", 3).describe().await.unwrap();
    assert_eq!((semaphore.capacity, semaphore.permits_held), (3, 2));
    assert_eq!(semaphore.holders[0].fencing_token, permits.fencing_token());
    let rwlock = holder.rwlock("rw").describe().await.unwrap();
    assert_eq!(rwlock.holders.len(), 1);
    assert!(holder.event("ready").is_set().await.unwrap());
    let passed = holder.barrier("passed", 0).describe().await.unwrap();
    assert_eq!(
        (passed.parties, passed.generation, passed.broken),
        (1, 1, false)
    );
    let broken = holder.barrier("broken", 0).describe().await.unwrap();
    assert_eq!(
        (broken.parties, broken.generation, broken.broken),
        (2, 1, true)
    );

    // Only one permit is free; the restored holds still count.
    let other = connect(&syncd).await;
    assert!(other
        .semaphore("s", 3)
        .try_acquire(2)
        .await
        .unwrap()
        .is_none());
    assert!(other.rwlock("rw").try_write().await.unwrap().is_none());
    other
        .event("ready")
        .wait_timeout(LONG)
        .await
        .expect("set survived");
    let one = other
        .semaphore("s", 3)
        .try_acquire(1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        one.fencing_token() > before,
        "tokens only grow across restarts"
    );
    permits.release().await.expect("release after restart");
    read.release().await.expect("release after restart");
    other
        .rwlock("rw")
        .try_write()
        .await
        .unwrap()
        .expect("free after release");
}
