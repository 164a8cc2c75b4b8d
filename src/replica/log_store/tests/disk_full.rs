//! What a full disk (ENOSPC) does to the log. It needs a small file system
//! to fill, so it runs only by hand, as root:
//!
//! ```text
//! mkdir -p /tmp/syncd-full && mount -t tmpfs -o size=4m tmpfs /tmp/syncd-full
//! SYNCD_FULL_DISK_DIR=/tmp/syncd-full cargo test --lib disk_full -- --ignored --nocapture
//! umount /tmp/syncd-full
//! ```

use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{Entry, EntryPayload, RaftLogReader, Vote};

use super::{all_entries, append_flushed, append_in_flight, last_index, log_id, TestConfig};
use crate::replica::log_store::{LogStore, LogStoreOptions};

const ENTRY_BYTES: usize = 64 * 1024;

fn big_entry(index: u64) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(vec![index as u8; ENTRY_BYTES]),
    }
}

/// Appends until the disk refuses; the last acknowledged index, and what failed.
async fn fill(store: &LogStore<TestConfig>) -> (Option<u64>, String) {
    let mut acked = None;
    for index in 0.. {
        let flush = match append_in_flight(store, vec![big_entry(index)]).await {
            Ok(flush) => flush,
            Err(e) => return (acked, format!("append of {index} failed: {e}")),
        };
        match flush.await {
            Ok(Ok(())) => acked = Some(index),
            Ok(Err(e)) => {
                return (
                    acked,
                    format!("the flush of {index} reported {:?}: {e}", e.kind()),
                );
            }
            Err(_) => {
                return (
                    acked,
                    format!("the flush of {index} was dropped unreported"),
                )
            }
        }
    }
    unreachable!("a disk of finite size fills")
}

async fn fill_and_recover(root: &Path, options: LogStoreOptions) {
    let dir = root.join("log");
    let filler = root.join("filler");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&filler);
    std::fs::write(&filler, vec![1u8; 8 * ENTRY_BYTES]).expect("space to give back later");

    eprintln!(
        "--- chunk files of at most {} bytes",
        options.chunk_bytes_max
    );
    let mut store = LogStore::<TestConfig>::open(&dir, options.clone()).expect("open");
    let (acked, failure) = fill(&store).await;
    let acked = acked.expect("some entries fit");
    eprintln!("{failure}; the last acknowledged entry is {acked}");
    let next = acked + 2;
    let again = append_flushed(&store, vec![big_entry(next)]).await;
    eprintln!("another append on the full disk: {again:?}");
    eprintln!(
        "a vote on the full disk: {:?}",
        store.save_vote(&Vote::new(1, 1)).await
    );
    let read = store
        .try_get_log_entries(0..)
        .await
        .map(|entries| entries.len());
    eprintln!("a read on the failed store: {read:?}");
    eprintln!("its stats: {:?}", store.probe().stats().await);

    std::fs::remove_file(&filler).expect("give space back");
    let after_space = append_flushed(&store, vec![big_entry(next + 1)]).await;
    eprintln!("an append on the same store once space is back: {after_space:?}");
    assert!(
        after_space.is_err(),
        "the store refuses writes after a failed flush"
    );
    drop(store);

    let mut store = LogStore::<TestConfig>::open(&dir, options).expect("reopen once space is back");
    let last = last_index(&mut store).await.expect("entries survive");
    eprintln!("reopened: the log ends at {last} (last acknowledged: {acked})");
    assert!(last >= acked, "every acknowledged entry survives");
    let held = all_entries(&mut store).await;
    assert_eq!(
        (0..=last).collect::<Vec<_>>(),
        held.iter().map(|e| e.log_id.index).collect::<Vec<_>>()
    );
    append_flushed(&store, vec![big_entry(last + 1)])
        .await
        .expect("append after the reopen");
    eprintln!("an append after the reopen: ok");
}

#[tokio::test]
#[ignore = "needs SYNCD_FULL_DISK_DIR, a small file system to fill (see the module doc)"]
async fn a_full_disk_fails_the_flush_and_a_reopen_recovers() {
    // Shows what the reopen cut off.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let root = std::env::var("SYNCD_FULL_DISK_DIR").expect("SYNCD_FULL_DISK_DIR");
    let root = Path::new(&root);
    fill_and_recover(root, LogStoreOptions::default()).await;
    // Small chunks: the disk may also fill while a new chunk file is begun.
    fill_and_recover(
        root,
        LogStoreOptions {
            chunk_bytes_max: 200 * 1024,
            ..LogStoreOptions::default()
        },
    )
    .await;
}
