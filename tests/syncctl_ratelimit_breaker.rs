//! syncctl's rate limit and circuit breaker commands against the real
//! server, as separate processes: a breaker that opens after three failing
//! calls, refuses the next without running it (exit 6), lets a probe through
//! after its open timeout and closes again; refusals while a probe runs and
//! while forced open; failures of CMDs that were killed or not found; watch
//! printing the transitions as they happen; token buckets that run dry
//! (exit 3), run CMD with its exit code, and refuse bad requests.
//!
//! Waits are bounded only to stop a hung test; the open timeouts are waited
//! for by polling `describe`, never by a sleep that must be long enough.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;

use common::cli::{finish, run, spawn, Ended};
use common::{eventually, Syncd};
use serde_json::Value;

// --- helpers ---------------------------------------------------------------

/// Runs `syncctl ARGS...`, which must exit 0; returns its stdout.
fn run_ok(addr: &str, args: &[&str]) -> String {
    let ended = run(addr, args);
    assert_eq!(ended.code, Some(0), "{args:?}: {}", ended.stderr);
    ended.stdout
}

/// `syncctl --output json KIND describe NAME`, parsed.
fn describe(addr: &str, kind: &str, name: &str) -> Value {
    let stdout = run_ok(addr, &["--output", "json", kind, "describe", name]);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A breaker's state as `describe` names it.
fn state(addr: &str, name: &str) -> String {
    let breaker = describe(addr, "breaker", name);
    breaker["state"].as_str().expect("a state").to_string()
}

/// Asserts that syncctl failed with `code` and exactly one line on stderr
/// that starts with `start`.
fn assert_one_line(ended: &Ended, code: i32, start: &str) {
    assert_eq!(ended.code, Some(code), "{ended:?}");
    assert_eq!(ended.stderr.lines().count(), 1, "{}", ended.stderr);
    assert!(ended.stderr.starts_with(start), "{}", ended.stderr);
}

/// `sh -c 'touch PATH'`, as CMD words.
fn touch(path: &Path) -> [String; 3] {
    [
        "sh".into(),
        "-c".into(),
        format!("touch '{}'", path.display()),
    ]
}

// --- 1. circuit breakers ---------------------------------------------------

#[test]
fn a_breaker_opens_refuses_without_running_the_command_and_closes_after_a_probe() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let call = |cmd: &[&str]| {
        let flags = ["breaker", "call", "db", "--threshold", "3"];
        run(
            addr,
            &[&flags[..], &["--open-timeout", "1s", "--"], cmd].concat(),
        )
    };

    for _ in 0..3 {
        let failed = call(&["false"]);
        assert_eq!(failed.code, Some(1), "CMD's code: {}", failed.stderr);
        assert_eq!(failed.stderr, "");
    }
    let breaker = describe(addr, "breaker", "db");
    assert_eq!(breaker["state"], "open", "{breaker}");
    assert_eq!(breaker["reason"], "3 consecutive failures", "{breaker}");
    assert_eq!(breaker["settings"]["failure_threshold"], 3, "{breaker}");
    assert_eq!(breaker["settings"]["open_timeout_ms"], 1000, "{breaker}");

    // Refused: exit 6, one line, and CMD did not run.
    let ran = dir.path().join("ran");
    let touch_ran = touch(&ran);
    let words: Vec<&str> = touch_ran.iter().map(String::as_str).collect();
    let refused = call(&words);
    assert_one_line(
        &refused,
        6,
        "syncctl: breaker \"db\" is open; next probe in ",
    );
    assert!(!ran.exists(), "CMD ran although the breaker is open");
    // A refused call holds no permit.
    assert_eq!(
        describe(addr, "breaker", "db")["permits"],
        Value::Array(vec![])
    );

    // After the open timeout, a probe goes through and closes it.
    eventually("the breaker turns half-open", || {
        state(addr, "db") == "half-open"
    });
    let probe = call(&[
        "sh",
        "-c",
        "echo \"$SYNCD_BREAKER_NAME $SYNCD_BREAKER_STATE $SYNCD_BREAKER_PROBE\"",
    ]);
    assert_eq!(probe.code, Some(0), "{}", probe.stderr);
    assert_eq!(probe.stdout, "db half-open 1\n");
    let breaker = describe(addr, "breaker", "db");
    assert_eq!(breaker["state"], "closed", "{breaker}");
    assert_eq!(breaker["probes_in_flight"], 0, "{breaker}");
    let text = run_ok(addr, &["breaker", "describe", "db"]);
    assert!(text.starts_with("breaker \"db\": closed ("), "{text}");
    assert!(
        text.contains("settings: opens after 3 failures in a row; stays open 1s;"),
        "{text}"
    );

    // Without settings flags: the existing breaker's. A closed call gets
    // no probe.
    let plain = run(
        addr,
        &[
            "breaker",
            "call",
            "db",
            "--",
            "sh",
            "-c",
            "echo $SYNCD_BREAKER_STATE $SYNCD_BREAKER_PROBE",
        ],
    );
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    assert_eq!(plain.stdout, "closed 0\n");
}

#[test]
fn breaker_settings_must_match_and_a_missing_breaker_needs_them() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = dir.path().join("ran");
    let touch_ran = touch(&ran);
    let cmd: Vec<&str> = touch_ran.iter().map(String::as_str).collect();

    let missing = run(addr, &[&["breaker", "call", "db", "--"][..], &cmd].concat());
    assert_one_line(
        &missing,
        1,
        "syncctl: breaker \"db\" does not exist: pass its settings to create it",
    );
    assert!(!ran.exists());
    assert_eq!(describe(addr, "breaker", "db")["exists"], false);

    run_ok(
        addr,
        &["breaker", "call", "db", "--threshold", "3", "--", "true"],
    );
    let other = [
        "breaker",
        "call",
        "db",
        "--threshold",
        "3",
        "--open-timeout",
        "5s",
        "--",
    ];
    let mismatch = run(addr, &[&other[..], &cmd].concat());
    // Exit 1, not 6: 6 means that the breaker refused a call.
    assert_one_line(
        &mismatch,
        1,
        "syncctl: breaker \"db\" exists with other settings: --threshold 3 \
         --open-timeout 30s --probes 1 --success-threshold 1.",
    );
    assert!(!ran.exists());

    // Settings flags without a rule that opens the breaker: a usage error.
    let no_rule = run(
        addr,
        &["breaker", "call", "x", "--probes", "2", "--", "true"],
    );
    assert_eq!(no_rule.code, Some(2), "{}", no_rule.stderr);
    assert!(
        no_rule.stderr.starts_with("error: settings need a rule"),
        "{}",
        no_rule.stderr
    );
    let no_cmd = run(addr, &["breaker", "call", "x", "--threshold", "2"]);
    assert_eq!(no_cmd.code, Some(2), "{}", no_cmd.stderr);
    assert!(
        no_cmd.stderr.starts_with("error: a command is required"),
        "{}",
        no_cmd.stderr
    );
    assert_eq!(describe(addr, "breaker", "x")["exists"], false);
}

#[test]
fn killed_and_missing_commands_count_as_failures() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let call = |cmd: &[&str]| {
        let flags = ["breaker", "call", "flaky", "--threshold", "2", "--"];
        run(addr, &[&flags[..], cmd].concat())
    };
    let killed = call(&["sh", "-c", "kill -KILL $$"]);
    assert_eq!(killed.code, Some(128 + 9), "{}", killed.stderr);
    let breaker = describe(addr, "breaker", "flaky");
    assert_eq!(breaker["consecutive_failures"], 1, "{breaker}");

    let missing = call(&["no-such-command-for-syncctl-tests"]);
    assert_one_line(&missing, 127, "syncctl: cannot run \"no-such-command");
    let breaker = describe(addr, "breaker", "flaky");
    assert_eq!(breaker["state"], "open", "{breaker}");
    assert_eq!(breaker["reason"], "2 consecutive failures", "{breaker}");
}

#[test]
fn a_busy_probe_slot_and_a_forced_open_breaker_refuse_calls() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    let flags = [
        "breaker",
        "call",
        "svc",
        "--threshold",
        "1",
        "--open-timeout",
        "200ms",
        "--probes",
        "1",
        "--",
    ];
    let failed = run(addr, &[&flags[..], &["false"]].concat());
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    eventually("the breaker turns half-open", || {
        state(addr, "svc") == "half-open"
    });

    // A probe that runs until told to stop takes the only slot...
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.02; done",
        started.display(),
        go.display()
    );
    let probe = spawn(addr, &[&flags[..], &["sh", "-c", &script]].concat());
    eventually("the probe runs", || started.exists());
    let breaker = describe(addr, "breaker", "svc");
    assert_eq!(breaker["probes_in_flight"], 1, "{breaker}");
    assert_eq!(breaker["permits"].as_array().map(Vec::len), Some(1));

    // ... so another call is refused.
    let busy = run(addr, &[&flags[..], &["true"]].concat());
    assert_one_line(
        &busy,
        6,
        "syncctl: breaker \"svc\" is half-open and its probe slots are busy",
    );
    std::fs::write(&go, b"").expect("write go");
    let probed = finish(probe);
    assert_eq!(probed.code, Some(0), "{}", probed.stderr);
    assert_eq!(state(addr, "svc"), "closed");

    // Operators.
    assert_eq!(
        run_ok(addr, &["breaker", "force-open", "svc"]),
        "forced-open\n"
    );
    let forced = run(addr, &["breaker", "call", "svc", "--", "true"]);
    assert_one_line(&forced, 6, "syncctl: breaker \"svc\" is forced open\n");
    let reset = run_ok(addr, &["--output", "json", "breaker", "reset", "svc"]);
    let reset: Value = serde_json::from_str(&reset).expect("JSON");
    assert_eq!(
        reset,
        serde_json::json!({ "name": "svc", "state": "closed" })
    );
    assert_eq!(
        run_ok(addr, &["breaker", "force-close", "svc"]),
        "forced-closed\n"
    );
    run_ok(addr, &["breaker", "call", "svc", "--", "true"]);
    let unknown = run(addr, &["breaker", "reset", "nope"]);
    assert_one_line(
        &unknown,
        1,
        "syncctl: not found: breaker \"nope\" does not exist",
    );
}

#[test]
fn watch_prints_each_transition_as_it_happens() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let flags = [
        "breaker",
        "call",
        "w",
        "--threshold",
        "1",
        "--open-timeout",
        "300ms",
        "--",
    ];
    run_ok(addr, &[&flags[..], &["true"]].concat());

    let mut watch = spawn(addr, &["breaker", "watch", "w", "--count", "3"]);
    let mut lines = BufReader::new(watch.stdout.take().expect("piped stdout")).lines();
    // The state now, printed (and flushed) while the watch goes on.
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "closed (new)");

    let failed = run(addr, &[&flags[..], &["false"]].concat());
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    let rest: Vec<String> = lines.map(|line| line.expect("read")).collect();
    let ended = finish(watch);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(
        rest[0].starts_with("open (1 consecutive failure; half-open in "),
        "{rest:?}"
    );
    assert_eq!(rest[1], "half-open (the open timeout passed)");

    let json = run_ok(
        addr,
        &["--output", "json", "breaker", "watch", "w", "--count", "1"],
    );
    let change: Value = serde_json::from_str(&json).expect("one JSON line");
    assert_eq!(change["name"], "w");
    assert_eq!(change["state"], "half-open");
    assert_eq!(change["reason"], "the open timeout passed");

    let unknown = run(addr, &["breaker", "watch", "nope", "--count", "1"]);
    assert_one_line(
        &unknown,
        1,
        "syncctl: not found: breaker \"nope\" does not exist",
    );
}

// --- 2. rate limits --------------------------------------------------------

/// One token a second, two at most: the third take right after two others
/// finds the bucket empty (it would need the better part of a second).
#[test]
fn a_bucket_runs_dry_and_refills() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let take = ["ratelimit", "take", "api", "--rate", "1", "--burst", "2"];
    let first = run_ok(addr, &take);
    assert_eq!(first, "took 1 token from \"api\"; 1 left\n");
    let second = run_ok(addr, &[&take[..], &["--output", "json"]].concat());
    let second: Value = serde_json::from_str(&second).expect("JSON");
    assert_eq!(
        (&second["name"], &second["tokens"]),
        (&"api".into(), &1.into())
    );
    let dry = run(addr, &[&take[..], &["--timeout", "0s"]].concat());
    assert_one_line(&dry, 3, "syncctl: ");
    assert!(
        dry.stderr.ends_with("(timed out after 0s)\n"),
        "{}",
        dry.stderr
    );
    assert_eq!(dry.stdout, "");

    // Waiting, the token comes as it refills (without --rate/--burst: the
    // existing bucket's).
    let waited = run_ok(addr, &["ratelimit", "take", "api", "--timeout", "30s"]);
    assert!(
        waited.starts_with("took 1 token from \"api\"; "),
        "{waited}"
    );
    let bucket = describe(addr, "ratelimit", "api");
    assert_eq!(
        (&bucket["rate_per_s"], &bucket["burst"]),
        (&1.into(), &2.into())
    );
    let text = run_ok(addr, &["ratelimit", "describe", "api"]);
    assert!(
        text.starts_with("rate limit \"api\": 1 token/s, burst 2; "),
        "{text}"
    );
}

#[test]
fn take_runs_the_command_and_refuses_bad_requests() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let take = ["ratelimit", "take", "cmd", "--rate", "100", "--burst", "10"];
    let script = "echo \"$SYNCD_RATELIMIT_NAME $SYNCD_TOKENS\"; exit 4";
    let ran = run(
        addr,
        &[&take[..], &["--tokens", "3", "--", "sh", "-c", script]].concat(),
    );
    assert_eq!(ran.code, Some(4), "CMD's code: {}", ran.stderr);
    assert_eq!(ran.stdout, "cmd 3\n");
    assert_eq!(ran.stderr, "");

    let missing = run(
        addr,
        &["ratelimit", "take", "cmd", "--", "no-such-command-xyz"],
    );
    assert_one_line(&missing, 127, "syncctl: cannot run \"no-such-command-xyz\"");

    // More tokens than the burst could never pass.
    let too_many = run(addr, &["ratelimit", "take", "cmd", "--tokens", "11"]);
    assert_one_line(&too_many, 1, "syncctl: invalid argument: ");
    assert!(
        too_many.stderr.contains("capacity is 10"),
        "{}",
        too_many.stderr
    );

    // Another rate than the existing bucket's: exit 6, nothing taken.
    let other = run(
        addr,
        &["ratelimit", "take", "cmd", "--rate", "5", "--burst", "10"],
    );
    assert_one_line(&other, 6, "syncctl: failed precondition: ");

    let unknown = run(addr, &["ratelimit", "take", "nope"]);
    assert_one_line(
        &unknown,
        1,
        "syncctl: not found: rate limit \"nope\" does not exist: pass --rate R --burst B",
    );
    assert_eq!(
        run_ok(addr, &["ratelimit", "describe", "nope"]),
        "rate limit \"nope\": does not exist\n"
    );
    let empty = run(addr, &["ratelimit", "take", "cmd", "--"]);
    assert_eq!(empty.code, Some(2), "{}", empty.stderr);
}

#[test]
fn delete_forgets_a_bucket_and_a_breaker() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    run_ok(
        addr,
        &["ratelimit", "take", "old", "--rate", "1", "--burst", "1"],
    );
    let deleted = run_ok(addr, &["ratelimit", "delete", "old"]);
    assert_eq!(
        deleted,
        "deleted rate limit \"old\"; 0 waiting takes ended\n"
    );
    // Made anew with other settings, which would otherwise exit 6.
    run_ok(
        addr,
        &["ratelimit", "take", "old", "--rate", "9", "--burst", "9"],
    );
    let missing = run(addr, &["ratelimit", "delete", "never"]);
    assert_one_line(&missing, 1, "syncctl: ");

    let call = ["breaker", "call", "db", "--threshold", "1", "--", "false"];
    assert_eq!(run(addr, &call).code, Some(1));
    assert_eq!(state(addr, "db"), "open");
    let deleted = run_ok(addr, &["--output", "json", "breaker", "delete", "db"]);
    let deleted: Value = serde_json::from_str(&deleted).expect("JSON");
    assert_eq!(deleted["permits_dropped"], 0, "{deleted}");
    assert_eq!(describe(addr, "breaker", "db")["exists"], false);
    let remade = ["breaker", "call", "db", "--threshold", "5", "--", "true"];
    assert_eq!(run(addr, &remade).code, Some(0), "other settings now");
}
