//! A subject's fields: write (put, rectify), read for a purpose, disclose to a third party,
//! export everything (access, P6–P10), rekey, and expire technical data (P3).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qoima_keys::{Dek, DekVersion, FieldContext};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::cache::OwnedSubjectLock;
use super::codec::{ConsentRecord, ContractRecord, DisclosureRecord, Record, SubjectMeta};
use super::keyring::{dek_count_key, wrap_count_key};
use super::views::{SealedRecords, SealedRef, SubjectView, SubjectViews};
use super::{Ctx, Vault, VaultError};
use crate::audit;
use crate::domain::{random_hex, FieldName, FieldRef, Purpose, SubjectId};
use crate::policy::{self, Action, Denial, DisclosureBasis};
use crate::store::{subject_key, subject_prefix, Batch, Space, StoreError, Tier};

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
    VaultError::Internal("a decrypted field is not JSON".into())
}

/// A result held back until its audit entry is durable (fail closed: the value is private,
/// and the only way to it is [`Audited::durable`]).
pub struct Audited<T> {
    value: T,
    pending: audit::PendingCommit,
}

impl<T> Audited<T> {
    pub async fn durable(self) -> Result<T, VaultError> {
        self.pending.durable().await?;
        Ok(self.value)
    }
}

/// Subjects with more fields than this are read field by field, never cached whole.
const VIEW_FIELDS: u64 = 256;

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

/// What [`Vault::plan_write`] found.
enum WritePlan {
    Ready {
        batch: Batch,
        draft: audit::Draft,
        outcome: WriteOutcome,
        new_dek: Option<Arc<Dek>>,
        /// A cached subject's view as this write leaves it.
        next_view: Option<NextView>,
    },
    /// Erased or unknown: the blocking path records the refusal (with the names it was given).
    Refused { err: VaultError, names: Vec<String> },
}

/// The view of a cached subject as a planned write leaves it, to install once the write is
/// applied, under the subject's lock (so the next read finds it instead of the store's scans).
struct NextView {
    /// [`SubjectViews::clears`] when the write was planned.
    clears: u64,
    view: Arc<SubjectView>,
}

/// What an async write has the audit committer keep until its batch is applied or refused:
/// the subject's lock, and the view to install if applied, before the lock goes.
struct WriteHold {
    lock: OwnedSubjectLock,
    next: Option<(Arc<SubjectViews>, String, NextView)>,
}

impl audit::Release for WriteHold {
    fn release(self: Box<Self>, applied: bool) {
        let WriteHold { lock, next } = *self;
        if let (true, Some((views, subject, next))) = (applied, next) {
            views.install(&subject, next.clears, next.view);
        }
        drop(lock);
    }
}

/// The result of a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WriteOutcome {
    pub created: bool,
    pub version: u64,
    /// Mandatory fields (P2) the subject still lacks.
    pub missing_mandatory: Vec<String>,
}

/// A disclosure request (P10).
#[derive(Clone, Debug)]
pub struct DisclosureRequest {
    pub recipient: String,
    pub basis: DisclosureBasis,
    pub reference: Option<String>,
    pub fields: Vec<String>,
    pub abroad: bool,
}

/// Who read, received or exported which fields for which purpose: every access by one caller,
/// action and purpose (kept with the audit trail, [`audit::summary`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessSummary {
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    /// Every field any of them handed out.
    pub fields: Vec<String>,
    pub count: u64,
    pub first: String,
    pub last: String,
}

/// One of the last accesses, in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessEvent {
    pub time: String,
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
}

/// The export's view of a stored summary: its groups, and its last accesses oldest first
/// (without sequence numbers: they would tell the borrower how busy the vault is).
fn access_of(summary: audit::summary::Summary) -> (Vec<AccessSummary>, Vec<AccessEvent>) {
    let groups = summary
        .groups
        .into_iter()
        .map(|g| AccessSummary {
            caller: g.caller,
            action: g.action,
            purpose: g.purpose,
            fields: g.fields,
            count: g.count,
            first: g.first,
            last: g.last,
        })
        .collect();
    let recent = summary
        .recent
        .into_iter()
        .map(|a| AccessEvent { time: a.time, caller: a.caller, action: a.action, purpose: a.purpose, fields: a.fields })
        .collect();
    (groups, recent)
}

/// Everything the vault holds on a subject (the right of access).
#[derive(Clone, Debug, Serialize)]
pub struct Export {
    pub subject: String,
    pub version: u64,
    pub fields: FieldValues,
    pub missing_mandatory: Vec<String>,
    pub consents: Vec<ConsentRecord>,
    pub contracts: Vec<ContractRecord>,
    pub disclosures: Vec<DisclosureRecord>,
    pub access: Vec<AccessSummary>,
    /// The last [`audit::summary::RECENT`] accesses, oldest first.
    pub recent_access: Vec<AccessEvent>,
    pub policy_version: String,
    pub erasure: Option<super::ErasureRecord>,
}

fn expiry_key(at: i64, subject: &str, field: &str) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&subject_key(subject, field));
    k
}

impl Vault {
    /// Parses and type-checks fields against the schema; nothing is stored if one fails.
    fn encode_fields(&self, fields: &BTreeMap<String, Value>) -> Result<Vec<(FieldName, Vec<u8>)>, VaultError> {
        if fields.is_empty() {
            return Err(VaultError::Invalid("no fields given".into()));
        }
        fields
            .iter()
            .map(|(name, value)| {
                let f = FieldName::parse(name)?;
                let bytes = self.settings.schema.encode(&f, value)?;
                Ok((f, bytes))
            })
            .collect()
    }

    /// Stores or merges fields of a subject (role service). A new subject gets a new DEK
    /// wrapped by the active KEK generation.
    pub fn put_fields(&self, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Result<WriteOutcome, VaultError> {
        self.once(ctx, Action::PutFields, Some(subject.as_str()), || {
            let encoded = self.encode_fields(fields)?;
            self.gate(ctx, Action::PutFields, Some(subject.as_str()))?;
            self.write_gate(ctx, Action::PutFields, subject.as_str(), &encoded)?;
            self.write_fields(ctx, Action::PutFields, subject, encoded, true)
        })
    }

    /// Corrects fields (role website, P6): always allowed for a live subject, even under a
    /// hold. The new value gets a new record version; the old ciphertext is deleted.
    pub fn rectify(&self, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Result<WriteOutcome, VaultError> {
        self.once(ctx, Action::Rectify, Some(subject.as_str()), || {
            let encoded = self.encode_fields(fields)?;
            self.gate(ctx, Action::Rectify, Some(subject.as_str()))?;
            self.write_gate(ctx, Action::Rectify, subject.as_str(), &encoded)?;
            self.write_fields(ctx, Action::Rectify, subject, encoded, false)
        })
    }

    /// The policy's write decision for this caller (both write paths ask it, before any
    /// lookup): its grant, or what its purposes read.
    fn write_decision(&self, ctx: &Ctx, action: Action, fields: &[(FieldName, Vec<u8>)]) -> Result<(), Denial> {
        let writes = self.settings.write_grants.get(ctx.caller.name.as_str()).map(Vec::as_slice);
        policy::decide_write(&ctx.caller, action, writes, &self.settings.purposes, fields.iter().map(|(f, _)| f.borrowed()))
    }

    /// [`Vault::write_decision`], recording a refusal with the field names (never values).
    fn write_gate(&self, ctx: &Ctx, action: Action, s: &str, fields: &[(FieldName, Vec<u8>)]) -> Result<(), VaultError> {
        self.write_decision(ctx, action, fields).map_err(|d| {
            let names = fields.iter().map(|(f, _)| f.to_string()).collect();
            self.refuse(ctx, action, Some(s), None, names, d.into())
        })
    }

    fn write_fields(
        &self,
        ctx: &Ctx,
        action: Action,
        subject: &SubjectId,
        fields: Vec<(FieldName, Vec<u8>)>,
        create: bool,
    ) -> Result<WriteOutcome, VaultError> {
        self.paths.writes.blocking.fetch_add(1, Ordering::Relaxed);
        let s = subject.as_str();
        let names: Vec<String> = fields.iter().map(|(f, _)| f.to_string()).collect();
        let _lock = self.locks.lock(s);
        match self.plan_write(Tier::Any, ctx, action, s, &fields, names, create)? {
            WritePlan::Refused { err, names } => Err(self.refuse(ctx, action, Some(s), None, names, err)),
            WritePlan::Ready { mut batch, draft, outcome, new_dek, next_view } => {
                self.remember(ctx, Some(s), &mut batch, &outcome)?;
                self.audit.commit(vec![draft], batch)?;
                if let Some(dek) = new_dek {
                    self.cache.insert(s, dek);
                }
                if let Some(next) = next_view {
                    self.views.install(s, next.clears, next.view);
                }
                Ok(outcome)
            }
        }
    }

    /// [`Vault::put_fields`] without blocking, for async callers to try first (as
    /// [`Vault::try_read_now`] for reads). It answers only a valid write by a caller with the
    /// role, to a subject whose lock is free and whose entries are in memory, with room in the
    /// audit queue; otherwise it returns `None` having changed nothing, and the caller runs
    /// `put_fields` on a blocking thread, which also records every refusal. The subject's lock
    /// goes with the batch to the audit committer, which releases it once the batch is
    /// written: the next writer reads this one's entry even if no one awaits the result (and so
    /// does the claim on an idempotency key, whose record rides in the batch). A
    /// new subject's DEK is not cached here (the cache is filled on its first read), so an
    /// erasure that purges the cache cannot race an insert after it.
    pub fn try_put_now(&self, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Option<Audited<WriteOutcome>> {
        let encoded = self.encode_fields(fields).ok()?;
        // Refused writes go to the blocking path, which records them.
        self.write_decision(ctx, Action::PutFields, &encoded).ok()?;
        // An idempotency key is claimed here and must have no record (a replay, a key in flight:
        // the blocking path); the claim goes with the lock, once the batch with the record is.
        let claim = self.try_claim_fresh(ctx)?;
        let s = subject.as_str();
        let names: Vec<String> = encoded.iter().map(|(f, _)| f.to_string()).collect();
        let lock = self.locks.try_lock_owned(s)?;
        let WritePlan::Ready { mut batch, draft, outcome, next_view, .. } =
            self.plan_write(Tier::Memory, ctx, Action::PutFields, s, &encoded, names, true).ok()?
        else {
            return None;
        };
        self.remember(ctx, Some(s), &mut batch, &outcome).ok()?;
        let next = next_view.map(|n| (self.views.clone(), s.to_owned(), n));
        let hold = self.hold_claim(Box::new(WriteHold { lock, next }), claim);
        let pending = self.audit.try_submit(vec![draft], batch, Some(hold))?;
        self.paths.writes.in_memory.fetch_add(1, Ordering::Relaxed);
        Some(Audited { value: outcome, pending })
    }

    /// What a write of `fields` to `s` would do, under the subject's lock (the caller's), with
    /// no side effect but filling the DEK cache: the batch, its audit entry and the outcome,
    /// or the refusal to record. Both write paths plan through here.
    #[allow(clippy::too_many_arguments)]
    fn plan_write(
        &self,
        tier: Tier,
        ctx: &Ctx,
        action: Action,
        s: &str,
        fields: &[(FieldName, Vec<u8>)],
        names: Vec<String>,
        create: bool,
    ) -> Result<WritePlan, VaultError> {
        let now = self.clock.now();
        let mut batch = Batch::default();
        // A cached view is the subject as stored (the caller holds its lock, as every writer
        // does until its write is applied and the view dropped): a live subject, its entry and
        // which records it has, without the store's lookups.
        let clears = self.views.clears();
        let view = self.views.peek(s);
        let looked_up = match &view {
            Some(v) => (None, Some(v.meta.clone())),
            None => (self.erasure_in(tier, s)?, self.meta_in(tier, s)?),
        };
        let (mut meta, mut dek, created) = match looked_up {
            (Some(e), _) if e.status == super::ErasureStatus::Erased => {
                return Ok(WritePlan::Refused { err: VaultError::Erased { subject: e.subject, receipt: e.receipt }, names });
            }
            (_, Some(m)) => {
                let d = self.dek(s, &m)?;
                (m, d, false)
            }
            (_, None) if create => {
                let (m, d) = self.new_subject(s, now, &mut batch)?;
                (m, d, true)
            }
            (_, None) => return Ok(WritePlan::Refused { err: VaultError::NotFound(format!("subject {s} not found")), names }),
        };
        let mut rekeyed = false;
        if meta.seals.saturating_add(fields.len() as u64) > self.settings.dek_seal_limit {
            // The DEK has sealed as much as NIST allows with random nonces: rotate it first.
            dek = self.reencrypt(tier, s, &mut meta, &mut batch)?;
            rekeyed = true;
        }
        let version = meta.version + 1;
        let keys: Vec<Vec<u8>> = fields.iter().map(|(f, _)| subject_key(s, f.as_str())).collect();
        // A subject without an entry has no records (they go with it, in the same batch), so a
        // new one needs no lookups.
        let stored: Vec<bool> = match &view {
            _ if created => vec![false; fields.len()],
            Some(v) => fields.iter().map(|(f, _)| v.records.contains(f.as_str())).collect(),
            None => self.store.get_many_in(tier, Space::Records, &keys)?.iter().map(Option::is_some).collect(),
        };
        let cipher = dek.cipher();
        let mut sealer = cipher.sealer(fields.len())?;
        // The written records, for the view this write leaves (not when a new DEK resealed them
        // all; and only in name order, as the view keeps them — a map's fields always are).
        let in_order = fields.windows(2).all(|w| w[0].0 < w[1].0);
        let mut written = view.as_ref().filter(|_| !rekeyed && in_order).map(|_| SealedRecords::builder(fields.len()));
        for (i, ((f, bytes), key)) in fields.iter().zip(keys).enumerate() {
            let ctx = FieldContext { subject: s, field: f.as_str(), record_version: version };
            let record = Record::encode_sealed(version, now.unix_timestamp(), bytes.len(), |out| sealer.seal_into(&ctx, bytes, out))?;
            if let Some(w) = written.as_mut() {
                let (version, ciphertext) = Record::decode_parts(&record)?;
                w.push(f.borrowed(), version, ciphertext);
            }
            batch.put(Space::Records, key, record);
            if !stored[i] {
                *meta.categories.entry(f.category().to_owned()).or_default() += 1;
            }
            if let Some(days) = self.settings.schema.category(f.category()).and_then(|c| c.retention_days) {
                let at = now.unix_timestamp() + i64::from(days) * 86_400;
                batch.put(Space::Expiry, expiry_key(at, s, f.as_str()), version.to_be_bytes().to_vec());
            }
        }
        meta.version = version;
        meta.seals += fields.len() as u64;
        meta.updated_at = now.unix_timestamp();
        batch.put(Space::Subjects, s.as_bytes().to_vec(), meta.encode());
        let missing_mandatory = match &view {
            Some(v) => self.missing_mandatory_of(&names, |f| v.records.contains(f)),
            None => self.missing_mandatory(tier, (!created).then_some(s), &names)?,
        };
        let reason = if created { "subject created" } else { "fields written" };
        // The names move into the entry: no copy of them per write.
        let draft = self.draft(ctx, action, Some(s), reason).fields(names);
        let outcome = WriteOutcome { created, version, missing_mandatory };
        let next_view = match (view, written) {
            (Some(v), Some(w)) => {
                let records = v.records.merged(&w.build()?)?;
                // A subject grown past what views hold is read without one from now on.
                (records.len() as u64 <= VIEW_FIELDS)
                    .then(|| NextView { clears, view: Arc::new(SubjectView { meta, facts: v.facts.clone(), records }) })
            }
            _ => None,
        };
        Ok(WritePlan::Ready { batch, draft, outcome, new_dek: created.then_some(dek), next_view })
    }

    /// A fresh DEK for a new subject, wrapped by the active generation.
    fn new_subject(&self, s: &str, now: OffsetDateTime, batch: &mut Batch) -> Result<(SubjectMeta, Arc<Dek>), VaultError> {
        let kek = self.keyring.for_wrapping()?;
        let dek = Dek::generate(DekVersion(1))?;
        let wrapped = kek.wrap_dek(s, &dek)?;
        batch.add(Space::Keyring, dek_count_key(kek.generation()), 1);
        batch.add(Space::Keyring, wrap_count_key(kek.generation()), 1);
        let meta = SubjectMeta {
            version: 0,
            dek_version: dek.version(),
            wrapped_dek: wrapped,
            seals: 0,
            created_at: now.unix_timestamp(),
            updated_at: now.unix_timestamp(),
            categories: BTreeMap::new(),
        };
        Ok((meta, Arc::new(dek)))
    }

    /// Re-encrypts every field of `s` under a fresh DEK (next version, active generation),
    /// into `batch`. Record versions are kept, so the AAD binding is unchanged but for the
    /// DEK version in the header.
    fn reencrypt(&self, tier: Tier, s: &str, meta: &mut SubjectMeta, batch: &mut Batch) -> Result<Arc<Dek>, VaultError> {
        let old = self.dek(s, meta)?;
        let old_gen = meta.generation()?;
        let kek = self.keyring.for_wrapping()?;
        let new = Dek::generate(DekVersion(meta.dek_version.0 + 1))?;
        let (oc, nc) = (old.cipher(), new.cipher());
        let mut n = 0u64;
        let mut failure = None;
        self.store.scan_prefix_in(tier, Space::Records, &subject_prefix(s), |k, v| {
            let field = std::str::from_utf8(&k[s.len() + 1..]).unwrap_or_default();
            let step = || -> Result<Vec<u8>, VaultError> {
                let r = Record::decode(v)?;
                let ctx = FieldContext { subject: s, field, record_version: r.version };
                let plain = oc.open(&ctx, &r.ciphertext)?;
                Ok(Record { ciphertext: nc.seal(&ctx, &plain)?, ..r }.encode())
            };
            match step() {
                Ok(value) => {
                    batch.put(Space::Records, k.to_vec(), value);
                    n += 1;
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        meta.wrapped_dek = kek.wrap_dek(s, &new)?;
        meta.dek_version = new.version();
        meta.seals = n;
        batch.add(Space::Keyring, dek_count_key(old_gen), -1);
        batch.add(Space::Keyring, dek_count_key(kek.generation()), 1);
        batch.add(Space::Keyring, wrap_count_key(kek.generation()), 1);
        Ok(Arc::new(new))
    }

    /// Re-encrypts a subject's fields under a fresh DEK, atomically (role security).
    pub fn rekey(&self, ctx: &Ctx, subject: &SubjectId) -> Result<u32, VaultError> {
        self.once(ctx, Action::Rekey, Some(subject.as_str()), || self.rekey_now(ctx, subject))
    }

    fn rekey_now(&self, ctx: &Ctx, subject: &SubjectId) -> Result<u32, VaultError> {
        self.gate(ctx, Action::Rekey, Some(subject.as_str()))?;
        let s = subject.as_str();
        let _lock = self.locks.lock(s);
        let mut meta = self.live(ctx, Action::Rekey, subject)?;
        let mut batch = Batch::default();
        let dek = self.reencrypt(Tier::Any, s, &mut meta, &mut batch)?;
        meta.updated_at = self.clock.now().unix_timestamp();
        batch.put(Space::Subjects, s.as_bytes().to_vec(), meta.encode());
        let reason = format!("DEK rotated to version {}", meta.dek_version);
        self.remember(ctx, Some(s), &mut batch, &meta.dek_version.0)?;
        self.audit.commit(vec![self.draft(ctx, Action::Rekey, Some(s), reason)], batch)?;
        self.cache.purge(s);
        self.cache.insert(s, dek);
        Ok(meta.dek_version.0)
    }

    /// [`Vault::missing_mandatory`] of a subject whose stored fields `stored` tells.
    fn missing_mandatory_of(&self, writing: &[String], stored: impl Fn(&str) -> bool) -> Vec<String> {
        self.mandatory.iter().filter(|f| !writing.iter().any(|w| w == f.as_str()) && !stored(f.as_str())).map(|f| f.to_string()).collect()
    }

    /// Mandatory fields (P2) neither being written nor stored for `stored` (`None`: a subject
    /// with no records yet).
    fn missing_mandatory(&self, tier: Tier, stored: Option<&str>, writing: &[String]) -> Result<Vec<String>, VaultError> {
        let mandatory: Vec<&FieldName> = self.mandatory.iter().filter(|f| !writing.iter().any(|w| w == f.as_str())).collect();
        let Some(s) = stored else {
            return Ok(mandatory.into_iter().map(|f| f.to_string()).collect());
        };
        let keys: Vec<Vec<u8>> = mandatory.iter().map(|f| subject_key(s, f.as_str())).collect();
        let found = self.store.get_many_in(tier, Space::Records, &keys)?;
        Ok(mandatory.into_iter().zip(found).filter(|(_, v)| v.is_none()).map(|(f, _)| f.to_string()).collect())
    }

    /// Reads stored records of `s`: the named ones, or all that `keep` accepts.
    fn load_records(
        &self,
        s: &str,
        names: Option<&[FieldName]>,
        keep: impl Fn(FieldRef<'_>) -> bool,
    ) -> Result<Vec<(FieldName, Record)>, VaultError> {
        self.load_records_in(Tier::Any, s, names, keep)
    }

    fn load_records_in(
        &self,
        tier: Tier,
        s: &str,
        names: Option<&[FieldName]>,
        keep: impl Fn(FieldRef<'_>) -> bool,
    ) -> Result<Vec<(FieldName, Record)>, VaultError> {
        let mut out = Vec::new();
        match names {
            Some(names) => {
                let names: Vec<&FieldName> = names.iter().filter(|f| keep(f.borrowed())).collect();
                let keys: Vec<Vec<u8>> = names.iter().map(|f| subject_key(s, f.as_str())).collect();
                for (f, v) in names.into_iter().zip(self.store.get_many_in(tier, Space::Records, &keys)?) {
                    if let Some(v) = v {
                        out.push((f.clone(), Record::decode(&v)?));
                    }
                }
            }
            None => self.scan_records_in(tier, s, |f, v| {
                if keep(f) {
                    out.push((f.to_owned(), Record::decode(v)?));
                }
                Ok(())
            })?,
        }
        Ok(out)
    }

    /// Every record of `s`, packed as the subject cache keeps them, straight from the scan.
    fn load_sealed_in(&self, tier: Tier, s: &str, fields: usize) -> Result<SealedRecords, VaultError> {
        let mut out = SealedRecords::builder(fields);
        self.scan_records_in(tier, s, |f, v| {
            let (version, ciphertext) = Record::decode_parts(v)?;
            out.push(f, version, ciphertext);
            Ok(())
        })?;
        out.build()
    }

    /// Hands each stored record of `s`, in key order, to `each`: its name (checked) and its
    /// stored value. The first error stops the scan and is returned.
    fn scan_records_in(
        &self,
        tier: Tier,
        s: &str,
        mut each: impl FnMut(FieldRef<'_>, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), VaultError> {
        let mut failed = None;
        self.store.scan_prefix_in(tier, Space::Records, &subject_prefix(s), |k, v| {
            let step = match std::str::from_utf8(&k[s.len() + 1..]).ok().and_then(|n| FieldRef::parse(n).ok()) {
                Some(f) => each(f, v),
                None => Err(StoreError::Corrupt { space: "records", what: "field name" }),
            };
            step.map_err(|e| failed = Some(e)).is_ok()
        })?;
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

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

    fn parse_requested(&self, requested: Option<&[String]>) -> Result<Option<Vec<FieldName>>, VaultError> {
        requested
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        let f = FieldName::parse(n)?;
                        self.settings.schema.spec(&f)?;
                        Ok(f)
                    })
                    .collect::<Result<Vec<_>, VaultError>>()
            })
            .transpose()
    }

    pub(super) fn purpose(&self, name: &str) -> Result<&policy::PurposeDef, VaultError> {
        let p = Purpose::parse(name)?;
        self.settings.purposes.get(&p).ok_or_else(|| {
            let known: Vec<&str> = self.settings.purposes.0.keys().map(|p| p.as_str()).collect();
            VaultError::Invalid(format!("unknown purpose {p} (configured: {})", known.join(", ")))
        })
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
            ReadLookup::Unknown => {
                Err(self.refuse(ctx, Action::Read, Some(s), None, vec![], VaultError::NotFound(format!("subject {s} not found"))))
            }
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

    /// Discloses fields to a third party on a basis (P10), records the disclosure, and returns
    /// the disclosed values.
    pub fn disclose(&self, ctx: &Ctx, subject: &SubjectId, req: &DisclosureRequest) -> Result<(DisclosureRecord, FieldValues), VaultError> {
        self.once(ctx, Action::Disclose, Some(subject.as_str()), || self.disclose_now(ctx, subject, req))
    }

    fn disclose_now(&self, ctx: &Ctx, subject: &SubjectId, req: &DisclosureRequest) -> Result<(DisclosureRecord, FieldValues), VaultError> {
        let s = subject.as_str();
        let recipient = req.recipient.trim();
        if recipient.is_empty() || recipient.chars().count() > 200 || recipient.chars().any(char::is_control) {
            return Err(VaultError::Invalid("recipient must be 1 to 200 characters".into()));
        }
        if let Some(r) = &req.reference {
            if r.chars().count() > 500 || r.chars().any(char::is_control) {
                return Err(VaultError::Invalid("reference must be at most 500 characters".into()));
            }
        }
        if req.fields.is_empty() {
            return Err(VaultError::Invalid("a disclosure names the fields it transfers".into()));
        }
        let fields = self.parse_requested(Some(&req.fields))?.unwrap_or_default();
        let names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let purpose = self.purpose("third_party_transfer")?;
        let p = Some(purpose.name.as_str());
        self.gate(ctx, Action::Disclose, Some(s))?;
        if !ctx.caller.purposes.contains(&purpose.name) {
            return Err(self.refuse(ctx, Action::Disclose, Some(s), p, names, Denial::PurposeNotGranted(purpose.name.clone()).into()));
        }
        let not_allowed: Vec<String> = fields.iter().filter(|f| !purpose.allows(f.borrowed())).map(|f| f.to_string()).collect();
        if !not_allowed.is_empty() {
            let d = Denial::BasisMissing {
                purpose: purpose.name.clone(),
                missing: format!("fields not allowed for this purpose: {}", not_allowed.join(", ")),
            };
            return Err(self.refuse(ctx, Action::Disclose, Some(s), p, names, d.into()));
        }
        self.read_budget(ctx, Action::Disclose, Some(s), p)?;
        let now = self.clock.now();
        let lock = self.locks.lock(s);
        let meta = self.live(ctx, Action::Disclose, subject)?;
        let (facts, _, _) = self.facts(s, &meta)?;
        let grant = policy::decide_disclosure(&ctx.caller, purpose, req.basis, req.reference.as_deref(), req.abroad, &facts, now)
            .map_err(|d| self.refuse(ctx, Action::Disclose, Some(s), p, names.clone(), d.into()))?;
        let records = self.load_records(s, Some(&fields), |_| true)?;
        let opened = self.dek(s, &meta).and_then(|dek| self.decrypt(s, &dek, records.iter().map(SealedRef::from)));
        let values = match opened {
            Ok(v) => v,
            Err(e) => {
                drop(lock);
                return Err(self.refuse(ctx, Action::Disclose, Some(s), p, names, e));
            }
        };
        let record = DisclosureRecord {
            id: format!("dis_{}", random_hex::<8>()),
            recipient: recipient.to_owned(),
            basis: req.basis.as_str().to_owned(),
            reference: req.reference.clone().filter(|r| !r.trim().is_empty()),
            fields: values.keys().cloned().collect(),
            abroad: req.abroad,
            caller: ctx.caller.name.to_string(),
            time: now,
        };
        let mut key = subject_prefix(s);
        key.extend_from_slice(&now.unix_timestamp_nanos().to_be_bytes());
        key.extend_from_slice(record.id.as_bytes());
        let mut batch = Batch::default();
        batch.put(Space::Disclosures, key, serde_json::to_vec(&record).expect("serialises"));
        let reason = format!("disclosed to {} on {}", record.recipient, grant.basis);
        // The record only: a replay discloses no values. Queued under the lock: an erasure
        // that takes it next is committed after this record, and deletes it with the rest.
        self.remember(ctx, Some(s), &mut batch, &record)?;
        let queued =
            self.audit.queue(vec![self.draft(ctx, Action::Disclose, Some(s), reason).purpose(p).fields(record.fields.clone())], batch)?;
        drop(lock);
        queued.wait()?;
        Ok((record, values))
    }

    /// Everything the vault holds on a subject, in one document (role website, right of
    /// access). An erased subject exports its erasure record only.
    pub fn export(&self, ctx: &Ctx, subject: &SubjectId) -> Result<Export, VaultError> {
        let s = subject.as_str();
        self.gate(ctx, Action::Export, Some(s))?;
        self.read_budget(ctx, Action::Export, Some(s), None)?;
        let lock = self.locks.lock(s);
        let (meta, dek, records, contracts, consents, disclosures, erasure, summary) = {
            let meta = self.live(ctx, Action::Export, subject)?;
            let (_, contracts, consents) = self.facts(s, &meta)?;
            let records = self.load_records(s, None, |_| true)?;
            let mut disclosures = Vec::new();
            self.store.scan_prefix(Space::Disclosures, &subject_prefix(s), |_, v| {
                if let Ok(d) = serde_json::from_slice::<DisclosureRecord>(v) {
                    disclosures.push(d);
                }
                true
            })?;
            let dek = self.dek(s, &meta);
            (meta, dek, records, contracts, consents, disclosures, self.erasure(s)?, audit::summary::load(&self.store, s)?)
        };
        let fields = match dek.and_then(|dek| self.decrypt(s, &dek, records.iter().map(SealedRef::from))) {
            Ok(f) => f,
            Err(e) => {
                drop(lock);
                return Err(self.refuse(ctx, Action::Export, Some(s), None, vec![], e));
            }
        };
        let names: Vec<String> = fields.keys().cloned().collect();
        let missing_mandatory = self.missing_mandatory(Tier::Any, Some(s), &[])?;
        // Queued under the lock, as a read's entry is.
        let queued =
            self.audit.queue(vec![self.draft(ctx, Action::Export, Some(s), "data subject access").fields(names)], Batch::default())?;
        drop(lock);
        queued.wait()?;
        let (access, recent_access) = access_of(summary);
        Ok(Export {
            subject: s.to_owned(),
            version: meta.version,
            fields,
            missing_mandatory,
            consents,
            contracts,
            disclosures,
            access,
            recent_access,
            policy_version: self.settings.policy_version.clone(),
            erasure,
        })
    }

    /// Removes fields whose retention has passed (technical data, P3), as of the vault's
    /// clock. Returns how many fields were removed.
    pub fn sweep_expired(&self) -> Result<usize, VaultError> {
        self.sweep_idempotency()?;
        let now = self.clock.now().unix_timestamp();
        let mut due: Vec<(Vec<u8>, String, String, u64)> = Vec::new();
        self.store.scan(Space::Expiry, &[], &(now + 1).to_be_bytes(), |k, v| {
            let rest = &k[9..];
            if let (Some(zero), Ok(version)) = (rest.iter().position(|b| *b == 0), v.try_into().map(u64::from_be_bytes)) {
                let subject = String::from_utf8_lossy(&rest[..zero]).into_owned();
                let field = String::from_utf8_lossy(&rest[zero + 1..]).into_owned();
                due.push((k.to_vec(), subject, field, version));
            }
            due.len() < 10_000
        })?;
        let mut by_subject: BTreeMap<String, Vec<(Vec<u8>, String, u64)>> = BTreeMap::new();
        for (k, s, f, v) in due {
            by_subject.entry(s).or_default().push((k, f, v));
        }
        let ctx = Ctx::system();
        let mut removed = 0;
        for (s, entries) in by_subject {
            let _lock = self.locks.lock(&s);
            let mut batch = Batch::default();
            let mut meta = self.meta(&s)?;
            let mut names = BTreeSet::new();
            for (k, f, v) in entries {
                batch.delete(Space::Expiry, k);
                let key = subject_key(&s, &f);
                // Only the write that set this deadline expires; a newer write has its own.
                let current = self.store.get(Space::Records, &key)?.map(|r| Record::decode(&r)).transpose()?;
                if let (Some(r), Some(m)) = (current, meta.as_mut()) {
                    if r.version == v {
                        batch.delete(Space::Records, key);
                        if let Some(n) = m.categories.get_mut(f.split('.').next().unwrap_or_default()) {
                            *n = n.saturating_sub(1);
                        }
                        names.insert(f);
                    }
                }
            }
            if names.is_empty() {
                self.store.write(&batch)?;
                continue;
            }
            if let Some(m) = &meta {
                batch.put(Space::Subjects, s.as_bytes().to_vec(), m.encode());
            }
            removed += names.len();
            let draft = self.draft(&ctx, Action::Rectify, Some(&s), "retention period passed").fields(names.into_iter().collect());
            let draft = draft.named("retention.expire");
            self.audit.commit(vec![draft], batch)?;
        }
        Ok(removed)
    }
}
