//! Issue #25 over HTTP: `POST /v1/lookup` through the blind index, unique fields (409), and the
//! index entries gone from every file after an erasure and from a restored backup's replay.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use qoima::store::Space;

/// `fields` with a phone and an email no other application has.
fn own_contacts(mut fields: Value, who: &str) -> Value {
    fields["identity.phone"] = json!("+77017654321");
    fields["identity.email"] = json!(format!("{who}@example.kz"));
    fields
}

async fn lookup(app: &TestApp, caller: &str, body: Value) -> Resp {
    app.call(Method::POST, "/v1/lookup", Some(caller), Some(body)).await
}

/// The 32-byte blind indexes of a subject's entries, from its own record (generation, field
/// length, field, index; src/vault/index.rs).
fn blinds(app: &TestApp, subject: &str) -> Vec<Vec<u8>> {
    let Some(mut v) = app.vault.store().get(Space::Index, &qoima::layout::subject_index(subject)).unwrap() else { return vec![] };
    let mut out = Vec::new();
    while !v.is_empty() {
        let len = usize::from(v[4]);
        out.push(v[5 + len..5 + len + 32].to_vec());
        v.drain(..5 + len + 32);
    }
    out
}

/// Entries of `subject` in the index (its own records and the entries lookups scan).
fn index_keys_of(app: &TestApp, subject: &str) -> usize {
    let mut n = 0;
    app.vault
        .store()
        .scan(Space::Index, b"", b"\xff", |k, _| {
            if k.ends_with(subject.as_bytes()) || k == qoima::layout::subject_index(subject) {
                n += 1;
            }
            true
        })
        .unwrap();
    n
}

#[tokio::test]
async fn a_lender_finds_a_borrower_by_iin_phone_or_email_and_the_lookup_is_audited() {
    let app = spawn_app().await;
    let mut fields = application("LOOKUP");
    fields["identity.email"] = json!("Aigerim.Lookup@Example.kz");
    let iin = fields["identity.iin"].as_str().unwrap().to_string();
    assert_eq!(app.put_fields("b-1", fields).await.status, StatusCode::CREATED);
    assert_eq!(app.put_fields("b-2", application("OTHER")).await.status, StatusCode::CREATED);

    let r = lookup(&app, "svc-issuance", json!({"field": "identity.iin", "value": iin, "purpose": "loan_issuance"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, json!({"field": "identity.iin", "purpose": "loan_issuance", "subjects": ["b-1"]}));
    // Other spellings of one value find it: a phone with spaces, an email in other case.
    let r =
        lookup(&app, "svc-issuance", json!({"field": "identity.email", "value": " aigerim.lookup@EXAMPLE.KZ", "purpose": "loan_issuance"}))
            .await;
    assert_eq!(r.body["subjects"], json!(["b-1"]));
    // Both applications carry the same phone (not a unique field): both are found.
    let r = lookup(&app, "svc-issuance", json!({"field": "identity.phone", "value": "+7 701 123 45 67", "purpose": "loan_issuance"})).await;
    assert_eq!(r.body["subjects"], json!(["b-1", "b-2"]));
    // No match is an empty list.
    let r = lookup(&app, "svc-issuance", json!({"field": "identity.iin", "value": iin_for("nobody"), "purpose": "loan_issuance"})).await;
    assert_eq!((r.status, r.body["subjects"].clone()), (StatusCode::OK, json!([])));

    // Refusals: as for a read, 403 for a purpose not granted or a field the purpose does not
    // read; 400 for a field not indexed, a value that fails its check, an unknown purpose.
    for (caller, body, status) in [
        ("svc-marketing", json!({"field": "identity.iin", "value": iin, "purpose": "loan_issuance"}), StatusCode::FORBIDDEN),
        ("svc-marketing", json!({"field": "identity.iin", "value": iin, "purpose": "advertising"}), StatusCode::FORBIDDEN),
        ("website", json!({"field": "identity.iin", "value": iin, "purpose": "loan_issuance"}), StatusCode::FORBIDDEN),
        ("security", json!({"field": "identity.iin", "value": iin, "purpose": "loan_issuance"}), StatusCode::FORBIDDEN),
        (
            "svc-issuance",
            json!({"field": "identity.full_name", "value": "Aigerim LOOKUP", "purpose": "loan_issuance"}),
            StatusCode::BAD_REQUEST,
        ),
        ("svc-issuance", json!({"field": "identity.iin", "value": "900101300011", "purpose": "loan_issuance"}), StatusCode::BAD_REQUEST),
        ("svc-issuance", json!({"field": "identity.iin", "value": 900101300017u64, "purpose": "loan_issuance"}), StatusCode::BAD_REQUEST),
        ("svc-issuance", json!({"field": "identity.iin", "value": iin, "purpose": "nope"}), StatusCode::BAD_REQUEST),
        ("svc-issuance", json!({"field": "no such", "value": iin, "purpose": "loan_issuance"}), StatusCode::BAD_REQUEST),
        ("svc-issuance", json!({"field": "identity.iin", "value": iin}), StatusCode::BAD_REQUEST),
    ] {
        let r = lookup(&app, caller, body.clone()).await;
        assert_eq!(r.status, status, "{caller} {body}: {:?}", r.body);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert!(!r.body.to_string().contains(&iin) && !r.body.to_string().contains("LOOKUP"), "a refusal echoes no value: {:?}", r.body);
    }
    assert_eq!(app.call(Method::POST, "/v1/lookup", None, Some(json!({}))).await.status, StatusCode::UNAUTHORIZED);

    // Every attempt is audited as subject.lookup, with the field, the purpose and the count:
    // never the value.
    let entries = app.get("/v1/audit?limit=1000", "auditor").await.body["entries"].as_array().unwrap().clone();
    let lookups: Vec<&Value> = entries.iter().filter(|e| e["action"] == "subject.lookup").collect();
    assert_eq!(lookups.len(), 4 + 9, "{lookups:?}");
    let first = lookups[0];
    assert_eq!((first["decision"].as_str(), first["purpose"].as_str()), (Some("allow"), Some("loan_issuance")));
    assert_eq!(first["fields"], json!(["identity.iin"]));
    assert_eq!(first["reason"], "1 subject matched");
    assert!(first["subject"].is_null());
    assert!(lookups.iter().any(|e| e["reason"] == "2 subjects matched"));
    assert!(lookups.iter().any(|e| e["reason"] == "0 subjects matched"));
    let text = serde_json::to_string(&lookups).unwrap();
    assert!(!text.contains(&iin) && !text.contains("7011234567") && !text.to_lowercase().contains("aigerim"), "{text}");
    assert!(lookups.iter().filter(|e| e["decision"] == "deny").count() >= 8);
}

#[tokio::test]
async fn lookups_name_only_subjects_whose_basis_holds_and_count_against_the_read_limit() {
    let app = spawn_with(&limited_caller(3), None).await;
    let fields = application("BASIS");
    let phone = fields["identity.phone"].as_str().unwrap().to_string();
    app.put_fields("m-1", fields).await;
    let by_phone = |purpose: &str| json!({"field": "identity.phone", "value": phone, "purpose": purpose});
    // loan_monitoring needs an open contract: none yet, so no one is named.
    assert_eq!(lookup(&app, "svc-monitoring", by_phone("loan_monitoring")).await.body["subjects"], json!([]));
    app.open_contract("m-1", "L-1").await;
    assert_eq!(lookup(&app, "svc-monitoring", by_phone("loan_monitoring")).await.body["subjects"], json!(["m-1"]));
    // advertising needs a consent.
    assert_eq!(lookup(&app, "svc-marketing", by_phone("advertising")).await.body["subjects"], json!([]));
    app.give_consent("m-1", "advertising").await;
    assert_eq!(lookup(&app, "svc-marketing", by_phone("advertising")).await.body["subjects"], json!(["m-1"]));

    // Lookups spend the caller's reads.
    for _ in 0..3 {
        assert_eq!(lookup(&app, "svc-limited", by_phone("loan_issuance")).await.status, StatusCode::OK);
    }
    let r = lookup(&app, "svc-limited", by_phone("loan_issuance")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_unique_iin_belongs_to_one_live_subject() {
    let app = spawn_app().await;
    let first = application("UNIQUE");
    let iin = first["identity.iin"].clone();
    assert_eq!(app.put_fields("u-1", first).await.status, StatusCode::CREATED);
    // A second subject with the same IIN: 409 naming the field, not the other subject; nothing
    // stored; audited.
    let mut second = application("UNIQUE2");
    second["identity.iin"] = iin.clone();
    let r = app.put_fields("u-2", second.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.body["type"], "urn:qoima:problem:conflict");
    assert!(r.problem_detail().contains("identity.iin"), "{:?}", r.body);
    assert!(!r.body.to_string().contains("u-1") && !r.body.to_string().contains(iin.as_str().unwrap()));
    assert_eq!(app.read("u-2", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND, "nothing stored");
    let audit = app.get("/v1/audit?subject=u-2", "auditor").await.body["entries"].as_array().unwrap().clone();
    let audit: Vec<&Value> = audit.iter().filter(|e| e["action"] != "subject.read").collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!((audit[0]["action"].as_str(), audit[0]["decision"].as_str()), (Some("subject.put"), Some("deny")));
    // The same through a rectify of another live subject.
    assert_eq!(app.put_fields("u-3", application("UNIQUE3")).await.status, StatusCode::CREATED);
    let r = app.call(Method::PATCH, "/v1/subjects/u-3/rectify", Some("website"), Some(json!({"fields": {"identity.iin": iin}}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_ne!(app.get("/v1/subjects/u-3/export", "website").await.body["fields"]["identity.iin"], iin, "the rectify stored nothing");
    // Its own value again is no conflict.
    assert_eq!(app.put_fields("u-1", json!({"identity.iin": iin})).await.status, StatusCode::OK);

    // Many concurrent creates with one new IIN: exactly one wins.
    let contested = iin_for("contested");
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (client, addr, iin) = (app.client.clone(), app.addr.clone(), contested.clone());
        tries.spawn(async move {
            client
                .put(format!("{addr}/v1/subjects/race-{i}"))
                .bearer_auth(token("svc-all"))
                .json(&json!({"fields": {"identity.iin": iin, "identity.full_name": "Race"}}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let statuses = tries.join_all().await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    let r = lookup(&app, "svc-all", json!({"field": "identity.iin", "value": contested, "purpose": "loan_issuance"})).await;
    assert_eq!(r.body["subjects"].as_array().unwrap().len(), 1);

    // Once the holder is erased, the IIN is free, and the erased subject is never found.
    assert_eq!(app.erase("u-1").await.body["status"], "erased");
    let r = lookup(&app, "svc-all", json!({"field": "identity.iin", "value": iin, "purpose": "loan_issuance"})).await;
    assert_eq!(r.body["subjects"], json!([]));
    assert_eq!(app.put_fields("u-2", second).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn erasure_leaves_no_index_entry_in_any_file() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("keep", application("IDXSHRED")).await.status, StatusCode::CREATED);
    // A phone and email of its own (a value another live subject shares is that subject's too).
    assert_eq!(app.put_fields("gone", own_contacts(application("IDXSHRED"), "gone")).await.status, StatusCode::CREATED);
    let gone = blinds(&app, "gone");
    assert_eq!(gone.len(), 3, "identity.iin, identity.phone and identity.email are indexed");
    // The scan can see an index when one is there (in the WAL at this point).
    for b in &gone {
        assert!(seen_in(&app.store_dirs(), b), "the scan must find a live index");
    }
    assert_eq!(app.erase("gone").await.body["status"], "erased");
    assert_eq!(index_keys_of(&app, "gone"), 0, "the shred deleted its entries and records");
    for b in &gone {
        let holding = files_in(&app.all_dirs(), b);
        assert!(holding.is_empty(), "an erased subject's blind index is still in {holding:?}");
    }
    // The other subject's are untouched and still found.
    assert_eq!(blinds(&app, "keep").len(), 3);
    let keep_iin = app.get("/v1/subjects/keep/export", "website").await.body["fields"]["identity.iin"].clone();
    let r = lookup(&app, "svc-all", json!({"field": "identity.iin", "value": keep_iin, "purpose": "loan_issuance"})).await;
    assert_eq!(r.body["subjects"], json!(["keep"]));
}

#[tokio::test]
async fn a_restore_replays_erasures_into_the_index_too() {
    if rocksdb_only("restore into a PostgreSQL store is not built yet (issue #26)") {
        return;
    }
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    let gone_fields = own_contacts(application("IDXGONE"), "gone");
    app.put_fields("keep", application("IDXKEEP")).await;
    app.put_fields("gone", gone_fields.clone()).await;
    let gone = blinds(&app, "gone");
    let before = app.dir.path().join("backup-before");
    let (ok, out) = cli_async(&["backup", "create", before.to_str().unwrap(), "--config", &cfg]).await;
    assert!(ok, "{out}");
    assert!(gone.iter().all(|b| !files_containing(&before, b).is_empty()), "the earlier backup holds the index entries");
    assert_eq!(app.erase("gone").await.body["status"], "erased");
    app.stop().await;
    let restored = app.dir.path().join("restored");
    let (ok, out) = cli(&["backup", "restore", before.to_str().unwrap(), "--to", restored.to_str().unwrap(), "--config", &cfg]);
    assert!(ok && out.contains("replayed 1 erasure"), "{out}");
    for b in &gone {
        assert!(files_containing(&restored, b).is_empty(), "the replay purged the restored copy's index entries too");
    }
    let TestApp { dir, vault, .. } = app;
    wait_for_last_handle(vault).await;
    let env = |k: &str| (k == "QOIMA_DATA_DIR").then(|| restored.to_str().unwrap().to_string());
    let config = qoima::config::Config::load(&dir.path().join("qoima.toml"), &env).unwrap();
    let app = start(dir, config, None).await;
    let by_iin = |v: &Value| json!({"field": "identity.iin", "value": v, "purpose": "loan_issuance"});
    assert_eq!(lookup(&app, "svc-all", by_iin(&gone_fields["identity.iin"])).await.body["subjects"], json!([]));
    let keep_iin = app.get("/v1/subjects/keep/export", "website").await.body["fields"]["identity.iin"].clone();
    assert_eq!(lookup(&app, "svc-all", by_iin(&keep_iin)).await.body["subjects"], json!(["keep"]));
}

#[tokio::test]
async fn the_cli_reports_the_index_build_and_its_duplicates() {
    let app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    app.put_fields("c-1", application("CLI")).await;
    let (ok, out) = cli_async(&["lookup", "status", "--config", &cfg]).await;
    assert!(ok, "{out}");
    assert!(out.contains("blind index complete: identity.email, identity.iin, identity.phone"), "{out}");
    assert!(out.contains("0 duplicate value(s)"), "{out}");
    let (ok, out) = cli_async(&["lookup", "duplicates", "--config", &cfg]).await;
    assert!(ok && out.trim().is_empty(), "{out}");

    // A lookup through the running vault, the value on stdin (never an argument).
    let iin = app.get("/v1/subjects/c-1/export", "website").await.body["fields"]["identity.iin"].as_str().unwrap().to_string();
    let find = |value: String, purpose: &'static str| {
        let addr = app.addr.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = qoima_command()
                .args(["lookup", "find", "identity.iin", "--purpose", purpose, "--url", &addr])
                .env("QOIMA_TOKEN", token("svc-all"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(format!("{value}\n").as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
    };
    let (code, stdout, _) = find(iin.clone(), "loan_issuance").await.unwrap();
    assert_eq!((code, stdout.as_str()), (Some(0), "c-1\n"));
    let (code, stdout, _) = find(iin_for("nobody"), "loan_issuance").await.unwrap();
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "none found: exit 1");
    let (code, _, stderr) = find("900101300011".into(), "loan_issuance").await.unwrap();
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("identity.iin") && !stderr.contains("900101300011"), "a refusal names the field, not the value: {stderr}");
    let (code, _, stderr) = find(iin.clone(), "advertising").await.unwrap();
    assert_eq!(code, Some(4), "{stderr}");
}
