//! `syncctl lock acquire|describe`.

use clap::{Args, Subcommand};
use serde_json::json;
use syncd::proto::v1::{DescribeLockResponse, LockHolder, LockWaiter};

use crate::{
    args::NameArgs,
    exit::Failure,
    hold::{acquire_and_hold, HoldArgs},
    output::format_ms,
    session::one_call,
    Cli,
};

const ACQUIRE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    hold_exit_codes!(),
    "\n",
    "Examples:\n",
    "  syncctl lock acquire deploy --ttl 30s -- sh -c 'echo \"token $SYNCD_FENCING_TOKEN\"; ./deploy.sh'\n",
    "  syncctl lock acquire deploy --timeout 0s -- ./deploy.sh     # try once: exit 3 if held\n",
    "  syncctl lock acquire maintenance                            # hold until Ctrl-C\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json lock describe deploy\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Take a lock, then run CMD while holding it, or hold it until
    /// interrupted.
    ///
    /// With `-- CMD [ARGS...]`: runs CMD while holding the lock (the session
    /// is kept alive in the background), then releases the lock and exits
    /// with CMD's exit code (128+N if CMD was killed by signal N; 127 if CMD
    /// was not found, 126 if it cannot be executed). CMD gets the environment
    /// variables SYNCD_FENCING_TOKEN (the grant's fencing token) and
    /// SYNCD_LOCK_NAME. SIGINT, SIGTERM and SIGHUP sent to syncctl are
    /// forwarded to CMD.
    ///
    /// If the lock is lost while CMD runs (the session expired, or could not
    /// be renewed for a full TTL, e.g. because syncctl was stopped or cut off
    /// from the server), syncctl says so on stderr, sends SIGTERM to CMD,
    /// SIGKILL after --kill-grace, and exits 7. The signals go to CMD's
    /// process only: a shell script should `exec` its last command or pass
    /// the signal on to its children.
    ///
    /// Without CMD: prints the fencing token (text: the number on one line;
    /// json: {"name":..,"fencing_token":..}) and holds the lock until SIGINT,
    /// SIGTERM or SIGHUP, then releases it and exits 0. Exits 7 if the lock
    /// is lost while held.
    ///
    /// On the way out syncctl tries for about 1s to release the lock and
    /// close its session; if the server cannot be reached it warns and
    /// leaves that to the session's lease (--ttl).
    #[command(after_help = ACQUIRE_AFTER_HELP)]
    Acquire(LockAcquireArgs),
    /// Show a lock's holder (session, client name, fencing token, how long
    /// held, lease left) and its waiters, first in line first.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct LockAcquireArgs {
    /// The lock's name: 1 to 256 bytes of UTF-8 without control characters.
    pub name: String,

    #[command(flatten)]
    pub hold: HoldArgs,
}

pub async fn run(cli: &Cli, command: &LockCommand) -> Result<i32, Failure> {
    match command {
        LockCommand::Acquire(args) => {
            acquire_and_hold(cli, &args.hold, |client| {
                let lock = client.lock(args.name.as_str());
                let timeout = args.hold.timeout;
                async move {
                    match timeout {
                        Some(timeout) => lock.acquire_timeout(timeout).await,
                        None => lock.acquire().await,
                    }
                }
            })
            .await
        }
        LockCommand::Describe(args) => {
            let name = args.name.as_str();
            let lock = one_call(
                cli,
                |client| async move { client.lock(name).describe().await },
            )
            .await?;
            cli.output
                .describe(format_description(&lock), description_json(&lock))
        }
    }
}

pub fn format_description(lock: &DescribeLockResponse) -> String {
    let mut text = match &lock.holder {
        Some(holder) => format!("lock {:?}: {}\n", lock.name, format_holder(holder)),
        None => format!("lock {:?}: free\n", lock.name),
    };
    if !lock.waiters.is_empty() {
        text.push_str(&format!("waiters: {}\n", lock.waiters.len()));
    }
    for (place, waiter) in lock.waiters.iter().enumerate() {
        text.push_str(&format!("  {}. {}\n", place + 1, format_waiter(waiter)));
    }
    text
}

fn format_holder(holder: &LockHolder) -> String {
    format!(
        "held by session {} ({}), fencing token {}, held for {}, lease left {}",
        holder.session_id,
        holder.client_name,
        holder.fencing_token,
        format_ms(holder.held_ms),
        format_ms(holder.lease_left_ms)
    )
}

fn format_waiter(waiter: &LockWaiter) -> String {
    format!(
        "session {} ({}), waiting for {}",
        waiter.session_id,
        waiter.client_name,
        format_ms(waiter.waiting_ms)
    )
}

pub fn description_json(lock: &DescribeLockResponse) -> serde_json::Value {
    let holder = lock.holder.as_ref().map(|h| {
        json!({
            "session_id": h.session_id,
            "client_name": h.client_name,
            "fencing_token": h.fencing_token,
            "held_ms": h.held_ms,
            "lease_left_ms": h.lease_left_ms,
        })
    });
    let waiters: Vec<_> = lock
        .waiters
        .iter()
        .map(|w| {
            json!({
                "session_id": w.session_id,
                "client_name": w.client_name,
                "waiting_ms": w.waiting_ms,
            })
        })
        .collect();
    json!({ "name": lock.name, "holder": holder, "waiters": waiters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_formats() {
        let lock = DescribeLockResponse {
            name: "db".into(),
            holder: Some(LockHolder {
                session_id: 4,
                client_name: "w@h:1".into(),
                host: String::new(),
                identity: String::new(),
                fencing_token: 17,
                held_ms: 1500,
                lease_left_ms: 8000,
            }),
            waiters: vec![LockWaiter {
                session_id: 5,
                client_name: "v@h:2".into(),
                host: String::new(),
                identity: String::new(),
                waiting_ms: 900,
            }],
        };
        assert_eq!(
            format_description(&lock),
            "lock \"db\": held by session 4 (w@h:1), fencing token 17, held for 1s 500ms, \
             lease left 8s\nwaiters: 1\n  1. session 5 (v@h:2), waiting for 900ms\n"
        );
        assert_eq!(description_json(&lock)["holder"]["fencing_token"], 17);
    }
}
