//! The blind index: finding subjects by a field's value with no plaintext index anywhere.
//!
//! - An indexed field's value is put in its normal form ([`Schema::normalise`]) and hashed
//!   with a generation's index key ([`qoima_keys::IndexKey`], HMAC-SHA-256). The entry
//!   `v generation field \0 bucket subject` (16 bits of the index) is what a lookup scans for
//!   candidates; the subject's own record `s subject \0` lists its entries with their whole
//!   indexes: what a lookup checks a candidate against, and how the subject's next write, the
//!   rewrap and its erasure find them ([`crate::layout`]).
//! - A write changes the entries in the same batch as the records, under the subject's lock. A
//!   unique field's value is locked too, until the write is applied, so two writers of one
//!   value (two subjects) cannot both find it free: exactly one wins.
//! - New entries are made with the active generation's key; a lookup consults every live
//!   generation, since a subject's entries move to the active one only when the rewrap reaches
//!   it.
//! - Erasure deletes the entries and the own record in the subject's shred batch, and its purge
//!   compacts the own record (the only place whole indexes are) out of the files with the
//!   wrapped DEK: one range more per erasure, not one per entry (which cost more than half the
//!   erasures per second, docs/performance.md).

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

/// A subject's own record of its entries (one key, [`layout::subject_index`]): read once,
/// changed field by field (each change's entries deleted and put in a batch), written back
/// once. One record rather than one key per field: a new subject's three indexed fields cost
/// one put here, not three, and a write reads it with a point lookup, not a scan.
struct OwnEntries<'s> {
    subject: &'s str,
    entries: Vec<OwnEntry>,
    changed: bool,
}

impl<'s> OwnEntries<'s> {
    fn none(subject: &'s str) -> Self {
        Self { subject, entries: Vec::new(), changed: false }
    }

    fn decode(subject: &'s str, mut v: &[u8]) -> Option<Self> {
        let mut entries = Vec::new();
        while !v.is_empty() {
            let (g, rest) = v.split_first_chunk::<4>()?;
            let (len, rest) = rest.split_first()?;
            let (field, rest) = rest.split_at_checked(usize::from(*len))?;
            let (blind, rest) = rest.split_first_chunk::<{ layout::BLIND_LEN }>()?;
            entries.push(OwnEntry {
                generation: Generation(u32::from_be_bytes(*g)),
                field: std::str::from_utf8(field).ok()?.to_owned(),
                blind: *blind,
            });
            v = rest;
        }
        Some(Self { subject, entries, changed: false })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 64);
        for e in &self.entries {
            out.extend_from_slice(&e.generation.0.to_be_bytes());
            // Field names are at most 129 bytes (two names of 64 and a dot).
            out.push(e.field.len() as u8);
            out.extend_from_slice(e.field.as_bytes());
            out.extend_from_slice(&e.blind);
        }
        out
    }

    fn of<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a OwnEntry> + 'a {
        self.entries.iter().filter(move |e| e.field == field)
    }

    /// Whether `field`'s entries are exactly `blind` under `generation` (or none, for `None`).
    fn holds(&self, field: &str, new: Option<(Generation, &BlindIndex)>) -> bool {
        let mine: Vec<&OwnEntry> = self.of(field).collect();
        match (new, mine.as_slice()) {
            (Some((g, b)), [only]) => only.generation == g && only.blind == b.0,
            (None, []) => true,
            _ => false,
        }
    }

    /// Replaces `field`'s entries by `new`'s (none for `None`): their keys deleted and put in
    /// `batch`, the record changed in memory ([`OwnEntries::finish`] writes it).
    fn set(&mut self, batch: &mut Batch, field: &str, new: Option<(Generation, &BlindIndex)>) {
        let s = self.subject;
        for e in self.of(field) {
            batch.delete(Space::Index, layout::index_entry(e.generation, field, &e.blind, s));
        }
        self.entries.retain(|e| e.field != field);
        if let Some((generation, blind)) = new {
            // The key holds the bucket; the whole index is in the subject's own record only.
            batch.put(Space::Index, layout::index_entry(generation, field, &blind.0, s), Vec::new());
            self.entries.push(OwnEntry { generation, field: field.to_owned(), blind: blind.0 });
        }
        self.changed = true;
    }

    /// Writes the record back if it changed (deleted once it lists nothing).
    fn finish(self, batch: &mut Batch) {
        if !self.changed {
            return;
        }
        let key = layout::subject_index(self.subject);
        if self.entries.is_empty() {
            batch.delete(Space::Index, key);
        } else {
            batch.put(Space::Index, key, self.encode());
        }
    }
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
        let mut own = if created { OwnEntries::none(s) } else { self.own_entries(tier, s)? };
        let active = self.keyring.active_index_key();
        let mut changes = Batch::default();
        for v in values {
            let f = fields[v.pos].0.as_str();
            let blind = active.blind(f, v.normal.as_bytes());
            let new = Some((active.generation(), &blind));
            if own.holds(f, new) {
                // The value it already has: nothing changes, and it cannot conflict.
                continue;
            }
            if v.unique {
                if let Some(err) = self.unique_conflict(tier, s, &fields[v.pos].0, &v.normal)? {
                    return Ok(Some(err));
                }
            }
            own.set(&mut changes, f, new);
        }
        own.finish(&mut changes);
        batch.extend(changes);
        Ok(None)
    }

    /// Makes `s`'s entries for each field those of its normal form under `active` (none for
    /// `None`), into `batch`; nothing for a field whose entries already are. Returns how many
    /// fields changed. The index build's step, under the subject's lock: a field indexed again
    /// after a while unindexed may have stale entries, which this replaces.
    pub(super) fn set_entries_into(
        &self,
        s: &str,
        values: &[(&str, Option<Normalised>)],
        active: &IndexKey,
        batch: &mut Batch,
    ) -> Result<u64, VaultError> {
        let mut own = self.own_entries(Tier::Any, s)?;
        let mut changed = 0;
        for (field, normal) in values {
            let blind = normal.as_ref().map(|n| active.blind(field, n.as_bytes()));
            let new = blind.as_ref().map(|b| (active.generation(), b));
            if !own.holds(field, new) {
                own.set(batch, field, new);
                changed += 1;
            }
        }
        own.finish(batch);
        Ok(changed)
    }

    /// Whether a live subject other than `s` holds `normal` in the unique field `f`, under any
    /// live generation: the refusal, naming the field only.
    fn unique_conflict(&self, tier: Tier, s: &str, f: &FieldName, normal: &Normalised) -> Result<Option<VaultError>, VaultError> {
        let others = self.holders_in(tier, f, normal, Some(s))?;
        Ok((!others.is_empty()).then(|| VaultError::Conflict(Conflict::UniqueValue { field: f.to_string() })))
    }

    /// The live subjects holding `normal` in `f`, under any live generation.
    pub(super) fn holders(&self, f: &FieldName, normal: &Normalised) -> Result<Vec<String>, VaultError> {
        self.holders_in(Tier::Any, f, normal, None)
    }

    /// The subjects holding `normal` in `f` (other than `except`; with one, the first found
    /// only): each live generation's bucket of the value lists candidates, and a candidate's
    /// own record says whether it holds the whole index.
    fn holders_in(&self, tier: Tier, f: &FieldName, normal: &Normalised, except: Option<&str>) -> Result<Vec<String>, VaultError> {
        let mut found = BTreeSet::new();
        for key in self.keyring.index_keys() {
            let blind = key.blind(f.as_str(), normal.as_bytes());
            let prefix = layout::index_bucket(key.generation(), f.as_str(), &blind.0);
            let mut candidates = Vec::new();
            self.store.scan_prefix_in(tier, Space::Index, &prefix, |k, _| {
                if let Some(c) = layout::index_entry_subject(k, &prefix).filter(|c| Some(*c) != except) {
                    candidates.push(c.to_owned());
                }
                true
            })?;
            for c in candidates {
                let own = self.own_entries(tier, &c)?;
                if own.entries.iter().any(|e| e.generation == key.generation() && e.field == f.as_str() && e.blind == blind.0) {
                    found.insert(c);
                    if except.is_some() {
                        return Ok(found.into_iter().collect());
                    }
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Whether `s` has entries made under a generation other than `g` (the rewrap moves them).
    pub(super) fn indexed_elsewhere(&self, s: &str, g: Generation) -> Result<bool, VaultError> {
        Ok(self.own_entries(Tier::Any, s)?.entries.iter().any(|e| e.generation != g))
    }

    /// The fields `s` has entries for.
    #[cfg(test)]
    pub(super) fn own_fields(&self, s: &str) -> Result<BTreeSet<String>, VaultError> {
        Ok(self.own_entries(Tier::Any, s)?.entries.into_iter().map(|e| e.field).collect())
    }

    /// `s`'s entries, from its own record.
    fn own_entries<'s>(&self, tier: Tier, s: &'s str) -> Result<OwnEntries<'s>, VaultError> {
        let corrupt = || crate::store::StoreError::Corrupt { space: "index", what: "subject's index record" };
        match self.store.get_with(tier, Space::Index, &layout::subject_index(s), |v| OwnEntries::decode(s, v))? {
            None => Ok(OwnEntries::none(s)),
            Some(Some(own)) => Ok(own),
            Some(None) => Err(corrupt().into()),
        }
    }

    /// Deletes `s`'s entries for `fields` into `batch` (their records expired).
    pub(super) fn unindex_fields_into(&self, s: &str, fields: &BTreeSet<String>, batch: &mut Batch) -> Result<(), VaultError> {
        let mut own = self.own_entries(Tier::Any, s)?;
        for f in fields {
            if own.of(f).next().is_some() {
                own.set(batch, f, None);
            }
        }
        own.finish(batch);
        Ok(())
    }

    /// Deletes every entry of `s` into `batch` (its erasure) and returns the ranges its purge
    /// compacts: the subject's own record.
    pub(super) fn unindex_into(&self, s: &str, batch: &mut Batch) -> Result<Vec<super::erasure::KeyRange>, VaultError> {
        let own = self.own_entries(Tier::Any, s)?;
        for e in &own.entries {
            batch.delete(Space::Index, layout::index_entry(e.generation, &e.field, &e.blind, s));
        }
        // Only the own record holds whole indexes: it is what the purge compacts away. The
        // entries' keys hold a bucket and the subject id, as the engine's metadata may anyway
        // (layout.rs), and go with the next natural compaction.
        let record = layout::subject_index(s);
        batch.delete(Space::Index, record.clone());
        let ranges = vec![(Space::Index, record.clone(), key_after(record))];
        Ok(ranges)
    }

    /// Moves `s`'s entries made under other generations onto `target` (the rewrap, under the
    /// subject's lock): each such field's record is opened with the subject's DEK, its value
    /// indexed again with the target's key. Returns how many entries moved.
    pub(super) fn reindex_into(&self, s: &str, dek: &qoima_keys::Dek, target: &IndexKey, batch: &mut Batch) -> Result<u64, VaultError> {
        let mut own = self.own_entries(Tier::Any, s)?;
        let stale: Vec<String> = own.entries.iter().filter(|e| e.generation != target.generation()).map(|e| e.field.clone()).collect();
        let mut moved = 0;
        for field in &stale {
            let blind = self.stored_normal(s, field, dek)?.map(|normal| target.blind(field, normal.as_bytes()));
            own.set(batch, field, blind.as_ref().map(|b| (target.generation(), b)));
            moved += u64::from(blind.is_some());
        }
        own.finish(batch);
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

/// The range `[key, key\0)`: exactly `key`.
fn key_after(mut key: Vec<u8>) -> Vec<u8> {
    key.push(0);
    key
}
