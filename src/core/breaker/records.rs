//! A breaker's record, `breaker/<name>`; its permits are hold records
//! (`hold/<token>`, kind "breaker", with the era they were given in).

use std::collections::BTreeMap;

use prost::Message;

use super::super::holds::Hold;
use super::super::records::{self, Change, RestoreError};
use super::super::waitq::WaitQueue;
use super::super::State;
use super::{alarm, Breaker, BreakerSettings, BreakerState, Permit};
use crate::proto::store as pb;

const BREAKER_PREFIX: &[u8] = b"breaker/";
const STATES: [BreakerState; 5] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
    BreakerState::ForcedOpen,
    BreakerState::ForcedClosed,
];

fn breaker_key(name: &str) -> Vec<u8> {
    [BREAKER_PREFIX, name.as_bytes()].concat()
}

pub(super) fn breaker_put(name: &str, b: &Breaker) -> Change {
    let s = b.settings;
    let record = pb::BreakerRecord {
        failure_threshold: s.failure_threshold,
        open_timeout_ms: s.open_timeout_ms,
        half_open_max_probes: s.half_open_max_probes,
        success_threshold: s.success_threshold,
        window_calls: s.window_calls,
        failure_rate_percent: s.failure_rate_percent,
        min_calls: s.min_calls,
        state: STATES.iter().position(|x| *x == b.state).expect("listed") as u32,
        reason: b.reason.clone(),
        era: b.era,
        consecutive_failures: b.consecutive_failures,
        window: b.window.iter().map(|failed| u8::from(*failed)).collect(),
        half_open_successes: b.half_open_successes,
        open_until_ms: b.open_until_ms,
    };
    Change::Put {
        key: breaker_key(name),
        value: record.encode_to_vec(),
    }
}

pub(super) fn breaker_delete(name: &str) -> Change {
    Change::Delete {
        key: breaker_key(name),
    }
}

impl State {
    /// Takes a `breaker/` record; false for any other key. Its permits come
    /// later, with the other holds (`breaker_restore_permit`).
    pub(in crate::core) fn restore_breaker_record(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<bool, RestoreError> {
        let Some(name) = key.strip_prefix(BREAKER_PREFIX) else {
            return Ok(false);
        };
        let name = String::from_utf8(name.to_vec()).map_err(|e| records::corrupt(key, e))?;
        let r: pb::BreakerRecord = records::decode(key, value)?;
        let settings = BreakerSettings {
            failure_threshold: r.failure_threshold,
            open_timeout_ms: r.open_timeout_ms,
            half_open_max_probes: r.half_open_max_probes,
            success_threshold: r.success_threshold,
            window_calls: r.window_calls,
            failure_rate_percent: r.failure_rate_percent,
            min_calls: r.min_calls,
        };
        let state = STATES.get(r.state as usize).copied();
        let fits = settings.normalized() == Ok(settings)
            && r.window.len() <= settings.window_calls as usize
            && r.window.iter().all(|b| *b <= 1);
        let (Some(state), true) = (state, fits) else {
            return Err(records::corrupt(
                key,
                "settings, state or window out of range",
            ));
        };
        let breaker = Breaker {
            settings,
            state,
            reason: r.reason,
            era: r.era,
            consecutive_failures: r.consecutive_failures,
            window: r.window.iter().map(|b| *b == 1).collect(),
            half_open_successes: r.half_open_successes,
            probes_in_flight: 0,
            open_until_ms: r.open_until_ms,
            permits: BTreeMap::new(),
            watchers: WaitQueue::default(),
        };
        if state == BreakerState::Open {
            self.set_alarm(r.open_until_ms, alarm(&name));
        }
        self.breakers.insert(name, breaker);
        Ok(true)
    }

    /// Puts back a permit read from its hold record (already indexed).
    pub(in crate::core) fn breaker_restore_permit(
        &mut self,
        name: &str,
        hold: Hold,
        era: u64,
    ) -> std::result::Result<(), RestoreError> {
        let Some(breaker) = self.breakers.get_mut(name) else {
            return Err(RestoreError(format!(
                "a permit of breaker {name:?}, which is not stored"
            )));
        };
        if era > breaker.era {
            return Err(RestoreError(format!(
                "a permit of breaker {name:?} from a later state than the breaker's"
            )));
        }
        breaker.probes_in_flight += u32::from(breaker.is_probe(era));
        breaker
            .permits
            .insert(hold.fencing_token, Permit { hold, era });
        Ok(())
    }
}
