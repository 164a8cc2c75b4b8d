//! `syncd.v1.Events`: set, clear, wait (a waiting stream), describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{wait_event, waiters, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, events_server::Events, wait_event_response::Event};

pub struct EventService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Events for EventService {
    type WaitStream = WaitResponse<pb::WaitEventResponse>;

    async fn set(
        &self,
        request: Request<pb::SetEventRequest>,
    ) -> Result<Response<pb::SetEventResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Count(woken) => Ok(Response::new(pb::SetEventResponse { woken })),
            other => Err(unexpected(&other)),
        }
    }

    async fn clear(
        &self,
        request: Request<pb::ClearEventRequest>,
    ) -> Result<Response<pb::ClearEventResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Done => Ok(Response::new(pb::ClearEventResponse {})),
            other => Err(unexpected(&other)),
        }
    }

    async fn wait(
        &self,
        request: Request<pb::WaitEventRequest>,
    ) -> Result<Response<Self::WaitStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeEventRequest>,
    ) -> Result<Response<pb::DescribeEventResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::EventDescription(info) => Ok(Response::new(pb::DescribeEventResponse {
                name: info.name,
                is_set: info.is_set,
                set_ms: info.set_ms,
                waiters: waiters(info.waiters),
            })),
            other => Err(unexpected(&other)),
        }
    }
}

impl WaitEvent for pb::WaitEventResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(Event::Queued(queued));
        pb::WaitEventResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let Reply::EventIsSet = reply else {
            return None;
        };
        let event = Some(Event::Set(pb::EventIsSet {}));
        Some(pb::WaitEventResponse { event })
    }
}
