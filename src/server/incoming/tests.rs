use std::io::{Read, Write};
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

fn limits(max_connections: usize, handshake_timeout: Duration) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        handshake_timeout,
    }
}

async fn incoming(limits: ConnectionLimits) -> (Incoming, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::for_server());
    (Incoming::new(listener, limits, false, Some(metrics)), addr)
}

async fn next(incoming: &mut Incoming) -> Connection {
    let next = tokio::time::timeout(Duration::from_secs(60), incoming.next());
    match next.await.expect("a connection in time") {
        Some(Ok(connection)) => connection,
        None => panic!("the stream ended"),
    }
}

/// What a (blocking) client reads until the server closes.
fn read_to_close(client: &mut std::net::TcpStream) -> Vec<u8> {
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut bytes = Vec::new();
    match client.read_to_end(&mut bytes) {
        Ok(_) => bytes,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => bytes,
        Err(e) => panic!("read: {e}"),
    }
}

fn metric(incoming: &Incoming, line_start: &str) -> String {
    let text = incoming.shared.metrics.as_ref().unwrap().encode();
    let line = text.lines().find(|l| l.starts_with(line_start));
    line.unwrap_or_else(|| panic!("{line_start} in\n{text}"))
        .to_owned()
}

#[tokio::test]
async fn one_connection_past_the_cap_is_told_why_and_closed() {
    let (mut incoming, addr) = incoming(limits(1, Duration::from_secs(60))).await;
    let _first_client = std::net::TcpStream::connect(addr).unwrap();
    let first = next(&mut incoming).await;
    let mut second = std::net::TcpStream::connect(addr).unwrap();
    second.write_all(PREFACE).unwrap();
    // The refusal happens while the stream looks for a connection to yield.
    let mut third = std::net::TcpStream::connect(addr).unwrap();
    let refused = tokio::task::spawn_blocking(move || read_to_close(&mut second));
    let polled = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
    assert!(polled.is_err(), "nothing admitted past the cap");
    // It sent no request: after a while, SETTINGS, their ACK, a GOAWAY.
    let bytes = refused.await.unwrap();
    assert_eq!(&bytes[..9], &SETTINGS, "the server's preface first");
    assert_eq!(bytes[9 + 3], 4, "an ACK of the client's SETTINGS");
    assert_eq!(bytes[18 + 3], 7, "then a GOAWAY");
    let code = u32::from_be_bytes(bytes[27 + 4..27 + 8].try_into().unwrap());
    assert_eq!(code, refuse::ENHANCE_YOUR_CALM);
    let why = String::from_utf8_lossy(&bytes[27 + 8..]);
    assert!(why.contains("max_connections (1) reached"), "{why}");
    assert_eq!(incoming.shared.open.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(
            &incoming,
            "syncd_connections_refused_total{reason=\"max_connections\"}"
        ),
        "syncd_connections_refused_total{reason=\"max_connections\"} 2"
    );
    assert!(!read_to_close(&mut third).is_empty(), "refused too");

    drop(first);
    assert_eq!(incoming.shared.open.load(Ordering::SeqCst), 0);
    let _fourth_client = std::net::TcpStream::connect(addr).unwrap();
    let _fourth = next(&mut incoming).await;
    assert_eq!(
        metric(&incoming, "syncd_connections "),
        "syncd_connections 1"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_its_deadline_and_a_talking_one_is_not() {
    let (mut incoming, addr) = incoming(limits(10, Duration::from_millis(200))).await;
    let _silent_client = std::net::TcpStream::connect(addr).unwrap();
    let mut silent = next(&mut incoming).await;
    let mut talking_client = std::net::TcpStream::connect(addr).unwrap();
    let mut talking = next(&mut incoming).await;
    talking_client.write_all(PREFACE).unwrap();
    talking_client.write_all(&SETTINGS).unwrap();
    let mut buffer = [0u8; 64];
    let mut got = 0;
    while got < PREFACE.len() + SETTINGS.len() {
        got += talking.read(&mut buffer[got..]).await.expect("read");
    }
    assert!(talking.handshake.is_none(), "handshaken");

    let started = Instant::now();
    let error = silent.read(&mut buffer).await.expect_err("timed out");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        metric(&incoming, "syncd_connection_handshake_timeouts_total"),
        "syncd_connection_handshake_timeouts_total 1"
    );
    // The handshaken one reads on past the deadline.
    talking_client.write_all(b"x").unwrap();
    assert_eq!(talking.read(&mut buffer).await.expect("read"), 1);
}

#[test]
fn accept_errors_are_sorted() {
    let of = |errno| AcceptError::of(&io::Error::from_raw_os_error(errno));
    assert_eq!(of(libc::EMFILE), AcceptError::OutOfFds);
    assert_eq!(of(libc::ENFILE), AcceptError::OutOfFds);
    assert_eq!(of(libc::ENOBUFS), AcceptError::OutOfMemory);
    assert_eq!(of(libc::ENOMEM), AcceptError::OutOfMemory);
    assert_eq!(of(libc::ECONNABORTED), AcceptError::ThisConnection);
    assert_eq!(of(libc::EINVAL), AcceptError::Unexpected);
    let custom = io::Error::other("no errno");
    assert_eq!(AcceptError::of(&custom), AcceptError::Unexpected);
}
