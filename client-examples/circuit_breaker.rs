//! Seed exercise 8 across processes: one process's failing calls open a
//! syncd circuit breaker (3 consecutive failures, open for 1 s, 1 probe at
//! a time) for every process.
//!
//! The flaky downstream is shared by the processes: its calls are counted
//! in a tally (a file of counters changed only under a syncd lock, as in
//! the semaphore example). Call 1 succeeds, calls 2 to 4 fail ("service
//! down"), later ones succeed again. Two workers:
//! - the caller: one call through the closed breaker succeeds; once the
//!   other worker watches the breaker, three calls fail, and the third
//!   failure's record answers that the breaker is open; a fourth call is
//!   rejected at once without reaching the service;
//! - the bystander watches the breaker's state stream. When it sees it
//!   open, its own call is rejected without reaching the service: one
//!   process's failures opened it for all. It then waits for the stream to
//!   say half-open, which the server's timer does after the open timeout
//!   (nobody polls), takes the one probe permit, calls the service, which
//!   has recovered, and records the success, which closes the breaker; the
//!   stream says closed.
//!
//! Each step is checked, not assumed: every permit and rejection and the
//! state each record answers; that half-open came no sooner than the open
//! timeout after the caller sent the failure that opened it (wall-clock
//! times, one clock for every process on the machine); and, at the end,
//! that the service saw exactly 5 calls, so no rejected call reached it.
//!
//! The coordinator prints the lesson's lines as the workers report the
//! steps: `Success: ok` (the first call), `Circuit OPEN after 3 failures`
//! (once both workers were rejected), `Circuit HALF-OPEN after timeout`,
//! `Success after recovery`. The lesson's breaker lets any number of
//! calls through while half-open; this one admits one probe at a time.
//! The breaker has a fresh name each run; the coordinator deletes it at the end.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example circuit_breaker
//! Prints the four lines and exits 0; on a failed check says what went
//! wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{say, Error, Tally, WAIT_LIMIT};
use syncd::client::{
    Allowed, BreakerSettings, BreakerState, BreakerWatch, CallError, CircuitBreaker, Client,
};

const FAILURE_THRESHOLD: u32 = 3;
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// The server's clock counts milliseconds: slack for its rounding.
const CLOCK_SLACK: Duration = Duration::from_millis(5);
/// The service's calls that fail (counted from 1); the others succeed.
const FAILING_CALLS: std::ops::RangeInclusive<i64> = 2..=4;
/// Calls that reach the service: 1 success, 3 failures, 1 probe.
const SERVICE_CALLS: i64 = 5;

fn main() -> ExitCode {
    support::main("circuit_breaker", coordinator, worker)
}

fn settings() -> BreakerSettings {
    BreakerSettings {
        failure_threshold: FAILURE_THRESHOLD,
        open_timeout_ms: u64::try_from(OPEN_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        half_open_max_probes: 1,
        success_threshold: 1,
        ..BreakerSettings::default()
    }
}

/// Microseconds since the Unix epoch: one clock for all processes.
fn now_us() -> Result<u64, Error> {
    Ok(u64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros(),
    )?)
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("circuit_breaker")?;
    let tally_file = dir.path().join("tally").display().to_string();
    let breaker = support::unique_name("circuit_breaker", "downstream");
    let tally_lock = support::unique_name("circuit_breaker", "tally");
    let args = |role: &str| {
        [
            role.to_owned(),
            breaker.clone(),
            tally_file.clone(),
            tally_lock.clone(),
        ]
    };
    let mut workers = support::Workers::new();
    let mut caller = Report::new("caller", workers.spawn_piped("caller", args("caller"))?);
    let mut bystander = Report::new(
        "bystander",
        workers.spawn_piped("bystander", args("bystander"))?,
    );

    let answer = caller.expect("success")?;
    println!("Success: {answer}");
    let opened_sent_us: u64 = caller.expect("open")?.parse()?;
    caller.expect("rejected")?;
    bystander.expect("rejected")?;
    println!("Circuit OPEN after {FAILURE_THRESHOLD} failures");
    let half_open_us: u64 = bystander.expect("half-open")?.parse()?;
    let after = Duration::from_micros(half_open_us.saturating_sub(opened_sent_us));
    if after + CLOCK_SLACK < OPEN_TIMEOUT {
        return Err(format!(
            "the breaker turned half-open {after:?} after the failure that opened it was \
             sent, before its open timeout of {OPEN_TIMEOUT:?}"
        )
        .into());
    }
    println!("Circuit HALF-OPEN after timeout");
    bystander.expect("recovered")?;
    workers.wait()?;
    support::with_client(async |client| client.breaker(breaker).delete().await.map(drop))?;
    let calls = Tally::read(&PathBuf::from(&tally_file))?.get("calls");
    if calls != SERVICE_CALLS {
        return Err(format!(
            "the service saw {calls} calls, expected {SERVICE_CALLS} (1 success, \
             {FAILURE_THRESHOLD} failures, 1 probe): a rejected call reached it, or a step \
             was skipped"
        )
        .into());
    }
    println!("Success after recovery");
    Ok(())
}

/// A worker's report on its stdout pipe: one `WORD [VALUE]` line per step.
struct Report {
    label: &'static str,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Report {
    fn new(label: &'static str, stdout: std::process::ChildStdout) -> Report {
        Report {
            label,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line, which must be `word` or `word VALUE`; returns VALUE
    /// (empty when there is none).
    fn expect(&mut self, word: &str) -> Result<String, Error> {
        let label = self.label;
        let Some(line) = self.lines.next() else {
            return Err(format!("the {label} ended before it reported {word}").into());
        };
        let line = line?;
        let (first, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        if first != word {
            return Err(format!("the {label} reported {line:?}, expected {word}").into());
        }
        Ok(value.to_owned())
    }
}

/// `worker caller|bystander BREAKER TALLY TALLY_LOCK`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [role, breaker, tally_file, tally_lock] = args.as_slice() else {
        return Err(
            "usage: circuit_breaker worker caller|bystander BREAKER TALLY TALLY_LOCK".into(),
        );
    };
    let client = Client::connect(support::addr()).await?;
    let breaker = client.breaker(breaker.clone()).with_settings(settings());
    let service = Service {
        tally: Tally::new(&client, PathBuf::from(tally_file), tally_lock),
    };
    match role.as_str() {
        "caller" => caller(&breaker, &service).await?,
        "bystander" => bystander(&breaker, &service).await?,
        other => return Err(format!("unknown role {other:?}").into()),
    }
    client.close().await?;
    Ok(())
}

/// The flaky downstream, shared by the processes through the tally.
struct Service {
    tally: Tally,
}

impl Service {
    async fn call(&self) -> Result<&'static str, Error> {
        let number = self
            .tally
            .update(|counts| Ok(counts.add("calls", 1)))
            .await?;
        if FAILING_CALLS.contains(&number) {
            Err(format!("service down (call {number})").into())
        } else {
            Ok("ok")
        }
    }
}

/// Reports `success ANSWER`, `open SENT_US` (when the failure that opened the
/// breaker was sent) and `rejected`.
async fn caller(breaker: &CircuitBreaker, service: &Service) -> Result<(), Error> {
    match breaker.call(|| service.call()).await {
        Ok(answer) if answer == "ok" => say(&format!("success {answer}"))?,
        other => return Err(format!("the first call, through a new breaker: {other:?}").into()),
    }
    // Fail only once the bystander watches, so that it sees every change.
    support::eventually("the bystander to watch the breaker", WAIT_LIMIT, || async {
        Ok(breaker.describe().await?.watchers > 0)
    })
    .await?;
    let mut opened_sent_us = 0;
    for failure in 1..=FAILURE_THRESHOLD {
        let permit = match breaker.allow().await? {
            Allowed::Permit(permit) if permit.state() == BreakerState::Closed => permit,
            other => {
                return Err(format!("call {failure} to fail was not let through: {other:?}").into())
            }
        };
        if let Ok(answer) = service.call().await {
            return Err(format!("the service answered {answer:?}, expected it down").into());
        }
        opened_sent_us = now_us()?;
        let state = permit.failure().await?;
        let expected = if failure < FAILURE_THRESHOLD {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        if state != expected {
            return Err(format!(
                "after {failure} failures in a row the breaker is {state:?}, expected \
                 {expected:?}"
            )
            .into());
        }
    }
    say(&format!("open {opened_sent_us}"))?;
    expect_rejected(breaker, service, "the caller").await?;
    say("rejected")?;
    Ok(())
}

/// A call right after the breaker opened: refused without reaching the
/// service, with the time until the next probe.
async fn expect_rejected(
    breaker: &CircuitBreaker,
    service: &Service,
    who: &str,
) -> Result<(), Error> {
    match breaker.call(|| service.call()).await {
        Err(CallError::Rejected {
            state: BreakerState::Open,
            retry_after,
        }) if !retry_after.is_zero() && retry_after <= OPEN_TIMEOUT => Ok(()),
        other => Err(format!(
            "{who}'s call while the breaker is open (for {OPEN_TIMEOUT:?}) was not \
             rejected as it should: {other:?}"
        )
        .into()),
    }
}

/// Reports `rejected`, `half-open RECEIVED_US` and `recovered`.
async fn bystander(breaker: &CircuitBreaker, service: &Service) -> Result<(), Error> {
    support::eventually("the caller to create the breaker", WAIT_LIMIT, || async {
        Ok(breaker.describe().await?.exists)
    })
    .await?;
    let mut watch = breaker.watch().await?;
    // Closed (the first call succeeded) until the third failure opens it.
    let opened = loop {
        let change = next_change(&mut watch).await?;
        match change.state {
            BreakerState::Closed => continue,
            BreakerState::Open => break change,
            _ => return Err(format!("expected closed, then open; got {change:?}").into()),
        }
    };
    if opened.retry_after > OPEN_TIMEOUT {
        return Err(format!("opened for longer than {OPEN_TIMEOUT:?}: {opened:?}").into());
    }
    expect_rejected(breaker, service, "the bystander").await?;
    say("rejected")?;

    let half_open = next_change(&mut watch).await?;
    let received_us = now_us()?;
    if half_open.state != BreakerState::HalfOpen {
        return Err(format!("after open, expected half-open; got {half_open:?}").into());
    }
    say(&format!("half-open {received_us}"))?;

    let permit = match breaker.allow().await? {
        Allowed::Permit(permit) if permit.is_probe() => permit,
        other => return Err(format!("expected the half-open probe permit, got {other:?}").into()),
    };
    let answer = service.call().await?;
    if answer != "ok" {
        return Err(format!("the recovered service answered {answer:?}").into());
    }
    let state = permit.success().await?;
    if state != BreakerState::Closed {
        return Err(format!("a successful probe left the breaker {state:?}, not closed").into());
    }
    let closed = next_change(&mut watch).await?;
    if closed.state != BreakerState::Closed {
        return Err(format!("after the probe, expected closed; got {closed:?}").into());
    }
    say("recovered")?;
    Ok(())
}

/// The watch's next change, bounded by [`WAIT_LIMIT`].
async fn next_change(watch: &mut BreakerWatch) -> Result<syncd::client::BreakerChange, Error> {
    match tokio::time::timeout(WAIT_LIMIT, watch.next()).await {
        Ok(change) => Ok(change?),
        Err(_) => Err(format!("no breaker state change within {WAIT_LIMIT:?}").into()),
    }
}
