//! Storage behind an engine boundary. Everything above this module speaks in [`Space`]s, byte
//! keys and [`Batch`]es through [`Store`]; what an engine must do is the [`Engine`] trait, each
//! method with its contract. Engines:
//! - [`rocks`]: RocksDB, what the vault runs on; **the only file in `src/` that uses the
//!   RocksDB crate** (its tuning notes are in its module doc);
//! - [`memory`]: a `BTreeMap` per space behind one lock, for unit tests;
//!
//! and one conformance suite (`conformance.rs`) that every engine passes.
//!
//! [`Store`] is the facade the vault holds: it adds the typed conveniences (prefix scans,
//! counters, values decoded in place) over the engine's few methods, and tells the one
//! [`WriteObserver`] of every write, whatever the engine. The store knows no key layout
//! beyond "a space's keys may start with a NUL-terminated group" (an indexing hint): the
//! observer is handed the batch's ops and the vault reads its own keys (src/layout.rs). Nor
//! does it know what a merge means: the [`MergeRule`] is given at open.
//!
//! **Dispatch is dynamic** (`Arc<dyn Engine>`, visitors as `&mut dyn FnMut`): one `Store` type
//! for the vault, the audit, the cli and the benches, and no type parameter through them. The
//! hot path is a read (a few point gets and a prefix scan per request at ~100 µs), so a vtable
//! call per op does not show: callgrind (`benches/instructions.sh`, which counts instructions
//! and repeats) gave 1,793,349 and 1,791,836 instructions per create + fetch + cached fetch
//! before the boundary, 1,793,487 and 1,792,668 with it (at most +0.05 %, inside the 1,500
//! the same binary moved between runs; a dev build with the qoima crates optimised,
//! docs/performance.md), and the same allocations per request. A type parameter would buy
//! at most those few hundred instructions, well under a microsecond in ~100 µs per request,
//! and cost a `Store<E>` through the vault, the audit, the cli and the benches.

mod engine;
mod keys;
pub mod memory;
pub mod postgres;
pub mod rocks;

pub use postgres::Holder as LeaseHolder;

#[cfg(test)]
mod conformance;

pub use engine::{Engine, EngineStats, PurgeRange, SpaceStats, WriteState};
pub use keys::prefix_end;
pub use rocks::{BLOCK_CACHE, DESCRIPTOR_RESERVE, MAX_OPEN_FILES, MEMTABLE_BUDGET};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A kind of thing the vault stores: a keyspace of its own (RocksDB: a column family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// KEK generations (wrapped), counters, audit chain head, settings.
    Keyring,
    /// One entry per live subject: its wrapped DEK and versions.
    Subjects,
    /// Field ciphertexts, `subject\0field`.
    Records,
    /// Contracts and consents, `subject\0c\0id` and `subject\0k\0purpose`.
    Facts,
    /// Disclosures to third parties, `subject\0seq`.
    Disclosures,
    /// Erasure records, kept forever, `subject`.
    Erasures,
    /// The audit log, `seq` (u64 big-endian).
    Audit,
    /// Audit sequence numbers by subject, `subject\0seq`.
    AuditIndex,
    /// Retention deadlines, `expires_at\0subject\0field`.
    Expiry,
    /// Background jobs (rewrap progress).
    Jobs,
    /// Per-subject access summaries (`subject\0`), kept by the audit committer with merges
    /// (folded by the [`MergeRule`] the store was opened with).
    Access,
    /// Idempotency records of mutating requests (src/vault/idempotency.rs): by a digest of
    /// caller and key, with a subject index (for erasure) and a time index (for the sweep).
    Idempotency,
    /// Blind indexes of field values (src/vault/index.rs): by generation, field and index, and
    /// by subject (for its writes and its erasure).
    Index,
}

impl Space {
    pub const ALL: [Space; 13] = [
        Space::Keyring,
        Space::Subjects,
        Space::Records,
        Space::Facts,
        Space::Disclosures,
        Space::Erasures,
        Space::Audit,
        Space::AuditIndex,
        Space::Expiry,
        Space::Jobs,
        Space::Access,
        Space::Idempotency,
        Space::Index,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::Keyring => "keyring",
            Space::Subjects => "subjects",
            Space::Records => "records",
            Space::Facts => "facts",
            Space::Disclosures => "disclosures",
            Space::Erasures => "erasures",
            Space::Audit => "audit",
            Space::AuditIndex => "audit_index",
            Space::Expiry => "expiry",
            Space::Jobs => "jobs",
            Space::Access => "access",
            Space::Idempotency => "idempotency",
            Space::Index => "index",
        }
    }

    /// Keys of these spaces start with a NUL-terminated group (the vault's `subject\0`): an
    /// engine may index that prefix (RocksDB: a prefix extractor with bloom filters).
    pub fn grouped_keys(self) -> bool {
        matches!(self, Space::Records | Space::Facts | Space::Disclosures | Space::AuditIndex | Space::Access)
    }
}
/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One change inside a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
    /// Deletes `[from, to)`: one range tombstone, whatever the number of keys.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
    /// Adds to a signed 64-bit counter (a merge, so concurrent adds never race).
    Add(Space, Vec<u8>, i64),
    /// Merges an operand into a value with the store's [`MergeRule`] (the access summaries').
    Merge(Space, Vec<u8>, Vec<u8>),
}

/// A set of changes applied atomically by [`Store::write`], and the values it expects to find
/// ([`Batch::expect`]).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
    expects: Vec<Expect>,
}

/// A precondition of a [`Batch`]: `key` of `space` holds `value` (`None`: is absent) when the
/// batch is applied; otherwise nothing of it is ([`StoreError::Conflict`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub space: Space,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Batch {
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(space, key.into(), value.into()));
    }

    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(space, key.into()));
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(&mut self, space: Space, prefix: &[u8]) {
        self.ops.push(Op::DeleteRange(space, prefix.to_vec(), prefix_end(prefix)));
    }

    /// Deletes `[from, to)`.
    pub fn delete_range(&mut self, space: Space, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(space, from.into(), to.into()));
    }

    pub fn add(&mut self, space: Space, key: impl Into<Vec<u8>>, delta: i64) {
        self.ops.push(Op::Add(space, key.into(), delta));
    }

    /// Merges `operand` into `key` of `space` with the store's [`MergeRule`]; only
    /// [`Space::Access`] merges operands. No read on the write path.
    pub fn merge(&mut self, space: Space, key: impl Into<Vec<u8>>, operand: impl Into<Vec<u8>>) {
        debug_assert_eq!(space, Space::Access, "only the access space merges operands");
        self.ops.push(Op::Merge(space, key.into(), operand.into()));
    }

    /// Applies the batch only if `key` of `space` then holds `value` (`None`: is absent): a
    /// compare-and-set, atomic with the write against every other batch that expects (so every
    /// writer of such a key must expect: the audit committer, for the chain head, so two
    /// writers can never both extend the chain from one entry).
    pub fn expect(&mut self, space: Space, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) {
        self.expects.push(Expect { space, key: key.into(), value });
    }

    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.expects.extend(other.expects);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.expects.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn expects(&self) -> &[Expect] {
        &self.expects
    }

    /// The first expectation `current` (a key's stored value now) does not meet, as the error
    /// the write fails with.
    pub fn check_expects(&self, mut current: impl FnMut(&Expect) -> Result<Option<Vec<u8>>, StoreError>) -> Result<(), StoreError> {
        for e in &self.expects {
            if current(e)? != e.value {
                return Err(StoreError::Conflict { space: e.space.name() });
            }
        }
        Ok(())
    }
}

/// Storage failures. Texts name the operation, never keys or values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("data directory {0} is in use by another process (is the vault running?)")]
    Locked(PathBuf),
    #[error("storage failure: {0}")]
    Io(String),
    #[error("corrupt {space} entry: {what}")]
    Corrupt { space: &'static str, what: &'static str },
    /// A [`Tier::Memory`] read would have had to go to the disk (or the network).
    #[error("not in memory")]
    NotInMemory,
    /// A write may or may not have been applied, and the engine could not find out which
    /// (PostgreSQL: the server stayed unreachable after a commit's answer was lost). Nothing
    /// may be reported done, nor not done, on the strength of it.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Another node holds the shared store's active lease (docs/scale-out.md): this one may
    /// not open it for writing until the lease is free.
    #[error("another vault node is active on this store ({}; its lease expires in {} s unless renewed)", .0.holder, .0.expires_in_secs)]
    LeaseHeld(postgres::Holder),
    /// This node's lease was lost (taken over after it expired unrenewed): it writes nothing
    /// more, and must restart to stand by.
    #[error("this vault node's active lease (epoch {epoch}) was lost: another node is active; nothing was written")]
    Fenced { epoch: i64 },
    /// A batch's expectation ([`Batch::expect`]) was not met: nothing of it was applied.
    #[error("a {space} value changed under the write (another writer): nothing was applied")]
    Conflict { space: &'static str },
}

/// Creates `path` if absent, readable by the vault's user only.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::Io(format!("cannot restrict {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Which engine holds the vault's data (`[storage] engine`).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum EngineChoice {
    /// The embedded default: RocksDB in the data directory.
    #[default]
    RocksDb,
    /// A PostgreSQL server or Patroni cluster (docs/scale-out.md).
    Postgres(postgres::PostgresSettings),
}

impl EngineChoice {
    /// As `[storage] engine` names it.
    pub fn name(&self) -> &'static str {
        match self {
            EngineChoice::RocksDb => "rocksdb",
            EngineChoice::Postgres(_) => "postgres",
        }
    }
}

/// Where a read may look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Anywhere: memtables, the block cache, the files (may wait for the disk).
    Any,
    /// Memtables and the block cache only: the read never waits for the disk and fails with
    /// [`StoreError::NotInMemory`] instead. For callers on async threads.
    Memory,
}

/// How [`Op::Merge`] operands fold into a value: from the stored value (if any) and the
/// operands in the order written, the new value. The store's owner gives it at open (the vault:
/// the access summaries' rule); engines call it as a function of bytes. An engine may fold some
/// operands first, with no stored value, and hand the result on as one operand (RocksDB's
/// partial merge), so a rule must be associative. It must not fail or panic: it runs inside
/// reads and compactions.
pub type MergeRule = fn(existing: Option<&[u8]>, operands: &mut dyn Iterator<Item = &[u8]>) -> Vec<u8>;

/// A counter's value as [`Op::Add`] keeps it: i64 little-endian; anything else reads as 0.
pub(crate) fn decode_i64(b: &[u8]) -> i64 {
    b.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

/// Told, after every [`Store::write`], what it wrote: how a cache above the store (the vault's
/// subject views) stays coherent whatever path wrote. The observer reads the keys itself; the
/// store does not know their layout.
pub trait WriteObserver: Send + Sync {
    /// A write applied `ops` (or may have applied them: it failed), and readers that look
    /// again see them.
    fn written(&self, ops: &[Op]);
}

/// The open store: an engine, and the observer of its writes.
pub struct Store {
    engine: Arc<dyn Engine>,
    observer: OnceLock<Arc<dyn WriteObserver>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Over any engine.
    pub fn with_engine(engine: Arc<dyn Engine>) -> Self {
        Self { engine, observer: OnceLock::new() }
    }

    /// Opens (creating if needed) the RocksDB store at `path`, folding merges with `merge`;
    /// [`StoreError::Locked`] if a running vault has it.
    pub fn open(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Arc::new(rocks::RocksEngine::open(path, merge)?)))
    }

    /// Opens an existing RocksDB store read-only, without taking its lock: for verifying and
    /// reading beside a running vault. Sees what was written up to the moment it opens.
    pub fn open_read_only(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Arc::new(rocks::RocksEngine::open_read_only(path, merge)?)))
    }

    /// Opens for reading: exclusively when no vault runs on it, else read-only beside the
    /// running vault.
    pub fn open_for_reading(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        Ok(Self::with_engine(Arc::new(rocks::RocksEngine::open_for_reading(path, merge)?)))
    }

    /// Opens the configured engine: RocksDB at `path` ([`Store::open`]), or the PostgreSQL
    /// store the settings name, creating its tables if needed ([`postgres::PostgresEngine::open`]).
    pub fn open_engine(engine: &EngineChoice, path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        match engine {
            EngineChoice::RocksDb => Self::open(path, merge),
            EngineChoice::Postgres(settings) => {
                // The data directory still holds this node's local files (the admin socket).
                create_private_dir(path)?;
                Ok(Self::with_engine(Arc::new(postgres::PostgresEngine::open(settings, merge)?)))
            }
        }
    }

    /// [`Store::open_engine`] for reading beside a running vault ([`Store::open_for_reading`];
    /// a PostgreSQL store is shared anyway).
    pub fn open_engine_for_reading(engine: &EngineChoice, path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        match engine {
            EngineChoice::RocksDb => Self::open_for_reading(path, merge),
            EngineChoice::Postgres(settings) => {
                Ok(Self::with_engine(Arc::new(postgres::PostgresEngine::open_for_reading(settings, merge)?)))
            }
        }
    }

    /// An empty store in memory ([`memory::MemoryEngine`]).
    pub fn in_memory(merge: MergeRule) -> Self {
        Self::with_engine(Arc::new(memory::MemoryEngine::new(merge)))
    }

    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_in(Tier::Any, space, key)
    }

    /// [`Store::get`], looking only where `tier` allows.
    pub fn get_in(&self, tier: Tier, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_with(tier, space, key, <[u8]>::to_vec)
    }

    /// Looks up `key` where `tier` allows and hands the value to `f` in place (no copy).
    pub fn get_with<T>(&self, tier: Tier, space: Space, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.engine.get(tier, space, key, &mut |v| out = f.take().map(|f| f(v)))?;
        Ok(out)
    }

    /// Point lookups of many keys in one call.
    pub fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.engine.get_many(Tier::Any, space, keys)
    }

    /// [`Store::get_many`], looking only where `tier` allows.
    pub fn get_many_in(&self, tier: Tier, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.engine.get_many(tier, space, keys)
    }

    /// Visits keys in `[from, to)` in order until `f` returns false.
    pub fn scan(&self, space: Space, from: &[u8], to: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        self.scan_in(Tier::Any, space, from, to, f)
    }

    /// [`Store::scan`], looking only where `tier` allows.
    pub fn scan_in(
        &self,
        tier: Tier,
        space: Space,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.engine.scan(tier, space, from, to, &mut f)
    }

    /// Visits every key starting with `prefix`.
    pub fn scan_prefix(&self, space: Space, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        self.scan_in(Tier::Any, space, prefix, &prefix_end(prefix), f)
    }

    /// [`Store::scan_prefix`], looking only where `tier` allows.
    pub fn scan_prefix_in(&self, tier: Tier, space: Space, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        self.scan_in(tier, space, prefix, &prefix_end(prefix), f)
    }

    /// The last entry of a space, in key order.
    pub fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        self.engine.last(space)
    }

    /// The value of a counter written with [`Batch::add`].
    pub fn counter(&self, space: Space, key: &[u8]) -> Result<i64, StoreError> {
        Ok(self.get_with(Tier::Any, space, key, decode_i64)?.unwrap_or(0))
    }

    /// Applies `batch` atomically and durably before returning ([`Engine::write`]).
    pub fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let written = self.engine.write(batch);
        // After the write (readers that look again see it), and even if it failed: the
        // observer then assumes the worst.
        if let Some(o) = self.observer.get() {
            o.written(batch.ops());
        }
        written
    }

    /// Sets the one [`WriteObserver`] this store tells of its writes; false if one is set.
    pub fn observe_writes(&self, observer: Arc<dyn WriteObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Forces deleted data out of everything the engine keeps ([`Engine::purge`]: for RocksDB,
    /// no live SST file or WAL holds it when this returns).
    pub fn purge(&self, ranges: &[(Space, Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let ranges: Vec<PurgeRange<'_>> = ranges.iter().map(|(s, from, to)| (*s, Some(from.as_slice()), Some(to.as_slice()))).collect();
        self.engine.purge(&ranges)
    }

    /// [`Store::purge`] of a whole space (after destroying a KEK).
    pub fn purge_space(&self, space: Space) -> Result<(), StoreError> {
        self.engine.purge(&[(space, None, None)])
    }

    /// A consistent copy of the store in `dir` (a new folder), taken online ([`Engine::backup`]).
    pub fn backup(&self, dir: &Path) -> Result<(), StoreError> {
        self.engine.backup(dir)
    }

    /// Opens a copy [`Store::backup`] wrote, with this store's kind of engine.
    pub fn open_backup(&self, dir: &Path) -> Result<Store, StoreError> {
        Ok(Self::with_engine(self.engine.open_backup(dir)?))
    }

    /// Whether the engine takes writes now ([`Engine::write_state`]).
    pub fn write_state(&self) -> WriteState {
        self.engine.write_state()
    }

    /// Whether the store answers reads and takes writes now ([`Engine::ready`]).
    pub fn ready(&self) -> Result<(), StoreError> {
        self.engine.ready()
    }

    /// Releases what the engine holds for others ([`Engine::close`]); writes after it fail.
    pub fn close(&self) {
        self.engine.close()
    }

    /// The engine's statistics ([`Engine::stats`]).
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }
}
