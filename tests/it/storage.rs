//! Issue #2: plaintext never reaches disk, a shred leaves no wrapped DEK in any file, a
//! restart keeps every acknowledged write, ciphertexts are bound to where they belong.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn plaintext_markers_never_reach_disk() {
    let mut app = spawn_app().await;
    let markers: Vec<String> = (0..5).map(|i| format!("MARKER-PLAIN-{i}-{}", qoima::domain::random_hex::<6>())).collect();
    for (i, m) in markers.iter().enumerate() {
        let r = app.put_fields(&format!("s-{i}"), application(m)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    // Read them back (so caches and audit have seen them), then check every file, also after
    // a clean shutdown has flushed memtables into SST files.
    for i in 0..markers.len() {
        assert_eq!(app.read(&format!("s-{i}"), "svc-all", "loan_issuance").await.status, StatusCode::OK);
    }
    for m in &markers {
        assert!(files_in(&app.all_dirs(), m.as_bytes()).is_empty(), "marker {m} found on disk");
    }
    let app2 = {
        app.stop().await;
        app.restart().await
    };
    for m in &markers {
        assert!(files_in(&app2.all_dirs(), m.as_bytes()).is_empty(), "marker {m} on disk after restart");
    }
    // The values are still there, only encrypted.
    let r = app2.read("s-0", "svc-all", "loan_issuance").await;
    assert_eq!(r.body["fields"]["identity.full_name"], json!(format!("Aigerim {}", markers[0])));
}

#[tokio::test]
async fn shredding_leaves_no_wrapped_dek_in_any_file() {
    let app = spawn_app().await;
    for s in ["keep", "gone"] {
        assert_eq!(app.put_fields(s, application("SHRED")).await.status, StatusCode::CREATED);
    }
    let dek = wrapped_dek(&app.vault, "gone");
    let kept = wrapped_dek(&app.vault, "keep");
    // The scan can see a wrapped DEK when one is there (in the WAL at this point).
    assert!(seen_in(&app.store_dirs(), &dek), "the scan must find a live wrapped DEK");

    let r = app.erase("gone").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["status"], "erased");
    assert!(r.body["key_fingerprint"].as_str().is_some_and(|f| f.len() == 32));

    let holding = files_in(&app.store_dirs(), &dek);
    assert!(holding.is_empty(), "wrapped DEK still in {holding:?}");
    assert!(files_in(&app.all_dirs(), &dek).is_empty(), "nor anywhere else under the test dir");
    // The other subject is untouched and readable.
    assert!(!files_in(&app.store_dirs(), &kept).is_empty());
    assert_eq!(app.read("keep", "svc-all", "loan_issuance").await.status, StatusCode::OK);
    // Later reads say erased, not unknown; writes are refused.
    let r = app.read("gone", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.body["receipt"], app.get("/v1/subjects/gone/erasure", "website").await.body["receipt"]);
    assert_eq!(app.put_fields("gone", json!({"identity.full_name": "Back"})).await.status, StatusCode::GONE);
    assert_eq!(app.read("never", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND);
}

/// Erasures racing each other (their purges grouped) beside a stream of creates, and the
/// background compactions the purges' flushes set off in the other spaces, leave none of the
/// erased subjects' wrapped DEKs in any file. (The store's own test,
/// `a_purge_beside_background_compactions_of_its_space_leaves_nothing`, races a purge against
/// compactions of the same space, which this load does not reach.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_erasures_beside_creates_leave_no_wrapped_dek_in_any_file() {
    let app = spawn_app().await;
    let put = |id: String| {
        let (client, addr) = (app.client.clone(), app.addr.clone());
        async move {
            let r = client
                .put(format!("{addr}/v1/subjects/{id}"))
                .bearer_auth(token("svc-all"))
                .json(&json!({"fields": {"identity.full_name": format!("Name {id}"), "identity.email": format!("{id}@mail.kz")}}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{id}: {}", r.status());
        }
    };
    let mut tasks = Vec::new();
    for i in 0..120 {
        tasks.push(tokio::spawn(put(format!("e-{i}"))));
    }
    for t in tasks.drain(..) {
        t.await.unwrap();
    }
    let gone: Vec<Vec<u8>> = (0..60).map(|i| wrapped_dek(&app.vault, &format!("e-{i}"))).collect();
    let kept = wrapped_dek(&app.vault, "e-119");
    // Erasures in waves, creates throughout.
    for wave in 0..6 {
        for i in wave * 10..wave * 10 + 10 {
            let (client, addr) = (app.client.clone(), app.addr.clone());
            tasks.push(tokio::spawn(async move {
                let r = client.post(format!("{addr}/v1/subjects/e-{i}/erasure")).bearer_auth(token("website")).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::ACCEPTED);
            }));
        }
        for i in 0..40 {
            tasks.push(tokio::spawn(put(format!("n-{wave}-{i}"))));
        }
        for t in tasks.drain(..) {
            t.await.unwrap();
        }
    }
    let mut needles: Vec<&[u8]> = gone.iter().map(Vec::as_slice).collect();
    needles.push(&kept);
    let (found, live): (Vec<_>, Vec<_>) =
        app.all_dirs().iter().flat_map(|d| files_holding(d, &needles)).collect::<Vec<_>>().into_iter().partition(|(i, _)| *i < gone.len());
    assert!(!live.is_empty(), "the scan must find a live wrapped DEK");
    assert!(found.is_empty(), "wrapped DEKs of erased subjects still in files: {found:?}");
}

#[tokio::test]
async fn a_restart_keeps_every_acknowledged_write() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    let client = app.client.clone();
    for i in 0..40 {
        let (client, addr) = (client.clone(), app.addr.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .put(format!("{addr}/v1/subjects/r-{i}"))
                .bearer_auth(token("svc-all"))
                .json(&json!({"fields": {"identity.full_name": format!("Name {i}"), "questionnaire.monthly_income": i}}))
                .send()
                .await
                .unwrap();
            (i, r.status())
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        if status.is_success() {
            acknowledged.push(i);
        }
    }
    assert_eq!(acknowledged.len(), 40);
    let app = app.restart().await;
    for i in acknowledged {
        let r = app.read(&format!("r-{i}"), "svc-all", "loan_issuance").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["fields"]["identity.full_name"], json!(format!("Name {i}")));
        assert_eq!(r.body["fields"]["questionnaire.monthly_income"], json!(i));
    }
    let v = app.get("/v1/audit/verify", "auditor").await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_subject_or_field_fails_to_open() {
    use qoima::layout::subject_key;
    use qoima::store::{Batch, Space};
    let app = spawn_app().await;
    app.put_fields("a", json!({"identity.full_name": "Alice SECRET", "identity.address": "Street A"})).await;
    app.put_fields("b", json!({"identity.full_name": "Bob", "identity.address": "Street B"})).await;
    let store = app.vault.store();
    let a_name = store.get(Space::Records, &subject_key("a", "identity.full_name")).unwrap().unwrap();

    // Another field of the same subject: same DEK, but the AAD names the field.
    let mut b = Batch::default();
    b.put(Space::Records, subject_key("a", "identity.address"), a_name.clone());
    store.write(&b).unwrap();
    let r = app.get("/v1/subjects/a?purpose=loan_issuance&fields=identity.address", "svc-all").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.body.to_string().contains("SECRET"));

    // Another subject.
    let mut b = Batch::default();
    b.put(Space::Records, subject_key("b", "identity.full_name"), a_name);
    store.write(&b).unwrap();
    let r = app.get("/v1/subjects/b?purpose=loan_issuance&fields=identity.full_name", "svc-all").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!r.body.to_string().contains("SECRET"));
}

#[tokio::test]
async fn an_old_version_replayed_into_place_fails_to_open() {
    use qoima::layout::subject_key;
    use qoima::store::{Batch, Space};
    let app = spawn_app().await;
    app.put_fields("v", json!({"identity.phone": "+77010000001"})).await;
    let store = app.vault.store();
    let old = store.get(Space::Records, &subject_key("v", "identity.phone")).unwrap().unwrap();
    let r = app
        .call(Method::PATCH, "/v1/subjects/v/rectify", Some("website"), Some(json!({"fields": {"identity.phone": "+77010000002"}})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Keep the new version number but splice in the old ciphertext: the AAD names version 2.
    let new = store.get(Space::Records, &subject_key("v", "identity.phone")).unwrap().unwrap();
    let mut spliced = new[..16].to_vec();
    spliced.extend_from_slice(&old[16..]);
    let mut b = Batch::default();
    b.put(Space::Records, subject_key("v", "identity.phone"), spliced);
    store.write(&b).unwrap();
    let r = app.get("/v1/subjects/v?purpose=loan_issuance&fields=identity.phone", "svc-all").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_world_readable_root_key_is_refused_with_a_clear_message() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    qoima_keys::RootKey::generate_file(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("q.toml");
    std::fs::write(&cfg, config_text(dir.path(), "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qoima")).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 644") && err.contains("must be 0600 or 0400"), "{err}");
    assert_eq!(err.trim().lines().filter(|l| l.contains("error")).count(), 1, "one line: {err}");
    assert!(!dir.path().join("data").join("CURRENT").exists(), "nothing was started");
}

#[tokio::test]
async fn the_wrong_root_key_is_named_as_such() {
    let mut app = spawn_app().await;
    app.put_fields("x", json!({"identity.full_name": "X"})).await;
    app.stop().await;
    let TestApp { dir, config, vault, .. } = app;
    wait_for_last_handle(vault).await;
    std::fs::remove_file(dir.path().join("root.key")).unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let err = qoima::server::Application::build(config, Default::default()).await.err().expect("must refuse");
    let text = err.to_string();
    assert!(text.contains("cannot open KEK generation 1 with the configured root key") && text.contains("root key"), "{text}");
}
