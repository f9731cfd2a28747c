//! Issue #8: the typed Rust client (`qoima::client`) against the real server: the same flows
//! a lending service runs, with errors as typed problems.

use qoima::client::{Client, ConsentBody, DisclosureBasis, DisclosureBody};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_lending_service_flow_through_the_typed_client() {
    let app = spawn_app().await;
    let svc = Client::new(&app.addr, &token("svc-all"));
    let web = Client::new(&app.addr, &token("website"));
    let sec = Client::new(&app.addr, &token("security"));
    let aud = Client::new(&app.addr, &token("auditor"));

    let w = svc.put_fields("cl-1", [("identity.full_name", json!("Aigerim")), ("identity.phone", json!("+77011234567"))]).await.unwrap();
    assert!(w.created && w.version == 1);
    assert!(w.missing_mandatory.contains(&"identity.iin".to_string()));
    let r = svc.read("cl-1", "loan_issuance", Some(&["identity.phone"])).await.unwrap();
    assert_eq!(r.fields["identity.phone"], "+77011234567");

    let e = svc.read("cl-1", "advertising", None).await.unwrap_err();
    assert_eq!((e.status(), e.slug()), (Some(403), Some("basis-missing")));
    assert!(!e.retryable());
    let consent = ConsentBody {
        purpose: "advertising".into(),
        policy_version: Some("2019-01-29".into()),
        valid_until: None,
        third_parties: None,
        abroad: false,
    };
    assert_eq!(web.give_consent("cl-1", &consent).await.unwrap().policy_version, "2019-01-29");
    assert_eq!(svc.read("cl-1", "advertising", None).await.unwrap().fields.len(), 2);
    web.withdraw_consent("cl-1", "advertising").await.unwrap();
    assert_eq!(svc.read("cl-1", "advertising", None).await.unwrap_err().slug(), Some("basis-missing"));

    svc.open_contract("cl-1", "L-1").await.unwrap();
    let d = DisclosureBody {
        recipient: "Court of Astana".into(),
        basis: DisclosureBasis::LegalObligation,
        reference: Some("Civil Procedure Code art. 73".into()),
        fields: vec!["identity.full_name".into()],
        abroad: false,
    };
    assert_eq!(svc.disclose("cl-1", &d).await.unwrap().fields["identity.full_name"], "Aigerim");
    let pending = web.request_erasure("cl-1").await.unwrap();
    assert_eq!((pending.status.as_str(), pending.held_by.clone()), ("pending", vec!["L-1".to_string()]));
    let exported = web.export("cl-1").await.unwrap();
    assert_eq!(exported.disclosures.len(), 1);
    let settled = svc.set_contract("cl-1", "L-1", "settled").await.unwrap();
    assert_eq!(settled.erasure.unwrap().status, "erased");
    let gone = svc.read("cl-1", "loan_issuance", None).await.unwrap_err();
    assert_eq!((gone.status(), gone.slug()), (Some(410), Some("erased")));
    assert!(matches!(&gone, qoima::client::ClientError::Problem(p) if p.receipt.as_deref() == Some(pending.receipt.as_str())));

    assert_eq!(sec.rotate().await.unwrap().generation, 2);
    sec.start_rewrap().await.unwrap();
    for _ in 0..100 {
        if sec.rewrap_progress().await.unwrap().state == "complete" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sec.destroy_generation(1).await.unwrap();
    assert_eq!(sec.keys().await.unwrap().generations[0].state, "destroyed");
    let conflict = sec.destroy_generation(2).await.unwrap_err();
    assert_eq!((conflict.status(), conflict.slug()), (Some(409), Some("conflict")));

    assert!(aud.audit_verify().await.unwrap().ok);
    assert!(aud.audit(Some("cl-1"), 0, 100).await.unwrap().entries.len() >= 10);

    // A 503 is typed as retryable: nothing was done, the same call may be sent again.
    app.faults.set(true);
    let e = svc.put_fields("cl-2", [("identity.full_name", json!("X"))]).await.unwrap_err();
    assert!(e.retryable() && e.status() == Some(503));
    app.faults.set(false);
    assert!(svc.put_fields("cl-2", [("identity.full_name", json!("X"))]).await.unwrap().created);
}

/// A 429 reaches the client typed: retryable, with the wait the vault asked for.
#[tokio::test]
async fn a_rate_limited_read_is_retryable_after_the_wait_the_vault_names() {
    let app = spawn_with(&limited_caller(1), Some(qoima::domain::ManualClock::new(now()))).await;
    app.put_fields("cl-1", application("CLIENTMARK")).await;
    let svc = Client::new(&app.addr, &token("svc-limited"));
    svc.read("cl-1", "loan_issuance", None).await.unwrap();
    let e = svc.read("cl-1", "loan_issuance", None).await.unwrap_err();
    assert_eq!((e.status(), e.slug()), (Some(429), Some("rate-limited")));
    assert!(e.retryable());
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(60)));
    app.advance(time::Duration::seconds(60));
    svc.read("cl-1", "loan_issuance", None).await.unwrap();
}
