//! A log closed cleanly opens with everything it held; a log directory has
//! one opener at a time.

use openraft::storage::RaftLogStorage;
use openraft::Vote;

use super::{all_entries, append_flushed, entries, log_id, open, small_chunks, Store};
use crate::replica::log_store::{Durability, LogStoreOptions};

async fn reopen_keeps_everything(options: LogStoreOptions) {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new_committed(3, 2);
    {
        let mut store = open(dir.path(), options.clone());
        store.save_vote(&Vote::new(2, 1)).await.expect("first vote");
        store.save_vote(&vote).await.expect("second vote");
        append_flushed(&store, entries(1, 0..=10))
            .await
            .expect("append 0..=10");
        append_flushed(&store, entries(2, 11..=20))
            .await
            .expect("append 11..=20");
        store
            .save_committed(Some(log_id(2, 15)))
            .await
            .expect("committed");
        store.purge(log_id(1, 5)).await.expect("purge");
        store.truncate(log_id(2, 18)).await.expect("truncate");
    }

    let mut store = open(dir.path(), options);
    assert_eq!(Some(vote), store.read_vote().await.expect("vote"));
    assert_eq!(
        Some(log_id(2, 15)),
        store.read_committed().await.expect("committed")
    );
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(Some(log_id(1, 5)), state.last_purged_log_id);
    assert_eq!(Some(log_id(2, 17)), state.last_log_id);
    let mut want = entries(1, 6..=10);
    want.extend(entries(2, 11..=17));
    assert_eq!(want, all_entries(&mut store).await);
    let stats = store.probe().stats().await.expect("open").expect("stats");
    assert_eq!(
        (Some(6), Some(17), Some(5)),
        (stats.first_index, stats.last_index, stats.purged_index)
    );
    assert!(
        stats.disk_bytes > 0 && stats.disk_free_bytes > 0,
        "{stats:?}"
    );

    // The reopened log goes on where it ended.
    append_flushed(&store, entries(3, 18..=19))
        .await
        .expect("append after reopen");
    assert_eq!(
        Some(log_id(3, 19)),
        store.get_log_state().await.expect("state").last_log_id
    );
}

#[tokio::test]
async fn reopen_after_a_clean_stop_keeps_vote_entries_committed_and_purged() {
    reopen_keeps_everything(LogStoreOptions::default()).await;
}

#[tokio::test]
async fn reopen_keeps_everything_without_durability_and_across_chunks() {
    reopen_keeps_everything(LogStoreOptions {
        durability: Durability::None,
        ..small_chunks()
    })
    .await;
}

#[tokio::test]
async fn a_fully_purged_log_reopens_empty_at_its_purge_point() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut store = open(dir.path(), small_chunks());
        append_flushed(&store, entries(1, 0..=40))
            .await
            .expect("append");
        store
            .purge(log_id(1, 50))
            .await
            .expect("purge past the end");
    }
    let mut store = open(dir.path(), small_chunks());
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(
        (Some(log_id(1, 50)), Some(log_id(1, 50))),
        (state.last_purged_log_id, state.last_log_id)
    );
    assert!(all_entries(&mut store).await.is_empty());
    append_flushed(&store, entries(2, 51..=52))
        .await
        .expect("append after the purge point");
}

#[test]
fn a_second_opener_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open(dir.path(), LogStoreOptions::default());
    let second = Store::open(dir.path(), LogStoreOptions::default());
    let error = second.expect_err("the directory is already open");
    assert_eq!(std::io::ErrorKind::WouldBlock, error.kind());
    assert!(error.to_string().contains("already open"), "{error}");
    drop(first);
    open(dir.path(), LogStoreOptions::default());
}
