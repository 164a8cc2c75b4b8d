//! `syncd.v1.Conditions`: wait (a waiting stream), notify, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{wait_event, waiters, WaitEvent};
use super::deadline::{effective_timeout_ms, grpc_timeout};
use super::status::unexpected;
use super::{open_wait, WaitResponse};
use crate::core::{Command, Query, Reply};
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
        let grpc = grpc_timeout(request.metadata());
        let request = request.into_inner();
        let timeout_ms = effective_timeout_ms(request.timeout_ms, grpc);
        let make = |waiter| Command::ConditionWait {
            session_id: request.session_id,
            name: request.name,
            lock: request.lock,
            fencing_token: request.fencing_token,
            waiter,
            timeout_ms,
        };
        open_wait(&engine, make, wait_event).await
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyConditionRequest>,
    ) -> Result<Response<pb::NotifyConditionResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        let request = request.into_inner();
        let command = Command::ConditionNotify {
            name: request.name,
            count: (!request.all).then_some(request.count),
        };
        match engine.call(command).await? {
            Reply::Count(woken) => Ok(Response::new(pb::NotifyConditionResponse { woken })),
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeConditionRequest>,
    ) -> Result<Response<pb::DescribeConditionResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        let name = request.into_inner().name;
        match engine.query(Query::ConditionDescribe { name }).await? {
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
