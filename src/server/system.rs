//! `syncd.v1.System`: Ping and List.

use tonic::{Request, Response, Status};

use super::status::unexpected;
use crate::core::{Command, Kind, Reply};
use crate::engine::EngineHandle;
use crate::proto::v1::{self as pb, system_server::System};

pub struct SystemService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl System for SystemService {
    async fn ping(
        &self,
        _: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        // Deliberately does not go through the engine: it is the floor that
        // benchmarks compare every other call with.
        Ok(Response::new(pb::PingResponse {
            server_time_ms: self.engine.now_ms(),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let request = request.into_inner();
        let kind = match request.kind.as_str() {
            "" => None,
            text => Some(Kind::parse(text).ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                Status::invalid_argument(format!(
                    "unknown kind {text:?}; known kinds: {}",
                    known.join(", ")
                ))
            })?),
        };
        let command = Command::List {
            kind,
            prefix: request.prefix,
        };
        match self.engine.call(command).await? {
            Reply::Listing(summaries) => Ok(Response::new(pb::ListResponse {
                primitives: summaries
                    .into_iter()
                    .map(|s| pb::PrimitiveSummary {
                        kind: s.kind.as_str().to_owned(),
                        name: s.name,
                        state: s.state,
                    })
                    .collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }
}
