//! The server as any gRPC client sees it: status codes for bad input, wait
//! deadlines, cancelled waits, health, reflection, shutdown, the data
//! directory lock. Uses the raw generated stubs, not the client library.

mod common;

use std::time::Duration;

use common::rpc::{list_services_v1, list_services_v1alpha, open_channel};
use common::Syncd;
use syncd::proto::v1::{
    acquire_lock_response::Event, locks_client::LocksClient, sessions_client::SessionsClient,
    system_client::SystemClient, AcquireLockRequest, CreateSessionRequest, DescribeLockRequest,
    PingRequest, ReleaseLockRequest,
};
use tonic::transport::Channel;
use tonic::Code;

async fn session(channel: &Channel, ttl_ms: u64) -> u64 {
    SessionsClient::new(channel.clone())
        .create(CreateSessionRequest {
            ttl_ms,
            client_name: "test".into(),
        })
        .await
        .expect("create session")
        .into_inner()
        .session_id
}

fn acquire_request(session_id: u64, name: &str, timeout_ms: Option<u64>) -> AcquireLockRequest {
    AcquireLockRequest {
        session_id,
        name: name.into(),
        timeout_ms,
        acquire_id: 0,
    }
}

/// Acquires a lock that is expected to be free; returns the token.
async fn take(locks: &mut LocksClient<Channel>, session_id: u64, name: &str) -> u64 {
    let mut stream = locks
        .acquire(acquire_request(session_id, name, Some(0)))
        .await
        .expect("acquire")
        .into_inner();
    match stream.message().await.expect("grant").and_then(|m| m.event) {
        Some(Event::Granted(granted)) => granted.fencing_token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn waiter_count(locks: &mut LocksClient<Channel>, name: &str) -> usize {
    locks
        .describe(DescribeLockRequest { name: name.into() })
        .await
        .expect("describe")
        .into_inner()
        .waiters
        .len()
}

async fn eventually_no_waiters(locks: &mut LocksClient<Channel>, name: &str) {
    let deadline = tokio::time::Instant::now() + common::HANG_GUARD;
    while waiter_count(locks, name).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "waiter never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_the_server_keeps_serving() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut sessions = SessionsClient::new(channel.clone());
    let mut locks = LocksClient::new(channel.clone());

    let ttl_zero = sessions
        .create(CreateSessionRequest {
            ttl_ms: 0,
            client_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(ttl_zero.code(), Code::InvalidArgument, "{ttl_zero:?}");
    assert!(ttl_zero.message().contains("ttl_ms"), "{ttl_zero:?}");

    let mine = session(&channel, 10_000).await;
    let other = session(&channel, 10_000).await;

    for (name, what) in [
        (String::new(), "empty"),
        ("x".repeat(300), "300 bytes"),
        ("a\nb".to_owned(), "control character"),
    ] {
        let status = locks
            .acquire(acquire_request(mine, &name, None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }

    let huge = locks
        .acquire(acquire_request(mine, &"x".repeat(2 * 1024 * 1024), None))
        .await
        .unwrap_err();
    assert!(
        huge.code() == Code::ResourceExhausted,
        "huge message: {huge:?}"
    );

    let unknown = locks
        .acquire(acquire_request(999_999, "db", None))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let token = take(&mut locks, mine, "db").await;
    let foreign = locks
        .release(ReleaseLockRequest {
            session_id: other,
            name: "db".into(),
            fencing_token: token,
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::FailedPrecondition, "{foreign:?}");
    let wrong_token = locks
        .release(ReleaseLockRequest {
            session_id: mine,
            name: "db".into(),
            fencing_token: token + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_token.code(), Code::FailedPrecondition);

    // Still serving, and the lock is still held by its owner.
    SystemClient::new(channel.clone())
        .ping(PingRequest {})
        .await
        .expect("ping after bad input");
    let holder = locks
        .describe(DescribeLockRequest { name: "db".into() })
        .await
        .unwrap()
        .into_inner()
        .holder
        .expect("still held");
    assert_eq!((holder.session_id, holder.fencing_token), (mine, token));
}

#[tokio::test]
async fn timed_out_and_dropped_waits_leave_nothing_queued() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel.clone());
    let holder = session(&channel, 10_000).await;
    let waiter = session(&channel, 10_000).await;
    take(&mut locks, holder, "busy").await;

    // Try once: refused at once.
    let busy = locks
        .acquire(acquire_request(waiter, "busy", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::DeadlineExceeded, "{busy:?}");
    assert_eq!(waiter_count(&mut locks, "busy").await, 0);

    // The explicit timeout: queued, then DEADLINE_EXCEEDED.
    let mut stream = locks
        .acquire(acquire_request(waiter, "busy", Some(200)))
        .await
        .expect("queued")
        .into_inner();
    let first = stream.message().await.unwrap().and_then(|m| m.event);
    assert!(matches!(first, Some(Event::Queued(_))), "{first:?}");
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    assert_eq!(waiter_count(&mut locks, "busy").await, 0);

    // The call's own gRPC deadline, with no timeout field: the server ends
    // the stream itself.
    let mut request = tonic::Request::new(acquire_request(waiter, "busy", None));
    request.set_timeout(Duration::from_millis(300));
    let result = async {
        let mut stream = locks.acquire(request).await?.into_inner();
        loop {
            stream.message().await?;
        }
    };
    let status: tonic::Status = match result.await {
        Ok(()) => unreachable!("the loop only ends with an error"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    eventually_no_waiters(&mut locks, "busy").await;

    // A dropped stream leaves the queue.
    let mut stream = locks
        .acquire(acquire_request(waiter, "busy", None))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().and_then(|m| m.event);
    assert!(matches!(first, Some(Event::Queued(_))), "{first:?}");
    assert_eq!(waiter_count(&mut locks, "busy").await, 1);
    drop(stream);
    eventually_no_waiters(&mut locks, "busy").await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    common::rpc::assert_serving(&channel, &["", "syncd.v1.Locks"]).await;
    let v1 = list_services_v1(channel.clone()).await;
    let v1alpha = list_services_v1alpha(channel).await;
    for services in [&v1, &v1alpha] {
        for expected in [
            "syncd.v1.Locks",
            "syncd.v1.Sessions",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing in {services:?}"
            );
        }
    }
}

#[tokio::test]
async fn sigterm_ends_waiting_streams_with_unavailable_and_exits_zero() {
    let mut syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel.clone());
    let holder = session(&channel, 10_000).await;
    let waiter = session(&channel, 10_000).await;
    take(&mut locks, holder, "held").await;
    let mut stream = locks
        .acquire(acquire_request(waiter, "held", None))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        stream.message().await.unwrap().and_then(|m| m.event),
        Some(Event::Queued(_))
    ));
    let status = tokio::task::spawn_blocking(move || {
        let status = syncd.terminate();
        (syncd, status)
    });
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let (_syncd, status) = status.await.unwrap();
    assert!(status.success(), "syncd exited with {status:?}");
}

#[test]
fn a_second_syncd_on_the_same_data_refuses_to_start() {
    let syncd = Syncd::start();
    let output = common::run_bounded(
        std::process::Command::new(common::syncd_bin())
            .arg("serve")
            .arg("--data")
            .arg(syncd.data_dir())
            .arg("--listen")
            .arg("127.0.0.1:0"),
    );
    assert_eq!(output.status.code(), Some(3), "the data directory's code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another syncd"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn server_kill9_and_restart_keeps_holds_and_tokens_only_grow() {
    let mut syncd = Syncd::start();
    let channel_a = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel_a.clone());
    let holder = session(&channel_a, 30_000).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(take(&mut locks, holder, &format!("warmup-{i}")).await);
    }
    let held = take(&mut locks, holder, "kept").await;
    tokens.push(held);

    syncd.kill9();
    syncd.restart();
    let channel_b = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel_b.clone());
    let description = locks
        .describe(DescribeLockRequest {
            name: "kept".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let still = description.holder.expect("the hold survived kill -9");
    assert_eq!((still.session_id, still.fencing_token), (holder, held));
    // The session got a fresh lease after the restart.
    assert!(
        still.lease_left_ms > 20_000,
        "lease left {}",
        still.lease_left_ms
    );

    let other = session(&channel_b, 10_000).await;
    let fresh = take(&mut locks, other, "new-after-restart").await;
    assert!(
        tokens.iter().all(|t| fresh > *t),
        "token {fresh} after restart, earlier {tokens:?}"
    );
}

#[tokio::test]
async fn a_corrupted_data_directory_is_refused_not_served_empty() {
    // The store without the write-ahead log, whatever the environment says:
    // on the log, a sled that lost its records is rebuilt from the log
    // (`tests/write_ahead_log.rs`).
    let sled_alone = [("SYNCD_WRITE_AHEAD_LOG".to_owned(), "false".to_owned())];
    let dir = tempfile::tempdir().unwrap();
    let mut syncd = Syncd::start_in(&dir.path().join("data"), &[], &sled_alone);
    let channel = open_channel(&syncd).await;
    let mut locks = LocksClient::new(channel.clone());
    let owner = session(&channel, 10_000).await;
    take(&mut locks, owner, "precious").await;
    drop(locks);
    drop(channel);
    let data = syncd.data_dir().to_path_buf();
    let status = tokio::task::spawn_blocking(move || {
        let status = syncd.terminate();
        (syncd, status)
    });
    let (_syncd, status) = status.await.unwrap();
    assert!(status.success());

    // Flip bits all over sled's log.
    let db = data.join("db");
    let mut bytes = std::fs::read(&db).expect("sled keeps its log in `db`");
    for byte in bytes.iter_mut().step_by(7) {
        *byte ^= 0xff;
    }
    std::fs::write(&db, bytes).unwrap();

    let output = common::run_bounded(
        std::process::Command::new(common::syncd_bin())
            .env("SYNCD_WRITE_AHEAD_LOG", "false")
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "served corrupt data? stderr: {stderr}"
    );
    assert!(
        stderr.contains("corrupt") || stderr.contains("invalid"),
        "stderr: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "it must not start listening"
    );
}
