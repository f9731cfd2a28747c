//! The file format: `qoima.toml` exactly as TOML reads it (docs/configuration.md). These
//! shapes only say which keys exist and what type each holds (an unknown key is refused
//! here); the section parsers turn them into the settings and domain types and check the
//! rules. Nothing outside `config` sees them, so the core's types are not a file format.
//! Serde's errors name a shape by its type ("expected struct FieldSpec"), so these keep the
//! names the errors have always shown; elsewhere in `config` they are `file::FieldSpec` etc.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::error::{line_of, ConfigError};
use crate::domain::{CallerName, Purpose, Role};

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub erasure_journal: Option<PathBuf>,
    pub keyring_escrow: Option<PathBuf>,
    pub policy_version: Option<String>,
    pub lock_memory: Option<bool>,
    pub root_key: Option<Spanned<RawRootKey>>,
    #[serde(default)]
    pub callers: Vec<Spanned<RawCaller>>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub keys: KeySettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default)]
    pub purposes: Vec<Spanned<PurposeDef>>,
    #[serde(default)]
    pub schema: BTreeMap<String, Category>,
    /// `[[indexes]]`; absent: the shipped default.
    pub indexes: Option<Vec<Spanned<IndexDef>>>,
    pub tls: Option<TlsSettings>,
    pub privacy: Option<Spanned<RawPrivacy>>,
    pub storage: Option<Spanned<RawStorage>>,
}

impl RawConfig {
    /// Reads `text` as the file format; an error names the line (`name:line: message`).
    pub fn read(text: &str, name: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Format {
            file: name.to_string(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })
    }
}

/// `[root_key]`: exactly one of the three (checked by the parser, which names the line).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRootKey {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
    pub credential: Option<String>,
}

/// One `[[callers]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    pub name: CallerName,
    pub token_sha256: Option<Spanned<String>>,
    pub client_cert_sha256: Option<Spanned<String>>,
    pub roles: Vec<Role>,
    #[serde(default)]
    pub purposes: Vec<Spanned<Purpose>>,
    pub max_reads_per_minute: Option<Spanned<u32>>,
    /// Field patterns it may write; leave out for what its purposes read.
    pub writes: Option<Spanned<Vec<String>>>,
    pub subject_assertion: Option<Spanned<AssertionSettings>>,
}

/// `[[callers]] subject_assertion = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssertionSettings {
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub max_age_secs: Option<u32>,
    pub subject_claim: Option<String>,
}

/// `[limits]`; a key left out takes its default ([`super::Limits`]).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Limits {
    pub max_body_bytes: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub max_concurrent_requests: Option<usize>,
    pub audited_auth_failures_per_second: Option<u32>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
}

/// `[keys]`; a key left out takes its default ([`super::KeySettings`]).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySettings {
    pub dek_seal_limit: Option<u64>,
    pub kek_wrap_limit: Option<u64>,
    pub dek_cache_capacity: Option<usize>,
    pub rotation_days: Option<u32>,
    pub backup_retention_days: Option<u32>,
    pub rewrap_batch: Option<usize>,
    pub rewrap_pause_ms: Option<u64>,
}

/// `[retention]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionSettings {
    pub sweep_interval_secs: Option<u64>,
}

/// `[cache]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheSettings {
    pub subjects_mib: Option<usize>,
}

/// One `[[indexes]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IndexDef {
    pub field: String,
    #[serde(default)]
    pub unique: bool,
}

/// One `[[purposes]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PurposeDef {
    pub name: Purpose,
    pub basis: BasisRule,
    pub fields: Vec<String>,
}

/// `basis = "…"` of a purpose ([`crate::policy::BasisRule`]).
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum BasisRule {
    ApplicationOrContract,
    OpenContract,
    Consent,
    ConsentObligationOrBreach,
}

/// `[schema.<category>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Category {
    #[serde(default)]
    pub retention_days: Option<u32>,
    #[serde(default)]
    pub application: bool,
    #[serde(default)]
    pub open: Option<FieldType>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
}

/// `[schema.<category>.fields] <name> = { type = "…", mandatory = … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldSpec {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub mandatory: bool,
}

/// A field's `type = "…"` ([`crate::schema::FieldType`]), in the same order.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum FieldType {
    Text,
    Iin,
    Date,
    Timestamp,
    Phone,
    Email,
    Number,
    Integer,
    Ip,
}

/// `[tls]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `[privacy]`: the borrower's privacy centre (docs/privacy-centre.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    pub public_url: Option<String>,
    pub session_minutes: Option<u32>,
    #[serde(default)]
    pub frame_ancestors: Vec<String>,
    pub default_language: Option<String>,
}

/// `[storage]`: which engine holds the vault's data (docs/configuration.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub engine: Option<String>,
    pub postgres: Option<Spanned<RawPostgres>>,
}

/// `[storage.postgres]` (docs/scale-out.md).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    pub schema: Option<String>,
    pub pool_size: Option<usize>,
    pub connect_timeout_seconds: Option<u64>,
    pub resolve_timeout_seconds: Option<u64>,
    pub allow_async: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub lease_seconds: Option<u64>,
    pub advertise_url: Option<String>,
}
