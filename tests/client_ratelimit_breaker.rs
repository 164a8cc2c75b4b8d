//! The client library's rate limit and circuit breaker handles against the
//! real server, with one client (and so one session) per process it stands
//! for. Times are only ever checked from below (a wait lasted at least
//! this long); waits for the server are observed through `describe` or
//! polled in bounded loops, and the long timeouts only stop a hung test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::rpc::{answer, kill9_and_restart, open_channel, until};
use common::{Syncd, HANG_GUARD};
use syncd::client::{
    Allowed, BreakerChange, BreakerPermit, BreakerSettings, BreakerState, BreakerWatch, CallError,
    Client, Error,
};
use syncd::proto::v1::{sessions_client::SessionsClient, CloseSessionRequest};
use tokio::time::Instant;
use tonic::Code;

async fn connect(syncd: &Syncd) -> Client {
    common::rpc::client(syncd, "client-ratelimit-breaker-test").await
}

/// How long a wait that should succeed may take: only there to stop a hang.
const LONG: Duration = Duration::from_secs(60);

/// A wait that must time out.
const SHORT: Duration = Duration::from_millis(200);

fn status_code(error: &Error) -> Code {
    match error {
        Error::Status(status) => status.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

// --- rate limits -------------------------------------------------------------

#[tokio::test]
async fn a_bucket_gives_its_burst_at_once_then_tokens_at_its_rate() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let bucket = client.rate_limit("api", 5, 10);
    assert_eq!(bucket.name(), "api");

    let started = Instant::now();
    // A new bucket is full: the whole burst at once.
    assert_eq!(bucket.acquire(10).await.unwrap(), 0);
    let state = bucket.describe().await.unwrap();
    assert_eq!(
        (state.name.as_str(), state.rate_per_s, state.capacity),
        ("api", 5, 10)
    );

    // Empty now: a try is refused with the time until a token is there.
    let refused = bucket.try_acquire(1).await.unwrap();
    assert!(!refused.taken, "{refused:?}");
    assert!(refused.retry_after > Duration::ZERO, "{refused:?}");

    // The 11th token comes at the rate: 5 per second, so 200 ms after the
    // bucket was made.
    bucket.acquire_timeout(1, LONG).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "took only {waited:?}");

    // A handle without settings uses the bucket's own.
    let other = connect(&syncd).await;
    let existing = other.rate_limit("api", 0, 0);
    existing.acquire_timeout(1, LONG).await.unwrap();
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let syncd = Syncd::start();
    let first = connect(&syncd).await;
    let second = connect(&syncd).await;
    let bucket = first.rate_limit("fair", 5, 2);
    assert_eq!(bucket.acquire(2).await.unwrap(), 0);

    // Two tokens come after 400 ms; the waiter is first in line until then.
    let waiter = tokio::spawn({
        let bucket = bucket.clone();
        async move { bucket.acquire_timeout(2, LONG).await }
    });
    until("the acquire of 2 waits", async || {
        bucket.describe().await.unwrap().waiters.len() == 1
    })
    .await;
    let waiting = bucket.describe().await.unwrap();
    assert_eq!(waiting.waiters[0].permits, 2, "{waiting:?}");

    // A smaller request does not pass the one that waits, even once a token
    // is there.
    let late = second.rate_limit("fair", 0, 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let refused = late.try_acquire(1).await.unwrap();
    assert!(!refused.taken, "{refused:?}");
    assert!(refused.retry_after > Duration::ZERO, "{refused:?}");

    answer(waiter).await.expect("served at the rate");
    assert!(bucket.describe().await.unwrap().waiters.is_empty());
}

#[tokio::test]
async fn a_timed_out_acquire_takes_nothing_and_leaves_nothing_queued() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    // One token a second: nothing refills within the test's short waits.
    let bucket = client.rate_limit("slow", 1, 3);
    assert_eq!(bucket.acquire(3).await.unwrap(), 0);

    let once = bucket.acquire_timeout(1, Duration::ZERO).await.unwrap_err();
    assert!(matches!(once, Error::Timeout(_)), "{once}");
    let timed_out = bucket.acquire_timeout(3, SHORT).await.unwrap_err();
    assert!(matches!(timed_out, Error::Timeout(_)), "{timed_out}");
    assert!(bucket.describe().await.unwrap().waiters.is_empty());
}

#[tokio::test]
async fn many_buckets_are_taken_from_all_or_none() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    // One token a second: the test's few round trips refill less than one.
    let global = client.rate_limit("global", 1, 5);
    let user = client.rate_limit("user-7", 1, 2);

    let both = client
        .try_acquire_many(&[(&global, 2), (&user, 2)])
        .await
        .unwrap();
    assert!(both.taken, "{both:?}");
    assert_eq!(both.buckets.len(), 2);
    assert!(both.buckets.iter().all(|b| b.taken), "{both:?}");
    assert_eq!(both.buckets[1].remaining, 0, "{both:?}");

    // The user bucket is empty: nothing is taken from the global one either.
    let refused = client
        .try_acquire_many(&[(&global, 2), (&user, 1)])
        .await
        .unwrap();
    assert!(!refused.taken, "{refused:?}");
    assert!(refused.retry_after > Duration::ZERO, "{refused:?}");
    assert!(
        refused.buckets[0].taken,
        "the global bucket alone had enough"
    );
    assert!(!refused.buckets[1].taken, "{refused:?}");
    assert!(refused.buckets[1].retry_after > Duration::ZERO);
    let global_tokens = global.describe().await.unwrap().tokens;
    assert!(
        global_tokens >= 3,
        "the refused request took from the global bucket: {global_tokens} left"
    );
}

#[tokio::test]
async fn bad_requests_are_errors_at_once() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let bucket = client.rate_limit("small", 5, 10);
    let too_many = bucket.acquire(11).await.unwrap_err();
    assert_eq!(status_code(&too_many), Code::InvalidArgument, "{too_many}");
    let too_many = bucket.try_acquire(11).await.unwrap_err();
    assert_eq!(status_code(&too_many), Code::InvalidArgument, "{too_many}");

    bucket.acquire(1).await.unwrap();
    let mismatch = client
        .rate_limit("small", 5, 20)
        .acquire_timeout(1, SHORT)
        .await
        .unwrap_err();
    assert_eq!(
        status_code(&mismatch),
        Code::FailedPrecondition,
        "{mismatch}"
    );
    let missing = client
        .rate_limit("nothing", 0, 0)
        .acquire_timeout(1, SHORT)
        .await
        .unwrap_err();
    assert_eq!(status_code(&missing), Code::NotFound, "{missing}");
}

// --- circuit breakers --------------------------------------------------------

/// Opens after `failures` failures in a row; half-open after 300 ms.
fn settings(failures: u32) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: failures,
        open_timeout_ms: 300,
        ..BreakerSettings::default()
    }
}

fn permit(allowed: Allowed) -> BreakerPermit {
    match allowed {
        Allowed::Permit(permit) => permit,
        rejected => panic!("expected a permit, got {rejected:?}"),
    }
}

/// Asks for a permit until one comes (the breaker turned half-open).
async fn permit_eventually(breaker: &syncd::client::CircuitBreaker) -> BreakerPermit {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match breaker.allow().await.unwrap() {
            Allowed::Permit(permit) => return permit,
            Allowed::Rejected { .. } => {
                assert!(Instant::now() < deadline, "no permit within {HANG_GUARD:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn next(watch: &mut BreakerWatch) -> BreakerChange {
    tokio::time::timeout(HANG_GUARD, watch.next())
        .await
        .expect("a state change within the hang guard")
        .expect("the watch goes on")
}

async fn failing_call() -> Result<(), std::io::Error> {
    Err(std::io::Error::other("downstream is down"))
}

#[tokio::test]
async fn failures_open_the_breaker_for_everyone_and_a_probe_closes_it() {
    let syncd = Syncd::start();
    let a = connect(&syncd).await;
    let b = connect(&syncd).await;
    let breaker = a.breaker("db").with_settings(settings(3));
    assert_eq!(breaker.name(), "db");

    assert_eq!(
        breaker
            .call(|| async { Ok::<_, std::io::Error>(7) })
            .await
            .unwrap(),
        7
    );
    for _ in 0..3 {
        let failed = breaker.call(failing_call).await.unwrap_err();
        assert!(matches!(failed, CallError::Failed(_)), "{failed:?}");
        assert_eq!(failed.to_string(), "downstream is down");
    }

    // Open: the call does not run.
    let ran = AtomicBool::new(false);
    let refused = breaker
        .call(|| async {
            ran.store(true, Ordering::Relaxed);
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap_err();
    assert!(!ran.load(Ordering::Relaxed), "a refused call must not run");
    match &refused {
        CallError::Rejected { state, retry_after } => {
            assert_eq!(*state, BreakerState::Open);
            assert!(*retry_after > Duration::ZERO, "{refused:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        refused
            .to_string()
            .starts_with("the circuit breaker is open"),
        "{refused}"
    );

    // Another process sees the same breaker, with its own settings.
    let theirs = b.breaker("db");
    let seen = theirs.describe().await.unwrap();
    assert!(seen.exists);
    assert_eq!(seen.state(), BreakerState::Open);
    assert_eq!(seen.reason, "3 consecutive failures");
    assert_eq!(seen.settings.unwrap().failure_threshold, 3);
    assert!(matches!(
        theirs.allow().await.unwrap(),
        Allowed::Rejected {
            state: BreakerState::Open,
            ..
        }
    ));

    // After the open timeout one probe goes; the other process must wait
    // for its outcome.
    let probe = permit_eventually(&breaker).await;
    assert!(probe.is_probe());
    assert_eq!(probe.state(), BreakerState::HalfOpen);
    match theirs.allow().await.unwrap() {
        Allowed::Rejected { state, retry_after } => {
            assert_eq!(state, BreakerState::HalfOpen);
            assert_eq!(retry_after, Duration::ZERO, "no time is known");
        }
        permit => panic!("the only probe slot is taken, got {permit:?}"),
    }
    assert_eq!(probe.success().await.unwrap(), BreakerState::Closed);

    let after = permit(theirs.allow().await.unwrap());
    assert!(!after.is_probe());
    assert_eq!(after.state(), BreakerState::Closed);
    assert_eq!(after.success().await.unwrap(), BreakerState::Closed);
    let seen = theirs.describe().await.unwrap();
    assert_eq!(seen.state(), BreakerState::Closed);
    assert!(seen.permits.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_call_after_the_open_timeout_is_the_probe_that_closes_it() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let breaker = client.breaker("svc").with_settings(settings(1));
    // Taken before the failure is recorded: the breaker opens after it.
    let opened = Instant::now();
    breaker.call(failing_call).await.unwrap_err();
    let deadline = opened + HANG_GUARD;
    loop {
        match breaker.call(|| async { Ok::<_, std::io::Error>(()) }).await {
            Ok(()) => break,
            Err(CallError::Rejected { .. }) => {
                assert!(Instant::now() < deadline, "never half-open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "open for only {waited:?}"
    );
    assert_eq!(
        breaker.describe().await.unwrap().state(),
        BreakerState::Closed
    );
}

#[tokio::test]
async fn watch_reports_every_change_in_order() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let watcher = connect(&syncd).await;
    let breaker = client.breaker("feed").with_settings(settings(1));
    // Made by its first allow.
    permit(breaker.allow().await.unwrap())
        .success()
        .await
        .unwrap();

    let mut watch = watcher.breaker("feed").watch().await.unwrap();
    assert_eq!(next(&mut watch).await.state, BreakerState::Closed);

    breaker.call(failing_call).await.unwrap_err();
    let open = next(&mut watch).await;
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.reason, "1 consecutive failure");
    assert!(open.retry_after > Duration::ZERO, "{open:?}");

    // The server's timer turns it half-open; nobody has to ask.
    let half_open = next(&mut watch).await;
    assert_eq!(half_open.state, BreakerState::HalfOpen);

    let probe = permit(breaker.allow().await.unwrap());
    assert!(probe.is_probe());
    probe.success().await.unwrap();
    let closed = next(&mut watch).await;
    assert_eq!(closed.state, BreakerState::Closed);
    assert_eq!(closed.retry_after, Duration::ZERO);

    let missing = watcher.breaker("nothing").watch().await.unwrap_err();
    assert_eq!(status_code(&missing), Code::NotFound, "{missing}");
}

#[tokio::test]
async fn a_watch_goes_on_across_a_server_restart_without_repeating_itself() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let breaker = client.breaker("durable").with_settings(settings(1));
    permit(breaker.allow().await.unwrap())
        .success()
        .await
        .unwrap();
    let mut watch = breaker.watch().await.unwrap();
    assert_eq!(next(&mut watch).await.state, BreakerState::Closed);

    let _syncd = kill9_and_restart(syncd).await;

    // The watch notices the broken stream and watches again; the state it
    // finds is the one it reported last, so it does not report it again.
    let watching = tokio::spawn(async move { next(&mut watch).await });
    until("the watch is back", async || {
        watching.is_finished() || breaker.describe().await.unwrap().watchers == 1
    })
    .await;
    breaker.call(failing_call).await.unwrap_err();
    let open = answer(watching).await;
    assert_eq!(open.state, BreakerState::Open, "{open:?}");
}

#[tokio::test]
async fn a_watch_goes_on_in_the_new_session_when_its_session_ends() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let breaker = client.breaker("renewed").with_settings(settings(1));
    permit(breaker.allow().await.unwrap())
        .success()
        .await
        .unwrap();
    let mut watch = breaker.watch().await.unwrap();
    assert_eq!(next(&mut watch).await.state, BreakerState::Closed);
    let old_session = client.session_id();
    let in_flight = permit(breaker.allow().await.unwrap());

    // The session ends behind the client's back (as if it had expired).
    let channel = open_channel(&syncd).await;
    SessionsClient::new(channel)
        .close(CloseSessionRequest {
            session_id: old_session,
            reason: String::new(),
        })
        .await
        .unwrap();
    let watching = tokio::spawn(async move { next(&mut watch).await });
    until("the watch is back in a new session", async || {
        watching.is_finished()
            || (client.session_id() != old_session
                && breaker.describe().await.unwrap().watchers == 1)
    })
    .await;

    // The permit went with the session, without an outcome.
    let lost = in_flight.success().await.unwrap_err();
    assert!(matches!(lost, Error::SessionLost(_)), "{lost}");
    assert!(breaker.describe().await.unwrap().permits.is_empty());

    breaker.call(failing_call).await.unwrap_err();
    let open = answer(watching).await;
    assert_eq!(open.state, BreakerState::Open, "{open:?}");
}

#[tokio::test]
async fn a_dropped_probe_frees_its_slot_when_its_session_ends() {
    let syncd = Syncd::start();
    let crashed = connect(&syncd).await;
    let survivor = connect(&syncd).await;
    let breaker = crashed.breaker("flaky").with_settings(settings(1));
    breaker.call(failing_call).await.unwrap_err();
    let probe = permit_eventually(&breaker).await;
    assert!(probe.is_probe());
    drop(probe);

    // Dropped without an outcome: still in flight, the slot still taken.
    let theirs = survivor.breaker("flaky");
    let seen = theirs.describe().await.unwrap();
    assert_eq!(
        (seen.state(), seen.probes_in_flight),
        (BreakerState::HalfOpen, 1)
    );
    assert_eq!(seen.permits.len(), 1, "{seen:?}");
    assert!(matches!(
        theirs.allow().await.unwrap(),
        Allowed::Rejected {
            state: BreakerState::HalfOpen,
            ..
        }
    ));

    drop(breaker);
    crashed.close().await.unwrap();
    let probe = permit(theirs.allow().await.unwrap());
    assert!(probe.is_probe(), "the slot was freed with the session");
    assert_eq!(probe.success().await.unwrap(), BreakerState::Closed);
}

#[tokio::test]
async fn a_permit_from_before_the_breaker_opened_cannot_close_it() {
    let syncd = Syncd::start();
    let slow = connect(&syncd).await;
    let fast = connect(&syncd).await;
    let breaker = slow.breaker("api").with_settings(BreakerSettings {
        failure_threshold: 1,
        open_timeout_ms: 60_000,
        ..BreakerSettings::default()
    });
    let slow_call = permit(breaker.allow().await.unwrap());
    fast.breaker("api").call(failing_call).await.unwrap_err();
    assert_eq!(slow_call.success().await.unwrap(), BreakerState::Open);
}

#[tokio::test]
async fn operators_pin_and_reset_the_breaker() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let missing = client.breaker("ops").force_open().await.unwrap_err();
    assert_eq!(status_code(&missing), Code::NotFound, "{missing}");
    let unmade = client.breaker("ops").allow().await.unwrap_err();
    assert_eq!(status_code(&unmade), Code::NotFound, "{unmade}");

    let breaker = client.breaker("ops").with_settings(settings(1));
    permit(breaker.allow().await.unwrap())
        .success()
        .await
        .unwrap();
    let other = client.breaker("ops").with_settings(settings(2));
    let mismatch = other.allow().await.unwrap_err();
    assert_eq!(
        status_code(&mismatch),
        Code::FailedPrecondition,
        "{mismatch}"
    );

    assert_eq!(
        breaker.force_open().await.unwrap(),
        BreakerState::ForcedOpen
    );
    match breaker.allow().await.unwrap() {
        Allowed::Rejected { state, retry_after } => {
            assert_eq!(
                (state, retry_after),
                (BreakerState::ForcedOpen, Duration::ZERO)
            );
        }
        permit => panic!("forced open, got {permit:?}"),
    }

    assert_eq!(
        breaker.force_close().await.unwrap(),
        BreakerState::ForcedClosed
    );
    // Failures change nothing while it is pinned closed.
    let failed = breaker.call(failing_call).await.unwrap_err();
    assert!(matches!(failed, CallError::Failed(_)), "{failed:?}");
    assert_eq!(
        breaker.describe().await.unwrap().state(),
        BreakerState::ForcedClosed
    );

    assert_eq!(breaker.reset().await.unwrap(), BreakerState::Closed);
    let seen = breaker.describe().await.unwrap();
    assert_eq!(seen.state(), BreakerState::Closed);
    assert_eq!(seen.consecutive_failures, 0);
}

#[tokio::test]
async fn an_allow_names_a_permit_of_the_clients_session() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let breaker = client.breaker("owned").with_settings(settings(5));
    let first = permit(breaker.allow().await.unwrap());
    let second = permit(breaker.allow().await.unwrap());
    assert!(second.fencing_token() > first.fencing_token());
    let seen = breaker.describe().await.unwrap();
    assert_eq!(seen.permits.len(), 2);
    assert!(seen
        .permits
        .iter()
        .all(|p| p.session_id == client.session_id()));
    first.failure().await.unwrap();
    second.success().await.unwrap();
    assert!(breaker.describe().await.unwrap().permits.is_empty());
}

/// Compiles only if the handles' futures may be spawned (are `Send`);
/// never called.
#[allow(dead_code)]
fn futures_are_send(client: Client) {
    fn send<T: Send>(_: T) {}
    let bucket = client.rate_limit("x", 1, 1);
    let breaker = client.breaker("x");
    send(bucket.acquire(1));
    send(bucket.acquire_timeout(1, SHORT));
    send(bucket.try_acquire(1));
    send(bucket.describe());
    send(client.try_acquire_many(&[(&bucket, 1)]));
    send(breaker.allow());
    send(breaker.call(failing_call));
    send(breaker.watch());
    send(breaker.describe());
    send(breaker.force_open());
    send(async move {
        let mut watch = breaker.watch().await?;
        let change = watch.next().await?;
        if let Allowed::Permit(permit) = breaker.allow().await? {
            permit.record(change.state == BreakerState::Closed).await?;
        }
        Ok::<_, Error>(())
    });
}

#[tokio::test]
async fn deleting_ends_waits_and_watches_and_frees_the_name() {
    let syncd = Syncd::start();
    let client = connect(&syncd).await;
    let other = connect(&syncd).await;
    let bucket = client.rate_limit("temp", 1, 1);
    bucket.acquire(1).await.unwrap();
    let waiting = {
        let bucket = other.rate_limit("temp", 1, 1);
        tokio::spawn(async move { bucket.acquire_timeout(1, LONG).await })
    };
    common::rpc::until("a waiter", async || {
        !bucket.describe().await.unwrap().waiters.is_empty()
    })
    .await;
    assert_eq!(bucket.delete().await.unwrap(), 1, "one waiter ended");
    let ended = waiting.await.unwrap().unwrap_err();
    assert_eq!(status_code(&ended), Code::NotFound, "{ended}");
    let remade = client.rate_limit("temp", 50, 5);
    assert_eq!(
        remade.acquire(5).await.unwrap(),
        0,
        "made anew, full, other settings"
    );

    let breaker = client.breaker("temp").with_settings(settings(1));
    let in_flight = permit(breaker.allow().await.unwrap());
    let mut watch = other.breaker("temp").watch().await.unwrap();
    assert_eq!(next(&mut watch).await.state, BreakerState::Closed);
    assert_eq!(breaker.delete().await.unwrap(), 1, "one permit dropped");
    let ended = tokio::time::timeout(LONG, watch.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status_code(&ended), Code::NotFound, "{ended}");
    assert!(!breaker.describe().await.unwrap().exists);
    let late = in_flight.success().await.unwrap_err();
    assert_eq!(status_code(&late), Code::NotFound, "{late}");
    let deleted_again = breaker.delete().await.unwrap_err();
    assert_eq!(status_code(&deleted_again), Code::NotFound);
}
