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

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use syncd::client::Client;

const WORKERS: u32 = 2;
const INCREMENTS: u32 = 500;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("worker") => worker(&args[2..]),
        _ => coordinator(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("counter: {e}");
            ExitCode::FAILURE
        }
    }
}

fn addr() -> String {
    std::env::var("SYNCD_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7420".to_owned())
}

/// Spawns the workers, waits for them, and prints the final count.
fn coordinator() -> Result<ExitCode, Error> {
    let dir = std::env::temp_dir().join(format!("syncd-counter-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("counter");
    write_counter(&file, 0, 0)?;
    let lock_name = format!("example-counter-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .arg("worker")
                .arg(&file)
                .arg(&lock_name)
                .arg(INCREMENTS.to_string())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut all_ok = true;
    for mut child in children {
        all_ok &= child.wait()?.success();
    }
    let (count, _) = read_counter(&file)?;
    std::fs::remove_dir_all(&dir)?;
    println!("Final counter: {count}");
    if all_ok && count == WORKERS * INCREMENTS {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "counter: expected {}, a worker failed or an update was lost",
            WORKERS * INCREMENTS
        );
        Ok(ExitCode::FAILURE)
    }
}

#[tokio::main]
async fn worker(args: &[String]) -> Result<ExitCode, Error> {
    let [file, lock_name, increments] = args else {
        return Err("usage: counter worker FILE LOCK INCREMENTS".into());
    };
    let file = PathBuf::from(file);
    let increments: u32 = increments.parse()?;
    let client = Client::connect(addr()).await?;
    let lock = client.lock(lock_name.clone());
    for _ in 0..increments {
        let guard = lock.acquire().await?;
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
    Ok(ExitCode::SUCCESS)
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
