//! The one mapping from the API's requests (`syncd.v1`) to the core's
//! [`Command`]s and [`Query`]s: one trait impl per request message (see
//! `messages.rs`). The services call it after they authorized the caller;
//! the `decode_requests` fuzz target calls it on decoded bytes.
//!
//! Policy:
//! - A request becomes a [`Command`] ([`ToCommand`], answered once), a
//!   waiting [`Command`] ([`ToWait`], given the waiter id the engine
//!   assigns), or a [`Query`] ([`ToQuery`], a read).
//! - What the server adds from the call around the message travels in a
//!   [`Context`]: the gRPC deadline (it bounds a wait's timeout, see
//!   `deadline.rs`), the peer's address and the caller's identity (a new
//!   session's).
//! - Only what protobuf cannot say is checked here: enum numbers that name
//!   no mode or outcome, an unknown list kind, a close reason too long to
//!   keep. The core checks names, sizes, TTLs, sessions and tokens, so that
//!   every way in gets the same refusals.
//! - Authorization is not here: the services check the caller's token
//!   before they map its request.
//!
//! Invariants:
//! - a mapping has no effects and depends only on the message and the
//!   context, so the fuzz target sees exactly what the server would send
//!   to the engine;
//! - every refusal is INVALID_ARGUMENT and names the field and the value.

mod messages;

use std::time::Duration;

use tonic::{Request, Status};

use super::deadline::{effective_timeout_ms, grpc_timeout};
use crate::core::breaker::BreakerSettings;
use crate::core::lost::REVOKE_DETAIL_BYTES_MAX;
use crate::core::token_bucket::{BucketAsk, BucketSettings};
use crate::core::{Command, Kind, Query, RwMode, WaiterId};
use crate::proto::v1 as pb;

/// What the server knows of a call besides its message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The call's gRPC deadline (`grpc-timeout`): a wait ends by then at
    /// the latest. `None`: the call has none.
    pub grpc_timeout: Option<Duration>,
    /// Where the caller connected from (`ip:port`), kept with a new
    /// session.
    pub host: String,
    /// The caller's identity (its token's name; empty when the server
    /// checks no tokens): the owner of a new session.
    pub identity: String,
}

impl Context {
    /// Nothing added: no deadline, no peer, no identity.
    pub const EMPTY: Context = Context {
        grpc_timeout: None,
        host: String::new(),
        identity: String::new(),
    };

    /// The context of a waiting call: its deadline.
    pub fn waiting<T>(request: &Request<T>) -> Context {
        Context {
            grpc_timeout: grpc_timeout(request.metadata()),
            ..Context::EMPTY
        }
    }

    /// A wait's timeout: the request's own, bounded by the call's deadline
    /// (`None` waits forever).
    pub fn timeout_ms(&self, requested_ms: Option<u64>) -> Option<u64> {
        effective_timeout_ms(requested_ms, self.grpc_timeout)
    }
}

/// A request that becomes one command, answered once.
pub trait ToCommand {
    fn to_command(self, context: &Context) -> Result<Command, Status>;
}

/// A request that becomes a command that may wait (or watch): `waiter` is
/// the id the engine gave its events.
pub trait ToWait {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status>;
}

/// A request that only reads.
pub trait ToQuery {
    fn to_query(self) -> Result<Query, Status>;
}

/// A list's kind: `""` is every kind; an unknown kind is refused.
pub fn list_kind(text: &str) -> Result<Option<Kind>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    let kind = Kind::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        Status::invalid_argument(format!(
            "unknown kind {text:?}; known kinds: {}",
            known.join(", ")
        ))
    })?;
    Ok(Some(kind))
}

/// A request's read-write mode; UNSPECIFIED and unknown numbers are
/// refused.
fn rw_mode(value: i32) -> Result<RwMode, Status> {
    let given = match pb::RwMode::try_from(value) {
        Ok(pb::RwMode::Read) => return Ok(RwMode::Read),
        Ok(pb::RwMode::Write) => return Ok(RwMode::Write),
        Ok(unspecified) => unspecified.as_str_name().to_owned(),
        Err(_) => value.to_string(),
    };
    Err(Status::invalid_argument(format!(
        "mode must be RW_MODE_READ or RW_MODE_WRITE, not {given}"
    )))
}

/// Whether a recorded call failed; UNSPECIFIED and unknown numbers are
/// refused.
fn call_failed(outcome: i32) -> Result<bool, Status> {
    let given = match pb::CallOutcome::try_from(outcome) {
        Ok(pb::CallOutcome::Success) => return Ok(false),
        Ok(pb::CallOutcome::Failure) => return Ok(true),
        Ok(unspecified) => unspecified.as_str_name().to_owned(),
        Err(_) => outcome.to_string(),
    };
    Err(Status::invalid_argument(format!(
        "outcome must be CALL_OUTCOME_SUCCESS or CALL_OUTCOME_FAILURE, not {given}"
    )))
}

/// A close's reason is told to the session's client: bounded like a
/// revoke's.
fn close_reason(reason: String) -> Result<String, Status> {
    if reason.len() > REVOKE_DETAIL_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "reason is {} bytes, the limit is {REVOKE_DETAIL_BYTES_MAX}",
            reason.len()
        )));
    }
    Ok(reason)
}

/// A request's breaker settings, as given (the core fills in defaults and
/// checks bounds).
pub(super) fn breaker_settings(s: pb::BreakerSettings) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: s.failure_threshold,
        open_timeout_ms: s.open_timeout_ms,
        half_open_max_probes: s.half_open_max_probes,
        success_threshold: s.success_threshold,
        window_calls: s.window_calls,
        failure_rate_percent: s.failure_rate_percent,
        min_calls: s.min_calls,
    }
}

/// The settings a bucket request names (0 = the existing bucket's).
fn bucket_settings(rate_per_s: u32, capacity: u32) -> BucketSettings {
    BucketSettings {
        rate_per_s,
        capacity,
    }
}

/// A request's token count: 0 means 1.
fn tokens(asked: u32) -> u32 {
    asked.max(1)
}

/// One bucket of a try-take (alone, or one of many).
fn bucket_ask(request: pb::TryTakeTokensRequest) -> BucketAsk {
    BucketAsk {
        name: request.name,
        settings: bucket_settings(request.rate_per_s, request.capacity),
        tokens: tokens(request.tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::super::convert::pb_rw_mode;
    use super::*;

    #[test]
    fn rw_mode_accepts_read_and_write_only() {
        assert_eq!(rw_mode(1).unwrap(), RwMode::Read);
        assert_eq!(rw_mode(2).unwrap(), RwMode::Write);
        for bad in [0, 3, -1] {
            let status = rw_mode(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        assert!(rw_mode(0)
            .unwrap_err()
            .message()
            .contains("RW_MODE_UNSPECIFIED"));
        assert!(rw_mode(7).unwrap_err().message().ends_with("not 7"));
        for mode in [RwMode::Read, RwMode::Write] {
            assert_eq!(rw_mode(pb_rw_mode(mode)).unwrap(), mode);
        }
    }

    #[test]
    fn call_outcome_accepts_success_and_failure_only() {
        assert!(!call_failed(1).unwrap());
        assert!(call_failed(2).unwrap());
        for bad in [0, 3, -1] {
            let status = call_failed(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        let unspecified = call_failed(0).unwrap_err();
        assert!(unspecified.message().contains("CALL_OUTCOME_UNSPECIFIED"));
        assert!(call_failed(9).unwrap_err().message().ends_with("not 9"));
    }

    #[test]
    fn a_list_kind_is_empty_or_known() {
        assert_eq!(list_kind("").unwrap(), None);
        assert_eq!(list_kind("ratelimit").unwrap(), Some(Kind::TokenBucket));
        let unknown = list_kind("mutex").unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        assert!(unknown.message().contains("known kinds: lock, semaphore"));
    }

    #[test]
    fn zero_tokens_mean_one() {
        let request = pb::TryTakeTokensRequest {
            name: "api".into(),
            rate_per_s: 5,
            capacity: 10,
            tokens: 0,
        };
        let asked = bucket_ask(request);
        assert_eq!(asked.tokens, 1);
        assert_eq!(asked.settings, bucket_settings(5, 10));
        assert_eq!(tokens(7), 7);
    }

    #[test]
    fn a_wait_is_bounded_by_the_call_deadline() {
        let context = Context {
            grpc_timeout: Some(Duration::from_secs(1)),
            ..Context::EMPTY
        };
        assert_eq!(context.timeout_ms(Some(5_000)), Some(1_000));
        assert_eq!(context.timeout_ms(None), Some(1_000));
        assert_eq!(Context::EMPTY.timeout_ms(None), None);
        assert_eq!(Context::EMPTY.timeout_ms(Some(0)), Some(0));
    }
}
