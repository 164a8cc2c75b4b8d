//! Locks across real processes: the counter example, syncctl around a
//! command, a holder killed with -9, the server killed with -9 while a lock
//! is held.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{run_bounded, send_signal, syncctl, wait_bounded, Syncd, HANG_GUARD};

#[test]
fn counter_example_ends_at_1000() {
    let syncd = Syncd::start();
    let output = run_bounded(
        std::process::Command::new(common::example_bin("counter")).env("SYNCD_ADDR", &syncd.addr),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "counter failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "Final counter: 1000");
}

/// 4 concurrent streams of `syncctl lock acquire shared -- sh -c ...`, 25
/// each: every increment of the shared file happens under the lock, and the
/// fencing tokens the commands see strictly increase in the order of their
/// writes.
#[test]
fn four_syncctl_processes_increment_a_file_to_100() {
    let syncd = Syncd::start();
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let tokens = dir.path().join("tokens");
    std::fs::write(&counter, "0\n").unwrap();
    let script = format!(
        "n=$(cat {c}); echo $((n + 1)) > {c}; echo $SYNCD_FENCING_TOKEN >> {t}",
        c = counter.display(),
        t = tokens.display()
    );
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let output = run_bounded(
                        syncctl(&syncd.addr)
                            .args(["lock", "acquire", "shared", "--ttl", "5s", "--", "sh", "-c"])
                            .arg(&script),
                    );
                    assert!(
                        output.status.success(),
                        "syncctl failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            });
        }
    });
    let count = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(count.trim(), "100");
    let seen: Vec<u64> = std::fs::read_to_string(&tokens)
        .unwrap()
        .lines()
        .map(|l| l.parse().expect("a token per line"))
        .collect();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing: {seen:?}"
    );
}

/// Starts `syncctl lock acquire NAME` without a command (it holds the lock
/// until signalled) and returns it with the token it printed.
fn hold(addr: &str, name: &str, ttl: &str) -> (Child, u64) {
    let mut child = syncctl(addr)
        .args(["lock", "acquire", name, "--ttl", ttl])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn syncctl");
    let token = common::read_token(&mut child);
    (child, token)
}

fn describe(addr: &str, name: &str) -> serde_json::Value {
    let output = run_bounded(syncctl(addr).args(["--output", "json", "lock", "describe", name]));
    assert!(output.status.success(), "describe failed");
    serde_json::from_slice(&output.stdout).expect("describe prints JSON")
}

fn waiters(addr: &str, name: &str) -> usize {
    describe(addr, name)["waiters"]
        .as_array()
        .map_or(0, |w| w.len())
}

#[test]
fn a_killed_holder_loses_the_lock_after_its_ttl() {
    let syncd = Syncd::start();
    let (mut holder, first_token) = hold(&syncd.addr, "job", "2s");
    let mut waiter = syncctl(&syncd.addr)
        .args(["lock", "acquire", "job", "--ttl", "5s", "--", "sh", "-c"])
        .arg("echo $SYNCD_FENCING_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::eventually("the waiter queues", || waiters(&syncd.addr, "job") == 1);

    let killed_at = Instant::now();
    send_signal(holder.id(), "KILL");
    let _ = holder.wait();
    let status = wait_bounded(&mut waiter, HANG_GUARD).expect("waiter finished");
    let waited = killed_at.elapsed();
    assert!(status.success(), "waiter exited with {status:?}");
    let mut line = String::new();
    BufReader::new(waiter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let second_token: u64 = line.trim().parse().unwrap();
    assert!(second_token > first_token);
    // The lease ran from the holder's last keep-alive (sent every third of
    // the TTL): the lock cannot have passed on before 2/3 of the TTL.
    assert!(
        waited >= Duration::from_millis(1_300),
        "lock passed on after {waited:?}, before the lease could expire"
    );
}

#[test]
fn syncctl_exit_codes_for_timeout_and_unreachable_server() {
    let syncd = Syncd::start();
    let (mut holder, _) = hold(&syncd.addr, "busy", "10s");
    let output = run_bounded(syncctl(&syncd.addr).args([
        "lock",
        "acquire",
        "busy",
        "--timeout",
        "0s",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(3), "try-once on a held lock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let output = run_bounded(syncctl(&syncd.addr).args([
        "lock",
        "acquire",
        "busy",
        "--timeout",
        "300ms",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(3), "timed wait on a held lock");
    assert_eq!(waiters(&syncd.addr, "busy"), 0, "the timed-out wait left");

    send_signal(holder.id(), "TERM");
    let status = wait_bounded(&mut holder, HANG_GUARD).unwrap();
    assert!(status.success(), "holder exits 0 after SIGTERM: {status:?}");
    assert!(describe(&syncd.addr, "busy")["holder"].is_null());

    // A port that nothing listens on: bind one, then free it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let output = run_bounded(syncctl(&addr).arg("ping"));
    assert_eq!(output.status.code(), Some(4), "unreachable server");
    let output = run_bounded(syncctl(&addr).args(["lock", "acquire", "x", "--", "true"]));
    assert_eq!(output.status.code(), Some(4), "unreachable server");
}

#[test]
fn a_hold_survives_a_server_kill9_and_the_next_token_is_larger() {
    let mut syncd = Syncd::start();
    let (mut holder, held_token) = hold(&syncd.addr, "survivor", "10s");
    syncd.kill9();
    syncd.restart();

    let description = describe(&syncd.addr, "survivor");
    assert_eq!(
        description["holder"]["fencing_token"].as_u64(),
        Some(held_token),
        "{description}"
    );
    let output = run_bounded(syncctl(&syncd.addr).args([
        "lock",
        "acquire",
        "survivor",
        "--timeout",
        "0s",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(3), "still held after restart");

    // The holder's client resumed its session: its release works.
    send_signal(holder.id(), "TERM");
    let status = wait_bounded(&mut holder, HANG_GUARD).unwrap();
    assert!(status.success(), "holder exits 0: {status:?}");
    let output = run_bounded(
        syncctl(&syncd.addr)
            .args([
                "lock",
                "acquire",
                "survivor",
                "--timeout",
                "5s",
                "--",
                "sh",
                "-c",
            ])
            .arg("echo $SYNCD_FENCING_TOKEN"),
    );
    assert!(output.status.success());
    let next: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(
        next > held_token,
        "token {next} after restart, held {held_token}"
    );
}
