//! Exit codes, the failure type every command returns, and the one line on
//! stderr that reports it.

use std::{
    io::{self, Write},
    time::Duration,
};

use syncd::{client::Error, duration};
use tonic::Code;

/// Exit code: any other error.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: a wait timed out.
pub const EXIT_TIMEOUT: i32 = 3;
/// Exit code: the server cannot be reached.
pub const EXIT_UNAVAILABLE: i32 = 4;
/// Exit code: the barrier is broken (ABORTED).
pub const EXIT_BROKEN: i32 = 5;
/// Exit code: the primitive exists with other parameters (a semaphore's
/// capacity, a barrier's parties): FAILED_PRECONDITION for a wait.
pub const EXIT_MISMATCH: i32 = 6;
/// Exit code: the circuit breaker refused the call (CMD was not run).
/// Shares the value 6 with [`EXIT_MISMATCH`]: `breaker call` reports a
/// breaker that exists with other settings as any other error (1).
pub const EXIT_REJECTED: i32 = 6;
/// Exit code: a hold was lost while held.
pub const EXIT_LOST: i32 = 7;
/// Exit code: the server refused the token: not authenticated
/// (UNAUTHENTICATED: no token, or one it does not know) or permission
/// denied (PERMISSION_DENIED: the token's role or prefixes do not allow the
/// call).
pub const EXIT_DENIED: i32 = 8;
/// Exit code: CMD exists but cannot be executed (as in shells).
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code: CMD was not found (as in shells).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why syncctl stops early: the exit code and the one line for stderr
/// (empty when it was reported already).
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn other(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }

    /// A failure whose line is already on stderr.
    pub fn reported(code: i32) -> Failure {
        Failure {
            code,
            message: String::new(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: exit_code(&error),
            message: error.to_string(),
        }
    }
}

/// The exit code for a client error. (A hold found lost by its release
/// exits 7 instead: see `hold::finish`; a refused wait may exit 6: see
/// [`wait_failure`].)
pub fn exit_code(error: &Error) -> i32 {
    match error {
        Error::Unavailable(_) => EXIT_UNAVAILABLE,
        Error::Timeout(_) => EXIT_TIMEOUT,
        Error::Broken(_) => EXIT_BROKEN,
        Error::Unauthenticated(_) | Error::PermissionDenied(_) => EXIT_DENIED,
        Error::SessionLost(_) | Error::InvalidAddress(_) | Error::Status(_) => EXIT_ERROR,
    }
}

/// The failure of a wait (an acquire, an event or barrier wait): a timeout
/// says how long was waited, and a FAILED_PRECONDITION (the primitive
/// exists with another capacity or number of parties) exits 6.
pub fn wait_failure(error: Error, timeout: Option<Duration>) -> Failure {
    let mismatch = matches!(&error, Error::Status(s) if s.code() == Code::FailedPrecondition);
    let mut failure = Failure::from(error);
    if mismatch {
        failure.code = EXIT_MISMATCH;
    }
    if let (EXIT_TIMEOUT, Some(timeout)) = (failure.code, timeout) {
        let waited = duration::format(timeout);
        failure.message = if failure.message.starts_with("timed out") {
            format!("{} after {waited}", failure.message)
        } else {
            format!("{} (timed out after {waited})", failure.message)
        };
    }
    failure
}

pub fn exit_with(failure: Failure) -> ! {
    if !failure.message.is_empty() {
        report(&failure.message);
    }
    std::process::exit(failure.code)
}

/// Writes one `syncctl: ...` line on stderr. A closed terminal (after
/// SIGHUP) must not make syncctl panic, so a failed write is ignored.
pub fn report(line: &str) {
    let _ = writeln!(io::stderr().lock(), "syncctl: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_exit_codes() {
        assert_eq!(exit_code(&Error::Unavailable("x".into())), 4);
        assert_eq!(exit_code(&Error::Timeout("x".into())), 3);
        assert_eq!(exit_code(&Error::Broken("x".into())), 5);
        assert_eq!(exit_code(&Error::SessionLost("x".into())), 1);
        assert_eq!(exit_code(&Error::InvalidAddress("x".into())), 1);
        let status = tonic::Status::invalid_argument("bad name");
        assert_eq!(exit_code(&Error::Status(status)), 1);
        assert_eq!(exit_code(&Error::Unauthenticated("x".into())), 8);
        assert_eq!(exit_code(&Error::PermissionDenied("x".into())), 8);
    }

    #[test]
    fn a_refused_token_is_one_line_and_exit_8() {
        let denied = tonic::Status::permission_denied(
            "token \"ci\" may not touch \"deploy\": its names start with \"build-\"",
        );
        let failure = Failure::from(Error::from(denied));
        assert_eq!(failure.code, EXIT_DENIED);
        assert_eq!(
            failure.message,
            "permission denied: token \"ci\" may not touch \"deploy\": its names start with \"build-\""
        );
        let unknown = tonic::Status::unauthenticated("the token is not known to this server");
        let failure = wait_failure(Error::from(unknown), Some(Duration::ZERO));
        assert_eq!(failure.code, EXIT_DENIED);
        assert_eq!(
            failure.message,
            "not authenticated: the token is not known to this server"
        );
    }

    #[test]
    fn a_refused_wait_for_a_mismatch_exits_6() {
        let mismatch = tonic::Status::failed_precondition("semaphore \"s\" exists with capacity 1");
        let failure = wait_failure(Error::Status(mismatch), None);
        assert_eq!(failure.code, EXIT_MISMATCH);
        assert_eq!(
            failure.message,
            "failed precondition: semaphore \"s\" exists with capacity 1"
        );
        let bad = tonic::Status::invalid_argument("4 permits asked");
        assert_eq!(wait_failure(Error::Status(bad), None).code, EXIT_ERROR);
        assert_eq!(wait_failure(Error::Broken("b".into()), None).code, 5);
    }

    #[test]
    fn timeouts_say_how_long_was_waited() {
        let held = Error::Timeout("lock \"x\" is held by session 4".into());
        let failure = wait_failure(held, Some(Duration::ZERO));
        assert_eq!(failure.code, 3);
        assert_eq!(
            failure.message,
            "lock \"x\" is held by session 4 (timed out after 0s)"
        );
        let waited = Error::Timeout("timed out waiting for lock \"x\"".into());
        let failure = wait_failure(waited, Some(Duration::from_secs(2)));
        assert_eq!(failure.message, "timed out waiting for lock \"x\" after 2s");
    }
}
