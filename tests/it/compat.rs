//! The on-disk format does not change under anyone's feet: a vault directory written by an
//! older binary (`tests/fixtures/format-1.tar.gz`, made by `tests/fixtures/make-format-1.sh`
//! with the binary of the commit in its `WRITTEN-BY`) opens with today's code and answers as
//! it did: values, rectifications, consents, contracts, disclosures, an erasure, two KEK
//! generations and the audit chain. Issue #24 ("must not change: the on-disk format").

use std::process::Command;

use qoima::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format-1.tar.gz");

/// The fixture unpacked into a fresh directory, served with the test configuration.
async fn open_fixture() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("tar").args(["-xzf", FIXTURE, "-C"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let path = dir.path().join("qoima.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let config = Config::load(&path, &|_| None).expect("test config parses");
    start(dir, config, None).await
}

#[tokio::test]
async fn a_vault_written_by_an_older_binary_opens_and_answers_as_it_did() {
    if rocksdb_only("the fixture is a RocksDB data directory written by an older binary") {
        return;
    }
    let app = open_fixture().await;

    let fx1 = app.read("fx-1", "svc-all", "loan_issuance").await;
    assert_eq!(fx1.status, StatusCode::OK, "{:?}", fx1.body);
    assert_eq!(fx1.body["fields"]["identity.full_name"], "Aigerim FX1");
    assert_eq!(fx1.body["fields"]["identity.phone"], "+77017654321", "the rectified value");
    assert_eq!(fx1.body["fields"]["questionnaire.monthly_income"], 350000);
    // fx-1's open loan and consents still ground their purposes; fx-3's consent stays withdrawn.
    assert_eq!(app.read("fx-1", "svc-monitoring", "loan_monitoring").await.status, StatusCode::OK);
    assert_eq!(app.read("fx-1", "svc-marketing", "advertising").await.status, StatusCode::OK);
    assert_eq!(app.read("fx-3", "svc-marketing", "advertising").await.status, StatusCode::FORBIDDEN);
    // fx-4 was written under the second KEK generation; its loan is breached.
    let fx4 = app.read("fx-4", "svc-transfer", "third_party_transfer").await;
    assert_eq!((fx4.status, fx4.body["fields"]["identity.full_name"].as_str()), (StatusCode::OK, Some("Aigerim FX4")));
    // fx-2 stays erased, with its receipt.
    assert_eq!(app.read("fx-2", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    let erasure = app.get("/v1/subjects/fx-2/erasure", "website").await;
    assert_eq!(erasure.body["status"], "erased", "{:?}", erasure.body);
    assert!(erasure.body["receipt"].is_string());

    let export = app.get("/v1/subjects/fx-1/export", "website").await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.body["disclosures"][0]["recipient"], "First Credit Bureau");
    assert_eq!(export.body["contracts"][0]["contract"], "L-1");
    assert_eq!(export.body["consents"].as_array().unwrap().len(), 2);

    let keys = app.get("/v1/keys", "security").await;
    let gens = keys.body["generations"].as_array().unwrap();
    let states: Vec<_> =
        gens.iter().map(|g| (g["generation"].as_u64().unwrap(), g["state"].as_str().unwrap(), g["deks"].as_i64().unwrap())).collect();
    assert_eq!(states, [(1, "decrypt-only", 2), (2, "active", 1)]);

    // Issue #25: written before blind indexes, the store is indexed by a background job; until it
    // completes a lookup says so (503, Retry-After), never a silent miss. The fixture's three
    // live borrowers share one IIN: all three are found, and the duplicates reported, not dropped.
    let by_iin = json!({"field": "identity.iin", "value": "900101300017", "purpose": "loan_issuance"});
    let mut found = None;
    for _ in 0..200 {
        let r = app.call(Method::POST, "/v1/lookup", Some("svc-all"), Some(by_iin.clone())).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.headers.contains_key("retry-after") && r.body["type"] == "urn:qoima:problem:index-building", "{:?}", r.body);
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            continue;
        }
        found = Some(r);
        break;
    }
    let found = found.expect("the index build completes");
    assert_eq!(found.body["subjects"], json!(["fx-1", "fx-3", "fx-4"]), "{:?}", found.body);
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    let (ok, out) = cli_async(&["lookup", "duplicates", "--config", &cfg]).await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["identity.iin\tfx-1 fx-3", "identity.iin\tfx-1 fx-3 fx-4"], "{out}");
    assert!(!out.contains("900101300017"), "ids only: {out}");
    // The duplicates stand; a fourth holder is refused.
    let mut dup = application("FXDUP");
    dup["identity.iin"] = json!("900101300017");
    assert_eq!(app.put_fields("fx-dup", dup).await.status, StatusCode::CONFLICT);

    let verify = app.get("/v1/audit/verify", "auditor").await;
    assert_eq!(verify.body["ok"], true, "{:?}", verify.body);
    let written = verify.body["entries"].as_u64().unwrap();
    assert!(written >= 17, "the fixture's entries: {written}");

    // Today's code writes on: new subjects and facts, the chain continued and still whole.
    assert_eq!(app.put_fields("fx-5", application("FX5")).await.status, StatusCode::CREATED);
    let r = app
        .call(Method::PATCH, "/v1/subjects/fx-1/rectify", Some("website"), Some(json!({"fields": {"identity.email": "new@example.kz"}})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(app.erase("fx-3").await.body["status"], "erased");
    let app = app.restart().await;
    assert_eq!(app.read("fx-1", "svc-all", "loan_issuance").await.body["fields"]["identity.email"], "new@example.kz");
    assert_eq!(app.read("fx-3", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    let verify = app.get("/v1/audit/verify", "auditor").await;
    assert_eq!(verify.body["ok"], true, "{:?}", verify.body);
    assert!(verify.body["entries"].as_u64().unwrap() > written);
}
