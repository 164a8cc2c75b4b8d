//! `syncd.v1.Pools`: checkout (a waiting stream), checkin, describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{pb_freshness, wait_event, waiters, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::pool::{Checkout, PoolInfo, ResourceInfo};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, checkout_response::Event, pools_server::Pools};

pub struct PoolService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Pools for PoolService {
    type CheckoutStream = WaitResponse<pb::CheckoutResponse>;

    async fn checkout(
        &self,
        request: Request<pb::CheckoutRequest>,
    ) -> Result<Response<Self::CheckoutStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn checkin(
        &self,
        request: Request<pb::CheckinRequest>,
    ) -> Result<Response<pb::CheckinResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::CheckedIn { evicted } => Ok(Response::new(pb::CheckinResponse { evicted })),
            other => Err(unexpected(&other)),
        }
    }

    async fn describe(
        &self,
        request: Request<pb::DescribePoolRequest>,
    ) -> Result<Response<pb::DescribePoolResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::PoolDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

fn describe_response(info: PoolInfo) -> pb::DescribePoolResponse {
    pb::DescribePoolResponse {
        name: info.name,
        size: info.size,
        max_age_ms: info.max_age_ms,
        max_idle_ms: info.max_idle_ms,
        resources: info.resources.into_iter().map(pool_resource).collect(),
        waiters: waiters(info.waiters),
        evicted: info.evicted,
    }
}

/// A resource for Describe: session and token are 0 while it is idle.
fn pool_resource(info: ResourceInfo) -> pb::PoolResource {
    let mut resource = pb::PoolResource {
        resource_id: info.resource_id,
        age_ms: info.age_ms,
        idle_ms: info.idle_ms,
        ..pb::PoolResource::default()
    };
    if let Some(holder) = info.holder {
        resource.session_id = holder.session_id;
        resource.fencing_token = holder.fencing_token;
        resource.client_name = holder.client_name;
        resource.host = holder.host;
        resource.identity = holder.identity;
        resource.held_ms = holder.held_ms;
        resource.lease_left_ms = holder.lease_left_ms;
    }
    resource
}

fn resource(checkout: &Checkout) -> pb::Resource {
    pb::Resource {
        resource_id: checkout.resource_id,
        fencing_token: checkout.fencing_token,
        freshness: pb_freshness(checkout.freshness).into(),
        metadata: checkout.metadata.clone(),
        age_ms: checkout.age_ms,
    }
}

impl WaitEvent for pb::CheckoutResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(Event::Queued(queued));
        pb::CheckoutResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let Reply::CheckedOut(checkout) = reply else {
            return None;
        };
        let event = Some(Event::Resource(resource(checkout)));
        Some(pb::CheckoutResponse { event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pool::Freshness;
    use crate::core::HolderInfo;

    #[test]
    fn a_checkout_becomes_a_resource() {
        let checkout = Checkout {
            resource_id: 5,
            fencing_token: 9,
            freshness: Freshness::Reused,
            metadata: b"conn".to_vec(),
            age_ms: 40,
        };
        let out: pb::CheckoutResponse = wait_event(Reply::CheckedOut(checkout)).unwrap();
        let expected = pb::Resource {
            resource_id: 5,
            fencing_token: 9,
            freshness: pb::Freshness::Reused.into(),
            metadata: b"conn".to_vec(),
            age_ms: 40,
        };
        assert_eq!(out.event, Some(Event::Resource(expected)));
        let wrong = wait_event::<pb::CheckoutResponse>(Reply::Done).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Internal);
    }

    #[test]
    fn an_idle_resource_has_no_session_or_token() {
        let idle = ResourceInfo {
            resource_id: 3,
            holder: None,
            age_ms: 10,
            idle_ms: 4,
        };
        let shown = pool_resource(idle);
        assert_eq!((shown.session_id, shown.fencing_token), (0, 0));
        assert_eq!((shown.resource_id, shown.age_ms, shown.idle_ms), (3, 10, 4));
        let out = ResourceInfo {
            resource_id: 3,
            holder: Some(HolderInfo {
                session_id: 2,
                client_name: "w".into(),
                host: "127.0.0.1:9".into(),
                identity: "ci".into(),
                fencing_token: 8,
                held_ms: 1,
                lease_left_ms: 100,
            }),
            age_ms: 10,
            idle_ms: 0,
        };
        let shown = pool_resource(out);
        assert_eq!((shown.session_id, shown.fencing_token), (2, 8));
        assert_eq!(shown.identity, "ci");
    }
}
