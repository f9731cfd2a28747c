//! The tuning sections, `[limits]`, `[keys]`, `[retention]` and `[cache]`: defaults for what
//! the file leaves out, and the range of each value.

use super::error::{ConfigError, Source};
use super::file;

/// The most `limits.header_read_timeout_secs` and `limits.idle_timeout_secs` may be: a day.
pub const MAX_CONNECTION_TIMEOUT_SECS: u64 = 86_400;
/// The most `limits.max_connections` may be (Linux's default `fs.nr_open`).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The most `keys.rotation_days` and `keys.backup_retention_days` may be: a hundred years.
pub const MAX_KEY_DAYS: u32 = 36_500;

/// The most `cache.subjects_mib` may be.
const MAX_SUBJECT_CACHE_MIB: usize = 16 * 1024;

/// Request limits of the HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// A request taking longer than this is cut off (slow clients included).
    pub request_timeout_secs: u64,
    /// Requests served at once; more wait (backpressure) rather than grow memory.
    pub max_concurrent_requests: usize,
    /// Failed authentications that get an audit entry each, per second (bursts of ten
    /// seconds' worth); beyond it they are counted into summary entries, so a client that can
    /// reach the port cannot grow the audit trail without bound.
    pub audited_auth_failures_per_second: u32,
    /// A connection waiting for a request head (from accept, or since its last response) is
    /// closed when the head has not fully arrived after this long.
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike).
    pub idle_timeout_secs: u64,
    /// Connections open at once; more wait in the kernel's accept queue until one closes.
    /// Lowered at start-up (with a warning) to fit the descriptor limit with RocksDB's reserve.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            request_timeout_secs: 30,
            max_concurrent_requests: 512,
            audited_auth_failures_per_second: 20,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 1024,
        }
    }
}

/// Key-management settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySettings {
    /// Field encryptions under one DEK before it rotates (NIST SP 800-38D: 2^32).
    pub dek_seal_limit: u64,
    /// DEK wraps under one KEK generation before the vault rotates to a new one (NIST SP
    /// 800-38D: 2^32 with random nonces; rotation starts at 15/16 of it).
    pub kek_wrap_limit: u64,
    /// Unwrapped DEKs kept in memory.
    pub dek_cache_capacity: usize,
    /// Planned KEK rotation period.
    pub rotation_days: u32,
    /// How long backups are kept; a retired generation is destroyed no earlier than this.
    pub backup_retention_days: u32,
    /// Subjects per rewrap batch (locks are held for one batch).
    pub rewrap_batch: usize,
    /// Pause between rewrap batches, to bound the job's load on a busy vault.
    pub rewrap_pause_ms: u64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            dek_seal_limit: 1 << 32,
            kek_wrap_limit: 1 << 32,
            dek_cache_capacity: 100_000,
            rotation_days: 90,
            backup_retention_days: 30,
            rewrap_batch: 256,
            rewrap_pause_ms: 0,
        }
    }
}

/// Retention sweep settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionSettings {
    /// How often expired fields (technical data) are removed.
    pub sweep_interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { sweep_interval_secs: 3600 }
    }
}

/// In-memory caches above the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// MiB of recently read subjects (entry, facts, sealed records: ciphertexts only) kept so
    /// their reads skip the store; 0 turns it off.
    pub subjects_mib: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { subjects_mib: 32 }
    }
}

/// `[limits]`: large enough to serve a request, and connection timeouts within a day.
pub(super) fn limits(raw: file::Limits, src: Source<'_>) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let l = Limits {
        max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        request_timeout_secs: raw.request_timeout_secs.unwrap_or(d.request_timeout_secs),
        max_concurrent_requests: raw.max_concurrent_requests.unwrap_or(d.max_concurrent_requests),
        audited_auth_failures_per_second: raw.audited_auth_failures_per_second.unwrap_or(d.audited_auth_failures_per_second),
        header_read_timeout_secs: raw.header_read_timeout_secs.unwrap_or(d.header_read_timeout_secs),
        idle_timeout_secs: raw.idle_timeout_secs.unwrap_or(d.idle_timeout_secs),
        max_connections: raw.max_connections.unwrap_or(d.max_connections),
    };
    if l.max_body_bytes < 1024 || l.max_concurrent_requests == 0 || l.request_timeout_secs == 0 || l.audited_auth_failures_per_second == 0 {
        return Err(src.rule("[limits] values are too small (max_body_bytes ≥ 1024, others ≥ 1)"));
    }
    for (key, secs) in [("header_read_timeout_secs", l.header_read_timeout_secs), ("idle_timeout_secs", l.idle_timeout_secs)] {
        if secs == 0 || secs > MAX_CONNECTION_TIMEOUT_SECS {
            return Err(src.rule(format!("limits.{key} must be between 1 and {MAX_CONNECTION_TIMEOUT_SECS}")));
        }
    }
    if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
        return Err(src.rule(format!("limits.max_connections must be between 1 and {MAX_CONNECTIONS}")));
    }
    Ok(l)
}

/// `[keys]`: usage limits within NIST SP 800-38D's, and periods receipts can add to a date.
pub(super) fn keys(raw: file::KeySettings, src: Source<'_>) -> Result<KeySettings, ConfigError> {
    let d = KeySettings::default();
    let k = KeySettings {
        dek_seal_limit: raw.dek_seal_limit.unwrap_or(d.dek_seal_limit),
        kek_wrap_limit: raw.kek_wrap_limit.unwrap_or(d.kek_wrap_limit),
        dek_cache_capacity: raw.dek_cache_capacity.unwrap_or(d.dek_cache_capacity),
        rotation_days: raw.rotation_days.unwrap_or(d.rotation_days),
        backup_retention_days: raw.backup_retention_days.unwrap_or(d.backup_retention_days),
        rewrap_batch: raw.rewrap_batch.unwrap_or(d.rewrap_batch),
        rewrap_pause_ms: raw.rewrap_pause_ms.unwrap_or(d.rewrap_pause_ms),
    };
    if k.rewrap_batch == 0 || k.rewrap_batch > 100_000 {
        return Err(src.rule("keys.rewrap_batch must be between 1 and 100000"));
    }
    if k.dek_seal_limit == 0 || k.dek_seal_limit > 1 << 32 {
        return Err(src.rule("keys.dek_seal_limit must be between 1 and 2^32 (NIST SP 800-38D)"));
    }
    if k.kek_wrap_limit == 0 || k.kek_wrap_limit > 1 << 32 {
        return Err(src.rule("keys.kek_wrap_limit must be between 1 and 2^32 (NIST SP 800-38D)"));
    }
    // Receipts add these to dates: bounded, so the arithmetic never leaves time's range.
    if k.rotation_days == 0 || k.rotation_days > MAX_KEY_DAYS {
        return Err(src.rule(format!("keys.rotation_days must be between 1 and {MAX_KEY_DAYS}")));
    }
    if k.backup_retention_days > MAX_KEY_DAYS {
        return Err(src.rule(format!("keys.backup_retention_days must be at most {MAX_KEY_DAYS}")));
    }
    Ok(k)
}

/// `[retention]`: the sweep interval as written.
pub(super) fn retention(raw: file::RetentionSettings) -> RetentionSettings {
    RetentionSettings { sweep_interval_secs: raw.sweep_interval_secs.unwrap_or(RetentionSettings::default().sweep_interval_secs) }
}

/// `[cache]`: at most 16 GiB of subjects.
pub(super) fn cache(raw: file::CacheSettings, src: Source<'_>) -> Result<CacheSettings, ConfigError> {
    let subjects_mib = raw.subjects_mib.unwrap_or(CacheSettings::default().subjects_mib);
    if subjects_mib > MAX_SUBJECT_CACHE_MIB {
        return Err(src.rule("cache.subjects_mib must be at most 16384 (0 turns the cache off)"));
    }
    Ok(CacheSettings { subjects_mib })
}
