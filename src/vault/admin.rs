//! The security team's and auditors' operations: keys and the audit trail.

use qoima_keys::Generation;

use super::budget::{Admit, Unrecorded};
use super::codec::SubjectMeta;
use super::followup::KEYRING_PURGE_KEY;
use super::keyring::{dek_count_key, index_key_key, meta_key, wrapped_key, KekInfo, KekState};
use super::{Ctx, Vault, VaultError};
use crate::audit::{Decision, Draft};
use crate::domain::rfc3339;
use crate::policy::Action;
use crate::store::{Batch, Space};

impl Vault {
    /// May this caller see the detail of `/metrics` and `/readyz` (role monitoring or
    /// security)? A refusal is audited; a scrape is not (it reads no personal data, and a
    /// scraper every 15 s would fill the trail).
    pub fn may_observe(&self, ctx: &Ctx) -> Result<(), VaultError> {
        self.gate(ctx, Action::Observe, None)
    }

    /// Every KEK generation with how many DEKs it wraps (role security).
    pub fn keys_status(&self, ctx: &Ctx) -> Result<Vec<(KekInfo, i64)>, VaultError> {
        self.gate(ctx, Action::KeysRead, None)?;
        let out = self.key_generations()?;
        self.audit.record(self.draft(ctx, Action::KeysRead, None, "key status read"))?;
        Ok(out)
    }

    /// Makes a new KEK generation active; the previous one becomes decrypt-only. New
    /// subjects use the new generation at once; existing DEKs keep working until rewrapped.
    ///
    /// Once committed, the rotation is answered as done; if the escrow copy then fails,
    /// [`Vault::escrow_pending`] says so and it is retried in the background.
    pub fn rotate_kek(&self, ctx: &Ctx) -> Result<KekInfo, VaultError> {
        self.once(ctx, Action::KeysManage, None, || {
            self.gate(ctx, Action::KeysManage, None)?;
            let _admin = self.keyring.admin();
            self.rotate_locked(ctx, "")
        })
    }

    /// The rotation the wrap limit calls for (the vault's own, from the background follow-ups),
    /// unless one happened meanwhile.
    pub(super) fn rotate_for_wrap_limit(&self, ctx: &Ctx) -> Result<Option<KekInfo>, VaultError> {
        let _admin = self.keyring.admin();
        if !self.keyring.rotation_due() {
            return Ok(None);
        }
        let (wraps, limit) = self.keyring.active_wraps();
        let why = format!(": generation {} made {wraps} of its {limit} wraps (keys.kek_wrap_limit)", self.keyring.active_generation());
        let info = self.rotate_locked(ctx, &why)?;
        tracing::info!(generation = info.generation, "KEK rotated at its wrap limit");
        Ok(Some(info))
    }

    /// Rotates; the caller holds [`super::Keyring::admin`].
    fn rotate_locked(&self, ctx: &Ctx, why: &str) -> Result<KekInfo, VaultError> {
        let (mut batch, kek, info, old) = self.keyring.prepare_rotate(self.clock.now())?;
        self.remember(ctx, None, &mut batch, &info)?;
        let reason = format!("KEK generation {} created and activated{why}", info.generation);
        let draft = self.draft(ctx, Action::KeysManage, None, reason);
        self.audit.commit(vec![draft.named("keys.rotate")], batch)?;
        self.keyring.install(kek, info.clone(), old);
        self.escrow_or_defer();
        Ok(info)
    }

    /// Rewraps every live KEK generation under `new_root` (root-key rotation, offline). The
    /// old root key is no longer needed afterwards; the next start must use the new one.
    pub fn rotate_root(&self, ctx: &Ctx, new_root: &qoima_keys::RootKey) -> Result<usize, VaultError> {
        self.gate(ctx, Action::KeysManage, None)?;
        let _admin = self.keyring.admin();
        if new_root.id() == self.keyring.root_id() {
            return Err(VaultError::Invalid(super::error::Invalid::SameRootKey));
        }
        let mut batch = Batch::default();
        let n = self.keyring.rewrap_all(new_root, &mut batch)?;
        // Owed from this commit on, until done: no live file keeps a KEK wrapped by the old root key.
        batch.put(Space::Jobs, KEYRING_PURGE_KEY.to_vec(), vec![1]);
        let reason = format!("{n} KEK generations rewrapped under root key {:08x} (was {:08x})", new_root.id(), self.keyring.root_id());
        self.audit.commit(vec![self.draft(ctx, Action::KeysManage, None, reason).named("keys.rotate_root")], batch)?;
        // Committed: what follows is retried (at the next start, for this offline command).
        self.escrow_or_defer();
        self.keyring_purge_or_defer();
        Ok(n)
    }

    /// Destroys a KEK generation (role security): refused while it is active or still wraps
    /// any DEK; otherwise its key bytes are deleted from the store and the escrow file, the
    /// in-memory key is dropped (zeroized), and the deletion is forced down to disk.
    pub fn destroy_generation(&self, ctx: &Ctx, generation: u32) -> Result<KekInfo, VaultError> {
        self.once(ctx, Action::KeysManage, None, || self.destroy_generation_now(ctx, generation))
    }

    fn destroy_generation_now(&self, ctx: &Ctx, generation: u32) -> Result<KekInfo, VaultError> {
        self.gate(ctx, Action::KeysManage, None)?;
        let _admin = self.keyring.admin();
        let g = Generation(generation);
        let refuse = |err: VaultError| self.refuse(ctx, Action::KeysManage, None, None, vec![], err);
        let Some(mut info) = self.keyring.info(g) else {
            return Err(refuse(VaultError::NotFound(super::error::Missing::Generation { generation })));
        };
        match info.state {
            KekState::Destroyed => return Ok(info),
            KekState::Active => return Err(refuse(VaultError::Conflict(super::error::Conflict::GenerationActive { generation }))),
            KekState::DecryptOnly => {}
        }
        let counted = self.store.counter(Space::Keyring, &dek_count_key(g))?;
        if counted > 0 {
            let err = VaultError::Conflict(super::error::Conflict::GenerationInUse { generation, counted });
            return Err(refuse(err));
        }
        // The counter says none; check every subject, since destroying is forever.
        let mut found = 0u64;
        let mut bad = false;
        self.store.scan(Space::Subjects, &[], &[0xff], |_, v| {
            match SubjectMeta::decode(v).and_then(|m| m.generation()) {
                Ok(mg) if mg == g => found += 1,
                Ok(_) => {}
                Err(_) => bad = true,
            }
            !bad
        })?;
        if bad || found > 0 {
            let err = VaultError::Conflict(super::error::Conflict::GenerationStillWraps { generation, found, counted });
            return Err(refuse(err));
        }
        info.state = KekState::Destroyed;
        info.destroyed_at = Some(self.clock.now());
        let mut batch = Batch::default();
        batch.delete(Space::Keyring, wrapped_key(g));
        // Its blind-index key goes with it, and any entry still made with it (the rewrap moves
        // every subject's to the active generation, so normally there are none).
        batch.delete(Space::Keyring, index_key_key(g));
        let (from, to) = crate::layout::index_generation(g);
        batch.delete_range(Space::Index, from, to);
        batch.put(Space::Keyring, meta_key(g), serde_json::to_vec(&info).expect("serialises"));
        // Owed from this commit on, until done: the deletion forced out of the store files.
        batch.put(Space::Jobs, KEYRING_PURGE_KEY.to_vec(), vec![1]);
        let reason = format!("KEK generation {generation} destroyed");
        self.remember(ctx, None, &mut batch, &info)?;
        self.audit.commit(vec![self.draft(ctx, Action::KeysManage, None, reason).named("keys.destroy")], batch)?;
        self.keyring.forget(info.clone());
        // Committed: answered as destroyed; the escrow copy and the purge are retried if they fail
        // ([`Vault::escrow_pending`]).
        self.escrow_or_defer();
        self.keyring_purge_or_defer();
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

    /// Records a request refused for want of a valid bearer token, within the budget of
    /// `audited_auth_failures_per_second`; over it the attempt is only counted, and the count
    /// is recorded as one summary entry (before the next recorded attempt, or by
    /// [`Vault::flush_unrecorded_auth_failures`]). Either way the caller gets its 401.
    pub fn record_unauthenticated(
        &self,
        subject: Option<&str>,
        reason: &str,
        request_id: &crate::domain::RequestId,
    ) -> Result<(), VaultError> {
        self.record_auth_failure("anonymous", "auth.failed", subject, reason, request_id)
    }

    /// Records a request of a known caller refused for want of a valid subject assertion
    /// (`subject_assertion.refused`; the reason names the rule, never the token), within the
    /// same budget as [`Vault::record_unauthenticated`]: a stolen caller token cannot grow the
    /// trail without bound either.
    pub fn record_assertion_refused(&self, ctx: &Ctx, subject: Option<&str>, reason: &str) -> Result<(), VaultError> {
        self.record_auth_failure(ctx.caller.name.as_str(), "subject_assertion.refused", subject, reason, &ctx.request_id)
    }

    fn record_auth_failure(
        &self,
        caller: &str,
        action: &'static str,
        subject: Option<&str>,
        reason: &str,
        request_id: &crate::domain::RequestId,
    ) -> Result<(), VaultError> {
        let Admit::Record(earlier) = self.auth_failures.admit(self.clock.now()) else {
            return Ok(());
        };
        let subject = subject.filter(|s| crate::domain::SubjectId::parse(s).is_ok());
        let mut drafts: Vec<Draft> = earlier.iter().map(|u| self.unrecorded_summary(u)).collect();
        drafts.push(Draft {
            caller: caller.into(),
            action: action.into(),
            subject: subject.map(str::to_owned),
            purpose: None,
            fields: vec![],
            decision: Decision::Deny,
            reason: reason.into(),
            request_id: request_id.as_str().to_owned(),
            client_request_id: None,
            ..Default::default()
        });
        if let Err(e) = self.audit.commit(drafts, Batch::default()) {
            if let Some(u) = earlier {
                self.auth_failures.restore(u);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Writes the summary entry of failed authentications left unrecorded, if any (the server
    /// calls this every second, so a count never waits for the next attempt). Returns whether
    /// there was one.
    pub fn flush_unrecorded_auth_failures(&self) -> Result<bool, VaultError> {
        let Some(u) = self.auth_failures.take_unrecorded() else {
            return Ok(false);
        };
        if let Err(e) = self.audit.record(self.unrecorded_summary(&u)) {
            self.auth_failures.restore(u);
            return Err(e.into());
        }
        Ok(true)
    }

    /// Whether a summary of unrecorded failed authentications is waiting (cheap; no I/O).
    pub fn has_unrecorded_auth_failures(&self) -> bool {
        self.auth_failures.has_unrecorded()
    }

    /// Failed authentications not recorded one by one since start (for /metrics).
    pub fn unrecorded_auth_failures_total(&self) -> u64 {
        self.auth_failures.unrecorded_total()
    }

    fn unrecorded_summary(&self, u: &Unrecorded) -> Draft {
        Draft {
            caller: "anonymous".into(),
            action: "auth.failed".into(),
            subject: None,
            purpose: None,
            fields: vec![],
            decision: Decision::Deny,
            reason: format!(
                "{} failed authentication(s) from {} to {} not recorded one by one (over limits.audited_auth_failures_per_second = {})",
                u.count,
                rfc3339(u.first),
                rfc3339(u.last),
                self.auth_failures.per_second()
            ),
            request_id: "summary".into(),
            client_request_id: None,
            ..Default::default()
        }
    }
}
