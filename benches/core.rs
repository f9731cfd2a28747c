//! Micro-benchmarks of the vault's parts (issue #6): DEK unwrap, the policy decision, an audit
//! append (one durable group commit), store put (synced) and get, and a whole in-process read
//! (authorise, audit durably, decrypt) with the DEK cached and not.
//!
//! Run: `cargo bench --bench core`. Seal/open per record size is `cargo bench --bench aead`.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use qoima::audit::{AuditLog, Decision, Draft};
use qoima::domain::{CallerName, Purpose, RequestId, Role, SubjectId, SystemClock};
use qoima::policy::{self, Caller, Purposes, SubjectFacts};
use qoima::store::{Batch, Space, Store};
use qoima::vault::{Ctx, Mode, Settings, Vault};
use qoima_keys::{Dek, DekVersion, Generation, Kek};
use serde_json::{json, Value};

fn caller() -> Caller {
    Caller {
        name: CallerName::parse("bench").unwrap(),
        roles: [Role::Service].into(),
        purposes: ["loan_issuance", "advertising"].iter().map(|p| Purpose::parse(p).unwrap()).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let kek = Kek::generate(Generation(1)).unwrap();
    let dek = Dek::generate(DekVersion(1)).unwrap();
    let wrapped = kek.wrap_dek("borrower-000123", &dek).unwrap();
    c.bench_function("dek_unwrap", |b| b.iter(|| kek.unwrap_dek("borrower-000123", DekVersion(1), &wrapped).unwrap()));

    let purposes = Purposes::default();
    let p = purposes.get(&Purpose::parse("loan_issuance").unwrap()).unwrap().clone();
    let facts = SubjectFacts { has_application: true, ..Default::default() };
    let who = caller();
    let now = time::OffsetDateTime::UNIX_EPOCH;
    c.bench_function("policy_decide_read", |b| b.iter(|| policy::decide_read(&who, &p, &facts, now).unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s"), qoima::audit::summary::merge).unwrap());
    let value = vec![7u8; 1024];
    let mut i = 0u64;
    c.bench_function("store_put_1KiB_synced", |b| {
        b.iter(|| {
            i += 1;
            let mut batch = Batch::default();
            batch.put(Space::Records, i.to_be_bytes().to_vec(), value.clone());
            store.write(&batch).unwrap();
        })
    });
    c.bench_function("store_get_1KiB", |b| b.iter(|| store.get(Space::Records, &(i / 2).to_be_bytes()).unwrap().unwrap()));

    let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Default::default(), Default::default()).unwrap();
    let draft = Draft {
        caller: "bench".into(),
        action: "subject.read".into(),
        subject: Some("borrower-000123".into()),
        purpose: Some("loan_issuance".into()),
        fields: vec!["identity.full_name".into(), "identity.phone".into()],
        decision: Decision::Allow,
        reason: "application data on record".into(),
        request_id: "r".into(),
        client_request_id: None,
        ..Default::default()
    };
    c.bench_function("audit_append_durable", |b| b.iter(|| log.record(draft.clone()).unwrap()));
    log.shutdown();

    let vdir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&vdir.path().join("root.key")).unwrap();
    let root = qoima_keys::RootKeySource::File(vdir.path().join("root.key")).load().unwrap();
    let mut settings = Settings::new(vdir.path().join("data"));
    settings.dek_cache_capacity = 64; // small, so the uncached read below misses
    let vault = Vault::open(settings, root, Arc::new(SystemClock), Default::default()).unwrap();
    let ctx = Ctx { caller: caller().into(), request_id: RequestId::generate(), client_request_id: None, via: None, idempotency: None };
    let fields: BTreeMap<String, Value> = [
        ("identity.full_name", json!("Aigerim Seitkali")),
        ("identity.iin", json!("900101300017")),
        ("identity.phone", json!("+77011234567")),
        ("identity.address", json!("x".repeat(900))),
        ("questionnaire.monthly_income", json!(350000)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for n in 0..1000 {
        vault.put_fields(Mode::Wait, &ctx, &SubjectId::parse(&format!("b{n}")).unwrap(), &fields).wait().unwrap();
    }
    let hot = SubjectId::parse("b1").unwrap();
    c.bench_function("vault_read_1KiB_cached_dek", |b| {
        b.iter(|| vault.read(Mode::Wait, &ctx, &hot, "loan_issuance", None).wait().unwrap())
    });
    let mut k = 0usize;
    c.bench_function("vault_read_1KiB_uncached_dek", |b| {
        b.iter(|| {
            k = (k + 97) % 1000;
            vault.read(Mode::Wait, &ctx, &SubjectId::parse(&format!("b{k}")).unwrap(), "loan_issuance", None).wait().unwrap()
        })
    });
    vault.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
