//! What an idempotency record keeps of each operation's answer, and how a replay gives the
//! answer back from it ([`Replayable`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use super::codec::{ConsentRecord, ContractRecord, DisclosureRecord, ErasureRecord, ErasureStatus};
use super::keyring::KekInfo;
use super::read::FieldValues;
use super::rewrap::{RewrapJob, RewrapProgress};
use super::write::WriteOutcome;
use super::{Vault, VaultError};

/// An operation's answer, as its idempotency record keeps it and as a replay gives it back.
pub(super) trait Replayable: Sized {
    /// What the record keeps: nothing secret, no field values.
    type Kept: Serialize + DeserializeOwned;
    fn kept(&self) -> Self::Kept;
    /// The answer to a replay, from what was kept.
    fn replay(vault: &Vault, kept: Self::Kept) -> Result<Self, VaultError>;
}

macro_rules! kept_as_is {
    ($($t:ty),*) => {$(
        impl Replayable for $t {
            type Kept = $t;
            fn kept(&self) -> $t {
                self.clone()
            }
            fn replay(_: &Vault, kept: $t) -> Result<$t, VaultError> {
                Ok(kept)
            }
        }
    )*};
}

kept_as_is!(WriteOutcome, ContractRecord, ConsentRecord, KekInfo, u32);

impl Replayable for ErasureRecord {
    type Kept = ErasureRecord;
    fn kept(&self) -> ErasureRecord {
        self.clone()
    }
    /// The first answer, with the purge's progress as it is now (`purge_pending` is a
    /// follow-up's state, not part of the outcome).
    fn replay(vault: &Vault, mut kept: ErasureRecord) -> Result<ErasureRecord, VaultError> {
        if kept.status == ErasureStatus::Erased && !kept.purged {
            if let Some(now) = vault.erasure(&kept.subject)?.filter(|e| e.receipt == kept.receipt) {
                kept.purged = now.purged;
            }
        }
        Ok(kept)
    }
}

impl Replayable for (ContractRecord, Option<ErasureRecord>) {
    type Kept = (ContractRecord, Option<ErasureRecord>);
    fn kept(&self) -> Self::Kept {
        self.clone()
    }
    fn replay(vault: &Vault, (c, e): Self::Kept) -> Result<Self, VaultError> {
        Ok((c, e.map(|e| ErasureRecord::replay(vault, e)).transpose()?))
    }
}

/// A disclosure's record keeps the disclosure record only: the values went out once, with the
/// first answer, and a replay gives the record with no values (nothing is disclosed twice).
impl Replayable for (DisclosureRecord, FieldValues) {
    type Kept = DisclosureRecord;
    fn kept(&self) -> DisclosureRecord {
        self.0.clone()
    }
    fn replay(_: &Vault, kept: DisclosureRecord) -> Result<Self, VaultError> {
        Ok((kept, FieldValues::new()))
    }
}

/// A privacy session's record keeps its expiry, never its link (a credential): a replay is
/// answered with a fresh link to the same session (same subject, same expiry), or refused once
/// that session has expired.
impl Replayable for OffsetDateTime {
    type Kept = OffsetDateTime;
    fn kept(&self) -> OffsetDateTime {
        *self
    }
    fn replay(vault: &Vault, kept: OffsetDateTime) -> Result<OffsetDateTime, VaultError> {
        if kept <= vault.now() {
            return Err(VaultError::Conflict(super::error::Conflict::SessionExpired));
        }
        Ok(kept)
    }
}

/// A rewrap's start is answered with the job's progress as it is now.
impl Replayable for RewrapProgress {
    type Kept = RewrapJob;
    fn kept(&self) -> RewrapJob {
        self.job.clone()
    }
    fn replay(vault: &Vault, _: RewrapJob) -> Result<Self, VaultError> {
        vault.rewrap_progress_now()
    }
}
