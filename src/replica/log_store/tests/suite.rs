//! openraft's own storage test suite, on the log store, in both durability
//! modes.

use std::time::Instant;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};

use super::memory_sm::MemoryStateMachine;
use super::{Store, TestConfig};
use crate::replica::log_store::{Durability, LogStoreOptions};

struct Builder {
    options: LogStoreOptions,
}

impl StoreBuilder<TestConfig, Store, MemoryStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, Store, MemoryStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let store = Store::open(dir.path(), self.options.clone())
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, store, MemoryStateMachine::default()))
    }
}

fn run_suite(options: LogStoreOptions) {
    let started = Instant::now();
    let described = format!(
        "{:?}, chunks of {} bytes",
        options.durability, options.chunk_bytes_max
    );
    if let Err(e) = Suite::test_all(Builder { options }) {
        panic!("openraft's suite with {described}: {e}");
    }
    eprintln!("openraft's suite with {described}: {:?}", started.elapsed());
}

#[test]
fn openraft_suite_passes_with_sync_durability() {
    run_suite(LogStoreOptions::default());
}

#[test]
fn openraft_suite_passes_with_no_durability() {
    run_suite(LogStoreOptions {
        durability: Durability::None,
        ..LogStoreOptions::default()
    });
}

#[test]
fn openraft_suite_passes_across_many_small_chunks() {
    // Chunks of 256 bytes close every few records, so the suite's purges
    // delete files and its reads cross chunk boundaries.
    run_suite(LogStoreOptions {
        chunk_bytes_max: 256,
        ..LogStoreOptions::default()
    });
}
