//! syncctl against the real server when things go wrong: absurd durations,
//! a lock lost while held (the holder stopped past its TTL, the server gone
//! for a full TTL), SIGHUP, leaving while the server is down, commands that
//! cannot start, `https://`, and names with spaces in `ls`. Also the client
//! library behaviour syncctl relies on: lost holds are reported, and a wait
//! keeps its deadline while the server cannot be reached.
//!
//! No test asserts that something happens quickly: waits are bounded only to
//! stop a hung test.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, run_bounded, send_signal, syncctl, wait_bounded, Syncd, HANG_GUARD};
use syncd::client::{Client, ClientOptions, Error, HoldLoss, LossReason};

// --- helpers ---------------------------------------------------------------

/// Starts `syncctl lock acquire NAME --ttl TTL [EXTRA...]` with stdout and
/// stderr piped.
fn spawn_acquire(addr: &str, name: &str, ttl: &str, extra: &[&str]) -> Child {
    syncctl(addr)
        .args(["lock", "acquire", name, "--ttl", ttl])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncctl")
}

/// Starts a holder without a command; returns it with the token it printed.
fn hold(addr: &str, name: &str, ttl: &str) -> (Child, u64) {
    let mut child = spawn_acquire(addr, name, ttl, &[]);
    let token = common::read_token(&mut child);
    (child, token)
}

/// A shell command that writes its pid to `pid_file` (atomically), then
/// becomes `sleep` (same pid) until it is killed.
fn sleeper(pid_file: &Path, prelude: &str) -> String {
    let file = pid_file.display();
    format!("{prelude} echo $$ > '{file}.tmp' && mv '{file}.tmp' '{file}' && exec sleep 1000")
}

/// Waits until `pid_file` exists; returns the pid in it.
/// `lock acquire NAME --ttl TTL -- sh -c <sleeper>`: returns syncctl, the
/// command's pid once it runs (so the lock is held), and the directory of
/// its pid file (keep it alive for the test).
fn hold_running_sleeper(addr: &str, name: &str, ttl: &str) -> (Child, u32, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = temp_path(&dir, "cmd.pid");
    let child = spawn_acquire(
        addr,
        name,
        ttl,
        &["--", "sh", "-c", &sleeper(&pid_file, "")],
    );
    let command_pid = read_pid(&pid_file);
    (child, command_pid, dir)
}

fn read_pid(pid_file: &Path) -> u32 {
    eventually("the command writes its pid", || pid_file.exists());
    let text = std::fs::read_to_string(pid_file).expect("read pid file");
    text.trim().parse().expect("a pid")
}

/// True while a process with this pid exists (a zombie counts).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits for `child` (bounded) and returns its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let status = wait_bounded(&mut child, HANG_GUARD).expect("syncctl exits");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status.code(), stderr)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The lock's holder as `lock describe --output json` shows it (null when
/// free).
fn holder_of(addr: &str, name: &str) -> serde_json::Value {
    let output = run_bounded(syncctl(addr).args(["--output", "json", "lock", "describe", name]));
    assert!(output.status.success(), "describe: {}", stderr_of(&output));
    let description: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("describe prints JSON");
    description["holder"].clone()
}

/// Takes and releases the lock once, with a try-once acquire: it works only
/// if the lock is free now.
fn is_free(addr: &str, name: &str) -> bool {
    let output =
        run_bounded(syncctl(addr).args(["lock", "acquire", name, "--timeout", "0s", "--", "true"]));
    match output.status.code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("try-once acquire exited {other:?}: {}", stderr_of(&output)),
    }
}

/// The lines of `stderr` that announce a lost lock.
fn lost_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("syncctl: lost lock"))
        .collect()
}

fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

// --- 1. durations ----------------------------------------------------------

#[test]
fn absurd_durations_are_refused_by_the_parser() {
    // No server is needed: the command line is refused before connecting.
    let addr = "http://127.0.0.1:9";
    for flag in ["--timeout", "--ttl", "--kill-grace"] {
        let output = run_bounded(syncctl(addr).args([
            "lock",
            "acquire",
            "x",
            flag,
            "99999999999h",
            "--",
            "true",
        ]));
        assert_eq!(output.status.code(), Some(2), "{flag}");
        let stderr = stderr_of(&output);
        assert!(stderr.contains("is too long: at most 365d"), "{stderr}");
    }
}

#[test]
fn the_longest_timeout_works() {
    let syncd = Syncd::start();
    let output = run_bounded(syncctl(&syncd.addr).args([
        "lock",
        "acquire",
        "long",
        "--timeout",
        "365d",
        "--",
        "true",
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
}

#[tokio::test]
async fn the_library_takes_any_timeout() {
    let syncd = Syncd::start();
    let client = Client::connect(syncd.addr.clone()).await.expect("connect");
    // No deadline at all (it would overflow), and one far past what gRPC
    // can encode (about 11,000 years).
    let years = |n: u64| Duration::from_secs(n * 365 * 24 * 3600);
    for timeout in [Duration::MAX, years(100_000)] {
        let guard = client
            .lock("huge")
            .acquire_timeout(timeout)
            .await
            .expect("a free lock is granted");
        guard.release().await.expect("release");
    }
    client.close().await.expect("close");
}

// --- 2. a lock lost while held ---------------------------------------------

#[test]
fn a_stopped_holder_stops_its_command_when_it_finds_the_lock_lost() {
    let syncd = Syncd::start();
    let (holder, command_pid, _dir) = hold_running_sleeper(&syncd.addr, "p", "1s");

    // Stopped, syncctl cannot renew its session: the server expires it and
    // hands the lock to the next client.
    send_signal(holder.id(), "STOP");
    let next = run_bounded(syncctl(&syncd.addr).args(["lock", "acquire", "p", "--", "true"]));
    assert_eq!(next.status.code(), Some(0), "{}", stderr_of(&next));
    send_signal(holder.id(), "CONT");

    let (code, stderr) = finish(holder);
    assert_eq!(code, Some(7), "{stderr}");
    let lost = lost_lines(&stderr);
    assert_eq!(lost.len(), 1, "one line: {stderr}");
    assert!(
        lost[0].starts_with("syncctl: lost lock \"p\" (token "),
        "{stderr}"
    );
    assert!(lost[0].contains("): session "), "{stderr}");
    assert!(lost[0].ends_with("; stopping the command"), "{stderr}");
    assert!(!process_exists(command_pid), "the command still runs");
}

#[test]
fn a_holder_cut_off_for_a_full_ttl_kills_a_command_that_ignores_sigterm() {
    let mut syncd = Syncd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = temp_path(&dir, "cmd.pid");
    let script = sleeper(&pid_file, "trap '' TERM;");
    let holder = spawn_acquire(
        &syncd.addr,
        "q",
        "1s",
        &["--kill-grace", "200ms", "--", "sh", "-c", &script],
    );
    let command_pid = read_pid(&pid_file);

    // With the server gone, keep-alives fail: after a full TTL the client
    // must take the lock as lost, whatever the server may think.
    syncd.kill9();
    let (code, stderr) = finish(holder);
    assert_eq!(code, Some(7), "{stderr}");
    let lost = lost_lines(&stderr);
    assert_eq!(lost.len(), 1, "one line: {stderr}");
    assert!(
        lost[0].contains("could not be renewed for 1s (its TTL)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the command still runs 200ms after SIGTERM; killing it"),
        "{stderr}"
    );
    assert!(!process_exists(command_pid), "the command still runs");
}

#[test]
fn a_holder_without_command_exits_7_when_the_lock_is_lost() {
    let syncd = Syncd::start();
    let (holder, token) = hold(&syncd.addr, "h", "1s");
    send_signal(holder.id(), "STOP");
    let next = run_bounded(syncctl(&syncd.addr).args(["lock", "acquire", "h", "--", "true"]));
    assert_eq!(next.status.code(), Some(0), "{}", stderr_of(&next));
    send_signal(holder.id(), "CONT");

    let (code, stderr) = finish(holder);
    assert_eq!(code, Some(7), "{stderr}");
    let lost = lost_lines(&stderr);
    assert_eq!(lost.len(), 1, "one line: {stderr}");
    let expected = format!("syncctl: lost lock \"h\" (token {token}): session ");
    assert!(lost[0].starts_with(&expected), "{stderr}");
    assert!(!lost[0].contains("stopping"), "{stderr}");
}

#[tokio::test]
async fn the_library_reports_a_hold_lost_with_the_server() {
    let mut syncd = Syncd::start();
    let options = ClientOptions {
        session_ttl: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect");
    let guard = client.lock("l").acquire().await.expect("acquire");
    let session_id = guard.session_id();
    syncd.kill9();

    let loss = tokio::time::timeout(HANG_GUARD, guard.lost())
        .await
        .expect("the loss is reported");
    let HoldLoss::Session(loss) = loss else {
        panic!("lost alone: {loss}");
    };
    assert_eq!(loss.session_id, session_id);
    assert_eq!(loss.reason, LossReason::Unrenewed(Duration::from_secs(1)));
    // The same loss, seen from the client (no new session can be opened
    // without a server); the release knows too.
    assert_eq!(client.session_id(), session_id);
    assert_eq!(client.session_lost().await, loss);
    let released = guard.release().await.unwrap_err();
    assert!(matches!(released, Error::SessionLost(_)), "{released}");
}

// --- 3. SIGHUP -------------------------------------------------------------

#[test]
fn sighup_releases_a_lock_held_without_command() {
    let syncd = Syncd::start();
    let (holder, token) = hold(&syncd.addr, "hup", "30s");
    assert_eq!(holder_of(&syncd.addr, "hup")["fencing_token"], token);
    send_signal(holder.id(), "HUP");
    let (code, stderr) = finish(holder);
    assert_eq!(code, Some(0), "{stderr}");
    // Released before syncctl exited, not when its lease ran out.
    assert!(holder_of(&syncd.addr, "hup").is_null());
}

#[test]
fn sighup_is_forwarded_to_the_command_then_the_lock_released() {
    let syncd = Syncd::start();
    let (child, command_pid, _dir) = hold_running_sleeper(&syncd.addr, "hup-cmd", "30s");
    send_signal(child.id(), "HUP");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(128 + 1), "the command died of SIGHUP: {stderr}");
    assert!(!process_exists(command_pid), "the command still runs");
    assert!(holder_of(&syncd.addr, "hup-cmd").is_null());
}

// --- 4. leaving while the server is down -----------------------------------

#[test]
fn leaving_while_the_server_is_down_warns_and_leaves_it_to_the_lease() {
    let mut syncd = Syncd::start();
    let (holder, token) = hold(&syncd.addr, "down", "30s");
    syncd.kill9();
    let started = Instant::now();
    send_signal(holder.id(), "TERM");
    let (code, stderr) = finish(holder);
    eprintln!("the holder left {:?} after SIGTERM", started.elapsed());
    assert_eq!(code, Some(0), "{stderr}");
    let expected =
        format!("syncctl: warning: could not release lock \"down\" (token {token}) within 1s");
    let warning = stderr
        .lines()
        .find(|line| line.starts_with(&expected))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(
        warning.ends_with("the server releases it when the session's lease runs out"),
        "{warning}"
    );
}

// --- 5. deadlines while the server cannot be reached -----------------------

#[tokio::test]
async fn a_wait_keeps_its_deadline_while_the_server_is_down() {
    let mut syncd = Syncd::start();
    let client = Client::connect(syncd.addr.clone()).await.expect("connect");
    syncd.kill9();

    let tried = client.lock("gone").try_acquire().await.unwrap_err();
    assert!(matches!(tried, Error::Unavailable(_)), "{tried}");

    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let waited = client.lock("gone").acquire_timeout(timeout).await;
    let elapsed = started.elapsed();
    let error = waited.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    // It kept trying until the deadline, not less.
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    eprintln!("a {timeout:?} wait gave up after {elapsed:?}");
}

// --- 6. https --------------------------------------------------------------

#[test]
fn https_addresses_mean_tls() {
    // Nothing listens there: the TLS client gets as far as the connection.
    // (tests/tls.rs covers working TLS.)
    let output = run_bounded(syncctl("https://127.0.0.1:9").arg("ping"));
    assert_eq!(output.status.code(), Some(4));
    let stderr = stderr_of(&output);
    assert!(
        stderr.starts_with("syncctl: cannot reach syncd at https://127.0.0.1:9"),
        "{stderr}"
    );
}

// --- 7. commands that cannot start -----------------------------------------

#[test]
fn a_missing_command_exits_127_and_releases_the_lock() {
    let syncd = Syncd::start();
    let output = run_bounded(syncctl(&syncd.addr).args([
        "lock",
        "acquire",
        "m",
        "--",
        "/nonexistent/syncd-test-command",
    ]));
    assert_eq!(output.status.code(), Some(127));
    assert_eq!(
        stderr_of(&output),
        "syncctl: cannot run \"/nonexistent/syncd-test-command\": command not found\n"
    );
    assert!(is_free(&syncd.addr, "m"));
}

#[test]
fn a_command_that_is_not_executable_exits_126_and_releases_the_lock() {
    let syncd = Syncd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let script = temp_path(&dir, "not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    let output = run_bounded(
        syncctl(&syncd.addr)
            .args(["lock", "acquire", "n", "--"])
            .arg(&script),
    );
    assert_eq!(output.status.code(), Some(126), "{}", stderr_of(&output));
    assert!(stderr_of(&output).starts_with("syncctl: cannot run "));
    assert!(is_free(&syncd.addr, "n"));
}

#[test]
fn dashes_without_a_command_are_refused() {
    let syncd = Syncd::start();
    let output = run_bounded(syncctl(&syncd.addr).args(["lock", "acquire", "e", "--"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("no command after `--`"),
        "{}",
        stderr_of(&output)
    );
    assert!(
        holder_of(&syncd.addr, "e").is_null(),
        "the lock was not taken"
    );
}

// --- 8. ls -----------------------------------------------------------------

#[test]
fn ls_quotes_names() {
    let syncd = Syncd::start();
    let (mut spaced, _) = hold(&syncd.addr, "a b", "30s");
    let output = run_bounded(syncctl(&syncd.addr).arg("ls"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("lock "))
        .unwrap_or_else(|| panic!("no lock listed: {stdout}"));
    assert!(line.contains(" \"a b\" "), "{line}");
    send_signal(spaced.id(), "TERM");
    assert!(wait_bounded(&mut spaced, HANG_GUARD).is_some());
}
