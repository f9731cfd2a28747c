//! Re-encrypting a subject's fields under a fresh DEK.

use std::sync::Arc;

use qoima_keys::{Dek, DekVersion, FieldContext};

use super::codec::{Record, SubjectMeta};
use super::keyring::{dek_count_key, wrap_count_key};
use super::{Ctx, Vault, VaultError};
use crate::domain::SubjectId;
use crate::layout::{self, subject_prefix};
use crate::policy::Action;
use crate::store::{Batch, Space, Tier};

impl Vault {
    /// Re-encrypts every field of `s` under a fresh DEK (next version, active generation),
    /// into `batch`. Record versions are kept, so the AAD binding is unchanged but for the
    /// DEK version in the header.
    pub(super) fn reencrypt(&self, tier: Tier, s: &str, meta: &mut SubjectMeta, batch: &mut Batch) -> Result<Arc<Dek>, VaultError> {
        let old = self.dek(s, meta)?;
        let old_gen = meta.generation()?;
        let kek = self.keyring.for_wrapping()?;
        let new = Dek::generate(DekVersion(meta.dek_version.0 + 1))?;
        let (oc, nc) = (old.cipher(), new.cipher());
        let mut n = 0u64;
        let mut failure = None;
        self.store.scan_prefix_in(tier, Space::Records, &subject_prefix(s), |k, v| {
            let field = crate::layout::parse_record(k).map_or("", |r| r.field);
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
        batch.put(Space::Subjects, layout::subject(s), meta.encode());
        let reason = format!("DEK rotated to version {}", meta.dek_version);
        self.remember(ctx, Some(s), &mut batch, &meta.dek_version.0)?;
        self.audit.commit(vec![self.draft(ctx, Action::Rekey, Some(s), reason)], batch)?;
        self.dek_cache.purge(s);
        self.dek_cache.insert(s, dek);
        Ok(meta.dek_version.0)
    }
}
