//! The client tells when its lease is in danger: with the server stopped
//! (SIGSTOP), no keep-alive is confirmed, and past half the TTL
//! `Client::lease_in_danger` returns; once the server runs again and a
//! keep-alive is confirmed, the danger is over and the hold is still had.
//! `syncctl lock acquire -- CMD` warns once and lets CMD run on.
//! Timeouts here only stop a hang; nothing asserts how fast anything is.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{eventually, send_signal, syncctl, wait_bounded, Syncd, HANG_GUARD};
use syncd::client::{Client, ClientOptions};
use tokio::time::{sleep, timeout};

/// The session's TTL: short, so that the test is quick, and long enough
/// that the server, continued as soon as the danger is seen (about half a
/// TTL after the last confirmed keep-alive), answers well before the lease
/// runs out.
const TTL: Duration = Duration::from_secs(2);

/// Stops a process with SIGSTOP, and continues it when dropped, even when
/// the test fails.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        send_signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // No assert: this may run while a failed test unwinds.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_puts_the_lease_in_danger_until_it_answers_again() {
    let syncd = Syncd::start();
    let options = ClientOptions {
        session_ttl: TTL,
        client_name: "lease-notice-test".into(),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(syncd.addr.clone(), options)
        .await
        .expect("connect");
    let guard = client
        .lock("lease-notice")
        .acquire()
        .await
        .expect("acquire");
    assert!(!client.is_lease_in_danger());

    // Twice: each episode is noticed, and taken back, on its own.
    for episode in 1..=2 {
        let stopped = Stopped::new(syncd.pid());
        let danger = timeout(HANG_GUARD, client.lease_in_danger())
            .await
            .unwrap_or_else(|_| panic!("episode {episode}: the lease was never in danger"));
        assert!(client.is_lease_in_danger(), "episode {episode}");
        assert_eq!(danger.session_id, guard.session_id(), "episode {episode}");
        assert_eq!(danger.ttl, TTL);
        assert!(danger.unconfirmed_for > TTL / 2, "{danger:?}");
        let line = danger.to_string();
        let start = format!(
            "session {}: no keep-alive confirmed for ",
            danger.session_id
        );
        assert!(line.starts_with(&start), "{line}");
        assert!(line.ends_with(" of its 2s TTL"), "{line}");
        // The guard hears of it too, at once since it is so now.
        let guard_heard = timeout(Duration::ZERO, guard.in_danger()).await;
        assert_eq!(guard_heard.ok(), Some(danger.clone()), "episode {episode}");
        drop(stopped);

        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while client.is_lease_in_danger() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "episode {episode}: the lease stayed in danger after the server continued"
            );
            sleep(Duration::from_millis(20)).await;
        }
        timeout(HANG_GUARD, client.lease_out_of_danger())
            .await
            .expect("out of danger");
        // Not lost: `lost` would return at once if it were.
        let lost = timeout(Duration::ZERO, guard.lost()).await;
        assert!(
            lost.is_err(),
            "episode {episode}: the lock was lost: {lost:?}"
        );
        assert_eq!(client.session_id(), guard.session_id());
    }

    // The server agrees: the hold is still there to release.
    guard.release().await.expect("release");
    client.close().await.expect("close");
}

#[test]
fn syncctl_warns_once_when_the_lease_is_in_danger_and_the_command_runs_on() {
    let syncd = Syncd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("cmd.pid");
    let file = pid_file.display();
    let script = format!("echo $$ > '{file}.tmp' && mv '{file}.tmp' '{file}' && exec sleep 1000");
    let mut holder = syncctl(&syncd.addr)
        .args([
            "lock", "acquire", "w", "--ttl", "2s", "--", "sh", "-c", &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncctl");
    let stderr = holder.stderr.take().expect("piped stderr");
    let (lines, stderr_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    eventually("the command runs", || pid_file.exists());
    let command_pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("read pid file")
        .trim()
        .parse()
        .expect("a pid");

    let stopped = Stopped::new(syncd.pid());
    let mut seen = Vec::new();
    let warning = loop {
        let line = stderr_lines
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no warning on stderr; saw {seen:?}"));
        if line.contains("lease in danger") {
            break line;
        }
        seen.push(line);
    };
    drop(stopped);
    let start = "syncctl: warning: lease in danger: session ";
    assert!(warning.starts_with(start), "{warning}");
    assert!(
        warning.contains(": no keep-alive confirmed for "),
        "{warning}"
    );
    assert!(warning.ends_with(" of its 2s TTL"), "{warning}");

    // Two TTLs later, the lease would long be lost had the server not come
    // back: CMD and syncctl still run.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        Path::new(&format!("/proc/{command_pid}")).exists(),
        "the command was stopped"
    );
    assert!(
        holder.try_wait().expect("try_wait").is_none(),
        "syncctl ended"
    );

    // SIGTERM goes on to CMD, which ends; syncctl releases and leaves.
    send_signal(holder.id(), "TERM");
    let status = wait_bounded(&mut holder, HANG_GUARD).expect("syncctl exits");
    assert_ne!(status.code(), Some(7), "the hold was lost");
    let mut rest = Vec::new();
    while let Ok(line) = stderr_lines.recv_timeout(HANG_GUARD) {
        rest.push(line);
    }
    let warnings = rest.iter().filter(|line| line.contains("lease in danger"));
    assert_eq!(warnings.count(), 0, "more than one warning: {rest:?}");
    assert!(
        !rest.iter().any(|line| line.contains("lost")),
        "the hold was lost: {rest:?}"
    );
}
