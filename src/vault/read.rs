//! Reading a subject's fields for a purpose, and opening sealed records (the read path).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qoima_keys::{Dek, FieldContext};
use serde_json::Value;

use super::codec::SubjectMeta;
use super::records::{Audited, VIEW_FIELDS};
use super::views::{SealedRecords, SealedRef, SubjectView};
use super::{Ctx, Vault, VaultError};
use crate::audit;
use crate::domain::{FieldName, FieldRef, SubjectId};
use crate::policy::{self, Action, Denial};
use crate::store::{Batch, Tier};

/// Decrypted field values by name. Built only after the read's audit entry is durable.
pub type FieldValues = BTreeMap<String, Value>;

/// Decrypted fields of a read, by name, each as the JSON text it was sealed as.
pub type FieldTexts = BTreeMap<String, FieldText>;

/// One decrypted field as its JSON text, exactly as the schema wrote it before sealing. A read
/// hands it to the response as it is: no parse into a `Value` and no re-serialising (a fetch's
/// largest costs after the store and the audit entry, `docs/performance.md`). `Debug` shows
/// its length, never the value.
#[derive(Clone)]
pub struct FieldText(Box<serde_json::value::RawValue>);

impl FieldText {
    /// Checks that `plain` is one JSON value (it always is: the vault sealed it) and keeps it.
    fn from_plaintext(plain: Vec<u8>) -> Result<Self, VaultError> {
        let text = String::from_utf8(plain).map_err(|_| not_json())?;
        serde_json::value::RawValue::from_string(text).map(Self).map_err(|_| not_json())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).expect("a FieldText holds one JSON value")
    }
}

impl std::fmt::Debug for FieldText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FieldText(<{} bytes>)", self.json().len())
    }
}

impl PartialEq for FieldText {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl PartialEq<Value> for FieldText {
    fn eq(&self, other: &Value) -> bool {
        &self.to_value() == other
    }
}

impl<'de> serde::Deserialize<'de> for FieldText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(deserializer).map(Self)
    }
}

impl serde::Serialize for FieldText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A decrypted field that does not parse: the vault sealed JSON, so this is a defect.
fn not_json() -> VaultError {
    VaultError::field_not_json()
}

/// What [`Vault::look_up_read`] found.
pub(super) enum ReadLookup {
    /// With the subject's DEK, taken under the subject's lock: an erasure that runs before the
    /// records are opened has already purged the cache, and opening them adds nothing to it.
    Allowed {
        dek: Arc<Dek>,
        records: ReadRecords,
        grant: policy::Grant,
    },
    Erased(super::codec::ErasureRecord),
    Unknown,
    Denied(Denial),
    /// Allowed, but the subject's key or records do not open (a destroyed KEK generation, a
    /// key that does not unwrap, a record that does not decrypt): a failure to record.
    Failed(VaultError),
}

/// The records a read opens: those of the subject's view that the purpose (and the request)
/// let out, by position, so a cached view's ciphertexts are opened where they are.
pub(super) struct ReadRecords {
    view: Arc<SubjectView>,
    chosen: Vec<usize>,
}

impl ReadRecords {
    fn new(view: Arc<SubjectView>, wanted: impl Fn(FieldRef<'_>) -> bool) -> Self {
        let chosen = view.records.iter().enumerate().filter(|(_, r)| wanted(r.field)).map(|(i, _)| i).collect();
        Self { view, chosen }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = SealedRef<'_>> {
        self.chosen.iter().map(|i| self.view.records.get(*i))
    }
}

impl Vault {
    /// Opens `records` of `s` with `dek`, which the caller took under the subject's lock (so
    /// that no DEK is cached again after an erasure purged it).
    pub(super) fn decrypt<'r>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
    ) -> Result<FieldValues, VaultError> {
        self.decrypt_with(s, dek, records, |plain| serde_json::from_slice(&plain).map_err(|_| not_json()))
    }

    /// [`Vault::decrypt`] keeping each field's JSON text as it was sealed (the read path).
    pub(super) fn decrypt_texts<'r>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
    ) -> Result<FieldTexts, VaultError> {
        // The plaintext leaves its zeroizing buffer for the response either way, as a parsed
        // value did before.
        self.decrypt_with(s, dek, records, |mut plain| FieldText::from_plaintext(std::mem::take(&mut *plain)))
    }

    fn decrypt_with<'r, T>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
        keep: impl Fn(zeroize::Zeroizing<Vec<u8>>) -> Result<T, VaultError>,
    ) -> Result<BTreeMap<String, T>, VaultError> {
        let cipher = dek.cipher();
        let mut out = BTreeMap::new();
        for r in records {
            let field = r.field.as_str();
            let plain = cipher.open(&FieldContext { subject: s, field, record_version: r.version }, r.ciphertext)?;
            out.insert(field.to_owned(), keep(plain)?);
        }
        Ok(out)
    }

    /// Reads a subject's fields for a purpose: only if the caller is granted the purpose and
    /// its legal basis holds now, and only the fields the purpose allows (and the caller
    /// asked for, if it asked). The audit entry is durable before the values are returned.
    pub fn read(&self, ctx: &Ctx, subject: &SubjectId, purpose: &str, requested: Option<&[String]>) -> Result<FieldTexts, VaultError> {
        let (values, queued) = self.read_prepared(ctx, subject, purpose, requested, |d| self.audit.queue(vec![d], Batch::default()))?;
        queued.wait()?;
        Ok(values)
    }

    /// [`Vault::read`] for async callers: the blocking part (decision, store reads, decryption)
    /// runs now; the values come out of [`Audited::durable`] only once the audit entry is.
    pub fn read_deferred(
        &self,
        ctx: &Ctx,
        subject: &SubjectId,
        purpose: &str,
        requested: Option<&[String]>,
    ) -> Result<Audited<FieldTexts>, VaultError> {
        let (values, pending) = self.read_prepared(ctx, subject, purpose, requested, |d| self.audit.submit(vec![d], Batch::default()))?;
        Ok(Audited { value: values, pending })
    }

    /// [`Vault::read_deferred`] without blocking, for async callers to try first: it saves the
    /// hand-off to a blocking thread. It answers only an allowed read, by a caller without a
    /// read limit, of a subject whose lock is free and whose entries are in memory (memtables
    /// and block cache; `Tier::Memory`), with room in the audit queue. Otherwise it returns
    /// `None` having changed nothing (no audit entry, no budget spent), and the caller runs
    /// `read_deferred` on a blocking thread, which also records every refusal.
    pub fn try_read_now(&self, ctx: &Ctx, subject: &SubjectId, purpose: &str, requested: Option<&[String]>) -> Option<Audited<FieldTexts>> {
        let s = subject.as_str();
        let purpose = self.purpose(purpose).ok()?;
        let requested = self.parse_requested(requested).ok()?;
        // decide_read checks these again; here they spare a refused caller the store reads.
        let allowed_caller = policy::may(&ctx.caller, Action::Read).is_ok() && ctx.caller.purposes.contains(&purpose.name);
        if !allowed_caller || self.read_limits.limits(ctx.caller.name.as_str()) {
            return None;
        }
        // Decided, opened and submitted under the lock: an erasure waiting for it is committed
        // after this read's entry (its durability is awaited after the lock is let go).
        let lock = self.locks.try_lock(s)?;
        let looked = self.look_up_read(Tier::Memory, ctx, s, purpose, requested.as_deref()).ok()?;
        // A failure to open is the blocking path's to record.
        let ReadLookup::Allowed { dek, records, grant } = looked else { return None };
        let values = self.decrypt_texts(s, &dek, records.iter()).ok()?;
        let names: Vec<String> = values.keys().cloned().collect();
        let draft = self.draft(ctx, Action::Read, Some(s), grant.basis).purpose(Some(purpose.name.as_str())).fields(names);
        let pending = self.audit.try_submit(vec![draft], Batch::default(), None)?;
        drop(lock);
        self.paths.reads.in_memory.fetch_add(1, Ordering::Relaxed);
        Some(Audited { value: values, pending })
    }

    /// The blocking read: decides, opens and hands the entry to `submit` under the subject's
    /// lock (so an erasure that takes the lock next is committed after the entry), recording
    /// every refusal and every failure to open.
    fn read_prepared<P>(
        &self,
        ctx: &Ctx,
        subject: &SubjectId,
        purpose: &str,
        requested: Option<&[String]>,
        submit: impl FnOnce(audit::Draft) -> Result<P, audit::AuditError>,
    ) -> Result<(FieldTexts, P), VaultError> {
        self.paths.reads.blocking.fetch_add(1, Ordering::Relaxed);
        let s = subject.as_str();
        let purpose = self.purpose(purpose)?;
        let requested = self.parse_requested(requested)?;
        let asked: Vec<String> = requested.iter().flatten().map(|f| f.to_string()).collect();
        let p = Some(purpose.name.as_str());
        self.gate(ctx, Action::Read, Some(s))?;
        // A caller not granted the purpose learns nothing, not even whether the subject exists.
        if !ctx.caller.purposes.contains(&purpose.name) {
            return Err(self.refuse(ctx, Action::Read, Some(s), p, asked, Denial::PurposeNotGranted(purpose.name.clone()).into()));
        }
        self.read_budget(ctx, Action::Read, Some(s), p)?;
        let looked = {
            let _lock = self.locks.lock(s);
            match self.look_up_read(Tier::Any, ctx, s, purpose, requested.as_deref())? {
                ReadLookup::Allowed { dek, records, grant } => match self.decrypt_texts(s, &dek, records.iter()) {
                    Ok(values) => {
                        let names: Vec<String> = values.keys().cloned().collect();
                        let draft = self.draft(ctx, Action::Read, Some(s), grant.basis).purpose(p).fields(names);
                        return Ok((values, submit(draft)?));
                    }
                    Err(e) => ReadLookup::Failed(e),
                },
                other => other,
            }
        };
        // Refusals are recorded once the lock is let go: they hand nothing out.
        match looked {
            ReadLookup::Allowed { .. } => unreachable!("answered under the lock"),
            ReadLookup::Failed(e) => Err(self.refuse(ctx, Action::Read, Some(s), p, asked, e)),
            ReadLookup::Erased(e) => {
                let err = VaultError::Erased { subject: e.subject, receipt: e.receipt };
                Err(self.refuse(ctx, Action::Read, Some(s), None, vec![], err))
            }
            ReadLookup::Unknown => Err(self.refuse(ctx, Action::Read, Some(s), None, vec![], VaultError::subject_not_found(s))),
            ReadLookup::Denied(d) => Err(self.refuse(ctx, Action::Read, Some(s), p, asked, d.into())),
        }
    }

    /// What a read finds, under the subject's lock (the caller's), with no side effect: the
    /// subject's state, the policy's decision and, if it allows, the records the purpose lets
    /// out. Both read paths decide through here.
    pub(super) fn look_up_read(
        &self,
        tier: Tier,
        ctx: &Ctx,
        s: &str,
        purpose: &policy::PurposeDef,
        requested: Option<&[FieldName]>,
    ) -> Result<ReadLookup, VaultError> {
        let view = match self.views.get(s) {
            Some(view) => view,
            None => {
                let since = self.views.since(s);
                if let Some(e) = self.erasure_in(tier, s)? {
                    if e.status == super::ErasureStatus::Erased {
                        return Ok(ReadLookup::Erased(e));
                    }
                }
                let Some(meta) = self.meta_in(tier, s)? else { return Ok(ReadLookup::Unknown) };
                let (facts, _, _) = self.facts_in(tier, s, &meta)?;
                let fields: u64 = meta.categories.values().map(|n| u64::from(*n)).sum();
                if fields > VIEW_FIELDS {
                    // Too many records to load them all for a few: only what this read may see.
                    return self.read_uncached(tier, ctx, s, purpose, requested, meta, facts);
                }
                let records = self.load_sealed_in(tier, s, fields as usize)?;
                let view = Arc::new(SubjectView { meta, facts, records });
                // Kept only if RocksDB had it in memory (a read of the memory tier got this
                // far): its block cache decides what is hot, so reads spread over a store far
                // larger than the cache do not churn it, one view in and one out per read.
                if tier == Tier::Memory {
                    self.views.insert(s, since, view.clone());
                }
                view
            }
        };
        let grant = match policy::decide_read(&ctx.caller, purpose, &view.facts, self.clock.now()) {
            Ok(g) => g,
            Err(d) => return Ok(ReadLookup::Denied(d)),
        };
        // A destroyed KEK or a key that does not unwrap: the read fails, and says so.
        let dek = match self.dek(s, &view.meta) {
            Ok(d) => d,
            Err(e) => return Ok(ReadLookup::Failed(e)),
        };
        let records = ReadRecords::new(view, |f| purpose.allows(f) && requested.is_none_or(|r| r.iter().any(|r| r.borrowed() == f)));
        Ok(ReadLookup::Allowed { dek, records, grant })
    }

    /// [`Vault::look_up_read`] of a subject too large for the views: reads only the records
    /// the purpose (and the request) let out, and keeps nothing.
    #[allow(clippy::too_many_arguments)]
    fn read_uncached(
        &self,
        tier: Tier,
        ctx: &Ctx,
        s: &str,
        purpose: &policy::PurposeDef,
        requested: Option<&[FieldName]>,
        meta: SubjectMeta,
        facts: policy::SubjectFacts,
    ) -> Result<ReadLookup, VaultError> {
        let grant = match policy::decide_read(&ctx.caller, purpose, &facts, self.clock.now()) {
            Ok(g) => g,
            Err(d) => return Ok(ReadLookup::Denied(d)),
        };
        let records = SealedRecords::pack(self.load_records_in(tier, s, requested, |f| purpose.allows(f))?.iter().map(SealedRef::from))?;
        let dek = match self.dek(s, &meta) {
            Ok(d) => d,
            Err(e) => return Ok(ReadLookup::Failed(e)),
        };
        let records = ReadRecords::new(Arc::new(SubjectView { meta, facts, records }), |_| true);
        Ok(ReadLookup::Allowed { dek, records, grant })
    }
}
