//! Seed exercise 3 across processes: a worker process waits on a syncd
//! event that an initializer process sets once its "startup" (20 ms) is
//! done.
//!
//! The order of the three lines is guaranteed, not lucky, although two
//! processes print them to one stdout (each line is flushed as it is
//! written): the worker prints `Worker waiting for signal` before it
//! starts to wait; the initializer starts its 20 ms only once the server
//! shows the worker waiting, then prints `Signal sent` and sets the event;
//! the worker prints its last line only after its wait returned.
//!
//! The checks: the event (a fresh name each run, so that one left set by an
//! earlier run cannot make this pass) is clear when the worker starts;
//! `set` must report exactly one waiter woken (the worker, in another
//! process); the worker must find it set once it wakes, and then clears
//! it (a clear event without waiters leaves nothing on the server).
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example event
//! Prints the three lines and exits 0; on a failed check says what went
//! wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use support::{say, Error, WAIT_LIMIT};
use syncd::client::Client;

const STARTUP: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    support::main("event", coordinator, worker)
}

fn coordinator() -> Result<(), Error> {
    let event = support::unique_name("event", "ready");
    let mut workers = support::Workers::new();
    workers.spawn("worker", ["worker", &event])?;
    workers.spawn("initializer", ["initializer", &event])?;
    workers.wait()
}

/// `worker worker|initializer EVENT`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [role, event] = args.as_slice() else {
        return Err("usage: event worker worker|initializer EVENT".into());
    };
    let client = Client::connect(support::addr()).await?;
    let event = client.event(event.clone());
    match role.as_str() {
        "worker" => {
            if event.is_set().await? {
                return Err(format!("event {:?} is set before anyone set it", event.name()).into());
            }
            say("Worker waiting for signal")?;
            event.wait_timeout(WAIT_LIMIT).await?;
            if !event.is_set().await? {
                return Err("the wait returned but the event is not set".into());
            }
            say("Worker received signal and proceeding")?;
            // A clear event without waiters does not exist: nothing of this
            // run's uniquely named event stays on the server.
            event.clear().await?;
        }
        "initializer" => {
            support::eventually("the worker to wait", WAIT_LIMIT, || async {
                Ok(!event.describe().await?.waiters.is_empty())
            })
            .await?;
            tokio::time::sleep(STARTUP).await;
            say("Signal sent")?;
            let woken = event.set().await?;
            if woken != 1 {
                return Err(format!("set woke {woken} waiters, expected the 1 worker").into());
            }
        }
        other => return Err(format!("unknown role {other:?}").into()),
    }
    client.close().await?;
    Ok(())
}
