//! Lookups of a subject's stored state: metadata, erasure record, DEK, contracts and consents.

use std::sync::Arc;

use qoima_keys::Dek;

use super::codec::SubjectMeta;
use super::{keyring, ConsentRecord, ContractRecord, Ctx, ErasureRecord, ErasureStatus, KekInfo, KekState, Vault, VaultError};
use crate::domain::SubjectId;
use crate::layout;
use crate::policy::{Action, SubjectFacts};
use crate::store::{Space, StoreError, Tier};

impl Vault {
    pub(super) fn meta(&self, subject: &str) -> Result<Option<SubjectMeta>, VaultError> {
        self.meta_in(Tier::Any, subject)
    }

    pub(super) fn meta_in(&self, tier: Tier, subject: &str) -> Result<Option<SubjectMeta>, VaultError> {
        Ok(self.store.get_with(tier, Space::Subjects, subject.as_bytes(), SubjectMeta::decode)?.transpose()?)
    }

    pub(super) fn erasure(&self, subject: &str) -> Result<Option<ErasureRecord>, VaultError> {
        self.erasure_in(Tier::Any, subject)
    }

    pub(super) fn erasure_in(&self, tier: Tier, subject: &str) -> Result<Option<ErasureRecord>, VaultError> {
        let record = self.store.get_with(tier, Space::Erasures, subject.as_bytes(), |v| serde_json::from_slice(v))?;
        Ok(record.transpose().map_err(|_| StoreError::Corrupt { space: "erasures", what: "record" })?)
    }

    /// The subject's metadata if it is live; else a recorded refusal (410 or 404).
    pub(super) fn live(&self, ctx: &Ctx, action: Action, subject: &SubjectId) -> Result<SubjectMeta, VaultError> {
        let s = subject.as_str();
        if let Some(e) = self.erasure(s)? {
            if e.status == ErasureStatus::Erased {
                return Err(self.refuse(ctx, action, Some(s), None, vec![], VaultError::Erased { subject: e.subject, receipt: e.receipt }));
            }
        }
        match self.meta(s)? {
            Some(m) => Ok(m),
            None => Err(self.refuse(ctx, action, Some(s), None, vec![], VaultError::subject_not_found(s))),
        }
    }

    /// The subject's DEK, from the cache or unwrapped by its KEK generation.
    pub(super) fn dek(&self, subject: &str, meta: &SubjectMeta) -> Result<Arc<Dek>, VaultError> {
        if let Some(d) = self.dek_cache.get(subject, meta.dek_version) {
            return Ok(d);
        }
        let g = meta.generation()?;
        if self.keyring.info(g).is_some_and(|i| i.state == KekState::Destroyed) {
            return Err(VaultError::KeyDestroyed { subject: subject.to_owned(), generation: g.0 });
        }
        let kek = self.keyring.get(g)?;
        let dek = Arc::new(kek.unwrap_dek(subject, meta.dek_version, &meta.wrapped_dek)?);
        self.dek_cache.insert(subject, dek.clone());
        Ok(dek)
    }

    /// Contracts and consents of a subject, and the facts the policy decides on.
    pub(super) fn facts(
        &self,
        subject: &str,
        meta: &SubjectMeta,
    ) -> Result<(SubjectFacts, Vec<ContractRecord>, Vec<ConsentRecord>), VaultError> {
        self.facts_in(Tier::Any, subject, meta)
    }

    pub(super) fn facts_in(
        &self,
        tier: Tier,
        subject: &str,
        meta: &SubjectMeta,
    ) -> Result<(SubjectFacts, Vec<ContractRecord>, Vec<ConsentRecord>), VaultError> {
        let mut contracts = Vec::new();
        let mut consents = Vec::new();
        let mut bad = false;
        self.store.scan_prefix_in(tier, Space::Facts, &layout::subject_prefix(subject), |k, v| {
            match layout::parse_fact(k) {
                Some(layout::FactKey::Contract { .. }) => match serde_json::from_slice::<ContractRecord>(v) {
                    Ok(c) => contracts.push(c),
                    Err(_) => bad = true,
                },
                Some(layout::FactKey::Consent { .. }) => match serde_json::from_slice::<ConsentRecord>(v) {
                    Ok(c) => consents.push(c),
                    Err(_) => bad = true,
                },
                _ => bad = true,
            }
            !bad
        })?;
        if bad {
            return Err(StoreError::Corrupt { space: "facts", what: "contract or consent" }.into());
        }
        let has_application =
            meta.categories.iter().any(|(c, n)| *n > 0 && self.settings.schema.category(c).is_some_and(|c| c.application));
        let facts = SubjectFacts {
            has_application,
            contracts: contracts.iter().filter_map(|c| Some((crate::domain::ContractId::parse(&c.contract).ok()?, c.status))).collect(),
            consents: consents.iter().filter_map(ConsentRecord::fact).collect(),
        };
        Ok((facts, contracts, consents))
    }

    /// KEK generations with how many DEKs each wraps.
    pub fn key_generations(&self) -> Result<Vec<(KekInfo, i64)>, VaultError> {
        self.keyring
            .infos()
            .into_iter()
            .map(|i| {
                let n = self.store.counter(Space::Keyring, &keyring::dek_count_key(qoima_keys::Generation(i.generation)))?;
                Ok((i, n))
            })
            .collect()
    }
}
