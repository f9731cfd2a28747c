//! Writing a subject's fields: put and rectify, blocking or without blocking.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use qoima_keys::{Dek, DekVersion, FieldContext};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::cache::OwnedSubjectLock;
use super::codec::{Record, SubjectMeta};
use super::keyring::{dek_count_key, wrap_count_key};
use super::records::{Audited, VIEW_FIELDS};
use super::views::{SealedRecords, SubjectView, SubjectViews};
use super::{Ctx, Vault, VaultError};
use crate::audit;
use crate::domain::{FieldName, SubjectId};
use crate::policy::{self, Action, Denial};
use crate::store::{subject_key, Batch, Space, Tier};

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
            (_, None) => return Ok(WritePlan::Refused { err: VaultError::subject_not_found(s), names }),
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
}
