//! Queues and pools as any gRPC client sees them, against a real `syncd`
//! process. Uses the raw generated stubs, not the client library. Every wait
//! is observed through its stream (`queued` first), never through sleeps.

mod common;

use common::rpc::{ends_cleanly, next, open_channel, session};
use common::Syncd;
use syncd::proto::v1::{
    checkout_response, get_response, join_response, pools_client::PoolsClient, put_response,
    queues_client::QueuesClient, system_client::SystemClient, AckRequest, CheckinRequest,
    CheckoutRequest, CheckoutResponse, DescribePoolRequest, DescribeQueueRequest,
    DescribeQueueResponse, Freshness, GetRequest, GetResponse, Item, JoinRequest, ListRequest,
    NackRequest, PutRequest, PutResponse, Resource,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

// --- queues ---------------------------------------------------------------

fn put_request(session_id: u64, name: &str, value: &[u8], priority: u32) -> PutRequest {
    PutRequest {
        session_id,
        name: name.into(),
        value: value.to_vec(),
        priority,
        capacity: None,
        max_deliveries: 0,
        timeout_ms: None,
        put_id: 0,
    }
}

fn get_request(session_id: u64, name: &str) -> GetRequest {
    GetRequest {
        session_id,
        name: name.into(),
        timeout_ms: None,
        visibility_timeout_ms: 0,
        no_ack: false,
    }
}

async fn open_put(
    queues: &mut QueuesClient<Channel>,
    request: PutRequest,
) -> Streaming<PutResponse> {
    queues.put(request).await.expect("put").into_inner()
}

async fn open_get(
    queues: &mut QueuesClient<Channel>,
    request: GetRequest,
) -> Streaming<GetResponse> {
    queues.get(request).await.expect("get").into_inner()
}

fn stored(message: PutResponse) -> u64 {
    match message.event {
        Some(put_response::Event::Stored(s)) => s.item_id,
        other => panic!("expected `stored`, got {other:?}"),
    }
}

fn item(message: GetResponse) -> Item {
    match message.event {
        Some(get_response::Event::Item(item)) => item,
        other => panic!("expected an item, got {other:?}"),
    }
}

/// Puts an item that fits at once; returns its id.
async fn put_now(queues: &mut QueuesClient<Channel>, request: PutRequest) -> u64 {
    let mut stream = open_put(queues, request).await;
    let id = stored(next(&mut stream).await);
    ends_cleanly(&mut stream).await;
    id
}

/// Gets an item that is ready now.
async fn get_now(queues: &mut QueuesClient<Channel>, request: GetRequest) -> Item {
    let mut stream = open_get(queues, request).await;
    let got = item(next(&mut stream).await);
    ends_cleanly(&mut stream).await;
    got
}

async fn ack(queues: &mut QueuesClient<Channel>, session_id: u64, name: &str, item_id: u64) {
    queues
        .ack(AckRequest {
            session_id,
            name: name.into(),
            item_id,
        })
        .await
        .expect("ack");
}

async fn describe_queue(queues: &mut QueuesClient<Channel>, name: &str) -> DescribeQueueResponse {
    queues
        .describe(DescribeQueueRequest { name: name.into() })
        .await
        .expect("describe")
        .into_inner()
}

#[tokio::test]
async fn a_full_queue_holds_the_put_back_until_an_item_is_acked() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let (producer, consumer) = (session(&channel).await, session(&channel).await);
    let bounded = |value: &[u8]| PutRequest {
        capacity: Some(2),
        ..put_request(producer, "jobs", value, 0)
    };

    let first = put_now(&mut queues, bounded(b"one")).await;
    let second = put_now(&mut queues, bounded(b"two")).await;
    assert!(first < second, "ids increase in put order");
    let mut third = open_put(&mut queues, bounded(b"three")).await;
    let queued = next(&mut third).await.event;
    assert!(
        matches!(queued, Some(put_response::Event::Queued(ref q)) if q.position == 1),
        "{queued:?}"
    );

    // A get moves an item in flight: it still counts against the capacity.
    let got = get_now(&mut queues, get_request(consumer, "jobs")).await;
    assert_eq!((got.id, got.value.as_slice()), (first, &b"one"[..]));
    assert_eq!(got.deliveries, 1);
    let described = describe_queue(&mut queues, "jobs").await;
    assert_eq!(
        (described.capacity, described.ready, described.in_flight),
        (2, 1, 1)
    );
    assert_eq!((described.waiting_puts, described.waiting_gets), (1, 0));

    ack(&mut queues, consumer, "jobs", first).await;
    let third_id = stored(next(&mut third).await);
    ends_cleanly(&mut third).await;
    assert!(third_id > second);
    let described = describe_queue(&mut queues, "jobs").await;
    assert_eq!((described.ready, described.in_flight), (2, 0));
    assert_eq!(described.waiting_puts, 0);

    // The capacity is fixed by the put that made the queue.
    let status = queues
        .put(PutRequest {
            capacity: Some(3),
            ..put_request(producer, "jobs", b"four", 0)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn items_come_out_lowest_priority_first_and_in_put_order_among_equals() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let me = session(&channel).await;
    for (value, priority) in [("c", 5), ("a1", 1), ("b", 3), ("a2", 1)] {
        put_now(
            &mut queues,
            put_request(me, "tasks", value.as_bytes(), priority),
        )
        .await;
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = get_now(
            &mut queues,
            GetRequest {
                no_ack: true,
                ..get_request(me, "tasks")
            },
        )
        .await;
        order.push((String::from_utf8(got.value).expect("utf-8"), got.priority));
    }
    let expected = [("a1", 1), ("a2", 1), ("b", 3), ("c", 5)].map(|(v, p)| (v.to_owned(), p));
    assert_eq!(order, expected);

    // Nothing is left (no-ack gets removed the items): a get that may not
    // wait says so.
    let status = queues
        .get(GetRequest {
            timeout_ms: Some(0),
            ..get_request(me, "tasks")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn a_get_waiting_on_an_empty_queue_is_answered_by_a_later_put() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let other_connection = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let (consumer, producer) = (session(&channel).await, session(&other_connection).await);

    let mut waiting = open_get(&mut queues, get_request(consumer, "inbox")).await;
    let queued = next(&mut waiting).await.event;
    assert!(
        matches!(queued, Some(get_response::Event::Queued(ref q)) if q.position == 1),
        "{queued:?}"
    );
    assert_eq!(describe_queue(&mut queues, "inbox").await.waiting_gets, 1);

    let mut producers = QueuesClient::new(other_connection);
    let id = put_now(&mut producers, put_request(producer, "inbox", b"hello", 7)).await;
    let got = item(next(&mut waiting).await);
    ends_cleanly(&mut waiting).await;
    assert!(got.fencing_token > 0, "a delivery to ack has a token");
    assert_eq!(
        got,
        Item {
            id,
            value: b"hello".to_vec(),
            priority: 7,
            deliveries: 1,
            fencing_token: got.fencing_token,
        }
    );
    let described = describe_queue(&mut queues, "inbox").await;
    assert_eq!((described.ready, described.in_flight), (0, 1));
}

#[tokio::test]
async fn ack_refuses_an_item_the_session_does_not_have_in_flight() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let (me, other) = (session(&channel).await, session(&channel).await);
    let ack_of = |session_id, item_id| AckRequest {
        session_id,
        name: "jobs".into(),
        item_id,
    };

    let unknown = queues.ack(ack_of(me, 12_345)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let id = put_now(&mut queues, put_request(me, "jobs", b"x", 0)).await;
    let ready_only = queues.ack(ack_of(me, id)).await.unwrap_err();
    assert_eq!(
        ready_only.code(),
        Code::FailedPrecondition,
        "{ready_only:?}"
    );
    get_now(&mut queues, get_request(me, "jobs")).await;
    let not_mine = queues.ack(ack_of(other, id)).await.unwrap_err();
    assert_eq!(not_mine.code(), Code::FailedPrecondition, "{not_mine:?}");
    let nack_not_mine = queues
        .nack(NackRequest {
            session_id: other,
            name: "jobs".into(),
            item_id: id,
        })
        .await
        .unwrap_err();
    assert_eq!(nack_not_mine.code(), Code::FailedPrecondition);

    queues.ack(ack_of(me, id)).await.expect("ack");
    // Gone for good: NOT_FOUND, unlike an item that is still there.
    let twice = queues.ack(ack_of(me, id)).await.unwrap_err();
    assert_eq!(twice.code(), Code::NotFound, "{twice:?}");
}

#[tokio::test]
async fn an_item_nacked_max_deliveries_times_goes_to_the_dead_letter_queue() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let me = session(&channel).await;
    let id = put_now(&mut queues, put_request(me, "work", b"poison", 2)).await;
    assert_eq!(describe_queue(&mut queues, "work").await.max_deliveries, 5);

    for delivery in 1..=5 {
        let got = get_now(&mut queues, get_request(me, "work")).await;
        assert_eq!((got.id, got.deliveries), (id, delivery));
        let nacked = queues
            .nack(NackRequest {
                session_id: me,
                name: "work".into(),
                item_id: id,
            })
            .await
            .expect("nack")
            .into_inner();
        assert_eq!(nacked.dead_lettered, delivery == 5, "delivery {delivery}");
    }

    let work = describe_queue(&mut queues, "work").await;
    assert_eq!((work.ready, work.in_flight), (0, 0));
    let dead = describe_queue(&mut queues, "work.dlq").await;
    assert_eq!((dead.ready, dead.in_flight), (1, 0));
    let got = get_now(&mut queues, get_request(me, "work.dlq")).await;
    assert_eq!((got.value.as_slice(), got.priority), (&b"poison"[..], 2));
    assert_eq!(
        got.deliveries, 1,
        "deliveries count afresh in the dead-letter queue"
    );
}

#[tokio::test]
async fn join_answers_once_every_item_put_before_it_is_acked() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let me = session(&channel).await;
    let join = |name: &str| JoinRequest {
        session_id: me,
        name: name.into(),
        timeout_ms: None,
    };

    // Nothing pending: joined at once.
    let mut at_once = queues.join(join("batch")).await.expect("join").into_inner();
    let first = next(&mut at_once).await.event;
    assert!(
        matches!(first, Some(join_response::Event::Joined(_))),
        "{first:?}"
    );
    ends_cleanly(&mut at_once).await;

    let a = put_now(&mut queues, put_request(me, "batch", b"a", 0)).await;
    let b = put_now(&mut queues, put_request(me, "batch", b"b", 0)).await;
    let mut joining = queues.join(join("batch")).await.expect("join").into_inner();
    let queued = next(&mut joining).await.event;
    assert!(
        matches!(queued, Some(join_response::Event::Queued(_))),
        "{queued:?}"
    );
    let status = queues
        .join(JoinRequest {
            timeout_ms: Some(0),
            ..join("batch")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    assert_eq!(get_now(&mut queues, get_request(me, "batch")).await.id, a);
    ack(&mut queues, me, "batch", a).await;
    assert_eq!(get_now(&mut queues, get_request(me, "batch")).await.id, b);
    ack(&mut queues, me, "batch", b).await;
    let joined = next(&mut joining).await.event;
    assert!(
        matches!(joined, Some(join_response::Event::Joined(_))),
        "{joined:?}"
    );
    ends_cleanly(&mut joining).await;
}

#[tokio::test]
async fn an_item_above_the_size_limit_is_invalid_and_not_stored() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut queues = QueuesClient::new(channel.clone());
    let me = session(&channel).await;
    // The core's default item limit is 64 KiB; the message limit is 1 MiB.
    let big = vec![7u8; 64 * 1024 + 1];
    let status: Status = queues
        .put(put_request(me, "jobs", &big, 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("item_bytes_max"), "{status:?}");
    let described = describe_queue(&mut queues, "jobs").await;
    assert_eq!((described.ready, described.in_flight), (0, 0));

    let at_limit = vec![7u8; 64 * 1024];
    put_now(&mut queues, put_request(me, "jobs", &at_limit, 0)).await;
    let got = get_now(&mut queues, get_request(me, "jobs")).await;
    assert_eq!(got.value, at_limit);
}

// --- pools ----------------------------------------------------------------

fn checkout_request(session_id: u64, name: &str, size: u32) -> CheckoutRequest {
    CheckoutRequest {
        session_id,
        name: name.into(),
        size,
        max_age_ms: 0,
        max_idle_ms: 0,
        timeout_ms: None,
        acquire_id: 0,
    }
}

async fn open_checkout(
    pools: &mut PoolsClient<Channel>,
    request: CheckoutRequest,
) -> Streaming<CheckoutResponse> {
    pools
        .checkout(request)
        .await
        .expect("checkout")
        .into_inner()
}

fn resource(message: CheckoutResponse) -> Resource {
    match message.event {
        Some(checkout_response::Event::Resource(r)) => r,
        other => panic!("expected a resource, got {other:?}"),
    }
}

fn freshness(resource: &Resource) -> Freshness {
    Freshness::try_from(resource.freshness).expect("a known freshness")
}

#[tokio::test]
async fn a_pool_of_one_hands_its_resource_on_with_metadata_and_replaces_a_broken_one() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut pools = PoolsClient::new(channel.clone());
    let (a, b) = (session(&channel).await, session(&channel).await);

    let mut first = open_checkout(&mut pools, checkout_request(a, "db", 1)).await;
    let held = resource(next(&mut first).await);
    ends_cleanly(&mut first).await;
    assert_eq!(freshness(&held), Freshness::New);
    assert!(held.metadata.is_empty());

    let mut second = open_checkout(&mut pools, checkout_request(b, "db", 0)).await;
    let queued = next(&mut second).await.event;
    assert!(
        matches!(queued, Some(checkout_response::Event::Queued(ref q)) if q.position == 1),
        "{queued:?}"
    );
    let described = pools
        .describe(DescribePoolRequest { name: "db".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.size, 1);
    let shown: Vec<(u64, u64, u64)> = (described.resources.iter())
        .map(|r| (r.resource_id, r.session_id, r.fencing_token))
        .collect();
    assert_eq!(shown, [(held.resource_id, a, held.fencing_token)]);
    let waiting: Vec<u64> = described.waiters.iter().map(|w| w.session_id).collect();
    assert_eq!(waiting, [b]);

    let checkin = pools
        .checkin(CheckinRequest {
            session_id: a,
            name: "db".into(),
            fencing_token: held.fencing_token,
            healthy: true,
            metadata: Some(b"dsn=primary".to_vec()),
        })
        .await
        .expect("checkin")
        .into_inner();
    assert!(!checkin.evicted);
    let handed_on = resource(next(&mut second).await);
    ends_cleanly(&mut second).await;
    assert_eq!(freshness(&handed_on), Freshness::Reused);
    assert_eq!(handed_on.resource_id, held.resource_id);
    assert_eq!(handed_on.metadata, b"dsn=primary");
    assert!(handed_on.fencing_token > held.fencing_token);

    // A checkin by the wrong session is refused.
    let wrong = pools
        .checkin(CheckinRequest {
            session_id: a,
            name: "db".into(),
            fencing_token: handed_on.fencing_token,
            healthy: true,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");

    // A broken resource is evicted; the waiter behind it gets a new one.
    let mut third = open_checkout(&mut pools, checkout_request(a, "db", 0)).await;
    let queued = next(&mut third).await.event;
    assert!(
        matches!(queued, Some(checkout_response::Event::Queued(_))),
        "{queued:?}"
    );
    let broken = pools
        .checkin(CheckinRequest {
            session_id: b,
            name: "db".into(),
            fencing_token: handed_on.fencing_token,
            healthy: false,
            metadata: None,
        })
        .await
        .expect("checkin")
        .into_inner();
    assert!(broken.evicted);
    let replacement = resource(next(&mut third).await);
    ends_cleanly(&mut third).await;
    assert_eq!(freshness(&replacement), Freshness::New);
    assert_ne!(replacement.resource_id, held.resource_id);
    assert!(replacement.metadata.is_empty());
    let described = pools
        .describe(DescribePoolRequest { name: "db".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.evicted, 1);
    assert!(described.waiters.is_empty());
    let shown: Vec<(u64, u64)> = (described.resources.iter())
        .map(|r| (r.resource_id, r.session_id))
        .collect();
    assert_eq!(shown, [(replacement.resource_id, a)]);
}

#[tokio::test]
async fn a_checkout_of_an_unknown_pool_without_a_size_is_not_found() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut pools = PoolsClient::new(channel.clone());
    let me = session(&channel).await;
    let status = pools
        .checkout(checkout_request(me, "nothing", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let mut held = open_checkout(&mut pools, checkout_request(me, "db", 1)).await;
    resource(next(&mut held).await);
    let try_once = pools
        .checkout(CheckoutRequest {
            timeout_ms: Some(0),
            ..checkout_request(me, "db", 1)
        })
        .await
        .unwrap_err();
    assert_eq!(try_once.code(), Code::DeadlineExceeded, "{try_once:?}");
}

// --- both -----------------------------------------------------------------

#[tokio::test]
async fn health_and_list_know_queues_and_pools() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    common::rpc::assert_serving(&channel, &["syncd.v1.Queues", "syncd.v1.Pools"]).await;

    let me = session(&channel).await;
    let mut queues = QueuesClient::new(channel.clone());
    put_now(&mut queues, put_request(me, "jobs", b"x", 0)).await;
    let mut pools = PoolsClient::new(channel.clone());
    let mut held = open_checkout(&mut pools, checkout_request(me, "db", 2)).await;
    resource(next(&mut held).await);

    let mut system = SystemClient::new(channel);
    let all = system
        .list(ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<(&str, &str)> = (all.primitives.iter())
        .map(|p| (p.kind.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(listed, [("queue", "jobs"), ("pool", "db")]);
    for kind in ["queue", "pool"] {
        let only = system
            .list(ListRequest {
                kind: kind.into(),
                prefix: String::new(),
            })
            .await
            .expect("list")
            .into_inner();
        let kinds: Vec<&str> = only.primitives.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, [kind]);
    }
}
