//! The one place where the core's rejections become gRPC statuses.

use tonic::{Code as GrpcCode, Status};

use crate::core::{Code, Rejection};

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Status {
        let code = match rejection.code {
            Code::InvalidArgument => GrpcCode::InvalidArgument,
            Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            Code::NotFound => GrpcCode::NotFound,
            Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Code::ResourceExhausted => GrpcCode::ResourceExhausted,
            Code::Unavailable => GrpcCode::Unavailable,
        };
        Status::new(code, rejection.message)
    }
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
        let status = Status::from(Rejection::new(Code::NotFound, "session 4 not found"));
        assert_eq!(status.code(), GrpcCode::NotFound);
        assert_eq!(status.message(), "session 4 not found");
    }
}
