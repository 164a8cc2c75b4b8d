//! `syncctl ratelimit take|describe`.
//!
//! Taken tokens are not held: they are used up. So `take -- CMD` only
//! waits for them and then runs CMD through the machinery of `lock
//! acquire` (`hold`), with a "hold" that can never be lost and gives
//! nothing back: CMD's exit code, 126/127 and 128+N come out the same way.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::{
    client::{Client, Error},
    proto::v1::DescribeRateLimitResponse,
};
use tonic::{Code, Status};

use crate::{
    args::{NameArgs, WaitArgs},
    exit::Failure,
    hold::{acquire_and_hold, Guard, HoldArgs},
    output::{format_waiter, plural, section, waiter_json},
    session::{one_call, wait_command, Waited},
    Cli,
};

const TAKE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        taken (with CMD: CMD exited 0)\n",
    "  1        any other error (more --tokens than the burst, a bucket that does not\n",
    "           exist and no --rate/--burst to create it, an invalid name, ...)\n",
    "  2        invalid command line\n",
    "  3        the tokens were not there within --timeout (nothing was taken)\n",
    "  4        the server cannot be reached\n",
    "  6        the bucket exists with another --rate or --burst (nothing was taken)\n",
    denied_exit_code!(),
    "  N        with CMD: CMD's own exit code\n",
    "  126      CMD could not be executed (the tokens are used up all the same)\n",
    "  127      CMD was not found (the tokens are used up all the same)\n",
    "  128+N    interrupted by signal N while waiting (nothing was taken), or CMD\n",
    "           killed by signal N\n",
    "\n",
    "Examples:\n",
    "  # At most 5 calls per second across every machine, bursts of up to 10:\n",
    "  syncctl ratelimit take api --rate 5 --burst 10 -- curl -fsS https://api.example.com/\n",
    "  syncctl ratelimit take api --timeout 0s && echo 'a token was there'\n",
    "  syncctl ratelimit take api --tokens 3 --timeout 2s -- ./batch-of-three\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json ratelimit describe api\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum RateLimitCommand {
    /// Take tokens from a shared token bucket, waiting for them in line,
    /// then run CMD, or print the tokens left.
    ///
    /// A bucket refills at --rate tokens per second up to --burst tokens; a
    /// new bucket starts full. Takers wait on the server first come, first
    /// served (a request for many tokens is not overtaken by later, smaller
    /// ones), and the server hands the tokens out as they refill: nobody
    /// polls. --timeout 0s tries once (exit 3 if the tokens are not there);
    /// a wait that times out or is interrupted takes nothing.
    ///
    /// The first take creates the bucket with --rate and --burst; later
    /// takes may leave them out (or give 0) to use the existing bucket's,
    /// and must otherwise name the same, else syncctl exits 6. A bucket is
    /// kept until `syncctl ratelimit delete`.
    ///
    /// With `-- CMD [ARGS...]`: runs CMD once the tokens are taken and exits
    /// with CMD's exit code. Taken tokens are used up, not held: nothing is
    /// given back when CMD ends or fails. CMD gets SYNCD_RATELIMIT_NAME,
    /// SYNCD_TOKENS (the tokens taken) and SYNCD_TOKENS_REMAINING (whole
    /// tokens left in the bucket right after). SIGINT, SIGTERM and SIGHUP
    /// are forwarded to CMD.
    ///
    /// Without CMD: prints e.g. `took 1 token from "api"; 9 left` (json:
    /// {"name":..,"tokens":..,"remaining":..}).
    #[command(after_help = TAKE_AFTER_HELP)]
    Take(RateLimitTakeArgs),
    /// Show a bucket's rate, burst, the whole tokens there now, and the
    /// takers waiting, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
    /// Forget a bucket (to make it again with another rate or burst, or to
    /// clean up). Takers waiting on it fail (NOT_FOUND, exit 1). Prints how
    /// many were waiting; exit 1 if it does not exist.
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct RateLimitTakeArgs {
    /// The bucket's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// Tokens per second the bucket refills at. Needed (with --burst) to
    /// create the bucket; fixed then. 0 or left out: the existing bucket's.
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub rate: u32,

    /// The most tokens the bucket holds: how many can be taken at once
    /// after a quiet spell. Needed (with --rate) to create the bucket;
    /// fixed then. 0 or left out: the existing bucket's.
    #[arg(long, value_name = "B", default_value_t = 0)]
    pub burst: u32,

    /// How many tokens to take at once, as one request: 1 to the burst.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tokens: u32,

    #[command(flatten)]
    pub wait: WaitArgs,

    /// The command to run once the tokens are taken, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn run(cli: &Cli, command: &RateLimitCommand) -> Result<i32, Failure> {
    match command {
        RateLimitCommand::Take(args) if args.command.is_empty() => take_and_print(cli, args).await,
        RateLimitCommand::Take(args) => take_and_run(cli, args).await,
        RateLimitCommand::Describe(args) => {
            let name = args.name.as_str();
            let bucket = one_call(cli, |client| async move {
                client.rate_limit(name, 0, 0).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&bucket), description_json(&bucket))
        }
        RateLimitCommand::Delete(args) => {
            let name = args.name.as_str();
            let ended = one_call(cli, |client| async move {
                client.rate_limit(name, 0, 0).delete().await
            })
            .await?;
            let text = format!("deleted rate limit {name:?}; {ended} waiting takes ended");
            let json = json!({ "name": name, "waiters_ended": ended });
            cli.output.print(&text, json)?;
            Ok(0)
        }
    }
}

/// Waits for the tokens (bounded by --timeout) with `client`; returns the
/// whole tokens left.
async fn take_tokens(client: &Client, args: &RateLimitTakeArgs) -> Result<u32, Error> {
    let bucket = client.rate_limit(args.name.as_str(), args.rate, args.burst);
    let taken = match args.wait.timeout {
        Some(timeout) => bucket.acquire_timeout(args.tokens, timeout).await,
        None => bucket.acquire(args.tokens).await,
    };
    taken.map_err(|error| explain_missing(error, &args.name))
}

/// NOT_FOUND: the bucket does not exist and no settings came to create
/// it. Says which flags do.
fn explain_missing(error: Error, name: &str) -> Error {
    match error {
        Error::Status(status) if status.code() == Code::NotFound => {
            Error::Status(Status::not_found(format!(
                "rate limit {name:?} does not exist: pass --rate R --burst B to create it"
            )))
        }
        error => error,
    }
}

async fn take_and_print(cli: &Cli, args: &RateLimitTakeArgs) -> Result<i32, Failure> {
    let timeout = args.wait.timeout;
    let waited = wait_command(cli, args.wait.ttl, timeout, |client| async move {
        take_tokens(&client, args).await
    })
    .await?;
    let remaining = match waited {
        Waited::Done(remaining) => remaining,
        Waited::Interrupted(signal) => return Ok(128 + signal),
    };
    let taken = TokensTaken {
        name: args.name.clone(),
        tokens: args.tokens,
        remaining,
    };
    cli.output.print(taken.text(), taken.json())?;
    Ok(0)
}

async fn take_and_run(cli: &Cli, args: &RateLimitTakeArgs) -> Result<i32, Failure> {
    let hold = HoldArgs {
        ttl: args.wait.ttl,
        timeout: args.wait.timeout,
        // Never used: taken tokens cannot be lost, so CMD is never stopped.
        kill_grace: std::time::Duration::from_secs(5),
        command: args.command.clone(),
    };
    acquire_and_hold(cli, &hold, |client| {
        let client = client.clone();
        async move {
            let remaining = take_tokens(&client, args).await?;
            Ok(TokensTaken {
                name: args.name.clone(),
                tokens: args.tokens,
                remaining,
            })
        }
    })
    .await
}

/// Tokens taken: used up, so there is nothing to lose or give back.
struct TokensTaken {
    name: String,
    tokens: u32,
    remaining: u32,
}

impl Guard for TokensTaken {
    fn what(&self) -> String {
        format!(
            "{} of rate limit {:?}",
            plural(self.tokens.into(), "token", "tokens"),
            self.name
        )
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_RATELIMIT_NAME", self.name.clone()),
            ("SYNCD_TOKENS", self.tokens.to_string()),
            ("SYNCD_TOKENS_REMAINING", self.remaining.to_string()),
        ]
    }

    /// `took 1 token from "api"; 9 left`.
    fn text(&self) -> String {
        format!(
            "took {} from {:?}; {} left",
            plural(self.tokens.into(), "token", "tokens"),
            self.name,
            self.remaining
        )
    }

    fn json(&self) -> Value {
        json!({ "name": self.name, "tokens": self.tokens, "remaining": self.remaining })
    }

    async fn lost(&self) -> String {
        std::future::pending().await
    }

    async fn release(self, _succeeded: bool) -> Result<(), Error> {
        Ok(())
    }
}

pub fn format_description(bucket: &DescribeRateLimitResponse) -> String {
    let name = &bucket.name;
    if bucket.rate_per_s == 0 {
        return format!("rate limit {name:?}: does not exist\n");
    }
    let mut text = format!(
        "rate limit {name:?}: {}/s, burst {}; {} now, {} waiting\n",
        plural(bucket.rate_per_s.into(), "token", "tokens"),
        bucket.capacity,
        plural(bucket.tokens.into(), "token", "tokens"),
        bucket.waiters.len()
    );
    text += &section(
        "waiters",
        bucket.waiters.iter().map(|w| {
            let tokens = plural(w.permits.into(), "token", "tokens");
            format!("{tokens}: {}", format_waiter(w))
        }),
    );
    text
}

pub fn description_json(bucket: &DescribeRateLimitResponse) -> Value {
    let waiters: Vec<Value> = bucket
        .waiters
        .iter()
        .map(|w| {
            let mut waiter = waiter_json(w);
            waiter.insert("tokens".into(), w.permits.into());
            Value::Object(waiter)
        })
        .collect();
    json!({
        "name": bucket.name,
        "rate_per_s": bucket.rate_per_s,
        "burst": bucket.capacity,
        "tokens": bucket.tokens,
        "waiters": waiters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Waiter;

    #[test]
    fn taken_tokens_read_as_a_sentence() {
        let taken = TokensTaken {
            name: "api".into(),
            tokens: 1,
            remaining: 9,
        };
        assert_eq!(taken.text(), "took 1 token from \"api\"; 9 left");
        assert_eq!(
            taken.json(),
            json!({ "name": "api", "tokens": 1, "remaining": 9 })
        );
        let three = TokensTaken { tokens: 3, ..taken };
        assert_eq!(three.what(), "3 tokens of rate limit \"api\"");
    }

    #[test]
    fn a_missing_bucket_says_which_flags_create_it() {
        let missing = Error::Status(Status::not_found("bucket \"api\" does not exist"));
        assert_eq!(
            explain_missing(missing, "api").to_string(),
            "not found: rate limit \"api\" does not exist: pass --rate R --burst B to create it"
        );
        let other = Error::Status(Status::invalid_argument("too many"));
        assert_eq!(
            explain_missing(other, "api").to_string(),
            "invalid argument: too many"
        );
    }

    #[test]
    fn description_formats() {
        let missing = DescribeRateLimitResponse {
            name: "api".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&missing),
            "rate limit \"api\": does not exist\n"
        );
        let bucket = DescribeRateLimitResponse {
            name: "api".into(),
            rate_per_s: 5,
            capacity: 10,
            tokens: 0,
            waiters: vec![Waiter {
                session_id: 5,
                client_name: "c".into(),
                waiting_ms: 900,
                permits: 3,
                ..Default::default()
            }],
        };
        assert_eq!(
            format_description(&bucket),
            "rate limit \"api\": 5 tokens/s, burst 10; 0 tokens now, 1 waiting\n\
             waiters: 1\n  1. 3 tokens: session 5 (c), waiting for 900ms\n"
        );
        let json = description_json(&bucket);
        assert_eq!(json["burst"], 10);
        assert_eq!(json["rate_per_s"], 5);
        assert_eq!(json["waiters"][0]["tokens"], 3);
    }
}
