//! `syncctl sem acquire|describe`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::proto::v1::DescribeSemaphoreResponse;

use crate::{
    args::NameArgs,
    exit::Failure,
    hold::{acquire_and_hold, HoldArgs},
    output::{format_holder, format_waiter, holder_json, plural, section, waiter_json},
    session::one_call,
    Cli,
};

const ACQUIRE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    hold_exit_codes!("  6        the semaphore exists with another capacity (nothing was taken)\n"),
    "\n",
    "Examples:\n",
    "  # At most 3 builds at once on this machine pool:\n",
    "  syncctl sem acquire builders --capacity 3 -- make -j8\n",
    "  # Two of the three permits, give up after 30s:\n",
    "  syncctl sem acquire builders --capacity 3 --permits 2 --timeout 30s -- ./big-build\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json sem describe builders\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum SemCommand {
    /// Take permits of a semaphore, then run CMD while holding them, or
    /// hold them until interrupted.
    ///
    /// A semaphore lets at most --capacity permits be held at once, by any
    /// number of processes. The first acquire creates it with that
    /// capacity; every later one must name the same capacity while the
    /// semaphore exists (it exists while someone holds or waits), else
    /// syncctl exits 6. Waiters are served first come, first served: a
    /// request for many permits is not overtaken by later, smaller ones.
    ///
    /// With `-- CMD [ARGS...]`: runs CMD while holding the permits, then
    /// gives them back and exits with CMD's exit code. CMD gets
    /// SYNCD_FENCING_TOKEN (this hold's fencing token), SYNCD_SEMAPHORE_NAME
    /// and SYNCD_PERMITS. SIGINT, SIGTERM and SIGHUP are forwarded to CMD.
    /// If the permits are lost while CMD runs (the session expired, or could
    /// not be renewed for a full TTL), syncctl sends SIGTERM to CMD, SIGKILL
    /// after --kill-grace, and exits 7. A syncctl that dies (kill -9) holds
    /// its permits until its --ttl runs out.
    ///
    /// Without CMD: prints the fencing token and holds until SIGINT, SIGTERM
    /// or SIGHUP. With `--output json` it prints
    /// {"name":..,"fencing_token":..,"permits":..}.
    #[command(after_help = ACQUIRE_AFTER_HELP)]
    Acquire(SemAcquireArgs),
    /// Show a semaphore's capacity, the permits held, its holders (session,
    /// client, permits, fencing token, held for, lease left) and its
    /// waiters, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct SemAcquireArgs {
    /// The semaphore's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// How many permits the semaphore has. Fixed by whoever creates it;
    /// must match while it exists.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,

    /// How many permits to take at once, as one hold: 1 to --capacity.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub permits: u32,

    #[command(flatten)]
    pub hold: HoldArgs,
}

impl SemAcquireArgs {
    /// The command-line mistake the parser cannot see, if any.
    pub fn usage_error(&self) -> Option<String> {
        (self.permits > self.capacity).then(|| {
            format!(
                "--permits {} is more than --capacity {}: one hold takes at most every permit",
                self.permits, self.capacity
            )
        })
    }
}

pub async fn run(cli: &Cli, command: &SemCommand) -> Result<i32, Failure> {
    match command {
        SemCommand::Acquire(args) => {
            acquire_and_hold(cli, &args.hold, |client| {
                let semaphore = client.semaphore(args.name.as_str(), args.capacity);
                let (permits, timeout) = (args.permits, args.hold.timeout);
                async move {
                    match timeout {
                        Some(timeout) => semaphore.acquire_timeout(permits, timeout).await,
                        None => semaphore.acquire(permits).await,
                    }
                }
            })
            .await
        }
        SemCommand::Describe(args) => {
            let name = args.name.as_str();
            let semaphore = one_call(cli, |client| async move {
                client.semaphore(name, 0).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&semaphore), description_json(&semaphore))
        }
    }
}

pub fn format_description(semaphore: &DescribeSemaphoreResponse) -> String {
    let name = &semaphore.name;
    if semaphore.capacity == 0 {
        return format!("semaphore {name:?}: does not exist (nobody holds or waits)\n");
    }
    let mut text = format!(
        "semaphore {name:?}: {} of {} held, {} waiting\n",
        semaphore.permits_held,
        plural(semaphore.capacity.into(), "permit", "permits"),
        semaphore.waiters.len()
    );
    text += &section(
        "holders",
        semaphore.holders.iter().map(|h| {
            let permits = plural(h.permits.into(), "permit", "permits");
            format!("{permits}: {}", format_holder(h))
        }),
    );
    text += &section(
        "waiters",
        semaphore.waiters.iter().map(|w| {
            let permits = plural(w.permits.into(), "permit", "permits");
            format!("{permits}: {}", format_waiter(w))
        }),
    );
    text
}

pub fn description_json(semaphore: &DescribeSemaphoreResponse) -> Value {
    let holders: Vec<Value> = semaphore
        .holders
        .iter()
        .map(|h| {
            let mut holder = holder_json(h);
            holder.insert("permits".into(), h.permits.into());
            Value::Object(holder)
        })
        .collect();
    let waiters: Vec<Value> = semaphore
        .waiters
        .iter()
        .map(|w| {
            let mut waiter = waiter_json(w);
            waiter.insert("permits".into(), w.permits.into());
            Value::Object(waiter)
        })
        .collect();
    json!({
        "name": semaphore.name,
        "capacity": semaphore.capacity,
        "permits_held": semaphore.permits_held,
        "holders": holders,
        "waiters": waiters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::{Holder, Waiter};

    #[test]
    fn description_formats() {
        let semaphore = DescribeSemaphoreResponse {
            name: "s".into(),
            capacity: 3,
            permits_held: 2,
            holders: vec![Holder {
                session_id: 4,
                client_name: "w@h:1".into(),
                host: String::new(),
                identity: String::new(),
                fencing_token: 17,
                held_ms: 1500,
                lease_left_ms: 8000,
                permits: 2,
                mode: 0,
            }],
            waiters: vec![Waiter {
                session_id: 5,
                client_name: "v@h:2".into(),
                host: String::new(),
                identity: String::new(),
                waiting_ms: 900,
                permits: 3,
                mode: 0,
            }],
        };
        assert_eq!(
            format_description(&semaphore),
            "semaphore \"s\": 2 of 3 permits held, 1 waiting\n\
             holders: 1\n  1. 2 permits: session 4 (w@h:1), fencing token 17, held for 1s 500ms, \
             lease left 8s\n\
             waiters: 1\n  1. 3 permits: session 5 (v@h:2), waiting for 900ms\n"
        );
        let json = description_json(&semaphore);
        assert_eq!(json["holders"][0]["permits"], 2);
        assert_eq!(json["waiters"][0]["permits"], 3);
        assert_eq!(json["capacity"], 3);
        let gone = DescribeSemaphoreResponse {
            name: "s".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&gone),
            "semaphore \"s\": does not exist (nobody holds or waits)\n"
        );
    }
}
