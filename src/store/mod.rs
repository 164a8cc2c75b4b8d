//! Persistence: where the core's [`Change`]s go.
//!
//! The engine's writer thread calls [`Store::write`] with the changes of
//! every turn that queued up while it was busy, as one batch, then
//! [`Store::flush`] once (group commit); only then are those turns' replies
//! sent. A store applies one `write` atomically: after a crash either all of
//! a batch's changes are there or none.
//!
//! The calls block: they run on the writer thread, never on the async
//! runtime.

mod memory;
pub(crate) mod sled;

use std::fmt;

pub use self::memory::MemoryStore;
pub use self::sled::SledStore;
use crate::core::Change;

/// A store failed. The engine stops serving when that happens: its memory
/// and the disk may no longer agree.
#[derive(Debug)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// One stored record: key and encoded value.
pub type Record = (Vec<u8>, Vec<u8>);

/// A key-value store for the state's records.
pub trait Store: Send + 'static {
    /// Every stored record, in key order.
    fn load(&self) -> Result<Vec<Record>, StoreError>;
    /// Applies all changes atomically (not necessarily durable yet).
    fn write(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Bytes the store takes on disk, if it knows (for the metrics).
    fn size_on_disk_bytes(&self) -> Option<u64> {
        None
    }
}
