//! The thread a background job (the rewrap, the index build) runs its batches on.

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
