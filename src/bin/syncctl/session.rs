//! Connecting, leaving, and waiting that a signal may end: what every
//! command does around its own work.

use std::{future::Future, time::Duration};

use syncd::client::{Client, ClientOptions, Error, TlsOptions};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{exit::Failure, Cli};

/// How long syncctl tries to release what it holds and close its session
/// on its way out. If the server cannot be reached it stops there: the
/// session's lease frees everything anyway.
pub const LEAVE_BUDGET: Duration = Duration::from_secs(1);

/// Connects and opens a session with the lease `ttl`.
pub async fn connect(cli: &Cli, ttl: Option<Duration>) -> Result<Client, Failure> {
    let mut options = ClientOptions::default();
    if let Some(ttl) = ttl {
        options.session_ttl = ttl;
    }
    if cli.addr.trim().starts_with("https://") {
        options.tls = TlsOptions::from_files(
            cli.cacert.as_deref(),
            cli.cert.as_deref(),
            cli.key.as_deref(),
        )?;
    }
    Ok(Client::connect_with(cli.addr.as_str(), options).await?)
}

/// Closes the session, trying until `deadline`. The session holds nothing
/// any more (or nothing it can still lose): a failed close only delays its
/// expiry, so it is only logged.
pub async fn close_until(client: Client, deadline: tokio::time::Instant) {
    let session_id = client.session_id();
    match tokio::time::timeout_at(deadline, client.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::info!("closing session {session_id} failed: {error}"),
        Err(_) => tracing::info!("closing session {session_id}: no answer in time"),
    }
}

/// Closes the session, trying for at most [`LEAVE_BUDGET`].
pub async fn close(client: Client) {
    close_until(client, tokio::time::Instant::now() + LEAVE_BUDGET).await;
}

/// Connects, makes one call with the client, and closes the session again:
/// for commands that ask or tell the server something and are done.
pub async fn one_call<T, F, Fut>(cli: &Cli, call: F) -> Result<T, Failure>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let client = connect(cli, None).await?;
    let answer = call(client.clone()).await;
    close(client).await;
    Ok(answer?)
}

/// SIGINT, SIGTERM and SIGHUP, caught: while syncctl holds something or
/// waits it must not die before it releases and leaves.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn catch() -> Result<Signals, Failure> {
        let catch =
            |kind| signal(kind).map_err(|e| Failure::other(format!("cannot catch signals: {e}")));
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal; returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

/// How a wait that a signal may end ended.
pub enum Waited<T> {
    Done(T),
    /// Signal N ended the wait: exit 128+N.
    Interrupted(i32),
}

/// Runs `wait` until it ends or a signal comes; a signal drops the wait
/// (which leaves nothing queued on the server).
pub async fn interruptible<T>(signals: &mut Signals, wait: impl Future<Output = T>) -> Waited<T> {
    tokio::select! {
        done = wait => Waited::Done(done),
        signal = signals.recv() => Waited::Interrupted(signal),
    }
}

/// A whole waiting command: connects with the lease `ttl`, waits with
/// `wait` until it ends or a signal comes, and closes the session. A failed
/// wait becomes a [`Failure`] through [`crate::exit::wait_failure`] with
/// `timeout`.
pub async fn wait_command<T, F, Fut>(
    cli: &Cli,
    ttl: Duration,
    timeout: Option<Duration>,
    wait: F,
) -> Result<Waited<T>, Failure>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut signals = Signals::catch()?;
    let client = connect(cli, Some(ttl)).await?;
    let waited = interruptible(&mut signals, wait(client.clone())).await;
    close(client).await;
    match waited {
        Waited::Done(Ok(answer)) => Ok(Waited::Done(answer)),
        Waited::Done(Err(error)) => Err(crate::exit::wait_failure(error, timeout)),
        Waited::Interrupted(signal) => Ok(Waited::Interrupted(signal)),
    }
}
