//! Issue #23, the core's part: committed work is never answered as "nothing was done" (an
//! erasure whose purge failed, a settled contract releasing one, a KEK rotation or destruction
//! whose escrow copy failed), the KEK wrap limit is enforced, key-schedule day counts are
//! bounded, a restore never writes the live vault's journal or escrow, and a torn journal record
//! loses no whole one.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// Polls `check` every 50 ms for up to 15 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 15 s");
}

async fn erasure_of(app: &TestApp, subject: &str) -> Value {
    let r = app.get(&format!("/v1/subjects/{subject}/erasure"), "website").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_whose_purge_fails_is_answered_erased_with_the_purge_pending_and_finished_later() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("pp-1", application("PPMARK")).await.status, StatusCode::CREATED);
    assert_eq!(app.put_fields("pp-2", application("PPMARK2")).await.status, StatusCode::CREATED);

    app.faults.set_purges_failing(true);
    let r = app.erase("pp-1").await;
    // The shred committed: not "nothing was done".
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["status"], "erased");
    assert_eq!(r.body["purge_pending"], true);
    assert!(r.body["receipt"].as_str().unwrap().starts_with("rcpt_"));
    assert!(r.body["key_fingerprint"].is_string());
    assert_eq!(app.read("pp-1", "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    // Asked again: the same receipt, still pending.
    let again = app.erase("pp-1").await;
    assert_eq!((again.body["receipt"].clone(), again.body["purge_pending"].clone()), (r.body["receipt"].clone(), Value::Bool(true)));

    let metrics = app.metrics().await;
    assert!(metrics.contains("qoima_erasure_purges_pending 1"), "{metrics}");

    // The purge is retried in the background once it can succeed.
    app.faults.set_purges_failing(false);
    eventually("the purge finishes", || async { erasure_of(&app, "pp-1").await["purge_pending"] == false }).await;

    // A purge still pending at a restart is finished at start.
    app.faults.set_purges_failing(true);
    let r = app.erase("pp-2").await;
    assert_eq!((r.status, r.body["purge_pending"].clone()), (StatusCode::ACCEPTED, Value::Bool(true)));
    let app = app.restart().await;
    assert_eq!(erasure_of(&app, "pp-2").await["purge_pending"], false);
    assert_eq!(erasure_of(&app, "pp-1").await["purge_pending"], false);
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settled_contract_whose_released_erasure_fails_to_purge_answers_with_the_committed_result() {
    let app = spawn_app().await;
    app.put_fields("cc-1", application("CCMARK")).await;
    assert_eq!(app.open_contract("cc-1", "K-1").await.status, StatusCode::CREATED);
    assert_eq!(app.erase("cc-1").await.body["status"], "pending");

    app.faults.set_purges_failing(true);
    let r = app.set_contract("cc-1", "K-1", "settled").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "settled");
    assert_eq!(r.body["erasure"]["status"], "erased");
    assert_eq!(r.body["erasure"]["purge_pending"], true);
    assert_eq!(app.read("cc-1", "svc-all", "loan_issuance").await.status, StatusCode::GONE);

    app.faults.set_purges_failing(false);
    eventually("the purge finishes", || async { erasure_of(&app, "cc-1").await["purge_pending"] == false }).await;
}

fn escrow_generations(path: &Path) -> Vec<Value> {
    let escrow: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    escrow["generations"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_changes_whose_escrow_copy_fails_are_answered_done_with_the_escrow_pending() {
    let app = spawn_app().await;
    let escrow = app.config.keyring_escrow.clone();
    // The escrow is written through `<escrow>.tmp`: a directory there makes the write fail.
    let blocker = escrow.with_extension("tmp");
    std::fs::create_dir(&blocker).unwrap();

    let r = app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!((r.body["generation"].clone(), r.body["state"].clone()), (Value::from(2), Value::from("active")));
    assert_eq!(r.body["escrow_pending"], true);
    let keys = app.get("/v1/keys", "security").await;
    assert_eq!(keys.body["generations"][1]["state"], "active", "{:?}", keys.body);
    assert_eq!(escrow_generations(&escrow).len(), 1, "not written while blocked");

    std::fs::remove_dir(&blocker).unwrap();
    eventually("the escrow copy is written", || async { escrow_generations(&escrow).len() == 2 }).await;
    // A rotation whose escrow copy succeeds says nothing of it.
    let r = app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body.get("escrow_pending").is_none(), "{:?}", r.body);

    // Destroying generation 1 (no DEKs under it) while the escrow cannot be written.
    std::fs::create_dir(&blocker).unwrap();
    let r = app.call(Method::DELETE, "/v1/keys/1", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(r.headers.get("qoima-escrow-pending").map(|v| v.to_str().unwrap()), Some("true"));
    let keys = app.get("/v1/keys", "security").await;
    assert_eq!(keys.body["generations"][0]["state"], "destroyed");
    std::fs::remove_dir(&blocker).unwrap();
    eventually("the escrow forgets generation 1", || async {
        let g = escrow_generations(&escrow);
        g[0]["info"]["state"] == "destroyed" && g[0]["wrapped"].is_null()
    })
    .await;
    let r = app.call(Method::DELETE, "/v1/keys/2", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.headers.get("qoima-escrow-pending").is_none());
}

/// `qoima keys rotate` / `destroy` through the running vault's admin socket say it too: one line,
/// the change committed and the escrow copy retried.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_says_when_a_key_change_committed_with_its_escrow_copy_pending() {
    let app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml");
    let cfg = cfg.to_str().unwrap();
    let escrow = app.config.keyring_escrow.clone();
    let blocker = escrow.with_extension("tmp");
    let pending_lines = |out: &str| out.lines().filter(|l| l.contains("escrow copy is not written yet")).count();

    std::fs::create_dir(&blocker).unwrap();
    let (ok, out) = cli_async(&["keys", "rotate", "--config", cfg]).await;
    assert!(ok && out.contains("KEK generation 2 created and active"), "{out}");
    assert_eq!(pending_lines(&out), 1, "{out}");
    assert!(out.contains("the change is committed") && out.contains("retries it in the background"), "{out}");
    std::fs::remove_dir(&blocker).unwrap();
    eventually("the escrow copy is written", || async { escrow_generations(&escrow).len() == 2 }).await;
    let (ok, out) = cli_async(&["keys", "rotate", "--config", cfg]).await;
    assert!(ok && out.contains("KEK generation 3 created and active"), "{out}");
    assert!(!out.contains("escrow"), "a written escrow copy is not mentioned: {out}");

    std::fs::create_dir(&blocker).unwrap();
    let (ok, out) = cli_async(&["keys", "destroy", "1", "--config", cfg]).await;
    assert!(ok && out.contains("KEK generation 1 destroyed"), "{out}");
    assert_eq!(pending_lines(&out), 1, "{out}");
    assert!(!out.contains("and the keyring escrow"), "the escrow still holds it: {out}");
    std::fs::remove_dir(&blocker).unwrap();
    eventually("the escrow forgets generation 1", || async { escrow_generations(&escrow)[0]["wrapped"].is_null() }).await;
    let (ok, out) = cli_async(&["keys", "destroy", "2", "--config", cfg]).await;
    assert!(ok && out.contains("gone from the store and the keyring escrow"), "{out}");
    assert_eq!(pending_lines(&out), 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_kek_generation_wraps_more_than_its_limit() {
    const LIMIT: i64 = 4;
    let app = spawn_with(&format!("[keys]\nkek_wrap_limit = {LIMIT}\n"), None).await;
    let mut refused = 0;
    for i in 0..20 {
        // A write meeting the hard limit before the rotation lands is refused (503, nothing
        // stored) and succeeds on retry.
        let mut tries = 0;
        loop {
            let r = app.put_fields(&format!("w-{i}"), application("WRAPMARK")).await;
            if r.status == StatusCode::CREATED {
                break;
            }
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
            assert!(r.problem_detail().contains("keys.kek_wrap_limit"), "{:?}", r.body);
            refused += 1;
            tries += 1;
            assert!(tries < 100, "write {i} never succeeded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let keys = app.get("/v1/keys", "security").await;
    let gens = keys.body["generations"].as_array().unwrap();
    for g in gens {
        assert!(
            g["deks"].as_i64().unwrap() <= LIMIT,
            "generation {} wraps more than {LIMIT}: {:?} ({refused} refused)",
            g["generation"],
            keys.body
        );
    }
    assert!(gens.len() as i64 >= 20 / LIMIT, "rotated as each generation filled: {:?}", keys.body);
    assert_eq!(gens.iter().map(|g| g["deks"].as_i64().unwrap()).sum::<i64>(), 20);
    let audit = app.get("/v1/audit?limit=1000", "auditor").await;
    let rotations = audit.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "keys.rotate").count();
    assert_eq!(rotations, gens.len() - 1, "every rotation is audited");
    let metrics = app.metrics().await;
    assert!(metrics.contains(&format!("qoima_kek_wrap_limit {LIMIT}")), "{metrics}");
    let active = gens.iter().find(|g| g["state"] == "active").unwrap()["deks"].as_i64().unwrap();
    // Counted before each wrap: never fewer than the DEKs it wraps, never past the limit.
    let counted: i64 = metrics.lines().find_map(|l| l.strip_prefix("qoima_kek_active_wraps ")).unwrap().parse().unwrap();
    assert!((active..=LIMIT).contains(&counted), "{counted} wraps counted for {active} DEKs");
    // Every subject reads back.
    for i in 0..20 {
        assert_eq!(app.read(&format!("w-{i}"), "svc-all", "loan_issuance").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn key_day_counts_out_of_range_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("rotation_days", "4000000000"),
        ("backup_retention_days", "4000000000"),
        ("rotation_days", "0"),
        ("kek_wrap_limit", "0"),
        ("kek_wrap_limit", "4294967297"),
    ] {
        let path = dir.path().join("qoima.toml");
        std::fs::write(&path, config_text(dir.path(), &format!("[keys]\n{key} = {value}\n"))).unwrap();
        let err = qoima::config::Config::load(&path, &|_| None).expect_err("out of range").to_string();
        assert!(err.contains(&format!("keys.{key}")) && !err.contains('\n'), "{err}");
    }
    let path = dir.path().join("qoima.toml");
    std::fs::write(&path, config_text(dir.path(), "[keys]\nrotation_days = 36500\nbackup_retention_days = 36500\n")).unwrap();
    assert!(qoima::config::Config::load(&path, &|_| None).is_ok(), "a hundred years is allowed");
}

#[tokio::test]
async fn an_erasure_receipt_never_overflows_time() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let path = dir.path().join("qoima.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let mut config = qoima::config::Config::load(&path, &|_| None).unwrap();
    // What configuration no longer allows; the receipt must still not panic.
    config.keys.rotation_days = u32::MAX;
    config.keys.backup_retention_days = u32::MAX;
    let app = start(dir, config, None).await;
    app.put_fields("big", application("BIGMARK")).await;
    let r = app.erase("big").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert!(r.body["statement"].as_str().unwrap().contains("unreadable in backups once KEK generation 1 is destroyed"));
}

#[cfg(unix)]
fn inode(p: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.modified().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_beside_the_live_vault_uses_its_own_journal_and_escrow() {
    if rocksdb_only("restore into a PostgreSQL store is not built yet (issue #26)") {
        return;
    }
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    app.put_fields("r-keep", application("RKEEP")).await;
    app.put_fields("r-gone", application("RGONE")).await;
    let b = app.dir.path().join("backup");
    assert!(cli_async(&["backup", "create", b.to_str().unwrap(), "--config", &cfg]).await.0);
    assert_eq!(app.erase("r-gone").await.body["status"], "erased");
    app.stop().await;
    let (live_journal, live_escrow) = (app.config.erasure_journal.clone(), app.config.keyring_escrow.clone());
    let journal_before = std::fs::read(&live_journal).unwrap();
    let escrow_before = (std::fs::read(&live_escrow).unwrap(), inode(&live_escrow));

    let restored = app.dir.path().join("side");
    let (ok, out) = cli(&["backup", "restore", b.to_str().unwrap(), "--to", restored.to_str().unwrap(), "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("replayed 1 erasure"), "{out}");
    // The live vault's files are untouched…
    assert_eq!(std::fs::read(&live_journal).unwrap(), journal_before, "the live journal changed");
    assert_eq!((std::fs::read(&live_escrow).unwrap(), inode(&live_escrow)), escrow_before, "the live escrow was rewritten");
    // …and the restored store has its own, beside it: the escrow of its keyring, and a journal
    // holding the erasure it replayed.
    let own_escrow = app.dir.path().join("side-keyring.json");
    assert_eq!(escrow_generations(&own_escrow).len(), 1);
    let own = qoima::vault::ErasureJournal::read(&app.dir.path().join("side-erasures.jsonl")).unwrap();
    assert!(own.iter().any(|e| e.subject == "r-gone" && e.event == "erased"), "{own:?}");

    // Explicit paths: the live vault's are refused.
    let other = app.dir.path().join("side2");
    let restore_with = |flag: &str, path: &Path| {
        cli(&["backup", "restore", b.to_str().unwrap(), "--to", other.to_str().unwrap(), flag, path.to_str().unwrap(), "--config", &cfg])
    };
    let (ok, out) = restore_with("--keyring-escrow", &live_escrow);
    assert!(!ok && out.contains("--keyring-escrow") && out.contains("live vault"), "{out}");
    assert!(!other.exists() || std::fs::read_dir(&other).unwrap().next().is_none(), "nothing restored");
    let elsewhere = app.dir.path().join("elsewhere-journal.jsonl");
    let (ok, out) = restore_with("--erasure-journal", &elsewhere);
    assert!(ok, "{out}");
    assert!(qoima::vault::ErasureJournal::read(&elsewhere).unwrap().iter().any(|e| e.subject == "r-gone"));
    assert_eq!(std::fs::read(&live_journal).unwrap(), journal_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_journal_record_loses_no_whole_one() {
    if rocksdb_only("it restores a backup; restore into a PostgreSQL store is not built yet (issue #26)") {
        return;
    }
    let mut app = spawn_app().await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    for s in ["t-1", "t-2", "t-3", "t-4"] {
        app.put_fields(s, application("TORNMARK")).await;
    }
    let b = app.dir.path().join("backup");
    assert!(cli_async(&["backup", "create", b.to_str().unwrap(), "--config", &cfg]).await.0);
    let journal = app.config.erasure_journal.clone();
    let append = |bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&journal).unwrap().write_all(bytes).unwrap();
    };
    app.erase("t-1").await;
    // A failed append's torn record, then the next erasures written after it.
    append(br#"{"subject":"t-x","event":"era"#);
    app.erase("t-2").await;
    app.erase("t-3").await;
    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;

    // The live store is lost: the journal alone must replay all three.
    std::fs::remove_dir_all(&config.data_dir).unwrap();
    let to = config.data_dir.to_str().unwrap().to_string();
    let (ok, out) = cli(&["backup", "restore", b.to_str().unwrap(), "--to", &to, "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("replayed 3 erasure"), "{out}");

    // A torn tail (zeros a crash left, then a partial record) is cut off when the vault opens the
    // journal, so the next record starts on its own line.
    append(b"\0\0\0\0");
    append(br#"{"subject":"t-y","ev"#);
    let app = start(dir, config, None).await;
    for s in ["t-1", "t-2", "t-3"] {
        assert_eq!(app.read(s, "svc-all", "loan_issuance").await.status, StatusCode::GONE, "{s}");
    }
    assert_eq!(app.erase("t-4").await.body["status"], "erased");
    let text = std::fs::read(&journal).unwrap();
    let last = text.split(|b| *b == b'\n').rfind(|l| !l.is_empty()).unwrap();
    let entry: qoima::vault::JournalEntry = serde_json::from_slice(last).expect("the last line is a whole record");
    assert_eq!((entry.subject.as_str(), entry.event.as_str()), ("t-4", "erased"));
    let all = qoima::vault::ErasureJournal::read(&journal).unwrap();
    for s in ["t-1", "t-2", "t-3", "t-4"] {
        assert!(all.iter().any(|e| e.subject == s && e.event == "erased"), "{s} in {all:?}");
    }
    assert!(!all.iter().any(|e| e.subject.starts_with("t-x") || e.subject.starts_with("t-y")));
}

#[tokio::test]
async fn the_openapi_document_names_the_follow_up_flags() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None).await.body;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["ErasureResponse"]["properties"]["purge_pending"]["type"], "boolean", "{}", schemas["ErasureResponse"]);
    assert_eq!(schemas["GenerationWire"]["properties"]["escrow_pending"]["type"], "boolean", "{}", schemas["GenerationWire"]);
    let destroyed = &doc["paths"]["/v1/keys/{generation}"]["delete"]["responses"]["204"];
    assert!(destroyed["headers"]["qoima-escrow-pending"].is_object(), "{destroyed}");
}
