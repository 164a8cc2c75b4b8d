//! `syncd.v1.Semaphores`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{holder, wait_event, waiter};
use super::deadline::{effective_timeout_ms, grpc_timeout};
use super::status::unexpected;
use super::{open_wait, release, WaitResponse};
use crate::core::{semaphore::SemaphoreInfo, Command, Kind, Query, Reply};
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, semaphores_server::Semaphores};

pub struct SemaphoreService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Semaphores for SemaphoreService {
    type AcquireStream = WaitResponse<pb::AcquireSemaphoreResponse>;

    async fn acquire(
        &self,
        request: Request<pb::AcquireSemaphoreRequest>,
    ) -> Result<Response<Self::AcquireStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        let grpc = grpc_timeout(request.metadata());
        let request = request.into_inner();
        let timeout_ms = effective_timeout_ms(request.timeout_ms, grpc);
        let make = |waiter| Command::SemaphoreAcquire {
            session_id: request.session_id,
            name: request.name,
            waiter,
            timeout_ms,
            acquire_id: request.acquire_id,
            capacity: request.capacity,
            permits: request.permits,
        };
        open_wait(&engine, make, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseSemaphoreRequest>,
    ) -> Result<Response<pb::ReleaseSemaphoreResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        let request = request.into_inner();
        let (session_id, name, token) = (request.session_id, request.name, request.fencing_token);
        release(&engine, Kind::Semaphore, session_id, name, token).await?;
        Ok(Response::new(pb::ReleaseSemaphoreResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeSemaphoreRequest>,
    ) -> Result<Response<pb::DescribeSemaphoreResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        let name = request.into_inner().name;
        match engine.query(Query::SemaphoreDescribe { name }).await? {
            Reply::SemaphoreDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

fn describe_response(info: SemaphoreInfo) -> pb::DescribeSemaphoreResponse {
    pb::DescribeSemaphoreResponse {
        name: info.name,
        capacity: info.capacity,
        permits_held: info.permits_held,
        holders: (info.holders.into_iter())
            .map(|(h, permits)| pb::Holder {
                permits,
                ..holder(h)
            })
            .collect(),
        waiters: (info.waiters.into_iter())
            .map(|(w, permits)| pb::Waiter {
                permits,
                ..waiter(w)
            })
            .collect(),
    }
}
