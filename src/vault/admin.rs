//! The security team's and auditors' operations: keys and the audit trail.

use super::keyring::KekInfo;
use super::{Ctx, Vault, VaultError};
use crate::audit::Decision;
use crate::policy::Action;

impl Vault {
    /// Every KEK generation with how many DEKs it wraps (role security).
    pub fn keys_status(&self, ctx: &Ctx) -> Result<Vec<(KekInfo, i64)>, VaultError> {
        self.gate(ctx, Action::KeysRead, None)?;
        let out = self.key_generations()?;
        self.audit.record(self.draft(ctx, Action::KeysRead, None, "key status read"))?;
        Ok(out)
    }

    /// Makes a new KEK generation active; the previous one becomes decrypt-only. New
    /// subjects use the new generation at once; existing DEKs keep working until rewrapped.
    pub fn rotate_kek(&self, ctx: &Ctx) -> Result<KekInfo, VaultError> {
        self.gate(ctx, Action::KeysManage, None)?;
        let _admin = self.keyring.admin();
        let (batch, kek, info, old) = self.keyring.prepare_rotate(self.clock.now())?;
        let reason = format!("KEK generation {} created and activated", info.generation);
        let draft = self.draft(ctx, Action::KeysManage, None, reason);
        self.audit.commit(vec![draft.named("keys.rotate")], batch)?;
        self.keyring.install(kek, info.clone(), old);
        Ok(info)
    }
}

impl Vault {
    /// Audit entries matching `q` (roles auditor, security). Reading the trail is audited too.
    pub fn audit_entries(&self, ctx: &Ctx, mut q: crate::audit::Query) -> Result<Vec<crate::audit::AuditEntry>, VaultError> {
        self.gate(ctx, Action::AuditRead, q.subject.as_deref())?;
        q.limit = q.limit.clamp(1, 1000);
        let entries = crate::audit::query(&self.store, &q)?;
        let reason = format!("{} audit entries read", entries.len());
        self.audit.record(self.draft(ctx, Action::AuditRead, q.subject.as_deref(), reason))?;
        Ok(entries)
    }

    /// Recomputes the audit chain (roles auditor, security).
    pub fn audit_verify(&self, ctx: &Ctx, anchor: Option<(u64, &str)>) -> Result<crate::audit::Verification, VaultError> {
        self.gate(ctx, Action::AuditRead, None)?;
        let v = crate::audit::verify(&self.store, anchor)?;
        let reason = if v.ok { format!("chain verified: {} entries", v.entries) } else { "chain verification FAILED".to_string() };
        let draft = self.draft(ctx, Action::AuditRead, None, reason);
        self.audit.record(draft.named("audit.verify"))?;
        Ok(v)
    }

    /// Records a request refused for want of a valid bearer token.
    pub fn record_unauthenticated(
        &self,
        subject: Option<&str>,
        reason: &str,
        request_id: &crate::domain::RequestId,
    ) -> Result<(), VaultError> {
        let subject = subject.filter(|s| crate::domain::SubjectId::parse(s).is_ok());
        self.audit.record(crate::audit::Draft {
            caller: "anonymous".into(),
            action: "auth.failed",
            subject: subject.map(str::to_owned),
            purpose: None,
            fields: vec![],
            decision: Decision::Deny,
            reason: reason.into(),
            request_id: request_id.as_str().to_owned(),
        })?;
        Ok(())
    }
}
