//! "Who holds this lock?": `syncctl inspect KIND NAME` shows holders and
//! waiters (session, client name, host, fencing token, times) for every
//! kind, and `syncctl sessions` lists every session with what it holds.
//! Timeouts here only stop a hang.

mod common;

use std::time::Duration;

use common::{rpc, run_bounded, syncctl, Syncd};
use serde_json::Value;
use syncd::client::{Client, ClientOptions};

async fn connect(syncd: &Syncd, name: &str) -> Client {
    let options = ClientOptions {
        session_ttl: Duration::from_secs(20),
        client_name: name.into(),
        ..ClientOptions::default()
    };
    Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect")
}

/// Runs `syncctl ARGS --output json` and parses its one line.
fn json(addr: &str, args: &[&str]) -> Value {
    let output = run_bounded(syncctl(addr).args(args).args(["--output", "json"]));
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("one JSON value")
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_and_sessions_show_who_holds_and_who_waits() {
    let syncd = Syncd::start();
    let holder = connect(&syncd, "holder@build-3").await;
    let waiter = connect(&syncd, "waiter@build-4").await;
    let guard = holder.lock("deploy").acquire().await.expect("acquire");
    let permits = holder
        .semaphore("builders", 3)
        .acquire(2)
        .await
        .expect("permits");
    let waiting = tokio::spawn({
        let lock = waiter.lock("deploy");
        async move { lock.acquire().await }
    });
    rpc::until("the waiter queues", async || {
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

    let addr = syncd.addr.clone();
    let lock = tokio::task::spawn_blocking(move || json(&addr, &["inspect", "lock", "deploy"]))
        .await
        .unwrap();
    assert_eq!(lock["kind"], "lock");
    assert_eq!(lock["name"], "deploy");
    let state = lock["state"].as_str().unwrap();
    assert!(state.starts_with("held by session"), "{state}");
    let held = &lock["holders"][0];
    assert_eq!(held["session_id"], guard.session_id());
    assert_eq!(held["client_name"], "holder@build-3");
    assert_eq!(held["fencing_token"], guard.fencing_token());
    assert!(held["host"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(held["lease_left_ms"].as_u64().unwrap() > 0);
    let queued = &lock["waiters"][0];
    assert_eq!(queued["position"], 1);
    assert_eq!(queued["session_id"], waiter.session_id());
    assert_eq!(queued["client_name"], "waiter@build-4");

    let addr = syncd.addr.clone();
    let sem = tokio::task::spawn_blocking(move || json(&addr, &["inspect", "sem", "builders"]))
        .await
        .unwrap();
    assert_eq!(sem["holders"][0]["holds"], "2 permits");
    assert_eq!(sem["holders"][0]["fencing_token"], permits.fencing_token());

    let addr = syncd.addr.clone();
    let sessions = tokio::task::spawn_blocking(move || json(&addr, &["sessions"]))
        .await
        .unwrap();
    let sessions = sessions.as_array().expect("an array");
    let of = |id: u64| {
        sessions
            .iter()
            .find(|s| s["session_id"] == id)
            .unwrap_or_else(|| panic!("session {id} not listed: {sessions:?}"))
    };
    let listed = of(holder.session_id());
    assert_eq!(listed["client_name"], "holder@build-3");
    let tokens: Vec<u64> = listed["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["fencing_token"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, vec![guard.fencing_token(), permits.fencing_token()]);
    assert_eq!(of(waiter.session_id())["waiting"], 1);

    // The text form: one table per section, with its header.
    let addr = syncd.addr.clone();
    let text = tokio::task::spawn_blocking(move || {
        run_bounded(syncctl(&addr).args(["inspect", "lock", "deploy"]))
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("holders: 1\n  SESSION  CLIENT"), "{text}");
    assert!(text.contains("waiters: 1\n  #  SESSION"), "{text}");

    guard.release().await.expect("release");
    rpc::answer(waiting).await.expect("granted next");
}

#[test]
fn inspect_of_something_absent_says_so_and_a_wrong_kind_is_a_usage_error() {
    let syncd = Syncd::start();
    let absent = run_bounded(syncctl(&syncd.addr).args(["inspect", "pool", "nothing"]));
    assert_eq!(absent.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&absent.stdout),
        "pool \"nothing\": does not exist\nholders: none\nwaiters: none\n"
    );
    let wrong = run_bounded(syncctl(&syncd.addr).args(["inspect", "mutex", "x"]));
    assert_eq!(wrong.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_closes_a_whole_session_and_what_it_held_goes_on() {
    let syncd = Syncd::start();
    let stuck = connect(&syncd, "stuck").await;
    let _guard = stuck.lock("a").acquire().await.expect("a");
    let _other = stuck.lock("b").acquire().await.expect("b");
    let session = stuck.session_id().to_string();
    let addr = syncd.addr.clone();
    let closed = tokio::task::spawn_blocking(move || {
        run_bounded(syncctl(&addr).args(["revoke", "--session", &session, "--reason", "ops"]))
    })
    .await
    .unwrap();
    assert_eq!(closed.status.code(), Some(0), "{closed:?}");
    assert_eq!(
        String::from_utf8_lossy(&closed.stdout),
        format!("closed session {}: 2 holds released\n", stuck.session_id())
    );
    let next = connect(&syncd, "next").await;
    let taken = next.lock("a").try_acquire().await.expect("try");
    assert!(taken.is_some(), "the lock was freed");
    let loss = tokio::time::timeout(common::HANG_GUARD, stuck.session_lost())
        .await
        .expect("the stuck client finds out");
    assert_eq!(loss.session_id.to_string(), closed_session_id(&closed));

    // Neither a token nor --session: a usage error.
    let neither = run_bounded(syncctl(&syncd.addr).args(["revoke"]));
    assert_eq!(neither.status.code(), Some(2));
}

fn closed_session_id(output: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim_start_matches("closed session ")
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}
