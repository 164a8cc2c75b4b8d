//! Holding something while a command runs: the machinery that `lock
//! acquire`, `sem acquire` and `rwlock read|write` share.
//!
//! Acquire (a signal ends the wait: exit 128+N), then either run CMD with
//! the fencing token in its environment, forwarding SIGINT, SIGTERM and
//! SIGHUP to it, or print the token and hold until one of those signals.
//! If the hold is lost meanwhile (its session expired, or could not be
//! renewed for a full TTL), say so, stop CMD (SIGTERM, SIGKILL after the
//! grace) and exit 7. On the way out release and close the session, giving
//! up after about a second when the server cannot be reached: the lease
//! frees everything anyway.

use std::{
    future::Future, io, os::unix::process::ExitStatusExt, process::ExitStatus, time::Duration,
};

use clap::Args;
use serde_json::Value;
use syncd::{
    client::{Client, Error, LockGuard, RwLockGuard, RwMode, SemaphoreGuard, SessionLoss},
    duration,
};
use tokio::{process::Child, time::sleep};

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
/// a read or write hold of a read-write lock.
pub trait Guard {
    /// Names the hold in messages: `lock "db"`, `2 permits of semaphore
    /// "db"`, `read hold of rwlock "cfg"`.
    fn what(&self) -> String;

    fn fencing_token(&self) -> u64;

    /// The environment variables CMD gets besides SYNCD_FENCING_TOKEN.
    fn environment(&self) -> Vec<(&'static str, String)>;

    /// What is printed without CMD, with `--output json`.
    fn json(&self) -> Value;

    /// Returns when the hold is lost with its session.
    fn lost(&self) -> impl Future<Output = SessionLoss>;

    fn release(self) -> impl Future<Output = Result<(), Error>>;
}

impl Guard for LockGuard {
    fn what(&self) -> String {
        format!("lock {:?}", self.name())
    }

    fn fencing_token(&self) -> u64 {
        LockGuard::fencing_token(self)
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![("SYNCD_LOCK_NAME", self.name().to_string())]
    }

    fn json(&self) -> Value {
        serde_json::json!({ "name": self.name(), "fencing_token": self.fencing_token() })
    }

    async fn lost(&self) -> SessionLoss {
        LockGuard::lost(self).await
    }

    async fn release(self) -> Result<(), Error> {
        LockGuard::release(self).await
    }
}

impl Guard for SemaphoreGuard {
    fn what(&self) -> String {
        match self.permits() {
            1 => format!("a permit of semaphore {:?}", self.name()),
            n => format!("{n} permits of semaphore {:?}", self.name()),
        }
    }

    fn fencing_token(&self) -> u64 {
        SemaphoreGuard::fencing_token(self)
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_SEMAPHORE_NAME", self.name().to_string()),
            ("SYNCD_PERMITS", self.permits().to_string()),
        ]
    }

    fn json(&self) -> Value {
        serde_json::json!({
            "name": self.name(),
            "fencing_token": self.fencing_token(),
            "permits": self.permits(),
        })
    }

    async fn lost(&self) -> SessionLoss {
        SemaphoreGuard::lost(self).await
    }

    async fn release(self) -> Result<(), Error> {
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
        format!(
            "{} hold of rwlock {:?}",
            mode_word(self.mode()),
            self.name()
        )
    }

    fn fencing_token(&self) -> u64 {
        RwLockGuard::fencing_token(self)
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_RWLOCK_NAME", self.name().to_string()),
            ("SYNCD_RWLOCK_MODE", mode_word(self.mode()).to_string()),
        ]
    }

    fn json(&self) -> Value {
        serde_json::json!({
            "name": self.name(),
            "fencing_token": self.fencing_token(),
            "mode": mode_word(self.mode()),
        })
    }

    async fn lost(&self) -> SessionLoss {
        RwLockGuard::lost(self).await
    }

    async fn release(self) -> Result<(), Error> {
        RwLockGuard::release(self).await
    }
}

/// The whole command: connects with the lease `--ttl`, acquires with
/// `acquire` (bounded by `--timeout` there), holds while CMD runs or until
/// a signal, releases and leaves. Returns the exit code.
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
    let mut signals = Signals::catch()?;
    let client = connect(cli, Some(args.ttl)).await?;
    let guard = match interruptible(&mut signals, acquire(&client)).await {
        Waited::Done(Ok(guard)) => guard,
        Waited::Done(Err(error)) => {
            // The failure is what matters; a failed close only delays the
            // session's expiry.
            close(client).await;
            return Err(wait_failure(error, args.timeout));
        }
        Waited::Interrupted(signal) => {
            close(client).await;
            return Ok(128 + signal);
        }
    };
    let held = hold(cli.output, args, &guard, &mut signals).await;
    let released = leave(guard, client).await;
    finish(held, released)
}

/// Holds while CMD runs, or until a signal.
async fn hold<G: Guard>(
    output: Output,
    args: &HoldArgs,
    guard: &G,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    match args.command.split_first() {
        Some((program, program_args)) => {
            let child = spawn_command(program, program_args, guard)?;
            run_command(child, guard, signals, args.kill_grace).await
        }
        None => hold_until_signal(output, guard, signals).await,
    }
}

/// Releases the hold and closes the session, trying for at most
/// [`LEAVE_BUDGET`] in all. Returns the release's error when the server
/// refused it or the hold was lost.
async fn leave<G: Guard>(guard: G, client: Client) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + LEAVE_BUDGET;
    let released = release_within(guard, client.addr(), deadline).await;
    close_until(client, deadline).await;
    released
}

/// Releases the hold, giving up at `deadline` with a warning when the
/// server cannot be reached.
async fn release_within<G: Guard>(
    guard: G,
    addr: &str,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let what = format!("{} (token {})", guard.what(), guard.fencing_token());
    let unreachable = match tokio::time::timeout_at(deadline, guard.release()).await {
        Ok(Err(Error::Unavailable(reason))) => reason,
        Ok(done) => return done,
        Err(_) => format!("syncd at {addr} did not answer"),
    };
    report(&format!(
        "warning: could not release {what} within {} ({unreachable}); the server \
         releases it when the session's lease runs out",
        duration::format(LEAVE_BUDGET)
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

/// Starts CMD with the token and what the guard adds in its environment.
fn spawn_command<G: Guard>(program: &str, args: &[String], guard: &G) -> Result<Child, Failure> {
    tokio::process::Command::new(program)
        .args(args)
        .env("SYNCD_FENCING_TOKEN", guard.fencing_token().to_string())
        .envs(guard.environment())
        .spawn()
        .map_err(|error| spawn_failure(program, &error))
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
async fn run_command<G: Guard>(
    mut child: Child,
    guard: &G,
    signals: &mut Signals,
    kill_grace: Duration,
) -> Result<i32, Failure> {
    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
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

/// `lost lock "p" (token 28): session 101 expired` and `suffix`.
fn lost_line<G: Guard>(guard: &G, loss: &SessionLoss, suffix: &str) -> String {
    format!(
        "lost {} (token {}): {loss}{suffix}",
        guard.what(),
        guard.fencing_token()
    )
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
/// 7 when the hold is lost first.
async fn hold_until_signal<G: Guard>(
    output: Output,
    guard: &G,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    output.print(guard.fencing_token(), guard.json())?;
    tokio::select! {
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
