//! Erasure is crypto-shredding (policy clause P7; docs/erasure-and-backups.md): the subject's wrapped DEK and
//! every ciphertext are deleted in one batch, cached keys purged, then the key ranges are
//! flushed and compacted so no live store file holds the wrapped DEK. An erasure record stays
//! forever, and every erasure is also appended to a journal outside the data directory so a
//! restore from an older backup replays it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::codec::{ErasureRecord, ErasureStatus, SubjectMeta};
use super::journal::JournalEntry;
use super::keyring::{dek_count_key, KekState};
use super::{Ctx, Vault, VaultError};
use crate::domain::{random_hex, rfc3339, SubjectId};
use crate::layout::{self, subject_prefix};
use crate::policy::Action;
use crate::store::{Batch, Space, StoreError};

/// A key range of one space, `[from, to)`, as a purge compacts it.
pub(super) type KeyRange = (Space, Vec<u8>, Vec<u8>);

/// Erasures waiting for their purge, and whose turn it is to run one.
#[derive(Default)]
pub(super) struct PurgeQueue {
    pub(super) queue: Mutex<std::collections::BTreeSet<String>>,
    /// The index entries each shred deleted, as the ranges its purge compacts. A subject
    /// queued without them (its shred ran before a restart) has the whole index space purged.
    index_ranges: Mutex<std::collections::BTreeMap<String, Vec<KeyRange>>>,
    turn: Mutex<()>,
}

impl Vault {
    /// Requests erasure of a subject (roles website, service). Idempotent. Held by open or
    /// breached contracts it is recorded as pending and runs when the last one is settled;
    /// otherwise it runs now.
    pub fn request_erasure(&self, ctx: &Ctx, subject: &SubjectId) -> Result<ErasureRecord, VaultError> {
        self.once(ctx, Action::RequestErasure, Some(subject.as_str()), || self.request_erasure_now(ctx, subject))
    }

    fn request_erasure_now(&self, ctx: &Ctx, subject: &SubjectId) -> Result<ErasureRecord, VaultError> {
        let s = subject.as_str();
        self.gate(ctx, Action::RequestErasure, Some(s))?;
        let record = {
            let _lock = self.locks.lock(s);
            if let Some(e) = self.erasure(s)? {
                let reason =
                    format!("erasure already requested ({})", if e.status == ErasureStatus::Erased { "erased" } else { "pending" });
                self.audit.record(self.draft(ctx, Action::RequestErasure, Some(s), reason))?;
                return Ok(e);
            }
            let meta = self.live(ctx, Action::RequestErasure, subject)?;
            let (facts, _, _) = self.facts(s, &meta)?;
            let holds: Vec<String> = facts.holds().iter().map(|c| c.to_string()).collect();
            let now = self.clock.now();
            let mut record = ErasureRecord {
                subject: s.to_owned(),
                status: ErasureStatus::Pending,
                receipt: format!("rcpt_{}", random_hex::<12>()),
                requested_at: now,
                requested_by: ctx.caller.name.to_string(),
                held_by: holds.clone(),
                erased_at: None,
                key_fingerprint: None,
                kek_generation: None,
                purged: false,
            };
            let mut batch = Batch::default();
            let (event, reason) = if holds.is_empty() {
                self.shred_into(s, &meta, &mut record, now, &mut batch)?;
                ("erased", "crypto-shredded".to_string())
            } else {
                batch.put(Space::Erasures, layout::erasure(s), serde_json::to_vec(&record).expect("serialises"));
                ("requested", format!("erasure pending: held by {}", holds.join(", ")))
            };
            let receipt = record.receipt.clone();
            // After the shred's deletes in the batch: this request's own record stays.
            self.remember(ctx, Some(s), &mut batch, &record)?;
            self.commit_journaled(s, event, now, &receipt, vec![self.draft(ctx, Action::RequestErasure, Some(s), reason)], batch)?;
            if record.status == ErasureStatus::Erased {
                self.dek_cache.purge(s);
            }
            record
        };
        if record.status == ErasureStatus::Erased {
            // Committed: the shred is done whatever the purge does. If it fails, the answer says
            // the purge is pending (`purged: false`) and it is retried in the background.
            if self.purge_or_defer(s) {
                return Ok(self.erasure(s).ok().flatten().unwrap_or(record));
            }
        }
        Ok(record)
    }

    /// The erasure record of a subject (roles website, service).
    pub fn erasure_status(&self, ctx: &Ctx, subject: &SubjectId) -> Result<ErasureRecord, VaultError> {
        let s = subject.as_str();
        self.gate(ctx, Action::ErasureStatus, Some(s))?;
        match self.erasure(s)? {
            Some(e) => {
                self.audit.record(self.draft(ctx, Action::ErasureStatus, Some(s), "erasure status read"))?;
                Ok(e)
            }
            None => Err(self.refuse(
                ctx,
                Action::ErasureStatus,
                Some(s),
                None,
                vec![],
                VaultError::NotFound(super::error::Missing::Erasure { subject: s.to_owned() }),
            )),
        }
    }

    /// Journals an erasure event (fsynced) before committing its batch; if the batch then fails,
    /// journals that it was aborted, so a restore does not replay what never happened.
    pub(super) fn commit_journaled(
        &self,
        s: &str,
        event: &str,
        now: OffsetDateTime,
        receipt: &str,
        drafts: Vec<crate::audit::Draft>,
        batch: Batch,
    ) -> Result<(), VaultError> {
        self.journal.append(s, event, now, receipt)?;
        if let Err(e) = self.audit.commit(drafts, batch) {
            // Best effort: if even this fails, the journal over-states (an erasure the borrower
            // asked for), never under-states.
            let _ = self.journal.append(s, &format!("aborted-{event}"), now, receipt);
            return Err(e.into());
        }
        Ok(())
    }

    /// Adds the shred of `s` to `batch` and marks `record` erased. The caller holds the
    /// subject lock, commits the batch with its audit entry, purges the cache, then calls
    /// [`Vault::finish_purge`].
    pub(super) fn shred_into(
        &self,
        s: &str,
        meta: &SubjectMeta,
        record: &mut ErasureRecord,
        now: OffsetDateTime,
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        let generation = meta.generation()?;
        batch.delete(Space::Subjects, layout::subject(s));
        // The access summary too: who read what is about the subject (the audit trail keeps
        // its entries, with field names only).
        for space in [Space::Records, Space::Facts, Space::Disclosures, Space::Access] {
            batch.delete_prefix(space, &subject_prefix(s));
        }
        self.forget_idempotency_of(s, batch)?;
        // Its blind-index entries: no lookup finds it once this is committed, and the purge
        // compacts them out of the files.
        let ranges = self.unindex_into(s, batch)?;
        self.purges.index_ranges.lock().unwrap_or_else(|p| p.into_inner()).insert(s.to_owned(), ranges);
        batch.add(Space::Keyring, dek_count_key(generation), -1);
        record.status = ErasureStatus::Erased;
        record.erased_at = Some(now);
        record.key_fingerprint = Some(meta.wrapped_dek.fingerprint());
        record.kek_generation = Some(generation.0);
        record.purged = false;
        batch.put(Space::Erasures, layout::erasure(s), serde_json::to_vec(record).expect("serialises"));
        Ok(())
    }

    /// Flushes and force-compacts the key range holding the subject's wrapped DEK, so no live
    /// SST or WAL file holds it, then marks the erasure record purged. Returns once that is
    /// done. Concurrent erasures share one pass: whoever gets the turn purges every subject
    /// queued so far (one flush for all of them); the others find theirs done when their turn
    /// comes, because a turn is only handed on after its pass has finished.
    pub(super) fn finish_purge(&self, s: &str) -> Result<(), VaultError> {
        self.purges.queue.lock().unwrap_or_else(|p| p.into_inner()).insert(s.to_owned());
        let _turn = self.purges.turn.lock().unwrap_or_else(|p| p.into_inner());
        let subjects: Vec<String> = {
            let mut q = self.purges.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !q.contains(s) {
                return Ok(());
            }
            std::mem::take(&mut *q).into_iter().collect()
        };
        let mut ranges: Vec<_> = subjects.iter().flat_map(|s| purge_ranges(s)).collect();
        {
            let known = self.purges.index_ranges.lock().unwrap_or_else(|p| p.into_inner());
            if subjects.iter().all(|s| known.contains_key(s)) {
                ranges.extend(subjects.iter().flat_map(|s| known[s].iter().cloned()));
            } else {
                // Shredded before a restart: which entries went is no longer known.
                ranges.push((Space::Index, Vec::new(), vec![0xff]));
            }
        }
        let purged = if self.faults.purges_failing() {
            Err(StoreError::Io("purge failed (injected fault)".into()))
        } else {
            self.store.purge(&ranges)
        };
        if let Err(e) = purged {
            // Not purged: leave them queued for the next turn (or the next start).
            self.purges.queue.lock().unwrap_or_else(|p| p.into_inner()).extend(subjects);
            return Err(e.into());
        }
        {
            let mut known = self.purges.index_ranges.lock().unwrap_or_else(|p| p.into_inner());
            for s in &subjects {
                known.remove(s);
            }
        }
        for s in &subjects {
            let _lock = self.locks.lock(s);
            if let Some(mut e) = self.erasure(s)? {
                if !e.purged {
                    e.purged = true;
                    let mut b = Batch::default();
                    b.put(Space::Erasures, layout::erasure(s), serde_json::to_vec(&e).expect("serialises"));
                    self.store.write(&b)?;
                }
            }
        }
        Ok(())
    }

    /// Start-up work: run pending erasures whose holds are gone, finish unpurged shreds.
    pub(super) fn resume_erasures(&self) -> Result<(), VaultError> {
        let mut todo = Vec::new();
        let mut bad = false;
        self.store.scan(Space::Erasures, &[], &[0xff], |_, v| {
            match serde_json::from_slice::<ErasureRecord>(v) {
                Ok(e) if e.status == ErasureStatus::Pending || !e.purged => todo.push(e),
                Ok(_) => {}
                Err(_) => bad = true,
            }
            true
        })?;
        if bad {
            return Err(StoreError::Corrupt { space: "erasures", what: "record" }.into());
        }
        for e in todo {
            match e.status {
                // Left queued if it fails again: the background retry takes it.
                ErasureStatus::Erased => {
                    self.purge_or_defer(&e.subject);
                }
                ErasureStatus::Pending => {
                    self.run_if_unheld(&e.subject, "pending erasure executed at start-up: no contract holds it")?;
                }
            }
        }
        Ok(())
    }

    /// Runs a pending erasure if no contract holds it any more.
    fn run_if_unheld(&self, s: &str, reason: &str) -> Result<bool, VaultError> {
        let ran = {
            let _lock = self.locks.lock(s);
            let (Some(mut e), Some(meta)) = (self.erasure(s)?, self.meta(s)?) else {
                return Ok(false);
            };
            if e.status != ErasureStatus::Pending {
                return Ok(false);
            }
            let (facts, _, _) = self.facts(s, &meta)?;
            if !facts.holds().is_empty() {
                return Ok(false);
            }
            let now = self.clock.now();
            let mut batch = Batch::default();
            self.shred_into(s, &meta, &mut e, now, &mut batch)?;
            let ctx = Ctx::system();
            let receipt = e.receipt.clone();
            self.commit_journaled(s, "erased", now, &receipt, vec![self.draft(&ctx, Action::RequestErasure, Some(s), reason)], batch)?;
            self.dek_cache.purge(s);
            true
        };
        if ran {
            self.purge_or_defer(s);
        }
        Ok(ran)
    }

    /// Replays erasures from a journal into this store (after a restore): every subject the
    /// journal says was erased is shredded here too, and every pending request is recorded
    /// (and run, if nothing in the restored data holds it). Returns how many subjects changed.
    pub fn replay_erasures(&self, entries: &[JournalEntry]) -> Result<usize, VaultError> {
        // An "aborted-E" line cancels the last earlier E line of the same erasure.
        let mut kept: Vec<Option<&JournalEntry>> = entries.iter().map(Some).collect();
        for (i, e) in entries.iter().enumerate() {
            if let Some(event) = e.event.strip_prefix("aborted-") {
                kept[i] = None;
                if let Some(j) =
                    (0..i).rev().find(|&j| kept[j].is_some_and(|k| k.subject == e.subject && k.receipt == e.receipt && k.event == event))
                {
                    kept[j] = None;
                }
            }
        }
        let mut last: BTreeMap<&str, &JournalEntry> = BTreeMap::new();
        for e in kept.into_iter().flatten() {
            let slot = last.entry(e.subject.as_str()).or_insert(e);
            // "erased" is final; otherwise the latest entry wins.
            if slot.event != "erased" {
                *slot = e;
            }
        }
        let ctx = Ctx::system();
        let mut changed = 0;
        for (s, entry) in last {
            let _lock = self.locks.lock(s);
            let existing = self.erasure(s)?;
            if existing.as_ref().is_some_and(|e| e.status == ErasureStatus::Erased) {
                continue;
            }
            let now = self.clock.now();
            let mut record = existing.unwrap_or_else(|| ErasureRecord {
                subject: s.to_owned(),
                status: ErasureStatus::Pending,
                receipt: entry.receipt.clone(),
                requested_at: entry.time,
                requested_by: "restore".into(),
                held_by: vec![],
                erased_at: None,
                key_fingerprint: None,
                kek_generation: None,
                purged: true,
            });
            let mut batch = Batch::default();
            let meta = self.meta(s)?;
            let shred = match &meta {
                Some(m) => entry.event == "erased" || self.facts(s, m)?.0.holds().is_empty(),
                None => entry.event == "erased",
            };
            if shred {
                match &meta {
                    Some(m) => self.shred_into(s, m, &mut record, now, &mut batch)?,
                    None => {
                        batch.delete_prefix(Space::Access, &subject_prefix(s));
                        record.status = ErasureStatus::Erased;
                        record.erased_at = Some(entry.time);
                        batch.put(Space::Erasures, layout::erasure(s), serde_json::to_vec(&record).expect("serialises"));
                    }
                }
            } else {
                if let Some(m) = &meta {
                    record.held_by = self.facts(s, m)?.0.holds().iter().map(|c| c.to_string()).collect();
                }
                batch.put(Space::Erasures, layout::erasure(s), serde_json::to_vec(&record).expect("serialises"));
            }
            let reason = format!("erasure {} replayed from the journal after restore", entry.receipt);
            self.audit.commit(vec![self.draft(&ctx, Action::RequestErasure, Some(s), reason)], batch)?;
            self.dek_cache.purge(s);
            changed += 1;
        }
        if changed > 0 {
            // A restore's replay purges whole spaces: the wrapped DEKs and the index entries.
            self.store.purge_space(Space::Subjects)?;
            self.store.purge_space(Space::Index)?;
            self.purges.index_ranges.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        Ok(changed)
    }

    /// What an erasure receipt promises: unreadable in the live store now, and unreadable
    /// everywhere (old backups included) once the KEK generation that wrapped the DEK is
    /// destroyed.
    pub fn erasure_statement(&self, e: &ErasureRecord) -> String {
        match (e.status, e.kek_generation) {
            (ErasureStatus::Pending, _) => {
                format!("erasure pending: held by {}; it runs by itself when they are settled", e.held_by.join(", "))
            }
            (ErasureStatus::Erased, None) => "erased: no key of this subject remains in the live store".into(),
            (ErasureStatus::Erased, Some(g)) => {
                let info = self.keyring.info(qoima_keys::Generation(g));
                let everywhere = match info {
                    Some(i) if i.state == KekState::Destroyed => {
                        format!(
                            "KEK generation {g} was destroyed {}: unreadable everywhere, backups included",
                            i.destroyed_at.map(rfc3339).unwrap_or_default()
                        )
                    }
                    Some(i) => {
                        // Checked: configuration bounds the days, but a receipt never panics.
                        let days = |d: u32| time::Duration::days(d.into());
                        let retire = i
                            .retired_at
                            .or_else(|| i.activated_at.unwrap_or(i.created_at).checked_add(days(self.settings.key_rotation_days)));
                        match retire.and_then(|r| r.checked_add(days(self.settings.backup_retention_days))) {
                            Some(destroy) => format!(
                                "unreadable in backups once KEK generation {g} is destroyed (scheduled no earlier than {})",
                                rfc3339(destroy)
                            ),
                            None => format!("unreadable in backups once KEK generation {g} is destroyed"),
                        }
                    }
                    None => format!("unreadable in backups once KEK generation {g} is destroyed"),
                };
                format!("unreadable in the live store now; {everywhere}")
            }
        }
    }
}

/// What a shred must force out of the live files: the subject's entry, which holds the wrapped
/// DEK. Its ciphertexts, contracts and disclosures are range-deleted in the same batch; the
/// ciphertexts are unreadable without the DEK, so they may leave the files at the next natural
/// compaction — compacting them now would rewrite every SST file they share with other
/// subjects, a cost that grows with the store, not with the subject.
fn purge_ranges(s: &str) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
    let (from, to) = layout::subject_only(s);
    vec![(Space::Subjects, from, to)]
}
