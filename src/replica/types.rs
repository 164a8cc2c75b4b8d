//! The openraft type configuration of syncd, and what applying an entry
//! gives back on the node that proposed it ([`Applied`]). An entry's payload
//! is the bytes of one `syncd.log.v1.Entry` (see `codec`): encoded once by
//! the proposer, stored in the log as they are, decoded by every node that
//! applies them.

use std::io::Cursor;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::Outcome;
use crate::engine::Event;

/// A node's id in the cluster. syncd runs as node 1 while it is one node.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// syncd's choice of openraft types.
    pub TypeConfig:
        D = Vec<u8>,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one entry gave: a reply per step, in the entry's order,
/// and the effects on other callers (grants and timeouts of waiters), for
/// the node that proposed it to deliver. Blank and membership entries give
/// an empty one.
#[derive(Debug, Default)]
pub struct AppliedEntry {
    pub replies: Vec<Event>,
    /// The outcome of the whole entry (its `changes` already went to the
    /// applied state and are left empty here).
    pub outcome: Outcome,
    /// Whether the entry changed what `List` and `Describe` show.
    pub changed: bool,
    /// How many record changes it wrote to the applied state.
    pub changes: usize,
}

/// openraft's response type for an entry. It never leaves the node that
/// applied the entry (a client's write is answered by the node it was
/// proposed on), so it refuses to be serialized: openraft's `serde` feature
/// asks every response type to be serializable, and a silent empty value
/// would be worse than an error.
#[derive(Debug, Default)]
pub struct Applied(pub Box<AppliedEntry>);

impl Serialize for Applied {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "an applied entry's outcome stays on the node that applied it",
        ))
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "an applied entry's outcome stays on the node that applied it",
        ))
    }
}
