//! Group commit, and when a flush is reported in each durability mode.

use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::Vote;

use super::{all_entries, append_flushed, append_in_flight, entries, entry, open, Store};
use crate::replica::log_store::{Durability, LogStats, LogStoreOptions};

async fn stats(store: &Store) -> LogStats {
    store
        .probe()
        .stats()
        .await
        .expect("store open")
        .expect("stats")
}

/// `appends` single-entry appends issued back to back, as openraft does (it
/// awaits `append`, not the flush), then all their flushes awaited.
async fn appends_in_flight(store: &Store, appends: u64) -> LogStats {
    let mut flushes = Vec::new();
    for index in 0..appends {
        flushes.push(
            append_in_flight(store, vec![entry(1, index)])
                .await
                .expect("append"),
        );
    }
    for flush in flushes {
        flush.await.expect("flush reported").expect("flushed");
    }
    stats(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_share_fdatasyncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A long batch window, so sharing does not depend on this machine's
    // speed: every append issued within 20 ms of a batch's first joins it.
    let options = LogStoreOptions {
        flush_batch_wait: Duration::from_millis(20),
        ..LogStoreOptions::default()
    };
    let store = open(dir.path(), options);
    let appends = 2000;
    let started = Instant::now();
    let stats = appends_in_flight(&store, appends).await;
    eprintln!(
        "20 ms window: {appends} appends in {:?}: {stats:?}",
        started.elapsed()
    );
    assert_eq!(appends, stats.flush_requests);
    assert!(stats.fdatasyncs >= 1, "{stats:?}");
    assert!(
        stats.fdatasyncs * 4 <= appends,
        "fewer fdatasyncs than appends: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_window_every_flush_syncs_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = LogStoreOptions {
        flush_batch_wait: Duration::ZERO,
        ..LogStoreOptions::default()
    };
    let store = open(dir.path(), options);
    let appends = 200;
    let started = Instant::now();
    let in_flight = appends_in_flight(&store, appends).await;
    eprintln!(
        "no window: {appends} appends in flight in {:?}: {in_flight:?}",
        started.elapsed()
    );
    assert_eq!(
        appends, in_flight.fdatasyncs,
        "raft-log batches only within its window"
    );

    let started = Instant::now();
    for index in appends..appends + 100 {
        append_flushed(&store, vec![entry(1, index)])
            .await
            .expect("append");
    }
    let after = stats_delta(&in_flight, &stats(&store).await);
    eprintln!(
        "no window: 100 awaited appends in {:?}: {after:?}",
        started.elapsed()
    );
    assert_eq!(100, after.fdatasyncs);
}

fn stats_delta(before: &LogStats, after: &LogStats) -> LogStats {
    LogStats {
        flush_requests: after.flush_requests - before.flush_requests,
        flush_batches: after.flush_batches - before.flush_batches,
        fdatasyncs: after.fdatasyncs - before.fdatasyncs,
        ..after.clone()
    }
}

#[tokio::test]
async fn with_sync_durability_a_flush_is_reported_after_its_fdatasync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), LogStoreOptions::default());
    append_flushed(&store, entries(1, 0..=2))
        .await
        .expect("append");
    assert_eq!(1, stats(&store).await.fdatasyncs);
}

#[tokio::test]
async fn with_no_durability_a_flush_is_reported_before_its_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The syncer waits a minute: the test sees the state before it acts.
    let options = LogStoreOptions {
        durability: Durability::None,
        unsynced_sync_delay: Duration::from_secs(60),
        ..LogStoreOptions::default()
    };
    let mut store = open(dir.path(), options.clone());
    append_flushed(&store, entries(1, 0..=2))
        .await
        .expect("append");
    let before_vote = stats(&store).await;
    assert_eq!((1, 0), (before_vote.flush_batches, before_vote.fdatasyncs));

    // A vote is synced whatever the durability.
    store.save_vote(&Vote::new(1, 1)).await.expect("vote");
    assert_eq!(1, stats(&store).await.fdatasyncs);

    // Closing syncs the rest (without waiting for the syncer's minute).
    append_flushed(&store, entries(1, 3..=4))
        .await
        .expect("append");
    drop(store);
    let mut store = open(dir.path(), options);
    assert_eq!(entries(1, 0..=4), all_entries(&mut store).await);
}

#[tokio::test]
async fn with_no_durability_the_sync_follows_soon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = LogStoreOptions {
        durability: Durability::None,
        unsynced_sync_delay: Duration::from_millis(10),
        ..LogStoreOptions::default()
    };
    let store = open(dir.path(), options);
    append_flushed(&store, entries(1, 0..=2))
        .await
        .expect("append");
    // Only to stop a hung test: the sync is due 10 ms after the write.
    let give_up = Instant::now() + Duration::from_secs(60);
    while stats(&store).await.fdatasyncs == 0 {
        assert!(
            Instant::now() < give_up,
            "no sync followed the unsynced write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
