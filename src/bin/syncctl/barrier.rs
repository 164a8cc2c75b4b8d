//! `syncctl barrier wait|reset|describe|delete`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::proto::v1::DescribeBarrierResponse;

use crate::{
    args::{NameArgs, WaitArgs},
    exit::Failure,
    output::{format_waiter, plural, section, waiters_json},
    session::{one_call, wait_command, Waited},
    Cli,
};

const WAIT_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        all parties arrived: the barrier let this one pass\n",
    "  1        any other error (e.g. an invalid name)\n",
    "  2        invalid command line\n",
    "  3        --timeout passed before all parties arrived (this breaks the barrier)\n",
    "  4        the server cannot be reached\n",
    "  5        the barrier is broken: a party left while waiting (timed out, was\n",
    "           killed or interrupted), or it was reset or deleted meanwhile;\n",
    "           `syncctl barrier reset NAME` mends it\n",
    "  6        the barrier exists with another number of parties\n",
    denied_exit_code!(),
    "  128+N    interrupted by signal N while waiting (this breaks the barrier)\n",
    "\n",
    "Example: three CI jobs meet before the next phase:\n",
    "  syncctl barrier wait build-phase --parties 3 --timeout 10m && ./deploy\n",
    common_footer!(),
);

const ADMIN_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        done\n",
    "  1        any other error (the barrier does not exist, an invalid name, ...)\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Examples:\n",
    "  syncctl barrier reset build-phase     # prints the parties it aborted\n",
    "  syncctl barrier delete build-phase\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json barrier describe build-phase\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum BarrierCommand {
    /// Wait at a barrier until --parties processes have arrived, then all
    /// go on together.
    ///
    /// Prints this party's arrival index (0 for the first to arrive,
    /// parties-1 for the last) and exits 0 once everyone arrived. The
    /// barrier is reusable: then the next generation begins. With
    /// `--output json` it prints
    /// {"name":..,"arrival_index":..,"generation":..}.
    ///
    /// The first wait creates the barrier with --parties; later ones must
    /// name the same number (else exit 6) until it is deleted. A party that
    /// leaves while waiting breaks the barrier: its --timeout passing (it
    /// exits 3), a signal (128+N), or syncctl dying (its connection
    /// closes). Every party waiting then exits 5, and so does every later
    /// wait, until `barrier reset`.
    #[command(after_help = WAIT_AFTER_HELP)]
    Wait(BarrierWaitArgs),
    /// Mend a broken barrier. Parties waiting now are aborted (they exit
    /// 5); prints how many (json: {"name":..,"aborted":N}).
    #[command(after_help = ADMIN_AFTER_HELP)]
    Reset(NameArgs),
    /// Show a barrier's parties, generation, whether it is broken, and the
    /// parties waiting now, first arrival first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
    /// Forget a barrier (so that it can be made again with another number
    /// of parties). Parties waiting now are aborted (they exit 5); prints
    /// how many (json: {"name":..,"aborted":N}).
    #[command(after_help = ADMIN_AFTER_HELP)]
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct BarrierWaitArgs {
    /// The barrier's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// How many parties must arrive before all go on. Fixed by the wait
    /// that creates the barrier; must match until it is deleted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parties: u32,

    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(cli: &Cli, command: &BarrierCommand) -> Result<i32, Failure> {
    match command {
        BarrierCommand::Wait(args) => wait(cli, args).await,
        BarrierCommand::Reset(args) => {
            let name = args.name.as_str();
            let aborted = one_call(cli, |client| async move {
                client.barrier(name, 0).reset().await
            })
            .await?;
            cli.output
                .print(aborted, json!({ "name": name, "aborted": aborted }))?;
            Ok(0)
        }
        BarrierCommand::Delete(args) => {
            let name = args.name.as_str();
            let aborted = one_call(cli, |client| async move {
                client.barrier(name, 0).delete().await
            })
            .await?;
            cli.output
                .print(aborted, json!({ "name": name, "aborted": aborted }))?;
            Ok(0)
        }
        BarrierCommand::Describe(args) => {
            let name = args.name.as_str();
            let barrier = one_call(cli, |client| async move {
                client.barrier(name, 0).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&barrier), description_json(&barrier))
        }
    }
}

async fn wait(cli: &Cli, args: &BarrierWaitArgs) -> Result<i32, Failure> {
    let name = args.name.as_str();
    let (parties, timeout) = (args.parties, args.wait.timeout);
    let waited = wait_command(cli, args.wait.ttl, timeout, |client| async move {
        let barrier = client.barrier(name, parties);
        match timeout {
            Some(timeout) => barrier.wait_timeout(timeout).await,
            None => barrier.wait().await,
        }
    })
    .await?;
    let passed = match waited {
        Waited::Done(passed) => passed,
        Waited::Interrupted(signal) => return Ok(128 + signal),
    };
    let json = json!({
        "name": name,
        "arrival_index": passed.arrival_index,
        "generation": passed.generation,
    });
    cli.output.print(passed.arrival_index, json)?;
    Ok(0)
}

pub fn format_description(barrier: &DescribeBarrierResponse) -> String {
    let name = &barrier.name;
    if barrier.parties == 0 {
        return format!("barrier {name:?}: does not exist\n");
    }
    let state = if barrier.broken { "broken" } else { "ok" };
    let mut text = format!(
        "barrier {name:?}: {state}, {} of {} waiting, generation {}\n",
        barrier.waiters.len(),
        plural(barrier.parties.into(), "party", "parties"),
        barrier.generation
    );
    text += &section("waiters", barrier.waiters.iter().map(format_waiter));
    text
}

pub fn description_json(barrier: &DescribeBarrierResponse) -> Value {
    json!({
        "name": barrier.name,
        "parties": barrier.parties,
        "generation": barrier.generation,
        "broken": barrier.broken,
        "waiters": waiters_json(&barrier.waiters),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Waiter;

    #[test]
    fn description_formats() {
        let missing = DescribeBarrierResponse {
            name: "b".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&missing),
            "barrier \"b\": does not exist\n"
        );
        let waiting = DescribeBarrierResponse {
            name: "b".into(),
            parties: 3,
            generation: 2,
            broken: false,
            waiters: vec![Waiter {
                session_id: 4,
                client_name: "x".into(),
                waiting_ms: 20,
                ..Default::default()
            }],
        };
        assert_eq!(
            format_description(&waiting),
            "barrier \"b\": ok, 1 of 3 parties waiting, generation 2\n\
             waiters: 1\n  1. session 4 (x), waiting for 20ms\n"
        );
        assert_eq!(description_json(&waiting)["parties"], 3);
        let broken = DescribeBarrierResponse {
            broken: true,
            waiters: vec![],
            ..waiting
        };
        assert_eq!(
            format_description(&broken),
            "barrier \"b\": broken, 0 of 3 parties waiting, generation 2\n"
        );
    }
}
