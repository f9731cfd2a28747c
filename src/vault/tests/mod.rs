//! Unit tests of the core that need a real store but no HTTP, by concern: the two modes of
//! the read and write paths, the subject cache's coherence, erasures; the shared helpers here.

mod erasure;
mod index;
mod modes;
mod subject_cache;

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

/// A write in [`Mode::NoWait`], as the server tries it first: `None` if it would block.
fn try_put_now(v: &Vault, c: &Ctx, s: &str, fields: &BTreeMap<String, serde_json::Value>) -> Option<Result<WriteOutcome, VaultError>> {
    let answer = v.put_fields(Mode::NoWait, c, &SubjectId::parse(s).unwrap(), fields);
    (!answer.would_block()).then(|| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(answer.durable()))
}

/// [`try_put_now`] of the subject's name, a write that is allowed if it does not block.
fn put_now(v: &Vault, c: &Ctx, s: &str, value: &str) -> Option<WriteOutcome> {
    try_put_now(v, c, s, &full_name(value)).map(Result::unwrap)
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
