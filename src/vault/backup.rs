//! Backups: an online, consistent copy of the store that never contains the root key, and a
//! restore that replays every erasure recorded since, so an erased borrower never comes back.
//!
//! Layout of a backup folder:
//! ```text
//! DIR/qoima-backup.json   manifest: when, audit position, KEK generations, root-key id
//! DIR/db/                 RocksDB checkpoint (SST files; no WAL needed)
//! ```
//! Where the erasures to replay come from: the erasure journal (`erasure_journal`, beside the
//! data directory, fsynced per erasure) and, when it can be opened, the configured live data
//! directory's erasure records. Either alone is enough; both are read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Invalid, Unavailable};
use super::{Ctx, ErasureJournal, ErasureRecord, ErasureStatus, JournalEntry, KekState, Vault, VaultError};
use crate::domain::rfc3339;
use crate::policy::Action;
use crate::store::{Space, Store, StoreError};

pub const MANIFEST: &str = "qoima-backup.json";
pub const DB_DIR: &str = "db";

/// What a backup says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    /// The last audit sequence number the backup contains.
    pub audit_seq: u64,
    /// KEK generations it needs (destroying one makes what only it wrapped unreadable here).
    pub kek_generations: Vec<u32>,
    pub erased_subjects: usize,
    /// Backups carry no KEKs: a restore takes them from the live store or the keyring escrow,
    /// so destroying a generation also closes every backup that needs it.
    pub keyring: String,
}

/// Removes every wrapped KEK from a backup copy and forces the removal into its files. The
/// generations' records stay, so a restore knows which it needs.
fn strip_keyring(copy: &Store) -> Result<(), StoreError> {
    let mut b = crate::store::Batch::default();
    copy.scan_prefix(Space::Keyring, b"kek/", |k, _| {
        if k.ends_with(b"/wrapped") {
            b.delete(Space::Keyring, k.to_vec());
        }
        true
    })?;
    copy.write(&b)?;
    copy.purge_space(Space::Keyring)
}

/// Gives a restored store the KEKs it needs: from the live store at `live` when it can be
/// opened, else from the keyring escrow file. Generations destroyed there stay destroyed here
/// (their DEKs are unreadable for good). Returns how many subjects that leaves unreadable.
pub fn install_keyring(restored: &Path, live: Option<&Path>, escrow: &Path) -> Result<u64, VaultError> {
    let source = match live.filter(|d| d.join("CURRENT").exists()) {
        Some(dir) => {
            let store = Store::open_for_reading(dir, crate::audit::summary::merge)?;
            super::keyring::Escrow::from_store(&store)?
        }
        None => super::keyring::Escrow::read(escrow)?,
    };
    let store = Store::open(restored, crate::audit::summary::merge)?;
    let known: std::collections::BTreeSet<u32> = source.generations.iter().map(|e| e.info.generation).collect();
    let mut unreadable = 0u64;
    for (info, count) in super::keyring::read_infos(&store)? {
        if !known.contains(&info.generation) {
            return Err(VaultError::Invalid(Invalid::BackupGeneration { generation: info.generation }));
        }
        let destroyed = source.generations.iter().any(|e| e.info.generation == info.generation && e.info.state == KekState::Destroyed);
        if destroyed {
            unreadable += count.max(0) as u64;
        }
    }
    let mut b = crate::store::Batch::default();
    source.install(&mut b)?;
    store.write(&b)?;
    Ok(unreadable)
}

impl Vault {
    /// Writes a consistent backup of the live store into `dir` (a new folder), online.
    pub fn create_backup(&self, ctx: &Ctx, dir: &Path) -> Result<Manifest, VaultError> {
        self.gate(ctx, Action::Backup, None)?;
        if dir.exists() {
            return Err(VaultError::Invalid(Invalid::BackupTargetExists { dir: dir.to_owned() }));
        }
        std::fs::create_dir_all(dir).map_err(|e| VaultError::Unavailable(Unavailable::CreateDir { dir: dir.to_owned(), source: e }))?;
        self.store.backup(&dir.join(DB_DIR))?;
        // Read the position from the copy itself, so the manifest describes exactly it.
        let copy = self.store.open_backup(&dir.join(DB_DIR))?;
        strip_keyring(&copy)?;
        let audit_seq = copy.last(Space::Audit)?.map(|(k, _)| k.try_into().map(u64::from_be_bytes).unwrap_or(0)).unwrap_or(0);
        let kek_generations = super::keyring::read_infos(&copy)?
            .into_iter()
            .filter(|(i, _)| i.state != KekState::Destroyed)
            .map(|(i, _)| i.generation)
            .collect();
        let erased_subjects = erased_in(&copy)?.len();
        drop(copy);
        let manifest = Manifest {
            format: 1,
            created_at: rfc3339(self.now()),
            audit_seq,
            kek_generations,
            erased_subjects,
            keyring: "not included: a restore takes KEKs from the live store or the keyring escrow".into(),
        };
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec_pretty(&manifest).expect("serialises"))
            .map_err(|e| VaultError::Unavailable(Unavailable::WriteManifest(e)))?;
        self.audit.record(self.draft(
            ctx,
            Action::Backup,
            None,
            format!("backup created into {} at audit sequence {audit_seq}", dir.display()),
        ))?;
        Ok(manifest)
    }
}

/// Every erasure record in a store.
fn erased_in(store: &Store) -> Result<Vec<ErasureRecord>, StoreError> {
    let mut out = Vec::new();
    let mut bad = false;
    store.scan(Space::Erasures, &[], &[0xff], |_, v| {
        match serde_json::from_slice::<ErasureRecord>(v) {
            Ok(e) => out.push(e),
            Err(_) => bad = true,
        }
        !bad
    })?;
    if bad {
        return Err(StoreError::Corrupt { space: "erasures", what: "record" });
    }
    Ok(out)
}

/// Copies `backup` into `to` (which must not exist or be empty): the first half of a restore.
pub fn copy_backup(backup: &Path, to: &Path) -> Result<(Manifest, usize), VaultError> {
    let manifest: Manifest = std::fs::read(backup.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| VaultError::Invalid(Invalid::NotABackup { dir: backup.to_owned() }))?;
    if to.exists() && std::fs::read_dir(to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(VaultError::Invalid(Invalid::RestoreTargetNotEmpty { dir: to.to_owned() }));
    }
    std::fs::create_dir_all(to).map_err(|e| VaultError::Unavailable(Unavailable::CreateDir { dir: to.to_owned(), source: e }))?;
    let mut files = 0;
    for entry in std::fs::read_dir(backup.join(DB_DIR)).map_err(|e| VaultError::Invalid(Invalid::BackupDatabase(e)))? {
        let entry = entry.map_err(|e| VaultError::Unavailable(Unavailable::ReadBackup(e)))?;
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            // Copies, not hard links: the backup must stay as it was.
            std::fs::copy(entry.path(), to.join(entry.file_name())).map_err(|e| VaultError::Unavailable(Unavailable::Copy(e)))?;
            files += 1;
        }
    }
    Ok((manifest, files))
}

/// The erasures a restore must replay: the journal, plus the live store's erasure records when
/// `live` can be opened (read-only beside a running vault, or offline).
pub fn erasures_to_replay(journal: &Path, live: Option<&Path>) -> Result<Vec<JournalEntry>, VaultError> {
    let mut entries = ErasureJournal::read(journal)?;
    if let Some(dir) = live.filter(|d| d.join("CURRENT").exists()) {
        let store = Store::open_for_reading(dir, crate::audit::summary::merge)?;
        for e in erased_in(&store)? {
            let event = if e.status == ErasureStatus::Erased { "erased" } else { "requested" };
            entries.push(JournalEntry {
                subject: e.subject,
                event: event.into(),
                time: e.erased_at.unwrap_or(e.requested_at),
                receipt: e.receipt,
            });
        }
    }
    Ok(entries)
}
