//! What the vault needs from the configuration, and where its files beside the data directory go.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::domain::FieldName;
use crate::policy::Purposes;
use crate::schema::Schema;

/// A field kept in the blind index (`[[indexes]]`): lookups find subjects by its value, and a
/// unique one belongs to one live subject at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedField {
    pub field: FieldName,
    pub unique: bool,
}

/// The shipped default: `identity.iin` (unique), `identity.phone`, `identity.email`.
pub fn default_indexes() -> Vec<IndexedField> {
    let f = |name: &str, unique| IndexedField { field: FieldName::parse(name).expect("default index names are valid"), unique };
    vec![f("identity.iin", true), f("identity.phone", false), f("identity.email", false)]
}

/// What the vault needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The RocksDB store's folder, and the admin socket's (whatever the engine).
    pub data_dir: PathBuf,
    /// The engine holding the store ([`crate::store::EngineChoice`]).
    pub engine: crate::store::EngineChoice,
    /// Append-only list of erasures kept outside the data directory, replayed on restore.
    pub erasure_journal: PathBuf,
    /// Copy of the keyring (wrapped KEKs) kept outside the data directory; backups carry none.
    pub keyring_escrow: PathBuf,
    pub schema: Schema,
    pub purposes: Purposes,
    /// The fields kept in the blind index.
    pub indexes: Vec<IndexedField>,
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
            engine: Default::default(),
            erasure_journal,
            keyring_escrow,
            schema: Schema::default(),
            purposes: Purposes::default(),
            indexes: default_indexes(),
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
