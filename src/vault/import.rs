//! Bulk import (issue #25): up to [`MAX_BATCH`] subjects' puts in one request, one group
//! commit.
//!
//! **Invariants.**
//! - Each item goes through the single put's own checks and planning ([`Vault::encode_fields`],
//!   [`Vault::write_decision`], [`Vault::plan_write`]), so it is refused exactly when the single
//!   `PUT /v1/subjects/{id}` would refuse it, and audited as that put would be: one
//!   `subject.put` entry (allowed or denied) per item that reaches the policy; a malformed item
//!   (bad subject id, bad field or value) is answered 400 with no entry, as the single put.
//! - Each item is atomic on its own: a refused item adds nothing to the batch.
//! - The request is one group commit: one [`Batch`] with every accepted item's writes (and the
//!   idempotency record), one audit submission with every entry, so one fsync.
//! - Every subject of the request is locked up front in stripe order
//!   ([`SubjectLocks::lock_many_owned`](super::SubjectLocks::lock_many_owned)) and stays
//!   locked until the committer has applied the batch, as a single write's lock does.
//! - A subject named twice: its first occurrence is planned, the later ones refused (409).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::{Mode, Refused};
use super::idempotency::{Keyed, Replayable};
use super::index::IndexedValue;
use super::write::{WriteOutcome, WritePlan, WriteRequest};
use super::{Ctx, Vault, VaultError};
use crate::audit::{AfterCommit, Draft};
use crate::domain::{FieldName, SubjectId};
use crate::policy::{Action, Denial};
use crate::store::{Batch, Tier};

/// Most subjects in one import request.
pub const MAX_BATCH: usize = 1_000;

/// The refusal's text for a subject named more than once in one request.
pub const DUPLICATE: &str = "subject appears more than once in this batch";

/// One subject of an import, as the caller sent it.
#[derive(Clone, Debug)]
pub struct ImportItem {
    pub subject: String,
    pub fields: BTreeMap<String, Value>,
}

/// What became of one item, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemOutcome {
    /// The subject id as sent; empty when the id itself is malformed (it is not repeated).
    pub subject: String,
    pub result: ItemResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ItemResult {
    /// Stored: created or updated, as a single put answers.
    Written(WriteOutcome),
    /// Refused; nothing of the item was stored.
    Refused(Refusal),
}

/// Why an item was refused: the class of the error the single put would have answered and
/// its text (kept in an idempotency record, so both are plain data; never a value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub detail: String,
    /// An erased subject's erasure receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// The [`VaultError`] variants an item can be refused with (the API maps each to the status
/// and problem type the single put answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalKind {
    /// [`VaultError::Invalid`] (400).
    Invalid,
    /// [`VaultError::Denied`], but not a missing basis (403 `forbidden`).
    Forbidden,
    /// [`VaultError::Denied`] of [`Denial::BasisMissing`] (403 `basis-missing`).
    BasisMissing,
    /// [`VaultError::NotFound`] (404).
    NotFound,
    /// [`VaultError::Conflict`], or a subject named twice in one request (409).
    Conflict,
    /// [`VaultError::Erased`] (410 `erased`).
    Erased,
    /// [`VaultError::KeyDestroyed`] (410 `key-destroyed`).
    KeyDestroyed,
}

impl Refusal {
    /// The refusal of an item with `err`; an error that is not about the item (the store or the
    /// audit log failing, an internal fault) fails the whole request instead, and comes back.
    pub fn of(err: VaultError) -> Result<Self, VaultError> {
        let kind = match &err {
            VaultError::Invalid(_) => RefusalKind::Invalid,
            VaultError::Denied(Denial::BasisMissing { .. }) => RefusalKind::BasisMissing,
            VaultError::Denied(_) => RefusalKind::Forbidden,
            VaultError::NotFound(_) => RefusalKind::NotFound,
            VaultError::Conflict(_) => RefusalKind::Conflict,
            VaultError::Erased { .. } => RefusalKind::Erased,
            VaultError::KeyDestroyed { .. } => RefusalKind::KeyDestroyed,
            _ => return Err(err),
        };
        let receipt = match &err {
            VaultError::Erased { receipt, .. } => Some(receipt.clone()),
            _ => None,
        };
        Ok(Self { kind, detail: err.to_string(), receipt })
    }

    fn duplicate() -> Self {
        Self { kind: RefusalKind::Conflict, detail: DUPLICATE.into(), receipt: None }
    }
}

/// A replay answers with the results as first given.
impl Replayable for Vec<ItemOutcome> {
    type Kept = Vec<ItemOutcome>;
    fn kept(&self) -> Self::Kept {
        self.clone()
    }
    fn replay(_: &Vault, kept: Self::Kept) -> Result<Self, VaultError> {
        Ok(kept)
    }
}

/// An item after its checks: to be planned under the locks, or refused, with the audit entry
/// the refusal records, if any (boxed: most items are checked).
enum Step<'a> {
    Checked { subject: &'a str, fields: Vec<(FieldName, Vec<u8>)>, indexed: Vec<IndexedValue> },
    Refused { refusal: Refusal, draft: Option<Box<Draft>> },
}

impl Step<'_> {
    fn refused(refusal: Refusal, draft: Option<Draft>) -> Self {
        Step::Refused { refusal, draft: draft.map(Box::new) }
    }
}

fn names(fields: &[(FieldName, Vec<u8>)]) -> Vec<String> {
    fields.iter().map(|(f, _)| f.to_string()).collect()
}

impl Vault {
    /// Puts every item's fields (role service), each as the single put would, in one group
    /// commit; blocks until it is durable. The answer is one outcome per item, in order. The
    /// caller bounds the request to [`MAX_BATCH`] items (the API refuses more, and none).
    /// An error is about the whole request (the role, the idempotency key, the store or audit
    /// failing), and then nothing was stored.
    pub fn put_batch(&self, ctx: &Ctx, items: &[ImportItem]) -> Result<Vec<ItemOutcome>, VaultError> {
        let action = Action::PutFields;
        self.gate(ctx, action, None)?;
        let claim = match self.claim_key::<Vec<ItemOutcome>>(Mode::Wait, ctx, action, None)? {
            Keyed::Answered(answer) => return answer.wait(),
            Keyed::Fresh(claim) => claim,
        };
        // Checked without the locks: what depends only on the request and the policy.
        let mut seen = HashSet::with_capacity(items.len());
        let steps = items.iter().map(|item| self.check_item(ctx, item, &mut seen)).collect::<Result<Vec<_>, _>>()?;
        let locks = self.locks.lock_many_owned(steps.iter().filter_map(|s| match s {
            Step::Checked { subject, .. } => Some(*subject),
            Step::Refused { .. } => None,
        }));
        // Then every unique value the request writes (the single write's order: subjects first).
        let value_names: Vec<Vec<String>> = steps
            .iter()
            .map(|s| match s {
                Step::Checked { fields, indexed, .. } => self.value_locks.names(fields, indexed),
                Step::Refused { .. } => Vec::new(),
            })
            .collect();
        let value_locks = self.value_locks.lock_names(Mode::Wait, &value_names.concat())?;
        // Unique values claimed by the items accepted so far (their entries ride in `batch`, so
        // the store's check in `plan_write` cannot see them): a value lock's name, and whose.
        let mut claimed: HashMap<&str, &str> = HashMap::new();
        let mut batch = Batch::default();
        let mut afters: Vec<AfterCommit> = Vec::new();
        let mut answered = Vec::with_capacity(steps.len());
        for (step, values) in steps.into_iter().zip(&value_names) {
            let (subject, fields, indexed) = match step {
                Step::Checked { subject, fields, indexed } => (subject, fields, indexed),
                Step::Refused { refusal, draft } => {
                    answered.push((ItemResult::Refused(refusal), draft.map(|d| *d)));
                    continue;
                }
            };
            let req = WriteRequest { ctx, action, subject, fields: &fields, indexed: &indexed, create: true };
            let taken = values.iter().position(|n| claimed.get(n.as_str()).is_some_and(|holder| *holder != subject));
            let planned = match taken {
                // A unique value an earlier item of this request claimed: the single put's 409.
                Some(i) => {
                    let field = indexed.iter().filter(|v| v.unique).nth(i).map(|v| fields[v.pos].0.to_string()).unwrap_or_default();
                    Ok(WritePlan::Refused { err: VaultError::Conflict(super::error::Conflict::UniqueValue { field }) })
                }
                None => self.plan_write(Tier::Any, &req),
            };
            answered.push(match planned {
                Ok(WritePlan::Ready { batch: writes, draft, outcome, new_dek, next_view }) => {
                    claimed.extend(values.iter().map(|n| (n.as_str(), subject)));
                    batch.extend(writes);
                    // The cache updates only; the locks go once all are done (below).
                    afters.push(self.after_write(subject, (), new_dek, next_view));
                    (ItemResult::Written(outcome), Some(draft))
                }
                Ok(WritePlan::Refused { err }) => {
                    let draft =
                        self.refusal_draft(Refused { ctx, action, subject: Some(subject), purpose: None, fields: names(&fields) }, &err);
                    (ItemResult::Refused(Refusal::of(err)?), Some(draft))
                }
                // Unrecorded, as the single put leaves an error on the way.
                Err(e) => (ItemResult::Refused(Refusal::of(e)?), None),
            });
        }
        let mut drafts = Vec::with_capacity(answered.len());
        let outcomes: Vec<ItemOutcome> = items
            .iter()
            .zip(answered)
            .map(|(item, (result, draft))| {
                drafts.extend(draft);
                // A refused id is not repeated (nor kept): it may be anything the caller sent.
                let subject = if SubjectId::parse(&item.subject).is_ok() { item.subject.clone() } else { String::new() };
                ItemOutcome { subject, result }
            })
            .collect();
        self.remember(ctx, None, &mut batch, &outcomes)?;
        let after: AfterCommit = Box::new(move |applied| {
            for after in afters {
                after(applied);
            }
            drop((locks, value_locks, claim));
        });
        self.submit(Mode::Wait, drafts, batch, Some(after))?.wait()?;
        Ok(outcomes)
    }

    /// An item's checks that need no lock, in the single put's order: its id, whether the
    /// request named it before, its fields against the schema, the caller's write grant.
    fn check_item<'a>(&self, ctx: &Ctx, item: &'a ImportItem, seen: &mut HashSet<&'a str>) -> Result<Step<'a>, VaultError> {
        let action = Action::PutFields;
        let s = match SubjectId::parse(&item.subject) {
            Ok(_) => item.subject.as_str(),
            Err(e) => return Ok(Step::refused(Refusal::of(e.into())?, None)),
        };
        if !seen.insert(s) {
            let draft = self.draft(ctx, action, Some(s), DUPLICATE).deny();
            return Ok(Step::refused(Refusal::duplicate(), Some(draft)));
        }
        let fields = match self.encode_fields(&item.fields) {
            Ok(f) => f,
            Err(e) => return Ok(Step::refused(Refusal::of(e)?, None)),
        };
        if let Err(d) = self.write_decision(ctx, action, &fields) {
            let err = VaultError::from(d);
            let draft = self.refusal_draft(Refused { ctx, action, subject: Some(s), purpose: None, fields: names(&fields) }, &err);
            return Ok(Step::refused(Refusal::of(err)?, Some(draft)));
        }
        let indexed = self.indexed_values(&fields);
        Ok(Step::Checked { subject: s, fields, indexed })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vault::error::Missing;

    #[test]
    fn item_errors_are_refusals_and_the_rest_fail_the_request() {
        let erased = Refusal::of(VaultError::Erased { subject: "s".into(), receipt: "r-1".into() }).unwrap();
        assert_eq!((erased.kind, erased.receipt.as_deref()), (RefusalKind::Erased, Some("r-1")));
        assert_eq!(Refusal::of(VaultError::no_fields()).unwrap().kind, RefusalKind::Invalid);
        assert_eq!(Refusal::of(VaultError::NotFound(Missing::Subject { subject: "s".into() })).unwrap().kind, RefusalKind::NotFound);
        let denied = VaultError::Denied(Denial::WriteNotGranted { action: "subject.put", fields: vec!["identity.iin".into()] });
        assert_eq!(Refusal::of(denied).unwrap().kind, RefusalKind::Forbidden);
        assert!(matches!(Refusal::of(VaultError::WouldBlock), Err(VaultError::WouldBlock)));
        assert!(matches!(Refusal::of(VaultError::IdempotencyKeyReused), Err(VaultError::IdempotencyKeyReused)));
    }

    fn vault(dir: &std::path::Path) -> Vault {
        qoima_keys::RootKey::generate_file(&dir.join("root.key")).ok();
        let root = qoima_keys::RootKeySource::File(dir.join("root.key")).load().unwrap();
        let clock = std::sync::Arc::new(crate::domain::SystemClock);
        Vault::open(super::super::Settings::new(dir.join("data")), root, clock, Default::default()).unwrap()
    }

    fn item(subject: &str, fields: Value) -> ImportItem {
        ImportItem { subject: subject.into(), fields: serde_json::from_value(fields).unwrap() }
    }

    #[test]
    fn a_mixed_batch_is_one_group_with_an_entry_per_checked_item() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let ctx = Ctx { caller: std::sync::Arc::new(service()), ..Ctx::system() };
        let name = json!({"identity.full_name": "N"});
        let first = v.put_batch(&ctx, &[item("old", name.clone())]).unwrap();
        assert!(matches!(&first[0].result, ItemResult::Written(w) if w.created), "{first:?}");
        let groups = || v.audit_stats().groups.load(std::sync::atomic::Ordering::Relaxed);
        let (groups_before, entries_before) = (groups(), v.audit_stats().entries.load(std::sync::atomic::Ordering::Relaxed));
        let items = [
            item("new", name.clone()),
            item("old", name.clone()),
            item("bad id!", name.clone()),
            item("badfield", json!({"identity.no_such": "x"})),
            item("new", name.clone()),
        ];
        let out = v.put_batch(&ctx, &items).unwrap();
        let kinds: Vec<_> = out
            .iter()
            .map(|o| match &o.result {
                ItemResult::Written(w) => format!("written created={}", w.created),
                ItemResult::Refused(r) => format!("{:?}", r.kind),
            })
            .collect();
        assert_eq!(kinds, ["written created=true", "written created=false", "Invalid", "Invalid", "Conflict"]);
        assert_eq!(groups(), groups_before + 1, "one group commit");
        // new, old and the duplicate reached the policy; the two malformed items did not.
        assert_eq!(v.audit_stats().entries.load(std::sync::atomic::Ordering::Relaxed), entries_before + 3);
        assert!(v.store().get(crate::store::Space::Subjects, &crate::layout::subject("badfield")).unwrap().is_none());
        v.close();
    }

    fn service() -> crate::policy::Caller {
        crate::policy::Caller {
            name: crate::domain::CallerName::parse("importer").unwrap(),
            roles: [crate::domain::Role::Service].into(),
            purposes: [crate::domain::Purpose::parse("loan_issuance").unwrap()].into(),
        }
    }

    #[test]
    fn outcomes_keep_as_plain_data() {
        let out = vec![
            ItemOutcome {
                subject: "a".into(),
                result: ItemResult::Written(WriteOutcome { created: true, version: 1, missing_mandatory: vec![] }),
            },
            ItemOutcome { subject: "b".into(), result: ItemResult::Refused(Refusal::duplicate()) },
        ];
        let kept = serde_json::to_value(out.kept()).unwrap();
        assert_eq!(kept[1], json!({"subject": "b", "result": {"refused": {"kind": "conflict", "detail": DUPLICATE}}}));
        assert_eq!(serde_json::from_value::<Vec<ItemOutcome>>(kept).unwrap(), out);
    }
}
