//! Per-subject access summaries: who read, received or exported which fields of a subject,
//! for which purpose, how often, first and last, and the last [`RECENT`] accesses in full.
//!
//! The committer keeps them in the same batch as each entry, as a merge into the subject's
//! record in [`Space::Access`] (no read on the commit path), so an export reads one bounded
//! record instead of the subject's audit entries. Only accesses enter it (allowed reads,
//! disclosures and exports naming fields, [`ACCESSES`]): refusals, however many, change
//! nothing in it.
//!
//! **Size, independent of history:** one group per (caller, action, purpose) — callers and
//! purposes come from the configuration, never from a request, and there are three actions —
//! each holding the union of the field names read (at most the schema's fields), plus the last
//! [`RECENT`] accesses. Erasure deletes the record with the subject's other data.

use std::collections::HashMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use super::{AuditEntry, Decision};
use crate::domain::push_json_str;
use crate::layout;
use crate::store::{Batch, Space, Store, StoreError};

/// The accesses kept in full, newest last.
pub const RECENT: usize = 20;

/// The actions that hand a subject's values out.
pub const ACCESSES: [&str; 3] = ["subject.read", "subject.disclose", "subject.export"];

/// Entries a backfill reads into memory before it writes what they add.
const BACKFILL_CHUNK: usize = 20_000;

/// One subject's summary, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// By (caller, action, purpose), in that order.
    pub groups: Vec<Group>,
    /// The last [`RECENT`] accesses, oldest first.
    pub recent: Vec<Access>,
}

/// Every access by one caller, action and purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    /// Every field name any of them handed out, sorted.
    pub fields: Vec<String>,
    pub count: u64,
    /// Sequence number and time of the first and of the last.
    pub first_seq: u64,
    pub first: String,
    pub last_seq: u64,
    pub last: String,
}

/// One access, as its audit entry names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    pub seq: u64,
    pub time: String,
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
}

impl Summary {
    fn of(a: Access) -> Self {
        let mut fields = a.fields.clone();
        fields.sort();
        fields.dedup();
        let group = Group {
            caller: a.caller.clone(),
            action: a.action.clone(),
            purpose: a.purpose.clone(),
            fields,
            count: 1,
            first_seq: a.seq,
            first: a.time.clone(),
            last_seq: a.seq,
            last: a.time.clone(),
        };
        Self { groups: vec![group], recent: vec![a] }
    }

    /// Adds `other`'s accesses to these (associative and commutative: the order RocksDB merges
    /// operands in does not matter).
    pub fn absorb(&mut self, other: Summary) {
        for g in other.groups {
            match self.groups.binary_search_by(|x| group_key(x).cmp(&group_key(&g))) {
                Ok(i) => {
                    let mine = &mut self.groups[i];
                    mine.count = mine.count.saturating_add(g.count);
                    if g.first_seq < mine.first_seq {
                        (mine.first_seq, mine.first) = (g.first_seq, g.first);
                    }
                    if g.last_seq > mine.last_seq {
                        (mine.last_seq, mine.last) = (g.last_seq, g.last);
                    }
                    mine.fields.extend(g.fields);
                    mine.fields.sort();
                    mine.fields.dedup();
                }
                Err(i) => self.groups.insert(i, g),
            }
        }
        self.recent.extend(other.recent);
        self.recent.sort_by_key(|a| a.seq);
        self.recent.dedup_by_key(|a| a.seq);
        let extra = self.recent.len().saturating_sub(RECENT);
        self.recent.drain(..extra);
    }

    /// Reads a stored value (or operand).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        // An operand starts with its `seq`, a summary with its `groups`: parsed straight into
        // the type its start names (the other tried only if that fails), not through serde's
        // `untagged`, which copies every string into a buffer first and then parses that.
        // The two never both parse (`deny_unknown_fields`): it accepts what the untagged enum did.
        let summary = || serde_json::from_slice::<Summary>(bytes).ok();
        let access = || serde_json::from_slice::<Access>(bytes).ok().map(Self::of);
        if bytes.starts_with(b"{\"seq\"") {
            access().or_else(summary)
        } else {
            summary().or_else(access)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a summary serialises")
    }
}

/// What groups are kept by, and in the order of.
fn group_key(g: &Group) -> (&str, &str, Option<&str>) {
    (&g.caller, &g.action, g.purpose.as_deref())
}

/// The key of `subject`'s summary in [`Space::Access`].
pub fn key(subject: &str) -> Vec<u8> {
    layout::access_summary(subject)
}

/// The merge operand `e` adds to its subject's summary, if it is an access: allowed, about a
/// subject, naming the fields it handed out, by one of [`ACCESSES`].
pub fn operand(e: &AuditEntry) -> Option<(&str, Vec<u8>)> {
    let subject = e.subject.as_deref()?;
    if e.decision != Decision::Allow || e.fields.is_empty() || !ACCESSES.contains(&e.action.as_ref()) {
        return None;
    }
    // Sized for the usual entry, so the write does not grow it.
    let mut op = Vec::with_capacity(160 + e.fields.iter().map(|f| f.len() + 3).sum::<usize>());
    // The bytes serde_json writes for an [`Access`] (a test holds them equal), written by hand
    // as the entry's own JSON is: 2,470 fewer instructions per create + fetch + cached fetch
    // (510,257 to 507,786, benches/instructions.sh; docs/performance.md).
    op.extend_from_slice(b"{\"seq\":");
    // Writing to a Vec cannot fail; no String for the number.
    let _ = write!(op, "{}", e.seq);
    for (name, value) in [("time", e.time.as_str()), ("caller", e.caller.as_str()), ("action", e.action.as_ref())] {
        op.extend_from_slice(b",\"");
        op.extend_from_slice(name.as_bytes());
        op.extend_from_slice(b"\":");
        push_json_str(&mut op, value);
    }
    op.extend_from_slice(b",\"purpose\":");
    match &e.purpose {
        Some(p) => push_json_str(&mut op, p),
        None => op.extend_from_slice(b"null"),
    }
    op.extend_from_slice(b",\"fields\":[");
    for (i, f) in e.fields.iter().enumerate() {
        if i > 0 {
            op.push(b',');
        }
        push_json_str(&mut op, f);
    }
    op.extend_from_slice(b"]}");
    Some((subject, op))
}

/// The merge of a stored value and operands (RocksDB's full and partial merges alike): the
/// [`MergeRule`](crate::store::MergeRule) the vault opens its store with. A piece that does
/// not decode (a damaged file) is left out and reported, never fails the merge: a failing
/// merge would fail the compaction holding it, and with it every write of the store.
pub fn merge(existing: Option<&[u8]>, operands: &mut dyn Iterator<Item = &[u8]>) -> Vec<u8> {
    let mut out = Summary::default();
    let mut absorb = |piece: &[u8]| match Summary::decode(piece) {
        Some(s) => out.absorb(s),
        None => tracing::error!("an access summary record does not decode; left out (the audit trail has every entry)"),
    };
    if let Some(piece) = existing {
        absorb(piece);
    }
    operands.for_each(&mut absorb);
    out.encode()
}

/// Reads `subject`'s summary (empty if none).
pub fn load(store: &Store, subject: &str) -> Result<Summary, StoreError> {
    match store.get(Space::Access, &key(subject))? {
        Some(v) => Summary::decode(&v).ok_or(StoreError::Corrupt { space: "access", what: "summary" }),
        None => Ok(Summary::default()),
    }
}

/// How far [`backfill`] has come: entries up to `done` of those up to `upto` are summarised
/// (the committer summarises every entry after `upto` itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    done: u64,
    upto: u64,
}

/// Called before the committer starts: a store whose entries predate the summaries records
/// which entries the [`backfill`] owes (those up to `head`); every later one the committer
/// summarises as it writes it.
pub(super) fn note_start(store: &Store, head: u64) -> Result<(), StoreError> {
    if store.get(Space::Jobs, layout::ACCESS_BACKFILL)?.is_none() {
        let mut b = Batch::default();
        b.put(Space::Jobs, layout::ACCESS_BACKFILL.to_vec(), serde_json::to_vec(&Progress { done: 0, upto: head }).expect("serialises"));
        store.write(&b)?;
    }
    Ok(())
}

/// Summarises the entries written before the summaries existed (once per store, resumable:
/// each chunk is written with its progress), leaving out subjects `erased` says are gone.
/// Returns how many entries it read.
pub fn backfill(store: &Store, erased: impl Fn(&str) -> bool) -> Result<u64, StoreError> {
    let corrupt = |what| StoreError::Corrupt { space: "audit", what };
    let Some(p) = store.get(Space::Jobs, layout::ACCESS_BACKFILL)? else { return Ok(0) };
    let mut p: Progress = serde_json::from_slice(&p).map_err(|_| corrupt("access summary progress"))?;
    let mut read = 0u64;
    while p.done < p.upto {
        let mut chunk: HashMap<String, Summary> = HashMap::new();
        let mut last = p.done;
        let mut bad = false;
        let (from, to) = (layout::audit_entry(p.done + 1), layout::audit_entry(p.upto.saturating_add(1)));
        store.scan(Space::Audit, &from, &to, |_, v| {
            let Ok(e) = serde_json::from_slice::<AuditEntry>(v) else {
                bad = true;
                return false;
            };
            last = e.seq;
            if let Some((s, op)) = operand(&e) {
                if let Some(add) = Summary::decode(&op) {
                    chunk.entry(s.to_owned()).or_default().absorb(add);
                }
            }
            read += 1;
            read % BACKFILL_CHUNK as u64 != 0
        })?;
        if bad {
            return Err(corrupt("entry"));
        }
        // A scan that found nothing more (entries missing at the end): nothing is owed past it.
        let done = if last == p.done { p.upto } else { last };
        let mut b = Batch::default();
        for (s, summary) in chunk {
            if !erased(&s) {
                b.merge(Space::Access, key(&s), summary.encode());
            }
        }
        p.done = done;
        b.put(Space::Jobs, layout::ACCESS_BACKFILL.to_vec(), serde_json::to_vec(&p).expect("serialises"));
        store.write(&b)?;
        tracing::info!(done = p.done, upto = p.upto, "access summaries: backfilled from the audit trail");
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::summary;
    use crate::audit::test_support::{draft, log_with};
    use crate::audit::{AuditLog, Draft};
    use crate::domain::SystemClock;

    fn access(seq: u64, caller: &str, purpose: &str, fields: &[&str]) -> Summary {
        Summary::of(Access {
            seq,
            time: format!("t{seq:03}"),
            caller: caller.into(),
            action: "subject.read".into(),
            purpose: Some(purpose.into()),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        })
    }

    #[test]
    fn merging_is_associative_and_commutative_and_stays_bounded() {
        let pieces: Vec<Summary> = (1..=100u64)
            .map(|i| access(i, ["a", "b", "c"][(i % 3) as usize], ["p", "q"][(i % 2) as usize], &[["x", "y", "z"][(i % 3) as usize]]))
            .collect();
        let mut forward = Summary::default();
        for p in pieces.iter().cloned() {
            forward.absorb(p);
        }
        // Backward, and in two halves merged separately (a partial merge), give the same.
        let mut backward = Summary::default();
        for p in pieces.iter().rev().cloned() {
            backward.absorb(p);
        }
        let (mut left, mut right) = (Summary::default(), Summary::default());
        for (i, p) in pieces.iter().cloned().enumerate() {
            if i % 2 == 0 {
                left.absorb(p)
            } else {
                right.absorb(p)
            }
        }
        right.absorb(left);
        assert_eq!(forward, backward);
        assert_eq!(forward, right);
        assert_eq!(forward.groups.len(), 6, "one group per caller and purpose");
        assert_eq!(forward.groups.iter().map(|g| g.count).sum::<u64>(), 100);
        let recent: Vec<u64> = forward.recent.iter().map(|a| a.seq).collect();
        assert_eq!(recent, (81..=100).collect::<Vec<_>>());
        let g = &forward.groups[0];
        assert_eq!((g.caller.as_str(), g.purpose.as_deref(), g.first.as_str()), ("a", Some("p"), "t006"));
        assert_eq!(g.last, "t096");
    }

    #[test]
    fn the_hand_written_operand_is_what_serde_json_writes_for_an_access() {
        let mut e = AuditEntry {
            seq: 12_345,
            time: "2026-12-04T00:00:00Z".into(),
            caller: String::new(),
            action: "subject.read".into(),
            subject: Some("s".into()),
            purpose: None,
            fields: vec![],
            decision: Decision::Allow,
            reason: "r".into(),
            request_id: "q".into(),
            client_request_id: None,
            prev_hash: String::new(),
            hash: String::new(),
        };
        for (purpose, fields) in [(Some("loan \"x\"\\\n"), vec!["identity.iin".to_string(), "a\u{1}é".into()]), (None, vec!["f".into()])] {
            e.purpose = purpose.map(str::to_owned);
            e.fields = fields;
            e.caller = "svc\t1".into();
            let (_, op) = operand(&e).unwrap();
            let a = Access {
                seq: e.seq,
                time: e.time.clone(),
                caller: e.caller.clone(),
                action: e.action.to_string(),
                purpose: e.purpose.clone(),
                fields: e.fields.clone(),
            };
            assert_eq!(String::from_utf8(op).unwrap(), serde_json::to_string(&a).unwrap());
        }
    }

    #[test]
    fn a_piece_that_does_not_decode_is_left_out_not_failed() {
        let one = access(1, "a", "p", &["x"]).encode();
        let merged = merge(Some(b"garbage".as_slice()), &mut [one.as_slice(), b"{\"seq\":2}".as_slice()].into_iter());
        let s = Summary::decode(&merged).unwrap();
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].count, 1);
    }

    /// Each engine folds the access summaries' merges with this rule, given at open (the
    /// engines' conformance suite checks the merge contract with a rule of its own).
    #[test]
    fn a_store_folds_access_summaries_with_this_rule() {
        let dir = tempfile::tempdir().unwrap();
        for store in [Store::in_memory(merge), Store::open(&dir.path().join("db"), merge).unwrap()] {
            let (a, b, c) =
                (access(1, "crm", "p", &["x"]).encode(), access(2, "crm", "p", &["y"]).encode(), access(3, "web", "q", &["x"]).encode());
            let key = key("s1");
            for (i, op) in [&a, &b, &c].into_iter().enumerate() {
                let mut batch = Batch::default();
                batch.merge(Space::Access, key.clone(), op.clone());
                if i == 2 {
                    batch.merge(Space::Access, key.clone(), a.clone());
                }
                store.write(&batch).unwrap();
            }
            let expected = merge(None, &mut [a.as_slice(), b.as_slice(), c.as_slice(), a.as_slice()].into_iter());
            assert_eq!(store.get(Space::Access, &key).unwrap(), Some(expected));
        }
    }

    #[test]
    fn refusals_never_push_accesses_out_of_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), merge).unwrap());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("s", "first read")).unwrap();
        // Refusals, other actions and reads naming no field are not accesses.
        let refusals: Vec<Draft> = (0..1000).map(|i| draft("s", &format!("no {i}")).deny()).collect();
        log.commit(refusals, Batch::default()).unwrap();
        log.record(draft("s", "put").named("subject.put")).unwrap();
        log.record(draft("s", "empty").fields(vec![])).unwrap();
        let other = Draft { caller: "svc-2".into(), ..draft("s", "second read") }.fields(vec!["identity.iin".into()]);
        log.record(other).unwrap();
        log.record(draft("s", "third read").fields(vec!["identity.email".into()])).unwrap();
        log.shutdown();
        let s = summary::load(&store, "s").unwrap();
        let groups: Vec<(&str, u64, &[String])> = s.groups.iter().map(|g| (g.caller.as_str(), g.count, g.fields.as_slice())).collect();
        assert_eq!(
            groups,
            [
                ("svc", 2, ["identity.email".to_string(), "identity.phone".to_string()].as_slice()),
                ("svc-2", 1, ["identity.iin".to_string()].as_slice())
            ]
        );
        assert_eq!(s.recent.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 1004, 1005]);
        assert_eq!(summary::load(&store, "t").unwrap(), summary::Summary::default());
    }

    #[test]
    fn a_store_from_before_the_summaries_is_backfilled_once() {
        let (_d, store) = log_with(30);
        let kept: Vec<summary::Summary> = ["s0", "s1", "s2"].iter().map(|s| summary::load(&store, s).unwrap()).collect();
        assert_eq!(kept.iter().map(|s| s.groups[0].count).sum::<u64>(), 30);
        // As an older vault left it: entries, no summaries, no progress.
        let mut b = Batch::default();
        for s in ["s0", "s1", "s2"] {
            b.delete(Space::Access, summary::key(s));
        }
        b.delete(Space::Jobs, b"audit/access_summary".to_vec());
        store.write(&b).unwrap();
        assert_eq!(summary::load(&store, "s1").unwrap(), summary::Summary::default());
        // Restarted: the committer owes nothing before its start, the backfill everything.
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("s1", "after")).unwrap();
        assert_eq!(summary::backfill(&store, |s| s == "s2").unwrap(), 30);
        assert_eq!(summary::backfill(&store, |_| false).unwrap(), 0, "once");
        log.shutdown();
        assert_eq!(summary::load(&store, "s0").unwrap(), kept[0]);
        let s1 = summary::load(&store, "s1").unwrap();
        assert_eq!(s1.groups[0].count, kept[1].groups[0].count + 1);
        assert_eq!(summary::load(&store, "s2").unwrap(), summary::Summary::default(), "an erased subject gets none");
    }
}
