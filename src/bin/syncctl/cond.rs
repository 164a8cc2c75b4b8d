//! `syncctl cond notify|describe`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::proto::v1::DescribeConditionResponse;

use crate::{
    args::NameArgs,
    exit::Failure,
    output::{format_waiter, section, waiters_json},
    session::one_call,
    Cli,
};

const NOTIFY_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        done (also when nobody waited: it prints 0)\n",
    "  1        any other error (e.g. an invalid name)\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Examples:\n",
    "  syncctl cond notify queue-not-empty            # wake the first waiter\n",
    "  syncctl cond notify queue-not-empty --count 3\n",
    "  syncctl cond notify queue-not-empty --all\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json cond describe queue-not-empty\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum CondCommand {
    /// Wake processes waiting on a condition, first in line first.
    ///
    /// A waiter (a program using the client library) gave up a lock when it
    /// began to wait; a woken waiter queues for that lock again and goes on
    /// once it holds it. Notifying needs no lock: it is one atomic step on
    /// the server. Wakes one waiter, --count N of them, or --all.
    ///
    /// Prints how many it woke: the number on one line, 0 when nobody
    /// waited (json: {"name":..,"woken":N}). A notification is not stored:
    /// waiters that come later do not see it.
    #[command(after_help = NOTIFY_AFTER_HELP)]
    Notify(NotifyArgs),
    /// Show the lock a condition is bound to (while anyone waits) and its
    /// waiters, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct NotifyArgs {
    /// The condition's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// Wake every waiter.
    #[arg(long, conflicts_with = "count")]
    pub all: bool,

    /// How many waiters to wake, first in line first.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
}

pub async fn run(cli: &Cli, command: &CondCommand) -> Result<i32, Failure> {
    match command {
        CondCommand::Notify(args) => {
            let name = args.name.as_str();
            let (all, count) = (args.all, args.count);
            let woken = one_call(cli, |client| async move {
                let condition = client.condition(name);
                if all {
                    condition.notify_all().await
                } else {
                    condition.notify(count).await
                }
            })
            .await?;
            cli.output
                .print(woken, json!({ "name": name, "woken": woken }))?;
            Ok(0)
        }
        CondCommand::Describe(args) => {
            let name = args.name.as_str();
            let condition = one_call(cli, |client| async move {
                client.condition(name).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&condition), description_json(&condition))
        }
    }
}

pub fn format_description(condition: &DescribeConditionResponse) -> String {
    let name = &condition.name;
    if condition.waiters.is_empty() {
        return format!("condition {name:?}: nobody waits\n");
    }
    let mut text = format!(
        "condition {name:?}: bound to lock {:?}, {} waiting\n",
        condition.lock,
        condition.waiters.len()
    );
    text += &section("waiters", condition.waiters.iter().map(format_waiter));
    text
}

pub fn description_json(condition: &DescribeConditionResponse) -> Value {
    let lock = (!condition.lock.is_empty()).then_some(condition.lock.as_str());
    json!({
        "name": condition.name,
        "lock": lock,
        "waiters": waiters_json(&condition.waiters),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Waiter;

    #[test]
    fn description_formats() {
        let idle = DescribeConditionResponse {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(format_description(&idle), "condition \"c\": nobody waits\n");
        assert!(description_json(&idle)["lock"].is_null());
        let waited = DescribeConditionResponse {
            name: "c".into(),
            lock: "l".into(),
            waiters: vec![Waiter {
                session_id: 9,
                client_name: "x".into(),
                waiting_ms: 1000,
                ..Default::default()
            }],
        };
        assert_eq!(
            format_description(&waited),
            "condition \"c\": bound to lock \"l\", 1 waiting\nwaiters: 1\n  1. session 9 (x), waiting for 1s\n"
        );
        assert_eq!(description_json(&waited)["lock"], "l");
    }
}
