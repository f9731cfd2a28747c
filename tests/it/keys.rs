//! Issue #5: key management: rotate, rewrap online (with crashes and concurrent writes and
//! erasures), destroy, rekey, root-key rotation, the per-DEK encryption cap.

use std::time::Duration;

use qoima::layout::subject_key;
use qoima::store::Space;
use qoima::vault::codec::SubjectMeta;
use qoima::vault::keyring::wrapped_key;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

fn generation_of(app: &TestApp, subject: &str) -> u32 {
    let raw = app.vault.store().get(Space::Subjects, subject.as_bytes()).unwrap().unwrap();
    SubjectMeta::decode(&raw).unwrap().generation().unwrap().0
}

async fn keys(app: &TestApp) -> Vec<Value> {
    let r = app.get("/v1/keys", "security").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["generations"].as_array().unwrap().clone()
}

async fn create_many(app: &TestApp, prefix: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, addr) = (app.client.clone(), app.addr.clone());
        let id = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let r = client
                .put(format!("{addr}/v1/subjects/{id}"))
                .bearer_auth(token("svc-all"))
                .json(&json!({"fields": {"identity.full_name": format!("Name {id}"), "questionnaire.monthly_income": i}}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }));
        if tasks.len() >= 32 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn rotate_then_new_subjects_use_the_new_generation() {
    let app = spawn_app().await;
    app.put_fields("old", json!({"identity.full_name": "Old"})).await;
    let r = app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!((r.body["generation"].as_u64(), r.body["state"].as_str()), (Some(2), Some("active")));
    app.put_fields("new", json!({"identity.full_name": "New"})).await;
    assert_eq!((generation_of(&app, "old"), generation_of(&app, "new")), (1, 2));
    let k = keys(&app).await;
    assert_eq!((k[0]["state"].as_str(), k[0]["deks"].as_i64()), (Some("decrypt-only"), Some(1)));
    assert_eq!((k[1]["state"].as_str(), k[1]["deks"].as_i64()), (Some("active"), Some(1)));
    assert!(k[0]["retired_at"].is_string() && k[1]["activated_at"].is_string());
    for s in ["old", "new"] {
        assert_eq!(app.read(s, "svc-all", "loan_issuance").await.status, StatusCode::OK);
    }
    // Only the security team.
    assert_eq!(app.call(Method::POST, "/v1/keys/rotate", Some("auditor"), None).await.status, StatusCode::FORBIDDEN);
    let audit = app.get("/v1/audit", "auditor").await;
    assert!(audit.body["entries"].as_array().unwrap().iter().any(|e| e["action"] == "keys.rotate" && e["caller"] == "security"));
}

#[tokio::test]
async fn rewrap_moves_every_dek_then_the_old_generation_can_be_destroyed() {
    let app = spawn_with("[keys]\nrewrap_batch = 16\n", None).await;
    create_many(&app, "rw", 150).await;
    app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    // Destroy is refused while the generation is active or still wraps DEKs.
    let r = app.call(Method::DELETE, "/v1/keys/2", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let r = app.call(Method::DELETE, "/v1/keys/1", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.problem_detail().contains("150 DEKs"), "{}", r.problem_detail());
    assert_eq!(app.call(Method::DELETE, "/v1/keys/9", Some("security"), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call(Method::DELETE, "/v1/keys/x", Some("security"), None).await.status, StatusCode::BAD_REQUEST);

    let done = app.rewrap_to_completion().await;
    assert_eq!((done["done"].as_u64(), done["total"].as_u64(), done["target_generation"].as_u64()), (Some(150), Some(150), Some(2)));
    let k = keys(&app).await;
    assert_eq!((k[0]["deks"].as_i64(), k[1]["deks"].as_i64()), (Some(0), Some(150)));
    assert!((0..150).all(|i| generation_of(&app, &format!("rw-{i}")) == 2));

    let wrapped_gen1 = app.vault.store().get(Space::Keyring, &wrapped_key(qoima_keys::Generation(1))).unwrap().unwrap();
    assert!(!files_in(&app.store_dirs(), &wrapped_gen1).is_empty(), "the scan sees the wrapped KEK while it exists");
    let r = app.call(Method::DELETE, "/v1/keys/1", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert!(files_in(&app.store_dirs(), &wrapped_gen1).is_empty(), "the destroyed generation's wrapped key is gone from every file");
    let escrow = std::fs::read_to_string(&app.config.keyring_escrow).unwrap();
    assert!(!escrow.contains(&hex::encode(&wrapped_gen1)), "and from the escrow");
    assert_eq!(keys(&app).await[0]["state"], "destroyed");
    // Everything is still readable, through generation 2.
    for i in [0, 77, 149] {
        let r = app.read(&format!("rw-{i}"), "svc-all", "loan_issuance").await;
        assert_eq!(r.body["fields"]["questionnaire.monthly_income"], json!(i));
    }
    let audit = app.get("/v1/audit?limit=1000", "auditor").await;
    let actions: Vec<&str> = audit.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"keys.rewrap") && actions.contains(&"keys.destroy"));
    // Survives a restart with generation 1 gone.
    let app = app.restart().await;
    assert_eq!(app.read("rw-3", "svc-all", "loan_issuance").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrap_with_concurrent_writes_and_erasures_loses_nothing_and_resurrects_nothing() {
    let app = spawn_with("[keys]\nrewrap_batch = 8\nrewrap_pause_ms = 3\n", None).await;
    create_many(&app, "c", 240).await;
    app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    let r = app.call(Method::POST, "/v1/keys/rewrap", Some("security"), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // While it runs: update a third, erase a third, create new ones.
    let mut tasks = Vec::new();
    for i in 0..240 {
        let (client, addr) = (app.client.clone(), app.addr.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("c-{i}");
            let req = match i % 3 {
                0 => client
                    .put(format!("{addr}/v1/subjects/{id}"))
                    .bearer_auth(token("svc-all"))
                    .json(&json!({"fields": {"identity.email": format!("{id}@new.kz")}})),
                1 => client.post(format!("{addr}/v1/subjects/{id}/erasure")).bearer_auth(token("website")),
                _ => client
                    .put(format!("{addr}/v1/subjects/n-{i}"))
                    .bearer_auth(token("svc-all"))
                    .json(&json!({"fields": {"identity.full_name": "Newcomer"}})),
            };
            assert!(req.send().await.unwrap().status().is_success());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut state = Value::Null;
    for _ in 0..600 {
        state = app.get("/v1/keys/rewrap", "security").await.body;
        if state["state"] == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "complete", "{state}");
    for i in 0..240 {
        let id = format!("c-{i}");
        let r = app.read(&id, "svc-all", "loan_issuance").await;
        match i % 3 {
            0 => assert_eq!(r.body["fields"]["identity.email"], json!(format!("{id}@new.kz")), "update lost for {id}"),
            1 => {
                assert_eq!(r.status, StatusCode::GONE, "{id} resurrected");
                assert!(app.vault.store().get(Space::Subjects, id.as_bytes()).unwrap().is_none());
                assert_eq!(keys_of(&app.vault, Space::Records, &id), 0);
            }
            _ => {
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(app.read(&format!("n-{i}"), "svc-all", "loan_issuance").await.status, StatusCode::OK);
            }
        }
    }
    // Counters agree with the store: every live DEK is under generation 2.
    let k = keys(&app).await;
    let live = 240 - 80 + 80;
    assert_eq!((k[0]["deks"].as_i64(), k[1]["deks"].as_i64()), (Some(0), Some(live)));
    let mut under = [0i64; 3];
    app.vault
        .store()
        .scan(Space::Subjects, &[], &[0xff], |_, v| {
            under[SubjectMeta::decode(v).unwrap().generation().unwrap().0 as usize] += 1;
            true
        })
        .unwrap();
    assert_eq!(under, [0, 0, live]);
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

#[tokio::test]
async fn rekey_keeps_values_and_changes_ciphertexts() {
    let app = spawn_app().await;
    app.put_fields("k", application("REKEY")).await;
    let before = app.vault.store().get(Space::Records, &subject_key("k", "identity.full_name")).unwrap().unwrap();
    let r = app.call(Method::POST, "/v1/subjects/k/rekey", Some("security"), None).await;
    assert_eq!((r.status, r.body["dek_version"].as_u64()), (StatusCode::OK, Some(2)));
    let after = app.vault.store().get(Space::Records, &subject_key("k", "identity.full_name")).unwrap().unwrap();
    assert_ne!(before, after);
    assert_eq!(before[..8], after[..8], "the record version is kept");
    let r = app.read("k", "svc-all", "loan_issuance").await;
    assert_eq!(r.body["fields"]["identity.full_name"], "Aigerim REKEY");
    let app = app.restart().await;
    assert_eq!(app.read("k", "svc-all", "loan_issuance").await.body["fields"]["identity.address"], "Almaty, Abay 1, REKEY");
    assert_eq!(app.call(Method::POST, "/v1/subjects/k/rekey", Some("svc-all"), None).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_dek_that_reaches_its_encryption_cap_is_rotated() {
    let app = spawn_with("[keys]\ndek_seal_limit = 10\n", None).await;
    app.put_fields("cap", json!({"identity.full_name": "A", "identity.phone": "+77010000001", "identity.email": "a@b.kz"})).await;
    for i in 0..4 {
        app.put_fields("cap", json!({"questionnaire.dependants": i, "questionnaire.employer": format!("E{i}")})).await;
    }
    let meta = SubjectMeta::decode(&app.vault.store().get(Space::Subjects, b"cap").unwrap().unwrap()).unwrap();
    assert!(meta.dek_version.0 >= 2, "the DEK rotated");
    assert!(meta.seals <= 10);
    let r = app.read("cap", "svc-all", "loan_issuance").await;
    assert_eq!(r.body["fields"]["identity.email"], "a@b.kz");
    assert_eq!(r.body["fields"]["questionnaire.employer"], "E3");
}

#[tokio::test]
async fn root_key_rotation_then_restart_with_only_the_new_key() {
    let mut app = spawn_app().await;
    app.put_fields("rk", json!({"identity.full_name": "Root"})).await;
    app.call(Method::POST, "/v1/keys/rotate", Some("security"), None).await;
    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;
    let cfg = dir.path().join("qoima.toml");
    let new_key = dir.path().join("root-2.key");
    qoima_keys::RootKey::generate_file(&new_key).unwrap();
    let (ok, out) = cli(&["keys", "rotate-root", "--new-root-key", new_key.to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("2 KEK generation(s) now wrapped"), "{out}");
    // The old root key no longer opens the keyring, and says so.
    let err = qoima::server::Application::build(config.clone(), Default::default()).await.err().expect("old key refused");
    assert!(err.to_string().contains("cannot open KEK generation 1 with the configured root key"), "{err}");
    // The new one does.
    std::fs::remove_file(dir.path().join("root.key")).unwrap();
    std::fs::rename(&new_key, dir.path().join("root.key")).unwrap();
    let app = start(dir, config, None).await;
    assert_eq!(app.read("rk", "svc-all", "loan_issuance").await.body["fields"]["identity.full_name"], "Root");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_runs_key_operations_on_a_running_vault() {
    let app = spawn_with("[keys]\nrewrap_batch = 5\n", None).await;
    create_many(&app, "cli", 30).await;
    let cfg = app.dir.path().join("qoima.toml").to_str().unwrap().to_string();
    let (ok, out) = cli_async(&["keys", "rotate", "--config", &cfg]).await;
    assert!(ok && out.contains("generation 2 created"), "{out}");
    let (ok, out) = cli_async(&["keys", "rewrap", "--config", &cfg]).await;
    assert!(ok && out.contains("complete: 30 of 30 DEKs moved"), "{out}");
    let (ok, out) = cli_async(&["keys", "destroy", "1", "--config", &cfg]).await;
    assert!(ok, "{out}");
    let (ok, out) = cli_async(&["keys", "status", "--config", &cfg]).await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.starts_with("1 ") && l.contains("destroyed")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("2 ") && l.contains("active") && l.contains(" 30 ")), "{out}");
    let (ok, out) = cli_async(&["keys", "destroy", "2", "--config", &cfg]).await;
    assert!(!ok && out.contains("active"), "{out}");
    let audit = app.get("/v1/audit?limit=1000", "auditor").await;
    assert!(audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "keys.destroy" && e["caller"].as_str().unwrap().starts_with("local.uid")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_survives_kill_9_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let cfg = dir.path().join("qoima.toml");
    std::fs::write(&cfg, config_text(dir.path(), "[keys]\nrewrap_batch = 10\nrewrap_pause_ms = 15\n")).unwrap();
    let client = reqwest::Client::new();
    let mut child = spawn_binary(&cfg);
    let addr = child.addr.clone();
    for i in 0..300 {
        let r = client
            .put(format!("{addr}/v1/subjects/k9-{i}"))
            .bearer_auth(token("svc-all"))
            .json(&json!({"fields": {"questionnaire.monthly_income": i}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    client.post(format!("{addr}/v1/keys/rotate")).bearer_auth(token("security")).send().await.unwrap();
    let r = client.post(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    loop {
        let p: Value =
            client.get(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security")).send().await.unwrap().json().await.unwrap();
        if p["done"].as_u64().unwrap() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill();

    // Killed mid-way: the job is stored as running, part done.
    let data = dir.path().join("data");
    let job = {
        let config = qoima::config::Config::load(&cfg, &|_| None).unwrap();
        let store = qoima::store::Store::open_engine_for_reading(&config.storage, &data, qoima::audit::summary::merge).unwrap();
        let job: Value = serde_json::from_slice(&store.get(Space::Jobs, b"rewrap").unwrap().unwrap()).unwrap();
        let counts: Vec<i64> = (1..=2)
            .map(|g| store.counter(Space::Keyring, &[b"count/deks/".as_slice(), &(g as u32).to_be_bytes()].concat()).unwrap())
            .collect();
        assert_eq!(counts[0] + counts[1], 300, "every DEK counted exactly once after the crash");
        assert_eq!(counts[1] as u64, job["done"].as_u64().unwrap(), "the cursor and the moved DEKs were committed together");
        job
    };
    assert_eq!(job["state"], "running");
    let done_at_kill = job["done"].as_u64().unwrap();
    assert!((60..300).contains(&done_at_kill), "{job}");

    // Restart: it resumes by itself and finishes.
    let mut child = spawn_binary(&cfg);
    let addr = child.addr.clone();
    let mut finished = Value::Null;
    for _ in 0..600 {
        let p: Value =
            client.get(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security")).send().await.unwrap().json().await.unwrap();
        if p["state"] == "complete" {
            finished = p;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(finished["done"], 300, "{finished}");
    for i in (0..300).step_by(37) {
        let r: Value = client
            .get(format!("{addr}/v1/subjects/k9-{i}?purpose=loan_issuance"))
            .bearer_auth(token("svc-all"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["fields"]["questionnaire.monthly_income"], json!(i));
    }
    let k: Value = client.get(format!("{addr}/v1/keys")).bearer_auth(token("security")).send().await.unwrap().json().await.unwrap();
    assert_eq!((k["generations"][0]["deks"].as_i64(), k["generations"][1]["deks"].as_i64()), (Some(0), Some(300)));
    let v: Value = client.get(format!("{addr}/v1/audit/verify")).bearer_auth(token("auditor")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    child.kill();
}
