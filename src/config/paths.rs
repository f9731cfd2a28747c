//! Where the vault listens and keeps its files: `listen`, `data_dir`, the files that must
//! live outside it (`erasure_journal`, `keyring_escrow`, the root key), and `[tls]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qoima_keys::RootKeySource;
use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file::{self, RawRootKey};
use super::Env;
use crate::tls::TlsSettings;
use crate::vault::{default_journal_path, sibling};

/// The listen address when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";

/// A path from the file: relative paths resolve against the file's directory.
pub(super) fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// `listen` (or `QOIMA_LISTEN`): a socket address.
pub(super) fn listen(raw: Option<String>, env: Env<'_>, src: Source<'_>) -> Result<SocketAddr, ConfigError> {
    let text = env("QOIMA_LISTEN").or(raw).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    text.parse().map_err(|_| src.rule("listen must be an address like 127.0.0.1:8750"))
}

/// `data_dir` (or `QOIMA_DATA_DIR`): required.
pub(super) fn data_dir(raw: Option<PathBuf>, env: Env<'_>, base: &Path, src: Source<'_>) -> Result<PathBuf, ConfigError> {
    env("QOIMA_DATA_DIR").map(PathBuf::from).or(raw).map(|p| resolve(base, p)).ok_or_else(|| src.rule("data_dir is required"))
}

/// `erasure_journal` and `keyring_escrow`, by default beside `data_dir`: never inside it,
/// because a restore replaces `data_dir` and these are what survive it.
pub(super) fn side_files(
    erasure_journal: Option<PathBuf>,
    keyring_escrow: Option<PathBuf>,
    data_dir: &Path,
    base: &Path,
    src: Source<'_>,
) -> Result<(PathBuf, PathBuf), ConfigError> {
    let erasure_journal = erasure_journal.map(|p| resolve(base, p)).unwrap_or_else(|| default_journal_path(data_dir));
    let keyring_escrow = keyring_escrow.map(|p| resolve(base, p)).unwrap_or_else(|| sibling(data_dir, "-keyring.json"));
    for (what, p) in [("erasure_journal", &erasure_journal), ("keyring_escrow", &keyring_escrow)] {
        if p.starts_with(data_dir) {
            return Err(src.rule(format!("{what} must not live inside data_dir (a restore replaces data_dir)")));
        }
    }
    Ok((erasure_journal, keyring_escrow))
}

/// `[root_key]` (or `QOIMA_ROOT_KEY_FILE`): exactly one of a file, an environment variable
/// or a systemd credential; a file never inside `data_dir` (backups copy `data_dir`).
pub(super) fn root_key(
    raw: Option<Spanned<RawRootKey>>,
    env: Env<'_>,
    data_dir: &Path,
    base: &Path,
    src: Source<'_>,
) -> Result<RootKeySource, ConfigError> {
    let root_key = match (env("QOIMA_ROOT_KEY_FILE"), raw) {
        (Some(f), _) => RootKeySource::File(PathBuf::from(f)),
        (None, Some(rk)) => {
            let span = rk.span();
            match rk.into_inner() {
                RawRootKey { file: Some(f), env: None, credential: None } => RootKeySource::File(resolve(base, f)),
                RawRootKey { file: None, env: Some(v), credential: None } => RootKeySource::Env(v),
                RawRootKey { file: None, env: None, credential: Some(c) } => {
                    RootKeySource::Credential(qoima_keys::CredentialName::parse(&c).map_err(|_| {
                        src.at(span.start, "[root_key] credential is a plain file name: letters, digits and . _ - @ : only")
                    })?)
                }
                _ => return Err(src.at(span.start, "[root_key] needs exactly one of file, env or credential")),
            }
        }
        (None, None) => return Err(src.rule("[root_key] is required (file = \"…\", env = \"…\" or credential = \"…\")")),
    };
    if let RootKeySource::File(f) = &root_key {
        if f.starts_with(data_dir) {
            return Err(src.rule("the root key must not live inside data_dir (backups copy data_dir)"));
        }
    }
    Ok(root_key)
}

/// `[tls]`: its paths resolved; the files are read when the listener starts.
pub(super) fn tls(raw: Option<file::TlsSettings>, base: &Path) -> Option<TlsSettings> {
    raw.map(|t| TlsSettings {
        cert_file: resolve(base, t.cert_file),
        key_file: resolve(base, t.key_file),
        client_ca_file: t.client_ca_file.map(|p| resolve(base, p)),
    })
}
