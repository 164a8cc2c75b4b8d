//! `syncd.v1.Barriers`: wait (a waiting stream), reset, describe, delete.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{wait_event, waiters, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, barriers_server::Barriers, wait_barrier_response::Event};

pub struct BarrierService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Barriers for BarrierService {
    type WaitStream = WaitResponse<pb::WaitBarrierResponse>;

    async fn wait(
        &self,
        request: Request<pb::WaitBarrierRequest>,
    ) -> Result<Response<Self::WaitStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn reset(
        &self,
        request: Request<pb::ResetBarrierRequest>,
    ) -> Result<Response<pb::ResetBarrierResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Admin, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Count(aborted) => Ok(Response::new(pb::ResetBarrierResponse { aborted })),
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeBarrierRequest>,
    ) -> Result<Response<pb::DescribeBarrierResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::BarrierDescription(info) => Ok(Response::new(pb::DescribeBarrierResponse {
                name: info.name,
                parties: info.parties,
                generation: info.generation,
                broken: info.broken,
                waiters: waiters(info.waiters),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteBarrierRequest>,
    ) -> Result<Response<pb::DeleteBarrierResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Admin, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Count(aborted) => Ok(Response::new(pb::DeleteBarrierResponse { aborted })),
            other => Err(unexpected(&other)),
        }
    }
}

impl WaitEvent for pb::WaitBarrierResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(Event::Queued(queued));
        pb::WaitBarrierResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let &Reply::BarrierPassed {
            arrival_index,
            generation,
        } = reply
        else {
            return None;
        };
        let passed = pb::Passed {
            arrival_index,
            generation,
        };
        let event = Some(Event::Passed(passed));
        Some(pb::WaitBarrierResponse { event })
    }
}
