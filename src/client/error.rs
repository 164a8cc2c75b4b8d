//! The client's error type and the one place that decides what a gRPC status
//! means to the client: retry it, renew the session, or hand it back.

use std::{error::Error as StdError, fmt, io};

use tonic::{Code, Status};

/// What can go wrong in a client call.
#[derive(Debug)]
pub enum Error {
    /// The server cannot be reached, or it is shutting down. Retries within
    /// the client's budget did not help.
    Unavailable(String),
    /// A wait timed out (`DEADLINE_EXCEEDED`); nothing is left queued.
    Timeout(String),
    /// A barrier is broken (`ABORTED`): a party left while waiting, or the
    /// barrier was reset or deleted. Waits fail so until it is reset.
    Broken(String),
    /// The session that owned a hold or a wait is gone (expired or closed):
    /// the holds it had are released.
    SessionLost(String),
    /// The server address cannot be used (empty, malformed, or a scheme
    /// this client does not speak), or the TLS settings that go with an
    /// `https://` address cannot (an unreadable or invalid PEM file, a
    /// client certificate without its key), or the token cannot be sent
    /// (empty, or not printable ASCII without spaces; the message never
    /// quotes it). Nothing was sent.
    InvalidAddress(String),
    /// The server checks tokens (`syncd serve --auth-tokens`) and did not
    /// accept this client's (`UNAUTHENTICATED`): none was given
    /// ([`super::ClientOptions::token`]), or the server does not know it
    /// (never did, or it was removed). Reads like `not authenticated: the
    /// token is not known to this server`. Never retried.
    Unauthenticated(String),
    /// The server knows the token, but it may not make this call
    /// (`PERMISSION_DENIED`): its role is too low, the name is outside its
    /// prefixes, or the session belongs to another token. Reads like
    /// `permission denied: token "ci" may not touch "deploy": its names
    /// start with "build-"`. Never retried.
    PermissionDenied(String),
    /// Any other status from the server, message kept (bad input,
    /// releasing what is not held, limits, ...).
    Status(Status),
}

impl Error {
    /// Translates a status into an error, naming the server's address when
    /// the server could not be reached.
    pub(crate) fn from_status(status: Status, addr: &str) -> Error {
        match status.code() {
            Code::DeadlineExceeded => return Error::Timeout(status.message().to_string()),
            Code::Aborted => return Error::Broken(status.message().to_string()),
            Code::Unauthenticated => return Error::Unauthenticated(status.message().to_string()),
            Code::PermissionDenied => return Error::PermissionDenied(status.message().to_string()),
            _ => {}
        }
        if !is_transient(&status) {
            return Error::Status(status);
        }
        if is_local(&status) {
            Error::Unavailable(format!(
                "cannot reach syncd at {addr}: {}",
                transport_reason(&status)
            ))
        } else {
            Error::Unavailable(format!(
                "syncd at {addr} is unavailable: {}",
                status.message()
            ))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(message)
            | Error::Timeout(message)
            | Error::Broken(message)
            | Error::SessionLost(message)
            | Error::InvalidAddress(message) => f.write_str(message),
            Error::Unauthenticated(message) => with_code(f, Code::Unauthenticated, message),
            Error::PermissionDenied(message) => with_code(f, Code::PermissionDenied, message),
            Error::Status(status) => write_status(f, status),
        }
    }
}

fn write_status(f: &mut fmt::Formatter<'_>, status: &Status) -> fmt::Result {
    with_code(f, status.code(), status.message())
}

/// `code: message`, or the code alone without a message.
fn with_code(f: &mut fmt::Formatter<'_>, code: Code, message: &str) -> fmt::Result {
    let code = code_name(code);
    if message.is_empty() {
        f.write_str(code)
    } else {
        write!(f, "{code}: {message}")
    }
}

/// A lower-case name for a status code, as people read it in an error line.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "not authenticated",
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    /// Classifies a status like the client does, without a server address
    /// to name in the message.
    fn from(status: Status) -> Error {
        match status.code() {
            Code::DeadlineExceeded => Error::Timeout(status.message().to_string()),
            Code::Aborted => Error::Broken(status.message().to_string()),
            Code::Unauthenticated => Error::Unauthenticated(status.message().to_string()),
            Code::PermissionDenied => Error::PermissionDenied(status.message().to_string()),
            _ if is_transient(&status) => Error::Unavailable(reason(&status)),
            _ => Error::Status(status),
        }
    }
}

/// True when a call failed because the server could not be reached or is
/// restarting: the same call may succeed after a pause.
///
/// `UNAUTHENTICATED` and `PERMISSION_DENIED` never count (see
/// [`is_refused`]): the same token gets the same answer.
///
/// `UNAVAILABLE` always counts. `UNKNOWN`, `INTERNAL` and `CANCELLED` count
/// only when the client produced them from a transport failure (a broken
/// connection, an HTTP/2 reset): those carry a source error, while a status
/// sent by the server never does.
pub(crate) fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => is_local(status),
        _ => false,
    }
}

/// True when the server refused the caller's token: `UNAUTHENTICATED` (no
/// token, or one it does not know) or `PERMISSION_DENIED` (the token may
/// not make this call). Such a call is never retried, and a keep-alive
/// refused so ends the session.
pub(crate) fn is_refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied
    )
}

/// True when a failed call surely did not take effect: the connection could
/// not be made, or the server refused it while shutting down (it answers so
/// only for commands it did not apply). Calls that must not be applied twice
/// are retried only then.
pub(crate) fn surely_not_applied(status: &Status) -> bool {
    if !is_local(status) {
        return status.code() == Code::Unavailable;
    }
    let mut source = status.source();
    while let Some(err) = source {
        let refused = err
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused);
        if refused || err.to_string().contains("connect error") {
            return true;
        }
        source = err.source();
    }
    false
}

/// True for a status the client made itself from a transport error.
fn is_local(status: &Status) -> bool {
    status.source().is_some()
}

fn reason(status: &Status) -> String {
    if is_local(status) {
        transport_reason(status)
    } else {
        status.message().to_string()
    }
}

/// The most specific reason in a transport error's source chain, e.g.
/// `connection refused` rather than `tcp connect error`.
fn transport_reason(status: &Status) -> String {
    let mut deepest: Option<&(dyn StdError + 'static)> = None;
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(tls) = tls_error(err) {
            return format!("tls handshake failed: {tls}");
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return tidy_io_message(&io.to_string());
        }
        deepest = Some(err);
        source = err.source();
    }
    match deepest {
        Some(err) => err.to_string(),
        None => status.message().to_string(),
    }
}

/// The TLS error behind `err`, also when I/O errors wrap it (their
/// `source` skips what they wrap).
fn tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: &(dyn StdError + 'static) = err;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let io = current.downcast_ref::<io::Error>()?;
        current = io.get_ref()?;
    }
    None
}

/// `Connection refused (os error 111)` → `connection refused`.
fn tidy_io_message(message: &str) -> String {
    let trimmed = match message.rfind(" (os error ") {
        Some(at) if message.ends_with(')') => &message[..at],
        _ => message,
    };
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_messages_are_tidied() {
        assert_eq!(
            tidy_io_message("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(
            tidy_io_message("failed to lookup address information: Name or service not known"),
            "failed to lookup address information: Name or service not known"
        );
        assert_eq!(tidy_io_message(""), "");
    }

    #[test]
    fn server_statuses_map_to_variants() {
        let addr = "http://127.0.0.1:1";
        let timeout = Error::from_status(Status::deadline_exceeded("lock \"x\" is held"), addr);
        assert!(matches!(timeout, Error::Timeout(ref m) if m == "lock \"x\" is held"));

        let down = Error::from_status(Status::unavailable("shutting down"), addr);
        assert_eq!(
            down.to_string(),
            "syncd at http://127.0.0.1:1 is unavailable: shutting down"
        );

        let broken = Error::from_status(Status::aborted("barrier \"b\" is broken"), addr);
        assert!(matches!(broken, Error::Broken(_)));
        assert_eq!(broken.to_string(), "barrier \"b\" is broken");

        let bad = Error::from_status(Status::invalid_argument("empty name"), addr);
        assert_eq!(bad.to_string(), "invalid argument: empty name");
    }

    #[test]
    fn only_calls_that_surely_did_not_arrive_count_as_not_applied() {
        assert!(surely_not_applied(&Status::unavailable(
            "the server is shutting down"
        )));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(surely_not_applied(&Status::from_error(Box::new(refused))));
        // A connection that broke mid-call may have delivered it.
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!surely_not_applied(&Status::from_error(Box::new(reset))));
        assert!(!surely_not_applied(&Status::internal("h2 protocol error")));
        assert!(!surely_not_applied(&Status::deadline_exceeded("slow")));
    }

    #[test]
    fn only_local_unknown_errors_are_transient() {
        assert!(is_transient(&Status::unavailable("x")));
        assert!(!is_transient(&Status::unknown("from the server")));
        assert!(!is_transient(&Status::internal("from the server")));
        let local = Status::from_error(Box::new(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "Connection reset by peer (os error 104)",
        )));
        assert_eq!(local.code(), Code::Unknown);
        assert!(is_transient(&local));
        let error = Error::from_status(local, "http://h:1");
        assert_eq!(
            error.to_string(),
            "cannot reach syncd at http://h:1: connection reset by peer"
        );
    }

    #[test]
    fn refused_tokens_have_their_own_variants() {
        let addr = "http://127.0.0.1:1";
        let unknown = Status::unauthenticated("the token is not known to this server");
        assert!(is_refused(&unknown));
        let error = Error::from_status(unknown.clone(), addr);
        assert!(
            matches!(error, Error::Unauthenticated(ref m) if m == "the token is not known to this server")
        );
        assert_eq!(
            error.to_string(),
            "not authenticated: the token is not known to this server"
        );
        assert!(matches!(Error::from(unknown), Error::Unauthenticated(_)));

        let message = "token \"ci\" may not touch \"deploy\": its names start with \"build-\"";
        let denied = Status::permission_denied(message);
        assert!(is_refused(&denied));
        let error = Error::from_status(denied.clone(), addr);
        assert!(matches!(error, Error::PermissionDenied(ref m) if m == message));
        assert_eq!(error.to_string(), format!("permission denied: {message}"));
        assert!(matches!(Error::from(denied), Error::PermissionDenied(_)));

        assert_eq!(
            Error::Unauthenticated(String::new()).to_string(),
            "not authenticated"
        );
        assert!(!is_refused(&Status::unavailable("down")));
        assert!(!is_refused(&Status::not_found("session 1 not found")));
    }

    #[test]
    fn refusals_are_never_retried() {
        for status in [
            Status::unauthenticated("the token is not known to this server"),
            Status::permission_denied("token \"ci\" has role read; this call needs role use"),
        ] {
            assert!(!is_transient(&status), "{status:?}");
            assert!(!surely_not_applied(&status), "{status:?}");
        }
    }

    #[test]
    fn from_status_without_address() {
        assert!(matches!(
            Error::from(Status::unavailable("bye")),
            Error::Unavailable(ref m) if m == "bye"
        ));
        assert!(matches!(
            Error::from(Status::failed_precondition("not held")),
            Error::Status(_)
        ));
        assert!(matches!(
            Error::from(Status::aborted("reset")),
            Error::Broken(ref m) if m == "reset"
        ));
    }
}
