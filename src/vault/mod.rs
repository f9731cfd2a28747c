//! The vault core: the one place that composes keys, store, policy and audit. It knows no
//! HTTP; handlers and the CLI call it with a [`Ctx`] naming who asks.
//!
//! **Invariants.**
//! - Every operation on a subject is decided by [`crate::policy`] and recorded by
//!   [`crate::audit`] (allowed or denied) before it returns; the changes it makes ride in the
//!   same write batch as its audit entry.
//! - Plaintext leaves only after its audit entry is durable; if the entry cannot be written,
//!   the operation fails with [`VaultError::Unavailable`] and returns nothing.
//! - Writes to one subject run under that subject's lock (see [`subject_locks::SubjectLocks`]).
//! - Nothing here logs a value, a token or key bytes.

mod admin;
mod answer;
pub mod backup;
mod batches;
mod budget;
pub mod codec;
mod dek_cache;
mod disclose;
mod erasure;
pub mod error;
mod export;
mod facts;
mod followup;
mod idempotency;
pub mod import;
mod index;
pub mod index_job;
mod journal;
pub mod keyring;
mod lookup;
mod privacy;
mod read;
mod records;
mod rekey;
mod replay;
mod retention;
pub mod rewrap;
mod sealed;
mod settings;
mod subject_cache;
mod subject_locks;
mod write;

use std::sync::Arc;

use qoima_keys::RootKey;
use time::OffsetDateTime;

/// The storage engine's statistics, as [`Vault::engine_stats`] gives them.
pub use crate::store::{EngineStats, LeaseHolder as ActiveNode, SpaceStats};
pub use answer::{Answer, Mode};
pub use codec::{ConsentRecord, ContractRecord, DisclosureRecord, ErasureRecord, ErasureStatus};
pub use dek_cache::DekCache;
pub use disclose::DisclosureRequest;
pub use error::VaultError;
pub use export::{AccessSummary, Export};
pub use facts::ConsentRequest;
pub use idempotency::{canonical_json, Idempotency, IdempotencyKey};
pub use journal::{ErasureJournal, JournalEntry};
pub use keyring::{KekInfo, KekState, Keyring};
pub use read::{FieldText, FieldTexts, FieldValues};
pub use settings::{default_indexes, default_journal_path, sibling, IndexedField, Settings};
pub use subject_cache::{SubjectCache, SubjectView};
pub use subject_locks::SubjectLocks;
pub use write::WriteOutcome;

use crate::audit::{AuditLog, Decision, Draft, FaultSwitch};
use crate::domain::{CallerName, Clock, FieldName, RequestId};
use crate::policy::{Action, Caller};
use crate::store::{Space, Store, StoreError, Tier, WriteState};

/// Who is asking, and which request this is.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub caller: Arc<Caller>,
    /// The vault's own id of the request (always generated here, never the client's).
    pub request_id: RequestId,
    /// The id the client gave the request (`x-request-id`), if it gave a plain one: recorded in
    /// its own field, so a client cannot pass its requests off as the vault's (e.g. `summary`).
    pub client_request_id: Option<RequestId>,
    /// How the caller came, when that is not its own request: e.g. the privacy centre acting
    /// for the subject ([`crate::privacy::VIA`]). Appended to every audit reason.
    pub via: Option<&'static str>,
    /// The caller's `Idempotency-Key` for this (mutating) request, if it sent one: a retry
    /// gets the first answer ([`idempotency`]).
    pub idempotency: Option<Idempotency>,
}

impl Ctx {
    /// The vault itself (retention sweeps, pending erasures, start-up work).
    pub fn system() -> Self {
        Self {
            caller: Arc::new(Caller {
                name: CallerName::parse("qoima").expect("valid name"),
                roles: Default::default(),
                purposes: Default::default(),
            }),
            request_id: RequestId::generate(),
            client_request_id: None,
            via: None,
            idempotency: None,
        }
    }
}

/// The vault.
pub struct Vault {
    store: Arc<Store>,
    audit: AuditLog,
    keyring: Keyring,
    /// Shared with the audit committer, which caches a new subject's DEK once it is written.
    dek_cache: Arc<DekCache>,
    /// What reads find, for hot subjects; the store drops a view when it writes the subject,
    /// and a field write then installs the one it leaves.
    subject_cache: Arc<subject_cache::SubjectCache>,
    locks: SubjectLocks,
    settings: Settings,
    clock: Arc<dyn Clock>,
    journal: ErasureJournal,
    rewrap: rewrap::RewrapRunner,
    purges: erasure::PurgeQueue,
    /// Follow-ups of committed changes still to finish (purges, escrow), retried in the background.
    follow_ups: followup::FollowUps,
    /// Fault injection for tests (never set in production).
    faults: Arc<FaultSwitch>,
    auth_failures: budget::AuthFailureBudget,
    read_limits: budget::ReadLimits,
    answer_paths: AnswerPaths,
    /// The schema's mandatory fields, listed once (every write reports the missing ones).
    mandatory: Vec<FieldName>,
    /// Idempotency keys of requests being processed (one at a time per caller and key).
    in_flight: idempotency::InFlight,
    /// Unique values being written (the blind index's uniqueness).
    value_locks: index::ValueLocks,
    /// The build of entries for fields indexed after their data was written.
    index_build: index_job::IndexRunner,
}

/// How reads and writes were answered: in [`Mode::NoWait`] on the async thread, from memory,
/// or in [`Mode::Wait`] on a blocking thread (data not in memory, a locked subject, a limited
/// caller, a full audit queue). Refusals count where they were answered.
#[derive(Debug, Default)]
pub struct AnswerPaths {
    pub reads: AnswerCounts,
    pub writes: AnswerCounts,
}

#[derive(Debug, Default)]
pub struct AnswerCounts {
    pub in_memory: std::sync::atomic::AtomicU64,
    pub blocking: std::sync::atomic::AtomicU64,
}

impl AnswerCounts {
    /// Counts `answer`, given in `mode` (an attempt that would block is counted when it is
    /// answered in the other mode).
    fn count<T>(&self, mode: Mode, answer: &Answer<T>) {
        let n = match mode {
            _ if answer.would_block() => return,
            Mode::NoWait => &self.in_memory,
            Mode::Wait => &self.blocking,
        };
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({})", self.settings.data_dir.display())
    }
}

impl Vault {
    /// Opens the store, the keyring (with `root`) and the audit log, then finishes work a
    /// crash or restart left behind (pending erasures whose holds are gone, unpurged shreds).
    pub fn open(settings: Settings, root: RootKey, clock: Arc<dyn Clock>, faults: Arc<FaultSwitch>) -> Result<Self, VaultError> {
        let store = Arc::new(Store::open_engine(&settings.engine, &settings.data_dir, crate::audit::summary::merge)?);
        Self::with_store(store, settings, root, clock, faults)
    }

    pub fn with_store(
        store: Arc<Store>,
        settings: Settings,
        root: RootKey,
        clock: Arc<dyn Clock>,
        faults: Arc<FaultSwitch>,
    ) -> Result<Self, VaultError> {
        // The store tells the subject cache of every write; a store already telling another
        // vault's cache could not keep this one coherent, so it stays off.
        let cache = Arc::new(subject_cache::SubjectCache::new(settings.subject_cache_bytes));
        let subject_cache = if store.observe_writes(cache.clone()) { cache } else { Arc::new(subject_cache::SubjectCache::new(0)) };
        let keyring = Keyring::load_or_init(&store, root, clock.now(), settings.kek_wrap_limit)?;
        let purposes = settings.purposes.0.keys().map(|p| p.to_string()).collect();
        let audit = AuditLog::start(store.clone(), clock.clone(), faults.clone(), purposes)?;
        // Before anything can erase: a store from before the access summaries gets them, but
        // not for subjects already erased.
        let erased = |s: &str| {
            let record = store.get_with(Tier::Any, Space::Erasures, s.as_bytes(), |v| serde_json::from_slice::<ErasureRecord>(v).ok());
            match record {
                Ok(None) => false,
                Ok(Some(Some(r))) => r.status == ErasureStatus::Erased,
                // Unreadable: left out (a record that does not parse fails the start anyway).
                _ => true,
            }
        };
        crate::audit::summary::backfill(&store, erased)?;
        let journal = ErasureJournal::open(&settings.erasure_journal)?;
        let vault = Self {
            dek_cache: Arc::new(DekCache::new(settings.dek_cache_capacity)),
            subject_cache,
            auth_failures: budget::AuthFailureBudget::new(settings.audited_auth_failures_per_second),
            read_limits: budget::ReadLimits::new(settings.max_reads_per_minute.clone()),
            locks: SubjectLocks::new(4096),
            mandatory: settings.schema.mandatory(),
            store,
            audit,
            keyring,
            settings,
            clock,
            journal,
            rewrap: Default::default(),
            purges: Default::default(),
            follow_ups: Default::default(),
            faults,
            answer_paths: Default::default(),
            in_flight: Default::default(),
            value_locks: index::ValueLocks::new()?,
            index_build: Default::default(),
        };
        vault.write_escrow()?;
        vault.plan_index_build()?;
        vault.resume_erasures()?;
        if vault.store.get(Space::Jobs, followup::KEYRING_PURGE_KEY)?.is_some() {
            vault.keyring_purge_or_defer();
        }
        Ok(vault)
    }

    /// Stops background jobs after their current batch, then the audit committer after it has
    /// written what it holds.
    pub fn close(&self) {
        self.rewrap.stop();
        self.index_build.stop();
        self.stop_follow_ups();
        if let Err(e) = self.flush_unrecorded_auth_failures() {
            tracing::warn!(error = %e, "could not record the count of unrecorded failed authentications");
        }
        self.audit.shutdown();
        // Last: the audit committer has written everything it had.
        self.store.close();
    }

    /// Rewrites the keyring escrow file from the store.
    fn write_escrow(&self) -> Result<(), VaultError> {
        keyring::Escrow::from_store(&self.store)?.write(&self.settings.keyring_escrow)?;
        Ok(())
    }

    /// The raw store, for the integration tests that inspect or tamper with stored bytes.
    /// Not an API: nothing outside the vault in `src/` calls it (they use the narrow methods
    /// below).
    #[doc(hidden)]
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The storage engine's statistics (for `/metrics`).
    pub fn engine_stats(&self) -> EngineStats {
        self.store.stats()
    }

    /// Whether the store answers reads and takes writes now (readiness); blocks briefly.
    pub fn store_ready(&self) -> Result<(), StoreError> {
        self.store.ready()
    }

    /// Whether the store takes writes now (the server's watchdog); does not wait.
    pub fn store_write_state(&self) -> WriteState {
        self.store.write_state()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn subject_cache(&self) -> &SubjectCache {
        &self.subject_cache
    }

    pub fn dek_cache(&self) -> &DekCache {
        &self.dek_cache
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn audit_stats(&self) -> &crate::audit::AuditStats {
        self.audit.stats()
    }

    pub fn answer_paths(&self) -> &AnswerPaths {
        &self.answer_paths
    }

    /// Whether the audit log's last write succeeded.
    pub fn audit_healthy(&self) -> bool {
        self.audit.healthy()
    }

    /// An allowed-entry draft for `action` by `ctx`; add purpose, fields or `deny()` to it.
    fn draft(&self, ctx: &Ctx, action: Action, subject: Option<&str>, reason: impl Into<String>) -> Draft {
        let mut reason = reason.into();
        if let Some(via) = ctx.via {
            reason = format!("{reason} ({via})");
        }
        Draft {
            caller: ctx.caller.name.to_string(),
            action: action.as_str().into(),
            subject: subject.map(str::to_owned),
            purpose: None,
            fields: Vec::new(),
            decision: Decision::Allow,
            reason,
            request_id: ctx.request_id.as_str().to_owned(),
            client_request_id: ctx.client_request_id.as_ref().map(|c| c.as_str().to_owned()),
            ..Default::default()
        }
    }

    /// Records a refusal and returns the error to give the caller, blocking until the entry is
    /// durable ([`Vault::refusal`] in either mode, for the read and the write). If even the
    /// refusal cannot be recorded, the caller gets 503 instead.
    fn refuse(
        &self,
        ctx: &Ctx,
        action: Action,
        subject: Option<&str>,
        purpose: Option<&str>,
        fields: Vec<String>,
        err: VaultError,
    ) -> VaultError {
        let draft = self.refusal_draft(answer::Refused { ctx, action, subject, purpose, fields }, &err);
        match self.audit.record(draft) {
            Ok(_) => err,
            Err(e) => e.into(),
        }
    }

    /// The caller's read budget (`max_reads_per_minute`), recording a refusal.
    fn read_budget(&self, ctx: &Ctx, action: Action, subject: Option<&str>, purpose: Option<&str>) -> Result<(), VaultError> {
        let caller = ctx.caller.name.as_str();
        self.read_limits.admit(caller, self.clock.now()).map_err(|(per_minute, retry_after_secs)| {
            let e = VaultError::RateLimited { caller: caller.to_owned(), per_minute, retry_after_secs };
            self.refuse(ctx, action, subject, purpose, vec![], e)
        })
    }

    /// Role gate for `action`, recording a refusal.
    fn gate(&self, ctx: &Ctx, action: Action, subject: Option<&str>) -> Result<(), VaultError> {
        crate::policy::may(&ctx.caller, action).map_err(|d| self.refuse(ctx, action, subject, None, vec![], d.into()))
    }
}

#[cfg(test)]
mod tests;
