//! One worker process of the chaos test (`tests/chaos.rs`): it plays one
//! role against syncd until its deadline and writes everything it does to
//! its history file (format: `tests/chaos/history.rs`), one line before and
//! one after each call, so that a checker can judge the run afterwards.
//!
//! ```text
//! chaos_worker --role lock --id lock-0 --history h/lock-0 --addr http://127.0.0.1:7420 \
//!     --deadline-ms <unix ms> --ttl-ms 3000 --seed 1 --fenced 127.0.0.1:5000
//! ```
//!
//! Roles: `lock` (lock `chaos-lock`; writes its fencing token to the fenced
//! resource twice per hold, without checking whether it lost the lock: a
//! naive client), `sem` (semaphore `chaos-sem`, capacity 2), `rw` (rwlock
//! `chaos-rw`, mostly readers), `producer` and `consumer` (queue
//! `chaos-queue`), `misc` (event, condition, barrier, pool, rate limit,
//! breaker, lightly), and `drain`, run once after the others: it waits
//! until the checked primitives have no holders and no waiters, then takes
//! (and acks) every item left in the queue and its dead-letter queue.
//!
//! A `lock` worker prints `holding <token>` on stdout after its first write
//! under a hold and `released` after the release: the chaos test pauses it
//! with SIGSTOP at such a moment. Operations run one at a time. Exit code 0
//! after the deadline, 1 on an error that is not syncd's answer to a call
//! (a history that cannot be written, a bad argument).

#[path = "../tests/chaos/history.rs"]
#[allow(dead_code)]
mod history;
#[path = "../tests/chaos/rng.rs"]
#[allow(dead_code)]
mod rng;

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use history::{now_us, Writer};
use rng::Rng;
use syncd::client::{
    Allowed, BreakerSettings, Client, ClientOptions, Error as SyncdError, LockGuard, RwLockGuard,
    RwMode, SemaphoreGuard,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

const LOCK: &str = "chaos-lock";
const SEMAPHORE: &str = "chaos-sem";
const SEMAPHORE_CAPACITY: u32 = 2;
const RWLOCK: &str = "chaos-rw";
const QUEUE: &str = "chaos-queue";
const QUEUE_CAPACITY: u32 = 200;
const VISIBILITY: Duration = Duration::from_secs(2);
const EVENT: &str = "chaos-event";
const CONDITION: &str = "chaos-cond";
const CONDITION_LOCK: &str = "chaos-cond-lock";
const BARRIER: &str = "chaos-barrier";
const POOL: &str = "chaos-pool";
const RATE: &str = "chaos-rate";
const BREAKER: &str = "chaos-breaker";
/// The longest any single wait of a worker lasts: the worker must end
/// soon after its deadline by itself.
const WAIT_MAX: Duration = Duration::from_secs(8);

#[derive(Parser, Debug)]
#[command(about = "A worker of the chaos test; see tests/chaos.rs")]
struct Args {
    /// lock, sem, rw, producer, consumer, misc or drain.
    #[arg(long)]
    role: String,
    /// The worker's name, unique in the run (a replacement gets a new one).
    #[arg(long)]
    id: String,
    /// The history file to create.
    #[arg(long)]
    history: PathBuf,
    /// syncd's address.
    #[arg(long)]
    addr: String,
    /// When to stop starting operations, in Unix milliseconds.
    #[arg(long)]
    deadline_ms: u64,
    /// The session TTL.
    #[arg(long, default_value_t = 3000)]
    ttl_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The fenced resource server, HOST:PORT (lock role).
    #[arg(long, default_value = "")]
    fenced: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos_worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chaos_worker (pid {}): {error}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

/// What every role uses: the client, the history, randomness, the clock.
struct Worker {
    client: Client,
    history: Writer,
    rng: Rng,
    id: String,
    deadline_us: u64,
}

impl Worker {
    fn begin(&mut self, op: &str, keys: &[(&str, &dyn Display)]) -> u64 {
        self.history.invoke(op, keys)
    }

    fn ok(&mut self, seq: u64, keys: &[(&str, &dyn Display)]) {
        let session = self.client.session_id();
        let mut all: Vec<(&str, &dyn Display)> = keys.to_vec();
        all.push(("sess", &session));
        self.history.ok(seq, &all);
    }

    /// Ends acquire op `seq`: records the grant's fencing token and returns
    /// the guard, or records the failure.
    fn granted<G>(
        &mut self,
        seq: u64,
        acquired: Result<G, SyncdError>,
        token_of: fn(&G) -> u64,
    ) -> Option<G> {
        match acquired {
            Ok(guard) => {
                self.ok(seq, &[("token", &token_of(&guard))]);
                Some(guard)
            }
            Err(error) => {
                self.fail(seq, &error);
                None
            }
        }
    }

    /// Releases a hold as op `release` with `keys`, recording the answer.
    async fn release(
        &mut self,
        keys: &[(&str, &dyn Display)],
        release: impl std::future::Future<Output = Result<(), SyncdError>>,
    ) {
        let seq = self.begin("release", keys);
        match release.await {
            Ok(()) => self.ok(seq, &[]),
            Err(error) => self.fail(seq, &error),
        }
    }

    fn fail(&mut self, seq: u64, error: &SyncdError) {
        let session = self.client.session_id();
        self.history
            .err(seq, kind(error), &[("sess", &session)], &error.to_string());
    }

    fn before_deadline(&self) -> bool {
        now_us() < self.deadline_us
    }

    /// A wait limit: [`WAIT_MAX`], less near the deadline (at least 1 s).
    fn wait_limit(&self) -> Duration {
        let left = Duration::from_micros(self.deadline_us.saturating_sub(now_us()));
        left.clamp(Duration::from_secs(1), WAIT_MAX)
    }

    async fn sleep_ms(&mut self, low: u64, high: u64) {
        let ms = self.rng.range(low, high);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The error's kind as the history names it.
fn kind(error: &SyncdError) -> &'static str {
    match error {
        SyncdError::Timeout(_) => "timeout",
        SyncdError::Broken(_) => "broken",
        SyncdError::SessionLost(_) => "session_lost",
        SyncdError::Unavailable(_) => "unavailable",
        SyncdError::InvalidAddress(_) => "invalid_address",
        SyncdError::Unauthenticated(_) => "unauthenticated",
        SyncdError::PermissionDenied(_) => "permission_denied",
        SyncdError::Status(status) => code_name(status.code()),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let mut history = Writer::create(&args.history, &args.id, &args.role)?;
    let options = ClientOptions {
        session_ttl: Duration::from_millis(args.ttl_ms),
        client_name: args.id.clone(),
        ..ClientOptions::default()
    };
    // The server may be restarting just now: try for a while.
    let seq = history.invoke("connect", &[]);
    let mut tries = 0;
    let client = loop {
        match Client::connect_with(args.addr.clone(), options.clone()).await {
            Ok(client) => break client,
            Err(error) if tries < 20 => {
                tries += 1;
                let _ = error;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                history.err(seq, kind(&error), &[], &error.to_string());
                return Err(error.into());
            }
        }
    };
    let session = client.session_id();
    history.ok(seq, &[("sess", &session)]);
    let mut worker = Worker {
        client,
        history,
        rng: Rng::new(args.seed),
        id: args.id.clone(),
        deadline_us: args.deadline_ms * 1000,
    };
    match args.role.as_str() {
        "lock" => lock_role(&mut worker, &args.fenced).await?,
        "sem" => semaphore_role(&mut worker).await,
        "rw" => rwlock_role(&mut worker).await,
        "producer" => producer_role(&mut worker).await,
        "consumer" => consumer_role(&mut worker).await,
        "misc" => misc_role(&mut worker).await,
        "drain" => drain_role(&mut worker).await,
        other => return Err(format!("unknown role {other:?}").into()),
    }
    let seq = worker.begin("close", &[]);
    let client = worker.client.clone();
    match client.close().await {
        Ok(()) => worker.history.ok(seq, &[]),
        Err(error) => worker
            .history
            .err(seq, kind(&error), &[], &error.to_string()),
    }
    worker.history.exit();
    Ok(())
}

/// Tells the chaos test (on stdout) what the worker is doing.
fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// A connection to the fenced resource server.
struct Fenced {
    reader: BufReader<TcpStream>,
}

impl Fenced {
    async fn connect(addr: &str) -> Result<Fenced, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Fenced {
            reader: BufReader::new(stream),
        })
    }

    /// `W <resource> <token> <worker>` → `OK <highest>` or `STALE <highest>`.
    async fn write(
        &mut self,
        resource: &str,
        token: u64,
        worker: &str,
    ) -> Result<(bool, u64), Error> {
        let request = format!("W {resource} {token} {worker}\n");
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let (verdict, highest) = line
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("fenced server said {line:?}"))?;
        Ok((verdict == "OK", highest.parse()?))
    }
}

async fn lock_role(w: &mut Worker, fenced_addr: &str) -> Result<(), Error> {
    let mut fenced = Fenced::connect(fenced_addr).await?;
    let lock = w.client.lock(LOCK);
    while w.before_deadline() {
        let seq = w.begin("acquire", &[("prim", &"lock"), ("name", &LOCK)]);
        let acquired = lock.acquire_timeout(w.wait_limit()).await;
        let Some(guard) = w.granted(seq, acquired, LockGuard::fencing_token) else {
            continue;
        };
        let token = guard.fencing_token();
        // A naive holder: it never asks whether it still holds the lock.
        for write in 0..2 {
            if write == 1 {
                announce(&format!("holding {token}"));
                w.sleep_ms(100, 300).await;
            }
            let seq = w.begin("write", &[("res", &LOCK), ("token", &token)]);
            let (accepted, highest) = fenced.write(LOCK, token, &w.id).await?;
            w.ok(
                seq,
                &[("accepted", &u8::from(accepted)), ("highest", &highest)],
            );
        }
        let keys: [(&str, &dyn Display); 3] =
            [("prim", &"lock"), ("name", &LOCK), ("token", &token)];
        w.release(&keys, guard.release()).await;
        announce("released");
        w.sleep_ms(0, 30).await;
    }
    Ok(())
}

async fn semaphore_role(w: &mut Worker) {
    let semaphore = w.client.semaphore(SEMAPHORE, SEMAPHORE_CAPACITY);
    while w.before_deadline() {
        let permits: u32 = if w.rng.chance(20) { 2 } else { 1 };
        let seq = w.begin(
            "acquire",
            &[
                ("prim", &"sem"),
                ("name", &SEMAPHORE),
                ("permits", &permits),
            ],
        );
        let acquired = semaphore.acquire_timeout(permits, w.wait_limit()).await;
        let Some(guard) = w.granted(seq, acquired, SemaphoreGuard::fencing_token) else {
            continue;
        };
        w.sleep_ms(30, 150).await;
        let token = guard.fencing_token();
        let keys: [(&str, &dyn Display); 3] =
            [("prim", &"sem"), ("name", &SEMAPHORE), ("token", &token)];
        w.release(&keys, guard.release()).await;
        w.sleep_ms(0, 50).await;
    }
}

async fn rwlock_role(w: &mut Worker) {
    let rwlock = w.client.rwlock(RWLOCK);
    while w.before_deadline() {
        let mode = if w.rng.chance(30) {
            RwMode::Write
        } else {
            RwMode::Read
        };
        let mode_name = match mode {
            RwMode::Read => "read",
            RwMode::Write => "write",
        };
        let seq = w.begin(
            "acquire",
            &[("prim", &"rw"), ("name", &RWLOCK), ("mode", &mode_name)],
        );
        let limit = w.wait_limit();
        let acquired = match mode {
            RwMode::Read => rwlock.read_timeout(limit).await,
            RwMode::Write => rwlock.write_timeout(limit).await,
        };
        let Some(guard) = w.granted(seq, acquired, RwLockGuard::fencing_token) else {
            continue;
        };
        w.sleep_ms(30, 150).await;
        let token = guard.fencing_token();
        let keys: [(&str, &dyn Display); 4] = [
            ("prim", &"rw"),
            ("name", &RWLOCK),
            ("mode", &mode_name),
            ("token", &token),
        ];
        w.release(&keys, guard.release()).await;
        w.sleep_ms(0, 50).await;
    }
}

async fn producer_role(w: &mut Worker) {
    let queue = w.client.queue(QUEUE).with_capacity(QUEUE_CAPACITY);
    let mut n = 0u64;
    while w.before_deadline() {
        n += 1;
        let qid = format!("{}-{n}", w.id);
        let seq = w.begin("put", &[("queue", &QUEUE), ("qid", &qid)]);
        let priority = u32::try_from(w.rng.range(0, 3)).unwrap_or(0);
        match queue
            .put_timeout(qid.clone().into_bytes(), priority, w.wait_limit())
            .await
        {
            Ok(item) => w.ok(seq, &[("item", &item)]),
            Err(error) => w.fail(seq, &error),
        }
        w.sleep_ms(20, 80).await;
    }
}

async fn consumer_role(w: &mut Worker) {
    let queue = w.client.queue(QUEUE).with_visibility_timeout(VISIBILITY);
    while w.before_deadline() {
        let seq = w.begin("get", &[("queue", &QUEUE)]);
        let item = match queue
            .get_timeout(w.wait_limit().min(Duration::from_secs(3)))
            .await
        {
            Ok(item) => {
                let qid = String::from_utf8_lossy(&item.value).into_owned();
                w.ok(
                    seq,
                    &[
                        ("item", &item.id),
                        ("qid", &qid),
                        ("deliveries", &item.deliveries),
                    ],
                );
                item
            }
            Err(error) => {
                w.fail(seq, &error);
                continue;
            }
        };
        w.sleep_ms(0, 60).await;
        let roll = w.rng.range(0, 100);
        if roll < 70 {
            let seq = w.begin("ack", &[("queue", &QUEUE), ("item", &item.id)]);
            match queue.ack(item.id).await {
                Ok(()) => w.ok(seq, &[]),
                Err(error) => w.fail(seq, &error),
            }
        } else if roll < 85 {
            let seq = w.begin("nack", &[("queue", &QUEUE), ("item", &item.id)]);
            match queue.nack(item.id).await {
                Ok(dead) => w.ok(seq, &[("dead_lettered", &u8::from(dead))]),
                Err(error) => w.fail(seq, &error),
            }
        }
        // Otherwise the item comes back after its visibility timeout.
    }
}

async fn misc_role(w: &mut Worker) {
    let breaker = w.client.breaker(BREAKER).with_settings(BreakerSettings {
        failure_threshold: 3,
        open_timeout_ms: 500,
        half_open_max_probes: 1,
        success_threshold: 1,
        ..BreakerSettings::default()
    });
    while w.before_deadline() {
        match w.rng.range(0, 6) {
            0 => misc_event(w).await,
            1 => misc_condition(w).await,
            2 => misc_barrier(w).await,
            3 => misc_pool(w).await,
            4 => misc_rate(w).await,
            _ => misc_breaker(w, &breaker).await,
        }
        w.sleep_ms(10, 80).await;
    }
}

async fn misc_event(w: &mut Worker) {
    let event = w.client.event(EVENT);
    let roll = w.rng.range(0, 10);
    if roll < 3 {
        let seq = w.begin("event_set", &[("name", &EVENT)]);
        match event.set().await {
            Ok(woken) => w.ok(seq, &[("woken", &woken)]),
            Err(error) => w.fail(seq, &error),
        }
    } else if roll < 5 {
        let seq = w.begin("event_clear", &[("name", &EVENT)]);
        match event.clear().await {
            Ok(()) => w.ok(seq, &[]),
            Err(error) => w.fail(seq, &error),
        }
    } else {
        let seq = w.begin("event_wait", &[("name", &EVENT)]);
        match event.wait_timeout(Duration::from_millis(500)).await {
            Ok(()) => w.ok(seq, &[]),
            Err(error) => w.fail(seq, &error),
        }
    }
}

async fn misc_condition(w: &mut Worker) {
    let condition = w.client.condition(CONDITION);
    if w.rng.chance(40) {
        let seq = w.begin("cond_notify", &[("name", &CONDITION)]);
        match condition.notify_all().await {
            Ok(woken) => w.ok(seq, &[("woken", &woken)]),
            Err(error) => w.fail(seq, &error),
        }
        return;
    }
    let lock = w.client.lock(CONDITION_LOCK);
    let seq = w.begin(
        "acquire",
        &[("prim", &"condlock"), ("name", &CONDITION_LOCK)],
    );
    let acquired = lock.acquire_timeout(w.wait_limit()).await;
    let Some(mut guard) = w.granted(seq, acquired, LockGuard::fencing_token) else {
        return;
    };
    let given_up = guard.fencing_token();
    let seq = w.begin("cond_wait", &[("name", &CONDITION), ("token", &given_up)]);
    match condition
        .wait_timeout(&mut guard, Duration::from_millis(700))
        .await
    {
        Ok(notified) => w.ok(
            seq,
            &[
                ("token", &guard.fencing_token()),
                ("notified", &u8::from(notified)),
            ],
        ),
        Err(error) => w.fail(seq, &error),
    }
    let token = guard.fencing_token();
    let keys: [(&str, &dyn Display); 3] = [
        ("prim", &"condlock"),
        ("name", &CONDITION_LOCK),
        ("token", &token),
    ];
    w.release(&keys, guard.release()).await;
}

async fn misc_barrier(w: &mut Worker) {
    let barrier = w.client.barrier(BARRIER, 2);
    let seq = w.begin("barrier_wait", &[("name", &BARRIER)]);
    match barrier.wait_timeout(Duration::from_secs(2)).await {
        Ok(passed) => w.ok(
            seq,
            &[
                ("arrival", &passed.arrival_index),
                ("generation", &passed.generation),
            ],
        ),
        Err(error) => {
            let broken = matches!(error, SyncdError::Broken(_));
            w.fail(seq, &error);
            if broken {
                let seq = w.begin("barrier_reset", &[("name", &BARRIER)]);
                match barrier.reset().await {
                    Ok(n) => w.ok(seq, &[("woken", &n)]),
                    Err(error) => w.fail(seq, &error),
                }
            }
        }
    }
}

async fn misc_pool(w: &mut Worker) {
    let pool = w.client.pool(POOL, 2);
    let seq = w.begin("acquire", &[("prim", &"pool"), ("name", &POOL)]);
    let resource = match pool.checkout_timeout(Duration::from_secs(3)).await {
        Ok(resource) => {
            w.ok(
                seq,
                &[
                    ("token", &resource.fencing_token()),
                    ("resource", &resource.resource_id()),
                ],
            );
            resource
        }
        Err(error) => {
            w.fail(seq, &error);
            return;
        }
    };
    w.sleep_ms(20, 100).await;
    let token = resource.fencing_token();
    let seq = w.begin(
        "release",
        &[("prim", &"pool"), ("name", &POOL), ("token", &token)],
    );
    match resource.checkin(true, None).await {
        Ok(kept) => w.ok(seq, &[("kept", &u8::from(kept))]),
        Err(error) => w.fail(seq, &error),
    }
}

async fn misc_rate(w: &mut Worker) {
    let rate = w.client.rate_limit(RATE, 20, 5);
    let seq = w.begin("rate_acquire", &[("name", &RATE)]);
    match rate.acquire_timeout(1, Duration::from_secs(2)).await {
        Ok(left) => w.ok(seq, &[("left", &left)]),
        Err(error) => w.fail(seq, &error),
    }
}

async fn misc_breaker(w: &mut Worker, breaker: &syncd::client::CircuitBreaker) {
    let seq = w.begin("allow", &[("name", &BREAKER)]);
    let permit = match breaker.allow().await {
        Ok(Allowed::Permit(permit)) => {
            let state = format!("{:?}", permit.state());
            w.ok(
                seq,
                &[("token", &permit.fencing_token()), ("state", &state)],
            );
            permit
        }
        Ok(Allowed::Rejected { state, .. }) => {
            let state = format!("{state:?}");
            w.ok(seq, &[("token", &0), ("state", &state)]);
            return;
        }
        Err(error) => {
            w.fail(seq, &error);
            return;
        }
    };
    let succeeded = w.rng.chance(60);
    let seq = w.begin(
        "breaker_record",
        &[("name", &BREAKER), ("success", &u8::from(succeeded))],
    );
    match permit.record(succeeded).await {
        Ok(state) => {
            let state = format!("{state:?}");
            w.ok(seq, &[("state", &state)]);
        }
        Err(error) => w.fail(seq, &error),
    }
}

/// After every other worker is gone: waits (bounded) until the checked
/// primitives have no holders and no waiters left (the sessions of killed
/// workers expire within their TTL), records what it saw, then drains the
/// queue and its dead-letter queue.
async fn drain_role(w: &mut Worker) {
    let give_up_us = now_us() + 20_000_000;
    loop {
        let clean = describe_all(w).await;
        if clean || now_us() > give_up_us {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in [QUEUE.to_string(), format!("{QUEUE}.dlq")] {
        let queue = w.client.queue(&name).with_visibility_timeout(VISIBILITY);
        loop {
            let seq = w.begin("get", &[("queue", &name)]);
            match queue.get_timeout(Duration::from_secs(3)).await {
                Ok(item) => {
                    let qid = String::from_utf8_lossy(&item.value).into_owned();
                    w.ok(
                        seq,
                        &[
                            ("item", &item.id),
                            ("qid", &qid),
                            ("deliveries", &item.deliveries),
                        ],
                    );
                    let seq = w.begin("ack", &[("queue", &name), ("item", &item.id)]);
                    match queue.ack(item.id).await {
                        Ok(()) => w.ok(seq, &[]),
                        Err(error) => w.fail(seq, &error),
                    }
                }
                Err(error) => {
                    w.fail(seq, &error);
                    // Done when nothing is ready or in flight any more.
                    let seq = w.begin("describe", &[("prim", &"queue"), ("name", &name)]);
                    match queue.describe().await {
                        Ok(d) => {
                            w.ok(
                                seq,
                                &[
                                    ("ready", &d.ready),
                                    ("in_flight", &d.in_flight),
                                    ("waiters", &d.waiters.len()),
                                ],
                            );
                            if (d.ready == 0 && d.in_flight == 0)
                                || now_us() > give_up_us + 30_000_000
                            {
                                break;
                            }
                        }
                        Err(error) => {
                            w.fail(seq, &error);
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Describes lock, semaphore, rwlock and pool once, recording each; true
/// when none has holders or waiters.
async fn describe_all(w: &mut Worker) -> bool {
    let mut clean = true;
    let client = w.client.clone();

    let seq = w.begin("describe", &[("prim", &"lock"), ("name", &LOCK)]);
    match client.lock(LOCK).describe().await {
        Ok(d) => {
            let holders = usize::from(d.holder.is_some());
            clean &= holders == 0 && d.waiters.is_empty();
            w.ok(seq, &[("holders", &holders), ("waiters", &d.waiters.len())]);
        }
        Err(error) => {
            clean = false;
            w.fail(seq, &error);
        }
    }

    let seq = w.begin("describe", &[("prim", &"sem"), ("name", &SEMAPHORE)]);
    match client.semaphore(SEMAPHORE, 0).describe().await {
        Ok(d) => {
            clean &= d.holders.is_empty() && d.waiters.is_empty() && d.permits_held == 0;
            w.ok(
                seq,
                &[
                    ("holders", &d.holders.len()),
                    ("waiters", &d.waiters.len()),
                    ("permits_held", &d.permits_held),
                ],
            );
        }
        Err(error) => {
            clean = false;
            w.fail(seq, &error);
        }
    }

    let seq = w.begin("describe", &[("prim", &"rw"), ("name", &RWLOCK)]);
    match client.rwlock(RWLOCK).describe().await {
        Ok(d) => {
            clean &= d.holders.is_empty() && d.waiters.is_empty();
            w.ok(
                seq,
                &[("holders", &d.holders.len()), ("waiters", &d.waiters.len())],
            );
        }
        Err(error) => {
            clean = false;
            w.fail(seq, &error);
        }
    }

    let seq = w.begin("describe", &[("prim", &"pool"), ("name", &POOL)]);
    match client.pool(POOL, 0).describe().await {
        Ok(d) => {
            let holders = d.resources.iter().filter(|r| r.session_id != 0).count();
            clean &= holders == 0 && d.waiters.is_empty();
            w.ok(seq, &[("holders", &holders), ("waiters", &d.waiters.len())]);
        }
        Err(error) => {
            clean = false;
            w.fail(seq, &error);
        }
    }
    clean
}
