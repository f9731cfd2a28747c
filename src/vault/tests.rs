//! Unit tests of the core that need a real store but no HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::domain::{Purpose, Role, SystemClock};

fn vault(dir: &std::path::Path, faults: Arc<FaultSwitch>) -> Vault {
    qoima_keys::RootKey::generate_file(&dir.join("root.key")).ok();
    let root = qoima_keys::RootKeySource::File(dir.join("root.key")).load().unwrap();
    Vault::open(Settings::new(dir.join("data")), root, Arc::new(SystemClock), faults).unwrap()
}

fn ctx(role: Role) -> Ctx {
    Ctx {
        caller: Caller {
            name: CallerName::parse("t").unwrap(),
            roles: [role].into(),
            purposes: [Purpose::parse("loan_issuance").unwrap()].into(),
        },
        request_id: RequestId::generate(),
        via: None,
    }
}

fn put(v: &Vault, s: &str) {
    let fields: BTreeMap<String, serde_json::Value> = [("identity.full_name".to_string(), json!("N"))].into();
    v.put_fields(&ctx(Role::Service), &SubjectId::parse(s).unwrap(), &fields).unwrap();
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
