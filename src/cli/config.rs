//! `qoima config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Failure;
use crate::config::{process_env, Config};

pub(super) fn check(file: PathBuf) -> Result<ExitCode, Failure> {
    let c = Config::load(&file, &process_env).map_err(|e| Failure(3, e.to_string()))?;
    // The root key is checked too (mode, format), so a bad key shows here, not at start;
    // a key that is simply not on this machine (a config checked elsewhere) is noted.
    let root = match c.root_key.load() {
        Ok(k) => format!("root key {:08x}", k.id()),
        Err(qoima_keys::Error::RootKeyUnreadable { absent: true, .. }) => format!("root key not present on this machine ({})", c.root_key),
        Err(e) => return Err(Failure(3, format!("{}: {e}", file.display()))),
    };
    println!(
        "{}: ok ({} callers, {} purposes, data_dir {}, listen {}{}, {})",
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
