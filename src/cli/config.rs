//! `qoima config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Failure;
use crate::config::{process_env, Config};
use crate::store::{postgres, EngineChoice, StoreError};

pub(super) fn check(file: PathBuf) -> Result<ExitCode, Failure> {
    let c = Config::load(&file, &process_env).map_err(|e| Failure(3, e.to_string()))?;
    // The root key is checked too (mode, format), so a bad key shows here, not at start;
    // a key that is simply not on this machine (a config checked elsewhere) is noted.
    let root = match c.root_key.load() {
        Ok(k) => format!("root key {:08x}", k.id()),
        Err(qoima_keys::Error::RootKeyUnreadable { absent: true, .. }) => format!("root key not present on this machine ({})", c.root_key),
        Err(e) => return Err(Failure(3, format!("{}: {e}", file.display()))),
    };
    let storage = storage(&c.storage).map_err(|e| Failure(3, format!("{}: {e}", file.display())))?;
    println!(
        "{}: ok ({} callers, {} purposes, data_dir {}, listen {}{}, {}, {storage})",
        file.display(),
        c.callers.entries().len(),
        c.purposes.0.len(),
        c.data_dir.display(),
        if c.tls.is_some() { "https://" } else { "http://" },
        c.listen,
        root
    );
    Ok(ExitCode::SUCCESS)
}

/// The engine, and for PostgreSQL the cluster's replication as the vault would find it at
/// start-up: an error if the vault would refuse it; a note if it cannot be reached from here.
fn storage(engine: &EngineChoice) -> Result<String, String> {
    let EngineChoice::Postgres(settings) = engine else {
        return Ok(format!("storage {}", engine.name()));
    };
    match postgres::probe(settings) {
        Ok(r) => match r.not_quorum() {
            None => Ok(format!("storage postgres: {r}: a synchronous quorum")),
            Some(why) if settings.allow_async => Ok(format!("storage postgres: {r}: NOT a synchronous quorum ({why}; allow_async = true)")),
            Some(why) => Err(format!(
                "storage postgres: {r}: not a synchronous quorum ({why}): the vault would refuse to start (or set [storage.postgres] allow_async = true)"
            )),
        },
        // Not necessarily reachable from where the file is checked.
        Err(e @ StoreError::Io(_)) if e.to_string().contains("connect to PostgreSQL") => Ok(format!("storage postgres: not reachable from here ({e})")),
        Err(e) => Err(e.to_string()),
    }
}
