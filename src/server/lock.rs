//! `syncd.v1.Locks`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::wait_event;
use super::status::unexpected;
use super::{open_wait, query, release, WaitResponse};
use crate::core::{lock::LockInfo, Reply};
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, locks_server::Locks};

pub struct LockService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Locks for LockService {
    type AcquireStream = WaitResponse<pb::AcquireLockResponse>;

    async fn acquire(
        &self,
        request: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        release(&engine, request.into_inner()).await?;
        Ok(Response::new(pb::ReleaseLockResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeLockRequest>,
    ) -> Result<Response<pb::DescribeLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::LockDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

fn describe_response(info: LockInfo) -> pb::DescribeLockResponse {
    pb::DescribeLockResponse {
        name: info.name,
        holder: info.holder.map(|h| pb::LockHolder {
            session_id: h.session_id,
            client_name: h.client_name,
            fencing_token: h.fencing_token,
            held_ms: h.held_ms,
            lease_left_ms: h.lease_left_ms,
            host: h.host,
            identity: h.identity,
        }),
        waiters: info
            .waiters
            .into_iter()
            .map(|w| pb::LockWaiter {
                session_id: w.session_id,
                client_name: w.client_name,
                waiting_ms: w.waiting_ms,
                host: w.host,
                identity: w.identity,
            })
            .collect(),
    }
}
