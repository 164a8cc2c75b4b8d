//! Recovery: a torn end of the newest chunk file is cut off; a damaged record
//! anywhere before it keeps the log from opening, with a message that names
//! the file.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    all_entries, append_flushed, copy_log, entries, entry, in_copy, last_index, open, records,
    small_chunks, RecordAt, Rng, Store,
};

/// Payload header after a record's type (4 bytes) and log id (25): format,
/// kind, then the 4-byte length.
const LENGTH_AT: u64 = 4 + 25 + 2;
/// Where an entry's bytes begin in its record.
const BODY_AT: u64 = 4 + 25 + 10;

/// A closed log of 200 acknowledged entries across several chunk files.
async fn written_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), small_chunks());
    for first in (0..200).step_by(4) {
        append_flushed(&store, entries(1, first..=first + 3))
            .await
            .expect("append");
    }
    drop(store);
    dir
}

fn newest_file(records: &[RecordAt]) -> &Path {
    &records.last().expect("a record").path
}

#[tokio::test]
async fn a_torn_newest_file_opens_with_every_entry_written_before_the_cut() {
    let original = written_log().await;
    let records = records(original.path());
    let newest = newest_file(&records).to_path_buf();
    let newest_bytes = std::fs::metadata(&newest).expect("newest file").len();
    assert!(
        records.iter().any(|r| r.path != newest),
        "the log spans several files"
    );

    // Cuts at the start, inside the file's first record (its checkpoint),
    // one byte short of the end, and at 12 random places.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let random = (0..12).map(|_| rng.below(newest_bytes));
    for (case, cut) in [0, 10, newest_bytes - 1]
        .into_iter()
        .chain(random)
        .enumerate()
    {
        let copy = copy_log(original.path());
        let file = OpenOptions::new()
            .write(true)
            .open(in_copy(copy.path(), &newest))
            .expect("open");
        file.set_len(cut).expect("cut the file");
        drop(file);

        // Every entry whose record ends at or before the cut is expected.
        let whole = records
            .iter()
            .filter(|r| r.path != newest || r.offset + r.bytes <= cut);
        let want_last = whole.filter_map(|r| r.appended).max();

        eprintln!("case {case}: cut the newest file at byte {cut} of {newest_bytes}");
        let mut store = open(copy.path(), small_chunks());
        assert_eq!(
            want_last,
            last_index(&mut store).await,
            "case {case}, cut at {cut}"
        );
        let want_last = want_last.expect("older files hold entries");
        assert_eq!(
            entries(1, 0..=want_last),
            all_entries(&mut store).await,
            "case {case}"
        );

        // The log goes on after the cut, and that survives another reopen.
        append_flushed(&store, vec![entry(2, want_last + 1)])
            .await
            .expect("append after cut");
        drop(store);
        let mut store = open(copy.path(), small_chunks());
        assert_eq!(
            Some(want_last + 1),
            last_index(&mut store).await,
            "case {case}"
        );
    }
}

/// Flips the bits `mask` of the byte at `offset` of `file` in a copy of the
/// log, and opens it.
fn open_with_flipped_bits(
    original: &Path,
    file: &Path,
    offset: u64,
    mask: u8,
) -> (String, std::io::Error) {
    let copy = copy_log(original);
    let path = in_copy(copy.path(), file);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, offset).expect("read the byte");
    f.write_all_at(&[byte[0] ^ mask], offset)
        .expect("flip the byte");
    drop(f);
    let error = Store::open(copy.path(), small_chunks()).expect_err("a damaged log must not open");
    (
        path.file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned(),
        error,
    )
}

fn assert_names_damage(file_name: &str, error: &std::io::Error, record: &RecordAt) {
    let message = error.to_string();
    eprintln!("{message}");
    assert!(message.contains(file_name), "{message}");
    assert!(message.contains("damaged"), "{message}");
    assert!(
        message.contains(&format!("at byte {}", record.offset)),
        "{message}"
    );
}

#[tokio::test]
async fn a_damaged_record_before_the_end_fails_the_open_and_names_its_file() {
    let original = written_log().await;
    let records = records(original.path());
    let newest = newest_file(&records).to_path_buf();
    let in_newest: Vec<&RecordAt> = records
        .iter()
        .filter(|r| r.path == newest && r.appended.is_some())
        .collect();
    assert!(in_newest.len() >= 3, "the newest file holds a few entries");
    let older = in_newest[in_newest.len() / 2 - 1];
    let closed = records
        .iter()
        .find(|r| r.path != newest && r.appended.is_some())
        .expect("closed");

    // The entry's bytes: raft-log's record checksum catches it.
    let (name, error) = open_with_flipped_bits(
        original.path(),
        &older.path,
        older.offset + BODY_AT + 2,
        0x80,
    );
    assert_names_damage(&name, &error, older);

    // The high byte of the entry's length (16 MiB more): the record now seems
    // to run past the end of the file, which raft-log alone takes for a torn
    // write.
    let (name, error) =
        open_with_flipped_bits(original.path(), &older.path, older.offset + LENGTH_AT, 0x01);
    assert_names_damage(&name, &error, older);
    assert!(
        error.to_string().contains("entry header damaged"),
        "{error}"
    );

    // An entry in an older, closed file.
    let middle = closed.offset + closed.bytes / 2;
    let (name, error) = open_with_flipped_bits(original.path(), &closed.path, middle, 0x80);
    assert_names_damage(&name, &error, closed);
}
