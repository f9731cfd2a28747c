//! The rewrap job: moves every subject DEK from older KEK generations onto the active one,
//! online, in batches. Records are not touched (a field's AAD names its DEK version, not the
//! KEK), so a rewrap costs one unwrap and one wrap per subject.
//!
//! - Each batch locks its subjects (one batch at a time), re-reads their entries, rewraps, and
//!   writes the new wrapped DEKs, the counters, the job's cursor and an audit entry in one
//!   atomic batch: a crash resumes exactly after the last committed batch.
//! - An erased subject has no entry to rewrap, so it is never resurrected; a subject written
//!   concurrently is re-read under its lock, so a newer DEK is never overwritten.
//! - If the active generation changes mid-way, the job starts a new pass towards it; a pass
//!   that ends with DEKs still under old generations (subjects created by a racing writer
//!   before a rotation) is followed by another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use qoima_keys::Generation;
use serde::{Deserialize, Serialize};

use super::codec::SubjectMeta;
use super::keyring::{dek_count_key, wrap_count_key, KekState};
use super::{Ctx, Vault, VaultError};
use crate::domain::rfc3339;
use crate::layout;
use crate::policy::Action;
use crate::store::{Batch, Space};

const MAX_PASSES: u32 = 5;

/// Where the job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewrapState {
    Idle,
    Running,
    Complete,
}

/// The job's persisted progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapJob {
    pub state: RewrapState,
    /// The generation DEKs are moved onto.
    pub target: u32,
    /// The last subject id handled in this pass.
    pub cursor: Option<String>,
    pub pass: u32,
    /// DEKs moved, and DEKs that needed moving when the pass began.
    pub done: u64,
    pub total: u64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl RewrapJob {
    fn idle() -> Self {
        Self { state: RewrapState::Idle, target: 0, cursor: None, pass: 0, done: 0, total: 0, started_at: None, finished_at: None }
    }
}

/// Progress as reported to callers: the job plus its rate in this process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RewrapProgress {
    #[serde(flatten)]
    pub job: RewrapJob,
    pub rate_per_s: f64,
    pub eta_s: Option<f64>,
}

/// The running job's thread and its rate meter.
#[derive(Default)]
pub struct RewrapRunner {
    thread: Mutex<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    meter: Mutex<Option<(Instant, u64)>>,
}

impl RewrapRunner {
    fn running(&self) -> bool {
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the thread to stop after its current batch and waits for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        self.stop.store(false, Ordering::SeqCst);
    }
}

impl Vault {
    /// The job as stored.
    pub fn rewrap_job(&self) -> Result<RewrapJob, VaultError> {
        Ok(match self.store.get(Space::Jobs, layout::REWRAP_JOB)? {
            Some(v) => serde_json::from_slice(&v).map_err(|_| crate::store::StoreError::Corrupt { space: "jobs", what: "rewrap job" })?,
            None => RewrapJob::idle(),
        })
    }

    /// Progress of the rewrap (role security).
    pub fn rewrap_progress(&self, ctx: &Ctx) -> Result<RewrapProgress, VaultError> {
        self.gate(ctx, Action::KeysRead, None)?;
        self.progress()
    }

    /// The job's progress now (also the answer to a replayed start).
    pub(super) fn rewrap_progress_now(&self) -> Result<RewrapProgress, VaultError> {
        self.progress()
    }

    fn progress(&self) -> Result<RewrapProgress, VaultError> {
        let job = self.rewrap_job()?;
        let rate = match *self.rewrap.meter.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((since, done_then)) if job.state == RewrapState::Running => {
                let secs = since.elapsed().as_secs_f64();
                if secs > 0.0 {
                    job.done.saturating_sub(done_then) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let eta = (rate > 0.0 && job.state == RewrapState::Running).then(|| job.total.saturating_sub(job.done) as f64 / rate);
        Ok(RewrapProgress { job, rate_per_s: rate, eta_s: eta })
    }

    /// DEKs wrapped by live generations other than `target`.
    fn deks_not_under(&self, target: Generation) -> Result<u64, VaultError> {
        let mut n = 0;
        for (info, count) in self.key_generations()? {
            if info.generation != target.0 && info.state != KekState::Destroyed {
                n += count.max(0) as u64;
            }
        }
        Ok(n)
    }

    /// Starts the rewrap towards the active generation, or resumes a stored one; returns at
    /// once (role security). The work runs on a background thread.
    pub fn start_rewrap(self: &Arc<Self>, ctx: &Ctx) -> Result<RewrapProgress, VaultError> {
        self.once(ctx, Action::KeysManage, None, || self.start_rewrap_now(ctx))
    }

    fn start_rewrap_now(self: &Arc<Self>, ctx: &Ctx) -> Result<RewrapProgress, VaultError> {
        self.gate(ctx, Action::KeysManage, None)?;
        let _admin = self.keyring.admin();
        if !self.rewrap.running() {
            let mut job = self.rewrap_job()?;
            let active = self.keyring.active_generation();
            let resume = job.state == RewrapState::Running && job.target == active.0;
            if !resume {
                job = self.begin_pass(active, 1)?;
            }
            let reason = if resume {
                format!("rewrap to generation {} resumed at {} of {}", job.target, job.done, job.total)
            } else {
                format!("rewrap to generation {} started: {} DEKs to move", job.target, job.total)
            };
            let mut b = Batch::default();
            b.put(Space::Jobs, layout::REWRAP_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            self.remember(ctx, None, &mut b, &job)?;
            self.audit.commit(vec![self.draft(ctx, Action::KeysManage, None, reason).named("keys.rewrap")], b)?;
            self.spawn_rewrap(job.done);
        }
        self.progress()
    }

    /// Resumes a job a crash or restart interrupted (called once the vault is shared).
    pub fn resume_jobs(self: &Arc<Self>) -> Result<(), VaultError> {
        // Follow-ups of committed changes (purges, escrow, wrap-limit rotations) retry from now on.
        self.spawn_follow_ups();
        self.spawn_index_build()?;
        if self.rewrap_job()?.state == RewrapState::Running && !self.rewrap.running() {
            let done = self.rewrap_job()?.done;
            self.audit.record(self.draft(&Ctx::system(), Action::KeysManage, None, "rewrap resumed after restart").named("keys.rewrap"))?;
            self.spawn_rewrap(done);
        }
        Ok(())
    }

    fn spawn_rewrap(self: &Arc<Self>, done: u64) {
        *self.rewrap.meter.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), done));
        let handle = super::batches::spawn("qoima-rewrap", "rewrap", Arc::downgrade(self), self.rewrap.stop.clone(), Vault::rewrap_step);
        *self.rewrap.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Runs the whole job in this thread (offline CLI), calling `progress` after each batch.
    pub fn run_rewrap(&self, ctx: &Ctx, mut progress: impl FnMut(&RewrapJob)) -> Result<RewrapJob, VaultError> {
        self.gate(ctx, Action::KeysManage, None)?;
        let mut job = self.rewrap_job()?;
        let active = self.keyring.active_generation();
        if !(job.state == RewrapState::Running && job.target == active.0) {
            job = self.begin_pass(active, 1)?;
            let mut b = Batch::default();
            b.put(Space::Jobs, layout::REWRAP_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            let reason = format!("rewrap to generation {} started: {} DEKs to move", job.target, job.total);
            self.audit.commit(vec![self.draft(ctx, Action::KeysManage, None, reason).named("keys.rewrap")], b)?;
        }
        progress(&job);
        while self.rewrap_step()? {
            progress(&self.rewrap_job()?);
        }
        let job = self.rewrap_job()?;
        progress(&job);
        Ok(job)
    }

    fn begin_pass(&self, target: Generation, pass: u32) -> Result<RewrapJob, VaultError> {
        Ok(RewrapJob {
            state: RewrapState::Running,
            target: target.0,
            cursor: None,
            pass,
            done: 0,
            total: self.deks_not_under(target)?,
            started_at: Some(rfc3339(self.now())),
            finished_at: None,
        })
    }

    /// One batch. Returns whether there is more to do.
    fn rewrap_step(&self) -> Result<bool, VaultError> {
        let mut job = self.rewrap_job()?;
        if job.state != RewrapState::Running {
            return Ok(false);
        }
        let ctx = Ctx::system();
        let active = self.keyring.active_generation();
        if job.target != active.0 {
            // Rotated mid-way: start over towards the new generation.
            job = self.begin_pass(active, job.pass + 1)?;
        }
        let target = self.keyring.get(Generation(job.target))?;
        let target_index = self.keyring.index_key(Generation(job.target))?;
        let ids = self.next_subjects(job.cursor.as_deref())?;
        let mut batch = Batch::default();
        if ids.is_empty() {
            // End of a pass.
            let left = self.deks_not_under(Generation(job.target))?;
            let reason;
            if left > 0 && job.pass < MAX_PASSES {
                reason = format!("rewrap pass {} ended with {left} DEKs still under older generations; another pass", job.pass);
                job = self.begin_pass(Generation(job.target), job.pass + 1)?;
            } else {
                job.state = RewrapState::Complete;
                job.finished_at = Some(rfc3339(self.now()));
                reason =
                    format!("rewrap to generation {} complete: {} DEKs moved, {left} left under older generations", job.target, job.done);
            }
            batch.put(Space::Jobs, layout::REWRAP_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            self.audit.commit(vec![self.draft(&ctx, Action::KeysManage, None, reason).named("keys.rewrap")], batch)?;
            return Ok(job.state == RewrapState::Running);
        }
        let mut moved = 0u64;
        let mut reindexed = 0u64;
        {
            let _locks = self.locks.lock_many(ids.iter().map(String::as_str));
            let keys: Vec<Vec<u8>> = ids.iter().map(|s| layout::subject(s)).collect();
            for (id, raw) in ids.iter().zip(self.store.get_many(Space::Subjects, &keys)?) {
                // Erased since the scan: nothing to rewrap, nothing to resurrect.
                let Some(raw) = raw else { continue };
                let mut meta = SubjectMeta::decode(&raw)?;
                let from_gen = meta.generation()?;
                let moving = from_gen != target.generation();
                if !moving && !self.indexed_elsewhere(id, target.generation())? {
                    continue;
                }
                // Unwrap without filling the cache with every subject in the store.
                let dek = match self.dek_cache.get(id, meta.dek_version) {
                    Some(d) => d,
                    None => Arc::new(self.keyring.get(from_gen)?.unwrap_dek(id, meta.dek_version, &meta.wrapped_dek)?),
                };
                // Its blind-index entries move with it (their values opened with its DEK).
                reindexed += self.reindex_into(id, &dek, &target_index, &mut batch)?;
                if !moving {
                    continue;
                }
                self.keyring.take_wrap_of(target.generation())?;
                meta.wrapped_dek = target.wrap_dek(id, &dek)?;
                batch.put(Space::Subjects, layout::subject(id), meta.encode());
                batch.add(Space::Keyring, dek_count_key(from_gen), -1);
                batch.add(Space::Keyring, dek_count_key(target.generation()), 1);
                batch.add(Space::Keyring, wrap_count_key(target.generation()), 1);
                moved += 1;
            }
            job.done += moved;
            job.cursor = ids.last().cloned();
            tracing::debug!(moved, done = job.done, total = job.total, target = job.target, "rewrap batch");
            batch.put(Space::Jobs, layout::REWRAP_JOB.to_vec(), serde_json::to_vec(&job).expect("serialises"));
            if moved > 0 || reindexed > 0 {
                let reason = format!(
                    "{moved} DEKs rewrapped and {reindexed} index entries remade under generation {} ({} of {})",
                    job.target, job.done, job.total
                );
                self.audit.commit(vec![self.draft(&ctx, Action::KeysManage, None, reason).named("keys.rewrap")], batch)?;
            } else {
                self.store.write(&batch)?;
            }
        }
        Ok(true)
    }
}
