//! `syncd`: the coordination server. Flags and process plumbing only; the
//! server itself is `syncd::server`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use syncd::core::Limits;
use syncd::engine::{Durability, EngineConfig};
use syncd::metrics::Metrics;
use syncd::server::auth::Auth;
use syncd::server::incoming::{ConnectionCap, ConnectionLimits};
use syncd::server::tls::TlsFiles;
use syncd::server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// syncd hosts named, durable synchronization primitives (locks with leases
/// and fencing tokens, ...) for processes on many machines, over gRPC.
#[derive(Parser, Debug)]
#[command(name = "syncd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

// Parsed once per process: the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Commands {
    /// Start the server. Prints `listening on HOST:PORT` on stdout once it
    /// accepts connections; logs go to stderr (set RUST_LOG, e.g. debug).
    /// SIGINT/SIGTERM shut it down gracefully: waiting calls end with
    /// UNAVAILABLE, everything is flushed, exit code 0.
    ///
    /// Every flag can also be set by its environment variable (shown with
    /// it below) or by a key of the TOML file named by --config (or
    /// SYNCD_CONFIG). Precedence: flag, then environment variable, then
    /// config file, then the built-in default.
    ///
    /// Exit codes: 0 stopped by a signal; 1 any other failure (cannot
    /// listen, the store failed while serving); 2 bad command line or config
    /// file; 3 the data directory cannot be used (corrupt or truncated
    /// records, another syncd uses it, unreadable): syncd never starts empty
    /// over existing data.
    Serve(ServeArgs),

    /// Print a shell completion script (bash, zsh, fish, ...) to stdout.
    ///
    /// Install it with e.g. `syncd completions bash >
    /// /etc/bash_completion.d/syncd`, `syncd completions zsh >
    /// "${fpath[1]}/_syncd"` or `syncd completions fish >
    /// ~/.config/fish/completions/syncd.fish`.
    Completions(CompletionsArgs),
}

#[derive(Parser, Debug)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl CompletionsArgs {
    /// Prints the script; exit 1 if stdout cannot take it.
    fn print(&self) -> ExitCode {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "syncd", &mut script);
        match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("cannot write the completion script: {e}")),
        }
    }
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// TOML file that sets any of the flags below: one key per flag, named
    /// like the long flag with `-` or `_`, e.g. `max_sessions = 5000`,
    /// `listen = "0.0.0.0:7420"`, `session_ttl_max = "1h"`. A flag or an
    /// environment variable overrides the file. An unknown key, a bad value
    /// or an unreadable file is an error (exit 2).
    #[arg(long = syncd::config::FLAG, env = "SYNCD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Data directory (created if missing). Only one syncd may use it at a
    /// time.
    #[arg(long, env = "SYNCD_DATA", default_value = "./syncd-data")]
    data: PathBuf,

    /// Address to listen on, HOST:PORT (a name such as localhost is
    /// resolved). Port 0 picks a free port (see the printed line).
    #[arg(long, env = "SYNCD_LISTEN", default_value = "127.0.0.1:7420")]
    listen: String,

    /// `sync`: a reply that depends on a change is sent only after the change
    /// is flushed to disk (concurrent calls share one flush). `none`: reply
    /// before flushing; faster, but a crash can lose the last moments of
    /// acknowledged changes.
    #[arg(long, env = "SYNCD_DURABILITY", value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,

    /// Shortest session TTL a client may ask for.
    #[arg(long, env = "SYNCD_SESSION_TTL_MIN", default_value = "1s", value_parser = parse_duration)]
    session_ttl_min: Duration,

    /// Longest session TTL a client may ask for.
    #[arg(long, env = "SYNCD_SESSION_TTL_MAX", default_value = "1h", value_parser = parse_duration)]
    session_ttl_max: Duration,

    /// Sessions open at once, at most; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "SYNCD_MAX_SESSIONS", default_value_t = 100_000, value_parser = at_least_one)]
    max_sessions: usize,

    /// Waiters queued on one primitive, at most; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "SYNCD_MAX_WAITERS", default_value_t = 10_000, value_parser = at_least_one)]
    max_waiters: usize,

    /// Holds (locks, permits, in-flight queue items, pool resources, breaker
    /// permits) one session may have; a request for more is
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SYNCD_MAX_HOLDS_PER_SESSION", default_value_t = 10_000, value_parser = at_least_one)]
    max_holds_per_session: usize,

    /// Waits (and breaker watches) one session may have at once; beyond it
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SYNCD_MAX_WAITERS_PER_SESSION", default_value_t = 10_000, value_parser = at_least_one)]
    max_waiters_per_session: usize,

    /// Primitives of all kinds together; a request that would create one
    /// more is RESOURCE_EXHAUSTED (locks, semaphores and rwlocks exist while
    /// held or awaited; the others until deleted or emptied).
    #[arg(long, env = "SYNCD_MAX_PRIMITIVES", default_value_t = 1_000_000, value_parser = at_least_one)]
    max_primitives: usize,

    /// Largest queue item (and pool resource metadata), in bytes; beyond it
    /// INVALID_ARGUMENT.
    #[arg(long, env = "SYNCD_MAX_ITEM_BYTES", default_value_t = 64 * 1024, value_parser = at_least_one)]
    max_item_bytes: usize,

    /// Items one queue may hold (ready and in flight), at most; an
    /// unbounded queue refuses puts beyond it with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SYNCD_MAX_QUEUE_ITEMS", default_value_t = 1_000_000, value_parser = at_least_one)]
    max_queue_items: usize,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "SYNCD_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    max_message_bytes: usize,

    /// HTTP/2 streams (concurrent calls) per client connection, at most.
    #[arg(long, env = "SYNCD_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024)]
    max_streams_per_connection: u32,

    /// Client connections open at once, at most (on the gRPC port; the
    /// metrics endpoint serves 16 of its own). One more is accepted and
    /// closed at once, so that its client fails fast instead of hanging:
    /// over plain HTTP/2 its first call gets UNAVAILABLE with a message
    /// that names max_connections. Refusals are logged at warn, at most once
    /// every 10 s. Default: 10000, or the open-file limit less 96
    /// descriptors (kept for the data directory, the metrics endpoint, logs
    /// and refusals being answered) when that is lower; syncd first raises
    /// its soft open-file limit to the hard one and logs both. A value above
    /// that budget is taken, with a warning: once the process is out of file
    /// descriptors it sheds new connections and backs off.
    #[arg(long, env = "SYNCD_MAX_CONNECTIONS", value_name = "N", value_parser = at_least_one)]
    max_connections: Option<usize>,

    /// How long a new connection may take to send its HTTP/2 preface and
    /// first SETTINGS frame (under TLS: to finish TLS and send its first
    /// HTTP/2 bytes; the TLS handshake itself must end within 10 s) before
    /// it is closed, so that a client that connects and sends nothing does
    /// not hold a file descriptor. The default is grpc-go's.
    #[arg(long, env = "SYNCD_HANDSHAKE_TIMEOUT", default_value = "120s", value_parser = positive_duration)]
    handshake_timeout: Duration,

    /// Commands applied (and flushed) together at most.
    #[arg(long, env = "SYNCD_BATCH_MAX", default_value_t = 1024, value_parser = at_least_one)]
    batch_max: usize,

    /// On the write-ahead log: log entries proposed and not yet applied, at
    /// most; meanwhile commands gather into the next entry. Tuning only.
    #[arg(long, env = "SYNCD_ENTRIES_IN_FLIGHT_MAX", default_value_t = 2, value_parser = at_least_one, hide = true)]
    entries_in_flight_max: usize,

    /// Run on the write-ahead log (openraft + raft-log, fdatasync'ed) instead
    /// of flushing sled for every reply. Being brought in: hidden until it
    /// is the default.
    #[arg(long, env = "SYNCD_WRITE_AHEAD_LOG", hide = true)]
    write_ahead_log: bool,

    /// How long a graceful shutdown may take before syncd exits anyway.
    #[arg(long, env = "SYNCD_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (HOST:PORT;
    /// port 0 picks a free port, printed as a second stdout line `metrics on
    /// HOST:PORT`). Off when not set. Always plain HTTP, also when the gRPC
    /// port uses TLS (--tls-cert): keep it on a trusted network.
    #[arg(long, env = "SYNCD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,

    /// Serve gRPC over TLS with this certificate (PEM; the chain, leaf
    /// first). Needs --tls-key. Clients then connect to `https://HOST:PORT`.
    /// Without it syncd speaks plain HTTP/2.
    #[arg(
        long,
        env = "SYNCD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Needs
    /// --tls-cert.
    #[arg(
        long,
        env = "SYNCD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only clients that present a certificate signed by
    /// this CA (PEM). Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "SYNCD_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,

    /// Require a token from every caller: a TOML file of `[[token]]` tables,
    /// each with `name` (shown in logs and inspection), `secret`, `role`
    /// (`read`: describe, list, watch; `use`: also acquire, put, get, wait
    /// and the like; `admin`: also revoke, reset, delete) and `prefixes`
    /// (the names it may touch; `[""]` = all). Clients send
    /// `authorization: Bearer SECRET`. Re-read on SIGHUP (a bad file keeps
    /// the old tokens). Without TLS the secrets cross the network in clear.
    #[arg(long, env = "SYNCD_AUTH_TOKENS", value_name = "FILE")]
    auth_tokens: Option<PathBuf>,

    /// Log line format on stderr: `text` for people, `json` (one object per
    /// line) for log collectors. RUST_LOG sets the level (default info).
    #[arg(long, env = "SYNCD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    None,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    syncd::duration::parse(text)
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be more than 0".into()),
        duration => Ok(duration),
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ServeArgs {
    /// The server's settings, with `max_connections` resolved (see
    /// [`ConnectionCap`]).
    fn config(&self, max_connections: usize) -> ServerConfig {
        let limits = Limits {
            session_ttl_ms_min: millis(self.session_ttl_min),
            session_ttl_ms_max: millis(self.session_ttl_max),
            sessions_max: self.max_sessions,
            waiters_per_primitive_max: self.max_waiters,
            item_bytes_max: self.max_item_bytes,
            queue_items_max: self.max_queue_items,
            holds_per_session_max: self.max_holds_per_session,
            waiters_per_session_max: self.max_waiters_per_session,
            primitives_max: self.max_primitives,
            ..Limits::default()
        };
        let durability = match self.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::None => Durability::None,
        };
        let metrics = (self.metrics_listen.as_ref()).map(|_| Arc::new(Metrics::for_server()));
        ServerConfig {
            data_dir: self.data.clone(),
            engine: EngineConfig {
                durability,
                batch_max: self.batch_max,
                entries_in_flight_max: self.entries_in_flight_max,
                limits,
                metrics,
                ..EngineConfig::default()
            },
            message_bytes_max: self.max_message_bytes,
            streams_per_connection_max: self.max_streams_per_connection,
            shutdown_grace: self.shutdown_grace,
            tls: None,
            auth: None,
            write_ahead_log: self.write_ahead_log,
            connections: ConnectionLimits {
                max_connections,
                handshake_timeout: self.handshake_timeout,
            },
        }
    }

    /// The TLS files, when --tls-cert (and so --tls-key) is given.
    fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("syncd: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let args = match cli.command {
        Commands::Serve(args) => args,
        Commands::Completions(completions) => return completions.print(),
    };
    init_logs(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(serve(args));
    // Everything that matters is flushed by now; do not wait for idle
    // helper threads.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(Failure { message, code }) => {
            eprintln!("syncd: {message}");
            ExitCode::from(code)
        }
    }
}

/// What is logged without RUST_LOG: syncd's own lines from info up, the
/// consensus engine's only when something is wrong (its info lines narrate
/// every election), and none of the write-ahead log's: syncd reports what
/// it finds in the log itself, in one line (chunked-wal logs each step of
/// its recovery as an error).
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,chunked_wal=off,raft_log=off";

/// Logs go to stderr, filtered by RUST_LOG (default info).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Parses the command line. With `serve --config FILE` (or SYNCD_CONFIG),
/// each setting of the file whose `SYNCD_*` variable is unset becomes that
/// variable, and the command line is parsed again: clap then applies flag >
/// environment > file > default, with its own checks. The file's keys are
/// the flags that have a variable, so a new flag needs nothing here.
fn parse_command_line() -> Result<Cli, String> {
    let cli = Cli::parse();
    let Commands::Serve(ServeArgs {
        config: Some(path), ..
    }) = &cli.command
    else {
        return Ok(cli);
    };
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .expect("syncd has a serve command");
    let settings = syncd::config::read(serve, path).map_err(|e| e.0)?;
    let is_set = |name: &std::ffi::OsStr| std::env::var_os(name).is_some();
    for setting in syncd::config::unset_in_env(&settings, is_set) {
        // Still the only thread: nothing reads the environment meanwhile.
        std::env::set_var(&setting.env, &setting.value);
    }
    Ok(Cli::parse())
}

/// Exit code: a bad command line or config file (as clap's own errors).
const EXIT_USAGE: u8 = 2;

/// Exit code: the data directory cannot be used.
const EXIT_DATA: u8 = 3;

/// Why `serve` stopped: the line for stderr and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { message, code: 1 }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_owned())
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("syncd: {message}");
    ExitCode::FAILURE
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    // First: the raised limit is for everything the server opens.
    let cap = ConnectionCap::new(args.max_connections);
    let mut config = args.config(cap.max_connections);
    if config.engine.limits.session_ttl_ms_min > config.engine.limits.session_ttl_ms_max {
        return Err("--session-ttl-min is larger than --session-ttl-max".into());
    }
    // Before the data directory is opened: a bad file changes nothing.
    if let Some(files) = args.tls_files() {
        config.tls = Some(files.load().map_err(|e| e.0)?);
    }
    if let Some(path) = &args.auth_tokens {
        config.auth = Some(Arc::new(Auth::load(path).map_err(|e| e.0)?));
    }
    let auth = config.auth.clone();
    let server = Server::open(config).await.map_err(|e| Failure {
        message: e.0,
        code: EXIT_DATA,
    })?;
    let listener = TcpListener::bind(args.listen.as_str())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let metrics_local = match &args.metrics_listen {
        Some(addr) => Some(bind_metrics(&server, addr).await?),
        None => None,
    };
    // Before anyone is told we are ready: a SIGTERM right after the line
    // below must stop syncd cleanly, not kill it.
    let shutdown =
        termination_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let hangups =
        signal(SignalKind::hangup()).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    tokio::spawn(reload_on_hangup(hangups, auth.clone()));
    tracing::info!(data = %args.data.display(), durability = ?args.durability, "syncd ready");
    cap.log();
    // Scripts and tests wait for exactly this line.
    println!("listening on {local}");
    if let Some(files) = args.tls_files() {
        let mutual = match &files.client_ca {
            Some(ca) => format!(", client certificates signed by {}", ca.display()),
            None => String::new(),
        };
        tracing::info!("TLS with {}{mutual}", files.cert.display());
    }
    if let Some(auth) = &auth {
        tracing::info!(
            tokens = auth.token_count(),
            "callers need a token from {}",
            auth.path().display()
        );
        if args.tls_files().is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                "tokens without TLS: secrets cross the network in clear (see --tls-cert)"
            );
        }
    }
    if let Some(metrics_local) = metrics_local {
        tracing::info!("metrics at http://{metrics_local}/metrics");
        // Best effort: a caller that read only the first line may have
        // closed the pipe already.
        let _ = writeln!(std::io::stdout(), "metrics on {metrics_local}");
    }
    Ok(server.serve(listener, shutdown).await.map_err(|e| e.0)?)
}

/// Binds the metrics endpoint and starts serving it; returns its address.
async fn bind_metrics(server: &Server, addr: &str) -> Result<std::net::SocketAddr, Failure> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the metrics address: {e}"))?;
    server.spawn_metrics_endpoint(listener).map_err(|e| e.0)?;
    Ok(local)
}

/// Re-reads the token file at each SIGHUP. Installed also without tokens,
/// so that a stray SIGHUP does not kill the server.
async fn reload_on_hangup(mut hangups: Signal, auth: Option<Arc<Auth>>) {
    while hangups.recv().await.is_some() {
        let Some(auth) = &auth else {
            tracing::info!("SIGHUP: nothing to reload (no --auth-tokens)");
            continue;
        };
        match auth.reload() {
            Ok(tokens) => tracing::info!(tokens, "SIGHUP: reloaded {}", auth.path().display()),
            Err(e) => tracing::error!(
                tokens = auth.token_count(),
                "SIGHUP: {e}; the tokens loaded before stay in force"
            ),
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
fn termination_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> clap::Command {
        let mut command = Cli::command();
        command.build();
        command.find_subcommand("serve").expect("serve").clone()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// What keeps the config file complete: every flag of `serve` (but
    /// --config itself, --help and --version) has a `SYNCD_*` variable, and
    /// so is a key of the file.
    #[test]
    fn every_serve_flag_has_an_env_variable_and_a_config_key() {
        let serve = serve();
        let keys = syncd::config::keys(&serve);
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let want = format!("SYNCD_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(env.as_deref(), Some(want.as_str()), "--{long}");
            if long != syncd::config::FLAG {
                assert!(keys.contains(&long.replace('-', "_")), "--{long}");
            }
        }
        assert!(!keys.contains(&"config".to_owned()));
        assert!(keys.contains(&"max_sessions".to_owned()));
    }

    #[test]
    fn a_config_value_is_checked_by_the_flag_s_own_parser() {
        let serve = serve();
        let ok = syncd::config::parse(&serve, "max_sessions = 2\ndurability = \"none\"\n");
        assert_eq!(ok.map(|s| s.len()), Ok(2));
        let e = syncd::config::parse(&serve, "durability = \"fast\"").unwrap_err();
        assert!(e.contains("possible values: sync, none"), "{e}");
        let e = syncd::config::parse(&serve, "session_ttl_min = \"soon\"").unwrap_err();
        assert!(e.contains("`session_ttl_min`: invalid value 'soon'"), "{e}");
    }
}
