//! Issue #4: backups never contain the root key, a backup taken after an erasure holds no trace
//! of the subject, and a restore of an older backup replays erasures made since.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn backups_and_restores_never_bring_an_erased_borrower_back() {
    if rocksdb_only("restore into a PostgreSQL store is not built yet (issue #26: pg_basebackup with erasure replay)") {
        return;
    }
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml");
    let cfg = cfg.to_str().unwrap().to_string();
    app.put_fields("keep", application("KEEPMARK")).await;
    app.put_fields("gone", application("GONEMARK")).await;
    let dek = wrapped_dek(&app.vault, "gone");

    // Online backup through the running vault's admin socket.
    let before = app.dir.path().join("backup-before");
    let (ok, out) = cli_async(&["backup", "create", before.to_str().unwrap(), "--config", &cfg]).await;
    assert!(ok, "{out}");
    assert!(!files_containing(&before, &dek).is_empty(), "the earlier backup holds the wrapped DEK (until its KEK is destroyed)");

    assert_eq!(app.erase("gone").await.body["status"], "erased");
    let after = app.dir.path().join("backup-after");
    let (ok, out) = cli_async(&["backup", "create", after.to_str().unwrap(), "--config", &cfg]).await;
    assert!(ok, "{out}");
    // A backup after the erasure: no wrapped DEK, no plaintext; no backup holds the root key.
    assert!(files_containing(&after, &dek).is_empty());
    let root_hex = std::fs::read_to_string(app.dir.path().join("root.key")).unwrap();
    let root_bytes = hex::decode(root_hex.trim()).unwrap();
    for b in [&before, &after] {
        for m in ["KEEPMARK", "GONEMARK", root_hex.trim()] {
            assert!(files_containing(b, m.as_bytes()).is_empty(), "{m} in {}", b.display());
        }
        assert!(files_containing(b, &root_bytes).is_empty());
    }
    // A backup refuses an existing folder.
    let (ok, out) = cli_async(&["backup", "create", after.to_str().unwrap(), "--config", &cfg]).await;
    assert!(!ok && out.contains("already exists"), "{out}");
    let audit = app.get("/v1/audit", "auditor").await;
    assert_eq!(audit.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "backup.create").count(), 2);

    // Disaster: restore the backup taken BEFORE the erasure into a new data directory.
    app.stop().await;
    let restored = app.dir.path().join("restored");
    let (ok, out) = cli(&["backup", "restore", before.to_str().unwrap(), "--to", restored.to_str().unwrap(), "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("replayed 1 erasure"), "{out}");
    assert!(files_containing(&restored, &dek).is_empty(), "replay shredded the restored copy too");
    // Restoring into a non-empty folder is refused.
    let (ok, out) = cli(&["backup", "restore", before.to_str().unwrap(), "--to", restored.to_str().unwrap(), "--config", &cfg]);
    assert!(!ok && out.contains("not empty"), "{out}");

    // Run the vault on the restored data: the erased borrower stays erased.
    let TestApp { dir, vault, .. } = app;
    wait_for_last_handle(vault).await;
    let env = |k: &str| (k == "QOIMA_DATA_DIR").then(|| restored.to_str().unwrap().to_string());
    let config = qoima::config::Config::load(&dir.path().join("qoima.toml"), &env).unwrap();
    let app = start(dir, config, None).await;
    assert_eq!(app.read("gone", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    let r = app.read("keep", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["fields"]["identity.full_name"], "Aigerim KEEPMARK");
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test]
async fn the_journal_alone_replays_when_the_live_store_is_lost() {
    if rocksdb_only("restore into a PostgreSQL store is not built yet (issue #26)") {
        return;
    }
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    app.put_fields("lost", application("LOSTMARK")).await;
    app.open_contract("lost", "L-1").await;
    let b = app.dir.path().join("b1");
    assert!(cli_async(&["backup", "create", b.to_str().unwrap(), "--config", &cfg]).await.0);
    // A pending erasure (held by L-1), then the contract settles and it runs.
    assert_eq!(app.erase("lost").await.body["status"], "pending");
    app.set_contract("lost", "L-1", "settled").await;
    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;
    // The live data directory is lost; the journal beside it survives.
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    let to = config.data_dir.clone();
    let (ok, out) = cli(&["backup", "restore", b.to_str().unwrap(), "--to", to.to_str().unwrap(), "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("replayed 1 erasure"), "{out}");
    let app = start(dir, config, None).await;
    assert_eq!(app.read("lost", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
}

#[tokio::test(flavor = "multi_thread")]
async fn kek_destruction_closes_old_backups_even_without_the_journal() {
    if rocksdb_only("restore into a PostgreSQL store is not built yet (issue #26)") {
        return;
    }
    use reqwest::Method;
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    app.put_fields("early", application("EARLYMARK")).await;
    let old = app.dir.path().join("old-backup");
    assert!(cli_async(&["backup", "create", old.to_str().unwrap(), "--config", &cfg]).await.0);
    // The backup holds no KEK.
    let wrapped_gen1 = app
        .vault
        .store()
        .get(qoima::store::Space::Keyring, &qoima::vault::keyring::wrapped_key(qoima_keys::Generation(1)))
        .unwrap()
        .unwrap();
    assert!(files_containing(&old, &wrapped_gen1).is_empty(), "a backup carries no wrapped KEK");
    // The subject is erased, its generation retired, rewrapped away and destroyed.
    app.erase("early").await;
    app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    app.rewrap_to_completion().await;
    assert_eq!(app.call(Method::DELETE, "/v1/keys/1", Some("security"), None).await.status, StatusCode::NO_CONTENT);
    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;
    // Worst case: the journal and the live store are both lost; only the escrow survives.
    std::fs::remove_file(&config.erasure_journal).unwrap();
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    let to = config.data_dir.to_str().unwrap().to_string();
    let (ok, out) = cli(&["backup", "restore", old.to_str().unwrap(), "--to", &to, "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(
        out.contains("replayed 0 erasure") && out.contains("1 subject(s) in the backup have DEKs under destroyed KEK generations"),
        "{out}"
    );
    let app = start(dir, config, None).await;
    let r = app.read("early", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::GONE, "{:?}", r.body);
    assert_eq!(r.body["type"], "urn:qoima:problem:key-destroyed");
    assert!(!r.body.to_string().contains("EARLYMARK"));
}
