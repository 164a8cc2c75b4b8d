//! Seed exercise 5 across processes: 15 requests, spread over 3 worker
//! processes of 5 concurrent requests each, pass one syncd token bucket of
//! rate 5/s and burst 10.
//!
//! The three workers meet at a syncd barrier and then send their 5
//! requests at once, each an `acquire(1)` that waits on the server. The
//! bucket starts full: the first 10 requests take the burst at once, the
//! other 5 wait in the bucket's FIFO and the server's timer hands each a
//! token as it refills, one every 200 ms, so the last passes about 1 s
//! after the first. Nobody polls and nothing sleeps while holding
//! anything (the lesson's bucket sleeps under its lock, so every waiter
//! queues behind one sleeper).
//!
//! The timing is checked, not assumed. Each worker reports, per request,
//! when it sent it and when the grant came back (wall-clock microseconds,
//! one clock for every process on the machine); the coordinator then
//! requires:
//! - all 15 granted, 5 per worker;
//! - the burst: at least 10 grants back within 200 ms (the time one token
//!   takes to refill) of the first request sent;
//! - the rate: no grant earlier than the bucket allows. The server cannot
//!   grant its first token before the first request was sent, so grant
//!   number k (from 1) cannot come back sooner than (k − 10) / 5 s after
//!   that (a few ms of slack for the server's millisecond clock); for the
//!   15th that is 1 s;
//! - and not much slower either: all 15 back within 2.5 s.
//!
//! The bucket and the barrier have fresh names each run; the barrier's last
//! arrival deletes it, and the coordinator deletes the bucket at the end.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example token_bucket
//! Prints `All requests completed — rate limited to 5/s with burst of 10`
//! and exits 0; on a failed check says what went wrong on stderr and
//! exits 1.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{say, Error, WAIT_LIMIT};
use syncd::client::{Client, RateLimit};

const RATE_PER_S: u32 = 5;
const BURST: u32 = 10;
const PROCESSES: u32 = 3;
const REQUESTS_PER_PROCESS: u32 = 5;
const REQUESTS: u32 = PROCESSES * REQUESTS_PER_PROCESS;
/// The server's clock counts milliseconds: slack for its rounding.
const CLOCK_SLACK: Duration = Duration::from_millis(5);
/// "Not wildly more" than the ideal 1 s, first request sent to last grant.
const TOTAL_MAX: Duration = Duration::from_millis(2_500);

fn main() -> ExitCode {
    support::main("token_bucket", coordinator, worker)
}

/// Microseconds since the Unix epoch: one clock for all processes.
fn now_us() -> Result<u64, Error> {
    Ok(u64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros(),
    )?)
}

/// One request as its worker saw it.
#[derive(Clone, Copy, Debug)]
struct Request {
    sent_us: u64,
    granted_us: u64,
}

fn coordinator() -> Result<(), Error> {
    let bucket = support::unique_name("token_bucket", "api");
    let barrier = support::unique_name("token_bucket", "start");
    let mut workers = support::Workers::new();
    let mut reports = Vec::new();
    for index in 0..PROCESSES {
        let stdout =
            workers.spawn_piped(format!("worker {index}"), [bucket.clone(), barrier.clone()])?;
        reports.push(BufReader::new(stdout));
    }
    let mut requests = Vec::new();
    for (index, report) in reports.into_iter().enumerate() {
        let mut mine = 0;
        for line in report.lines() {
            let line = line?;
            let words: Vec<&str> = line.split(' ').collect();
            let ["granted", sent_us, granted_us] = words.as_slice() else {
                return Err(format!("worker {index} reported {line:?}").into());
            };
            requests.push(Request {
                sent_us: sent_us.parse()?,
                granted_us: granted_us.parse()?,
            });
            mine += 1;
        }
        if mine != REQUESTS_PER_PROCESS {
            return Err(format!(
                "worker {index} reported {mine} granted requests, not {REQUESTS_PER_PROCESS}"
            )
            .into());
        }
    }
    workers.wait()?;
    support::with_client(async |client| client.rate_limit(bucket, 0, 0).delete().await.map(drop))?;
    check_timing(&requests)?;
    println!("All requests completed — rate limited to {RATE_PER_S}/s with burst of {BURST}");
    Ok(())
}

/// The burst, the rate and the total (see the module doc).
fn check_timing(requests: &[Request]) -> Result<(), Error> {
    if requests.len() != REQUESTS as usize {
        return Err(format!("{} requests granted, not {REQUESTS}", requests.len()).into());
    }
    let first_sent_us = requests.iter().map(|r| r.sent_us).min().unwrap_or(0);
    let mut after: Vec<Duration> = requests
        .iter()
        .map(|r| Duration::from_micros(r.granted_us.saturating_sub(first_sent_us)))
        .collect();
    after.sort_unstable();
    let shown = || {
        let ms: Vec<String> = after.iter().map(|d| d.as_millis().to_string()).collect();
        format!("grants back after [{}] ms", ms.join(", "))
    };
    let refill = Duration::from_secs(1) / RATE_PER_S;
    let in_burst = after.iter().filter(|d| **d < refill).count();
    if in_burst < BURST as usize {
        return Err(format!(
            "only {in_burst} requests passed within {refill:?} of the first request, \
             expected the burst of {BURST} at once; {}",
            shown()
        )
        .into());
    }
    for (index, at) in after.iter().enumerate() {
        let number = u32::try_from(index)? + 1;
        let earliest = refill * number.saturating_sub(BURST);
        if *at + CLOCK_SLACK < earliest {
            return Err(format!(
                "grant {number} came back {at:?} after the first request, before the bucket \
                 could have refilled it ({earliest:?}); {}",
                shown()
            )
            .into());
        }
    }
    let total = after.last().copied().unwrap_or_default();
    if total > TOTAL_MAX {
        return Err(format!(
            "the {REQUESTS} requests took {total:?}, far above the 1 s the rate allows \
             (at most {TOTAL_MAX:?} accepted); {}",
            shown()
        )
        .into());
    }
    Ok(())
}

/// `worker BUCKET BARRIER`: meets the other workers at the barrier,
/// then sends its 5 requests at once; reports `granted SENT_US GRANTED_US`
/// for each on stdout.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [bucket, barrier] = args.as_slice() else {
        return Err("usage: token_bucket worker BUCKET BARRIER".into());
    };
    let client = Client::connect(support::addr()).await?;
    let bucket = client.rate_limit(bucket.clone(), RATE_PER_S, BURST);
    let barrier = client.barrier(barrier.clone(), PROCESSES);
    let passed = barrier.wait_timeout(WAIT_LIMIT).await?;
    if passed.arrival_index == PROCESSES - 1 {
        // A barrier is stored until deleted; this run's name is used once,
        // and everyone has passed.
        barrier.delete().await?;
    }
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS_PER_PROCESS {
        requests.spawn(request(bucket.clone()));
    }
    while let Some(done) = requests.join_next().await {
        let request = done??;
        say(&format!(
            "granted {} {}",
            request.sent_us, request.granted_us
        ))?;
    }
    client.close().await?;
    Ok(())
}

/// One request: wait on the server for a token.
async fn request(bucket: RateLimit) -> Result<Request, Error> {
    let sent_us = now_us()?;
    bucket.acquire_timeout(1, WAIT_LIMIT).await?;
    let granted_us = now_us()?;
    Ok(Request {
        sent_us,
        granted_us,
    })
}
