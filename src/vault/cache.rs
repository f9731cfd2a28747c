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
        if self.per_shard == 0 {
            return;
        }
        let mut s = self.shard(subject);
        if s.map.insert(subject.to_owned(), dek).is_none() {
            s.order.push_back(subject.to_owned());
        }
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

/// Striped per-subject locks: writes to one subject (and the rewrap of its DEK, and its
/// erasure) run one at a time; different subjects run in parallel. parking_lot's, because an
/// async writer hands its lock to the audit committer, which releases it once the write is
/// applied ([`SubjectLocks::try_lock_owned`]); std's guards cannot change threads.
pub struct SubjectLocks {
    stripes: Vec<Arc<parking_lot::Mutex<()>>>,
}

/// A subject's lock that can move to another thread and outlive the borrow of the locks.
pub type OwnedSubjectLock = parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>;

impl SubjectLocks {
    pub fn new(n: usize) -> Self {
        Self { stripes: (0..n.max(1)).map(|_| Arc::new(parking_lot::Mutex::new(()))).collect() }
    }

    fn stripe(&self, subject: &str) -> usize {
        let mut h = DefaultHasher::new();
        subject.hash(&mut h);
        (h.finish() as usize) % self.stripes.len()
    }

    pub fn lock(&self, subject: &str) -> parking_lot::MutexGuard<'_, ()> {
        self.stripes[self.stripe(subject)].lock()
    }

    /// The subject's lock if no one holds it (async callers must not wait for a writer's fsync).
    pub fn try_lock(&self, subject: &str) -> Option<parking_lot::MutexGuard<'_, ()>> {
        self.stripes[self.stripe(subject)].try_lock()
    }

    /// [`SubjectLocks::lock`] as a guard that can be sent to another thread (a writer's lock
    /// goes with its batch to the audit committer).
    pub fn lock_owned(&self, subject: &str) -> OwnedSubjectLock {
        self.stripes[self.stripe(subject)].lock_arc()
    }

    /// [`SubjectLocks::try_lock`] as a guard that can be sent to another thread.
    pub fn try_lock_owned(&self, subject: &str) -> Option<OwnedSubjectLock> {
        self.stripes[self.stripe(subject)].try_lock_arc()
    }

    /// Locks every subject of a batch at once, in stripe order (so two batch lockers cannot
    /// deadlock; everyone else holds one stripe at a time).
    pub fn lock_many<'a>(&'a self, subjects: impl IntoIterator<Item = &'a str>) -> Vec<parking_lot::MutexGuard<'a, ()>> {
        let mut idx: Vec<usize> = subjects.into_iter().map(|s| self.stripe(s)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| self.stripes[i].lock()).collect()
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
