//! "Who holds this lock?": `syncctl inspect KIND NAME` shows holders and
//! waiters (session, client name, host, fencing token, times) for every
//! kind, and `syncctl sessions` lists every session with what it holds.
//! Timeouts here only stop a hang.

mod common;

use std::time::Duration;

use common::{rpc, run_bounded, syncctl, Syncd};
use serde_json::Value;
use syncd::client::{Client, ClientOptions, LossReason};

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
        run_bounded(syncctl(&addr).args([
            "revoke",
            "--session",
            &session,
            "--reason",
            "ops: stuck since noon",
        ]))
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
    // The client is told it was closed, and why: not that it expired.
    assert_eq!(
        loss.reason,
        LossReason::ClosedOnServer("ops: stuck since noon".into()),
        "{loss}"
    );

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

/// The next change, within the hang guard.
async fn next_change(watch: &mut syncd::client::StateWatch) -> syncd::client::StateChange {
    let change = tokio::time::timeout(common::HANG_GUARD, watch.next())
        .await
        .expect("a change within the hang guard")
        .expect("the watch goes on");
    eprintln!("watch: {change}");
    change
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_sees_each_change_and_goes_on_across_a_restart() {
    let syncd = Syncd::start();
    let client = connect(&syncd, "watcher").await;
    let mut exact = client.watch_state("lock", "w-db").await.expect("watch");
    let absent = next_change(&mut exact).await;
    assert!(absent.gone, "{absent:?}");
    let mut prefixed = client.watch_prefix("", "w-").await.expect("watch");

    let guard = client.lock("w-db").acquire().await.expect("acquire");
    let held = next_change(&mut exact).await;
    assert_eq!((held.kind.as_str(), held.name.as_str()), ("lock", "w-db"));
    assert!(
        held.state
            .starts_with(&format!("held by session {}", guard.session_id())),
        "{held:?}"
    );
    let same = next_change(&mut prefixed).await;
    assert_eq!(
        (&same.name, &same.state, same.gone),
        (&held.name, &held.state, false)
    );
    client.event("w-ready").set().await.expect("set");
    let set = next_change(&mut prefixed).await;
    assert_eq!((set.kind.as_str(), set.state.as_str()), ("event", "set"));

    // Across a kill -9: the lock is held still (its session lives on), so
    // the watch repeats nothing; the next change comes through.
    let syncd = rpc::kill9_and_restart(syncd).await;
    guard.release().await.expect("release after the restart");
    let released = next_change(&mut exact).await;
    assert!(released.gone, "a free lock is not listed: {released:?}");
    client.event("w-ready").clear().await.expect("clear");
    let mut seen = vec![next_change(&mut prefixed).await];
    seen.push(next_change(&mut prefixed).await);
    seen.sort_by(|a, b| a.kind.cmp(&b.kind));
    assert_eq!(
        seen.iter()
            .map(|c| (c.kind.as_str(), c.gone))
            .collect::<Vec<_>>(),
        vec![("event", true), ("lock", true)]
    );
    drop(syncd);
}

#[test]
fn syncctl_watch_prints_a_line_per_change_and_stops_at_count() {
    use std::io::{BufRead, BufReader};
    let syncd = Syncd::start();
    let mut holder = common::cli::spawn(&syncd.addr, &["lock", "acquire", "cli-db"]);
    common::read_token(&mut holder);
    let mut watcher = common::cli::spawn(
        &syncd.addr,
        &[
            "watch", "lock", "cli-db", "--count", "2", "--output", "json",
        ],
    );
    let mut lines = BufReader::new(watcher.stdout.take().expect("piped")).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(first["state"]
        .as_str()
        .unwrap()
        .starts_with("held by session"));
    assert_eq!(first["gone"], false);
    // SIGTERM: the holder releases the lock and leaves.
    common::send_signal(holder.id(), "TERM");
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["gone"], true, "{second}");
    let status = common::wait_bounded(&mut watcher, common::HANG_GUARD).expect("watch ends");
    assert_eq!(status.code(), Some(0), "--count 2 ends it");
    common::wait_bounded(&mut holder, common::HANG_GUARD).expect("holder ends");
}
