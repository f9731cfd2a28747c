//! Issue #3: audit entries for allowed and denied requests, the hash chain and its tamper
//! detection (HTTP and CLI), and fail-closed reads and writes when the audit log fails.

use std::process::Command;

use qoima::audit::AuditEntry;
use qoima::store::{Batch, Space, Store};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn allowed_and_denied_reads_are_audited_without_values() {
    let app = spawn_app().await;
    app.put_fields("au-1", application("AUDITMARK")).await;
    app.read("au-1", "svc-issuance", "loan_issuance").await;
    app.read("au-1", "svc-marketing", "advertising").await;
    let r = app.get("/v1/audit?subject=au-1", "auditor").await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.body["entries"].as_array().unwrap();
    assert_eq!(e.len(), 3, "{:?}", r.body);
    assert_eq!((e[0]["action"].as_str(), e[0]["decision"].as_str()), (Some("subject.put"), Some("allow")));
    assert_eq!(
        (e[1]["caller"].as_str(), e[1]["purpose"].as_str(), e[1]["decision"].as_str()),
        (Some("svc-issuance"), Some("loan_issuance"), Some("allow"))
    );
    assert!(e[1]["fields"].as_array().unwrap().contains(&json!("identity.iin")));
    assert_eq!((e[2]["caller"].as_str(), e[2]["decision"].as_str()), (Some("svc-marketing"), Some("deny")));
    assert!(e[2]["reason"].as_str().unwrap().contains("no consent for advertising"));
    for k in ["seq", "time", "caller", "action", "subject", "purpose", "fields", "decision", "reason", "request_id", "prev_hash", "hash"] {
        assert!(e[1].get(k).is_some(), "entry lacks {k}");
    }
    let text = r.body.to_string();
    assert!(
        !text.contains("AUDITMARK") && !text.contains("900101300017") && !text.contains("test-token"),
        "values or tokens in the audit trail"
    );
    // Filters.
    let r = app.get("/v1/audit?subject=au-1&caller=svc-marketing", "auditor").await;
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 1);
    let first = e[0]["seq"].as_u64().unwrap();
    let r = app.get(&format!("/v1/audit?subject=au-1&after={first}&limit=1"), "security").await;
    assert_eq!(r.body["entries"][0]["seq"].as_u64().unwrap(), e[1]["seq"].as_u64().unwrap());
}

fn entry(store: &Store, seq: u64) -> AuditEntry {
    serde_json::from_slice(&store.get(Space::Audit, &seq.to_be_bytes()).unwrap().unwrap()).unwrap()
}

fn put_entry(store: &Store, seq: u64, e: &AuditEntry) {
    let mut b = Batch::default();
    b.put(Space::Audit, seq.to_be_bytes().to_vec(), serde_json::to_vec(e).unwrap());
    store.write(&b).unwrap();
}

fn cli_verify(app: &TestApp) -> (bool, String) {
    let cfg = app.dir.path().join("qoima.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_qoima")).args(["audit", "verify", "--config"]).arg(&cfg).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn verify_over_http_and_cli_detects_edit_delete_reorder() {
    let mut app = spawn_app().await;
    for i in 0..4 {
        app.put_fields(&format!("t-{i}"), json!({"identity.full_name": "T"})).await;
    }
    let v = app.get("/v1/audit/verify", "auditor").await;
    assert_eq!(v.body["ok"], true);
    assert_eq!(v.body["entries"], 4);
    let head = v.body["head"].as_str().unwrap().to_string();
    // Beside a running vault, the CLI verifies read-only.
    let (ok, out) = cli_verify(&app);
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");
    // An anchor recorded earlier is accepted while the log is untouched.
    let v = app.get(&format!("/v1/audit/verify?anchor=4:{head}"), "auditor").await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);

    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;
    let app_dir = dir;
    let data = config.data_dir.clone();
    let shell = TestAppShell { dir: app_dir };

    // Edit entry 2.
    {
        let store = Store::open_engine(&config.storage, &data, qoima::audit::summary::merge).unwrap();
        let mut e = entry(&store, 2);
        e.reason = "nothing happened".into();
        put_entry(&store, 2, &e);
    }
    let (ok, out) = shell.verify();
    assert!(!ok && out.contains("BROKEN at entry 2"), "{out}");
    // Restore it, then delete entry 3.
    let store = Store::open_engine(&config.storage, &data, qoima::audit::summary::merge).unwrap();
    let mut e = entry(&store, 2);
    e.reason = "fields written".into();
    if e.compute_hash() != e.hash {
        e.reason = "subject created".into();
    }
    put_entry(&store, 2, &e);
    let saved3 = entry(&store, 3);
    let mut b = Batch::default();
    b.delete(Space::Audit, 3u64.to_be_bytes().to_vec());
    store.write(&b).unwrap();
    drop(store);
    let (ok, out) = shell.verify();
    assert!(!ok && out.contains("BROKEN at entry 3"), "{out}");
    // Put 3 back and swap 3 with 4.
    let store = Store::open_engine(&config.storage, &data, qoima::audit::summary::merge).unwrap();
    put_entry(&store, 3, &saved3);
    let four = entry(&store, 4);
    put_entry(&store, 3, &four);
    put_entry(&store, 4, &saved3);
    drop(store);
    let (ok, out) = shell.verify();
    assert!(!ok && out.contains("BROKEN at entry 3"), "{out}");
    // Undo the swap: intact again.
    let store = Store::open_engine(&config.storage, &data, qoima::audit::summary::merge).unwrap();
    put_entry(&store, 3, &saved3);
    put_entry(&store, 4, &four);
    drop(store);
    let (ok, out) = shell.verify();
    assert!(ok, "{out}");
}

struct TestAppShell {
    dir: tempfile::TempDir,
}

impl TestAppShell {
    fn verify(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_qoima"))
            .args(["audit", "verify", "--config"])
            .arg(self.dir.path().join("qoima.toml"))
            .output()
            .unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[tokio::test]
async fn a_failing_audit_log_yields_503_and_no_plaintext() {
    let app = spawn_app().await;
    app.put_fields("f-1", application("FAILCLOSED")).await;
    app.faults.set(true);
    let r = app.read("f-1", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.body.to_string().contains("FAILCLOSED") && !r.body.to_string().contains("900101300017"));
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // Writes fail too, and leave nothing behind.
    assert_eq!(app.put_fields("f-2", json!({"identity.full_name": "F2"})).await.status, StatusCode::SERVICE_UNAVAILABLE);
    // Denied reads also fail closed (the refusal cannot be recorded).
    assert_eq!(app.read("f-1", "svc-marketing", "advertising").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    app.faults.set(false);
    assert_eq!(app.read("f-2", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND, "the failed write stored nothing");
    assert_eq!(app.read("f-1", "svc-all", "loan_issuance").await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_exports_the_trail_as_json_lines() {
    let app = spawn_app().await;
    app.put_fields("ex-1", application("EXPORTMARK")).await;
    app.put_fields("ex-2", json!({"identity.full_name": "Two"})).await;
    app.read("ex-1", "svc-all", "loan_issuance").await;
    let cfg = app.dir.path().join("qoima.toml");
    let (ok, out) = cli_async(&["audit", "export", "--config", cfg.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["action"], "subject.read");
    assert!(!out.contains("EXPORTMARK"));
    let (ok, out) = cli_async(&["audit", "export", "--subject", "ex-2", "--config", cfg.to_str().unwrap()]).await;
    assert!(ok && out.lines().count() == 1, "{out}");
    let (ok, out) = cli_async(&["audit", "export", "--after", "2", "--config", cfg.to_str().unwrap()]).await;
    assert!(ok && out.lines().count() == 1, "{out}");
}
