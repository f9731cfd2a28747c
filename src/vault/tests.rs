//! Unit tests of the core that need a real store but no HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::domain::{Purpose, Role, SubjectId, SystemClock};

fn vault(dir: &std::path::Path, faults: Arc<FaultSwitch>) -> Vault {
    qoima_keys::RootKey::generate_file(&dir.join("root.key")).ok();
    let root = qoima_keys::RootKeySource::File(dir.join("root.key")).load().unwrap();
    Vault::open(Settings::new(dir.join("data")), root, Arc::new(SystemClock), faults).unwrap()
}

fn ctx(role: Role) -> Ctx {
    Ctx {
        caller: std::sync::Arc::new(Caller {
            name: CallerName::parse("t").unwrap(),
            roles: [role].into(),
            purposes: [Purpose::parse("loan_issuance").unwrap()].into(),
        }),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    }
}

/// A write of one field, the subject's name.
fn full_name(value: &str) -> BTreeMap<String, serde_json::Value> {
    [("identity.full_name".to_string(), json!(value))].into()
}

fn put(v: &Vault, s: &str) {
    v.put_fields(Mode::Wait, &ctx(Role::Service), &SubjectId::parse(s).unwrap(), &full_name("N")).wait().unwrap();
}

#[test]
fn a_failed_erasure_is_journaled_as_aborted_and_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultSwitch::default());
    let v = vault(dir.path(), faults.clone());
    put(&v, "a");
    put(&v, "b");
    faults.set(true);
    assert!(matches!(v.request_erasure(&ctx(Role::Website), &SubjectId::parse("a").unwrap()), Err(VaultError::Unavailable(_))));
    faults.set(false);
    v.request_erasure(&ctx(Role::Website), &SubjectId::parse("b").unwrap()).unwrap();
    let journal = ErasureJournal::read(&v.settings().erasure_journal).unwrap();
    let events: Vec<(&str, &str)> = journal.iter().map(|e| (e.subject.as_str(), e.event.as_str())).collect();
    assert_eq!(events, [("a", "erased"), ("a", "aborted-erased"), ("b", "erased")]);
    // Replaying the journal into a store where both still live erases b only.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("root.key"), dir2.path().join("root.key")).unwrap();
    let w = vault(dir2.path(), Arc::default());
    put(&w, "a");
    put(&w, "b");
    assert_eq!(w.replay_erasures(&journal).unwrap(), 1);
    assert!(w.erasure("a").unwrap().is_none());
    assert_eq!(w.erasure("b").unwrap().unwrap().status, ErasureStatus::Erased);
    v.close();
    w.close();
}

#[test]
fn concurrent_erasures_are_all_purged_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    let subjects: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    for s in &subjects {
        put(&v, s);
    }
    let start = std::sync::Barrier::new(subjects.len());
    std::thread::scope(|scope| {
        for s in &subjects {
            let (v, start) = (&v, &start);
            scope.spawn(move || {
                start.wait();
                v.request_erasure(&ctx(Role::Website), &SubjectId::parse(s).unwrap()).unwrap();
            });
        }
    });
    for s in &subjects {
        let e = v.erasure(s).unwrap().unwrap();
        assert_eq!(e.status, ErasureStatus::Erased, "{s}");
        assert!(e.purged, "{s} was erased but its purge did not run");
    }
    assert!(v.purges.queue.lock().unwrap().is_empty());
    v.close();
}

/// A read in [`Mode::NoWait`], as the server tries it first: `None` if it would block.
fn try_read_now(v: &Vault, c: &Ctx, s: &str, purpose: &str) -> Option<Result<FieldTexts, VaultError>> {
    let answer = v.read(Mode::NoWait, c, &SubjectId::parse(s).unwrap(), purpose, None);
    (!answer.would_block()).then(|| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(answer.durable()))
}

/// [`try_read_now`] of a read that is allowed if it does not block.
fn read_now(v: &Vault, c: &Ctx, s: &str, purpose: &str) -> Option<FieldTexts> {
    try_read_now(v, c, s, purpose).map(Result::unwrap)
}

fn entries(v: &Vault) -> u64 {
    v.audit_stats().entries.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_read_in_memory_is_answered_now_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "a");
    let c = ctx(Role::Service);
    let before = entries(&v);
    let now = read_now(&v, &c, "a", "loan_issuance").expect("in memory, allowed");
    assert_eq!(entries(&v), before + 1, "one audit entry, durable before the values came out");
    assert_eq!(now, v.read(Mode::Wait, &c, &SubjectId::parse("a").unwrap(), "loan_issuance", None).wait().unwrap());
    assert_eq!(v.answer_paths().reads.in_memory.load(std::sync::atomic::Ordering::Relaxed), 1);
    v.close();
}

#[test]
fn a_read_that_cannot_finish_now_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(dir.path().join("data"));
    settings.max_reads_per_minute.insert("limited".into(), 1);
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root = || qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let v = Vault::open(settings.clone(), root(), Arc::new(SystemClock), Arc::default()).unwrap();
    put(&v, "a");
    put(&v, "gone");
    v.request_erasure(&ctx(Role::Website), &SubjectId::parse("gone").unwrap()).unwrap();
    let c = ctx(Role::Service);
    // Refusals are answered where they stand, each with its entry: unknown, erased, not
    // granted, wrong role.
    let before = entries(&v);
    assert!(matches!(try_read_now(&v, &c, "nobody", "loan_issuance"), Some(Err(VaultError::NotFound(_)))));
    assert!(matches!(try_read_now(&v, &c, "gone", "loan_issuance"), Some(Err(VaultError::Erased { .. }))));
    assert!(matches!(try_read_now(&v, &c, "a", "advertising"), Some(Err(VaultError::Denied(_)))));
    assert!(matches!(try_read_now(&v, &ctx(Role::Auditor), "a", "loan_issuance"), Some(Err(VaultError::Denied(_)))));
    assert_eq!(entries(&v), before + 4, "each refusal recorded once");
    assert_eq!(v.answer_paths().reads.in_memory.load(std::sync::atomic::Ordering::Relaxed), 4);
    // What would wait changes nothing.
    let before = entries(&v);
    // A caller with a read limit spends its budget on the blocking path only.
    let mut limited = ctx(Role::Service);
    std::sync::Arc::make_mut(&mut limited.caller).name = CallerName::parse("limited").unwrap();
    assert!(read_now(&v, &limited, "a", "loan_issuance").is_none());
    // A subject being written (its lock held) is not waited for.
    {
        let _writer = v.locks.lock("a");
        assert!(read_now(&v, &c, "a", "loan_issuance").is_none());
    }
    assert_eq!(entries(&v), before, "no entry, nothing recorded");
    assert_eq!(v.answer_paths().reads.in_memory.load(std::sync::atomic::Ordering::Relaxed), 4);
    // The limited caller's one read a minute is still there.
    v.read(Mode::Wait, &limited, &SubjectId::parse("a").unwrap(), "loan_issuance", None).wait().unwrap();
    v.store().purge(&[]).unwrap();
    v.close();
    drop(v);

    // Reopened, the subject is only in the files: not in memory until a blocking read.
    let v = Vault::open(settings, root(), Arc::new(SystemClock), Arc::default()).unwrap();
    assert!(read_now(&v, &c, "a", "loan_issuance").is_none());
    v.read(Mode::Wait, &c, &SubjectId::parse("a").unwrap(), "loan_issuance", None).wait().unwrap();
    assert!(read_now(&v, &c, "a", "loan_issuance").is_some());
    v.close();
}

/// A write in [`Mode::NoWait`], as the server tries it first: `None` if it would block.
fn try_put_now(v: &Vault, c: &Ctx, s: &str, fields: &BTreeMap<String, serde_json::Value>) -> Option<Result<WriteOutcome, VaultError>> {
    let answer = v.put_fields(Mode::NoWait, c, &SubjectId::parse(s).unwrap(), fields);
    (!answer.would_block()).then(|| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(answer.durable()))
}

/// [`try_put_now`] of the subject's name, a write that is allowed if it does not block.
fn put_now(v: &Vault, c: &Ctx, s: &str, value: &str) -> Option<WriteOutcome> {
    try_put_now(v, c, s, &full_name(value)).map(Result::unwrap)
}

#[test]
fn a_write_in_memory_is_planned_now_audited_and_its_lock_released() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "warm"); // the store's files and caches are open
    let c = ctx(Role::Service);
    let before = entries(&v);
    let created = put_now(&v, &c, "n", "first").expect("a new subject, lock free, queue empty");
    assert!(created.created);
    assert_eq!(entries(&v), before + 1, "one audit entry, durable before the answer");
    assert!(v.locks.try_lock("n").is_some(), "the committer released the subject's lock");
    let updated = put_now(&v, &c, "n", "second").expect("an update in memory");
    assert_eq!((updated.created, updated.version), (false, 2));
    let read = v.read(Mode::Wait, &c, &SubjectId::parse("n").unwrap(), "loan_issuance", None).wait().unwrap();
    assert_eq!(read["identity.full_name"], json!("second"));
    assert_eq!(v.answer_paths().writes.in_memory.load(std::sync::atomic::Ordering::Relaxed), 2);
    v.close();
}

#[test]
fn an_abandoned_write_keeps_its_subject_locked_until_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "warm");
    let fields = full_name("x");
    for i in 0..20 {
        let s = format!("n{i}");
        // The caller goes away at once (a client that hung up): the write still completes, and
        // the next writer of the subject waits for it rather than reading the store before it.
        let answer = v.put_fields(Mode::NoWait, &ctx(Role::Service), &SubjectId::parse(&s).unwrap(), &fields);
        assert!(!answer.would_block(), "in memory");
        drop(answer);
        let _next = v.locks.lock(&s);
        assert!(v.meta(&s).unwrap().is_some(), "{s}: the lock was free before the write was applied");
    }
    v.close();
}

#[test]
fn a_write_that_cannot_finish_now_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "a");
    put(&v, "gone");
    v.request_erasure(&ctx(Role::Website), &SubjectId::parse("gone").unwrap()).unwrap();
    let c = ctx(Role::Service);
    // Refusals are answered where they stand, each with its entry: erased, wrong role; a
    // malformed write is refused before anything is looked up, with none.
    let before = entries(&v);
    assert!(matches!(try_put_now(&v, &c, "gone", &full_name("x")), Some(Err(VaultError::Erased { .. }))));
    assert!(matches!(try_put_now(&v, &ctx(Role::Auditor), "a", &full_name("x")), Some(Err(VaultError::Denied(_)))));
    let bad: BTreeMap<String, serde_json::Value> = [("no.such_field".to_string(), json!("x"))].into();
    assert!(matches!(try_put_now(&v, &c, "a", &bad), Some(Err(VaultError::Invalid(_)))));
    assert_eq!(entries(&v), before + 2);
    let in_memory = v.answer_paths().writes.in_memory.load(std::sync::atomic::Ordering::Relaxed);
    // What would wait changes nothing.
    let before = entries(&v);
    // A subject being written is not waited for.
    {
        let _writer = v.locks.lock("a");
        assert!(put_now(&v, &c, "a", "x").is_none());
    }
    assert_eq!(entries(&v), before, "no entry, nothing recorded");
    assert_eq!(v.answer_paths().writes.in_memory.load(std::sync::atomic::Ordering::Relaxed), in_memory);
    assert_eq!(
        v.read(Mode::Wait, &c, &SubjectId::parse("a").unwrap(), "loan_issuance", None).wait().unwrap()["identity.full_name"],
        json!("N")
    );
    v.close();
}

#[test]
fn concurrent_writes_to_one_subject_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "a");
    let (threads, writes) = (4, 50);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let v = &v;
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let c = ctx(Role::Service);
                let s = SubjectId::parse("a").unwrap();
                for i in 0..writes {
                    let fields = full_name(&format!("{t}-{i}"));
                    // Either path, as the handler would choose; each write must see the last.
                    let answer = v.put_fields(Mode::NoWait, &c, &s, &fields);
                    match answer.would_block() {
                        false => rt.block_on(answer.durable()).unwrap(),
                        true => v.put_fields(Mode::Wait, &c, &s, &fields).wait().unwrap(),
                    };
                }
            });
        }
    });
    assert_eq!(v.meta("a").unwrap().unwrap().version, 1 + threads * writes, "every write got its own version");
    let paths = v.answer_paths();
    let ran = paths.writes.in_memory.load(std::sync::atomic::Ordering::Relaxed)
        + paths.writes.blocking.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ran, 1 + threads * writes);
    v.close();
}

#[test]
fn a_read_that_an_erasure_overtakes_leaves_no_key_in_the_cache() {
    use super::read::ReadLookup;
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "a");
    v.dek_cache.purge("a"); // cold: the read must unwrap the DEK
    let c = ctx(Role::Service);
    let purpose = v.purpose("loan_issuance").unwrap();
    // The read looks the subject up under its lock and lets go...
    let looked = {
        let _lock = v.locks.lock("a");
        let permit = crate::policy::permit_read(&c.caller, purpose).unwrap();
        v.look_up_read(crate::store::Tier::Any, &super::read::ReadRequest { subject: "a", permit, requested: None }).unwrap()
    };
    // ...the erasure runs (shreds the wrapped DEK, purges the cache)...
    v.request_erasure(&ctx(Role::Website), &SubjectId::parse("a").unwrap()).unwrap();
    // ...and only then are the records opened: with the DEK already in hand, caching nothing.
    let ReadLookup::Allowed { dek, records, .. } = looked else { panic!("the read was allowed") };
    let version = dek.version();
    v.decrypt("a", &dek, records.iter()).unwrap();
    drop(dek);
    assert!(v.dek_cache.get("a", version).is_none(), "the erased subject's DEK is cached again");
    assert_eq!(v.dek_cache.len(), 0);
    v.close();
}

/// The subject views (a cache of what reads find) must never answer with what a write has
/// replaced: each kind of write below changes what the next read decides or returns.
#[test]
fn a_cached_subject_view_follows_every_write_of_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultSwitch::default());
    let v = vault(dir.path(), faults.clone());
    let service = Ctx {
        caller: Arc::new(Caller {
            name: CallerName::parse("lender").unwrap(),
            roles: [Role::Service].into(),
            purposes: [Purpose::parse("loan_issuance").unwrap(), Purpose::parse("advertising").unwrap()].into(),
        }),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    };
    let a = SubjectId::parse("a").unwrap();
    // As the server reads: in memory if it can, else on the blocking path.
    let name_for = |purpose: &str| -> Result<String, VaultError> {
        let texts = match try_read_now(&v, &service, "a", purpose) {
            Some(texts) => texts?,
            None => v.read(Mode::Wait, &service, &a, purpose, None).wait()?,
        };
        Ok(texts["identity.full_name"].json().to_owned())
    };
    put(&v, "a");
    // A read that had to go past RocksDB's memory keeps no view: the block cache decides what is hot.
    v.read(Mode::Wait, &service, &a, "loan_issuance", None).wait().unwrap();
    assert!(v.subject_cache().is_empty(), "the blocking read kept a view");
    assert_eq!(name_for("loan_issuance").unwrap(), "\"N\"");
    assert_eq!(v.subject_cache().len(), 1, "the read in memory kept a view");
    let hits = v.subject_cache().hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(name_for("loan_issuance").unwrap(), "\"N\"");
    assert_eq!(v.subject_cache().hits.load(std::sync::atomic::Ordering::Relaxed), hits + 1, "the second read used it");

    // A field written again and rectified: each write leaves the view of what it wrote, so the
    // next read finds it there.
    let hits = || v.subject_cache().hits.load(std::sync::atomic::Ordering::Relaxed);
    v.put_fields(Mode::Wait, &service, &a, &full_name("M")).wait().unwrap();
    let before = hits();
    assert_eq!(name_for("loan_issuance").unwrap(), "\"M\"");
    assert_eq!(hits(), before + 1, "the write left no view");
    v.rectify(Mode::Wait, &ctx(Role::Website), &a, &full_name("R")).wait().unwrap();
    assert_eq!(name_for("loan_issuance").unwrap(), "\"R\"");
    // On the async path too: the committer installs the view before it releases the lock.
    assert_eq!(put_now(&v, &service, "a", "Q").map(|o| o.created), Some(false));
    let before = hits();
    assert_eq!(name_for("loan_issuance").unwrap(), "\"Q\"");
    assert_eq!(hits(), before + 1, "the async write left no view");
    // A write that fails installs nothing: the reads find what is stored.
    faults.set(true);
    assert!(v.put_fields(Mode::Wait, &service, &a, &full_name("F")).wait().is_err());
    assert!(try_put_now(&v, &service, "a", &full_name("G")).is_some_and(|r| r.is_err()));
    faults.set(false);
    assert_eq!(name_for("loan_issuance").unwrap(), "\"Q\"");
    assert_eq!(v.read(Mode::Wait, &service, &a, "loan_issuance", None).wait().unwrap()["identity.full_name"].json(), "\"Q\"");
    v.rectify(Mode::Wait, &ctx(Role::Website), &a, &full_name("R")).wait().unwrap();
    assert_eq!(name_for("loan_issuance").unwrap(), "\"R\"");

    // A consent given, then withdrawn: the policy decides on the facts as they are now.
    assert!(matches!(name_for("advertising"), Err(VaultError::Denied(_))));
    let consent =
        ConsentRequest { purpose: "advertising".into(), policy_version: None, valid_until: None, third_parties: None, abroad: false };
    v.give_consent(&ctx(Role::Website), &a, &consent).unwrap();
    assert_eq!(name_for("advertising").unwrap(), "\"R\"");
    v.withdraw_consent(&ctx(Role::Website), &a, "advertising").unwrap();
    assert!(matches!(name_for("advertising"), Err(VaultError::Denied(_))));

    // A new DEK: the records were sealed again, the entry holds the new wrapped key.
    v.rekey(&ctx(Role::Security), &a).unwrap();
    assert_eq!(name_for("loan_issuance").unwrap(), "\"R\"");

    // Erasure: nothing of the subject is answered, and its view is gone.
    v.request_erasure(&ctx(Role::Website), &a).unwrap();
    assert!(matches!(name_for("loan_issuance"), Err(VaultError::Erased { .. })));
    assert!(v.subject_cache().is_empty(), "the erased subject's sealed records are still in memory");
    v.close();
}

/// A subject with more fields than a view holds is read field by field and never cached; its
/// reads still see exactly what the purpose and the request let out.
#[test]
fn a_subject_too_large_for_a_view_is_read_without_one() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let mut settings = Settings::new(dir.path().join("data"));
    settings.schema.categories.get_mut("questionnaire").unwrap().open = Some(crate::schema::FieldType::Text);
    // Room enough that the budget is not what keeps the view out.
    settings.subject_cache_bytes = 1 << 30;
    let v = Vault::open(settings, root, Arc::new(SystemClock), Arc::default()).unwrap();
    let c = ctx(Role::Service);
    let a = SubjectId::parse("a").unwrap();
    let mut fields = full_name("N");
    for i in 0..300 {
        fields.insert(format!("questionnaire.q{i}"), json!(format!("answer {i}")));
    }
    v.put_fields(Mode::Wait, &c, &a, &fields).wait().unwrap();
    let all = read_now(&v, &c, "a", "loan_issuance").expect("in memory, allowed");
    assert_eq!(all.len(), fields.len());
    assert_eq!(all["questionnaire.q299"].json(), "\"answer 299\"");
    let asked = ["questionnaire.q7".to_string(), "identity.full_name".to_string()];
    let some = v.read(Mode::Wait, &c, &a, "loan_issuance", Some(&asked)).wait().unwrap();
    assert_eq!(some.keys().map(String::as_str).collect::<Vec<_>>(), ["identity.full_name", "questionnaire.q7"]);
    assert!(v.subject_cache().is_empty(), "a view of {} fields was kept", fields.len());
    // Nor does a cached subject that a write takes past that size keep its view.
    let b = SubjectId::parse("b").unwrap();
    v.put_fields(Mode::Wait, &c, &b, &full_name("N")).wait().unwrap();
    read_now(&v, &c, "b", "loan_issuance").expect("in memory, allowed");
    assert_eq!(v.subject_cache().len(), 1);
    v.put_fields(Mode::Wait, &c, &b, &fields).wait().unwrap();
    assert!(v.subject_cache().is_empty(), "the write installed a view of {} fields", fields.len());
    assert_eq!(read_now(&v, &c, "b", "loan_issuance").expect("in memory, allowed").len(), fields.len());
    v.close();
}

/// A write to a cached subject plans from its view (no store lookups): what it reports and
/// stores must be what the same write planned from the store gives.
#[test]
fn a_write_planned_from_a_cached_view_matches_one_planned_from_the_store() {
    let run = |cache_bytes: usize| {
        let dir = tempfile::tempdir().unwrap();
        qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
        let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
        let mut settings = Settings::new(dir.path().join("data"));
        settings.subject_cache_bytes = cache_bytes;
        let v = Vault::open(settings, root, Arc::new(SystemClock), Arc::default()).unwrap();
        let c = ctx(Role::Service);
        let a = SubjectId::parse("a").unwrap();
        let first: BTreeMap<String, serde_json::Value> = [
            ("identity.full_name".into(), json!("N")),
            ("identity.iin".into(), json!("900101300017")),
            ("questionnaire.employer".into(), json!("E")),
        ]
        .into();
        v.put_fields(Mode::Wait, &c, &a, &first).wait().unwrap();
        read_now(&v, &c, "a", "loan_issuance").expect("in memory, allowed");
        assert_eq!(v.subject_cache().len(), usize::from(cache_bytes > 0), "the read's view");
        // One field stored before, one new; a mandatory one stored before, others missing.
        let second: BTreeMap<String, serde_json::Value> =
            [("identity.full_name".into(), json!("M")), ("identity.email".into(), json!("m@example.kz"))].into();
        let outcome = try_put_now(&v, &c, "a", &second).expect("in memory").expect("allowed");
        let meta = v.meta_in(Tier::Any, "a").unwrap().unwrap();
        let read = v.read(Mode::Wait, &c, &a, "loan_issuance", None).wait().unwrap();
        let values: Vec<(String, String)> = read.iter().map(|(k, t)| (k.clone(), t.json().to_owned())).collect();
        v.close();
        (outcome, meta.categories, meta.version, values)
    };
    let (cached, uncached) = (run(1 << 20), run(0));
    assert_eq!(cached, uncached);
    let (outcome, categories, version, _) = cached;
    assert!(!outcome.created);
    assert_eq!(outcome.missing_mandatory, ["identity.birth_date", "identity.phone", "questionnaire.monthly_income"]);
    assert_eq!(categories, [("identity".to_string(), 3), ("questionnaire".to_string(), 1)].into());
    assert_eq!(version, 2);
}

fn caller(name: &str, role: Role, purposes: &[&str]) -> Ctx {
    Ctx {
        caller: Arc::new(Caller {
            name: CallerName::parse(name).unwrap(),
            roles: [role].into(),
            purposes: purposes.iter().map(|p| Purpose::parse(p).unwrap()).collect(),
        }),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    }
}

/// Issue #23: the export read the subject's oldest 100,000 audit entries and filtered them, so
/// refusals (each an entry of the subject) pushed every later read out of what the borrower
/// saw. Here the refusals go through the real committer, as `refuse` records them, in large
/// jobs (one by one, each would wait for its own fsync).
#[test]
fn the_access_summary_keeps_every_read_past_any_number_of_refusals() {
    const OLD_CAP: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    put(&v, "b");
    let b = SubjectId::parse("b").unwrap();
    let stranger = caller("stranger", Role::Service, &[]);
    for _ in 0..10 {
        let refusals = (0..OLD_CAP / 10)
            .map(|_| {
                let reason = "not granted purpose loan_issuance";
                v.draft(&stranger, Action::Read, Some("b"), reason)
                    .purpose(Some("loan_issuance"))
                    .fields(vec!["identity.full_name".into()])
                    .deny()
            })
            .collect();
        v.audit.commit(refusals, crate::store::Batch::default()).unwrap();
    }
    let reader = ctx(Role::Service);
    v.read(Mode::Wait, &reader, &b, "loan_issuance", None).wait().unwrap();
    v.read(Mode::Wait, &reader, &b, "loan_issuance", None).wait().unwrap();
    let export = v.export(&ctx(Role::Website), &b).unwrap();
    let reads: Vec<&AccessSummary> = export.access.iter().filter(|a| a.action == "subject.read").collect();
    assert_eq!(reads.len(), 1, "{:?}", export.access);
    assert_eq!((reads[0].caller.as_str(), reads[0].purpose.as_deref(), reads[0].count), ("t", Some("loan_issuance"), 2));
    assert_eq!(reads[0].fields, ["identity.full_name"]);
    assert!(export.access.iter().all(|a| a.caller != "stranger"), "a refusal is no access");
    let recent: Vec<&str> = export.recent_access.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(recent, ["subject.read", "subject.read"]);
    // The export itself is an access, summarised for the next one.
    let again = v.export(&ctx(Role::Website), &b).unwrap();
    assert!(again.access.iter().any(|a| a.action == "subject.export" && a.count == 1));
    v.close();
}

/// Issue #23: a disclosure's record (and a read's or disclosure's entry, which adds to the
/// access summary) went to the committer after the subject's lock was let go, so an erasure
/// that took the lock in between could be committed first and leave them behind. The erasure
/// here runs the moment the lock is free, as one waiting for it would (the journal line a real
/// one writes first only narrows the window it races in, so it is left out).
#[test]
fn an_erasure_right_after_a_disclosure_or_read_leaves_nothing_of_them() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    let bureau = caller("bureau-feed", Role::Service, &["third_party_transfer", "loan_issuance"]);
    let req = DisclosureRequest {
        recipient: "First Credit Bureau".into(),
        basis: crate::policy::DisclosureBasis::LegalObligation,
        reference: Some("Law 94-V art. 9".into()),
        fields: vec!["identity.full_name".into()],
        abroad: false,
    };
    // Rounds where the erasure caught the lock in the other thread's hands (on a loaded machine
    // some miss it): enough of them, within a bound on attempts.
    let (mut raced, mut i) = (0, 0);
    while raced < 20 && i < 1000 {
        i += 1;
        let s = format!("d{i}");
        put(&v, &s);
        let id = SubjectId::parse(&s).unwrap();
        let (go, done) = (AtomicBool::new(false), AtomicBool::new(false));
        let erased = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !go.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                if i % 2 == 0 {
                    v.disclose(&bureau, &id, &req).unwrap();
                } else {
                    v.read(Mode::Wait, &bureau, &id, "loan_issuance", None).wait().unwrap();
                }
                done.store(true, Ordering::SeqCst);
            });
            // The erasure's batch, ready beforehand (nothing the other thread does changes it),
            // so it is committed the instant the lock is free, as the worst case has it.
            let meta = v.meta(&s).unwrap().unwrap();
            let now = v.clock.now();
            let mut record = ErasureRecord {
                subject: s.clone(),
                status: ErasureStatus::Pending,
                receipt: format!("rcpt_{i}"),
                requested_at: now,
                requested_by: "website".into(),
                held_by: vec![],
                erased_at: None,
                key_fingerprint: None,
                kek_generation: None,
                purged: false,
            };
            let mut batch = crate::store::Batch::default();
            v.shred_into(&s, &meta, &mut record, now, &mut batch).unwrap();
            let draft = v.draft(&ctx(Role::Website), Action::RequestErasure, Some(&s), "crypto-shredded");
            go.store(true, Ordering::SeqCst);
            // Until the other thread holds the lock...
            while let Some(g) = v.locks.try_lock(&s) {
                drop(g);
                if done.load(Ordering::SeqCst) {
                    return false; // missed it: this round proves nothing
                }
                std::hint::spin_loop();
            }
            // ...then erase as soon as it lets go.
            let lock = loop {
                if let Some(g) = v.locks.try_lock(&s) {
                    break g;
                }
                std::hint::spin_loop();
            };
            v.audit.commit(vec![draft], batch).unwrap();
            v.dek_cache.purge(&s);
            drop(lock);
            true
        });
        if !erased {
            continue;
        }
        raced += 1;
        let mut left = Vec::new();
        for space in [Space::Disclosures, Space::Access] {
            v.store
                .scan_prefix(space, &crate::layout::subject_prefix(&s), |_, _| {
                    left.push(space.name());
                    true
                })
                .unwrap();
        }
        assert!(left.is_empty(), "round {i}: the erasure left {left:?} behind");
    }
    assert!(raced >= 20, "only {raced} of {i} rounds raced");
    v.close();
}

/// The cli tells a running vault from a broken store by this variant, not by its text.
#[test]
fn a_data_directory_open_elsewhere_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), Arc::default());
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let second = Vault::open(Settings::new(dir.path().join("data")), root, Arc::new(SystemClock), Arc::default());
    assert!(matches!(second, Err(VaultError::InUse(ref p)) if *p == dir.path().join("data")), "{second:?}");
    v.close();
}

/// The vault runs over any engine: here the in-memory one, through a write, a read and an
/// erasure.
#[test]
fn the_vault_runs_over_the_memory_engine() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let store = Arc::new(Store::in_memory(crate::audit::summary::merge));
    let v = Vault::with_store(store, Settings::new(dir.path().join("data")), root, Arc::new(SystemClock), Arc::default()).unwrap();
    put(&v, "m");
    let c = ctx(Role::Service);
    let read = v.read(Mode::Wait, &c, &SubjectId::parse("m").unwrap(), "loan_issuance", None).wait().unwrap();
    assert!(format!("{read:?}").contains("identity.full_name"), "{read:?}");
    v.request_erasure(&ctx(Role::Website), &SubjectId::parse("m").unwrap()).unwrap();
    assert!(matches!(
        v.read(Mode::Wait, &c, &SubjectId::parse("m").unwrap(), "loan_issuance", None).wait(),
        Err(VaultError::Erased { .. })
    ));
    v.close();
}
