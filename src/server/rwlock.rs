//! `syncd.v1.RwLocks`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{holder, pb_rw_mode, rw_mode, wait_event, waiter};
use super::deadline::{effective_timeout_ms, grpc_timeout};
use super::status::unexpected;
use super::{open_wait, release, WaitResponse};
use crate::core::{rwlock::RwLockInfo, Command, Kind, Query, Reply};
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
        let grpc = grpc_timeout(request.metadata());
        let request = request.into_inner();
        let mode = rw_mode(request.mode)?;
        let timeout_ms = effective_timeout_ms(request.timeout_ms, grpc);
        let make = |waiter| Command::RwLockAcquire {
            session_id: request.session_id,
            name: request.name,
            waiter,
            timeout_ms,
            acquire_id: request.acquire_id,
            mode,
        };
        open_wait(&engine, make, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRwLockRequest>,
    ) -> Result<Response<pb::ReleaseRwLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        let request = request.into_inner();
        let (session_id, name, token) = (request.session_id, request.name, request.fencing_token);
        release(&engine, Kind::RwLock, session_id, name, token).await?;
        Ok(Response::new(pb::ReleaseRwLockResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeRwLockRequest>,
    ) -> Result<Response<pb::DescribeRwLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        let name = request.into_inner().name;
        match engine.query(Query::RwLockDescribe { name }).await? {
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
