//! The index build: gives the subjects of a data directory written before a field was indexed
//! their entries, online, in batches, on a background thread (like the rewrap's).
//!
//! - The job record names the fields whose entries are complete and those being built; a
//!   lookup on a field being built answers 503 with `Retry-After`, never a silent miss.
//! - Each batch locks its subjects, opens the fields' records with each subject's DEK and
//!   writes the entries and the cursor in one atomic batch: a crash resumes after the last
//!   committed one. Writes meanwhile index what they write themselves.
//! - Values of a unique field that two live subjects already hold are reported (ids only,
//!   `qoima lookup duplicates`) and both kept: the job never drops data.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::codec::SubjectMeta;
use super::{Ctx, Vault, VaultError};
use crate::domain::{rfc3339, FieldName};
use crate::layout;
use crate::policy::Action;
use crate::store::{Batch, Space, StoreError};

/// Duplicate groups kept in the job record; past this they are only counted.
const MAX_DUPLICATES: usize = 10_000;

/// Where the build stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexJobState {
    Running,
    Complete,
}

/// A value of a unique field that more than one live subject held when the job indexed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub field: String,
    /// The subjects holding it (ids only, never the value).
    pub subjects: Vec<String>,
}

/// The build's persisted progress (also its report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexJob {
    pub state: IndexJobState,
    /// Fields whose entries are complete.
    pub fields: Vec<String>,
    /// Fields being built: every subject up to `cursor` has its entries.
    pub building: Vec<String>,
    pub cursor: Option<String>,
    /// Subjects handled, and the subjects in the store when the build began.
    pub done: u64,
    pub total: u64,
    pub duplicates: Vec<Duplicate>,
    /// Duplicate groups found, including any past those kept.
    #[serde(default)]
    pub duplicates_found: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// The build's thread, and the fields lookups must not trust yet.
#[derive(Default)]
pub struct IndexRunner {
    building: RwLock<BTreeSet<String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl IndexRunner {
    /// Asks the thread to stop after its current batch and waits for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        self.stop.store(false, Ordering::SeqCst);
    }
}

/// The job as `store` holds it (`None` in a data directory that never had one); read straight
/// from a store, so the CLI reports it beside a running vault.
pub fn read_job(store: &crate::store::Store) -> Result<Option<IndexJob>, StoreError> {
    match store.get(Space::Jobs, layout::INDEX_JOB)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|_| StoreError::Corrupt { space: "jobs", what: "index job" })?)),
        None => Ok(None),
    }
}

impl Vault {
    /// The job as stored (`None` in a data directory that never had one).
    pub fn index_job(&self) -> Result<Option<IndexJob>, VaultError> {
        Ok(read_job(&self.store)?)
    }

    /// At open: compares the configured indexes with the job record and starts a build for the
    /// fields not complete yet (none in a new or empty store). The thread starts with
    /// [`Vault::resume_jobs`].
    pub(super) fn plan_index_build(&self) -> Result<(), VaultError> {
        let configured: BTreeSet<String> = self.settings.indexes.iter().map(|i| i.field.to_string()).collect();
        let job = self.index_job()?;
        let complete: BTreeSet<String> = job.as_ref().map(|j| j.fields.iter().cloned().collect()).unwrap_or_default();
        let missing: BTreeSet<String> = configured.difference(&complete).cloned().collect();
        let empty = {
            let mut any = false;
            self.store.scan(Space::Subjects, &[], layout::SUBJECTS_END, |_, _| {
                any = true;
                false
            })?;
            !any
        };
        // The duplicates found stay reported whatever the next state.
        let (duplicates, duplicates_found) = job.as_ref().map(|p| (p.duplicates.clone(), p.duplicates_found)).unwrap_or_default();
        let next = match job {
            // Complete for exactly these fields already: nothing to write (the usual start).
            Some(j) if j.state == IndexJobState::Complete && missing.is_empty() && complete == configured => j,
            // Nothing to build: a new store, or every configured field complete.
            _ if missing.is_empty() || empty => IndexJob {
                state: IndexJobState::Complete,
                fields: configured.iter().cloned().collect(),
                building: Vec::new(),
                cursor: None,
                done: 0,
                total: 0,
                duplicates,
                duplicates_found,
                started_at: None,
                finished_at: Some(rfc3339(self.now())),
            },
            // The same build, interrupted: resumed where it stopped.
            Some(j) if j.state == IndexJobState::Running && j.building.iter().cloned().collect::<BTreeSet<_>>() == missing => j,
            _ => IndexJob {
                state: IndexJobState::Running,
                fields: complete.intersection(&configured).cloned().collect(),
                building: missing.iter().cloned().collect(),
                cursor: None,
                done: 0,
                total: self.count_subjects()?,
                duplicates,
                duplicates_found,
                started_at: Some(rfc3339(self.now())),
                finished_at: None,
            },
        };
        if next.state == IndexJobState::Running {
            tracing::info!(fields = ?next.building, "building the blind index of fields not indexed before");
        }
        *self.index_build.building.write().unwrap_or_else(|p| p.into_inner()) =
            if next.state == IndexJobState::Running { next.building.iter().cloned().collect() } else { BTreeSet::new() };
        if Some(&next) != self.index_job()?.as_ref() {
            let mut b = Batch::default();
            b.put(Space::Jobs, layout::INDEX_JOB.to_vec(), serde_json::to_vec(&next).expect("serialises"));
            self.store.write(&b)?;
        }
        Ok(())
    }

    fn count_subjects(&self) -> Result<u64, VaultError> {
        let mut n = 0u64;
        self.store.scan(Space::Subjects, &[], layout::SUBJECTS_END, |_, _| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    /// The refusal for a lookup on `field` while its entries are being built.
    pub(super) fn index_building(&self, field: &FieldName) -> Result<Option<VaultError>, VaultError> {
        let building = self.index_build.building.read().unwrap_or_else(|p| p.into_inner()).contains(field.as_str());
        Ok(building.then(|| VaultError::IndexBuilding { field: field.to_string(), retry_after_secs: 5 }))
    }

    /// Starts the build's thread if a build is running (from [`Vault::resume_jobs`]).
    pub(super) fn spawn_index_build(self: &Arc<Self>) -> Result<(), VaultError> {
        if !self.index_job()?.is_some_and(|j| j.state == IndexJobState::Running) {
            return Ok(());
        }
        let handle =
            super::batches::spawn("qoima-index", "index build", Arc::downgrade(self), self.index_build.stop.clone(), Vault::index_step);
        *self.index_build.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }

    /// Runs the whole build in this thread (tests, offline use).
    pub fn run_index_build(&self) -> Result<Option<IndexJob>, VaultError> {
        while self.index_step()? {}
        self.index_job()
    }

    /// One batch of the build, for tests that stop it part-way.
    #[cfg(test)]
    pub(super) fn index_step_for_tests(&self) -> Result<bool, VaultError> {
        self.index_step()
    }

    /// One batch. Returns whether there is more to do.
    fn index_step(&self) -> Result<bool, VaultError> {
        let Some(mut job) = self.index_job()? else { return Ok(false) };
        if job.state != IndexJobState::Running {
            return Ok(false);
        }
        let ctx = Ctx::system();
        let fields: Vec<(FieldName, bool)> = self
            .settings
            .indexes
            .iter()
            .filter(|i| job.building.iter().any(|b| b == i.field.as_str()))
            .map(|i| (i.field.clone(), i.unique))
            .collect();
        let ids = self.next_subjects(job.cursor.as_deref())?;
        let mut batch = Batch::default();
        if ids.is_empty() {
            job.state = IndexJobState::Complete;
            job.fields.append(&mut job.building);
            job.fields.sort();
            job.fields.dedup();
            job.cursor = None;
            job.finished_at = Some(rfc3339(self.now()));
            batch.put(Space::Jobs, layout::INDEX_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            let reason = format!(
                "blind index of {} built: {} subjects, {} duplicate values of unique fields",
                job.fields.join(", "),
                job.done,
                job.duplicates_found
            );
            self.audit.commit(vec![self.draft(&ctx, Action::KeysManage, None, reason).named("index.build")], batch)?;
            self.index_build.building.write().unwrap_or_else(|p| p.into_inner()).clear();
            return Ok(false);
        }
        let active = self.keyring.active_index_key();
        let mut made = 0u64;
        // Values of unique fields indexed in this batch, not in the store yet.
        let mut in_batch: std::collections::BTreeMap<(String, [u8; layout::BLIND_LEN]), Vec<String>> = Default::default();
        {
            let _locks = self.locks.lock_many(ids.iter().map(String::as_str));
            let keys: Vec<Vec<u8>> = ids.iter().map(|s| layout::subject(s)).collect();
            for (s, raw) in ids.iter().zip(self.store.get_many(Space::Subjects, &keys)?) {
                // Erased since the scan: nothing to index.
                let Some(raw) = raw else { continue };
                let meta = SubjectMeta::decode(&raw)?;
                let dek = match self.dek_cache.get(s, meta.dek_version) {
                    Some(d) => d,
                    None => Arc::new(self.keyring.get(meta.generation()?)?.unwrap_dek(s, meta.dek_version, &meta.wrapped_dek)?),
                };
                let mut values = Vec::with_capacity(fields.len());
                for (f, unique) in &fields {
                    let normal = self.stored_normal(s, f.as_str(), &dek)?;
                    if let (true, Some(normal)) = (*unique, &normal) {
                        let blind = active.blind(f.as_str(), normal.as_bytes());
                        let mut holders: Vec<String> = self.holders(f, normal)?.into_iter().filter(|h| h != s).collect();
                        let batch_holders = in_batch.entry((f.to_string(), blind.0)).or_default();
                        holders.extend(batch_holders.iter().cloned());
                        batch_holders.push(s.clone());
                        if !holders.is_empty() {
                            job.duplicates_found += 1;
                            if job.duplicates.len() < MAX_DUPLICATES {
                                holders.push(s.clone());
                                job.duplicates.push(Duplicate { field: f.to_string(), subjects: holders });
                            }
                        }
                    }
                    values.push((f.as_str(), normal));
                }
                // Entries a write made since the build began are current already; stale ones (a
                // field indexed before, then not, then again) are replaced.
                made += self.set_entries_into(s, &values, &active, &mut batch)?;
            }
            job.done += ids.len() as u64;
            job.cursor = ids.last().cloned();
            batch.put(Space::Jobs, layout::INDEX_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            let reason = format!("{made} index entries built ({} of {} subjects)", job.done, job.total);
            self.audit.commit(vec![self.draft(&ctx, Action::KeysManage, None, reason).named("index.build")], batch)?;
        }
        Ok(true)
    }
}
