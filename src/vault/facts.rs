//! Contracts (the legal basis for issuance and monitoring, and the hold on erasure) and
//! consents (the basis for advertising and transfers), per subject.

use time::OffsetDateTime;

use super::codec::{ConsentRecord, ContractRecord, ErasureRecord, ErasureStatus};
use super::{Ctx, Vault, VaultError};
use crate::domain::{ContractId, Purpose, SubjectId};
use crate::layout;
use crate::policy::{Action, ContractStatus};
use crate::store::{Batch, Space};

/// A consent being given.
#[derive(Clone, Debug, Default)]
pub struct ConsentRequest {
    pub purpose: String,
    /// The policy version it is given under; the current one if absent.
    pub policy_version: Option<String>,
    pub valid_until: Option<OffsetDateTime>,
    /// Covers transfer to third parties (Law 94-V art. 8); defaults to true for the transfer
    /// purpose and false otherwise.
    pub third_parties: Option<bool>,
    /// Covers transfer abroad.
    pub abroad: bool,
}

impl Vault {
    fn contract(&self, s: &str, c: &ContractId) -> Result<Option<ContractRecord>, VaultError> {
        Ok(match self.store.get(Space::Facts, &layout::contract(s, c.as_str()))? {
            Some(v) => {
                Some(serde_json::from_slice(&v).map_err(|_| crate::store::StoreError::Corrupt { space: "facts", what: "contract" })?)
            }
            None => None,
        })
    }

    /// Opens a loan contract: a legal basis for issuance and monitoring, and a hold on
    /// erasure until it is settled.
    pub fn open_contract(&self, ctx: &Ctx, subject: &SubjectId, contract: &str) -> Result<ContractRecord, VaultError> {
        self.once(ctx, Action::OpenContract, Some(subject.as_str()), || self.open_contract_now(ctx, subject, contract))
    }

    fn open_contract_now(&self, ctx: &Ctx, subject: &SubjectId, contract: &str) -> Result<ContractRecord, VaultError> {
        let s = subject.as_str();
        let c = ContractId::parse(contract)?;
        self.gate(ctx, Action::OpenContract, Some(s))?;
        let _lock = self.locks.lock(s);
        self.live(ctx, Action::OpenContract, subject)?;
        if let Some(existing) = self.contract(s, &c)? {
            let err =
                VaultError::Conflict(super::error::Conflict::ContractExists { contract: c.to_string(), status: existing.status.as_str() });
            return Err(self.refuse(ctx, Action::OpenContract, Some(s), None, vec![], err));
        }
        let now = self.clock.now();
        let record = ContractRecord { contract: c.to_string(), status: ContractStatus::Open, opened_at: now, updated_at: now };
        let mut batch = Batch::default();
        batch.put(Space::Facts, layout::contract(s, c.as_str()), serde_json::to_vec(&record).expect("serialises"));
        self.remember(ctx, Some(s), &mut batch, &record)?;
        self.audit.commit(vec![self.draft(ctx, Action::OpenContract, Some(s), format!("contract {c} opened"))], batch)?;
        Ok(record)
    }

    /// Settles or breaches a contract. Settling the last contract that holds a pending
    /// erasure runs the erasure in the same atomic write.
    pub fn update_contract(
        &self,
        ctx: &Ctx,
        subject: &SubjectId,
        contract: &str,
        status: &str,
    ) -> Result<(ContractRecord, Option<ErasureRecord>), VaultError> {
        self.once(ctx, Action::UpdateContract, Some(subject.as_str()), || self.update_contract_now(ctx, subject, contract, status))
    }

    fn update_contract_now(
        &self,
        ctx: &Ctx,
        subject: &SubjectId,
        contract: &str,
        status: &str,
    ) -> Result<(ContractRecord, Option<ErasureRecord>), VaultError> {
        let s = subject.as_str();
        let c = ContractId::parse(contract)?;
        let status = match status {
            "settled" => ContractStatus::Settled,
            "breached" => ContractStatus::Breached,
            _ => return Err(VaultError::Invalid(super::error::Invalid::ContractStatus)),
        };
        self.gate(ctx, Action::UpdateContract, Some(s))?;
        let outcome = {
            let _lock = self.locks.lock(s);
            let meta = self.live(ctx, Action::UpdateContract, subject)?;
            let Some(mut record) = self.contract(s, &c)? else {
                return Err(self.refuse(
                    ctx,
                    Action::UpdateContract,
                    Some(s),
                    None,
                    vec![],
                    VaultError::NotFound(super::error::Missing::Contract { contract: c.to_string() }),
                ));
            };
            if record.status == status {
                // Nothing changes, but the request was made and answered: it is recorded too.
                let reason = format!("contract {c} already {}: unchanged", status.as_str());
                self.audit.record(self.draft(ctx, Action::UpdateContract, Some(s), reason))?;
                return Ok((record, self.erasure(s)?));
            }
            if record.status == ContractStatus::Settled {
                let err = VaultError::Conflict(super::error::Conflict::ContractSettled { contract: c.to_string() });
                return Err(self.refuse(ctx, Action::UpdateContract, Some(s), None, vec![], err));
            }
            let now = self.clock.now();
            record.status = status;
            record.updated_at = now;
            let mut batch = Batch::default();
            batch.put(Space::Facts, layout::contract(s, c.as_str()), serde_json::to_vec(&record).expect("serialises"));
            let mut drafts = vec![self.draft(ctx, Action::UpdateContract, Some(s), format!("contract {c} {}", status.as_str()))];
            let (facts, _, _) = self.facts(s, &meta)?;
            let still_held = facts.holds().into_iter().any(|h| h != c) || status.holds();
            let erasure = match self.erasure(s)? {
                Some(mut e) if e.status == ErasureStatus::Pending && !still_held => {
                    // The last obligation is fulfilled: the pending erasure runs now (P7), by
                    // the vault, under the settling request's id.
                    self.shred_into(s, &meta, &mut e, now, &mut batch)?;
                    let by_vault =
                        Ctx { request_id: ctx.request_id.clone(), client_request_id: ctx.client_request_id.clone(), ..Ctx::system() };
                    drafts.push(self.draft(
                        &by_vault,
                        Action::RequestErasure,
                        Some(s),
                        format!("pending erasure executed: contract {c} settled"),
                    ));
                    Some(e)
                }
                other => other,
            };
            // After the shred's deletes in the batch: this request's own record stays.
            self.remember(ctx, Some(s), &mut batch, &(&record, &erasure))?;
            match &erasure {
                Some(e) if e.status == ErasureStatus::Erased => {
                    self.commit_journaled(s, "erased", now, &e.receipt.clone(), drafts, batch)?
                }
                _ => {
                    self.audit.commit(drafts, batch)?;
                }
            }
            if erasure.as_ref().is_some_and(|e| e.status == ErasureStatus::Erased) {
                self.dek_cache.purge(s);
            }
            (record, erasure)
        };
        if let (_, Some(e)) = &outcome {
            // Committed: a failed purge leaves it pending (the answer says so) and retried.
            if e.status == ErasureStatus::Erased && !e.purged && self.purge_or_defer(s) {
                return Ok((outcome.0, self.erasure(s).ok().flatten().or(outcome.1)));
            }
        }
        Ok(outcome)
    }

    /// Records a consent, with the policy version it was given under (P1).
    pub fn give_consent(&self, ctx: &Ctx, subject: &SubjectId, req: &ConsentRequest) -> Result<ConsentRecord, VaultError> {
        self.once(ctx, Action::GiveConsent, Some(subject.as_str()), || self.give_consent_now(ctx, subject, req))
    }

    fn give_consent_now(&self, ctx: &Ctx, subject: &SubjectId, req: &ConsentRequest) -> Result<ConsentRecord, VaultError> {
        let s = subject.as_str();
        let purpose = Purpose::parse(&req.purpose)?;
        if self.settings.purposes.get(&purpose).is_none() {
            return Err(VaultError::Invalid(super::error::Invalid::UnknownPurpose { purpose: purpose.to_string() }));
        }
        let policy_version = req.policy_version.clone().unwrap_or_else(|| self.settings.policy_version.clone());
        if policy_version.is_empty() || policy_version.len() > 64 || policy_version.chars().any(char::is_control) {
            return Err(VaultError::Invalid(super::error::Invalid::PolicyVersion));
        }
        let now = self.clock.now();
        if req.valid_until.is_some_and(|u| u <= now) {
            return Err(VaultError::Invalid(super::error::Invalid::ValidUntil));
        }
        self.gate(ctx, Action::GiveConsent, Some(s))?;
        let _lock = self.locks.lock(s);
        self.live(ctx, Action::GiveConsent, subject)?;
        let record = ConsentRecord {
            purpose: purpose.to_string(),
            policy_version,
            given_at: now,
            valid_until: req.valid_until,
            withdrawn_at: None,
            third_parties: req.third_parties.unwrap_or(purpose.as_str() == "third_party_transfer"),
            abroad: req.abroad,
            recorded_by: ctx.caller.name.to_string(),
        };
        let mut batch = Batch::default();
        batch.put(Space::Facts, layout::consent(s, purpose.as_str()), serde_json::to_vec(&record).expect("serialises"));
        let reason = format!("consent given under policy {}", record.policy_version);
        self.remember(ctx, Some(s), &mut batch, &record)?;
        self.audit.commit(vec![self.draft(ctx, Action::GiveConsent, Some(s), reason).purpose(Some(purpose.as_str()))], batch)?;
        Ok(record)
    }

    /// Withdraws a consent; the next read for that purpose is refused.
    pub fn withdraw_consent(&self, ctx: &Ctx, subject: &SubjectId, purpose: &str) -> Result<ConsentRecord, VaultError> {
        self.once(ctx, Action::WithdrawConsent, Some(subject.as_str()), || self.withdraw_consent_now(ctx, subject, purpose))
    }

    fn withdraw_consent_now(&self, ctx: &Ctx, subject: &SubjectId, purpose: &str) -> Result<ConsentRecord, VaultError> {
        let s = subject.as_str();
        let purpose = Purpose::parse(purpose)?;
        // Before anything is recorded: a refusal naming any well-formed purpose would let a
        // client write audit entries about purposes that do not exist.
        if self.settings.purposes.get(&purpose).is_none() {
            return Err(VaultError::Invalid(super::error::Invalid::UnknownPurpose { purpose: purpose.to_string() }));
        }
        self.gate(ctx, Action::WithdrawConsent, Some(s))?;
        let _lock = self.locks.lock(s);
        self.live(ctx, Action::WithdrawConsent, subject)?;
        let key = layout::consent(s, purpose.as_str());
        let Some(v) = self.store.get(Space::Facts, &key)? else {
            let err = VaultError::NotFound(super::error::Missing::Consent { purpose: purpose.to_string() });
            return Err(self.refuse(ctx, Action::WithdrawConsent, Some(s), Some(purpose.as_str()), vec![], err));
        };
        let mut record: ConsentRecord =
            serde_json::from_slice(&v).map_err(|_| crate::store::StoreError::Corrupt { space: "facts", what: "consent" })?;
        if record.withdrawn_at.is_some() {
            // Nothing changes, but the request was made and answered: it is recorded too.
            let draft = self.draft(ctx, Action::WithdrawConsent, Some(s), "consent already withdrawn: unchanged");
            self.audit.record(draft.purpose(Some(purpose.as_str())))?;
            return Ok(record);
        }
        record.withdrawn_at = Some(self.clock.now());
        let mut batch = Batch::default();
        batch.put(Space::Facts, key, serde_json::to_vec(&record).expect("serialises"));
        self.remember(ctx, Some(s), &mut batch, &record)?;
        self.audit
            .commit(vec![self.draft(ctx, Action::WithdrawConsent, Some(s), "consent withdrawn").purpose(Some(purpose.as_str()))], batch)?;
        Ok(record)
    }
}
