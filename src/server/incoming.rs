//! The connections the gRPC server serves, from an accept loop of our own.
//! tonic's `TcpIncoming` retries a failed accept at once: a process out of
//! file descriptors spins on EMFILE at 100% of a core while new clients hang
//! in the listen backlog, and whatever opens a file next (the store's
//! marker) fails.
//!
//! Policy:
//! - At most `max_connections` client connections are open at once. One
//!   more is accepted and closed at once, so that its client fails fast
//!   instead of waiting in the backlog (Redis's `maxclients`). Over plain
//!   HTTP/2 its first call gets UNAVAILABLE with a message that names
//!   `max_connections`, or it gets a GOAWAY saying so (see [`refuse`]); a
//!   TLS client only sees the connection close, as an answer would take a
//!   TLS handshake. Refusals are logged at warn at most once per
//!   [`REFUSAL_LOG_EVERY`], with their count.
//! - A connection that has not finished its HTTP/2 handshake (see
//!   [`handshake`]) within `handshake_timeout` is closed: a client that
//!   connects and sends nothing does not hold a descriptor for ever.
//! - Out of descriptors (EMFILE, ENFILE), each pending connection is shed:
//!   the spare descriptor kept for this is closed, the connection accepted
//!   and closed, the spare reopened (libuv's trick), so that new clients
//!   fail fast there too. Without a spare, and on ENOBUFS, ENOMEM or an
//!   unexpected error, the loop sleeps instead, 10 ms doubling to 1 s
//!   ([`Backoff`]). Such an episode is logged at warn once when it starts
//!   and at info when an accept works again. An error that concerns only
//!   the connection being accepted (ECONNABORTED and the like) skips it.
//! - Every connection gets TCP_NODELAY (the builder's `tcp_nodelay` does
//!   not reach connections from our own listener, and without it small
//!   replies stall ~40 ms on delayed ACKs) and TCP keepalive after 30 s.
//!
//! Invariants:
//! - `open` is the number of live [`Connection`]s: each holds a guard that
//!   decrements it when the connection is dropped, whoever drops it (hyper,
//!   or tonic's TLS acceptor after a failed TLS handshake); a connection is
//!   yielded only while `open < max_connections`. Refused connections are
//!   not in `open`: at most `refuse::ANSWERING_MAX` of them live on, for at
//!   most two seconds each, to be answered.
//! - The stream never yields an error and never ends (its error type is
//!   `Infallible`): tonic would only log an error at trace and poll again.
//! - The listener is not polled while a back-off sleep is pending, and every
//!   `Poll::Pending` has a waker registered (the listener's or the sleep's):
//!   the loop neither spins nor stalls.

mod backoff;
mod fd_limit;
mod handshake;
mod refuse;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

pub(crate) use self::backoff::Backoff;
use self::backoff::RateLimited;
pub use self::fd_limit::{
    default_max_connections, fd_budget, raise_fd_limit, ConnectionCap, FdLimit, FDS_RESERVED,
};
use self::handshake::Progress;
use crate::metrics::{Metrics, Refusal};

/// `--max-connections` when not given, unless the fd limit is lower.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// grpc-go's bound on a new connection's handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// At most one warn line per this long about connections refused for
/// `max_connections`.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// TCP keepalive probes start after this long without traffic.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// How many connections the server takes, and how long they may dawdle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// What the accept loop and its connections share.
struct Shared {
    open: AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

/// Counts one open connection for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::SeqCst);
        if let Some(metrics) = &shared.metrics {
            metrics.connections_open.inc();
        }
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "an open connection was counted");
        if let Some(metrics) = &self.0.metrics {
            metrics.connections_open.dec();
        }
    }
}

/// The stream of connections for `serve_with_incoming_shutdown`.
pub struct Incoming {
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: bool,
    shared: Arc<Shared>,
    /// Closed to make room for shedding a connection when out of fds.
    spare: Option<std::fs::File>,
    backoff: Backoff,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Connections shed in the current out-of-fds episode.
    shed: u64,
    refusals: RateLimited,
    /// Places for refusals being answered (see [`refuse`]).
    answering: Arc<tokio::sync::Semaphore>,
}

impl Incoming {
    /// Serves `listener`; `tls` tells how to watch handshakes.
    pub fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        tls: bool,
        metrics: Option<Arc<Metrics>>,
    ) -> Incoming {
        Incoming {
            listener,
            limits,
            tls,
            shared: Arc::new(Shared {
                open: AtomicUsize::new(0),
                metrics,
            }),
            spare: open_spare(),
            backoff: Backoff::default(),
            sleep: None,
            shed: 0,
            refusals: RateLimited::new(REFUSAL_LOG_EVERY),
            answering: Arc::new(tokio::sync::Semaphore::new(refuse::ANSWERING_MAX)),
        }
    }

    /// A connection to hand to the server, or `None` if it was refused.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) -> Option<Connection> {
        let open = self.shared.open.load(Ordering::SeqCst);
        if open >= self.limits.max_connections {
            self.refuse(stream, Refusal::MaxConnections);
            if let Some(refused) = self.refusals.note() {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    refused,
                    "refused {refused} connection(s) (last from {peer}): max_connections \
                     ({}) are open; raise --max-connections (and the open-file limit) if \
                     they are legitimate",
                    self.limits.max_connections
                );
            }
            return None;
        }
        let socket = socket2::SockRef::from(&stream);
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
        if let Err(e) = socket
            .set_tcp_nodelay(true)
            .and_then(|()| socket.set_tcp_keepalive(&keepalive))
        {
            tracing::debug!("cannot set TCP_NODELAY and keepalive for {peer}: {e}");
        }
        let progress = if self.tls {
            Progress::tls()
        } else {
            Progress::plain()
        };
        let connection = Connection {
            stream,
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep(self.limits.handshake_timeout)),
                progress,
            }),
            guard: OpenGuard::new(&self.shared),
        };
        debug_assert!(self.shared.open.load(Ordering::SeqCst) <= self.limits.max_connections);
        Some(connection)
    }

    /// Closes a connection just accepted, over plain HTTP/2 after telling
    /// the client why (see [`refuse`]).
    fn refuse(&self, stream: TcpStream, reason: Refusal) {
        if let Some(metrics) = &self.shared.metrics {
            metrics.refused(reason);
        }
        if self.tls {
            return;
        }
        let why = match reason {
            Refusal::MaxConnections => format!(
                "syncd: max_connections ({}) reached; try again later",
                self.limits.max_connections
            ),
            Refusal::OutOfFds => "syncd: out of file descriptors; try again later".to_owned(),
        };
        // Out of descriptors, this one must come free at once.
        let place = match reason {
            Refusal::MaxConnections => Arc::clone(&self.answering).try_acquire_owned().ok(),
            Refusal::OutOfFds => None,
        };
        match place {
            Some(place) => {
                tokio::spawn(async move {
                    refuse::answer(stream, why).await;
                    drop(place);
                });
            }
            None => refuse::at_once(&stream, &why),
        }
    }

    /// Handles a failed accept; sets a sleep when the loop must wait.
    fn accept_failed(&mut self, error: io::Error, cx: &mut Context<'_>) {
        let kind = AcceptError::of(&error);
        let wait = match kind {
            AcceptError::ThisConnection => {
                tracing::debug!("accept: {error}; skipping that connection");
                return;
            }
            AcceptError::OutOfFds => !self.shed_one(cx),
            AcceptError::OutOfMemory | AcceptError::Unexpected => true,
        };
        if self.backoff.failed() {
            tracing::warn!(
                open = self.shared.open.load(Ordering::SeqCst),
                max_connections = self.limits.max_connections,
                "cannot accept connections: {error}; {}",
                match kind {
                    AcceptError::OutOfFds =>
                        "shedding new connections until some close (see --max-connections)",
                    _ => "retrying with back-off",
                }
            );
        }
        if wait {
            let delay = self.backoff.delay();
            self.sleep = Some(Box::pin(tokio::time::sleep(delay)));
        }
    }

    /// Accepts and closes one pending connection in the room the spare
    /// descriptor leaves; false if there was no spare or no room.
    fn shed_one(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(spare) = self.spare.take() else {
            return false;
        };
        drop(spare);
        let shed = match self.listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, _))) => {
                self.refuse(stream, Refusal::OutOfFds);
                self.shed += 1;
                true
            }
            Poll::Ready(Err(_)) => false,
            // Nothing pending any more: the next poll says so.
            Poll::Pending => true,
        };
        self.spare = open_spare();
        shed
    }

    /// An accept worked: ends an episode of failures.
    fn accepted(&mut self) {
        if let Some((failures, lasted)) = self.backoff.succeeded() {
            tracing::info!(
                failures,
                shed = self.shed,
                "accepting connections again after {lasted:?} ({} shed meanwhile)",
                self.shed
            );
            self.shed = 0;
        }
        if self.spare.is_none() {
            self.spare = open_spare();
        }
    }
}

impl Stream for Incoming {
    type Item = Result<Connection, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.sleep {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
                // Descriptors may have come free meanwhile: shed again.
                if this.spare.is_none() {
                    this.spare = open_spare();
                }
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    this.accepted();
                    if let Some(connection) = this.admit(stream, peer) {
                        return Poll::Ready(Some(Ok(connection)));
                    }
                }
                Err(e) => this.accept_failed(e, cx),
            }
        }
    }
}

/// The descriptor closed to make room for shedding a connection.
fn open_spare() -> Option<std::fs::File> {
    match std::fs::File::open("/dev/null") {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::debug!("cannot open the spare descriptor: {e}");
            None
        }
    }
}

/// What a failed accept means for the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptError {
    /// EMFILE, ENFILE.
    OutOfFds,
    /// ENOBUFS, ENOMEM.
    OutOfMemory,
    /// The pending connection failed (accept(2)'s "treat like EAGAIN"
    /// errors on Linux).
    ThisConnection,
    /// Anything else: backed off, so that a broken listener does not spin.
    Unexpected,
}

impl AcceptError {
    fn of(error: &io::Error) -> AcceptError {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => AcceptError::OutOfFds,
            Some(libc::ENOBUFS | libc::ENOMEM) => AcceptError::OutOfMemory,
            Some(
                libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ETIMEDOUT,
            ) => AcceptError::ThisConnection,
            _ => AcceptError::Unexpected,
        }
    }
}

/// A connection not yet handshaken: its deadline and what it sent so far.
struct Handshake {
    deadline: Pin<Box<Sleep>>,
    progress: Progress,
}

/// One client connection: the socket, its handshake watch while that
/// lasts, and its place in the open count.
pub struct Connection {
    stream: TcpStream,
    handshake: Option<Handshake>,
    guard: OpenGuard,
}

impl Connection {
    fn timed_out(&mut self) -> io::Error {
        self.handshake = None;
        if let Some(metrics) = &self.guard.0.metrics {
            metrics.connections_handshake_timeouts.inc();
        }
        let peer = self.stream.peer_addr().ok();
        tracing::debug!(?peer, "closing a connection that did not handshake in time");
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no HTTP/2 handshake within --handshake-timeout",
        )
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(handshake) = &mut this.handshake else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        // Checked on every read, not only when nothing comes: a client
        // that trickles bytes must finish in time too.
        if handshake.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(this.timed_out()));
        }
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut this.stream).poll_read(cx, buf));
        if read.is_ok() && handshake.progress.observe(&buf.filled()[before..]) {
            this.handshake = None;
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
