//! The persisted form of pools: keys, records, and restore.
//!
//! - `pool/<name>` → `PoolRecord` (settings, evicted count);
//! - `pres/<name>` 0x00 `<resource id BE>` → `PoolResourceRecord`, one per
//!   resource, with its hold while it is checked out.

use std::collections::BTreeSet;

use prost::Message;

use super::super::holds::Hold;
use super::super::records::{self, Change, RestoreError};
use super::super::waitq::Waiter;
use super::super::{Kind, State};
use super::{CheckoutRequest, Freshness, Pool, Resource, Settings, Use};

use crate::proto::store as pb;

impl State {
    /// Takes a `pool/` or `pres/` record into a pool (checked in
    /// `finish_pool_restore`); false for any other key.
    pub(in crate::core) fn restore_pool_record(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<bool, RestoreError> {
        let utf8 =
            |name: &[u8]| String::from_utf8(name.to_vec()).map_err(|e| records::corrupt(key, e));
        if let Some(name) = key.strip_prefix(POOL_PREFIX) {
            let r: pb::PoolRecord = records::decode(key, value)?;
            if r.size == 0 {
                return Err(records::corrupt(key, "a pool of size 0"));
            }
            let pool = self.pools.entry(utf8(name)?).or_default();
            pool.settings = Settings {
                size: r.size,
                max_age_ms: r.max_age_ms,
                max_idle_ms: r.max_idle_ms,
            };
            pool.evicted = r.evicted;
            return Ok(true);
        }
        let Some(rest) = key.strip_prefix(RESOURCE_PREFIX) else {
            return Ok(false);
        };
        let Some((name, id)) = split_resource_key(rest) else {
            return Err(records::corrupt(key, "not <pool name> 0x00 <8-byte id>"));
        };
        let r: pb::PoolResourceRecord = records::decode(key, value)?;
        if r.id != id {
            return Err(records::corrupt(key, "resource id does not match its key"));
        }
        let usage = if r.fencing_token == 0 {
            Use::Idle {
                since_ms: r.idle_since_ms,
                recovered: r.recovered,
            }
        } else {
            let freshness = Freshness::from_code(r.freshness)
                .ok_or_else(|| records::corrupt(key, format!("freshness {}", r.freshness)))?;
            let hold = Hold {
                session_id: r.session_id,
                fencing_token: r.fencing_token,
                acquired_at_ms: r.acquired_at_ms,
                acquire_id: r.acquire_id,
            };
            Use::Out { hold, freshness }
        };
        let resource = Resource {
            created_at_ms: r.created_at_ms,
            metadata: r.metadata,
            usage,
        };
        let pool = self.pools.entry(utf8(name)?).or_default();
        pool.resources.insert(id, resource);
        Ok(true)
    }

    /// Checks the restored pools, indexes their holds and arms their
    /// alarms.
    pub(in crate::core) fn finish_pool_restore(&mut self) -> std::result::Result<(), RestoreError> {
        let names: Vec<String> = self.pools.keys().cloned().collect();
        let mut ids = BTreeSet::new();
        for name in names {
            let pool = &self.pools[&name];
            let fail = |why: String| Err(RestoreError(format!("pool {name:?} {why}")));
            if pool.settings.size == 0 {
                return fail("has resources but no pool record".to_owned());
            }
            if pool.resources.len() > pool.settings.size as usize {
                let (n, size) = (pool.resources.len(), pool.settings.size);
                return fail(format!("has {n} resources, more than its size {size}"));
            }
            let mut holds = Vec::new();
            for (id, r) in &pool.resources {
                if *id == 0 || *id > self.counters.last_object_id {
                    return fail(format!("has resource {id}, beyond the object counter"));
                }
                if !ids.insert(*id) {
                    return fail(format!("has resource {id}, which is stored twice"));
                }
                if let Use::Out { hold, .. } = &r.usage {
                    holds.push(hold.clone());
                }
            }
            if pool.is_unused() {
                // An empty pool record: nothing to keep.
                self.pools.remove(&name);
                continue;
            }
            for h in holds {
                let (session, token) = (h.session_id, h.fencing_token);
                self.restore_hold_ref(Kind::Pool, &name, session, token, h.acquire_id)?;
            }
            self.pool_rearm(&name);
        }
        Ok(())
    }
}

impl State {
    /// Adds a restored waiter to its stored pool (before
    /// `finish_pool_restore`, which checks the pool).
    pub(in crate::core) fn restore_pool_waiter(
        &mut self,
        name: &str,
        waiter: Waiter<CheckoutRequest>,
    ) -> std::result::Result<(), &'static str> {
        let pool = (self.pools.get_mut(name))
            .filter(|p| p.settings.size > 0)
            .ok_or("its pool is not stored")?;
        records::waiters::push(pool, waiter)
    }
}

const POOL_PREFIX: &[u8] = b"pool/";
const RESOURCE_PREFIX: &[u8] = b"pres/";

pub(super) fn pool_key(name: &str) -> Vec<u8> {
    [POOL_PREFIX, name.as_bytes()].concat()
}

pub(super) fn pool_put(name: &str, pool: &Pool) -> Change {
    let record = pb::PoolRecord {
        size: pool.settings.size,
        max_age_ms: pool.settings.max_age_ms,
        max_idle_ms: pool.settings.max_idle_ms,
        evicted: pool.evicted,
    };
    Change::Put {
        key: pool_key(name),
        value: record.encode_to_vec(),
    }
}

pub(super) fn pool_delete(name: &str) -> Change {
    Change::Delete {
        key: pool_key(name),
    }
}

/// `pres/<name>` 0x00 `<id BE>`: names have no control characters, so the
/// separator is unambiguous and a pool's resources sort together.
pub(super) fn resource_key(name: &str, id: u64) -> Vec<u8> {
    [RESOURCE_PREFIX, name.as_bytes(), &[0], &id.to_be_bytes()].concat()
}

pub(super) fn split_resource_key(rest: &[u8]) -> Option<(&[u8], u64)> {
    let split = rest.len().checked_sub(9)?;
    let (name, tail) = rest.split_at(split);
    let id = tail.strip_prefix(&[0])?.try_into().ok()?;
    Some((name, u64::from_be_bytes(id)))
}

pub(super) fn resource_put(name: &str, id: u64, resource: &Resource) -> Change {
    let mut record = pb::PoolResourceRecord {
        id,
        created_at_ms: resource.created_at_ms,
        metadata: resource.metadata.clone(),
        ..Default::default()
    };
    match &resource.usage {
        Use::Idle {
            since_ms,
            recovered,
        } => {
            record.idle_since_ms = *since_ms;
            record.recovered = *recovered;
        }
        Use::Out { hold, freshness } => {
            record.session_id = hold.session_id;
            record.fencing_token = hold.fencing_token;
            record.acquired_at_ms = hold.acquired_at_ms;
            record.acquire_id = hold.acquire_id;
            record.freshness = freshness.code();
        }
    }
    Change::Put {
        key: resource_key(name, id),
        value: record.encode_to_vec(),
    }
}

pub(super) fn resource_delete(name: &str, id: u64) -> Change {
    Change::Delete {
        key: resource_key(name, id),
    }
}
