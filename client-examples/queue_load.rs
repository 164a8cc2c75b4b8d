//! A queue load generator: producers and consumers of numbered items, each
//! a separate process, that report on stdout what the server acknowledged.
//! The "nothing lost" integration test (`tests/queue_nothing_lost.rs`)
//! runs several of each while it kills and restarts syncd; it can be run
//! by hand too:
//!
//! ```text
//! SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example queue_load -- \
//!     produce --queue jobs --from 0 --to 1000
//! SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example queue_load -- \
//!     consume --queue jobs --until-idle 5s
//! ```
//!
//! `produce` puts the items `FROM`..`TO` (exclusive), in order, each with
//! its number as text for value and priority 0, and prints `put <n> <item
//! id>` once the server acknowledged the put (the item is on disk).
//!
//! `consume` gets items and prints `got <n> <item id> <deliveries>` when
//! one arrives (`deliveries`: the server's count, this one included; above
//! 1 when an earlier delivery was not acked, or its answer was lost), then
//! acks it and prints `acked <n>` once the ack returned Ok (the item is
//! gone for good). It stops when no item came for `--until-idle`. Items are
//! held in flight for `--visibility-timeout`: one whose get answer or ack
//! was lost with a server comes back after it, to be delivered again.
//!
//! Every line is flushed as it is written. Lines that only explain:
//! `putretry <n>` (a put failed as unavailable after the client's own
//! retries, and is tried again as a new put: the first may have been
//! stored, so item `n` may be stored twice), `ackfailed <n> <item id>
//! <reason>` (the ack did not happen: the item comes back), `getretry`
//! and `ackretry <n>` (the server was unreachable beyond the client's own
//! retries; tried again).
//!
//! The client library retries across server restarts on its own (a put
//! with the same retry identity, so it is stored once); beyond that this
//! program keeps trying a call that failed as unavailable for
//! `--retry-for` (default 30 s) before it gives up. Exit code 0 when done,
//! 1 on an error (said on stderr).

#[path = "support/mod.rs"]
mod support;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use support::{say, Error};
use syncd::client::{Client, Error as ClientError, Queue};
use tonic::Code;

#[derive(Parser, Debug)]
#[command(about = "Produce or consume numbered queue items against syncd (SYNCD_ADDR)")]
struct Args {
    #[command(subcommand)]
    command: Role,
    /// How long to keep retrying a call that failed as unavailable (the
    /// server down) after the client library's own retries.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Put the items FROM..TO (exclusive); print `put <n> <item id>` each.
    Produce {
        /// The queue's name (made unbounded if it does not exist).
        #[arg(long)]
        queue: String,
        /// The first item's number.
        #[arg(long)]
        from: u64,
        /// One past the last item's number.
        #[arg(long)]
        to: u64,
    },
    /// Get and ack items until none came for --until-idle; print `got <n>
    /// <item id> <deliveries>` and `acked <n>`.
    Consume {
        /// The queue's name.
        #[arg(long)]
        queue: String,
        /// Stop when no item came for this long.
        #[arg(long, value_parser = humantime::parse_duration)]
        until_idle: Duration,
        /// How long an item stays in flight before it comes back unacked.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        visibility_timeout: Duration,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("queue_load: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("queue_load (pid {}): {error}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let retry_for = args.retry_for;
    let client = retrying(retry_for, || None, || Client::connect(support::addr())).await?;
    match args.command {
        Role::Produce { queue, from, to } => {
            produce(&client.queue(queue), from, to, retry_for).await?
        }
        Role::Consume {
            queue,
            until_idle,
            visibility_timeout,
        } => {
            let queue = client
                .queue(queue)
                .with_visibility_timeout(visibility_timeout);
            consume(&queue, until_idle, retry_for).await?;
        }
    }
    if let Err(error) = client.close().await {
        // Nothing of the run depends on it: the session expires anyway.
        eprintln!("queue_load: closing the session failed: {error}");
    }
    Ok(())
}

async fn produce(queue: &Queue, from: u64, to: u64, retry_for: Duration) -> Result<(), Error> {
    for n in from..to {
        let value = n.to_string();
        let retry_line = format!("putretry {n}");
        let item_id = retrying(
            retry_for,
            || Some(retry_line.clone()),
            || queue.put(value.clone(), 0),
        )
        .await
        .map_err(|e| format!("put {n}: {e}"))?;
        say(&format!("put {n} {item_id}"))?;
    }
    Ok(())
}

async fn consume(queue: &Queue, until_idle: Duration, retry_for: Duration) -> Result<(), Error> {
    loop {
        let got = retrying(
            retry_for,
            || Some("getretry".to_owned()),
            || queue.get_timeout(until_idle),
        )
        .await;
        let item = match got {
            Ok(item) => item,
            Err(ClientError::Timeout(_)) => return Ok(()),
            Err(error) => return Err(format!("get: {error}").into()),
        };
        let n = String::from_utf8_lossy(&item.value).into_owned();
        say(&format!("got {n} {} {}", item.id, item.deliveries))?;
        let retry_line = format!("ackretry {n}");
        let acked = retrying(
            retry_for,
            || Some(retry_line.clone()),
            || queue.ack(item.id),
        )
        .await;
        match acked {
            Ok(()) => say(&format!("acked {n}"))?,
            // Not in flight for this session any more (it came back after
            // its visibility timeout), or the session is gone: the item is
            // back in the queue and will be delivered again.
            Err(error @ ClientError::SessionLost(_)) => {
                say(&format!("ackfailed {n} {} {error}", item.id))?;
            }
            Err(ClientError::Status(status)) if status.code() == Code::FailedPrecondition => {
                say(&format!("ackfailed {n} {} {}", item.id, status.message()))?;
            }
            Err(error) => return Err(format!("ack of item {}: {error}", item.id).into()),
        }
    }
}

/// Calls `call` until it returns anything but [`ClientError::Unavailable`],
/// for at most `retry_for` after the first failure; prints the line
/// `retry_line` returns (if any) before each new try.
async fn retrying<T, F, Fut>(
    retry_for: Duration,
    retry_line: impl Fn() -> Option<String>,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut deadline = None;
    loop {
        match call().await {
            Err(ClientError::Unavailable(reason)) => {
                let deadline =
                    *deadline.get_or_insert_with(|| tokio::time::Instant::now() + retry_for);
                if tokio::time::Instant::now() >= deadline {
                    return Err(ClientError::Unavailable(reason));
                }
                if let Some(line) = retry_line() {
                    say(&line).map_err(|e| ClientError::Unavailable(e.to_string()))?;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
