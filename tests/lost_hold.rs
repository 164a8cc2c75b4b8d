//! A holder is told when it loses one hold while its session lives on:
//! - an operator revokes a lock (`Client::revoke`): the next waiter is
//!   granted at once, the holder's guard `lost()` says which hold and why,
//!   its release is refused, and its session goes on;
//! - `syncctl revoke TOKEN` against `syncctl lock acquire -- CMD`: CMD is
//!   stopped and syncctl exits 7 with one line naming the reason;
//! - the notice is pushed at once: a holder whose next keep-alive is twenty
//!   minutes away (a one-hour TTL) hears of a revoke;
//! - a queue item's visibility timeout passes: the keep-alive reply carries
//!   the notice (raw gRPC), again after a kill -9 and restart, until the
//!   client confirms it.
//!
//! Timeouts here only stop a hang; nothing asserts how fast anything is.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
    time::Duration,
};

use common::rpc::{self, next, open_channel};
use common::{eventually, run_bounded, syncctl, wait_bounded, Syncd, HANG_GUARD};
use syncd::client::{Client, ClientOptions, Error, HoldLoss, HoldLossReason};
use syncd::proto::v1::{
    get_response, queues_client::QueuesClient, sessions_client::SessionsClient, GetRequest,
    HoldLossReason as PbReason, KeepAliveRequest, KeepAliveResponse, LostHold, PutRequest,
};
use tokio::time::timeout;
use tonic::{transport::Channel, Code};

async fn connect(syncd: &Syncd, name: &str) -> Client {
    let options = ClientOptions {
        session_ttl: Duration::from_secs(6),
        client_name: name.into(),
        ..ClientOptions::default()
    };
    Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect")
}

/// With a one-hour TTL the next keep-alive is twenty minutes away, far past
/// the hang guard: only the notice the server pushes can end this wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_hold_is_pushed_to_its_holder_at_once() {
    let syncd = Syncd::start();
    let options = ClientOptions {
        session_ttl: Duration::from_secs(3600),
        client_name: "patient".into(),
        ..ClientOptions::default()
    };
    let holder = Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect");
    let operator = connect(&syncd, "operator").await;
    let guard = holder.lock("deploy").acquire().await.expect("acquire");
    // Another hold of the same session, so that the push is known to name
    // only what was lost.
    let kept = holder.lock("kept").acquire().await.expect("acquire");
    operator
        .revoke(guard.fencing_token(), "ops: now")
        .await
        .expect("revoke");

    let loss = timeout(HANG_GUARD, guard.lost())
        .await
        .expect("the notice is pushed, not left for the next keep-alive");
    let HoldLoss::Taken(lost) = &loss else {
        panic!("expected the hold alone to be lost: {loss}");
    };
    assert_eq!(lost.fencing_token, guard.fencing_token());
    assert_eq!(
        lost.reason,
        HoldLossReason::Revoked {
            reason: "ops: now".into()
        }
    );
    assert_eq!(
        holder.lost_holds(),
        vec![lost.clone()],
        "only what was lost"
    );
    kept.release().await.expect("the session lives on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_lock_goes_to_the_next_waiter_and_its_holder_is_told_why() {
    let syncd = Syncd::start();
    let holder = connect(&syncd, "holder").await;
    let next_in_line = connect(&syncd, "next").await;
    let operator = connect(&syncd, "operator").await;
    let guard = holder.lock("deploy").acquire().await.expect("acquire");
    let waiting = tokio::spawn({
        let lock = next_in_line.lock("deploy");
        async move { lock.acquire().await }
    });
    rpc::until("the next client waits", async || {
        holder
            .lock("deploy")
            .describe()
            .await
            .unwrap()
            .waiters
            .len()
            == 1
    })
    .await;

    let revoked = operator
        .revoke(guard.fencing_token(), "alice: deploy stuck on host-3")
        .await
        .expect("revoke");
    assert_eq!(
        (
            revoked.session_id,
            revoked.kind.as_str(),
            revoked.name.as_str()
        ),
        (guard.session_id(), "lock", "deploy")
    );
    let granted = rpc::answer(waiting).await.expect("granted at once");
    assert!(granted.fencing_token() > guard.fencing_token());

    let loss = timeout(HANG_GUARD, guard.lost())
        .await
        .expect("the holder is told");
    let HoldLoss::Taken(lost) = &loss else {
        panic!("expected the hold alone to be lost: {loss}");
    };
    assert_eq!(lost.fencing_token, guard.fencing_token());
    assert_eq!((lost.kind.as_str(), lost.name.as_str()), ("lock", "deploy"));
    assert_eq!(
        lost.reason,
        HoldLossReason::Revoked {
            reason: "alice: deploy stuck on host-3".into()
        }
    );
    assert_eq!(
        loss.to_string(),
        format!(
            "lock \"deploy\" (fencing token {}) was revoked: alice: deploy stuck on host-3",
            guard.fencing_token()
        )
    );
    assert_eq!(holder.lost_holds(), vec![lost.clone()]);

    // The session lives on: the same client takes other locks; the revoked
    // guard's release is refused.
    let session_id = guard.session_id();
    let released = guard.release().await.expect_err("not held any more");
    assert!(
        matches!(&released, Error::Status(s) if s.code() == Code::FailedPrecondition),
        "{released}"
    );
    assert_eq!(holder.session_id(), session_id);
    let other = holder.lock("other").acquire().await.expect("acquire");
    assert_eq!(other.session_id(), session_id);

    // Revoking it again finds nothing.
    let again = operator.revoke(lost.fencing_token, "").await.unwrap_err();
    assert!(
        matches!(&again, Error::Status(s) if s.code() == Code::NotFound),
        "{again}"
    );
}

#[test]
fn syncctl_stops_the_command_and_exits_7_when_its_lock_is_revoked() {
    let syncd = Syncd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("cmd.pid");
    let file = pid_file.display();
    let script = format!(
        "echo $SYNCD_FENCING_TOKEN > '{file}.token'; echo $$ > '{file}.tmp' && \
         mv '{file}.tmp' '{file}' && exec sleep 1000"
    );
    let mut holder = syncctl(&syncd.addr)
        .args([
            "lock", "acquire", "stuck", "--ttl", "3s", "--", "sh", "-c", &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncctl");
    eventually("the command runs", || pid_file.exists());
    let command_pid = std::fs::read_to_string(&pid_file).expect("pid");
    let token = std::fs::read_to_string(format!("{file}.token")).expect("token");

    let revoke = run_bounded(syncctl(&syncd.addr).args([
        "revoke",
        token.trim(),
        "--reason",
        "bob: holder hung",
    ]));
    let said = String::from_utf8_lossy(&revoke.stdout);
    assert_eq!(revoke.status.code(), Some(0), "{revoke:?}");
    assert!(
        said.starts_with(&format!(
            "revoked lock \"stuck\" (token {}) from session ",
            token.trim()
        )),
        "{said}"
    );

    let status = wait_bounded(&mut holder, HANG_GUARD).expect("syncctl exits");
    assert_eq!(status.code(), Some(7), "the hold was lost");
    let stderr = BufReader::new(holder.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
        .collect::<Vec<_>>();
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("was revoked: bob: holder hung; stopping the command")),
        "{stderr:?}"
    );
    let command_dir = format!("/proc/{}", command_pid.trim());
    eventually("the command is gone", || !Path::new(&command_dir).exists());

    // A token nobody holds: one line, exit 1.
    let unknown = run_bounded(syncctl(&syncd.addr).args(["revoke", "999999"]));
    assert_eq!(unknown.status.code(), Some(1));
    let line = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("no hold has fencing token 999999"), "{line}");
}

/// One keep-alive on a fresh stream: the reply's notices.
async fn keep_alive(channel: &Channel, session_id: u64, seen_through: u64) -> Vec<LostHold> {
    let request = KeepAliveRequest {
        session_id,
        notices_seen_through: seen_through,
    };
    let mut replies = SessionsClient::new(channel.clone())
        .keep_alive(tokio_stream::iter(vec![request]))
        .await
        .expect("keep-alive")
        .into_inner();
    let reply: KeepAliveResponse = next(&mut replies).await;
    reply.lost_holds
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_delivery_is_reported_until_confirmed_also_after_a_crash() {
    let syncd = Syncd::start();
    let channel = open_channel(&syncd).await;
    let session_id = rpc::session(&channel).await;
    let mut queues = QueuesClient::new(channel.clone());
    let put = PutRequest {
        session_id,
        name: "jobs".into(),
        value: b"job".to_vec(),
        ..PutRequest::default()
    };
    let mut stored = queues.put(put).await.expect("put").into_inner();
    next(&mut stored).await;
    let get = GetRequest {
        session_id,
        name: "jobs".into(),
        timeout_ms: Some(0),
        visibility_timeout_ms: 1_000,
        no_ack: false,
    };
    let mut got = queues.get(get).await.expect("get").into_inner();
    let Some(get_response::Event::Item(item)) = next(&mut got).await.event else {
        panic!("no item");
    };
    assert!(item.fencing_token > 0);

    // The server's own clock decides; poll (bounded) until it reports.
    let mut lost = Vec::new();
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while lost.is_empty() {
        assert!(std::time::Instant::now() < deadline, "never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
        lost = keep_alive(&channel, session_id, 0).await;
    }
    let notice = &lost[0];
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(notice.seq, 1);
    assert_eq!(notice.fencing_token, item.fencing_token);
    assert_eq!(
        (notice.kind.as_str(), notice.name.as_str()),
        ("queue", "jobs")
    );
    assert_eq!(notice.reason, PbReason::VisibilityExpired as i32);

    // Stored with the session: a crash does not lose it.
    let syncd = rpc::kill9_and_restart(syncd).await;
    let channel = open_channel(&syncd).await;
    assert_eq!(keep_alive(&channel, session_id, 0).await, lost);
    assert!(keep_alive(&channel, session_id, 1).await.is_empty());
    let syncd = rpc::kill9_and_restart(syncd).await;
    let channel = open_channel(&syncd).await;
    assert!(
        keep_alive(&channel, session_id, 0).await.is_empty(),
        "a confirmed notice stays forgotten"
    );
}
