//! Seed exercise 2 across processes: 10 "API calls" of 10–50 ms each, run
//! by 5 worker processes × 2 concurrent tasks, at most 3 at once under one
//! syncd semaphore of capacity 3.
//!
//! The bound is checked, not assumed: every call, while it holds its
//! permit, enters and later leaves a tally, a file of counters that the
//! workers change only under a separate syncd lock. Entering adds one to
//! `inside`, fails if that makes more than 3, and records `max_inside`;
//! leaving takes one off. The coordinator then requires all 10 calls done,
//! nobody left inside, and `max_inside` exactly 3: more would break the
//! bound, fewer would mean the run never tested it. The durations are
//! fixed per call index (`10 + 17 * i mod 41` ms), so every run is the same
//! workload.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example semaphore
//! Prints `At most 3 tasks running concurrently` and exits 0 when the bound
//! held and was reached; otherwise says what went wrong on stderr and
//! exits 1.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use support::{Error, Tally, WAIT_LIMIT};
use syncd::client::{Client, Semaphore};

const CAPACITY: u32 = 3;
const PROCESSES: u32 = 5;
const TASKS_PER_PROCESS: u32 = 2;
const CALLS: u32 = PROCESSES * TASKS_PER_PROCESS;

fn main() -> ExitCode {
    support::main("semaphore", coordinator, worker)
}

/// How long call `index` takes: 10–50 ms, the same in every run.
fn duration(index: u32) -> Duration {
    Duration::from_millis(u64::from(10 + (17 * index) % 41))
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("semaphore")?;
    let tally_file = dir.path().join("tally");
    let semaphore = support::unique_name("semaphore", "api");
    let tally_lock = support::unique_name("semaphore", "tally");
    let mut workers = support::Workers::new();
    for process in 0..PROCESSES {
        let first_call = process * TASKS_PER_PROCESS;
        workers.spawn(
            format!("worker {process}"),
            [
                tally_file.display().to_string(),
                semaphore.clone(),
                tally_lock.clone(),
                first_call.to_string(),
            ],
        )?;
    }
    workers.wait()?;
    let tally = Tally::read(&tally_file)?;
    let (calls, inside, max) = (
        tally.get("calls"),
        tally.get("inside"),
        tally.get("max_inside"),
    );
    if calls != i64::from(CALLS) || inside != 0 {
        return Err(format!("expected {CALLS} calls done and none inside, got {tally:?}").into());
    }
    if max != i64::from(CAPACITY) {
        return Err(format!(
            "at most {max} calls ran at once: the bound of {CAPACITY} was never reached, so \
             this run proves nothing ({tally:?})"
        )
        .into());
    }
    println!("At most {CAPACITY} tasks running concurrently");
    Ok(())
}

/// `worker TALLY SEMAPHORE TALLY_LOCK FIRST_CALL`: runs calls FIRST_CALL..
/// FIRST_CALL + 2 as concurrent tasks of one client (one session).
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [tally_file, semaphore, tally_lock, first_call] = args.as_slice() else {
        return Err("usage: semaphore worker TALLY SEMAPHORE TALLY_LOCK FIRST_CALL".into());
    };
    let first_call: u32 = first_call.parse()?;
    let client = Client::connect(support::addr()).await?;
    let semaphore = client.semaphore(semaphore.clone(), CAPACITY);
    let tally = Arc::new(Tally::new(&client, PathBuf::from(tally_file), tally_lock));
    let mut tasks = tokio::task::JoinSet::new();
    for index in first_call..first_call + TASKS_PER_PROCESS {
        tasks.spawn(api_call(semaphore.clone(), tally.clone(), index));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    client.close().await?;
    Ok(())
}

/// One call: take a permit, enter the tally, "work", leave, give it back.
async fn api_call(semaphore: Semaphore, tally: Arc<Tally>, index: u32) -> Result<(), Error> {
    let permit = semaphore.acquire_timeout(1, WAIT_LIMIT).await?;
    let token = permit.fencing_token();
    tally
        .update(|counts| {
            let inside = counts.add("inside", 1);
            if inside > i64::from(CAPACITY) {
                return Err(format!(
                    "call {index} (permit token {token}) makes {inside} calls inside at once, \
                     above the capacity {CAPACITY}"
                )
                .into());
            }
            counts.raise("max_inside", inside);
            Ok(())
        })
        .await?;
    tokio::time::sleep(duration(index)).await;
    tally
        .update(|counts| {
            counts.add("inside", -1);
            counts.add("calls", 1);
            Ok(())
        })
        .await?;
    permit.release().await?;
    Ok(())
}
