//! Issue #23, idempotent writes: every mutating request takes an `Idempotency-Key`; a retry with
//! the same key and request gets the first answer (one effect), another request with the key is
//! 422, callers never share keys, the record survives a restart, rides in the operation's own
//! batch, holds no personal data or credential, and goes with an erasure or after 24 hours.
//! The clients (Rust and Python) send a key per call and retry 408 and 503 through a proxy that
//! loses or refuses answers.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use qoima::client::{Client, ConsentBody, Retry};
use qoima::domain::ManualClock;
use qoima::store::Space;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// `method path` as `caller`, with `Idempotency-Key: key` if given.
async fn send(app: &TestApp, method: Method, path: &str, caller: &str, key: Option<&str>, body: Option<Value>) -> Resp {
    send_to(&app.client, &app.addr, method, path, caller, key, body).await
}

async fn send_to(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    caller: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let headers: Vec<_> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    send_request(http, method, &format!("{base}{path}"), Some(caller), &headers, body).await
}

fn replayed(r: &Resp) -> bool {
    r.headers.get("idempotent-replayed").is_some_and(|v| v == "true")
}

/// The subject's audit entries with `action`, `(decision, reason)`.
async fn entries(app: &TestApp, subject: &str, action: &str) -> Vec<(String, String)> {
    let audit = app.get(&format!("/v1/audit?subject={subject}&limit=1000"), "auditor").await;
    audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| (e["decision"].as_str().unwrap().to_owned(), e["reason"].as_str().unwrap().to_owned()))
        .collect()
}

/// Keys in the idempotency space.
fn records(app: &TestApp) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    app.vault
        .store()
        .scan(Space::Idempotency, b"", b"\xff", |k, _| {
            out.push(k.to_vec());
            true
        })
        .unwrap();
    out
}

fn records_with_prefix(app: &TestApp, prefix: u8) -> usize {
    records(app).iter().filter(|k| k.first() == Some(&prefix)).count()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_answer_and_does_nothing_twice() {
    let app = spawn_app().await;
    let body = json!({ "fields": { "identity.full_name": "Aigerim" } });
    let fast = || app.vault.answer_paths().writes.in_memory.load(std::sync::atomic::Ordering::SeqCst);
    let first = send(&app, Method::PUT, "/v1/subjects/id-1", "svc-all", Some("put-1"), Some(body.clone())).await;
    assert_eq!((first.status, first.body["version"].clone(), replayed(&first)), (StatusCode::CREATED, json!(1), false));
    // On RocksDB's memory tier (PostgreSQL has none: every write is the blocking path's).
    let fast = || if on_postgres() { 1 } else { fast() };
    assert_eq!(fast(), 1, "a keyed write of a subject in memory takes the async path, its record in its batch");
    let again = send(&app, Method::PUT, "/v1/subjects/id-1", "svc-all", Some("put-1"), Some(body.clone())).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_eq!(again.body, first.body, "the same answer: created, version 1");
    assert!(replayed(&again));
    assert_eq!(fast(), 1, "a replay is the blocking path's");
    // The same body in another key order is the same request.
    let reordered: Value = serde_json::from_str(r#"{"fields":{"identity.full_name":"Aigerim"}}"#).unwrap();
    assert!(replayed(&send(&app, Method::PUT, "/v1/subjects/id-1", "svc-all", Some("put-1"), Some(reordered)).await));
    // One write happened: the next one (without a key) makes version 2.
    let next = send(&app, Method::PUT, "/v1/subjects/id-1", "svc-all", None, Some(body)).await;
    assert_eq!((next.status, next.body["version"].clone()), (StatusCode::OK, json!(2)));

    // A contract: a retry without a key would be 409 "exists"; with it, the first 201.
    let c = json!({ "contract": "L-1" });
    let opened = send(&app, Method::POST, "/v1/subjects/id-1/contracts", "svc-all", Some("open-L-1"), Some(c.clone())).await;
    assert_eq!(opened.status, StatusCode::CREATED);
    let retried = send(&app, Method::POST, "/v1/subjects/id-1/contracts", "svc-all", Some("open-L-1"), Some(c.clone())).await;
    assert_eq!((retried.status, &retried.body), (StatusCode::CREATED, &opened.body));
    assert!(replayed(&retried));
    let opens = entries(&app, "id-1", "contract.open").await;
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert_eq!(opens[0], ("allow".into(), "contract L-1 opened".into()), "one contract opened");
    assert_eq!(opens[1].0, "allow");
    assert!(opens[1].1.starts_with("replayed the answer of request "), "the retry is audited as a replay: {opens:?}");
    assert_eq!(send(&app, Method::POST, "/v1/subjects/id-1/contracts", "svc-all", None, Some(c)).await.status, StatusCode::CONFLICT);

    // Operations without a body, and those answering 204, replay too.
    assert_eq!(app.give_consent("id-1", "advertising").await.status, StatusCode::CREATED);
    let path = "/v1/subjects/id-1/consents/advertising";
    let w1 = send(&app, Method::DELETE, path, "website", Some("withdraw-1"), None).await;
    let w2 = send(&app, Method::DELETE, path, "website", Some("withdraw-1"), None).await;
    assert_eq!((w1.status, replayed(&w1), w2.status, replayed(&w2)), (StatusCode::NO_CONTENT, false, StatusCode::NO_CONTENT, true));
    let rk1 = send(&app, Method::POST, "/v1/subjects/id-1/rekey", "security", Some("rekey-1"), None).await;
    let rk2 = send(&app, Method::POST, "/v1/subjects/id-1/rekey", "security", Some("rekey-1"), None).await;
    assert_eq!((rk1.body["dek_version"].clone(), rk2.body["dek_version"].clone(), replayed(&rk2)), (json!(2), json!(2), true));
    let rot1 = send(&app, Method::POST, "/v1/keys/rotate", "security", Some("rotate-1"), None).await;
    let rot2 = send(&app, Method::POST, "/v1/keys/rotate", "security", Some("rotate-1"), None).await;
    assert_eq!((rot1.status, rot2.status, &rot2.body, replayed(&rot2)), (StatusCode::CREATED, StatusCode::CREATED, &rot1.body, true));
    let keys = app.get("/v1/keys", "security").await;
    assert_eq!(keys.body["generations"].as_array().unwrap().len(), 2, "one rotation: {:?}", keys.body);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_422_and_does_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("id-2", json!({"identity.full_name": "A"})).await.status, StatusCode::CREATED);
    assert_eq!(app.put_fields("id-3", json!({"identity.full_name": "B"})).await.status, StatusCode::CREATED);
    let path = "/v1/subjects/id-2/contracts";
    assert_eq!(send(&app, Method::POST, path, "svc-all", Some("k-1"), Some(json!({"contract": "L-1"}))).await.status, StatusCode::CREATED);
    for (method, path, body) in [
        // Another body…
        (Method::POST, "/v1/subjects/id-2/contracts", Some(json!({"contract": "L-2"}))),
        // …another subject…
        (Method::POST, "/v1/subjects/id-3/contracts", Some(json!({"contract": "L-1"}))),
        // …another operation.
        (Method::POST, "/v1/subjects/id-2/erasure", None),
    ] {
        let r = send(&app, method, path, "svc-all", Some("k-1"), body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {:?}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(r.body["type"], "urn:qoima:problem:idempotency-key-reused");
    }
    // Nothing of those was done: L-2 and id-3's L-1 open now, and id-2 is not erased.
    assert_eq!(app.open_contract("id-2", "L-2").await.status, StatusCode::CREATED);
    assert_eq!(app.open_contract("id-3", "L-1").await.status, StatusCode::CREATED);
    assert_eq!(app.read("id-2", "svc-all", "loan_issuance").await.status, StatusCode::OK);
    let refused = entries(&app, "id-2", "contract.open").await;
    assert!(refused.iter().any(|(d, r)| d == "deny" && r.contains("used for a different request")), "{refused:?}");

    // Bad keys: 400 before anything is done.
    for bad in ["", &"k".repeat(256), "ключ", "tab\there"] {
        let mut req = app.client.put(format!("{}/v1/subjects/id-4", app.addr)).bearer_auth(token("svc-all"));
        req = req.header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap());
        let r = req.json(&json!({"fields": {"identity.full_name": "C"}})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["type"], "urn:qoima:problem:invalid-request");
    }
    let two = app
        .client
        .put(format!("{}/v1/subjects/id-4", app.addr))
        .bearer_auth(token("svc-all"))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&json!({"fields": {"identity.full_name": "C"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.read("id-4", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND, "nothing stored");
    let longest = "~".repeat(255);
    let ok = send(&app, Method::PUT, "/v1/subjects/id-4", "svc-all", Some(&longest), Some(json!({"fields": {"identity.full_name": "C"}})));
    assert_eq!(ok.await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn callers_never_share_a_key() {
    let app = spawn_app().await;
    let body = |name: &str| Some(json!({ "fields": { "identity.full_name": name } }));
    let a = send(&app, Method::PUT, "/v1/subjects/id-a", "svc-all", Some("shared"), body("A")).await;
    // The same key from another caller, for another request: its own, done, not 422.
    let b = send(&app, Method::PUT, "/v1/subjects/id-b", "svc-issuance", Some("shared"), body("B")).await;
    assert_eq!((a.status, b.status, replayed(&b)), (StatusCode::CREATED, StatusCode::CREATED, false), "{:?}", b.body);
    // …and for the same request: done again, not caller A's answer.
    let b2 = send(&app, Method::PUT, "/v1/subjects/id-a", "svc-issuance", Some("other"), body("A")).await;
    let b3 = send(&app, Method::PUT, "/v1/subjects/id-a", "svc-monitoring", Some("shared"), body("A")).await;
    assert_eq!((b2.body["version"].clone(), b3.body["version"].clone(), replayed(&b3)), (json!(2), json!(3), false), "{:?}", b3.body);
    let a2 = send(&app, Method::PUT, "/v1/subjects/id-a", "svc-all", Some("shared"), body("A")).await;
    assert_eq!((a2.body["version"].clone(), replayed(&a2)), (json!(1), true), "A's own key still gives A's answer");
}

#[tokio::test]
async fn a_record_survives_a_restart() {
    let app = spawn_app().await;
    let c = Some(json!({ "contract": "L-9" }));
    app.put_fields("id-r", json!({"identity.full_name": "R"})).await;
    let first = send(&app, Method::POST, "/v1/subjects/id-r/contracts", "svc-all", Some("restart-1"), c.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let app = app.restart().await;
    let again = send(&app, Method::POST, "/v1/subjects/id-r/contracts", "svc-all", Some("restart-1"), c).await;
    assert_eq!((again.status, &again.body, replayed(&again)), (StatusCode::CREATED, &first.body, true));
}

/// The record rides in the operation's batch: when that batch fails, neither the operation nor
/// the record is there, and a retry with the key does the work (it is no replay).
#[tokio::test]
async fn a_failed_batch_leaves_neither_the_change_nor_the_record() {
    let app = spawn_app().await;
    app.put_fields("id-f", json!({"identity.full_name": "F"})).await;
    let c = Some(json!({ "contract": "L-1" }));
    app.faults.set(true);
    let failed = send(&app, Method::POST, "/v1/subjects/id-f/contracts", "svc-all", Some("fault-1"), c.clone()).await;
    app.faults.set(false);
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(records(&app).is_empty(), "no record of a request whose batch failed");
    let writes = || app.vault.audit_stats().groups.load(std::sync::atomic::Ordering::SeqCst);
    let before = writes();
    let retried = send(&app, Method::POST, "/v1/subjects/id-f/contracts", "svc-all", Some("fault-1"), c.clone()).await;
    assert_eq!((retried.status, replayed(&retried)), (StatusCode::CREATED, false), "{:?}", retried.body);
    // Now committed with its record in one write (the contract, its audit entry, the record,
    // its subject index and its time index), not in a second one.
    assert_eq!(writes() - before, 1, "one durable write for the contract and its record");
    assert_eq!((records_with_prefix(&app, b'k'), records_with_prefix(&app, b's'), records_with_prefix(&app, b't')), (1, 1, 1));
    assert!(replayed(&send(&app, Method::POST, "/v1/subjects/id-f/contracts", "svc-all", Some("fault-1"), c).await));
}

/// Same-key requests in flight together: one does the work, the others get its answer or 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_do_the_work_once() {
    let app = spawn_app().await;
    app.put_fields("id-c", json!({"identity.full_name": "C"})).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (http, base) = (app.client.clone(), app.addr.clone());
        tasks.push(tokio::spawn(async move {
            let c = Some(json!({ "contract": "L-1" }));
            send_to(&http, &base, Method::POST, "/v1/subjects/id-c/contracts", "svc-all", Some("burst"), c).await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => bodies.push(r.body),
            StatusCode::CONFLICT => {
                assert_eq!(r.body["type"], "urn:qoima:problem:idempotency-key-in-flight", "{:?}", r.body);
                assert!(r.headers.contains_key("retry-after"));
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert!(!bodies.is_empty() && bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    let opened: Vec<_> = entries(&app, "id-c", "contract.open").await.into_iter().filter(|(_, r)| r == "contract L-1 opened").collect();
    assert_eq!(opened.len(), 1, "one contract opened");

    // Writes too, on both write paths: one of them writes, once.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (http, base) = (app.client.clone(), app.addr.clone());
        tasks.push(tokio::spawn(async move {
            let body = Some(json!({ "fields": { "identity.phone": "+77011234567" } }));
            send_to(&http, &base, Method::PUT, "/v1/subjects/id-c", "svc-all", Some("burst-put"), body).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!((r.status == StatusCode::OK && r.body["version"] == 2) || r.status == StatusCode::CONFLICT, "{}: {:?}", r.status, r.body);
    }
    let next = app.put_fields("id-c", json!({"identity.phone": "+77011234567"})).await;
    assert_eq!(next.body["version"], 3, "one keyed write: {:?}", next.body);
}

/// A disclosure's record keeps the disclosure, not the values: a replay answers with the record
/// and no values, and the store's records hold no personal data.
#[tokio::test]
async fn a_replayed_disclosure_discloses_nothing_again() {
    let app = spawn_app().await;
    app.put_fields("id-d", application("DISCLOSEMARK")).await;
    app.give_consent("id-d", "third_party_transfer").await;
    let body = json!({"recipient": "First Credit Bureau", "basis": "consent", "fields": ["identity.full_name"]});
    let path = "/v1/subjects/id-d/disclosures";
    let first = send(&app, Method::POST, path, "svc-all", Some("dis-1"), Some(body.clone())).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["fields"]["identity.full_name"], "Aigerim DISCLOSEMARK");
    let again = send(&app, Method::POST, path, "svc-all", Some("dis-1"), Some(body)).await;
    assert_eq!((again.status, replayed(&again)), (StatusCode::OK, true));
    assert_eq!(again.body["disclosure"], first.body["disclosure"], "the same disclosure record");
    assert_eq!(again.body["fields"], json!({}), "no values a second time");
    let export = app.get("/v1/subjects/id-d/export", "website").await;
    assert_eq!(export.body["disclosures"].as_array().unwrap().len(), 1, "one disclosure recorded");
    let mut values = Vec::new();
    app.vault
        .store()
        .scan(Space::Idempotency, b"", b"\xff", |_, v| {
            values.push(String::from_utf8_lossy(v).into_owned());
            true
        })
        .unwrap();
    assert!(values.iter().all(|v| !v.contains("DISCLOSEMARK") && !v.contains("dis-1")), "{values:?}");
}

/// A privacy-session link is a credential: its record keeps the session's expiry, and a replay
/// answers with a fresh link to the same session.
#[tokio::test]
async fn a_replayed_privacy_session_gets_a_fresh_link_to_the_same_session() {
    let app = spawn_app().await;
    app.put_fields("id-p", json!({"identity.full_name": "P"})).await;
    let path = "/v1/subjects/id-p/privacy-session";
    let first = send(&app, Method::POST, path, "website", Some("pc-1"), None).await;
    let again = send(&app, Method::POST, path, "website", Some("pc-1"), None).await;
    assert_eq!((first.status, again.status, replayed(&again)), (StatusCode::CREATED, StatusCode::CREATED, true));
    assert_eq!(again.body["expires_at"], first.body["expires_at"], "the same session");
    let (url1, url2) = (first.body["url"].as_str().unwrap(), again.body["url"].as_str().unwrap());
    assert_ne!(url1, url2, "a fresh link");
    for url in [url1, url2] {
        let token = url.rsplit('/').next().unwrap();
        assert!(files_in(&app.store_dirs(), token.as_bytes()).is_empty(), "the link is kept nowhere");
        let page = app.client.get(url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{url}");
    }
}

/// An erasure takes the subject's records with it; records of others stay.
#[tokio::test]
async fn an_erasure_removes_the_subjects_records() {
    let app = spawn_app().await;
    let put = |s: &str| {
        let path = format!("/v1/subjects/{s}");
        let (app, key) = (&app, s.to_owned());
        async move { send(app, Method::PUT, &path, "svc-all", Some(&key), Some(json!({"fields": {"identity.full_name": "E"}}))).await }
    };
    assert_eq!(put("id-e").await.status, StatusCode::CREATED);
    assert_eq!(put("id-keep").await.status, StatusCode::CREATED);
    assert_eq!(records_with_prefix(&app, b'k'), 2);
    let erased = send(&app, Method::POST, "/v1/subjects/id-e/erasure", "website", Some("erase-e"), None).await;
    assert_eq!((erased.status, erased.body["status"].clone()), (StatusCode::ACCEPTED, json!("erased")));
    // Left: id-keep's record and the erasure's own (its receipt, kept forever anyway).
    assert_eq!(records_with_prefix(&app, b'k'), 2);
    let mut scopes = Vec::new();
    app.vault
        .store()
        .scan_prefix(Space::Idempotency, b"s", |k, _| {
            scopes.push(String::from_utf8_lossy(&k[1..k.iter().position(|b| *b == 0).unwrap()]).into_owned());
            true
        })
        .unwrap();
    scopes.sort();
    assert_eq!(scopes, ["id-e", "id-keep"]);
    // The erased subject's write, retried with its key: done anew, refused as erased.
    assert_eq!(put("id-e").await.status, StatusCode::GONE);
    let again = send(&app, Method::POST, "/v1/subjects/id-e/erasure", "website", Some("erase-e"), None).await;
    assert_eq!((again.status, &again.body, replayed(&again)), (StatusCode::ACCEPTED, &erased.body, true));
}

/// A settlement that ran a pending erasure, replayed: the same contract and erasure, with the
/// purge's progress as it is now (it had failed the first time).
#[tokio::test]
async fn a_replayed_settlement_shows_the_erasure_as_it_is_now() {
    let app = spawn_app().await;
    app.put_fields("id-h", json!({"identity.full_name": "H"})).await;
    app.open_contract("id-h", "L-1").await;
    assert_eq!(app.erase("id-h").await.body["status"], "pending");
    app.faults.set_purges_failing(true);
    let path = "/v1/subjects/id-h/contracts/L-1";
    let first = send(&app, Method::PATCH, path, "svc-all", Some("settle-1"), Some(json!({"status": "settled"}))).await;
    app.faults.set_purges_failing(false);
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!((first.body["erasure"]["status"].clone(), first.body["erasure"]["purge_pending"].clone()), (json!("erased"), json!(true)));
    // The background retry purges it.
    for _ in 0..200 {
        if app.get("/v1/subjects/id-h/erasure", "website").await.body["purge_pending"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = send(&app, Method::PATCH, path, "svc-all", Some("settle-1"), Some(json!({"status": "settled"}))).await;
    assert_eq!((again.status, replayed(&again)), (StatusCode::OK, true), "{:?}", again.body);
    assert_eq!(again.body["erasure"]["receipt"], first.body["erasure"]["receipt"]);
    assert_eq!(again.body["erasure"]["purge_pending"], false, "as it is now");
    let mut without = again.body.clone();
    without["erasure"]["purge_pending"] = json!(true);
    assert_eq!(without, first.body, "otherwise the first answer");
}

/// Records are kept 24 hours, then the retention sweep removes them.
#[tokio::test]
async fn records_are_kept_a_day_then_swept() {
    let app = spawn_with("", Some(ManualClock::new(now()))).await;
    let body = || Some(json!({"fields": {"identity.full_name": "S"}}));
    assert_eq!(send(&app, Method::PUT, "/v1/subjects/id-s", "svc-all", Some("day"), body()).await.status, StatusCode::CREATED);
    app.advance(time::Duration::hours(23));
    app.vault.sweep_expired().unwrap();
    assert!(replayed(&send(&app, Method::PUT, "/v1/subjects/id-s", "svc-all", Some("day"), body()).await), "kept within 24 h");
    app.advance(time::Duration::hours(2));
    app.vault.sweep_expired().unwrap();
    assert!(records(&app).is_empty(), "swept: {:?}", records(&app));
    let after = send(&app, Method::PUT, "/v1/subjects/id-s", "svc-all", Some("day"), body()).await;
    assert_eq!((after.body["version"].clone(), replayed(&after)), (json!(2), false), "a new request once the record is gone");
}

/// The OpenAPI document names the header on every mutating operation, and its refusals.
#[tokio::test]
async fn the_openapi_document_names_the_key_on_every_mutating_operation() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None).await.body;
    let mut mutating = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let has_key = op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header");
            // A lookup is a POST only to keep the value out of the URL: a read.
            if ["put", "post", "patch", "delete"].contains(&method.as_str()) && path != "/v1/lookup" {
                mutating += 1;
                assert!(has_key, "{method} {path}");
                for code in ["400", "409", "422"] {
                    assert!(op["responses"].get(code).is_some(), "{method} {path} documents no {code}");
                }
            } else {
                assert!(!has_key, "{method} {path}: reads take no key");
            }
        }
    }
    assert_eq!(mutating, 14, "the mutating operations of docs/api.md");
}

// ---------------------------------------------------------------------------------------
// The clients, through a proxy that loses answers
// ---------------------------------------------------------------------------------------

/// What the proxy does to the next mutating request.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forwards it, then drops the vault's answer and answers 408 (the work was done).
    LoseAnswer,
    /// Answers 503 without forwarding it (nothing was done).
    Refuse,
    /// Forwards it and its answer.
    Pass,
}

/// A proxy in front of a vault, applying `plan` to mutating requests in turn; records the
/// `Idempotency-Key` and `Qoima-Subject-Assertion` of every request it forwards or refuses.
struct Proxy {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A request the proxy saw: `METHOD path`, its idempotency key and its subject assertion.
type Seen = (String, Option<String>, Option<String>);

async fn proxy(upstream: &str, plan: Vec<Fault>) -> Proxy {
    let upstream = upstream.to_owned();
    let plan = Arc::new(Mutex::new(std::collections::VecDeque::from(plan)));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let http = reqwest::Client::new();
    let log = seen.clone();
    let handler = move |req: Request| {
        let (upstream, plan, log, http) = (upstream.clone(), plan.clone(), log.clone(), http.clone());
        async move {
            let (parts, body) = req.into_parts();
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            log.lock().unwrap().push((
                format!("{} {}", parts.method, parts.uri.path()),
                header("idempotency-key"),
                header("qoima-subject-assertion"),
            ));
            let fault = if parts.method == Method::GET { None } else { plan.lock().unwrap().pop_front() };
            if let Some(Fault::Refuse) = fault {
                let problem =
                    json!({"type": "urn:qoima:problem:unavailable", "title": "Service Unavailable", "status": 503, "detail": "injected"});
                return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/problem+json")], problem.to_string())
                    .into_response();
            }
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut fwd = http.request(parts.method.clone(), format!("{upstream}{}", parts.uri));
            for (name, value) in &parts.headers {
                if name != "host" && name != "content-length" {
                    fwd = fwd.header(name, value);
                }
            }
            let res = fwd.body(bytes).send().await.unwrap();
            let status = res.status();
            let headers = res.headers().clone();
            let bytes = res.bytes().await.unwrap();
            if let Some(Fault::LoseAnswer) = fault {
                let problem =
                    json!({"type": "urn:qoima:problem:request-timeout", "title": "Request Timeout", "status": 408, "detail": "injected"});
                return (StatusCode::REQUEST_TIMEOUT, [("content-type", "application/problem+json")], problem.to_string()).into_response();
            }
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    out.headers_mut().insert(name, value.clone());
                }
            }
            out
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await.unwrap() });
    Proxy { addr, seen }
}

fn quick() -> Retry {
    Retry { attempts: 4, base_delay: std::time::Duration::from_millis(20), max_delay: std::time::Duration::from_millis(100) }
}

#[tokio::test]
async fn the_rust_client_retries_a_lost_answer_with_its_key_and_does_the_work_once() {
    let app = spawn_app().await;
    app.put_fields("cl-i", json!({"identity.full_name": "I"})).await;
    let p = proxy(&app.addr, vec![Fault::LoseAnswer, Fault::Pass, Fault::Refuse, Fault::Refuse]).await;
    let svc = Client::new(&p.addr, &token("svc-all")).with_retry(quick());
    // A 408 after the contract was opened: the retry gets the first answer, not 409.
    let c = svc.open_contract("cl-i", "L-1").await.unwrap();
    assert_eq!((c.contract.as_str(), c.status.as_str()), ("L-1", "open"));
    // Two 503s (nothing done), then the work.
    svc.set_contract("cl-i", "L-1", "breached").await.unwrap();
    let seen = p.seen.lock().unwrap().clone();
    let keys: Vec<&str> = seen.iter().map(|(_, k, _)| k.as_deref().expect("every mutating call sends a key")).collect();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        keys[0] == keys[1] && keys[2] == keys[3] && keys[3] == keys[4] && keys[1] != keys[2],
        "a key per call, kept across its retries: {keys:?}"
    );
    let opens = entries(&app, "cl-i", "contract.open").await;
    assert_eq!(opens.iter().filter(|(_, r)| r == "contract L-1 opened").count(), 1, "{opens:?}");
    assert_eq!(opens.len(), 2, "the retry is a replay: {opens:?}");
    assert_eq!(entries(&app, "cl-i", "contract.update").await.len(), 1);

    // Bounded: a vault that keeps refusing is reported after the last attempt.
    let p = proxy(&app.addr, vec![Fault::Refuse; 4]).await;
    let e = Client::new(&p.addr, &token("svc-all")).with_retry(quick()).open_contract("cl-i", "L-2").await.unwrap_err();
    assert_eq!((e.status(), p.seen.lock().unwrap().len()), (Some(503), 4));
}

/// A website caller configured for subject assertions: the client asks for a fresh assertion for
/// each attempt (the vault accepts each once), so its retry after a lost answer is accepted too.
#[tokio::test]
async fn the_rust_client_sends_a_fresh_subject_assertion_with_each_attempt() {
    use crate::grants::{asserted_app, idp_keys, sign, AUDIENCE, ISSUER};
    let dir = tempfile::tempdir().unwrap();
    let app = asserted_app(dir.path()).await;
    app.put_fields("cl-sa", json!({"identity.full_name": "SA"})).await;
    let p = proxy(&app.addr, vec![Fault::LoseAnswer]).await;
    let vault = app.vault.clone();
    let minted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = minted.clone();
    let web = Client::new(&p.addr, &token("web-idp")).with_retry(quick()).with_subject_assertions(move |subject| {
        let t = vault.now().unix_timestamp();
        let jti = format!("client-{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        Some(sign(&idp_keys()[0], "ed-1", &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": t, "exp": t + 120, "jti": jti})))
    });
    let consent =
        ConsentBody { purpose: "advertising".into(), policy_version: None, valid_until: None, third_parties: None, abroad: false };
    assert_eq!(web.give_consent("cl-sa", &consent).await.unwrap().purpose, "advertising");
    assert_eq!(web.export("cl-sa").await.unwrap().consents.len(), 1, "one consent");
    let seen = p.seen.lock().unwrap().clone();
    let assertions: Vec<&str> = seen.iter().map(|(_, _, a)| a.as_deref().expect("sent with every request")).collect();
    assert_eq!(assertions.len(), 3, "{seen:?}");
    assert_ne!(assertions[0], assertions[1], "a fresh one for the retry");
    assert_eq!(minted.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Without one the vault refuses: the client is what made these pass.
    let bare = Client::new(&app.addr, &token("web-idp")).with_retry(quick());
    assert_eq!(bare.export("cl-sa").await.unwrap_err().slug(), Some("subject-assertion"));
}

/// The Python example: a key per call, kept across its retries of a 408 and a 503, one effect;
/// and its subject assertion, asked afresh for each attempt.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_retries_a_lost_answer_with_its_key_and_does_the_work_once() {
    let app = spawn_app().await;
    app.put_fields("py-i", json!({"identity.full_name": "I"})).await;
    let p = proxy(&app.addr, vec![Fault::LoseAnswer, Fault::Pass, Fault::Refuse]).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let snippet = "import os, sys\n\
        sys.path.insert(0, os.environ['EXAMPLES'])\n\
        import lending_client as q\n\
        n = []\n\
        def mint(subject):\n    n.append(subject)\n    return 'assertion-%d-for-%s' % (len(n), subject)\n\
        c = q.QoimaClient(os.environ['QOIMA_URL'], os.environ['TOKEN'], backoff=0.02, subject_assertion=mint)\n\
        k = c.open_contract('py-i', 'L-1')\n\
        print('opened', k.contract, k.status)\n\
        k = c.breach_contract('py-i', 'L-1')\n\
        print('breached', k.status, len(n))\n";
    let out = tokio::process::Command::new("python3")
        .args(["-I", "-S", "-c", snippet])
        .env("EXAMPLES", &dir)
        .env("QOIMA_URL", &p.addr)
        .env("TOKEN", token("svc-all"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "opened L-1 open\nbreached breached 4");
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let keys: Vec<&str> = seen.iter().map(|(_, k, _)| k.as_deref().expect("a key on every change")).collect();
    assert!(keys[0] == keys[1] && keys[2] == keys[3] && keys[1] != keys[2], "{keys:?}");
    let assertions: Vec<&str> = seen.iter().map(|(_, _, a)| a.as_deref().unwrap()).collect();
    assert_eq!(assertions, ["assertion-1-for-py-i", "assertion-2-for-py-i", "assertion-3-for-py-i", "assertion-4-for-py-i"]);
    let opens = entries(&app, "py-i", "contract.open").await;
    assert_eq!(opens.iter().filter(|(_, r)| r == "contract L-1 opened").count(), 1, "{opens:?}");
    assert_eq!(entries(&app, "py-i", "contract.update").await.len(), 1, "the 503 did nothing; the retry did it once");
}
