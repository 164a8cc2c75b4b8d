//! Holding something while a command runs: the machinery that `lock
//! acquire`, `sem acquire`, `rwlock read|write`, `queue get -- CMD` and
//! `pool checkout` share.
//!
//! Acquire (a signal ends the wait: exit 128+N), then either run CMD with
//! what it holds in its environment (and, for a queue item, on its stdin),
//! forwarding SIGINT, SIGTERM and SIGHUP to it, or print the token and hold
//! until one of those signals. If the hold is lost meanwhile (its session
//! expired, or could not be renewed for a full TTL; a queue item's
//! visibility timeout passed), say so, stop CMD (SIGTERM, SIGKILL after the
//! grace) and exit 7. When the session's lease is only in danger (no
//! keep-alive confirmed for half its TTL), warn once on stderr and let CMD
//! run on. On the way out give the hold back — how depends on
//! whether CMD succeeded: a queue item is acked or nacked, a pool resource
//! checked in healthy or not — and close the session, giving up after about
//! a second when the server cannot be reached (a few seconds for an ack):
//! the lease frees everything anyway.

use std::{
    convert::Infallible, future::Future, io, os::unix::process::ExitStatusExt, process::ExitStatus,
    time::Duration,
};

use clap::Args;
use serde_json::Value;
use syncd::{
    client::{Client, Error, LockGuard, RwLockGuard, RwMode, SemaphoreGuard},
    duration,
};
use tokio::{io::AsyncWriteExt, process::Child, time::sleep};

use crate::{
    args::parse_duration,
    exit::{
        report, wait_failure, Failure, EXIT_CANNOT_EXECUTE, EXIT_ERROR, EXIT_LOST, EXIT_NOT_FOUND,
    },
    output::Output,
    session::{close, close_until, connect, interruptible, Signals, Waited, LEAVE_BUDGET},
    Cli,
};

/// The flags of every command that holds something while CMD runs.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The session's lease. If syncctl dies or is cut off from the server for
    /// this long, the server releases the hold (and syncctl takes it as
    /// lost). Written like 500ms, 30s, 2m; the server sets the limits (by
    /// default 1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,

    /// How long to wait before giving up: exit code 3 if it cannot be had
    /// all that time, 4 if the server cannot be reached until then. `0s`
    /// tries once. At most 365d. Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// When the hold is lost while CMD runs: how long CMD gets to exit after
    /// SIGTERM before syncctl kills it with SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: Duration,

    /// The command to run while holding, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A hold that syncctl can keep while CMD runs: a lock, semaphore permits,
/// a read or write hold of a read-write lock, a queue item in flight, a
/// pool resource.
pub trait Guard {
    /// Names the hold in messages, with its fencing token if it has one:
    /// `lock "db" (token 17)`, `2 permits of semaphore "db" (token 3)`,
    /// `item 5 of queue "jobs"`.
    fn what(&self) -> String;

    /// The environment variables CMD gets.
    fn environment(&self) -> Vec<(&'static str, String)>;

    /// What CMD reads on its stdin. `None`: syncctl's own stdin.
    fn stdin(&self) -> Option<Vec<u8>> {
        None
    }

    /// What is printed without CMD: one line of text, or JSON with
    /// `--output json`.
    fn text(&self) -> String;

    fn json(&self) -> Value;

    /// Returns when the hold is lost, with the reason (`session 4
    /// expired`). Never returns while the hold is safe.
    fn lost(&self) -> impl Future<Output = String>;

    /// Gives the hold back. `succeeded`: CMD exited 0 (or, without CMD,
    /// syncctl was asked to stop); a queue item is acked then and nacked
    /// otherwise, a pool resource checked in healthy or not.
    fn release(self, succeeded: bool) -> impl Future<Output = Result<(), Error>>;

    /// What [`Guard::release`] does, as the warning says when the server
    /// cannot be reached: `release lock "db" (token 17)`.
    fn release_action(&self, _succeeded: bool) -> String {
        format!("release {}", self.what())
    }

    /// What becomes of the hold when it cannot be given back.
    fn left_to_lease(&self) -> &'static str {
        "the server releases it when the session's lease runs out"
    }

    /// How long syncctl tries to give the hold back (and then to close the
    /// session) when the server cannot be reached.
    fn release_budget(&self, _succeeded: bool) -> Duration {
        LEAVE_BUDGET
    }
}

/// `lock "db" (token 17)`: a hold's name with its fencing token.
pub fn with_token(what: String, fencing_token: u64) -> String {
    format!("{what} (token {fencing_token})")
}

impl Guard for LockGuard {
    fn what(&self) -> String {
        with_token(format!("lock {:?}", self.name()), self.fencing_token())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_FENCING_TOKEN", self.fencing_token().to_string()),
            ("SYNCD_LOCK_NAME", self.name().to_string()),
        ]
    }

    fn text(&self) -> String {
        self.fencing_token().to_string()
    }

    fn json(&self) -> Value {
        serde_json::json!({ "name": self.name(), "fencing_token": self.fencing_token() })
    }

    async fn lost(&self) -> String {
        LockGuard::lost(self).await.why()
    }

    async fn release(self, _succeeded: bool) -> Result<(), Error> {
        LockGuard::release(self).await
    }
}

impl Guard for SemaphoreGuard {
    fn what(&self) -> String {
        let what = match self.permits() {
            1 => format!("a permit of semaphore {:?}", self.name()),
            n => format!("{n} permits of semaphore {:?}", self.name()),
        };
        with_token(what, self.fencing_token())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_FENCING_TOKEN", self.fencing_token().to_string()),
            ("SYNCD_SEMAPHORE_NAME", self.name().to_string()),
            ("SYNCD_PERMITS", self.permits().to_string()),
        ]
    }

    fn text(&self) -> String {
        self.fencing_token().to_string()
    }

    fn json(&self) -> Value {
        serde_json::json!({
            "name": self.name(),
            "fencing_token": self.fencing_token(),
            "permits": self.permits(),
        })
    }

    async fn lost(&self) -> String {
        SemaphoreGuard::lost(self).await.why()
    }

    async fn release(self, _succeeded: bool) -> Result<(), Error> {
        SemaphoreGuard::release(self).await
    }
}

/// `read` or `write`.
pub fn mode_word(mode: RwMode) -> &'static str {
    match mode {
        RwMode::Read => "read",
        RwMode::Write => "write",
    }
}

impl Guard for RwLockGuard {
    fn what(&self) -> String {
        let what = format!(
            "{} hold of rwlock {:?}",
            mode_word(self.mode()),
            self.name()
        );
        with_token(what, self.fencing_token())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_FENCING_TOKEN", self.fencing_token().to_string()),
            ("SYNCD_RWLOCK_NAME", self.name().to_string()),
            ("SYNCD_RWLOCK_MODE", mode_word(self.mode()).to_string()),
        ]
    }

    fn text(&self) -> String {
        self.fencing_token().to_string()
    }

    fn json(&self) -> Value {
        serde_json::json!({
            "name": self.name(),
            "fencing_token": self.fencing_token(),
            "mode": mode_word(self.mode()),
        })
    }

    async fn lost(&self) -> String {
        RwLockGuard::lost(self).await.why()
    }

    async fn release(self, _succeeded: bool) -> Result<(), Error> {
        RwLockGuard::release(self).await
    }
}

/// The whole command: connects with the lease `--ttl`, acquires with
/// `acquire` (bounded by `--timeout` there), holds while CMD runs or until
/// a signal, gives the hold back and leaves. Returns the exit code.
pub async fn acquire_and_hold<G, F, Fut>(
    cli: &Cli,
    args: &HoldArgs,
    acquire: F,
) -> Result<i32, Failure>
where
    G: Guard,
    F: FnOnce(&Client) -> Fut,
    Fut: Future<Output = Result<G, Error>>,
{
    let taken = match take(cli, args.ttl, args.timeout, acquire).await? {
        Waited::Done(taken) => taken,
        Waited::Interrupted(signal) => return Ok(128 + signal),
    };
    let Taken {
        client,
        guard,
        mut signals,
    } = taken;
    let held = hold(cli.output, args, &client, &guard, &mut signals).await;
    let succeeded = matches!(held, Ok(0));
    let released = leave(guard, client, succeeded).await;
    finish(held, released)
}

/// A hold just taken, with its session's client and the signals caught
/// while it was awaited (SIGINT, SIGTERM, SIGHUP stay caught).
pub struct Taken<G> {
    pub client: Client,
    pub guard: G,
    pub signals: Signals,
}

/// Connects with the lease `ttl` and acquires with `acquire`, which a
/// signal interrupts. A failed acquire (a `timeout` given to it passed, a
/// mismatch) becomes a failure through [`wait_failure`]; the session is
/// closed then, and after a signal.
pub async fn take<G, F, Fut>(
    cli: &Cli,
    ttl: Duration,
    timeout: Option<Duration>,
    acquire: F,
) -> Result<Waited<Taken<G>>, Failure>
where
    F: FnOnce(&Client) -> Fut,
    Fut: Future<Output = Result<G, Error>>,
{
    let mut signals = Signals::catch()?;
    let client = connect(cli, Some(ttl)).await?;
    match interruptible(&mut signals, acquire(&client)).await {
        Waited::Done(Ok(guard)) => Ok(Waited::Done(Taken {
            client,
            guard,
            signals,
        })),
        Waited::Done(Err(error)) => {
            // The failure is what matters; a failed close only delays the
            // session's expiry.
            close(client).await;
            Err(wait_failure(error, timeout))
        }
        Waited::Interrupted(signal) => {
            close(client).await;
            Ok(Waited::Interrupted(signal))
        }
    }
}

/// Holds while CMD runs, or until a signal.
async fn hold<G: Guard>(
    output: Output,
    args: &HoldArgs,
    client: &Client,
    guard: &G,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    match args.command.split_first() {
        Some((program, program_args)) => {
            let child = spawn_command(program, program_args, guard)?;
            run_command(child, client, guard, signals, args.kill_grace).await
        }
        None => hold_until_signal(output, client, guard, signals).await,
    }
}

/// Gives the hold back and closes the session, trying for at most the
/// guard's release budget in all. Returns the release's error when the
/// server refused it or the hold was lost.
pub async fn leave<G: Guard>(guard: G, client: Client, succeeded: bool) -> Result<(), Error> {
    let budget = guard.release_budget(succeeded);
    let deadline = tokio::time::Instant::now() + budget;
    let released = release_within(guard, succeeded, client.addr(), budget).await;
    close_until(client, deadline).await;
    released
}

/// Gives the hold back, giving up after `budget` with a warning when the
/// server cannot be reached.
async fn release_within<G: Guard>(
    guard: G,
    succeeded: bool,
    addr: &str,
    budget: Duration,
) -> Result<(), Error> {
    let action = guard.release_action(succeeded);
    let left_to_lease = guard.left_to_lease();
    let unreachable = match tokio::time::timeout(budget, guard.release(succeeded)).await {
        Ok(Err(Error::Unavailable(reason))) => reason,
        Ok(done) => return done,
        Err(_) => format!("syncd at {addr} did not answer"),
    };
    report(&format!(
        "warning: could not {action} within {} ({unreachable}); {left_to_lease}",
        duration::format(budget)
    ));
    Ok(())
}

/// The exit code once the hold is released: CMD's (or 0), unless holding
/// failed or the hold turned out to be lost (7). Any other failed release
/// matters only after a successful CMD (exit 1); otherwise it is reported
/// and CMD's code kept.
pub fn finish(held: Result<i32, Failure>, released: Result<(), Error>) -> Result<i32, Failure> {
    match (held, released) {
        (held, Ok(())) => held,
        (Err(failure), Err(error)) => {
            if failure.code != EXIT_LOST {
                report(&error.to_string());
            }
            Err(failure)
        }
        (Ok(_), Err(Error::SessionLost(message))) => Err(Failure {
            code: EXIT_LOST,
            message,
        }),
        (Ok(0), Err(error)) => Err(Failure::from(error)),
        (Ok(code), Err(error)) => {
            report(&error.to_string());
            Ok(code)
        }
    }
}

/// Starts CMD with the guard's environment, and its stdin if it has one
/// (written in the background; CMD need not read all of it).
fn spawn_command<G: Guard>(program: &str, args: &[String], guard: &G) -> Result<Child, Failure> {
    let input = guard.stdin();
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(guard.environment());
    if input.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|error| spawn_failure(program, &error))?;
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        tokio::spawn(async move {
            // A command that exits without reading all of it closes the
            // pipe: not an error of syncctl's. Dropping the pipe closes it.
            if let Err(error) = pipe.write_all(&input).await {
                tracing::debug!("writing the command's stdin stopped: {error}");
            }
        });
    }
    Ok(child)
}

/// 127 when CMD does not exist, 126 when it cannot be executed, as shells
/// do.
pub fn spawn_failure(program: &str, error: &io::Error) -> Failure {
    match error.kind() {
        io::ErrorKind::NotFound => Failure {
            code: EXIT_NOT_FOUND,
            message: format!("cannot run {program:?}: command not found"),
        },
        _ => Failure {
            code: EXIT_CANNOT_EXECUTE,
            message: format!("cannot run {program:?}: {error}"),
        },
    }
}

/// Waits for CMD, forwarding SIGINT, SIGTERM and SIGHUP to it; returns its
/// exit code. When the hold is lost first, stops CMD and fails with 7.
/// Warns when the lease is in danger (see [`warn_of_danger`]).
async fn run_command<G: Guard>(
    mut child: Child,
    client: &Client,
    guard: &G,
    signals: &mut Signals,
    kill_grace: Duration,
) -> Result<i32, Failure> {
    let lost = guard.lost();
    tokio::pin!(lost);
    let warnings = warn_of_danger(client);
    tokio::pin!(warnings);
    loop {
        tokio::select! {
            never = &mut warnings => match never {},
            status = child.wait() => {
                let status = status
                    .map_err(|e| Failure::other(format!("waiting for the command failed: {e}")))?;
                return Ok(status_code(status));
            }
            signal = signals.recv() => forward_signal(&child, signal),
            loss = &mut lost => {
                report(&lost_line(guard, &loss, "; stopping the command"));
                stop_command(&mut child, kill_grace, signals).await;
                return Err(Failure::reported(EXIT_LOST));
            }
        }
    }
}

/// Sends SIGTERM to CMD, then SIGKILL if it still runs after `grace`, and
/// waits for it to end. Signals for syncctl still go to CMD meanwhile.
async fn stop_command(child: &mut Child, grace: Duration, signals: &mut Signals) {
    forward_signal(child, libc::SIGTERM);
    let grace_over = sleep(grace);
    tokio::pin!(grace_over);
    loop {
        tokio::select! {
            _ = child.wait() => return,
            signal = signals.recv() => forward_signal(child, signal),
            _ = &mut grace_over => break,
        }
    }
    report(&format!(
        "the command still runs {} after SIGTERM; killing it",
        duration::format(grace)
    ));
    forward_signal(child, libc::SIGKILL);
    let _ = child.wait().await;
}

/// Prints `syncctl: warning: lease in danger: session 12: no keep-alive
/// confirmed for 5s of its 10s TTL` on stderr each time the session's lease
/// comes to be in danger: once per episode, until a keep-alive is confirmed
/// again. Never returns.
async fn warn_of_danger(client: &Client) -> Infallible {
    loop {
        let danger = client.lease_in_danger().await;
        report(&format!("warning: lease in danger: {danger}"));
        client.lease_out_of_danger().await;
    }
}

/// `lost lock "p" (token 28): session 101 expired` and `suffix`.
fn lost_line<G: Guard>(guard: &G, loss: &str, suffix: &str) -> String {
    format!("lost {}: {loss}{suffix}", guard.what())
}

/// Sends `signal` to CMD, unless it has been reaped already.
fn forward_signal(child: &Child, signal: i32) {
    let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions. The child has not
    // been reaped yet (`id` returns None once it has), so the pid is still
    // ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A child's exit code, or 128+N when signal N killed it.
pub fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_ERROR,
    }
}

/// Prints the token and holds until SIGINT, SIGTERM or SIGHUP. Fails with
/// 7 when the hold is lost first. Warns when the lease is in danger (see
/// [`warn_of_danger`]).
async fn hold_until_signal<G: Guard>(
    output: Output,
    client: &Client,
    guard: &G,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    output.print(guard.text(), guard.json())?;
    tokio::select! {
        never = warn_of_danger(client) => match never {},
        _ = signals.recv() => Ok(0),
        loss = guard.lost() => {
            report(&lost_line(guard, &loss, ""));
            Err(Failure::reported(EXIT_LOST))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_failure_matters_only_after_success() {
        let refused = || Err(Error::Status(tonic::Status::internal("disk full")));
        assert_eq!(finish(Ok(0), refused()).unwrap_err().code, 1);
        assert_eq!(finish(Ok(5), refused()).unwrap(), 5);
        assert_eq!(finish(Ok(5), Ok(())).unwrap(), 5);
    }

    #[test]
    fn a_hold_lost_by_the_release_exits_7() {
        let lost = || Err(Error::SessionLost("lost".into()));
        assert_eq!(finish(Ok(0), lost()).unwrap_err().code, EXIT_LOST);
        assert_eq!(finish(Ok(5), lost()).unwrap_err().code, EXIT_LOST);
        let stopped = Err(Failure::reported(EXIT_LOST));
        assert_eq!(finish(stopped, lost()).unwrap_err().code, EXIT_LOST);
    }

    #[test]
    fn commands_that_cannot_start_exit_like_in_shells() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let failure = spawn_failure("nope", &missing);
        assert_eq!(failure.code, 127);
        assert_eq!(failure.message, "cannot run \"nope\": command not found");
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(spawn_failure("./x", &denied).code, 126);
        let not_executable = io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(spawn_failure("./x", &not_executable).code, 126);
    }

    #[test]
    fn exit_statuses_become_codes() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
