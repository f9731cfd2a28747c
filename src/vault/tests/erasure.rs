//! Erasures: journaled, purged, and never leaving a read's or disclosure's traces behind.

use super::*;

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
