//! `syncd-bench`: throughput and latency of syncd, as ratios to a no-op
//! `Ping` measured in the same run (absolute numbers on shared machines are
//! noise; ratios are what to compare).
//!
//! Without `--addr` it starts its own `syncd` (the binary next to this one)
//! for each `--durability`, on port 0 with a temporary data directory (with
//! `--auth`, also with a token file of one admin token that every client
//! sends: compare a run with and one without to see what checking tokens
//! costs).
//!
//! Scenarios:
//! - `ping`: the floor: a unary RPC that does nothing;
//! - `lock-uncontended`: each client its own lock, acquire + release;
//! - `lock-contended`: every client on one lock; reports handoffs/s and the
//!   handoff latency (from the holder starting its release to the next
//!   waiter holding the grant);
//! - `semaphore-uncontended`: each client its own semaphore, acquire one
//!   permit + release;
//! - `semaphore-at-capacity`: every client on one semaphore of
//!   [`AT_CAPACITY_PERMITS`] permits, acquire (waiting) + release;
//! - `event-broadcast`: [`BROADCAST_WAITERS`] waiters spread over the
//!   clients wait on one event; the latency is from `set` until the last of
//!   them has its answer;
//! - `barrier`: [`BARRIER_PARTIES`] parties spread over the clients meet at
//!   one barrier; the latency is a whole round, from the first wait sent to
//!   the last party released;
//! - `queue-1` and `queue`: put + get + ack of one item, by one client and by
//!   every client on one shared queue; ops are items;
//! - `ratelimit-try`: one `TryTake` of one token per op, every client on one
//!   shared bucket whose rate and burst ([`NEVER_EMPTY`]) are so high that
//!   it never refuses (a refusal fails the run): the cost of a decision
//!   that takes a token;
//! - `ratelimit-batch`: one `TryTakeMany` of one token from each of
//!   [`BATCH_BUCKETS`] shared buckets (never empty either) per op; ops are
//!   requests, and a note after the table gives the bucket decisions/s
//!   (ops × [`BATCH_BUCKETS`]);
//! - `breaker`: allow + record success per op, every client on one shared
//!   breaker (which stays closed): two RPCs per op.
//!
//! With `--startup-items N` it also fills a data directory with N queued
//! items (through the engine in this process, no network) and times
//! `syncd serve` from start to `listening on`, against an empty directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use syncd::client::{Client, ClientOptions};

/// Measure syncd: ops/s, p50 and p99 latency, each as a ratio to `ping`.
#[derive(Parser, Debug)]
#[command(name = "syncd-bench", version)]
struct Args {
    /// Use a running syncd instead of starting one (then --durability only
    /// labels the rows).
    #[arg(long, env = "SYNCD_ADDR")]
    addr: Option<String>,

    /// Concurrent clients, each with its own connection and session.
    #[arg(long, short = 'c', default_value_t = 32)]
    clients: usize,

    /// How long each scenario runs (after a warm-up of a tenth of it).
    #[arg(long, short = 'd', default_value = "3s", value_parser = syncd::duration::parse)]
    duration: Duration,

    /// Rounds over every mode and scenario; the table shows medians.
    #[arg(long, short = 'r', default_value_t = 3)]
    rounds: usize,

    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ping,lock-uncontended,lock-contended,semaphore-uncontended,\
                         semaphore-at-capacity,event-broadcast,barrier,queue-1,queue,\
                         ratelimit-try,ratelimit-batch,breaker"
    )]
    scenarios: Vec<Scenario>,

    /// Durability modes of the syncd started for the run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sync,none")]
    durability: Vec<DurabilityArg>,

    /// The syncd binary to start (default: the one next to syncd-bench).
    #[arg(long)]
    syncd: Option<PathBuf>,

    /// Also time the start of a syncd whose data directory holds this many
    /// queued items (0: skip).
    #[arg(long, default_value_t = 0)]
    startup_items: u64,

    /// Start syncd with --auth-tokens (one admin token) and send the token
    /// with every call: the cost of checking tokens.
    #[arg(long, conflicts_with = "addr")]
    auth: bool,

    /// With --addr: the token to send (`authorization: Bearer SECRET`).
    #[arg(long, env = "SYNCD_TOKEN", requires = "addr", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Ping,
    LockUncontended,
    LockContended,
    SemaphoreUncontended,
    SemaphoreAtCapacity,
    EventBroadcast,
    Barrier,
    #[value(name = "queue-1")]
    QueueSingle,
    Queue,
    RatelimitTry,
    RatelimitBatch,
    Breaker,
}

/// Permits of the one semaphore of `semaphore-at-capacity`.
const AT_CAPACITY_PERMITS: u32 = 4;
/// Waiters woken by each `set` in `event-broadcast`.
const BROADCAST_WAITERS: usize = 1_000;
/// Parties of the barrier in `barrier`.
const BARRIER_PARTIES: usize = 100;
/// Rate (per second) and burst of the buckets of `ratelimit-try` and
/// `ratelimit-batch`: far above what any run can take, so no try is refused.
const NEVER_EMPTY: u32 = 1_000_000_000;
/// Buckets named by each `TryTakeMany` of `ratelimit-batch`.
const BATCH_BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    None,
}

impl DurabilityArg {
    fn as_str(self) -> &'static str {
        match self {
            DurabilityArg::Sync => "sync",
            DurabilityArg::None => "none",
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Latencies of one scenario, in microseconds.
struct Measured {
    scenario: Scenario,
    ops: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    /// Only for `lock-contended`: release-to-grant latencies.
    handoffs_us: Vec<u64>,
}

impl Measured {
    /// The rows this measurement gives: `false` for its own latencies, and
    /// `true` for the handoff latencies of `lock-contended`.
    fn views(&self) -> Vec<bool> {
        match self.scenario {
            Scenario::LockContended => vec![false, true],
            _ => vec![false],
        }
    }

    fn name(&self, handoff: bool) -> &'static str {
        match (self.scenario, handoff) {
            (Scenario::Ping, _) => "ping",
            (Scenario::LockUncontended, _) => UNCONTENDED,
            (Scenario::LockContended, false) => CONTENDED_WAIT,
            (Scenario::LockContended, true) => CONTENDED_HANDOFF,
            (Scenario::SemaphoreUncontended, _) => "semaphore-uncontended (acquire+release)",
            (Scenario::SemaphoreAtCapacity, _) => "semaphore-at-capacity (acquire wait+release)",
            (Scenario::EventBroadcast, _) => "event-broadcast (set until 1000 woken)",
            (Scenario::Barrier, _) => "barrier (round of 100 parties)",
            (Scenario::QueueSingle, _) => "queue, 1 client (put+get+ack)",
            (Scenario::Queue, _) => "queue, all clients (put+get+ack)",
            (Scenario::RatelimitTry, _) => "ratelimit-try (TryTake, one shared bucket)",
            (Scenario::RatelimitBatch, _) => RATELIMIT_BATCH,
            (Scenario::Breaker, _) => "breaker (allow+record success, one shared breaker)",
        }
    }

    fn summary(&self, handoff: bool) -> Summary {
        let latencies = if handoff {
            &self.handoffs_us
        } else {
            &self.latencies_us
        };
        Summary {
            ops_per_s: self.ops_per_s(),
            p50_ms: Measured::percentile(latencies, 0.50),
            p99_ms: Measured::percentile(latencies, 0.99),
        }
    }

    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn percentile(values: &[u64], p: f64) -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        let index = ((values.len() - 1) as f64 * p).round() as usize;
        values[index] as f64 / 1000.0
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    println!(
        "syncd-bench: {} clients, {} per scenario, median of {} rounds",
        args.clients,
        syncd::duration::format(args.duration),
        args.rounds
    );
    let mut servers = Vec::new();
    for durability in &args.durability {
        let (addr, token, server) = match &args.addr {
            Some(addr) => (addr.clone(), args.token.clone(), None),
            None => {
                let server = StartedSyncd::start(args.syncd.clone(), *durability, args.auth)?;
                (server.addr.clone(), server.token.clone(), Some(server))
            }
        };
        servers.push((*durability, addr, token, server));
    }
    let mut scenarios = args.scenarios.clone();
    // Ratios need the floor, measured right before the others.
    if !scenarios.contains(&Scenario::Ping) {
        scenarios.insert(0, Scenario::Ping);
    }
    scenarios.sort_by_key(|s| *s != Scenario::Ping);

    // Rounds interleave every mode and scenario, so that a burst of noise
    // on this shared machine hits one round, not one row.
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..args.rounds {
        for (durability, addr, token, _) in &servers {
            let mut ping = None;
            for scenario in &scenarios {
                let clients = match scenario {
                    Scenario::QueueSingle => 1,
                    _ => args.clients,
                };
                let measured =
                    measure(addr, token.as_deref(), *scenario, clients, args.duration).await?;
                if *scenario == Scenario::Ping {
                    ping = Some(measured.summary(false));
                }
                let floor = ping.expect("ping runs first");
                for handoff in measured.views() {
                    let summary = measured.summary(handoff);
                    row_for(&mut rows, durability.as_str(), measured.name(handoff))
                        .push(summary, floor);
                }
            }
        }
    }
    print_table(&rows);
    print_sync_vs_none(&rows);
    print_batch_decisions(&rows);
    if args.startup_items > 0 {
        startup::report(args.syncd.clone(), args.startup_items).await?;
    }
    for (_, _, _, server) in servers.iter_mut() {
        if let Some(server) = server.as_mut() {
            server.stop();
        }
    }
    Ok(())
}

/// One round's figures for one row.
#[derive(Clone, Copy)]
struct Summary {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A table row: every round's figures and ratios to that round's ping.
struct Row {
    durability: &'static str,
    name: &'static str,
    rounds: Vec<(Summary, f64, f64)>,
}

impl Row {
    fn push(&mut self, summary: Summary, ping: Summary) {
        let ops_ratio = summary.ops_per_s / ping.ops_per_s;
        let p50_ratio = summary.p50_ms / ping.p50_ms;
        self.rounds.push((summary, ops_ratio, p50_ratio));
    }

    fn median(&self, pick: impl Fn(&(Summary, f64, f64)) -> f64) -> f64 {
        let mut values: Vec<f64> = self.rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

fn row_for<'a>(
    rows: &'a mut Vec<Row>,
    durability: &'static str,
    name: &'static str,
) -> &'a mut Row {
    let index = match rows
        .iter()
        .position(|r| r.durability == durability && r.name == name)
    {
        Some(index) => index,
        None => {
            rows.push(Row {
                durability,
                name,
                rounds: Vec::new(),
            });
            rows.len() - 1
        }
    };
    &mut rows[index]
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| durability | scenario | ops/s | p50 ms | p99 ms | ops/s ÷ ping | p50 ÷ ping p50 |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            row.durability,
            row.name,
            row.median(|r| r.0.ops_per_s),
            row.median(|r| r.0.p50_ms),
            row.median(|r| r.0.p99_ms),
            row.median(|r| r.1),
            row.median(|r| r.2),
        );
    }
}

/// Group commit at work: `sync` throughput as a share of `none`, per round.
fn print_sync_vs_none(rows: &[Row]) {
    let find = |durability: &str, name: &str| {
        rows.iter()
            .find(|r| r.durability == durability && r.name == name)
    };
    for name in [UNCONTENDED, CONTENDED_HANDOFF] {
        let (Some(sync), Some(none)) = (find("sync", name), find("none", name)) else {
            continue;
        };
        let mut shares: Vec<f64> = sync
            .rounds
            .iter()
            .zip(&none.rounds)
            .map(|(s, n)| s.0.ops_per_s / n.0.ops_per_s)
            .collect();
        shares.sort_by(f64::total_cmp);
        if let Some(median) = shares.get(shares.len() / 2) {
            println!("{name}: sync ops/s ÷ none ops/s = {median:.2} (median over rounds)");
        }
    }
}

/// Each `ratelimit-batch` op decides for this many buckets: the bucket
/// decisions per second, per durability.
fn print_batch_decisions(rows: &[Row]) {
    for row in rows.iter().filter(|r| r.name == RATELIMIT_BATCH) {
        let ops = row.median(|r| r.0.ops_per_s);
        println!(
            "{RATELIMIT_BATCH}, {}: {:.0} bucket decisions/s ({ops:.0} requests/s × \
             {BATCH_BUCKETS} buckets; median over rounds)",
            row.durability,
            ops * BATCH_BUCKETS as f64
        );
    }
}

const UNCONTENDED: &str = "lock-uncontended (acquire+release)";
const RATELIMIT_BATCH: &str = "ratelimit-batch (TryTakeMany of 10 buckets)";
const CONTENDED_WAIT: &str = "lock-contended (acquire wait)";
const CONTENDED_HANDOFF: &str = "lock-contended (handoff)";

async fn measure(
    addr: &str,
    token: Option<&str>,
    scenario: Scenario,
    clients: usize,
    duration: Duration,
) -> Result<Measured, Error> {
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        let options = ClientOptions {
            session_ttl: Duration::from_secs(30),
            client_name: "syncd-bench".into(),
            token: token.map(str::to_owned),
            ..ClientOptions::default()
        };
        connected.push(Client::connect_with(addr.to_owned(), options).await?);
    }
    let warmup = duration / 10;
    let epoch = Instant::now();
    let record_from = epoch + warmup;
    let stop_at = record_from + duration;
    let release_stamp = Arc::new(AtomicU64::new(0));
    let times = Times {
        epoch,
        record_from,
        stop_at,
    };
    let tasks = match scenario {
        Scenario::EventBroadcast => vec![tokio::spawn(broadcast_rounds(connected.clone(), times))],
        Scenario::Barrier => vec![tokio::spawn(barrier_rounds(connected.clone(), times))],
        _ => {
            let mut tasks = Vec::with_capacity(clients);
            for (index, client) in connected.iter().enumerate() {
                let client = client.clone();
                let stamp = release_stamp.clone();
                tasks.push(tokio::spawn(async move {
                    match scenario {
                        Scenario::Ping => ping_loop(client, times).await,
                        Scenario::LockUncontended => {
                            let lock = client.lock(format!("bench-uncontended-{index}"));
                            cycle_loop(times, None, || lock.acquire()).await
                        }
                        Scenario::LockContended => {
                            let lock = client.lock("bench-contended");
                            cycle_loop(times, Some(stamp), || lock.acquire()).await
                        }
                        Scenario::SemaphoreUncontended => {
                            let name = format!("bench-semaphore-{index}");
                            let semaphore = client.semaphore(name, AT_CAPACITY_PERMITS);
                            cycle_loop(times, None, || semaphore.acquire(1)).await
                        }
                        Scenario::SemaphoreAtCapacity => {
                            let name = "bench-semaphore-at-capacity";
                            let semaphore = client.semaphore(name, AT_CAPACITY_PERMITS);
                            cycle_loop(times, None, || semaphore.acquire(1)).await
                        }
                        Scenario::QueueSingle | Scenario::Queue => {
                            queue_loop(client.queue("bench-queue"), times).await
                        }
                        Scenario::RatelimitTry => {
                            let bucket =
                                client.rate_limit("bench-ratelimit", NEVER_EMPTY, NEVER_EMPTY);
                            op_loop(times, || try_take(&bucket)).await
                        }
                        Scenario::RatelimitBatch => {
                            let buckets: Vec<syncd::client::RateLimit> = (0..BATCH_BUCKETS)
                                .map(|i| {
                                    let name = format!("bench-ratelimit-batch-{i}");
                                    client.rate_limit(name, NEVER_EMPTY, NEVER_EMPTY)
                                })
                                .collect();
                            let asks: Vec<(&syncd::client::RateLimit, u32)> =
                                buckets.iter().map(|b| (b, 1)).collect();
                            op_loop(times, || try_take_many(&client, &asks)).await
                        }
                        Scenario::Breaker => {
                            let breaker = client.breaker("bench-breaker").with_settings(
                                syncd::client::BreakerSettings {
                                    failure_threshold: 5,
                                    ..Default::default()
                                },
                            );
                            op_loop(times, || allow_and_succeed(&breaker)).await
                        }
                        Scenario::EventBroadcast | Scenario::Barrier => {
                            unreachable!("driven by one task")
                        }
                    }
                }));
            }
            tasks
        }
    };
    let mut latencies_us = Vec::new();
    let mut handoffs_us = Vec::new();
    for task in tasks {
        let (latencies, handoffs) = task.await??;
        latencies_us.extend(latencies);
        handoffs_us.extend(handoffs);
    }
    for client in connected {
        let _ = client.close().await;
    }
    latencies_us.sort_unstable();
    handoffs_us.sort_unstable();
    Ok(Measured {
        scenario,
        ops: latencies_us.len(),
        seconds: duration.as_secs_f64(),
        latencies_us,
        handoffs_us,
    })
}

#[derive(Clone, Copy)]
struct Times {
    epoch: Instant,
    record_from: Instant,
    stop_at: Instant,
}

impl Times {
    fn micros_since_epoch(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_micros() as u64
    }
}

type Samples = Result<(Vec<u64>, Vec<u64>), Error>;

async fn ping_loop(client: Client, times: Times) -> Samples {
    let mut latencies = Vec::new();
    loop {
        let start = Instant::now();
        if start >= times.stop_at {
            return Ok((latencies, Vec::new()));
        }
        client.ping().await?;
        if start >= times.record_from {
            latencies.push(start.elapsed().as_micros() as u64);
        }
    }
}

/// A hold that the benchmark can give back.
trait Releasable {
    async fn give_back(self) -> Result<(), syncd::client::Error>;
}

impl Releasable for syncd::client::LockGuard {
    async fn give_back(self) -> Result<(), syncd::client::Error> {
        self.release().await
    }
}

impl Releasable for syncd::client::SemaphoreGuard {
    async fn give_back(self) -> Result<(), syncd::client::Error> {
        self.release().await
    }
}

/// Acquire + release in a loop. With `release_stamp` (contended), the
/// holder stamps the moment it starts releasing, and the next holder, if it
/// was already waiting then, records the handoff latency.
async fn cycle_loop<G, F>(
    times: Times,
    release_stamp: Option<Arc<AtomicU64>>,
    acquire: impl Fn() -> F,
) -> Samples
where
    G: Releasable,
    F: std::future::Future<Output = Result<G, syncd::client::Error>>,
{
    let mut latencies = Vec::new();
    let mut handoffs = Vec::new();
    loop {
        let start = Instant::now();
        if start >= times.stop_at {
            return Ok((latencies, handoffs));
        }
        let guard = acquire().await?;
        let granted = Instant::now();
        let recording = start >= times.record_from;
        if let Some(stamp) = &release_stamp {
            let released_us = stamp.load(Ordering::Acquire);
            let waited_for_it = released_us > times.micros_since_epoch(start);
            if recording && waited_for_it {
                handoffs.push(times.micros_since_epoch(granted) - released_us);
            }
            stamp.store(times.micros_since_epoch(Instant::now()), Ordering::Release);
        }
        guard.give_back().await?;
        if recording {
            let end = if release_stamp.is_some() {
                granted
            } else {
                Instant::now()
            };
            latencies.push(end.duration_since(start).as_micros() as u64);
        }
    }
}

/// `op` in a loop; the sample is one op.
async fn op_loop<F>(times: Times, op: impl Fn() -> F) -> Samples
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    let mut latencies = Vec::new();
    loop {
        let start = Instant::now();
        if start >= times.stop_at {
            return Ok((latencies, Vec::new()));
        }
        op().await?;
        if start >= times.record_from {
            latencies.push(start.elapsed().as_micros() as u64);
        }
    }
}

/// One token from a bucket that is never empty.
async fn try_take(bucket: &syncd::client::RateLimit) -> Result<(), Error> {
    if !bucket.try_acquire(1).await?.taken {
        return Err(format!(
            "{} refused a token; it should never be empty",
            bucket.name()
        )
        .into());
    }
    Ok(())
}

/// One token from each of the buckets, which are never empty.
async fn try_take_many(
    client: &Client,
    asks: &[(&syncd::client::RateLimit, u32)],
) -> Result<(), Error> {
    if !client.try_acquire_many(asks).await?.taken {
        return Err("a TryTakeMany was refused; its buckets should never be empty".into());
    }
    Ok(())
}

/// Allow, then record a success (the breaker stays closed).
async fn allow_and_succeed(breaker: &syncd::client::CircuitBreaker) -> Result<(), Error> {
    match breaker.allow().await? {
        syncd::client::Allowed::Permit(permit) => {
            permit.success().await?;
            Ok(())
        }
        syncd::client::Allowed::Rejected { state, .. } => {
            Err(format!("the bench breaker rejected a call ({state:?})").into())
        }
    }
}

/// Put + get + ack of one item in a loop; the sample is the whole cycle.
async fn queue_loop(queue: syncd::client::Queue, times: Times) -> Samples {
    let mut latencies = Vec::new();
    loop {
        let start = Instant::now();
        if start >= times.stop_at {
            return Ok((latencies, Vec::new()));
        }
        queue.put(b"0123456789abcdef".to_vec(), 0).await?;
        let item = queue.get().await?;
        queue.ack(item.id).await?;
        if start >= times.record_from {
            latencies.push(start.elapsed().as_micros() as u64);
        }
    }
}

/// Rounds of: every waiter queues on a clear event, then one `set`; the
/// sample is the time from `set` until the last waiter has its answer.
async fn broadcast_rounds(clients: Vec<Client>, times: Times) -> Samples {
    let name = "bench-broadcast";
    let control = clients[0].event(name);
    let mut latencies = Vec::new();
    // At least one recorded round, however slow.
    while Instant::now() < times.stop_at || latencies.is_empty() {
        control.clear().await?;
        let mut waiters = tokio::task::JoinSet::new();
        for index in 0..BROADCAST_WAITERS {
            let event = clients[index % clients.len()].event(name);
            waiters.spawn(async move {
                event.wait().await?;
                Ok::<Instant, syncd::client::Error>(Instant::now())
            });
        }
        while control.describe().await?.waiters.len() < BROADCAST_WAITERS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let set_at = Instant::now();
        control.set().await?;
        let mut last = set_at;
        while let Some(woken) = waiters.join_next().await {
            last = last.max(woken??);
        }
        if set_at >= times.record_from {
            latencies.push(last.duration_since(set_at).as_micros() as u64);
        }
    }
    Ok((latencies, Vec::new()))
}

/// Rounds of a barrier of `BARRIER_PARTIES`; the sample is the time from
/// the first wait sent until the last party is released.
async fn barrier_rounds(clients: Vec<Client>, times: Times) -> Samples {
    let mut latencies = Vec::new();
    while Instant::now() < times.stop_at || latencies.is_empty() {
        let start = Instant::now();
        let mut parties = tokio::task::JoinSet::new();
        for index in 0..BARRIER_PARTIES {
            let barrier =
                clients[index % clients.len()].barrier("bench-barrier", BARRIER_PARTIES as u32);
            parties.spawn(async move { barrier.wait().await });
        }
        while let Some(passed) = parties.join_next().await {
            passed??;
        }
        if start >= times.record_from {
            latencies.push(start.elapsed().as_micros() as u64);
        }
    }
    Ok((latencies, Vec::new()))
}

/// A syncd started for the run, stopped at the end.
struct StartedSyncd {
    child: Child,
    addr: String,
    /// The admin token's secret, with `--auth`.
    token: Option<String>,
    _dir: tempfile::TempDir,
}

impl StartedSyncd {
    fn start(
        binary: Option<PathBuf>,
        durability: DurabilityArg,
        auth: bool,
    ) -> Result<StartedSyncd, Error> {
        let binary = match binary {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("syncd"),
        };
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--durability"])
            .arg(durability.as_str())
            .arg("--data")
            .arg(dir.path().join("data"));
        let token = if auth {
            let secret = format!("bench-{}-{}", std::process::id(), durability.as_str());
            let tokens = dir.path().join("tokens.toml");
            std::fs::write(
                &tokens,
                format!(
                    "[[token]]\nname = \"bench\"\nsecret = \"{secret}\"\nrole = \"admin\"\n\
                     prefixes = [\"\"]\n"
                ),
            )?;
            command.arg("--auth-tokens").arg(tokens);
            Some(secret)
        } else {
            None
        };
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected syncd output {line:?}"))?;
        Ok(StartedSyncd {
            child,
            addr: format!("http://{addr}"),
            token,
            _dir: dir,
        })
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for StartedSyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long `syncd serve` takes to start with many items stored.
mod startup {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use syncd::core::{Command as CoreCommand, Reply};
    use syncd::engine::{self, Durability, EngineConfig};
    use syncd::store::SledStore;

    use super::Error;

    /// Items put by one task of the filler.
    const PER_TASK: u64 = 10_000;

    pub async fn report(binary: Option<PathBuf>, items: u64) -> Result<(), Error> {
        let binary = match binary {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("syncd"),
        };
        let empty = tempfile::tempdir()?;
        let full = tempfile::tempdir()?;
        let filled_in = fill(full.path(), items).await?;
        let empty_ms = time_start(&binary, empty.path())?;
        let full_ms = time_start(&binary, full.path())?;
        println!(
            "startup: {full_ms:.0} ms with {items} queued items (filled in {:.1} s), \
             {empty_ms:.0} ms empty",
            filled_in.as_secs_f64()
        );
        Ok(())
    }

    /// Puts `items` items into one queue through an engine in this process.
    async fn fill(dir: &Path, items: u64) -> Result<Duration, Error> {
        let started = Instant::now();
        let store = SledStore::open(&dir.join("data")).map_err(|e| e.0)?;
        let config = EngineConfig {
            durability: Durability::None,
            ..EngineConfig::default()
        };
        let (engine, task) = engine::start(store, config).map_err(|e| e.0)?;
        let session = CoreCommand::CreateSession {
            ttl_ms: 3_600_000,
            client_name: "syncd-bench".into(),
            host: String::new(),
            owner: String::new(),
        };
        let Ok(Reply::SessionCreated { session_id, .. }) = engine.call(session).await else {
            return Err("cannot create a session".into());
        };
        let mut tasks = tokio::task::JoinSet::new();
        for first in (0..items).step_by(PER_TASK as usize) {
            let engine = engine.clone();
            let count = PER_TASK.min(items - first);
            tasks.spawn(async move {
                for _ in 0..count {
                    let mut stored = engine
                        .wait(|waiter| CoreCommand::QueuePut {
                            session_id,
                            name: "bench-startup".into(),
                            waiter,
                            timeout_ms: None,
                            value: b"0123456789abcdef".to_vec(),
                            priority: 0,
                            capacity: None,
                            max_deliveries: 0,
                            put_id: 0,
                        })
                        .await;
                    match stored.peek().await {
                        Some(Ok(Reply::Stored { .. })) => {}
                        other => return Err(format!("put failed: {other:?}")),
                    }
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        engine
            .call(CoreCommand::CloseSession {
                session_id,
                reason: String::new(),
            })
            .await
            .ok();
        engine.shutdown().await;
        task.await?.map_err(|e| e.0)?;
        Ok(started.elapsed())
    }

    /// Milliseconds from spawning `syncd serve` to its `listening on` line.
    fn time_start(binary: &Path, dir: &Path) -> Result<f64, Error> {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        let _ = child.kill();
        let _ = child.wait();
        if !line.starts_with("listening on") {
            return Err(format!("syncd did not start: {line:?}").into());
        }
        Ok(elapsed)
    }
}
