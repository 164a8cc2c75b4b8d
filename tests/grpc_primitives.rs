//! Semaphores, read-write locks, events, conditions and barriers as any gRPC
//! client sees them, against a real `syncd` process. Uses the raw generated
//! stubs, not the client library.

mod common;

use common::rpc::{end, next, open_channel, session, until};
use common::Syncd;
use syncd::proto::v1::{
    acquire_lock_response, acquire_rw_lock_response, acquire_semaphore_response,
    barriers_client::BarriersClient, conditions_client::ConditionsClient,
    events_client::EventsClient, locks_client::LocksClient, rw_locks_client::RwLocksClient,
    semaphores_client::SemaphoresClient, system_client::SystemClient, wait_barrier_response,
    wait_condition_response, wait_event_response, AcquireLockRequest, AcquireRwLockRequest,
    AcquireRwLockResponse, AcquireSemaphoreRequest, AcquireSemaphoreResponse, ClearEventRequest,
    DescribeBarrierRequest, DescribeBarrierResponse, DescribeConditionRequest,
    DescribeEventRequest, DescribeLockRequest, DescribeRwLockRequest, DescribeSemaphoreRequest,
    ListRequest, NotifyConditionRequest, Passed, ReleaseLockRequest, ReleaseRwLockRequest,
    ReleaseSemaphoreRequest, ResetBarrierRequest, RwMode, SetEventRequest, WaitBarrierRequest,
    WaitBarrierResponse, WaitConditionRequest, WaitEventRequest,
};
use tonic::transport::Channel;
use tonic::Code;

fn semaphore_request(session_id: u64, name: &str, capacity: u32) -> AcquireSemaphoreRequest {
    AcquireSemaphoreRequest {
        session_id,
        name: name.into(),
        capacity,
        permits: 1,
        timeout_ms: None,
        acquire_id: 0,
    }
}

fn semaphore_granted(message: AcquireSemaphoreResponse) -> u64 {
    match message.event {
        Some(acquire_semaphore_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn semaphore_of_two_grants_two_queues_the_third_and_refuses_over_release() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut semaphores = SemaphoresClient::new(channel.clone());
    let (a, b, c) = (
        session(&channel).await,
        session(&channel).await,
        session(&channel).await,
    );

    let mut first = semaphores
        .acquire(semaphore_request(a, "pool", 2))
        .await
        .expect("acquire")
        .into_inner();
    let token_a = semaphore_granted(next(&mut first).await);
    let mut second = semaphores
        .acquire(semaphore_request(b, "pool", 2))
        .await
        .expect("acquire")
        .into_inner();
    let token_b = semaphore_granted(next(&mut second).await);
    let mut third = semaphores
        .acquire(semaphore_request(c, "pool", 2))
        .await
        .expect("acquire")
        .into_inner();
    let queued = next(&mut third).await.event;
    assert!(
        matches!(queued, Some(acquire_semaphore_response::Event::Queued(ref q)) if q.position == 1),
        "{queued:?}"
    );

    let described = semaphores
        .describe(DescribeSemaphoreRequest {
            name: "pool".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!((described.capacity, described.permits_held), (2, 2));
    let holders: Vec<(u64, u64, u32)> = (described.holders.iter())
        .map(|h| (h.session_id, h.fencing_token, h.permits))
        .collect();
    assert_eq!(holders, [(a, token_a, 1), (b, token_b, 1)]);
    assert_eq!(described.waiters.len(), 1);
    assert_eq!(
        (
            described.waiters[0].session_id,
            described.waiters[0].permits
        ),
        (c, 1)
    );

    // Another capacity while it exists; more permits than the capacity.
    let mismatch = semaphores
        .acquire(semaphore_request(c, "pool", 3))
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::FailedPrecondition, "{mismatch:?}");
    let too_many = semaphores
        .acquire(AcquireSemaphoreRequest {
            permits: 3,
            ..semaphore_request(c, "pool", 2)
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");

    let release = |session_id, fencing_token| ReleaseSemaphoreRequest {
        session_id,
        name: "pool".into(),
        fencing_token,
    };
    // A token another session holds is not c's to release.
    let foreign = semaphores.release(release(c, token_a)).await.unwrap_err();
    assert_eq!(foreign.code(), Code::FailedPrecondition, "{foreign:?}");

    semaphores
        .release(release(a, token_a))
        .await
        .expect("release");
    let token_c = semaphore_granted(next(&mut third).await);
    assert!(token_c > token_b, "{token_c} after {token_b}");
    // Releasing the same hold twice would make a third permit.
    let over = semaphores.release(release(a, token_a)).await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    let described = semaphores
        .describe(DescribeSemaphoreRequest {
            name: "pool".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.permits_held, 2);
}

fn rwlock_request(session_id: u64, mode: RwMode) -> AcquireRwLockRequest {
    AcquireRwLockRequest {
        session_id,
        name: "table".into(),
        mode: mode.into(),
        timeout_ms: None,
        acquire_id: 0,
    }
}

fn rwlock_event(message: AcquireRwLockResponse) -> acquire_rw_lock_response::Event {
    message.event.expect("an event")
}

fn rw_granted(message: AcquireRwLockResponse) -> u64 {
    match rwlock_event(message) {
        acquire_rw_lock_response::Event::Granted(g) => g.fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn rwlock_readers_share_while_a_writer_queues_and_later_readers_wait_behind_it() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut rwlocks = RwLocksClient::new(channel.clone());
    let (r1, r2, w, r3) = (
        session(&channel).await,
        session(&channel).await,
        session(&channel).await,
        session(&channel).await,
    );
    let client = rwlocks.clone();
    let open = move |session_id, mode| {
        let mut rwlocks = client.clone();
        async move {
            rwlocks
                .acquire(rwlock_request(session_id, mode))
                .await
                .expect("acquire")
                .into_inner()
        }
    };
    let token_r1 = rw_granted(next(&mut open(r1, RwMode::Read).await).await);
    let token_r2 = rw_granted(next(&mut open(r2, RwMode::Read).await).await);
    let mut writer = open(w, RwMode::Write).await;
    let queued = rwlock_event(next(&mut writer).await);
    assert!(
        matches!(queued, acquire_rw_lock_response::Event::Queued(_)),
        "{queued:?}"
    );
    // A reader that comes after a waiting writer waits too.
    let mut late_reader = open(r3, RwMode::Read).await;
    let queued = rwlock_event(next(&mut late_reader).await);
    assert!(
        matches!(queued, acquire_rw_lock_response::Event::Queued(ref q) if q.position == 2),
        "{queued:?}"
    );

    let described = rwlocks
        .describe(DescribeRwLockRequest {
            name: "table".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    let holders: Vec<(u64, i32)> = (described.holders.iter())
        .map(|h| (h.session_id, h.mode))
        .collect();
    let read = RwMode::Read as i32;
    let write = RwMode::Write as i32;
    assert_eq!(holders, [(r1, read), (r2, read)]);
    let waiters: Vec<(u64, i32)> = (described.waiters.iter())
        .map(|h| (h.session_id, h.mode))
        .collect();
    assert_eq!(waiters, [(w, write), (r3, read)]);

    let release = |session_id, fencing_token| ReleaseRwLockRequest {
        session_id,
        name: "table".into(),
        fencing_token,
    };
    rwlocks
        .release(release(r1, token_r1))
        .await
        .expect("release");
    rwlocks
        .release(release(r2, token_r2))
        .await
        .expect("release");
    let token_w = rw_granted(next(&mut writer).await);
    assert!(token_w > token_r2);
    rwlocks.release(release(w, token_w)).await.expect("release");
    let token_r3 = rw_granted(next(&mut late_reader).await);
    assert!(token_r3 > token_w);
}

#[tokio::test]
async fn rwlock_mode_must_be_read_or_write() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut rwlocks = RwLocksClient::new(channel.clone());
    let me = session(&channel).await;
    for mode in [RwMode::Unspecified as i32, 7] {
        let status = rwlocks
            .acquire(AcquireRwLockRequest {
                mode,
                ..rwlock_request(me, RwMode::Read)
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("RW_MODE_READ"), "{status:?}");
    }
}

#[tokio::test]
async fn event_wait_is_woken_by_a_set_from_another_connection() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let other_connection = open_channel(&syncd).await;
    let mut events = EventsClient::new(channel.clone());
    let me = session(&channel).await;
    let wait = |timeout_ms| WaitEventRequest {
        session_id: me,
        name: "ready".into(),
        timeout_ms,
    };

    let mut waiting = events.wait(wait(None)).await.expect("wait").into_inner();
    let queued = next(&mut waiting).await.event;
    assert!(
        matches!(queued, Some(wait_event_response::Event::Queued(_))),
        "{queued:?}"
    );
    let set = EventsClient::new(other_connection)
        .set(SetEventRequest {
            name: "ready".into(),
        })
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.woken, 1);
    let woken = next(&mut waiting).await.event;
    assert!(
        matches!(woken, Some(wait_event_response::Event::Set(_))),
        "{woken:?}"
    );

    // A set event: the wait's first and only message says so.
    let mut at_once = events.wait(wait(None)).await.expect("wait").into_inner();
    let first = next(&mut at_once).await.event;
    assert!(
        matches!(first, Some(wait_event_response::Event::Set(_))),
        "{first:?}"
    );
    assert!(at_once.message().await.expect("clean end").is_none());

    events
        .clear(ClearEventRequest {
            name: "ready".into(),
        })
        .await
        .expect("clear");
    let described = events
        .describe(DescribeEventRequest {
            name: "ready".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert!(!described.is_set && described.waiters.is_empty());
    let check = events.wait(wait(Some(0))).await.unwrap_err();
    assert_eq!(check.code(), Code::DeadlineExceeded, "{check:?}");
}

/// Takes a free lock; returns the token.
async fn take_lock(locks: &mut LocksClient<Channel>, session_id: u64, name: &str) -> u64 {
    let mut stream = locks
        .acquire(AcquireLockRequest {
            session_id,
            name: name.into(),
            timeout_ms: Some(0),
            acquire_id: 0,
        })
        .await
        .expect("acquire")
        .into_inner();
    match next(&mut stream).await.event {
        Some(acquire_lock_response::Event::Granted(g)) => g.fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test]
async fn condition_wait_gives_up_the_lock_and_takes_it_again_after_notify() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel.clone());
    let mut conditions = ConditionsClient::new(channel.clone());
    let (waiter, other) = (session(&channel).await, session(&channel).await);
    let token = take_lock(&mut locks, waiter, "queue-lock").await;
    let wait = |session_id, fencing_token| WaitConditionRequest {
        session_id,
        name: "not-empty".into(),
        lock: "queue-lock".into(),
        fencing_token,
        timeout_ms: None,
    };

    // Without holding the lock (another session's token, or a wrong one).
    for (session_id, fencing_token) in [(other, token), (waiter, token + 100)] {
        let status = conditions
            .wait(wait(session_id, fencing_token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }

    let mut waiting = conditions
        .wait(wait(waiter, token))
        .await
        .expect("wait")
        .into_inner();
    let queued = next(&mut waiting).await.event;
    assert!(
        matches!(queued, Some(wait_condition_response::Event::Queued(_))),
        "{queued:?}"
    );
    let described = conditions
        .describe(DescribeConditionRequest {
            name: "not-empty".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.lock, "queue-lock");
    assert_eq!(described.waiters.len(), 1);
    assert_eq!(described.waiters[0].session_id, waiter);

    // The lock was given up: another session takes it, then notifies.
    let other_token = take_lock(&mut locks, other, "queue-lock").await;
    let notified = conditions
        .notify(NotifyConditionRequest {
            name: "not-empty".into(),
            count: 0,
            all: false,
        })
        .await
        .expect("notify")
        .into_inner();
    assert_eq!(notified.woken, 1);
    let lock = locks
        .describe(DescribeLockRequest {
            name: "queue-lock".into(),
        })
        .await
        .expect("describe lock")
        .into_inner();
    assert_eq!(
        lock.waiters.len(),
        1,
        "the notified waiter queues for the lock"
    );
    locks
        .release(ReleaseLockRequest {
            session_id: other,
            name: "queue-lock".into(),
            fencing_token: other_token,
        })
        .await
        .expect("release");

    match next(&mut waiting).await.event {
        Some(wait_condition_response::Event::Reacquired(r)) => {
            assert!(!r.timed_out);
            assert!(r.fencing_token > other_token, "{r:?} after {other_token}");
        }
        other => panic!("expected reacquired, got {other:?}"),
    }
    assert!(waiting.message().await.expect("clean end").is_none());
}

fn barrier_wait(session_id: u64, parties: u32) -> WaitBarrierRequest {
    WaitBarrierRequest {
        session_id,
        name: "stage".into(),
        parties,
        timeout_ms: None,
    }
}

fn passed(message: WaitBarrierResponse) -> Passed {
    match message.event {
        Some(wait_barrier_response::Event::Passed(p)) => p,
        other => panic!("expected passed, got {other:?}"),
    }
}

/// Two parties meet; returns what each was told, first arrival first.
async fn meet(barriers: &mut BarriersClient<Channel>, first: u64, second: u64) -> [Passed; 2] {
    let mut early = barriers
        .wait(barrier_wait(first, 2))
        .await
        .expect("wait")
        .into_inner();
    let queued = next(&mut early).await.event;
    assert!(
        matches!(queued, Some(wait_barrier_response::Event::Queued(ref q)) if q.position == 1),
        "{queued:?}"
    );
    let mut last = barriers
        .wait(barrier_wait(second, 0))
        .await
        .expect("wait")
        .into_inner();
    let last = passed(next(&mut last).await);
    [passed(next(&mut early).await), last]
}

async fn describe_barrier(barriers: &mut BarriersClient<Channel>) -> DescribeBarrierResponse {
    barriers
        .describe(DescribeBarrierRequest {
            name: "stage".into(),
        })
        .await
        .expect("describe")
        .into_inner()
}

#[tokio::test]
async fn barrier_of_two_passes_both_and_a_dropped_waiter_breaks_it_until_reset() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut barriers = BarriersClient::new(channel.clone());
    let (a, b) = (session(&channel).await, session(&channel).await);

    let [early, last] = meet(&mut barriers, a, b).await;
    assert_eq!((early.arrival_index, last.arrival_index), (0, 1));
    assert_eq!((early.generation, last.generation), (0, 0));

    let mismatch = barriers.wait(barrier_wait(a, 3)).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::FailedPrecondition, "{mismatch:?}");

    // A party leaves while waiting: broken, for parties now and later.
    let mut leaving = barriers
        .wait(barrier_wait(a, 2))
        .await
        .expect("wait")
        .into_inner();
    next(&mut leaving).await;
    drop(leaving);
    let client = barriers.clone();
    until("the barrier breaks", || {
        let mut client = client.clone();
        async move { describe_barrier(&mut client).await.broken }
    })
    .await;
    let aborted = barriers.wait(barrier_wait(b, 2)).await.unwrap_err();
    assert_eq!(aborted.code(), Code::Aborted, "{aborted:?}");

    let reset = barriers
        .reset(ResetBarrierRequest {
            name: "stage".into(),
        })
        .await
        .expect("reset")
        .into_inner();
    assert_eq!(reset.aborted, 0);
    assert!(!describe_barrier(&mut barriers).await.broken);
    let [early, last] = meet(&mut barriers, b, a).await;
    assert_eq!((early.arrival_index, last.arrival_index), (0, 1));
    assert!(early.generation > 0 && early.generation == last.generation);
}

#[tokio::test]
async fn a_waiting_party_gets_aborted_when_another_leaves() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut barriers = BarriersClient::new(channel.clone());
    let (a, b) = (session(&channel).await, session(&channel).await);
    let client = barriers.clone();
    let open = move |session_id| {
        let mut barriers = client.clone();
        async move {
            let mut stream = barriers
                .wait(barrier_wait(session_id, 3))
                .await
                .expect("wait")
                .into_inner();
            next(&mut stream).await;
            stream
        }
    };
    let mut staying = open(a).await;
    let leaving = open(b).await;
    drop(leaving);
    let status = end(&mut staying).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(describe_barrier(&mut barriers).await.broken);
}

#[tokio::test]
async fn health_and_list_know_the_new_primitives() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let services = [
        "syncd.v1.Semaphores",
        "syncd.v1.RwLocks",
        "syncd.v1.Events",
        "syncd.v1.Conditions",
        "syncd.v1.Barriers",
    ];
    common::rpc::assert_serving(&channel, &services).await;

    let me = session(&channel).await;
    let mut semaphores = SemaphoresClient::new(channel.clone());
    let mut grant = semaphores
        .acquire(semaphore_request(me, "pool", 2))
        .await
        .expect("acquire")
        .into_inner();
    semaphore_granted(next(&mut grant).await);
    let mut rwlocks = RwLocksClient::new(channel.clone());
    let mut grant = rwlocks
        .acquire(rwlock_request(me, RwMode::Read))
        .await
        .expect("acquire")
        .into_inner();
    rw_granted(next(&mut grant).await);
    EventsClient::new(channel.clone())
        .set(SetEventRequest {
            name: "ready".into(),
        })
        .await
        .expect("set");
    let mut barriers = BarriersClient::new(channel.clone());
    let mut alone = barriers
        .wait(barrier_wait(me, 1))
        .await
        .expect("wait")
        .into_inner();
    passed(next(&mut alone).await);

    let mut system = SystemClient::new(channel);
    let all = system
        .list(ListRequest::default())
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<(&str, &str)> = (all.primitives.iter())
        .map(|p| (p.kind.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("semaphore", "pool"),
            ("rwlock", "table"),
            ("event", "ready"),
            ("barrier", "stage"),
        ]
    );
    let only = system
        .list(ListRequest {
            kind: "rwlock".into(),
            prefix: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(only.primitives.len(), 1);
}
