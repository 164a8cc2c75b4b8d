//! [`Step`] → protobuf. Strings and bytes are copied once, into the
//! messages prost encodes; nothing else is allocated per step.

use super::{EncodeError, Step};
use crate::core::breaker::{BreakerAction, BreakerSettings};
use crate::core::token_bucket::{BucketAsk, BucketSettings};
use crate::core::{Command, Kind, RwMode};
use crate::proto::log::{self as pb, command::Command as C};

pub(super) fn step(step: &Step) -> Result<pb::Step, EncodeError> {
    let identity = match &step.identity {
        None => String::new(),
        Some(identity) if identity.is_empty() => return Err(EncodeError::EmptyIdentity),
        Some(identity) => String::from(&**identity),
    };
    Ok(pb::Step {
        identity,
        command: Some(pb::Command {
            command: Some(command(&step.command)?),
        }),
    })
}

/// One arm per variant and no catch-all, so that a new command is encoded
/// before it compiles; most arms just copy fields.
fn command(command: &Command) -> Result<C, EncodeError> {
    Ok(match command {
        Command::CreateSession {
            ttl_ms,
            client_name,
            host,
            owner,
        } => C::CreateSession(pb::CreateSession {
            ttl_ms: *ttl_ms,
            client_name: client_name.clone(),
            host: host.clone(),
            owner: owner.clone(),
        }),
        Command::KeepAlive {
            session_id,
            notices_seen_through,
        } => C::KeepAlive(pb::KeepAlive {
            session_id: *session_id,
            notices_seen_through: *notices_seen_through,
        }),
        Command::Revoke {
            fencing_token,
            detail,
        } => C::Revoke(pb::Revoke {
            fencing_token: *fencing_token,
            detail: detail.clone(),
        }),
        Command::CloseSession { session_id, reason } => C::CloseSession(pb::CloseSession {
            session_id: *session_id,
            reason: reason.clone(),
        }),
        Command::LockAcquire {
            session_id,
            name,
            waiter,
            timeout_ms,
            acquire_id,
        } => C::LockAcquire(pb::LockAcquire {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            acquire_id: *acquire_id,
        }),
        Command::Release {
            kind,
            session_id,
            name,
            fencing_token,
        } => C::Release(pb::Release {
            kind: self::kind(*kind) as i32,
            session_id: *session_id,
            name: name.clone(),
            fencing_token: *fencing_token,
        }),
        Command::SemaphoreAcquire {
            session_id,
            name,
            waiter,
            timeout_ms,
            acquire_id,
            capacity,
            permits,
        } => C::SemaphoreAcquire(pb::SemaphoreAcquire {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            acquire_id: *acquire_id,
            capacity: *capacity,
            permits: *permits,
        }),
        Command::RwLockAcquire {
            session_id,
            name,
            waiter,
            timeout_ms,
            acquire_id,
            mode,
        } => C::RwLockAcquire(pb::RwLockAcquire {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            acquire_id: *acquire_id,
            mode: rw_mode(*mode) as i32,
        }),
        Command::EventSet { name } => C::EventSet(pb::EventSet { name: name.clone() }),
        Command::EventClear { name } => C::EventClear(pb::EventClear { name: name.clone() }),
        Command::EventWait {
            session_id,
            name,
            waiter,
            timeout_ms,
        } => C::EventWait(pb::EventWait {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
        }),
        Command::ConditionWait {
            session_id,
            name,
            lock,
            fencing_token,
            waiter,
            timeout_ms,
        } => C::ConditionWait(pb::ConditionWait {
            session_id: *session_id,
            name: name.clone(),
            lock: lock.clone(),
            fencing_token: *fencing_token,
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
        }),
        Command::ConditionNotify { name, count } => C::ConditionNotify(pb::ConditionNotify {
            name: name.clone(),
            count: *count,
        }),
        Command::BarrierWait {
            session_id,
            name,
            waiter,
            parties,
            timeout_ms,
        } => C::BarrierWait(pb::BarrierWait {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            parties: *parties,
            timeout_ms: *timeout_ms,
        }),
        Command::BarrierReset { name } => C::BarrierReset(pb::BarrierReset { name: name.clone() }),
        Command::BarrierDelete { name } => {
            C::BarrierDelete(pb::BarrierDelete { name: name.clone() })
        }
        Command::QueuePut {
            session_id,
            name,
            waiter,
            timeout_ms,
            value,
            priority,
            capacity,
            max_deliveries,
            put_id,
        } => C::QueuePut(pb::QueuePut {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            value: value.clone(),
            priority: *priority,
            capacity: *capacity,
            max_deliveries: *max_deliveries,
            put_id: *put_id,
        }),
        Command::QueueGet {
            session_id,
            name,
            waiter,
            timeout_ms,
            visibility_timeout_ms,
            no_ack,
        } => C::QueueGet(pb::QueueGet {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            visibility_timeout_ms: *visibility_timeout_ms,
            no_ack: *no_ack,
        }),
        Command::QueueAck {
            session_id,
            name,
            item_id,
        } => C::QueueAck(pb::QueueAck {
            session_id: *session_id,
            name: name.clone(),
            item_id: *item_id,
        }),
        Command::QueueNack {
            session_id,
            name,
            item_id,
        } => C::QueueNack(pb::QueueNack {
            session_id: *session_id,
            name: name.clone(),
            item_id: *item_id,
        }),
        Command::QueueJoin {
            session_id,
            name,
            waiter,
            timeout_ms,
        } => C::QueueJoin(pb::QueueJoin {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
        }),
        Command::PoolCheckout {
            session_id,
            name,
            waiter,
            timeout_ms,
            acquire_id,
            size,
            max_age_ms,
            max_idle_ms,
        } => C::PoolCheckout(pb::PoolCheckout {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            acquire_id: *acquire_id,
            size: *size,
            max_age_ms: *max_age_ms,
            max_idle_ms: *max_idle_ms,
        }),
        Command::PoolCheckin {
            session_id,
            name,
            fencing_token,
            healthy,
            metadata,
        } => C::PoolCheckin(pb::PoolCheckin {
            session_id: *session_id,
            name: name.clone(),
            fencing_token: *fencing_token,
            healthy: *healthy,
            metadata: metadata.clone(),
        }),
        Command::BucketTake {
            session_id,
            name,
            waiter,
            timeout_ms,
            settings,
            tokens,
        } => C::BucketTake(pb::BucketTake {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
            timeout_ms: *timeout_ms,
            settings: Some(bucket_settings(settings)),
            tokens: *tokens,
        }),
        Command::BucketTry {
            name,
            settings,
            tokens,
        } => C::BucketTry(pb::BucketTry {
            name: name.clone(),
            settings: Some(bucket_settings(settings)),
            tokens: *tokens,
        }),
        Command::BucketTryMany { asks } => C::BucketTryMany(pb::BucketTryMany {
            asks: asks.iter().map(bucket_ask).collect(),
        }),
        Command::BucketDelete { name } => C::BucketDelete(pb::BucketDelete { name: name.clone() }),
        Command::BreakerAllow {
            session_id,
            name,
            settings,
            acquire_id,
        } => C::BreakerAllow(pb::BreakerAllow {
            session_id: *session_id,
            name: name.clone(),
            settings: settings.as_ref().map(breaker_settings),
            acquire_id: *acquire_id,
        }),
        Command::BreakerRecord {
            session_id,
            name,
            fencing_token,
            failed,
        } => C::BreakerRecord(pb::BreakerRecord {
            session_id: *session_id,
            name: name.clone(),
            fencing_token: *fencing_token,
            failed: *failed,
        }),
        Command::BreakerWatch {
            session_id,
            name,
            waiter,
        } => C::BreakerWatch(pb::BreakerWatch {
            session_id: *session_id,
            name: name.clone(),
            waiter: waiter.0,
        }),
        Command::BreakerControl { name, action } => C::BreakerControl(pb::BreakerControl {
            name: name.clone(),
            action: breaker_action(*action) as i32,
        }),
        Command::BreakerDelete { name } => {
            C::BreakerDelete(pb::BreakerDelete { name: name.clone() })
        }
        Command::Cancel { waiter } => C::Cancel(pb::Cancel { waiter: waiter.0 }),
        Command::ReleaseUndelivered { fencing_token } => {
            C::ReleaseUndelivered(pb::ReleaseUndelivered {
                fencing_token: *fencing_token,
            })
        }
        Command::Resume => C::Resume(pb::Resume {}),
    })
}

fn kind(kind: Kind) -> pb::Kind {
    match kind {
        Kind::Lock => pb::Kind::Lock,
        Kind::Semaphore => pb::Kind::Semaphore,
        Kind::RwLock => pb::Kind::RwLock,
        Kind::Event => pb::Kind::Event,
        Kind::Condition => pb::Kind::Condition,
        Kind::Barrier => pb::Kind::Barrier,
        Kind::Queue => pb::Kind::Queue,
        Kind::Pool => pb::Kind::Pool,
        Kind::TokenBucket => pb::Kind::TokenBucket,
        Kind::Breaker => pb::Kind::Breaker,
    }
}

fn rw_mode(mode: RwMode) -> pb::RwMode {
    match mode {
        RwMode::Read => pb::RwMode::Read,
        RwMode::Write => pb::RwMode::Write,
    }
}

fn breaker_action(action: BreakerAction) -> pb::BreakerAction {
    match action {
        BreakerAction::ForceOpen => pb::BreakerAction::ForceOpen,
        BreakerAction::ForceClose => pb::BreakerAction::ForceClose,
        BreakerAction::Reset => pb::BreakerAction::Reset,
    }
}

fn bucket_settings(settings: &BucketSettings) -> pb::BucketSettings {
    pb::BucketSettings {
        rate_per_s: settings.rate_per_s,
        capacity: settings.capacity,
    }
}

fn bucket_ask(ask: &BucketAsk) -> pb::BucketAsk {
    pb::BucketAsk {
        name: ask.name.clone(),
        settings: Some(bucket_settings(&ask.settings)),
        tokens: ask.tokens,
    }
}

fn breaker_settings(settings: &BreakerSettings) -> pb::BreakerSettings {
    pb::BreakerSettings {
        failure_threshold: settings.failure_threshold,
        open_timeout_ms: settings.open_timeout_ms,
        half_open_max_probes: settings.half_open_max_probes,
        success_threshold: settings.success_threshold,
        window_calls: settings.window_calls,
        failure_rate_percent: settings.failure_rate_percent,
        min_calls: settings.min_calls,
    }
}
