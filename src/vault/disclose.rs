//! Disclosing fields to a third party on a basis (P10).

use super::codec::DisclosureRecord;
use super::read::{audited_names, views_of, FieldValues};
use super::subject_cache::SealedRef;
use super::{Ctx, Vault, VaultError};
use crate::domain::{random_hex, SubjectId};
use crate::layout;
use crate::policy::{self, Action, Denial, DisclosureBasis};
use crate::store::{Batch, Space};

/// A disclosure request (P10).
#[derive(Clone, Debug)]
pub struct DisclosureRequest {
    pub recipient: String,
    pub basis: DisclosureBasis,
    pub reference: Option<String>,
    pub fields: Vec<String>,
    pub abroad: bool,
}

impl Vault {
    /// Discloses fields to a third party on a basis (P10), records the disclosure, and returns
    /// the disclosed values.
    pub fn disclose(&self, ctx: &Ctx, subject: &SubjectId, req: &DisclosureRequest) -> Result<(DisclosureRecord, FieldValues), VaultError> {
        self.once(ctx, Action::Disclose, Some(subject.as_str()), || self.disclose_now(ctx, subject, req))
    }

    fn disclose_now(&self, ctx: &Ctx, subject: &SubjectId, req: &DisclosureRequest) -> Result<(DisclosureRecord, FieldValues), VaultError> {
        let s = subject.as_str();
        let recipient = req.recipient.trim();
        if recipient.is_empty() || recipient.chars().count() > 200 || recipient.chars().any(char::is_control) {
            return Err(VaultError::Invalid(super::error::Invalid::Recipient));
        }
        if let Some(r) = &req.reference {
            if r.chars().count() > 500 || r.chars().any(char::is_control) {
                return Err(VaultError::Invalid(super::error::Invalid::Reference));
            }
        }
        if req.fields.is_empty() {
            return Err(VaultError::Invalid(super::error::Invalid::DisclosureFields));
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
        // A field the transfer purpose has only as a view is disclosed through it, never whole.
        let opened =
            self.dek(s, &meta).and_then(|dek| self.decrypt_viewed(s, &dek, records.iter().map(SealedRef::from), views_of(purpose)));
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
            fields: audited_names(purpose, values.keys()),
            abroad: req.abroad,
            caller: ctx.caller.name.to_string(),
            time: now,
        };
        let key = layout::disclosure(s, now.unix_timestamp_nanos(), &record.id);
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
}
