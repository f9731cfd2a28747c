//! The vault core: the one place that composes keys, store, policy and audit. It knows no
//! HTTP; handlers and the CLI call it with a [`Ctx`] naming who asks.
//!
//! **Invariants.**
//! - Every operation on a subject is decided by [`crate::policy`] and recorded by
//!   [`crate::audit`] (allowed or denied) before it returns; the changes it makes ride in the
//!   same write batch as its audit entry.
//! - Plaintext leaves only after its audit entry is durable; if the entry cannot be written,
//!   the operation fails with [`VaultError::Unavailable`] and returns nothing.
//! - Writes to one subject run under that subject's lock (see [`cache::SubjectLocks`]).
//! - Nothing here logs a value, a token or key bytes.

mod admin;
mod answer;
pub mod backup;
mod budget;
mod cache;
pub mod codec;
mod disclose;
mod erasure;
mod export;
mod facts;
mod followup;
mod idempotency;
mod journal;
pub mod keyring;
mod privacy;
mod read;
mod records;
mod rekey;
mod retention;
pub mod rewrap;
mod views;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use qoima_keys::{Dek, RootKey};
use time::OffsetDateTime;

/// The storage engine's statistics, as [`Vault::engine_stats`] gives them.
pub use crate::store::{EngineStats, SpaceStats};
pub use answer::{Answer, Mode};
pub use cache::{DekCache, SubjectLocks};
pub use codec::{ConsentRecord, ContractRecord, DisclosureRecord, ErasureRecord, ErasureStatus};
pub use disclose::DisclosureRequest;
pub use export::{AccessSummary, Export};
pub use facts::ConsentRequest;
pub use idempotency::{canonical_json, Idempotency, IdempotencyKey};
pub use journal::{ErasureJournal, JournalEntry};
pub use keyring::{KekInfo, KekState, Keyring};
pub use read::{FieldText, FieldTexts, FieldValues};
pub use views::{SubjectView, SubjectViews};
pub use write::WriteOutcome;

use crate::audit::{AuditError, AuditLog, Decision, Draft, FaultSwitch};
use crate::domain::{CallerName, Clock, FieldName, InvalidId, RequestId, SubjectId};
use crate::policy::{Action, Caller, Denial, Purposes, SubjectFacts};
use crate::schema::{Schema, SchemaError};
use crate::store::{Space, Store, StoreError, Tier, WriteState};

use codec::SubjectMeta;

/// What the vault needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Append-only list of erasures kept outside the data directory, replayed on restore.
    pub erasure_journal: PathBuf,
    /// Copy of the keyring (wrapped KEKs) kept outside the data directory; backups carry none.
    pub keyring_escrow: PathBuf,
    pub schema: Schema,
    pub purposes: Purposes,
    /// The privacy policy version in force (P1); consents record the one they were given under.
    pub policy_version: String,
    /// Field encryptions allowed under one DEK before it is rotated automatically.
    pub dek_seal_limit: u64,
    /// DEK wraps allowed under one KEK generation before the vault rotates to a new one.
    pub kek_wrap_limit: u64,
    pub dek_cache_capacity: usize,
    /// Bytes of sealed records, entries and facts of recently read subjects kept in memory
    /// (ciphertexts only; 0 turns the cache off).
    pub subject_cache_bytes: usize,
    /// How often KEKs rotate, and how long backups are kept: together they bound when an
    /// erased subject's DEK becomes unreadable in old backups too.
    pub key_rotation_days: u32,
    pub backup_retention_days: u32,
    /// Subjects per rewrap batch, and a pause between batches (to bound its load).
    pub rewrap_batch: usize,
    pub rewrap_pause_ms: u64,
    /// Failed authentications recorded one by one per second (bursts of ten seconds' worth);
    /// the rest are counted into summary entries.
    pub audited_auth_failures_per_second: u32,
    /// Reads of personal data (read, disclose, export) per minute, by caller name; callers not
    /// named are not limited.
    pub max_reads_per_minute: BTreeMap<String, u32>,
    /// Write grants (`[[callers]] writes`, field patterns), by caller name; callers not named
    /// write what their purposes read ([`crate::policy::decide_write`]).
    pub write_grants: BTreeMap<String, Vec<String>>,
}

impl Settings {
    /// Defaults for a data directory: the shipped schema and purposes.
    pub fn new(data_dir: PathBuf) -> Self {
        let erasure_journal = default_journal_path(&data_dir);
        let keyring_escrow = sibling(&data_dir, "-keyring.json");
        Self {
            data_dir,
            erasure_journal,
            keyring_escrow,
            schema: Schema::default(),
            purposes: Purposes::default(),
            policy_version: "2019-01-29".into(),
            // NIST SP 800-38D: at most 2^32 invocations with random 96-bit nonces per key.
            dek_seal_limit: 1 << 32,
            // The same limit for DEKs wrapped under one KEK generation.
            kek_wrap_limit: 1 << 32,
            dek_cache_capacity: 100_000,
            subject_cache_bytes: 32 << 20,
            key_rotation_days: 90,
            backup_retention_days: 30,
            rewrap_batch: 256,
            rewrap_pause_ms: 0,
            audited_auth_failures_per_second: 20,
            max_reads_per_minute: BTreeMap::new(),
            write_grants: BTreeMap::new(),
        }
    }
}

/// `<data_dir>-erasures.jsonl`: beside the data directory, not in it, so replacing the data
/// directory with a backup never replaces the list of erasures made since.
pub fn default_journal_path(data_dir: &std::path::Path) -> PathBuf {
    sibling(data_dir, "-erasures.jsonl")
}

/// `<data_dir><suffix>`, beside the data directory.
pub fn sibling(data_dir: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(suffix);
    data_dir.with_file_name(name)
}

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

/// Why an operation failed. Texts never include field values, tokens or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The request is malformed or names something that does not exist in the schema.
    #[error("{0}")]
    Invalid(String),
    /// Policy said no.
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("{0}")]
    NotFound(String),
    /// The subject was crypto-shredded; its erasure receipt.
    #[error("subject {subject} was erased (receipt {receipt})")]
    Erased { subject: String, receipt: String },
    #[error("{0}")]
    Conflict(String),
    /// The caller used this `Idempotency-Key` before for a different request: nothing was done.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A request with this `Idempotency-Key` is still being processed: nothing was done; retry.
    #[error("{0}")]
    IdempotencyInFlight(String),
    /// The caller is over its `max_reads_per_minute`: nothing was read.
    #[error("caller {caller} is over its limit of {per_minute} reads of personal data per minute; retry in {retry_after_secs} s")]
    RateLimited { caller: String, per_minute: u32, retry_after_secs: u64 },
    /// The KEK generation that wrapped the subject's DEK was destroyed (e.g. a subject restored
    /// from an old backup): its data is unreadable for good.
    #[error("the KEK generation {generation} that wrapped subject {subject}'s key was destroyed; its data is unreadable for good")]
    KeyDestroyed { subject: String, generation: u32 },
    /// The active KEK generation has made all the wraps `keys.kek_wrap_limit` allows and the
    /// rotation to a new one is not in place yet: nothing was done; retry shortly.
    #[error("{0}")]
    WrapLimit(String),
    /// Storage or audit cannot take writes: nothing was done, nothing is returned.
    #[error("{0}")]
    Unavailable(String),
    /// The data directory is open in another process (a running vault): nothing was done.
    #[error("data directory {0} is in use by another process (is the vault running?)")]
    InUse(PathBuf),
    /// The root key does not open the keyring.
    #[error("{0}")]
    RootKey(String),
    /// A key or stored value failed to open: corruption or tampering.
    #[error("{0}")]
    Internal(String),
    /// An operation in [`Mode::NoWait`] would have had to wait (data not in memory, the
    /// subject's lock taken, the audit queue full): nothing was done; run it in [`Mode::Wait`].
    #[error("the operation would wait")]
    WouldBlock,
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => VaultError::Internal(e.to_string()),
            StoreError::Locked(path) => VaultError::InUse(path),
            StoreError::NotInMemory => VaultError::WouldBlock,
            _ => VaultError::Unavailable(e.to_string()),
        }
    }
}

impl From<AuditError> for VaultError {
    fn from(e: AuditError) -> Self {
        VaultError::Unavailable(e.to_string())
    }
}

impl From<qoima_keys::Error> for VaultError {
    fn from(e: qoima_keys::Error) -> Self {
        VaultError::Internal(format!("key operation failed: {e}"))
    }
}

impl From<SchemaError> for VaultError {
    fn from(e: SchemaError) -> Self {
        VaultError::Invalid(e.to_string())
    }
}

impl From<InvalidId> for VaultError {
    fn from(e: InvalidId) -> Self {
        VaultError::Invalid(e.to_string())
    }
}

/// The vault.
pub struct Vault {
    store: Arc<Store>,
    audit: AuditLog,
    keyring: Keyring,
    /// Shared with the audit committer, which caches a new subject's DEK once it is written.
    cache: Arc<DekCache>,
    /// What reads find, for hot subjects; the store drops a view when it writes the subject,
    /// and a field write then installs the one it leaves.
    views: Arc<views::SubjectViews>,
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
    paths: Paths,
    /// The schema's mandatory fields, listed once (every write reports the missing ones).
    mandatory: Vec<FieldName>,
    /// Idempotency keys of requests being processed (one at a time per caller and key).
    in_flight: idempotency::InFlight,
}

/// How reads and writes were answered: in [`Mode::NoWait`] on the async thread, from memory,
/// or in [`Mode::Wait`] on a blocking thread (data not in memory, a locked subject, a limited
/// caller, a full audit queue). Refusals count where they were answered.
#[derive(Debug, Default)]
pub struct Paths {
    pub reads: PathCounts,
    pub writes: PathCounts,
}

#[derive(Debug, Default)]
pub struct PathCounts {
    pub in_memory: std::sync::atomic::AtomicU64,
    pub blocking: std::sync::atomic::AtomicU64,
}

impl PathCounts {
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
        let store = Arc::new(Store::open(&settings.data_dir, crate::audit::summary::merge)?);
        Self::with_store(store, settings, root, clock, faults)
    }

    pub fn with_store(
        store: Arc<Store>,
        settings: Settings,
        root: RootKey,
        clock: Arc<dyn Clock>,
        faults: Arc<FaultSwitch>,
    ) -> Result<Self, VaultError> {
        // The store tells the views of every write; a store already telling another vault's
        // views could not keep these coherent, so they stay off.
        let views = Arc::new(views::SubjectViews::new(settings.subject_cache_bytes));
        let views = if store.observe_writes(views.clone()) { views } else { Arc::new(views::SubjectViews::new(0)) };
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
            cache: Arc::new(DekCache::new(settings.dek_cache_capacity)),
            views,
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
            paths: Default::default(),
            in_flight: Default::default(),
        };
        vault.write_escrow()?;
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
        self.stop_follow_ups();
        if let Err(e) = self.flush_unrecorded_auth_failures() {
            tracing::warn!(error = %e, "could not record the count of unrecorded failed authentications");
        }
        self.audit.shutdown();
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

    pub fn subject_views(&self) -> &SubjectViews {
        &self.views
    }

    pub fn cache(&self) -> &DekCache {
        &self.cache
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    pub fn audit_stats(&self) -> &crate::audit::AuditStats {
        self.audit.stats()
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
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

    fn meta(&self, subject: &str) -> Result<Option<SubjectMeta>, VaultError> {
        self.meta_in(Tier::Any, subject)
    }

    fn meta_in(&self, tier: Tier, subject: &str) -> Result<Option<SubjectMeta>, VaultError> {
        Ok(self.store.get_with(tier, Space::Subjects, subject.as_bytes(), SubjectMeta::decode)?.transpose()?)
    }

    fn erasure(&self, subject: &str) -> Result<Option<ErasureRecord>, VaultError> {
        self.erasure_in(Tier::Any, subject)
    }

    fn erasure_in(&self, tier: Tier, subject: &str) -> Result<Option<ErasureRecord>, VaultError> {
        let record = self.store.get_with(tier, Space::Erasures, subject.as_bytes(), |v| serde_json::from_slice(v))?;
        Ok(record.transpose().map_err(|_| StoreError::Corrupt { space: "erasures", what: "record" })?)
    }

    /// The subject's metadata if it is live; else a recorded refusal (410 or 404).
    fn live(&self, ctx: &Ctx, action: Action, subject: &SubjectId) -> Result<SubjectMeta, VaultError> {
        let s = subject.as_str();
        if let Some(e) = self.erasure(s)? {
            if e.status == ErasureStatus::Erased {
                return Err(self.refuse(ctx, action, Some(s), None, vec![], VaultError::Erased { subject: e.subject, receipt: e.receipt }));
            }
        }
        match self.meta(s)? {
            Some(m) => Ok(m),
            None => Err(self.refuse(ctx, action, Some(s), None, vec![], VaultError::NotFound(format!("subject {s} not found")))),
        }
    }

    /// The subject's DEK, from the cache or unwrapped by its KEK generation.
    fn dek(&self, subject: &str, meta: &SubjectMeta) -> Result<Arc<Dek>, VaultError> {
        if let Some(d) = self.cache.get(subject, meta.dek_version) {
            return Ok(d);
        }
        let g = meta.generation()?;
        if self.keyring.info(g).is_some_and(|i| i.state == KekState::Destroyed) {
            return Err(VaultError::KeyDestroyed { subject: subject.to_owned(), generation: g.0 });
        }
        let kek = self.keyring.get(g)?;
        let dek = Arc::new(kek.unwrap_dek(subject, meta.dek_version, &meta.wrapped_dek)?);
        self.cache.insert(subject, dek.clone());
        Ok(dek)
    }

    /// Contracts and consents of a subject, and the facts the policy decides on.
    fn facts(&self, subject: &str, meta: &SubjectMeta) -> Result<(SubjectFacts, Vec<ContractRecord>, Vec<ConsentRecord>), VaultError> {
        self.facts_in(Tier::Any, subject, meta)
    }

    fn facts_in(
        &self,
        tier: Tier,
        subject: &str,
        meta: &SubjectMeta,
    ) -> Result<(SubjectFacts, Vec<ContractRecord>, Vec<ConsentRecord>), VaultError> {
        let mut contracts = Vec::new();
        let mut consents = Vec::new();
        let mut bad = false;
        let plen = subject.len() + 1;
        self.store.scan_prefix_in(tier, Space::Facts, &crate::layout::subject_prefix(subject), |k, v| {
            match k.get(plen) {
                Some(b'c') => match serde_json::from_slice::<ContractRecord>(v) {
                    Ok(c) => contracts.push(c),
                    Err(_) => bad = true,
                },
                Some(b'k') => match serde_json::from_slice::<ConsentRecord>(v) {
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

#[cfg(test)]
mod tests;
