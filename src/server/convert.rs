//! Conversions of replies that several services share: the events of
//! waiting streams, holders and waiters for Describe, the read-write mode,
//! a pool resource's freshness, a circuit breaker's state and settings;
//! lost-hold notices. (Requests are mapped in `requests`.)

use tonic::Status;

use super::status::unexpected;
use crate::core::breaker::{BreakerSettings, BreakerState};
use crate::core::session::SessionInfo;
use crate::core::{pool::Freshness, HolderInfo, LossCause, LostHold, Reply, RwMode, WaiterInfo};
use crate::proto::v1 as pb;

/// A message of a waiting RPC's stream: `queued` while it waits, then one
/// final message.
pub(super) trait WaitEvent: Sized {
    fn queued(queued: pb::Queued) -> Self;
    /// The final message for `reply`; `None` for a reply of another shape.
    fn last(reply: &Reply) -> Option<Self>;
}

/// Maps the engine's events for a waiting RPC (the `map` of `open_wait`).
pub(super) fn wait_event<T: WaitEvent>(reply: Reply) -> Result<T, Status> {
    match reply {
        Reply::Queued { position } => Ok(T::queued(pb::Queued { position })),
        other => T::last(&other).ok_or_else(|| unexpected(&other)),
    }
}

/// The acquires (locks, semaphores, read-write locks): `queued`, then
/// `granted`.
macro_rules! acquire_events {
    ($($response:ident in $events:ident),* $(,)?) => {$(
        impl WaitEvent for pb::$response {
            fn queued(queued: pb::Queued) -> Self {
                let event = pb::$events::Event::Queued(queued);
                pb::$response { event: Some(event) }
            }

            fn last(reply: &Reply) -> Option<Self> {
                let &Reply::Granted { fencing_token } = reply else {
                    return None;
                };
                let event = pb::$events::Event::Granted(pb::Granted { fencing_token });
                Some(pb::$response { event: Some(event) })
            }
        }
    )*};
}

acquire_events!(
    AcquireLockResponse in acquire_lock_response,
    AcquireSemaphoreResponse in acquire_semaphore_response,
    AcquireRwLockResponse in acquire_rw_lock_response,
);

/// A hold for Describe; `permits` and `mode` are left for the primitives
/// that have them.
pub(super) fn holder(info: HolderInfo) -> pb::Holder {
    pb::Holder {
        session_id: info.session_id,
        client_name: info.client_name,
        fencing_token: info.fencing_token,
        held_ms: info.held_ms,
        lease_left_ms: info.lease_left_ms,
        permits: 0,
        mode: pb::RwMode::Unspecified.into(),
        host: info.host,
        identity: info.identity,
    }
}

/// A waiter for Describe; `permits` and `mode` are left for the primitives
/// that have them.
pub(super) fn waiter(info: WaiterInfo) -> pb::Waiter {
    pb::Waiter {
        session_id: info.session_id,
        client_name: info.client_name,
        waiting_ms: info.waiting_ms,
        permits: 0,
        mode: pb::RwMode::Unspecified.into(),
        host: info.host,
        identity: info.identity,
    }
}

/// The waiters of a primitive whose requests have nothing of their own.
pub(super) fn waiters(infos: Vec<WaiterInfo>) -> Vec<pb::Waiter> {
    infos.into_iter().map(waiter).collect()
}

/// A hold's or waiter's mode, for Describe.
pub(super) fn pb_rw_mode(mode: RwMode) -> i32 {
    match mode {
        RwMode::Read => pb::RwMode::Read.into(),
        RwMode::Write => pb::RwMode::Write.into(),
    }
}

/// A checked-out resource's freshness.
pub(super) fn pb_freshness(freshness: Freshness) -> pb::Freshness {
    match freshness {
        Freshness::Reused => pb::Freshness::Reused,
        Freshness::New => pb::Freshness::New,
        Freshness::ReplacedStale => pb::Freshness::ReplacedStale,
        Freshness::Recovered => pb::Freshness::Recovered,
    }
}

/// A breaker's state for a reply.
pub(super) fn pb_breaker_state(state: BreakerState) -> i32 {
    let state = match state {
        BreakerState::Closed => pb::BreakerState::Closed,
        BreakerState::Open => pb::BreakerState::Open,
        BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
        BreakerState::ForcedOpen => pb::BreakerState::ForcedOpen,
        BreakerState::ForcedClosed => pb::BreakerState::ForcedClosed,
    };
    state.into()
}

/// A breaker's settings for Describe.
pub(super) fn pb_breaker_settings(s: BreakerSettings) -> pb::BreakerSettings {
    pb::BreakerSettings {
        failure_threshold: s.failure_threshold,
        open_timeout_ms: s.open_timeout_ms,
        half_open_max_probes: s.half_open_max_probes,
        success_threshold: s.success_threshold,
        window_calls: s.window_calls,
        failure_rate_percent: s.failure_rate_percent,
        min_calls: s.min_calls,
    }
}

/// A session as `Sessions.List` shows it.
pub(super) fn session_info(info: SessionInfo) -> pb::SessionInfo {
    let holds = info
        .holds
        .into_iter()
        .map(|hold| pb::SessionHold {
            kind: hold.kind.as_str().to_owned(),
            name: hold.name,
            fencing_token: hold.fencing_token,
        })
        .collect();
    pb::SessionInfo {
        session_id: info.session_id,
        client_name: info.client_name,
        host: info.host,
        identity: info.identity,
        ttl_ms: info.ttl_ms,
        lease_left_ms: info.lease_left_ms,
        holds,
        waiting: info.waiting,
        lost_holds_unconfirmed: info.lost_holds_unconfirmed,
    }
}

/// A lost-hold notice as the keep-alive reply carries it.
pub(super) fn lost_hold(notice: LostHold) -> pb::LostHold {
    let reason = match notice.cause {
        LossCause::VisibilityExpired => pb::HoldLossReason::VisibilityExpired,
        LossCause::Revoked { .. } => pb::HoldLossReason::Revoked,
        LossCause::Deleted => pb::HoldLossReason::Deleted,
    };
    pb::LostHold {
        seq: notice.seq,
        fencing_token: notice.fencing_token,
        kind: notice.kind.as_str().to_owned(),
        name: notice.name,
        reason: reason as i32,
        detail: notice.cause.detail().to_owned(),
        lost_at_ms: notice.lost_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::super::requests::breaker_settings;
    use super::*;

    #[test]
    fn wait_events_map_queued_and_the_final_reply_and_refuse_other_shapes() {
        use pb::acquire_lock_response::Event;
        let queued: pb::AcquireLockResponse = wait_event(Reply::Queued { position: 3 }).unwrap();
        assert_eq!(
            queued.event,
            Some(Event::Queued(pb::Queued { position: 3 }))
        );
        let granted: pb::AcquireLockResponse =
            wait_event(Reply::Granted { fencing_token: 9 }).unwrap();
        let expected = Event::Granted(pb::Granted { fencing_token: 9 });
        assert_eq!(granted.event, Some(expected));
        let wrong = wait_event::<pb::AcquireLockResponse>(Reply::EventIsSet).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Internal);
    }

    #[test]
    fn freshness_maps_one_to_one() {
        let pairs = [
            (Freshness::Reused, "FRESHNESS_REUSED"),
            (Freshness::New, "FRESHNESS_NEW"),
            (Freshness::ReplacedStale, "FRESHNESS_REPLACED_STALE"),
            (Freshness::Recovered, "FRESHNESS_RECOVERED"),
        ];
        for (core, name) in pairs {
            assert_eq!(pb_freshness(core).as_str_name(), name);
        }
    }

    #[test]
    fn breaker_states_map_one_to_one() {
        let pairs = [
            (BreakerState::Closed, "BREAKER_STATE_CLOSED"),
            (BreakerState::Open, "BREAKER_STATE_OPEN"),
            (BreakerState::HalfOpen, "BREAKER_STATE_HALF_OPEN"),
            (BreakerState::ForcedOpen, "BREAKER_STATE_FORCED_OPEN"),
            (BreakerState::ForcedClosed, "BREAKER_STATE_FORCED_CLOSED"),
        ];
        for (core, name) in pairs {
            let state = pb::BreakerState::try_from(pb_breaker_state(core)).unwrap();
            assert_eq!(state.as_str_name(), name);
        }
    }

    #[test]
    fn breaker_settings_keep_every_field_both_ways() {
        let given = pb::BreakerSettings {
            failure_threshold: 1,
            open_timeout_ms: 2,
            half_open_max_probes: 3,
            success_threshold: 4,
            window_calls: 5,
            failure_rate_percent: 6,
            min_calls: 7,
        };
        let core = breaker_settings(given);
        assert_eq!(core.open_timeout_ms, 2);
        assert_eq!(core.min_calls, 7);
        assert_eq!(pb_breaker_settings(core), given);
    }
}
