//! `syncd.v1.RateLimits`: take (a waiting stream), try-take of one bucket or
//! of several at once, describe, delete.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Caller, Role};

use super::convert::{wait_event, waiter, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::token_bucket::{BucketInfo, BucketVerdict};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, rate_limits_server::RateLimits, take_tokens_response::Event};

pub struct RateLimitService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl RateLimits for RateLimitService {
    type TakeStream = WaitResponse<pb::TakeTokensResponse>;

    async fn take(
        &self,
        request: Request<pb::TakeTokensRequest>,
    ) -> Result<Response<Self::TakeStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn try_take(
        &self,
        request: Request<pb::TryTakeTokensRequest>,
    ) -> Result<Response<pb::TryTakeTokensResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::TryTaken {
                taken,
                retry_after_ms,
                remaining,
            } => Ok(Response::new(pb::TryTakeTokensResponse {
                taken,
                retry_after_ms,
                remaining,
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRateLimitRequest>,
    ) -> Result<Response<pb::DeleteRateLimitResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Admin, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Deleted { waiters_ended, .. } => {
                Ok(Response::new(pb::DeleteRateLimitResponse { waiters_ended }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn try_take_many(
        &self,
        request: Request<pb::TryTakeManyRequest>,
    ) -> Result<Response<pb::TryTakeManyResponse>, Status> {
        let caller = Caller::of(&request)?;
        for bucket in &request.get_ref().buckets {
            caller.may(Role::Use, &bucket.name)?;
        }
        let engine = caller.engine(&self.engine);
        match call(&engine, request.into_inner()).await? {
            Reply::TriedMany { taken, verdicts } => {
                Ok(Response::new(try_take_many_response(taken, &verdicts)))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRateLimitRequest>,
    ) -> Result<Response<pb::DescribeRateLimitResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::BucketDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

/// One bucket's part of the answer: `taken` says whether it alone had
/// enough.
fn bucket_response(verdict: &BucketVerdict) -> pb::TryTakeTokensResponse {
    pb::TryTakeTokensResponse {
        taken: verdict.enough,
        retry_after_ms: verdict.retry_after_ms,
        remaining: verdict.remaining,
    }
}

/// The top-level wait is the longest of the buckets that had too few (0
/// when taken).
fn try_take_many_response(taken: bool, verdicts: &[BucketVerdict]) -> pb::TryTakeManyResponse {
    let retry_after_ms = (verdicts.iter())
        .filter(|v| !v.enough)
        .map(|v| v.retry_after_ms)
        .max()
        .unwrap_or(0);
    pb::TryTakeManyResponse {
        taken,
        retry_after_ms: if taken { 0 } else { retry_after_ms },
        buckets: verdicts.iter().map(bucket_response).collect(),
    }
}

fn describe_response(info: BucketInfo) -> pb::DescribeRateLimitResponse {
    pb::DescribeRateLimitResponse {
        name: info.name,
        rate_per_s: info.rate_per_s,
        capacity: info.capacity,
        tokens: info.tokens,
        waiters: (info.waiters.into_iter())
            .map(|(w, permits)| pb::Waiter {
                permits,
                ..waiter(w)
            })
            .collect(),
    }
}

impl WaitEvent for pb::TakeTokensResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(Event::Queued(queued));
        pb::TakeTokensResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let &Reply::TryTaken {
            taken: true,
            remaining,
            ..
        } = reply
        else {
            return None;
        };
        let event = Some(Event::Taken(pb::TokensTaken { remaining }));
        Some(pb::TakeTokensResponse { event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(enough: bool, retry_after_ms: u64, remaining: u32) -> BucketVerdict {
        BucketVerdict {
            enough,
            retry_after_ms,
            remaining,
        }
    }

    #[test]
    fn a_refused_batch_waits_for_the_slowest_bucket_that_lacked_tokens() {
        let verdicts = [
            verdict(true, 0, 4),
            verdict(false, 250, 0),
            verdict(false, 900, 1),
        ];
        let out = try_take_many_response(false, &verdicts);
        assert!(!out.taken);
        assert_eq!(out.retry_after_ms, 900);
        let per_bucket: Vec<(bool, u64, u32)> = (out.buckets.iter())
            .map(|b| (b.taken, b.retry_after_ms, b.remaining))
            .collect();
        assert_eq!(per_bucket, [(true, 0, 4), (false, 250, 0), (false, 900, 1)]);

        let all = try_take_many_response(true, &[verdict(true, 0, 3), verdict(true, 0, 0)]);
        assert!(all.taken);
        assert_eq!(all.retry_after_ms, 0);
    }

    #[test]
    fn only_a_take_ends_the_stream() {
        let taken: pb::TakeTokensResponse = wait_event(Reply::TryTaken {
            taken: true,
            retry_after_ms: 0,
            remaining: 6,
        })
        .unwrap();
        let expected = Event::Taken(pb::TokensTaken { remaining: 6 });
        assert_eq!(taken.event, Some(expected));
        let queued: pb::TakeTokensResponse = wait_event(Reply::Queued { position: 2 }).unwrap();
        assert_eq!(
            queued.event,
            Some(Event::Queued(pb::Queued { position: 2 }))
        );
        let refused = Reply::TryTaken {
            taken: false,
            retry_after_ms: 10,
            remaining: 0,
        };
        let wrong = wait_event::<pb::TakeTokensResponse>(refused).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Internal);
    }
}
