//! Issue #23: what the audit trail and the borrower's access summary must hold — requests that
//! change nothing, reads that fail to open, the client's request id beside the vault's own —
//! and a summary that refusals cannot blind and erasure takes away.

use qoima::layout::{subject_key, subject_prefix};
use qoima::store::{Batch, Space};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// The subject's audit entries of `action`, oldest first.
async fn entries_of(app: &TestApp, subject: &str, action: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit?subject={subject}&limit=1000"), "auditor").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

#[tokio::test]
async fn withdrawing_a_withdrawn_consent_is_audited() {
    let app = spawn_app().await;
    app.put_fields("wc-1", application("WC")).await;
    assert_eq!(app.give_consent("wc-1", "advertising").await.status, StatusCode::CREATED);
    for _ in 0..2 {
        let r = app.call(Method::DELETE, "/v1/subjects/wc-1/consents/advertising", Some("website"), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    }
    let e = entries_of(&app, "wc-1", "consent.withdraw").await;
    assert_eq!(e.len(), 2, "every withdrawal is recorded: {e:#?}");
    assert_eq!((e[0]["reason"].as_str(), e[0]["decision"].as_str()), (Some("consent withdrawn"), Some("allow")));
    assert_eq!(e[1]["reason"], "consent already withdrawn: unchanged");
    assert_eq!((e[1]["purpose"].as_str(), e[1]["caller"].as_str()), (Some("advertising"), Some("website")));
}

#[tokio::test]
async fn setting_a_contract_to_its_current_status_is_audited() {
    let app = spawn_app().await;
    app.put_fields("cs-1", application("CS")).await;
    app.open_contract("cs-1", "L-1").await;
    for status in ["breached", "breached"] {
        let r = app.set_contract("cs-1", "L-1", status).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["status"], "breached");
    }
    let e = entries_of(&app, "cs-1", "contract.update").await;
    assert_eq!(e.len(), 2, "every update is recorded: {e:#?}");
    assert_eq!(e[0]["reason"], "contract L-1 breached");
    assert_eq!((e[1]["reason"].as_str(), e[1]["decision"].as_str()), (Some("contract L-1 already breached: unchanged"), Some("allow")));
}

#[tokio::test]
async fn a_read_that_meets_a_destroyed_key_is_audited() {
    let app = spawn_app().await;
    app.put_fields("kd-1", application("KEYGONE")).await;
    // The subject's entry as generation 1 wrapped it, as an older backup holds it.
    let old_meta = app.vault.store().get(Space::Subjects, b"kd-1").unwrap().unwrap();
    app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    app.rewrap_to_completion().await;
    assert_eq!(app.call(Method::DELETE, "/v1/keys/1", Some("security"), None).await.status, StatusCode::NO_CONTENT);
    // It comes back (a restore of that backup would bring it), its key no longer cached.
    let mut b = Batch::default();
    b.put(Space::Subjects, b"kd-1".to_vec(), old_meta);
    app.vault.store().write(&b).unwrap();
    app.vault.dek_cache().purge("kd-1");
    let r = app.read("kd-1", "svc-all", "loan_issuance").await;
    assert_eq!((r.status, r.body["type"].as_str()), (StatusCode::GONE, Some("urn:qoima:problem:key-destroyed")), "{:?}", r.body);
    let export = app.get("/v1/subjects/kd-1/export", "website").await;
    assert_eq!(export.status, StatusCode::GONE, "{:?}", export.body);
    let reads = entries_of(&app, "kd-1", "subject.read").await;
    let last = reads.last().expect("the failed read is recorded");
    assert_eq!(
        (last["decision"].as_str(), last["caller"].as_str(), last["purpose"].as_str()),
        (Some("deny"), Some("svc-all"), Some("loan_issuance"))
    );
    assert!(
        last["reason"].as_str().unwrap().contains("KEK generation 1") && last["reason"].as_str().unwrap().contains("destroyed"),
        "{last}"
    );
    let exports = entries_of(&app, "kd-1", "subject.export").await;
    assert_eq!(exports.last().map(|e| e["decision"].clone()), Some(json!("deny")), "{exports:#?}");
    assert!(!r.body.to_string().contains("KEYGONE"));
}

#[tokio::test]
async fn a_read_whose_record_does_not_open_is_audited() {
    let app = spawn_app().await;
    app.put_fields("fo-1", application("NOOPEN")).await;
    assert_eq!(app.read("fo-1", "svc-all", "loan_issuance").await.status, StatusCode::OK);
    // One ciphertext's tag damaged in the store.
    let key = subject_key("fo-1", "identity.full_name");
    let mut record = app.vault.store().get(Space::Records, &key).unwrap().unwrap();
    *record.last_mut().unwrap() ^= 0x01;
    let mut b = Batch::default();
    b.put(Space::Records, key, record);
    app.vault.store().write(&b).unwrap();
    let r = app.read("fo-1", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", r.body);
    assert!(!r.body.to_string().contains("NOOPEN"));
    let d = app
        .call(
            Method::POST,
            "/v1/subjects/fo-1/disclosures",
            Some("svc-all"),
            Some(json!({"recipient": "Bureau", "basis": "legal_obligation", "reference": "Law 94-V art. 9", "fields": ["identity.full_name"]})),
        )
        .await;
    assert_eq!(d.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", d.body);
    for action in ["subject.read", "subject.disclose"] {
        let e = entries_of(&app, "fo-1", action).await;
        let last = e.last().unwrap_or_else(|| panic!("no {action} entry"));
        assert_eq!((last["decision"].as_str(), last["caller"].as_str()), (Some("deny"), Some("svc-all")), "{action}: {last}");
        assert!(last["reason"].as_str().unwrap().contains("failed"), "{action}: {last}");
    }
    // Nothing was disclosed.
    assert!(app.get("/v1/subjects/fo-1/export", "website").await.status.is_server_error());
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test]
async fn the_access_summary_counts_accesses_only_and_goes_with_the_erasure() {
    let app = spawn_app().await;
    app.put_fields("as-1", application("SUMMARY")).await;
    app.read("as-1", "svc-issuance", "loan_issuance").await;
    // Refusals, as many as a caller likes: never an access.
    for _ in 0..25 {
        assert_eq!(app.read("as-1", "svc-marketing", "advertising").await.status, StatusCode::FORBIDDEN);
        assert_eq!(app.read("as-1", "svc-issuance", "loan_monitoring").await.status, StatusCode::FORBIDDEN);
    }
    let narrow = app.get("/v1/subjects/as-1?purpose=loan_issuance&fields=identity.phone", "svc-issuance").await;
    assert_eq!(narrow.status, StatusCode::OK, "{:?}", narrow.body);
    let e = app.get("/v1/subjects/as-1/export", "website").await;
    assert_eq!(e.status, StatusCode::OK, "{:?}", e.body);
    let access = e.body["access"].as_array().unwrap();
    assert_eq!(access.len(), 1, "{access:#?}");
    assert_eq!(
        (access[0]["caller"].as_str(), access[0]["purpose"].as_str(), access[0]["count"].as_u64()),
        (Some("svc-issuance"), Some("loan_issuance"), Some(2))
    );
    assert!(access[0]["fields"].as_array().unwrap().contains(&json!("identity.phone")));
    let recent = e.body["recent_access"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{recent:#?}");
    assert_eq!(recent[1]["fields"], json!(["identity.phone"]), "the last access in full");
    assert!(recent.iter().all(|a| a.get("seq").is_none()), "no sequence numbers for the borrower");
    assert!(!e.body["access"].to_string().contains("SUMMARY"), "names only, never values");
    // Erased with the subject: nothing of it is left in the store.
    let r = app.erase("as-1").await;
    assert!(r.status.is_success() && r.body["status"] == "erased", "{:?}", r.body);
    let mut left = 0;
    app.vault
        .store()
        .scan_prefix(Space::Access, &subject_prefix("as-1"), |_, _| {
            left += 1;
            true
        })
        .unwrap();
    assert_eq!(left, 0, "the access summary outlived the erasure");
}
