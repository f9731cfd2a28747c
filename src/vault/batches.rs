//! What a background job over every subject (the rewrap, the index build) shares: the thread
//! it runs its batches on, and the next batch of subjects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Vault, VaultError};

/// Runs `step` (one batch; `Ok(false)` once there is nothing left) until it is done or `stop`
/// is set, pausing `rewrap_pause_ms` between batches and a second after a failed one (logged
/// as `what`). It holds the vault only for one step, so shutdown is never kept waiting.
pub(super) fn spawn(
    name: &str,
    what: &'static str,
    vault: Weak<Vault>,
    stop: Arc<AtomicBool>,
    step: fn(&Vault) -> Result<bool, VaultError>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Some(v) = vault.upgrade() else { return };
            match step(&v) {
                Ok(true) => {
                    let pause = v.settings.rewrap_pause_ms;
                    drop(v);
                    if pause > 0 {
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} batch failed; retrying");
                    drop(v);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .expect("spawn a background job's thread")
}

impl Vault {
    /// The next batch of subject ids after `cursor` (from the first for `None`), in id order:
    /// `keys.rewrap_batch` of them at most.
    pub(super) fn next_subjects(&self, cursor: Option<&str>) -> Result<Vec<String>, VaultError> {
        let (from, to) = crate::layout::subjects_after(cursor);
        let mut ids: Vec<String> = Vec::with_capacity(self.settings.rewrap_batch);
        self.store.scan(crate::store::Space::Subjects, &from, &to, |k, _| {
            ids.push(String::from_utf8_lossy(k).into_owned());
            ids.len() < self.settings.rewrap_batch
        })?;
        Ok(ids)
    }
}
