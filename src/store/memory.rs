//! An engine in memory: one `BTreeMap` per space behind one lock, for unit tests. Nothing is
//! durable (a "durable" write is durable for the life of the value); every read is answered
//! from memory, so [`Tier::Memory`] never says "not in memory". A purge has nothing to force
//! out (a delete drops the value); a backup is a copy, written to a file in the backup's
//! folder so that [`Engine::open_backup`] can read it back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use super::engine::{Engine, EngineStats, PurgeRange, SpaceStats, WriteState};
use super::{decode_i64, Batch, KeyValue, MergeRule, Op, Space, StoreError, Tier};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The file a backup of a memory engine is written to, inside the backup's folder.
const SNAPSHOT: &str = "memory-engine.snapshot";

/// The in-memory engine.
#[derive(Debug)]
pub struct MemoryEngine {
    /// One map per space, in [`Space::ALL`]'s order; one lock, so a batch is applied, and a
    /// scan sees the spaces, as one step.
    spaces: RwLock<[Map; Space::ALL.len()]>,
    purge_lock: Mutex<()>,
    merge: MergeRule,
}

fn index(space: Space) -> usize {
    Space::ALL.iter().position(|s| *s == space).expect("every space is in Space::ALL")
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("memory engine {what}: {e}"))
}

impl MemoryEngine {
    /// An empty engine, folding merges with `merge`.
    pub fn new(merge: MergeRule) -> Self {
        Self { spaces: RwLock::default(), purge_lock: Mutex::default(), merge }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, [Map; Space::ALL.len()]> {
        self.spaces.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a snapshot [`Engine::backup`] wrote into `dir`.
    pub fn open_snapshot(dir: &Path, merge: MergeRule) -> Result<Self, StoreError> {
        let mut bytes = Vec::new();
        std::fs::File::open(dir.join(SNAPSHOT)).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io("backup read", e))?;
        let corrupt = || StoreError::Corrupt { space: "memory snapshot", what: "length" };
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], StoreError> {
            let piece = bytes.get(at..at + n).ok_or_else(corrupt)?;
            at += n;
            Ok(piece)
        };
        let engine = Self::new(merge);
        {
            let mut spaces = engine.spaces.write().unwrap_or_else(|p| p.into_inner());
            for map in spaces.iter_mut() {
                let count = u64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt())?);
                for _ in 0..count {
                    let klen = u64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt())?) as usize;
                    let k = take(klen)?.to_vec();
                    let vlen = u64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt())?) as usize;
                    let v = take(vlen)?.to_vec();
                    map.insert(k, v);
                }
            }
        }
        Ok(engine)
    }
}

impl Engine for MemoryEngine {
    fn get(&self, _tier: Tier, space: Space, key: &[u8], found: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError> {
        Ok(self.read()[index(space)].get(key).map(|v| found(v)).is_some())
    }

    fn get_many(&self, _tier: Tier, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let spaces = self.read();
        Ok(keys.iter().map(|k| spaces[index(space)].get(k).cloned()).collect())
    }

    fn scan(
        &self,
        _tier: Tier,
        space: Space,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let spaces = self.read();
        for (k, v) in spaces[index(space)].range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to))) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.read()[index(space)].last_key_value().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut spaces = self.spaces.write().unwrap_or_else(|p| p.into_inner());
        batch.check_expects(|e| Ok(spaces[index(e.space)].get(&e.key).cloned()))?;
        for op in batch.ops() {
            match op {
                Op::Put(s, k, v) => {
                    spaces[index(*s)].insert(k.clone(), v.clone());
                }
                Op::Delete(s, k) => {
                    spaces[index(*s)].remove(k);
                }
                Op::DeleteRange(s, from, to) => {
                    let map = &mut spaces[index(*s)];
                    let doomed: Vec<Vec<u8>> = if from < to {
                        map.range::<[u8], _>((std::ops::Bound::Included(from.as_slice()), std::ops::Bound::Excluded(to.as_slice())))
                            .map(|(k, _)| k.clone())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    for k in doomed {
                        map.remove(&k);
                    }
                }
                Op::Add(s, k, d) => {
                    let map = &mut spaces[index(*s)];
                    let n = map.get(k).map(|v| decode_i64(v)).unwrap_or(0).wrapping_add(*d);
                    map.insert(k.clone(), n.to_le_bytes().to_vec());
                }
                Op::Merge(s, k, operand) => {
                    let map = &mut spaces[index(*s)];
                    let merged = (self.merge)(map.get(k).map(Vec::as_slice), &mut std::iter::once(operand.as_slice()));
                    map.insert(k.clone(), merged);
                }
            }
        }
        Ok(())
    }

    fn purge(&self, _ranges: &[PurgeRange<'_>]) -> Result<(), StoreError> {
        // A delete already dropped the values; purges still run one at a time, as promised.
        let _one_at_a_time = self.purge_lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(())
    }

    fn backup(&self, dir: &Path) -> Result<(), StoreError> {
        let mut out = Vec::new();
        for map in self.read().iter() {
            out.extend_from_slice(&(map.len() as u64).to_le_bytes());
            for (k, v) in map {
                out.extend_from_slice(&(k.len() as u64).to_le_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
        std::fs::create_dir(dir).map_err(|e| io("backup folder", e))?;
        std::fs::File::create_new(dir.join(SNAPSHOT)).and_then(|mut f| f.write_all(&out)).map_err(|e| io("backup write", e))
    }

    fn open_backup(&self, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
        Ok(Arc::new(Self::open_snapshot(dir, self.merge)?))
    }

    fn write_state(&self) -> WriteState {
        WriteState::Accepting
    }

    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        let spaces = self.read();
        let stats = Space::ALL
            .iter()
            .map(|&s| {
                let map = &spaces[index(s)];
                let bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                SpaceStats::new(s, Some(map.len() as u64), Some(0), Some(bytes))
            })
            .collect();
        EngineStats::new(stats, 0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        crate::store::conformance::run_with(
            |_dir, merge| MemoryEngine::new(merge),
            &crate::store::conformance::Forensics { files: |_| Vec::new(), memtables: true },
        );
    }
}
