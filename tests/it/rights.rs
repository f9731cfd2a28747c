//! Issue #4: borrowers' rights end to end: erasure held by contracts and run by itself,
//! erasure cost independent of data size, access (export), rectification, disclosures,
//! retention of technical data.

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::helpers::*;
use qoima::store::Space;

#[tokio::test]
async fn erasure_waits_for_the_last_contract_and_then_runs_by_itself() {
    let app = spawn_app().await;
    app.put_fields("p-1", application("PENDING")).await;
    app.open_contract("p-1", "L-1").await;
    app.open_contract("p-1", "L-2").await;
    app.set_contract("p-1", "L-2", "breached").await;
    let dek = wrapped_dek(&app.vault, "p-1");

    let r = app.erase("p-1").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["held_by"], json!(["L-1", "L-2"]));
    let receipt = r.body["receipt"].as_str().unwrap().to_string();
    // Idempotent: asking again answers with the same erasure.
    let again = app.erase("p-1").await;
    assert_eq!((again.status, again.body["receipt"].as_str()), (StatusCode::ACCEPTED, Some(receipt.as_str())));
    // Still readable for servicing the loan while it is held.
    assert_eq!(app.read("p-1", "svc-monitoring", "loan_monitoring").await.status, StatusCode::OK);
    // Rectification is never blocked by a hold (P6).
    let r = app
        .call(Method::PATCH, "/v1/subjects/p-1/rectify", Some("website"), Some(json!({"fields": {"identity.phone": "+77019998877"}})))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // The vault restarts in between: the pending erasure survives.
    let app = app.restart().await;
    assert_eq!(app.get("/v1/subjects/p-1/erasure", "website").await.body["status"], "pending");

    // Settling one contract is not enough; settling the last one runs the erasure.
    let r = app.set_contract("p-1", "L-1", "settled").await;
    assert_eq!(r.body["erasure"]["status"], "pending");
    let r = app.set_contract("p-1", "L-2", "settled").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["erasure"]["status"], "erased", "{:?}", r.body);
    let status = app.get("/v1/subjects/p-1/erasure", "service-is-not-a-caller").await;
    assert_eq!(status.status, StatusCode::UNAUTHORIZED);
    let status = app.get("/v1/subjects/p-1/erasure", "svc-all").await;
    assert_eq!(status.body["status"], "erased");
    assert_eq!(status.body["receipt"], receipt.as_str());
    assert!(status.body["statement"].as_str().unwrap().contains("unreadable in the live store now"));
    assert_eq!(app.read("p-1", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    assert!(files_in(&app.store_dirs(), &dek).is_empty(), "wrapped DEK left on disk");
    for space in [Space::Records, Space::Facts, Space::Disclosures] {
        assert_eq!(keys_of(&app.vault, space, "p-1"), 0, "{space:?} still holds the subject");
    }
    // Never requested: 404.
    assert_eq!(app.get("/v1/subjects/nobody/erasure", "website").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_pending_erasure_whose_hold_is_gone_runs_at_start_up() {
    use qoima::layout::contract as contract_key;
    use qoima::store::Batch;
    let app = spawn_app().await;
    app.put_fields("q-1", application("STARTUP")).await;
    app.open_contract("q-1", "L-1").await;
    assert_eq!(app.erase("q-1").await.body["status"], "pending");
    // Simulate a settle written by an older version that did not run the erasure.
    let mut c: Value = serde_json::from_slice(&app.vault.store().get(Space::Facts, &contract_key("q-1", "L-1")).unwrap().unwrap()).unwrap();
    c["status"] = json!("settled");
    let mut b = Batch::default();
    b.put(Space::Facts, contract_key("q-1", "L-1"), serde_json::to_vec(&c).unwrap());
    app.vault.store().write(&b).unwrap();
    let app = app.restart().await;
    assert_eq!(app.get("/v1/subjects/q-1/erasure", "website").await.body["status"], "erased");
    assert_eq!(app.read("q-1", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
}

async fn erase_subject_with(app: &TestApp, subject: &str, n: usize) -> Vec<u8> {
    let mut written = 0;
    while written < n {
        let mut fields = Map::new();
        for i in written..(written + 2500).min(n) {
            fields.insert(format!("survey.q{i:05}"), json!(format!("answer {i} SURVEYMARK")));
        }
        written += fields.len();
        // Written by a caller granted the survey (issue #23: a caller writes only its grant).
        let body = json!({ "fields": Value::Object(fields) });
        let r = app.call(Method::PUT, &format!("/v1/subjects/{subject}"), Some("svc-survey"), Some(body)).await;
        assert!(r.status.is_success(), "{:?}", r.body);
    }
    assert_eq!(keys_of(&app.vault, Space::Records, subject), n);
    let dek = wrapped_dek(&app.vault, subject);
    let r = app.erase(subject).await;
    assert_eq!(r.body["status"], "erased");
    assert_eq!(r.body["purge_pending"], false, "{:?}", r.body);
    assert_eq!(keys_of(&app.vault, Space::Records, subject), 0);
    dek
}

#[tokio::test]
async fn erasure_of_ten_and_ten_thousand_fields() {
    let survey_writer = format!(
        "[[callers]]\nname = \"svc-survey\"\ntoken_sha256 = \"{}\"\nroles = [\"service\"]\nwrites = [\"survey.*\"]\n",
        hex::encode(qoima::auth::token_digest(&token("svc-survey")))
    );
    let app = spawn_with(&format!("[schema.survey]\nopen = \"text\"\n{survey_writer}"), None).await;
    let small = erase_subject_with(&app, "small", 10).await;
    let large = erase_subject_with(&app, "large", 10_000).await;
    for dek in [small, large] {
        let holding = files_in(&app.store_dirs(), &dek);
        assert!(holding.is_empty(), "{holding:?}");
    }
    for s in ["small", "large"] {
        assert_eq!(app.read(s, "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    }
}

#[tokio::test]
async fn export_holds_everything_the_vault_holds() {
    let app = spawn_app().await;
    app.put_fields("e-1", application("EXPORT")).await;
    app.open_contract("e-1", "L-7").await;
    app.give_consent("e-1", "advertising").await;
    app.give_consent("e-1", "third_party_transfer").await;
    app.read("e-1", "svc-issuance", "loan_issuance").await;
    app.read("e-1", "svc-issuance", "loan_issuance").await;
    app.read("e-1", "svc-marketing", "advertising").await;
    let d = app
        .call(
            Method::POST,
            "/v1/subjects/e-1/disclosures",
            Some("svc-transfer"),
            Some(json!({"recipient": "First Credit Bureau", "basis": "consent", "fields": ["identity.full_name", "identity.iin"]})),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK, "{:?}", d.body);

    let r = app.get("/v1/subjects/e-1/export", "website").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let e = &r.body;
    assert_eq!(e["fields"]["identity.full_name"], "Aigerim EXPORT");
    assert_eq!(e["fields"].as_object().unwrap().len(), application("EXPORT").as_object().unwrap().len(), "every field, technical included");
    assert_eq!(e["contracts"][0]["contract"], "L-7");
    assert_eq!(e["contracts"][0]["status"], "open");
    let consents: Vec<&str> = e["consents"].as_array().unwrap().iter().map(|c| c["purpose"].as_str().unwrap()).collect();
    assert_eq!(consents, ["advertising", "third_party_transfer"]);
    assert!(e["consents"].as_array().unwrap().iter().all(|c| c["policy_version"] == "2019-01-29"));
    assert_eq!(e["policy_version"], "2019-01-29");
    assert_eq!(e["disclosures"][0]["recipient"], "First Credit Bureau");
    assert_eq!(e["disclosures"][0]["basis"], "consent");
    assert_eq!(e["disclosures"][0]["fields"], json!(["identity.full_name", "identity.iin"]));
    let access = e["access"].as_array().unwrap();
    let issuance = access.iter().find(|a| a["caller"] == "svc-issuance").expect("issuance reads summarised");
    assert_eq!((issuance["purpose"].as_str(), issuance["count"].as_u64()), (Some("loan_issuance"), Some(2)));
    assert!(access.iter().any(|a| a["caller"] == "svc-marketing" && a["purpose"] == "advertising"));
    assert!(access.iter().any(|a| a["caller"] == "svc-transfer" && a["action"] == "subject.disclose"));
    // Only the website may export; the export itself is audited.
    assert_eq!(app.get("/v1/subjects/e-1/export", "svc-all").await.status, StatusCode::FORBIDDEN);
    let audit = app.get("/v1/audit?subject=e-1", "auditor").await;
    assert!(audit.body["entries"].as_array().unwrap().iter().any(|x| x["action"] == "subject.export" && x["caller"] == "website"));
}

#[tokio::test]
async fn rectification_replaces_the_value_for_every_reader() {
    let app = spawn_app().await;
    app.put_fields("r-1", application("RECT")).await;
    let before = app.put_fields("r-1", json!({"identity.email": "old@example.kz"})).await.body["version"].as_u64().unwrap();
    let r = app
        .call(Method::PATCH, "/v1/subjects/r-1/rectify", Some("website"), Some(json!({"fields": {"identity.email": "new@example.kz"}})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"].as_u64().unwrap(), before + 1);
    let read = app.read("r-1", "svc-all", "loan_issuance").await;
    assert_eq!(read.body["fields"]["identity.email"], "new@example.kz");
    assert!(!read.body.to_string().contains("old@example.kz"));
    // Services cannot rectify; bad values are refused; unknown subjects are 404.
    let r =
        app.call(Method::PATCH, "/v1/subjects/r-1/rectify", Some("svc-all"), Some(json!({"fields": {"identity.email": "x@y.kz"}}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .call(Method::PATCH, "/v1/subjects/r-1/rectify", Some("website"), Some(json!({"fields": {"identity.email": "not an email"}})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r =
        app.call(Method::PATCH, "/v1/subjects/none/rectify", Some("website"), Some(json!({"fields": {"identity.email": "x@y.kz"}}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn disclosures_need_their_basis_and_are_recorded() {
    let app = spawn_app().await;
    let fields = application("DISCLOSE");
    app.put_fields("d-1", fields.clone()).await;
    let disclose = |body: Value| app.call(Method::POST, "/v1/subjects/d-1/disclosures", Some("svc-transfer"), Some(body));

    // No consent, no breach, no reference: 403 and nothing disclosed.
    for body in [
        json!({"recipient": "Bureau", "basis": "consent", "fields": ["identity.full_name"]}),
        json!({"recipient": "Bureau", "basis": "contract_breach", "fields": ["identity.full_name"]}),
        json!({"recipient": "Court", "basis": "legal_obligation", "fields": ["identity.full_name"]}),
    ] {
        let r = disclose(body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
        assert!(!r.body.to_string().contains("DISCLOSE"));
    }
    // A field the transfer purpose does not allow.
    let r =
        disclose(json!({"recipient": "Court", "basis": "legal_obligation", "reference": "Law 94-V", "fields": ["questionnaire.employer"]}))
            .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Bad basis name, no fields.
    assert_eq!(disclose(json!({"recipient": "X", "basis": "because", "fields": ["identity.iin"]})).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(disclose(json!({"recipient": "X", "basis": "consent", "fields": []})).await.status, StatusCode::BAD_REQUEST);

    // A legal obligation with its reference.
    let r = disclose(json!({"recipient": "Court of Almaty", "basis": "legal_obligation", "reference": "Civil Procedure Code art. 73", "fields": ["identity.full_name", "identity.iin"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["fields"], json!({"identity.full_name": "Aigerim DISCLOSE", "identity.iin": fields["identity.iin"]}));
    assert_eq!(r.body["disclosure"]["reference"], "Civil Procedure Code art. 73");
    // A breached contract.
    app.open_contract("d-1", "L-1").await;
    app.set_contract("d-1", "L-1", "breached").await;
    let r = disclose(json!({"recipient": "Collections LLP", "basis": "contract_breach", "fields": ["identity.phone", "contract.amount"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A consent, but not for transfer abroad.
    app.give_consent("d-1", "third_party_transfer").await;
    assert_eq!(disclose(json!({"recipient": "Bureau", "basis": "consent", "fields": ["identity.phone"]})).await.status, StatusCode::OK);
    assert_eq!(
        disclose(json!({"recipient": "Foreign Bureau", "basis": "consent", "fields": ["identity.phone"], "abroad": true})).await.status,
        StatusCode::FORBIDDEN
    );
    // A caller not granted the transfer purpose.
    let r = app
        .call(
            Method::POST,
            "/v1/subjects/d-1/disclosures",
            Some("svc-marketing"),
            Some(json!({"recipient": "X", "basis": "consent", "fields": ["identity.phone"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let export = app.get("/v1/subjects/d-1/export", "website").await;
    let bases: Vec<&str> = export.body["disclosures"].as_array().unwrap().iter().map(|d| d["basis"].as_str().unwrap()).collect();
    assert_eq!(bases, ["legal_obligation", "contract_breach", "consent"]);
    let audit = app.get("/v1/audit?subject=d-1", "auditor").await;
    let denied =
        audit.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "subject.disclose" && e["decision"] == "deny").count();
    assert_eq!(denied, 6);
}

#[tokio::test]
async fn technical_data_expires_after_its_retention() {
    let clock = qoima::domain::ManualClock::new(now());
    let app = spawn_with("", Some(clock)).await;
    app.put_fields("t-1", application("RETAIN")).await;
    app.advance(time::Duration::days(30));
    app.put_fields("t-2", json!({"identity.full_name": "T2", "technical.ip": "198.51.100.1", "technical.user_agent": "curl"})).await;
    assert_eq!(app.vault.sweep_expired().unwrap(), 0, "nothing is due yet");
    app.advance(time::Duration::days(61));
    // t-1's technical fields (written 91 days ago) are due; t-2's (61 days) are not.
    assert_eq!(app.vault.sweep_expired().unwrap(), 2);
    let r = app.read("t-1", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::OK);
    let export = app.get("/v1/subjects/t-1/export", "website").await;
    assert!(export.body["fields"].get("technical.ip").is_none());
    assert!(export.body["fields"].get("technical.access_time").is_none());
    assert_eq!(export.body["fields"]["identity.full_name"], "Aigerim RETAIN");
    // A rewrite resets the clock for that field.
    app.put_fields("t-2", json!({"technical.ip": "198.51.100.2"})).await;
    app.advance(time::Duration::days(30));
    assert_eq!(app.vault.sweep_expired().unwrap(), 1, "only t-2's user agent");
    let export = app.get("/v1/subjects/t-2/export", "website").await;
    assert_eq!(export.body["fields"]["technical.ip"], "198.51.100.2");
    assert!(export.body["fields"].get("technical.user_agent").is_none());
    let audit = app.get("/v1/audit?subject=t-2", "auditor").await;
    assert!(audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "retention.expire" && e["fields"] == json!(["technical.user_agent"])));
}

#[tokio::test]
async fn the_erasure_a_settlement_runs_carries_the_settling_request_id() {
    let app = spawn_app().await;
    app.put_fields("rid-1", application("RID")).await;
    app.open_contract("rid-1", "L-1").await;
    app.erase("rid-1").await;
    let r = app
        .client
        .patch(format!("{}/v1/subjects/rid-1/contracts/L-1", app.addr))
        .bearer_auth(token("svc-all"))
        .header("x-request-id", "settle-42")
        .json(&json!({"status": "settled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let audit = app.get("/v1/audit?subject=rid-1", "auditor").await;
    let same: Vec<&Value> = audit.body["entries"].as_array().unwrap().iter().filter(|e| e["client_request_id"] == "settle-42").collect();
    assert_eq!(same.len(), 2, "{same:?}");
    assert_eq!(same[0]["request_id"], r.headers()["x-request-id"].to_str().unwrap(), "the vault's own id, the same for both");
    assert_eq!(same[0]["request_id"], same[1]["request_id"]);
    assert!(same.iter().any(|e| e["action"] == "contract.update" && e["caller"] == "svc-all"));
    assert!(same.iter().any(|e| e["action"] == "erasure.request" && e["caller"] == "qoima"));
}
