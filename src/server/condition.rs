//! `syncd.v1.Conditions`: wait (a waiting stream), notify, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{wait_event, waiters, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, conditions_server::Conditions, wait_condition_response::Event};

pub struct ConditionService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Conditions for ConditionService {
    type WaitStream = WaitResponse<pb::WaitConditionResponse>;

    async fn wait(
        &self,
        request: Request<pb::WaitConditionRequest>,
    ) -> Result<Response<Self::WaitStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        // Waiting releases and re-acquires the lock: it is used too.
        authorize(&request, &self.engine, Role::Use, &request.get_ref().lock)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyConditionRequest>,
    ) -> Result<Response<pb::NotifyConditionResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Count(woken) => Ok(Response::new(pb::NotifyConditionResponse { woken })),
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeConditionRequest>,
    ) -> Result<Response<pb::DescribeConditionResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::ConditionDescription(info) => Ok(Response::new(pb::DescribeConditionResponse {
                name: info.name,
                lock: info.lock,
                waiters: waiters(info.waiters),
            })),
            other => Err(unexpected(&other)),
        }
    }
}

impl WaitEvent for pb::WaitConditionResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(Event::Queued(queued));
        pb::WaitConditionResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let &Reply::Reacquired {
            fencing_token,
            timed_out,
        } = reply
        else {
            return None;
        };
        let reacquired = pb::Reacquired {
            fencing_token,
            timed_out,
        };
        let event = Some(Event::Reacquired(reacquired));
        Some(pb::WaitConditionResponse { event })
    }
}
