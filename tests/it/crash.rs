//! Issue #7: crash consistency. The real binary runs under concurrent writes, erasures and a
//! rewrap and is `kill -9`ed at random moments; after every restart: each acknowledged write
//! reads back with the value acknowledged (or a later one whose request was cut off), no write
//! is half applied, no erased subject is readable, the DEK counters match the live subjects,
//! and the audit chain verifies.
//!
//! CI runs `QOIMA_CRASH_CYCLES` cycles (default 4); the long run is
//! `QOIMA_CRASH_CYCLES=60 cargo test --test it crash -- --nocapture` (figures in
//! docs/reliability.md). `QOIMA_CRASH_SEED` replays a run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const WORKERS: usize = 6;
const SUBJECTS_PER_WORKER: usize = 25;

#[derive(Clone, Debug, Default)]
struct Model {
    /// The last value whose write was acknowledged.
    acked: Option<u64>,
    /// A write sent and not acknowledged (cut off by the kill): it may or may not have landed.
    inflight: Option<u64>,
    erased: bool,
    erase_inflight: bool,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn subject(worker: usize, i: usize) -> String {
    format!("w{worker}-s{i}")
}

fn fields(v: u64) -> Value {
    json!({"fields": {"identity.full_name": format!("Name {v}"), "identity.address": format!("Street {v}"), "questionnaire.monthly_income": v}})
}

/// Checks every subject against the model after a restart, resolving what was in flight.
async fn verify(client: &reqwest::Client, addr: &str, models: &mut BTreeMap<String, Model>) -> usize {
    let mut live = 0;
    for (id, m) in models.iter_mut() {
        let r = client.get(format!("{addr}/v1/subjects/{id}?purpose=loan_issuance")).bearer_auth(token("svc-all")).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        match status {
            StatusCode::GONE => {
                assert!(m.erased || m.erase_inflight, "{id} reads as erased but no erasure was sent: {body}");
                m.erased = true;
                m.erase_inflight = false;
                m.inflight = None;
            }
            StatusCode::OK => {
                assert!(!m.erased, "{id} was erased (acknowledged) but is readable: {body}");
                m.erase_inflight = false;
                let f = &body["fields"];
                let v = f["questionnaire.monthly_income"].as_u64().expect("income present");
                // No half-applied write: all three fields come from the same write.
                assert_eq!(f["identity.full_name"], json!(format!("Name {v}")), "{id}: half-applied write {f}");
                assert_eq!(f["identity.address"], json!(format!("Street {v}")), "{id}: half-applied write {f}");
                assert!(
                    Some(v) == m.acked || Some(v) == m.inflight,
                    "{id}: value {v}, acknowledged {:?}, in flight {:?}",
                    m.acked,
                    m.inflight
                );
                m.acked = Some(v);
                m.inflight = None;
                live += 1;
            }
            StatusCode::NOT_FOUND => {
                assert!(m.acked.is_none() && !m.erased, "{id}: acknowledged write lost ({:?})", m.acked);
                m.inflight = None;
                m.erase_inflight = false;
            }
            other => panic!("{id}: unexpected {other} {body}"),
        }
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("QOIMA_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let seed: u64 =
        std::env::var("QOIMA_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| now().unix_timestamp_nanos() as u64 | 1);
    eprintln!("crash test: {cycles} cycles, QOIMA_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let cfg = dir.path().join("qoima.toml");
    std::fs::write(&cfg, config_text(dir.path(), "[keys]\nrewrap_batch = 7\nrewrap_pause_ms = 2\n")).unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let models: Arc<Mutex<BTreeMap<String, Model>>> =
        Arc::new(Mutex::new((0..WORKERS).flat_map(|w| (0..SUBJECTS_PER_WORKER).map(move |i| (subject(w, i), Model::default()))).collect()));
    let mut next_value = 1u64;
    let (mut acked_writes, mut acked_erasures, mut kills) = (0u64, 0u64, 0u64);

    for cycle in 0..=cycles {
        let mut child = spawn_binary(&cfg);
        let addr = child.addr.clone();
        // Check everything written before the last kill.
        let mut snapshot = models.lock().unwrap().clone();
        let live = verify(&client, &addr, &mut snapshot).await;
        *models.lock().unwrap() = snapshot;
        let keys: Value = client.get(format!("{addr}/v1/keys")).bearer_auth(token("security")).send().await.unwrap().json().await.unwrap();
        let counted: i64 = keys["generations"].as_array().unwrap().iter().map(|g| g["deks"].as_i64().unwrap()).sum();
        assert_eq!(counted, live as i64, "cycle {cycle}: DEK counters {keys} disagree with {live} live subjects");
        let v: Value =
            client.get(format!("{addr}/v1/audit/verify")).bearer_auth(token("auditor")).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["ok"], true, "cycle {cycle}: {v}");
        if cycle == cycles {
            child.kill();
            break;
        }

        // Load: each worker owns its subjects, so per subject at most one request is in flight.
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (client, addr, models) = (client.clone(), addr.clone(), models.clone());
            let mut r = Rng(rng.next() | 1);
            let base = next_value + (w as u64) * 1_000_000;
            tasks.push(tokio::spawn(async move {
                let (mut writes, mut erasures) = (0u64, 0u64);
                for n in 0.. {
                    let id = subject(w, r.below(SUBJECTS_PER_WORKER as u64) as usize);
                    let erased = models.lock().unwrap()[&id].erased;
                    if erased {
                        let resp =
                            client.put(format!("{addr}/v1/subjects/{id}")).bearer_auth(token("svc-all")).json(&fields(0)).send().await;
                        match resp {
                            Ok(resp) => assert_eq!(resp.status(), StatusCode::GONE, "{id}: a write to an erased subject was accepted"),
                            Err(_) => return (writes, erasures),
                        }
                        continue;
                    }
                    if r.below(12) == 0 {
                        models.lock().unwrap().get_mut(&id).unwrap().erase_inflight = true;
                        match client.post(format!("{addr}/v1/subjects/{id}/erasure")).bearer_auth(token("website")).send().await {
                            Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                                let mut m = models.lock().unwrap();
                                let m = m.get_mut(&id).unwrap();
                                m.erased = true;
                                m.erase_inflight = false;
                                erasures += 1;
                            }
                            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                                models.lock().unwrap().get_mut(&id).unwrap().erase_inflight = false;
                            }
                            Ok(resp) => panic!("{id}: erasure answered {}", resp.status()),
                            Err(_) => return (writes, erasures),
                        }
                        continue;
                    }
                    let v = base + n;
                    models.lock().unwrap().get_mut(&id).unwrap().inflight = Some(v);
                    match client.put(format!("{addr}/v1/subjects/{id}")).bearer_auth(token("svc-all")).json(&fields(v)).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let mut m = models.lock().unwrap();
                            let m = m.get_mut(&id).unwrap();
                            m.acked = Some(v);
                            m.inflight = None;
                            writes += 1;
                        }
                        Ok(resp) => panic!("{id}: write answered {}", resp.status()),
                        Err(_) => return (writes, erasures),
                    }
                }
                unreachable!()
            }));
        }
        next_value += WORKERS as u64 * 1_000_000;
        // A rotation and a rewrap at a random moment of some cycles.
        if cycle % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
            let _ = client.post(format!("{addr}/v1/keys/rotate")).bearer_auth(token("security")).send().await;
            let _ = client.post(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security")).send().await;
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        child.kill();
        kills += 1;
        for t in tasks {
            let (w, e) = t.await.unwrap();
            acked_writes += w;
            acked_erasures += e;
        }
    }
    eprintln!(
        "crash test: {kills} kill -9s, {acked_writes} acknowledged writes and {acked_erasures} acknowledged erasures checked, nothing lost"
    );
    assert!(acked_writes > 0 && kills as usize == cycles);
}
