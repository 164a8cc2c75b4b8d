//! Running out of file descriptors is not a crash: the real binary, started
//! with a soft open-file limit of 1024 (set in the child before it runs),
//! flooded with 1,100 TCP connections that never send a byte. In every
//! case the server stays up without spinning, an already connected client
//! keeps its answers and can write, a new client is served or refused
//! quickly with a clear error, and once the idle connections are gone new
//! clients and writes work again.
//!
//! - hard limit 1024 and `--max-connections` above it: the process runs
//!   out of descriptors; the accept loop sheds new connections instead of
//!   spinning on EMFILE, and the marker rewrite that fails is a warning;
//! - hard limit 4096: syncd raises its soft limit to it and takes all
//!   1,100;
//! - `--max-connections 1000`: one more is refused with UNAVAILABLE and a
//!   message that names `max_connections`.
//!
//! And connections that never send their HTTP/2 preface are closed when
//! `--handshake-timeout` passes, while handshaken ones stay.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{NoFile, Syncd, HANG_GUARD};
use syncd::client::{Client, ClientOptions};
use syncd::proto::v1::{system_client::SystemClient, PingRequest};
use tonic::transport::Channel;

/// Connections opened that never send a byte.
const IDLE_CONNECTIONS: usize = 1_100;

/// CPU time the server may use over [`IDLE_PERIOD`] with the idle
/// connections open. A bound to detect a spinning accept loop (which takes
/// a whole core, 2 s here), not a performance target.
const IDLE_CPU_SECONDS_MAX: f64 = 0.5;
const IDLE_PERIOD: Duration = Duration::from_secs(2);

/// How long a refused client may take to hear it: far less than a hang,
/// generous on a loaded machine.
const REFUSAL_WITHIN: Duration = Duration::from_secs(10);

/// The test itself holds the idle connections: it needs more than 1024
/// descriptors.
fn raise_own_fd_limit() {
    let limit = syncd::server::incoming::raise_fd_limit().expect("getrlimit");
    assert!(
        limit.soft >= 3 * IDLE_CONNECTIONS as u64 + 200,
        "the test needs a higher open-file limit than {limit:?}"
    );
}

/// User plus system CPU seconds the process has used (/proc/PID/stat).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / per_second as f64
}

/// The soft and hard open-file limits of a process (/proc/PID/limits).
fn fd_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    let numbers: Vec<u64> = line
        .expect("an open files line")
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

fn assert_not_spinning(syncd: &Syncd) {
    let before = cpu_seconds(syncd.pid());
    std::thread::sleep(IDLE_PERIOD);
    let used = cpu_seconds(syncd.pid()) - before;
    eprintln!("syncd used {used:.2} s of CPU in {IDLE_PERIOD:?}");
    assert!(
        used < IDLE_CPU_SECONDS_MAX,
        "syncd used {used:.2} s of CPU in {IDLE_PERIOD:?} with idle connections: spinning?"
    );
}

fn host_port(syncd: &Syncd) -> String {
    syncd.addr.trim_start_matches("http://").to_owned()
}

/// Opens the idle connections (the kernel completes them whether or not
/// syncd accepts them).
fn open_idle(syncd: &Syncd) -> Vec<TcpStream> {
    let addr = host_port(syncd);
    (0..IDLE_CONNECTIONS)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect()
}

fn client_options() -> ClientOptions {
    ClientOptions {
        session_ttl: Duration::from_secs(30),
        client_name: "fd-limit".into(),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

async fn connect(syncd: &Syncd) -> Client {
    Client::connect_with(syncd.addr.clone(), client_options())
        .await
        .expect("connect")
}

/// A write that needs the store: a queue put, flushed before its answer.
async fn put(client: &Client, what: &str) {
    let queue = client.queue("fd-limit");
    let put = queue.put(what.as_bytes().to_vec(), 0);
    let id = tokio::time::timeout(HANG_GUARD, put)
        .await
        .expect("answered");
    id.unwrap_or_else(|e| panic!("put {what}: {e}"));
}

/// A ping on a new connection: must fail, quickly; returns its message.
async fn refused_ping(syncd: &Syncd) -> String {
    let asked = Instant::now();
    let ping = async {
        let channel = Channel::from_shared(syncd.addr.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        SystemClient::new(channel)
            .ping(PingRequest {})
            .await
            .map_err(|status| status.to_string())
    };
    let outcome = tokio::time::timeout(HANG_GUARD, ping)
        .await
        .expect("no hang");
    let error = outcome.expect_err("a new connection is refused");
    eprintln!("the new client heard: {error}");
    assert!(
        asked.elapsed() < REFUSAL_WITHIN,
        "refused only after {:?}: {error}",
        asked.elapsed()
    );
    error
}

/// The metrics endpoint's address, from syncd's log.
async fn metrics_addr(syncd: &Syncd) -> String {
    let line = syncd
        .log()
        .until("the metrics address", |l| l.contains("metrics at http://"))
        .await;
    let start = line.find("http://").unwrap() + "http://".len();
    line[start..].split('/').next().unwrap().to_owned()
}

/// The value of the metric line that starts with `name`.
fn metric(addr: &str, name: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).expect("connect to metrics");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read metrics");
    let line = text.lines().find(|l| l.starts_with(name));
    let line = line.unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().expect("a number")
}

/// Polls the metric until `check` holds; fails with its last value after
/// the hang guard.
async fn until_metric(addr: &str, name: &str, check: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let value = metric(addr, name);
        if check(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(nofile: NoFile, extra_args: &[&str]) -> Syncd {
    raise_own_fd_limit();
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend(extra_args);
    Syncd::start_logged_with_nofile(&args, nofile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_sheds_new_connections_and_keeps_serving() {
    let nofile = NoFile {
        soft: 1024,
        hard: 1024,
    };
    let mut syncd = start(nofile, &["--max-connections", "5000"]);
    let log = syncd.log();
    log.until("the limit", |l| {
        l.contains("open-file limit 1024, hard limit 1024")
    })
    .await;
    assert_eq!(fd_limits(syncd.pid()), (1024, 1024));
    log.until("the budget warning", |l| {
        l.contains("max_connections 5000 is more than")
    })
    .await;
    let connected = connect(&syncd).await;
    put(&connected, "before").await;

    let idle = open_idle(&syncd);
    syncd
        .log()
        .until("running out of fds", |l| {
            l.contains("cannot accept connections") && l.contains("Too many open files")
        })
        .await;
    assert_not_spinning(&syncd);

    connected
        .ping()
        .await
        .expect("a connected client is answered");
    // Its flush cannot rewrite the marker file (no descriptor): a warning,
    // and the put stands.
    put(&connected, "while out of fds").await;
    syncd
        .log()
        .until("the marker warning", |l| {
            l.contains("syncd-state") && l.contains("Too many open files")
        })
        .await;
    // Shed as soon as it is accepted, before it could send a request: the
    // client sees its connection close (the server's log says why).
    let error = refused_ping(&syncd).await;
    assert!(!error.contains("eadline"), "{error}");
    assert!(syncd.is_running(), "syncd is up");

    drop(idle);
    // Their descriptors come free as syncd sees them close.
    let fresh = connect(&syncd).await;
    fresh.ping().await.expect("a new client is served again");
    let log = syncd.log();
    assert_eq!(log.count("accepting connections again"), 1);
    put(&fresh, "after").await;
    put(&connected, "after").await;
    assert!(syncd.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_limit_is_raised_to_the_hard_one_and_every_connection_taken() {
    let nofile = NoFile {
        soft: 1024,
        hard: 4096,
    };
    let mut syncd = start(nofile, &[]);
    syncd
        .log()
        .until("the raised limit", |l| {
            l.contains("open-file limit 4096 (raised from 1024), hard limit 4096")
                && l.contains("max_connections 4000 (default)")
        })
        .await;
    assert_eq!(fd_limits(syncd.pid()), (4096, 4096));
    let metrics = metrics_addr(&syncd).await;
    let connected = connect(&syncd).await;

    let idle = open_idle(&syncd);
    let all = (IDLE_CONNECTIONS + 1) as f64;
    until_metric(&metrics, "syncd_connections ", |n| n == all).await;
    assert_not_spinning(&syncd);
    connected
        .ping()
        .await
        .expect("a connected client is answered");
    put(&connected, "with idle connections").await;
    let fresh = connect(&syncd).await;
    fresh.ping().await.expect("room for a new client");
    put(&fresh, "with idle connections").await;
    assert_eq!(metric(&metrics, "syncd_connections_refused_total"), 0.0);

    drop(idle);
    until_metric(&metrics, "syncd_connections ", |n| n == 2.0).await;
    put(&connected, "after").await;
    assert!(syncd.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_are_closed_in_time() {
    const SILENT: usize = 50;
    let mut syncd = start(
        NoFile {
            soft: 1024,
            hard: 1024,
        },
        &["--handshake-timeout", "2s"],
    );
    let metrics = metrics_addr(&syncd).await;
    let connected = connect(&syncd).await;
    let addr = host_port(&syncd);
    let mut silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let timeouts = "syncd_connection_handshake_timeouts_total";
    until_metric(&metrics, timeouts, |n| n == SILENT as f64).await;
    until_metric(&metrics, "syncd_connections ", |n| n == 1.0).await;
    // Each got hyper's SETTINGS, then the end of the stream.
    for stream in &mut silent {
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let read = stream.read_to_end(&mut Vec::new());
        let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
        assert!(read.is_ok() || read.as_ref().is_err_and(reset), "{read:?}");
    }
    // The handshaken connection outlived the deadline: still the one open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    connected.ping().await.expect("still answered");
    assert_eq!(metric(&metrics, "syncd_connections "), 1.0);
    assert!(syncd.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_are_refused_at_once() {
    let nofile = NoFile {
        soft: 1024,
        hard: 4096,
    };
    let mut syncd = start(nofile, &["--max-connections", "1000"]);
    let metrics = metrics_addr(&syncd).await;
    let connected = connect(&syncd).await;

    let idle = open_idle(&syncd);
    let refused = (IDLE_CONNECTIONS + 1 - 1000) as f64;
    let refusals = "syncd_connections_refused_total{reason=\"max_connections\"}";
    until_metric(&metrics, refusals, |n| n == refused).await;
    syncd
        .log()
        .until("the refusal warning", |l| {
            l.contains("WARN") && l.contains("max_connections (1000) are open")
        })
        .await;
    assert_eq!(metric(&metrics, "syncd_connections "), 1000.0);
    assert_not_spinning(&syncd);

    connected
        .ping()
        .await
        .expect("a connected client is answered");
    put(&connected, "at the cap").await;
    let error = refused_ping(&syncd).await;
    assert!(error.contains("max_connections (1000) reached"), "{error}");
    let library = Client::connect_with(syncd.addr.clone(), client_options()).await;
    let Err(error) = library else {
        panic!("the library connected past the cap")
    };
    let error = error.to_string();
    eprintln!("the library said: {error}");
    assert!(error.contains("max_connections (1000) reached"), "{error}");
    assert!(syncd.is_running(), "syncd is up");

    drop(idle);
    until_metric(&metrics, "syncd_connections ", |n| n == 1.0).await;
    let fresh = connect(&syncd).await;
    fresh.ping().await.expect("a new client is served again");
    put(&fresh, "after").await;
    assert!(syncd.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_handshaken_connection_outlives_the_handshake_timeout() {
    let pki = common::certs::Pki::new();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let nofile = NoFile {
        soft: 1024,
        hard: 1024,
    };
    let tls = ["--tls-cert", &cert, "--tls-key", &key];
    let mut syncd = start(nofile, &[&tls[..], &["--handshake-timeout", "1s"]].concat());
    let metrics = metrics_addr(&syncd).await;
    let https = syncd.addr.replacen("http://", "https://", 1);
    let options = pki.options(Some("ca.pem"), None);
    let client = Client::connect_with(https, options)
        .await
        .expect("connect over TLS");
    // One that never sends its ClientHello: closed at the deadline.
    let _silent = TcpStream::connect(host_port(&syncd)).expect("connect");
    let timeouts = "syncd_connection_handshake_timeouts_total";
    until_metric(&metrics, timeouts, |n| n == 1.0).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .ping()
        .await
        .expect("answered over its first connection");
    assert_eq!(metric(&metrics, timeouts), 1.0, "only the silent one");
    assert_eq!(metric(&metrics, "syncd_connections "), 1.0);
    assert!(syncd.terminate().success());
}
