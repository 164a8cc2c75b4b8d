//! The replicated log under the core (DESIGN.md, "Replication").
//!
//! syncd is a replicated state machine, also as a single node: every change
//! of state is an entry of a log (the leader's time plus a batch of commands
//! and the identities they act as), and every node applies the committed
//! entries, in order, to the pure [`crate::core::State`]. What is here turns
//! commands into entries and back, keeps the log on disk and drives the
//! consensus engine (openraft). openraft's types stay inside this module:
//! the rest of the code sees "propose this command, get its outcome" and
//! "these entries were applied".
//!
//! - [`codec`]: the entry format (`syncd.log.v1`) and its mapping to commands;
//! - [`log_store`]: the write-ahead log (raft-log) behind openraft's
//!   `RaftLogStorage`.

pub mod codec;
pub mod log_store;
