//! `syncd.v1.CircuitBreakers`: allow and record (the call protocol), watch
//! (a stream of states), describe, and the operators' force-open,
//! force-close and reset.

use tonic::{Request, Response, Status};

use super::auth::{authorize, Role};

use super::convert::{holder, pb_breaker_settings, pb_breaker_state};
use super::status::unexpected;
use super::{call, open_watch, query, WaitResponse};
use crate::core::breaker::{BreakerAction, BreakerInfo, StateChange, Verdict};
use crate::core::Reply;
use crate::engine::EngineHandle;
use crate::proto::v1::{
    self as pb, allow_call_response::Verdict as PbVerdict, circuit_breakers_server::CircuitBreakers,
};

pub struct BreakerService {
    pub engine: EngineHandle,
}

#[tonic::async_trait]
impl CircuitBreakers for BreakerService {
    type WatchStream = WaitResponse<pb::WatchBreakerResponse>;

    async fn allow(
        &self,
        request: Request<pb::AllowCallRequest>,
    ) -> Result<Response<pb::AllowCallResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::BreakerVerdict(verdict) => Ok(Response::new(allow_response(verdict))),
            other => Err(unexpected(&other)),
        }
    }

    async fn record(
        &self,
        request: Request<pb::RecordCallRequest>,
    ) -> Result<Response<pb::RecordCallResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Use, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::BreakerRecorded { state, counted } => {
                let state = pb_breaker_state(state);
                Ok(Response::new(pb::RecordCallResponse { state, counted }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn watch(
        &self,
        request: Request<pb::WatchBreakerRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        open_watch(&engine, request, watch_event).await
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeBreakerRequest>,
    ) -> Result<Response<pb::DescribeBreakerResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Read, &request.get_ref().name)?;
        match query(&engine, request.into_inner()).await? {
            Reply::BreakerDescription(info) => Ok(Response::new(describe_response(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn force_open(
        &self,
        request: Request<pb::ControlBreakerRequest>,
    ) -> Result<Response<pb::ControlBreakerResponse>, Status> {
        self.control(request, BreakerAction::ForceOpen).await
    }

    async fn force_close(
        &self,
        request: Request<pb::ControlBreakerRequest>,
    ) -> Result<Response<pb::ControlBreakerResponse>, Status> {
        self.control(request, BreakerAction::ForceClose).await
    }

    async fn reset(
        &self,
        request: Request<pb::ControlBreakerRequest>,
    ) -> Result<Response<pb::ControlBreakerResponse>, Status> {
        self.control(request, BreakerAction::Reset).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteBreakerRequest>,
    ) -> Result<Response<pb::DeleteBreakerResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Admin, &request.get_ref().name)?;
        match call(&engine, request.into_inner()).await? {
            Reply::Deleted {
                waiters_ended,
                holds_dropped,
            } => Ok(Response::new(pb::DeleteBreakerResponse {
                permits_dropped: holds_dropped,
                watchers_ended: waiters_ended,
            })),
            other => Err(unexpected(&other)),
        }
    }
}

impl BreakerService {
    /// An operator's request: the breaker's state after it.
    async fn control(
        &self,
        request: Request<pb::ControlBreakerRequest>,
        action: BreakerAction,
    ) -> Result<Response<pb::ControlBreakerResponse>, Status> {
        let engine = authorize(&request, &self.engine, Role::Admin, &request.get_ref().name)?;
        match call(&engine, (action, request.into_inner())).await? {
            Reply::BreakerStateIs(state) => Ok(Response::new(pb::ControlBreakerResponse {
                state: pb_breaker_state(state),
            })),
            other => Err(unexpected(&other)),
        }
    }
}

fn allow_response(verdict: Verdict) -> pb::AllowCallResponse {
    let answer = match verdict.permit {
        Some((fencing_token, probe)) => PbVerdict::Permit(pb::CallPermit {
            fencing_token,
            probe,
        }),
        None => PbVerdict::Rejected(pb::CallRejected {
            retry_after_ms: verdict.retry_after_ms,
        }),
    };
    pb::AllowCallResponse {
        verdict: Some(answer),
        state: pb_breaker_state(verdict.state),
    }
}

/// Maps the engine's events for a watch: every one is a state.
fn watch_event(reply: Reply) -> Result<pb::WatchBreakerResponse, Status> {
    let Reply::BreakerChanged(change) = reply else {
        return Err(unexpected(&reply));
    };
    let StateChange {
        state,
        reason,
        retry_after_ms,
    } = change;
    Ok(pb::WatchBreakerResponse {
        state: pb_breaker_state(state),
        reason,
        retry_after_ms,
    })
}

/// A breaker that does not exist has `exists: false` and nothing else but
/// its name.
fn describe_response(info: BreakerInfo) -> pb::DescribeBreakerResponse {
    let Some(settings) = info.settings else {
        return pb::DescribeBreakerResponse {
            name: info.name,
            ..pb::DescribeBreakerResponse::default()
        };
    };
    pb::DescribeBreakerResponse {
        name: info.name,
        exists: true,
        settings: Some(pb_breaker_settings(settings)),
        state: pb_breaker_state(info.state),
        reason: info.reason,
        retry_after_ms: info.retry_after_ms,
        consecutive_failures: info.consecutive_failures,
        window_calls_seen: info.window_calls_seen,
        window_failures: info.window_failures,
        half_open_successes: info.half_open_successes,
        probes_in_flight: info.probes_in_flight,
        permits: info.permits.into_iter().map(holder).collect(),
        watchers: info.watchers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::breaker::{BreakerSettings, BreakerState};
    use crate::core::HolderInfo;

    #[test]
    fn a_verdict_is_a_permit_or_a_rejection_with_the_state() {
        let permit = allow_response(Verdict {
            permit: Some((42, true)),
            state: BreakerState::HalfOpen,
            retry_after_ms: 0,
        });
        let expected = PbVerdict::Permit(pb::CallPermit {
            fencing_token: 42,
            probe: true,
        });
        assert_eq!(permit.verdict, Some(expected));
        assert_eq!(permit.state(), pb::BreakerState::HalfOpen);

        let rejected = allow_response(Verdict {
            permit: None,
            state: BreakerState::Open,
            retry_after_ms: 1_500,
        });
        let expected = PbVerdict::Rejected(pb::CallRejected {
            retry_after_ms: 1_500,
        });
        assert_eq!(rejected.verdict, Some(expected));
        assert_eq!(rejected.state(), pb::BreakerState::Open);
    }

    #[test]
    fn watch_events_are_states_and_nothing_else() {
        let change = StateChange {
            state: BreakerState::Open,
            reason: "3 consecutive failures".into(),
            retry_after_ms: 300,
        };
        let event = watch_event(Reply::BreakerChanged(change)).unwrap();
        assert_eq!(event.state(), pb::BreakerState::Open);
        assert_eq!(event.reason, "3 consecutive failures");
        assert_eq!(event.retry_after_ms, 300);
        let wrong = watch_event(Reply::Done).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Internal);
    }

    #[test]
    fn describe_of_a_missing_breaker_is_empty_but_for_its_name() {
        let missing = describe_response(BreakerInfo {
            name: "db".into(),
            ..BreakerInfo::default()
        });
        let expected = pb::DescribeBreakerResponse {
            name: "db".into(),
            ..pb::DescribeBreakerResponse::default()
        };
        assert_eq!(missing, expected);
        assert_eq!(missing.state(), pb::BreakerState::Unspecified);
    }

    #[test]
    fn describe_shows_settings_counts_and_permits() {
        let settings = BreakerSettings {
            failure_threshold: 3,
            open_timeout_ms: 300,
            half_open_max_probes: 1,
            success_threshold: 1,
            ..BreakerSettings::default()
        };
        let permit = HolderInfo {
            session_id: 7,
            client_name: "w".into(),
            host: "127.0.0.1:9".into(),
            identity: "ci".into(),
            fencing_token: 12,
            held_ms: 5,
            lease_left_ms: 9_000,
        };
        let shown = describe_response(BreakerInfo {
            name: "db".into(),
            settings: Some(settings),
            state: BreakerState::Closed,
            reason: "new".into(),
            consecutive_failures: 2,
            permits: vec![permit],
            watchers: 1,
            ..BreakerInfo::default()
        });
        assert!(shown.exists);
        assert_eq!(shown.settings, Some(pb_breaker_settings(settings)));
        assert_eq!(shown.state(), pb::BreakerState::Closed);
        assert_eq!(
            (shown.reason.as_str(), shown.consecutive_failures),
            ("new", 2)
        );
        let permits: Vec<(u64, u64)> = (shown.permits.iter())
            .map(|p| (p.session_id, p.fencing_token))
            .collect();
        assert_eq!(permits, [(7, 12)]);
        assert_eq!(shown.watchers, 1);
    }
}
