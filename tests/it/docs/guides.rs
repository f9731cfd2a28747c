//! The getting-started and operator guides, run as printed.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_getting_started_guide_works_as_printed() {
    let doc = read_doc("docs/getting-started.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "getting-started-dev",
            "getting-started-first-session",
            "getting-started-config",
            "getting-started-serve",
            "getting-started-own-config"
        ]
    );
    let mut s = Session::new();
    // `cargo run -- serve` runs in the clone.
    s.cwd = s.home.path().join("qoima");
    std::fs::create_dir_all(&s.cwd).unwrap();
    for (caller, var) in [
        ("dev-service", "SERVICE"),
        ("dev-website", "WEBSITE"),
        ("dev-security", "SECURITY"),
        ("dev-auditor", "AUDITOR"),
        ("origination", "SERVICE"),
        ("website", "WEBSITE"),
        ("auditor", "AUDITOR"),
    ] {
        s.token_vars.insert(caller.to_string(), var.to_string());
    }
    for b in &blocks {
        s.run_block(b).await;
    }
    // The development vault printed its warning and four tokens, once.
    let dev = &s.printed["getting-started-dev"];
    assert!(dev.contains("WARNING: DEVELOPMENT MODE"), "{dev}");
    assert_eq!(dev.matches("qv1_").count(), 4, "{dev}");
    // The trial vault's root key stays outside its data directory and out of the backup.
    let trial = s.home.path().join("qoima-trial");
    let key = std::fs::read_to_string(trial.join("root.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    for dir in ["data", "backups"] {
        assert!(files_containing(&trial.join(dir), key.trim().as_bytes()).is_empty(), "the root key reached {dir}/");
    }
    tokio::task::block_in_place(|| s.stop_server());
}

/// Every `METHOD /path` of the endpoint table in docs/api.md (query strings dropped).

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_guide_works_as_printed() {
    if rocksdb_only("the guide backs up and restores a RocksDB data directory") {
        return;
    }
    let doc = read_doc("docs/operator-guide.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["operator-health", "operator-audit", "operator-backup", "operator-keys"]);
    let app = spawn_app().await;
    for i in 1..=3 {
        assert_eq!(app.put_fields(&format!("ops-{i}"), serde_json::json!({"identity.full_name": "Ops"})).await.status, 201);
    }
    let mut s = Session::new().with_app(&app);
    // The guide's paths are those of the test vault; the CLI runs as the test's own user.
    let dir = app.dir.path().display().to_string();
    s.replace.push(("/etc/qoima/qoima.toml".to_string(), format!("{dir}/qoima.toml")));
    s.replace.push(("/var/lib/qoima/".to_string(), format!("{dir}/")));
    s.replace.push(("sudo -u qoima ".to_string(), String::new()));
    for b in &blocks {
        s.run_block(b).await;
    }
    assert!(!app.dir.path().join("restore-drill").exists(), "the drill cleans up after itself");
}
