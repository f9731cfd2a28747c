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

/// Issue #25: a lending service finds a borrower by IIN, phone or email through the typed
/// client — normalised as the schema parses them, erased subjects never matching — and a PUT
/// or rectify giving a unique value to a second subject comes back as `UniqueConflict`.
#[tokio::test]
async fn a_lookup_finds_the_borrower_and_a_second_subject_with_the_same_iin_is_a_typed_conflict() {
    use qoima::client::ClientError;
    let app = spawn_app().await;
    let svc = Client::new(&app.addr, &token("svc-all"));
    let web = Client::new(&app.addr, &token("website"));
    let aud = Client::new(&app.addr, &token("auditor"));
    let (iin, other_iin) = ("900101300017", "850312400019");
    assert!(qoima::schema::iin_is_valid(other_iin));
    let fields = [
        ("identity.full_name", json!("Aigerim")),
        ("identity.iin", json!(iin)),
        ("identity.phone", json!("+77011234567")),
        ("identity.email", json!("aigerim@example.kz")),
    ];
    assert!(svc.put_fields("cl-l1", fields).await.unwrap().created);

    assert_eq!(svc.lookup("identity.iin", iin, "loan_issuance").await.unwrap(), ["cl-l1"]);
    // Normalised before the index is consulted: spaces in a phone, case and blanks in an email.
    assert_eq!(svc.lookup("identity.phone", "+7 701 123 45 67", "loan_issuance").await.unwrap(), ["cl-l1"]);
    assert_eq!(svc.lookup("identity.email", " Aigerim@Example.KZ ", "loan_issuance").await.unwrap(), ["cl-l1"]);
    // No match is an answer, not an error.
    assert_eq!(svc.lookup("identity.iin", other_iin, "loan_issuance").await.unwrap(), Vec::<String>::new());

    // A field that is not indexed, or a value that fails its check: 400, and the value is in
    // no error message.
    let e = svc.lookup("identity.full_name", "Aigerim", "loan_issuance").await.unwrap_err();
    assert_eq!((e.status(), e.slug()), (Some(400), Some("invalid-request")));
    let e = svc.lookup("identity.iin", "900101300011", "loan_issuance").await.unwrap_err();
    assert_eq!((e.status(), e.slug()), (Some(400), Some("invalid-request")));
    assert!(!e.to_string().contains("900101300011") && !format!("{e:?}").contains("900101300011"), "{e}");
    // As for a read: a purpose not granted, or one that does not allow the field, is 403.
    let marketing = Client::new(&app.addr, &token("svc-marketing"));
    assert_eq!(marketing.lookup("identity.iin", iin, "loan_issuance").await.unwrap_err().status(), Some(403));
    assert_eq!(marketing.lookup("identity.iin", iin, "advertising").await.unwrap_err().status(), Some(403));
    // Only a service looks subjects up.
    assert_eq!(web.lookup("identity.iin", iin, "loan_issuance").await.unwrap_err().status(), Some(403));

    // A second subject with the same IIN: a typed conflict naming the field, nothing stored.
    let e = svc.put_fields("cl-l2", [("identity.full_name", json!("Other")), ("identity.iin", json!(iin))]).await.unwrap_err();
    assert!(matches!(&e, ClientError::UniqueConflict { field: Some(f), .. } if f == "identity.iin"), "{e:?}");
    assert_eq!((e.status(), e.slug()), (Some(409), Some("conflict")));
    assert!(!e.retryable());
    assert!(!e.problem().unwrap().detail.contains("cl-l1"), "the other subject is not named: {e}");
    assert_eq!(svc.read("cl-l2", "loan_issuance", None).await.unwrap_err().status(), Some(404));
    // The same through a rectify, of a subject that exists.
    svc.put_fields("cl-l3", [("identity.full_name", json!("Third")), ("identity.iin", json!(other_iin))]).await.unwrap();
    let e = web.rectify("cl-l3", [("identity.iin".to_string(), json!(iin))].into()).await.unwrap_err();
    assert!(matches!(&e, ClientError::UniqueConflict { field: Some(f), .. } if f == "identity.iin"), "{e:?}");
    assert_eq!(svc.lookup("identity.iin", other_iin, "loan_issuance").await.unwrap(), ["cl-l3"]);
    // Phone and email are indexed, not unique: a second subject may share them.
    svc.put_fields("cl-l3", [("identity.phone", json!("+77011234567"))]).await.unwrap();
    let mut both = svc.lookup("identity.phone", "+77011234567", "loan_issuance").await.unwrap();
    both.sort();
    assert_eq!(both, ["cl-l1", "cl-l3"]);
    // Other 409s stay plain problems.
    svc.open_contract("cl-l3", "L-1").await.unwrap();
    assert!(matches!(svc.open_contract("cl-l3", "L-1").await.unwrap_err(), ClientError::Problem(p) if p.status == 409));

    // Erased subjects never match, and their IIN is free for a new subject.
    assert_eq!(web.request_erasure("cl-l1").await.unwrap().status, "erased");
    assert_eq!(svc.lookup("identity.iin", iin, "loan_issuance").await.unwrap(), Vec::<String>::new());
    assert!(svc.put_fields("cl-l4", [("identity.full_name", json!("Returning")), ("identity.iin", json!(iin))]).await.unwrap().created);
    assert_eq!(svc.lookup("identity.iin", iin, "loan_issuance").await.unwrap(), ["cl-l4"]);

    // Audited as subject.lookup with the field and purpose; no entry holds a value looked up.
    let entries = aud.audit(None, 0, 1000).await.unwrap().entries;
    let lookups: Vec<_> = entries.iter().filter(|e| e.action == "subject.lookup").collect();
    assert!(lookups.len() >= 6, "{lookups:?}");
    assert!(lookups.iter().any(|e| e.purpose.as_deref() == Some("loan_issuance") && e.fields.iter().any(|f| f == "identity.iin")));
    let text = serde_json::to_string(&entries).unwrap();
    for value in [iin, other_iin, "900101300011", "+7 701 123 45 67", "Aigerim@Example.KZ"] {
        assert!(!text.contains(value), "the audit trail holds a looked-up value");
    }
}

/// A lookup while the vault is still building its index answers 503 with `Retry-After`: the
/// client waits that long and asks again. The value travels in the body only (not in the
/// URL) and, the lookup being a read, without an idempotency key. Against a stand-in for the
/// vault, so this holds whatever the server does.
#[tokio::test]
async fn a_lookup_waits_out_a_503_with_retry_after_and_sends_its_value_only_in_the_body() {
    use axum::http::{HeaderMap, StatusCode, Uri};
    use std::sync::{Arc, Mutex};
    type Seen = (String, Option<String>, Option<String>, serde_json::Value);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let mut log = log.lock().unwrap();
            log.push((uri.to_string(), header("idempotency-key"), header("x-request-id"), serde_json::from_slice(&body).unwrap()));
            // The first request of each pair: still indexing.
            if log.len() % 2 == 1 {
                let problem = json!({"type": "urn:qoima:problem:index-building", "title": "Service Unavailable", "status": 503,
                    "detail": "the index of identity.iin is still being built; retry in 1 s"});
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "application/problem+json"), ("retry-after", "1")],
                    problem.to_string(),
                );
            }
            let answer = json!({"field": "identity.iin", "purpose": "loan_issuance", "subjects": ["borrower-0001"]});
            (StatusCode::OK, [("content-type", "application/json"), ("cache-control", "no-store")], answer.to_string())
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { axum::serve(listener, axum::Router::new().route("/v1/lookup", axum::routing::post(handler))).await.unwrap() },
    );

    let svc = Client::new(&addr, "qv1_stand-in");
    let started = std::time::Instant::now();
    assert_eq!(svc.lookup("identity.iin", "900101300017", "loan_issuance").await.unwrap(), ["borrower-0001"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "waited the Retry-After");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (uri, key, _, body) in &seen {
        assert_eq!(uri, "/v1/lookup", "nothing in the URL");
        assert_eq!(key, &None, "a lookup is a read: no idempotency key");
        assert_eq!(body, &json!({"field": "identity.iin", "value": "900101300017", "purpose": "loan_issuance"}));
    }
    assert!(seen[0].2.is_some() && seen[0].2 == seen[1].2, "one request id for the call and its retry");

    // Once the attempts run out, the 503 reaches the caller typed, with the vault's wait.
    let once = Client::new(&addr, "qv1_stand-in").with_retry(qoima::client::Retry { attempts: 1, ..Default::default() });
    let e = once.lookup("identity.iin", "900101300017", "loan_issuance").await.unwrap_err();
    assert_eq!((e.status(), e.slug(), e.retry_after()), (Some(503), Some("index-building"), Some(std::time::Duration::from_secs(1))));
    assert!(e.retryable() && !e.to_string().contains("900101300017"), "{e}");
}
