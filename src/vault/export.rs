//! Exporting everything the vault holds on a subject (the right of access).

use serde::Serialize;

use super::codec::{ConsentRecord, ContractRecord, DisclosureRecord};
use super::read::FieldValues;
use super::subject_cache::SealedRef;
use super::{Ctx, Vault, VaultError};
use crate::audit;
use crate::domain::SubjectId;
use crate::layout::subject_prefix;
use crate::policy::Action;
use crate::store::{Batch, Space, Tier};

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

impl Vault {
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
}
