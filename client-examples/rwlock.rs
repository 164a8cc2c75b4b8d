//! Seed exercise 9 across processes: 3 reader processes and 1 writer
//! process share one syncd read-write lock.
//!
//! Both halves of the claim are checked, through a tally: a file of
//! counters that the workers change only under a separate syncd lock.
//! - Readers overlap: each reader, once it holds the read lock, counts
//!   itself into `readers` (recording `max_readers`), then keeps its hold
//!   until the tally shows that two readers were inside at once (bounded
//!   wait; a reader alone that long fails the run), then 20 ms more.
//! - The writer never overlaps anyone: a reader that enters or leaves while
//!   `writers` is not 0 fails, and so does a writer that enters or leaves
//!   while any reader or another writer is inside.
//!
//! As in the seed the readers start first: the writer asks for the write
//! lock only once two readers are inside, so it has to wait for them; the
//! lock is fair, so a reader that asks after the writer waits behind it.
//! The coordinator requires 3 reads and 1 write done, nobody left inside,
//! and `max_readers` at least 2.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example rwlock
//! Prints `Multiple concurrent readers; writer gets exclusive access` and
//! exits 0 when both held; otherwise says what went wrong on stderr and
//! exits 1.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use support::{Error, Tally, WAIT_LIMIT};
use syncd::client::Client;

const READERS: u32 = 3;
const READ_TIME: Duration = Duration::from_millis(20);
const WRITE_TIME: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    support::main("rwlock", coordinator, worker)
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("rwlock")?;
    let tally_file = dir.path().join("tally").display().to_string();
    let rwlock = support::unique_name("rwlock", "data");
    let tally_lock = support::unique_name("rwlock", "tally");
    let mut workers = support::Workers::new();
    for reader in 1..=READERS {
        workers.spawn(
            format!("reader {reader}"),
            ["reader", &tally_file, &rwlock, &tally_lock],
        )?;
    }
    workers.spawn("writer", ["writer", &tally_file, &rwlock, &tally_lock])?;
    workers.wait()?;
    let tally = Tally::read(dir.path().join("tally").as_path())?;
    let done = tally.get("reads") == i64::from(READERS) && tally.get("writes") == 1;
    if !done || tally.get("readers") != 0 || tally.get("writers") != 0 {
        return Err(format!(
            "expected {READERS} reads and 1 write done and nobody inside, got {tally:?}"
        )
        .into());
    }
    if tally.get("max_readers") < 2 {
        return Err(format!("readers never overlapped: {tally:?}").into());
    }
    println!("Multiple concurrent readers; writer gets exclusive access");
    Ok(())
}

/// `worker reader|writer TALLY RWLOCK TALLY_LOCK`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [role, tally_file, rwlock, tally_lock] = args.as_slice() else {
        return Err("usage: rwlock worker reader|writer TALLY RWLOCK TALLY_LOCK".into());
    };
    let client = Client::connect(support::addr()).await?;
    let tally_file = PathBuf::from(tally_file);
    let tally = Tally::new(&client, &tally_file, tally_lock);
    let rwlock = client.rwlock(rwlock.clone());
    match role.as_str() {
        "reader" => {
            let guard = rwlock.read_timeout(WAIT_LIMIT).await?;
            let token = guard.fencing_token();
            tally
                .update(|counts| {
                    no_writer(counts, token, "got the read lock")?;
                    let readers = counts.add("readers", 1);
                    counts.raise("max_readers", readers);
                    Ok(())
                })
                .await?;
            support::eventually("a second reader inside", WAIT_LIMIT, || async {
                Ok(Tally::read(&tally_file)?.get("max_readers") >= 2)
            })
            .await?;
            tokio::time::sleep(READ_TIME).await;
            tally
                .update(|counts| {
                    no_writer(counts, token, "still held the read lock")?;
                    counts.add("readers", -1);
                    counts.add("reads", 1);
                    Ok(())
                })
                .await?;
            guard.release().await?;
        }
        "writer" => {
            support::eventually("two readers inside", WAIT_LIMIT, || async {
                Ok(Tally::read(&tally_file)?.get("max_readers") >= 2)
            })
            .await?;
            let guard = rwlock.write_timeout(WAIT_LIMIT).await?;
            let token = guard.fencing_token();
            tally
                .update(|counts| {
                    alone(counts, token, "got the write lock")?;
                    counts.add("writers", 1);
                    Ok(())
                })
                .await?;
            tokio::time::sleep(WRITE_TIME).await;
            tally
                .update(|counts| {
                    counts.add("writers", -1);
                    alone(counts, token, "still held the write lock")?;
                    counts.add("writes", 1);
                    Ok(())
                })
                .await?;
            guard.release().await?;
        }
        other => return Err(format!("unknown role {other:?}").into()),
    }
    client.close().await?;
    Ok(())
}

fn no_writer(counts: &support::Counts, token: u64, what: &str) -> Result<(), Error> {
    match counts.get("writers") {
        0 => Ok(()),
        writers => Err(format!(
            "a reader (token {token}) {what} while {writers} writer(s) were inside"
        )
        .into()),
    }
}

/// Nobody else inside: no reader, no other writer.
fn alone(counts: &support::Counts, token: u64, what: &str) -> Result<(), Error> {
    let (readers, writers) = (counts.get("readers"), counts.get("writers"));
    if readers != 0 || writers != 0 {
        return Err(format!(
            "the writer (token {token}) {what} while {readers} reader(s) and {writers} other \
             writer(s) were inside"
        )
        .into());
    }
    Ok(())
}
