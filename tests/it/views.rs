//! Issue #25, masked views: a purpose that lists `identity.iin:last4` reads the IIN only as
//! `********0017`, under its plain name, whatever `fields=` asks; a disclosure under such a
//! purpose discloses the masked value; the audit trail names the view.

use qoima::auth::token_digest;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// The whole values of [`application`] that a view hides.
const WHOLE: [&str; 3] = ["900101300017", "+77011234567", "1990-01-01"];

/// An application with the IIN these tests mask (each test stores one subject).
fn with_whole_iin(mut fields: Value) -> Value {
    fields["identity.iin"] = json!(WHOLE[0]);
    fields
}

/// A service caller granted `purposes`, beside the test app's own.
fn caller(name: &str, purposes: &[&str]) -> String {
    let p: Vec<String> = purposes.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"service\"]\npurposes = [{}]\n",
        hex::encode(token_digest(&token(name))),
        p.join(", ")
    )
}

async fn read_entries(app: &TestApp, subject: &str, action: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit?subject={subject}&limit=1000"), "auditor").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == action).cloned().collect()
}

fn assert_no_whole_value(body: &Value, case: &str) {
    let text = body.to_string();
    for whole in WHOLE {
        assert!(!text.contains(whole), "{case}: the whole value {whole} is out: {text}");
    }
}

#[tokio::test]
async fn the_call_centre_reads_masked_values_under_plain_names_and_the_trail_names_the_view() {
    let app = spawn_with(&caller("svc-desk", &["call_centre"]), None).await;
    assert_eq!(app.put_fields("v-1", with_whole_iin(application("VIEWS"))).await.status, StatusCode::CREATED);
    // Its basis is an open contract, as loan_monitoring's.
    let r = app.read("v-1", "svc-desk", "call_centre").await;
    assert_eq!((r.status, r.body["type"].as_str()), (StatusCode::FORBIDDEN, Some("urn:qoima:problem:basis-missing")), "{:?}", r.body);
    assert_eq!(app.open_contract("v-1", "L-1").await.status, StatusCode::CREATED);

    let masked = json!({
        "identity.full_name": "Aigerim VIEWS",
        "identity.iin": "********0017",
        "identity.phone": "********4567",
        "identity.birth_date": "1990",
        "contract.offer_id": "OF-1",
        "contract.amount": 150000,
        "contract.offer_sent_at": "2026-11-01T09:30:00+05:00",
    });
    // Twice: the second read is answered from the subject cache.
    for _ in 0..2 {
        let r = app.read("v-1", "svc-desk", "call_centre").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["fields"], masked);
        assert_no_whole_value(&r.body, "the call centre's read");
    }
    // Asking for the field by its plain name does not unmask it; asking for what the purpose
    // does not read at all returns nothing of it.
    for (fields, want) in [
        ("identity.iin", json!({"identity.iin": "********0017"})),
        ("identity.iin,identity.phone,identity.email", json!({"identity.iin": "********0017", "identity.phone": "********4567"})),
        ("identity.birth_date", json!({"identity.birth_date": "1990"})),
        ("identity.email,questionnaire.monthly_income", json!({})),
    ] {
        let r = app.get(&format!("/v1/subjects/v-1?purpose=call_centre&fields={fields}"), "svc-desk").await;
        assert_eq!(r.status, StatusCode::OK, "{fields}: {:?}", r.body);
        assert_eq!(r.body["fields"], want, "{fields}");
        assert_no_whole_value(&r.body, fields);
    }

    // The trail records what was seen: the view, not the plain name.
    let reads = read_entries(&app, "v-1", "subject.read").await;
    let fields_of = |e: &Value| e["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let allowed: Vec<Vec<String>> = reads.iter().filter(|e| e["decision"] == "allow").map(fields_of).collect();
    let whole_read = [
        "contract.amount",
        "contract.offer_id",
        "contract.offer_sent_at",
        "identity.birth_date:year",
        "identity.full_name",
        "identity.iin:last4",
        "identity.phone:last4",
    ];
    assert_eq!(allowed[0], whole_read);
    assert_eq!(allowed[1], whole_read);
    assert_eq!(allowed[2], ["identity.iin:last4"]);
    assert_eq!(allowed[3], ["identity.iin:last4", "identity.phone:last4"]);
    assert_eq!(allowed[4], ["identity.birth_date:year"]);
    assert!(allowed[5].is_empty());
    assert!(reads.iter().all(|e| e["caller"] == "svc-desk" && e["purpose"] == "call_centre"));
    assert_no_whole_value(&Value::Array(reads), "the trail");

    // A purpose granted the field in full still reads it whole, and is audited by plain name.
    let r = app.read("v-1", "svc-issuance", "loan_issuance").await;
    assert_eq!(
        (r.body["fields"]["identity.iin"].as_str(), r.body["fields"]["identity.birth_date"].as_str()),
        (Some(WHOLE[0]), Some(WHOLE[2]))
    );
    let r = app.get("/v1/subjects/v-1?purpose=loan_monitoring&fields=identity.phone", "svc-monitoring").await;
    assert_eq!(r.body["fields"], json!({"identity.phone": WHOLE[1]}));
    let last = read_entries(&app, "v-1", "subject.read").await.pop().unwrap();
    assert_eq!(last["fields"], json!(["identity.phone"]));
    // The borrower's own export shows the whole values: a view narrows a purpose, not the data.
    let export = app.get("/v1/subjects/v-1/export", "website").await;
    assert_eq!(export.body["fields"]["identity.iin"], WHOLE[0]);
    // The access summary lists the views as the trail does, and the chain holds.
    let desk = export.body["access"].as_array().unwrap().iter().find(|a| a["caller"] == "svc-desk").expect("summarised").clone();
    assert_eq!(desk["fields"], json!(whole_read));
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test]
async fn a_disclosure_of_a_field_the_transfer_purpose_has_only_as_a_view_discloses_it_masked() {
    let transfer = "[[purposes]]\nname = \"third_party_transfer\"\nbasis = \"consent_obligation_or_breach\"\n\
                    fields = [\"identity.full_name\", \"identity.iin:last4\", \"identity.birth_date:year\", \"contract.*\"]\n";
    let app = spawn_with(transfer, None).await;
    assert_eq!(app.put_fields("v-d", with_whole_iin(application("DISCLOSE"))).await.status, StatusCode::CREATED);
    let disclose = |fields: Value| {
        app.call(
            Method::POST,
            "/v1/subjects/v-d/disclosures",
            Some("svc-transfer"),
            Some(
                json!({"recipient": "First Credit Bureau", "basis": "legal_obligation", "reference": "Law 94-V art. 9", "fields": fields}),
            ),
        )
    };
    let r = disclose(json!(["identity.full_name", "identity.iin", "identity.birth_date"])).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body["fields"],
        json!({"identity.full_name": "Aigerim DISCLOSE", "identity.iin": "********0017", "identity.birth_date": "1990"})
    );
    let named = json!(["identity.birth_date:year", "identity.full_name", "identity.iin:last4"]);
    assert_eq!(r.body["disclosure"]["fields"], named, "the record says what was disclosed");
    assert_no_whole_value(&r.body, "the disclosure");
    let entries = read_entries(&app, "v-d", "subject.disclose").await;
    assert_eq!((entries.len(), &entries[0]["decision"], &entries[0]["fields"]), (1, &json!("allow"), &named));
    assert_no_whole_value(&Value::Array(entries), "the disclosure's entry");
    let export = app.get("/v1/subjects/v-d/export", "website").await;
    assert_eq!(export.body["disclosures"][0]["fields"], named);
    // A field the purpose does not read at all is refused as before.
    let r = disclose(json!(["identity.phone"])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    // A read under the same purpose is masked the same way.
    assert_eq!(app.open_contract("v-d", "L-1").await.status, StatusCode::CREATED);
    assert_eq!(app.set_contract("v-d", "L-1", "breached").await.status, StatusCode::OK);
    let r = app.get("/v1/subjects/v-d?purpose=third_party_transfer&fields=identity.iin", "svc-transfer").await;
    assert_eq!(r.body["fields"], json!({"identity.iin": "********0017"}));
}

#[tokio::test]
async fn a_configured_view_that_does_not_fit_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (fields, says) in [
        ("\"identity.iin:first4\"", "unknown view `first4`"),
        ("\"identity.*:last4\"", "not to a whole category"),
        ("\"identity.phone:year\"", "date and timestamp fields"),
        ("\"questionnaire.monthly_income:last4\"", "not to number or integer fields"),
    ] {
        let text = config_text(dir.path(), &format!("[[purposes]]\nname = \"desk\"\nbasis = \"consent\"\nfields = [{fields}]\n"));
        let path = dir.path().join("qoima.toml");
        std::fs::write(&path, text).unwrap();
        let e = qoima::config::Config::load(&path, &|_| None).unwrap_err().to_string();
        assert!(e.contains("purpose desk names") && e.contains(says) && !e.contains('\n'), "{fields}: {e}");
    }
}
