//! `syncctl rwlock read|write|describe`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::proto::v1::{DescribeRwLockResponse, RwMode};

use crate::{
    args::NameArgs,
    exit::Failure,
    hold::{acquire_and_hold, HoldArgs},
    output::{format_holder, format_waiter, holder_json, mode_name, section, waiter_json},
    session::one_call,
    Cli,
};

const HOLD_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    hold_exit_codes!(),
    "\n",
    "Examples:\n",
    "  # Many readers at once:\n",
    "  syncctl rwlock read config -- ./render-site\n",
    "  # One writer, nobody reading meanwhile; give up after 10s:\n",
    "  syncctl rwlock write config --timeout 10s -- ./update-config\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json rwlock describe config\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum RwLockCommand {
    /// Take a shared (read) hold, then run CMD while holding it, or hold it
    /// until interrupted.
    ///
    /// Any number of readers hold the lock together, but never with a
    /// writer. Fair: requests are served in arrival order, so a waiting
    /// writer makes readers that come after it wait too (no writer
    /// starves), and the readers at the head of the queue go in together.
    ///
    /// With `-- CMD [ARGS...]`: runs CMD while holding, releases, and exits
    /// with CMD's exit code. CMD gets SYNCD_FENCING_TOKEN (this hold's
    /// fencing token), SYNCD_RWLOCK_NAME and SYNCD_RWLOCK_MODE (`read`).
    /// SIGINT, SIGTERM and SIGHUP are forwarded to CMD. If the hold is lost
    /// while CMD runs, syncctl sends SIGTERM to CMD, SIGKILL after
    /// --kill-grace, and exits 7.
    ///
    /// Without CMD: prints the fencing token and holds until SIGINT, SIGTERM
    /// or SIGHUP. With `--output json` it prints
    /// {"name":..,"fencing_token":..,"mode":"read"}.
    #[command(after_help = HOLD_AFTER_HELP)]
    Read(RwLockHoldArgs),
    /// Take the exclusive (write) hold, then run CMD while holding it, or
    /// hold it until interrupted.
    ///
    /// A writer holds the lock alone: it waits for the readers that hold it
    /// now, and readers that arrive after it wait for it.
    ///
    /// With `-- CMD [ARGS...]`: as `rwlock read`, with SYNCD_RWLOCK_MODE
    /// `write`.
    #[command(after_help = HOLD_AFTER_HELP)]
    Write(RwLockHoldArgs),
    /// Show a read-write lock's holders (readers, or one writer) and its
    /// waiters with their modes, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct RwLockHoldArgs {
    /// The read-write lock's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    #[command(flatten)]
    pub hold: HoldArgs,
}

pub async fn run(cli: &Cli, command: &RwLockCommand) -> Result<i32, Failure> {
    match command {
        RwLockCommand::Read(args) => hold(cli, args, false).await,
        RwLockCommand::Write(args) => hold(cli, args, true).await,
        RwLockCommand::Describe(args) => {
            let name = args.name.as_str();
            let lock = one_call(
                cli,
                |client| async move { client.rwlock(name).describe().await },
            )
            .await?;
            cli.output
                .describe(format_description(&lock), description_json(&lock))
        }
    }
}

async fn hold(cli: &Cli, args: &RwLockHoldArgs, write: bool) -> Result<i32, Failure> {
    acquire_and_hold(cli, &args.hold, |client| {
        let lock = client.rwlock(args.name.as_str());
        let timeout = args.hold.timeout;
        async move {
            match (write, timeout) {
                (false, None) => lock.read().await,
                (false, Some(timeout)) => lock.read_timeout(timeout).await,
                (true, None) => lock.write().await,
                (true, Some(timeout)) => lock.write_timeout(timeout).await,
            }
        }
    })
    .await
}

pub fn format_description(lock: &DescribeRwLockResponse) -> String {
    let readers = lock
        .holders
        .iter()
        .filter(|h| h.mode == RwMode::Read as i32)
        .count();
    let state = match (lock.holders.len(), readers) {
        (0, _) => "free".to_string(),
        (1, 1) => "held by 1 reader".to_string(),
        (n, r) if n == r => format!("held by {n} readers"),
        _ => "held by a writer".to_string(),
    };
    let mut text = format!("rwlock {:?}: {state}\n", lock.name);
    text += &section(
        "holders",
        lock.holders
            .iter()
            .map(|h| format!("{}: {}", mode_name(h.mode), format_holder(h))),
    );
    text += &section(
        "waiters",
        lock.waiters
            .iter()
            .map(|w| format!("{}: {}", mode_name(w.mode), format_waiter(w))),
    );
    text
}

pub fn description_json(lock: &DescribeRwLockResponse) -> Value {
    let with_mode = |mut object: serde_json::Map<String, Value>, mode: i32| {
        object.insert("mode".into(), mode_name(mode).into());
        Value::Object(object)
    };
    let holders: Vec<Value> = lock
        .holders
        .iter()
        .map(|h| with_mode(holder_json(h), h.mode))
        .collect();
    let waiters: Vec<Value> = lock
        .waiters
        .iter()
        .map(|w| with_mode(waiter_json(w), w.mode))
        .collect();
    json!({ "name": lock.name, "holders": holders, "waiters": waiters })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::{Holder, Waiter};

    fn holder(session_id: u64, mode: RwMode) -> Holder {
        Holder {
            session_id,
            client_name: "c".into(),
            host: String::new(),
            identity: String::new(),
            fencing_token: session_id + 10,
            held_ms: 0,
            lease_left_ms: 1000,
            permits: 0,
            mode: mode as i32,
        }
    }

    #[test]
    fn description_formats() {
        let free = DescribeRwLockResponse {
            name: "r".into(),
            ..Default::default()
        };
        assert_eq!(format_description(&free), "rwlock \"r\": free\n");
        let read = DescribeRwLockResponse {
            name: "r".into(),
            holders: vec![holder(1, RwMode::Read), holder(2, RwMode::Read)],
            waiters: vec![Waiter {
                session_id: 3,
                client_name: "w".into(),
                host: String::new(),
                identity: String::new(),
                waiting_ms: 5,
                permits: 0,
                mode: RwMode::Write as i32,
            }],
        };
        let text = format_description(&read);
        assert!(text.starts_with("rwlock \"r\": held by 2 readers\nholders: 2\n  1. read: session 1 (c), fencing token 11"), "{text}");
        assert!(
            text.ends_with("waiters: 1\n  1. write: session 3 (w), waiting for 5ms\n"),
            "{text}"
        );
        let json = description_json(&read);
        assert_eq!(json["holders"][1]["mode"], "read");
        assert_eq!(json["waiters"][0]["mode"], "write");
        let written = DescribeRwLockResponse {
            name: "r".into(),
            holders: vec![holder(1, RwMode::Write)],
            waiters: vec![],
        };
        assert_eq!(
            format_description(&written).lines().next(),
            Some("rwlock \"r\": held by a writer")
        );
    }
}
