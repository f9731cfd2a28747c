//! `[storage.postgres]` as the engine takes it, and the connection settings it gives.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::super::StoreError;
use super::{check_schema, conn};

/// How to reach the server and how the engine behaves (`[storage.postgres]`,
/// docs/configuration.md).
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresSettings {
    /// A libpq connection string (key/value or URI; several hosts and
    /// `target_session_attrs=read-write` for a cluster). It may hold a password: never logged.
    pub url: SecretString,
    /// A file holding the password (its first line), if not in `url`.
    pub password_file: Option<PathBuf>,
    /// The schema holding the vault's tables (created if absent).
    pub schema: String,
    /// Most connections open at once for reads; writes have a pool of a quarter of it (at
    /// least 2).
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// How long a write whose outcome was lost is retried for an answer before the engine
    /// reports it unknown ([`StoreError::OutcomeUnknown`]).
    pub resolve_timeout: Duration,
    /// Accept a server whose commits do not wait for a synchronous standby (one machine, or
    /// async replication): an acknowledged write may then be lost in a failover.
    pub allow_async: bool,
    /// The CA certificates (PEM) the server's certificate must chain to; with it, the
    /// connection uses TLS (`sslmode=require` in `url` makes TLS mandatory).
    pub ca_file: Option<PathBuf>,
    /// How long the active node's lease lasts unrenewed (lease.rs): how long the others wait
    /// after it dies before one of them takes over.
    pub lease: Duration,
    /// The URL this node's API is reached at, recorded with its lease so the other nodes can
    /// forward to it.
    pub advertise_url: Option<String>,
}

impl PostgresSettings {
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            password_file: None,
            schema: "qoima".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            resolve_timeout: Duration::from_secs(60),
            allow_async: false,
            ca_file: None,
            lease: Duration::from_secs(10),
            advertise_url: None,
        }
    }
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &"[redacted]")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("allow_async", &self.allow_async)
            .finish_non_exhaustive()
    }
}

/// The connection settings `settings` give: the parsed connection string with the password
/// file's password, and TLS if a CA is given.
pub(super) fn client_config(
    settings: &PostgresSettings,
) -> Result<(tokio_postgres::Config, Option<tokio_postgres_rustls::MakeRustlsConnect>), StoreError> {
    check_schema(&settings.schema).map_err(|e| StoreError::Io(format!("[storage.postgres] {e}")))?;
    let mut config: tokio_postgres::Config =
        settings.url.expose_secret().parse().map_err(|e: tokio_postgres::Error| StoreError::Io(format!("[storage.postgres] url: {e}")))?;
    if let Some(file) = &settings.password_file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| StoreError::Io(format!("[storage.postgres] password_file {}: {e}", file.display())))?,
        );
        config.password(text.lines().next().unwrap_or("").as_bytes());
    }
    config.application_name("qoima").connect_timeout(settings.connect_timeout).keepalives(true);
    let tls = match &settings.ca_file {
        Some(ca) => Some(conn::tls_config(ca)?),
        None if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
            return Err(StoreError::Io("[storage.postgres] url asks for sslmode=require: set ca_file to the server's CA".into()))
        }
        None => None,
    };
    Ok((config, tls))
}
