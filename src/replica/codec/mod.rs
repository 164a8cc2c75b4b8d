//! The log entry format: [`Entry`] ⇄ the protobuf `syncd.log.v1.Entry`
//! (`proto/syncd/log/v1/entry.proto`).
//!
//! An entry is the whole input of one step of the state machine: the
//! leader's `now_ms` and a batch of commands, each with the identity it acts
//! as. Applying it means ticking the core at `now_ms`, then applying each
//! step at `now_ms` in order; an entry without steps is a pure tick.
//!
//! # Policy
//! - What is on disk never depends on the core's Rust types: every logged
//!   [`Command`] variant has its own protobuf message, and the entry carries
//!   a format number ([`FORMAT`]).
//! - Decoding refuses rather than guesses. Another format number, a step
//!   without a command (or with one this build does not know), an enum
//!   value this build does not know, a missing settings message, or bytes
//!   this build does not read (fields of a newer writer) are each an error:
//!   a node stops rather than apply something else than the leader meant.
//! - Encoding is an exhaustive `match` over [`Command`], so a new variant
//!   does not compile until it has a message here.
//! - Read-only requests are not commands ([`crate::core::Query`]): they
//!   are never logged.
//!
//! # Invariants
//! - `decode(&encode(e)?) == Ok(e)` for every entry `encode` accepts.
//! - What `encode` writes is canonical protobuf (prost's encoding, fields in
//!   tag order, default scalars left out), so a decoded entry re-encodes to
//!   exactly as many bytes as were read; `decode` checks that.

mod from_proto;
#[cfg(test)]
mod tests;
mod to_proto;

use std::fmt;

use prost::Message;

use crate::core::Command;
use crate::engine::Identity;
use crate::proto::log as pb;

/// The entry format this build writes and the only one it reads.
pub const FORMAT: u32 = 1;

/// One entry of the log: the input of one step of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The leader's clock when it appended the entry; the time every node
    /// applies it at.
    pub now_ms: u64,
    /// The commands, applied in this order after the tick.
    pub steps: Vec<Step>,
}

/// One command and the identity it acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What [`crate::engine::EngineHandle::acting_as`] carries: `None` when
    /// the server checks no tokens. Never empty (token names are not).
    pub identity: Option<Identity>,
    pub command: Command,
}

/// Why an entry could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// `Some("")` as an identity: the format writes "no identity" as empty,
    /// so it could not be told apart from `None`.
    EmptyIdentity,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::EmptyIdentity => {
                write!(f, "an empty identity cannot be logged (it reads as none)")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Why bytes are not an entry this build can apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not protobuf of the entry's shape (truncated, bad wire type, invalid
    /// UTF-8 in a string…).
    Malformed(prost::DecodeError),
    /// Another format number than [`FORMAT`].
    Format(u32),
    /// Step `index` (from 0) cannot be applied.
    Step { index: usize, problem: StepProblem },
    /// The entry holds fields this build does not read (a newer writer), or
    /// is not written the way this build writes it.
    Unread {
        entry_bytes: usize,
        read_bytes: usize,
    },
}

/// What is wrong with one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepProblem {
    /// No command, or one this build's protobuf does not know.
    NoCommand,
    /// An enum field with a value this build does not know, or unspecified.
    EnumValue { field: &'static str, value: i32 },
    /// A message that must be there is absent.
    Missing(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(e) => write!(f, "log entry is not valid protobuf: {e}"),
            DecodeError::Format(found) => write!(
                f,
                "log entry has format {found}; this build reads only format {FORMAT}"
            ),
            DecodeError::Step { index, problem } => {
                write!(f, "log entry step {index}: {problem}")
            }
            DecodeError::Unread {
                entry_bytes,
                read_bytes,
            } => write!(
                f,
                "log entry has {entry_bytes} bytes but this build reads only {read_bytes} \
                 of them (fields of a newer format?)"
            ),
        }
    }
}

impl fmt::Display for StepProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepProblem::NoCommand => {
                write!(f, "no command, or a command unknown to this build")
            }
            StepProblem::EnumValue { field, value } => {
                write!(f, "{field} has value {value}, unknown to this build")
            }
            StepProblem::Missing(field) => write!(f, "{field} is missing"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The bytes of `entry` in the log.
pub fn encode(entry: &Entry) -> Result<Vec<u8>, EncodeError> {
    let steps = entry
        .steps
        .iter()
        .map(to_proto::step)
        .collect::<Result<Vec<_>, _>>()?;
    let message = pb::Entry {
        format: FORMAT,
        now_ms: entry.now_ms,
        steps,
    };
    Ok(message.encode_to_vec())
}

/// The entry `bytes` hold, or why this build must not apply them.
pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let message = pb::Entry::decode(bytes).map_err(DecodeError::Malformed)?;
    if message.format != FORMAT {
        return Err(DecodeError::Format(message.format));
    }
    // prost skips fields it does not know; what it kept re-encodes to fewer
    // bytes than it read. Measured before the steps are taken apart.
    let read_bytes = message.encoded_len();
    let entry = from_proto::entry(message)?;
    if read_bytes != bytes.len() {
        return Err(DecodeError::Unread {
            entry_bytes: bytes.len(),
            read_bytes,
        });
    }
    Ok(entry)
}
