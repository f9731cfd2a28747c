//! Every space's key layout: how the vault and the audit build the keys of what they store,
//! and read them back. The store orders bytes and knows none of this (**`store` knows no
//! subject**); nothing outside this file builds or parses a key by hand.
//!
//! These bytes are the on-disk format (format 1): changing a builder changes the format, and
//! `tests/it/compat.rs` opens a directory written before. The scans rely on the orders the
//! tests below check: a subject's keys in a space keyed by subject form one range,
//! `subject\0` up to [`prefix_end`] of it (`s10`'s keys are not in `s1`'s range); audit entries,
//! a subject's index entries and disclosures, retention deadlines and idempotency records'
//! times sort in number order (times after 1970 are positive, and big-endian sorts those).
//!
//! The subject cache also reads writes with this file: [`touched`] says which subjects a
//! batch's ops wrote.

use qoima_keys::Generation;

use crate::store::{prefix_end, Op, Space};

// ---- The frame of the spaces keyed by subject (Records, Facts, Disclosures, AuditIndex, Access).

/// `subject\0`: every key of one subject in a space keyed by subject starts with this, so
/// it is also the prefix to scan or delete all of them.
pub fn subject_prefix(subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

/// `subject\0rest`: the frame the typed builders below are made of (tests build odd keys with
/// it; code uses the builders).
pub fn subject_key(subject: &str, rest: &str) -> Vec<u8> {
    let mut k = subject_prefix(subject);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// `(subject, rest)` of a `subject\0rest` key: the subject is what comes before the first NUL
/// (subject ids hold none).
fn split_subject(key: &[u8]) -> Option<(&str, &[u8])> {
    let zero = key.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&key[..zero]).ok()?, &key[zero + 1..]))
}

// ---- Subjects and Erasures: the key is the subject id.

/// A subject's entry in [`Space::Subjects`] (its wrapped DEK and versions).
pub fn subject(subject: &str) -> Vec<u8> {
    subject.as_bytes().to_vec()
}

/// A subject's erasure record in [`Space::Erasures`].
pub fn erasure(subject: &str) -> Vec<u8> {
    subject.as_bytes().to_vec()
}

/// The range of [`Space::Subjects`] (or [`Space::Erasures`]) holding exactly `subject`'s key:
/// `[subject, subject\0)`, what a purge of one subject's wrapped DEK compacts.
pub fn subject_only(subject: &str) -> (Vec<u8>, Vec<u8>) {
    (self::subject(subject), subject_prefix(subject))
}

/// The range of [`Space::Subjects`] after `cursor` (all of it for `None`), in id order: where a
/// pass over the subjects (the rewrap) goes on from. Ids are UTF-8, so none reaches `0xff`.
pub fn subjects_after(cursor: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let from = match cursor {
        // `cursor\0` is the smallest key greater than `cursor`.
        Some(c) => subject_prefix(c),
        None => Vec::new(),
    };
    (from, SUBJECTS_END.to_vec())
}

/// Past every key of [`Space::Subjects`] and [`Space::Erasures`].
pub const SUBJECTS_END: &[u8] = &[0xff];

// ---- Records: `subject\0field`.

/// A field's ciphertext in [`Space::Records`].
pub fn record(subject: &str, field: &str) -> Vec<u8> {
    subject_key(subject, field)
}

/// A [`Space::Records`] key, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordKey<'k> {
    pub subject: &'k str,
    pub field: &'k str,
}

pub fn parse_record(key: &[u8]) -> Option<RecordKey<'_>> {
    let (subject, field) = split_subject(key)?;
    Some(RecordKey { subject, field: std::str::from_utf8(field).ok()? })
}

// ---- Facts: `subject\0c\0contract` and `subject\0k\0purpose`.

/// A contract's record in [`Space::Facts`].
pub fn contract(subject: &str, contract: &str) -> Vec<u8> {
    subject_key(subject, &format!("c\0{contract}"))
}

/// A consent's record in [`Space::Facts`].
pub fn consent(subject: &str, purpose: &str) -> Vec<u8> {
    subject_key(subject, &format!("k\0{purpose}"))
}

/// A [`Space::Facts`] key, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKey<'k> {
    Contract { subject: &'k str, contract: &'k str },
    Consent { subject: &'k str, purpose: &'k str },
}

pub fn parse_fact(key: &[u8]) -> Option<FactKey<'_>> {
    let (subject, rest) = split_subject(key)?;
    match rest {
        [b'c', 0, contract @ ..] => Some(FactKey::Contract { subject, contract: std::str::from_utf8(contract).ok()? }),
        [b'k', 0, purpose @ ..] => Some(FactKey::Consent { subject, purpose: std::str::from_utf8(purpose).ok()? }),
        _ => None,
    }
}

// ---- Disclosures: `subject\0` + time (ns since 1970, i128 big-endian) + id.

/// A disclosure's record in [`Space::Disclosures`]; a subject's sort by time.
pub fn disclosure(subject: &str, at_nanos: i128, id: &str) -> Vec<u8> {
    let mut k = subject_prefix(subject);
    k.extend_from_slice(&at_nanos.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// A [`Space::Disclosures`] key, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DisclosureKey<'k> {
    pub subject: &'k str,
    pub at_nanos: i128,
    pub id: &'k str,
}

pub fn parse_disclosure(key: &[u8]) -> Option<DisclosureKey<'_>> {
    let (subject, rest) = split_subject(key)?;
    let (at, id) = rest.split_first_chunk::<16>()?;
    Some(DisclosureKey { subject, at_nanos: i128::from_be_bytes(*at), id: std::str::from_utf8(id).ok()? })
}

// ---- Expiry: deadline (s since 1970, i64 big-endian) + `\0subject\0field`.

/// A field's retention deadline in [`Space::Expiry`]; deadlines sort in time order.
pub fn expiry(at: i64, subject: &str, field: &str) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&record(subject, field));
    k
}

/// A [`Space::Expiry`] key, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryKey<'k> {
    pub at: i64,
    pub subject: &'k str,
    pub field: &'k str,
}

pub fn parse_expiry(key: &[u8]) -> Option<ExpiryKey<'_>> {
    let (at, rest) = key.split_first_chunk::<8>()?;
    let RecordKey { subject, field } = parse_record(rest.strip_prefix(&[0])?)?;
    Some(ExpiryKey { at: i64::from_be_bytes(*at), subject, field })
}

/// The range of [`Space::Expiry`] holding every deadline up to `now` (included).
pub fn expiry_due_by(now: i64) -> (Vec<u8>, Vec<u8>) {
    (Vec::new(), (now + 1).to_be_bytes().to_vec())
}

// ---- Audit: entries by `seq` (u64 big-endian); the index `subject\0seq`; the chain head.

/// An audit entry's key in [`Space::Audit`]; entries sort in sequence order.
pub fn audit_entry(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// The sequence number of a [`Space::Audit`] key.
pub fn parse_audit_entry(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// Past every key of [`Space::Audit`].
pub const AUDIT_END: &[u8] = &[0xff; 9];

/// An entry's index entry under its subject, in [`Space::AuditIndex`].
pub fn audit_index(subject: &str, seq: u64) -> Vec<u8> {
    let mut k = subject_prefix(subject);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number an [`Space::AuditIndex`] key indexes (its last eight bytes).
pub fn parse_audit_index(key: &[u8]) -> Option<u64> {
    key.last_chunk::<8>().map(|b| u64::from_be_bytes(*b))
}

/// The range of [`Space::AuditIndex`] holding `subject`'s entries from `seq` on.
pub fn audit_index_from(subject: &str, seq: u64) -> (Vec<u8>, Vec<u8>) {
    (audit_index(subject, seq), prefix_end(&subject_prefix(subject)))
}

/// The audit chain's head record, in [`Space::Keyring`].
pub const AUDIT_HEAD: &[u8] = b"audit/head";

/// A subject's access summary in [`Space::Access`].
pub fn access_summary(subject: &str) -> Vec<u8> {
    subject_prefix(subject)
}

/// The access summaries' backfill progress, in [`Space::Jobs`].
pub const ACCESS_BACKFILL: &[u8] = b"audit/access_summary";

// ---- Keyring: KEK generations (`kek/` + generation, u32 big-endian, + `/meta` or
// `/wrapped`) and counters by generation.

/// Every generation's keys in [`Space::Keyring`] start with this.
pub const KEKS: &[u8] = b"kek/";

/// Which of a generation's records a [`Space::Keyring`] key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekPart {
    /// Its record (state and times, no key).
    Meta,
    /// Its key, wrapped by the root key.
    Wrapped,
    /// Its blind-index key, wrapped by the root key.
    IndexKey,
}

impl KekPart {
    fn suffix(self) -> &'static [u8] {
        match self {
            KekPart::Meta => b"/meta",
            KekPart::Wrapped => b"/wrapped",
            KekPart::IndexKey => b"/index",
        }
    }
}

/// A generation's record in [`Space::Keyring`].
pub fn kek(generation: Generation, part: KekPart) -> Vec<u8> {
    let mut k = KEKS.to_vec();
    k.extend_from_slice(&generation.0.to_be_bytes());
    k.extend_from_slice(part.suffix());
    k
}

pub fn parse_kek(key: &[u8]) -> Option<(Generation, KekPart)> {
    let (g, suffix) = key.strip_prefix(KEKS)?.split_first_chunk::<4>()?;
    let part = [KekPart::Meta, KekPart::Wrapped, KekPart::IndexKey].into_iter().find(|p| p.suffix() == suffix)?;
    Some((Generation(u32::from_be_bytes(*g)), part))
}

/// The counter of DEKs a generation wraps now, in [`Space::Keyring`].
pub fn dek_count(generation: Generation) -> Vec<u8> {
    let mut k = b"count/deks/".to_vec();
    k.extend_from_slice(&generation.0.to_be_bytes());
    k
}

/// The counter of wraps ever made with a generation, in [`Space::Keyring`].
pub fn wrap_count(generation: Generation) -> Vec<u8> {
    let mut k = b"count/wraps/".to_vec();
    k.extend_from_slice(&generation.0.to_be_bytes());
    k
}

// ---- Jobs: one key per background job.

/// The rewrap's job record, in [`Space::Jobs`].
pub const REWRAP_JOB: &[u8] = b"rewrap";

/// The blind-index build's job record, in [`Space::Jobs`].
pub const INDEX_JOB: &[u8] = b"index";

// ---- Index: `v` + generation (u32 big-endian) + field + `\0` + the index's first
// [`BUCKET_LEN`] bytes + subject, no value, what a lookup scans for candidates; and `s` +
// subject + `\0`, the subject's own record of its entries with their whole indexes, what a
// lookup checks a candidate against and its writes, the rewrap and its erasure find them by.
// No key holds a whole index: an engine keeps keys (not values) of deleted entries in metadata
// a compaction does not rewrite (RocksDB's MANIFEST names each file's first and last key), so
// a key holds only the bucket, and an erasure's purge compacts away the one record that holds
// whole indexes (docs/key-management.md).

/// Length of a blind index.
pub const BLIND_LEN: usize = 32;

/// Bytes of an index a key holds: 65,536 buckets per field and generation.
pub const BUCKET_LEN: usize = 2;

/// Every entry whose index starts like `blind`, of `field` under `generation`, starts with this
/// (then the subject): a lookup's candidates, each checked against its own record.
pub fn index_bucket(generation: Generation, field: &str, blind: &[u8; BLIND_LEN]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 4 + field.len() + 1 + BUCKET_LEN + 24);
    k.push(b'v');
    k.extend_from_slice(&generation.0.to_be_bytes());
    k.extend_from_slice(field.as_bytes());
    k.push(0);
    k.extend_from_slice(&blind[..BUCKET_LEN]);
    k
}

/// A subject's entry for `field`'s value `blind` under `generation`, in [`Space::Index`] (no
/// value: the whole index is in the subject's own record, [`subject_index`]).
pub fn index_entry(generation: Generation, field: &str, blind: &[u8; BLIND_LEN], subject: &str) -> Vec<u8> {
    let mut k = index_bucket(generation, field, blind);
    k.extend_from_slice(subject.as_bytes());
    k
}

/// The subject of an [`index_entry`] key found under the prefix [`index_bucket`] made.
pub fn index_entry_subject<'k>(key: &'k [u8], prefix: &[u8]) -> Option<&'k str> {
    std::str::from_utf8(key.strip_prefix(prefix)?).ok().filter(|s| !s.is_empty())
}

/// Every entry of a generation (what destroying it deletes): `[v + g, v + g + 1)`.
pub fn index_generation(generation: Generation) -> (Vec<u8>, Vec<u8>) {
    let mut from = vec![b'v'];
    from.extend_from_slice(&generation.0.to_be_bytes());
    let mut to = vec![b'v'];
    to.extend_from_slice(&(u64::from(generation.0) + 1).to_be_bytes()[4..]);
    if generation.0 == u32::MAX {
        to = vec![b'w'];
    }
    (from, to)
}

/// `subject`'s own record of its entries (`s` + subject + `\0`; the value lists each entry's
/// generation, field and index: src/vault/index.rs).
pub fn subject_index(subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 2);
    k.push(b's');
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k
}

// ---- Idempotency: `k` + slot (the record), `s` + subject + `\0` + slot (by subject, for
// erasure), `t` + creation time (s, i64 big-endian) + slot (by time, for the sweep).

/// A record's slot: a digest of the caller and its key.
pub type Slot = [u8; 32];

/// An idempotency record, in [`Space::Idempotency`].
pub fn idempotency_record(slot: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + slot.len());
    k.push(b'k');
    k.extend_from_slice(slot);
    k
}

/// Every index entry of a subject's records ("" for none) starts with this.
pub fn idempotency_scope_prefix(scope: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 2);
    k.push(b's');
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k
}

/// A record's entry in its subject's index.
pub fn idempotency_scope(scope: &str, slot: &Slot) -> Vec<u8> {
    let mut k = idempotency_scope_prefix(scope);
    k.extend_from_slice(slot);
    k
}

/// `(scope, slot)` of an index entry by subject. The slot is whatever follows the scope.
pub fn parse_idempotency_scope(key: &[u8]) -> Option<(&str, &[u8])> {
    split_subject(key.strip_prefix(b"s")?)
}

/// A record's entry in the time index; sorts by creation time.
pub fn idempotency_time(created_at: i64, slot: &Slot) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(b't');
    k.extend_from_slice(&created_at.to_be_bytes());
    k.extend_from_slice(slot);
    k
}

/// `(creation time, slot)` of a time-index entry.
pub fn parse_idempotency_time(key: &[u8]) -> Option<(i64, Slot)> {
    let (at, slot) = key.strip_prefix(b"t")?.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*at), slot.get(..32)?.try_into().ok()?))
}

/// The range of the time index holding the records created before `before`.
pub fn idempotency_created_before(before: i64) -> (Vec<u8>, Vec<u8>) {
    let mut end = vec![b't'];
    end.extend_from_slice(&before.to_be_bytes());
    (b"t".to_vec(), end)
}

// ---- Reading a write back: which subjects it touched (the subject cache's coherence).

/// Keys of these spaces start with `subject\0`.
fn keyed_by_subject(space: Space) -> bool {
    matches!(space, Space::Records | Space::Facts | Space::Disclosures | Space::AuditIndex | Space::Access)
}

/// Whether every key of this space belongs to one subject ([`subject_of`]).
fn holds_subjects(space: Space) -> bool {
    matches!(space, Space::Subjects | Space::Erasures) || keyed_by_subject(space)
}

/// The subject a key of `space` belongs to: the whole key of the subjects' and erasures'
/// spaces, the part before the first NUL in the spaces keyed by subject, and nothing (empty)
/// in the others.
fn subject_of(space: Space, key: &[u8]) -> &[u8] {
    match space {
        Space::Subjects | Space::Erasures => key,
        s if keyed_by_subject(s) => match key.iter().position(|b| *b == 0) {
            Some(i) => &key[..i],
            None => key,
        },
        _ => &[],
    }
}

/// What a write touched, as [`touched`] reports it.
pub trait Touched {
    /// The write changed (or may have changed: it failed part-way) keys of `subject` in `space`.
    fn subject_written(&self, space: Space, subject: &[u8]);
    /// The write deleted a range that is not one subject's: anything may have changed.
    fn everything_written(&self);
}

/// Tells `o` the subject of each op in a space keyed by subject, once per run of ops on the
/// same subject and space.
pub fn touched(ops: &[Op], o: &dyn Touched) {
    let mut last: Option<(Space, &[u8])> = None;
    for op in ops {
        let (space, subject) = match op {
            Op::Put(s, k, _) | Op::Delete(s, k) | Op::Add(s, k, _) | Op::Merge(s, k, _) => (*s, subject_of(*s, k)),
            Op::DeleteRange(s, from, to) => {
                let subject = subject_of(*s, from);
                // One subject's range is `subject\0` up to `subject\x01` (`Batch::delete_prefix`).
                let one_subject = from.len() == subject.len() + 1 && from.last() == Some(&0) && *to == prefix_end(from);
                if holds_subjects(*s) && !one_subject {
                    o.everything_written();
                    last = None;
                    continue;
                }
                (*s, subject)
            }
        };
        if holds_subjects(space) && last != Some((space, subject)) {
            o.subject_written(space, subject);
            last = Some((space, subject));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::{Batch, Store, WriteObserver};

    /// `keys` are in strictly ascending byte order.
    fn ascending(keys: &[Vec<u8>]) -> bool {
        keys.windows(2).all(|w| w[0] < w[1])
    }

    /// `key` is in `[from, to)`.
    fn within(key: &[u8], (from, to): &(Vec<u8>, Vec<u8>)) -> bool {
        from.as_slice() <= key && key < to.as_slice()
    }

    /// A subject's range in a space keyed by subject, as erasure deletes and reads scan it.
    fn range_of(subject: &str) -> (Vec<u8>, Vec<u8>) {
        (subject_prefix(subject), prefix_end(&subject_prefix(subject)))
    }

    #[test]
    fn index_keys_read_back_and_keep_values_and_subjects_apart() {
        let b = [7u8; BLIND_LEN];
        let prefix = index_bucket(Generation(2), "identity.iin", &b);
        let key = index_entry(Generation(2), "identity.iin", &b, "s1");
        assert_eq!(index_entry_subject(&key, &prefix), Some("s1"));
        assert_eq!(index_entry_subject(&prefix, &prefix), None);
        assert!(!key.windows(BLIND_LEN).any(|w| w == b), "no key holds a whole index");
        // An index with the same first bytes shares the bucket; another bucket, field or
        // generation is another prefix.
        let mut same_bucket = [9u8; BLIND_LEN];
        same_bucket[..BUCKET_LEN].copy_from_slice(&b[..BUCKET_LEN]);
        assert!(index_entry(Generation(2), "identity.iin", &same_bucket, "s2").starts_with(&prefix));
        assert!(!index_entry(Generation(2), "identity.iin", &[8u8; BLIND_LEN], "s1").starts_with(&prefix));
        assert!(!index_entry(Generation(2), "identity.iinx", &b, "s1").starts_with(&prefix));
        assert!(!index_entry(Generation(3), "identity.iin", &b, "s1").starts_with(&prefix));
        let gen2 = index_generation(Generation(2));
        assert!(within(&key, &gen2));
        assert!(!within(&index_entry(Generation(3), "a.b", &b, "s"), &gen2));
        assert!(!within(&index_entry(Generation(1), "a.b", &b, "s"), &gen2));
        let own = subject_index("s1");
        assert_ne!(subject_index("s10"), own);
        assert!(!subject_index("s10").starts_with(&own), "s10 is not s1");
        assert!(!key.starts_with(b"s") && !own.starts_with(b"v"), "the two halves keep apart");
        assert_eq!(parse_kek(&kek(Generation(2), KekPart::IndexKey)), Some((Generation(2), KekPart::IndexKey)));
    }

    #[test]
    fn the_subject_frame_keeps_each_subject_in_its_own_range() {
        assert_eq!(subject_prefix("s1"), b"s1\0");
        assert_eq!(subject_key("s1", "a.x"), b"s1\0a.x");
        assert_eq!(prefix_end(b"s1\0"), b"s1\x01");
        assert!(subject_key("s1", "zzz") < prefix_end(&subject_prefix("s1")));
        assert!(subject_prefix("s10") >= prefix_end(&subject_prefix("s1")));
        for other in ["s", "s10", "s2", "t1", "s1x"] {
            assert!(!within(&record(other, "a.x"), &range_of("s1")), "{other} in s1's range");
        }
    }

    #[test]
    fn subjects_and_erasures_are_keyed_by_the_id() {
        assert_eq!(subject("s1"), b"s1");
        assert_eq!(erasure("s1"), b"s1");
        // Exactly the subject's key: not `s10`, not `s`.
        let only = subject_only("s1");
        assert!(within(&subject("s1"), &only));
        assert!(!within(&subject("s10"), &only) && !within(&subject("s"), &only) && !within(b"s1\0x", &only));
        // After a cursor: every later id, not the cursor itself, all before the end.
        let (from, to) = subjects_after(Some("s1"));
        assert!(subject("s1") < from && from <= subject("s10") && from < subject("s2"));
        assert!(subject("\u{10ffff}") < to, "no UTF-8 id reaches the end");
        assert_eq!(subjects_after(None).0, b"");
    }

    #[test]
    fn records_round_trip_and_sort_by_field_inside_their_subject() {
        let k = record("s1", "identity.full_name");
        assert_eq!(k, b"s1\0identity.full_name", "format 1");
        assert_eq!(parse_record(&k), Some(RecordKey { subject: "s1", field: "identity.full_name" }));
        assert!(within(&k, &range_of("s1")));
        assert!(ascending(&[record("s1", "a.x"), record("s1", "a.y"), record("s1", "b.a")]));
        assert_eq!(parse_record(b"no-nul"), None);
    }

    #[test]
    fn facts_round_trip_and_keep_contracts_apart_from_consents() {
        let c = contract("s1", "L-1");
        let k = consent("s1", "loan_issuance");
        assert_eq!((c.as_slice(), k.as_slice()), (&b"s1\0c\0L-1"[..], &b"s1\0k\0loan_issuance"[..]), "format 1");
        assert_eq!(parse_fact(&c), Some(FactKey::Contract { subject: "s1", contract: "L-1" }));
        assert_eq!(parse_fact(&k), Some(FactKey::Consent { subject: "s1", purpose: "loan_issuance" }));
        assert_eq!(parse_fact(&record("s1", "x")), None);
        assert!(within(&c, &range_of("s1")) && within(&k, &range_of("s1")));
        // Every contract of a subject sorts before every consent of it.
        assert!(ascending(&[contract("s1", "A"), contract("s1", "zzz"), consent("s1", "a"), consent("s1", "z")]));
    }

    #[test]
    fn disclosures_round_trip_and_sort_by_time_inside_their_subject() {
        let k = disclosure("s1", 1_700_000_000_123_456_789, "dis_ab");
        let mut expected = b"s1\0".to_vec();
        expected.extend_from_slice(&1_700_000_000_123_456_789i128.to_be_bytes());
        expected.extend_from_slice(b"dis_ab");
        assert_eq!(k, expected, "format 1");
        assert_eq!(parse_disclosure(&k), Some(DisclosureKey { subject: "s1", at_nanos: 1_700_000_000_123_456_789, id: "dis_ab" }));
        assert!(within(&k, &range_of("s1")));
        assert!(ascending(&[disclosure("s1", 0, "z"), disclosure("s1", 1, "a"), disclosure("s1", 1 << 70, "a")]));
    }

    #[test]
    fn expiry_round_trips_and_the_due_range_holds_exactly_the_passed_deadlines() {
        let k = expiry(1_700_000_000, "s1", "tech.ip");
        let mut expected = 1_700_000_000i64.to_be_bytes().to_vec();
        expected.extend_from_slice(b"\0s1\0tech.ip");
        assert_eq!(k, expected, "format 1");
        assert_eq!(parse_expiry(&k), Some(ExpiryKey { at: 1_700_000_000, subject: "s1", field: "tech.ip" }));
        assert_eq!(parse_expiry(&k[..8]), None);
        assert!(ascending(&[expiry(5, "z", "z"), expiry(6, "a", "a"), expiry(256, "a", "a"), expiry(1 << 40, "a", "a")]));
        let due = expiry_due_by(100);
        for at in [0, 1, 99, 100] {
            assert!(within(&expiry(at, "s", "f"), &due), "{at} is due by 100");
        }
        for at in [101, 102, 1 << 40] {
            assert!(!within(&expiry(at, "s", "f"), &due), "{at} is not due by 100");
        }
    }

    #[test]
    fn audit_keys_round_trip_and_sort_by_sequence() {
        assert_eq!(audit_entry(7), 7u64.to_be_bytes(), "format 1");
        assert_eq!(parse_audit_entry(&audit_entry(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_audit_entry(b"short"), None);
        let entries: Vec<Vec<u8>> = [1u64, 2, 255, 256, 1 << 40, u64::MAX].into_iter().map(audit_entry).collect();
        assert!(ascending(&entries) && entries.iter().all(|k| k.as_slice() < AUDIT_END));

        let k = audit_index("s1", 300);
        assert_eq!(k, [b"s1\0".as_slice(), &300u64.to_be_bytes()].concat(), "format 1");
        assert_eq!(parse_audit_index(&k), Some(300));
        assert!(ascending(&[audit_index("s1", 1), audit_index("s1", 256), audit_index("s1", u64::MAX)]));
        // From a sequence number on, only this subject's.
        let from = audit_index_from("s1", 256);
        assert!(within(&audit_index("s1", 256), &from) && within(&audit_index("s1", u64::MAX), &from));
        assert!(!within(&audit_index("s1", 255), &from) && !within(&audit_index("s10", 300), &from));

        assert_eq!(access_summary("s1"), b"s1\0", "format 1");
        assert!(within(&access_summary("s1"), &range_of("s1")));
        assert_eq!(AUDIT_HEAD, b"audit/head");
    }

    #[test]
    fn keyring_keys_round_trip_and_only_generations_are_under_the_kek_prefix() {
        let g = Generation(258);
        assert_eq!(kek(g, KekPart::Meta), b"kek/\0\0\x01\x02/meta", "format 1");
        assert_eq!(kek(g, KekPart::Wrapped), b"kek/\0\0\x01\x02/wrapped");
        assert_eq!(dek_count(g), b"count/deks/\0\0\x01\x02");
        assert_eq!(wrap_count(g), b"count/wraps/\0\0\x01\x02");
        for part in [KekPart::Meta, KekPart::Wrapped] {
            assert_eq!(parse_kek(&kek(g, part)), Some((g, part)));
            assert!(kek(g, part).starts_with(KEKS));
        }
        // A generation number whose bytes look like the separator still parses.
        assert_eq!(parse_kek(&kek(Generation(u32::from_be_bytes(*b"//me")), KekPart::Meta)).unwrap().1, KekPart::Meta);
        for other in [dek_count(g), wrap_count(g), AUDIT_HEAD.to_vec(), b"kek/\0\0\x01\x02/other".to_vec()] {
            assert!(!other.starts_with(KEKS) || parse_kek(&other).is_none());
        }
        assert!(ascending(&[kek(Generation(1), KekPart::Meta), kek(Generation(2), KekPart::Meta), kek(Generation(256), KekPart::Meta)]));
    }

    #[test]
    fn idempotency_keys_round_trip_and_the_sweep_range_holds_exactly_the_old_records() {
        let slot: Slot = [0; 32]; // NULs in the slot: the scope still parses
        assert_eq!(idempotency_record(&slot), [b"k".as_slice(), &slot].concat(), "format 1");
        let s = idempotency_scope("s1", &slot);
        assert_eq!(s, [b"ss1\0".as_slice(), &slot].concat());
        assert_eq!(parse_idempotency_scope(&s), Some(("s1", slot.as_slice())));
        assert!(s.starts_with(&idempotency_scope_prefix("s1")) && !s.starts_with(&idempotency_scope_prefix("s")));
        assert_eq!(parse_idempotency_scope(&idempotency_scope("", &slot)), Some(("", slot.as_slice())));
        let t = idempotency_time(1_700_000_000, &slot);
        assert_eq!(t, [b"t".as_slice(), &1_700_000_000i64.to_be_bytes(), &slot].concat());
        assert_eq!(parse_idempotency_time(&t), Some((1_700_000_000, slot)));
        assert_eq!(parse_idempotency_time(&t[..20]), None);
        let old = idempotency_created_before(1000);
        assert!(within(&idempotency_time(0, &[0xff; 32]), &old) && within(&idempotency_time(999, &[0xff; 32]), &old));
        assert!(!within(&idempotency_time(1000, &slot), &old) && !within(&idempotency_time(1 << 40, &slot), &old));
        // The three families do not mix: records < by subject < by time.
        assert!(ascending(&[idempotency_record(&[0xff; 32]), idempotency_scope("\u{10ffff}", &slot), idempotency_time(0, &slot)]));
        assert!(!within(&idempotency_scope("z", &slot), &old) && !within(&idempotency_record(&[0xff; 32]), &old));
    }

    #[derive(Default)]
    struct Told(Mutex<Vec<String>>);

    impl Touched for Told {
        fn subject_written(&self, space: Space, subject: &[u8]) {
            self.0.lock().unwrap().push(format!("{}:{}", space.name(), String::from_utf8_lossy(subject)));
        }
        fn everything_written(&self) {
            self.0.lock().unwrap().push("*".into());
        }
    }

    impl WriteObserver for Told {
        fn written(&self, ops: &[Op]) {
            touched(ops, self);
        }
    }

    #[test]
    fn a_write_tells_the_observer_each_subject_it_touched_once_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), crate::audit::summary::merge).unwrap();
        let told = Arc::new(Told::default());
        assert!(s.observe_writes(told.clone()));
        assert!(!s.observe_writes(told.clone()), "one observer per store");
        let mut b = Batch::default();
        b.put(Space::Subjects, b"s1".to_vec(), b"meta");
        b.put(Space::Records, subject_key("s1", "a.x"), b"v");
        b.put(Space::Records, subject_key("s1", "a.y"), b"v"); // same run: told once
        b.delete_prefix(Space::Facts, &subject_prefix("s2"));
        b.put(Space::Audit, 7u64.to_be_bytes().to_vec(), b"entry"); // no subject: not told
        b.put(Space::AuditIndex, subject_key("s3", "7"), b"");
        b.add(Space::Keyring, b"dek_count".to_vec(), 1);
        b.delete_prefix(Space::Keyring, b"e"); // not a subject space: no wildcard either
        s.write(&b).unwrap();
        assert_eq!(*told.0.lock().unwrap(), ["subjects:s1", "records:s1", "facts:s2", "audit_index:s3"]);
        // What the observer is told about is already readable.
        assert_eq!(s.get(Space::Records, &subject_key("s1", "a.x")).unwrap().as_deref(), Some(&b"v"[..]));

        // A range over more than one subject: anything may have changed.
        told.0.lock().unwrap().clear();
        let mut wide = Batch::default();
        wide.delete_prefix(Space::Records, b"s");
        s.write(&wide).unwrap();
        assert_eq!(*told.0.lock().unwrap(), ["*"]);
        assert_eq!(s.get(Space::Records, &subject_key("s1", "a.x")).unwrap(), None);
    }
}
