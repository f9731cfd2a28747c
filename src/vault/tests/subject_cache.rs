//! The subject and DEK caches follow every write and erasure of their subject.

use super::*;

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
