//! The engine boundary: what the vault needs of a storage engine, and nothing of how one
//! does it. In the spirit of TiKV's `engine_traits`, this file names no engine; RocksDB is
//! [`super::rocks`], the in-memory engine for unit tests [`super::memory`], and every engine
//! passes the one conformance suite (`conformance.rs`).
//!
//! Keys are bytes ordered bytewise inside a [`Space`]; values are bytes. Engines are shared
//! across threads (`Send + Sync`); every method may be called concurrently with any other.
//! Errors never carry keys or values (they may name files and the engine's state).

use std::path::Path;
use std::sync::Arc;

use super::{Batch, KeyValue, Space, StoreError, Tier};

/// A range of one space to purge; `None` is unbounded on that side.
pub type PurgeRange<'a> = (Space, Option<&'a [u8]>, Option<&'a [u8]>);

/// A storage engine. Object-safe: the vault holds one as `Arc<dyn Engine>` (why dynamic
/// dispatch, with the measurement, is in the module doc of [`super`]).
pub trait Engine: Send + Sync + 'static {
    /// Looks `key` up where `tier` allows and, if present, hands its value to `found` once, in
    /// place (no copy). Returns whether it was found.
    ///
    /// Errors: [`StoreError::NotInMemory`] if `tier` is [`Tier::Memory`] and the answer is
    /// not in memory (an engine that holds everything in memory never returns it);
    /// [`StoreError::Io`] if the engine cannot read.
    fn get(&self, tier: Tier, space: Space, key: &[u8], found: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError>;

    /// Point lookups of many keys, answered in the order of `keys`, all from one consistent
    /// view of the space. Errors as [`Engine::get`]: under [`Tier::Memory`] one key not in
    /// memory fails the whole call with [`StoreError::NotInMemory`].
    fn get_many(&self, tier: Tier, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Visits the keys in `[from, to)` in ascending order until `visit` returns false. The scan
    /// sees one consistent view: every [`Engine::write`] completed before it started, and of a
    /// write running meanwhile all of it or none. Errors as [`Engine::get`] (under
    /// [`Tier::Memory`] after visiting some keys, which the caller then discards).
    fn scan(&self, tier: Tier, space: Space, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool)
        -> Result<(), StoreError>;

    /// The last entry of `space` in key order, if any.
    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError>;

    /// Applies `batch` atomically and durably: when it returns `Ok`, every op is applied in
    /// the order written and survives a crash of the process or machine (for RocksDB: the
    /// WAL is fsynced); readers see all of it or none of it. Counter adds
    /// ([`super::Op::Add`]) add to the signed 64-bit little-endian value of the key (absent is
    /// 0); merges ([`super::Op::Merge`]) fold operands, in the order written and after the
    /// value the key held, with the [`super::MergeRule`] the engine was opened with. On `Err`
    /// the batch may not have been applied; it is never applied in part.
    fn write(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Crypto-shredding: once this returns `Ok`, no value deleted (by a completed
    /// [`Engine::write`]) from the given ranges is held anywhere the engine keeps data, so a
    /// copy of the engine's files taken afterwards holds none of it. For RocksDB: no live SST
    /// file and no WAL holds the deleted keys (every column family is flushed, so the WAL
    /// holding them is deleted, and each range is compacted through the bottommost level); a
    /// background error during the purge fails it. For the memory engine a delete already
    /// drops the value, so a purge only checks that it can run. Purges run one at a time.
    fn purge(&self, ranges: &[PurgeRange<'_>]) -> Result<(), StoreError>;

    /// A consistent copy of the whole store in `dir` (a new folder), taken online: it holds
    /// every write completed before the call and none started after it returns. Opened with
    /// [`Engine::open_backup`].
    fn backup(&self, dir: &Path) -> Result<(), StoreError>;

    /// Opens a copy this kind of engine wrote with [`Engine::backup`] as an engine of its own,
    /// independent of this one (writes to either do not reach the other).
    fn open_backup(&self, dir: &Path) -> Result<Arc<dyn Engine>, StoreError>;

    /// Whether the engine takes writes *now*, answered without waiting (the server's
    /// watchdog polls it).
    fn write_state(&self) -> WriteState;

    /// Whether the engine answers reads and takes writes now and has had no recent background
    /// failure (readiness). The error says why not.
    fn ready(&self) -> Result<(), StoreError>;

    /// The engine's statistics, as typed values (for `/metrics`); a figure the engine cannot
    /// give is `None`.
    fn stats(&self) -> EngineStats;

    /// Gives up what the engine holds for others to take, before it is dropped (the vault has
    /// closed): a shared store's active lease. Writes after it are refused.
    fn close(&self) {}
}

/// Whether the engine takes writes now ([`Engine::write_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteState {
    Accepting,
    /// Writes are stopped until flushes or compactions catch up (a write stall; a mere
    /// slowdown counts as accepting): transient under load, permanent if background work has
    /// stopped on an error.
    Stalled,
    /// The engine refuses every write with this error (for RocksDB its background-error
    /// state, which only reopening clears).
    Refused(String),
    /// As [`WriteState::Refused`], because the disk is full.
    NoSpace(String),
}

/// An engine's statistics ([`Engine::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// One entry per space, in [`Space::ALL`]'s order.
    pub spaces: Vec<SpaceStats>,
    /// Failed background jobs since open (cumulative; non-zero: writes may be refused).
    pub background_errors: u64,
    /// Bytes of the engine's read cache in use.
    pub cache_bytes: Option<u64>,
}

/// One space's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpaceStats {
    pub space: Space,
    /// Keys in the space (an estimate for RocksDB).
    pub keys: Option<u64>,
    /// Bytes of the space's live files on disk.
    pub live_bytes: Option<u64>,
    /// Bytes of the space's data in write buffers (memtables).
    pub memtable_bytes: Option<u64>,
}

impl SpaceStats {
    pub fn new(space: Space, keys: Option<u64>, live_bytes: Option<u64>, memtable_bytes: Option<u64>) -> Self {
        Self { space, keys, live_bytes, memtable_bytes }
    }
}

impl EngineStats {
    pub fn new(spaces: Vec<SpaceStats>, background_errors: u64, cache_bytes: Option<u64>) -> Self {
        Self { spaces, background_errors, cache_bytes }
    }
}
