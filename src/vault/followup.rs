//! Work that follows a committed change and can fail after it: an erasure's purge, the keyring
//! escrow copy after a rotation or destruction, the keyring purge after a destruction or a
//! root-key rotation, and the KEK rotation the wrap limit calls for. A committed change is
//! answered with what happened and what is still pending (never "nothing was done"); this
//! finishes the rest in the background, retrying every second.
//!
//! Each survives a restart: an unpurged erasure is marked so in its record (`purged: false`,
//! resumed at start), the escrow file is rewritten at every start, a keyring purge is owed by a
//! marker written in the same batch as the change that owes it, and the wrap count is stored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Ctx, Vault};
use crate::store::{Batch, Space};

/// The marker of an owed keyring purge (in the jobs space).
pub(super) const KEYRING_PURGE_KEY: &[u8] = b"followup/keyring-purge";

/// How often pending follow-ups are retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct FollowUps {
    /// The keyring escrow file is behind the store.
    escrow: AtomicBool,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Vault {
    /// Finishes a committed shred's purge now, or leaves it queued for the background retry (and
    /// the next start). Returns whether it is purged.
    pub(super) fn purge_or_defer(&self, s: &str) -> bool {
        match self.finish_purge(s) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "erasure committed but its purge failed; retrying in the background");
                false
            }
        }
    }

    /// Rewrites the keyring escrow file, or marks it pending for the background retry. Call with
    /// [`super::Keyring::admin`] held (or before the vault is shared). Returns whether it is written.
    pub(super) fn escrow_or_defer(&self) -> bool {
        match self.write_escrow() {
            Ok(()) => {
                self.follow_ups.escrow.store(false, Ordering::SeqCst);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "keyring change committed but the escrow copy failed; retrying in the background");
                self.follow_ups.escrow.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// Forces a committed keyring change (a destroyed or rewrapped KEK) out of the store files,
    /// or leaves its marker for the background retry and the next start.
    pub(super) fn keyring_purge_or_defer(&self) {
        if let Err(e) = self.purge_keyring() {
            tracing::warn!(error = %e, "keyring change committed but its purge failed; retrying in the background");
        }
    }

    fn purge_keyring(&self) -> Result<(), super::VaultError> {
        self.store.purge_space(Space::Keyring)?;
        let mut b = Batch::default();
        b.delete(Space::Jobs, KEYRING_PURGE_KEY.to_vec());
        self.store.write(&b)?;
        Ok(())
    }

    /// Whether the keyring escrow file is behind the store (a retry is pending).
    pub fn escrow_pending(&self) -> bool {
        self.follow_ups.escrow.load(Ordering::SeqCst)
    }

    /// Erasures whose shred committed and whose purge is still to run.
    pub fn purges_pending(&self) -> usize {
        self.purges.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// One round of retries; returns whether anything is still pending. (The first failure of
    /// each was logged as a warning; retries that fail again log at debug level only.)
    pub fn run_follow_ups(&self) -> bool {
        let queued = self.purges.queue.lock().unwrap_or_else(|p| p.into_inner()).iter().next().cloned();
        if let Some(s) = queued {
            // One turn purges every queued subject.
            match self.finish_purge(&s) {
                Ok(()) => tracing::info!("pending erasure purges finished"),
                Err(e) => tracing::debug!(error = %e, "erasure purge retry failed"),
            }
        }
        if self.escrow_pending() {
            let _admin = self.keyring.admin();
            if self.escrow_pending() {
                match self.write_escrow() {
                    Ok(()) => {
                        self.follow_ups.escrow.store(false, Ordering::SeqCst);
                        tracing::info!("keyring escrow copy written");
                    }
                    Err(e) => tracing::debug!(error = %e, "keyring escrow retry failed"),
                }
            }
        }
        match self.store.get(Space::Jobs, KEYRING_PURGE_KEY) {
            Ok(Some(_)) => match self.purge_keyring() {
                Ok(()) => tracing::info!("pending keyring purge finished"),
                Err(e) => tracing::debug!(error = %e, "keyring purge retry failed"),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the follow-up markers"),
        }
        if self.keyring.rotation_due() {
            if let Err(e) = self.rotate_for_wrap_limit(&Ctx::system()) {
                tracing::warn!(error = %e, "the KEK generation is at its wrap limit and rotating failed; retrying");
            }
        }
        self.purges_pending() > 0
            || self.escrow_pending()
            || self.keyring.rotation_due()
            || matches!(self.store.get(Space::Jobs, KEYRING_PURGE_KEY), Ok(Some(_)))
    }

    /// Starts the background retries (once the vault is shared; the server does it at start).
    pub(super) fn spawn_follow_ups(self: &Arc<Self>) {
        let mut slot = self.follow_ups.thread.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        let vault = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("qoima-follow-ups".into())
            .spawn(move || loop {
                std::thread::park_timeout(RETRY_EVERY);
                // Hold the vault only for one round, so shutdown is never kept waiting.
                let Some(v) = vault.upgrade() else { return };
                if v.follow_ups.stop.load(Ordering::SeqCst) {
                    return;
                }
                v.run_follow_ups();
            })
            .expect("spawn the follow-up thread");
        *slot = Some(handle);
    }

    /// Stops the background retries after their current round.
    pub(super) fn stop_follow_ups(&self) {
        self.follow_ups.stop.store(true, Ordering::SeqCst);
        let handle = self.follow_ups.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}
