//! syncctl's queue and pool commands against the real server, as separate
//! processes: items served in priority order, backpressure of a full queue,
//! `get -- CMD` acking or nacking by CMD's exit code (and exiting 7 when the
//! visibility timeout passes while CMD runs), dead letters, items from
//! stdin, join, and pool checkouts that see their resource as new, reused,
//! or new again after an unhealthy checkin.
//!
//! Waits are bounded only to stop a hung test; nothing depends on a sleep.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::cli::{finish, run, spawn, Ended};
use common::{syncctl, Syncd};
use serde_json::Value;

// --- helpers ---------------------------------------------------------------

/// Runs `syncctl ARGS...`, which must exit 0; returns its stdout as it is.
fn run_ok(addr: &str, args: &[&str]) -> String {
    let ended = run(addr, args);
    assert_eq!(ended.code, Some(0), "{args:?}: {}", ended.stderr);
    ended.stdout
}

/// Runs `syncctl ARGS...` with `input` on its stdin.
fn run_with_stdin(addr: &str, args: &[&str], input: &[u8]) -> Ended {
    let mut child = syncctl(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncctl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    finish(child)
}

/// `syncctl --output json KIND describe NAME`, parsed.
fn describe(addr: &str, kind: &str, name: &str) -> Value {
    let stdout = run_ok(addr, &["--output", "json", kind, "describe", name]);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `syncctl --output json queue get NAME [EXTRA...]`, parsed.
fn get_json(addr: &str, name: &str, extra: &[&str]) -> Value {
    let args = [&["--output", "json", "queue", "get", name][..], extra].concat();
    let stdout = run_ok(addr, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

// --- 1. queues -------------------------------------------------------------

#[test]
fn items_come_out_lowest_priority_first_and_exactly_as_put() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let put = |value: &str, priority: &str| -> u64 {
        let id = run_ok(
            addr,
            &["queue", "put", "jobs", value, "--priority", priority],
        );
        id.trim()
            .parse()
            .unwrap_or_else(|_| panic!("an item id: {id:?}"))
    };
    let ids = [put("low", "9"), put("high", "1"), put("middle", "5")];
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids increase: {ids:?}");
    assert_eq!(describe(addr, "queue", "jobs")["ready"], 3);

    // Printed as stored: no newline added.
    let got: Vec<String> = (0..3)
        .map(|_| run_ok(addr, &["queue", "get", "jobs", "--no-ack"]))
        .collect();
    assert_eq!(got, ["high", "middle", "low"]);
    let queue = describe(addr, "queue", "jobs");
    assert_eq!(
        (&queue["ready"], &queue["in_flight"]),
        (&0.into(), &0.into())
    );
    let empty = run(addr, &["queue", "get", "jobs", "--timeout", "0s"]);
    assert_eq!(empty.code, Some(3), "{}", empty.stderr);
    assert_eq!(empty.stderr.lines().count(), 1, "{}", empty.stderr);

    // From stdin, bytes as they are: back as text in JSON when UTF-8...
    let put = run_with_stdin(addr, &["queue", "put", "jobs"], b"line 1\nline 2\n");
    assert_eq!(put.code, Some(0), "{}", put.stderr);
    let item = get_json(addr, "jobs", &[]);
    assert_eq!(item["value"], "line 1\nline 2\n");
    assert_eq!(item["encoding"], "utf-8");
    assert_eq!(item["id"].as_u64(), put.stdout.trim().parse().ok());
    assert_eq!(
        (&item["priority"], &item["deliveries"]),
        (&0.into(), &1.into())
    );
    // ... and as base64 when not.
    let binary = run_with_stdin(addr, &["queue", "put", "jobs"], &[0xff, 0x00, 0x41]);
    assert_eq!(binary.code, Some(0), "{}", binary.stderr);
    let item = get_json(addr, "jobs", &["--no-ack"]);
    assert_eq!(
        (&item["value"], &item["encoding"]),
        (&"/wBB".into(), &"base64".into())
    );
    // Printing acked them all.
    assert_eq!(describe(addr, "queue", "jobs")["in_flight"], 0);
}

#[test]
fn a_full_queue_makes_put_wait_until_its_timeout() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let put = [
        "queue",
        "put",
        "small",
        "--capacity",
        "1",
        "--timeout",
        "300ms",
    ];
    run_ok(addr, &[&put[..], &["first"]].concat());
    let second = run(addr, &[&put[..], &["second"]].concat());
    assert_eq!(second.code, Some(3), "{}", second.stderr);
    assert_eq!(
        second.stderr,
        "syncctl: timed out waiting for queue \"small\" after 300ms\n"
    );
    assert_eq!(second.stdout, "");
    let queue = describe(addr, "queue", "small");
    assert_eq!(
        (&queue["ready"], &queue["capacity"]),
        (&1.into(), &1.into())
    );

    // Another capacity than the existing queue's: exit 6, nothing stored.
    let other = run(addr, &["queue", "put", "small", "--capacity", "2", "x"]);
    assert_eq!(other.code, Some(6), "{}", other.stderr);
    assert!(
        other.stderr.contains("exists with capacity 1"),
        "{}",
        other.stderr
    );
    assert_eq!(run_ok(addr, &["queue", "get", "small"]), "first");
}

#[test]
fn get_with_a_command_nacks_on_failure_and_acks_on_success() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let id = run_ok(addr, &["queue", "put", "work", "job-1"]);
    let id = id.trim();

    // Pending: a join cannot pass yet.
    let early = run(addr, &["queue", "join", "work", "--timeout", "200ms"]);
    assert_eq!(early.code, Some(3), "{}", early.stderr);
    let join = spawn(addr, &["queue", "join", "work"]);

    let failed = run(addr, &["queue", "get", "work", "--", "sh", "-c", "exit 1"]);
    assert_eq!(failed.code, Some(1), "CMD's code: {}", failed.stderr);
    assert_eq!(failed.stderr, "");
    let queue = describe(addr, "queue", "work");
    assert_eq!(
        (&queue["ready"], &queue["in_flight"]),
        (&1.into(), &0.into())
    );

    let script = "echo \"$SYNCD_QUEUE_NAME $SYNCD_ITEM_ID $SYNCD_ITEM_DELIVERIES\"; cat";
    let done = run(addr, &["queue", "get", "work", "--", "sh", "-c", script]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stdout, format!("work {id} 2\njob-1"));
    let queue = describe(addr, "queue", "work");
    assert_eq!(
        (&queue["ready"], &queue["in_flight"]),
        (&0.into(), &0.into())
    );
    let text = run_ok(addr, &["queue", "describe", "work"]);
    assert_eq!(
        text,
        "queue \"work\": does not exist (no items, nobody waits)\n"
    );

    let joined = finish(join);
    assert_eq!(joined.code, Some(0), "{}", joined.stderr);
    run_ok(addr, &["queue", "join", "work", "--timeout", "0s"]);
}

#[test]
fn an_item_nacked_for_the_last_time_goes_to_the_dead_letter_queue() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    run_ok(
        addr,
        &["queue", "put", "mail", "--max-deliveries", "1", "hello"],
    );
    let failed = run(addr, &["queue", "get", "mail", "--", "false"]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("moved to the dead-letter queue \"mail.dlq\""),
        "{}",
        failed.stderr
    );
    assert_eq!(describe(addr, "queue", "mail")["ready"], 0);
    assert_eq!(
        run_ok(addr, &["queue", "get", "mail.dlq", "--no-ack"]),
        "hello"
    );
}

/// The item stays in flight for --visibility-timeout only: a CMD still
/// running then is stopped (exit 7), and the item is delivered again.
#[test]
fn a_command_that_outlives_the_visibility_timeout_is_stopped() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let id = run_ok(addr, &["queue", "put", "slow", "job"]);
    let args = [
        "queue",
        "get",
        "slow",
        "--visibility-timeout",
        "500ms",
        "--kill-grace",
        "10s",
        "--",
        "sleep",
        "60",
    ];
    let ended = run(addr, &args);
    assert_eq!(ended.code, Some(7), "{}", ended.stderr);
    let expected = format!(
        "syncctl: lost item {} of queue \"slow\": its visibility timeout of 500ms is over",
        id.trim()
    );
    assert!(ended.stderr.starts_with(&expected), "{}", ended.stderr);
    let again = get_json(addr, "slow", &[]);
    assert_eq!(
        (&again["value"], &again["deliveries"]),
        (&"job".into(), &2.into())
    );
}

#[test]
fn ack_from_another_syncctl_is_refused_with_one_line() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let id = run_ok(addr, &["queue", "put", "q", "x"]);
    let refused = run(addr, &["queue", "ack", "q", id.trim()]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.starts_with("syncctl: failed precondition: "),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("syncctl queue get NAME -- CMD"),
        "{}",
        refused.stderr
    );
}

// --- 2. pools --------------------------------------------------------------

#[test]
fn a_pool_resource_is_new_then_reused_and_new_after_an_unhealthy_checkin() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let checkout = |script: &str| {
        run(
            addr,
            &[
                "pool", "checkout", "dbs", "--size", "1", "--", "sh", "-c", script,
            ],
        )
    };
    let show = "echo \"$SYNCD_RESOURCE_FRESH $SYNCD_RESOURCE_ID $SYNCD_FENCING_TOKEN\"";
    let fields = |ended: &Ended| -> (String, u64, u64) {
        let line: Vec<&str> = ended.stdout.split_whitespace().collect();
        assert_eq!(line.len(), 3, "{ended:?}");
        let number = |text: &str| text.parse::<u64>().expect("a number");
        (line[0].to_string(), number(line[1]), number(line[2]))
    };

    let first = checkout(show);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let (fresh, id, token) = fields(&first);
    assert_eq!(fresh, "new");
    let second = checkout(show);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let (fresh, same_id, next_token) = fields(&second);
    assert_eq!((fresh.as_str(), same_id), ("reused", id));
    assert!(next_token > token, "{next_token} after {token}");

    // A failing CMD checks the resource in unhealthy: evicted.
    let failed = checkout(&format!("{show}; exit 3"));
    assert_eq!(failed.code, Some(3), "{}", failed.stderr);
    assert_eq!(fields(&failed).0, "reused");
    // Its only resource evicted, nobody waiting: the pool is gone.
    let pool = describe(addr, "pool", "dbs");
    assert_eq!(
        pool["resources"].as_array().map(Vec::len),
        Some(0),
        "{pool}"
    );
    let third = checkout(show);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    let (fresh, new_id, _) = fields(&third);
    assert_eq!(fresh, "new");
    assert_ne!(new_id, id, "a new resource gets a new id");

    let other = checkout_with(addr, &["--size", "2", "--timeout", "0s"]);
    assert_eq!(other.code, Some(6), "{}", other.stderr);
    let pool = describe(addr, "pool", "dbs");
    assert_eq!(pool["size"], 1);
    assert_eq!(pool["resources"][0]["session_id"], 0, "idle: {pool}");
}

fn checkout_with(addr: &str, flags: &[&str]) -> Ended {
    let args = [&["pool", "checkout", "dbs"][..], flags, &["--", "true"]].concat();
    run(addr, &args)
}

#[test]
fn pool_checkout_needs_a_command() {
    let syncd = Syncd::start();
    let missing = run(&syncd.addr, &["pool", "checkout", "p", "--size", "1"]);
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.starts_with("error: a command is required"),
        "{}",
        missing.stderr
    );
    assert_eq!(describe(&syncd.addr, "pool", "p")["size"], 0);
}
