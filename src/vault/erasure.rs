//! Erasure is crypto-shredding (policy clause P7; docs/erasure-and-backups.md): the subject's wrapped DEK and
//! every ciphertext are deleted in one batch, cached keys purged, then the key ranges are
//! flushed and compacted so no live store file holds the wrapped DEK. An erasure record stays
//! forever, and every erasure is also appended to a journal outside the data directory so a
//! restore from an older backup replays it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::codec::{ErasureRecord, ErasureStatus, SubjectMeta};
use super::keyring::{dek_count_key, KekState};
use super::{Ctx, Vault, VaultError};
use crate::domain::{random_hex, rfc3339, SubjectId};
use crate::policy::Action;
use crate::store::{subject_prefix, Batch, Space, StoreError};

/// Erasures waiting for their purge, and whose turn it is to run one.
#[derive(Default)]
pub(super) struct PurgeQueue {
    pub(super) queue: Mutex<std::collections::BTreeSet<String>>,
    turn: Mutex<()>,
}

/// One line of the erasure journal. No personal data: an opaque subject id and a receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub subject: String,
    /// `requested` (pending behind a hold) or `erased`.
    pub event: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub receipt: String,
}

/// The append-only erasure journal (JSON lines, fsynced per entry).
///
/// An append that fails part-way (a full disk, an I/O error) or a crash mid-append can leave a
/// torn record: the bytes of a line that never got its newline. Appends never build on one:
/// opening repairs a torn tail, and a failed append is cut off before the next one writes, so
/// every later record starts on a line of its own. Reading skips (and reports) torn records
/// and keeps every whole one.
pub struct ErasureJournal {
    path: PathBuf,
    file: Mutex<JournalFile>,
}

struct JournalFile {
    file: File,
    /// Bytes of whole records: where the next record starts.
    len: u64,
    /// A failed append may have left bytes past `len`.
    torn: bool,
}

/// How much of a journal's end opening reads to find its last whole record (records are a few
/// hundred bytes).
const TAIL_WINDOW: u64 = 64 * 1024;

impl ErasureJournal {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut opts = OpenOptions::new();
        opts.create(true).read(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let io = |e: std::io::Error| StoreError::Io(format!("cannot open erasure journal {}: {e}", path.display()));
        let mut file = opts.open(path).map_err(io)?;
        let len = repair_tail(&mut file, path).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(JournalFile { file, len, torn: false }) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&self, subject: &str, event: &str, time: OffsetDateTime, receipt: &str) -> Result<(), StoreError> {
        let entry = JournalEntry { subject: subject.to_owned(), event: event.to_owned(), time, receipt: receipt.to_owned() };
        self.append_entries(std::slice::from_ref(&entry))
    }

    /// Appends entries with one sync at the end (a restore seeding a new journal).
    pub fn append_entries(&self, entries: &[JournalEntry]) -> Result<(), StoreError> {
        let mut lines = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut lines, entry).expect("serialises");
            lines.push(b'\n');
        }
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let err = |e: std::io::Error| StoreError::Io(format!("cannot append to the erasure journal: {e}"));
        if g.torn {
            // What a failed append left goes before anything is written after it.
            let len = g.len;
            g.file.set_len(len).and_then(|_| g.file.sync_data()).map_err(err)?;
            g.torn = false;
        }
        match g.file.write_all(&lines).and_then(|_| g.file.sync_data()) {
            Ok(()) => {
                g.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut it off now if possible; otherwise the next append does.
                let len = g.len;
                g.torn = g.file.set_len(len).is_err();
                Err(err(e))
            }
        }
    }

    /// Reads a journal: every whole record, in order. A torn record (a failed or interrupted
    /// append: the start of a record, or zero bytes a crash left, with a whole record possibly
    /// written after it on the same line) is skipped and reported; the last line may be
    /// anything. Any other bad line is an error, since silently skipping an erasure would
    /// resurrect someone.
    pub fn read(path: &Path) -> Result<Vec<JournalEntry>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io(format!("cannot read erasure journal {}: {e}", path.display()))),
        };
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let last = lines.iter().rposition(|l| !l.trim_ascii().is_empty());
        let mut out = Vec::with_capacity(lines.len());
        let mut torn = 0usize;
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if let Ok(e) = serde_json::from_slice(line) {
                out.push(e);
                continue;
            }
            // A torn record with the next whole one written straight after it.
            let after_torn = memrchr_record(line)
                .filter(|&at| at > 0 && is_torn(&line[..at]))
                .and_then(|at| serde_json::from_slice::<JournalEntry>(&line[at..]).ok());
            if let Some(e) = after_torn {
                out.push(e);
            } else if !(Some(i) == last || is_torn(line)) {
                return Err(StoreError::Io(format!("erasure journal {} line {} is corrupt", path.display(), i + 1)));
            }
            torn += 1;
        }
        if torn > 0 {
            tracing::warn!(journal = %path.display(), torn, "erasure journal: skipped torn record(s) of failed appends; every whole record kept");
        }
        Ok(out)
    }
}

/// Where the last record in `line` starts (every record begins with its subject).
fn memrchr_record(line: &[u8]) -> Option<usize> {
    const START: &[u8] = b"{\"subject\":";
    line.windows(START.len()).rposition(|w| w == START)
}

/// Whether `bytes` is what a torn append leaves: zeros, or the unfinished start of a record.
fn is_torn(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
        || (bytes.starts_with(b"{") && serde_json::from_slice::<serde_json::Value>(bytes).err().is_some_and(|e| e.is_eof()))
}

/// Makes a journal end on a record boundary: a whole record missing only its newline gets it
/// (it may be an erasure a crash interrupted: over-stating is safe), anything else after the last
/// newline is cut off, reported. Returns the repaired length.
fn repair_tail(file: &mut File, path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let from = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(len);
    }
    let cut = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None if from == 0 => 0,
        None => return Err(std::io::Error::other("its last 64 KiB hold no line break: not a journal")),
    };
    let segment = &tail[(cut - from) as usize..];
    if serde_json::from_slice::<JournalEntry>(segment.trim_ascii()).is_ok() {
        file.write_all(b"\n")?;
        file.sync_data()?;
        return Ok(len + 1);
    }
    tracing::warn!(journal = %path.display(), bytes = len - cut, "erasure journal ended in a torn record (a failed append); cut it off");
    file.set_len(cut)?;
    file.sync_data()?;
    Ok(cut)
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
                batch.put(Space::Erasures, s.as_bytes().to_vec(), serde_json::to_vec(&record).expect("serialises"));
                ("requested", format!("erasure pending: held by {}", holds.join(", ")))
            };
            let receipt = record.receipt.clone();
            // After the shred's deletes in the batch: this request's own record stays.
            self.remember(ctx, Some(s), &mut batch, &record)?;
            self.commit_journaled(s, event, now, &receipt, vec![self.draft(ctx, Action::RequestErasure, Some(s), reason)], batch)?;
            if record.status == ErasureStatus::Erased {
                self.cache.purge(s);
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
        batch.delete(Space::Subjects, s.as_bytes().to_vec());
        // The access summary too: who read what is about the subject (the audit trail keeps
        // its entries, with field names only).
        for space in [Space::Records, Space::Facts, Space::Disclosures, Space::Access] {
            batch.delete_prefix(space, &subject_prefix(s));
        }
        self.forget_idempotency_of(s, batch)?;
        batch.add(Space::Keyring, dek_count_key(generation), -1);
        record.status = ErasureStatus::Erased;
        record.erased_at = Some(now);
        record.key_fingerprint = Some(meta.wrapped_dek.fingerprint());
        record.kek_generation = Some(generation.0);
        record.purged = false;
        batch.put(Space::Erasures, s.as_bytes().to_vec(), serde_json::to_vec(record).expect("serialises"));
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
        let ranges: Vec<_> = subjects.iter().flat_map(|s| purge_ranges(s)).collect();
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
        for s in &subjects {
            let _lock = self.locks.lock(s);
            if let Some(mut e) = self.erasure(s)? {
                if !e.purged {
                    e.purged = true;
                    let mut b = Batch::default();
                    b.put(Space::Erasures, s.as_bytes().to_vec(), serde_json::to_vec(&e).expect("serialises"));
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
            self.cache.purge(s);
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
                        batch.put(Space::Erasures, s.as_bytes().to_vec(), serde_json::to_vec(&record).expect("serialises"));
                    }
                }
            } else {
                if let Some(m) = &meta {
                    record.held_by = self.facts(s, m)?.0.holds().iter().map(|c| c.to_string()).collect();
                }
                batch.put(Space::Erasures, s.as_bytes().to_vec(), serde_json::to_vec(&record).expect("serialises"));
            }
            let reason = format!("erasure {} replayed from the journal after restore", entry.receipt);
            self.audit.commit(vec![self.draft(&ctx, Action::RequestErasure, Some(s), reason)], batch)?;
            self.cache.purge(s);
            changed += 1;
        }
        if changed > 0 {
            self.store.purge_space(Space::Subjects)?;
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
    let mut exact_end = s.as_bytes().to_vec();
    exact_end.push(0);
    vec![(Space::Subjects, s.as_bytes().to_vec(), exact_end)]
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn line(subject: &str) -> String {
        format!("{{\"subject\":\"{subject}\",\"event\":\"erased\",\"time\":\"2026-01-01T00:00:00Z\",\"receipt\":\"rcpt_{subject}\"}}")
    }

    #[test]
    fn torn_records_are_skipped_and_whole_ones_kept_but_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let torn = "{\"subject\":\"x\",\"ev";
        let text = format!("{}\n{torn}{}\n\0\0\0{}\n{}\n{torn}", line("a"), line("b"), line("c"), line("d"));
        std::fs::write(&path, text).unwrap();
        let subjects: Vec<String> = ErasureJournal::read(&path).unwrap().into_iter().map(|e| e.subject).collect();
        assert_eq!(subjects, ["a", "b", "c", "d"]);

        // A line no failed append could leave, before the end: an error, never skipped.
        std::fs::write(&path, format!("{}\nnot a record\n{}\n", line("a"), line("b"))).unwrap();
        let err = ErasureJournal::read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is corrupt"), "{err}");
    }

    #[test]
    fn opening_repairs_the_tail_so_the_next_record_has_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        // A whole record missing only its newline keeps it (over-stating is safe)…
        std::fs::write(&path, line("a")).unwrap();
        ErasureJournal::open(&path).unwrap().append("b", "erased", OffsetDateTime::UNIX_EPOCH, "rcpt_b").unwrap();
        // …a torn one is cut off.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"subject\":\"x\",\"ev").unwrap();
        ErasureJournal::open(&path).unwrap().append("c", "erased", OffsetDateTime::UNIX_EPOCH, "rcpt_c").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| serde_json::from_str::<JournalEntry>(l).is_ok()), "{text}");
        assert!(!text.contains("\"x\""));
    }
}
