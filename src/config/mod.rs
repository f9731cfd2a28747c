//! Configuration: one TOML file (docs/configuration.md) plus `QOIMA_…` environment
//! overrides, parsed into typed settings once at start-up. An invalid file stops start-up
//! with a message naming the line; the vault never starts half-configured.
//!
//! `file` is the file format (the TOML shapes, nothing else sees them); one parser per
//! section turns its shape into settings and domain types (`paths`, `schema`, `callers`,
//! `settings`, `privacy`); `dev` is the development default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qoima_keys::RootKeySource;

use crate::auth::Callers;
use crate::policy::Purposes;
use crate::privacy::PrivacySettings;
use crate::schema::Schema;
use crate::vault::{IndexedField, Settings};

mod callers;
mod dev;
mod error;
mod file;
mod indexes;
mod paths;
mod privacy;
mod schema;
mod settings;
mod storage;
#[cfg(test)]
mod tests;

pub use dev::{new_token, DevSetup};
pub use error::ConfigError;
pub use paths::DEFAULT_LISTEN;
pub use settings::{CacheSettings, KeySettings, Limits, RetentionSettings, MAX_CONNECTIONS, MAX_CONNECTION_TIMEOUT_SECS, MAX_KEY_DAYS};

use error::Source;
use file::RawConfig;

/// The parsed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub erasure_journal: PathBuf,
    pub keyring_escrow: PathBuf,
    pub root_key: RootKeySource,
    pub callers: Callers,
    pub policy_version: String,
    pub limits: Limits,
    pub keys: KeySettings,
    pub retention: RetentionSettings,
    pub cache: CacheSettings,
    pub schema: Schema,
    pub purposes: Purposes,
    /// The fields kept in the blind index (`[[indexes]]`).
    pub indexes: Vec<IndexedField>,
    /// HTTPS for the listener, if configured.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The borrower's privacy centre.
    pub privacy: PrivacySettings,
    /// Lock the process's memory (mlockall) so keys and decrypted data are never swapped out.
    pub lock_memory: bool,
    /// The engine holding the vault's data (`[storage]`).
    pub storage: crate::store::EngineChoice,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// An environment lookup, passed in so tests need not touch the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The privacy policy version consents record when the file names none.
const DEFAULT_POLICY_VERSION: &str = "2019-01-29";

impl Config {
    /// Reads and parses a configuration file, applying `QOIMA_…` overrides.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Unreadable { file: path.display().to_string(), reason: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut c = Self::parse(&text, &path.display().to_string(), &base, env)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text. `name` labels errors; relative paths resolve against `base`.
    /// Sections are checked in a fixed order and the first broken rule is the error.
    pub fn parse(text: &str, name: &str, base: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let src = Source { name, text };
        let raw = RawConfig::read(text, name)?;
        let listen = paths::listen(raw.listen, env, src)?;
        let data_dir = paths::data_dir(raw.data_dir, env, base, src)?;
        let (erasure_journal, keyring_escrow) = paths::side_files(raw.erasure_journal, raw.keyring_escrow, &data_dir, base, src)?;
        let root_key = paths::root_key(raw.root_key, env, &data_dir, base, src)?;
        let schema = schema::schema(raw.schema, src)?;
        let purposes = schema::purposes(raw.purposes, &schema, src)?;
        let indexes = indexes::indexes(raw.indexes, &schema, src)?;
        let callers = callers::callers(raw.callers, &purposes, &schema, base, src)?;
        let policy_version = policy_version(raw.policy_version, src)?;
        let limits = settings::limits(raw.limits, src)?;
        let keys = settings::keys(raw.keys, src)?;
        let cache = settings::cache(raw.cache, src)?;
        let lock_memory = lock_memory(raw.lock_memory, env)?;
        let privacy = privacy::privacy(raw.privacy, src)?;
        let storage = storage::storage(raw.storage, env, base, src)?;
        Ok(Self {
            listen,
            data_dir,
            erasure_journal,
            keyring_escrow,
            root_key,
            callers,
            policy_version,
            limits,
            keys,
            retention: settings::retention(raw.retention),
            cache,
            schema,
            purposes,
            indexes,
            tls: paths::tls(raw.tls, base),
            privacy,
            lock_memory,
            storage,
            source: None,
        })
    }

    /// The settings the vault core takes.
    pub fn vault_settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            engine: self.storage.clone(),
            erasure_journal: self.erasure_journal.clone(),
            keyring_escrow: self.keyring_escrow.clone(),
            schema: self.schema.clone(),
            purposes: self.purposes.clone(),
            indexes: self.indexes.clone(),
            policy_version: self.policy_version.clone(),
            dek_seal_limit: self.keys.dek_seal_limit,
            kek_wrap_limit: self.keys.kek_wrap_limit,
            dek_cache_capacity: self.keys.dek_cache_capacity,
            subject_cache_bytes: self.cache.subjects_mib << 20,
            key_rotation_days: self.keys.rotation_days,
            backup_retention_days: self.keys.backup_retention_days,
            rewrap_batch: self.keys.rewrap_batch,
            rewrap_pause_ms: self.keys.rewrap_pause_ms,
            audited_auth_failures_per_second: self.limits.audited_auth_failures_per_second,
            max_reads_per_minute: self
                .callers
                .entries()
                .iter()
                .filter_map(|e| e.max_reads_per_minute.map(|m| (e.caller.name.to_string(), m)))
                .collect(),
            write_grants: self.callers.entries().iter().filter_map(|e| Some((e.caller.name.to_string(), e.writes.clone()?))).collect(),
        }
    }
}

/// `policy_version`: what consents record they were given under; 1 to 64 characters.
fn policy_version(raw: Option<String>, src: Source<'_>) -> Result<String, ConfigError> {
    let v = raw.unwrap_or_else(|| DEFAULT_POLICY_VERSION.into());
    if v.is_empty() || v.len() > 64 {
        return Err(src.rule("policy_version must be 1 to 64 characters"));
    }
    Ok(v)
}

/// `lock_memory`, which `QOIMA_LOCK_MEMORY` (`true` or `false`) overrides.
fn lock_memory(raw: Option<bool>, env: Env<'_>) -> Result<bool, ConfigError> {
    match env("QOIMA_LOCK_MEMORY").as_deref() {
        None => Ok(raw.unwrap_or(false)),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ConfigError::Environment { rule: "QOIMA_LOCK_MEMORY must be true or false".into() }),
    }
}
