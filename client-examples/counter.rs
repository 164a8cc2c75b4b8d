//! Seed exercise 1 across processes: a shared counter, 2 worker processes ×
//! 500 increments, each read-modify-write done under one syncd lock.
//!
//! The counter lives in a file outside the server, next to the fencing token
//! of the last write. Each worker checks, under the lock, that its token is
//! larger than the one stored: that is what a fenced resource does to
//! refuse a stale holder, and here it proves tokens strictly increase.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example counter
//! Prints `Final counter: 1000` and exits 0 when no update was lost.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use support::{Error, WAIT_LIMIT};
use syncd::client::Client;

const WORKERS: u32 = 2;
const INCREMENTS: u32 = 500;

fn main() -> ExitCode {
    support::main("counter", coordinator, worker)
}

/// Spawns the workers, waits for them, and prints the final count.
fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("counter")?;
    let file = dir.path().join("counter");
    write_counter(&file, 0, 0)?;
    let file_arg = file.display().to_string();
    let lock_name = support::unique_name("counter", "lock");
    let mut workers = support::Workers::new();
    for index in 0..WORKERS {
        workers.spawn(
            format!("worker {index}"),
            [file_arg.as_str(), &lock_name, &INCREMENTS.to_string()],
        )?;
    }
    let finished = workers.wait();
    let (count, _) = read_counter(&file)?;
    println!("Final counter: {count}");
    finished?;
    if count != WORKERS * INCREMENTS {
        return Err(format!("expected {}, an update was lost", WORKERS * INCREMENTS).into());
    }
    Ok(())
}

/// `worker FILE LOCK INCREMENTS`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [file, lock_name, increments] = args.as_slice() else {
        return Err("usage: counter worker FILE LOCK INCREMENTS".into());
    };
    let file = PathBuf::from(file);
    let increments: u32 = increments.parse()?;
    let client = Client::connect(support::addr()).await?;
    let lock = client.lock(lock_name.clone());
    for _ in 0..increments {
        let guard = lock.acquire_timeout(WAIT_LIMIT).await?;
        let token = guard.fencing_token();
        let (count, last_token) = read_counter(&file)?;
        if token <= last_token {
            return Err(
                format!("stale fencing token {token}: the file already saw {last_token}").into(),
            );
        }
        write_counter(&file, count + 1, token)?;
        guard.release().await?;
    }
    client.close().await?;
    Ok(())
}

fn read_counter(file: &Path) -> Result<(u32, u64), Error> {
    let text = std::fs::read_to_string(file)?;
    let mut parts = text.split_whitespace();
    let count = parts.next().ok_or("empty counter file")?.parse()?;
    let token = parts.next().ok_or("counter file has no token")?.parse()?;
    Ok((count, token))
}

fn write_counter(file: &Path, count: u32, token: u64) -> Result<(), Error> {
    std::fs::write(file, format!("{count} {token}\n"))?;
    Ok(())
}
