//! `syncctl`: the command line for syncd, a thin layer on the client
//! library (`syncd::client`). Every command connects, opens a session, does
//! its work and closes the session again.

use std::{
    ffi::OsString,
    io::{self, IsTerminal, Write},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    time::{Duration, Instant},
};

use clap::{error::ErrorKind, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::json;
use syncd::{
    client::{Client, ClientOptions, Error, LockGuard, SessionLoss},
    duration,
    proto::v1::{DescribeLockResponse, LockHolder, LockWaiter, PrimitiveSummary},
};
use tokio::{
    process::Child,
    signal::unix::{signal, Signal, SignalKind},
    time::sleep,
};
use tracing_subscriber::EnvFilter;

/// Exit code: any other error.
const EXIT_ERROR: i32 = 1;
/// Exit code: a wait timed out.
const EXIT_TIMEOUT: i32 = 3;
/// Exit code: the server cannot be reached.
const EXIT_UNAVAILABLE: i32 = 4;
/// Exit code: the lock was lost while held.
const EXIT_LOST: i32 = 7;
/// Exit code: CMD exists but cannot be executed (as in shells).
const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code: CMD was not found (as in shells).
const EXIT_NOT_FOUND: i32 = 127;

/// The longest duration any flag accepts, as written in messages.
const DURATION_MAX_TEXT: &str = "365d";
/// The longest duration any flag accepts: long enough for any real wait,
/// short enough that deadlines never overflow.
const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long syncctl tries to release the lock and close its session on its
/// way out. If the server cannot be reached it stops there: the session's
/// lease frees everything anyway.
const LEAVE_BUDGET: Duration = Duration::from_secs(1);

const AFTER_HELP: &str = "\
Exit codes:
  0        success (with `lock acquire -- CMD`: CMD's own exit code)
  1        any other error (bad input refused by the server, ...)
  2        invalid command line (reported by the argument parser)
  3        a wait timed out (`lock acquire --timeout`)
  4        the server cannot be reached
  7        the lock was lost while held (`lock acquire`): its session expired,
           or could not be renewed for a full TTL; a running CMD is stopped first
  126      CMD could not be executed
  127      CMD was not found
  128+N    interrupted by signal N while waiting for a lock, or CMD killed by signal N

Errors are reported as one line on stderr. Logs go to stderr too: level `warn` by
default, RUST_LOG overrides (e.g. RUST_LOG=syncd=debug).";

/// Command line client for syncd, the coordination server: take locks
/// around commands, inspect locks, list primitives, check the server.
#[derive(Parser, Debug)]
#[command(name = "syncctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// The server's address: `http://HOST:PORT` (the scheme may be left out;
    /// `https://` is refused: this version speaks no TLS).
    #[arg(
        long,
        global = true,
        env = "SYNCD_ADDR",
        default_value = "http://127.0.0.1:7420",
        value_name = "URL"
    )]
    addr: String,

    /// Output format: `text` for people, `json` (one JSON value on one line)
    /// for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire or describe locks.
    #[command(subcommand, after_help = AFTER_HELP)]
    Lock(LockCommand),
    /// List the primitives that exist now: one line each with kind, name
    /// (quoted, as `lock describe` shows it) and state.
    #[command(after_help = AFTER_HELP)]
    Ls(LsArgs),
    /// Check that the server answers, and how fast.
    #[command(after_help = AFTER_HELP)]
    Ping,
}

#[derive(Subcommand, Debug)]
enum LockCommand {
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
    #[command(after_help = AFTER_HELP)]
    Acquire(AcquireArgs),
    /// Show a lock's holder (session, client name, fencing token, how long
    /// held, lease left) and its waiters, first in line first.
    #[command(after_help = AFTER_HELP)]
    Describe(DescribeArgs),
}

#[derive(Args, Debug)]
struct AcquireArgs {
    /// The lock's name: 1 to 256 bytes of UTF-8 without control characters.
    name: String,

    /// The session's lease. If syncctl dies or is cut off from the server for
    /// this long, the server releases the lock (and syncctl takes the lock
    /// as lost). Written like 500ms, 30s, 2m; the server sets the limits
    /// (by default 1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,

    /// How long to wait for the lock before giving up: exit code 3 if it is
    /// held all that time, 4 if the server cannot be reached until then.
    /// `0s` tries once. At most 365d. Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// When the lock is lost while CMD runs: how long CMD gets to exit after
    /// SIGTERM before syncctl kills it with SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Parses a duration flag (`500ms`, `30s`, `2m`), refusing more than
/// [`DURATION_MAX`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = duration::parse(text)?;
    if parsed > DURATION_MAX {
        return Err(format!(
            "duration {:?} is too long: at most {DURATION_MAX_TEXT}",
            text.trim()
        ));
    }
    Ok(parsed)
}

#[derive(Args, Debug)]
struct DescribeArgs {
    /// The lock's name.
    name: String,
}

#[derive(Args, Debug)]
struct LsArgs {
    /// Only primitives of this kind, e.g. `lock`. Default: every kind.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,

    /// Only names that start with this prefix. Default: every name.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
}

/// Why syncctl stops early: the exit code and the one line for stderr
/// (empty when it was reported already).
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn other(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }

    /// A failure whose line is already on stderr.
    fn reported(code: i32) -> Failure {
        Failure {
            code,
            message: String::new(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: exit_code(&error),
            message: error.to_string(),
        }
    }
}

/// The exit code for a client error. (A lock found lost by its release
/// exits 7 instead: see [`finish`].)
fn exit_code(error: &Error) -> i32 {
    match error {
        Error::Unavailable(_) => EXIT_UNAVAILABLE,
        Error::Timeout(_) => EXIT_TIMEOUT,
        Error::SessionLost(_) | Error::InvalidAddress(_) | Error::Status(_) => EXIT_ERROR,
    }
}

fn main() {
    let cli = Cli::parse();
    if let Command::Lock(LockCommand::Acquire(args)) = &cli.command {
        if has_empty_command(args, std::env::args_os()) {
            acquire_command()
                .error(
                    ErrorKind::InvalidValue,
                    "no command after `--`: give CMD [ARGS...] after it, or leave `--` out \
                     to hold the lock until interrupted",
                )
                .exit();
        }
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => exit_with(Failure::other(format!("cannot start: {error}"))),
    };
    let code = match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(failure) => exit_with(failure),
    };
    std::process::exit(code);
}

/// The definition of `syncctl lock acquire`, for its usage line in errors.
fn acquire_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("lock")
        .and_then(|lock| lock.find_subcommand("acquire"))
        .cloned()
        .unwrap_or(cli)
}

/// True when `--` ends the command line with nothing after it: clap cannot
/// tell that from no `--` at all, and it is most likely a mistake.
fn has_empty_command(args: &AcquireArgs, raw: impl Iterator<Item = OsString>) -> bool {
    args.command.is_empty() && raw.last().is_some_and(|last| last == "--")
}

fn exit_with(failure: Failure) -> ! {
    if !failure.message.is_empty() {
        report(&failure.message);
    }
    std::process::exit(failure.code)
}

/// Writes one `syncctl: ...` line on stderr. A closed terminal (after
/// SIGHUP) must not make syncctl panic, so a failed write is ignored.
fn report(line: &str) {
    let _ = writeln!(io::stderr().lock(), "syncctl: {line}");
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: &Cli) -> Result<i32, Failure> {
    match &cli.command {
        Command::Lock(LockCommand::Acquire(args)) => lock_acquire(cli, args).await,
        Command::Lock(LockCommand::Describe(args)) => lock_describe(cli, args).await,
        Command::Ls(args) => list(cli, args).await,
        Command::Ping => ping(cli).await,
    }
}

async fn connect(cli: &Cli, options: ClientOptions) -> Result<Client, Failure> {
    Ok(Client::connect_with(cli.addr.as_str(), options).await?)
}

/// Releases the lock (if any) and closes the session, trying for at most
/// [`LEAVE_BUDGET`] in all: if the server cannot be reached, the session's
/// lease frees everything anyway. Returns the release's error when the
/// server refused it or the lock was lost.
async fn leave(guard: Option<LockGuard>, client: Client) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + LEAVE_BUDGET;
    let released = match guard {
        Some(guard) => release_within(guard, client.addr(), deadline).await,
        None => Ok(()),
    };
    // The session holds nothing any more (or nothing it can still lose):
    // a failed close only delays its expiry.
    let session_id = client.session_id();
    match tokio::time::timeout_at(deadline, client.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::info!("closing session {session_id} failed: {error}"),
        Err(_) => tracing::info!("closing session {session_id}: no answer in time"),
    }
    released
}

/// Releases the lock, giving up at `deadline` with a warning when the
/// server cannot be reached.
async fn release_within(
    guard: LockGuard,
    addr: &str,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let what = format!("lock {:?} (token {})", guard.name(), guard.fencing_token());
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

/// Writes text to stdout; a closed pipe is an error, not a panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::other(format!("cannot write to stdout: {e}")))
}

// --- ping, ls, describe ---------------------------------------------------

async fn ping(cli: &Cli) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let started = Instant::now();
    let pinged = client.ping().await;
    let rtt = started.elapsed();
    let addr = client.addr().to_string();
    leave(None, client).await?;
    pinged?;
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    match cli.output {
        Output::Text => write_stdout(&format!("pong from {addr} in {rtt_ms:.1}ms\n"))?,
        Output::Json => write_stdout(&format!("{}\n", json!({ "addr": addr, "rtt_ms": rtt_ms })))?,
    }
    Ok(0)
}

async fn list(cli: &Cli, args: &LsArgs) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let kind = args.kind.as_deref().unwrap_or_default();
    let prefix = args.prefix.as_deref().unwrap_or_default();
    let listed = client.list(kind, prefix).await;
    leave(None, client).await?;
    let primitives = listed?;
    match cli.output {
        Output::Text => write_stdout(&format_list(&primitives)),
        Output::Json => {
            let rows: Vec<_> = primitives
                .iter()
                .map(|p| json!({ "kind": p.kind, "name": p.name, "state": p.state }))
                .collect();
            write_stdout(&format!("{}\n", serde_json::Value::Array(rows)))
        }
    }?;
    Ok(0)
}

/// One line per primitive, columns aligned: kind, name (quoted, as
/// `lock describe` shows it, so that spaces are unambiguous), state.
fn format_list(primitives: &[PrimitiveSummary]) -> String {
    let names: Vec<String> = primitives.iter().map(|p| format!("{:?}", p.name)).collect();
    let kind_width = primitives.iter().map(|p| p.kind.len()).max().unwrap_or(0);
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    primitives
        .iter()
        .zip(&names)
        .map(|(p, name)| format!("{:kind_width$}  {name:name_width$}  {}\n", p.kind, p.state))
        .collect()
}

async fn lock_describe(cli: &Cli, args: &DescribeArgs) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let described = client.lock(args.name.as_str()).describe().await;
    leave(None, client).await?;
    let description = described?;
    match cli.output {
        Output::Text => write_stdout(&format_description(&description))?,
        Output::Json => write_stdout(&format!("{}\n", description_json(&description)))?,
    }
    Ok(0)
}

fn format_description(lock: &DescribeLockResponse) -> String {
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

fn format_ms(ms: u64) -> String {
    duration::format(Duration::from_millis(ms))
}

fn description_json(lock: &DescribeLockResponse) -> serde_json::Value {
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

// --- lock acquire ---------------------------------------------------------

/// SIGINT, SIGTERM and SIGHUP, caught: while syncctl holds a lock they must
/// not kill it before it releases.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn catch() -> Result<Signals, Failure> {
        let catch =
            |kind| signal(kind).map_err(|e| Failure::other(format!("cannot catch signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal; returns its number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

/// How the wait for the lock ended.
enum Waited {
    Granted(LockGuard),
    /// Signal N ended the wait: exit 128+N.
    Interrupted(i32),
    Failed(Failure),
}

async fn lock_acquire(cli: &Cli, args: &AcquireArgs) -> Result<i32, Failure> {
    let mut signals = Signals::catch()?;
    let options = ClientOptions {
        session_ttl: args.ttl,
        ..ClientOptions::default()
    };
    let client = connect(cli, options).await?;
    let guard = match wait_for_lock(args, &client, &mut signals).await {
        Waited::Granted(guard) => guard,
        Waited::Interrupted(signal) => {
            leave(None, client).await?;
            return Ok(128 + signal);
        }
        Waited::Failed(failure) => {
            // The failure is what matters; a failed close only delays the
            // session's expiry.
            let _ = leave(None, client).await;
            return Err(failure);
        }
    };
    let held = hold(cli, args, &guard, &mut signals).await;
    let released = leave(Some(guard), client).await;
    finish(held, released)
}

/// Waits for the lock; a signal ends the wait.
async fn wait_for_lock(args: &AcquireArgs, client: &Client, signals: &mut Signals) -> Waited {
    let lock = client.lock(args.name.as_str());
    let acquired = tokio::select! {
        acquired = async {
            match args.timeout {
                Some(timeout) => lock.acquire_timeout(timeout).await,
                None => lock.acquire().await,
            }
        } => acquired,
        signal = signals.recv() => return Waited::Interrupted(signal),
    };
    match acquired {
        Ok(guard) => Waited::Granted(guard),
        Err(error) => Waited::Failed(acquire_failure(error, args.timeout)),
    }
}

/// Holds the lock while CMD runs, or until a signal.
async fn hold(
    cli: &Cli,
    args: &AcquireArgs,
    guard: &LockGuard,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    match args.command.split_first() {
        Some((program, program_args)) => {
            let child = spawn_command(program, program_args, guard)?;
            run_command(child, guard, signals, args.kill_grace).await
        }
        None => hold_until_signal(cli.output, guard, signals).await,
    }
}

/// Adds how long the wait was to a timeout's message.
fn acquire_failure(error: Error, timeout: Option<Duration>) -> Failure {
    let mut failure = Failure::from(error);
    if let (EXIT_TIMEOUT, Some(timeout)) = (failure.code, timeout) {
        let waited = duration::format(timeout);
        failure.message = if failure.message.starts_with("timed out") {
            format!("{} after {waited}", failure.message)
        } else {
            format!("{} (timed out after {waited})", failure.message)
        };
    }
    failure
}

/// The exit code once the lock is released: CMD's (or 0), unless holding
/// failed or the lock turned out to be lost (7). Any other failed release
/// matters only after a successful CMD (exit 1); otherwise it is reported
/// and CMD's code kept.
fn finish(held: Result<i32, Failure>, released: Result<(), Error>) -> Result<i32, Failure> {
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

/// Starts CMD with the token and the lock's name in its environment.
fn spawn_command(program: &str, args: &[String], guard: &LockGuard) -> Result<Child, Failure> {
    tokio::process::Command::new(program)
        .args(args)
        .env("SYNCD_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("SYNCD_LOCK_NAME", guard.name())
        .spawn()
        .map_err(|error| spawn_failure(program, &error))
}

/// 127 when CMD does not exist, 126 when it cannot be executed, as shells
/// do.
fn spawn_failure(program: &str, error: &io::Error) -> Failure {
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
/// exit code. When the lock is lost first, stops CMD and fails with 7.
async fn run_command(
    mut child: Child,
    guard: &LockGuard,
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
fn lost_line(guard: &LockGuard, loss: &SessionLoss, suffix: &str) -> String {
    format!(
        "lost lock {:?} (token {}): {loss}{suffix}",
        guard.name(),
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
fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_ERROR,
    }
}

/// Prints the token and holds the lock until SIGINT, SIGTERM or SIGHUP.
/// Fails with 7 when the lock is lost first.
async fn hold_until_signal(
    output: Output,
    guard: &LockGuard,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    print_token(output, guard)?;
    tokio::select! {
        _ = signals.recv() => Ok(0),
        loss = guard.lost() => {
            report(&lost_line(guard, &loss, ""));
            Err(Failure::reported(EXIT_LOST))
        }
    }
}

fn print_token(output: Output, guard: &LockGuard) -> Result<(), Failure> {
    let line = match output {
        Output::Text => guard.fencing_token().to_string(),
        Output::Json => {
            json!({ "name": guard.name(), "fencing_token": guard.fencing_token() }).to_string()
        }
    };
    write_stdout(&format!("{line}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_map_to_exit_codes() {
        assert_eq!(exit_code(&Error::Unavailable("x".into())), 4);
        assert_eq!(exit_code(&Error::Timeout("x".into())), 3);
        assert_eq!(exit_code(&Error::SessionLost("x".into())), 1);
        assert_eq!(exit_code(&Error::InvalidAddress("x".into())), 1);
        let status = tonic::Status::invalid_argument("bad name");
        assert_eq!(exit_code(&Error::Status(status)), 1);
    }

    #[test]
    fn timeouts_say_how_long_was_waited() {
        let held = Error::Timeout("lock \"x\" is held by session 4".into());
        let failure = acquire_failure(held, Some(Duration::ZERO));
        assert_eq!(failure.code, 3);
        assert_eq!(
            failure.message,
            "lock \"x\" is held by session 4 (timed out after 0s)"
        );
        let waited = Error::Timeout("timed out waiting for lock \"x\"".into());
        let failure = acquire_failure(waited, Some(Duration::from_secs(2)));
        assert_eq!(failure.message, "timed out waiting for lock \"x\" after 2s");
    }

    #[test]
    fn release_failure_matters_only_after_success() {
        let refused = || Err(Error::Status(tonic::Status::internal("disk full")));
        assert_eq!(finish(Ok(0), refused()).unwrap_err().code, 1);
        assert_eq!(finish(Ok(5), refused()).unwrap(), 5);
        assert_eq!(finish(Ok(5), Ok(())).unwrap(), 5);
    }

    #[test]
    fn a_lock_lost_by_the_release_exits_7() {
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
    fn absurd_durations_are_refused() {
        assert_eq!(parse_duration(DURATION_MAX_TEXT), Ok(DURATION_MAX));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        let error = parse_duration("99999999999h").unwrap_err();
        assert_eq!(error, "duration \"99999999999h\" is too long: at most 365d");
        assert!(parse_duration("366d").is_err());
        let parsed = Cli::try_parse_from(["syncctl", "lock", "acquire", "x", "--ttl", "400d"]);
        assert_eq!(parsed.unwrap_err().kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn dashes_without_a_command_are_noticed() {
        let parse = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Lock(LockCommand::Acquire(args)) = cli.command else {
                panic!("parsed {:?}", cli.command);
            };
            has_empty_command(&args, argv.iter().map(OsString::from))
        };
        assert!(parse(&["syncctl", "lock", "acquire", "x", "--"]));
        assert!(!parse(&["syncctl", "lock", "acquire", "x"]));
        assert!(!parse(&["syncctl", "lock", "acquire", "x", "--", "true"]));
        assert!(!parse(&[
            "syncctl", "lock", "acquire", "x", "--", "echo", "--"
        ]));
    }

    #[test]
    fn exit_statuses_become_codes() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }

    #[test]
    fn acquire_parses_command_after_dashes() {
        let cli = Cli::try_parse_from([
            "syncctl",
            "lock",
            "acquire",
            "db",
            "--timeout",
            "0s",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Lock(LockCommand::Acquire(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.timeout, Some(Duration::ZERO));
        assert_eq!(args.ttl, Duration::from_secs(10));
        assert_eq!(args.kill_grace, Duration::from_secs(5));
        assert_eq!(args.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn list_and_description_formats() {
        let rows = [PrimitiveSummary {
            kind: "lock".into(),
            name: "db".into(),
            state: "free".into(),
        }];
        assert_eq!(format_list(&rows), "lock  \"db\"  free\n");
        let spaced = [
            PrimitiveSummary {
                kind: "lock".into(),
                name: "a b".into(),
                state: "held".into(),
            },
            rows[0].clone(),
        ];
        assert_eq!(
            format_list(&spaced),
            "lock  \"a b\"  held\nlock  \"db\"   free\n"
        );
        let lock = DescribeLockResponse {
            name: "db".into(),
            holder: Some(LockHolder {
                session_id: 4,
                client_name: "w@h:1".into(),
                fencing_token: 17,
                held_ms: 1500,
                lease_left_ms: 8000,
            }),
            waiters: vec![LockWaiter {
                session_id: 5,
                client_name: "v@h:2".into(),
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
