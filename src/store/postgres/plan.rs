//! A [`Batch`] as the statements one PostgreSQL transaction runs. Puts, deletes and range
//! deletes map one to one. Counter adds and merges have no SQL of their own: the transaction
//! first locks their keys (reading the values they hold), the batch is played here in order
//! over those values, and each such key is written once, with its final value — so a group
//! commit's hundred adds to one counter cost one row update, not a hundred.

use std::collections::{BTreeMap, BTreeSet};

use super::super::{decode_i64, Batch, MergeRule, Op, Space};

/// One statement of a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Put(Space, &'a [u8], Vec<u8>),
    /// A put whose value the batch already holds (no copy).
    PutRef(Space, &'a [u8], &'a [u8]),
    Delete(Space, &'a [u8]),
    DeleteRange(Space, &'a [u8], &'a [u8]),
}

/// The keys whose stored value the batch needs (its adds', merges' and expectations' keys), by
/// space, in key order: what the transaction locks first.
pub fn needed(batch: &Batch) -> BTreeMap<Space, BTreeSet<&[u8]>> {
    let mut out: BTreeMap<Space, BTreeSet<&[u8]>> = BTreeMap::new();
    for op in batch.ops() {
        if let Op::Add(s, k, _) | Op::Merge(s, k, _) = op {
            out.entry(*s).or_default().insert(k.as_slice());
        }
    }
    for e in batch.expects() {
        out.entry(e.space).or_default().insert(e.key.as_slice());
    }
    out
}

/// The statements of `batch`, given the locked values of its [`needed`] keys (`None`: absent).
pub fn steps<'a>(batch: &'a Batch, mut current: BTreeMap<(Space, &'a [u8]), Option<Vec<u8>>>, merge: MergeRule) -> Vec<Step<'a>> {
    let mut out = Vec::with_capacity(batch.len());
    // Keys changed by an add or merge and not yet written.
    let mut unwritten: BTreeSet<(Space, &[u8])> = BTreeSet::new();
    for op in batch.ops() {
        match op {
            Op::Put(s, k, v) => {
                if let Some(value) = current.get_mut(&(*s, k.as_slice())) {
                    *value = Some(v.clone());
                    unwritten.remove(&(*s, k.as_slice()));
                }
                out.push(Step::PutRef(*s, k, v));
            }
            Op::Delete(s, k) => {
                if let Some(value) = current.get_mut(&(*s, k.as_slice())) {
                    *value = None;
                    unwritten.remove(&(*s, k.as_slice()));
                }
                out.push(Step::Delete(*s, k));
            }
            Op::DeleteRange(s, from, to) => {
                for ((space, key), value) in current.iter_mut() {
                    if space == s && key >= &from.as_slice() && key < &to.as_slice() {
                        *value = None;
                        unwritten.remove(&(*space, *key));
                    }
                }
                out.push(Step::DeleteRange(*s, from, to));
            }
            Op::Add(s, k, d) => {
                let value = current.entry((*s, k.as_slice())).or_default();
                let n = value.as_deref().map(decode_i64).unwrap_or(0).wrapping_add(*d);
                *value = Some(n.to_le_bytes().to_vec());
                unwritten.insert((*s, k));
            }
            Op::Merge(s, k, operand) => {
                let value = current.entry((*s, k.as_slice())).or_default();
                *value = Some(merge(value.as_deref(), &mut std::iter::once(operand.as_slice())));
                unwritten.insert((*s, k));
            }
        }
    }
    for (s, k) in unwritten {
        let value = current.remove(&(s, k)).flatten().expect("an added or merged key has a value");
        out.push(Step::Put(s, k, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(existing: Option<&[u8]>, operands: &mut dyn Iterator<Item = &[u8]>) -> Vec<u8> {
        crate::store::conformance::join(existing, operands)
    }

    #[test]
    fn adds_and_merges_become_one_put_per_key_with_the_final_value() {
        let mut b = Batch::default();
        b.put(Space::Records, b"r".to_vec(), b"1".to_vec());
        for _ in 0..100 {
            b.add(Space::Keyring, b"n".to_vec(), 1);
        }
        b.merge(Space::Access, b"a".to_vec(), b"x".to_vec());
        b.merge(Space::Access, b"a".to_vec(), b"y".to_vec());
        let needed = needed(&b);
        assert_eq!(needed[&Space::Keyring].iter().copied().collect::<Vec<_>>(), [&b"n"[..]]);
        let current = [((Space::Keyring, &b"n"[..]), Some(5i64.to_le_bytes().to_vec())), ((Space::Access, &b"a"[..]), None)].into();
        let steps = steps(&b, current, join);
        assert_eq!(
            steps,
            [
                Step::PutRef(Space::Records, b"r", b"1"),
                Step::Put(Space::Keyring, b"n", 105i64.to_le_bytes().to_vec()),
                Step::Put(Space::Access, b"a", b"x+y".to_vec()),
            ]
        );
    }

    #[test]
    fn puts_and_deletes_between_adds_keep_their_order() {
        let mut b = Batch::default();
        b.add(Space::Keyring, b"c".to_vec(), 3);
        b.put(Space::Keyring, b"c".to_vec(), 10i64.to_le_bytes().to_vec());
        b.add(Space::Keyring, b"c".to_vec(), 1);
        b.add(Space::Keyring, b"d".to_vec(), 1);
        b.delete_range(Space::Keyring, b"d".to_vec(), b"e".to_vec());
        let current = [((Space::Keyring, &b"c"[..]), None), ((Space::Keyring, &b"d"[..]), Some(7i64.to_le_bytes().to_vec()))].into();
        let ten = 10i64.to_le_bytes();
        assert_eq!(
            steps(&b, current, join),
            [
                Step::PutRef(Space::Keyring, b"c", &ten),
                // `d` was added to, then deleted: only the delete is written.
                Step::DeleteRange(Space::Keyring, b"d", b"e"),
                Step::Put(Space::Keyring, b"c", 11i64.to_le_bytes().to_vec()),
            ]
        );
    }
}
