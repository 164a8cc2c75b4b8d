//! `syncctl`: the command line for syncd, a thin layer on the client
//! library (`syncd::client`). Every command connects, opens a session, does
//! its work and closes the session again.

use std::{
    io::{IsTerminal, Write},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use syncd::{
    client::{Client, ClientOptions, Error, LockGuard},
    duration,
    proto::v1::{DescribeLockResponse, LockHolder, LockWaiter, PrimitiveSummary},
};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Exit code: a wait timed out.
const EXIT_TIMEOUT: i32 = 3;
/// Exit code: the server cannot be reached.
const EXIT_UNAVAILABLE: i32 = 4;
/// Exit code: any other error.
const EXIT_ERROR: i32 = 1;

const AFTER_HELP: &str = "\
Exit codes:
  0        success (with `lock acquire -- CMD`: CMD's own exit code)
  1        any other error (bad input refused by the server, lock lost, ...)
  2        invalid command line (reported by the argument parser)
  3        a wait timed out (`lock acquire --timeout`)
  4        the server cannot be reached
  128+N    interrupted by signal N while waiting for a lock, or CMD killed by signal N

Errors are reported as one line on stderr. Logs go to stderr too: level `warn` by
default, RUST_LOG overrides (e.g. RUST_LOG=syncd=debug).";

/// Command line client for syncd, the coordination server: take locks
/// around commands, inspect locks, list primitives, check the server.
#[derive(Parser, Debug)]
#[command(name = "syncctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// The server's address: `http://HOST:PORT` (the scheme may be left out).
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
    /// List the primitives that exist now: one line each with kind, name and
    /// state.
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
    /// with CMD's exit code (128+N if CMD was killed by signal N). CMD gets
    /// the environment variables SYNCD_FENCING_TOKEN (the grant's fencing
    /// token) and SYNCD_LOCK_NAME. SIGINT and SIGTERM sent to syncctl are
    /// forwarded to CMD.
    ///
    /// Without CMD: prints the fencing token (text: the number on one line;
    /// json: {"name":..,"fencing_token":..}) and holds the lock until SIGINT
    /// or SIGTERM, then releases it and exits 0. Exits 1 if the lock is lost
    /// (the session expired) while held.
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
    /// this long, the server releases the lock. Written like 500ms, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    ttl: Duration,

    /// How long to wait for the lock before giving up with exit code 3;
    /// `0s` tries once. Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    timeout: Option<Duration>,

    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
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

/// Why syncctl stops early: the exit code and the one line for stderr.
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
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: exit_code(&error),
            message: error.to_string(),
        }
    }
}

/// The exit code for a client error.
fn exit_code(error: &Error) -> i32 {
    match error {
        Error::Unavailable(_) => EXIT_UNAVAILABLE,
        Error::Timeout(_) => EXIT_TIMEOUT,
        Error::SessionLost(_) | Error::Status(_) => EXIT_ERROR,
    }
}

fn main() {
    let cli = Cli::parse();
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

fn exit_with(failure: Failure) -> ! {
    eprintln!("syncctl: {}", failure.message);
    std::process::exit(failure.code)
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

/// Closes the session of a command that holds nothing: a failure only
/// delays the session's expiry, so it is logged, not reported.
async fn close_quietly(client: Client) {
    if let Err(error) = client.close().await {
        tracing::warn!("closing the session failed: {error}");
    }
}

// --- ping, ls, describe ---------------------------------------------------

async fn ping(cli: &Cli) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let started = Instant::now();
    let pinged = client.ping().await;
    let rtt = started.elapsed();
    let addr = client.addr().to_string();
    close_quietly(client).await;
    pinged?;
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    match cli.output {
        Output::Text => println!("pong from {addr} in {rtt_ms:.1}ms"),
        Output::Json => println!("{}", json!({ "addr": addr, "rtt_ms": rtt_ms })),
    }
    Ok(0)
}

async fn list(cli: &Cli, args: &LsArgs) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let kind = args.kind.as_deref().unwrap_or_default();
    let prefix = args.prefix.as_deref().unwrap_or_default();
    let listed = client.list(kind, prefix).await;
    close_quietly(client).await;
    let primitives = listed?;
    match cli.output {
        Output::Text => print!("{}", format_list(&primitives)),
        Output::Json => {
            let rows: Vec<_> = primitives
                .iter()
                .map(|p| json!({ "kind": p.kind, "name": p.name, "state": p.state }))
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
    }
    Ok(0)
}

/// One line per primitive, columns aligned: kind, name, state.
fn format_list(primitives: &[PrimitiveSummary]) -> String {
    let kind_width = primitives.iter().map(|p| p.kind.len()).max().unwrap_or(0);
    let name_width = primitives.iter().map(|p| p.name.len()).max().unwrap_or(0);
    primitives
        .iter()
        .map(|p| {
            format!(
                "{:kind_width$}  {:name_width$}  {}\n",
                p.kind, p.name, p.state
            )
        })
        .collect()
}

async fn lock_describe(cli: &Cli, args: &DescribeArgs) -> Result<i32, Failure> {
    let client = connect(cli, ClientOptions::default()).await?;
    let described = client.lock(args.name.as_str()).describe().await;
    close_quietly(client).await;
    let description = described?;
    match cli.output {
        Output::Text => print!("{}", format_description(&description)),
        Output::Json => println!("{}", description_json(&description)),
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

/// SIGINT and SIGTERM, caught: while syncctl holds a lock they must not
/// kill it before it releases.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn catch() -> Result<Signals, Failure> {
        let catch =
            |kind| signal(kind).map_err(|e| Failure::other(format!("cannot catch signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal; returns its number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

async fn lock_acquire(cli: &Cli, args: &AcquireArgs) -> Result<i32, Failure> {
    let mut signals = Signals::catch()?;
    let options = ClientOptions {
        session_ttl: args.ttl,
        ..ClientOptions::default()
    };
    let client = connect(cli, options).await?;
    let outcome = acquire_and_hold(cli, args, &client, &mut signals).await;
    close_quietly(client).await;
    outcome
}

/// Waits for the lock (a signal ends the wait), holds it while CMD runs or
/// until a signal, then releases it.
async fn acquire_and_hold(
    cli: &Cli,
    args: &AcquireArgs,
    client: &Client,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    let lock = client.lock(args.name.as_str());
    let acquired = tokio::select! {
        acquired = async {
            match args.timeout {
                Some(timeout) => lock.acquire_timeout(timeout).await,
                None => lock.acquire().await,
            }
        } => acquired,
        signal = signals.recv() => return Ok(128 + signal),
    };
    let guard = acquired.map_err(|error| acquire_failure(error, args.timeout))?;
    let session_id = client.session_id();
    let held = match args.command.split_first() {
        Some((program, program_args)) => run_command(program, program_args, &guard, signals).await,
        None => hold_until_signal(cli, client, session_id, &guard, signals).await,
    };
    let released = guard.release().await;
    finish(held, released)
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

/// The exit code once the lock is released: CMD's (or 0), unless holding or
/// releasing failed. A failed release after a successful CMD exits 1.
fn finish(held: Result<i32, Failure>, released: Result<(), Error>) -> Result<i32, Failure> {
    let code = held?;
    match released {
        Ok(()) => Ok(code),
        Err(error) => {
            let failure = Failure::from(error);
            if code == 0 {
                Err(failure)
            } else {
                eprintln!("syncctl: {}", failure.message);
                Ok(code)
            }
        }
    }
}

/// Runs CMD with the token in its environment, forwarding SIGINT and
/// SIGTERM to it; returns its exit code.
async fn run_command(
    program: &str,
    program_args: &[String],
    guard: &LockGuard,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    let mut child = tokio::process::Command::new(program)
        .args(program_args)
        .env("SYNCD_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("SYNCD_LOCK_NAME", guard.name())
        .spawn()
        .map_err(|e| Failure::other(format!("cannot run {program:?}: {e}")))?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status
                    .map_err(|e| Failure::other(format!("waiting for {program:?} failed: {e}")))?;
                return Ok(status_code(status));
            }
            signal = signals.recv() => forward_signal(child.id(), signal),
        }
    }
}

fn forward_signal(pid: Option<u32>, signal: i32) {
    let Some(pid) = pid.and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions. The child has not
    // been reaped yet (it is reaped only by `wait`), so the pid is still
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

/// Prints the token and holds the lock until SIGINT or SIGTERM. Fails when
/// the session is replaced (the old one, with the lock, expired).
async fn hold_until_signal(
    cli: &Cli,
    client: &Client,
    session_id: u64,
    guard: &LockGuard,
    signals: &mut Signals,
) -> Result<i32, Failure> {
    print_token(cli.output, guard)?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = signals.recv() => return Ok(0),
            _ = check.tick() => {
                if client.session_id() != session_id {
                    return Err(Failure::other(format!(
                        "lost lock {:?}: session {session_id} expired while holding it",
                        guard.name()
                    )));
                }
            }
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
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::other(format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_map_to_exit_codes() {
        assert_eq!(exit_code(&Error::Unavailable("x".into())), 4);
        assert_eq!(exit_code(&Error::Timeout("x".into())), 3);
        assert_eq!(exit_code(&Error::SessionLost("x".into())), 1);
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
        let lost = || Err(Error::SessionLost("lost".into()));
        assert_eq!(finish(Ok(0), lost()).unwrap_err().code, 1);
        assert_eq!(finish(Ok(7), lost()).unwrap(), 7);
        assert_eq!(finish(Ok(7), Ok(())).unwrap(), 7);
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
        assert_eq!(args.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn list_and_description_formats() {
        let rows = [PrimitiveSummary {
            kind: "lock".into(),
            name: "db".into(),
            state: "free".into(),
        }];
        assert_eq!(format_list(&rows), "lock  db  free\n");
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
