//! Protobuf → [`Entry`]. Strings and bytes move out of the decoded
//! messages; anything this build does not know is a [`StepProblem`].

use std::sync::Arc;

use super::{DecodeError, Entry, Step, StepProblem};
use crate::core::breaker::{BreakerAction, BreakerSettings};
use crate::core::token_bucket::{BucketAsk, BucketSettings};
use crate::core::{Command, Kind, RwMode, WaiterId};
use crate::engine::Identity;
use crate::proto::log::{self as pb, command::Command as C};

type Result<T> = std::result::Result<T, StepProblem>;

pub(super) fn entry(message: pb::Entry) -> std::result::Result<Entry, DecodeError> {
    let mut steps = Vec::with_capacity(message.steps.len());
    // A batch is mostly one caller's, or a few callers': share their names.
    let mut last_identity: Option<Identity> = None;
    for (index, pb_step) in message.steps.into_iter().enumerate() {
        let identity = match pb_step.identity.as_str() {
            "" => None,
            name => match &last_identity {
                Some(last) if **last == *name => Some(last.clone()),
                _ => {
                    let identity: Identity = Arc::from(name);
                    last_identity = Some(identity.clone());
                    Some(identity)
                }
            },
        };
        let command = pb_step
            .command
            .and_then(|c| c.command)
            .ok_or(StepProblem::NoCommand)
            .and_then(command)
            .map_err(|problem| DecodeError::Step { index, problem })?;
        steps.push(Step { identity, command });
    }
    Ok(Entry {
        now_ms: message.now_ms,
        steps,
    })
}

/// The inverse of `to_proto::command`, arm for arm.
fn command(command: C) -> Result<Command> {
    Ok(match command {
        C::CreateSession(m) => Command::CreateSession {
            ttl_ms: m.ttl_ms,
            client_name: m.client_name,
            host: m.host,
            owner: m.owner,
        },
        C::KeepAlive(m) => Command::KeepAlive {
            session_id: m.session_id,
            notices_seen_through: m.notices_seen_through,
        },
        C::Revoke(m) => Command::Revoke {
            fencing_token: m.fencing_token,
            detail: m.detail,
        },
        C::CloseSession(m) => Command::CloseSession {
            session_id: m.session_id,
            reason: m.reason,
        },
        C::LockAcquire(m) => Command::LockAcquire {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            acquire_id: m.acquire_id,
        },
        C::Release(m) => Command::Release {
            kind: kind(m.kind)?,
            session_id: m.session_id,
            name: m.name,
            fencing_token: m.fencing_token,
        },
        C::SemaphoreAcquire(m) => Command::SemaphoreAcquire {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            acquire_id: m.acquire_id,
            capacity: m.capacity,
            permits: m.permits,
        },
        C::RwLockAcquire(m) => Command::RwLockAcquire {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            acquire_id: m.acquire_id,
            mode: rw_mode(m.mode)?,
        },
        C::EventSet(m) => Command::EventSet { name: m.name },
        C::EventClear(m) => Command::EventClear { name: m.name },
        C::EventWait(m) => Command::EventWait {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
        },
        C::ConditionWait(m) => Command::ConditionWait {
            session_id: m.session_id,
            name: m.name,
            lock: m.lock,
            fencing_token: m.fencing_token,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
        },
        C::ConditionNotify(m) => Command::ConditionNotify {
            name: m.name,
            count: m.count,
        },
        C::BarrierWait(m) => Command::BarrierWait {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            parties: m.parties,
            timeout_ms: m.timeout_ms,
        },
        C::BarrierReset(m) => Command::BarrierReset { name: m.name },
        C::BarrierDelete(m) => Command::BarrierDelete { name: m.name },
        C::QueuePut(m) => Command::QueuePut {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            value: m.value,
            priority: m.priority,
            capacity: m.capacity,
            max_deliveries: m.max_deliveries,
            put_id: m.put_id,
        },
        C::QueueGet(m) => Command::QueueGet {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            visibility_timeout_ms: m.visibility_timeout_ms,
            no_ack: m.no_ack,
        },
        C::QueueAck(m) => Command::QueueAck {
            session_id: m.session_id,
            name: m.name,
            item_id: m.item_id,
        },
        C::QueueNack(m) => Command::QueueNack {
            session_id: m.session_id,
            name: m.name,
            item_id: m.item_id,
        },
        C::QueueJoin(m) => Command::QueueJoin {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
        },
        C::PoolCheckout(m) => Command::PoolCheckout {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            acquire_id: m.acquire_id,
            size: m.size,
            max_age_ms: m.max_age_ms,
            max_idle_ms: m.max_idle_ms,
        },
        C::PoolCheckin(m) => Command::PoolCheckin {
            session_id: m.session_id,
            name: m.name,
            fencing_token: m.fencing_token,
            healthy: m.healthy,
            metadata: m.metadata,
        },
        C::BucketTake(m) => Command::BucketTake {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
            timeout_ms: m.timeout_ms,
            settings: bucket_settings(m.settings, "BucketTake.settings")?,
            tokens: m.tokens,
        },
        C::BucketTry(m) => Command::BucketTry {
            name: m.name,
            settings: bucket_settings(m.settings, "BucketTry.settings")?,
            tokens: m.tokens,
        },
        C::BucketTryMany(m) => Command::BucketTryMany {
            asks: m
                .asks
                .into_iter()
                .map(bucket_ask)
                .collect::<Result<Vec<_>>>()?,
        },
        C::BucketDelete(m) => Command::BucketDelete { name: m.name },
        C::BreakerAllow(m) => Command::BreakerAllow {
            session_id: m.session_id,
            name: m.name,
            settings: m.settings.map(breaker_settings),
            acquire_id: m.acquire_id,
        },
        C::BreakerRecord(m) => Command::BreakerRecord {
            session_id: m.session_id,
            name: m.name,
            fencing_token: m.fencing_token,
            failed: m.failed,
        },
        C::BreakerWatch(m) => Command::BreakerWatch {
            session_id: m.session_id,
            name: m.name,
            waiter: WaiterId(m.waiter),
        },
        C::BreakerControl(m) => Command::BreakerControl {
            name: m.name,
            action: breaker_action(m.action)?,
        },
        C::BreakerDelete(m) => Command::BreakerDelete { name: m.name },
        C::Cancel(m) => Command::Cancel {
            waiter: WaiterId(m.waiter),
        },
        C::ReleaseUndelivered(m) => Command::ReleaseUndelivered {
            fencing_token: m.fencing_token,
        },
        C::Resume(pb::Resume {}) => Command::Resume,
    })
}

fn kind(value: i32) -> Result<Kind> {
    let unknown = StepProblem::EnumValue {
        field: "Release.kind",
        value,
    };
    Ok(
        match pb::Kind::try_from(value).map_err(|_| unknown.clone())? {
            pb::Kind::Unspecified => return Err(unknown),
            pb::Kind::Lock => Kind::Lock,
            pb::Kind::Semaphore => Kind::Semaphore,
            pb::Kind::RwLock => Kind::RwLock,
            pb::Kind::Event => Kind::Event,
            pb::Kind::Condition => Kind::Condition,
            pb::Kind::Barrier => Kind::Barrier,
            pb::Kind::Queue => Kind::Queue,
            pb::Kind::Pool => Kind::Pool,
            pb::Kind::TokenBucket => Kind::TokenBucket,
            pb::Kind::Breaker => Kind::Breaker,
        },
    )
}

fn rw_mode(value: i32) -> Result<RwMode> {
    let unknown = StepProblem::EnumValue {
        field: "RwLockAcquire.mode",
        value,
    };
    Ok(
        match pb::RwMode::try_from(value).map_err(|_| unknown.clone())? {
            pb::RwMode::Unspecified => return Err(unknown),
            pb::RwMode::Read => RwMode::Read,
            pb::RwMode::Write => RwMode::Write,
        },
    )
}

fn breaker_action(value: i32) -> Result<BreakerAction> {
    let unknown = StepProblem::EnumValue {
        field: "BreakerControl.action",
        value,
    };
    Ok(
        match pb::BreakerAction::try_from(value).map_err(|_| unknown.clone())? {
            pb::BreakerAction::Unspecified => return Err(unknown),
            pb::BreakerAction::ForceOpen => BreakerAction::ForceOpen,
            pb::BreakerAction::ForceClose => BreakerAction::ForceClose,
            pb::BreakerAction::Reset => BreakerAction::Reset,
        },
    )
}

fn bucket_settings(
    settings: Option<pb::BucketSettings>,
    field: &'static str,
) -> Result<BucketSettings> {
    let settings = settings.ok_or(StepProblem::Missing(field))?;
    Ok(BucketSettings {
        rate_per_s: settings.rate_per_s,
        capacity: settings.capacity,
    })
}

fn bucket_ask(ask: pb::BucketAsk) -> Result<BucketAsk> {
    Ok(BucketAsk {
        name: ask.name,
        settings: bucket_settings(ask.settings, "BucketAsk.settings")?,
        tokens: ask.tokens,
    })
}

fn breaker_settings(settings: pb::BreakerSettings) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: settings.failure_threshold,
        open_timeout_ms: settings.open_timeout_ms,
        half_open_max_probes: settings.half_open_max_probes,
        success_threshold: settings.success_threshold,
        window_calls: settings.window_calls,
        failure_rate_percent: settings.failure_rate_percent,
        min_calls: settings.min_calls,
    }
}
