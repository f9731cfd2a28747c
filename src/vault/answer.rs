//! How far an operation may wait ([`Mode`]), and its answer, held back until its audit entry is
//! durable ([`Answer`]).
//!
//! A read or a field write is one function with a mode. An async caller runs it first in
//! [`Mode::NoWait`] on its own worker thread: the subject's data from memory only (memtables,
//! block cache, subject cache), the subject's lock only if free, the audit queue only if it has
//! room. Whatever would wait instead ends the attempt with [`VaultError::WouldBlock`], having
//! done nothing (no entry, no budget spent, no change; at most a cache warmed), and the caller runs it again in
//! [`Mode::Wait`] on a blocking thread. Refusals are answered, and audited, in either mode.
//!
//! What the fast mode bought (`docs/performance.md`, "What each optimisation bought", four and
//! three alternating runs): reads answered on the worker instead of a hand-off to a blocking
//! thread, fetch +19 % / +27 % at 16 / 64 connections (16,626 → 19,862 and 15,225 → 19,268
//! req/s); writes planned on the worker, create +61 % / +81 % (10,020 → 16,166 and
//! 11,123 → 20,121). Under both modes the wait for the durable entry holds no thread.

use super::{Ctx, Vault, VaultError};
use crate::audit::{AfterCommit, Draft, PendingCommit};
use crate::policy::Action;
use crate::store::{Batch, Tier};

/// How far an operation may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// For an async worker: memory only, try-lock, try-submit; anything that would wait is
    /// [`VaultError::WouldBlock`], and nothing was done.
    NoWait,
    /// For a blocking thread: reads the disk, waits for the subject's lock and for room in the
    /// audit queue. Never [`VaultError::WouldBlock`].
    Wait,
}

impl Mode {
    /// Where the store may look in this mode.
    pub(super) fn tier(self) -> Tier {
        match self {
            Mode::NoWait => Tier::Memory,
            Mode::Wait => Tier::Any,
        }
    }
}

/// An operation's outcome, held back until its audit entry is durable (fail closed: the value
/// is private, and the only ways to it are [`Answer::durable`] and [`Answer::wait`]). A
/// refusal is an answer too: its error comes out once the refusal's entry is durable.
#[must_use = "an answer is not given until its audit entry is durable"]
pub struct Answer<T> {
    outcome: Result<T, VaultError>,
    /// The entry's commit; none for an outcome that wrote no entry (a malformed request, or an
    /// entry that could not be queued, whose error is the outcome).
    commit: Option<PendingCommit>,
}

impl<T> Answer<T> {
    /// `outcome`, once `commit` is durable.
    pub(super) fn after(commit: PendingCommit, outcome: Result<T, VaultError>) -> Self {
        Self { outcome, commit: Some(commit) }
    }

    /// An outcome with no entry to wait for (an error before anything was recorded).
    pub(super) fn now(outcome: Result<T, VaultError>) -> Self {
        Self { outcome, commit: None }
    }

    /// Whether a [`Mode::NoWait`] attempt stopped short: run it again in [`Mode::Wait`].
    pub fn would_block(&self) -> bool {
        matches!(self.outcome, Err(VaultError::WouldBlock))
    }

    /// The outcome once its entry is durable, without holding a thread meanwhile.
    pub async fn durable(self) -> Result<T, VaultError> {
        if let Some(c) = self.commit {
            c.durable().await?;
        }
        self.outcome
    }

    /// [`Answer::durable`] for a blocking thread (never an async worker: it blocks).
    pub fn wait(self) -> Result<T, VaultError> {
        if let Some(c) = self.commit {
            c.wait()?;
        }
        self.outcome
    }
}

/// An error before any entry: the answer is the error.
impl<T> From<VaultError> for Answer<T> {
    fn from(e: VaultError) -> Self {
        Self::now(Err(e))
    }
}

/// The inner functions build answers with `?`: an error on the way is an answer with no entry.
impl<T> From<Result<Answer<T>, VaultError>> for Answer<T> {
    fn from(r: Result<Answer<T>, VaultError>) -> Self {
        r.unwrap_or_else(Self::from)
    }
}

impl Vault {
    /// Hands an entry (and the batch it rides with) to the audit committer in `mode`: waiting
    /// for room, or [`VaultError::WouldBlock`] if there is none. `after` runs once the batch is
    /// applied or refused ([`AfterCommit`]); if nothing was queued it is dropped uncalled.
    pub(super) fn submit(
        &self,
        mode: Mode,
        drafts: Vec<Draft>,
        batch: Batch,
        after: Option<AfterCommit>,
    ) -> Result<PendingCommit, VaultError> {
        match mode {
            Mode::Wait => Ok(self.audit.submit(drafts, batch, after)?),
            Mode::NoWait => self.audit.try_submit(drafts, batch, after).ok_or(VaultError::WouldBlock),
        }
    }

    /// Records a refusal in `mode` and answers with `err` once the entry is durable. If even the
    /// refusal cannot be recorded, the answer is that failure (503) instead.
    pub(super) fn refusal<T>(&self, mode: Mode, refused: Refused<'_>, err: VaultError) -> Answer<T> {
        let draft = self.refusal_draft(refused, &err);
        match self.submit(mode, vec![draft], Batch::default(), None) {
            Ok(commit) => Answer::after(commit, Err(err)),
            Err(e) => Answer::from(e),
        }
    }

    /// The denied entry of a refusal: the error's text as its reason, but an erased or unknown
    /// subject's reason names no more than that.
    pub(super) fn refusal_draft(&self, r: Refused<'_>, err: &VaultError) -> Draft {
        let reason = match err {
            VaultError::Erased { .. } => "subject erased".to_string(),
            VaultError::NotFound(_) => "unknown subject".to_string(),
            e => e.to_string(),
        };
        self.draft(r.ctx, r.action, r.subject, reason).purpose(r.purpose).fields(r.fields).deny()
    }
}

/// What a refusal's entry names: who asked for what (field names, never values).
pub(super) struct Refused<'a> {
    pub ctx: &'a Ctx,
    pub action: Action,
    pub subject: Option<&'a str>,
    pub purpose: Option<&'a str>,
    pub fields: Vec<String>,
}
