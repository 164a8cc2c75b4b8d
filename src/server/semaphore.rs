//! `syncd.v1.Semaphores`: acquire (a waiting stream), release, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{holder, wait_event, waiter};
use super::status::unexpected;
use super::{open_wait, query, release, WaitResponse};
use crate::core::{semaphore::SemaphoreInfo, Reply};
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
        open_wait(&engine, request, wait_event).await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseSemaphoreRequest>,
    ) -> Result<Response<pb::ReleaseSemaphoreResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        release(&engine, request.into_inner()).await?;
        Ok(Response::new(pb::ReleaseSemaphoreResponse {}))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeSemaphoreRequest>,
    ) -> Result<Response<pb::DescribeSemaphoreResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
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
