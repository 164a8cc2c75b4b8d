//! An in-memory store for tests: shares its map, so a test can "restart"
//! an engine over the same data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Record, Store, StoreError};
use crate::core::Change;

#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Vec<Record>, StoreError> {
        let records = self.records.lock().expect("memory store poisoned");
        Ok(records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut records = self.records.lock().expect("memory store poisoned");
        for change in changes {
            match change {
                Change::Put { key, value } => {
                    records.insert(key.clone(), value.clone());
                }
                Change::Delete { key } => {
                    records.remove(key);
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
