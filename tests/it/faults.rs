//! Issue #7: storage faults. The data directory sits on a small tmpfs that fills up: the vault
//! answers clear 503s, returns no plaintext it could not audit, corrupts nothing, and recovers
//! by itself once space returns. Needs root (to mount the tmpfs), as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "this suite mounts a tmpfs and needs root: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_path_buf())
    }

    fn grow(&self, size_mb: u32) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size_mb}m")]).arg(&self.0).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_yields_503s_no_plaintext_no_corruption_and_recovery() {
    if rocksdb_only("a full disk under RocksDB's data directory (PostgreSQL's disk is the server's)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 16);
    let cfg = dir.path().join("qoima.toml");
    std::fs::write(&cfg, config_text(dir.path(), "")).unwrap();
    let env = |k: &str| (k == "QOIMA_DATA_DIR").then(|| dir.path().join("disk/data").to_str().unwrap().to_string());
    let config = qoima::config::Config::load(&cfg, &env).unwrap();
    let dir_path = dir.path().to_path_buf();
    let app = start(dir, config, None).await;

    // Fill the disk with acknowledged writes until the vault refuses.
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..20_000 {
        let r = app.put_fields(&format!("f-{i}"), json!({"identity.full_name": format!("FULLMARK {i} {}", "x".repeat(900))})).await;
        match r.status {
            StatusCode::CREATED => acked.push(i),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.headers["content-type"], "application/problem+json");
                assert_eq!(r.body["type"], "urn:qoima:problem:unavailable");
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("write {i}: unexpected {other} {:?}", r.body),
        }
    }
    assert!(refused >= 3 && acked.len() > 100, "the disk filled: {} acknowledged, {refused} refused", acked.len());

    // While full: reads cannot be audited, so they return no plaintext.
    let r = app.read(&format!("f-{}", acked[0]), "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!r.body.to_string().contains("FULLMARK"));
    assert_eq!(app.call(reqwest::Method::GET, "/readyz", None, None).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.call(reqwest::Method::GET, "/healthz", None, None).await.status, StatusCode::OK, "alive, not ready");

    // Space returns: the vault recovers by itself.
    disk.grow(256);
    let grown = std::time::Instant::now();
    let mut recovered = false;
    for _ in 0..120 {
        if app.put_fields("after", json!({"identity.full_name": "After"})).await.status == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "no recovery within 30 s of space returning");
    eprintln!(
        "faults: {} writes acknowledged before the disk filled, {refused} refused; writes again {:.1} s after space returned",
        acked.len(),
        grown.elapsed().as_secs_f64()
    );
    assert_eq!(app.call(reqwest::Method::GET, "/readyz", None, None).await.status, StatusCode::OK);
    // Nothing acknowledged was lost, nothing is corrupt, the chain holds, across a restart too.
    let app = app.restart().await;
    for i in acked.iter().step_by(37).chain(acked.last()) {
        let r = app.read(&format!("f-{i}"), "svc-all", "loan_issuance").await;
        assert_eq!(r.status, StatusCode::OK, "f-{i}");
        assert!(r.body["fields"]["identity.full_name"].as_str().unwrap().starts_with(&format!("FULLMARK {i} ")));
    }
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
    let mut app = app;
    app.stop().await;
    let TestApp { vault, .. } = app;
    wait_for_last_handle(vault).await;
    drop(disk);
    let _ = dir_path;
}
