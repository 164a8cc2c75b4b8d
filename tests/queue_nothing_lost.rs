//! Nothing lost: 3 producer and 3 consumer processes (the `queue_load`
//! example) share one durable queue while syncd is killed with SIGKILL
//! twice and restarted on the same data directory and port.
//!
//! Each producer puts 1,000 numbered items (disjoint ranges) and reports
//! every put the server acknowledged (`put <n> <item id>`); each consumer
//! reports every item it received (`got <n> <item id> <deliveries>`) and
//! every ack the server acknowledged (`acked <n>`), and stops once no item
//! came for a few seconds. The kills come after some puts were acknowledged (the test
//! reads the producers' reports as they come; it does not sleep and hope).
//!
//! Then, with delivery at least once:
//! - every acknowledged put was consumed (received and acked) at least
//!   once, with its own value, and the queue is empty at the end;
//! - nothing unknown was consumed: every item received is one whose put was
//!   acknowledged (or, explained, one whose producer had to try a put again
//!   as a new put after the client gave up, which may have stored it twice);
//! - an item received more than once was acked at most once: every
//!   redelivery follows a delivery whose ack was not acknowledged (a `got`
//!   without its `acked`), as an acknowledged ack removes an item for good.
//!
//! `cargo test --test queue_nothing_lost` does not build the example: run
//! `cargo build --examples` first (a plain `cargo test` does both). A binary
//! older than its sources fails the test instead of testing old code.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{wait_bounded, Syncd};

const QUEUE: &str = "nothing-lost";
const PRODUCERS: u64 = 3;
const ITEMS_PER_PRODUCER: u64 = 1_000;
const CONSUMERS: usize = 3;
/// How long an item stays in flight unacked: an item whose get answer was
/// lost with the server comes back after it. Long enough that an ack
/// retried across a restart finds its item still in flight.
const VISIBILITY_TIMEOUT: &str = "4s";
/// A consumer stops when no item came for this long: longer than the
/// visibility timeout, so that items in flight under a lost answer come
/// back while consumers still wait.
const UNTIL_IDLE: &str = "6s";
/// Acknowledged puts between one restart and the next kill.
const PUTS_BETWEEN_KILLS: usize = 300;
/// The most the whole load may take.
const LOAD_LIMIT: Duration = Duration::from_secs(50);

/// A `queue_load` process whose stdout lines are collected as they come.
struct Load {
    label: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Load {
    fn spawn(bin: &Path, addr: &str, label: String, args: &[String]) -> Load {
        let mut child = Command::new(bin)
            .args(args)
            .env("SYNCD_ADDR", addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Load {
            label,
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// How many lines so far start with `word` and a space.
    fn count(&self, word: &str) -> usize {
        let prefix = format!("{word} ");
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l.starts_with(&prefix)).count()
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (bounded by `deadline`) for the exit, then for the whole
    /// output; returns the status (`None`: killed at the deadline), the
    /// stdout lines and the stderr text.
    fn finish(mut self, deadline: Instant) -> (Option<ExitStatus>, Vec<String>, String) {
        let limit = deadline.saturating_duration_since(Instant::now());
        let status = wait_bounded(&mut self.child, limit);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader");
        }
        let stderr = (self.stderr.take())
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        (status, lines, stderr)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn total(loads: &[Load], word: &str) -> usize {
    loads.iter().map(|l| l.count(word)).sum()
}

/// Waits until the producers reported `puts` acknowledged puts in all, or
/// all of them exited; panics at `deadline`.
fn wait_for_puts(producers: &mut [Load], puts: usize, deadline: Instant) {
    loop {
        if total(producers, "put") >= puts || producers.iter_mut().all(|p| p.has_exited()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "producers reported only {} acknowledged puts, waiting for {puts}",
            total(producers, "put")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One delivery of an item to a consumer, as that consumer reported it.
#[derive(Debug)]
struct Delivery {
    consumer: usize,
    value: String,
    item_id: u64,
    /// The server's delivery count, this delivery included.
    count: u32,
    acked: bool,
}

/// Parses a consumer's lines into its deliveries, in order: each `got` is
/// followed by its `acked` or `ackfailed` (or by nothing, if the consumer
/// was stopped), `getretry`/`ackretry` lines only explain.
fn deliveries(consumer: usize, lines: &[String]) -> Vec<Delivery> {
    let mut out: Vec<Delivery> = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["got", value, item_id, count] => out.push(Delivery {
                consumer,
                value: value.to_string(),
                item_id: item_id.parse().expect("item id"),
                count: count.parse().expect("delivery count"),
                acked: false,
            }),
            ["acked", value] => {
                let last = out.last_mut().expect("acked after a got");
                assert_eq!(&last.value, value, "consumer {consumer}: {line:?}");
                assert!(!last.acked, "consumer {consumer}: acked twice: {line:?}");
                last.acked = true;
            }
            ["ackfailed", value, ..] | ["ackretry", value] => {
                let last = out.last().expect("ack after a got");
                assert_eq!(&last.value, value, "consumer {consumer}: {line:?}");
            }
            ["getretry"] => {}
            _ => panic!("consumer {consumer}: unexpected line {line:?}"),
        }
    }
    out
}

#[test]
fn no_acknowledged_item_is_lost_across_two_kill9_restarts() {
    let started = Instant::now();
    let bin = common::example_bin("queue_load");
    let mut syncd = Syncd::start();
    let port = syncd.addr.clone();
    let deadline = started + LOAD_LIMIT;

    let mut consumers: Vec<Load> = (0..CONSUMERS)
        .map(|index| {
            let args = [
                "consume",
                "--queue",
                QUEUE,
                "--until-idle",
                UNTIL_IDLE,
                "--visibility-timeout",
                VISIBILITY_TIMEOUT,
            ];
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            Load::spawn(&bin, &syncd.addr, format!("consumer {index}"), &args)
        })
        .collect();
    let mut producers: Vec<Load> = (0..PRODUCERS)
        .map(|index| {
            let from = index * ITEMS_PER_PRODUCER;
            let to = from + ITEMS_PER_PRODUCER;
            let args = [
                "produce".to_string(),
                "--queue".to_string(),
                QUEUE.to_string(),
                "--from".to_string(),
                from.to_string(),
                "--to".to_string(),
                to.to_string(),
            ];
            Load::spawn(&bin, &syncd.addr, format!("producer {index}"), &args)
        })
        .collect();

    // Two kills, each after more puts were acknowledged.
    let mut kills = Vec::new();
    let mut threshold = PUTS_BETWEEN_KILLS;
    for _ in 0..2 {
        wait_for_puts(&mut producers, threshold, deadline);
        let (puts, acks) = (total(&producers, "put"), total(&consumers, "acked"));
        syncd.kill9();
        syncd.restart();
        assert_eq!(syncd.addr, port, "syncd must come back on its port");
        kills.push(format!("after {puts} puts and {acks} acks"));
        threshold = total(&producers, "put") + PUTS_BETWEEN_KILLS;
    }

    let mut put_ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut retried_puts: BTreeSet<String> = BTreeSet::new();
    for producer in producers.drain(..) {
        let label = producer.label.clone();
        let (status, lines, stderr) = producer.finish(deadline);
        assert!(
            status.is_some_and(|s| s.success()),
            "{label} failed ({status:?}):\n{stderr}"
        );
        for line in &lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["put", value, item_id] => {
                    let item_id: u64 = item_id.parse().expect("item id");
                    let earlier = put_ids.insert(value.to_string(), item_id);
                    assert!(earlier.is_none(), "{label}: {value} put twice");
                }
                ["putretry", value] => {
                    retried_puts.insert(value.to_string());
                }
                _ => panic!("{label}: unexpected line {line:?}"),
            }
        }
    }
    let expected_puts = (PRODUCERS * ITEMS_PER_PRODUCER) as usize;
    assert_eq!(put_ids.len(), expected_puts, "every put acknowledged");

    let mut all: Vec<Delivery> = Vec::new();
    for (index, consumer) in consumers.drain(..).enumerate() {
        let label = consumer.label.clone();
        let (status, lines, stderr) = consumer.finish(deadline + Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{label} failed ({status:?}):\n{stderr}"
        );
        all.extend(deliveries(index, &lines));
    }

    // Nothing left on the server.
    let state = describe_queue(&syncd.addr);
    assert_eq!(
        (state.ready, state.in_flight),
        (0, 0),
        "items left in the queue: {state:?}"
    );

    // Nothing unknown consumed; every delivery has its put's value.
    let id_values: BTreeMap<u64, &String> = put_ids.iter().map(|(v, id)| (*id, v)).collect();
    let mut unknown_explained = 0;
    for delivery in &all {
        match id_values.get(&delivery.item_id) {
            Some(value) => assert_eq!(
                *value, &delivery.value,
                "item {} delivered with another value: {delivery:?}",
                delivery.item_id
            ),
            None => {
                assert!(
                    retried_puts.contains(&delivery.value),
                    "an item nobody's acknowledged put stored was consumed: {delivery:?}"
                );
                unknown_explained += 1;
            }
        }
    }

    // Every acknowledged put consumed; duplicates explained.
    let mut by_id: BTreeMap<u64, Vec<&Delivery>> = BTreeMap::new();
    for delivery in &all {
        by_id.entry(delivery.item_id).or_default().push(delivery);
    }
    let mut lost = Vec::new();
    for (value, item_id) in &put_ids {
        let acked = by_id
            .get(item_id)
            .is_some_and(|ds| ds.iter().any(|d| d.acked));
        if !acked {
            lost.push(format!(
                "{value} (item {item_id}): {:?}",
                by_id.get(item_id)
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged puts were never consumed and acked: {lost:?}",
        lost.len()
    );
    let mut duplicates = 0;
    let mut explained = 0;
    let mut unexplained = Vec::new();
    for (item_id, ds) in &by_id {
        if ds.len() < 2 {
            continue;
        }
        duplicates += 1;
        let acked = ds.iter().filter(|d| d.acked).count();
        if acked <= 1 {
            explained += 1;
        } else {
            unexplained.push(format!("item {item_id}: {ds:?}"));
        }
    }
    let consumed = by_id
        .values()
        .filter(|ds| ds.iter().any(|d| d.acked))
        .count();
    let ack_failures = all.iter().filter(|d| !d.acked).count();
    // Deliveries the server counted but no consumer reported: answers
    // lost with the server, their items back after the visibility timeout.
    let mut unseen = 0;
    for (item_id, ds) in &by_id {
        let counted = ds.iter().map(|d| d.count).max().unwrap_or(0);
        let reported = u32::try_from(ds.len()).expect("few deliveries");
        assert!(
            counted >= reported,
            "item {item_id}: the server counted {counted} deliveries, consumers saw more: {ds:?}"
        );
        unseen += counted - reported;
    }
    let mut per_consumer = vec![0; CONSUMERS];
    for delivery in &all {
        per_consumer[delivery.consumer] += 1;
    }
    eprintln!(
        "nothing lost: {} acknowledged puts ({} retried as new puts); {} deliveries \
         {per_consumer:?}; {consumed} items consumed; {duplicates} delivered more than once \
         ({explained} explained by a delivery without an acknowledged ack); {ack_failures} \
         deliveries without an acknowledged ack; {unseen} deliveries lost on the way and \
         redelivered; {unknown_explained} unknown items from retried puts; kills {}; \
         {:.1?} in all",
        put_ids.len(),
        retried_puts.len(),
        all.len(),
        kills.join(", "),
        started.elapsed()
    );
    assert!(
        unexplained.is_empty(),
        "items acked more than once (an acknowledged ack must remove an item for good): \
         {unexplained:?}"
    );
}

/// The queue's state as the server sees it now.
fn describe_queue(addr: &str) -> syncd::proto::v1::DescribeQueueResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = syncd::client::Client::connect(addr).await.expect("connect");
        let state = client.queue(QUEUE).describe().await.expect("describe");
        client.close().await.expect("close");
        state
    })
}
