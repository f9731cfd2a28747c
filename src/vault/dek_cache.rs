//! A bounded cache of unwrapped DEKs, so a hot subject costs one unwrap, not one per read.
//! Entries zeroize when the last user drops them (the `Dek` owns a zeroizing box); erasure and
//! rekey purge a subject's entry at once.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qoima_keys::{Dek, DekVersion};

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    map: HashMap<String, Arc<Dek>>,
    order: VecDeque<String>,
}

/// The cache. Eviction is first-in first-out per shard: cheap and good enough for a working
/// set that fits; size it to the number of hot subjects.
pub struct DekCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl DekCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, subject: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        subject.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached DEK of `subject` if it is at `version`.
    pub fn get(&self, subject: &str, version: DekVersion) -> Option<Arc<Dek>> {
        let found = self.shard(subject).map.get(subject).filter(|d| d.version() == version).cloned();
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn insert(&self, subject: &str, dek: Arc<Dek>) {
        if self.per_shard > 0 {
            self.insert_owned(subject.to_owned(), dek)
        }
    }

    /// [`DekCache::insert`] of a name the caller already owns (a write's after-commit callback
    /// does): one allocation fewer per created subject.
    pub fn insert_owned(&self, subject: String, dek: Arc<Dek>) {
        if self.per_shard == 0 {
            return;
        }
        let mut s = self.shard(&subject);
        if !s.map.contains_key(&subject) {
            s.order.push_back(subject.clone());
        }
        s.map.insert(subject, dek);
        while s.map.len() > self.per_shard {
            match s.order.pop_front() {
                Some(old) => {
                    s.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Drops the subject's DEK from memory.
    pub fn purge(&self, subject: &str) {
        let mut s = self.shard(subject);
        if s.map.remove(subject).is_some() {
            s.order.retain(|k| k != subject);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_versioned_and_purged() {
        let c = DekCache::new(SHARDS); // one per shard
        for i in 0..1000 {
            c.insert(&format!("s{i}"), Arc::new(Dek::generate(DekVersion(1)).unwrap()));
        }
        assert!(c.len() <= SHARDS);
        c.insert("x", Arc::new(Dek::generate(DekVersion(2)).unwrap()));
        assert!(c.get("x", DekVersion(1)).is_none(), "a stale version is a miss");
        assert!(c.get("x", DekVersion(2)).is_some());
        c.purge("x");
        assert!(c.get("x", DekVersion(2)).is_none());
    }
}
