//! Reading a subject's fields for a purpose, and opening sealed records (the read path): one
//! [`Vault::read`] in either [`Mode`]; what the fast mode bought is in [`super::answer`].

use std::collections::BTreeMap;
use std::sync::Arc;

use qoima_keys::{Dek, FieldContext};
use serde_json::Value;

use super::answer::{Answer, Mode, Refused};
use super::records::VIEW_FIELDS;
use super::subject_cache::{SealedRecords, SealedRef, SubjectView};
use super::{Ctx, Vault, VaultError};
use crate::domain::{FieldName, FieldRef, SubjectId};
use crate::policy::{self, Action, Denial, View};
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

    /// `view` of the decrypted JSON text `plain`, as a JSON string. The whole value lives only
    /// in `plain` (the decryption's zeroizing buffer) and one copy zeroized once masked
    /// (serde_json's scratch space for unescaping a string with escapes aside).
    fn viewed(plain: &[u8], view: View) -> Result<Self, VaultError> {
        let masked = serde_json::to_string(&masked(plain, view)?).expect("a string serialises");
        serde_json::value::RawValue::from_string(masked).map(Self).map_err(|_| not_json())
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

/// `view` of the decrypted JSON text `plain`: of the string it holds or, for a value that is
/// not a string (sealed as a number before a schema change made its field text), of its JSON
/// text.
fn masked(plain: &[u8], view: View) -> Result<String, VaultError> {
    match serde_json::from_slice::<String>(plain) {
        Ok(whole) => Ok(view.apply(&zeroize::Zeroizing::new(whole))),
        Err(_) => {
            let raw: &serde_json::value::RawValue = serde_json::from_slice(plain).map_err(|_| not_json())?;
            Ok(view.apply(raw.get()))
        }
    }
}

/// A decrypted field that does not parse: the vault sealed JSON, so this is a defect.
fn not_json() -> VaultError {
    VaultError::field_not_json()
}

/// What a read finds under the subject's lock ([`Vault::look_up_read`]).
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

/// One read's question, checked: which subject, for which permitted purpose, which fields.
pub(super) struct ReadRequest<'a> {
    pub(super) subject: &'a str,
    pub(super) permit: policy::ReadPermit<'a>,
    /// The fields asked for (`None`: all the purpose allows).
    pub(super) requested: Option<&'a [FieldName]>,
}

impl ReadRequest<'_> {
    /// Whether this read lets `f` out: the purpose allows it, and it was asked for (if any were).
    fn wants(&self, f: FieldRef<'_>) -> bool {
        self.permit.purpose().allows(f) && self.requested.is_none_or(|r| r.iter().any(|r| r.borrowed() == f))
    }
}

/// What [`Vault::decrypt_texts`] asks of each field: the view `purpose` shows it through. A
/// purpose without views (the shipped four) answers without looking at its entries again.
pub(super) fn views_of(purpose: &policy::PurposeDef) -> impl Fn(FieldRef<'_>) -> Option<View> + '_ {
    let any = purpose.has_views();
    move |f| if any { purpose.view(f) } else { None }
}

/// The names an access's audit entry records: a field shown through a view as `field:view`
/// (`identity.iin:last4`), so the trail says what was seen.
pub(super) fn audited_names<'n>(purpose: &policy::PurposeDef, names: impl Iterator<Item = &'n String>) -> Vec<String> {
    let views = views_of(purpose);
    names
        .map(|n| match views(FieldRef::of_parsed(n)) {
            Some(v) => format!("{n}:{}", v.as_str()),
            None => n.clone(),
        })
        .collect()
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
        self.decrypt_viewed(s, dek, records, |_| None)
    }

    /// [`Vault::decrypt`] showing the fields `view_of` names only through their view.
    pub(super) fn decrypt_viewed<'r>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
        view_of: impl Fn(FieldRef<'_>) -> Option<View>,
    ) -> Result<FieldValues, VaultError> {
        self.decrypt_with(s, dek, records, |field, plain| match view_of(field) {
            None => serde_json::from_slice(&plain).map_err(|_| not_json()),
            Some(view) => masked(&plain, view).map(Value::String),
        })
    }

    /// [`Vault::decrypt_viewed`] keeping each field's JSON text as it was sealed (the read
    /// path). A field read in full costs what it did before views existed: `view_of` is asked,
    /// nothing more.
    pub(super) fn decrypt_texts<'r>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
        view_of: impl Fn(FieldRef<'_>) -> Option<View>,
    ) -> Result<FieldTexts, VaultError> {
        // The plaintext leaves its zeroizing buffer for the response either way, as a parsed
        // value did before; a view's is masked straight from the buffer.
        self.decrypt_with(s, dek, records, |field, mut plain| match view_of(field) {
            None => FieldText::from_plaintext(std::mem::take(&mut *plain)),
            Some(view) => FieldText::viewed(&plain, view),
        })
    }

    fn decrypt_with<'r, T>(
        &self,
        s: &str,
        dek: &Dek,
        records: impl IntoIterator<Item = SealedRef<'r>>,
        keep: impl Fn(FieldRef<'_>, zeroize::Zeroizing<Vec<u8>>) -> Result<T, VaultError>,
    ) -> Result<BTreeMap<String, T>, VaultError> {
        let cipher = dek.cipher();
        let mut out = BTreeMap::new();
        for r in records {
            let field = r.field.as_str();
            let plain = cipher.open(&FieldContext { subject: s, field, record_version: r.version }, r.ciphertext)?;
            out.insert(field.to_owned(), keep(r.field, plain)?);
        }
        Ok(out)
    }

    /// Reads a subject's fields for a purpose: only if the caller is granted the purpose and
    /// its legal basis holds now, and only the fields the purpose allows (and the caller asked
    /// for, if it asked). The values come out of the [`Answer`] only once the read's audit
    /// entry is durable; a refusal's error, once the refusal's is. In [`Mode::NoWait`] a read
    /// by a caller with a read limit, of data not in memory or of a subject being written,
    /// would block.
    pub fn read(&self, mode: Mode, ctx: &Ctx, subject: &SubjectId, purpose: &str, requested: Option<&[String]>) -> Answer<FieldTexts> {
        let answer: Answer<_> = self.read_in(mode, ctx, subject, purpose, requested).into();
        self.answer_paths.reads.count(mode, &answer);
        answer
    }

    fn read_in(
        &self,
        mode: Mode,
        ctx: &Ctx,
        subject: &SubjectId,
        purpose: &str,
        requested: Option<&[String]>,
    ) -> Result<Answer<FieldTexts>, VaultError> {
        let s = subject.as_str();
        let purpose = self.purpose(purpose)?;
        let requested = self.parse_requested(requested)?;
        let p = Some(purpose.name.as_str());
        let asked = || requested.iter().flatten().map(|f| f.to_string()).collect::<Vec<String>>();
        let refused = |purpose, fields| Refused { ctx, action: Action::Read, subject: Some(s), purpose, fields };
        // A caller refused here learns nothing, not even whether the subject exists.
        let permit = match policy::permit_read(&ctx.caller, purpose) {
            Ok(permit) => permit,
            Err(d @ Denial::Role { .. }) => return Ok(self.refusal(mode, refused(None, vec![]), d.into())),
            Err(d) => return Ok(self.refusal(mode, refused(p, asked()), d.into())),
        };
        let caller = ctx.caller.name.as_str();
        // The budget is spent on the blocking path only, so a NoWait attempt that stops
        // short has spent nothing.
        if mode == Mode::NoWait && self.read_limits.limits(caller) {
            return Err(VaultError::WouldBlock);
        }
        if let Err((per_minute, retry_after_secs)) = self.read_limits.admit(caller, self.clock.now()) {
            let e = VaultError::RateLimited { caller: caller.to_owned(), per_minute, retry_after_secs };
            return Ok(self.refusal(mode, refused(p, vec![]), e));
        }
        let req = ReadRequest { subject: s, permit, requested: requested.as_deref() };
        let looked = {
            // Decided, opened and submitted under the lock: an erasure waiting for it is
            // committed after this read's entry (whose durability is awaited after the lock).
            let _lock = match mode {
                Mode::NoWait => self.locks.try_lock(s).ok_or(VaultError::WouldBlock)?,
                Mode::Wait => self.locks.lock(s),
            };
            match self.look_up_read(mode.tier(), &req)? {
                ReadLookup::Allowed { dek, records, grant } => match self.decrypt_texts(s, &dek, records.iter(), views_of(purpose)) {
                    Ok(values) => {
                        let names = audited_names(purpose, values.keys());
                        let draft = self.draft(ctx, Action::Read, Some(s), grant.basis).purpose(p).fields(names);
                        let commit = self.submit(mode, vec![draft], Batch::default(), None)?;
                        return Ok(Answer::after(commit, Ok(values)));
                    }
                    Err(e) => ReadLookup::Failed(e),
                },
                other => other,
            }
        };
        // Refusals are recorded once the lock is let go: they hand nothing out.
        Ok(match looked {
            ReadLookup::Allowed { .. } => unreachable!("answered under the lock"),
            ReadLookup::Failed(e) => self.refusal(mode, refused(p, asked()), e),
            ReadLookup::Erased(e) => {
                self.refusal(mode, refused(None, vec![]), VaultError::Erased { subject: e.subject, receipt: e.receipt })
            }
            ReadLookup::Unknown => self.refusal(mode, refused(None, vec![]), VaultError::subject_not_found(s)),
            ReadLookup::Denied(d) => self.refusal(mode, refused(p, asked()), d.into()),
        })
    }

    /// What a read finds, under the subject's lock (the caller's), with no side effect but
    /// filling the caches: the subject's state, the basis's decision and, if it holds, the
    /// records the read lets out.
    pub(super) fn look_up_read(&self, tier: Tier, req: &ReadRequest<'_>) -> Result<ReadLookup, VaultError> {
        let s = req.subject;
        let view = match self.subject_cache.get(s) {
            Some(view) => view,
            None => {
                let since = self.subject_cache.since(s);
                if let Some(e) = self.erasure_in(tier, s)? {
                    if e.status == super::ErasureStatus::Erased {
                        return Ok(ReadLookup::Erased(e));
                    }
                }
                let Some(meta) = self.meta_in(tier, s)? else { return Ok(ReadLookup::Unknown) };
                let (facts, _, _) = self.facts_in(tier, s, &meta)?;
                let fields: u64 = meta.categories.values().map(|n| u64::from(*n)).sum();
                let view = if fields > VIEW_FIELDS {
                    // Too many records to load them all for a few: only what this read may
                    // see, and nothing kept.
                    let records = self.load_records_in(tier, s, req.requested, |f| req.permit.purpose().allows(f))?;
                    let records = SealedRecords::pack(records.iter().map(SealedRef::from))?;
                    Arc::new(SubjectView { meta, facts, records })
                } else {
                    let records = self.load_sealed_in(tier, s, fields as usize)?;
                    let view = Arc::new(SubjectView { meta, facts, records });
                    // Kept only if RocksDB had it in memory (a read of the memory tier got
                    // this far): its block cache decides what is hot, so reads spread over a
                    // store far larger than the cache do not churn it, one view in and one out
                    // per read.
                    if tier == Tier::Memory {
                        self.subject_cache.insert(s, since, view.clone());
                    }
                    view
                };
                view
            }
        };
        let grant = match req.permit.basis(&view.facts, self.clock.now()) {
            Ok(g) => g,
            Err(d) => return Ok(ReadLookup::Denied(d)),
        };
        // A destroyed KEK or a key that does not unwrap: the read fails, and says so.
        let dek = match self.dek(s, &view.meta) {
            Ok(d) => d,
            Err(e) => return Ok(ReadLookup::Failed(e)),
        };
        Ok(ReadLookup::Allowed { dek, records: ReadRecords::new(view, |f| req.wants(f)), grant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_applies_to_the_sealed_json_text() {
        let text = |plain: &str, view| FieldText::viewed(plain.as_bytes(), view).unwrap().json().to_owned();
        assert_eq!(text(r#""900101300017""#, View::Last4), r#""********0017""#);
        assert_eq!(text(r#""1990-01-01""#, View::Year), r#""1990""#);
        // The view sees the string, not its escapes, and the result is escaped again.
        assert_eq!(text(r#""\u0410\"b\\cdef""#, View::Last4), r#""****cdef""#);
        assert_eq!(text(r#""ab\"\\cd""#, View::Last4), r#""**\"\\cd""#);
        // A value that is not a string (sealed before a schema change made its field text) is
        // masked as its JSON text, and the result is a string all the same.
        assert_eq!(text("350000", View::Last4), r#""**0000""#);
        assert!(FieldText::viewed(b"not json", View::Last4).is_err());
    }
}
