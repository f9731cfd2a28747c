//! `qoima backup`: create (offline or through the running vault) and restore.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::target::{ask, finish, parse_answer, target, Target};
use super::{absolute, cli_ctx, load_config, Failure};
use crate::server::admin;
use crate::vault::Vault;

pub(super) fn backup_create(config: &Option<PathBuf>, dir: &std::path::Path) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config)?;
    let dir = absolute(dir)?;
    let manifest: crate::vault::backup::Manifest = match target(&config)? {
        Target::Offline(v) => finish(&v, v.create_backup(&cli_ctx(), &dir))?,
        Target::Online(rt) => parse_answer(ask(&rt, &config, &admin::Request::Backup { dir: dir.clone() })?)?,
    };
    println!(
        "backup written to {} (audit position {}; no root key and no KEKs inside: a restore takes them from the live store or the keyring escrow)",
        dir.display(),
        manifest.audit_seq
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn backup_restore(
    config: &Option<PathBuf>,
    dir: &std::path::Path,
    to: &std::path::Path,
    journal: Option<&std::path::Path>,
    escrow: Option<&std::path::Path>,
) -> Result<ExitCode, Failure> {
    use crate::vault::backup;
    let (config, _) = load_config(config)?;
    let to = absolute(to)?;
    let root = config.root_key.load().map_err(|e| Failure(4, e.to_string()))?;
    let live = (absolute(&config.data_dir)? != to).then_some(config.data_dir.as_path());
    // The restored store's own journal and escrow: the configured ones only when it takes the
    // configured data directory's place; otherwise beside it (or as given), so a restore beside a
    // live vault never writes the live vault's files.
    let (own_journal, own_escrow) = match live {
        None => (config.erasure_journal.clone(), config.keyring_escrow.clone()),
        Some(_) => (crate::vault::default_journal_path(&to), crate::vault::sibling(&to, "-keyring.json")),
    };
    let own_journal = journal.map(absolute).transpose()?.unwrap_or(own_journal);
    let own_escrow = escrow.map(absolute).transpose()?.unwrap_or(own_escrow);
    if live.is_some() {
        for (what, mine, theirs) in
            [("--erasure-journal", &own_journal, &config.erasure_journal), ("--keyring-escrow", &own_escrow, &config.keyring_escrow)]
        {
            if mine == theirs || absolute(theirs).is_ok_and(|t| &t == mine) {
                return Err(Failure(2, format!("{what} {} is the live vault's; give the restored store its own", mine.display())));
            }
        }
    }
    for (what, p) in [("--erasure-journal", &own_journal), ("--keyring-escrow", &own_escrow)] {
        if p.starts_with(&to) {
            return Err(Failure(2, format!("{what} must not live inside {} (a restore replaces it)", to.display())));
        }
    }
    let entries = backup::erasures_to_replay(&config.erasure_journal, live).map_err(|e| Failure(4, e.to_string()))?;
    let (manifest, files) = backup::copy_backup(dir, &to).map_err(|e| Failure(4, e.to_string()))?;
    let unreadable = backup::install_keyring(&to, live, &config.keyring_escrow).map_err(|e| Failure(4, e.to_string()))?;
    if own_journal != config.erasure_journal {
        // The restored store's journal starts with every erasure it replays, so a later restore
        // into it from an older backup replays them too.
        let journal = crate::vault::ErasureJournal::open(&own_journal).map_err(|e| Failure(4, e.to_string()))?;
        journal.append_entries(&entries).map_err(|e| Failure(4, e.to_string()))?;
    }
    let mut settings = config.vault_settings();
    settings.data_dir = to.clone();
    settings.erasure_journal = own_journal;
    settings.keyring_escrow = own_escrow;
    let vault =
        Vault::open(settings, root, Arc::new(crate::domain::SystemClock), Default::default()).map_err(|e| Failure(4, e.to_string()))?;
    let replayed = vault.replay_erasures(&entries).map_err(|e| Failure(4, e.to_string()))?;
    vault.close();
    println!(
        "restored {files} files from the backup of {} into {}; replayed {replayed} erasure(s) recorded since",
        manifest.created_at,
        to.display()
    );
    if unreadable > 0 {
        println!("{unreadable} subject(s) in the backup have DEKs under destroyed KEK generations: unreadable for good");
    }
    Ok(ExitCode::SUCCESS)
}
