//! `syncctl queue put|get|ack|nack|join|describe`.
//!
//! A `get` without `--no-ack` holds the item in flight under syncctl's
//! session, which ends when syncctl exits. So `get -- CMD` holds it while
//! CMD runs, through the machinery of `lock acquire` (`hold`), and acks it
//! when CMD exits 0 or nacks it otherwise; a `get` without CMD acks the
//! item once it is printed.

use std::{ffi::OsString, io::Read, os::unix::ffi::OsStringExt, time::Duration};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use syncd::{
    client::{Client, Error, Queue, QueueItem},
    duration,
    proto::v1::{DescribeQueueResponse, Waiter},
};
use tokio::time::Instant;
use tonic::Code;

use crate::{
    args::{parse_positive_duration, NameArgs, WaitArgs},
    exit::{report, Failure},
    hold::{acquire_and_hold, finish, leave, take, Guard, HoldArgs, Taken},
    output::{format_waiter, plural, section, waiter_json, write_stdout_bytes, Output},
    session::{one_call, wait_command, Waited},
    Cli,
};

/// How long an item stays in flight when `--visibility-timeout` is not
/// given: the server's default (proto `GetRequest.visibility_timeout_ms`),
/// sent explicitly so that syncctl knows when it ends.
const VISIBILITY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// How long syncctl tries to ack an item after CMD succeeded: longer than
/// [`crate::session::LEAVE_BUDGET`], because an item not acked is delivered
/// again (a lock not released only waits for its lease).
const ACK_BUDGET: Duration = Duration::from_secs(5);

/// The most syncctl reads from stdin for one item. The server's item limit
/// is far lower (64 KiB by default); this only bounds syncctl's memory.
const STDIN_BYTES_MAX: u64 = 64 << 20;

const PUT_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        stored: the item id is printed\n",
    "  1        any other error (an item larger than the server's limit, an invalid\n",
    "           name, the queue at the server's length limit, ...)\n",
    "  2        invalid command line\n",
    "  3        the queue stayed full for --timeout: nothing was stored\n",
    "  4        the server cannot be reached\n",
    "  6        the queue exists with another --capacity or --max-deliveries\n",
    denied_exit_code!(),
    "  128+N    interrupted by signal N while waiting for room (nothing stored)\n",
    "\n",
    "Examples:\n",
    "  syncctl queue put jobs 'resize photo-17.jpg'\n",
    "  syncctl queue put jobs --priority 0 'urgent: rotate keys'     # served first\n",
    "  syncctl queue put jobs --capacity 100 --timeout 10s < job.json\n",
    common_footer!(),
);

const GET_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        printed and acked, or CMD exited 0 (the item was acked)\n",
    "  1        any other error (e.g. the ack was refused)\n",
    "  2        invalid command line\n",
    "  3        no item came within --timeout\n",
    "  4        the server cannot be reached\n",
    "  7        the item was lost while CMD ran: its --visibility-timeout passed, or\n",
    "           the session expired or could not be renewed for a full TTL; the item\n",
    "           is back in the queue and CMD was stopped\n",
    denied_exit_code!(),
    "  N        with CMD: CMD's own exit code (the item was nacked unless N is 0)\n",
    "  126      CMD could not be executed (the item was nacked)\n",
    "  127      CMD was not found (the item was nacked)\n",
    "  128+N    interrupted by signal N while waiting, or CMD killed by signal N\n",
    "\n",
    "Examples:\n",
    "  # A worker: each job is acked when ./process exits 0, delivered again otherwise.\n",
    "  while :; do syncctl queue get jobs --visibility-timeout 5m -- ./process; done\n",
    "  syncctl queue get jobs --timeout 0s > job.json     # take one if there is one\n",
    "  syncctl --output json queue get jobs --no-ack      # at most once\n",
    common_footer!(),
);

const SETTLE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        done (nack: prints `requeued` or `dead-lettered`)\n",
    "  1        refused: this session does not have the item in flight (always the case\n",
    "           for an item got by another syncctl), or any other error\n",
    "  2        invalid command line\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "\n",
    "Example: from a shell, let `queue get` ack or nack for you instead:\n",
    "  syncctl queue get jobs -- ./process    # acked when ./process exits 0, else nacked\n",
    common_footer!(),
);

const JOIN_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    "  0        every item put before the join was acked (or dead-lettered)\n",
    "  1        any other error (e.g. an invalid name)\n",
    "  2        invalid command line\n",
    "  3        items were still pending when --timeout passed\n",
    "  4        the server cannot be reached\n",
    denied_exit_code!(),
    "  128+N    interrupted by signal N while waiting\n",
    "\n",
    "Example:\n",
    "  for f in *.jpg; do syncctl queue put thumbnails \"$f\"; done\n",
    "  syncctl queue join thumbnails --timeout 1h && echo 'all thumbnails done'\n",
    common_footer!(),
);

const DESCRIBE_AFTER_HELP: &str = concat!(
    "Exit codes:\n",
    describe_exit_codes!(),
    "\n",
    "Example:\n",
    "  syncctl --output json queue describe jobs\n",
    common_footer!(),
);

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Put an item into a queue; prints its id once it is stored on disk.
    ///
    /// The item is VALUE, or all of stdin when VALUE is left out (bytes as
    /// they are: `put < file` and `get > file` give back the same file).
    /// Items are served lowest --priority first, in put order among equal
    /// priorities. A queue with a capacity holds at most that many items
    /// ready or in flight: a put into a full queue waits for room
    /// (--timeout: exit 3, nothing stored).
    ///
    /// The first put creates the queue with --capacity and
    /// --max-deliveries; later puts may leave them out, and must otherwise
    /// name the same while the queue exists (it exists while it holds items
    /// or someone waits), else syncctl exits 6. Prints the item id (json:
    /// {"name":..,"item_id":..}).
    #[command(after_help = PUT_AFTER_HELP)]
    Put(QueuePutArgs),
    /// Take the first item of a queue: print it and ack it, or run CMD with
    /// it and ack it when CMD exits 0.
    ///
    /// Waits while the queue is empty (--timeout: exit 3). Delivery is at
    /// least once: the item stays in flight under syncctl's session until
    /// it is acked. If it is not acked (CMD failed, syncctl was killed, the
    /// --visibility-timeout passed), the server puts it back at its place
    /// and delivers it again, counting deliveries; after the queue's
    /// max deliveries it goes to the dead-letter queue NAME.dlq instead.
    ///
    /// With `-- CMD [ARGS...]`: runs CMD with the item's value on its stdin
    /// and SYNCD_QUEUE_NAME, SYNCD_ITEM_ID, SYNCD_ITEM_PRIORITY,
    /// SYNCD_ITEM_DELIVERIES (1 on the first delivery) and
    /// SYNCD_FENCING_TOKEN (of this delivery) in its environment.
    /// When CMD exits 0 the item is acked, otherwise nacked (back in the
    /// queue, or dead-lettered: said on stderr); syncctl exits with CMD's
    /// code. CMD must finish within --visibility-timeout: when it passes,
    /// the server puts the item back for others, so syncctl stops CMD
    /// (SIGTERM, SIGKILL after --kill-grace) and exits 7, as it does when
    /// the session is lost. SIGINT, SIGTERM and SIGHUP are forwarded to CMD.
    /// If the ack cannot reach the server within 5s, syncctl warns and
    /// keeps CMD's code: the item will be delivered again.
    ///
    /// Without CMD: prints the value exactly as stored, no newline added
    /// (`$(...)` in a shell drops trailing newlines anyway), and acks the
    /// item once it was written to stdout: at least once up to the moment
    /// of printing. If printing fails, the item is nacked. With `--output
    /// json` it prints one line with "name", "id", "value", "encoding",
    /// "priority" and "deliveries", where "value" is the value as text
    /// ("encoding":"utf-8") when it is valid UTF-8, else its base64
    /// ("encoding":"base64").
    ///
    /// --no-ack: the item is acked as soon as it arrives, before it is
    /// printed or CMD starts: at most once, nothing comes back if CMD fails
    /// or printing does. (If syncctl dies before that ack, the item comes
    /// back after its visibility timeout, unused.)
    #[command(after_help = GET_AFTER_HELP)]
    Get(QueueGetArgs),
    /// Ack an item that this syncctl's own session has in flight.
    ///
    /// Every syncctl invocation has its own session, and only the session
    /// that got an item can ack it: so from a shell this is refused
    /// (FAILED_PRECONDITION, exit 1). It exists for completeness (the API
    /// has it); use `syncctl queue get NAME -- CMD`, which acks when CMD
    /// exits 0, or `queue get` without CMD, which acks once it printed.
    #[command(after_help = SETTLE_AFTER_HELP)]
    Ack(QueueSettleArgs),
    /// Nack an item that this syncctl's own session has in flight: it goes
    /// back at its place in the queue (or to NAME.dlq after its last
    /// delivery).
    ///
    /// Refused from a shell for the reason `queue ack --help` gives; `queue
    /// get NAME -- CMD` nacks when CMD fails. Prints `requeued` or
    /// `dead-lettered` (json: {"name":..,"item_id":..,"dead_lettered":..}).
    #[command(after_help = SETTLE_AFTER_HELP)]
    Nack(QueueSettleArgs),
    /// Wait until every item put into the queue before the join has been
    /// acked (or dead-lettered): `task_done` + `join`.
    ///
    /// Exits 0 at once if nothing is pending; prints nothing. --timeout:
    /// exit 3.
    #[command(after_help = JOIN_AFTER_HELP)]
    Join(QueueJoinArgs),
    /// Show a queue's settings, its items ready and in flight, how many
    /// were dead-lettered, and the puts and gets waiting.
    #[command(after_help = DESCRIBE_AFTER_HELP)]
    Describe(NameArgs),
}

#[derive(Args, Debug)]
pub struct QueuePutArgs {
    /// The queue's name: 1 to 252 bytes of UTF-8 without control
    /// characters (`.dlq` is added for its dead-letter queue).
    pub name: String,

    /// The item. Default: all of stdin, read to its end.
    #[arg(value_name = "VALUE", value_parser = clap::value_parser!(OsString))]
    pub value: Option<OsString>,

    /// Lower is served first; equal priorities in put order.
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub priority: u32,

    /// The most items ready or in flight at once (0: only the server's
    /// limit). Fixed by the put that creates the queue. Default: the
    /// existing queue's, or no capacity for a new one.
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,

    /// Deliveries before an item goes to the dead-letter queue NAME.dlq.
    /// Fixed by the put that creates the queue. Default: the existing
    /// queue's, or 5 for a new one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: Option<u32>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug)]
pub struct QueueGetArgs {
    /// The queue's name: 1 to 252 bytes of UTF-8 without control
    /// characters.
    pub name: String,

    /// Ack the item as soon as it arrives, before it is printed or CMD
    /// starts (at most once), instead of afterwards (at least once).
    #[arg(long)]
    pub no_ack: bool,

    /// How long the item stays in flight before the server puts it back
    /// for another delivery: CMD must finish within it. Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration,
          conflicts_with = "no_ack")]
    pub visibility_timeout: Option<Duration>,

    #[command(flatten)]
    pub hold: HoldArgs,
}

#[derive(Args, Debug)]
pub struct QueueSettleArgs {
    /// The queue's name.
    pub name: String,

    /// The item's id, as `queue get` showed it (SYNCD_ITEM_ID).
    #[arg(value_name = "ID")]
    pub item_id: u64,
}

#[derive(Args, Debug)]
pub struct QueueJoinArgs {
    /// The queue's name.
    pub name: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(cli: &Cli, command: &QueueCommand) -> Result<i32, Failure> {
    match command {
        QueueCommand::Put(args) => put(cli, args).await,
        QueueCommand::Get(args) => get(cli, args).await,
        QueueCommand::Ack(args) => {
            let (name, item_id) = (args.name.as_str(), args.item_id);
            one_call(cli, |client| async move {
                client.queue(name).ack(item_id).await
            })
            .await
            .map_err(settle_failure)?;
            cli.output
                .print_json_only(json!({ "name": name, "item_id": item_id, "acked": true }))?;
            Ok(0)
        }
        QueueCommand::Nack(args) => {
            let (name, item_id) = (args.name.as_str(), args.item_id);
            let dead_lettered = one_call(cli, |client| async move {
                client.queue(name).nack(item_id).await
            })
            .await
            .map_err(settle_failure)?;
            let text = if dead_lettered {
                "dead-lettered"
            } else {
                "requeued"
            };
            let json = json!({ "name": name, "item_id": item_id, "dead_lettered": dead_lettered });
            cli.output.print(text, json)?;
            Ok(0)
        }
        QueueCommand::Join(args) => {
            let name = args.name.as_str();
            let timeout = args.wait.timeout;
            let waited = wait_command(cli, args.wait.ttl, timeout, |client| async move {
                let queue = client.queue(name);
                match timeout {
                    Some(timeout) => queue.join_timeout(timeout).await,
                    None => queue.join().await,
                }
            })
            .await?;
            match waited {
                Waited::Done(()) => Ok(0),
                Waited::Interrupted(signal) => Ok(128 + signal),
            }
        }
        QueueCommand::Describe(args) => {
            let name = args.name.as_str();
            let queue = one_call(
                cli,
                |client| async move { client.queue(name).describe().await },
            )
            .await?;
            cli.output
                .describe(format_description(&queue), description_json(&queue))
        }
    }
}

async fn put(cli: &Cli, args: &QueuePutArgs) -> Result<i32, Failure> {
    let value = match &args.value {
        Some(value) => value.clone().into_vec(),
        None => read_stdin()?,
    };
    let name = args.name.as_str();
    let (priority, timeout) = (args.priority, args.wait.timeout);
    let (capacity, max_deliveries) = (args.capacity, args.max_deliveries);
    let waited = wait_command(cli, args.wait.ttl, timeout, |client| async move {
        let mut queue = client.queue(name);
        if let Some(capacity) = capacity {
            queue = queue.with_capacity(capacity);
        }
        if let Some(max_deliveries) = max_deliveries {
            queue = queue.with_max_deliveries(max_deliveries);
        }
        match timeout {
            Some(timeout) => queue.put_timeout(value, priority, timeout).await,
            None => queue.put(value, priority).await,
        }
    })
    .await?;
    let item_id = match waited {
        Waited::Done(item_id) => item_id,
        Waited::Interrupted(signal) => return Ok(128 + signal),
    };
    cli.output
        .print(item_id, json!({ "name": name, "item_id": item_id }))?;
    Ok(0)
}

/// All of stdin, at most [`STDIN_BYTES_MAX`].
fn read_stdin() -> Result<Vec<u8>, Failure> {
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        report("reading the item from stdin (end it with Ctrl-D)");
    }
    let mut value = Vec::new();
    stdin
        .lock()
        .take(STDIN_BYTES_MAX + 1)
        .read_to_end(&mut value)
        .map_err(|e| Failure::other(format!("cannot read the item from stdin: {e}")))?;
    if value.len() as u64 > STDIN_BYTES_MAX {
        return Err(Failure::other(format!(
            "stdin holds more than {} MiB: too large for an item",
            STDIN_BYTES_MAX >> 20
        )));
    }
    Ok(value)
}

async fn get(cli: &Cli, args: &QueueGetArgs) -> Result<i32, Failure> {
    let visibility = args
        .visibility_timeout
        .unwrap_or(VISIBILITY_TIMEOUT_DEFAULT);
    let (name, no_ack, timeout) = (args.name.as_str(), args.no_ack, args.hold.timeout);
    let take_item = |client: &Client| {
        let client = client.clone();
        async move {
            let queue = client.queue(name).with_visibility_timeout(visibility);
            let item = match timeout {
                Some(timeout) => queue.get_timeout(timeout).await?,
                None => queue.get().await?,
            };
            if no_ack {
                ack_at_once(&queue, &item).await?;
            }
            let flight = (!no_ack).then(|| InFlight::new(client, visibility));
            Ok(ItemHold {
                queue,
                item,
                flight,
            })
        }
    };
    if !args.hold.command.is_empty() {
        return acquire_and_hold(cli, &args.hold, take_item).await;
    }
    let taken = match take(cli, args.hold.ttl, timeout, take_item).await? {
        Waited::Done(taken) => taken,
        Waited::Interrupted(signal) => return Ok(128 + signal),
    };
    let Taken { client, guard, .. } = taken;
    let printed = print_item(cli.output, guard.queue.name(), &guard.item);
    let released = leave(guard, client, printed.is_ok()).await;
    finish(printed, released)
}

/// `--no-ack`: acks the item as soon as it arrived, before it is used.
///
/// Not the server's own no-ack get (`Queue::get_no_ack`): that call has no
/// timeout in the client library, and an answer lost on the way loses its
/// item, where an item got in flight comes back after its visibility
/// timeout if syncctl dies before this ack. Either way an item is used at
/// most once. A refused ack is an error of its own (exit 1), not the
/// mismatch that a refused get means (exit 6).
async fn ack_at_once(queue: &Queue, item: &QueueItem) -> Result<(), Error> {
    match queue.ack(item.id).await {
        Err(Error::Status(status)) if status.code() == Code::FailedPrecondition => {
            Err(Error::SessionLost(format!(
                "could not ack item {} of queue {:?} as it arrived: {}",
                item.id,
                queue.name(),
                status.message()
            )))
        }
        acked => acked,
    }
}

/// Writes the item: its value as it is, or one line of JSON.
fn print_item(output: Output, name: &str, item: &QueueItem) -> Result<i32, Failure> {
    match output {
        Output::Text => write_stdout_bytes(&item.value)?,
        Output::Json => {
            let (value, encoding) = match std::str::from_utf8(&item.value) {
                Ok(text) => (text.to_string(), "utf-8"),
                Err(_) => (base64(&item.value), "base64"),
            };
            let json = json!({
                "name": name,
                "id": item.id,
                "value": value,
                "encoding": encoding,
                "priority": item.priority,
                "deliveries": item.deliveries,
            });
            write_stdout_bytes(format!("{json}\n").as_bytes())?;
        }
    }
    Ok(0)
}

/// An item held while CMD runs or until it is printed: in flight under the
/// session (acked or nacked at the end), or already removed (`--no-ack`).
struct ItemHold {
    queue: Queue,
    item: QueueItem,
    /// `None` for a no-ack get: nothing to lose or give back.
    flight: Option<InFlight>,
}

/// What an item in flight depends on: the session, and the visibility
/// timeout.
struct InFlight {
    client: Client,
    session_id: u64,
    visibility: Duration,
    /// When syncctl takes the item as lost: a little before the server's
    /// deadline, which it cannot see (the server started the visibility
    /// timeout when it handed the item out, before it arrived here).
    deadline: Instant,
}

impl InFlight {
    fn new(client: Client, visibility: Duration) -> InFlight {
        let margin = (visibility / 10).min(Duration::from_secs(1));
        InFlight {
            session_id: client.session_id(),
            client,
            visibility,
            deadline: Instant::now() + (visibility - margin),
        }
    }
}

impl Guard for ItemHold {
    fn what(&self) -> String {
        format!("item {} of queue {:?}", self.item.id, self.queue.name())
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SYNCD_QUEUE_NAME", self.queue.name().to_string()),
            ("SYNCD_ITEM_ID", self.item.id.to_string()),
            ("SYNCD_ITEM_PRIORITY", self.item.priority.to_string()),
            ("SYNCD_ITEM_DELIVERIES", self.item.deliveries.to_string()),
            ("SYNCD_FENCING_TOKEN", self.item.fencing_token.to_string()),
        ]
    }

    fn stdin(&self) -> Option<Vec<u8>> {
        Some(self.item.value.clone())
    }

    fn text(&self) -> String {
        self.item.id.to_string()
    }

    fn json(&self) -> Value {
        json!({ "name": self.queue.name(), "id": self.item.id })
    }

    async fn lost(&self) -> String {
        let Some(flight) = &self.flight else {
            return std::future::pending().await;
        };
        if flight.client.session_id() != flight.session_id {
            return format!("session {} was lost", flight.session_id);
        }
        // The server tells of a revoke, or of the visibility timeout if it
        // passes before syncctl's own reckoning does.
        tokio::select! {
            loss = flight.client.hold_lost(self.item.fencing_token) => loss.why(),
            () = tokio::time::sleep_until(flight.deadline) => format!(
                "its visibility timeout of {} is over, the server puts it back in the queue \
                 (raise --visibility-timeout)",
                duration::format(flight.visibility)
            ),
        }
    }

    async fn release(self, succeeded: bool) -> Result<(), Error> {
        if self.flight.is_none() {
            return Ok(());
        }
        let what = self.what();
        if succeeded {
            return match self.queue.ack(self.item.id).await {
                // Not in flight any more: it came back after its visibility
                // timeout and will be delivered again. The hold was lost.
                Err(Error::Status(status)) if status.code() == Code::FailedPrecondition => Err(
                    Error::SessionLost(format!("could not ack {what}: {}", status.message())),
                ),
                acked => acked,
            };
        }
        if self.queue.nack(self.item.id).await? {
            report(&format!(
                "{what} was delivered {}: moved to the dead-letter queue {:?}",
                plural(self.item.deliveries.into(), "time", "times"),
                format!("{}.dlq", self.queue.name())
            ));
        }
        Ok(())
    }

    fn release_action(&self, succeeded: bool) -> String {
        let verb = if succeeded { "ack" } else { "nack" };
        format!("{verb} {}", self.what())
    }

    fn left_to_lease(&self) -> &'static str {
        "the server puts it back in the queue when its visibility timeout or the session's \
         lease runs out, and delivers it again"
    }

    fn release_budget(&self, succeeded: bool) -> Duration {
        if succeeded && self.flight.is_some() {
            ACK_BUDGET
        } else {
            crate::session::LEAVE_BUDGET
        }
    }
}

/// An ack or nack refused because this session does not hold the item:
/// the line says why that is the rule.
fn settle_failure(mut failure: Failure) -> Failure {
    if failure.message.starts_with("failed precondition") {
        failure.message.push_str(
            "; only the session that got an item can ack or nack it, and every syncctl runs \
             its own session: use `syncctl queue get NAME -- CMD`",
        );
    }
    failure
}

pub fn format_description(queue: &DescribeQueueResponse) -> String {
    let name = &queue.name;
    let idle = queue.ready + queue.in_flight == 0 && queue.waiters.is_empty();
    if queue.max_deliveries == 0 && idle {
        return format!("queue {name:?}: does not exist (no items, nobody waits)\n");
    }
    let capacity = match queue.capacity {
        0 => "no capacity (only the server's limit)".to_string(),
        n => format!("capacity {n}"),
    };
    let mut text = format!(
        "queue {name:?}: {} ready, {} in flight, {capacity}\n",
        queue.ready, queue.in_flight
    );
    text += &format!(
        "deliveries: at most {}, then to {:?} ({} so far)\n",
        queue.max_deliveries,
        format!("{name}.dlq"),
        queue.dead_lettered
    );
    text += &section(
        "waiters",
        labelled_waiters(queue).map(|(call, w)| format!("{call}: {}", format_waiter(w))),
    );
    text
}

/// The waiters with what each waits in: the server lists the puts, then
/// the gets, then the joins, and counts the puts and gets.
fn labelled_waiters(queue: &DescribeQueueResponse) -> impl Iterator<Item = (&str, &Waiter)> {
    let puts = queue.waiting_puts as usize;
    let gets = queue.waiting_gets as usize;
    queue
        .waiters
        .iter()
        .enumerate()
        .map(move |(place, waiter)| {
            let call = if place < puts {
                "put"
            } else if place < puts + gets {
                "get"
            } else {
                "join"
            };
            (call, waiter)
        })
}

pub fn description_json(queue: &DescribeQueueResponse) -> Value {
    let waiters: Vec<Value> = labelled_waiters(queue)
        .map(|(call, w)| {
            let mut waiter = waiter_json(w);
            waiter.insert("call".into(), call.into());
            Value::Object(waiter)
        })
        .collect();
    json!({
        "name": queue.name,
        "capacity": queue.capacity,
        "max_deliveries": queue.max_deliveries,
        "ready": queue.ready,
        "in_flight": queue.in_flight,
        "dead_lettered": queue.dead_lettered,
        "waiting_puts": queue.waiting_puts,
        "waiting_gets": queue.waiting_gets,
        "waiters": waiters,
    })
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for place in 0..4 {
            if place <= chunk.len() {
                text.push(char::from(ALPHABET[(n >> (18 - 6 * place) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x80]), "//4AgA==");
    }

    fn waiter(session_id: u64) -> Waiter {
        Waiter {
            session_id,
            client_name: "c".into(),
            waiting_ms: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn description_formats() {
        let missing = DescribeQueueResponse {
            name: "q".into(),
            ..Default::default()
        };
        assert_eq!(
            format_description(&missing),
            "queue \"q\": does not exist (no items, nobody waits)\n"
        );
        let busy = DescribeQueueResponse {
            name: "q".into(),
            capacity: 10,
            max_deliveries: 5,
            ready: 3,
            in_flight: 1,
            dead_lettered: 2,
            waiting_puts: 1,
            waiting_gets: 0,
            waiters: vec![waiter(4), waiter(5)],
        };
        assert_eq!(
            format_description(&busy),
            "queue \"q\": 3 ready, 1 in flight, capacity 10\n\
             deliveries: at most 5, then to \"q.dlq\" (2 so far)\n\
             waiters: 2\n\
             \x20 1. put: session 4 (c), waiting for 1s\n\
             \x20 2. join: session 5 (c), waiting for 1s\n"
        );
        let json = description_json(&busy);
        assert_eq!(json["ready"], 3);
        assert_eq!(json["waiting_puts"], 1);
        assert_eq!(json["waiters"][0]["call"], "put");
        assert_eq!(json["waiters"][1]["call"], "join");
        assert_eq!(json["waiters"][1]["session_id"], 5);
        let unbounded = DescribeQueueResponse {
            capacity: 0,
            waiting_puts: 0,
            waiters: vec![waiter(4)],
            ..busy
        };
        assert_eq!(description_json(&unbounded)["waiters"][0]["call"], "join");
        assert!(format_description(&unbounded).starts_with(
            "queue \"q\": 3 ready, 1 in flight, no capacity (only the server's limit)\n"
        ));
    }

    #[test]
    fn refused_acks_say_why() {
        let refused = Failure::other("failed precondition: item 4 of queue \"q\" is not in flight");
        let failure = settle_failure(refused);
        assert_eq!(failure.code, 1);
        assert!(
            failure
                .message
                .ends_with("use `syncctl queue get NAME -- CMD`"),
            "{}",
            failure.message
        );
        let other = settle_failure(Failure::other("invalid argument: bad name"));
        assert_eq!(other.message, "invalid argument: bad name");
    }
}
