//! A helper for the rate limit and circuit breaker fault tests
//! (`tests/ratelimit_breaker_faults.rs`): one process that either hammers a
//! token bucket and reports what it was granted, or takes a breaker's
//! half-open probe permit and holds it until it is killed. It can be run
//! by hand too:
//!
//! ```text
//! SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example ratelimit_breaker_load -- \
//!     hammer --bucket api --rate 50 --burst 20 --mode try --for 3s
//! SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example ratelimit_breaker_load -- \
//!     hold-probe --breaker payments --ttl 2s
//! ```
//!
//! `hammer` waits until `--start-at-ms` (Unix milliseconds; default now),
//! then for `--for` takes one token at a time from the bucket, one request
//! in flight: `--mode try` with `try_acquire` as fast as the answers come
//! (a refusal is counted, and the next try follows at once), `--mode
//! acquire` with `acquire`, waiting on the server. At the end it prints one
//! line, `granted=N refused=M first_sent_us=.. first_granted_us=..
//! last_sent_us=.. last_granted_us=..`: the tokens granted, the tries
//! refused, and when the requests of the first and the last grant were sent
//! and answered (Unix microseconds; 0 when nothing was granted).
//!
//! `hold-probe` connects with a session TTL of `--ttl`, asks the existing
//! breaker for a permit, requires a half-open probe, prints `probe <fencing
//! token> <session id>` and then sleeps, holding the permit, until it is
//! killed. Exit code 0 when done, 1 on an error (said on stderr).

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use support::{say, Error, WAIT_LIMIT};
use syncd::client::{Allowed, Client, ClientOptions, RateLimit};

#[derive(Parser, Debug)]
#[command(
    about = "Hammer a token bucket, or hold a breaker's probe permit, against syncd \
                   (SYNCD_ADDR)"
)]
struct Args {
    #[command(subcommand)]
    command: Role,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Take tokens one at a time for a while; print what was granted.
    Hammer {
        /// The bucket's name.
        #[arg(long)]
        bucket: String,
        /// Tokens per second (to create the bucket; or its own).
        #[arg(long)]
        rate: u32,
        /// The burst (to create the bucket; or its own).
        #[arg(long)]
        burst: u32,
        /// `try`: try_acquire as fast as answers come; `acquire`: wait on
        /// the server.
        #[arg(long, value_enum)]
        mode: Mode,
        /// When to start, in Unix milliseconds (default: at once).
        #[arg(long, default_value_t = 0)]
        start_at_ms: u64,
        /// How long to keep asking.
        #[arg(long = "for", value_parser = syncd::duration::parse)]
        run_for: Duration,
    },
    /// Take the half-open probe permit of an existing breaker and hold it
    /// until killed; print `probe <fencing token> <session id>`.
    HoldProbe {
        /// The breaker's name.
        #[arg(long)]
        breaker: String,
        /// The session's TTL: how long after a kill the permit is freed.
        #[arg(long, value_parser = syncd::duration::parse)]
        ttl: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Try,
    Acquire,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ratelimit_breaker_load: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "ratelimit_breaker_load (pid {}): {error}",
                std::process::id()
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    match args.command {
        Role::Hammer {
            bucket,
            rate,
            burst,
            mode,
            start_at_ms,
            run_for,
        } => {
            let client = Client::connect(support::addr()).await?;
            let bucket = client.rate_limit(bucket, rate, burst);
            let start_at = UNIX_EPOCH + Duration::from_millis(start_at_ms);
            if let Ok(wait) = start_at.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            let grants = hammer(&bucket, mode, run_for).await?;
            say(&grants.line())?;
            client.close().await?;
        }
        Role::HoldProbe { breaker, ttl } => {
            let options = ClientOptions {
                session_ttl: ttl,
                client_name: "ratelimit_breaker_load hold-probe".into(),
                ..ClientOptions::default()
            };
            let client = Client::connect_with(support::addr(), options).await?;
            let permit = match client.breaker(breaker).allow().await? {
                Allowed::Permit(permit) if permit.is_probe() => permit,
                other => return Err(format!("expected a probe permit, got {other:?}").into()),
            };
            say(&format!(
                "probe {} {}",
                permit.fencing_token(),
                client.session_id()
            ))?;
            // Hold it (and keep the session alive) until killed.
            loop {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
            }
        }
    }
    Ok(())
}

/// What one hammering process was granted.
#[derive(Debug, Default)]
struct Grants {
    granted: u64,
    refused: u64,
    /// When the request of the first grant was sent, and answered.
    first: (u64, u64),
    /// When the request of the last grant was sent, and answered.
    last: (u64, u64),
}

impl Grants {
    fn record(&mut self, sent_us: u64, granted_us: u64) {
        if self.granted == 0 {
            self.first = (sent_us, granted_us);
        }
        self.last = (sent_us, granted_us);
        self.granted += 1;
    }

    fn line(&self) -> String {
        format!(
            "granted={} refused={} first_sent_us={} first_granted_us={} last_sent_us={} \
             last_granted_us={}",
            self.granted, self.refused, self.first.0, self.first.1, self.last.0, self.last.1
        )
    }
}

/// Microseconds since the Unix epoch: one clock for all processes.
fn now_us() -> Result<u64, Error> {
    Ok(u64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros(),
    )?)
}

/// One token at a time, one request in flight, for `run_for`.
async fn hammer(bucket: &RateLimit, mode: Mode, run_for: Duration) -> Result<Grants, Error> {
    let stop_at = tokio::time::Instant::now() + run_for;
    let mut grants = Grants::default();
    while tokio::time::Instant::now() < stop_at {
        let sent_us = now_us()?;
        let taken = match mode {
            Mode::Try => bucket.try_acquire(1).await?.taken,
            Mode::Acquire => {
                bucket.acquire_timeout(1, WAIT_LIMIT).await?;
                true
            }
        };
        if taken {
            grants.record(sent_us, now_us()?);
        } else {
            grants.refused += 1;
        }
    }
    Ok(grants)
}
