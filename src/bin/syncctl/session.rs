//! Connecting, leaving, and waiting that a signal may end: what every
//! command does around its own work.

use std::{
    future::Future,
    io::{BufRead, BufReader, Read},
    path::Path,
    time::Duration,
};

use syncd::client::{check_token, Client, ClientOptions, Error, TlsOptions, TOKEN_BYTES_MAX};
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
    options.token = token(cli)?;
    Ok(Client::connect_with(cli.addr.as_str(), options).await?)
}

/// The token to send: from --token (SYNCD_TOKEN), or the first line of
/// --token-file (SYNCD_TOKEN_FILE), or none; an empty --token counts as
/// not given (`main` refuses both at once). A token that cannot be sent is an
/// error (exit 1) that says where it came from and never quotes it.
pub fn token(cli: &Cli) -> Result<Option<String>, Failure> {
    let given = cli.token.as_ref().filter(|t| !t.0.is_empty());
    let (token, from) = match (given, &cli.token_file) {
        (Some(secret), _) => (secret.0.clone(), "--token (or SYNCD_TOKEN)".to_owned()),
        (None, Some(path)) => (read_token_file(path)?, token_file_name(path)),
        (None, None) => return Ok(None),
    };
    check_token(&token)
        .map_err(|why| Failure::other(format!("{from}: the token cannot be used: {why}")))?;
    Ok(Some(token))
}

fn token_file_name(path: &Path) -> String {
    format!("--token-file {}", path.display())
}

/// The first line of `path`, without surrounding whitespace. Reads no
/// more than that line (so `/dev/stdin` or a pipe works), and at most a
/// little more than the longest token.
fn read_token_file(path: &Path) -> Result<String, Failure> {
    let name = token_file_name(path);
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::other(format!("{name}: cannot open it: {}", io_reason(&e))))?;
    let limit = u64::try_from(TOKEN_BYTES_MAX).unwrap_or(u64::MAX) + 2;
    let mut first = Vec::new();
    BufReader::new(file.take(limit))
        .read_until(b'\n', &mut first)
        .map_err(|e| Failure::other(format!("{name}: cannot read it: {}", io_reason(&e))))?;
    let first = String::from_utf8(first)
        .map_err(|_| Failure::other(format!("{name}: its first line is not UTF-8 text")))?;
    let token = first.trim();
    if token.is_empty() {
        return Err(Failure::other(format!(
            "{name}: its first line is empty; put the token's secret there"
        )));
    }
    Ok(token.to_owned())
}

/// `No such file or directory (os error 2)` → `no such file or directory`.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
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

/// Ends a watching command: closes the session, and exits 0 when the watch
/// was interrupted (the normal way to stop watching) or ran its course.
pub async fn end_watch(
    client: Client,
    watched: Waited<Result<(), Failure>>,
) -> Result<i32, Failure> {
    close(client).await;
    match watched {
        Waited::Done(done) => done.map(|()| 0),
        Waited::Interrupted(_) => Ok(0),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(argv: &[&str]) -> Cli {
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn no_token_is_none() {
        assert_eq!(token(&cli(&["syncctl", "ping"])).unwrap(), None);
        let empty = cli(&["syncctl", "--token", "", "ping"]);
        assert_eq!(token(&empty).unwrap(), None);
    }

    #[test]
    fn a_token_from_the_flag_is_checked_and_never_quoted() {
        let given = token(&cli(&["syncctl", "--token", "s3cret", "ping"])).unwrap();
        assert_eq!(given.as_deref(), Some("s3cret"));
        let failure = token(&cli(&["syncctl", "--token", "two words", "ping"])).unwrap_err();
        assert_eq!(failure.code, 1);
        assert!(
            failure
                .message
                .starts_with("--token (or SYNCD_TOKEN): the token cannot be used: it has a space"),
            "{}",
            failure.message
        );
        assert!(
            !failure.message.contains("two words"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_token_file_gives_its_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-from-file \r\nsecond line\n").unwrap();
        let argv = ["syncctl", "--token-file", path.to_str().unwrap(), "ping"];
        assert_eq!(
            token(&cli(&argv)).unwrap().as_deref(),
            Some("s3cret-from-file")
        );

        std::fs::write(&path, "no-newline-at-end").unwrap();
        assert_eq!(
            token(&cli(&argv)).unwrap().as_deref(),
            Some("no-newline-at-end")
        );

        std::fs::write(&path, "\nsecret-on-line-2\n").unwrap();
        let empty = token(&cli(&argv)).unwrap_err().message;
        assert!(
            empty.ends_with("its first line is empty; put the token's secret there"),
            "{empty}"
        );
        assert!(
            empty.starts_with(&format!("--token-file {}", path.display())),
            "{empty}"
        );

        std::fs::write(&path, "top secret\n").unwrap();
        let spaced = token(&cli(&argv)).unwrap_err().message;
        assert!(
            spaced.contains("the token cannot be used: it has a space"),
            "{spaced}"
        );
        assert!(!spaced.contains("top secret"), "{spaced}");

        let missing = dir.path().join("missing");
        let argv = ["syncctl", "--token-file", missing.to_str().unwrap(), "ping"];
        let failure = token(&cli(&argv)).unwrap_err();
        assert_eq!(failure.code, 1);
        assert!(
            failure
                .message
                .ends_with("cannot open it: no such file or directory"),
            "{}",
            failure.message
        );
    }
}
