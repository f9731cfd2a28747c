//! Expiring technical data whose retention has passed (P3).

use std::collections::{BTreeMap, BTreeSet};

use super::codec::Record;
use super::{Ctx, Vault, VaultError};
use crate::layout;
use crate::policy::Action;
use crate::store::{Batch, Space};

impl Vault {
    /// Removes fields whose retention has passed (technical data, P3), as of the vault's
    /// clock. Returns how many fields were removed.
    pub fn sweep_expired(&self) -> Result<usize, VaultError> {
        self.sweep_idempotency()?;
        let now = self.clock.now().unix_timestamp();
        let mut due: Vec<(Vec<u8>, String, String, u64)> = Vec::new();
        let (from, to) = layout::expiry_due_by(now);
        self.store.scan(Space::Expiry, &from, &to, |k, v| {
            if let (Some(e), Ok(version)) = (layout::parse_expiry(k), v.try_into().map(u64::from_be_bytes)) {
                due.push((k.to_vec(), e.subject.to_owned(), e.field.to_owned(), version));
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
                let key = layout::record(&s, &f);
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
                batch.put(Space::Subjects, layout::subject(&s), m.encode());
            }
            // An expired value is no longer found by it.
            self.unindex_fields_into(&s, &names, &mut batch)?;
            removed += names.len();
            let draft = self.draft(&ctx, Action::Rectify, Some(&s), "retention period passed").fields(names.into_iter().collect());
            let draft = draft.named("retention.expire");
            self.audit.commit(vec![draft], batch)?;
        }
        Ok(removed)
    }
}
