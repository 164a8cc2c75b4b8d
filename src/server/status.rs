//! The one place where the core's rejections become gRPC statuses.

use tonic::codegen::http::HeaderValue;
use tonic::{Code as GrpcCode, Status};

use crate::core::{Code, Rejection};
use crate::proto::{SESSION_CLOSED_KEY, SESSION_GONE_KEY};
use tonic::metadata::MetadataValue;

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Status {
        let code = match rejection.code {
            Code::InvalidArgument => GrpcCode::InvalidArgument,
            Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            Code::NotFound => GrpcCode::NotFound,
            Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Code::ResourceExhausted => GrpcCode::ResourceExhausted,
            Code::Unavailable => GrpcCode::Unavailable,
            Code::Aborted => GrpcCode::Aborted,
            Code::PermissionDenied => GrpcCode::PermissionDenied,
        };
        let mut status = Status::new(code, rejection.message);
        if let Some(session_id) = rejection.session_gone {
            status
                .metadata_mut()
                .insert(SESSION_GONE_KEY, session_id.into());
        }
        if let Some(reason) = rejection.session_closed {
            status.metadata_mut().insert_bin(
                SESSION_CLOSED_KEY,
                MetadataValue::from_bytes(reason.as_bytes()),
            );
        }
        status
    }
}

/// The HTTP response type of every service.
pub type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// tonic refuses an oversized request with OUT_OF_RANGE; gRPC's own
/// convention (and every other limit of syncd) says RESOURCE_EXHAUSTED, with
/// the limit's name first in the message. The refusal is a trailers-only
/// response, so its status is in the headers.
pub fn oversized_is_resource_exhausted(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    // The message is percent-encoded on the wire.
    let too_large = headers.get("grpc-message").is_some_and(|v| {
        let message = v.as_bytes();
        contains(message, b"too large") || contains(message, b"too%20large")
    });
    if out_of_range && too_large {
        let code = (GrpcCode::ResourceExhausted as i32).to_string();
        if let Ok(value) = code.parse() {
            headers.insert("grpc-status", value);
        }
        let named = headers.get("grpc-message").map(|original| {
            // Percent-encoded like the original: "%20" is a space.
            [b"message_bytes_max:%20".as_slice(), original.as_bytes()].concat()
        });
        if let Some(Ok(value)) = named.map(|bytes| HeaderValue::from_bytes(&bytes)) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A reply of the wrong shape: a bug in the server, never the client's fault.
pub fn unexpected(reply: &crate::core::Reply) -> Status {
    tracing::error!(?reply, "unexpected reply from the engine");
    Status::internal("unexpected reply from the engine")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_keeps_message() {
        let status = Status::from(Rejection::new(
            Code::NotFound,
            "barrier \"b\" does not exist",
        ));
        assert_eq!(status.code(), GrpcCode::NotFound);
        assert_eq!(status.message(), "barrier \"b\" does not exist");
        assert!(status.metadata().get(SESSION_GONE_KEY).is_none());
    }

    #[test]
    fn a_gone_session_is_marked_in_metadata() {
        let rejection = Rejection::session_gone(Code::NotFound, 4, "session 4 not found");
        let status = Status::from(rejection);
        assert_eq!(status.code(), GrpcCode::NotFound);
        assert_eq!(status.metadata().get(SESSION_GONE_KEY).unwrap(), "4");
    }

    #[test]
    fn oversized_requests_become_resource_exhausted_and_nothing_else_changes() {
        let too_large =
            Status::out_of_range("Error, decoded message length too large: found 9 bytes");
        let response = oversized_is_resource_exhausted(too_large.into_http());
        assert_eq!(response.headers()["grpc-status"], "8");

        let other = Status::out_of_range("index out of range");
        let response = oversized_is_resource_exhausted(other.into_http());
        assert_eq!(response.headers()["grpc-status"], "11");
    }
}
