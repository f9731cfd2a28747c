//! The blind index: finding subjects by a field's value with no plaintext index anywhere.
//!
//! - An indexed field's value is put in its normal form ([`Schema::normalise`]) and hashed
//!   with a generation's index key ([`qoima_keys::IndexKey`], HMAC-SHA-256). The entry
//!   `v generation field \0 index subject` is what a lookup scans; the subject's own record
//!   `s subject \0 generation field` (holding the index) is how its next write, the rewrap and
//!   its erasure find it ([`crate::layout`]).
//! - A write changes the entries in the same batch as the records, under the subject's lock. A
//!   unique field's value is locked too, until the write is applied, so two writers of one
//!   value (two subjects) cannot both find it free: exactly one wins.
//! - New entries are made with the active generation's key; a lookup consults every live
//!   generation, since a subject's entries move to the active one only when the rewrap reaches
//!   it.
//! - Erasure deletes the entries in the subject's shred batch, and its purge compacts them out
//!   of the files with the wrapped DEK.

use qoima_keys::{BlindIndex, Generation, IndexKey};
use serde_json::Value;
use std::collections::BTreeSet;

use super::answer::Mode;
use super::error::{Conflict, Invalid};
use super::subject_locks::{OwnedSubjectLock, SubjectLocks};
use super::{Ctx, Vault, VaultError};
use crate::domain::FieldName;
use crate::layout;
use crate::policy::{self, Action};
use crate::schema::Normalised;
use crate::store::{Batch, Space, Tier};

/// A written value of an indexed field, in its normal form.
pub(super) struct IndexedValue {
    /// Its position in the write's fields.
    pub(super) pos: usize,
    pub(super) unique: bool,
    normal: Normalised,
}

/// An entry of a subject's, as its own record holds it.
struct OwnEntry {
    generation: Generation,
    field: String,
    blind: [u8; layout::BLIND_LEN],
}

/// The locks on unique values being written: striped like the subjects' (a table of their own,
/// so a subject's stripe and a value's never meet), named by a keyed hash under a key of this
/// process only, so no value, and no index the store holds, is ever a lock's name.
pub(super) struct ValueLocks {
    locks: SubjectLocks,
    key: IndexKey,
}

impl ValueLocks {
    pub(super) fn new() -> Result<Self, VaultError> {
        Ok(Self { locks: SubjectLocks::new(1024), key: IndexKey::generate(Generation(0))? })
    }

    /// The lock names of the unique values among `values` (of `fields`): a keyed hash of the
    /// field and value, under this process's key.
    pub(super) fn names(&self, fields: &[(FieldName, Vec<u8>)], values: &[IndexedValue]) -> Vec<String> {
        values.iter().filter(|v| v.unique).map(|v| hex::encode(self.key.blind(fields[v.pos].0.as_str(), v.normal.as_bytes()).0)).collect()
    }

    /// Locks the unique values among `values` (of `fields`), to hold until the write is applied.
    pub(super) fn lock(
        &self,
        mode: Mode,
        fields: &[(FieldName, Vec<u8>)],
        values: &[IndexedValue],
    ) -> Result<Vec<OwnedSubjectLock>, VaultError> {
        self.lock_names(mode, &self.names(fields, values))
    }

    /// Locks `names` (of [`ValueLocks::names`]), all at once, in stripe order.
    pub(super) fn lock_names(&self, mode: Mode, names: &[String]) -> Result<Vec<OwnedSubjectLock>, VaultError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        match mode {
            Mode::NoWait => self.locks.try_lock_many_owned(names.iter().map(String::as_str)).ok_or(VaultError::WouldBlock),
            Mode::Wait => Ok(self.locks.lock_many_owned(names.iter().map(String::as_str))),
        }
    }
}

impl Vault {
    /// The written values of indexed fields, in their normal form. A stored value whose normal
    /// form fails its check (a text of blanks) is simply not indexed: it was a valid write.
    pub(super) fn indexed_values(&self, fields: &[(FieldName, Vec<u8>)]) -> Vec<IndexedValue> {
        let indexes = &self.settings.indexes;
        if indexes.is_empty() {
            return Vec::new();
        }
        fields
            .iter()
            .enumerate()
            .filter_map(|(pos, (f, json))| {
                let spec = indexes.iter().find(|i| &i.field == f)?;
                let normal = self.settings.schema.normalise_text(f, json).ok()?;
                Some(IndexedValue { pos, unique: spec.unique, normal })
            })
            .collect()
    }

    /// Adds to `batch` what writing `values` (of `fields`) does to subject `s`'s entries, under
    /// the subject's lock and the unique values' ([`ValueLocks`]): its old entries for those
    /// fields go, the new ones come, made with the active generation's key. A unique value
    /// another live subject holds is the refusal returned (nothing is added then); `created`
    /// says the subject is new (it has no entries yet).
    pub(super) fn index_write(
        &self,
        tier: Tier,
        s: &str,
        fields: &[(FieldName, Vec<u8>)],
        values: &[IndexedValue],
        created: bool,
        batch: &mut Batch,
    ) -> Result<Option<VaultError>, VaultError> {
        if values.is_empty() {
            return Ok(None);
        }
        let own = if created { Vec::new() } else { self.own_entries(tier, s)? };
        let active = self.keyring.active_index_key();
        let mut changes = Batch::default();
        for v in values {
            let f = fields[v.pos].0.as_str();
            let blind = active.blind(f, v.normal.as_bytes());
            let mine: Vec<&OwnEntry> = own.iter().filter(|e| e.field == f).collect();
            if let [only] = mine.as_slice() {
                if only.generation == active.generation() && only.blind == blind.0 {
                    // The value it already has: nothing changes, and it cannot conflict.
                    continue;
                }
            }
            if v.unique {
                if let Some(err) = self.unique_conflict(tier, s, &fields[v.pos].0, &v.normal)? {
                    return Ok(Some(err));
                }
            }
            replace_entries(&mut changes, s, f, &mine, Some((active.generation(), &blind)));
        }
        batch.extend(changes);
        Ok(None)
    }

    /// Makes `s`'s entries for `field` those of `normal` under `active` (none for `None`), into
    /// `batch`; nothing if they already are. Returns whether they change. The index build's
    /// step, under the subject's lock: a field indexed again after a while unindexed may have
    /// stale entries, which this replaces.
    pub(super) fn set_entries_into(
        &self,
        s: &str,
        field: &str,
        normal: Option<&Normalised>,
        active: &IndexKey,
        batch: &mut Batch,
    ) -> Result<bool, VaultError> {
        let own = self.own_entries(Tier::Any, s)?;
        let mine: Vec<&OwnEntry> = own.iter().filter(|e| e.field == field).collect();
        let blind = normal.map(|n| active.blind(field, n.as_bytes()));
        let current = match (&blind, mine.as_slice()) {
            (Some(b), [only]) => only.generation == active.generation() && only.blind == b.0,
            (None, []) => true,
            _ => false,
        };
        if !current {
            replace_entries(batch, s, field, &mine, blind.as_ref().map(|b| (active.generation(), b)));
        }
        Ok(!current)
    }

    /// Whether a live subject other than `s` holds `normal` in the unique field `f`, under any
    /// live generation: the refusal, naming the field only.
    fn unique_conflict(&self, tier: Tier, s: &str, f: &FieldName, normal: &Normalised) -> Result<Option<VaultError>, VaultError> {
        for key in self.keyring.index_keys() {
            let blind = key.blind(f.as_str(), normal.as_bytes());
            let prefix = layout::index_bucket(key.generation(), f.as_str(), &blind.0);
            let mut other = false;
            self.store.scan_prefix_in(tier, Space::Index, &prefix, |k, v| {
                other = v == blind.0 && layout::index_entry_subject(k, &prefix).is_some_and(|holder| holder != s);
                !other
            })?;
            if other {
                return Ok(Some(VaultError::Conflict(Conflict::UniqueValue { field: f.to_string() })));
            }
        }
        Ok(None)
    }

    /// The live subjects holding `normal` in `f`, under any live generation.
    pub(super) fn holders(&self, f: &FieldName, normal: &Normalised) -> Result<Vec<String>, VaultError> {
        let mut found = BTreeSet::new();
        for key in self.keyring.index_keys() {
            let blind = key.blind(f.as_str(), normal.as_bytes());
            let prefix = layout::index_bucket(key.generation(), f.as_str(), &blind.0);
            self.store.scan_prefix(Space::Index, &prefix, |k, v| {
                if let Some(s) = layout::index_entry_subject(k, &prefix).filter(|_| v == blind.0) {
                    found.insert(s.to_owned());
                }
                true
            })?;
        }
        Ok(found.into_iter().collect())
    }

    /// Whether `s` has entries made under a generation other than `g` (the rewrap moves them).
    pub(super) fn indexed_elsewhere(&self, s: &str, g: Generation) -> Result<bool, VaultError> {
        Ok(self.own_entries(Tier::Any, s)?.iter().any(|e| e.generation != g))
    }

    /// The fields `s` has entries for.
    #[cfg(test)]
    pub(super) fn own_fields(&self, s: &str) -> Result<BTreeSet<String>, VaultError> {
        Ok(self.own_entries(Tier::Any, s)?.into_iter().map(|e| e.field).collect())
    }

    /// `s`'s entries, from its own records.
    fn own_entries(&self, tier: Tier, s: &str) -> Result<Vec<OwnEntry>, VaultError> {
        let prefix = layout::subject_indexes(s);
        let mut out = Vec::new();
        let mut bad = false;
        self.store.scan_prefix_in(tier, Space::Index, &prefix, |k, v| {
            match (layout::parse_subject_index(k, &prefix), <[u8; layout::BLIND_LEN]>::try_from(v)) {
                (Some((generation, field)), Ok(blind)) => out.push(OwnEntry { generation, field: field.to_owned(), blind }),
                _ => bad = true,
            }
            !bad
        })?;
        if bad {
            return Err(crate::store::StoreError::Corrupt { space: "index", what: "subject's index record" }.into());
        }
        Ok(out)
    }

    /// Deletes `s`'s entries for `fields` into `batch` (their records expired).
    pub(super) fn unindex_fields_into(&self, s: &str, fields: &BTreeSet<String>, batch: &mut Batch) -> Result<(), VaultError> {
        for e in self.own_entries(Tier::Any, s)?.iter().filter(|e| fields.contains(&e.field)) {
            batch.delete(Space::Index, layout::index_entry(e.generation, &e.field, &e.blind, s));
            batch.delete(Space::Index, layout::subject_index(s, e.generation, &e.field));
        }
        Ok(())
    }

    /// Deletes every entry of `s` into `batch` (its erasure) and returns the ranges its purge
    /// compacts: each entry's key and the subject's own records.
    pub(super) fn unindex_into(&self, s: &str, batch: &mut Batch) -> Result<Vec<super::erasure::KeyRange>, VaultError> {
        let own = self.own_entries(Tier::Any, s)?;
        let mut ranges = Vec::with_capacity(own.len() + 1);
        for e in &own {
            let key = layout::index_entry(e.generation, &e.field, &e.blind, s);
            batch.delete(Space::Index, key.clone());
            ranges.push((Space::Index, key.clone(), key_after(key)));
        }
        let prefix = layout::subject_indexes(s);
        batch.delete_prefix(Space::Index, &prefix);
        ranges.push((Space::Index, prefix.clone(), crate::store::prefix_end(&prefix)));
        Ok(ranges)
    }

    /// Moves `s`'s entries made under other generations onto `target` (the rewrap, under the
    /// subject's lock): each such field's record is opened with the subject's DEK, its value
    /// indexed again with the target's key. Returns how many entries moved.
    pub(super) fn reindex_into(&self, s: &str, dek: &qoima_keys::Dek, target: &IndexKey, batch: &mut Batch) -> Result<u64, VaultError> {
        let own = self.own_entries(Tier::Any, s)?;
        let mut moved = 0;
        for e in own.iter().filter(|e| e.generation != target.generation()) {
            batch.delete(Space::Index, layout::index_entry(e.generation, &e.field, &e.blind, s));
            batch.delete(Space::Index, layout::subject_index(s, e.generation, &e.field));
            let Some(normal) = self.stored_normal(s, &e.field, dek)? else { continue };
            put_entry(batch, target.generation(), &e.field, &target.blind(&e.field, normal.as_bytes()), s);
            moved += 1;
        }
        Ok(moved)
    }

    /// The normal form of `s`'s stored `field`, opened with `dek`; `None` if it has no such
    /// record any more, or no normal form.
    pub(super) fn stored_normal(&self, s: &str, field: &str, dek: &qoima_keys::Dek) -> Result<Option<Normalised>, VaultError> {
        let Ok(f) = FieldName::parse(field) else { return Ok(None) };
        let Some(raw) = self.store.get(Space::Records, &layout::record(s, field))? else { return Ok(None) };
        let (version, ciphertext) = super::codec::Record::decode_parts(&raw)?;
        let ctx = qoima_keys::FieldContext { subject: s, field, record_version: version };
        let plain = dek.cipher().open(&ctx, ciphertext)?;
        Ok(self.settings.schema.normalise_text(&f, &plain).ok())
    }

    /// Subjects whose `field` holds `value` (role service), for `purpose`: the caller must be
    /// granted the purpose, the purpose must read the field in full, and the field must be
    /// indexed. Only live subjects for whom the purpose's legal basis holds now are named;
    /// none is `[]`. Audited as `subject.lookup` with the field, the purpose and the number of
    /// matches, never the value; counts against the caller's read limit. Blocking.
    pub fn lookup(&self, ctx: &Ctx, field: &str, value: &Value, purpose: &str) -> Result<Vec<String>, VaultError> {
        let refuse = |p: Option<&str>, fields: Vec<String>, e: VaultError| self.refuse(ctx, Action::Lookup, None, p, fields, e);
        let f = FieldName::parse(field).map_err(|e| refuse(None, vec![], e.into()))?;
        let def = self.purpose(purpose).map_err(|e| refuse(None, vec![f.to_string()], e))?;
        let p = Some(def.name.as_str());
        let permit = policy::permit_lookup(&ctx.caller, def, f.borrowed()).map_err(|d| match d {
            d @ policy::Denial::Role { .. } => refuse(None, vec![], d.into()),
            d => refuse(p, vec![f.to_string()], d.into()),
        })?;
        if !self.settings.indexes.iter().any(|i| i.field == f) {
            return Err(refuse(p, vec![f.to_string()], VaultError::Invalid(Invalid::NotIndexed { field: f.to_string() })));
        }
        let normal = self.settings.schema.normalise(&f, value).map_err(|e| refuse(p, vec![f.to_string()], e.into()))?;
        self.read_budget(ctx, Action::Lookup, None, p)?;
        if let Some(err) = self.index_building(&f)? {
            return Err(refuse(p, vec![f.to_string()], err));
        }
        let found = self.holders(&f, &normal)?;
        drop(normal);
        let now = self.clock.now();
        let mut subjects = Vec::with_capacity(found.len());
        for s in found {
            // Erased since (its entries go in its shred batch), or without a basis for this
            // purpose now: not named.
            let Some(meta) = self.meta(&s)? else { continue };
            let (facts, _, _) = self.facts(&s, &meta)?;
            if permit.basis(&facts, now).is_ok() {
                subjects.push(s);
            }
        }
        let reason = match subjects.len() {
            1 => "1 subject matched".to_string(),
            n => format!("{n} subjects matched"),
        };
        self.audit.record(self.draft(ctx, Action::Lookup, None, reason).purpose(p).fields(vec![f.to_string()]))?;
        Ok(subjects)
    }
}

/// Deletes `old` (`s`'s entries for `field`) and puts `new`'s, into `batch`.
fn replace_entries(batch: &mut Batch, s: &str, field: &str, old: &[&OwnEntry], new: Option<(Generation, &BlindIndex)>) {
    for e in old {
        batch.delete(Space::Index, layout::index_entry(e.generation, field, &e.blind, s));
        batch.delete(Space::Index, layout::subject_index(s, e.generation, field));
    }
    if let Some((generation, blind)) = new {
        put_entry(batch, generation, field, blind, s);
    }
}

/// `s`'s entry for `field`'s `blind` under `generation`, and its own record of it.
pub(super) fn put_entry(batch: &mut Batch, generation: Generation, field: &str, blind: &BlindIndex, s: &str) {
    batch.put(Space::Index, layout::index_entry(generation, field, &blind.0, s), blind.0.to_vec());
    batch.put(Space::Index, layout::subject_index(s, generation, field), blind.0.to_vec());
}

/// The range `[key, key\0)`: exactly `key`.
fn key_after(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}
