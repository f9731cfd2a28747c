//! Why a vault operation failed: [`VaultError`] and, for the variants with more than one
//! cause, an enum naming each cause. The texts are the API's problem `detail`s (for the 4xx
//! variants) and never include field values, tokens or key bytes.

use std::io;
use std::path::PathBuf;

use crate::audit::AuditError;
use crate::domain::InvalidId;
use crate::policy::Denial;
use crate::schema::SchemaError;
use crate::store::StoreError;

use super::backup::{DB_DIR, MANIFEST};

/// Why an operation failed. Texts never include field values, tokens or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The request is malformed or names something that does not exist in the schema (400).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Policy said no (403).
    #[error(transparent)]
    Denied(#[from] Denial),
    /// What the request names is not there (404).
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// The subject was crypto-shredded; its erasure receipt (410).
    #[error("subject {subject} was erased (receipt {receipt})")]
    Erased { subject: String, receipt: String },
    /// The request contradicts the state it would change (409).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The caller used this `Idempotency-Key` before for a different request: nothing was done
    /// (422).
    #[error("this Idempotency-Key was used for a different request (method, path or body); use a new key for a new request")]
    IdempotencyKeyReused,
    /// A request with this `Idempotency-Key` is still being processed: nothing was done; retry
    /// (409).
    #[error("a request with this Idempotency-Key is still in flight; retry shortly")]
    IdempotencyInFlight,
    /// The caller is over its `max_reads_per_minute`: nothing was read (429).
    #[error("caller {caller} is over its limit of {per_minute} reads of personal data per minute; retry in {retry_after_secs} s")]
    RateLimited { caller: String, per_minute: u32, retry_after_secs: u64 },
    /// The KEK generation that wrapped the subject's DEK was destroyed (e.g. a subject restored
    /// from an old backup): its data is unreadable for good (410).
    #[error("the KEK generation {generation} that wrapped subject {subject}'s key was destroyed; its data is unreadable for good")]
    KeyDestroyed { subject: String, generation: u32 },
    /// The active KEK generation has made all the wraps `keys.kek_wrap_limit` allows and the
    /// rotation to a new one is not in place yet: nothing was done; retry shortly (503).
    #[error(
        "KEK generation {generation} has made its {limit} wraps (keys.kek_wrap_limit, NIST SP 800-38D); the vault is rotating to a \
         new generation: nothing was done, retry"
    )]
    WrapLimit { generation: u32, limit: u64 },
    /// A lookup on a field whose entries are still being built (a data directory written
    /// before the field was indexed): nothing was looked up; retry (503, `Retry-After`).
    #[error("the index of {field} is still being built; retry in {retry_after_secs} s")]
    IndexBuilding { field: String, retry_after_secs: u64 },
    /// The store could not tell whether the request's write committed (a PostgreSQL commit
    /// whose answer was lost and could not be resolved): neither done nor not done; a retry
    /// with the same `Idempotency-Key` learns which (503).
    #[error("the outcome of this request's write is unknown: {0}")]
    OutcomeUnknown(String),
    /// Storage or audit cannot take writes: nothing was done, nothing is returned (503).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Another vault node holds the shared store's active lease: this one stands by.
    #[error("another vault node is active on this store ({}; its lease expires in {} s unless renewed)", .0.holder, .0.expires_in_secs)]
    Standby(super::ActiveNode),
    /// The data directory is open in another process (a running vault): nothing was done.
    #[error("data directory {0} is in use by another process (is the vault running?)")]
    InUse(PathBuf),
    /// The root key does not open the keyring.
    #[error("cannot open KEK generation {generation} with the configured root key: {source}")]
    RootKey { generation: u32, source: qoima_keys::Error },
    /// A key or stored value failed to open (corruption or tampering), or the vault's own work
    /// failed (500).
    #[error(transparent)]
    Internal(#[from] Internal),
    /// An operation in [`Mode::NoWait`](super::Mode::NoWait) would have had to wait (data not
    /// in memory, the subject's lock taken, the audit queue full): nothing was done; run it in
    /// [`Mode::Wait`](super::Mode::Wait).
    #[error("the operation would wait")]
    WouldBlock,
}

/// Why a request is malformed ([`VaultError::Invalid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The request does not fit the schema (unknown field, bad value, …).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// An id in the request is malformed.
    #[error(transparent)]
    Id(#[from] InvalidId),
    /// A write that names no field.
    #[error("no fields given")]
    NoFields,
    /// A whole-subject read too large for one answer.
    #[error("the subject's records come to more than 4 GiB: name the fields to read")]
    TooLarge,
    /// A lookup on a field that is not indexed (`[[indexes]]`).
    #[error("{field} is not an indexed field")]
    NotIndexed { field: String },
    /// A purpose the configuration does not define.
    #[error("unknown purpose {purpose}")]
    UnknownPurpose { purpose: String },
    /// A purpose the configuration does not define, with the ones it does.
    #[error("unknown purpose {purpose} (configured: {})", configured.join(", "))]
    UnknownPurposeOf { purpose: String, configured: Vec<String> },
    /// A disclosure's recipient is empty or too long.
    #[error("recipient must be 1 to 200 characters")]
    Recipient,
    /// A disclosure's reference is too long.
    #[error("reference must be at most 500 characters")]
    Reference,
    /// A disclosure that names no field.
    #[error("a disclosure names the fields it transfers")]
    DisclosureFields,
    /// A contract status other than the two a caller may set.
    #[error("status must be \"settled\" or \"breached\"")]
    ContractStatus,
    /// A consent's policy version is empty or too long.
    #[error("policy_version must be 1 to 64 characters")]
    PolicyVersion,
    /// A consent that would expire before it is given.
    #[error("valid_until must be in the future")]
    ValidUntil,
    /// An `Idempotency-Key` header that is empty, too long or not printable ASCII.
    #[error("Idempotency-Key must be 1 to {max_len} printable ASCII characters")]
    IdempotencyKey { max_len: usize },
    /// A root key change to the key already in use.
    #[error("the new root key is the current one")]
    SameRootKey,
    /// A backup that needs a KEK generation neither the live store nor the escrow has.
    #[error("the backup needs KEK generation {generation}, which neither the live store nor the escrow knows")]
    BackupGeneration { generation: u32 },
    /// A backup into a folder that already exists.
    #[error("{} already exists; a backup goes into a new folder", dir.display())]
    BackupTargetExists { dir: PathBuf },
    /// A restore from a folder without a readable manifest.
    #[error("{} is not a Qoima backup (no readable {MANIFEST})", dir.display())]
    NotABackup { dir: PathBuf },
    /// A restore from a backup whose database folder cannot be read.
    #[error("backup has no {DB_DIR}/: {0}")]
    BackupDatabase(#[source] io::Error),
    /// A restore into a folder that is not empty.
    #[error("{} exists and is not empty; restore into a new folder", dir.display())]
    RestoreTargetNotEmpty { dir: PathBuf },
}

/// What the request names that is not there ([`VaultError::NotFound`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Missing {
    #[error("subject {subject} not found")]
    Subject { subject: String },
    #[error("contract {contract} not found")]
    Contract { contract: String },
    /// No consent to the purpose (to withdraw).
    #[error("no consent for {purpose} on record")]
    Consent { purpose: String },
    /// No erasure request for the subject (to report the status of).
    #[error("no erasure requested for {subject}")]
    Erasure { subject: String },
    #[error("no KEK generation {generation}")]
    Generation { generation: u32 },
}

/// How the request contradicts the state it would change ([`VaultError::Conflict`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// A contract created twice.
    #[error("contract {contract} already exists ({status})")]
    ContractExists { contract: String, status: &'static str },
    /// A unique field's value (`[[indexes]] unique`) that another live subject holds. Names
    /// the field, never the value or the other subject.
    #[error("{field} is unique and another subject already holds this value; nothing was stored")]
    UniqueValue { field: String },
    /// A change to a settled contract.
    #[error("contract {contract} is settled; a settled contract does not change")]
    ContractSettled { contract: String },
    /// Destroying the active KEK generation.
    #[error("generation {generation} is active; rotate first")]
    GenerationActive { generation: u32 },
    /// Destroying a KEK generation its counter says still wraps DEKs.
    #[error("generation {generation} still wraps {counted} DEKs; run a rewrap first")]
    GenerationInUse { generation: u32, counted: i64 },
    /// Destroying a KEK generation a scan finds still wrapping DEKs (or cannot check).
    #[error("generation {generation} still wraps {found} DEKs (the counter said {counted}); run a rewrap first")]
    GenerationStillWraps { generation: u32, found: u64, counted: i64 },
    /// Replaying the opening of a privacy session that has expired since.
    #[error("the privacy session this Idempotency-Key opened has expired; open a new one with a new key")]
    SessionExpired,
}

/// What cannot take writes now ([`VaultError::Unavailable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The store failed to read or write.
    #[error("{0}")]
    Store(#[source] StoreError),
    /// The audit log cannot record.
    #[error("{0}")]
    Audit(#[source] AuditError),
    /// A folder (for a backup or a restore) cannot be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot write the backup manifest: {0}")]
    WriteManifest(#[source] io::Error),
    /// A backup's database folder cannot be listed.
    #[error("{0}")]
    ReadBackup(#[source] io::Error),
    /// A backup's file cannot be copied in a restore.
    #[error("copy failed: {0}")]
    Copy(#[source] io::Error),
    /// A rewrap's KEK generation was rotated away while it ran (it starts a new pass).
    #[error("KEK generation {generation} is no longer active")]
    GenerationRotated { generation: u32 },
}

/// What failed inside the vault ([`VaultError::Internal`]): never the caller's doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Internal {
    /// A stored value does not decode ([`StoreError::Corrupt`]).
    #[error("{0}")]
    Corrupt(#[source] StoreError),
    /// A key failed to open or seal: corruption or tampering.
    #[error("key operation failed: {0}")]
    Key(#[source] qoima_keys::Error),
    /// A field decrypted but is not the JSON it was sealed as.
    #[error("a decrypted field is not JSON")]
    FieldNotJson,
    /// An operation's outcome, kept for idempotent replays, does not serialise.
    #[error("an outcome does not serialise")]
    Outcome,
    /// A KEK generation the keyring does not hold.
    #[error("KEK generation {generation} is destroyed or unknown")]
    GenerationUnknown { generation: u32 },
    /// The server's start-up work panicked or was cancelled.
    #[error("start-up task failed: {0}")]
    StartupTask(#[source] tokio::task::JoinError),
    /// A vault call on a blocking thread panicked or was cancelled.
    #[error("vault task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl VaultError {
    /// `subject {subject} not found` (404).
    pub fn subject_not_found(subject: &str) -> Self {
        VaultError::NotFound(Missing::Subject { subject: subject.to_owned() })
    }

    /// `no fields given` (400).
    pub fn no_fields() -> Self {
        VaultError::Invalid(Invalid::NoFields)
    }

    /// `a decrypted field is not JSON` (500).
    pub fn field_not_json() -> Self {
        VaultError::Internal(Internal::FieldNotJson)
    }
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => VaultError::Internal(Internal::Corrupt(e)),
            StoreError::Locked(path) => VaultError::InUse(path),
            StoreError::NotInMemory => VaultError::WouldBlock,
            StoreError::OutcomeUnknown(why) => VaultError::OutcomeUnknown(why),
            StoreError::LeaseHeld(holder) => VaultError::Standby(holder),
            _ => VaultError::Unavailable(Unavailable::Store(e)),
        }
    }
}

impl From<AuditError> for VaultError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::OutcomeUnknown(why) => VaultError::OutcomeUnknown(why),
            e => VaultError::Unavailable(Unavailable::Audit(e)),
        }
    }
}

impl From<qoima_keys::Error> for VaultError {
    fn from(e: qoima_keys::Error) -> Self {
        VaultError::Internal(Internal::Key(e))
    }
}

impl From<SchemaError> for VaultError {
    fn from(e: SchemaError) -> Self {
        VaultError::Invalid(Invalid::Schema(e))
    }
}

impl From<InvalidId> for VaultError {
    fn from(e: InvalidId) -> Self {
        VaultError::Invalid(Invalid::Id(e))
    }
}
