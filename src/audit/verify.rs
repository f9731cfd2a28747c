//! Recomputing the chain to find where, if anywhere, it was tampered with.

use serde::Serialize;

use super::{AuditEntry, Head, GENESIS};
use crate::layout;
use crate::store::{Space, Store, StoreError};

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub entries: u64,
    /// The hash of the last entry: record it outside the vault and pass it back as an anchor.
    pub head: String,
    pub first_broken: Option<Broken>,
}

/// The first entry where the chain breaks, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Recomputes the whole chain. Detects an edited entry (hash), a deleted or reordered one
/// (sequence gap or broken link), a deleted tail (head record) and, given an `anchor`
/// (seq, hash) recorded earlier outside the vault, a rewrite of the log up to that point.
pub fn verify(store: &Store, anchor: Option<(u64, &str)>) -> Result<Verification, StoreError> {
    let mut expected_seq = 1u64;
    let mut prev = GENESIS.to_string();
    let mut broken: Option<Broken> = None;
    let mut entries = 0u64;
    let mut anchor_seen = false;
    store.scan(Space::Audit, &[], layout::AUDIT_END, |k, v| {
        entries += 1;
        let key_seq = layout::parse_audit_entry(k).unwrap_or(0);
        let fail = |reason: String| Broken { seq: key_seq.max(expected_seq), reason };
        let entry: AuditEntry = match serde_json::from_slice(v) {
            Ok(e) => e,
            // An added field is covered by no hash: a place to smuggle text into the log.
            Err(e) if e.to_string().starts_with("unknown field") => {
                broken = Some(fail("entry holds a field the vault does not write".into()));
                return false;
            }
            Err(_) => {
                broken = Some(fail("entry does not parse".into()));
                return false;
            }
        };
        if key_seq != expected_seq {
            broken = Some(Broken { seq: expected_seq, reason: format!("entry {expected_seq} is missing (next stored is {key_seq})") });
            return false;
        }
        if entry.seq != key_seq {
            broken = Some(fail(format!("entry stored at {key_seq} claims sequence {}", entry.seq)));
            return false;
        }
        if entry.prev_hash != prev {
            broken = Some(fail("previous-hash link does not match the entry before it".into()));
            return false;
        }
        if entry.compute_hash() != entry.hash {
            broken = Some(fail("content does not match its hash (edited)".into()));
            return false;
        }
        if let Some((aseq, ahash)) = anchor {
            if aseq == entry.seq {
                anchor_seen = true;
                if entry.hash != ahash {
                    broken = Some(fail("hash differs from the recorded anchor (log rewritten)".into()));
                    return false;
                }
            }
        }
        prev = entry.hash;
        expected_seq += 1;
        true
    })?;
    if broken.is_none() {
        // The head record itself, never the last entry standing in for it: without it, a
        // deleted tail would pass.
        let stored = store.get(Space::Keyring, layout::AUDIT_HEAD)?;
        let stored_head = stored.as_deref().and_then(|v| serde_json::from_slice::<Head>(v).ok());
        let last = expected_seq - 1;
        match stored_head {
            None if stored.is_none() && last == 0 => {}
            None if stored.is_none() => broken = Some(Broken { seq: last, reason: "the chain head record is missing".into() }),
            Some(h) if h.seq == last && h.hash == prev => {}
            Some(h) if h.seq > last => {
                broken = Some(Broken {
                    seq: last + 1,
                    reason: format!("entries {}..={} are missing (chain head says {})", last + 1, h.seq, h.seq),
                })
            }
            _ => broken = Some(Broken { seq: last, reason: "the chain head record does not match the last entry".into() }),
        }
    }
    if broken.is_none() {
        if let Some((aseq, _)) = anchor {
            if !anchor_seen {
                broken = Some(Broken { seq: aseq, reason: "the anchored entry is no longer in the log".into() });
            }
        }
    }
    Ok(Verification { ok: broken.is_none(), entries, head: prev, first_broken: broken })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::test_support::{draft, log_with, tamper};
    use crate::audit::{AuditLog, Draft};
    use crate::domain::SystemClock;
    use crate::store::Batch;

    #[test]
    fn editing_any_entry_is_detected() {
        for seq in 1..=5 {
            let (_d, store) = log_with(5);
            tamper(&store, seq, |e| e.fields.push("identity.iin".into()));
            let v = verify(&store, None).unwrap();
            assert_eq!(v.first_broken.unwrap().seq, seq, "edit of {seq}");
        }
        // Rehashing the edited entry breaks the link of the next one instead.
        let (_d, store) = log_with(5);
        tamper(&store, 2, |e| {
            e.reason = "nothing to see".into();
            e.hash = e.compute_hash();
        });
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 3);
    }

    #[test]
    fn deleting_any_entry_is_detected() {
        for seq in 1..=5u64 {
            let (_d, store) = log_with(5);
            let mut b = Batch::default();
            b.delete(Space::Audit, layout::audit_entry(seq));
            store.write(&b).unwrap();
            let v = verify(&store, None).unwrap();
            assert!(!v.ok, "deleting {seq}");
            assert_eq!(v.first_broken.unwrap().seq, seq);
        }
    }

    #[test]
    fn reordering_entries_is_detected() {
        let (_d, store) = log_with(5);
        let a = store.get(Space::Audit, &layout::audit_entry(2)).unwrap().unwrap();
        let b = store.get(Space::Audit, &layout::audit_entry(3)).unwrap().unwrap();
        let mut batch = Batch::default();
        batch.put(Space::Audit, layout::audit_entry(2), b);
        batch.put(Space::Audit, layout::audit_entry(3), a);
        store.write(&batch).unwrap();
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 2);
    }

    #[test]
    fn anchor_catches_a_full_rewrite() {
        let (_d, store) = log_with(3);
        let v = verify(&store, None).unwrap();
        // Rewrite entry 2 and re-chain everything after it, head included: only an anchor sees it.
        let mut prev = store
            .get(Space::Audit, &layout::audit_entry(1))
            .map(|v| serde_json::from_slice::<AuditEntry>(&v.unwrap()).unwrap().hash)
            .unwrap();
        for seq in 2..=3u64 {
            tamper(&store, seq, |e| {
                e.reason = "rewritten".into();
                e.prev_hash = prev.clone();
                e.hash = e.compute_hash();
                prev = e.hash.clone();
            });
        }
        let mut b = Batch::default();
        b.put(Space::Keyring, layout::AUDIT_HEAD.to_vec(), serde_json::to_vec(&Head { seq: 3, hash: prev }).unwrap());
        store.write(&b).unwrap();
        assert!(verify(&store, None).unwrap().ok, "a consistent rewrite passes without an anchor");
        let r = verify(&store, Some((3, &v.head))).unwrap();
        assert_eq!(r.first_broken.unwrap().seq, 3);
    }

    #[test]
    fn a_missing_head_record_is_detected() {
        let (_d, store) = log_with(4);
        let mut b = Batch::default();
        b.delete(Space::Keyring, layout::AUDIT_HEAD.to_vec());
        store.write(&b).unwrap();
        let v = verify(&store, None).unwrap();
        assert!(!v.ok, "{v:?}");
        let broken = v.first_broken.unwrap();
        assert_eq!((broken.seq, broken.reason.as_str()), (4, "the chain head record is missing"));
        // With the tail deleted too, the head no longer gives it away: its absence does.
        let mut b = Batch::default();
        b.delete(Space::Audit, layout::audit_entry(4));
        store.write(&b).unwrap();
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 3);
        // An empty log has no head to miss.
        let dir = tempfile::tempdir().unwrap();
        assert!(verify(&Store::open(dir.path(), crate::audit::summary::merge).unwrap(), None).unwrap().ok);
    }

    #[test]
    fn a_field_the_vault_does_not_write_is_detected() {
        let (_d, store) = log_with(4);
        // Added to the stored object, covered by no hash.
        let mut v: serde_json::Value = serde_json::from_slice(&store.get(Space::Audit, &layout::audit_entry(3)).unwrap().unwrap()).unwrap();
        v["note"] = "nothing happened".into();
        let mut b = Batch::default();
        b.put(Space::Audit, layout::audit_entry(3), serde_json::to_vec(&v).unwrap());
        store.write(&b).unwrap();
        let r = verify(&store, None).unwrap();
        let broken = r.first_broken.unwrap();
        assert_eq!((broken.seq, broken.reason.as_str()), (3, "entry holds a field the vault does not write"));
    }

    #[test]
    fn an_entry_with_the_clients_request_id_verifies_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), crate::audit::summary::merge).unwrap());
        let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
        log.record(draft("a", "old form")).unwrap();
        log.record(Draft { client_request_id: Some("summary".into()), ..draft("a", "new form") }).unwrap();
        log.shutdown();
        assert!(verify(&store, None).unwrap().ok);
        let raw = store.get(Space::Audit, &layout::audit_entry(1)).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("client_request_id"), "left out when absent");
        tamper(&store, 2, |e| e.client_request_id = Some("other".into()));
        assert_eq!(verify(&store, None).unwrap().first_broken.unwrap().seq, 2, "the client's id is covered by the hash");
    }
}
