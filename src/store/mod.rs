//! Persistence: where the core's [`Change`]s go.
//!
//! The engine calls [`Store::write`] once per batch of commands with all of
//! their changes, then [`Store::flush`] once (group commit), and only then
//! sends the batch's replies. A store applies one `write` atomically: after a
//! crash either all of a batch's changes are there or none.

mod memory;
mod sled;

use std::fmt;
use std::future::Future;

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

/// A key-value store for the state's records.
pub trait Store: Send + 'static {
    /// Every stored record, in key order.
    fn load(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
    /// Applies all changes atomically (not necessarily durable yet).
    fn write(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
