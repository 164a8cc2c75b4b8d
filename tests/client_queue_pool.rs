//! The client library's queue and pool handles against the real server,
//! with one client (and so one session) per party. Waits are observed
//! through `describe`, never guessed with sleeps; the long timeouts only stop
//! a hung test.

mod common;

use std::time::Duration;

use common::rpc::{answer, kill9_and_restart, until};
use common::{Syncd, HANG_GUARD};
use syncd::client::{Client, Error, Freshness, HoldLoss, QueueItem};
use tonic::Code;

/// How long a wait that should succeed may take: only there to stop a hang.
async fn connect(syncd: &Syncd) -> Client {
    common::rpc::client(syncd, "client-queue-pool-test").await
}

const LONG: Duration = Duration::from_secs(60);

/// A wait that must time out: nobody will ever answer it.
const SHORT: Duration = Duration::from_millis(200);

fn status_code(error: &Error) -> Code {
    match error {
        Error::Status(status) => status.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

// --- queues ------------------------------------------------------------------

#[tokio::test]
async fn a_full_queue_of_three_holds_the_fourth_put_until_an_ack() {
    let syncd = Syncd::start();
    let producer = connect(&syncd).await;
    let consumer = connect(&syncd).await;
    let jobs = producer.queue("jobs").with_capacity(3);
    let mut ids = Vec::new();
    for n in 0..3u8 {
        ids.push(jobs.put(vec![n], 0).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let full = jobs.put_timeout(b"x".to_vec(), 0, Duration::ZERO).await;
    assert!(matches!(full, Err(Error::Timeout(_))), "{full:?}");

    let fourth = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.put_timeout(vec![3], 0, LONG).await }
    });
    let queue = consumer.queue("jobs");
    until("the fourth put waits", async || {
        queue.describe().await.unwrap().waiting_puts == 1
    })
    .await;

    // An item in flight still takes room: only the ack frees it.
    let first = queue.get_timeout(LONG).await.unwrap();
    assert_eq!((first.id, first.value.as_slice()), (ids[0], &[0u8][..]));
    let state = queue.describe().await.unwrap();
    assert_eq!(
        (
            state.capacity,
            state.ready,
            state.in_flight,
            state.waiting_puts
        ),
        (3, 2, 1, 1)
    );
    assert!(!fourth.is_finished(), "the queue is still full");

    queue.ack(first.id).await.unwrap();
    let fourth_id = answer(fourth).await.expect("stored after the ack");
    assert!(fourth_id > ids[2]);
    let state = queue.describe().await.unwrap();
    assert_eq!(
        (state.ready, state.in_flight, state.waiting_puts),
        (3, 0, 0)
    );

    // The capacity is fixed by the put that made the queue.
    let mismatch = consumer
        .queue("jobs")
        .with_capacity(5)
        .put_timeout(b"y".to_vec(), 0, SHORT)
        .await
        .unwrap_err();
    assert_eq!(
        status_code(&mismatch),
        Code::FailedPrecondition,
        "{mismatch}"
    );
    assert!(mismatch.to_string().contains("capacity 3"), "{mismatch}");
}

#[tokio::test]
async fn items_come_out_lowest_priority_first_and_in_put_order_among_equals() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let queue = client.queue("prio");
    for (value, priority) in [("e", 5), ("a", 1), ("c", 3), ("b", 1), ("d", 3)] {
        queue.put(value, priority).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let item = queue.get_timeout(LONG).await.unwrap();
        assert_eq!(item.deliveries, 1);
        order.push((String::from_utf8(item.value).unwrap(), item.priority));
        queue.ack(item.id).await.unwrap();
    }
    let expected = [("a", 1), ("b", 1), ("c", 3), ("d", 3), ("e", 5)];
    let expected: Vec<(String, u32)> = expected.iter().map(|(v, p)| (v.to_string(), *p)).collect();
    assert_eq!(order, expected);
    let empty = queue.get_timeout(SHORT).await.unwrap_err();
    assert!(matches!(empty, Error::Timeout(_)), "{empty}");
    let state = queue.describe().await.unwrap();
    assert_eq!(
        (state.ready, state.in_flight, state.waiting_gets),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_waiting_get_is_served_by_a_later_put() {
    let syncd = Syncd::start();
    let producer = connect(&syncd).await;
    let consumer = connect(&syncd).await;
    let getter = tokio::spawn({
        let queue = consumer.queue("later");
        async move { queue.get_timeout(LONG).await }
    });
    let queue = producer.queue("later");
    until("the get waits", async || {
        queue.describe().await.unwrap().waiting_gets == 1
    })
    .await;
    let id = queue.put("hello", 0).await.unwrap();
    let item = answer(getter).await.expect("served by the put");
    assert!(item.fencing_token > 0, "a delivery to ack has a token");
    assert_eq!(
        item,
        QueueItem {
            id,
            value: b"hello".to_vec(),
            priority: 0,
            deliveries: 1,
            fencing_token: item.fencing_token,
        }
    );
    assert_eq!(queue.describe().await.unwrap().in_flight, 1);
}

#[tokio::test]
async fn nacked_items_come_back_until_they_are_dead_lettered() {
    let syncd = Syncd::start();
    let a = connect(&syncd).await;
    let b = connect(&syncd).await;
    let queue = a.queue("work").with_max_deliveries(2);
    let id = queue.put("job", 0).await.unwrap();
    let later = queue.put("next", 0).await.unwrap();

    let first = queue.get_timeout(LONG).await.unwrap();
    assert_eq!((first.id, first.deliveries), (id, 1));
    // Only the session that has it in flight may ack or nack it.
    let theirs = b.queue("work").ack(id).await.unwrap_err();
    assert_eq!(status_code(&theirs), Code::FailedPrecondition, "{theirs}");
    assert!(!queue.nack(id).await.unwrap(), "one delivery of two");

    // Back at its place: before the later item.
    let second = queue.get_timeout(LONG).await.unwrap();
    assert_eq!((second.id, second.deliveries), (id, 2));
    assert!(
        queue.nack(id).await.unwrap(),
        "the second delivery was the last"
    );
    let state = queue.describe().await.unwrap();
    assert_eq!(
        (state.dead_lettered, state.ready, state.in_flight),
        (1, 1, 0)
    );

    let dead = b.queue("work.dlq").get_timeout(LONG).await.unwrap();
    assert_eq!((dead.id, dead.value.as_slice()), (id, &b"job"[..]));
    assert_eq!(
        dead.deliveries, 1,
        "counted afresh in the dead-letter queue"
    );
    b.queue("work.dlq").ack(dead.id).await.unwrap();

    let next = queue.get_timeout(LONG).await.unwrap();
    assert_eq!(next.id, later);
    queue.ack(next.id).await.unwrap();
    // Acked is gone for good: a second ack is refused.
    let again = queue.ack(next.id).await.unwrap_err();
    assert_eq!(status_code(&again), Code::NotFound, "{again}");
    assert!(again.to_string().contains("not in the queue"), "{again}");
}

#[tokio::test]
async fn a_no_ack_get_removes_the_item_at_delivery() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let queue = client.queue("once");
    let id = queue.put("fire and forget", 0).await.unwrap();
    let item = queue.get_no_ack().await.unwrap();
    assert_eq!((item.id, item.deliveries), (id, 1));
    let state = queue.describe().await.unwrap();
    assert_eq!((state.ready, state.in_flight), (0, 0));
    let ack = queue.ack(id).await.unwrap_err();
    assert_eq!(status_code(&ack), Code::NotFound, "gone for good: {ack}");
}

#[tokio::test]
async fn join_waits_until_every_earlier_item_is_acked() {
    let syncd = Syncd::start();
    let producer = connect(&syncd).await;
    let worker = connect(&syncd).await;
    let queue = producer.queue("batch");
    // Nothing put: nothing to wait for.
    queue.join_timeout(Duration::ZERO).await.unwrap();
    queue.put("one", 0).await.unwrap();
    queue.put("two", 0).await.unwrap();
    let pending = queue.join_timeout(SHORT).await.unwrap_err();
    assert!(matches!(pending, Error::Timeout(_)), "{pending}");

    let joiner = tokio::spawn({
        let queue = queue.clone();
        async move { queue.join_timeout(LONG).await }
    });
    let work = worker.queue("batch");
    let one = work.get_timeout(LONG).await.unwrap();
    work.ack(one.id).await.unwrap();
    let two = work.get_timeout(LONG).await.unwrap();
    // Delivered is not done: the join still waits for the ack.
    let still = queue.join_timeout(Duration::ZERO).await.unwrap_err();
    assert!(matches!(still, Error::Timeout(_)), "{still}");
    assert!(!joiner.is_finished(), "one item is not acked yet");
    work.ack(two.id).await.unwrap();
    answer(joiner).await.expect("joined once both were acked");
    queue.join_timeout(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn queued_items_survive_kill9_and_an_unacked_one_comes_back() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let queue = client
        .queue("durable")
        .with_capacity(4)
        .with_visibility_timeout(Duration::from_millis(300));
    let mut ids = Vec::new();
    for n in 0..4u8 {
        ids.push(queue.put(vec![n], 0).await.unwrap());
    }
    let in_flight = queue.get_timeout(LONG).await.unwrap();
    assert_eq!(in_flight.id, ids[0]);
    let acked = queue.get_timeout(LONG).await.unwrap();
    assert_eq!(acked.id, ids[1]);
    // Full: this put waits, and is retried across the restart.
    let waiting_put = tokio::spawn({
        let queue = queue.clone();
        async move { queue.put_timeout(vec![4], 0, LONG).await }
    });
    until("the fifth put waits", async || {
        queue.describe().await.unwrap().waiting_puts == 1
    })
    .await;

    let syncd = kill9_and_restart(syncd).await;

    // The session survived: its in-flight items are still its own.
    queue.ack(acked.id).await.expect("ack after the restart");
    let put_id = answer(waiting_put)
        .await
        .expect("stored once there was room");
    assert!(put_id > ids[3]);
    let state = queue.describe().await.unwrap();
    assert_eq!((state.capacity, state.waiting_puts), (4, 0));
    assert_eq!(state.ready + state.in_flight, 4, "{state:?}");

    // The unacked item comes back after its visibility timeout, first in
    // line again, with its delivery counted.
    until("the unacked item comes back", async || {
        queue.describe().await.unwrap().in_flight == 0
    })
    .await;
    let other = connect(&syncd).await;
    let back = other.queue("durable").get_timeout(LONG).await.unwrap();
    assert_eq!((back.id, back.value.as_slice()), (ids[0], &[0u8][..]));
    assert_eq!(back.deliveries, 2);
    let late = queue.ack(in_flight.id).await.unwrap_err();
    assert_eq!(status_code(&late), Code::FailedPrecondition, "{late}");
    other.queue("durable").ack(back.id).await.unwrap();

    let mut rest = Vec::new();
    for _ in 0..3 {
        let item = other.queue("durable").get_timeout(LONG).await.unwrap();
        rest.push(item.id);
        other.queue("durable").ack(item.id).await.unwrap();
    }
    assert_eq!(
        rest,
        [ids[2], ids[3], put_id],
        "nothing lost, nothing twice"
    );
    let state = queue.describe().await.unwrap();
    assert_eq!((state.ready, state.in_flight), (0, 0));
}

// --- pools -------------------------------------------------------------------

#[tokio::test]
async fn a_pool_of_one_reuses_a_healthy_resource_and_replaces_a_broken_one() {
    let syncd = Syncd::start();
    let a = connect(&syncd).await;
    let b = connect(&syncd).await;
    let pool = a.pool("db", 1);
    assert_eq!((pool.name(), pool.size()), ("db", 1));

    let first = pool.checkout().await.unwrap();
    assert_eq!(first.freshness(), Freshness::New);
    assert!(first.is_fresh());
    assert!(first.metadata().is_empty());
    assert_eq!((first.name(), first.session_id()), ("db", a.session_id()));
    assert!(b.pool("db", 1).try_checkout().await.unwrap().is_none());

    let waiter = tokio::spawn({
        let pool = b.pool("db", 0);
        async move { pool.checkout_timeout(LONG).await }
    });
    until("b waits for the resource", async || {
        pool.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    let first_id = first.resource_id();
    let first_token = first.fencing_token();
    let evicted = first.checkin(true, Some(b"conn=1".to_vec())).await.unwrap();
    assert!(!evicted);

    let reused = answer(waiter).await.expect("checked out after the checkin");
    assert_eq!(reused.freshness(), Freshness::Reused);
    assert!(!reused.is_fresh());
    assert_eq!(reused.resource_id(), first_id);
    assert_eq!(reused.metadata(), b"conn=1");
    assert!(reused.fencing_token() > first_token);
    assert_eq!(reused.session_id(), b.session_id());
    let state = pool.describe().await.unwrap();
    assert_eq!((state.size, state.resources.len()), (1, 1));
    assert_eq!(state.resources[0].fencing_token, reused.fencing_token());

    // Broken: evicted, and the next checkout gets a new resource.
    assert!(reused.checkin(false, None).await.unwrap());
    let replaced = pool.checkout_timeout(LONG).await.unwrap();
    assert_eq!(replaced.freshness(), Freshness::New);
    assert_ne!(replaced.resource_id(), first_id);
    assert!(replaced.metadata().is_empty());

    // The size is fixed by the checkout that made the pool.
    let mismatch = b.pool("db", 2).try_checkout().await.unwrap_err();
    assert_eq!(
        status_code(&mismatch),
        Code::FailedPrecondition,
        "{mismatch}"
    );
    let missing = b.pool("nothing", 0).try_checkout().await.unwrap_err();
    assert_eq!(status_code(&missing), Code::NotFound, "{missing}");
    replaced.checkin(true, None).await.unwrap();
}

#[tokio::test]
async fn a_dropped_resource_is_checked_in_as_unhealthy() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let pool = client.pool("cache", 1);
    let resource = pool.checkout().await.unwrap();
    let id = resource.resource_id();
    drop(resource);
    // Evicted: the pool has no resource left (and so is forgotten).
    until("the dropped resource is evicted", async || {
        pool.describe().await.unwrap().resources.is_empty()
    })
    .await;
    let next = pool.checkout_timeout(LONG).await.unwrap();
    assert_eq!(next.freshness(), Freshness::New);
    assert_ne!(next.resource_id(), id);
}

#[tokio::test]
async fn a_resource_whose_session_closed_is_recovered_by_the_next_checkout() {
    let syncd = Syncd::start();
    let crashed = connect(&syncd).await;
    let survivor = connect(&syncd).await;
    let held = crashed.pool("conn", 1).checkout().await.unwrap();
    held.checkin(true, Some(b"warm".to_vec())).await.unwrap();
    let held = crashed.pool("conn", 1).checkout().await.unwrap();
    assert_eq!(held.freshness(), Freshness::Reused);
    let old_id = held.resource_id();

    let waiter = tokio::spawn({
        let pool = survivor.pool("conn", 1);
        async move { pool.checkout_timeout(LONG).await }
    });
    let pool = survivor.pool("conn", 1);
    until("the survivor waits", async || {
        pool.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    crashed.clone().close().await.unwrap();
    let loss = tokio::time::timeout(HANG_GUARD, held.lost())
        .await
        .expect("the checkout is lost with its session");
    let HoldLoss::Session(loss) = loss else {
        panic!("lost alone: {loss}");
    };
    assert_eq!(loss.session_id, held.session_id());

    let recovered = answer(waiter).await.expect("taken back from the session");
    assert_eq!(recovered.freshness(), Freshness::Recovered);
    assert!(recovered.is_fresh());
    assert_ne!(recovered.resource_id(), old_id);
    assert!(recovered.metadata().is_empty(), "nobody vouches for it");
    assert!(recovered.fencing_token() > held.fencing_token());
    let late = held.checkin(true, None).await.unwrap_err();
    assert!(matches!(late, Error::SessionLost(_)), "{late}");
    recovered.checkin(true, None).await.unwrap();
}

// --- both at once -------------------------------------------------------------

/// What the consumers saw of one item: each delivery's count, and whether
/// its ack returned `Ok`.
type Deliveries = std::collections::BTreeMap<u64, Vec<(u32, bool)>>;

/// Producers and consumers run while the server is killed twice. Every put
/// that returned an id is delivered and acked in the end, stored once, and
/// no item comes back after an ack that returned `Ok`. (Which calls the
/// kills interrupt varies from run to run; the checks hold for all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_put_is_lost_and_only_unacked_items_come_back_across_two_kill9s() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    };
    const PER_PRODUCER: usize = 150;
    let syncd = Syncd::start();
    let stored: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let seen: Arc<Mutex<Deliveries>> = Arc::default();
    let values: Arc<Mutex<BTreeMap<Vec<u8>, BTreeSet<u64>>>> = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let mut producers = Vec::new();
    for p in 0..2 {
        let queue = connect(&syncd).await.queue("stress").with_capacity(20);
        let stored = stored.clone();
        producers.push(tokio::spawn(async move {
            for n in 0..PER_PRODUCER {
                let id = queue.put(format!("{p}-{n}"), (n % 3) as u32).await;
                let id = id.expect("a put waits out the restarts");
                assert!(stored.lock().unwrap().insert(id), "id {id} twice");
            }
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let queue =
            (connect(&syncd).await.queue("stress")).with_visibility_timeout(Duration::from_secs(5));
        let (seen, values) = (seen.clone(), values.clone());
        let (acked, stop) = (acked.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let item = match queue.get_timeout(Duration::from_millis(300)).await {
                    Ok(item) => item,
                    Err(Error::Timeout(_) | Error::Unavailable(_)) => continue,
                    Err(error) => panic!("get failed: {error}"),
                };
                let ok = queue.ack(item.id).await.is_ok();
                acked.fetch_add(usize::from(ok), Ordering::Relaxed);
                let mut values = values.lock().unwrap();
                values.entry(item.value).or_default().insert(item.id);
                let mut seen = seen.lock().unwrap();
                seen.entry(item.id).or_default().push((item.deliveries, ok));
            }
        }));
    }
    let progress = async |n: usize| {
        until("consumers make progress", async || {
            acked.load(Ordering::Relaxed) >= n
        })
        .await
    };
    progress(60).await;
    let syncd = kill9_and_restart(syncd).await;
    progress(160).await;
    let syncd = kill9_and_restart(syncd).await;
    for producer in producers {
        answer(producer).await;
    }
    assert_eq!(stored.lock().unwrap().len(), 2 * PER_PRODUCER);
    until("every stored item is acked", async || {
        let seen = seen.lock().unwrap();
        let acked = |id| {
            seen.get(id)
                .is_some_and(|d: &Vec<_>| d.iter().any(|(_, ok)| *ok))
        };
        stored.lock().unwrap().iter().all(acked)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        answer(consumer).await;
    }

    let stored = stored.lock().unwrap();
    for (id, deliveries) in seen.lock().unwrap().iter() {
        assert!(stored.contains(id), "item {id} was delivered, never stored");
        let first_ok = deliveries.iter().position(|(_, ok)| *ok);
        assert_eq!(
            first_ok,
            Some(deliveries.len() - 1),
            "item {id} came back after an acknowledged ack: {deliveries:?}"
        );
    }
    let values = values.lock().unwrap();
    assert_eq!(values.len(), 2 * PER_PRODUCER);
    for (value, ids) in values.iter() {
        assert_eq!(ids.len(), 1, "{value:?} was stored as items {ids:?}");
    }
    drop(syncd);
}
