//! Rate limits and circuit breakers across processes, with the real syncd:
//! - the rate holds while 4 processes (the `ratelimit_breaker_load`
//!   example, 2 trying as fast as answers come and 2 waiting on the server)
//!   hammer one bucket for 3 s: the tokens granted in all are at most what
//!   the rate and the burst allow over the time they were granted in, and
//!   most of it (the limiter did not starve anyone of tokens it had);
//! - a half-open probe whose holder is killed with -9 keeps its slot while
//!   its lease runs, and frees it when the lease is over: then a new probe
//!   goes, and its success closes the breaker.
//!
//! `cargo test --test ratelimit_breaker_faults` does not build the example:
//! run `cargo build --examples` first (a plain `cargo test` does both). A
//! binary older than its sources fails the test instead of testing old code.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::rpc::until;
use common::{run_bounded, send_signal, Syncd, HANG_GUARD};
use syncd::client::{Allowed, BreakerSettings, BreakerState};

const LOAD: &str = "ratelimit_breaker_load";

// --- the rate holds under load -------------------------------------------------

const RATE_PER_S: u32 = 50;
const BURST: u32 = 20;
const HAMMER_FOR: &str = "3s";
/// The processes and how each asks.
const MODES: [&str; 4] = ["try", "try", "acquire", "acquire"];
/// Tokens of slack over the bound: the server counts milliseconds.
const TOKENS_SLACK: f64 = 2.0;
/// The share of the bound that must be granted: the limiter gives out what
/// it has.
const SHARE_MIN: f64 = 0.7;

/// One process's report (see the example's doc).
#[derive(Debug, Default)]
struct Report {
    granted: u64,
    refused: u64,
    first_sent_us: u64,
    last_granted_us: u64,
}

fn parse_report(line: &str) -> Report {
    let mut report = Report::default();
    for word in line.split_whitespace() {
        let (key, value) = word
            .split_once('=')
            .unwrap_or_else(|| panic!("bad report {line:?}"));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        match key {
            "granted" => report.granted = value,
            "refused" => report.refused = value,
            "first_sent_us" => report.first_sent_us = value,
            "last_granted_us" => report.last_granted_us = value,
            _ => {}
        }
    }
    report
}

#[test]
fn four_processes_hammering_one_bucket_get_at_most_rate_times_time_plus_burst() {
    let bin = common::example_bin(LOAD);
    let syncd = Syncd::start();
    // A common start, so that the four overlap from the first token.
    let start_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1_000;
    let children: Vec<_> = MODES
        .iter()
        .map(|mode| {
            let mut command = Command::new(&bin);
            command
                .args(["hammer", "--bucket", "hammered"])
                .args(["--rate", &RATE_PER_S.to_string()])
                .args(["--burst", &BURST.to_string()])
                .args(["--mode", mode, "--for", HAMMER_FOR])
                .args(["--start-at-ms", &start_at_ms.to_string()])
                .env("SYNCD_ADDR", &syncd.addr)
                .env("RUST_LOG", "warn");
            std::thread::spawn(move || run_bounded(&mut command))
        })
        .collect();
    let mut reports = Vec::new();
    for (mode, child) in MODES.iter().zip(children) {
        let output = child.join().expect("runner thread");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{mode} process failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let report = parse_report(stdout.trim());
        println!("{mode:>7}: {report:?}");
        reports.push(report);
    }

    let granted: u64 = reports.iter().map(|r| r.granted).sum();
    let refused: u64 = reports.iter().map(|r| r.refused).sum();
    let active = reports.iter().filter(|r| r.granted > 0);
    let first_us = active
        .clone()
        .map(|r| r.first_sent_us)
        .min()
        .expect("grants");
    let last_us = active.map(|r| r.last_granted_us).max().expect("grants");
    // From before the first grant (its request was sent) to after the last
    // (its answer came): at least the time the server granted them in.
    let elapsed_s = (last_us - first_us) as f64 / 1e6;
    let bound = f64::from(RATE_PER_S) * elapsed_s + f64::from(BURST);
    println!(
        "granted {granted} (refused {refused}) in {elapsed_s:.3} s: rate × time + burst = \
         {bound:.1}, {:.1}% of it",
        100.0 * granted as f64 / bound
    );
    assert!(
        granted as f64 <= bound + TOKENS_SLACK,
        "{granted} tokens granted in {elapsed_s:.3} s, above {RATE_PER_S}/s × time + {BURST} \
         = {bound:.1}"
    );
    assert!(
        granted as f64 >= SHARE_MIN * bound,
        "only {granted} tokens granted in {elapsed_s:.3} s, below {SHARE_MIN} of \
         {RATE_PER_S}/s × time + {BURST} = {bound:.1}: the limiter held back tokens it had"
    );
}

// --- a killed probe holder ------------------------------------------------------

/// The killed holder's session TTL.
const HOLDER_TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_holder_killed_with_9_frees_the_half_open_slot_after_its_ttl() {
    let bin = common::example_bin(LOAD);
    let syncd = Syncd::start();
    let client = common::rpc::client(&syncd, "ratelimit-breaker-faults").await;
    let breaker = client.breaker("payments").with_settings(BreakerSettings {
        failure_threshold: 1,
        open_timeout_ms: 500,
        half_open_max_probes: 1,
        success_threshold: 1,
        ..BreakerSettings::default()
    });

    // One failure opens it; the server's timer turns it half-open.
    let Allowed::Permit(permit) = breaker.allow().await.unwrap() else {
        panic!("a new breaker lets a call through");
    };
    assert_eq!(permit.failure().await.unwrap(), BreakerState::Open);
    until("the breaker to turn half-open", async || {
        breaker.describe().await.unwrap().state() == BreakerState::HalfOpen
    })
    .await;

    // Another process takes the one probe permit and holds it.
    let mut holder = KilledOnDrop(
        Command::new(&bin)
            .args(["hold-probe", "--breaker", "payments", "--ttl"])
            .arg(syncd::duration::format(HOLDER_TTL))
            .env("SYNCD_ADDR", &syncd.addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the probe holder"),
    );
    let stdout = holder.0.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(HANG_GUARD, line)
        .await
        .expect("the holder reports its probe")
        .unwrap()
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["probe", token, holder_session] = words.as_slice() else {
        panic!("the holder reported {line:?}");
    };
    let token: u64 = token.parse().unwrap();
    let holder_session: u64 = holder_session.parse().unwrap();

    let state = breaker.describe().await.unwrap();
    assert_eq!(state.probes_in_flight, 1, "{state:?}");
    let held: Vec<(u64, u64)> = state
        .permits
        .iter()
        .map(|p| (p.session_id, p.fencing_token))
        .collect();
    assert_eq!(held, [(holder_session, token)]);

    // While it is held, another client is rejected.
    match breaker.allow().await.unwrap() {
        Allowed::Rejected { state, .. } => assert_eq!(state, BreakerState::HalfOpen),
        Allowed::Permit(permit) => panic!("a second probe while one is held: {permit:?}"),
    }

    let killed_at = Instant::now();
    send_signal(holder.0.id(), "KILL");
    holder.0.wait().expect("reap the killed holder");

    // Bounded polling until the slot is free; every refusal in between is
    // "half-open, the probe slot taken".
    let deadline = Instant::now() + HANG_GUARD;
    let mut refusals = 0;
    let probe = loop {
        match breaker.allow().await.unwrap() {
            Allowed::Permit(permit) => break permit,
            Allowed::Rejected { state, .. } => {
                assert_eq!(state, BreakerState::HalfOpen);
                refusals += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the killed holder's probe slot was not freed within {HANG_GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = killed_at.elapsed();
    println!("the probe slot was freed {waited:?} after the kill ({refusals} refusals before)");
    assert!(probe.is_probe(), "{probe:?}");
    assert_eq!(probe.state(), BreakerState::HalfOpen);
    assert!(probe.fencing_token() > token);
    // The lease ran from the holder's last keep-alive (sent every third of
    // the TTL): the slot cannot have been freed before 2/3 of the TTL.
    assert!(
        waited >= HOLDER_TTL * 2 / 3 - Duration::from_millis(50),
        "the probe slot was freed {waited:?} after the kill, before the lease could expire"
    );
    let state = breaker.describe().await.unwrap();
    let held: Vec<u64> = state.permits.iter().map(|p| p.session_id).collect();
    assert_eq!(held, [client.session_id()], "{state:?}");

    assert_eq!(probe.success().await.unwrap(), BreakerState::Closed);
    let state = breaker.describe().await.unwrap();
    assert_eq!(
        (state.state(), state.probes_in_flight, state.permits.len()),
        (BreakerState::Closed, 0, 0)
    );
    client.close().await.unwrap();
}

// --- helpers --------------------------------------------------------------------

/// A child process that is killed if the test ends before it (a failed
/// assertion must not leave a holder sleeping forever).
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
