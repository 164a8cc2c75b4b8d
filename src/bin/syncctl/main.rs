//! `syncctl`: the command line for syncd, a thin layer on the client
//! library (`syncd::client`). Every command connects, opens a session, does
//! its work and closes the session again.
//!
//! Modules: one per primitive (`lock`, `sem`, `rwlock`, `event`, `cond`,
//! `barrier`, `queue`, `pool`, `ratelimit`, `breaker`) plus `system` (ls,
//! ping); `hold` is the machinery that holds a lock, permits, a read/write
//! hold, a queue item, a pool resource or a breaker's permit while CMD runs
//! (and runs CMD after `ratelimit take`); `session` connects,
//! leaves and lets signals end waits; `exit` and `output` are exit codes,
//! errors and what is printed.

use std::{ffi::OsString, io::IsTerminal, path::PathBuf};

use clap::{error::ErrorKind, CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The exit codes of every command that holds something while CMD runs,
/// with the line for code 6 if the command has one.
macro_rules! hold_exit_codes {
    () => {
        hold_exit_codes!("")
    };
    ($six:literal) => {
        concat!(
            "  0        success: CMD's own exit code, or 0 without CMD after SIGINT/SIGTERM/SIGHUP\n",
            "  1        any other error (bad input refused by the server, ...)\n",
            "  2        invalid command line\n",
            "  3        not granted within --timeout\n",
            "  4        the server cannot be reached\n",
            $six,
            "  7        the hold was lost while held: its session expired, or could not be\n",
            "           renewed for a full TTL; a running CMD is stopped first\n",
            denied_exit_code!(),
            "  126      CMD could not be executed\n",
            "  127      CMD was not found\n",
            "  128+N    interrupted by signal N while waiting, or CMD killed by signal N\n",
        )
    };
}

/// The exit codes of every `describe`.
macro_rules! describe_exit_codes {
    () => {
        concat!(
            "  0        described (also a primitive that does not exist now)\n",
            "  1        any other error (e.g. an invalid name)\n",
            "  2        invalid command line\n",
            "  4        the server cannot be reached\n",
            denied_exit_code!(),
        )
    };
}

/// The line for exit code 8, which every command that talks to the server
/// has.
macro_rules! denied_exit_code {
    () => {
        "  8        the server refused the token (--token): not authenticated, or permission denied\n"
    };
}

/// The end of every subcommand's help.
macro_rules! common_footer {
    () => {
        concat!(
            "\nErrors are reported as one line on stderr. `syncctl --help` lists every exit ",
            "code. Logs go to stderr: level `warn` by default, RUST_LOG overrides.",
        )
    };
}

mod args;
mod barrier;
mod breaker;
mod cond;
mod event;
mod exit;
mod hold;
mod inspect;
mod lock;
mod output;
mod pool;
mod queue;
mod ratelimit;
mod rwlock;
mod sem;
mod session;
mod system;

use barrier::BarrierCommand;
use breaker::BreakerCommand;
use cond::CondCommand;
use event::EventCommand;
use exit::{exit_with, Failure};
use lock::LockCommand;
use output::Output;
use pool::PoolCommand;
use queue::QueueCommand;
use ratelimit::RateLimitCommand;
use rwlock::RwLockCommand;
use sem::SemCommand;
use system::{LsArgs, RevokeArgs};

const AFTER_HELP: &str = "\
Exit codes:
  0        success (with `-- CMD`: CMD's own exit code)
  1        any other error (bad input refused by the server, ...)
  2        invalid command line (reported by the argument parser)
  3        a wait timed out (--timeout of `lock acquire`, `sem acquire`, `rwlock read|write`,
           `event wait`, `barrier wait`, `queue put|get|join`, `pool checkout`,
           `ratelimit take`)
  4        the server cannot be reached
  5        the barrier is broken (`barrier wait`): a party left while waiting, or the
           barrier was reset or deleted meanwhile
  6        the primitive exists with other parameters: `sem acquire --capacity`,
           `barrier wait --parties`, `queue put --capacity|--max-deliveries`,
           `pool checkout --size|--max-age|--max-idle` or `ratelimit take --rate|--burst`
           differs from the existing one's;
           `breaker call`: the circuit breaker refused the call (CMD was not run)
  7        a hold was lost while held (`lock acquire`, `sem acquire`, `rwlock read|write`,
           `queue get -- CMD`, `pool checkout`): its session expired, or could not be
           renewed for a full TTL (or the server stopped accepting the token), or a queue
           item's visibility timeout passed; a running CMD is stopped first
  8        the server checks tokens and refused this one: not authenticated (no --token,
           or one the server does not know) or permission denied (the token's role or
           name prefixes do not allow the call)
  126      CMD could not be executed
  127      CMD was not found
  128+N    interrupted by signal N while waiting, or CMD killed by signal N

Errors are reported as one line on stderr. Logs go to stderr too: level `warn` by
default, RUST_LOG overrides (e.g. RUST_LOG=syncd=debug).";

/// Command line client for syncd, the coordination server: hold locks,
/// semaphore permits and read-write locks around commands, set and wait for
/// events, notify conditions, meet at barriers, put and take queue items,
/// check pool resources out, take tokens from rate limits, run commands
/// through circuit breakers, inspect them all, check the server.
#[derive(Parser, Debug)]
#[command(name = "syncctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The server's address: `http://HOST:PORT` (the scheme may be left
    /// out), or `https://HOST:PORT` for a server with TLS (see --cacert).
    #[arg(
        long,
        global = true,
        env = "SYNCD_ADDR",
        default_value = "http://127.0.0.1:7420",
        value_name = "URL"
    )]
    pub addr: String,

    /// With an `https://` --addr: trust the CA certificate(s) in this PEM
    /// file for the server's certificate (e.g. a private CA). Without it the
    /// well-known public CAs are trusted.
    #[arg(long, global = true, env = "SYNCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// With an `https://` --addr: present this client certificate (PEM), for
    /// a server that requires mutual TLS. Needs --key.
    #[arg(
        long,
        global = true,
        env = "SYNCD_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert. Needs --cert.
    #[arg(
        long,
        global = true,
        env = "SYNCD_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,

    /// For a server that checks tokens (syncd serve --auth-tokens): the
    /// secret of a token from its file, sent with every call as
    /// `authorization: Bearer SECRET`. On the command line the secret is
    /// visible to other users in `ps` (and stays in shell history): the
    /// SYNCD_TOKEN environment variable or --token-file are safer. Over
    /// `http://` it travels in clear; use `https://` beyond a trusted
    /// network.
    #[arg(
        long,
        global = true,
        env = "SYNCD_TOKEN",
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub token: Option<Secret>,

    /// Read the token's secret from the first line of FILE (surrounding
    /// whitespace removed): a file only you can read, or `/dev/stdin`.
    /// Conflicts with --token (an empty --token, e.g. from an empty
    /// SYNCD_TOKEN, counts as not given).
    #[arg(long, global = true, env = "SYNCD_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Output format: `text` for people, `json` (one JSON value on one line)
    /// for programs.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(subcommand)]
    command: Command,
}

/// A token's secret: its `Debug` does not show it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Takes any value: a secret that cannot be sent is refused when syncctl
/// connects, with a reason that does not quote it (clap's own errors
/// would).
fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret(text.to_owned()))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire or describe locks.
    #[command(subcommand, after_help = AFTER_HELP)]
    Lock(LockCommand),
    /// Acquire or describe semaphores: up to N permits held at once.
    #[command(subcommand, visible_alias = "semaphore", after_help = AFTER_HELP)]
    Sem(SemCommand),
    /// Read or write under a read-write lock, or describe one.
    #[command(name = "rwlock", subcommand, after_help = AFTER_HELP)]
    RwLock(RwLockCommand),
    /// Set, clear, check, wait for or describe events.
    #[command(subcommand, after_help = AFTER_HELP)]
    Event(EventCommand),
    /// Notify or describe conditions.
    #[command(subcommand, visible_alias = "condition", after_help = AFTER_HELP)]
    Cond(CondCommand),
    /// Wait at, reset, describe or delete barriers.
    #[command(subcommand, after_help = AFTER_HELP)]
    Barrier(BarrierCommand),
    /// Put items into queues, take them (run a command per item), wait
    /// until all are done, describe queues.
    #[command(subcommand, after_help = AFTER_HELP)]
    Queue(QueueCommand),
    /// Check resources out of pools around a command, or describe pools.
    #[command(subcommand, after_help = AFTER_HELP)]
    Pool(PoolCommand),
    /// Take tokens from shared rate limits (token buckets) before a
    /// command, describe or delete them.
    #[command(name = "ratelimit", subcommand, after_help = AFTER_HELP)]
    RateLimit(RateLimitCommand),
    /// Run commands through shared circuit breakers; describe, watch,
    /// reset, force them open or closed, delete them.
    #[command(subcommand, after_help = AFTER_HELP)]
    Breaker(BreakerCommand),
    /// List the primitives that exist now: one line each with kind, name
    /// (quoted, as `describe` shows it) and state.
    #[command(after_help = AFTER_HELP)]
    Ls(LsArgs),
    /// Check that the server answers, and how fast.
    #[command(after_help = AFTER_HELP)]
    Ping,
    /// Take a hold (of any kind) away from its holder, by fencing token:
    /// for a stuck holder. Whoever waits next is granted at once; the
    /// holder's session lives on, and is told at its next keep-alive (a
    /// `syncctl ... -- CMD` holder stops CMD and exits 7). With --session
    /// ID, end a whole session instead. The server logs the reason.
    #[command(after_help = AFTER_HELP)]
    Revoke(RevokeArgs),
    /// Show who holds a primitive and who waits for it, as tables: each
    /// holder's session, client name, host, fencing token, time held and
    /// lease left; each waiter's place in line, session, client, host, time
    /// waited and what it asks for.
    #[command(after_help = AFTER_HELP)]
    Inspect(inspect::InspectArgs),
    /// List every live session: client name, host, TTL, lease left, how
    /// many waits it has queued, and what it holds (with fencing tokens).
    #[command(after_help = AFTER_HELP)]
    Sessions,
    /// Print the one-line state of a primitive (as `ls` shows it) now and
    /// at every change: `watch lock deploy`, or every name with a prefix,
    /// as they come and go: `watch all build- --prefix`. Changes made
    /// within one step of the server show as their result.
    #[command(after_help = AFTER_HELP)]
    Watch(inspect::WatchArgs),
    /// Print a shell completion script (bash, zsh, fish, ...) to stdout.
    ///
    /// Install it with e.g. `syncctl completions bash >
    /// /etc/bash_completion.d/syncctl`, `syncctl completions zsh >
    /// "${fpath[1]}/_syncctl"` or `syncctl completions fish >
    /// ~/.config/fish/completions/syncctl.fish`.
    Completions(CompletionsArgs),
}

#[derive(clap::Args, Debug)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script for `shell`: exit 0, or 1 if stdout cannot
/// take it.
fn print_completions(shell: clap_complete::Shell) -> Result<i32, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "syncctl", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script)
        .map_err(|e| Failure::other(format!("cannot write the completion script: {e}")))?;
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    if let Some(error) = token_conflict(&cli).or_else(|| usage_error(&cli, std::env::args_os())) {
        error.exit();
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

async fn run(cli: &Cli) -> Result<i32, Failure> {
    match &cli.command {
        Command::Lock(command) => lock::run(cli, command).await,
        Command::Sem(command) => sem::run(cli, command).await,
        Command::RwLock(command) => rwlock::run(cli, command).await,
        Command::Event(command) => event::run(cli, command).await,
        Command::Cond(command) => cond::run(cli, command).await,
        Command::Barrier(command) => barrier::run(cli, command).await,
        Command::Queue(command) => queue::run(cli, command).await,
        Command::Pool(command) => pool::run(cli, command).await,
        Command::RateLimit(command) => ratelimit::run(cli, command).await,
        Command::Breaker(command) => breaker::run(cli, command).await,
        Command::Ls(args) => system::list(cli, args).await,
        Command::Ping => system::ping(cli).await,
        Command::Revoke(args) => system::revoke(cli, args).await,
        Command::Inspect(args) => inspect::inspect(cli, args).await,
        Command::Sessions => inspect::sessions(cli).await,
        Command::Watch(args) => inspect::watch(cli, args).await,
        Command::Completions(args) => print_completions(args.shell),
    }
}

/// --token and --token-file both given (from flags or the environment):
/// a usage error, as clap's own conflicts are. Not left to clap, which
/// would count an empty SYNCD_TOKEN as given.
fn token_conflict(cli: &Cli) -> Option<clap::Error> {
    let token = cli.token.as_ref().is_some_and(|t| !t.0.is_empty());
    (token && cli.token_file.is_some()).then(|| {
        Cli::command().error(
            ErrorKind::ArgumentConflict,
            "--token (or SYNCD_TOKEN) and --token-file (or SYNCD_TOKEN_FILE) cannot be used \
             together: give the token one way",
        )
    })
}

/// A command-line mistake that the parser cannot see, as the parser would
/// report it (exit 2, with the subcommand's usage line).
fn usage_error(cli: &Cli, raw: impl Iterator<Item = OsString>) -> Option<clap::Error> {
    const HOLD: &str = "to hold until interrupted";
    let (path, command, without, extra) = match &cli.command {
        Command::Lock(LockCommand::Acquire(args)) => {
            (["lock", "acquire"], &args.hold.command, HOLD, None)
        }
        Command::Sem(SemCommand::Acquire(args)) => {
            let conflict = args.usage_error().map(|m| (ErrorKind::ArgumentConflict, m));
            (["sem", "acquire"], &args.hold.command, HOLD, conflict)
        }
        Command::RwLock(RwLockCommand::Read(args)) => {
            (["rwlock", "read"], &args.hold.command, HOLD, None)
        }
        Command::RwLock(RwLockCommand::Write(args)) => {
            (["rwlock", "write"], &args.hold.command, HOLD, None)
        }
        Command::Queue(QueueCommand::Get(args)) => (
            ["queue", "get"],
            &args.hold.command,
            "to print the item",
            None,
        ),
        Command::Pool(PoolCommand::Checkout(args)) => {
            let missing = args
                .usage_error()
                .map(|m| (ErrorKind::MissingRequiredArgument, m));
            (["pool", "checkout"], &args.hold.command, "", missing)
        }
        Command::RateLimit(RateLimitCommand::Take(args)) => (
            ["ratelimit", "take"],
            &args.command,
            "to print the tokens left",
            None,
        ),
        Command::Breaker(BreakerCommand::Call(args)) => {
            (["breaker", "call"], &args.command, "", args.usage_error())
        }
        _ => return None,
    };
    let (kind, message) = match extra {
        Some(extra) => extra,
        None if has_empty_command(command, raw) => (
            ErrorKind::InvalidValue,
            format!(
                "no command after `--`: give CMD [ARGS...] after it, or leave `--` out {without}"
            ),
        ),
        None => return None,
    };
    Some(subcommand(&path).error(kind, message))
}

/// The definition of a subcommand such as `lock acquire`, for its usage
/// line in errors.
fn subcommand(path: &[&str]) -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    let mut found = cli.clone();
    for name in path {
        match found.find_subcommand(name) {
            Some(next) => found = next.clone(),
            None => return cli,
        }
    }
    found
}

/// True when `--` ends the command line with nothing after it: clap cannot
/// tell that from no `--` at all, and it is most likely a mistake.
fn has_empty_command(command: &[String], raw: impl Iterator<Item = OsString>) -> bool {
    command.is_empty() && raw.last().is_some_and(|last| last == "--")
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(argv: &[&str]) -> Cli {
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn absurd_durations_are_refused_by_the_parser() {
        let parsed = Cli::try_parse_from(["syncctl", "lock", "acquire", "x", "--ttl", "400d"]);
        assert_eq!(parsed.unwrap_err().kind(), ErrorKind::ValueValidation);
        let parsed = Cli::try_parse_from(["syncctl", "event", "wait", "e", "--timeout", "400d"]);
        assert_eq!(parsed.unwrap_err().kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn inspect_takes_one_kind_and_watch_also_all() {
        let parsed = Cli::try_parse_from(["syncctl", "inspect", "all", "x"]);
        assert_eq!(parsed.unwrap_err().kind(), ErrorKind::InvalidValue);
        parse(&["syncctl", "inspect", "sem", "x"]);
        parse(&["syncctl", "watch", "all", "x", "--prefix"]);
    }

    #[test]
    fn dashes_without_a_command_are_noticed() {
        let empty = |argv: &[&str]| {
            let cli = parse(argv);
            usage_error(&cli, argv.iter().map(OsString::from)).is_some()
        };
        assert!(empty(&["syncctl", "lock", "acquire", "x", "--"]));
        assert!(!empty(&["syncctl", "lock", "acquire", "x"]));
        assert!(!empty(&["syncctl", "lock", "acquire", "x", "--", "true"]));
        assert!(!empty(&[
            "syncctl", "lock", "acquire", "x", "--", "echo", "--"
        ]));
        assert!(empty(&[
            "syncctl",
            "sem",
            "acquire",
            "s",
            "--capacity",
            "2",
            "--"
        ]));
        assert!(empty(&["syncctl", "rwlock", "read", "r", "--"]));
        assert!(empty(&["syncctl", "rwlock", "write", "r", "--"]));
    }

    #[test]
    fn more_permits_than_capacity_is_a_usage_error() {
        let argv = [
            "syncctl",
            "sem",
            "acquire",
            "s",
            "--capacity",
            "2",
            "--permits",
            "3",
            "--",
            "true",
        ];
        let error = usage_error(&parse(&argv), argv.iter().map(OsString::from)).unwrap();
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains("--permits 3 is more than --capacity 2"),
            "{text}"
        );
        assert!(text.contains("syncctl sem acquire"), "{text}");
        let fits = [
            "syncctl",
            "sem",
            "acquire",
            "s",
            "--capacity",
            "2",
            "--permits",
            "2",
        ];
        assert!(usage_error(&parse(&fits), fits.iter().map(OsString::from)).is_none());
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        for argv in [
            &["syncctl", "sem", "acquire", "s", "--capacity", "0"][..],
            &[
                "syncctl",
                "sem",
                "acquire",
                "s",
                "--capacity",
                "1",
                "--permits",
                "0",
            ],
            &["syncctl", "barrier", "wait", "b", "--parties", "0"],
            &["syncctl", "cond", "notify", "c", "--count", "0"],
        ] {
            let error = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{argv:?}");
        }
        let both = Cli::try_parse_from(["syncctl", "cond", "notify", "c", "--all", "--count", "2"]);
        assert_eq!(both.unwrap_err().kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn acquire_parses_command_after_dashes() {
        let cli = parse(&[
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
        ]);
        let Command::Lock(LockCommand::Acquire(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.hold.timeout, Some(Duration::ZERO));
        assert_eq!(args.hold.ttl, Duration::from_secs(10));
        assert_eq!(args.hold.kill_grace, Duration::from_secs(5));
        assert_eq!(args.hold.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn every_primitive_parses() {
        let cli = parse(&[
            "syncctl",
            "sem",
            "acquire",
            "s",
            "--capacity",
            "3",
            "--permits",
            "2",
            "--ttl",
            "2s",
            "--",
            "true",
        ]);
        let Command::Sem(SemCommand::Acquire(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!((args.capacity, args.permits), (3, 2));
        assert_eq!(args.hold.ttl, Duration::from_secs(2));
        assert_eq!(args.hold.command, ["true"]);
        let cli = parse(&["syncctl", "semaphore", "describe", "s"]);
        assert!(matches!(cli.command, Command::Sem(SemCommand::Describe(_))));
        let cli = parse(&["syncctl", "rwlock", "write", "r", "--timeout", "1s"]);
        assert!(matches!(
            cli.command,
            Command::RwLock(RwLockCommand::Write(_))
        ));
        let cli = parse(&[
            "syncctl",
            "barrier",
            "wait",
            "b",
            "--parties",
            "3",
            "--timeout",
            "1s",
        ]);
        let Command::Barrier(BarrierCommand::Wait(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.parties, 3);
        assert_eq!(args.wait.timeout, Some(Duration::from_secs(1)));
        let cli = parse(&["syncctl", "condition", "notify", "c", "--all"]);
        assert!(matches!(cli.command, Command::Cond(CondCommand::Notify(ref a)) if a.all));
        for sub in ["set", "clear", "status", "wait", "describe"] {
            parse(&["syncctl", "event", sub, "e"]);
        }
        for sub in ["reset", "describe", "delete"] {
            parse(&["syncctl", "barrier", sub, "b"]);
        }
        for sub in ["describe", "delete"] {
            parse(&["syncctl", "ratelimit", sub, "r"]);
        }
        for sub in [
            "describe",
            "watch",
            "reset",
            "force-open",
            "force-close",
            "delete",
        ] {
            parse(&["syncctl", "breaker", sub, "b"]);
        }
    }

    #[test]
    fn queue_and_pool_commands_parse() {
        let cli = parse(&[
            "syncctl",
            "queue",
            "put",
            "q",
            "v",
            "--priority",
            "2",
            "--capacity",
            "0",
            "--max-deliveries",
            "3",
            "--timeout",
            "1s",
        ]);
        let Command::Queue(QueueCommand::Put(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.value, Some(OsString::from("v")));
        assert_eq!((args.priority, args.capacity), (2, Some(0)));
        assert_eq!(args.max_deliveries, Some(3));
        assert_eq!(args.wait.timeout, Some(Duration::from_secs(1)));
        let cli = parse(&["syncctl", "queue", "put", "q"]);
        assert!(
            matches!(cli.command, Command::Queue(QueueCommand::Put(ref a)) if a.value.is_none())
        );

        let cli = parse(&[
            "syncctl",
            "queue",
            "get",
            "q",
            "--visibility-timeout",
            "5m",
            "--",
            "cat",
        ]);
        let Command::Queue(QueueCommand::Get(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.visibility_timeout, Some(Duration::from_secs(300)));
        assert!(!args.no_ack);
        assert_eq!(args.hold.command, ["cat"]);
        for sub in [
            &["ack", "q", "4"][..],
            &["nack", "q", "4"],
            &["join", "q"],
            &["describe", "q"],
        ] {
            parse(&[&["syncctl", "queue"][..], sub].concat());
        }

        let cli = parse(&[
            "syncctl",
            "pool",
            "checkout",
            "p",
            "--size",
            "2",
            "--max-age",
            "1h",
            "--max-idle",
            "5m",
            "--",
            "true",
        ]);
        let Command::Pool(PoolCommand::Checkout(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.size, 2);
        assert_eq!(args.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(args.max_idle, Some(Duration::from_secs(300)));
        parse(&["syncctl", "pool", "describe", "p"]);
    }

    #[test]
    fn queue_and_pool_flags_that_mean_nothing_are_refused() {
        for argv in [
            &[
                "syncctl",
                "queue",
                "get",
                "q",
                "--no-ack",
                "--visibility-timeout",
                "1s",
            ][..],
            &["syncctl", "queue", "get", "q", "--visibility-timeout", "0s"],
            &["syncctl", "queue", "put", "q", "v", "--max-deliveries", "0"],
            &["syncctl", "queue", "ack", "q", "not-a-number"],
            &[
                "syncctl", "pool", "checkout", "p", "--size", "0", "--", "true",
            ],
            &["syncctl", "pool", "checkout", "p", "--", "true"],
            &[
                "syncctl",
                "pool",
                "checkout",
                "p",
                "--size",
                "1",
                "--max-age",
                "0s",
            ],
        ] {
            let error = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{argv:?}");
        }
        let usage = |argv: &[&str]| {
            usage_error(&parse(argv), argv.iter().map(OsString::from)).map(|e| e.to_string())
        };
        let missing = usage(&["syncctl", "pool", "checkout", "p", "--size", "1"]).unwrap();
        assert!(missing.contains("a command is required"), "{missing}");
        assert!(
            usage(&["syncctl", "pool", "checkout", "p", "--size", "1", "--", "true"]).is_none()
        );
        let empty = usage(&["syncctl", "queue", "get", "q", "--"]).unwrap();
        assert!(
            empty.contains("leave `--` out to print the item"),
            "{empty}"
        );
        assert!(usage(&["syncctl", "queue", "get", "q"]).is_none());
    }

    #[test]
    fn ratelimit_and_breaker_commands_parse() {
        let cli = parse(&[
            "syncctl",
            "ratelimit",
            "take",
            "api",
            "--rate",
            "5",
            "--burst",
            "10",
            "--tokens",
            "2",
            "--timeout",
            "0s",
            "--",
            "curl",
            "-fsS",
        ]);
        let Command::RateLimit(RateLimitCommand::Take(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!((args.rate, args.burst, args.tokens), (5, 10, 2));
        assert_eq!(args.wait.timeout, Some(Duration::ZERO));
        assert_eq!(args.command, ["curl", "-fsS"]);
        let cli = parse(&["syncctl", "ratelimit", "take", "api"]);
        let Command::RateLimit(RateLimitCommand::Take(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!((args.rate, args.burst, args.tokens), (0, 0, 1));
        assert!(args.command.is_empty());
        parse(&["syncctl", "ratelimit", "describe", "api"]);

        let cli = parse(&[
            "syncctl",
            "breaker",
            "call",
            "db",
            "--threshold",
            "3",
            "--open-timeout",
            "1.5s",
            "--probes",
            "2",
            "--success-threshold",
            "2",
            "--window",
            "20",
            "--failure-rate",
            "50",
            "--min-calls",
            "10",
            "--",
            "false",
        ]);
        let Command::Breaker(BreakerCommand::Call(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        let settings = args.settings.settings().expect("settings given");
        assert_eq!(settings.failure_threshold, 3);
        assert_eq!(settings.open_timeout_ms, 1500);
        assert_eq!(
            (settings.half_open_max_probes, settings.success_threshold),
            (2, 2)
        );
        assert_eq!(
            (
                settings.window_calls,
                settings.failure_rate_percent,
                settings.min_calls
            ),
            (20, 50, 10)
        );
        assert_eq!(args.ttl, Duration::from_secs(10));
        assert_eq!(args.command, ["false"]);
        let cli = parse(&["syncctl", "breaker", "call", "db", "--", "true"]);
        let Command::Breaker(BreakerCommand::Call(args)) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.settings.settings(), None);
        let cli = parse(&["syncctl", "breaker", "watch", "db", "--count", "3"]);
        assert!(matches!(
            cli.command,
            Command::Breaker(BreakerCommand::Watch(ref a)) if a.count == Some(3)
        ));
        for sub in ["describe", "reset", "force-open", "force-close"] {
            parse(&["syncctl", "breaker", sub, "db"]);
        }
    }

    #[test]
    fn ratelimit_and_breaker_mistakes_are_usage_errors() {
        for argv in [
            &["syncctl", "ratelimit", "take", "api", "--tokens", "0"][..],
            &[
                "syncctl",
                "breaker",
                "call",
                "db",
                "--threshold",
                "0",
                "--",
                "true",
            ],
            &[
                "syncctl", "breaker", "call", "db", "--window", "10", "--", "true",
            ],
            &[
                "syncctl",
                "breaker",
                "call",
                "db",
                "--threshold",
                "1",
                "--failure-rate",
                "50",
                "--",
                "true",
            ],
            &[
                "syncctl",
                "breaker",
                "call",
                "db",
                "--window",
                "10",
                "--failure-rate",
                "101",
                "--",
                "true",
            ],
            &[
                "syncctl",
                "breaker",
                "call",
                "db",
                "--threshold",
                "1",
                "--open-timeout",
                "0s",
                "--",
                "true",
            ],
            &[
                "syncctl",
                "breaker",
                "call",
                "db",
                "--threshold",
                "1",
                "--probes",
                "1001",
                "--",
                "true",
            ],
            &["syncctl", "breaker", "watch", "db", "--count", "0"],
        ] {
            let error = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{argv:?}");
        }
        let usage = |argv: &[&str]| {
            usage_error(&parse(argv), argv.iter().map(OsString::from)).map(|e| e.to_string())
        };
        let missing = usage(&["syncctl", "breaker", "call", "db"]).unwrap();
        assert!(missing.contains("a command is required"), "{missing}");
        let empty = usage(&["syncctl", "breaker", "call", "db", "--"]).unwrap();
        assert!(empty.contains("a command is required"), "{empty}");
        let no_rule = usage(&[
            "syncctl", "breaker", "call", "db", "--probes", "2", "--", "x",
        ]);
        assert!(no_rule.unwrap().contains("--threshold N"));
        let min_calls = usage(&[
            "syncctl",
            "breaker",
            "call",
            "db",
            "--window",
            "5",
            "--failure-rate",
            "50",
            "--min-calls",
            "6",
            "--",
            "x",
        ]);
        assert!(min_calls
            .unwrap()
            .contains("--min-calls 6 is more than --window 5"));
        assert!(usage(&["syncctl", "breaker", "call", "db", "--", "true"]).is_none());
        let take = usage(&["syncctl", "ratelimit", "take", "api", "--"]).unwrap();
        assert!(
            take.contains("leave `--` out to print the tokens left"),
            "{take}"
        );
        assert!(usage(&["syncctl", "ratelimit", "take", "api"]).is_none());
    }

    #[test]
    fn tokens_come_from_a_flag_or_a_file_but_not_both() {
        let cli = parse(&["syncctl", "--token", "s3cret", "ping"]);
        assert_eq!(cli.token.as_ref().map(|t| t.0.as_str()), Some("s3cret"));
        assert!(cli.token_file.is_none());
        let cli = parse(&["syncctl", "ping", "--token-file", "/run/secret"]);
        assert_eq!(cli.token_file, Some(PathBuf::from("/run/secret")));
        assert!(token_conflict(&cli).is_none());
        let both = parse(&[
            "syncctl",
            "--token",
            "s3cret",
            "--token-file",
            "/run/secret",
            "ping",
        ]);
        let error = token_conflict(&both).unwrap();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(error.exit_code(), 2);
        assert!(!error.to_string().contains("s3cret"), "{error}");
        // Empty counts as not given.
        let empty = parse(&["syncctl", "--token", "", "--token-file", "/run/s", "ping"]);
        assert!(token_conflict(&empty).is_none());
        // Never shown by Debug.
        let cli = parse(&["syncctl", "--token", "s3cret", "ping"]);
        assert!(!format!("{cli:?}").contains("s3cret"));
    }

    #[test]
    fn the_token_help_warns_about_ps() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--token <SECRET>"), "{help}");
        assert!(help.contains("visible to other users in `ps`"), "{help}");
        assert!(help.contains("SYNCD_TOKEN_FILE"), "{help}");
        assert!(
            help.contains("  8        the server checks tokens"),
            "{help}"
        );
        let lock = subcommand(&["lock", "acquire"])
            .render_long_help()
            .to_string();
        assert!(
            lock.contains("  8        the server refused the token"),
            "{lock}"
        );
    }

    #[test]
    fn help_lists_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for code in ["  3 ", "  5 ", "  6 ", "  7 ", "  8 "] {
            assert!(help.contains(code), "{code:?} missing: {help}");
        }
        let wait = subcommand(&["barrier", "wait"])
            .render_long_help()
            .to_string();
        assert!(wait.contains("5        the barrier is broken"), "{wait}");
        assert!(wait.contains("Example"), "{wait}");
        for path in [
            &["queue", "put"][..],
            &["queue", "get"],
            &["queue", "ack"],
            &["queue", "nack"],
            &["queue", "join"],
            &["queue", "describe"],
            &["pool", "checkout"],
            &["pool", "describe"],
            &["ratelimit", "take"],
            &["ratelimit", "describe"],
            &["breaker", "call"],
            &["breaker", "describe"],
            &["breaker", "watch"],
            &["breaker", "reset"],
            &["breaker", "force-open"],
            &["breaker", "force-close"],
        ] {
            let help = subcommand(path).render_long_help().to_string();
            assert!(help.contains("Exit codes:"), "{path:?}: {help}");
            assert!(help.contains("Example"), "{path:?}: {help}");
        }
        let call = subcommand(&["breaker", "call"])
            .render_long_help()
            .to_string();
        assert!(
            call.contains("6        the circuit breaker refused the call (CMD was not run)"),
            "{call}"
        );
        let take = subcommand(&["ratelimit", "take"])
            .render_long_help()
            .to_string();
        assert!(
            take.contains("3        the tokens were not there"),
            "{take}"
        );
        let get = subcommand(&["queue", "get"]).render_long_help().to_string();
        assert!(get.contains("7        the item was lost"), "{get}");
        let put = subcommand(&["queue", "put"]).render_long_help().to_string();
        assert!(put.contains("3        the queue stayed full"), "{put}");
        assert!(
            put.contains("6        the queue exists with another"),
            "{put}"
        );
    }
}
