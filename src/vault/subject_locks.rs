//! Striped per-subject locks: a subject's writes, its DEK's rewrap and its erasure run one at a
//! time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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

    /// Locks every one of `names` at once, in stripe order (as [`SubjectLocks::lock_many`]), as
    /// guards that can go to another thread (a bulk import's locks, and a write's unique
    /// values, go with its batch to the audit committer).
    pub fn lock_many_owned<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<OwnedSubjectLock> {
        self.stripes_of(names).into_iter().map(|i| self.stripes[i].lock_arc()).collect()
    }

    /// [`SubjectLocks::lock_many_owned`] if no one holds any of them; none taken otherwise.
    pub fn try_lock_many_owned<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<Vec<OwnedSubjectLock>> {
        self.stripes_of(names).into_iter().map(|i| self.stripes[i].try_lock_arc()).collect()
    }

    /// The stripes of `names`, sorted, each once: the order every multi-lock taker follows.
    fn stripes_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let mut idx: Vec<usize> = names.into_iter().map(|s| self.stripe(s)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    /// Locks every subject of a batch at once, in stripe order (so two batch lockers cannot
    /// deadlock; everyone else holds one stripe at a time).
    pub fn lock_many<'a>(&'a self, subjects: impl IntoIterator<Item = &'a str>) -> Vec<parking_lot::MutexGuard<'a, ()>> {
        self.stripes_of(subjects).into_iter().map(|i| self.stripes[i].lock()).collect()
    }
}
