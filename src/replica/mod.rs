//! Replication: syncd's state machine on a Raft log (openraft 0.9).
//!
//! openraft's types stay inside this module; the rest of syncd sees
//! commands to propose and entries that were applied.
//!
//! - [`log_store`]: the write-ahead log (raft-log) behind openraft's
//!   `RaftLogStorage`.

pub mod log_store;
