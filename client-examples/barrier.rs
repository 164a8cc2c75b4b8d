//! Seed exercise 7 across processes: 3 worker processes meet at one syncd
//! barrier of 3 parties, arriving about 30 ms apart.
//!
//! Nobody may continue before all three arrived, and that is checked: each
//! worker appends its number to an arrivals file (O_APPEND) before it
//! waits, and once past the barrier requires all three numbers there. The
//! arrivals are ordered (worker i arrives 30 ms after the server shows i
//! parties waiting), so each worker also requires the barrier's arrival
//! index to be its own number, and all must pass the same generation.
//!
//! Each worker reports `reached` before it waits and `continuing` after it
//! passed, on a pipe to the coordinator, which prints the lines as
//! `Worker i reached barrier` (in arrival order, as they come) and then
//! `Worker i continuing` in worker order: the barrier guarantees that all
//! "reached" reports come before any "continuing" one; the coordinator's
//! printing makes the order of the continuing lines, which pass at the
//! same moment, the same in every run. It ends with `All workers
//! continuing` once all three exited successfully. The barrier has a fresh
//! name each run; the last to arrive deletes it once everyone passed.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example barrier
//! Prints the seven lines and exits 0; on a failed check says what went
//! wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use support::{say, Error, WAIT_LIMIT};
use syncd::client::Client;

const PARTIES: u32 = 3;
/// How long after the previous arrival the next worker arrives.
const ARRIVAL_GAP: Duration = Duration::from_millis(30);

fn main() -> ExitCode {
    support::main("barrier", coordinator, worker)
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("barrier")?;
    let arrivals = dir.path().join("arrivals").display().to_string();
    let barrier = support::unique_name("barrier", "checkpoint");
    let mut workers = support::Workers::new();
    let mut reports = Vec::new();
    for index in 0..PARTIES {
        let stdout = workers.spawn_piped(
            format!("worker {index}"),
            [index.to_string(), barrier.clone(), arrivals.clone()],
        )?;
        reports.push(BufReader::new(stdout).lines());
    }
    for (index, report) in reports.iter_mut().enumerate() {
        expect_report(report, index, "reached")?;
        println!("Worker {index} reached barrier");
    }
    let mut generations = Vec::new();
    for (index, report) in reports.iter_mut().enumerate() {
        let line = expect_report(report, index, "continuing")?;
        generations.push(line.trim_start_matches("continuing").trim().to_owned());
        println!("Worker {index} continuing");
    }
    workers.wait()?;
    if generations.iter().any(|g| *g != generations[0]) {
        return Err(format!("the workers passed different generations: {generations:?}").into());
    }
    println!("All workers continuing");
    Ok(())
}

/// The next line of worker `index`'s report, which must start with `word`.
fn expect_report(
    report: &mut impl Iterator<Item = std::io::Result<String>>,
    index: usize,
    word: &str,
) -> Result<String, Error> {
    match report.next() {
        Some(line) => {
            let line = line?;
            if line.starts_with(word) {
                Ok(line)
            } else {
                Err(format!("worker {index} reported {line:?}, expected {word}").into())
            }
        }
        None => Err(format!("worker {index} ended before it reported {word}").into()),
    }
}

/// `worker INDEX BARRIER ARRIVALS`: reports `reached` and `continuing
/// GENERATION` on stdout.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [index, barrier, arrivals] = args.as_slice() else {
        return Err("usage: barrier worker INDEX BARRIER ARRIVALS".into());
    };
    let index: u32 = index.parse()?;
    let arrivals = Path::new(arrivals);
    let client = Client::connect(support::addr()).await?;
    let barrier = client.barrier(barrier.clone(), PARTIES);
    if index > 0 {
        support::eventually(
            "the workers before this one to wait",
            WAIT_LIMIT,
            || async {
                let waiting = barrier.describe().await?.waiters.len();
                Ok(waiting >= usize::try_from(index)?)
            },
        )
        .await?;
        tokio::time::sleep(ARRIVAL_GAP).await;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(arrivals)?
        .write_all(format!("{index}\n").as_bytes())?;
    say("reached")?;
    let passed = barrier.wait_timeout(WAIT_LIMIT).await?;
    let arrived = std::fs::read_to_string(arrivals)?;
    let mut arrived: Vec<&str> = arrived.lines().collect();
    arrived.sort_unstable();
    if arrived != ["0", "1", "2"] {
        return Err(
            format!("worker {index} passed the barrier when only {arrived:?} had arrived").into(),
        );
    }
    if passed.arrival_index != index {
        return Err(format!(
            "worker {index} arrived as number {index} but the barrier says {}",
            passed.arrival_index
        )
        .into());
    }
    if passed.arrival_index == PARTIES - 1 {
        // A barrier is stored until deleted; this run's name is used once.
        // The generation has passed for everyone, so nobody is aborted.
        barrier.delete().await?;
    }
    say(&format!("continuing {}", passed.generation))?;
    client.close().await?;
    Ok(())
}
