//! syncctl's commands for semaphores, read-write locks, events, conditions
//! and barriers, against the real server and as separate processes: a
//! barrier that lets three parties through and breaks when one times out or
//! is killed, semaphore permits that come back after a killed holder's TTL,
//! a writer that runs while readers wait, an event set by one process for
//! another, conditions notified from the command line, and the exit codes
//! of each.
//!
//! Processes are synchronised through what the server says (`describe`,
//! polled) and through marker files, never through sleeps; waits are
//! bounded only to stop a hung test.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{finish, finish_within, run, spawn, Ended};
use common::{eventually, send_signal, Syncd, HANG_GUARD};
use serde_json::Value;
use syncd::client::Client;

// --- helpers ---------------------------------------------------------------

/// Runs `syncctl ARGS...`, which must exit 0; returns its stdout, trimmed.
fn run_ok(addr: &str, args: &[&str]) -> String {
    let ended = run(addr, args);
    assert_eq!(ended.code, Some(0), "{args:?}: {}", ended.stderr);
    ended.stdout.trim().to_string()
}

/// `syncctl --output json KIND describe NAME`, parsed.
fn describe(addr: &str, kind: &str, name: &str) -> Value {
    let stdout = run_ok(addr, &["--output", "json", kind, "describe", name]);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn waiter_count(description: &Value) -> usize {
    description["waiters"].as_array().expect("waiters").len()
}

/// Waits until `describe KIND NAME` shows `count` waiters.
fn await_waiters(addr: &str, kind: &str, name: &str, count: usize) {
    eventually(&format!("{count} waiters at {kind} {name:?}"), || {
        waiter_count(&describe(addr, kind, name)) == count
    });
}

/// A shell loop that waits (bounded, about 60 s) until `path` exists, and
/// fails if it never does.
fn until_exists(path: &Path) -> String {
    format!(
        "i=0; while [ ! -e '{}' ]; do i=$((i+1)); [ $i -gt 6000 ] && exit 99; sleep 0.01; done",
        path.display()
    )
}

/// Kills a process by pid when dropped: for commands that outlive a
/// syncctl killed with SIGKILL.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

// --- 1. barriers -----------------------------------------------------------

#[test]
fn three_parties_pass_a_barrier_with_distinct_arrival_indexes() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let wait = ["barrier", "wait", "build-phase", "--parties", "3"];
    let text: Vec<Child> = (0..2).map(|_| spawn(addr, &wait)).collect();
    let json_args = [&["--output", "json"][..], &wait].concat();
    let json = spawn(addr, &json_args);

    let mut indexes = Vec::new();
    for child in text {
        let ended = finish(child);
        assert_eq!(ended.code, Some(0), "{}", ended.stderr);
        indexes.push(ended.stdout.trim().parse::<u64>().expect("an index"));
    }
    let ended = finish(json);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    let passed: Value = serde_json::from_str(&ended.stdout).expect("JSON");
    assert_eq!(passed["name"], "build-phase");
    assert_eq!(passed["generation"], 0);
    indexes.push(passed["arrival_index"].as_u64().expect("an index"));
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);

    let barrier = describe(addr, "barrier", "build-phase");
    assert_eq!(barrier["parties"], 3);
    assert_eq!(barrier["generation"], 1, "the next generation began");
    assert_eq!(barrier["broken"], false);
    assert_eq!(waiter_count(&barrier), 0);
}

#[test]
fn a_party_that_times_out_breaks_the_barrier_for_the_other() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let wait = [
        "barrier",
        "wait",
        "lonely",
        "--parties",
        "3",
        "--timeout",
        "1s",
    ];
    let children = [spawn(addr, &wait), spawn(addr, &wait)];
    let mut ended: Vec<Ended> = children.into_iter().map(finish).collect();
    // The server handles due deadlines one at a time: the first to pass
    // gets DEADLINE_EXCEEDED and breaks the barrier, which aborts the other
    // (or fails it at once if it arrived later). Never both 3.
    ended.sort_by_key(|e| e.code);
    let codes: Vec<_> = ended.iter().map(|e| e.code).collect();
    assert_eq!(codes, [Some(3), Some(5)], "{ended:?}");
    assert_eq!(
        ended[0].stderr,
        "syncctl: timed out waiting for barrier \"lonely\" after 1s\n"
    );
    assert!(
        ended[1]
            .stderr
            .starts_with("syncctl: barrier \"lonely\" is broken"),
        "{}",
        ended[1].stderr
    );
    assert!(ended.iter().all(|e| e.stdout.is_empty()), "{ended:?}");

    // Broken until reset: a later wait fails at once.
    assert_eq!(describe(addr, "barrier", "lonely")["broken"], true);
    let later = run(addr, &wait);
    assert_eq!(later.code, Some(5), "{}", later.stderr);
    let mismatch = run(addr, &["barrier", "wait", "lonely", "--parties", "2"]);
    assert_eq!(mismatch.code, Some(6), "{}", mismatch.stderr);
    assert!(
        mismatch.stderr.contains("has 3 parties, not 2"),
        "{}",
        mismatch.stderr
    );

    assert_eq!(run_ok(addr, &["barrier", "reset", "lonely"]), "0");
    let mended = describe(addr, "barrier", "lonely");
    assert_eq!(mended["broken"], false);
    assert_eq!(mended["parties"], 3);
    assert_eq!(run_ok(addr, &["barrier", "delete", "lonely"]), "0");
    assert_eq!(describe(addr, "barrier", "lonely")["parties"], 0);
    let text = run_ok(addr, &["barrier", "describe", "lonely"]);
    assert_eq!(text, "barrier \"lonely\": does not exist");
    let gone = run(addr, &["barrier", "reset", "lonely"]);
    assert_eq!(gone.code, Some(1));
    assert_eq!(
        gone.stderr,
        "syncctl: not found: barrier \"lonely\" does not exist\n"
    );
}

/// A waiter killed with SIGKILL cannot say goodbye, but the kernel closes
/// its connection: the server sees its stream reset, takes that as the
/// party leaving, and breaks the barrier at once. Not only when the
/// waiter's session expires: the TTL here is 60s, and the others must be
/// told well before that.
#[test]
fn a_killed_waiter_breaks_the_barrier_for_the_others() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let wait = [
        "barrier",
        "wait",
        "deploy",
        "--parties",
        "4",
        "--ttl",
        "60s",
    ];
    let mut victim = spawn(addr, &wait);
    let others = [spawn(addr, &wait), spawn(addr, &wait)];
    await_waiters(addr, "barrier", "deploy", 3);

    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    for other in others {
        let ended = finish_within(other, Duration::from_secs(30))
            .expect("the others hear of the break before the killed party's TTL");
        assert_eq!(ended.code, Some(5), "{}", ended.stderr);
        assert!(ended.stderr.contains("is broken"), "{}", ended.stderr);
    }
    let barrier = describe(addr, "barrier", "deploy");
    assert_eq!(barrier["broken"], true);
    assert_eq!(waiter_count(&barrier), 0);
}

// --- 2. semaphores ---------------------------------------------------------

/// The permits of a holder killed with SIGKILL stay taken until its
/// session's lease runs out (the connection closing releases nothing: a
/// hold outlives connections), then the next acquire gets them.
#[test]
fn the_permits_of_a_killed_holder_come_back_after_its_ttl() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("cmd.pid");
    let script = format!(
        "echo $$ > '{0}.tmp' && mv '{0}.tmp' '{0}' && exec sleep 1000",
        pid_file.display()
    );
    let mut holder = spawn(
        addr,
        &[
            "sem",
            "acquire",
            "s",
            "--capacity",
            "1",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    eventually("the command runs", || pid_file.exists());
    let command_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let _orphan = KillOnDrop(command_pid);
    let semaphore = describe(addr, "sem", "s");
    assert_eq!(semaphore["permits_held"], 1);
    assert_eq!(semaphore["holders"][0]["permits"], 1);

    let killed = Instant::now();
    holder.kill().expect("SIGKILL");
    holder.wait().expect("reap");
    let next = run(
        addr,
        &["sem", "acquire", "s", "--capacity", "1", "--", "true"],
    );
    let waited = killed.elapsed();
    assert_eq!(next.code, Some(0), "{}", next.stderr);
    // The lease ran from the holder's last keep-alive (sent every third of
    // the TTL): the permit cannot have come back before 2/3 of the 2s TTL.
    assert!(
        waited >= Duration::from_millis(1_300),
        "the permit came back {waited:?} after the kill, before the lease could end"
    );
    eprintln!("the permit came back {waited:?} after the kill");
    assert_eq!(describe(addr, "sem", "s")["capacity"], 0, "nobody holds it");
}

#[test]
fn semaphore_exit_codes_for_timeouts_and_mismatches() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let mut holder = spawn(addr, &["sem", "acquire", "pool", "--capacity", "1"]);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read token");
    let token: u64 = line.trim().parse().expect("a fencing token");
    assert_eq!(
        describe(addr, "sem", "pool")["holders"][0]["fencing_token"],
        token
    );

    let tried = ["sem", "acquire", "pool", "--capacity", "1", "--timeout"];
    let once = run(addr, &[&tried[..], &["0s", "--", "true"]].concat());
    assert_eq!(once.code, Some(3), "{}", once.stderr);
    assert_eq!(
        once.stderr,
        "syncctl: semaphore \"pool\" has 0 of 1 permits free and 0 waiting (timed out after 0s)\n"
    );
    let timed = run(addr, &[&tried[..], &["200ms", "--", "true"]].concat());
    assert_eq!(timed.code, Some(3), "{}", timed.stderr);
    assert_eq!(
        timed.stderr,
        "syncctl: timed out waiting for semaphore \"pool\" after 200ms\n"
    );
    assert_eq!(waiter_count(&describe(addr, "sem", "pool")), 0);

    // Another capacity than the existing semaphore's: exit 6, nothing taken.
    let other = run(
        addr,
        &["sem", "acquire", "pool", "--capacity", "2", "--", "true"],
    );
    assert_eq!(other.code, Some(6), "{}", other.stderr);
    assert_eq!(
        other.stderr,
        "syncctl: failed precondition: semaphore \"pool\" exists with capacity 1, not 2\n"
    );
    // More permits than the capacity: a usage error, found before asking.
    let greedy = run(
        addr,
        &[
            "sem",
            "acquire",
            "pool",
            "--capacity",
            "1",
            "--permits",
            "2",
            "--",
            "true",
        ],
    );
    assert_eq!(greedy.code, Some(2), "{}", greedy.stderr);
    assert!(
        greedy
            .stderr
            .starts_with("error: --permits 2 is more than --capacity 1"),
        "{}",
        greedy.stderr
    );

    send_signal(holder.id(), "TERM");
    let ended = finish(holder);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    assert_eq!(describe(addr, "sem", "pool")["capacity"], 0);

    // CMD sees its hold in the environment.
    let shown = run_ok(
        addr,
        &[
            "sem",
            "acquire",
            "pool",
            "--capacity",
            "3",
            "--permits",
            "2",
            "--",
            "sh",
            "-c",
            "echo \"$SYNCD_SEMAPHORE_NAME $SYNCD_PERMITS $SYNCD_FENCING_TOKEN\"",
        ],
    );
    let fields: Vec<&str> = shown.split(' ').collect();
    assert_eq!(fields[..2], ["pool", "2"], "{shown}");
    let next_token: u64 = fields[2].parse().expect("a token");
    assert!(next_token > token, "{next_token} after {token}");
}

// --- 3. read-write locks ---------------------------------------------------

/// A writer holds the lock while two readers queue behind it; once it is
/// done, both readers are let in together (each waits inside its hold for
/// the other's marker, which only works if they hold at the same time).
#[test]
fn a_writer_runs_while_readers_wait_then_readers_share() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name);
    let log = path("log");
    let release = path("release");
    let writer_script = format!(
        "echo writer-start >> '{log}'; {wait}; echo writer-end >> '{log}'",
        log = log.display(),
        wait = until_exists(&release),
    );
    let writer = spawn(
        addr,
        &["rwlock", "write", "cfg", "--", "sh", "-c", &writer_script],
    );
    eventually("the writer runs", || log.exists());

    let reader = |me: &str, other: &str| {
        let script = format!(
            "touch '{mine}'; {wait}; echo reader >> '{log}'",
            mine = path(me).display(),
            wait = until_exists(&path(other)),
            log = log.display(),
        );
        spawn(addr, &["rwlock", "read", "cfg", "--", "sh", "-c", &script])
    };
    let readers = [reader("r1", "r2"), reader("r2", "r1")];
    await_waiters(addr, "rwlock", "cfg", 2);
    let lock = describe(addr, "rwlock", "cfg");
    assert_eq!(lock["holders"].as_array().unwrap().len(), 1, "{lock}");
    assert_eq!(lock["holders"][0]["mode"], "write");
    assert_eq!(lock["waiters"][0]["mode"], "read");
    assert_eq!(lock["waiters"][1]["mode"], "read");
    assert!(!path("r1").exists() && !path("r2").exists());
    let text = run_ok(addr, &["rwlock", "describe", "cfg"]);
    assert!(
        text.starts_with("rwlock \"cfg\": held by a writer\n"),
        "{text}"
    );

    std::fs::write(&release, "").expect("release the writer");
    let ended = finish(writer);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    for reader in readers {
        let ended = finish(reader);
        assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    }
    let lines = std::fs::read_to_string(&log).expect("log");
    assert_eq!(lines, "writer-start\nwriter-end\nreader\nreader\n");
    let lock = describe(addr, "rwlock", "cfg");
    assert_eq!(lock["holders"].as_array().unwrap().len(), 0, "{lock}");
}

// --- 4. events -------------------------------------------------------------

#[test]
fn event_wait_is_woken_by_event_set_from_another_process() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    assert_eq!(run_ok(addr, &["event", "status", "ready"]), "clear");
    let check = run(addr, &["event", "wait", "ready", "--timeout", "0s"]);
    assert_eq!(check.code, Some(3), "{}", check.stderr);
    assert_eq!(check.stderr.lines().count(), 1, "{}", check.stderr);

    let waiter = spawn(addr, &["event", "wait", "ready"]);
    await_waiters(addr, "event", "ready", 1);
    assert_eq!(run_ok(addr, &["event", "set", "ready"]), "1", "one woken");
    let ended = finish(waiter);
    assert_eq!(ended.code, Some(0), "{}", ended.stderr);
    assert_eq!(ended.stdout, "");

    assert_eq!(run_ok(addr, &["event", "status", "ready"]), "set");
    let status = run_ok(addr, &["--output", "json", "event", "status", "ready"]);
    assert_eq!(status, r#"{"is_set":true,"name":"ready"}"#);
    let again = run_ok(addr, &["--output", "json", "event", "set", "ready"]);
    assert_eq!(again, r#"{"is_set":true,"name":"ready","woken":0}"#);
    let at_once = run(addr, &["event", "wait", "ready", "--timeout", "0s"]);
    assert_eq!(at_once.code, Some(0), "{}", at_once.stderr);

    assert_eq!(run_ok(addr, &["event", "clear", "ready"]), "");
    assert_eq!(run_ok(addr, &["event", "status", "ready"]), "clear");
    assert_eq!(describe(addr, "event", "ready")["is_set"], false);
}

// --- 5. conditions ---------------------------------------------------------

#[test]
fn cond_notify_prints_0_when_nobody_waits() {
    let syncd = Syncd::start();
    let addr = syncd.addr.as_str();
    assert_eq!(run_ok(addr, &["cond", "notify", "work"]), "0");
    assert_eq!(run_ok(addr, &["cond", "notify", "work", "--all"]), "0");
    let json = run_ok(
        addr,
        &["--output", "json", "cond", "notify", "work", "--count", "2"],
    );
    assert_eq!(json, r#"{"name":"work","woken":0}"#);
    let text = run_ok(addr, &["cond", "describe", "work"]);
    assert_eq!(text, "condition \"work\": nobody waits");
    let both = run(addr, &["cond", "notify", "work", "--all", "--count", "2"]);
    assert_eq!(both.code, Some(2), "{}", both.stderr);
}

/// A program waiting on a condition (through the library: a wait needs a
/// lock held in the same session) is woken by `cond notify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cond_notify_wakes_a_waiter() {
    let syncd = Syncd::start();
    let addr = syncd.addr.clone();
    let client = Client::connect(addr.clone()).await.expect("connect");
    let mut guard = client.lock("queue").acquire().await.expect("lock");
    let before = guard.fencing_token();
    let condition = client.condition("work");
    let waiting = tokio::spawn(async move {
        let notified = condition
            .wait_timeout(&mut guard, HANG_GUARD)
            .await
            .expect("wait");
        (notified, guard)
    });

    let polled = addr.clone();
    tokio::task::spawn_blocking(move || {
        await_waiters(&polled, "cond", "work", 1);
        let condition = describe(&polled, "cond", "work");
        assert_eq!(condition["lock"], "queue");
        assert_eq!(run_ok(&polled, &["cond", "notify", "work"]), "1");
    })
    .await
    .expect("notify");

    let (notified, guard) = tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("the waiter wakes")
        .expect("join");
    assert!(notified, "woken by the notification, not the timeout");
    assert!(guard.fencing_token() > before, "the lock was taken again");
    guard.release().await.expect("release");
    client.close().await.expect("close");
}
