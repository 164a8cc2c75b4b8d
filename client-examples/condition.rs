//! Seed exercise 4 across processes: a producer process and a consumer
//! process share a small list (a file), guarded by one syncd lock; the
//! consumer waits on a syncd condition bound to that lock while the list
//! is empty, the producer appends under the lock and notifies. A second
//! condition on the same lock, `consumed`, lets the producer wait until
//! the list is empty again before it adds the next item.
//!
//! The order of the five lines is guaranteed by that protocol, although
//! two processes print them to one stdout (each line is flushed as it is
//! written, while its process holds the lock): the consumer prints
//! `Consumer waiting for items` before its first wait; the producer adds
//! `A` only once the server shows the consumer waiting; the consumer can
//! take `A` only after the producer let go of the lock; the producer adds
//! `B` only once the list is empty, i.e. after `Consumer got: A`.
//!
//! What it checks of the condition: a wait gives the lock up (the producer
//! must get the lock while the consumer waits, within a bounded time) and
//! takes it back before it returns (the guard's fencing token grows, and
//! the list file, which remembers the token of its last write and refuses
//! an older one, accepts the consumer's write after the producer's); the
//! first notify must wake exactly the waiting consumer; every item arrives
//! once, in order, and the list ends empty.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example condition
//! Prints the five lines and exits 0; on a failed check says what went
//! wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use support::{say, Error, WAIT_LIMIT};
use syncd::client::{Client, Condition, LockGuard};

const ITEMS: [&str; 2] = ["A", "B"];
/// The producer's pause before each item, as in the seed.
const PRODUCE_TIME: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    support::main("condition", coordinator, worker)
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("condition")?;
    let list_file = dir.path().join("list");
    write_list(&list_file, &List::default())?;
    let list_arg = list_file.display().to_string();
    let lock = support::unique_name("condition", "lock");
    let mut workers = support::Workers::new();
    workers.spawn("consumer", ["consumer", &list_arg, &lock])?;
    workers.spawn("producer", ["producer", &list_arg, &lock])?;
    workers.wait()?;
    let list = read_list(&list_file)?;
    if !list.items.is_empty() || list.token == 0 {
        return Err(format!("the list should end empty after 2 writes, got {list:?}").into());
    }
    Ok(())
}

/// `worker consumer|producer LIST LOCK`; the conditions are named after
/// the lock.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [role, list_file, lock_name] = args.as_slice() else {
        return Err("usage: condition worker consumer|producer LIST LOCK".into());
    };
    let client = Client::connect(support::addr()).await?;
    let shared = Shared {
        file: PathBuf::from(list_file),
        lock: client.lock(lock_name.clone()),
        not_empty: client.condition(format!("{lock_name}-not-empty")),
        consumed: client.condition(format!("{lock_name}-consumed")),
    };
    match role.as_str() {
        "consumer" => consumer(&shared).await?,
        "producer" => producer(&shared).await?,
        other => return Err(format!("unknown role {other:?}").into()),
    }
    client.close().await?;
    Ok(())
}

struct Shared {
    file: PathBuf,
    lock: syncd::client::Lock,
    /// Notified when an item was added.
    not_empty: Condition,
    /// Notified when an item was taken.
    consumed: Condition,
}

async fn consumer(shared: &Shared) -> Result<(), Error> {
    let mut announced = false;
    for expected in ITEMS {
        let mut guard = shared.lock.acquire_timeout(WAIT_LIMIT).await?;
        let mut list = read_list(&shared.file)?;
        while list.items.is_empty() {
            if !announced {
                say("Consumer waiting for items")?;
                announced = true;
            }
            wait(&shared.not_empty, &mut guard).await?;
            list = read_list(&shared.file)?;
        }
        let item = list.items.remove(0);
        if item != expected {
            return Err(format!("expected item {expected}, got {item}").into());
        }
        list.write_under(&shared.file, &guard)?;
        say(&format!("Consumer got: {item}"))?;
        shared.consumed.notify(1).await?;
        guard.release().await?;
    }
    Ok(())
}

async fn producer(shared: &Shared) -> Result<(), Error> {
    for (index, item) in ITEMS.into_iter().enumerate() {
        tokio::time::sleep(PRODUCE_TIME).await;
        if index == 0 {
            support::eventually("the consumer to wait", WAIT_LIMIT, || async {
                Ok(!shared.not_empty.describe().await?.waiters.is_empty())
            })
            .await?;
        }
        // While the consumer waits, this lock is free: the wait gave it up.
        let mut guard = shared.lock.acquire_timeout(WAIT_LIMIT).await?;
        let mut list = read_list(&shared.file)?;
        while !list.items.is_empty() {
            wait(&shared.consumed, &mut guard).await?;
            list = read_list(&shared.file)?;
        }
        list.items.push(item.to_owned());
        list.write_under(&shared.file, &guard)?;
        say(&format!("Producer added item: {item}"))?;
        let woken = shared.not_empty.notify(1).await?;
        if index == 0 && woken != 1 {
            return Err(format!("notify woke {woken} waiters, expected the consumer").into());
        }
        guard.release().await?;
    }
    Ok(())
}

/// Waits on `condition` (bounded), giving up the lock of `guard` meanwhile;
/// checks that the lock came back under a newer fencing token.
async fn wait(condition: &Condition, guard: &mut LockGuard) -> Result<(), Error> {
    let before = guard.fencing_token();
    if !condition.wait_timeout(guard, WAIT_LIMIT).await? {
        return Err(format!(
            "no notification on condition {:?} within {WAIT_LIMIT:?}",
            condition.name()
        )
        .into());
    }
    let after = guard.fencing_token();
    if after <= before {
        return Err(format!("the lock came back under token {after}, not above {before}").into());
    }
    Ok(())
}

/// The shared list: the fencing token of its last write, then its items.
#[derive(Debug, Default)]
struct List {
    token: u64,
    items: Vec<String>,
}

impl List {
    /// Writes the list as the holder of `guard`, refusing (as a fenced
    /// resource does) a token that is not above the last writer's.
    fn write_under(&mut self, file: &Path, guard: &LockGuard) -> Result<(), Error> {
        let stored = read_list(file)?.token;
        let token = guard.fencing_token();
        if token <= stored {
            return Err(
                format!("stale fencing token {token}: the list already saw {stored}").into(),
            );
        }
        self.token = token;
        write_list(file, self)
    }
}

fn read_list(file: &Path) -> Result<List, Error> {
    let text = std::fs::read_to_string(file)?;
    let mut lines = text.lines();
    let token = lines.next().ok_or("empty list file")?.parse()?;
    let items = lines.map(str::to_owned).collect();
    Ok(List { token, items })
}

fn write_list(file: &Path, list: &List) -> Result<(), Error> {
    let mut text = format!("{}\n", list.token);
    for item in &list.items {
        text.push_str(item);
        text.push('\n');
    }
    std::fs::write(file, text)?;
    Ok(())
}
