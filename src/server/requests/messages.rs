//! The mapping of each request message, service by service (the order of
//! the proto files). Messages of the same shape share a macro.

use tonic::Status;

use super::{
    breaker_settings, bucket_ask, bucket_settings, call_failed, close_reason, list_kind, rw_mode,
    tokens, Context, ToCommand, ToQuery, ToWait,
};
use crate::core::breaker::BreakerAction;
use crate::core::{Command, Kind, Query, WaiterId};
use crate::proto::v1 as pb;

/// Describes: the message names the primitive, the query reads it.
macro_rules! describes {
    ($($request:ident => $query:ident),* $(,)?) => {$(
        impl ToQuery for pb::$request {
            fn to_query(self) -> Result<Query, Status> {
                Ok(Query::$query { name: self.name })
            }
        }
    )*};
}

describes!(
    DescribeLockRequest => LockDescribe,
    DescribeSemaphoreRequest => SemaphoreDescribe,
    DescribeRwLockRequest => RwLockDescribe,
    DescribeEventRequest => EventDescribe,
    DescribeConditionRequest => ConditionDescribe,
    DescribeBarrierRequest => BarrierDescribe,
    DescribeQueueRequest => QueueDescribe,
    DescribePoolRequest => PoolDescribe,
    DescribeRateLimitRequest => BucketDescribe,
    DescribeBreakerRequest => BreakerDescribe,
);

/// Commands that name a primitive and nothing else.
macro_rules! named_commands {
    ($($request:ident => $command:ident),* $(,)?) => {$(
        impl ToCommand for pb::$request {
            fn to_command(self, _: &Context) -> Result<Command, Status> {
                Ok(Command::$command { name: self.name })
            }
        }
    )*};
}

named_commands!(
    SetEventRequest => EventSet,
    ClearEventRequest => EventClear,
    ResetBarrierRequest => BarrierReset,
    DeleteBarrierRequest => BarrierDelete,
    DeleteRateLimitRequest => BucketDelete,
    DeleteBreakerRequest => BreakerDelete,
);

/// Releases of a lock, a semaphore or a read-write lock: one command.
macro_rules! releases {
    ($($request:ident => $kind:ident),* $(,)?) => {$(
        impl ToCommand for pb::$request {
            fn to_command(self, _: &Context) -> Result<Command, Status> {
                Ok(Command::Release {
                    kind: Kind::$kind,
                    session_id: self.session_id,
                    name: self.name,
                    fencing_token: self.fencing_token,
                })
            }
        }
    )*};
}

releases!(
    ReleaseLockRequest => Lock,
    ReleaseSemaphoreRequest => Semaphore,
    ReleaseRwLockRequest => RwLock,
);

// --- System ------------------------------------------------------------------

impl ToQuery for pb::ListRequest {
    fn to_query(self) -> Result<Query, Status> {
        Ok(Query::List {
            kind: list_kind(&self.kind)?,
            prefix: self.prefix,
        })
    }
}

// --- Sessions ----------------------------------------------------------------

impl ToCommand for pb::CreateSessionRequest {
    fn to_command(self, context: &Context) -> Result<Command, Status> {
        Ok(Command::CreateSession {
            ttl_ms: self.ttl_ms,
            client_name: self.client_name,
            host: context.host.clone(),
            owner: context.identity.clone(),
        })
    }
}

impl ToCommand for pb::KeepAliveRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::KeepAlive {
            session_id: self.session_id,
            notices_seen_through: self.notices_seen_through,
        })
    }
}

impl ToCommand for pb::CloseSessionRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::CloseSession {
            session_id: self.session_id,
            reason: close_reason(self.reason)?,
        })
    }
}

impl ToQuery for pb::ListSessionsRequest {
    fn to_query(self) -> Result<Query, Status> {
        Ok(Query::ListSessions {
            after_session_id: self.after_session_id,
            limit: self.limit,
        })
    }
}

impl ToCommand for pb::RevokeRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::Revoke {
            fencing_token: self.fencing_token,
            detail: self.reason,
        })
    }
}

// --- Locks, semaphores, read-write locks --------------------------------------

impl ToWait for pb::AcquireLockRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::LockAcquire {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            acquire_id: self.acquire_id,
        })
    }
}

impl ToWait for pb::AcquireSemaphoreRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::SemaphoreAcquire {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            acquire_id: self.acquire_id,
            capacity: self.capacity,
            permits: self.permits,
        })
    }
}

impl ToWait for pb::AcquireRwLockRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::RwLockAcquire {
            mode: rw_mode(self.mode)?,
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            acquire_id: self.acquire_id,
        })
    }
}

// --- Events, conditions, barriers ---------------------------------------------

impl ToWait for pb::WaitEventRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::EventWait {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
        })
    }
}

impl ToWait for pb::WaitConditionRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::ConditionWait {
            session_id: self.session_id,
            name: self.name,
            lock: self.lock,
            fencing_token: self.fencing_token,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
        })
    }
}

impl ToCommand for pb::NotifyConditionRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::ConditionNotify {
            name: self.name,
            // `all` wins over a count.
            count: (!self.all).then_some(self.count),
        })
    }
}

impl ToWait for pb::WaitBarrierRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::BarrierWait {
            session_id: self.session_id,
            name: self.name,
            waiter,
            parties: self.parties,
            timeout_ms: context.timeout_ms(self.timeout_ms),
        })
    }
}

// --- Queues ------------------------------------------------------------------

impl ToWait for pb::PutRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::QueuePut {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            value: self.value,
            priority: self.priority,
            capacity: self.capacity,
            max_deliveries: self.max_deliveries,
            put_id: self.put_id,
        })
    }
}

impl ToWait for pb::GetRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::QueueGet {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            visibility_timeout_ms: self.visibility_timeout_ms,
            no_ack: self.no_ack,
        })
    }
}

impl ToCommand for pb::AckRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::QueueAck {
            session_id: self.session_id,
            name: self.name,
            item_id: self.item_id,
        })
    }
}

impl ToCommand for pb::NackRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::QueueNack {
            session_id: self.session_id,
            name: self.name,
            item_id: self.item_id,
        })
    }
}

impl ToWait for pb::JoinRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::QueueJoin {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
        })
    }
}

// --- Pools -------------------------------------------------------------------

impl ToWait for pb::CheckoutRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::PoolCheckout {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            acquire_id: self.acquire_id,
            size: self.size,
            max_age_ms: self.max_age_ms,
            max_idle_ms: self.max_idle_ms,
        })
    }
}

impl ToCommand for pb::CheckinRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::PoolCheckin {
            session_id: self.session_id,
            name: self.name,
            fencing_token: self.fencing_token,
            healthy: self.healthy,
            metadata: self.metadata,
        })
    }
}

// --- Rate limits -------------------------------------------------------------

impl ToWait for pb::TakeTokensRequest {
    fn to_wait(self, context: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::BucketTake {
            session_id: self.session_id,
            name: self.name,
            waiter,
            timeout_ms: context.timeout_ms(self.timeout_ms),
            settings: bucket_settings(self.rate_per_s, self.capacity),
            tokens: tokens(self.tokens),
        })
    }
}

impl ToCommand for pb::TryTakeTokensRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        let ask = bucket_ask(self);
        Ok(Command::BucketTry {
            name: ask.name,
            settings: ask.settings,
            tokens: ask.tokens,
        })
    }
}

impl ToCommand for pb::TryTakeManyRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        let asks = self.buckets.into_iter().map(bucket_ask).collect();
        Ok(Command::BucketTryMany { asks })
    }
}

// --- Circuit breakers --------------------------------------------------------

impl ToCommand for pb::AllowCallRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::BreakerAllow {
            session_id: self.session_id,
            name: self.name,
            settings: self.settings.map(breaker_settings),
            acquire_id: self.acquire_id,
        })
    }
}

impl ToCommand for pb::RecordCallRequest {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        Ok(Command::BreakerRecord {
            failed: call_failed(self.outcome)?,
            session_id: self.session_id,
            name: self.name,
            fencing_token: self.fencing_token,
        })
    }
}

/// A watch has no timeout: it goes on until its caller leaves.
impl ToWait for pb::WatchBreakerRequest {
    fn to_wait(self, _: &Context, waiter: WaiterId) -> Result<Command, Status> {
        Ok(Command::BreakerWatch {
            session_id: self.session_id,
            name: self.name,
            waiter,
        })
    }
}

/// Force-open, force-close and reset share one message: the RPC names the
/// action.
impl ToCommand for (BreakerAction, pb::ControlBreakerRequest) {
    fn to_command(self, _: &Context) -> Result<Command, Status> {
        let (action, request) = self;
        Ok(Command::BreakerControl {
            name: request.name,
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn deadline(ms: u64) -> Context {
        Context {
            grpc_timeout: Some(Duration::from_millis(ms)),
            ..Context::EMPTY
        }
    }

    #[test]
    fn a_new_session_belongs_to_the_caller_where_it_connected_from() {
        let context = Context {
            host: "127.0.0.1:5000".into(),
            identity: "ci".into(),
            ..Context::EMPTY
        };
        let request = pb::CreateSessionRequest {
            ttl_ms: 10_000,
            client_name: "worker".into(),
        };
        let expected = Command::CreateSession {
            ttl_ms: 10_000,
            client_name: "worker".into(),
            host: "127.0.0.1:5000".into(),
            owner: "ci".into(),
        };
        assert_eq!(request.to_command(&context).unwrap(), expected);
    }

    #[test]
    fn waits_take_the_waiter_and_the_shorter_timeout() {
        let request = pb::AcquireLockRequest {
            session_id: 3,
            name: "db".into(),
            timeout_ms: Some(5_000),
            acquire_id: 9,
        };
        let expected = Command::LockAcquire {
            session_id: 3,
            name: "db".into(),
            waiter: WaiterId(7),
            timeout_ms: Some(250),
            acquire_id: 9,
        };
        let command = request.to_wait(&deadline(250), WaiterId(7)).unwrap();
        assert_eq!(command, expected);
        let forever = pb::WaitEventRequest {
            session_id: 3,
            name: "go".into(),
            timeout_ms: None,
        };
        let command = forever.to_wait(&Context::EMPTY, WaiterId(8)).unwrap();
        assert!(matches!(
            command,
            Command::EventWait {
                timeout_ms: None,
                ..
            }
        ));
        // A breaker's watch ignores the deadline: it has no timeout.
        let watch = pb::WatchBreakerRequest {
            session_id: 3,
            name: "db".into(),
        };
        let command = watch.to_wait(&deadline(250), WaiterId(9)).unwrap();
        assert!(matches!(
            command,
            Command::BreakerWatch {
                waiter: WaiterId(9),
                ..
            }
        ));
    }

    #[test]
    fn enums_that_name_nothing_are_refused_with_the_field() {
        let acquire = pb::AcquireRwLockRequest {
            name: "rw".into(),
            mode: 0,
            ..pb::AcquireRwLockRequest::default()
        };
        let refused = acquire.to_wait(&Context::EMPTY, WaiterId(1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("mode must be"), "{refused:?}");
        let record = pb::RecordCallRequest {
            outcome: 5,
            ..pb::RecordCallRequest::default()
        };
        let refused = record.to_command(&Context::EMPTY).unwrap_err();
        assert!(
            refused.message().starts_with("outcome must be"),
            "{refused:?}"
        );
        let list = pb::ListRequest {
            kind: "mutex".into(),
            prefix: String::new(),
        };
        let refused = list.to_query().unwrap_err();
        assert!(refused.message().starts_with("unknown kind"), "{refused:?}");
    }

    #[test]
    fn a_close_reason_is_bounded() {
        let close = |reason: String| pb::CloseSessionRequest {
            session_id: 4,
            reason,
        };
        let limit = crate::core::lost::REVOKE_DETAIL_BYTES_MAX;
        let kept = close("x".repeat(limit))
            .to_command(&Context::EMPTY)
            .unwrap();
        assert!(matches!(kept, Command::CloseSession { session_id: 4, .. }));
        let refused = close("x".repeat(limit + 1))
            .to_command(&Context::EMPTY)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            refused.message(),
            format!("reason is {} bytes, the limit is {limit}", limit + 1)
        );
    }

    #[test]
    fn notify_all_wins_over_a_count_and_tokens_default_to_one() {
        let notify = |count, all| pb::NotifyConditionRequest {
            name: "c".into(),
            count,
            all,
        };
        let counted = notify(2, false).to_command(&Context::EMPTY).unwrap();
        assert!(matches!(
            counted,
            Command::ConditionNotify { count: Some(2), .. }
        ));
        let all = notify(2, true).to_command(&Context::EMPTY).unwrap();
        assert!(matches!(all, Command::ConditionNotify { count: None, .. }));
        let take = pb::TakeTokensRequest {
            name: "api".into(),
            tokens: 0,
            ..pb::TakeTokensRequest::default()
        };
        let command = take.to_wait(&Context::EMPTY, WaiterId(1)).unwrap();
        assert!(matches!(command, Command::BucketTake { tokens: 1, .. }));
    }

    #[test]
    fn reads_become_queries() {
        let describe = pb::DescribeRateLimitRequest { name: "api".into() };
        let expected = Query::BucketDescribe { name: "api".into() };
        assert_eq!(describe.to_query().unwrap(), expected);
        let list = pb::ListRequest {
            kind: "lock".into(),
            prefix: "jobs/".into(),
        };
        let expected = Query::List {
            kind: Some(Kind::Lock),
            prefix: "jobs/".into(),
        };
        assert_eq!(list.to_query().unwrap(), expected);
        let release = pb::ReleaseRwLockRequest {
            session_id: 1,
            name: "rw".into(),
            fencing_token: 5,
        };
        let command = release.to_command(&Context::EMPTY).unwrap();
        assert!(matches!(
            command,
            Command::Release {
                kind: Kind::RwLock,
                ..
            }
        ));
    }
}
