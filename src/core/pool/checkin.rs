//! How resources come back: checkins, holds that end without one (session
//! end, undelivered grant), eviction by age or idleness on the engine's
//! timer, and waiting checkouts served as slots free up.

use super::super::holds::{forget_if, Queueing};
use super::super::{
    Alarm, Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, Summary,
};
use super::records::{pool_delete, pool_put, resource_delete, resource_put};
use super::{Pool, PoolInfo, ResourceInfo, Use};

impl State {
    pub(in crate::core) fn pool_checkin(
        &mut self,
        session_id: SessionId,
        name: String,
        fencing_token: FencingToken,
        healthy: bool,
        metadata: Option<Vec<u8>>,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Pool, &name)?;
        self.require_session(session_id)?;
        let limit = self.limits.item_bytes_max;
        if let Some(bytes) = metadata.as_ref().filter(|m| m.len() > limit) {
            return Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "checkin metadata is {} bytes, the limit is {limit} (item_bytes_max)",
                    bytes.len()
                ),
            ));
        }
        let id = self.pool_checked_out(session_id, &name, fencing_token)?;
        self.unregister_hold(fencing_token, out);
        let now_ms = self.now_ms;
        let pool = self.pools.get_mut(&name).expect("a held pool exists");
        let resource = pool.resources.get_mut(&id).expect("held");
        resource.usage = Use::Idle {
            since_ms: now_ms,
            recovered: false,
        };
        if let Some(metadata) = metadata {
            resource.metadata = metadata;
        }
        let evicted = !healthy || pool.is_stale(&pool.resources[&id], now_ms);
        if evicted {
            self.pool_evict(&name, id, out);
        } else {
            out.changes
                .push(resource_put(&name, id, &pool.resources[&id]));
        }
        self.refresh(Kind::Pool, &name, out);
        Ok(Reply::CheckedIn { evicted })
    }

    /// The resource `session_id` has checked out of `name` under `token`,
    /// or why not.
    fn pool_checked_out(&self, session_id: SessionId, name: &str, token: u64) -> Result<u64> {
        let what = format!("pool {name:?}");
        let pool = self.pools.get(name);
        let problem = match self.holds.get(&token) {
            Some(hold) if hold.kind != Kind::Pool || hold.name != name => {
                format!("token {token} is not a checkout of {what}")
            }
            Some(hold) if hold.session_id != session_id => format!(
                "{what} has token {token} checked out by session {}, not by session {session_id}",
                hold.session_id
            ),
            Some(_) => return Ok(pool.and_then(|p| p.holding(token)).expect("indexed")),
            None => {
                let mine: Vec<String> = (pool.map(Pool::held).unwrap_or_default().iter())
                    .filter(|(_, s)| *s == session_id)
                    .map(|(t, _)| t.to_string())
                    .collect();
                match mine.as_slice() {
                    [] => format!("{what} has nothing checked out by session {session_id}"),
                    held => format!(
                        "{what} has token {} checked out by this session, not {token}",
                        held.join(", ")
                    ),
                }
            }
        };
        Err(Rejection::new(Code::FailedPrecondition, problem))
    }

    /// Removes a resource as stale or unhealthy; its slot is free.
    fn pool_evict(&mut self, name: &str, id: u64, out: &mut Outcome) {
        let pool = self
            .pools
            .get_mut(name)
            .expect("evicting from an existing pool");
        if pool.resources.remove(&id).is_some() {
            pool.evicted += 1;
            out.changes.push(resource_delete(name, id));
            out.changes.push(pool_put(name, pool));
        }
    }

    /// The hold `token` is gone from the indexes without a checkin: the
    /// resource comes back RECOVERED (or is evicted if stale by now).
    pub(in crate::core) fn pool_drop_hold(
        &mut self,
        name: &str,
        token: FencingToken,
        out: &mut Outcome,
    ) {
        let now_ms = self.now_ms;
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let Some(id) = pool.holding(token) else {
            return;
        };
        let resource = pool.resources.get_mut(&id).expect("held");
        resource.usage = Use::Idle {
            since_ms: now_ms,
            recovered: true,
        };
        resource.metadata.clear();
        if pool.is_stale(&pool.resources[&id], now_ms) {
            self.pool_evict(name, id, out);
        } else {
            out.changes
                .push(resource_put(name, id, &pool.resources[&id]));
        }
    }

    /// Serves waiters from the head while a resource or a slot is free;
    /// re-arms the alarm; forgets the pool if nobody uses it.
    pub(in crate::core) fn pool_wake(&mut self, name: &str, out: &mut Outcome) {
        loop {
            let Some(pool) = self.pools.get_mut(name) else {
                return;
            };
            if pool.waiters.is_empty() || !pool.can_serve() {
                break;
            }
            let next = pool.waiters.pop_front().expect("not empty");
            self.unregister_waiter(next.id);
            let checkout = self.grant_pool(name, next.session_id, next.request.acquire_id, out);
            out.events.push((next.id, Ok(Reply::CheckedOut(checkout))));
        }
        self.pool_rearm(name);
        if self.pools.get(name).is_some_and(Pool::is_unused) {
            out.changes.push(pool_delete(name));
        }
        forget_if(&mut self.pools, name, Pool::is_unused);
    }

    /// The pool's alarm rang: evict every idle stale resource.
    pub(in crate::core) fn pool_alarm(&mut self, name: &str, out: &mut Outcome) {
        let now_ms = self.now_ms;
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        // `tick` took the alarm out of `State::alarms`.
        pool.alarm_ms = None;
        let stale: Vec<u64> = (pool.idle())
            .filter(|(_, r)| pool.is_stale(r, now_ms))
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            self.pool_evict(name, id, out);
        }
        self.pool_wake(name, out);
    }

    /// Keeps the pool's one alarm at its next eviction time.
    pub(super) fn pool_rearm(&mut self, name: &str) {
        let Some(pool) = self.pools.get_mut(name) else {
            return;
        };
        let next = pool.next_eviction_ms();
        let armed = std::mem::replace(&mut pool.alarm_ms, next);
        if armed != next {
            let alarm = || Alarm::Primitive(Kind::Pool, name.to_owned());
            if let Some(at) = armed {
                self.clear_alarm(at, alarm());
            }
            if let Some(at) = next {
                self.set_alarm(at, alarm());
            }
        }
    }

    pub(in crate::core) fn pool_describe(&self, now_ms: u64, name: &str) -> Result<Reply> {
        self.validate_name(Kind::Pool, name)?;
        let mut info = PoolInfo {
            name: name.to_owned(),
            size: 0,
            max_age_ms: 0,
            max_idle_ms: 0,
            resources: Vec::new(),
            waiters: Vec::new(),
            evicted: 0,
        };
        if let Some(pool) = self.pools.get(name) {
            info.size = pool.settings.size;
            info.max_age_ms = pool.settings.max_age_ms;
            info.max_idle_ms = pool.settings.max_idle_ms;
            info.evicted = pool.evicted;
            info.waiters = self.waiter_infos(now_ms, Some(pool));
            info.resources = (pool.resources.iter())
                .map(|(id, r)| {
                    let (holder, idle_ms) = match &r.usage {
                        Use::Out { hold, .. } => (Some(self.holder_info(now_ms, hold)), 0),
                        Use::Idle { since_ms, .. } => (None, now_ms.saturating_sub(*since_ms)),
                    };
                    ResourceInfo {
                        resource_id: *id,
                        holder,
                        age_ms: now_ms.saturating_sub(r.created_at_ms),
                        idle_ms,
                    }
                })
                .collect();
        }
        Ok(Reply::PoolDescription(info))
    }

    pub(in crate::core) fn pool_summaries(&self, prefix: &str) -> Vec<Summary> {
        super::super::named(&self.pools, prefix)
            .map(|(name, pool)| {
                let idle = pool.idle().count();
                Summary {
                    kind: Kind::Pool,
                    name: name.clone(),
                    state: format!(
                        "{} of {} slots out, {idle} idle, {} waiting",
                        pool.resources.len() - idle,
                        pool.settings.size,
                        pool.waiters.len()
                    ),
                }
            })
            .collect()
    }
}
