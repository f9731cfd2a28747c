//! The tamper-evident audit log: a hash chain of entries in the store, appended by one
//! committer thread that groups concurrent requests into one fsynced write (group commit).
//!
//! **Invariant:** an entry is durable before the request it records may return plaintext. The
//! caller's own changes ride in the same write batch as its entry, so an operation and its
//! audit entry are applied together or not at all. Entries hold ids and field *names*, never
//! values, tokens or key bytes. An entry that hands a subject's fields out also adds to that
//! subject's access summary ([`summary`]), in the same batch.

use serde::{Deserialize, Serialize};

mod entry;
mod log;
mod query;
pub mod summary;
#[cfg(test)]
mod test_support;
mod verify;

pub use entry::{AuditEntry, Decision, Draft};
pub use log::{AfterCommit, AuditError, AuditLog, AuditStats, FaultSwitch, PendingCommit, Queued};
pub use query::{query, Query};
pub use verify::{verify, Broken, Verification};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}
