//! `syncd.v1.Queues`: put, get and join (waiting streams), ack, nack,
//! describe.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{wait_event, WaitEvent};
use super::status::unexpected;
use super::{call, open_wait, query, WaitResponse};
use crate::core::queue::{Delivery, QueueInfo};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{
    self as pb, get_response, join_response, put_response, queues_server::Queues,
};

pub struct QueueService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl Queues for QueueService {
    type PutStream = WaitResponse<pb::PutResponse>;
    type GetStream = WaitResponse<pb::GetResponse>;
    type JoinStream = WaitResponse<pb::JoinResponse>;

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<Self::PutStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Done => Ok(Response::new(pb::AckResponse {})),
            other => Err(unexpected(&other)),
        }
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Nacked { dead_lettered } => {
                Ok(Response::new(pb::NackResponse { dead_lettered }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        open_wait(&engine, request, wait_event).await
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeQueueRequest>,
    ) -> Result<Response<pb::DescribeQueueResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::QueueDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }
}

fn describe_response(info: QueueInfo) -> pb::DescribeQueueResponse {
    pb::DescribeQueueResponse {
        name: info.name,
        capacity: info.capacity,
        max_deliveries: info.max_deliveries,
        ready: info.ready,
        in_flight: info.in_flight,
        dead_lettered: info.dead_lettered,
        waiting_puts: info.waiting_puts,
        waiting_gets: info.waiting_gets,
        waiters: super::convert::waiters(info.waiters),
    }
}

/// A delivered item, with the fencing token of its delivery (ack and nack
/// name the item id).
fn item(delivery: &Delivery) -> pb::Item {
    pb::Item {
        id: delivery.id,
        value: delivery.value.clone(),
        priority: delivery.priority,
        deliveries: delivery.deliveries,
        fencing_token: delivery.fencing_token.unwrap_or(0),
    }
}

impl WaitEvent for pb::PutResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(put_response::Event::Queued(queued));
        pb::PutResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let &Reply::Stored { item_id } = reply else {
            return None;
        };
        let event = Some(put_response::Event::Stored(pb::Stored { item_id }));
        Some(pb::PutResponse { event })
    }
}

impl WaitEvent for pb::GetResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(get_response::Event::Queued(queued));
        pb::GetResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let Reply::Delivered(delivery) = reply else {
            return None;
        };
        let event = Some(get_response::Event::Item(item(delivery)));
        Some(pb::GetResponse { event })
    }
}

impl WaitEvent for pb::JoinResponse {
    fn queued(queued: pb::Queued) -> Self {
        let event = Some(join_response::Event::Queued(queued));
        pb::JoinResponse { event }
    }

    fn last(reply: &Reply) -> Option<Self> {
        let Reply::Joined = reply else {
            return None;
        };
        let event = Some(join_response::Event::Joined(pb::Joined {}));
        Some(pb::JoinResponse { event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_becomes_an_item_and_other_replies_are_refused() {
        let delivery = Delivery {
            id: 7,
            value: b"job".to_vec(),
            priority: 2,
            deliveries: 3,
            fencing_token: Some(11),
        };
        let got: pb::GetResponse = wait_event(Reply::Delivered(delivery)).unwrap();
        let expected = pb::Item {
            id: 7,
            value: b"job".to_vec(),
            priority: 2,
            deliveries: 3,
            fencing_token: 11,
        };
        assert_eq!(got.event, Some(get_response::Event::Item(expected)));
        let stored: pb::PutResponse = wait_event(Reply::Stored { item_id: 4 }).unwrap();
        let expected = put_response::Event::Stored(pb::Stored { item_id: 4 });
        assert_eq!(stored.event, Some(expected));
        let joined: pb::JoinResponse = wait_event(Reply::Joined).unwrap();
        let expected = join_response::Event::Joined(pb::Joined {});
        assert_eq!(joined.event, Some(expected));
        let wrong = wait_event::<pb::PutResponse>(Reply::Joined).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Internal);
    }
}
