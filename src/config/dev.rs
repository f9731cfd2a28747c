//! The development default (`qoima serve` without `--config`): data in `./data`, and a
//! development root key and caller set in `./.qoima-dev/`, outside the data directory.

use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::{Config, Env};
use crate::auth::token_digest;
use crate::domain::random_hex;

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

/// The configuration the development default parses, before its callers.
const EMBEDDED: &str = "data_dir = \"data\"\n[root_key]\nfile = \".qoima-dev/root.key\"\n";

/// The development callers: one per role, the service granted the four purposes of the privacy
/// policy (`call_centre`, which reads through masked views, is for callers configured for it).
const DEV_CALLERS: [(&str, &str, &[&str]); 4] = [
    ("dev-service", "service", &["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"]),
    ("dev-website", "website", &[]),
    ("dev-security", "security", &[]),
    ("dev-auditor", "auditor", &[]),
];

fn dev_error(reason: String) -> ConfigError {
    ConfigError::DevSetup { reason }
}

impl Config {
    /// The embedded development default, rooted at `base` (the working directory): data in
    /// `base/data`, a development root key and caller set in `base/.qoima-dev/` (outside the
    /// data directory). Creates what is missing; returns the tokens of newly created callers,
    /// which exist nowhere else and must be shown once.
    pub fn embedded_default(base: &Path, env: Env<'_>) -> Result<(Self, DevSetup), ConfigError> {
        let dev = base.join(".qoima-dev");
        std::fs::create_dir_all(&dev).map_err(|e| dev_error(format!("cannot create {}: {e}", dev.display())))?;
        let mut setup = DevSetup::default();
        let key = dev.join("root.key");
        if !key.exists() {
            qoima_keys::RootKey::generate_file(&key).map_err(|e| dev_error(e.to_string()))?;
            setup.root_key_created = Some(key.clone());
        }
        let callers = dev.join("callers.toml");
        if !callers.exists() {
            let (text, tokens) = dev_callers();
            write_private(&callers, text.as_bytes()).map_err(|e| dev_error(format!("cannot write {}: {e}", callers.display())))?;
            setup.new_tokens = tokens;
        }
        let callers_text = std::fs::read_to_string(&callers).map_err(|e| dev_error(format!("cannot read {}: {e}", callers.display())))?;
        let text = format!("{EMBEDDED}{callers_text}");
        let c = Self::parse(&text, &format!("embedded default (callers from {})", callers.display()), base, env)?;
        Ok((c, setup))
    }
}

/// A new `callers.toml` (digests only) and the (caller, role, token) of each.
fn dev_callers() -> (String, Vec<(String, String, String)>) {
    let mut text = String::from("# Development callers (digests only); delete this file to get new tokens.\n");
    let mut tokens = Vec::new();
    for (name, role, purposes) in DEV_CALLERS {
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
        tokens.push((name.to_string(), role.to_string(), token));
    }
    (text, tokens)
}

/// Creates `path` (never over an existing file) with mode 0600, and syncs it.
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
