//! The encodings: they round-trip, order like openraft's types, and tell a
//! torn record (`UnexpectedEof`) from a damaged header (`InvalidData`).

use std::io;

use openraft::{EntryPayload, Vote};
use raft_log::codeq::config::CodeqConfig;
use raft_log::codeq::{Decode, Encode};

use super::{entry, log_id, TestConfig};
use crate::replica::log_store::records::{WalLogId, WalPayload, WalVote};

fn encoded(value: &impl Encode) -> Vec<u8> {
    let mut bytes = Vec::new();
    value.encode(&mut bytes).expect("encode");
    bytes
}

fn payloads() -> Vec<WalPayload<TestConfig>> {
    let mut payloads: Vec<_> = (0..=3)
        .map(|index| WalPayload(entry(1, index).payload))
        .collect();
    payloads.push(WalPayload(EntryPayload::Normal(Vec::new())));
    payloads
}

#[test]
fn log_ids_votes_and_payloads_round_trip() {
    for log_id in [log_id(0, 0), log_id(7, u64::MAX), log_id(u64::MAX, 3)] {
        let wal = WalLogId::from(log_id);
        let back = WalLogId::decode(&encoded(&wal)[..]).expect("decode");
        assert_eq!(log_id, openraft::LogId::from(back));
    }
    for vote in [Vote::new(1, 2), Vote::new_committed(u64::MAX, 0)] {
        let back = WalVote::decode(&encoded(&WalVote::from(&vote))[..]).expect("decode");
        assert_eq!(vote, Vote::from(back));
    }
    for payload in payloads() {
        let back = WalPayload::<TestConfig>::decode(&encoded(&payload)[..]).expect("decode");
        assert_eq!(payload.0, back.0);
    }
}

#[test]
fn votes_and_log_ids_order_like_openraft() {
    let mut votes = Vec::new();
    for term in 0..3 {
        for node in 0..3 {
            votes.push(Vote::new(term, node));
            votes.push(Vote::new_committed(term, node));
        }
    }
    for a in &votes {
        for b in &votes {
            let ours = WalVote::from(a).partial_cmp(&WalVote::from(b));
            assert_eq!(a.partial_cmp(b), ours, "{a} vs {b}");
        }
    }
    let log_ids: Vec<_> = (0..3)
        .flat_map(|term| (0..3).map(move |index| log_id(term, index)))
        .collect();
    for a in &log_ids {
        for b in &log_ids {
            assert_eq!(
                a.cmp(b),
                WalLogId::from(*a).cmp(&WalLogId::from(*b)),
                "{a} vs {b}"
            );
        }
    }
}

#[test]
fn a_payload_cut_short_reads_as_torn() {
    for payload in payloads() {
        let bytes = encoded(&payload);
        for len in 0..bytes.len() {
            let error = WalPayload::<TestConfig>::decode(&bytes[..len]).expect_err("cut short");
            assert_eq!(
                io::ErrorKind::UnexpectedEof,
                error.kind(),
                "cut at {len} of {payload:?}"
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_a_payload_header_reads_as_damage() {
    for payload in payloads() {
        let bytes = encoded(&payload);
        // The header is the first 10 bytes: format, kind, length, guard.
        for at in 0..10 {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let error = WalPayload::<TestConfig>::decode(&damaged[..]).expect_err("damaged");
                assert_eq!(
                    io::ErrorKind::InvalidData,
                    error.kind(),
                    "byte {at} bit {bit}"
                );
            }
        }
    }
}

#[test]
fn a_damaged_membership_body_reads_as_damage_not_as_torn() {
    let bytes = encoded(&WalPayload::<TestConfig>(entry(1, 1).payload));
    // Shorter bodies under a valid header: the membership ends early.
    for body_len in 0..bytes.len() - 10 {
        let mut cut = bytes[..10 + body_len].to_vec();
        let len = (body_len as u32).to_be_bytes();
        let header = rewrite_header(&cut[..10], len);
        cut[..10].copy_from_slice(&header);
        let error = WalPayload::<TestConfig>::decode(&cut[..]).expect_err("short membership");
        assert_eq!(
            io::ErrorKind::InvalidData,
            error.kind(),
            "body of {body_len} bytes"
        );
    }
}

/// The header with another length, and the guard that goes with it.
fn rewrite_header(header: &[u8], len: [u8; 4]) -> [u8; 10] {
    let mut fixed = [0u8; 10];
    fixed[..2].copy_from_slice(&header[..2]);
    fixed[2..6].copy_from_slice(&len);
    let guard = raft_log::types::Checksum::hash(&fixed[..6]) as u32;
    fixed[6..].copy_from_slice(&guard.to_be_bytes());
    fixed
}
