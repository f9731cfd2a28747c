//! Several vault nodes on one PostgreSQL store (docs/scale-out.md): one active, holding the
//! lease; the others forward to it, or answer 503 `standby`; a clean stop hands over at once.
//! PostgreSQL only (`QOIMA_TEST_ENGINE=postgres`; the failover suite kills real processes).

use std::time::Duration;

use qoima::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The configuration of node `name` of the cluster whose first node lives in `dir`: the same
/// store (schema), root key and callers; its own listener, data directory and address.
fn node_config(dir: &std::path::Path, name: &str, port: u16, advertise: bool) -> Config {
    let mut text = config_text(dir, "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace(&format!("data_dir = \"{}\"", dir.join("data").display()), &format!("data_dir = \"{}\"", dir.join(name).display()));
    let mut extra = String::new();
    if advertise {
        extra += &format!("advertise_url = \"http://127.0.0.1:{port}\"\n");
    }
    text = text.replace("allow_async = true\n", &format!("allow_async = true\n{extra}"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    Config::load(&path, &|_| None).unwrap()
}

/// What two nodes share (a folder with the root key) and their two ports; `None`, saying so,
/// on RocksDB.
fn two_nodes() -> Option<(tempfile::TempDir, u16, u16)> {
    if !on_postgres() {
        eprintln!("PostgreSQL only: runs in scripts/test's second pass");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    Some((dir, free_port(), free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_forwards_to_the_active_node_and_takes_over_when_it_stops() {
    let Some((dir, pa, pb)) = two_nodes() else { return };
    let a = start(tempfile::tempdir().unwrap(), node_config(dir.path(), "a", pa, true), None).await;
    // B finds A's lease (and address) and stands by, forwarding.
    let b_config = node_config(dir.path(), "b", pb, true);
    let b = tokio::spawn(start(tempfile::tempdir().unwrap(), b_config, None));
    let http = reqwest::Client::new();
    let at_b = format!("http://127.0.0.1:{pb}");
    let mut ready = false;
    for _ in 0..100 {
        if http.get(format!("{at_b}/healthz")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the standby listens");
    let r = send_request(&http, Method::GET, &format!("{at_b}/readyz"), None, &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "a standby is not ready: {:?}", r.body);
    assert_eq!(r.body["type"], "urn:qoima:problem:standby");
    assert!(r.headers.contains_key("retry-after"));
    // Through B: written and read by A, the active node, and audited there.
    let put = send_request(
        &http,
        Method::PUT,
        &format!("{at_b}/v1/subjects/n-1"),
        Some("svc-all"),
        &[("idempotency-key", "k-1")],
        Some(json!({"fields": {"identity.full_name": "Айгерім Сәрсенова"}})),
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let read = send_request(&http, Method::GET, &format!("{at_b}/v1/subjects/n-1?purpose=loan_issuance"), Some("svc-all"), &[], None).await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["fields"]["identity.full_name"], "Айгерім Сәрсенова");
    let unauthenticated = send_request(&http, Method::GET, &format!("{at_b}/v1/subjects/n-1?purpose=loan_issuance"), None, &[], None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED, "the active node decides, not the standby");
    assert_eq!(a.read("n-1", "svc-all", "loan_issuance").await.body["fields"]["identity.full_name"], "Айгерім Сәрсенова");
    // A stops cleanly: its lease is released, and B takes over within a retry interval.
    let mut a = a;
    a.stop().await;
    let stopped_at = std::time::Instant::now();
    let first = b.await.unwrap();
    eprintln!("took over {} ms after the active node stopped", stopped_at.elapsed().as_millis());
    assert!(stopped_at.elapsed() < Duration::from_secs(8), "a released lease is taken within the retry interval");
    let read = first.read("n-1", "svc-all", "loan_issuance").await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["fields"]["identity.full_name"], "Айгерім Сәрсенова", "the new active node reads what the old one wrote");
    let replay = send_request(
        &http,
        Method::PUT,
        &format!("{}/v1/subjects/n-1", first.addr),
        Some("svc-all"),
        &[("idempotency-key", "k-1")],
        Some(json!({"fields": {"identity.full_name": "Айгерім Сәрсенова"}})),
    )
    .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.body, put.body, "an Idempotency-Key's answer is the store's, whichever node gives it");
    let verify = first.get("/v1/audit/verify", "auditor").await;
    assert_eq!(verify.status, StatusCode::OK, "{:?}", verify.body);
    assert_eq!(verify.body["ok"], true, "one linear chain across both nodes: {:?}", verify.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_that_does_not_know_where_the_active_node_is_answers_503_standby() {
    let Some((dir, pa, pb)) = two_nodes() else { return };
    let mut a = start(tempfile::tempdir().unwrap(), node_config(dir.path(), "a", pa, false), None).await;
    let b = tokio::spawn(start(tempfile::tempdir().unwrap(), node_config(dir.path(), "b", pb, true), None));
    let http = reqwest::Client::new();
    let put = |http: reqwest::Client| async move {
        send_request(
            &http,
            Method::PUT,
            &format!("http://127.0.0.1:{pb}/v1/subjects/n-2"),
            Some("svc-all"),
            &[],
            Some(json!({"fields": {"identity.full_name": "Ерлан"}})),
        )
        .await
    };
    let mut refused = None;
    for _ in 0..100 {
        if http.get(format!("http://127.0.0.1:{pb}/healthz")).send().await.is_ok() {
            refused = Some(put(http.clone()).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the standby listens");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert_eq!(refused.body["type"], "urn:qoima:problem:standby");
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(a.read("n-2", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND, "nothing was done");
    a.stop().await;
    let b = b.await.unwrap();
    assert_eq!(put(http.clone()).await.status, StatusCode::CREATED, "the node that took over serves");
    assert_eq!(b.read("n-2", "svc-all", "loan_issuance").await.status, StatusCode::OK);
}
