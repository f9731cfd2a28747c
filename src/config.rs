//! Configuration: one TOML file (design §6) plus `QOIMA_…` environment overrides, parsed into
//! typed settings once at start-up. An invalid file stops start-up with a message naming the
//! line; the vault never starts half-configured.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qoima_keys::RootKeySource;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::{token_digest, CallerEntry, Callers};
use crate::domain::{random_hex, CallerName, Purpose, Role};
use crate::policy::{Caller, PurposeDef, Purposes};
use crate::privacy::{parse_origin, Lang, PrivacySettings, PublicUrl};
use crate::schema::{Category, Schema};
use crate::vault::{default_journal_path, sibling, Settings};

/// The listen address when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";

/// A configuration problem, as one line: `file:line: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    /// Messages quote the file's own text (names, paths), which may hold a newline or a
    /// terminal escape; printing those as escapes keeps the error one line and inert.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    erasure_journal: Option<PathBuf>,
    keyring_escrow: Option<PathBuf>,
    policy_version: Option<String>,
    lock_memory: Option<bool>,
    root_key: Option<Spanned<RawRootKey>>,
    #[serde(default)]
    callers: Vec<Spanned<RawCaller>>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    keys: KeySettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    cache: CacheSettings,
    #[serde(default)]
    purposes: Vec<Spanned<PurposeDef>>,
    #[serde(default)]
    schema: BTreeMap<String, Category>,
    tls: Option<crate::tls::TlsSettings>,
    privacy: Option<Spanned<RawPrivacy>>,
}

/// `[privacy]`: the borrower's privacy centre (docs/privacy-centre.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    public_url: Option<String>,
    session_minutes: Option<u32>,
    #[serde(default)]
    frame_ancestors: Vec<String>,
    default_language: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRootKey {
    file: Option<PathBuf>,
    env: Option<String>,
    credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    name: CallerName,
    token_sha256: Option<Spanned<String>>,
    client_cert_sha256: Option<Spanned<String>>,
    roles: Vec<Role>,
    #[serde(default)]
    purposes: Vec<Spanned<Purpose>>,
    max_reads_per_minute: Option<Spanned<u32>>,
    /// Field patterns it may write; leave out for what its purposes read.
    writes: Option<Spanned<Vec<String>>>,
    subject_assertion: Option<Spanned<crate::assertion::AssertionSettings>>,
}

/// Request limits of the HTTP listener.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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

/// The most `limits.header_read_timeout_secs` and `limits.idle_timeout_secs` may be: a day.
pub const MAX_CONNECTION_TIMEOUT_SECS: u64 = 86_400;
/// The most `limits.max_connections` may be (Linux's default `fs.nr_open`).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The most `keys.rotation_days` and `keys.backup_retention_days` may be: a hundred years.
pub const MAX_KEY_DAYS: u32 = 36_500;

/// Key-management settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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
    /// HTTPS for the listener, if configured.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The borrower's privacy centre.
    pub privacy: PrivacySettings,
    /// Lock the process's memory (mlockall) so keys and decrypted data are never swapped out.
    pub lock_memory: bool,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// An environment lookup, passed in so tests need not touch the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads and parses a configuration file, applying `QOIMA_…` overrides.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut c = Self::parse(&text, &path.display().to_string(), &base, env)?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text. `name` labels errors; relative paths resolve against `base`.
    pub fn parse(text: &str, name: &str, base: &Path, env: Env<'_>) -> Result<Self, ConfigError> {
        let at = |offset: usize, msg: String| ConfigError(format!("{name}:{}: {msg}", line_of(text, offset)));
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            ConfigError(format!("{name}:{line}: {}", e.message().trim().replace('\n', " ")))
        })?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let listen_text = env("QOIMA_LISTEN").or(raw.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr =
            listen_text.parse().map_err(|_| ConfigError(format!("{name}: listen must be an address like 127.0.0.1:8750")))?;
        let data_dir = env("QOIMA_DATA_DIR")
            .map(PathBuf::from)
            .or(raw.data_dir)
            .map(resolve)
            .ok_or_else(|| ConfigError(format!("{name}: data_dir is required")))?;
        let erasure_journal = raw.erasure_journal.map(resolve).unwrap_or_else(|| default_journal_path(&data_dir));
        let keyring_escrow = raw.keyring_escrow.map(resolve).unwrap_or_else(|| sibling(&data_dir, "-keyring.json"));
        for (what, p) in [("erasure_journal", &erasure_journal), ("keyring_escrow", &keyring_escrow)] {
            if p.starts_with(&data_dir) {
                return Err(ConfigError(format!("{name}: {what} must not live inside data_dir (a restore replaces data_dir)")));
            }
        }

        let root_key = match (env("QOIMA_ROOT_KEY_FILE"), raw.root_key) {
            (Some(f), _) => RootKeySource::File(PathBuf::from(f)),
            (None, Some(rk)) => {
                let span = rk.span();
                match rk.into_inner() {
                    RawRootKey { file: Some(f), env: None, credential: None } => RootKeySource::File(resolve(f)),
                    RawRootKey { file: None, env: Some(v), credential: None } => RootKeySource::Env(v),
                    RawRootKey { file: None, env: None, credential: Some(c) } => {
                        RootKeySource::Credential(qoima_keys::CredentialName::parse(&c).map_err(|_| {
                            at(span.start, "[root_key] credential is a plain file name: letters, digits and . _ - @ : only".into())
                        })?)
                    }
                    _ => return Err(at(span.start, "[root_key] needs exactly one of file, env or credential".into())),
                }
            }
            (None, None) => {
                return Err(ConfigError(format!("{name}: [root_key] is required (file = \"…\", env = \"…\" or credential = \"…\")")))
            }
        };
        if let RootKeySource::File(f) = &root_key {
            if f.starts_with(&data_dir) {
                return Err(ConfigError(format!("{name}: the root key must not live inside data_dir (backups copy data_dir)")));
            }
        }

        let mut schema = Schema::default();
        for (cat, def) in raw.schema {
            if crate::domain::FieldName::parse(&format!("{cat}.x")).is_err() {
                return Err(ConfigError(format!("{name}: schema category `{cat}` must be snake case")));
            }
            for field in def.fields.keys() {
                if crate::domain::FieldName::parse(&format!("{cat}.{field}")).is_err() {
                    return Err(ConfigError(format!("{name}: schema field `{cat}.{field}` must be snake case")));
                }
            }
            schema.categories.insert(cat, def);
        }

        let mut purposes = Purposes::default();
        let mut seen = BTreeSet::new();
        for p in raw.purposes {
            let span = p.span();
            let def = p.into_inner();
            if !seen.insert(def.name.clone()) {
                return Err(at(span.start, format!("purpose {} is defined twice", def.name)));
            }
            if def.fields.is_empty() {
                return Err(at(span.start, format!("purpose {} allows no fields", def.name)));
            }
            if let Some(bad) = def.fields.iter().find(|f| !schema.pattern_is_known(f)) {
                return Err(at(span.start, format!("purpose {} names `{bad}`, which is not in the schema", def.name)));
            }
            purposes.0.insert(def.name.clone(), def);
        }
        for def in purposes.0.values() {
            if let Some(bad) = def.fields.iter().find(|f| !schema.pattern_is_known(f)) {
                return Err(ConfigError(format!("{name}: purpose {} names `{bad}`, which the schema no longer has", def.name)));
            }
        }

        let mut entries = Vec::new();
        let mut names = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for c in raw.callers {
            let span = c.span();
            let c = c.into_inner();
            let parse_digest = |field: &Option<Spanned<String>>, what: &str| -> Result<Option<[u8; 32]>, ConfigError> {
                let Some(f) = field else { return Ok(None) };
                let mut digest = [0u8; 32];
                let text = f.get_ref();
                if text.len() != 64 || hex::decode_to_slice(text, &mut digest).is_err() {
                    return Err(at(f.span().start, format!("caller {}: {what} must be 64 hex characters (a SHA-256)", c.name)));
                }
                Ok(Some(digest))
            };
            let token = parse_digest(&c.token_sha256, "token_sha256")?;
            let cert = parse_digest(&c.client_cert_sha256, "client_cert_sha256")?;
            if token.is_none() && cert.is_none() {
                return Err(at(span.start, format!("caller {} needs token_sha256 or client_cert_sha256", c.name)));
            }
            if !names.insert(c.name.clone()) {
                return Err(at(span.start, format!("caller {} is defined twice", c.name)));
            }
            for d in token.iter().chain(cert.iter()) {
                if !digests.insert(*d) {
                    return Err(at(span.start, format!("caller {} shares its token or certificate with another caller", c.name)));
                }
            }
            if c.roles.is_empty() {
                return Err(at(span.start, format!("caller {} has no roles", c.name)));
            }
            let mut granted = BTreeSet::new();
            for p in c.purposes {
                let pspan = p.span();
                let p = p.into_inner();
                if purposes.get(&p).is_none() {
                    return Err(at(pspan.start, format!("caller {}: unknown purpose {p}", c.name)));
                }
                granted.insert(p);
            }
            let max_reads_per_minute = match c.max_reads_per_minute {
                Some(m) if *m.get_ref() == 0 => {
                    return Err(at(
                        m.span().start,
                        format!("caller {}: max_reads_per_minute must be at least 1 (leave it out for no limit)", c.name),
                    ))
                }
                m => m.map(|m| m.into_inner()),
            };
            let roles: BTreeSet<Role> = c.roles.into_iter().collect();
            // Patterns as in purposes, checked by the same rule.
            let writes = match c.writes {
                None => None,
                Some(w) => {
                    let wspan = w.span();
                    let w = w.into_inner();
                    if let Some(bad) = w.iter().find(|f| !schema.pattern_is_known(f)) {
                        return Err(at(wspan.start, format!("caller {}: writes names `{bad}`, which is not in the schema", c.name)));
                    }
                    let contract = w.iter().find(|f| f.split('.').next() == Some("contract"));
                    if let (Some(bad), false) = (contract, roles.contains(&Role::Service)) {
                        return Err(at(
                            wspan.start,
                            format!("caller {}: writes names `{bad}`; the website never writes contract fields", c.name),
                        ));
                    }
                    Some(w)
                }
            };
            let subject_assertion = match c.subject_assertion {
                None => None,
                Some(a) => {
                    let aspan = a.span();
                    if !roles.contains(&Role::Website) {
                        return Err(at(aspan.start, format!("caller {}: subject_assertion is for website callers", c.name)));
                    }
                    let mut a = a.into_inner();
                    a.jwks_file = resolve(a.jwks_file);
                    let v =
                        crate::assertion::SubjectAssertions::load(a).map_err(|msg| at(aspan.start, format!("caller {}: {msg}", c.name)))?;
                    Some(std::sync::Arc::new(v))
                }
            };
            entries.push(CallerEntry {
                caller: std::sync::Arc::new(Caller { name: c.name, roles, purposes: granted }),
                token_sha256: token,
                client_cert_sha256: cert,
                max_reads_per_minute,
                writes,
                subject_assertion,
            });
        }

        let policy_version = raw.policy_version.unwrap_or_else(|| "2019-01-29".into());
        if policy_version.is_empty() || policy_version.len() > 64 {
            return Err(ConfigError(format!("{name}: policy_version must be 1 to 64 characters")));
        }
        if raw.limits.max_body_bytes < 1024
            || raw.limits.max_concurrent_requests == 0
            || raw.limits.request_timeout_secs == 0
            || raw.limits.audited_auth_failures_per_second == 0
        {
            return Err(ConfigError(format!("{name}: [limits] values are too small (max_body_bytes ≥ 1024, others ≥ 1)")));
        }
        for (key, secs) in
            [("header_read_timeout_secs", raw.limits.header_read_timeout_secs), ("idle_timeout_secs", raw.limits.idle_timeout_secs)]
        {
            if secs == 0 || secs > MAX_CONNECTION_TIMEOUT_SECS {
                return Err(ConfigError(format!("{name}: limits.{key} must be between 1 and {MAX_CONNECTION_TIMEOUT_SECS}")));
            }
        }
        if raw.limits.max_connections == 0 || raw.limits.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError(format!("{name}: limits.max_connections must be between 1 and {MAX_CONNECTIONS}")));
        }
        if raw.keys.rewrap_batch == 0 || raw.keys.rewrap_batch > 100_000 {
            return Err(ConfigError(format!("{name}: keys.rewrap_batch must be between 1 and 100000")));
        }
        if raw.keys.dek_seal_limit == 0 || raw.keys.dek_seal_limit > 1 << 32 {
            return Err(ConfigError(format!("{name}: keys.dek_seal_limit must be between 1 and 2^32 (NIST SP 800-38D)")));
        }
        if raw.keys.kek_wrap_limit == 0 || raw.keys.kek_wrap_limit > 1 << 32 {
            return Err(ConfigError(format!("{name}: keys.kek_wrap_limit must be between 1 and 2^32 (NIST SP 800-38D)")));
        }
        // Receipts add these to dates: bounded, so the arithmetic never leaves time's range.
        if raw.keys.rotation_days == 0 || raw.keys.rotation_days > MAX_KEY_DAYS {
            return Err(ConfigError(format!("{name}: keys.rotation_days must be between 1 and {MAX_KEY_DAYS}")));
        }
        if raw.keys.backup_retention_days > MAX_KEY_DAYS {
            return Err(ConfigError(format!("{name}: keys.backup_retention_days must be at most {MAX_KEY_DAYS}")));
        }
        if raw.cache.subjects_mib > 16 * 1024 {
            return Err(ConfigError(format!("{name}: cache.subjects_mib must be at most 16384 (0 turns the cache off)")));
        }
        let lock_memory = match env("QOIMA_LOCK_MEMORY").as_deref() {
            None => raw.lock_memory.unwrap_or(false),
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(ConfigError("QOIMA_LOCK_MEMORY must be true or false".into())),
        };
        let privacy = match raw.privacy {
            None => PrivacySettings::default(),
            Some(p) => {
                let line = p.span().start;
                parse_privacy(p.into_inner()).map_err(|msg| at(line, msg))?
            }
        };
        Ok(Self {
            listen,
            data_dir,
            erasure_journal,
            keyring_escrow,
            root_key,
            callers: Callers::new(entries),
            policy_version,
            limits: raw.limits,
            keys: raw.keys,
            retention: raw.retention,
            cache: raw.cache,
            schema,
            purposes,
            tls: raw.tls.map(|t| crate::tls::TlsSettings {
                cert_file: resolve(t.cert_file),
                key_file: resolve(t.key_file),
                client_ca_file: t.client_ca_file.map(resolve),
            }),
            privacy,
            lock_memory,
            source: None,
        })
    }

    /// The settings the vault core takes.
    pub fn vault_settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            erasure_journal: self.erasure_journal.clone(),
            keyring_escrow: self.keyring_escrow.clone(),
            schema: self.schema.clone(),
            purposes: self.purposes.clone(),
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

    /// The embedded development default, rooted at `base` (the working directory): data in
    /// `base/data`, a development root key and caller set in `base/.qoima-dev/` (outside the
    /// data directory). Creates what is missing; returns the tokens of newly created callers,
    /// which exist nowhere else and must be shown once.
    pub fn embedded_default(base: &Path, env: Env<'_>) -> Result<(Self, DevSetup), ConfigError> {
        let dev = base.join(".qoima-dev");
        std::fs::create_dir_all(&dev).map_err(|e| ConfigError(format!("cannot create {}: {e}", dev.display())))?;
        let mut setup = DevSetup::default();
        let key = dev.join("root.key");
        if !key.exists() {
            qoima_keys::RootKey::generate_file(&key).map_err(|e| ConfigError(e.to_string()))?;
            setup.root_key_created = Some(key.clone());
        }
        let callers = dev.join("callers.toml");
        if !callers.exists() {
            let all = ["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"];
            let mut text = String::from("# Development callers (digests only); delete this file to get new tokens.\n");
            for (name, role, purposes) in [
                ("dev-service", "service", &all[..]),
                ("dev-website", "website", &[][..]),
                ("dev-security", "security", &[][..]),
                ("dev-auditor", "auditor", &[][..]),
            ] {
                let token = new_token();
                let p: Vec<String> = purposes.iter().map(|p| format!("\"{p}\"")).collect();
                text.push_str(&format!(
                    "\n[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\npurposes = [{}]\n",
                    hex::encode(token_digest(&token)),
                    p.join(", ")
                ));
                if role == "service" {
                    // Its purposes read no technical data, but the development service writes it.
                    text.push_str("writes = [\"identity.*\", \"questionnaire.*\", \"contract.*\", \"technical.*\"]\n");
                }
                setup.new_tokens.push((name.to_string(), role.to_string(), token));
            }
            write_private(&callers, text.as_bytes()).map_err(|e| ConfigError(format!("cannot write {}: {e}", callers.display())))?;
        }
        let callers_text = std::fs::read_to_string(&callers).map_err(|e| ConfigError(format!("cannot read {}: {e}", callers.display())))?;
        let text = format!("data_dir = \"data\"\n[root_key]\nfile = \".qoima-dev/root.key\"\n{callers_text}");
        let c = Self::parse(&text, &format!("embedded default (callers from {})", callers.display()), base, env)?;
        Ok((c, setup))
    }
}

/// Checks `[privacy]`: a public URL browsers can reach, a short session, origins only.
fn parse_privacy(raw: RawPrivacy) -> Result<PrivacySettings, String> {
    let public_url = raw.public_url.map(|u| PublicUrl::parse(&u)).transpose().map_err(|rule| format!("privacy.public_url {rule}"))?;
    let session_minutes = raw.session_minutes.unwrap_or(15);
    if !(1..=120).contains(&session_minutes) {
        return Err("privacy.session_minutes must be between 1 and 120 (a link is a credential: keep it short)".into());
    }
    let mut frame_ancestors = Vec::new();
    for o in &raw.frame_ancestors {
        let origin = parse_origin(o).map_err(|rule| format!("privacy.frame_ancestors: each entry {rule}"))?;
        if !frame_ancestors.contains(&origin) {
            frame_ancestors.push(origin);
        }
    }
    let default_language = match raw.default_language {
        None => Lang::Kk,
        Some(l) => Lang::parse(&l).ok_or("privacy.default_language must be one of kk, ru, en")?,
    };
    Ok(PrivacySettings { public_url, session_minutes, frame_ancestors, default_language })
}

/// What the embedded default created on this start.
#[derive(Debug, Default)]
pub struct DevSetup {
    pub root_key_created: Option<PathBuf>,
    /// (caller, role, token) for callers created now.
    pub new_tokens: Vec<(String, String, String)>,
}

/// A fresh bearer token: 32 random bytes, hex, with a recognisable prefix for secret scanners.
pub fn new_token() -> String {
    format!("qv1_{}", random_hex::<32>())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
listen   = "127.0.0.1:9999"
data_dir = "/var/lib/qoima"

[root_key]
file = "/etc/qoima/root.key"

[[callers]]
name         = "origination"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
roles        = ["service"]
purposes     = ["loan_issuance"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "qoima.toml", Path::new("/etc/qoima"), &no_env)
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.root_key, RootKeySource::File("/etc/qoima/root.key".into()));
        assert_eq!(c.erasure_journal, PathBuf::from("/var/lib/qoima-erasures.jsonl"));
        let caller = c.callers.authenticate("test").unwrap();
        assert_eq!(caller.name.as_str(), "origination");
        assert_eq!(c.purposes.0.len(), 4);
    }

    #[test]
    fn the_audit_budget_of_failed_authentications() {
        assert_eq!(parse(GOOD).unwrap().vault_settings().audited_auth_failures_per_second, 20);
        let five = GOOD.to_string() + "\n[limits]\naudited_auth_failures_per_second = 5\n";
        assert_eq!(parse(&five).unwrap().vault_settings().audited_auth_failures_per_second, 5);
        let none = GOOD.to_string() + "\n[limits]\naudited_auth_failures_per_second = 0\n";
        assert!(parse(&none).unwrap_err().to_string().contains("too small"));
    }

    #[test]
    fn the_connection_limits() {
        let l = parse(GOOD).unwrap().limits;
        assert_eq!((l.header_read_timeout_secs, l.idle_timeout_secs, l.max_connections), (10, 60, 1024));
        let set = GOOD.to_string() + "\n[limits]\nheader_read_timeout_secs = 2\nidle_timeout_secs = 5\nmax_connections = 64\n";
        let l = parse(&set).unwrap().limits;
        assert_eq!((l.header_read_timeout_secs, l.idle_timeout_secs, l.max_connections), (2, 5, 64));
        for (bad, says) in [
            ("header_read_timeout_secs = 0", "limits.header_read_timeout_secs must be between 1 and 86400"),
            ("idle_timeout_secs = 86401", "limits.idle_timeout_secs must be between 1 and 86400"),
            ("max_connections = 0", "limits.max_connections must be between 1 and 1048576"),
            ("max_connections = 1048577", "limits.max_connections must be between 1 and 1048576"),
        ] {
            let e = parse(&(GOOD.to_string() + "\n[limits]\n" + bad + "\n")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_subject_cache_size() {
        assert_eq!(parse(GOOD).unwrap().vault_settings().subject_cache_bytes, 32 << 20);
        let off = GOOD.to_string() + "\n[cache]\nsubjects_mib = 0\n";
        assert_eq!(parse(&off).unwrap().vault_settings().subject_cache_bytes, 0);
        let huge = GOOD.to_string() + "\n[cache]\nsubjects_mib = 20000\n";
        assert!(parse(&huge).unwrap_err().to_string().contains("cache.subjects_mib must be at most 16384"));
        let unknown = GOOD.to_string() + "\n[cache]\nsubjects = 1\n";
        assert!(parse(&unknown).is_err(), "an unknown cache key is refused");
    }

    #[test]
    fn a_caller_read_limit() {
        assert!(parse(GOOD).unwrap().vault_settings().max_reads_per_minute.is_empty());
        let limited = GOOD.to_string() + "max_reads_per_minute = 600\n";
        assert_eq!(parse(&limited).unwrap().vault_settings().max_reads_per_minute, [("origination".to_string(), 600)].into());
        let zero = GOOD.to_string() + "max_reads_per_minute = 0\n";
        let e = parse(&zero).unwrap_err().to_string();
        assert!(e.starts_with("qoima.toml:13:") && e.contains("at least 1"), "{e}");
    }

    #[test]
    fn a_caller_write_grant() {
        assert!(parse(GOOD).unwrap().vault_settings().write_grants.is_empty());
        let w = GOOD.to_string() + "writes = [\"identity.*\", \"technical.ip\"]\n";
        let want = [("origination".to_string(), vec!["identity.*".to_string(), "technical.ip".to_string()])].into();
        assert_eq!(parse(&w).unwrap().vault_settings().write_grants, want);
        let none = GOOD.to_string() + "writes = []\n";
        assert_eq!(parse(&none).unwrap().vault_settings().write_grants["origination"], Vec::<String>::new());
        let bad = GOOD.to_string() + "writes = [\"identity.shoe\"]\n";
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("qoima.toml:13:") && e.contains("writes names `identity.shoe`, which is not in the schema"), "{e}");
        let web = GOOD.replace("[\"service\"]", "[\"website\"]") + "writes = [\"contract.*\"]\n";
        assert!(parse(&web).unwrap_err().to_string().contains("never writes contract fields"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (GOOD.replace("[\"service\"]", "[\"admin\"]"), 11, "admin"),
            (GOOD.replace("[\"loan_issuance\"]", "[\"spying\"]"), 12, "unknown purpose spying"),
            (GOOD.replace("9f86d0", "zz86d0"), 10, "64 hex"),
            (GOOD.replace("listen ", "lisen "), 2, "lisen"),
            (
                GOOD.to_string() + "\n[[purposes]]\nname = \"x\"\nbasis = \"consent\"\nfields = [\"identity.shoe\"]\n",
                14,
                "not in the schema",
            ),
            // Found by the config fuzz target: a name quoted into the message held a newline.
            (
                GOOD.to_string() + "\n[[purposes]]\nname = \"x\"\nbasis = \"consent\"\nfields = [\"\\nidentity\\u001b[2J\"]\n",
                14,
                "names `\\nidentity\\u{1b}[2J`, which is not in the schema",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("qoima.toml:{line}:")), "{e}");
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn env_overrides_and_root_key_rules() {
        let env = |k: &str| match k {
            "QOIMA_LISTEN" => Some("0.0.0.0:1234".to_string()),
            "QOIMA_DATA_DIR" => Some("/srv/q".to_string()),
            _ => None,
        };
        let c = Config::parse(GOOD, "x", Path::new("/"), &env).unwrap();
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.data_dir, PathBuf::from("/srv/q"));
        let inside = GOOD.replace("/etc/qoima/root.key", "/var/lib/qoima/root.key");
        assert!(parse(&inside).unwrap_err().to_string().contains("must not live inside data_dir"));
        let both = GOOD.replace("file = \"/etc/qoima/root.key\"", "file = \"/k\"\nenv = \"K\"");
        assert!(parse(&both).unwrap_err().to_string().contains("exactly one"));
        assert!(!parse(GOOD).unwrap().lock_memory);
        let locked = format!("lock_memory = true\n{GOOD}");
        assert!(parse(&locked).unwrap().lock_memory);
        let off = |k: &str| (k == "QOIMA_LOCK_MEMORY").then(|| "false".to_string());
        assert!(!Config::parse(&locked, "x", Path::new("/"), &off).unwrap().lock_memory);
        let bad = |k: &str| (k == "QOIMA_LOCK_MEMORY").then(|| "yes".to_string());
        assert!(Config::parse(GOOD, "x", Path::new("/"), &bad)
            .unwrap_err()
            .to_string()
            .contains("QOIMA_LOCK_MEMORY must be true or false"));
        let cred = GOOD.replace("file = \"/etc/qoima/root.key\"", "credential = \"qoima-root-key\"");
        assert_eq!(parse(&cred).unwrap().root_key, RootKeySource::Credential(qoima_keys::CredentialName::parse("qoima-root-key").unwrap()));
        let escape = GOOD.replace("file = \"/etc/qoima/root.key\"", "credential = \"../root.key\"");
        let e = parse(&escape).unwrap_err().to_string();
        assert!(e.starts_with("qoima.toml:5:") && e.contains("plain file name"), "{e}");
    }

    #[test]
    fn the_privacy_section() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.privacy, PrivacySettings::default());
        assert_eq!((c.privacy.session_minutes, c.privacy.default_language), (15, Lang::Kk));
        let text = format!(
            "{GOOD}\n[privacy]\npublic_url = \"https://vault.example.kz/q/\"\nsession_minutes = 10\n\
             frame_ancestors = [\"https://www.100tenge.kz\", \"https://100tenge.kz/\"]\ndefault_language = \"ru\"\n"
        );
        let p = parse(&text).unwrap().privacy;
        assert_eq!(p.public_url.unwrap().as_str(), "https://vault.example.kz/q");
        assert_eq!(p.session_minutes, 10);
        assert_eq!(p.frame_ancestors, ["https://www.100tenge.kz", "https://100tenge.kz"]);
        assert_eq!(p.default_language, Lang::Ru);
        for (bad, needle) in [
            ("public_url = \"vault.example.kz\"", "privacy.public_url"),
            ("public_url = \"https://x/?q=1\"", "privacy.public_url"),
            ("session_minutes = 0", "session_minutes"),
            ("session_minutes = 1440", "session_minutes"),
            ("frame_ancestors = [\"*\"]", "frame_ancestors"),
            ("frame_ancestors = [\"https://x.kz/page\"]", "frame_ancestors"),
            ("default_language = \"de\"", "default_language"),
            ("colour = \"red\"", "colour"),
        ] {
            let e = parse(&format!("{GOOD}\n[privacy]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.starts_with("qoima.toml:1") && e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicate_tokens_and_names_are_refused() {
        let dup = GOOD.to_string() + &GOOD[GOOD.find("[[callers]]").unwrap()..].replace("origination", "other");
        assert!(parse(&dup).unwrap_err().to_string().contains("shares its token"));
    }

    #[test]
    fn embedded_default_creates_key_and_callers_once() {
        let dir = tempfile::tempdir().unwrap();
        let (c, setup) = Config::embedded_default(dir.path(), &no_env).unwrap();
        assert!(setup.root_key_created.is_some());
        assert_eq!(setup.new_tokens.len(), 4);
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert!(!c.data_dir.join("root.key").exists());
        let (_, token) = (&setup.new_tokens[0].0, &setup.new_tokens[0].2);
        assert!(c.callers.authenticate(token).is_some());
        let files = std::fs::read_to_string(dir.path().join(".qoima-dev/callers.toml")).unwrap();
        assert!(!files.contains(token.as_str()), "tokens are never written");
        let (_, again) = Config::embedded_default(dir.path(), &no_env).unwrap();
        assert!(again.root_key_created.is_none() && again.new_tokens.is_empty());
    }
}
