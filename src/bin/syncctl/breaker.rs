//! `syncctl breaker call|describe|watch|reset|force-open|force-close`.
//!
//! `call` asks the breaker for a permit and, when it gets one, runs CMD
//! through the machinery of `lock acquire` (`hold`), the permit being the
//! hold: its release records the call's outcome (success when CMD exits 0).
//! A refusal is no error of syncctl's but the breaker doing its job: it
//! exits 6 without running CMD.

use std::{cell::RefCell, time::Duration};

use clap::{error::ErrorKind, Args, Subcommand};
use serde_json::{json, Value};
use syncd::{
    client::{Allowed, BreakerChange, BreakerPermit, BreakerSettings, BreakerState, Error},
    proto::v1::DescribeBreakerResponse,
};
use tonic::{Code, Status};

use crate::{
    args::{parse_positive_duration, NameArgs},
    exit::{report, Failure, EXIT_ERROR, EXIT_MISMATCH, EXIT_REJECTED},
    hold::{acquire_and_hold, with_token, Guard, HoldArgs},
    output::{format_holder, format_ms, holder_json, plural, section},
    session::{connect, end_watch, interruptible, one_call, Signals},
    Cli,
};

/// The longest --open-timeout the server accepts (proto
/// `BreakerSettings.open_timeout_ms`).
const OPEN_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

const CALL_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        CMD ran and exited 0 (recorded as a success)\n",
    "  1        any other error: the breaker does not exist and no settings were given,\n",
    "           it exists with other settings, bad settings, ... (CMD was not run)\n",
    "  2        invalid command line (also: no CMD)\n",
    "  4        the server cannot be reached (CMD was not run)\n",
    "  6        the circuit breaker refused the call (CMD was not run): it is open,\n",
    "           forced open, or half-open with every probe slot taken\n",
    denied_exit_code!(),
    "  N        CMD's own exit code (recorded as a failure)\n",
    "  126      CMD could not be executed (recorded as a failure)\n",
    "  127      CMD was not found (recorded as a failure)\n",
    "  128+N    interrupted by signal N before the call, or CMD killed by signal N\n",
    "           (recorded as a failure)\n",
    "\n",
    "Examples:\n",
    "  # Open after 3 failures in a row; let one probe through after 30s:\n",
    "  syncctl breaker call payments --threshold 3 --open-timeout 30s -- curl -fsS https://pay/\n",
    "  # Or: open when half of the last 20 calls failed (once 10 were seen):\n",
    "  syncctl breaker call db --window 20 --failure-rate 50 --min-calls 10 -- ./query.sh\n",
    "  # A breaker that exists: no settings needed.\n",
    "  syncctl breaker call payments -- ./charge.sh; [ $? -eq 6 ] && echo 'not called: open'\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json breaker describe payments\n",
    common_footer!(),
);

const WATCH_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        --count lines printed, or ended by SIGINT, SIGTERM or SIGHUP\n",
    "  1        any other error (the breaker does not exist, an invalid name, ...)\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Examples:\n",
    "  syncctl breaker watch payments\n",
    "  syncctl --output json breaker watch payments --count 2   # the state now, the next change\n",
    common_footer!(),
);

const CONTROL_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        done: the new state is printed\n",
    "  1        any other error (the breaker does not exist, an invalid name, ...)\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Examples:\n",
    "  syncctl breaker force-open payments     # maintenance: refuse every call\n",
    "  syncctl breaker reset payments          # closed again, counts cleared\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum BreakerCommand {
    /// Run CMD through a circuit breaker: only when the breaker allows the
    /// call, recording a success when CMD exits 0 and a failure otherwise.
    ///
    /// A breaker is shared by every process that names it. Closed, it lets
    /// calls through and opens after --threshold failures in a row (or when
    /// the failure-rate rule of --window/--failure-rate trips). Open, it
    /// refuses calls for --open-timeout, then turns half-open: at most
    /// --probes calls at once go through as probes; --success-threshold
    /// successful probes close it, a failed probe opens it again. Outcomes
    /// of calls allowed before the breaker changed state change nothing.
    ///
    /// Refused: syncctl does not run CMD, says why on stderr (`syncctl:
    /// breaker "db" is open; next probe in 1s 200ms`) and exits 6.
    ///
    /// Allowed: runs CMD and exits with its exit code. Exit 0 is recorded
    /// as a success; anything else as a failure, also a CMD that was not
    /// found, could not be executed, or was killed by a signal (SIGINT,
    /// SIGTERM and SIGHUP sent to syncctl are forwarded to CMD). CMD gets
    /// SYNCD_BREAKER_NAME, SYNCD_BREAKER_STATE (the state the call was
    /// allowed in: closed, half-open or forced-closed), SYNCD_BREAKER_PROBE
    /// (1 for a half-open probe, else 0) and SYNCD_FENCING_TOKEN (the
    /// permit's token). The permit belongs to syncctl's session: if
    /// syncctl dies, a probe's slot is freed when its --ttl runs out. If
    /// the outcome cannot be recorded, syncctl warns and still exits with
    /// CMD's code.
    ///
    /// Settings: the first call creates the breaker, so it needs
    /// --threshold or --window (with --failure-rate), and takes the other
    /// settings given or their defaults. Settings are fixed then: a later
    /// call that gives any settings flag must give the same settings (flags
    /// left out count as their defaults), else it fails (exit 1); a call
    /// without any uses the existing breaker's.
    #[command(after_help = CALL_AFTER_HELP)]
    Call(BreakerCallArgs),
    /// Show a breaker's state and why, its settings, its counts, and the
    /// permits in flight.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
    /// Print a breaker's state now, then one line per change, as they
    /// happen: e.g. `closed (new)`, `open (3 consecutive failures;
    /// half-open in 30s)`, `half-open (the open timeout passed)`.
    ///
    /// Runs until SIGINT, SIGTERM or SIGHUP (exit 0), or until --count lines
    /// were printed. With `--output json`, one JSON object per line:
    /// {"name":..,"state":..,"reason":..,"retry_after_ms":..}. Each line is
    /// flushed at once. If the connection breaks, syncctl watches again by
    /// itself and skips a repeat of the last state it printed.
    #[command(after_help = WATCH_AFTER_HELP)]
    Watch(BreakerWatchArgs),
    /// Close a breaker and clear its counts (also ends force-open and
    /// force-close). Prints the new state.
    #[command(after_help = CONTROL_AFTER_HELP)]
    Reset(NameArgs),
    /// Pin a breaker open: every call is refused until `reset` or
    /// `force-close`. Prints the new state (`forced-open`).
    #[command(after_help = CONTROL_AFTER_HELP)]
    ForceOpen(NameArgs),
    /// Pin a breaker closed: every call is allowed, and outcomes change
    /// nothing, until `reset` or `force-open`. Prints the new state
    /// (`forced-closed`).
    #[command(after_help = CONTROL_AFTER_HELP)]
    ForceClose(NameArgs),
    /// Forget a breaker (to make it again with other settings, or to clean
    /// up): permits in flight are dropped (their outcomes are not recorded)
    /// and watches end. Prints how many permits were in flight; exit 1 if
    /// it does not exist.
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct BreakerCallArgs {
    /// The breaker's name: 1 to 256 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    #[command(flatten)]
    pub settings: SettingsArgs,

    /// The session's lease. The permit belongs to it: if syncctl dies or is
    /// cut off from the server for this long, the permit is dropped without
    /// an outcome (a half-open probe's slot is freed).
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = crate::args::parse_duration)]
    pub ttl: Duration,

    /// The command to run when the breaker allows it, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The breaker's settings, as flags. Any of them given: they are sent (to
/// create the breaker, or to be checked against it); none: the existing
/// breaker's are used.
#[derive(Args, Debug, Default)]
pub struct SettingsArgs {
    /// Consecutive failures that open a closed breaker. Default: this rule
    /// is off (then --window is needed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threshold: Option<u32>,

    /// How long the breaker stays open before probes may test the
    /// downstream: 1ms to 1d. Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_open_timeout)]
    pub open_timeout: Option<Duration>,

    /// Probe calls allowed at once while half-open: 1 to 1000. Default: 1.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub probes: Option<u32>,

    /// Successful probes that close a half-open breaker: 1 to 1000.
    /// Default: 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub success_threshold: Option<u32>,

    /// The failure-rate rule: the last N outcomes while closed (1 to 1000)
    /// are looked at; with --failure-rate. Default: this rule is off.
    #[arg(long, value_name = "N", requires = "failure_rate",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub window: Option<u32>,

    /// The failure-rate rule: open when at least P percent (1 to 100) of
    /// the --window outcomes failed.
    #[arg(long, value_name = "P", requires = "window",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub failure_rate: Option<u32>,

    /// The failure-rate rule: only once at least M outcomes (1 to --window)
    /// were seen. Default: --window.
    #[arg(long, value_name = "M", requires = "window",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub min_calls: Option<u32>,
}

#[derive(Args, Debug)]
pub struct BreakerWatchArgs {
    /// The breaker's name.
    pub name: String,

    /// Stop after printing this many lines (the first is the state now).
    /// Default: until interrupted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// Parses --open-timeout: at least 1ms, at most [`OPEN_TIMEOUT_MAX`].
fn parse_open_timeout(text: &str) -> Result<Duration, String> {
    let parsed = parse_positive_duration(text)?;
    if parsed > OPEN_TIMEOUT_MAX {
        return Err(format!(
            "duration {:?} is too long: at most 1d",
            text.trim()
        ));
    }
    Ok(parsed)
}

impl SettingsArgs {
    /// The settings to send: `None` when no settings flag was given.
    /// Flags left out are 0, which the server takes as their defaults.
    pub fn settings(&self) -> Option<BreakerSettings> {
        let given = self.threshold.is_some()
            || self.open_timeout.is_some()
            || self.probes.is_some()
            || self.success_threshold.is_some()
            || self.window.is_some()
            || self.failure_rate.is_some()
            || self.min_calls.is_some();
        given.then(|| BreakerSettings {
            failure_threshold: self.threshold.unwrap_or(0),
            open_timeout_ms: self
                .open_timeout
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            half_open_max_probes: self.probes.unwrap_or(0),
            success_threshold: self.success_threshold.unwrap_or(0),
            window_calls: self.window.unwrap_or(0),
            failure_rate_percent: self.failure_rate.unwrap_or(0),
            min_calls: self.min_calls.unwrap_or(0),
        })
    }

    /// The settings mistake the parser cannot see, if any.
    fn usage_error(&self) -> Option<(ErrorKind, String)> {
        self.settings()?;
        if self.threshold.is_none() && self.window.is_none() {
            return Some((
                ErrorKind::MissingRequiredArgument,
                "settings need a rule that opens the breaker: --threshold N (failures in a \
                 row), or --window N --failure-rate P, or both"
                    .to_string(),
            ));
        }
        match (self.min_calls, self.window) {
            (Some(min_calls), Some(window)) if min_calls > window => Some((
                ErrorKind::ArgumentConflict,
                format!("--min-calls {min_calls} is more than --window {window}"),
            )),
            _ => None,
        }
    }
}

impl BreakerCallArgs {
    /// The command-line mistake the parser cannot see, if any.
    pub fn usage_error(&self) -> Option<(ErrorKind, String)> {
        if self.command.is_empty() {
            return Some((
                ErrorKind::MissingRequiredArgument,
                "a command is required: `-- CMD [ARGS...]` is the call the breaker guards"
                    .to_string(),
            ));
        }
        self.settings.usage_error()
    }
}

pub async fn run(cli: &Cli, command: &BreakerCommand) -> Result<i32, Failure> {
    match command {
        BreakerCommand::Call(args) => call(cli, args).await,
        BreakerCommand::Describe(args) => {
            let name = args.name.as_str();
            let breaker = one_call(cli, |client| async move {
                client.breaker(name).describe().await
            })
            .await?;
            cli.output
                .describe(format_description(&breaker), description_json(&breaker))
        }
        BreakerCommand::Watch(args) => watch(cli, args).await,
        BreakerCommand::Reset(args) => control(cli, &args.name, Control::Reset).await,
        BreakerCommand::ForceOpen(args) => control(cli, &args.name, Control::ForceOpen).await,
        BreakerCommand::ForceClose(args) => control(cli, &args.name, Control::ForceClose).await,
        BreakerCommand::Delete(args) => {
            let name = args.name.as_str();
            let dropped = one_call(
                cli,
                |client| async move { client.breaker(name).delete().await },
            )
            .await?;
            let text = format!("deleted breaker {name:?}; {dropped} permits were in flight");
            let json = json!({ "name": name, "permits_dropped": dropped });
            cli.output.print(&text, json)?;
            Ok(0)
        }
    }
}

// --- call ------------------------------------------------------------------

async fn call(cli: &Cli, args: &BreakerCallArgs) -> Result<i32, Failure> {
    let hold = HoldArgs {
        ttl: args.ttl,
        timeout: None,
        // Never used: CMD is not stopped when the permit is lost (the
        // outcome then just counts for nothing).
        kill_grace: Duration::from_secs(5),
        command: args.command.clone(),
    };
    let name = args.name.as_str();
    let settings = args.settings.settings();
    // Why the call did not happen, when that is not the client error that
    // `acquire_and_hold` turns into a failure: a refusal (exit 6), or an
    // error said better.
    let refusal: RefCell<Option<Failure>> = RefCell::new(None);
    let refusal_ref = &refusal;
    let called = acquire_and_hold(cli, &hold, |client| {
        let mut breaker = client.breaker(name);
        if let Some(settings) = settings {
            breaker = breaker.with_settings(settings);
        }
        async move {
            match breaker.allow().await {
                Ok(Allowed::Permit(permit)) => Ok(PermitHold {
                    name: name.to_string(),
                    permit,
                }),
                Ok(Allowed::Rejected { state, retry_after }) => {
                    let message = rejected_line(name, state, retry_after);
                    *refusal_ref.borrow_mut() = Some(Failure {
                        code: EXIT_REJECTED,
                        message: message.clone(),
                    });
                    Err(Error::Status(Status::cancelled(message)))
                }
                Err(error) => {
                    let failure = match &error {
                        Error::Status(status) => {
                            explain_refused_allow(&breaker, status, settings.is_some()).await
                        }
                        _ => None,
                    };
                    *refusal_ref.borrow_mut() = failure;
                    Err(error)
                }
            }
        }
    })
    .await;
    match called {
        Err(failure) => Err(match refusal.into_inner() {
            Some(refusal) => refusal,
            // A FAILED_PRECONDITION is no refusal: exit 6 means that alone.
            None if failure.code == EXIT_MISMATCH => Failure {
                code: EXIT_ERROR,
                ..failure
            },
            None => failure,
        }),
        ok => ok,
    }
}

/// `breaker "db" is open; next probe in 1s 200ms`.
pub fn rejected_line(name: &str, state: BreakerState, retry_after: Duration) -> String {
    let why = match state {
        BreakerState::Open if retry_after.is_zero() => "is open; a probe may go through now".into(),
        BreakerState::Open => format!(
            "is open; next probe in {}",
            syncd::duration::format(retry_after)
        ),
        BreakerState::HalfOpen => "is half-open and its probe slots are busy".into(),
        BreakerState::ForcedOpen => "is forced open".into(),
        other => format!("refused the call ({})", state_word(other)),
    };
    format!("breaker {name:?} {why}")
}

/// A refused Allow said in syncctl's terms: a breaker that does not exist
/// (which flags create it), or one that exists with other settings (which
/// ones). `None`: the server's message says it well enough.
async fn explain_refused_allow(
    breaker: &syncd::client::CircuitBreaker,
    status: &Status,
    sent_settings: bool,
) -> Option<Failure> {
    let name = breaker.name();
    match status.code() {
        Code::NotFound if !sent_settings => Some(Failure::other(format!(
            "breaker {name:?} does not exist: pass its settings to create it, e.g. \
             --threshold 5 --open-timeout 30s (see `syncctl breaker call --help`)"
        ))),
        // The same code also means "the session ended": only a mismatch
        // is explained.
        Code::FailedPrecondition if status.message().contains("other settings") => {
            let existing = breaker.describe().await.ok().filter(|b| b.exists)?;
            let flags = settings_flags(&existing.settings.unwrap_or_default());
            Some(Failure::other(format!(
                "breaker {name:?} exists with other settings: {flags}. Settings are fixed \
                 when a breaker is created: give these (flags left out count as their \
                 defaults), or no settings flags to use them"
            )))
        }
        _ => None,
    }
}

/// A permit taken: held while CMD runs, given back with the outcome.
struct PermitHold {
    name: String,
    permit: BreakerPermit,
}

impl Guard for PermitHold {
    fn what(&self) -> String {
        let kind = if self.permit.is_probe() {
            "a probe"
        } else {
            "a permit"
        };
        with_token(
            format!("{kind} of breaker {:?}", self.name),
            self.permit.fencing_token(),
        )
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SYNCD_FENCING_TOKEN",
                self.permit.fencing_token().to_string(),
            ),
            ("SYNCD_BREAKER_NAME", self.name.clone()),
            (
                "SYNCD_BREAKER_STATE",
                state_word(self.permit.state()).into(),
            ),
            (
                "SYNCD_BREAKER_PROBE",
                u8::from(self.permit.is_probe()).to_string(),
            ),
        ]
    }

    fn text(&self) -> String {
        self.permit.fencing_token().to_string()
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "fencing_token": self.permit.fencing_token(),
            "probe": self.permit.is_probe(),
        })
    }

    /// Never: a permit lost with the session makes CMD no less safe to
    /// run; its outcome just cannot count any more.
    async fn lost(&self) -> String {
        std::future::pending().await
    }

    async fn release(self, succeeded: bool) -> Result<(), Error> {
        let action = self.release_action(succeeded);
        match self.permit.record(succeeded).await {
            Ok(state) => {
                tracing::debug!("{action}: breaker is {}", state_word(state));
                Ok(())
            }
            // `hold` warns, saying what becomes of the permit.
            Err(error @ Error::Unavailable(_)) => Err(error),
            // The call ran; not recording its outcome does not change
            // what CMD did, so CMD's exit code stands.
            Err(error) => {
                report(&format!("warning: could not {action}: {error}"));
                Ok(())
            }
        }
    }

    fn release_action(&self, succeeded: bool) -> String {
        let outcome = if succeeded { "success" } else { "failure" };
        format!("record the {outcome} of {}", self.what())
    }

    fn left_to_lease(&self) -> &'static str {
        "the permit is dropped without an outcome when the session's lease runs out"
    }
}

// --- watch and control -------------------------------------------------------

async fn watch(cli: &Cli, args: &BreakerWatchArgs) -> Result<i32, Failure> {
    let mut signals = Signals::catch()?;
    let client = connect(cli, None).await?;
    let breaker = client.breaker(args.name.as_str());
    let (output, name, count) = (cli.output, args.name.as_str(), args.count);
    let watched = interruptible(&mut signals, async {
        let mut changes = breaker
            .watch()
            .await
            .map_err(|e| explain_missing(e, name))?;
        let mut printed = 0;
        while count.is_none_or(|count| printed < count) {
            let change = changes.next().await?;
            output.print(change_line(&change), change_json(name, &change))?;
            printed += 1;
        }
        Ok::<(), Failure>(())
    })
    .await;
    end_watch(client, watched).await
}

#[derive(Clone, Copy)]
enum Control {
    Reset,
    ForceOpen,
    ForceClose,
}

async fn control(cli: &Cli, name: &str, action: Control) -> Result<i32, Failure> {
    let state = one_call(cli, |client| async move {
        let breaker = client.breaker(name);
        match action {
            Control::Reset => breaker.reset().await,
            Control::ForceOpen => breaker.force_open().await,
            Control::ForceClose => breaker.force_close().await,
        }
        .map_err(|e| explain_missing(e, name))
    })
    .await?;
    let json = json!({ "name": name, "state": state_word(state) });
    cli.output.print(state_word(state), json)?;
    Ok(0)
}

/// NOT_FOUND from a command that cannot create the breaker: says which
/// one can.
fn explain_missing(error: Error, name: &str) -> Error {
    match error {
        Error::Status(status) if status.code() == Code::NotFound => {
            Error::Status(Status::not_found(format!(
                "breaker {name:?} does not exist (`syncctl breaker call {name} --threshold N \
                 -- CMD` creates it)"
            )))
        }
        error => error,
    }
}

// --- formats ---------------------------------------------------------------

/// `closed`, `open`, `half-open`, `forced-open`, `forced-closed`.
pub fn state_word(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
        BreakerState::ForcedOpen => "forced-open",
        BreakerState::ForcedClosed => "forced-closed",
        BreakerState::Unspecified => "unspecified",
    }
}

/// `open (3 consecutive failures; half-open in 2s)`, `closed (new)`.
fn state_line(state: BreakerState, reason: &str, retry_after: Duration) -> String {
    let mut details: Vec<String> = Vec::new();
    if !reason.is_empty() {
        details.push(reason.to_string());
    }
    if state == BreakerState::Open && !retry_after.is_zero() {
        details.push(format!(
            "half-open in {}",
            syncd::duration::format(retry_after)
        ));
    }
    match details.is_empty() {
        true => state_word(state).to_string(),
        false => format!("{} ({})", state_word(state), details.join("; ")),
    }
}

fn change_line(change: &BreakerChange) -> String {
    state_line(change.state, &change.reason, change.retry_after)
}

fn change_json(name: &str, change: &BreakerChange) -> Value {
    json!({
        "name": name,
        "state": state_word(change.state),
        "reason": change.reason,
        "retry_after_ms": u64::try_from(change.retry_after.as_millis()).unwrap_or(u64::MAX),
    })
}

/// The settings as the flags that make them:
/// `--threshold 3 --open-timeout 30s --probes 1 --success-threshold 1`.
pub fn settings_flags(settings: &BreakerSettings) -> String {
    let mut flags = Vec::new();
    if settings.failure_threshold != 0 {
        flags.push(format!("--threshold {}", settings.failure_threshold));
    }
    flags.push(format!(
        "--open-timeout {}",
        format_ms(settings.open_timeout_ms)
    ));
    flags.push(format!("--probes {}", settings.half_open_max_probes));
    flags.push(format!(
        "--success-threshold {}",
        settings.success_threshold
    ));
    if settings.window_calls != 0 {
        flags.push(format!(
            "--window {} --failure-rate {} --min-calls {}",
            settings.window_calls, settings.failure_rate_percent, settings.min_calls
        ));
    }
    flags.join(" ")
}

/// When it opens, how long it stays open, how it closes: one sentence.
fn settings_text(settings: &BreakerSettings) -> String {
    let mut rules = Vec::new();
    if settings.failure_threshold != 0 {
        rules.push(format!(
            "after {} in a row",
            plural(settings.failure_threshold.into(), "failure", "failures")
        ));
    }
    if settings.window_calls != 0 {
        rules.push(format!(
            "when {}% of the last {} failed (once {} were seen)",
            settings.failure_rate_percent,
            plural(settings.window_calls.into(), "call", "calls"),
            settings.min_calls
        ));
    }
    format!(
        "opens {}; stays open {}; {} at once when half-open; closes after {}",
        rules.join(" or "),
        format_ms(settings.open_timeout_ms),
        plural(settings.half_open_max_probes.into(), "probe", "probes"),
        plural(
            settings.success_threshold.into(),
            "successful probe",
            "successful probes"
        )
    )
}

fn breaker_state(breaker: &DescribeBreakerResponse) -> BreakerState {
    BreakerState::try_from(breaker.state).unwrap_or(BreakerState::Unspecified)
}

pub fn format_description(breaker: &DescribeBreakerResponse) -> String {
    let name = &breaker.name;
    if !breaker.exists {
        return format!("breaker {name:?}: does not exist\n");
    }
    let state = breaker_state(breaker);
    let retry_after = Duration::from_millis(breaker.retry_after_ms);
    let mut text = format!(
        "breaker {name:?}: {}\n",
        state_line(state, &breaker.reason, retry_after)
    );
    let settings = breaker.settings.unwrap_or_default();
    text += &format!("settings: {}\n", settings_text(&settings));
    let mut counts = vec![format!(
        "{} in a row",
        plural(breaker.consecutive_failures.into(), "failure", "failures")
    )];
    if settings.window_calls != 0 {
        counts.push(format!(
            "{} of the last {} failed",
            breaker.window_failures,
            plural(breaker.window_calls_seen.into(), "call", "calls")
        ));
    }
    counts.push(format!(
        "{} when half-open",
        plural(
            breaker.half_open_successes.into(),
            "successful probe",
            "successful probes"
        )
    ));
    counts.push(format!(
        "{} in flight",
        plural(breaker.probes_in_flight.into(), "probe", "probes")
    ));
    text += &format!("counts: {}\n", counts.join(", "));
    if breaker.watchers != 0 {
        text += &format!("watchers: {}\n", breaker.watchers);
    }
    text += &section("permits", breaker.permits.iter().map(format_holder));
    text
}

pub fn description_json(breaker: &DescribeBreakerResponse) -> Value {
    let settings = breaker.settings.unwrap_or_default();
    let permits: Vec<Value> = breaker
        .permits
        .iter()
        .map(|p| Value::Object(holder_json(p)))
        .collect();
    json!({
        "name": breaker.name,
        "exists": breaker.exists,
        "state": state_word(breaker_state(breaker)),
        "reason": breaker.reason,
        "retry_after_ms": breaker.retry_after_ms,
        "settings": {
            "failure_threshold": settings.failure_threshold,
            "open_timeout_ms": settings.open_timeout_ms,
            "half_open_max_probes": settings.half_open_max_probes,
            "success_threshold": settings.success_threshold,
            "window_calls": settings.window_calls,
            "failure_rate_percent": settings.failure_rate_percent,
            "min_calls": settings.min_calls,
        },
        "consecutive_failures": breaker.consecutive_failures,
        "window_calls_seen": breaker.window_calls_seen,
        "window_failures": breaker.window_failures,
        "half_open_successes": breaker.half_open_successes,
        "probes_in_flight": breaker.probes_in_flight,
        "permits": permits,
        "watchers": breaker.watchers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd::proto::v1::Holder;

    fn settings(threshold: u32) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: threshold,
            open_timeout_ms: 30_000,
            half_open_max_probes: 1,
            success_threshold: 1,
            window_calls: 0,
            failure_rate_percent: 0,
            min_calls: 0,
        }
    }

    #[test]
    fn refusals_say_why() {
        let open = rejected_line("db", BreakerState::Open, Duration::from_millis(1200));
        assert_eq!(open, "breaker \"db\" is open; next probe in 1s 200ms");
        let busy = rejected_line("db", BreakerState::HalfOpen, Duration::ZERO);
        assert_eq!(
            busy,
            "breaker \"db\" is half-open and its probe slots are busy"
        );
        let forced = rejected_line("db", BreakerState::ForcedOpen, Duration::ZERO);
        assert_eq!(forced, "breaker \"db\" is forced open");
    }

    #[test]
    fn state_lines() {
        assert_eq!(
            state_line(BreakerState::Closed, "new", Duration::ZERO),
            "closed (new)"
        );
        assert_eq!(
            state_line(
                BreakerState::Open,
                "3 consecutive failures",
                Duration::from_secs(2)
            ),
            "open (3 consecutive failures; half-open in 2s)"
        );
        assert_eq!(
            state_line(BreakerState::HalfOpen, "", Duration::ZERO),
            "half-open"
        );
        let change = BreakerChange {
            state: BreakerState::ForcedOpen,
            reason: "forced open".into(),
            retry_after: Duration::ZERO,
        };
        assert_eq!(change_line(&change), "forced-open (forced open)");
        assert_eq!(change_json("db", &change)["state"], "forced-open");
    }

    #[test]
    fn settings_come_from_flags_only_when_given() {
        assert_eq!(SettingsArgs::default().settings(), None);
        assert_eq!(SettingsArgs::default().usage_error(), None);
        let flags = SettingsArgs {
            threshold: Some(3),
            open_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let sent = flags.settings().unwrap();
        assert_eq!((sent.failure_threshold, sent.open_timeout_ms), (3, 1000));
        assert_eq!((sent.half_open_max_probes, sent.window_calls), (0, 0));
        let no_rule = SettingsArgs {
            probes: Some(2),
            ..Default::default()
        };
        let (kind, message) = no_rule.usage_error().unwrap();
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        assert!(message.contains("--threshold N"), "{message}");
        let too_many = SettingsArgs {
            window: Some(5),
            failure_rate: Some(50),
            min_calls: Some(6),
            ..Default::default()
        };
        let (_, message) = too_many.usage_error().unwrap();
        assert_eq!(message, "--min-calls 6 is more than --window 5");
        assert!(parse_open_timeout("1d").is_ok());
        assert!(parse_open_timeout("25h").is_err());
        assert!(parse_open_timeout("0s").is_err());
    }

    #[test]
    fn settings_read_as_flags_and_as_text() {
        assert_eq!(
            settings_flags(&settings(3)),
            "--threshold 3 --open-timeout 30s --probes 1 --success-threshold 1"
        );
        let rate = BreakerSettings {
            failure_threshold: 0,
            window_calls: 20,
            failure_rate_percent: 50,
            min_calls: 10,
            ..settings(0)
        };
        assert_eq!(
            settings_flags(&rate),
            "--open-timeout 30s --probes 1 --success-threshold 1 \
             --window 20 --failure-rate 50 --min-calls 10"
        );
        assert_eq!(
            settings_text(&BreakerSettings {
                failure_threshold: 3,
                ..rate
            }),
            "opens after 3 failures in a row or when 50% of the last 20 calls failed \
             (once 10 were seen); stays open 30s; 1 probe at once when half-open; \
             closes after 1 successful probe"
        );
    }

    #[test]
    fn description_formats() {
        let missing = DescribeBreakerResponse {
            name: "db".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&missing),
            "breaker \"db\": does not exist\n"
        );
        let open = DescribeBreakerResponse {
            name: "db".into(),
            exists: true,
            settings: Some(settings(3)),
            state: BreakerState::HalfOpen as i32,
            reason: "the open timeout passed".into(),
            retry_after_ms: 0,
            consecutive_failures: 0,
            window_calls_seen: 0,
            window_failures: 0,
            half_open_successes: 0,
            probes_in_flight: 1,
            permits: vec![Holder {
                session_id: 4,
                client_name: "w@h:1".into(),
                fencing_token: 17,
                held_ms: 1500,
                lease_left_ms: 8000,
                ..Default::default()
            }],
            watchers: 2,
        };
        assert_eq!(
            format_description(&open),
            "breaker \"db\": half-open (the open timeout passed)\n\
             settings: opens after 3 failures in a row; stays open 30s; 1 probe at once when \
             half-open; closes after 1 successful probe\n\
             counts: 0 failures in a row, 0 successful probes when half-open, 1 probe in flight\n\
             watchers: 2\n\
             permits: 1\n\
             \x20 1. session 4 (w@h:1), fencing token 17, held for 1s 500ms, lease left 8s\n"
        );
        let json = description_json(&open);
        assert_eq!(json["state"], "half-open");
        assert_eq!(json["settings"]["failure_threshold"], 3);
        assert_eq!(json["permits"][0]["fencing_token"], 17);
        assert_eq!(json["probes_in_flight"], 1);
    }
}
