//! Reads and writes in `Mode::NoWait` and `Mode::Wait`: answered where they stand, or nothing done.

use super::*;

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
