//! `syncctl event set|clear|status|wait|describe`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::proto::v1::DescribeEventResponse;

use crate::{
    args::{NameArgs, WaitArgs},
    exit::Failure,
    output::{format_ms, format_waiter, section, waiters_json},
    session::{one_call, wait_command, Waited},
    Cli,
};

const SET_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        done\n",
    "  1        any other error (e.g. an invalid name)\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Examples:\n",
    "  syncctl event set deploy-done        # prints e.g. 2: the waiters it woke\n",
    "  syncctl event clear deploy-done\n",
    "  [ \"$(syncctl event status deploy-done)\" = set ] && echo done\n",
    common_footer!(),
);

const WAIT_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        the event is set\n",
    "  1        any other error (e.g. an invalid name)\n",
    "  2        invalid command line\n",
    "  3        still clear when --timeout passed\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "  128+N    interrupted by signal N while waiting\n",
    "\n",
    "Examples:\n",
    "  syncctl event wait deploy-done && ./smoke-test\n",
    "  syncctl event wait deploy-done --timeout 0s    # is it set? exit 0 or 3\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json event describe deploy-done\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum EventCommand {
    /// Set an event: wakes every process waiting for it, and later waits
    /// return at once until it is cleared.
    ///
    /// Prints how many waiters it woke: the number on one line (json:
    /// {"name":..,"is_set":true,"woken":N}). The flag is stored on the
    /// server and survives restarts. Setting a set event changes nothing.
    #[command(after_help = SET_AFTER_HELP)]
    Set(NameArgs),
    /// Clear an event: later waits wait again until it is set.
    ///
    /// Prints nothing (json: {"name":..,"is_set":false}).
    #[command(after_help = SET_AFTER_HELP)]
    Clear(NameArgs),
    /// Print whether an event is set: `set` or `clear` on one line (json:
    /// {"name":..,"is_set":..}). Exits 0 either way; an event never set
    /// is clear.
    #[command(after_help = SET_AFTER_HELP)]
    Status(NameArgs),
    /// Wait until an event is set; exit 0 then (at once if it is set now).
    ///
    /// Exits 3 if it is still clear when --timeout passes (`--timeout 0s`
    /// checks once). Prints nothing. SIGINT, SIGTERM or SIGHUP end the wait
    /// (exit 128+N) and leave nothing queued on the server.
    #[command(after_help = WAIT_AFTER_HELP)]
    Wait(EventWaitArgs),
    /// Show whether an event is set, since when, and who waits for it.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct EventWaitArgs {
    /// The event's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(cli: &Cli, command: &EventCommand) -> Result<i32, Failure> {
    match command {
        EventCommand::Set(args) => {
            let name = args.name.as_str();
            let woken =
                one_call(cli, |client| async move { client.event(name).set().await }).await?;
            let json = json!({ "name": name, "is_set": true, "woken": woken });
            cli.output.print(woken, json)?;
        }
        EventCommand::Clear(args) => {
            let name = args.name.as_str();
            one_call(
                cli,
                |client| async move { client.event(name).clear().await },
            )
            .await?;
            cli.output
                .print_json_only(json!({ "name": name, "is_set": false }))?;
        }
        EventCommand::Status(args) => {
            let name = args.name.as_str();
            let is_set = one_call(
                cli,
                |client| async move { client.event(name).is_set().await },
            )
            .await?;
            let json = json!({ "name": name, "is_set": is_set });
            cli.output
                .print(if is_set { "set" } else { "clear" }, json)?;
        }
        EventCommand::Wait(args) => {
            let name = args.name.as_str();
            let timeout = args.wait.timeout;
            let waited = wait_command(cli, args.wait.ttl, timeout, |client| async move {
                let event = client.event(name);
                match timeout {
                    Some(timeout) => event.wait_timeout(timeout).await,
                    None => event.wait().await,
                }
            })
            .await?;
            if let Waited::Interrupted(signal) = waited {
                return Ok(128 + signal);
            }
        }
        EventCommand::Describe(args) => {
            let name = args.name.as_str();
            let event = one_call(
                cli,
                |client| async move { client.event(name).describe().await },
            )
            .await?;
            return cli
                .output
                .describe(format_description(&event), description_json(&event));
        }
    }
    Ok(0)
}

pub fn format_description(event: &DescribeEventResponse) -> String {
    let state = if event.is_set {
        format!("set for {}", format_ms(event.set_ms))
    } else {
        "clear".to_string()
    };
    let mut text = format!("event {:?}: {state}\n", event.name);
    text += &section("waiters", event.waiters.iter().map(format_waiter));
    text
}

pub fn description_json(event: &DescribeEventResponse) -> Value {
    json!({
        "name": event.name,
        "is_set": event.is_set,
        "set_ms": event.set_ms,
        "waiters": waiters_json(&event.waiters),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Waiter;

    #[test]
    fn description_formats() {
        let set = DescribeEventResponse {
            name: "e".into(),
            is_set: true,
            set_ms: 3000,
            waiters: vec![],
        };
        assert_eq!(format_description(&set), "event \"e\": set for 3s\n");
        let clear = DescribeEventResponse {
            name: "e".into(),
            is_set: false,
            set_ms: 0,
            waiters: vec![Waiter {
                session_id: 2,
                client_name: "c".into(),
                waiting_ms: 10,
                ..Default::default()
            }],
        };
        assert_eq!(
            format_description(&clear),
            "event \"e\": clear\nwaiters: 1\n  1. session 2 (c), waiting for 10ms\n"
        );
        assert_eq!(description_json(&clear)["waiters"][0]["session_id"], 2);
    }
}
