//! The blind index: writes keep it, a unique value has one holder, the rewrap moves entries to
//! the active generation, erasure takes them out, and a store written before a field was
//! indexed is built online, reporting (never dropping) duplicates.

use std::sync::Arc;

use serde_json::json;

use super::*;

const IIN: &str = "900101300017";

fn open(dir: &std::path::Path, indexes: Vec<IndexedField>) -> Vault {
    qoima_keys::RootKey::generate_file(&dir.join("root.key")).ok();
    let root = qoima_keys::RootKeySource::File(dir.join("root.key")).load().unwrap();
    let settings = Settings { indexes, rewrap_batch: 2, ..Settings::new(dir.join("data")) };
    Vault::open(settings, root, Arc::new(SystemClock), Arc::default()).unwrap()
}

fn put_iin(v: &Vault, s: &str, iin: &str) -> Result<WriteOutcome, VaultError> {
    let fields = [
        ("identity.iin".to_string(), json!(iin)),
        ("identity.full_name".to_string(), json!("N")),
        ("identity.email".to_string(), json!(format!("{s}@example.kz"))),
    ]
    .into();
    v.put_fields(Mode::Wait, &ctx(Role::Service), &SubjectId::parse(s).unwrap(), &fields).wait()
}

fn find(v: &Vault, field: &str, value: &str) -> Result<Vec<String>, VaultError> {
    v.lookup(&ctx(Role::Service), field, &json!(value), "loan_issuance")
}

/// The generations the store holds index entries under.
fn entry_generations(v: &Vault) -> std::collections::BTreeSet<u32> {
    let mut out = std::collections::BTreeSet::new();
    v.store()
        .scan_prefix(crate::store::Space::Index, b"v", |k, _| {
            out.insert(u32::from_be_bytes(k[1..5].try_into().unwrap()));
            true
        })
        .unwrap();
    out
}

#[test]
fn a_unique_value_has_one_live_holder_and_is_free_again_once_it_is_erased() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), default_indexes());
    put_iin(&v, "a", IIN).unwrap();
    // Its own value again: no conflict with itself.
    put_iin(&v, "a", IIN).unwrap();
    let e = put_iin(&v, "b", IIN).unwrap_err();
    assert!(matches!(&e, VaultError::Conflict(error::Conflict::UniqueValue { field }) if field == "identity.iin"), "{e:?}");
    assert!(!e.to_string().contains(IIN) && !e.to_string().contains(" a "), "names the field only: {e}");
    assert!(v.meta("b").unwrap().is_none(), "nothing of the refused create is stored");
    assert_eq!(find(&v, "identity.iin", IIN).unwrap(), ["a"]);
    // A changed value frees the old one.
    put_iin(&v, "a", &iin(77)).unwrap();
    assert_eq!(find(&v, "identity.iin", IIN).unwrap(), Vec::<String>::new());
    put_iin(&v, "b", IIN).unwrap();
    v.request_erasure(&ctx(Role::Service), &SubjectId::parse("b").unwrap()).unwrap();
    assert_eq!(find(&v, "identity.iin", IIN).unwrap(), Vec::<String>::new(), "an erased subject never matches");
    put_iin(&v, "c", IIN).unwrap();
    assert_eq!(find(&v, "identity.iin", IIN).unwrap(), ["c"]);
    v.close();
}

#[test]
fn two_concurrent_creates_with_one_iin_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(open(dir.path(), default_indexes()));
    for round in 0..10 {
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (v, barrier) = (v.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    put_iin(&v, &format!("r{round}-{i}"), &iin(round)).is_ok()
                })
            })
            .collect();
        let won = handles.into_iter().map(|h| h.join().unwrap()).filter(|ok| *ok).count();
        assert_eq!(won, 1, "round {round}");
        assert_eq!(find(&v, "identity.iin", &iin(round)).unwrap().len(), 1);
    }
    v.close();
}

/// A valid IIN for `n` (born 1990-01-01).
fn iin(n: u32) -> String {
    let mut serial = n;
    loop {
        let first11 = format!("900101{serial:05}");
        let digits: Vec<u32> = first11.chars().map(|c| c.to_digit(10).unwrap()).collect();
        if let Some(c) = crate::schema::iin_check_digit(&digits) {
            return format!("{first11}{c}");
        }
        serial += 50_000;
    }
}

#[test]
fn the_rewrap_moves_entries_to_the_active_generation_and_lookups_find_them_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(open(dir.path(), default_indexes()));
    for n in 0..5 {
        put_iin(&v, &format!("s{n}"), &iin(n)).unwrap();
    }
    let security = ctx(Role::Security);
    v.rotate_kek(&security).unwrap();
    // Before the rewrap: generation 1's entries, found through generation 1's key.
    assert_eq!(entry_generations(&v), [1].into());
    assert_eq!(find(&v, "identity.iin", &iin(3)).unwrap(), ["s3"]);
    // A uniqueness check consults every live generation too.
    assert!(matches!(put_iin(&v, "late", &iin(3)), Err(VaultError::Conflict(_))));
    put_iin(&v, "new", &iin(9)).unwrap();
    v.run_rewrap(&security, |_| {}).unwrap();
    assert_eq!(entry_generations(&v), [2].into(), "every entry moved to generation 2");
    for n in 0..5 {
        assert_eq!(find(&v, "identity.iin", &iin(n)).unwrap(), [format!("s{n}")]);
    }
    v.destroy_generation(&security, 1).unwrap();
    assert_eq!(find(&v, "identity.iin", &iin(9)).unwrap(), ["new"]);
    assert_eq!(find(&v, "identity.iin", &iin(0)).unwrap(), ["s0"]);
    v.close();
}

#[test]
fn a_store_written_before_indexes_is_built_online_and_its_duplicates_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path(), Vec::new());
        let other = iin(77);
        for (s, value) in [("a", IIN), ("b", other.as_str()), ("c", IIN), ("d", IIN), ("e", other.as_str())] {
            put_iin(&v, s, value).unwrap();
        }
        v.close();
    }
    let v = open(dir.path(), default_indexes());
    let job = v.index_job().unwrap().unwrap();
    assert_eq!(job.state, index_job::IndexJobState::Running);
    assert_eq!(job.total, 5);
    // Until the build completes, a lookup says so rather than missing.
    let e = find(&v, "identity.iin", IIN).unwrap_err();
    assert!(matches!(e, VaultError::IndexBuilding { retry_after_secs, .. } if retry_after_secs > 0), "{e:?}");
    let job = v.run_index_build().unwrap().unwrap();
    assert_eq!(job.state, index_job::IndexJobState::Complete);
    assert_eq!(job.fields, ["identity.email", "identity.iin", "identity.phone"]);
    assert_eq!(find(&v, "identity.iin", IIN).unwrap(), ["a", "c", "d"], "duplicates are kept, never dropped");
    assert_eq!(find(&v, "identity.email", "c@example.kz").unwrap(), ["c"], "every field of a subject is built");
    let mut groups: Vec<Vec<String>> = job.duplicates.iter().map(|d| d.subjects.clone()).collect();
    groups.sort();
    // Reported as found: each later holder with the ones before it (ids only).
    assert_eq!(groups, [vec!["a", "c"], vec!["a", "c", "d"], vec!["b", "e"]]);
    assert!(job.duplicates.iter().all(|d| d.field == "identity.iin"));
    assert_eq!(job.duplicates_found, 3);
    v.close();
    drop(v);
    // Reopened with the same indexes: nothing to build again.
    let v = open(dir.path(), default_indexes());
    let again = v.index_job().unwrap().unwrap();
    assert_eq!(again.state, index_job::IndexJobState::Complete);
    assert_eq!((again.duplicates, again.duplicates_found), (job.duplicates, 3), "a restart keeps the duplicates reported");
    assert_eq!(find(&v, "identity.iin", &iin(77)).unwrap(), ["b", "e"]);
    v.close();
}

#[test]
fn a_build_interrupted_resumes_after_its_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path(), Vec::new());
        for n in 0..7 {
            put_iin(&v, &format!("s{n}"), &iin(n)).unwrap();
        }
        v.close();
    }
    {
        let v = open(dir.path(), default_indexes());
        // Two batches of two, then a "crash".
        assert!(v.index_step_for_tests().unwrap());
        assert!(v.index_step_for_tests().unwrap());
        let job = v.index_job().unwrap().unwrap();
        assert_eq!((job.done, job.cursor.as_deref()), (4, Some("s3")));
        v.close();
    }
    let v = open(dir.path(), default_indexes());
    let job = v.index_job().unwrap().unwrap();
    assert_eq!((job.state, job.done), (index_job::IndexJobState::Running, 4), "resumed, not restarted");
    let job = v.run_index_build().unwrap().unwrap();
    assert_eq!((job.state, job.done, job.duplicates_found), (index_job::IndexJobState::Complete, 7, 0));
    for n in 0..7 {
        assert_eq!(find(&v, "identity.iin", &iin(n)).unwrap(), [format!("s{n}")]);
    }
    v.close();
}

#[test]
fn lookups_normalise_and_refuse_what_they_cannot_answer() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), default_indexes());
    let fields = [
        ("identity.iin".to_string(), json!(IIN)),
        ("identity.phone".to_string(), json!("+77011234567")),
        ("identity.email".to_string(), json!("Aigerim@Example.kz")),
    ]
    .into();
    v.put_fields(Mode::Wait, &ctx(Role::Service), &SubjectId::parse("a").unwrap(), &fields).wait().unwrap();
    assert_eq!(find(&v, "identity.phone", "+7 701 123 45 67").unwrap(), ["a"]);
    assert_eq!(find(&v, "identity.email", " aigerim@EXAMPLE.kz").unwrap(), ["a"]);
    assert!(matches!(find(&v, "identity.full_name", "N"), Err(VaultError::Invalid(error::Invalid::NotIndexed { .. }))));
    assert!(matches!(find(&v, "identity.iin", "900101300011"), Err(VaultError::Invalid(error::Invalid::Schema(_)))));
    assert!(matches!(find(&v, "nope", "x"), Err(VaultError::Invalid(_))));
    let web = ctx(Role::Website);
    assert!(matches!(v.lookup(&web, "identity.iin", &json!(IIN), "loan_issuance"), Err(VaultError::Denied(_))));
    let marketing = caller("m", Role::Service, &["advertising"]);
    let e = v.lookup(&marketing, "identity.iin", &json!(IIN), "advertising").unwrap_err();
    assert!(matches!(e, VaultError::Denied(crate::policy::Denial::FieldNotAllowed { .. })), "{e:?}");
    assert!(matches!(v.lookup(&marketing, "identity.iin", &json!(IIN), "loan_issuance"), Err(VaultError::Denied(_))));
    // A purpose whose basis does not hold for the subject names no one.
    let monitoring = caller("mon", Role::Service, &["loan_monitoring"]);
    assert_eq!(v.lookup(&monitoring, "identity.phone", &json!("+77011234567"), "loan_monitoring").unwrap(), Vec::<String>::new());
    v.close();
}

#[test]
fn an_indexed_value_whose_retention_passes_is_no_longer_found() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).ok();
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let cookie = FieldName::parse("technical.cookie_id").unwrap();
    let settings = Settings {
        indexes: vec![IndexedField { field: cookie, unique: false }],
        write_grants: [("t".to_string(), vec!["identity.*".to_string(), "technical.*".to_string()])].into(),
        ..Settings::new(dir.path().join("data"))
    };
    let clock = crate::domain::ManualClock::new(time::macros::datetime!(2026-12-01 0:00 UTC));
    let v = Vault::open(settings, root, Arc::new(clock.clone()), Arc::default()).unwrap();
    let fields = [("technical.cookie_id".to_string(), json!("ck-123")), ("identity.full_name".to_string(), json!("N"))].into();
    v.put_fields(Mode::Wait, &ctx(Role::Service), &SubjectId::parse("t").unwrap(), &fields).wait().unwrap();
    let find = || v.lookup(&caller("t", Role::Service, &["loan_issuance"]), "technical.cookie_id", &json!("ck-123"), "loan_issuance");
    // loan_issuance does not read technical data: a lookup by it is refused.
    assert!(matches!(find(), Err(VaultError::Denied(_))));
    assert_eq!(entry_generations(&v), [1].into());
    clock.advance(time::Duration::days(91));
    assert_eq!(v.sweep_expired().unwrap(), 1);
    assert!(entry_generations(&v).is_empty(), "the expired value's entry went with its record");
    assert!(v.own_fields("t").unwrap().is_empty());
    v.close();
}

#[test]
fn a_field_indexed_again_after_a_while_unindexed_drops_its_stale_entries() {
    let dir = tempfile::tempdir().unwrap();
    let phone = |v: &Vault, value: &str| {
        let fields = [("identity.phone".to_string(), json!(value))].into();
        v.put_fields(Mode::Wait, &ctx(Role::Service), &SubjectId::parse("p").unwrap(), &fields).wait().unwrap();
    };
    let reopen = |indexes| {
        let v = open(dir.path(), indexes);
        v.run_index_build().unwrap();
        v
    };
    let v = reopen(default_indexes());
    phone(&v, "+77010000001");
    v.close();
    drop(v);
    // Unindexed for a while: a write then changes the value, and no entry follows it.
    let v = reopen(default_indexes().into_iter().filter(|i| i.field.as_str() != "identity.phone").collect());
    phone(&v, "+77010000002");
    v.close();
    drop(v);
    let v = reopen(default_indexes());
    assert_eq!(find(&v, "identity.phone", "+77010000002").unwrap(), ["p"]);
    assert_eq!(find(&v, "identity.phone", "+77010000001").unwrap(), Vec::<String>::new(), "the stale entry is gone");
    v.close();
}
