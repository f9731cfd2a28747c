//! The privacy centre's one operation of its own: opening a session for a subject (role
//! website). Everything a borrower then does on the page is an ordinary vault operation taken
//! as the website caller, with `Ctx::via` saying it came through the privacy centre.

use time::OffsetDateTime;

use super::{Ctx, Vault, VaultError};
use crate::domain::{rfc3339, SubjectId};
use crate::policy::Action;
use crate::store::Batch;

impl Vault {
    /// Records that `ctx` opened a privacy-centre session for `subject` until `expires_at`.
    /// Refused (and recorded) for a caller without the website role, an unknown subject (404)
    /// and an erased one (410): an erased subject has nothing left to show.
    ///
    /// Returns the expiry of the session to link to: `expires_at`, or, for a retry with the
    /// same idempotency key, the first request's (its link is never kept: the caller issues a
    /// fresh one to the same session).
    pub fn open_privacy_session(&self, ctx: &Ctx, subject: &SubjectId, expires_at: OffsetDateTime) -> Result<OffsetDateTime, VaultError> {
        self.once(ctx, Action::PrivacySession, Some(subject.as_str()), || {
            let s = subject.as_str();
            self.gate(ctx, Action::PrivacySession, Some(s))?;
            self.live(ctx, Action::PrivacySession, subject)?;
            let reason = format!("privacy-centre session opened until {}", rfc3339(expires_at));
            let mut batch = Batch::default();
            self.remember(ctx, Some(s), &mut batch, &expires_at)?;
            self.audit.commit(vec![self.draft(ctx, Action::PrivacySession, Some(s), reason)], batch)?;
            Ok(expires_at)
        })
    }
}
