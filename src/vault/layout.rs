//! The vault's key layouts, as far as the store's writes need reading back: which spaces hold
//! one subject's keys and where a key names its subject. The store knows none of this; the
//! subject cache reads a write's ops with it ([`touched`]).

use crate::store::{prefix_end, Op, Space};

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
    use crate::store::{subject_key, subject_prefix, Batch, Store, WriteObserver};

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
        let s = Store::open(dir.path()).unwrap();
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
