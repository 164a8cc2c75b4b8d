//! Seed exercise 11 across processes: a syncd pool of 2 resources that go
//! stale 100 ms after they were created; 4 worker processes each check one
//! out, use it for 50 ms and check it in.
//!
//! The server keeps the books, the workers own the real resources: a
//! checkout that says the resource is fresh (a new slot, a stale one
//! replaced, one recovered from a crashed holder) makes the worker
//! "create" it, as a file named after the resource id; a reused one must
//! already exist, and carry the metadata that its last checkin stored
//! (`resource <id> used by worker <i>`). The server must never hand out a
//! resource older than its `max_age`.
//!
//! "Never more than 2 out at once" is checked, not assumed: every worker,
//! while it has its resource, enters and later leaves a tally, a file of
//! counters that the workers change only under a separate syncd lock (as
//! in the semaphore example). Entering fails if it makes more than 2
//! inside. To prove that the bound was tested, a worker keeps its resource
//! until the tally has seen 2 inside at once (with 4 workers and 2 slots,
//! a second worker always comes), and then uses it for its 50 ms.
//!
//! The lesson's pool looks at health only at checkout and puts unhealthy
//! resources back. Here the server does more, and the coordinator checks
//! it once the workers are done (deterministically, not by luck of timing):
//! - the idle resources, stale 100 ms after their creation, are evicted by
//!   the server's own timer, with nobody checking anything out;
//! - a resource held past its `max_age` is evicted when it is checked in
//!   (`checkin` says so), even though the holder calls it healthy; and
//!   one checked in as unhealthy is evicted at once;
//! - the next checkout then gets a fresh resource, with a new id.
//!
//! Run against a live syncd:
//!   SYNCD_ADDR=http://127.0.0.1:7420 cargo run --example pool
//! Prints `Pool managed 4 requests with health checks` and exits 0; on a
//! failed check says what went wrong on stderr and exits 1.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use support::{Error, Tally, WAIT_LIMIT};
use syncd::client::{Client, Pool, PooledResource};

const SIZE: u32 = 2;
const WORKERS: u32 = 4;
/// How long a worker uses its resource.
const USE: Duration = Duration::from_millis(50);
/// A resource is stale this long after its creation.
const MAX_AGE: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    support::main("pool", coordinator, worker)
}

fn pool(client: &Client, name: &str) -> Pool {
    client.pool(name.to_owned(), SIZE).with_max_age(MAX_AGE)
}

fn coordinator() -> Result<(), Error> {
    let dir = support::scratch_dir("pool")?;
    let tally_file = dir.path().join("tally");
    let resources = dir.path().join("resources");
    std::fs::create_dir(&resources)?;
    let pool_name = support::unique_name("pool", "connections");
    let tally_lock = support::unique_name("pool", "tally");
    let mut workers = support::Workers::new();
    for index in 0..WORKERS {
        workers.spawn(
            format!("worker {index}"),
            [
                index.to_string(),
                pool_name.clone(),
                tally_file.display().to_string(),
                tally_lock.clone(),
                resources.display().to_string(),
            ],
        )?;
    }
    workers.wait()?;
    let tally = Tally::read(&tally_file)?;
    let (requests, inside, max, created) = (
        tally.get("requests"),
        tally.get("inside"),
        tally.get("max_inside"),
        tally.get("created"),
    );
    if requests != i64::from(WORKERS) || inside != 0 || max != i64::from(SIZE) {
        return Err(format!(
            "expected {WORKERS} requests done, none out, and {SIZE} out at once at most and \
             at least once; got {tally:?}"
        )
        .into());
    }
    // The pool starts empty: its first two checkouts create the resources.
    if created < i64::from(SIZE) {
        return Err(format!("only {created} resources were created: {tally:?}").into());
    }
    let seen = resource_ids(&resources)?;
    support::block_on(health_checks(pool_name, seen))?;
    println!("Pool managed {requests} requests with health checks");
    Ok(())
}

/// The ids of every resource the workers created (`<id>`, or
/// `<id>.closed` once closed).
fn resource_ids(dir: &Path) -> Result<BTreeSet<u64>, Error> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        ids.insert(name.trim_end_matches(".closed").parse()?);
    }
    Ok(ids)
}

/// What the server does for health beyond the lesson's pool (see the
/// module doc); `seen` are the resource ids the workers created.
async fn health_checks(pool_name: String, seen: BTreeSet<u64>) -> Result<(), Error> {
    let client = Client::connect(support::addr()).await?;
    let pool = pool(&client, &pool_name);
    // Idle and stale by now or soon: the server's timer evicts them.
    support::eventually(
        "the server to evict the idle stale resources",
        WAIT_LIMIT,
        || async { Ok(pool.describe().await?.resources.is_empty()) },
    )
    .await?;

    // Held past max_age, called healthy: evicted at checkin all the same.
    let held = pool.checkout_timeout(WAIT_LIMIT).await?;
    expect_fresh(&held, &seen)?;
    tokio::time::sleep(MAX_AGE + Duration::from_millis(20)).await;
    let id = held.resource_id();
    if !held.checkin(true, None).await? {
        return Err(format!("resource {id}, held past max_age, was kept at checkin").into());
    }

    // Checked in as unhealthy: evicted at once; the next one is fresh.
    let broken = pool.checkout_timeout(WAIT_LIMIT).await?;
    expect_fresh(&broken, &seen)?;
    let broken_id = broken.resource_id();
    if broken_id == id {
        return Err(format!("evicted resource {id} was handed out again").into());
    }
    if !broken.checkin(false, None).await? {
        return Err(format!("resource {broken_id}, checked in unhealthy, was kept").into());
    }
    let state = pool.describe().await?;
    if !state.resources.is_empty() {
        return Err(format!("evicted resources still in the pool: {state:?}").into());
    }
    client.close().await?;
    Ok(())
}

/// A resource that the pool must have created just now: fresh, with a new
/// id, no metadata, and young.
fn expect_fresh(resource: &PooledResource, seen: &BTreeSet<u64>) -> Result<(), Error> {
    let id = resource.resource_id();
    if !resource.is_fresh() || seen.contains(&id) || !resource.metadata().is_empty() {
        return Err(format!(
            "expected a new resource after the evictions, got {id} ({:?}, metadata {:?})",
            resource.freshness(),
            String::from_utf8_lossy(resource.metadata())
        )
        .into());
    }
    check_age(resource, Instant::now())
}

/// The server never hands out a resource as old as `max_age`: its age at
/// checkout (the age now, less the time since `received`, taken as soon
/// as the checkout returned) is below.
fn check_age(resource: &PooledResource, received: Instant) -> Result<(), Error> {
    let age = resource.age().saturating_sub(received.elapsed());
    if age >= MAX_AGE {
        return Err(format!(
            "resource {} ({:?}) handed out at age {age:?}, stale after {MAX_AGE:?}",
            resource.resource_id(),
            resource.freshness()
        )
        .into());
    }
    Ok(())
}

/// `worker INDEX POOL TALLY TALLY_LOCK RESOURCES_DIR`.
async fn worker(args: Vec<String>) -> Result<(), Error> {
    let [index, pool_name, tally_file, tally_lock, resources] = args.as_slice() else {
        return Err("usage: pool worker INDEX POOL TALLY TALLY_LOCK RESOURCES_DIR".into());
    };
    let index: u32 = index.parse()?;
    let client = Client::connect(support::addr()).await?;
    let pool = pool(&client, pool_name);
    let tally = Tally::new(&client, PathBuf::from(tally_file), tally_lock);

    let resource = pool.checkout_timeout(WAIT_LIMIT).await?;
    check_age(&resource, Instant::now())?;
    let id = resource.resource_id();
    let file = Path::new(resources).join(id.to_string());
    let freshness = resource.freshness();
    if resource.is_fresh() {
        // (Re)create the real resource.
        if !resource.metadata().is_empty() || file.exists() {
            return Err(format!("fresh resource {id} ({freshness:?}) existed before").into());
        }
        std::fs::write(&file, format!("created by worker {index}\n"))?;
    } else {
        let metadata = String::from_utf8_lossy(resource.metadata()).into_owned();
        if !file.exists() || !metadata.starts_with(&format!("resource {id} used by worker ")) {
            return Err(format!(
                "reused resource {id} does not exist or has the wrong metadata {metadata:?}"
            )
            .into());
        }
    }
    tally
        .update(|counts| {
            let inside = counts.add("inside", 1);
            if inside > i64::from(SIZE) {
                return Err(format!(
                    "worker {index} (resource {id}) makes {inside} resources out at once, \
                     above the pool's size {SIZE}"
                )
                .into());
            }
            counts.raise("max_inside", inside);
            counts.add(
                if resource.is_fresh() {
                    "created"
                } else {
                    "reused"
                },
                1,
            );
            Ok(())
        })
        .await?;
    // Keep it until two were out at once (another worker always comes:
    // there are more workers than slots), so the bound is really tested.
    let tally_path = PathBuf::from(tally_file);
    support::eventually("a second resource out at once", WAIT_LIMIT, || async {
        Ok(Tally::read(&tally_path)?.get("max_inside") >= i64::from(SIZE))
    })
    .await?;
    tokio::time::sleep(USE).await;
    tally
        .update(|counts| {
            counts.add("inside", -1);
            counts.add("requests", 1);
            Ok(())
        })
        .await?;
    let metadata = format!("resource {id} used by worker {index}");
    let evicted = resource.checkin(true, Some(metadata.into_bytes())).await?;
    if evicted {
        // Stale by now: the pool dropped it, so close the real one.
        std::fs::rename(&file, file.with_extension("closed"))?;
        tally
            .update(|counts| {
                counts.add("evicted_at_checkin", 1);
                Ok(())
            })
            .await?;
    }
    client.close().await?;
    Ok(())
}
