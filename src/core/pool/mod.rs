//! Resource pool: at most `size` resources, each idle or checked out under
//! one hold; stale resources are replaced at checkout and evicted by the
//! timer while idle.
//!
//! Policy:
//! - `size` (1 to `waiters_per_primitive_max`), `max_age_ms` and
//!   `max_idle_ms` (0 = never stale that way) are fixed by the checkout that
//!   creates the pool; a later checkout names the same values or 0.
//! - A checkout is served at once only if nobody waits and a resource is
//!   idle or a slot is free; otherwise it queues, strictly FIFO (a
//!   `timeout_ms` of 0 refuses instead). It takes, in this order: the
//!   healthy idle resource checked in last (the others stay idle and age
//!   out), as REUSED with its metadata; an idle resource whose last checkout
//!   ended without a checkin, recreated as RECOVERED; a stale idle resource,
//!   replaced as REPLACED_STALE (and counted as evicted); a new resource in
//!   a free slot, as NEW. Everything but REUSED gets a new resource id, a
//!   creation time of now and empty metadata: the client (re)creates it.
//! - Every checkout is a hold with its own fencing token. Only the holding
//!   session, naming that token, may check it in. Unhealthy, or stale by
//!   then: it is evicted and its slot freed. Otherwise it goes idle, with
//!   the new metadata if any. A hold that ends otherwise (its session ended,
//!   its grant was not delivered) leaves the resource idle and RECOVERED.
//! - A resource is stale from `created + max_age` or, while idle, from
//!   `idle_since + max_idle`, whichever is first. Idle stale resources are
//!   evicted by the pool's alarm at that time; a checked-out resource is
//!   never evicted while out, only looked at when it comes back.
//! - A retry naming the `acquire_id` of a checkout the session holds gets
//!   that checkout again.
//! - A pool exists while it has resources or waiters; the pool, each
//!   resource and each waiter have a record.
//!
//! Invariants:
//! - at most `size` resources, with distinct ids from the object counter;
//! - a resource is idle, or out under exactly one hold, indexed in
//!   `State::holds` and in its session;
//! - after `pool_wake`, a pool with waiters has no idle resource and no free
//!   slot (the head would have been served);
//! - `alarm_ms` is the earliest stale time of an idle resource, and is armed
//!   in `State::alarms` (none without such a resource); so after `tick(now)`
//!   no idle resource is stale at `now`;
//! - a pool with no resources and no waiters does not exist.

mod checkin;
mod records;

use std::collections::BTreeMap;

use self::records::{pool_put, resource_delete, resource_put};
use super::holds::{Hold, HolderInfo, Queueing, Table, WaiterInfo};
use super::waitq::WaitQueue;
use super::{
    Code, FencingToken, Kind, Outcome, Rejection, Reply, Result, SessionId, State, WaiterId,
};

/// What a checkout asks for besides the pool's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    pub acquire_id: u64,
    /// 0 = the existing pool's.
    pub size: u32,
    /// 0 = never stale by age.
    pub max_age_ms: u64,
    /// 0 = never stale by idleness.
    pub max_idle_ms: u64,
}

/// Whether the client must (re)create the real resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Used before and checked in healthy: the real resource exists.
    Reused,
    /// A new slot.
    New,
    /// The resource was stale and is replaced (a new id).
    ReplacedStale,
    /// Its last holder's session ended (or the grant was not delivered)
    /// without a checkin.
    Recovered,
}

impl Freshness {
    /// The number of `syncd.v1.Freshness`, as stored.
    fn code(self) -> u32 {
        match self {
            Freshness::Reused => 1,
            Freshness::New => 2,
            Freshness::ReplacedStale => 3,
            Freshness::Recovered => 4,
        }
    }

    fn from_code(code: u32) -> Option<Freshness> {
        [
            Self::Reused,
            Self::New,
            Self::ReplacedStale,
            Self::Recovered,
        ]
        .into_iter()
        .find(|f| f.code() == code)
    }
}

/// A checked-out resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub resource_id: u64,
    pub fencing_token: FencingToken,
    pub freshness: Freshness,
    pub metadata: Vec<u8>,
    pub age_ms: u64,
}

/// What `describe` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    /// 0 when the pool does not exist.
    pub size: u32,
    pub max_age_ms: u64,
    pub max_idle_ms: u64,
    pub resources: Vec<ResourceInfo>,
    pub waiters: Vec<WaiterInfo>,
    pub evicted: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub resource_id: u64,
    /// `None` while idle.
    pub holder: Option<HolderInfo>,
    pub age_ms: u64,
    /// 0 while checked out.
    pub idle_ms: u64,
}

/// The settings a pool is created with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Settings {
    size: u32,
    max_age_ms: u64,
    max_idle_ms: u64,
}

/// Where a resource is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Use {
    /// In the pool; `recovered` when its last checkout ended without a
    /// checkin.
    Idle { since_ms: u64, recovered: bool },
    /// Checked out, and what the checkout reported.
    Out { hold: Hold, freshness: Freshness },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Resource {
    created_at_ms: u64,
    metadata: Vec<u8>,
    usage: Use,
}

#[derive(Clone, Debug, Default)]
pub struct Pool {
    settings: Settings,
    evicted: u64,
    /// By resource id.
    resources: BTreeMap<u64, Resource>,
    /// Where the pool's alarm is armed.
    alarm_ms: Option<u64>,
    waiters: WaitQueue<CheckoutRequest>,
}

impl Queueing for Pool {
    type Request = CheckoutRequest;
    fn queue(&mut self) -> &mut WaitQueue<CheckoutRequest> {
        &mut self.waiters
    }
    fn waiting(&self) -> &WaitQueue<CheckoutRequest> {
        &self.waiters
    }
    fn held(&self) -> Vec<(FencingToken, SessionId)> {
        (self.resources.values())
            .filter_map(|r| match &r.usage {
                Use::Out { hold, .. } => Some((hold.fencing_token, hold.session_id)),
                Use::Idle { .. } => None,
            })
            .collect()
    }
}

impl Pool {
    fn is_unused(&self) -> bool {
        self.resources.is_empty() && self.waiters.is_empty()
    }

    fn idle(&self) -> impl Iterator<Item = (u64, &Resource)> + '_ {
        (self.resources.iter())
            .filter(|(_, r)| matches!(r.usage, Use::Idle { .. }))
            .map(|(id, r)| (*id, r))
    }

    /// A checkout could be served now.
    fn can_serve(&self) -> bool {
        self.idle().next().is_some() || self.resources.len() < self.settings.size as usize
    }

    /// When a resource turns stale, if ever.
    fn stale_at_ms(&self, resource: &Resource) -> Option<u64> {
        let Settings {
            max_age_ms,
            max_idle_ms,
            ..
        } = self.settings;
        let by_age = (max_age_ms > 0).then(|| resource.created_at_ms.saturating_add(max_age_ms));
        let by_idle = match resource.usage {
            Use::Idle { since_ms, .. } if max_idle_ms > 0 => {
                Some(since_ms.saturating_add(max_idle_ms))
            }
            _ => None,
        };
        by_age.into_iter().chain(by_idle).min()
    }

    fn is_stale(&self, resource: &Resource, now_ms: u64) -> bool {
        self.stale_at_ms(resource).is_some_and(|at| at <= now_ms)
    }

    /// The idle resource a checkout takes, and what it reports.
    fn pick_idle(&self, now_ms: u64) -> Option<(u64, Freshness)> {
        let rank = |id: u64, r: &Resource| {
            let Use::Idle {
                since_ms,
                recovered,
            } = r.usage
            else {
                unreachable!("only idle resources are ranked")
            };
            let freshness = if self.is_stale(r, now_ms) {
                Freshness::ReplacedStale
            } else if recovered {
                Freshness::Recovered
            } else {
                Freshness::Reused
            };
            let class = match freshness {
                Freshness::Reused => 2,
                Freshness::Recovered => 1,
                _ => 0,
            };
            ((class, since_ms, id), freshness)
        };
        let best = self
            .idle()
            .map(|(id, r)| rank(id, r))
            .max_by_key(|(k, _)| *k);
        best.map(|((_, _, id), freshness)| (id, freshness))
    }

    /// The earliest stale time of an idle resource.
    fn next_eviction_ms(&self) -> Option<u64> {
        self.idle().filter_map(|(_, r)| self.stale_at_ms(r)).min()
    }

    /// The resource checked out under `token`.
    fn holding(&self, token: FencingToken) -> Option<u64> {
        self.resources.iter().find_map(|(id, r)| match &r.usage {
            Use::Out { hold, .. } if hold.fencing_token == token => Some(*id),
            _ => None,
        })
    }

    fn checkout_of(&self, id: u64, now_ms: u64) -> Option<Checkout> {
        let resource = self.resources.get(&id)?;
        let Use::Out { hold, freshness } = &resource.usage else {
            return None;
        };
        Some(Checkout {
            resource_id: id,
            fencing_token: hold.fencing_token,
            freshness: *freshness,
            metadata: resource.metadata.clone(),
            age_ms: now_ms.saturating_sub(resource.created_at_ms),
        })
    }
}

impl State {
    pub(super) fn pool_checkout(
        &mut self,
        session_id: SessionId,
        name: String,
        waiter: WaiterId,
        timeout_ms: Option<u64>,
        request: CheckoutRequest,
        out: &mut Outcome,
    ) -> Result<Reply> {
        self.validate_name(Kind::Pool, &name)?;
        self.require_session(session_id)?;
        let settings = self.pool_settings(&name, &request)?;
        let (kind, acquire_id) = (Kind::Pool, request.acquire_id);
        if let Some(token) = self.retried_grant(session_id, kind, &name, acquire_id) {
            let pool = self.pools.get(&name).expect("a held pool exists");
            let id = pool.holding(token).expect("an indexed hold is in its pool");
            let checkout = pool.checkout_of(id, self.now_ms).expect("checked out");
            return Ok(Reply::CheckedOut(checkout));
        }
        let serve_now = match self.pools.get(&name) {
            Some(pool) => pool.waiters.is_empty() && pool.can_serve(),
            None => {
                let pool = Pool {
                    settings,
                    ..Pool::default()
                };
                out.changes.push(pool_put(&name, &pool));
                self.pools.insert(name.clone(), pool);
                true
            }
        };
        if serve_now {
            let checkout = self.grant_pool(&name, session_id, acquire_id, out);
            self.pool_rearm(&name);
            return Ok(Reply::CheckedOut(checkout));
        }
        if timeout_ms == Some(0) {
            let pool = &self.pools[&name];
            return Err(Rejection::new(
                Code::DeadlineExceeded,
                format!(
                    "pool {name:?} has all {} resources checked out and {} waiting",
                    pool.settings.size,
                    pool.waiters.len()
                ),
            ));
        }
        let table: Table<Pool> = |state| &mut state.pools;
        self.enqueue(table, kind, &name, waiter, session_id, timeout_ms, request)
    }

    /// The settings a checkout gets: the existing pool's, which it must
    /// agree with, or its own for a new pool.
    fn pool_settings(&self, name: &str, asked: &CheckoutRequest) -> Result<Settings> {
        let limit = self.limits.waiters_per_primitive_max;
        match self.pools.get(name) {
            Some(pool) => {
                let have = pool.settings;
                let agree = |asked: u64, have: u64| asked == 0 || asked == have;
                if agree(asked.size.into(), have.size.into())
                    && agree(asked.max_age_ms, have.max_age_ms)
                    && agree(asked.max_idle_ms, have.max_idle_ms)
                {
                    return Ok(have);
                }
                Err(Rejection::new(
                    Code::FailedPrecondition,
                    format!(
                        "pool {name:?} exists with size {}, max_age_ms {}, max_idle_ms {}, \
                         not size {}, max_age_ms {}, max_idle_ms {} (0 takes the existing value)",
                        have.size,
                        have.max_age_ms,
                        have.max_idle_ms,
                        asked.size,
                        asked.max_age_ms,
                        asked.max_idle_ms
                    ),
                ))
            }
            None if asked.size == 0 => Err(Rejection::new(
                Code::NotFound,
                format!("pool {name:?} does not exist; give a size to create it"),
            )),
            None if asked.size as usize > limit => Err(Rejection::new(
                Code::InvalidArgument,
                format!(
                    "pool size {} is above the limit of {limit} (waiters_per_primitive_max)",
                    asked.size
                ),
            )),
            None => Ok(Settings {
                size: asked.size,
                max_age_ms: asked.max_age_ms,
                max_idle_ms: asked.max_idle_ms,
            }),
        }
    }

    /// Checks a resource out of a pool that can serve a checkout.
    fn grant_pool(
        &mut self,
        name: &str,
        session_id: SessionId,
        acquire_id: u64,
        out: &mut Outcome,
    ) -> Checkout {
        let now_ms = self.now_ms;
        let hold = self.new_hold(session_id, Kind::Pool, name, acquire_id, out);
        let pool = self.pools.get(name).expect("granted on an existing pool");
        debug_assert!(pool.can_serve(), "pool {name:?} granted without room");
        let (old, freshness) = match pool.pick_idle(now_ms) {
            Some((id, freshness)) => (Some(id), freshness),
            None => (None, Freshness::New),
        };
        let usage = Use::Out { hold, freshness };
        let id = match old {
            Some(id) if freshness == Freshness::Reused => {
                let pool = self.pools.get_mut(name).expect("exists");
                pool.resources.get_mut(&id).expect("picked").usage = usage;
                id
            }
            _ => {
                let pool = self.pools.get_mut(name).expect("exists");
                if let Some(old) = old {
                    pool.resources.remove(&old);
                    out.changes.push(resource_delete(name, old));
                    if freshness == Freshness::ReplacedStale {
                        pool.evicted += 1;
                        out.changes.push(pool_put(name, pool));
                    }
                }
                let id = self.next_object_id(out);
                let fresh = Resource {
                    created_at_ms: now_ms,
                    metadata: Vec::new(),
                    usage,
                };
                let pool = self.pools.get_mut(name).expect("exists");
                pool.resources.insert(id, fresh);
                id
            }
        };
        let pool = self.pools.get_mut(name).expect("exists");
        out.changes
            .push(resource_put(name, id, &pool.resources[&id]));
        debug_assert!(pool.resources.len() <= pool.settings.size as usize);
        pool.checkout_of(id, now_ms).expect("checked out")
    }
}
