//! KEK generations as the vault keeps them: persisted wrapped by the root key, unwrapped in
//! memory, exactly one active (Tink's "primary"), the others decrypt-only or destroyed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use qoima_keys::{Generation, IndexKey, Kek, RootKey, WrappedIndexKey, WrappedKek};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::layout::{self, KekPart};
use crate::store::{Batch, Space, Store, StoreError};

use super::VaultError;

/// Where a generation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KekState {
    /// Wraps new DEKs. Exactly one generation is active.
    Active,
    /// Unwraps the DEKs it still holds; wraps nothing new.
    DecryptOnly,
    /// Key bytes zeroized and deleted; anything only it wrapped is unreadable for good.
    Destroyed,
}

/// What is known about a generation, without its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekInfo {
    pub generation: u32,
    pub state: KekState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub activated_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub retired_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub destroyed_at: Option<OffsetDateTime>,
}

// The keyring's keys are laid out in src/layout.rs; these are the names the vault's files
// know them by.

/// A generation's record ([`KekInfo`]).
pub(crate) fn meta_key(g: Generation) -> Vec<u8> {
    layout::kek(g, KekPart::Meta)
}

/// A generation's key, wrapped by the root key.
pub fn wrapped_key(g: Generation) -> Vec<u8> {
    layout::kek(g, KekPart::Wrapped)
}

/// A generation's blind-index key, wrapped by the root key.
pub(crate) fn index_key_key(g: Generation) -> Vec<u8> {
    layout::kek(g, KekPart::IndexKey)
}

/// Counter of DEKs wrapped by a generation right now.
pub(crate) fn dek_count_key(g: Generation) -> Vec<u8> {
    layout::dek_count(g)
}

/// Counter of wraps ever made with a generation (random nonces: NIST's 2^32 limit).
pub(crate) fn wrap_count_key(g: Generation) -> Vec<u8> {
    layout::wrap_count(g)
}

/// Every generation's record, read straight from a store (no root key needed).
pub fn read_infos(store: &Store) -> Result<Vec<(KekInfo, i64)>, StoreError> {
    let mut infos = Vec::new();
    let mut bad = false;
    store.scan_prefix(Space::Keyring, layout::KEKS, |k, v| {
        if matches!(layout::parse_kek(k), Some((_, KekPart::Meta))) {
            match serde_json::from_slice::<KekInfo>(v) {
                Ok(i) => infos.push(i),
                Err(_) => bad = true,
            }
        }
        !bad
    })?;
    if bad {
        return Err(StoreError::Corrupt { space: "keyring", what: "generation record" });
    }
    infos
        .into_iter()
        .map(|i| {
            let n = store.counter(Space::Keyring, &dek_count_key(Generation(i.generation)))?;
            Ok((i, n))
        })
        .collect()
}

/// The keyring escrow file: every generation's record and wrapped key (ciphertext under the
/// root key), kept beside the data directory. Backups carry no KEKs, so a restore takes them
/// from the live store or, if that is lost, from here; destroying a generation removes it from
/// both, which is what makes old backups unreadable for the DEKs it wrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escrow {
    pub format: u32,
    pub generations: Vec<EscrowEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowEntry {
    pub info: KekInfo,
    /// Hex of the wrapped KEK; absent once destroyed.
    pub wrapped: Option<String>,
    /// Hex of the generation's wrapped blind-index key; absent once destroyed (and in escrow
    /// files written before indexes existed: the vault makes one at its next start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_key: Option<String>,
}

impl Escrow {
    /// The keyring as a store holds it.
    pub fn from_store(store: &Store) -> Result<Self, StoreError> {
        let mut generations = Vec::new();
        for (info, _) in read_infos(store)? {
            let g = Generation(info.generation);
            let wrapped = store.get(Space::Keyring, &wrapped_key(g))?.map(hex::encode);
            let index_key = store.get(Space::Keyring, &index_key_key(g))?.map(hex::encode);
            generations.push(EscrowEntry { info, wrapped, index_key });
        }
        Ok(Self { format: 1, generations })
    }

    /// Writes it atomically (temporary file, fsync, rename), mode 0600.
    pub fn write(&self, path: &std::path::Path) -> Result<(), StoreError> {
        use std::io::Write;
        let err = |e: std::io::Error| StoreError::Io(format!("cannot write keyring escrow {}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("serialises")).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    pub fn read(path: &std::path::Path) -> Result<Self, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| StoreError::Io(format!("cannot read keyring escrow {}: {e}", path.display())))?;
        serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt { space: "keyring escrow", what: "file" })
    }

    /// Puts these generations into `batch`, replacing what a store holds for them.
    pub fn install(&self, batch: &mut Batch) -> Result<(), StoreError> {
        for e in &self.generations {
            let g = Generation(e.info.generation);
            batch.put(Space::Keyring, meta_key(g), serde_json::to_vec(&e.info).expect("serialises"));
            match &e.wrapped {
                Some(h) => batch.put(
                    Space::Keyring,
                    wrapped_key(g),
                    hex::decode(h).map_err(|_| StoreError::Corrupt { space: "keyring escrow", what: "wrapped key" })?,
                ),
                None => batch.delete(Space::Keyring, wrapped_key(g)),
            }
            match &e.index_key {
                Some(h) => batch.put(
                    Space::Keyring,
                    index_key_key(g),
                    hex::decode(h).map_err(|_| StoreError::Corrupt { space: "keyring escrow", what: "wrapped index key" })?,
                ),
                None => batch.delete(Space::Keyring, index_key_key(g)),
            }
        }
        Ok(())
    }
}

/// A fresh blind-index key for generation `g`, wrapped into `batch`.
fn new_index_key(root: &RootKey, g: Generation, batch: &mut Batch) -> Result<IndexKey, VaultError> {
    let key = IndexKey::generate(g)?;
    batch.put(Space::Keyring, index_key_key(g), root.wrap_index_key(&key)?.0);
    Ok(key)
}

/// A fresh active generation `g` (its KEK and its index key), its record and wrapped keys
/// added to `batch`.
fn new_generation(root: &RootKey, g: Generation, now: OffsetDateTime, batch: &mut Batch) -> Result<(Kek, IndexKey, KekInfo), VaultError> {
    let kek = Kek::generate(g)?;
    let index = new_index_key(root, g, batch)?;
    let info = KekInfo {
        generation: g.0,
        state: KekState::Active,
        created_at: now,
        activated_at: Some(now),
        retired_at: None,
        destroyed_at: None,
    };
    batch.put(Space::Keyring, meta_key(g), serde_json::to_vec(&info).expect("serialises"));
    batch.put(Space::Keyring, wrapped_key(g), root.wrap_kek(&kek)?.0);
    Ok((kek, index, info))
}

/// A rotation's new generation: its KEK and its blind-index key.
pub struct Rotated {
    pub kek: Arc<Kek>,
    pub index: Arc<IndexKey>,
}

struct Ring {
    active: Generation,
    keks: BTreeMap<Generation, Arc<Kek>>,
    /// Each live generation's blind-index key.
    index_keys: BTreeMap<Generation, Arc<IndexKey>>,
    infos: BTreeMap<Generation, KekInfo>,
    /// Wraps made (or taken, for a write still being committed) with the active generation:
    /// its stored counter at load, then counted here before each wrap. Over-counts a wrap
    /// whose batch failed, never under-counts.
    active_wraps: AtomicU64,
}

/// The in-memory keyring.
pub struct Keyring {
    root: RootKey,
    ring: RwLock<Ring>,
    /// Key administration (rotate, destroy) runs one operation at a time.
    admin: Mutex<()>,
    /// Wraps allowed under one generation (`keys.kek_wrap_limit`; NIST SP 800-38D: 2^32 with
    /// random nonces).
    wrap_limit: u64,
    /// The active generation is near (or at) its wrap limit: the vault rotates it.
    rotation_due: AtomicBool,
}

/// When a generation has made this many of its `limit` wraps, the vault rotates to a new one
/// (15/16 of it: 2^32 − 2^28 by default), so writers rarely meet the hard limit.
pub fn rotation_point(limit: u64) -> u64 {
    limit - limit / 16
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(active generation {})", self.active_generation())
    }
}

impl Keyring {
    /// Loads every generation, unwrapping the live ones with `root`; creates generation 1 in
    /// a new store. Fails if the root key does not open them.
    pub fn load_or_init(store: &Store, root: RootKey, now: OffsetDateTime, wrap_limit: u64) -> Result<Self, VaultError> {
        let mut infos: BTreeMap<Generation, KekInfo> = read_infos(store)?.into_iter().map(|(i, _)| (Generation(i.generation), i)).collect();
        if infos.is_empty() {
            let mut b = Batch::default();
            let (_, _, info) = new_generation(&root, Generation(1), now, &mut b)?;
            store.write(&b)?;
            infos.insert(Generation(1), info);
        }
        let mut keks = BTreeMap::new();
        let mut index_keys = BTreeMap::new();
        // Generations made before blind indexes existed get their index key now.
        let mut made = Batch::default();
        let mut active = None;
        for (g, info) in &infos {
            if info.state == KekState::Destroyed {
                continue;
            }
            if info.state == KekState::Active {
                active = Some(*g);
            }
            let wrapped = store
                .get(Space::Keyring, &wrapped_key(*g))?
                .ok_or(StoreError::Corrupt { space: "keyring", what: "wrapped generation missing" })?;
            let kek = root.unwrap_kek(*g, &WrappedKek(wrapped)).map_err(|e| VaultError::RootKey { generation: g.0, source: e })?;
            keks.insert(*g, Arc::new(kek));
            let index = match store.get(Space::Keyring, &index_key_key(*g))? {
                Some(w) => {
                    root.unwrap_index_key(*g, &WrappedIndexKey(w)).map_err(|e| VaultError::RootKey { generation: g.0, source: e })?
                }
                None => new_index_key(&root, *g, &mut made)?,
            };
            index_keys.insert(*g, Arc::new(index));
        }
        if !made.is_empty() {
            store.write(&made)?;
        }
        let active = active.ok_or(StoreError::Corrupt { space: "keyring", what: "no active generation" })?;
        let wraps = store.counter(Space::Keyring, &wrap_count_key(active))?.max(0) as u64;
        let wrap_limit = wrap_limit.max(1);
        Ok(Self {
            root,
            ring: RwLock::new(Ring { active, keks, index_keys, infos, active_wraps: AtomicU64::new(wraps) }),
            admin: Mutex::new(()),
            wrap_limit,
            rotation_due: AtomicBool::new(wraps >= rotation_point(wrap_limit)),
        })
    }

    /// The active KEK, to wrap one DEK with: takes one wrap of its budget. At the rotation
    /// point the vault is told to rotate; past the limit the wrap is refused (503, nothing
    /// done) until the new generation is active.
    pub fn for_wrapping(&self) -> Result<Arc<Kek>, VaultError> {
        let r = self.read();
        self.take_wrap(&r)?;
        Ok(r.keks[&r.active].clone())
    }

    /// Takes one wrap of generation `g`'s budget; `g` must be the active generation (a rewrap
    /// that finds it rotated starts a new pass).
    pub fn take_wrap_of(&self, g: Generation) -> Result<(), VaultError> {
        let r = self.read();
        if r.active != g {
            return Err(VaultError::Unavailable(super::error::Unavailable::GenerationRotated { generation: g.0 }));
        }
        self.take_wrap(&r)
    }

    fn take_wrap(&self, r: &Ring) -> Result<(), VaultError> {
        let n = r.active_wraps.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        if n >= rotation_point(self.wrap_limit) {
            self.rotation_due.store(true, Ordering::SeqCst);
        }
        if n > self.wrap_limit {
            r.active_wraps.fetch_sub(1, Ordering::SeqCst);
            return Err(VaultError::WrapLimit { generation: r.active.0, limit: self.wrap_limit });
        }
        Ok(())
    }

    /// Whether the active generation has reached its rotation point.
    pub fn rotation_due(&self) -> bool {
        self.rotation_due.load(Ordering::SeqCst)
    }

    /// Wraps made with the active generation, and the limit.
    pub fn active_wraps(&self) -> (u64, u64) {
        (self.read().active_wraps.load(Ordering::SeqCst), self.wrap_limit)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn active_generation(&self) -> Generation {
        self.read().active
    }

    /// The active KEK, which wraps new DEKs.
    pub fn active(&self) -> Arc<Kek> {
        let r = self.read();
        r.keks[&r.active].clone()
    }

    /// The KEK of generation `g`, if it is not destroyed.
    pub fn get(&self, g: Generation) -> Result<Arc<Kek>, VaultError> {
        self.read().keks.get(&g).cloned().ok_or_else(|| VaultError::Internal(super::error::Internal::GenerationUnknown { generation: g.0 }))
    }

    /// The blind-index key of the active generation, which indexes what is written now.
    pub fn active_index_key(&self) -> Arc<IndexKey> {
        let r = self.read();
        r.index_keys[&r.active].clone()
    }

    /// The blind-index key of generation `g`, if it is not destroyed.
    pub fn index_key(&self, g: Generation) -> Result<Arc<IndexKey>, VaultError> {
        self.read()
            .index_keys
            .get(&g)
            .cloned()
            .ok_or_else(|| VaultError::Internal(super::error::Internal::GenerationUnknown { generation: g.0 }))
    }

    /// The blind-index key of every live generation, oldest first: a lookup consults them all,
    /// since a subject's entries move to the active one only when the rewrap reaches it.
    pub fn index_keys(&self) -> Vec<Arc<IndexKey>> {
        self.read().index_keys.values().cloned().collect()
    }

    pub fn infos(&self) -> Vec<KekInfo> {
        self.read().infos.values().cloned().collect()
    }

    pub fn info(&self, g: Generation) -> Option<KekInfo> {
        self.read().infos.get(&g).cloned()
    }

    pub(crate) fn admin(&self) -> MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepares a rotation: a new generation, active, the old one decrypt-only. Apply the
    /// returned batch (with its audit entry), then call [`Keyring::install`]. Hold
    /// [`Keyring::admin`] across both.
    pub fn prepare_rotate(&self, now: OffsetDateTime) -> Result<(Batch, Rotated, KekInfo, Option<KekInfo>), VaultError> {
        let r = self.read();
        let next = Generation(r.infos.keys().next_back().map(|g| g.0 + 1).unwrap_or(1));
        let mut b = Batch::default();
        let (kek, index, info) = new_generation(&self.root, next, now, &mut b)?;
        let kek = Rotated { kek: Arc::new(kek), index: Arc::new(index) };
        let old = r.infos.get(&r.active).cloned().map(|mut o| {
            o.state = KekState::DecryptOnly;
            o.retired_at = Some(now);
            b.put(Space::Keyring, meta_key(r.active), serde_json::to_vec(&o).expect("serialises"));
            o
        });
        Ok((b, kek, info, old))
    }

    /// Makes a committed rotation visible.
    pub fn install(&self, new: Rotated, info: KekInfo, old: Option<KekInfo>) {
        let Rotated { kek, index } = new;
        let mut r = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let g = kek.generation();
        r.index_keys.insert(g, index);
        if let Some(o) = old {
            r.infos.insert(Generation(o.generation), o);
        }
        r.infos.insert(g, info);
        r.keks.insert(g, kek);
        r.active = g;
        // A new generation has wrapped nothing yet.
        r.active_wraps.store(0, Ordering::SeqCst);
        self.rotation_due.store(false, Ordering::SeqCst);
    }

    /// Forgets a destroyed generation's key (the `Kek` zeroizes when the last user drops it).
    pub fn forget(&self, info: KekInfo) {
        let mut r = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let g = Generation(info.generation);
        r.keks.remove(&g);
        r.index_keys.remove(&g);
        r.infos.insert(g, info);
    }

    /// Whether `root` is the root key this keyring was opened with.
    pub fn root_id(&self) -> u32 {
        self.root.id()
    }

    /// Rewraps every live generation under `new_root` into `batch` (root-key rotation).
    pub fn rewrap_all(&self, new_root: &RootKey, batch: &mut Batch) -> Result<usize, VaultError> {
        let r = self.read();
        for (g, kek) in &r.keks {
            batch.put(Space::Keyring, wrapped_key(*g), new_root.wrap_kek(kek)?.0);
        }
        for (g, key) in &r.index_keys {
            batch.put(Space::Keyring, index_key_key(*g), new_root.wrap_index_key(key)?.0);
        }
        Ok(r.keks.len())
    }
}
