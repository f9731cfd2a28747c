//! The store watchdog: stops the server when the store stops taking writes.

use std::sync::Arc;
use std::time::Duration;

use crate::vault::Vault;

/// How often the watchdog asks the store whether it takes writes.
const WATCHDOG_EVERY: Duration = Duration::from_secs(1);
/// How long a refusing store is given before the process exits: RocksDB recovers some errors
/// itself (retryable I/O errors, about once a second); meanwhile /readyz says not ready, so a
/// load balancer stops sending first. The C API has no `Resume`, so beyond that only a
/// restart (reopen) clears the error state.
const REFUSING_GRACE: Duration = Duration::from_secs(3);
/// The same for a full disk: RocksDB resumes by itself once space returns (tests/it/faults.rs)
/// and a restart cannot help while the disk is full, so the vault waits, not ready, this long.
const NO_SPACE_GRACE: Duration = Duration::from_secs(300);
/// How long writes may stall before the store counts as stuck (flushes stopped on an error
/// leave writes stalled for ever; under load stalls last well under this).
const STALL_GRACE: Duration = Duration::from_secs(60);

/// Watches whether the store takes writes; returns, with what to report, once it has refused
/// or stalled them for longer than RocksDB could recover by itself. The server then stops and
/// the process exits non-zero, so the supervisor restarts it (reopening clears the error).
pub(super) async fn store_watchdog(vault: Arc<Vault>) -> String {
    use crate::store::WriteState;
    let mut tick = tokio::time::interval(WATCHDOG_EVERY);
    let mut failing: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        tick.tick().await;
        let v = vault.clone();
        let Ok(state) = tokio::task::spawn_blocking(move || v.store_write_state()).await else { continue };
        let (grace, what) = match state {
            WriteState::Accepting => {
                if failing.take().is_some() {
                    tracing::info!("the store takes writes again");
                }
                continue;
            }
            WriteState::Stalled => (STALL_GRACE, "RocksDB has stalled writes".to_string()),
            WriteState::NoSpace(e) => (NO_SPACE_GRACE, format!("RocksDB refuses writes ({e})")),
            WriteState::Refused(e) => (REFUSING_GRACE, format!("the store refuses writes ({e})")),
        };
        let since = match failing {
            Some((at, g)) if g == grace => at,
            _ => {
                tracing::error!(grace_secs = grace.as_secs(), "{what}; /readyz reports not ready");
                failing.insert((tokio::time::Instant::now(), grace)).0
            }
        };
        if since.elapsed() >= grace {
            tracing::error!(
                "{what} for {} s; stopping so the supervisor restarts the vault (reopening clears it)",
                since.elapsed().as_secs()
            );
            return format!("{what}; a restart reopens the store");
        }
    }
}
