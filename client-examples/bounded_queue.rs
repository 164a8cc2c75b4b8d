//! Seed exercise 6 across processes: a producer process puts the items 0
//! to 9 into a syncd queue of capacity 3; a slow consumer process (20 ms
//! per item) gets, processes and acks them.
//!
//! Backpressure is checked, not assumed, and without relying on timing:
//! before it acks item `k`, while the producer still has item `k + 3` to
//! put, the consumer waits until the server shows that put waiting for
//! room while the queue holds 3 items (`waiting_puts == 1`, `ready +
//! in_flight == 3`; the capacity counts items in flight, which are not gone
//! until acked). So every put beyond the third is seen held back by a full
//! queue, and is let through only by the consumer's ack.
//!
//! The consumer requires every item exactly once and in order: the values
//! `0`..`9` in sequence, increasing item ids, each delivered for the first
//! time, and nothing left once it has the ten (a get that finds nothing).
//!
//! The order of the lines is guaranteed: the producer prints `Producer
//! done` once its last put is stored and then sets an event; the consumer
//! prints `Consumer done` only after it acked all ten and saw that event
//! set; the coordinator prints `All 10 items processed` after both exited
//! successfully and the server shows the queue empty. The queue and the
//! event have fresh names each run; both are gone from the server at the
//! end (an empty queue without waiters and a clear event without waiters
//! do not exist).
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example bounded_queue
//! Prints the three lines and exits 0; on a failed check says what went
//! wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use support::{say, Error, WAIT_LIMIT};
use syncd::client::{Client, Queue};

const CAPACITY: u32 = 3;
const ITEMS: u32 = 10;
/// How long the consumer "processes" an item.
const PROCESSING: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    support::main("bounded_queue", coordinator, worker)
}

fn coordinator() -> Result<(), Error> {
    let queue = support::unique_name("bounded_queue", "items");
    let done = support::unique_name("bounded_queue", "producer-done");
    let mut workers = support::Workers::new();
    workers.spawn("consumer", ["consumer", &queue, &done])?;
    workers.spawn("producer", ["producer", &queue, &done])?;
    workers.wait()?;
    support::block_on(async {
        let client = Client::connect(support::addr()).await?;
        let state = client.queue(queue.clone()).describe().await?;
        if state.ready + state.in_flight != 0 || state.waiting_puts + state.waiting_gets != 0 {
            return Err(format!("queue {queue:?} is not empty at the end: {state:?}").into());
        }
        client.close().await?;
        Ok(())
    })?;
    println!("All {ITEMS} items processed");
    Ok(())
}

/// `worker producer|consumer QUEUE DONE_EVENT`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [role, queue, done] = args.as_slice() else {
        return Err("usage: bounded_queue worker producer|consumer QUEUE DONE_EVENT".into());
    };
    let client = Client::connect(support::addr()).await?;
    let queue = client.queue(queue.clone()).with_capacity(CAPACITY);
    let done = client.event(done.clone());
    match role.as_str() {
        "producer" => {
            for index in 0..ITEMS {
                // Waits while 3 items are ready or in flight.
                queue.put(index.to_string(), 0).await?;
            }
            say("Producer done")?;
            done.set().await?;
        }
        "consumer" => {
            consume(&queue).await?;
            done.wait_timeout(WAIT_LIMIT).await?;
            say("Consumer done")?;
            // A clear event without waiters leaves nothing on the server.
            done.clear().await?;
        }
        other => return Err(format!("unknown role {other:?}").into()),
    }
    client.close().await?;
    Ok(())
}

/// Gets, checks, processes and acks the ten items in order; before each
/// ack that lets a put through, waits to see that put held back.
async fn consume(queue: &Queue) -> Result<(), Error> {
    let mut last_id = 0;
    for index in 0..ITEMS {
        let item = queue.get_timeout(WAIT_LIMIT).await?;
        let value = String::from_utf8_lossy(&item.value).into_owned();
        if value != index.to_string() || item.id <= last_id || item.deliveries != 1 {
            return Err(format!(
                "expected item {index} delivered once, after item id {last_id}; got {value:?} \
                 (id {}, delivery {})",
                item.id, item.deliveries
            )
            .into());
        }
        last_id = item.id;
        tokio::time::sleep(PROCESSING).await;
        if index + CAPACITY < ITEMS {
            let blocked = index + CAPACITY;
            support::eventually(
                &format!("the put of item {blocked} to wait for room in a full queue"),
                WAIT_LIMIT,
                || async {
                    let state = queue.describe().await?;
                    if state.ready + state.in_flight > u64::from(CAPACITY) {
                        return Err(format!("queue above its capacity: {state:?}").into());
                    }
                    Ok(state.waiting_puts == 1
                        && state.ready + state.in_flight == u64::from(CAPACITY))
                },
            )
            .await?;
        }
        queue.ack(item.id).await?;
    }
    match queue.get_timeout(Duration::ZERO).await {
        Err(syncd::client::Error::Timeout(_)) => Ok(()),
        Ok(item) => Err(format!("an item beyond the {ITEMS}: {item:?}").into()),
        Err(error) => Err(error.into()),
    }
}
