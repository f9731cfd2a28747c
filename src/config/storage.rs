//! `[storage]`: the engine holding the vault's data (docs/configuration.md, docs/scale-out.md).

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file::{RawPostgres, RawStorage};
use super::paths::resolve;
use super::Env;
use crate::store::postgres::{check_schema, PostgresSettings};
use crate::store::EngineChoice;

/// `[storage]` (or `QOIMA_STORAGE_ENGINE`), RocksDB without one; `[storage.postgres] url` may
/// come from `QOIMA_POSTGRES_URL` instead, so a password in it need not sit in the file.
pub(super) fn storage(raw: Option<Spanned<RawStorage>>, env: Env<'_>, base: &Path, src: Source<'_>) -> Result<EngineChoice, ConfigError> {
    let at = raw.as_ref().map(|r| r.span().start);
    let raw = raw.map(Spanned::into_inner);
    let (engine, postgres) = match raw {
        Some(r) => (r.engine, r.postgres),
        None => (None, None),
    };
    let fail = |rule: String| match at {
        Some(at) => src.at(at, rule),
        None => src.rule(rule),
    };
    match env("QOIMA_STORAGE_ENGINE").or(engine).as_deref().unwrap_or("rocksdb") {
        "rocksdb" => match postgres {
            Some(p) => Err(src.at(p.span().start, "[storage.postgres] is set but storage.engine is not \"postgres\"")),
            None => Ok(EngineChoice::RocksDb),
        },
        "postgres" => {
            let (at, p) = match postgres {
                Some(p) => (Some(p.span().start), p.into_inner()),
                None => (at, RawPostgres::default()),
            };
            postgres_settings(p, env, base).map(EngineChoice::Postgres).map_err(|rule| match at {
                Some(at) => src.at(at, rule),
                None => src.rule(rule),
            })
        }
        other => Err(fail(format!("storage.engine must be \"rocksdb\" or \"postgres\", not {other:?}"))),
    }
}

fn postgres_settings(raw: RawPostgres, env: Env<'_>, base: &Path) -> Result<PostgresSettings, String> {
    let url = env("QOIMA_POSTGRES_URL")
        .or(raw.url)
        .filter(|u| !u.trim().is_empty())
        .ok_or("[storage.postgres] url is required (a libpq connection string; or QOIMA_POSTGRES_URL)")?;
    let mut s = PostgresSettings::new(url.into());
    if let Some(schema) = raw.schema {
        check_schema(&schema).map_err(|rule| format!("[storage.postgres] {rule}"))?;
        s.schema = schema;
    }
    if let Some(n) = raw.pool_size {
        if !(2..=512).contains(&n) {
            return Err("[storage.postgres] pool_size must be between 2 and 512".into());
        }
        s.pool_size = n;
    }
    let seconds = |what: &str, v: Option<u64>, default: Duration, max: u64| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
        Some(_) => Err(format!("[storage.postgres] {what} must be between 1 and {max}")),
    };
    s.connect_timeout = seconds("connect_timeout_seconds", raw.connect_timeout_seconds, s.connect_timeout, 300)?;
    s.resolve_timeout = seconds("resolve_timeout_seconds", raw.resolve_timeout_seconds, s.resolve_timeout, 3600)?;
    s.lease = seconds("lease_seconds", raw.lease_seconds, s.lease, 600)?;
    if s.lease < Duration::from_secs(3) {
        return Err("[storage.postgres] lease_seconds must be at least 3 (it is renewed every third of it)".into());
    }
    if let Some(url) = raw.advertise_url {
        crate::privacy::PublicUrl::parse(&url).map_err(|rule| format!("[storage.postgres] advertise_url {rule}"))?;
        s.advertise_url = Some(url.trim_end_matches('/').to_string());
    }
    s.allow_async = raw.allow_async.unwrap_or(false);
    s.password_file = raw.password_file.map(|p| resolve(base, p));
    s.ca_file = raw.ca_file.map(|p| resolve(base, p));
    Ok(s)
}
