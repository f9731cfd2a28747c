//! Issue #7: secret hygiene. With tracing at its most verbose, a full session (store, read,
//! export, erase, rotate, rewrap, destroy) logs none of the plaintext markers, tokens or key
//! bytes; the process refuses core dumps.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_most_verbose_logs_hold_no_plaintext_tokens_or_keys() {
    let marker = format!("HYGIENE{}", qoima::domain::random_hex::<6>());
    let body = json!({"fields": {"identity.full_name": format!("Aigerim {marker}"), "identity.iin": "900101300017", "identity.phone": "+77011234567"}});
    let (dir, mut child) = spawn_traced_binary();
    let addr = child.addr.clone();
    let c = reqwest::Client::new();
    let send = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap() };
    assert!(send(c.put(format!("{addr}/v1/subjects/h1")).bearer_auth(token("svc-all")).json(&body)).await.status().is_success());
    send(c.put(format!("{addr}/v1/subjects/h2")).bearer_auth(token("svc-all")).json(&body)).await;
    send(c.get(format!("{addr}/v1/subjects/h1?purpose=loan_issuance")).bearer_auth(token("svc-all"))).await;
    send(c.get(format!("{addr}/v1/subjects/h1?purpose=advertising")).bearer_auth(token("svc-all"))).await;
    send(c.get(format!("{addr}/v1/subjects/h1?purpose=loan_issuance")).bearer_auth("wrong-token-HYGIENE")).await;
    send(
        c.put(format!("{addr}/v1/subjects/h1"))
            .bearer_auth(token("svc-all"))
            .json(&json!({"fields": {"identity.iin": format!("{marker}-bad")}})),
    )
    .await;
    send(c.get(format!("{addr}/v1/subjects/h1/export")).bearer_auth(token("website"))).await;
    send(c.post(format!("{addr}/v1/subjects/h1/erasure")).bearer_auth(token("website"))).await;
    send(c.post(format!("{addr}/v1/keys/rotate")).bearer_auth(token("security"))).await;
    send(c.post(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security"))).await;
    for _ in 0..100 {
        let p: Value = send(c.get(format!("{addr}/v1/keys/rewrap")).bearer_auth(token("security"))).await.json().await.unwrap();
        if p["state"] == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(send(c.delete(format!("{addr}/v1/keys/1")).bearer_auth(token("security"))).await.status(), 204);

    // The process refuses core dumps.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert!(core.split_whitespace().filter(|w| *w == "0").count() >= 2, "{core}");

    let logs = child.kill();
    assert!(logs.lines().count() > 20, "trace logging is on: {} lines", logs.lines().count());
    let root_hex = std::fs::read_to_string(dir.path().join("root.key")).unwrap().trim().to_string();
    let mut secrets = vec![
        marker.clone(),
        "900101300017".into(),
        "+77011234567".into(),
        "77011234567".into(),
        "wrong-token-HYGIENE".into(),
        root_hex.clone(),
    ];
    for (name, _, _) in CALLERS {
        secrets.push(token(name));
    }
    secrets.push(root_hex[..16].to_string());
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "the log holds a secret ({} chars)", s.len());
    }
}

#[test]
fn core_dumps_are_refused_in_process() {
    qoima::server::refuse_core_dumps().unwrap();
    // SAFETY: plain syscall queries.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    assert_eq!(dumpable, 0);
    let mut lim = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
    assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
}

#[test]
fn debug_output_of_configuration_and_contexts_holds_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let config = qoima::config::Config::load(&path, &|_| None).unwrap();
    let printed = format!("{config:?}");
    for (name, _, _) in CALLERS {
        assert!(!printed.contains(&token(name)));
    }
    let root = qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root_hex = std::fs::read_to_string(dir.path().join("root.key")).unwrap();
    assert!(!format!("{root:?}").contains(root_hex.trim()));
    assert!(format!("{root:?}").contains("redacted"));
}
