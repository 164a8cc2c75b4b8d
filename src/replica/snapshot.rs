//! A snapshot's bytes: the applied state's records, framed and checked.
//!
//! Layout: the header line `syncd snapshot 1\n`; then each record as a
//! big-endian u32 key length, the key, a u32 value length, the value; then
//! the record count (u64) and a CRC-32 of everything before it (u32). The
//! log id and membership it covers travel beside it in openraft's
//! `SnapshotMeta`.

use openraft::{BasicNode, Snapshot, SnapshotMeta};

use super::types::{NodeId, TypeConfig};
use super::ReplicaError;
use crate::store::Record;

const HEADER: &[u8] = b"syncd snapshot 1\n";
const TRAILER_BYTES: usize = 8 + 4;

/// A snapshot kept in memory: openraft may ask for it again.
pub struct Stored {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub data: Vec<u8>,
}

impl Stored {
    pub fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(std::io::Cursor::new(self.data.clone())),
        }
    }
}

pub fn encode(records: &[Record]) -> Vec<u8> {
    let size: usize = records.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(HEADER.len() + size + TRAILER_BYTES);
    out.extend_from_slice(HEADER);
    for (key, value) in records {
        for part in [key, value] {
            let len = u32::try_from(part.len()).expect("records are far below 4 GiB");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(&(records.len() as u64).to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, ReplicaError> {
    let bad = |why: &str| ReplicaError::Corrupt(format!("snapshot: {why}"));
    let body_len = bytes
        .len()
        .checked_sub(4)
        .filter(|&n| n >= HEADER.len() + 8)
        .ok_or_else(|| bad("too short"))?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    let rest = body
        .strip_prefix(HEADER)
        .ok_or_else(|| bad("unknown header"))?;
    let (mut rest, count) = rest.split_at(rest.len() - 8);
    let count = u64::from_be_bytes(count.try_into().expect("8 bytes"));
    let mut records = Vec::new();
    while !rest.is_empty() {
        let key = take(&mut rest).ok_or_else(|| bad("truncated record"))?;
        let value = take(&mut rest).ok_or_else(|| bad("truncated record"))?;
        records.push((key.to_vec(), value.to_vec()));
    }
    if records.len() as u64 != count {
        return Err(bad("record count mismatch"));
    }
    Ok(records)
}

fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len_bytes = rest.get(..4)?;
    let len = u32::from_be_bytes(len_bytes.try_into().ok()?) as usize;
    let part = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let records: Vec<Record> = vec![
            (b"meta/counters".to_vec(), vec![1, 2, 3]),
            (b"lock/a".to_vec(), Vec::new()),
            (vec![0xff; 300], vec![7; 70_000]),
        ];
        let bytes = encode(&records);
        assert_eq!(decode(&bytes).unwrap(), records);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<Record>::new());
        for at in [0, HEADER.len(), bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "a flipped byte at {at} passed");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
