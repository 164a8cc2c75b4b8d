//! Stored records → `State::restore`: a corrupted record must be an error,
//! never a panic. A state that restores must also survive being used: a
//! `Resume` (which ends every restored wait), a listing, and a tick far
//! ahead.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use syncd::core::{Command, Limits, Outcome, Query, State};
use syncd_fuzz::decode_records;

fuzz_target!(|data: &[u8]| {
    // As a store hands them over: unique keys, in key order (a key given
    // twice keeps its last value).
    let records: BTreeMap<Vec<u8>, Vec<u8>> = decode_records(data).into_iter().collect();
    let Ok(mut state) = State::restore(Limits::default(), records) else {
        return;
    };
    let now = state.now_ms();
    let mut out = Outcome::default();
    // What the engine applies first after a restart.
    let _ = state.apply(now, Command::Resume, &mut out);
    assert_eq!(state.waiter_count(), 0, "a waiter survived Resume");
    let list = Query::List {
        kind: None,
        prefix: String::new(),
    };
    let _ = state.query(now, &list);
    let _ = state.checkpoint();
    let _ = state.next_deadline_ms();
    // Past every lease (TTLs are at most an hour by default, but a stored
    // record may claim any TTL).
    let later = now.saturating_add(4_000_000);
    state.tick(later, &mut out);
    let _ = state.query(later, &list);
});
