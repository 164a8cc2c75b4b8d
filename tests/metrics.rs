//! Metrics and logs as an operator sees them: `syncd serve --metrics-listen`
//! serves Prometheus text at /metrics whose counters and histograms move
//! with the calls made, 404 elsewhere; `--log-format json` writes JSON lines
//! on stderr; a bad metrics address stops syncd with one line.
//!
//! Most tests start syncd themselves (not with `common::Syncd`, which reads
//! only the first stdout line): the metrics address is the second line.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{rpc, send_signal, syncd_bin, wait_bounded, Syncd, HANG_GUARD};
use syncd::proto::v1::{system_client::SystemClient, PingRequest};
use tonic::transport::Channel;

/// A syncd started with the metrics endpoint on a free port.
struct Served {
    child: Child,
    grpc: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `syncd serve` and reads its two stdout lines.
fn serve() -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(syncd_bin())
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn syncd");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..2 {
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
        }
        for _ in lines {}
    });
    let line = || rx.recv_timeout(HANG_GUARD).expect("a line from syncd");
    let first = line();
    let second = line();
    let grpc = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"));
    let metrics = second
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("second line: {second:?}"));
    Served {
        grpc: format!("http://{grpc}"),
        metrics: metrics.to_owned(),
        child,
        _dir: dir,
    }
}

/// A plain HTTP/1.1 GET: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    (status, body.to_owned())
}

/// The value of the sample `series` (name with its labels, exactly as
/// written) in a scrape, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} is not in\n{text}"))
}

async fn ping(channel: &Channel) {
    SystemClient::new(channel.clone())
        .ping(PingRequest {})
        .await
        .expect("ping");
}

#[tokio::test]
async fn counters_and_histograms_move_with_the_calls() {
    let served = serve();
    let metrics = served.metrics.clone();
    let scrape = move || get(&metrics, "/metrics");
    let (status, before) = tokio::task::spawn_blocking(scrape.clone()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(value(&before, "syncd_grants_total{kind=\"lock\"}"), 0.0);
    assert!(before.contains("# TYPE syncd_store_flush_duration_seconds histogram"));

    let channel = Channel::from_shared(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    ping(&channel).await;
    ping(&channel).await;
    let a = syncd::client::Client::connect(served.grpc.clone())
        .await
        .expect("client a");
    let b = syncd::client::Client::connect(served.grpc.clone())
        .await
        .expect("client b");
    let held = a.lock("m").acquire().await.expect("a acquires");
    // b waits behind a: one grant after a wait, then a release each.
    let waiting = tokio::spawn(async move {
        let guard = b.lock("m").acquire().await.expect("b acquires");
        guard.release().await.expect("b releases");
        b
    });
    let metrics = served.metrics.clone();
    rpc::until("b waits", async || {
        let metrics = metrics.clone();
        let text = tokio::task::spawn_blocking(move || get(&metrics, "/metrics").1)
            .await
            .unwrap();
        sample(&text, "syncd_waiters") == Some(1.0)
    })
    .await;
    held.release().await.expect("a releases");
    let b = rpc::answer(waiting).await;
    a.queue("jobs").put("one", 0).await.expect("put");

    let (status, after) = tokio::task::spawn_blocking(scrape).await.unwrap();
    assert_eq!(status, 200);
    assert!(after.contains("# TYPE syncd_rpcs_total counter"), "{after}");
    let ping_ok = "syncd_rpcs_total{method=\"syncd.v1.System/Ping\",code=\"OK\"}";
    assert!(value(&after, ping_ok) >= 2.0, "{after}");
    for method in ["Acquire", "Release"] {
        let series = format!("syncd_rpcs_total{{method=\"syncd.v1.Locks/{method}\",code=\"OK\"}}");
        assert!(value(&after, &series) >= 2.0, "{series}");
    }
    let put_ok = "syncd_rpcs_total{method=\"syncd.v1.Queues/Put\",code=\"OK\"}";
    assert_eq!(value(&after, put_ok), 1.0);
    let latency = "syncd_rpc_duration_seconds_count{method=\"syncd.v1.System/Ping\"}";
    assert!(value(&after, latency) >= 2.0);
    assert_eq!(value(&after, "syncd_grants_total{kind=\"lock\"}"), 2.0);
    assert_eq!(
        value(&after, "syncd_grant_wait_seconds_count{kind=\"lock\"}"),
        2.0
    );
    assert_eq!(
        value(&after, "syncd_hold_seconds_count{kind=\"lock\"}"),
        2.0
    );
    assert_eq!(value(&after, "syncd_queue_items_ready"), 1.0);
    assert_eq!(value(&after, "syncd_holds"), 0.0);
    assert_eq!(value(&after, "syncd_waiters"), 0.0);
    assert!(value(&after, "syncd_sessions") >= 2.0);
    assert!(value(&after, "syncd_primitives") >= 1.0);
    assert!(value(&after, "syncd_store_flush_duration_seconds_count") >= 1.0);
    assert!(value(&after, "syncd_store_batch_changes_count") >= 1.0);
    assert!(value(&after, "syncd_engine_batch_commands_count") >= 1.0);
    // The size is measured after writes, at most once a second.
    let metrics = served.metrics.clone();
    rpc::until("the store's size is measured", async || {
        let metrics = metrics.clone();
        let text = tokio::task::spawn_blocking(move || get(&metrics, "/metrics").1)
            .await
            .unwrap();
        sample(&text, "syncd_store_size_bytes").is_some_and(|bytes| bytes > 0.0)
    })
    .await;
    drop((a, b));
}

#[tokio::test]
async fn unknown_methods_and_refusals_are_counted_by_code() {
    let served = serve();
    let channel = Channel::from_shared(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    // A release of a lock nobody holds: FAILED_PRECONDITION.
    let refused = syncd::proto::v1::locks_client::LocksClient::new(channel.clone())
        .release(syncd::proto::v1::ReleaseLockRequest {
            session_id: rpc::session(&channel).await,
            name: "none".into(),
            fencing_token: 1,
        })
        .await
        .expect_err("nothing to release");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let metrics = served.metrics.clone();
    let (_, text) = tokio::task::spawn_blocking(move || get(&metrics, "/metrics"))
        .await
        .unwrap();
    let series = "syncd_rpcs_total{method=\"syncd.v1.Locks/Release\",code=\"FAILED_PRECONDITION\"}";
    assert_eq!(value(&text, series), 1.0);
}

#[test]
fn other_paths_are_404_and_other_methods_405() {
    let served = serve();
    assert_eq!(get(&served.metrics, "/").0, 404);
    assert_eq!(get(&served.metrics, "/metrics/x").0, 404);
    assert_eq!(get(&served.metrics, "/metrics?name=x").0, 200);
    let mut stream = TcpStream::connect(&served.metrics).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    // A connection that sends nothing does not stop the others.
    let _idle = TcpStream::connect(&served.metrics).expect("connect");
    assert_eq!(get(&served.metrics, "/metrics").0, 200);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut syncd =
        Syncd::start_logged(&["--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
    let status = syncd.terminate();
    assert!(status.success(), "{status:?}");
    let lines = syncd.log().lines();
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(object["level"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("metrics at http://")),
        "{lines:?}"
    );
}

#[test]
fn a_bad_metrics_address_stops_syncd_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in ["nonsense", "127.0.0.1:99999"] {
        let output = common::run_bounded(
            Command::new(syncd_bin())
                .arg("serve")
                .arg("--data")
                .arg(dir.path().join("data"))
                .args(["--listen", "127.0.0.1:0", "--metrics-listen", bad])
                .env("RUST_LOG", "warn"),
        );
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("syncd: cannot listen for metrics on {bad}: ")),
            "{stderr}"
        );
    }
}

#[test]
fn without_the_flag_there_is_no_second_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(syncd_bin())
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env_remove("SYNCD_METRICS_LISTEN")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("listening on "), "{first:?}");
    send_signal(child.id(), "TERM");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert!(wait_bounded(&mut child, HANG_GUARD).is_some());
}
