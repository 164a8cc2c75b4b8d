//! What the log store writes: raft-log's `Types` for openraft entries, and
//! the encodings of log ids, votes and entry payloads.
//!
//! Policy:
//! - Every encoding starts with a format byte, [`FORMAT`]; a reader that
//!   meets another value refuses the record instead of guessing. openraft's
//!   feature flags change the shape of its types (`single-term-leader` drops
//!   the node id from a log id), so a build that writes another shape must
//!   write another format byte.
//! - Integers are big-endian and fixed-size: a log id and a vote have one
//!   length whatever their value.
//! - An entry payload is one blob behind a guarded header: the header (format,
//!   kind, length) carries its own checksum. raft-log treats a record that
//!   ends before its bytes do as a torn write and cuts it off; without the
//!   guard a damaged length in an older record would read past the end of the
//!   file, look exactly like one, and recovery would silently drop that
//!   record and every one after it.
//! - The application's bytes go in as they are ([`LogPayload`]); openraft's
//!   membership is written field by field.
//!
//! Invariants:
//! - decoding damaged bytes fails with `InvalidData`, never `UnexpectedEof`,
//!   unless the bytes really end (a torn write), and never panics or
//!   allocates more than the (guarded) length;
//! - [`WalLogId`] and [`WalVote`] order exactly like openraft's `LogId` and
//!   `Vote` (without `single-term-leader`), so raft-log's checks (no vote
//!   reversal, log ids increase) agree with openraft's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::storage::LogFlushed;
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LeaderId, LogId, Membership, Vote};
use raft_log::codeq::config::CodeqConfig;
use raft_log::codeq::{Decode, Encode};
use tokio::sync::oneshot;

use super::{LogConfig, LogPayload};

/// The format byte at the start of every encoding here.
pub(super) const FORMAT: u8 = 1;

/// `format, term, node id, index`.
const LOG_ID_BYTES: usize = 1 + 8 + 8 + 8;
/// `format, term, node id, committed`.
const VOTE_BYTES: usize = 1 + 8 + 8 + 1;
/// `format, kind, length, guard`.
const PAYLOAD_HEADER_BYTES: usize = 1 + 1 + 4 + 4;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// raft-log's type parameters for the entries of `C`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WalTypes<C>(PhantomData<C>);

impl<C: LogConfig> raft_log::Types for WalTypes<C> {
    type LogId = WalLogId;
    type LogPayload = WalPayload<C>;
    type Vote = WalVote;
    type Callback = Flushed<C>;
    type UserData = ();

    fn log_index(log_id: &WalLogId) -> u64 {
        log_id.index
    }

    fn payload_size(payload: &WalPayload<C>) -> u64 {
        match &payload.0 {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(data) => data.as_log_bytes().len() as u64,
            EntryPayload::Membership(membership) => membership_bytes_estimate(membership),
        }
    }
}

/// openraft's `LogId<u64>`; fields in `Ord` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WalLogId {
    pub(crate) term: u64,
    pub(crate) node_id: u64,
    pub(crate) index: u64,
}

impl From<LogId<u64>> for WalLogId {
    fn from(log_id: LogId<u64>) -> Self {
        WalLogId {
            term: log_id.leader_id.term,
            node_id: log_id.leader_id.node_id,
            index: log_id.index,
        }
    }
}

impl From<WalLogId> for LogId<u64> {
    fn from(log_id: WalLogId) -> Self {
        LogId::new(
            CommittedLeaderId::new(log_id.term, log_id.node_id),
            log_id.index,
        )
    }
}

impl Encode for WalLogId {
    fn encode<W: io::Write>(&self, mut w: W) -> io::Result<usize> {
        let mut buf = [0u8; LOG_ID_BYTES];
        buf[0] = FORMAT;
        buf[1..9].copy_from_slice(&self.term.to_be_bytes());
        buf[9..17].copy_from_slice(&self.node_id.to_be_bytes());
        buf[17..25].copy_from_slice(&self.index.to_be_bytes());
        w.write_all(&buf)?;
        Ok(LOG_ID_BYTES)
    }
}

impl Decode for WalLogId {
    fn decode<R: io::Read>(mut r: R) -> io::Result<Self> {
        let mut buf = [0u8; LOG_ID_BYTES];
        r.read_exact(&mut buf)?;
        check_format(buf[0], "log id")?;
        Ok(WalLogId {
            term: be_u64(&buf[1..9]),
            node_id: be_u64(&buf[9..17]),
            index: be_u64(&buf[17..25]),
        })
    }
}

/// openraft's `Vote<u64>`; fields in the order openraft compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WalVote {
    term: u64,
    node_id: u64,
    committed: bool,
}

impl From<&Vote<u64>> for WalVote {
    fn from(vote: &Vote<u64>) -> Self {
        WalVote {
            term: vote.leader_id.term,
            node_id: vote.leader_id.node_id,
            committed: vote.committed,
        }
    }
}

impl From<WalVote> for Vote<u64> {
    fn from(vote: WalVote) -> Self {
        Vote {
            leader_id: LeaderId::new(vote.term, vote.node_id),
            committed: vote.committed,
        }
    }
}

impl Encode for WalVote {
    fn encode<W: io::Write>(&self, mut w: W) -> io::Result<usize> {
        let mut buf = [0u8; VOTE_BYTES];
        buf[0] = FORMAT;
        buf[1..9].copy_from_slice(&self.term.to_be_bytes());
        buf[9..17].copy_from_slice(&self.node_id.to_be_bytes());
        buf[17] = u8::from(self.committed);
        w.write_all(&buf)?;
        Ok(VOTE_BYTES)
    }
}

impl Decode for WalVote {
    fn decode<R: io::Read>(mut r: R) -> io::Result<Self> {
        let mut buf = [0u8; VOTE_BYTES];
        r.read_exact(&mut buf)?;
        check_format(buf[0], "vote")?;
        let committed = match buf[17] {
            0 => false,
            1 => true,
            other => {
                return Err(invalid(format!(
                    "vote: committed flag {other} is neither 0 nor 1"
                )))
            }
        };
        Ok(WalVote {
            term: be_u64(&buf[1..9]),
            node_id: be_u64(&buf[9..17]),
            committed,
        })
    }
}

/// An entry's payload as raft-log stores (and caches) it.
pub(crate) struct WalPayload<C: LogConfig>(pub(crate) EntryPayload<C>);

impl<C: LogConfig> Clone for WalPayload<C> {
    fn clone(&self) -> Self {
        WalPayload(self.0.clone())
    }
}

impl<C: LogConfig> fmt::Debug for WalPayload<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            EntryPayload::Blank => f.write_str("Blank"),
            EntryPayload::Normal(data) => write!(f, "Normal({:?})", data),
            EntryPayload::Membership(membership) => write!(f, "Membership({membership})"),
        }
    }
}

impl<C: LogConfig> Encode for WalPayload<C> {
    fn encode<W: io::Write>(&self, mut w: W) -> io::Result<usize> {
        let membership_bytes;
        let (kind, body): (u8, &[u8]) = match &self.0 {
            EntryPayload::Blank => (KIND_BLANK, &[]),
            EntryPayload::Normal(data) => (KIND_NORMAL, data.as_log_bytes()),
            EntryPayload::Membership(membership) => {
                membership_bytes = encode_membership(membership)?;
                (KIND_MEMBERSHIP, &membership_bytes)
            }
        };
        let len = u32::try_from(body.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a log entry of {} bytes is over the 4 GiB limit",
                    body.len()
                ),
            )
        })?;
        w.write_all(&payload_header(kind, len))?;
        w.write_all(body)?;
        Ok(PAYLOAD_HEADER_BYTES + body.len())
    }
}

impl<C: LogConfig> Decode for WalPayload<C> {
    fn decode<R: io::Read>(mut r: R) -> io::Result<Self> {
        let mut header = [0u8; PAYLOAD_HEADER_BYTES];
        r.read_exact(&mut header)?;
        if payload_header(header[1], be_u32(&header[2..6])) != header {
            return Err(invalid(
                "entry header damaged: its checksum does not match".to_string(),
            ));
        }
        check_format(header[0], "entry")?;
        let kind = header[1];
        let len = be_u32(&header[2..6]) as usize;
        // The guard vouches for `len`, so this allocation is what was written.
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let payload = match kind {
            KIND_BLANK if len == 0 => EntryPayload::Blank,
            KIND_BLANK => return Err(invalid(format!("blank entry with {len} bytes"))),
            KIND_NORMAL => EntryPayload::Normal(
                C::D::from_log_bytes(body).map_err(|e| invalid(format!("entry payload: {e}")))?,
            ),
            KIND_MEMBERSHIP => EntryPayload::Membership(decode_membership(&body)?),
            other => return Err(invalid(format!("entry kind {other} is unknown"))),
        };
        Ok(WalPayload(payload))
    }
}

/// The header of an entry payload, its last four bytes a checksum of the rest.
fn payload_header(kind: u8, len: u32) -> [u8; PAYLOAD_HEADER_BYTES] {
    let mut header = [0u8; PAYLOAD_HEADER_BYTES];
    header[0] = FORMAT;
    header[1] = kind;
    header[2..6].copy_from_slice(&len.to_be_bytes());
    // raft-log's record checksum is a CRC-32 too; truncating its u64 is how
    // raft-log itself stores it.
    let guard = raft_log::types::Checksum::hash(&header[..6]) as u32;
    header[6..10].copy_from_slice(&guard.to_be_bytes());
    header
}

/// `configs: u32, (voters: u32, id: u64 ...) ..., nodes: u32, (id: u64,
/// addr_len: u32, addr) ...`.
fn encode_membership(membership: &Membership<u64, BasicNode>) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(membership_bytes_estimate(membership) as usize);
    let configs = membership.get_joint_config();
    put_len(&mut out, configs.len())?;
    for config in configs {
        put_len(&mut out, config.len())?;
        for id in config {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    let nodes: Vec<(&u64, &BasicNode)> = membership.nodes().collect();
    put_len(&mut out, nodes.len())?;
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_be_bytes());
        put_len(&mut out, node.addr.len())?;
        out.extend_from_slice(node.addr.as_bytes());
    }
    Ok(out)
}

fn decode_membership(bytes: &[u8]) -> io::Result<Membership<u64, BasicNode>> {
    let mut r = SliceReader {
        bytes,
        what: "membership",
    };
    let config_count = r.u32()?;
    let mut configs = Vec::new();
    for _ in 0..config_count {
        let voter_count = r.u32()?;
        let mut config = BTreeSet::new();
        for _ in 0..voter_count {
            config.insert(r.u64()?);
        }
        configs.push(config);
    }
    let node_count = r.u32()?;
    let mut nodes = BTreeMap::new();
    for _ in 0..node_count {
        let id = r.u64()?;
        let addr_len = r.u32()? as usize;
        let addr = std::str::from_utf8(r.take(addr_len)?)
            .map_err(|e| invalid(format!("membership: node {id}'s address: {e}")))?;
        nodes.insert(id, BasicNode::new(addr));
    }
    if !r.bytes.is_empty() {
        return Err(invalid(format!(
            "membership: {} bytes left over",
            r.bytes.len()
        )));
    }
    Ok(Membership::new(configs, nodes))
}

fn membership_bytes_estimate(membership: &Membership<u64, BasicNode>) -> u64 {
    let voters: usize = membership
        .get_joint_config()
        .iter()
        .map(|c| 4 + 8 * c.len())
        .sum();
    let nodes: usize = membership.nodes().map(|(_, n)| 12 + n.addr.len()).sum();
    (8 + voters + nodes) as u64
}

fn put_len(out: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let len = u32::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "membership too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads from a slice whose length is known, so running short is damage
/// (`InvalidData`), not a torn write.
struct SliceReader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> SliceReader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid(format!(
                "{}: ends {} bytes early",
                self.what,
                n - self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> io::Result<u32> {
        self.take(4).map(be_u32)
    }

    fn u64(&mut self) -> io::Result<u64> {
        self.take(8).map(be_u64)
    }
}

/// Who hears that a flush is done, and the store's failure flag.
pub(crate) struct Flushed<C: LogConfig> {
    /// `None` once told.
    done: Option<Done<C>>,
    failed: Arc<AtomicBool>,
}

pub(crate) enum Done<C: LogConfig> {
    /// openraft's callback for `append`.
    Raft(LogFlushed<C>),
    /// A waiter inside the store (`save_vote`, tests).
    Notify(oneshot::Sender<io::Result<()>>),
}

impl<C: LogConfig> Flushed<C> {
    pub(super) fn new(done: Done<C>, failed: Arc<AtomicBool>) -> Self {
        Flushed {
            done: Some(done),
            failed,
        }
    }
}

impl<C: LogConfig> raft_log::Callback for Flushed<C> {
    fn send(mut self, res: io::Result<()>) {
        if res.is_err() {
            // raft-log's flush thread stops after a failed write or sync.
            self.failed.store(true, Ordering::Release);
        }
        match self.done.take() {
            Some(Done::Raft(callback)) => callback.log_io_completed(res),
            Some(Done::Notify(tx)) => {
                // A waiter that went away no longer needs the answer.
                let _ = tx.send(res);
            }
            None => {}
        }
    }
}

impl<C: LogConfig> Drop for Flushed<C> {
    /// A callback dropped untold was still queued when raft-log's flush
    /// thread stopped on an error (a write it failed carried no callback of
    /// ours, e.g. one queued by a chunk rotation). Its waiter sees the channel
    /// close, which openraft takes for a storage error; the store must not
    /// take another write either.
    fn drop(&mut self) {
        if self.done.is_some() {
            self.failed.store(true, Ordering::Release);
        }
    }
}

fn check_format(found: u8, what: &str) -> io::Result<()> {
    if found == FORMAT {
        return Ok(());
    }
    Err(invalid(format!(
        "{what}: format {found} is unknown (this build reads format {FORMAT})"
    )))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(bytes);
    u64::from_be_bytes(buf)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(bytes);
    u32::from_be_bytes(buf)
}
