//! Erasure cost against the size of the subject (issue #4): a subject with 10 fields and one
//! with 10,000 fields, each crypto-shredded (batch + DEK purge + flush + forced compaction of
//! its ranges). The target: the large one within 2× of the small one. Figures in
//! docs/performance.md.
//!
//! Run: `cargo bench --bench erasure`

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use qoima::domain::{CallerName, RequestId, Role, SubjectId, SystemClock};
use qoima::policy::Caller;
use qoima::vault::{Ctx, Mode, Settings, Vault};
use serde_json::{json, Value};

fn ctx(role: Role) -> Ctx {
    Ctx {
        caller: Caller { name: CallerName::parse("bench").unwrap(), roles: [role].into(), purposes: Default::default() }.into(),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let mut settings = Settings::new(dir.path().join("data"));
    settings.schema.categories.insert(
        "survey".into(),
        qoima::schema::Category {
            retention_days: None,
            application: true,
            open: Some(qoima::schema::FieldType::Text),
            fields: Default::default(),
        },
    );
    settings.write_grants.insert("bench".into(), vec!["identity.*".into(), "survey.*".into()]);
    let vault = Vault::open(settings, root, Arc::new(SystemClock), Default::default()).unwrap();
    let (svc, web) = (ctx(Role::Service), ctx(Role::Website));
    // Other subjects around it, as in a real store: 20,000 with 1 KiB of fields each.
    let filler = "x".repeat(1000);
    std::thread::scope(|s| {
        for t in 0..16 {
            let (vault, svc, filler) = (&vault, &svc, &filler);
            s.spawn(move || {
                for i in (t..20_000).step_by(16) {
                    let fields: BTreeMap<String, Value> =
                        [("identity.full_name".to_string(), json!(format!("Neighbour {i} {filler}")))].into();
                    vault.put_fields(Mode::Wait, svc, &SubjectId::parse(&format!("n-{i}")).unwrap(), &fields).wait().unwrap();
                }
            });
        }
    });
    let mut group = c.benchmark_group("erasure");
    group.sample_size(10);
    let mut next = 0u64;
    for n in [10usize, 10_000] {
        group.bench_function(BenchmarkId::new("fields", n), |b| {
            b.iter_batched(
                || {
                    next += 1;
                    let id = SubjectId::parse(&format!("s-{n}-{next}")).unwrap();
                    for chunk in (0..n).collect::<Vec<_>>().chunks(2_500) {
                        let fields: BTreeMap<String, Value> =
                            chunk.iter().map(|i| (format!("survey.q{i:05}"), json!(format!("answer {i}")))).collect();
                        vault.put_fields(Mode::Wait, &svc, &id, &fields).wait().unwrap();
                    }
                    id
                },
                |id| vault.request_erasure(&web, &id).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    vault.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
