//! What the audit tests share: a draft, a populated log, and a way to edit a stored entry.

use std::sync::Arc;

use super::{AuditEntry, AuditLog, Decision, Draft};
use crate::domain::SystemClock;
use crate::layout;
use crate::store::{Batch, Space, Store};

pub(super) fn draft(subject: &str, reason: &str) -> Draft {
    Draft {
        caller: "svc".into(),
        action: "subject.read".into(),
        subject: Some(subject.into()),
        purpose: Some("loan_issuance".into()),
        fields: vec!["identity.phone".into()],
        decision: Decision::Allow,
        reason: reason.into(),
        request_id: "r".into(),
        client_request_id: None,
        ..Default::default()
    }
}

pub(super) fn log_with(n: usize) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), super::summary::merge).unwrap());
    let log = AuditLog::start(store.clone(), Arc::new(SystemClock), Arc::default(), Default::default()).unwrap();
    std::thread::scope(|s| {
        for i in 0..n {
            let log = &log;
            s.spawn(move || log.record(draft(&format!("s{}", i % 3), &format!("r{i}"))).unwrap());
        }
    });
    log.shutdown();
    (dir, store)
}

pub(super) fn tamper(store: &Store, seq: u64, f: impl FnOnce(&mut AuditEntry)) {
    let mut e: AuditEntry = serde_json::from_slice(&store.get(Space::Audit, &layout::audit_entry(seq)).unwrap().unwrap()).unwrap();
    f(&mut e);
    let mut b = Batch::default();
    b.put(Space::Audit, layout::audit_entry(seq), serde_json::to_vec(&e).unwrap());
    store.write(&b).unwrap();
}
