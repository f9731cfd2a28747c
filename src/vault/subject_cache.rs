//! A bounded cache of what a read decides on and opens: a live subject's entry, the facts the
//! policy decides on and its sealed records — ciphertexts and the wrapped DEK only, never a
//! plaintext or an unwrapped key — so a hot subject's read costs no store lookups.
//!
//! Coherence does not depend on every write path remembering it: the store tells the cache
//! of every write once it is applied ([`WriteObserver`]), and the cache drops the subjects it
//! touched (read from the write's keys by [`crate::layout`]). A view read from the store while such a write lands is not kept: each shard counts
//! the writes it has been told of, a reader notes the count before it reads, and the view goes
//! in only if the count has not moved.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::codec::SubjectMeta;
pub use super::sealed::{SealedRecords, SealedRef};
use crate::policy::SubjectFacts;
use crate::store::{Op, Space, WriteObserver};

/// Each shard has an even share of the budget and evicts within it, so the shards' uneven
/// fill (hashing) wastes some of it: with 64 shards, 10,000 hot subjects put about 1.2 times
/// the average in the fullest, against 1.4 times with 256. Two cores or sixty-four, 64 locks
/// held for a map lookup do not contend.
const SHARDS: usize = 64;

/// A live subject as the read path needs it: everything it reads from the store.
#[derive(Debug)]
pub struct SubjectView {
    pub meta: SubjectMeta,
    pub facts: SubjectFacts,
    /// Every record of the subject, in key order.
    pub records: SealedRecords,
}

impl SubjectView {
    /// What the view holds in memory, its share of the cache's budget: the heap blocks of its
    /// records, entry and facts with the allocator's rounding, and the cache's own keys.
    fn bytes(&self, subject: &str) -> usize {
        use std::mem::size_of;
        // A heap block costs its length and, on average, this much rounding and bookkeeping.
        const BLOCK: usize = 16;
        let records = self.records.heap_bytes() + 2 * BLOCK;
        // A B-tree's nodes are at least half full: twice the entries' size covers them.
        let categories = self.meta.categories.keys().map(|c| 2 * size_of::<(String, u32)>() + c.len() + BLOCK).sum::<usize>();
        let facts = self
            .facts
            .contracts
            .iter()
            .map(|(c, _)| size_of::<(crate::domain::ContractId, crate::policy::ContractStatus)>() + c.as_str().len() + BLOCK)
            .sum::<usize>()
            + self.facts.consents.iter().map(|c| size_of::<crate::policy::ConsentFact>() + c.purpose.as_str().len() + BLOCK).sum::<usize>();
        // The view itself (in its `Arc`), the wrapped DEK, and the subject's name twice (the
        // map's key and the eviction order's) with the map's slot.
        let entry = size_of::<SubjectView>() + self.meta.wrapped_dek.0.len() + 2 * (size_of::<String>() + subject.len() + BLOCK) + 64;
        records + categories + facts + entry + 5 * BLOCK
    }
}

/// Where a reader stood before it read the store: [`SubjectCache::insert`] keeps its view
/// only if no write to the subject's shard came in between.
#[derive(Clone, Copy, Debug)]
pub struct Since {
    shard: usize,
    writes: u64,
}

struct Entry {
    view: Arc<SubjectView>,
    bytes: usize,
    /// Which of the subject's slots in the eviction order is this entry's.
    seq: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    /// Insertion order, for first-in first-out eviction. A slot whose entry has gone (dropped
    /// by a write, or replaced) stays until eviction or compaction skips it: a write drops a
    /// view in constant time, on the audit committer's thread.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    bytes: usize,
    /// Writes told of so far (see [`Since`]).
    writes: u64,
}

impl Shard {
    fn remove(&mut self, subject: &str) {
        if let Some(e) = self.map.remove(subject) {
            self.bytes -= e.bytes;
        }
    }

    fn holds(&self, seq: u64, subject: &str) -> bool {
        self.map.get(subject).is_some_and(|e| e.seq == seq)
    }

    /// Drops stale slots once they outnumber the live ones (amortised constant time).
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order.retain(|(seq, k)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// The cache, sized in bytes; 0 turns it off.
pub struct SubjectCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// Times every view was dropped at once (see [`SubjectCache::install`]).
    clears: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl std::fmt::Debug for SubjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectCache({} entries)", self.len())
    }
}

impl SubjectCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity_bytes / SHARDS,
            clears: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn index(subject: &[u8]) -> usize {
        let mut h = DefaultHasher::new();
        subject.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The subject's view, if cached: a read's lookup, counted as a hit or a miss.
    pub fn get(&self, subject: &str) -> Option<Arc<SubjectView>> {
        if self.per_shard == 0 {
            return None;
        }
        let found = self.peek(subject);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The subject's view, if cached, without counting a lookup (for writers, which hold the
    /// subject's lock: under it a view is what the store holds, as every write of the subject
    /// holds it too and drops the view once applied).
    pub fn peek(&self, subject: &str) -> Option<Arc<SubjectView>> {
        self.shard(Self::index(subject.as_bytes())).map.get(subject).map(|e| e.view.clone())
    }

    /// Notes where things stand, before reading the subject from the store.
    pub fn since(&self, subject: &str) -> Since {
        let shard = Self::index(subject.as_bytes());
        Since { shard, writes: self.shard(shard).writes }
    }

    /// Keeps `view` of `subject`, read from the store after `since`, unless a write to its
    /// shard came in since or the view is too large for its share of the budget.
    pub fn insert(&self, subject: &str, since: Since, view: Arc<SubjectView>) {
        let mut s = self.shard(since.shard);
        if s.writes != since.writes {
            return;
        }
        self.keep(&mut s, subject, view);
    }

    /// How many times every view has been dropped at once, for [`SubjectCache::install`].
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::SeqCst)
    }

    /// Keeps the view a writer built of the subject as its own write left it, once that write
    /// is applied and while the writer still holds the subject's lock (so no other read or
    /// write of the subject came between; the write itself dropped the old view). Refused if
    /// every view was dropped since the writer took [`SubjectCache::clears`] (a write wider
    /// than one subject may have touched this one too).
    pub fn install(&self, subject: &str, clears: u64, view: Arc<SubjectView>) {
        let mut s = self.shard(Self::index(subject.as_bytes()));
        if self.clears() != clears {
            return;
        }
        self.keep(&mut s, subject, view);
    }

    fn keep(&self, s: &mut Shard, subject: &str, view: Arc<SubjectView>) {
        let bytes = view.bytes(subject);
        // A view bigger than a quarter of its shard's budget would evict the rest for itself.
        if bytes > self.per_shard / 4 {
            return;
        }
        s.remove(subject);
        let seq = s.next_seq;
        s.next_seq += 1;
        s.map.insert(subject.to_owned(), Entry { view, bytes, seq });
        s.order.push_back((seq, subject.to_owned()));
        s.bytes += bytes;
        while s.bytes > self.per_shard {
            let Some((seq, old)) = s.order.pop_front() else { break };
            if s.holds(seq, &old) {
                s.remove(&old);
            }
        }
        s.compact_order();
    }

    /// Drops the subject's view (and refuses views of its shard read before now).
    pub fn forget(&self, subject: &[u8]) {
        let mut s = self.shard(Self::index(subject));
        s.writes += 1;
        if let Ok(subject) = std::str::from_utf8(subject) {
            s.remove(subject);
        }
    }

    /// Drops every view.
    pub fn clear(&self) {
        // Counted first: an install that checks after this sees it, one that checked before
        // has its view dropped below.
        self.clears.fetch_add(1, Ordering::SeqCst);
        for i in 0..SHARDS {
            let mut s = self.shard(i);
            s.writes += 1;
            s.map.clear();
            s.order.clear();
            s.bytes = 0;
        }
    }

    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).bytes).sum()
    }
}

impl WriteObserver for SubjectCache {
    fn written(&self, ops: &[Op]) {
        crate::layout::touched(ops, self);
    }
}

impl crate::layout::Touched for SubjectCache {
    fn subject_written(&self, space: Space, subject: &[u8]) {
        // What a read looks at; the audit index and disclosures do not change what it finds.
        if matches!(space, Space::Subjects | Space::Records | Space::Facts | Space::Erasures) {
            self.forget(subject);
        }
    }

    fn everything_written(&self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldName;
    use crate::layout::Touched;
    use crate::vault::codec::Record;
    use qoima_keys::{DekVersion, WrappedDek};

    fn view(fields: usize, value_len: usize) -> Arc<SubjectView> {
        let meta = SubjectMeta {
            version: 1,
            dek_version: DekVersion(1),
            wrapped_dek: WrappedDek(vec![0; 66]),
            seals: fields as u64,
            created_at: 0,
            updated_at: 0,
            categories: [("identity".to_owned(), fields as u32)].into(),
        };
        let mut records: Vec<(FieldName, Record)> = (0..fields)
            .map(|i| {
                let name = FieldName::parse(&format!("identity.f{i}")).unwrap();
                (name, Record { version: 1, written_at: 0, ciphertext: vec![7; value_len] })
            })
            .collect();
        // In key order, as the store's scan finds them.
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let records = SealedRecords::pack(records.iter().map(SealedRef::from)).unwrap();
        Arc::new(SubjectView { meta, facts: SubjectFacts::default(), records })
    }

    #[test]
    fn a_write_told_of_drops_the_view_and_refuses_one_read_before_it() {
        let views = SubjectCache::new(64 << 20);
        let since = views.since("a");
        views.insert("a", since, view(2, 10));
        assert!(views.get("a").is_some());
        // A write to the subject's entry drops its view...
        views.subject_written(Space::Subjects, b"a");
        assert!(views.get("a").is_none());
        // ...and a view read before that write is not kept, though read after the drop.
        views.insert("a", since, view(2, 10));
        assert!(views.get("a").is_none());
        let fresh = views.since("a");
        views.insert("a", fresh, view(2, 10));
        assert!(views.get("a").is_some());
        // Writes to what a read does not look at leave it.
        views.subject_written(Space::AuditIndex, b"a");
        views.subject_written(Space::Disclosures, b"a");
        assert!(views.get("a").is_some());
        for space in [Space::Records, Space::Facts, Space::Erasures] {
            views.insert("a", views.since("a"), view(2, 10));
            views.subject_written(space, b"a");
            assert!(views.get("a").is_none(), "a write to {} keeps the view", space.name());
        }
        views.insert("a", views.since("a"), view(2, 10));
        views.everything_written();
        assert!(views.is_empty());
        assert_eq!(views.bytes(), 0);
    }

    #[test]
    fn a_view_costs_little_more_than_its_ciphertexts() {
        // Twelve fields of about 85 bytes sealed (the load harness's 1 KiB subject): 1,452
        // bytes of ciphertext and 216 of names.
        let v = view(12, 121);
        let sealed: usize = v.records.iter().map(|r| r.field.as_str().len() + r.ciphertext.len()).sum();
        let bytes = v.bytes("subject-0001");
        assert!(bytes < sealed + 1024, "{bytes} bytes for {sealed} of names and ciphertexts");
        let r = v.records.get(5);
        assert_eq!((r.field.as_str(), r.field.category(), r.version, r.ciphertext), ("identity.f3", "identity", 1, &[7u8; 121][..]));
        assert!((0..12).all(|i| v.records.contains(&format!("identity.f{i}"))));
        assert!(!v.records.contains("identity.f12") && !v.records.contains("identity.f") && !v.records.contains("a.b"));
    }

    #[test]
    fn a_write_over_a_subjects_records_merges_by_name() {
        let pack = |rs: &[(&str, u64)]| {
            let names: Vec<FieldName> = rs.iter().map(|(n, _)| FieldName::parse(n).unwrap()).collect();
            let mut b = SealedRecords::builder(rs.len());
            for (f, (_, v)) in names.iter().zip(rs) {
                b.push(f.borrowed(), *v, &v.to_be_bytes());
            }
            b.build().unwrap()
        };
        let old = pack(&[("a.b", 1), ("a.d", 1), ("b.a", 1)]);
        let new = pack(&[("a.a", 2), ("a.d", 2), ("c.c", 2)]);
        let merged = old.merged(&new).unwrap();
        let got: Vec<(String, u64, Vec<u8>)> =
            merged.iter().map(|r| (r.field.as_str().to_owned(), r.version, r.ciphertext.to_vec())).collect();
        let want: Vec<(String, u64, Vec<u8>)> = [("a.a", 2u64), ("a.b", 1), ("a.d", 2), ("b.a", 1), ("c.c", 2)]
            .iter()
            .map(|(n, v)| (n.to_string(), *v, v.to_be_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(SealedRecords::default().merged(&new).unwrap().len(), 3);
        assert_eq!(old.merged(&SealedRecords::default()).unwrap().len(), 3);
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let budget = 2 << 20;
        let views = SubjectCache::new(budget);
        for i in 0..10_000 {
            let s = format!("s{i}");
            views.insert(&s, views.since(&s), view(3, 100));
        }
        assert!(views.bytes() <= budget, "{} bytes over a budget of {budget}", views.bytes());
        assert!(views.len() > 1_000, "evicted too much: {} left", views.len());
        // Too large for a shard's share: not kept at all.
        views.insert("big", views.since("big"), view(100, 1024));
        assert!(views.get("big").is_none());
        // Views dropped by writes and read again leave no pile of stale slots behind.
        let small = SubjectCache::new(64 << 20);
        for _ in 0..1_000 {
            small.insert("hot", small.since("hot"), view(3, 100));
            small.forget(b"hot");
        }
        small.insert("hot", small.since("hot"), view(3, 100));
        let slots: usize = (0..SHARDS).map(|i| small.shard(i).order.len()).sum();
        assert!(slots <= 2 + 16, "{slots} eviction slots for one view");
        assert!(small.get("hot").is_some());
        // Off.
        let off = SubjectCache::new(0);
        off.insert("a", off.since("a"), view(1, 1));
        assert!(off.get("a").is_none());
    }
}
