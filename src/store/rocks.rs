//! The RocksDB engine: one column family per [`Space`]. **The only file in `src/` that names
//! `rocksdb`.** It implements [`Engine`]; the vault sees none of what follows.
//!
//! What the contracts of [`Engine`] rest on here:
//! - every [`Engine::write`] is one atomic RocksDB write batch with a synced WAL (RocksDB
//!   groups concurrent synced writers into one WAL sync); adds to one counter in a batch are
//!   summed into one merge first ([`fold_adds`]);
//! - deletes are `Delete`/`DeleteRange`, never `SingleDelete` (which can resurrect older
//!   versions of an overwritten key);
//! - WAL recycling is off and WAL TTL/size limits are 0, so a flushed WAL is deleted, not kept;
//! - [`Engine::purge`] flushes every column family and compacts the given ranges with forced
//!   bottommost compaction, then checks that `rocksdb.background-errors` did not rise meanwhile,
//!   because `compact_range` itself reports none. Dynamic level sizes (RocksDB's default,
//!   set explicitly) make a range compaction reach a file a background compaction moves down
//!   meanwhile (RocksDB #11468, #7983);
//! - [`Engine::write_state`] is a probe write, not the cumulative error counter alone (a store
//!   that stopped on a background error refuses every write until reopened: the C API has no
//!   `Resume`; the server's watchdog then exits so the supervisor restarts it);
//! - the counter merge (`qoima.add_i64`, i64 little-endian) and the merge of [`Space::Access`]
//!   (`qoima.access_summary`: the [`MergeRule`] given at open, for full and partial merges
//!   alike) are registered under these names, which the data directory's OPTIONS files
//!   record: renaming them would not open existing stores.
//!
//! Tuning (measured in docs/performance.md, not invariants):
//! - RocksDB keeps at most [`MAX_OPEN_FILES`] table files open, so its descriptors fit in
//!   [`DESCRIPTOR_RESERVE`] and the listener's connection cap can be set below the process
//!   limit with them kept free (src/server/listener.rs);
//! - one shared 64 MiB block cache ([`BLOCK_CACHE`]) and a 128 MiB write-buffer manager over
//!   every memtable ([`MEMTABLE_BUDGET`]) bound RocksDB's memory;
//! - four background jobs ([`BACKGROUND_JOBS`]): a purge's forced compaction queues in the
//!   same pool as RocksDB's own, and with one compaction thread the first erasures after a
//!   burst of writes waited behind it;
//! - `bytes_per_sync` of 1 MiB: flushes and compactions write out as they go, so the audit's
//!   WAL fsync does not queue behind a whole file's closing fsync (lower tails);
//! - the spaces keyed by a `subject\0` prefix get a prefix extractor with bloom filters; scans
//!   stay total-order (prefix-mode iterators measured slower on the read path);
//! - the subjects' and keyring's small entries live in small files (8 MiB memtables, 2 MiB
//!   files), so the compaction a purge forces stays small; the subjects' space has a memtable
//!   bloom filter (a new subject's "absent" skips the skip-list search);
//! - point reads reuse per-thread `ReadOptions` (each is a C++ object behind the FFI), and
//!   hand pinned values to the caller in place;
//! - compression is off: values are ciphertext or small metadata.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor, CompactOptions, DBCompressionType, FlushOptions,
    MergeOperands, Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};

use super::engine::{Engine, EngineStats, PurgeRange, SpaceStats, WriteState};
use super::{decode_i64, Batch, KeyValue, MergeRule, Op, Space, StoreError, Tier};

fn read_options(tier: Tier) -> ReadOptions {
    let mut ro = ReadOptions::default();
    if tier == Tier::Memory {
        ro.set_read_tier(rocksdb::ReadTier::BlockCache);
    }
    ro
}

/// Runs `f` with `tier`'s options for point reads: built once per thread, not once per read
/// (each is a C++ object allocated through the FFI).
fn with_point_options<T>(tier: Tier, f: impl FnOnce(&ReadOptions) -> T) -> T {
    thread_local! {
        static ANY: ReadOptions = read_options(Tier::Any);
        static MEMORY: ReadOptions = read_options(Tier::Memory);
    }
    match tier {
        Tier::Any => ANY.with(f),
        Tier::Memory => MEMORY.with(f),
    }
}

/// RocksDB reports a read that the memory tier cannot answer as `Incomplete`.
fn read_error(e: rocksdb::Error) -> StoreError {
    match e.kind() {
        rocksdb::ErrorKind::Incomplete => StoreError::NotInMemory,
        _ => e.into(),
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Io(e.into_string())
    }
}

/// Whether `op` replaces or deletes `key` of `space` (an add only adds to it).
fn overwrites(op: &Op, space: Space, key: &[u8]) -> bool {
    match op {
        Op::Put(s, k, _) | Op::Delete(s, k) => *s == space && k == key,
        Op::DeleteRange(s, from, to) => *s == space && key >= from.as_slice() && key < to.as_slice(),
        Op::Add(..) | Op::Merge(..) => false,
    }
}

/// Bytes of keys and values `op` carries.
fn payload_len(op: &Op) -> usize {
    match op {
        Op::Put(_, k, v) => k.len() + v.len(),
        Op::Delete(_, k) => k.len(),
        Op::DeleteRange(_, from, to) => from.len() + to.len(),
        Op::Add(_, k, _) => k.len() + 8,
        Op::Merge(_, k, v) => k.len() + v.len(),
    }
}

/// An op as [`Engine::write`] hands it to RocksDB.
#[derive(Debug, PartialEq, Eq)]
enum Written<'a> {
    Op(&'a Op),
    /// The sum of adds to one counter.
    Add(Space, &'a [u8], i64),
}

/// Hands `ops` to `emit` with the adds to each counter summed into one merge. A group commit
/// carries two adds per create into the same two keyring counters; summed, they cost one WAL
/// record and one memtable entry a group instead of one each. A sum is emitted just before
/// the first put, delete or range delete of its counter, or at the end: a merge commutes with
/// ops on other keys, so the batch's effect is unchanged.
fn fold_adds<'a>(ops: &'a [Op], mut emit: impl FnMut(Written<'a>)) {
    // Counters with adds not yet emitted; a batch has few, so a list does.
    let mut open: Vec<(Space, &'a [u8], i64)> = Vec::new();
    for op in ops {
        if let Op::Add(s, k, d) = op {
            match open.iter_mut().find(|(os, ok, _)| os == s && *ok == k.as_slice()) {
                Some((_, _, sum)) => *sum = sum.wrapping_add(*d),
                None => open.push((*s, k, *d)),
            }
            continue;
        }
        open.retain(|&(s, k, sum)| {
            let overwritten = overwrites(op, s, k);
            if overwritten {
                emit(Written::Add(s, k, sum));
            }
            !overwritten
        });
        emit(Written::Op(op));
    }
    for (s, k, sum) in open {
        emit(Written::Add(s, k, sum));
    }
}

const COUNTER_MERGE: &str = "qoima.add_i64";

fn add_i64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut n = existing.map(decode_i64).unwrap_or(0);
    for op in operands {
        n = n.wrapping_add(decode_i64(op));
    }
    Some(n.to_le_bytes().to_vec())
}

/// The name [`Space::Access`]'s merge operator is registered under (the data directory's
/// OPTIONS files record it; it names the access summaries, what the vault merges there).
const ACCESS_MERGE: &str = "qoima.access_summary";

/// The NUL-terminated group a key of a [`Space::grouped_keys`] space starts with: what its
/// prefix extractor indexes (registered as `qoima.subject_prefix`, the name the OPTIONS files
/// record).
fn group_of(key: &[u8]) -> &[u8] {
    match key.iter().position(|b| *b == 0) {
        Some(i) => &key[..=i],
        None => key,
    }
}

fn has_group(key: &[u8]) -> bool {
    key.contains(&0)
}

fn cf_options(space: Space, cache: &Cache, merge: MergeRule) -> Options {
    let mut o = Options::default();
    // Values are ciphertext or small metadata: compression buys nothing.
    o.set_compression_type(DBCompressionType::None);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    if space.grouped_keys() {
        o.set_prefix_extractor(SliceTransform::create("qoima.subject_prefix", group_of, Some(has_group)));
        table.set_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.05);
    }
    o.set_block_based_table_factory(&table);
    // RocksDB's default, named because the purge relies on it: with dynamic level sizes a
    // `CompactRange` compacts level by level down to the last level, so a file that a
    // background compaction moves down meanwhile is still reached (RocksDB #11468; without
    // it a moved file could escape the range compaction, #7983).
    o.set_level_compaction_dynamic_level_bytes(true);
    if space == Space::Keyring {
        o.set_merge_operator_associative(COUNTER_MERGE, add_i64);
    }
    if space == Space::Access {
        // Full and partial merges alike: a rule is associative (`MergeRule`); this only hands
        // RocksDB's operands over.
        let access = move |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| -> Option<Vec<u8>> {
            Some(merge(existing, &mut operands.iter()))
        };
        o.set_merge_operator_associative(ACCESS_MERGE, access);
        // A hot subject's summary gets a merge per read: past this many in the memtable, the
        // write folds them into one value, if it can without a read of the disk (RocksDB's
        // default), so an export never merges more than a bounded number from the memtable.
        o.set_max_successive_merges(64);
    }
    if space == Space::Subjects {
        // Every write and read looks its subject up here, and for a new subject the answer is
        // "absent": a memtable bloom filter (5 % of the 8 MiB memtable) says so without a
        // search of the skip list.
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.05);
    }
    if matches!(space, Space::Subjects | Space::Keyring | Space::Index) {
        // Small entries (wrapped keys, a subject's blind indexes) that erasure and KEK
        // destruction force out of the files with a range compaction: small files keep that
        // compaction small.
        o.set_write_buffer_size(8 << 20);
        o.set_target_file_size_base(2 << 20);
        o.set_max_bytes_for_level_base(16 << 20);
    }
    o
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // A flushed WAL is deleted at once: no TTL, no size-based archive, no recycling, so a
    // shredded key does not linger in an old log (docs/erasure-and-backups.md, "The shred").
    o.set_wal_ttl_seconds(0);
    o.set_wal_size_limit_mb(0);
    o.set_recycle_log_file_num(0);
    o.set_max_total_wal_size(64 << 20);
    o.set_keep_log_file_num(4);
    // RocksDB gives one of these jobs to flushes and three to compactions. A purge's forced
    // compaction queues in that same pool, so with one compaction thread the first erasures
    // after a burst of writes waited behind the compaction of those writes (p99 1.3-2.0 s;
    // 0.19-0.41 s with three, docs/performance.md).
    o.set_max_background_jobs(BACKGROUND_JOBS);
    // Flushes and compactions hand their files to the disk a MiB at a time (sync_file_range)
    // instead of all at each file's closing fsync, which the audit's WAL fsync would queue
    // behind: fewer durable writes of 10-50 ms, so lower tails (docs/performance.md).
    o.set_bytes_per_sync(BYTES_PER_SYNC);
    // All memtables together stay under 128 MiB (ten column families could otherwise hold
    // 2 × 64 MiB each): with the 64 MiB block cache this bounds RocksDB's memory.
    o.set_write_buffer_manager(&rocksdb::WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET, false));
    // Bounded (RocksDB's default is unbounded: one descriptor per table file, for ever), so
    // what RocksDB needs can be kept free of the listener's connections (issue #23).
    o.set_max_open_files(MAX_OPEN_FILES);
    o
}

/// Table files RocksDB keeps open at most (its table cache; reopened on demand beyond it).
pub const MAX_OPEN_FILES: i32 = 512;
/// Descriptors kept free for RocksDB: its table cache, plus WALs, the MANIFEST, LOCK and info
/// log, the outputs of [`BACKGROUND_JOBS`] flushes and compactions, and checkpoints.
pub const DESCRIPTOR_RESERVE: u64 = MAX_OPEN_FILES as u64 + 64;

/// The memtable budget shared by every column family, and the block cache's size.
pub const MEMTABLE_BUDGET: usize = 128 << 20;
pub const BLOCK_CACHE: usize = 64 << 20;
/// How much a flush or compaction writes before it asks the kernel to start writing it out.
const BYTES_PER_SYNC: u64 = 1 << 20;
/// RocksDB's background threads: flushes and compactions together.
const BACKGROUND_JOBS: i32 = 4;

/// How long a rise of `rocksdb.background-errors` keeps the store not ready: RocksDB retries a
/// failed flush or compaction about once a second, so a failure that persists keeps it rising.
const BACKGROUND_ERROR_WINDOW: Duration = Duration::from_secs(10);

/// The RocksDB engine over one data directory.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    /// What merges of [`Space::Access`] fold with; a backup opens with it too.
    merge: MergeRule,
    /// Purges run one at a time (the vault groups concurrent erasures into one pass).
    purge_lock: Mutex<()>,
    /// Held while a batch with expectations is checked and written.
    expect_lock: Mutex<()>,
    /// `rocksdb.background-errors` as last seen, and when it last rose.
    background: Mutex<(u64, Option<Instant>)>,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksEngine({})", self.path.display())
    }
}

impl RocksEngine {
    /// Opens (creating if needed) the store at `path`, folding merges with `merge`.
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        super::create_private_dir(path)?;
        let cache = Cache::new_lru_cache(BLOCK_CACHE);
        let cfs = Space::ALL.iter().map(|s| ColumnFamilyDescriptor::new(s.name(), cf_options(*s, &cache, merge)));
        let db = DB::open_cf_descriptors(&db_options(), path, cfs).map_err(|e| {
            let text = e.into_string();
            if text.contains("lock") || text.contains("LOCK") {
                StoreError::Locked(path.to_path_buf())
            } else {
                StoreError::Io(text)
            }
        })?;
        Ok(Self::new(db, path, merge))
    }

    fn new(db: DB, path: &Path, merge: MergeRule) -> Self {
        let errors = db.property_int_value("rocksdb.background-errors").ok().flatten().unwrap_or(0);
        Self {
            db,
            path: path.to_path_buf(),
            merge,
            purge_lock: Mutex::new(()),
            expect_lock: Mutex::new(()),
            background: Mutex::new((errors, None)),
        }
    }

    /// Opens an existing store read-only, without taking its lock: for verifying and reading
    /// beside a running vault. Sees what was written up to the moment it opens; refuses writes.
    pub fn open_read_only(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Io(format!("no Qoima store at {}", path.display())));
        }
        let cache = Cache::new_lru_cache(8 << 20);
        let cfs = Space::ALL.iter().map(|s| ColumnFamilyDescriptor::new(s.name(), cf_options(*s, &cache, merge)));
        let db = DB::open_cf_descriptors_read_only(&db_options(), path, cfs, false)?;
        Ok(Self::new(db, path, merge))
    }

    /// Opens for reading: exclusively when no vault runs on it, else read-only beside the
    /// running vault.
    pub fn open_for_reading(path: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        match Self::open(path, merge) {
            Err(StoreError::Locked(_)) => Self::open_read_only(path, merge),
            other => other,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, space: Space) -> &rocksdb::ColumnFamily {
        // Every space is created at open (create_missing_column_families).
        self.db.cf_handle(space.name()).expect("column family opened with the store")
    }

    /// RocksDB's cumulative count of failed background flushes and compactions.
    fn background_errors(&self) -> Result<u64, StoreError> {
        Ok(self.db.property_int_value("rocksdb.background-errors")?.unwrap_or(0))
    }
}

impl Engine for RocksEngine {
    fn get(&self, tier: Tier, space: Space, key: &[u8], found: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError> {
        let value = with_point_options(tier, |ro| self.db.get_pinned_cf_opt(self.cf(space), key, ro)).map_err(read_error)?;
        Ok(value.map(|v| found(&v)).is_some())
    }

    fn get_many(&self, tier: Tier, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match tier {
            Tier::Any => self
                .db
                .batched_multi_get_cf(self.cf(space), keys.iter(), false)
                .into_iter()
                .map(|r| r.map(|v| v.map(|p| p.to_vec())).map_err(StoreError::from))
                .collect(),
            // RocksDB's MultiGet reads a block that is not cached even under the memory tier
            // (the test below caught it), so the memory tier looks up one key at a time.
            Tier::Memory => keys
                .iter()
                .map(|k| {
                    let mut out = None;
                    self.get(tier, space, k, &mut |v| out = Some(v.to_vec()))?;
                    Ok(out)
                })
                .collect(),
        }
    }

    fn scan(
        &self,
        tier: Tier,
        space: Space,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // Total order even inside one subject's prefix: prefix-mode iterators (the prefix bloom
        // filters) measured slower on the read path (docs/performance.md).
        let mut ro = read_options(tier);
        ro.set_total_order_seek(true);
        ro.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(space), ro);
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !visit(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(read_error)
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(space));
        it.seek_to_last();
        let out = match (it.key(), it.value()) {
            (Some(k), Some(v)) if it.valid() => Some((k.to_vec(), v.to_vec())),
            _ => None,
        };
        it.status()?;
        Ok(out)
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        // Sized up front: a group commit's batch would otherwise grow (and be copied) a dozen
        // times. 24 bytes an op covers RocksDB's record header, column family id and lengths.
        let ops = batch.ops();
        let bytes: usize = ops.iter().map(payload_len).sum::<usize>() + 24 * ops.len() + 12;
        let mut wb = WriteBatch::with_capacity_bytes(bytes);
        fold_adds(ops, |op| match op {
            Written::Op(Op::Put(s, k, v)) => wb.put_cf(self.cf(*s), k, v),
            Written::Op(Op::Delete(s, k)) => wb.delete_cf(self.cf(*s), k),
            Written::Op(Op::DeleteRange(s, from, to)) => wb.delete_range_cf(self.cf(*s), from, to),
            Written::Op(Op::Merge(s, k, v)) => wb.merge_cf(self.cf(*s), k, v),
            Written::Op(Op::Add(..)) => unreachable!("fold_adds hands adds over as sums"),
            Written::Add(s, k, d) => wb.merge_cf(self.cf(s), k, d.to_le_bytes()),
        });
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        if batch.expects().is_empty() {
            return Ok(self.db.write_opt(wb, &wo)?);
        }
        // Checked and written under one lock: every other write of a key some batch expects
        // (the audit head's) carries an expectation too, so it waits here.
        let _checked = self.expect_lock.lock().unwrap_or_else(|p| p.into_inner());
        batch.check_expects(|e| Ok(self.db.get_cf(self.cf(e.space), &e.key)?))?;
        Ok(self.db.write_opt(wb, &wo)?)
    }

    fn purge(&self, ranges: &[PurgeRange<'_>]) -> Result<(), StoreError> {
        tracing::debug!(ranges = ranges.len(), "flush and forced bottommost compaction");
        let _one_at_a_time = self.purge_lock.lock().unwrap_or_else(|p| p.into_inner());
        let errors_before = self.background_errors()?;
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        let all: Vec<_> = Space::ALL.iter().map(|s| self.cf(*s)).collect();
        self.db.flush_cfs_opt(&all, &fo)?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        // Not exclusive (RocksDB's default since 7.6): an exclusive one would first wait for,
        // then hold off, every background compaction. Safe with dynamic level sizes (above).
        co.set_exclusive_manual_compaction(false);
        for (space, from, to) in ranges {
            self.db.compact_range_cf_opt(self.cf(*space), *from, *to, &co);
        }
        // `compact_range` reports no error; RocksDB counts them instead. The count is
        // cumulative, so what matters is whether it rose during this purge.
        match self.background_errors()? - errors_before {
            0 => Ok(()),
            n => Err(StoreError::Io(format!("{n} background error(s) in RocksDB during the purge"))),
        }
    }

    /// A checkpoint: SST files hard-linked where the file system allows; memtables are flushed
    /// first, so the copy needs no WAL.
    fn backup(&self, dir: &Path) -> Result<(), StoreError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    fn open_backup(&self, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
        Ok(Arc::new(Self::open(dir, self.merge)?))
    }

    /// An empty, unlogged write that must not wait. It goes through RocksDB's write path,
    /// which answers a stopped store's background error.
    fn write_state(&self) -> WriteState {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        wo.set_no_slowdown(true);
        match self.db.write_opt(WriteBatch::default(), &wo) {
            Ok(()) => WriteState::Accepting,
            // Slowed down (writes still go through, later) or stopped: only a stop counts.
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => match self.db.property_int_value("rocksdb.is-write-stopped") {
                Ok(Some(0)) => WriteState::Accepting,
                _ => WriteState::Stalled,
            },
            Err(e) => {
                let text = e.into_string();
                if text.contains("No space left on device") {
                    WriteState::NoSpace(text)
                } else {
                    WriteState::Refused(text)
                }
            }
        }
    }

    /// Truthful at any moment: `rocksdb.background-errors` only ever grows (and some errors, a
    /// WAL that cannot be created among them, do not count there), so it is read for its
    /// rises only, which keep the store not ready for [`BACKGROUND_ERROR_WINDOW`].
    fn ready(&self) -> Result<(), StoreError> {
        self.get(Tier::Any, Space::Keyring, b"", &mut |_| {})?;
        match self.write_state() {
            WriteState::Accepting => {}
            WriteState::Stalled => return Err(StoreError::Io("RocksDB is stalling writes".into())),
            WriteState::Refused(e) | WriteState::NoSpace(e) => return Err(StoreError::Io(format!("RocksDB refuses writes: {e}"))),
        }
        let now = self.background_errors()?;
        let mut seen = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if now > seen.0 {
            *seen = (now, Some(Instant::now()));
        }
        match seen.1 {
            Some(at) if at.elapsed() < BACKGROUND_ERROR_WINDOW => {
                Err(StoreError::Io(format!("a RocksDB background flush or compaction failed {} s ago", at.elapsed().as_secs())))
            }
            _ => Ok(()),
        }
    }

    fn stats(&self) -> EngineStats {
        let of = |space: Space, name: &str| self.db.property_int_value_cf(self.cf(space), name).ok().flatten();
        let spaces = Space::ALL
            .iter()
            .map(|&s| {
                SpaceStats::new(
                    s,
                    of(s, "rocksdb.estimate-num-keys"),
                    of(s, "rocksdb.live-sst-files-size"),
                    of(s, "rocksdb.cur-size-all-mem-tables"),
                )
            })
            .collect();
        let background_errors = self.background_errors().unwrap_or(0);
        let cache_bytes = self.db.property_int_value("rocksdb.block-cache-usage").ok().flatten();
        EngineStats::new(spaces, background_errors, Some(cache_bytes.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{group, grouped, join};
    use crate::store::{prefix_end, Store};

    #[test]
    fn passes_the_conformance_suite() {
        crate::store::conformance::run(|dir, merge| RocksEngine::open(dir, merge).unwrap());
    }

    #[test]
    fn adds_to_one_counter_fold_into_one_merge_until_the_counter_is_overwritten() {
        let folded = |ops| {
            let mut out = Vec::new();
            fold_adds(ops, |w| out.push(w));
            out
        };
        let mut b = Batch::default();
        b.add(Space::Keyring, b"c".to_vec(), 1);
        b.put(Space::Records, grouped("s1", "a.x"), b"v");
        b.add(Space::Keyring, b"d".to_vec(), 1);
        b.add(Space::Keyring, b"c".to_vec(), 1);
        b.add(Space::Records, b"c".to_vec(), 7); // same key, other space: its own counter
        b.add(Space::Keyring, b"c".to_vec(), 1);
        b.add(Space::Keyring, b"d".to_vec(), -3);
        let ops = b.ops();
        assert_eq!(
            folded(ops),
            vec![
                Written::Op(&ops[1]),
                Written::Add(Space::Keyring, b"c", 3),
                Written::Add(Space::Keyring, b"d", -2),
                Written::Add(Space::Records, b"c", 7),
            ]
        );
        // No adds, nothing changes.
        let mut plain = Batch::default();
        plain.put(Space::Keyring, b"c".to_vec(), b"v");
        plain.delete(Space::Records, b"c".to_vec());
        assert_eq!(folded(plain.ops()), plain.ops().iter().map(Written::Op).collect::<Vec<_>>());

        // A put, delete or range delete of a counter emits its sum before it.
        let mut b = Batch::default();
        b.add(Space::Keyring, b"c".to_vec(), 5);
        b.add(Space::Keyring, b"f".to_vec(), 1);
        b.delete(Space::Keyring, b"c".to_vec());
        b.add(Space::Keyring, b"c".to_vec(), 2);
        b.add(Space::Keyring, b"c".to_vec(), 2);
        b.add(Space::Keyring, b"e".to_vec(), 1);
        b.delete_prefix(Space::Keyring, b"e");
        b.add(Space::Keyring, b"e".to_vec(), 1);
        b.put(Space::Keyring, b"f".to_vec(), 9i64.to_le_bytes());
        let ops = b.ops();
        assert_eq!(
            folded(ops),
            vec![
                Written::Add(Space::Keyring, b"c", 5),
                Written::Op(&ops[2]),
                Written::Add(Space::Keyring, b"e", 1),
                Written::Op(&ops[6]),
                Written::Add(Space::Keyring, b"f", 1),
                Written::Op(&ops[8]),
                Written::Add(Space::Keyring, b"c", 4),
                Written::Add(Space::Keyring, b"e", 1),
            ]
        );

        // And RocksDB applies the folded batch as the ops were written.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), join).unwrap();
        s.write(&b).unwrap();
        assert_eq!(s.counter(Space::Keyring, b"c").unwrap(), 4);
        assert_eq!(s.counter(Space::Keyring, b"e").unwrap(), 1);
        assert_eq!(s.counter(Space::Keyring, b"f").unwrap(), 9);
    }

    #[test]
    fn batch_counter_scan_and_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), join).unwrap();
        let mut b = Batch::default();
        for f in ["a.x", "a.y", "b.z"] {
            b.put(Space::Records, grouped("s1", f), f.as_bytes());
        }
        b.put(Space::Records, grouped("s10", "a.x"), b"other");
        b.add(Space::Keyring, b"c".to_vec(), 5);
        b.add(Space::Keyring, b"c".to_vec(), -2);
        s.write(&b).unwrap();
        assert_eq!(s.counter(Space::Keyring, b"c").unwrap(), 3);

        let mut seen = vec![];
        s.scan_prefix(Space::Records, &group("s1"), |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 3, "s10 is not under s1's prefix");

        let mut del = Batch::default();
        del.delete_prefix(Space::Records, &group("s1"));
        s.write(&del).unwrap();
        s.purge(&[(Space::Records, group("s1"), prefix_end(&group("s1")))]).unwrap();
        let mut left = 0;
        s.scan(Space::Records, b"", b"\xff", |_, _| {
            left += 1;
            true
        })
        .unwrap();
        assert_eq!(left, 1);
        assert_eq!(s.get(Space::Records, &grouped("s10", "a.x")).unwrap().as_deref(), Some(&b"other"[..]));
    }

    /// RocksDB records the options it runs with in the data directory (`OPTIONS-*`); the
    /// ones the purge and the tail latencies rest on must be there as set.
    #[test]
    fn rocksdb_runs_with_the_options_the_vault_relies_on() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), join).unwrap());
        let newest = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("OPTIONS-")))
            .max()
            .expect("RocksDB wrote an OPTIONS file");
        let text = std::fs::read_to_string(newest).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(lines.contains(&format!("bytes_per_sync={BYTES_PER_SYNC}").as_str()), "bytes_per_sync not set");
        assert!(lines.contains(&format!("max_background_jobs={BACKGROUND_JOBS}").as_str()), "max_background_jobs not set");
        assert!(lines.contains(&format!("max_open_files={MAX_OPEN_FILES}").as_str()), "max_open_files not bounded");
        for setting in ["WAL_ttl_seconds=0", "WAL_size_limit_MB=0", "recycle_log_file_num=0"] {
            assert!(lines.contains(&setting), "{setting} not set");
        }
        let dynamic = lines.iter().filter(|l| **l == "level_compaction_dynamic_level_bytes=true").count();
        assert_eq!(dynamic, Space::ALL.len() + 1, "dynamic level sizes in every column family (and the default one)");
    }

    #[test]
    fn the_memory_tier_answers_from_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = grouped("s1", "a.x");
        {
            let s = Store::open(dir.path(), join).unwrap();
            let mut b = Batch::default();
            b.put(Space::Records, key.clone(), b"v".to_vec());
            s.write(&b).unwrap();
            // In the memtable: the memory tier sees it.
            assert_eq!(s.get_in(Tier::Memory, Space::Records, &key).unwrap().as_deref(), Some(&b"v"[..]));
            s.purge(&[]).unwrap(); // flushed into an SST file
        }
        // Reopened: the value is only in a file, and the block cache is empty.
        let s = Store::open(dir.path(), join).unwrap();
        assert!(matches!(s.get_in(Tier::Memory, Space::Records, &key), Err(StoreError::NotInMemory)));
        let many = s.get_many_in(Tier::Memory, Space::Records, std::slice::from_ref(&key));
        assert!(matches!(many, Err(StoreError::NotInMemory)), "{many:?}");
        let scanned = s.scan_prefix_in(Tier::Memory, Space::Records, &group("s1"), |_, _| true);
        assert!(matches!(scanned, Err(StoreError::NotInMemory)), "{scanned:?}");
        // A read from the disk brings its blocks into the cache; then memory answers.
        assert_eq!(s.get(Space::Records, &key).unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(s.get_in(Tier::Memory, Space::Records, &key).unwrap().as_deref(), Some(&b"v"[..]));
        let mut seen = 0;
        s.scan_prefix_in(Tier::Memory, Space::Records, &group("s1"), |_, _| {
            seen += 1;
            true
        })
        .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn prefix_scans_see_exactly_their_subject_across_memtables_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), join).unwrap();
        let subjects = ["s1", "s10", "s2", "s", "t1"];
        // Three generations: two flushed into files, the last left in the memtable.
        for round in 0..3 {
            let mut b = Batch::default();
            for subject in subjects {
                b.put(Space::Facts, grouped(subject, &format!("c\0{round}")), b"c".to_vec());
                b.put(Space::Facts, grouped(subject, &format!("k\0{round}")), b"k".to_vec());
            }
            s.write(&b).unwrap();
            if round < 2 {
                s.purge(&[]).unwrap();
            }
        }
        for tier in [Tier::Any, Tier::Memory] {
            for subject in subjects {
                let mut keys = vec![];
                // A read from the disk first, so the memory tier finds the blocks cached.
                s.scan_prefix(Space::Facts, &group(subject), |_, _| true).unwrap();
                s.scan_prefix_in(tier, Space::Facts, &group(subject), |k, _| {
                    keys.push(k.to_vec());
                    true
                })
                .unwrap();
                assert_eq!(keys.len(), 6, "{subject} {tier:?}");
                assert!(keys.iter().all(|k| k.starts_with(&group(subject))));
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
                // A longer prefix inside the subject: only its contracts.
                let mut contracts = 0;
                s.scan_prefix_in(tier, Space::Facts, &grouped(subject, "c\0"), |_, _| {
                    contracts += 1;
                    true
                })
                .unwrap();
                assert_eq!(contracts, 3, "{subject} {tier:?}");
            }
        }
        let count = |subject: &str| {
            let mut n = 0;
            s.scan_prefix(Space::Facts, &group(subject), |_, _| {
                n += 1;
                true
            })
            .unwrap();
            n
        };
        assert_eq!(count("nobody"), 0);
        // A range tombstone (how erasure deletes) hides the subject from prefix scans, in the
        // memtable and once flushed, and hides no neighbour.
        let mut del = Batch::default();
        del.delete_prefix(Space::Facts, &group("s1"));
        s.write(&del).unwrap();
        assert_eq!((count("s1"), count("s10"), count("s")), (0, 6, 6));
        s.purge(&[]).unwrap();
        assert_eq!((count("s1"), count("s10"), count("s")), (0, 6, 6));
    }

    /// A purge's range compaction is not exclusive: RocksDB's own compactions of the same space
    /// run beside it. Here a writer keeps flushing small files into the subjects' level 0, so it
    /// keeps reaching its compaction trigger, while purges of other keys of that space run; no
    /// live file holds a purged value once its purge returns, and no file at all at the end.
    #[test]
    fn a_purge_beside_background_compactions_of_its_space_leaves_nothing() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(RocksEngine::open(dir.path(), join).unwrap());
        let s = Arc::new(Store::with_engine(e.clone()));
        let value = |k: &str| format!("VALUE-OF-{k}-{}", "v".repeat(48)).into_bytes();
        let stop = Arc::new(AtomicBool::new(false));
        let flushed = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (s, e, stop, flushed) = (s.clone(), e.clone(), stop.clone(), flushed.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut b = Batch::default();
                    b.put(Space::Subjects, format!("live-{i:06}"), value(&format!("live-{i:06}")));
                    s.write(&b).unwrap();
                    e.db.flush_cf(e.cf(Space::Subjects)).unwrap();
                    flushed.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                i
            })
        };
        // The live files of the space, read now (a file compacted away meanwhile is skipped).
        let live_holding = |needle: &[u8]| -> Vec<String> {
            let files = e.db.live_files().unwrap();
            files
                .into_iter()
                .filter(|f| f.column_family_name == Space::Subjects.name())
                .filter(|f| {
                    let path = format!("{}{}", dir.path().display(), f.name);
                    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
                })
                .map(|f| f.name)
                .collect()
        };
        let gone: Vec<String> = (0..40).map(|j| format!("gone-{j:03}")).collect();
        let mut left = Vec::new();
        for k in &gone {
            let mut b = Batch::default();
            b.put(Space::Subjects, k.as_str(), value(k));
            s.write(&b).unwrap();
            e.db.flush_cf(e.cf(Space::Subjects)).unwrap();
            // Five of the writer's files after it: level 0 has passed its trigger (four files),
            // so a background compaction is scheduled or running, perhaps with this value.
            let enough = flushed.load(Ordering::Relaxed) + 5;
            while flushed.load(Ordering::Relaxed) < enough {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut d = Batch::default();
            d.delete(Space::Subjects, k.as_str());
            s.write(&d).unwrap();
            let mut end = k.as_bytes().to_vec();
            end.push(0);
            s.purge(&[(Space::Subjects, k.as_bytes().to_vec(), end)]).unwrap();
            // The purge's promise holds when it returns, not once the writer's compactions have
            // also passed over the key.
            left.extend(live_holding(&value(k)).into_iter().map(|f| (k.clone(), f)));
        }
        assert!(left.is_empty(), "purged values still in live files right after their purge: {left:?}");
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
        let background = log
            .lines()
            .filter(|l| {
                l.contains(r#""event": "compaction_started""#) && l.contains(r#""cf_name": "subjects""#) && l.contains("LevelL0FilesNum")
            })
            .count();
        assert!(background > 0, "no background compaction of the space ran ({written} files written): the test proves nothing");
        let mut files: Vec<Vec<u8>> = Vec::new();
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            files.push(std::fs::read(e.path()).unwrap());
        }
        let on_disk = |needle: &[u8]| files.iter().any(|f| f.windows(needle.len()).any(|w| w == needle));
        assert!(on_disk(&value("live-000000")), "the scan must find a live value");
        let left: Vec<&String> = gone.iter().filter(|k| on_disk(&value(k))).collect();
        assert!(left.is_empty(), "purged values still in files at the end: {left:?}");
    }

    /// The readiness probe is a real write through RocksDB's write path that leaves nothing:
    /// a healthy store takes it, a read-only one (which refuses writes) does not.
    #[test]
    fn the_write_probe_tells_a_store_that_takes_writes_from_one_that_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(RocksEngine::open(dir.path(), join).unwrap());
        let store = Store::with_engine(engine.clone());
        let mut b = Batch::default();
        b.put(Space::Keyring, b"k".to_vec(), b"v".to_vec());
        store.write(&b).unwrap();
        let seq = engine.db.latest_sequence_number();
        assert_eq!(store.write_state(), WriteState::Accepting);
        store.ready().unwrap();
        assert_eq!(engine.db.latest_sequence_number(), seq, "the probe wrote something");
        let beside = Store::open_read_only(dir.path(), join).unwrap();
        assert!(matches!(beside.write_state(), WriteState::Refused(_)), "{:?}", beside.write_state());
        assert!(beside.ready().unwrap_err().to_string().contains("refuses writes"));
    }

    #[test]
    fn second_open_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path(), join).unwrap();
        assert!(matches!(Store::open(dir.path(), join), Err(StoreError::Locked(_))));
    }
}
