//! `syncd.v1.Locks`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::wait_event;
use super::deadline::{effective_timeout_ms, grpc_timeout};
use super::status::unexpected;
use super::{open_wait, release, WaitResponse};
use crate::core::{lock::LockInfo, Command, Kind, Query, Reply};
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
        let grpc = grpc_timeout(request.metadata());
        let request = request.into_inner();
        let timeout_ms = effective_timeout_ms(request.timeout_ms, grpc);
        let make = |waiter| Command::LockAcquire {
            session_id: request.session_id,
            name: request.name,
            waiter,
            timeout_ms,
            acquire_id: request.acquire_id,
        };
        open_wait(&engine, make, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        let request = request.into_inner();
        let (session_id, name, token) = (request.session_id, request.name, request.fencing_token);
        release(&engine, Kind::Lock, session_id, name, token).await?;
        Ok(Response::new(pb::ReleaseLockResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeLockRequest>,
    ) -> Result<Response<pb::DescribeLockResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        let name = request.into_inner().name;
        match engine.query(Query::LockDescribe { name }).await? {
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
