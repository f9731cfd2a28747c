//! The one conformance suite every [`Engine`] passes (as rustls runs one API suite per crypto
//! provider): each engine's module calls [`run`] with a way to open a fresh engine in a folder.
//! The checks go through [`Store`], the facade the vault uses, so they test what it relies on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{prefix_end, Batch, Engine, MergeRule, Space, Store, StoreError, Tier, WriteState};

/// What an engine keeps where, for the checks that look at its files.
pub struct Forensics {
    /// Every folder holding the engine's files, given the folder the engine was opened in
    /// (PostgreSQL: the server's data directory too; in memory: none).
    pub files: fn(&Path) -> Vec<PathBuf>,
    /// Whether writes sit in memory buffers first (RocksDB's memtables), reported by
    /// [`super::SpaceStats::memtable_bytes`].
    pub memtables: bool,
}

/// One check: a fresh store, the folder it was opened in, and where its files are.
type Check = fn(&Store, &Path, &Forensics);

/// `group\0`: the NUL-terminated group keys of a [`Space::grouped_keys`] space start with.
pub fn group(group: &str) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.push(0);
    k
}

/// `group\0rest`.
pub fn grouped(group_name: &str, rest: &str) -> Vec<u8> {
    let mut k = group(group_name);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// The suite's own [`MergeRule`]: the stored value and the operands, in order, joined by `+`
/// (operands are never empty here). Associative, as a rule must be, and order-sensitive, so
/// the checks see that an engine folds the operands in the order written, after the value.
pub fn join(existing: Option<&[u8]>, operands: &mut dyn Iterator<Item = &[u8]>) -> Vec<u8> {
    let mut out = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for op in operands {
        if !out.is_empty() {
            out.push(b'+');
        }
        out.extend_from_slice(op);
    }
    out
}

/// Runs every check, each on a fresh engine that `make` opens in the (empty or absent) folder
/// it is given, with the merge rule it is given; the engine keeps its files in that folder and
/// has memtables.
pub fn run<E: Engine>(make: impl Fn(&Path, MergeRule) -> E) {
    run_with(make, &Forensics { files: |dir| vec![dir.to_path_buf()], memtables: true });
}

/// [`run`], for an engine whose files are where `forensics` says.
pub fn run_with<E: Engine>(make: impl Fn(&Path, MergeRule) -> E, forensics: &Forensics) {
    let checks: [(&str, Check); 10] = [
        ("point and multi-get", point_and_multi_get),
        ("scans in order and within bounds", scans_in_order_and_bounds),
        ("ops of a batch apply in order", ops_apply_in_order),
        ("a batch is seen whole or not at all", batches_are_atomic),
        ("counters and merges", counters_and_merges),
        ("expectations are a compare-and-set", expectations_compare_and_set),
        ("prefix deletes", prefix_deletes),
        ("purge leaves no deleted value readable or on disk", purge_leaves_nothing),
        ("backup is consistent and opens", backup_is_consistent),
        ("health and statistics", health_and_stats),
    ];
    for (name, check) in checks {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::with_engine(Arc::new(make(&path, join)));
        eprintln!("conformance: {name}");
        check(&store, dir.path(), forensics);
    }
}

fn put(store: &Store, space: Space, kvs: &[(&[u8], &[u8])]) {
    let mut b = Batch::default();
    for (k, v) in kvs {
        b.put(space, k.to_vec(), v.to_vec());
    }
    store.write(&b).unwrap();
}

fn keys(store: &Store, space: Space, from: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    store
        .scan(space, from, to, |k, _| {
            out.push(k.to_vec());
            true
        })
        .unwrap();
    out
}

fn point_and_multi_get(store: &Store, _: &Path, forensics: &Forensics) {
    put(store, Space::Records, &[(b"a", b"1"), (b"b", b"2")]);
    put(store, Space::Facts, &[(b"a", b"other space")]);
    assert_eq!(store.get(Space::Records, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.get(Space::Records, b"c").unwrap(), None);
    assert_eq!(store.get(Space::Keyring, b"a").unwrap(), None, "spaces are apart");
    assert_eq!(store.get(Space::Facts, b"a").unwrap().as_deref(), Some(&b"other space"[..]));
    assert_eq!(store.get_with(Tier::Any, Space::Records, b"b", |v| v.len()).unwrap(), Some(1));
    let many = store.get_many(Space::Records, &[b"b".to_vec(), b"c".to_vec(), b"a".to_vec()]).unwrap();
    assert_eq!(many, vec![Some(b"2".to_vec()), None, Some(b"1".to_vec())], "in the order asked");
    // The memory tier answers what was just written if a memtable holds it, and never answers
    // wrongly: either the value or "not in memory".
    match store.get_in(Tier::Memory, Space::Records, b"a") {
        Ok(v) => assert_eq!(v.as_deref(), Some(&b"1"[..])),
        Err(e) => assert!(!forensics.memtables && matches!(e, StoreError::NotInMemory), "{e}"),
    }
    match store.get_in(Tier::Memory, Space::Records, b"c") {
        Ok(v) => assert_eq!(v, None),
        Err(e) => assert!(matches!(e, StoreError::NotInMemory), "{e}"),
    }
    match store.get_many_in(Tier::Memory, Space::Records, &[b"a".to_vec(), b"b".to_vec()]) {
        Ok(v) => assert_eq!(v, vec![Some(b"1".to_vec()), Some(b"2".to_vec())]),
        Err(e) => assert!(matches!(e, StoreError::NotInMemory), "{e}"),
    }
    let mut seen = 0;
    match store.scan_prefix_in(Tier::Memory, Space::Records, b"", |_, _| {
        seen += 1;
        true
    }) {
        Ok(()) => assert_eq!(seen, 2),
        Err(e) => assert!(matches!(e, StoreError::NotInMemory), "{e}"),
    }
}

fn scans_in_order_and_bounds(store: &Store, _: &Path, _: &Forensics) {
    let written: [&[u8]; 8] = [b"b", b"a\xff", b"a", b"c\0x", b"b\0", b"\xff\xff", b"c", b"a\0"];
    let mut b = Batch::default();
    for k in written {
        b.put(Space::Records, k.to_vec(), k.to_vec());
    }
    store.write(&b).unwrap();
    let mut sorted: Vec<Vec<u8>> = written.iter().map(|k| k.to_vec()).collect();
    sorted.sort();
    let mut pairs = vec![];
    store
        .scan(Space::Records, b"", &[0xff, 0xff, 0xff], |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), sorted, "every key, ascending");
    assert!(pairs.iter().all(|(k, v)| k == v), "each with its value");
    // From is included, to is not.
    assert_eq!(keys(store, Space::Records, b"a\0", b"b"), [&b"a\0"[..], b"a\xff"]);
    assert_eq!(keys(store, Space::Records, b"b", b"b"), Vec::<Vec<u8>>::new());
    // Prefixes: `b` and `b\0` under `b`, not `c`; an all-0xff prefix has an end too.
    let mut under_b = vec![];
    store
        .scan_prefix(Space::Records, b"b", |k, _| {
            under_b.push(k.to_vec());
            true
        })
        .unwrap();
    assert_eq!(under_b, [&b"b"[..], b"b\0"]);
    assert_eq!(keys(store, Space::Records, b"\xff\xff", &prefix_end(b"\xff\xff")), [&b"\xff\xff"[..]]);
    // The visitor stops the scan.
    let mut two = 0;
    store
        .scan(Space::Records, b"", b"\xff", |_, _| {
            two += 1;
            two < 2
        })
        .unwrap();
    assert_eq!(two, 2);
    // The last key of a space, and of an empty one.
    assert_eq!(store.last(Space::Records).unwrap(), Some((b"\xff\xff".to_vec(), b"\xff\xff".to_vec())));
    assert_eq!(store.last(Space::Audit).unwrap(), None);
    put(store, Space::Audit, &[(&7u64.to_be_bytes(), b"7"), (&300u64.to_be_bytes(), b"300"), (&9u64.to_be_bytes(), b"9")]);
    assert_eq!(store.last(Space::Audit).unwrap(), Some((300u64.to_be_bytes().to_vec(), b"300".to_vec())));
    assert_eq!(keys(store, Space::Keyring, b"", b"\xff"), Vec::<Vec<u8>>::new(), "other spaces are empty");
}

fn ops_apply_in_order(store: &Store, _: &Path, _: &Forensics) {
    let mut b = Batch::default();
    b.put(Space::Keyring, b"a".to_vec(), b"1".to_vec());
    b.delete(Space::Keyring, b"a".to_vec());
    b.delete(Space::Keyring, b"b".to_vec());
    b.put(Space::Keyring, b"b".to_vec(), b"2".to_vec());
    b.put(Space::Keyring, b"c".to_vec(), b"old".to_vec());
    b.put(Space::Keyring, b"c".to_vec(), b"new".to_vec());
    b.put(Space::Records, grouped("s", "x"), b"gone".to_vec());
    b.delete_prefix(Space::Records, &group("s"));
    b.put(Space::Records, grouped("s", "y"), b"kept".to_vec());
    b.add(Space::Keyring, b"n".to_vec(), 4);
    b.put(Space::Keyring, b"n".to_vec(), 10i64.to_le_bytes().to_vec());
    b.add(Space::Keyring, b"n".to_vec(), 1);
    store.write(&b).unwrap();
    assert_eq!(store.get(Space::Keyring, b"a").unwrap(), None);
    assert_eq!(store.get(Space::Keyring, b"b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(store.get(Space::Keyring, b"c").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(keys(store, Space::Records, b"", b"\xff"), [grouped("s", "y")]);
    assert_eq!(store.counter(Space::Keyring, b"n").unwrap(), 11, "an add after a put adds to it");
    // An empty batch is a no-op.
    store.write(&Batch::default()).unwrap();
}

/// A reader scanning while batches land sees each batch whole: every key of the group holds
/// the same round, never a mix of two.
fn batches_are_atomic(store: &Store, _: &Path, _: &Forensics) {
    const KEYS: usize = 16;
    let round = |i: u64| {
        let mut b = Batch::default();
        for k in 0..KEYS {
            b.put(Space::Records, grouped("atom", &format!("{k:02}")), i.to_le_bytes().to_vec());
        }
        b.add(Space::Keyring, b"rounds".to_vec(), 1);
        b
    };
    store.write(&round(0)).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut looks = 0u32;
            while !done.load(Ordering::Relaxed) || looks < 50 {
                let mut values = vec![];
                store
                    .scan_prefix(Space::Records, &group("atom"), |_, v| {
                        values.push(v.to_vec());
                        true
                    })
                    .unwrap();
                assert_eq!(values.len(), KEYS, "a scan saw a batch in part");
                assert!(values.windows(2).all(|w| w[0] == w[1]), "a scan saw two batches mixed");
                let many =
                    store.get_many(Space::Records, &(0..KEYS).map(|k| grouped("atom", &format!("{k:02}"))).collect::<Vec<_>>()).unwrap();
                assert!(many.windows(2).all(|w| w[0] == w[1] && w[0].is_some()), "a multi-get saw two batches mixed");
                looks += 1;
            }
        });
        for i in 1..=200 {
            store.write(&round(i)).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    });
    assert_eq!(store.counter(Space::Keyring, b"rounds").unwrap(), 201);
}

fn counters_and_merges(store: &Store, _: &Path, _: &Forensics) {
    assert_eq!(store.counter(Space::Keyring, b"c").unwrap(), 0, "an absent counter is 0");
    let mut b = Batch::default();
    b.add(Space::Keyring, b"c".to_vec(), 5);
    b.add(Space::Keyring, b"c".to_vec(), -2);
    b.add(Space::Keyring, b"d".to_vec(), i64::MAX);
    store.write(&b).unwrap();
    let mut b = Batch::default();
    b.add(Space::Keyring, b"c".to_vec(), 10);
    b.add(Space::Keyring, b"d".to_vec(), 2);
    store.write(&b).unwrap();
    assert_eq!(store.counter(Space::Keyring, b"c").unwrap(), 13);
    assert_eq!(store.counter(Space::Keyring, b"d").unwrap(), i64::MAX.wrapping_add(2), "adds wrap");
    assert_eq!(store.get(Space::Keyring, b"c").unwrap(), Some(13i64.to_le_bytes().to_vec()), "stored as i64 little-endian");

    // Merges fold with the rule given at open: the operands in the order written, across
    // batches and within one, after the value the key held.
    let key = grouped("s1", "");
    for ops in [&["a"][..], &["b"], &["c", "d"]] {
        let mut b = Batch::default();
        for op in ops {
            b.merge(Space::Access, key.clone(), op.as_bytes());
        }
        store.write(&b).unwrap();
    }
    assert_eq!(store.get(Space::Access, &key).unwrap().as_deref(), Some(&b"a+b+c+d"[..]));
    let put_first = grouped("s2", "");
    let mut b = Batch::default();
    b.put(Space::Access, put_first.clone(), b"x".to_vec());
    b.merge(Space::Access, put_first.clone(), b"y".to_vec());
    store.write(&b).unwrap();
    let mut b = Batch::default();
    b.merge(Space::Access, put_first.clone(), b"z".to_vec());
    store.write(&b).unwrap();
    assert_eq!(store.get(Space::Access, &put_first).unwrap().as_deref(), Some(&b"x+y+z"[..]));
}

fn expectations_compare_and_set(store: &Store, _: &Path, _: &Forensics) {
    let head = |value: Option<&[u8]>, next: &[u8]| {
        let mut b = Batch::default();
        b.expect(Space::Keyring, b"head".to_vec(), value.map(<[u8]>::to_vec));
        b.put(Space::Keyring, b"head".to_vec(), next.to_vec());
        b.put(Space::Audit, next.to_vec(), b"entry".to_vec());
        store.write(&b)
    };
    head(None, b"1").unwrap();
    assert!(matches!(head(None, b"2"), Err(StoreError::Conflict { space: "keyring" })), "the key exists");
    assert!(matches!(head(Some(b"0"), b"2"), Err(StoreError::Conflict { .. })), "the value differs");
    assert_eq!(store.get(Space::Audit, b"2").unwrap(), None, "nothing of a refused batch is applied");
    head(Some(b"1"), b"2").unwrap();
    assert_eq!(store.get(Space::Keyring, b"head").unwrap().as_deref(), Some(&b"2"[..]));
    // Racing writers: every success moved the value on by one, so none read a stale one.
    let wins = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..40 {
                    let now = store.get(Space::Keyring, b"head").unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&now).unwrap().parse().unwrap();
                    let mut b = Batch::default();
                    b.expect(Space::Keyring, b"head".to_vec(), Some(now));
                    b.put(Space::Keyring, b"head".to_vec(), (n + 1).to_string().into_bytes());
                    b.add(Space::Keyring, b"wins".to_vec(), 1);
                    match store.write(&b) {
                        Ok(()) => {
                            wins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    let wins = wins.into_inner();
    // A refusal follows another writer's success, and one success refuses at most the other three.
    assert!(wins >= 40, "{wins} of 160 tries succeeded");
    assert_eq!(store.get(Space::Keyring, b"head").unwrap(), Some((2 + wins).to_string().into_bytes()));
    assert_eq!(store.counter(Space::Keyring, b"wins").unwrap(), wins as i64);
}

fn prefix_deletes(store: &Store, _: &Path, _: &Forensics) {
    let mut b = Batch::default();
    for s in ["s", "s1", "s10", "s2"] {
        for f in ["a", "b"] {
            b.put(Space::Facts, grouped(s, f), b"v".to_vec());
        }
    }
    b.put(Space::Facts, b"s1".to_vec(), b"no NUL".to_vec());
    store.write(&b).unwrap();
    let mut del = Batch::default();
    del.delete_prefix(Space::Facts, &group("s1"));
    store.write(&del).unwrap();
    let left = keys(store, Space::Facts, b"", b"\xff");
    assert_eq!(
        left,
        [
            grouped("s", "a"),
            grouped("s", "b"),
            b"s1".to_vec(),
            grouped("s10", "a"),
            grouped("s10", "b"),
            grouped("s2", "a"),
            grouped("s2", "b")
        ],
        "exactly the prefix went"
    );
    assert_eq!(store.get(Space::Facts, &grouped("s1", "a")).unwrap(), None);
}

/// Every file under `dir`, read whole (a file gone meanwhile is skipped).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn purge_leaves_nothing(store: &Store, dir: &Path, forensics: &Forensics) {
    // Unique to this run: a server shared with other tests may hold other runs' markers.
    let run = {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        hex::encode(b)
    };
    let secret = |s: &str| format!("SECRET-{s}-{run}-{}", "x".repeat(40)).into_bytes();
    let mut b = Batch::default();
    for s in ["p1", "p2", "p3"] {
        b.put(Space::Subjects, s.as_bytes().to_vec(), secret(s));
        b.put(Space::Records, grouped(s, "a"), secret(&format!("{s}.a")));
    }
    b.put(Space::Keyring, b"kek".to_vec(), secret("kek"));
    store.write(&b).unwrap();
    // Into the engine's files first, where it has any, so the purge has something to force out.
    store.purge(&[]).unwrap();
    let mut del = Batch::default();
    del.delete(Space::Subjects, b"p1".to_vec());
    del.delete_prefix(Space::Records, &group("p1"));
    del.delete(Space::Keyring, b"kek".to_vec());
    store.write(&del).unwrap();
    store.purge(&[(Space::Subjects, b"p1".to_vec(), b"p1\0".to_vec()), (Space::Records, group("p1"), prefix_end(&group("p1")))]).unwrap();
    store.purge_space(Space::Keyring).unwrap();
    assert_eq!(store.get(Space::Subjects, b"p1").unwrap(), None);
    assert_eq!(keys(store, Space::Records, b"", b"\xff"), [grouped("p2", "a"), grouped("p3", "a")]);
    assert_eq!(store.get(Space::Keyring, b"kek").unwrap(), None);
    let folders = (forensics.files)(dir);
    let files: Vec<_> = folders.iter().flat_map(|d| files_under(d)).collect();
    assert!(folders.is_empty() || !files.is_empty(), "the engine's files were found in {folders:?}");
    for gone in [secret("p1"), secret("p1.a"), secret("kek")] {
        let holding: Vec<_> = files.iter().filter(|(_, b)| memchr::memmem::find(b, &gone).is_some()).map(|(p, _)| p).collect();
        assert!(holding.is_empty(), "a purged value is still in {holding:?}");
    }
    // A purge forces out deleted values only.
    assert_eq!(store.get(Space::Subjects, b"p2").unwrap(), Some(secret("p2")));
}

fn backup_is_consistent(store: &Store, dir: &Path, _: &Forensics) {
    let mut b = Batch::default();
    b.put(Space::Subjects, b"before".to_vec(), b"1".to_vec());
    b.put(Space::Records, grouped("before", "a"), b"v".to_vec());
    b.add(Space::Keyring, b"n".to_vec(), 3);
    store.write(&b).unwrap();
    let copy_dir = dir.join("backup");
    store.backup(&copy_dir).unwrap();
    assert!(store.backup(&copy_dir).is_err(), "a backup goes into a new folder");
    let mut after = Batch::default();
    after.put(Space::Subjects, b"after".to_vec(), b"2".to_vec());
    after.delete(Space::Subjects, b"before".to_vec());
    store.write(&after).unwrap();

    let copy = store.open_backup(&copy_dir).unwrap();
    assert_eq!(copy.get(Space::Subjects, b"before").unwrap().as_deref(), Some(&b"1"[..]), "what was written before");
    assert_eq!(copy.get(Space::Subjects, b"after").unwrap(), None, "and nothing after");
    assert_eq!(copy.get(Space::Records, &grouped("before", "a")).unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(copy.counter(Space::Keyring, b"n").unwrap(), 3);
    // The copy is a store of its own.
    let mut w = Batch::default();
    w.put(Space::Subjects, b"in-copy".to_vec(), b"3".to_vec());
    copy.write(&w).unwrap();
    assert_eq!(store.get(Space::Subjects, b"in-copy").unwrap(), None);
    assert_eq!(store.get(Space::Subjects, b"after").unwrap().as_deref(), Some(&b"2"[..]));
}

fn health_and_stats(store: &Store, _: &Path, forensics: &Forensics) {
    store.ready().unwrap();
    assert_eq!(store.write_state(), WriteState::Accepting);
    put(store, Space::Records, &[(b"a", b"1"), (b"b", b"2")]);
    // Key counts are estimates some engines update a moment after the write (PostgreSQL's
    // statistics, flushed at most once a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stats = loop {
        let stats = store.stats();
        let records = &stats.spaces[Space::ALL.iter().position(|s| *s == Space::Records).unwrap()];
        if records.keys.is_some_and(|n| n >= 1) || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(stats.spaces.iter().map(|s| s.space).collect::<Vec<_>>(), Space::ALL, "one entry per space, in order");
    assert_eq!(stats.background_errors, 0);
    let records = &stats.spaces[Space::ALL.iter().position(|s| *s == Space::Records).unwrap()];
    assert!(records.keys.is_some_and(|n| n >= 1), "{records:?}");
    assert!(records.live_bytes.is_some(), "{records:?}");
    if forensics.memtables {
        assert!(records.memtable_bytes.is_some_and(|n| n > 0), "{records:?}");
    }
    store.ready().unwrap();
}
