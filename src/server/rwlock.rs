//! `syncd.v1.RwLocks`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{holder, pb_rw_mode, wait_event, waiter};
use super::status::unexpected;
use super::{open_wait, query, release, WaitResponse};
use crate::core::{rwlock::RwLockInfo, Reply};
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, rw_locks_server::RwLocks};

pub struct RwLockService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl RwLocks for RwLockService {
    type AcquireStream = WaitResponse<pb::AcquireRwLockResponse>;

    async fn acquire(
        &self,
        request: Request<pb::AcquireRwLockRequest>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRwLockRequest>,
    ) -> Result<Response<pb::ReleaseRwLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        release(&engine, request.into_inner()).await?;
        Ok(Response::new(pb::ReleaseRwLockResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRwLockRequest>,
    ) -> Result<Response<pb::DescribeRwLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::RwLockDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

fn describe_response(info: RwLockInfo) -> pb::DescribeRwLockResponse {
    pb::DescribeRwLockResponse {
        name: info.name,
        holders: (info.holders.into_iter())
            .map(|(h, mode)| pb::Holder {
                mode: pb_rw_mode(mode),
                ..holder(h)
            })
            .collect(),
        waiters: (info.waiters.into_iter())
            .map(|(w, mode)| pb::Waiter {
                mode: pb_rw_mode(mode),
                ..waiter(w)
            })
            .collect(),
    }
}
