//! Bulk import (issue #25): `POST /v1/subjects:batch` answers each subject as the single put
//! would, in one group commit, and `qoima import` drives it from a JSON Lines file, resuming
//! without doing anything twice.

use std::sync::atomic::Ordering;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{qoima_command, send_request, spawn_app, token, Resp, TestApp};

async fn batch_as(app: &TestApp, caller: &str, subjects: Value, key: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("idempotency-key", k)]).unwrap_or_default();
    let url = format!("{}/v1/subjects:batch", app.addr);
    send_request(&app.client, Method::POST, &url, Some(caller), &headers, Some(json!({ "subjects": subjects }))).await
}

async fn put_as(app: &TestApp, caller: &str, subject: &str, fields: Value) -> Resp {
    let url = format!("{}/v1/subjects/{subject}", app.addr);
    send_request(&app.client, Method::PUT, &url, Some(caller), &[], Some(json!({ "fields": fields }))).await
}

/// Every audit entry, oldest first.
async fn audit(app: &TestApp) -> Vec<Value> {
    app.get("/v1/audit?limit=1000", "auditor").await.body["entries"].as_array().unwrap().clone()
}

fn statuses(r: &Resp) -> Vec<u64> {
    r.body["results"].as_array().unwrap().iter().map(|x| x["status"].as_u64().unwrap()).collect()
}

fn name(n: &str) -> Value {
    json!({ "identity.full_name": format!("Imported {n}") })
}

#[tokio::test]
async fn a_mixed_batch_answers_each_subject_as_the_single_put_would() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("imp-old", name("old")).await.status, StatusCode::CREATED);
    assert_eq!(app.put_fields("imp-gone", name("gone")).await.status, StatusCode::CREATED);
    assert_eq!(app.erase("imp-gone").await.status, StatusCode::ACCEPTED);
    let groups = app.vault.audit_stats().groups.load(Ordering::Relaxed);

    // svc-issuance writes what loan_issuance reads: no technical data.
    let r = batch_as(
        &app,
        "svc-issuance",
        json!([
            {"subject": "imp-new", "fields": name("new")},
            {"subject": "imp-old", "fields": {"identity.full_name": "Imported old, renamed"}},
            {"subject": "imp-badfield", "fields": {"identity.full_name": "Imported bad", "identity.no_such": "x"}},
            {"subject": "imp-grant", "fields": {"identity.full_name": "Imported grant", "technical.ip": "198.51.100.7"}},
            {"subject": "imp-gone", "fields": name("gone again")},
            {"subject": "imp-new", "fields": name("new twice")},
            {"subject": "bad id!", "fields": name("bad id")},
        ]),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(app.vault.audit_stats().groups.load(Ordering::Relaxed), groups + 1, "the batch was one group commit");
    assert_eq!(statuses(&r), [201, 200, 400, 403, 410, 409, 400]);
    let results = r.body["results"].as_array().unwrap();
    let subjects: Vec<&str> = results.iter().map(|x| x["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["imp-new", "imp-old", "imp-badfield", "imp-grant", "imp-gone", "imp-new", ""], "a bad id is not repeated");
    assert_eq!((results[0]["version"].as_u64(), results[1]["version"].as_u64()), (Some(1), Some(2)));
    assert!(results[0]["problem"].is_null() && results[2]["version"].is_null());
    assert_eq!(results[5]["problem"]["type"], "urn:qoima:problem:conflict");
    assert_eq!(results[5]["problem"]["detail"], "subject appears more than once in this batch");
    assert!(!r.body.to_string().contains("Imported"), "no value comes back: {}", r.body);

    // A refused item's problem is the single put's answer to the same write, word for word.
    for (i, subject, fields) in [
        (2, "imp-badfield", json!({"identity.full_name": "Imported bad", "identity.no_such": "x"})),
        (3, "imp-grant", json!({"identity.full_name": "Imported grant", "technical.ip": "198.51.100.7"})),
        (4, "imp-gone", name("gone again")),
    ] {
        let single = put_as(&app, "svc-issuance", subject, fields).await;
        assert_eq!(single.status.as_u16() as u64, results[i]["status"].as_u64().unwrap());
        assert_eq!(results[i]["problem"], single.body, "{subject}");
    }
    let single = put_as(&app, "svc-issuance", "bad%20id!", name("bad id")).await;
    assert_eq!(results[6]["problem"], single.body);

    // Nothing of a refused item stored; the first imp-new applied.
    for refused in ["imp-badfield", "imp-grant"] {
        assert_eq!(app.get(&format!("/v1/subjects/{refused}/export"), "website").await.status, StatusCode::NOT_FOUND, "{refused}");
    }
    let read = app.read("imp-new", "svc-all", "loan_issuance").await;
    assert_eq!(read.body["fields"]["identity.full_name"], "Imported new");
    let read = app.read("imp-old", "svc-all", "loan_issuance").await;
    assert_eq!(read.body["fields"]["identity.full_name"], "Imported old, renamed");

    // One subject.put entry per item the policy decided, in request order (the malformed
    // ones, as the single put, none).
    let request_id = r.headers["x-request-id"].to_str().unwrap();
    let entries: Vec<Value> = audit(&app).await.into_iter().filter(|e| e["request_id"] == request_id).collect();
    let batch: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            assert_eq!((e["action"].as_str(), e["caller"].as_str()), (Some("subject.put"), Some("svc-issuance")));
            (e["subject"].as_str().unwrap(), e["decision"].as_str().unwrap())
        })
        .collect();
    assert_eq!(batch, [("imp-new", "allow"), ("imp-old", "allow"), ("imp-grant", "deny"), ("imp-gone", "deny"), ("imp-new", "deny")]);
    assert!(!serde_json::to_string(&entries).unwrap().contains("Imported"));
}

#[tokio::test]
async fn uniqueness_holds_across_the_batch_and_against_the_store() {
    let app = spawn_app().await;
    let held = crate::helpers::iin_for("held");
    assert_eq!(app.put_fields("imp-holder", json!({"identity.iin": held})).await.status, StatusCode::CREATED);
    let shared = crate::helpers::iin_for("shared");
    let r = batch_as(
        &app,
        "svc-all",
        json!([
            {"subject": "imp-a", "fields": {"identity.iin": shared, "identity.full_name": "A"}},
            {"subject": "imp-b", "fields": {"identity.iin": shared, "identity.full_name": "B"}},
            {"subject": "imp-c", "fields": {"identity.iin": held, "identity.full_name": "C"}},
            {"subject": "imp-holder", "fields": {"identity.iin": held, "identity.full_name": "Holder"}},
            {"subject": "imp-d", "fields": {"identity.iin": crate::helpers::iin_for("d"), "identity.full_name": "D"}},
        ]),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The first holder in the request wins; a value another live subject holds is refused;
    // a subject's own value is no conflict.
    assert_eq!(statuses(&r), [201, 409, 409, 200, 201]);
    for i in [1, 2] {
        let p = &r.body["results"][i]["problem"];
        assert_eq!(p["type"], "urn:qoima:problem:conflict", "{p:?}");
        assert!(p["detail"].as_str().unwrap().contains("identity.iin"), "{p:?}");
        assert!(!p.to_string().contains("imp-") && !p.to_string().contains(&shared) && !p.to_string().contains(&held), "{p:?}");
    }
    for (s, status) in [("imp-b", StatusCode::NOT_FOUND), ("imp-c", StatusCode::NOT_FOUND), ("imp-a", StatusCode::OK)] {
        assert_eq!(app.read(s, "svc-all", "loan_issuance").await.status, status, "{s}");
    }
    let by = |v: &str| json!({"field": "identity.iin", "value": v, "purpose": "loan_issuance"});
    let found = app.call(Method::POST, "/v1/lookup", Some("svc-all"), Some(by(&shared))).await;
    assert_eq!(found.body["subjects"], json!(["imp-a"]));
}

#[tokio::test]
async fn a_batch_holds_1_to_1000_subjects_and_1000_fit_the_body_limit() {
    let app = spawn_app().await;
    // About 400 bytes a subject: 1,000 of them are above the default 256 KiB body limit.
    let subject = |i: usize| {
        json!({"subject": format!("bulk-{i:04}"), "fields": {
            "identity.full_name": format!("Imported borrower number {i:04}"),
            "identity.address": format!("Almaty, Abay avenue {i}, apartment {i}, {}", "x".repeat(200)),
            "questionnaire.employer": "An employer of many borrowers",
        }})
    };
    let too_many: Vec<Value> = (0..1001).map(subject).collect();
    let r = batch_as(&app, "svc-all", json!(too_many), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.problem_detail().contains("1 to 1000"), "{:?}", r.body);
    assert_eq!(app.get("/v1/subjects/bulk-0000/export", "website").await.status, StatusCode::NOT_FOUND);

    let r = batch_as(&app, "svc-all", json!([]), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = batch_as(&app, "svc-all", json!([{"fields": {}}]), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "an item without a subject is a malformed body");

    let thousand: Vec<Value> = (0..1000).map(subject).collect();
    assert!(serde_json::to_vec(&thousand).unwrap().len() > 256 * 1024);
    let r = batch_as(&app, "svc-all", json!(thousand), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(statuses(&r).iter().all(|s| *s == 201));
    // Every other route keeps the configured limit.
    let big = json!({"identity.address": "y".repeat(300 * 1024)});
    assert_eq!(app.put_fields("bulk-0000", big).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    // The role gate is the single put's: a website may not import.
    let r = batch_as(&app, "website", json!([{"subject": "bulk-w", "fields": name("w")}]), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_replayed_batch_gets_its_first_results_and_changes_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("idem-old", name("old")).await.status, StatusCode::CREATED);
    let subjects = json!([
        {"subject": "idem-new", "fields": name("new")},
        {"subject": "idem-old", "fields": name("old, again")},
        {"subject": "idem-bad", "fields": {"identity.no_such": "x"}},
    ]);
    let first = batch_as(&app, "svc-all", subjects.clone(), Some("import-batch-1")).await;
    assert_eq!(statuses(&first), [201, 200, 400]);
    let puts = || async { audit(&app).await.into_iter().filter(|e| e["action"] == "subject.put").collect::<Vec<_>>() };
    let entries = puts().await.len();
    let again = batch_as(&app, "svc-all", subjects.clone(), Some("import-batch-1")).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // Nothing written again: the next put is version 3 of idem-old, 2 of idem-new.
    let r = app.put_fields("idem-new", name("new, later")).await;
    assert_eq!(r.body["version"], 2);
    let replay_entries = puts().await;
    assert_eq!(replay_entries.len(), entries + 2, "the replay's own entry, then the put");
    assert!(replay_entries[entries]["reason"].as_str().unwrap().starts_with("replayed the answer of request"));
    // The same key for other subjects is refused.
    let r = batch_as(&app, "svc-all", json!([{"subject": "idem-other", "fields": name("other")}]), Some("import-batch-1")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Runs `qoima import` against the test vault as svc-all (the token in QOIMA_TOKEN).
async fn import(app: &TestApp, file: &std::path::Path, batch: usize) -> (Option<i32>, String, String) {
    let (url, file) = (app.addr.clone(), file.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        qoima_command()
            .arg("import")
            .arg(&file)
            .args(["--url", &url, "--batch", &batch.to_string()])
            .env("QOIMA_TOKEN", token("svc-all"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The allowed `subject.put` entries of each subject.
async fn puts_by_subject(app: &TestApp) -> std::collections::BTreeMap<String, usize> {
    let mut puts = std::collections::BTreeMap::new();
    for e in audit(app).await {
        if e["action"] == "subject.put" && e["decision"] == "allow" && e["subject"].is_string() {
            *puts.entry(e["subject"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    puts
}

fn line(subject: &str, fields: Value) -> String {
    format!("{}\n", json!({ "subject": subject, "fields": fields }))
}

#[tokio::test(flavor = "multi_thread")]
async fn qoima_import_reports_refused_lines_and_resumes_without_repeating_work() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("borrowers.jsonl");
    let first_run = [
        line("cli-1", name("one")),
        "{\"subject\": \"cli-x\", \"fields\": {\"identity.full_name\": \"Secret Name\"\n".to_string(),
        line("cli-2", name("two")),
        line("cli-3", json!({"identity.full_name": "Secret Name", "identity.no_such": 1})),
        "{\"fields\": {\"identity.full_name\": \"Secret Name\"}}\n".to_string(),
        line("cli-4", name("four")),
    ];
    std::fs::write(&file, first_run.concat()).unwrap();
    let (code, out, err) = import(&app, &file, 2).await;
    assert_eq!(code, Some(1), "some lines were refused: {out}{err}");
    assert!(out.contains("imported: 3 (created)"), "{out}");
    assert!(out.contains("updated:  0") && out.contains("refused:  3"), "{out}");
    assert!(out.contains("line 2: not JSON"), "{out}");
    assert!(out.contains("line 4: 400 Bad Request: "), "{out}");
    assert!(out.contains("line 5: no \"subject\""), "{out}");
    assert!(!out.contains("Secret") && !err.contains("Secret") && !err.contains(&token("svc-all")), "{out}{err}");
    let checkpoint: Value = serde_json::from_slice(&std::fs::read(dir.path().join("borrowers.jsonl.qoima-import")).unwrap()).unwrap();
    assert_eq!(checkpoint["lines"], 6);

    // Lines appended: only they are sent.
    let mut all = first_run.concat();
    all.push_str(&line("cli-5", name("five")));
    all.push_str(&line("cli-1", name("one, corrected")));
    std::fs::write(&file, &all).unwrap();
    let (code, out, err) = import(&app, &file, 2).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("resumed: 6 lines") && out.contains("imported: 1 (created)") && out.contains("updated:  1"), "{out}");
    let expected: std::collections::BTreeMap<String, usize> =
        [("cli-1", 2), ("cli-2", 1), ("cli-4", 1), ("cli-5", 1)].into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
    assert_eq!(puts_by_subject(&app).await, expected);

    // Answers lost: the checkpoint rewound to the start (as if the runs stopped before writing
    // it). Every batch is sent again with its key and answered with its first results.
    let rewound = json!({"lines": 0, "bytes": 0, "done_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"});
    let mut cp = checkpoint.clone();
    cp.as_object_mut().unwrap().extend(rewound.as_object().unwrap().clone());
    std::fs::write(dir.path().join("borrowers.jsonl.qoima-import"), cp.to_string()).unwrap();
    let (code, out, err) = import(&app, &file, 2).await;
    assert_eq!(code, Some(1), "the refused lines again: {out}{err}");
    assert!(out.contains("imported: 4 (created)") && out.contains("updated:  1"), "the first answers: {out}");
    assert_eq!(puts_by_subject(&app).await, expected, "nothing applied twice");

    // A file changed in its done part is not resumed.
    std::fs::write(&file, all.replace("cli-2", "cli-9")).unwrap();
    let (code, _, err) = import(&app, &file, 2).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("changed in the 8 lines already imported"), "{err}");

    // Without a token: a usage error, and the vault is not asked.
    let out = qoima_command().arg("import").arg(&file).env_remove("QOIMA_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn qoima_import_exits_4_when_the_vault_fails() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.jsonl");
    std::fs::write(&file, line("fail-1", name("one"))).unwrap();
    let (url, f) = (app.addr.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        qoima_command().arg("import").arg(&f).args(["--url", &url]).env("QOIMA_TOKEN", "not-a-token").output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("b.jsonl.qoima-import").exists(), "nothing acknowledged");
}
