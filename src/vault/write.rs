//! Writing a subject's fields: put and rectify, one write in either [`Mode`]; what the fast mode
//! bought is in [`super::answer`].

use std::collections::BTreeMap;
use std::sync::Arc;

use qoima_keys::{Dek, DekVersion, FieldContext};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::answer::{Answer, Mode, Refused};
use super::codec::{Record, SubjectMeta};
use super::idempotency::{Claim, Keyed};
use super::index::IndexedValue;
use super::keyring::{dek_count_key, wrap_count_key};
use super::records::VIEW_FIELDS;
use super::subject_cache::{SealedRecords, SubjectView};
use super::subject_locks::OwnedSubjectLock;
use super::{Ctx, Vault, VaultError};
use crate::audit::{self, AfterCommit};
use crate::domain::{FieldName, SubjectId};
use crate::layout;
use crate::policy::{self, Action, Denial};
use crate::store::{Batch, Space, Tier};

/// What [`Vault::plan_write`] found.
// `Ready` is every write's plan and is larger than the rare refusal; boxing it would cost an
// allocation per write.
#[allow(clippy::large_enum_variant)]
pub(super) enum WritePlan {
    Ready {
        batch: Batch,
        draft: audit::Draft,
        outcome: WriteOutcome,
        new_dek: Option<Arc<Dek>>,
        /// A cached subject's view as this write leaves it.
        next_view: Option<NextView>,
    },
    /// Erased or unknown: a refusal to record.
    Refused { err: VaultError },
}

/// The view of a cached subject as a planned write leaves it, to install once the write is
/// applied, under the subject's lock (so the next read finds it instead of the store's scans).
pub(super) struct NextView {
    /// [`SubjectCache::clears`](super::subject_cache::SubjectCache::clears) when the write was planned.
    clears: u64,
    view: Arc<SubjectView>,
}

/// One write's question, checked: who writes which parsed fields to which subject.
pub(super) struct WriteRequest<'a> {
    pub ctx: &'a Ctx,
    pub action: Action,
    pub subject: &'a str,
    pub fields: &'a [(FieldName, Vec<u8>)],
    /// The written values of indexed fields ([`Vault::indexed_values`]).
    pub indexed: &'a [IndexedValue],
    /// Whether an unknown subject is created (a put) or refused (a rectify).
    pub create: bool,
}

/// What a write holds until its batch is applied (for what dropping it does): the subject's
/// lock, the claim on its idempotency key, the locks on the unique values it writes.
struct Held {
    _lock: OwnedSubjectLock,
    _claim: Option<Claim>,
    _value_locks: Vec<OwnedSubjectLock>,
}

/// The result of a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WriteOutcome {
    pub created: bool,
    pub version: u64,
    /// Mandatory fields (P2) the subject still lacks.
    pub missing_mandatory: Vec<String>,
}

impl Vault {
    /// Parses and type-checks fields against the schema; nothing is stored if one fails.
    pub(super) fn encode_fields(&self, fields: &BTreeMap<String, Value>) -> Result<Vec<(FieldName, Vec<u8>)>, VaultError> {
        if fields.is_empty() {
            return Err(VaultError::no_fields());
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
    pub fn put_fields(&self, mode: Mode, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Answer<WriteOutcome> {
        self.write(mode, Action::PutFields, ctx, subject, fields)
    }

    /// Corrects fields (role website, P6): always allowed for a live subject, even under a
    /// hold. The new value gets a new record version; the old ciphertext is deleted.
    pub fn rectify(&self, mode: Mode, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Answer<WriteOutcome> {
        self.write(mode, Action::Rectify, ctx, subject, fields)
    }

    /// The write of both: the outcome comes out of the [`Answer`] once the batch with its
    /// audit entry is durable. The subject's lock (and the claim on an idempotency key) go
    /// with the batch to the audit committer, which lets them go once it is applied, after
    /// installing what the write leaves in the caches: the next writer reads this one's entry
    /// even if no one awaits the answer, and an erasure (which takes the lock) cannot race
    /// the caching of a new subject's DEK. In [`Mode::NoWait`] a subject not in memory or
    /// being written, a used idempotency key or a full audit queue would block.
    fn write(&self, mode: Mode, action: Action, ctx: &Ctx, subject: &SubjectId, fields: &BTreeMap<String, Value>) -> Answer<WriteOutcome> {
        let answer: Answer<_> = self.write_in(mode, action, ctx, subject, fields).into();
        self.answer_paths.writes.count(mode, &answer);
        answer
    }

    fn write_in(
        &self,
        mode: Mode,
        action: Action,
        ctx: &Ctx,
        subject: &SubjectId,
        fields: &BTreeMap<String, Value>,
    ) -> Result<Answer<WriteOutcome>, VaultError> {
        let s = subject.as_str();
        let encoded = self.encode_fields(fields)?;
        let refused = |fields| Refused { ctx, action, subject: Some(s), purpose: None, fields };
        let names = || encoded.iter().map(|(f, _)| f.to_string()).collect::<Vec<String>>();
        if let Err(d) = policy::may(&ctx.caller, action) {
            return Ok(self.refusal(mode, refused(vec![]), d.into()));
        }
        let claim = match self.claim_key::<WriteOutcome>(mode, ctx, action, Some(s))? {
            Keyed::Answered(answer) => return Ok(answer),
            Keyed::Fresh(claim) => claim,
        };
        if let Err(d) = self.write_decision(ctx, action, &encoded) {
            return Ok(self.refusal(mode, refused(names()), d.into()));
        }
        let lock = match mode {
            Mode::NoWait => self.locks.try_lock_owned(s).ok_or(VaultError::WouldBlock)?,
            Mode::Wait => self.locks.lock_owned(s),
        };
        // Unique values are locked after the subject (always in this order), held like it.
        let indexed = self.indexed_values(&encoded);
        let value_locks = self.value_locks.lock(mode, &encoded, &indexed)?;
        let req = WriteRequest { ctx, action, subject: s, fields: &encoded, indexed: &indexed, create: action == Action::PutFields };
        match self.plan_write(mode.tier(), &req)? {
            WritePlan::Refused { err } => {
                drop((value_locks, lock));
                Ok(self.refusal(mode, refused(names()), err))
            }
            WritePlan::Ready { mut batch, draft, outcome, new_dek, next_view } => {
                self.remember(ctx, Some(s), &mut batch, &outcome)?;
                let after = self.after_write(s, Held { _lock: lock, _claim: claim, _value_locks: value_locks }, new_dek, next_view);
                let commit = self.submit(mode, vec![draft], batch, Some(after))?;
                Ok(Answer::after(commit, Ok(outcome)))
            }
        }
    }

    /// What the committer does once a write's batch is applied or refused: caches what the
    /// write left if applied (a new subject's DEK, a cached subject's next view), then lets the
    /// subject's lock and the key's claim go (`held`: whatever the write holds until then).
    pub(super) fn after_write(&self, s: &str, held: impl Send + 'static, new_dek: Option<Arc<Dek>>, next: Option<NextView>) -> AfterCommit {
        let caches = (new_dek.is_some() || next.is_some()).then(|| (self.dek_cache.clone(), self.subject_cache.clone(), s.to_owned()));
        Box::new(move |applied| {
            if let (true, Some((deks, views, subject))) = (applied, caches) {
                if let Some(next) = next {
                    views.install(&subject, next.clears, next.view);
                }
                if let Some(dek) = new_dek {
                    deks.insert_owned(subject, dek);
                }
            }
            drop(held);
        })
    }

    /// The policy's write decision for this caller, before any lookup: its grant, or what its
    /// purposes read.
    pub(super) fn write_decision(&self, ctx: &Ctx, action: Action, fields: &[(FieldName, Vec<u8>)]) -> Result<(), Denial> {
        let writes = self.settings.write_grants.get(ctx.caller.name.as_str()).map(Vec::as_slice);
        policy::decide_write(&ctx.caller, action, writes, &self.settings.purposes, fields.iter().map(|(f, _)| f.borrowed()))
    }

    /// What the write `req` would do, under the subject's lock (the caller's), with no side
    /// effect but filling the DEK cache: the batch, its audit entry and the outcome, or the
    /// refusal to record.
    pub(super) fn plan_write(&self, tier: Tier, req: &WriteRequest<'_>) -> Result<WritePlan, VaultError> {
        let WriteRequest { ctx, action, subject: s, fields, indexed, create } = *req;
        let now = self.clock.now();
        let mut batch = Batch::default();
        // A cached view is the subject as stored (the caller holds its lock, as every writer
        // does until its write is applied and the view dropped): a live subject, its entry and
        // which records it has, without the store's lookups.
        let clears = self.subject_cache.clears();
        let view = self.subject_cache.peek(s);
        let looked_up = match &view {
            Some(v) => (None, Some(v.meta.clone())),
            None => (self.erasure_in(tier, s)?, self.meta_in(tier, s)?),
        };
        let (mut meta, mut dek, created) = match looked_up {
            (Some(e), _) if e.status == super::ErasureStatus::Erased => {
                return Ok(WritePlan::Refused { err: VaultError::Erased { subject: e.subject, receipt: e.receipt } });
            }
            (_, Some(m)) => {
                let d = self.dek(s, &m)?;
                (m, d, false)
            }
            (_, None) if create => {
                let (m, d) = self.new_subject(s, now, &mut batch)?;
                (m, d, true)
            }
            (_, None) => return Ok(WritePlan::Refused { err: VaultError::subject_not_found(s) }),
        };
        if let Some(err) = self.index_write(tier, s, fields, indexed, created, &mut batch)? {
            // A unique value another subject holds: nothing is stored (a new subject's DEK, in
            // `batch`, goes with it; its wrap stays counted, as a failed batch's does).
            return Ok(WritePlan::Refused { err });
        }
        let mut rekeyed = false;
        if meta.seals.saturating_add(fields.len() as u64) > self.settings.dek_seal_limit {
            // The DEK has sealed as much as NIST allows with random nonces: rotate it first.
            dek = self.reencrypt(tier, s, &mut meta, &mut batch)?;
            rekeyed = true;
        }
        let version = meta.version + 1;
        let keys: Vec<Vec<u8>> = fields.iter().map(|(f, _)| layout::record(s, f.as_str())).collect();
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
                batch.put(Space::Expiry, layout::expiry(at, s, f.as_str()), version.to_be_bytes().to_vec());
            }
        }
        meta.version = version;
        meta.seals += fields.len() as u64;
        meta.updated_at = now.unix_timestamp();
        batch.put(Space::Subjects, layout::subject(s), meta.encode());
        let names: Vec<String> = fields.iter().map(|(f, _)| f.to_string()).collect();
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
}
