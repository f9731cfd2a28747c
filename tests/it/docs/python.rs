//! The Python example client against a live vault.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_runs_its_demo_against_a_live_vault() {
    let app = spawn_app().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/lending_client.py");
    // -I -S: no user or site packages, so the example needs nothing but the standard library.
    let run = tokio::process::Command::new("python3")
        .arg("-I")
        .arg("-S")
        .arg(&script)
        .env("QOIMA_URL", &app.addr)
        .env("QOIMA_SERVICE_TOKEN", token("svc-all"))
        .env("QOIMA_WEBSITE_TOKEN", token("website"))
        .env("QOIMA_DEMO_SUBJECT", "python-demo-1")
        // The IIN the suite knows, so the check below that the demo printed none has teeth.
        .env("QOIMA_DEMO_IIN", "900101300017")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(120), run).await.expect("the demo finishes within 2 minutes") {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is not installed: the Python example (docs/examples/lending_client.py) cannot be tested; install python3")
        }
        Err(e) => panic!("python3 did not start: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed ({}):\n{stdout}\n{stderr}", out.status);
    for line in [
        "lookup before storing: []",
        "stored python-demo-1: version 1, created True, missing []",
        "lookup by IIN: ['python-demo-1']",
        "lookup by phone: ['python-demo-1']",
        "second subject with the same IIN refused: 409 conflict (identity.iin)",
        "imported: [201, 201, 409, 400]; refused: ['python-demo-1-imp-3 conflict', 'python-demo-1-imp-4 invalid-request']",
        "read for loan_issuance: ['identity.birth_date', 'identity.email', 'identity.full_name', 'identity.iin', 'identity.phone', 'questionnaire.monthly_income']",
        "advertising refused: 403 basis-missing: legal basis missing for advertising: no consent for advertising on record",
        "consent for advertising given under policy 2019-01-29",
        "read for advertising: ['identity.email', 'identity.full_name', 'identity.phone']",
        "read for loan_monitoring: ['identity.phone']",
        "disclosed ['identity.full_name', 'identity.iin'] to First Credit Bureau on consent (dis_",
        "erasure pending, held by ['L-",
        "settled; erasure erased (KEK generation 1)",
        "read after erasure: 410 erased, receipt rcpt_",
        "lookup after erasure: []",
        "demo complete",
    ] {
        assert!(stdout.contains(line), "the demo did not print `{line}`:\n{stdout}");
    }
    // What the vault recorded matches what the demo says it did.
    let audit = app.get("/v1/audit?subject=python-demo-1&limit=1000", "auditor").await;
    let entries = audit.body["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["subject.put", "subject.read", "consent.give", "contract.open", "subject.disclose", "erasure.request", "contract.update"]
    {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    // Every call carried the client's own request id, kept beside the vault's.
    let mut by_client = entries.iter().filter(|e| e["caller"] != "qoima");
    assert!(by_client.all(|e| e["client_request_id"].as_str().is_some_and(|r| r.starts_with("py-"))), "{entries:#?}");
    // Its lookups name no subject in the trail (and never the value): found by caller.
    let by_caller = app.get("/v1/audit?caller=svc-all&limit=1000", "auditor").await;
    let lookups: Vec<&serde_json::Value> =
        by_caller.body["entries"].as_array().expect("entries").iter().filter(|e| e["action"] == "subject.lookup").collect();
    assert_eq!(lookups.len(), 4, "{lookups:#?}");
    assert!(lookups.iter().all(|e| e["purpose"] == "loan_issuance" && e["subject"].is_null()), "{lookups:#?}");
    assert!(!by_caller.body.to_string().contains("900101300017"), "the trail holds no IIN looked up");
    let erasure = app.get("/v1/subjects/python-demo-1/erasure", "website").await;
    assert_eq!(erasure.body["status"], "erased");
    // The refused second subject and refused imports stored nothing; the imported ones went too.
    for refused in ["python-demo-1-dup", "python-demo-1-imp-3", "python-demo-1-imp-4"] {
        assert_eq!(app.read(refused, "svc-all", "loan_issuance").await.status, 404, "{refused}");
    }
    for imported in ["python-demo-1-imp-1", "python-demo-1-imp-2"] {
        assert_eq!(app.get(&format!("/v1/subjects/{imported}/erasure"), "website").await.body["status"], "erased", "{imported}");
    }
    // The demo printed no personal data it read.
    assert!(!stdout.contains("900101300017") && !stdout.contains("Demo Borrower"), "{stdout}");
}

/// The Python example turns a 429 into `RateLimited` with the wait the vault names.
#[tokio::test]
async fn the_python_example_reports_a_rate_limit_with_its_wait() {
    let app = spawn_with(&limited_caller(1), Some(qoima::domain::ManualClock::new(now()))).await;
    app.put_fields("py-rl-1", application("PYMARK")).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let snippet = "import os, sys\n\
        sys.path.insert(0, os.environ['EXAMPLES'])\n\
        import lending_client as q\n\
        c = q.QoimaClient(os.environ['QOIMA_URL'], os.environ['TOKEN'])\n\
        c.read('py-rl-1', 'loan_issuance')\n\
        try:\n    c.read('py-rl-1', 'loan_issuance')\n\
        except q.RateLimited as e:\n    print('rate limited', e.status, e.slug, e.retry_after)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-I", "-S", "-c", snippet])
        .env("EXAMPLES", &dir)
        .env("QOIMA_URL", &app.addr)
        .env("TOKEN", token("svc-limited"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "rate limited 429 rate-limited 60.0");
}

/// The Python example's lookup, against a stand-in for a vault still building its index: the
/// 503 `index-building` is waited out (its `Retry-After`) and retried; the value travels in
/// the body only, without an idempotency key (a lookup is a read).
#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_waits_out_a_lookup_while_the_index_is_built() {
    use axum::http::{HeaderMap, StatusCode, Uri};
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(String, bool, serde_json::Value)>>> = Arc::default();
    let log = seen.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let mut log = log.lock().unwrap();
            log.push((uri.to_string(), headers.contains_key("idempotency-key"), serde_json::from_slice(&body).unwrap()));
            if log.len() == 1 {
                let problem = serde_json::json!({"type": "urn:qoima:problem:index-building", "title": "Service Unavailable",
                    "status": 503, "detail": "the index of identity.iin is still being built; retry in 1 s"});
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "application/problem+json"), ("retry-after", "1")],
                    problem.to_string(),
                );
            }
            let answer = serde_json::json!({"field": "identity.iin", "purpose": "loan_issuance", "subjects": ["py-l-1"]});
            (StatusCode::OK, [("content-type", "application/json"), ("cache-control", "no-store")], answer.to_string())
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { axum::serve(listener, axum::Router::new().route("/v1/lookup", axum::routing::post(handler))).await.unwrap() },
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let snippet = "import os, sys, time\n\
        sys.path.insert(0, os.environ['EXAMPLES'])\n\
        import lending_client as q\n\
        c = q.QoimaClient(os.environ['QOIMA_URL'], 'qv1_stand-in', backoff=0.01)\n\
        t = time.monotonic()\n\
        print('found', c.lookup('identity.iin', '900101300017', 'loan_issuance'), time.monotonic() - t >= 1)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-I", "-S", "-c", snippet])
        .env("EXAMPLES", &dir)
        .env("QOIMA_URL", &addr)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "found ['py-l-1'] True");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (uri, keyed, body) in &seen {
        assert_eq!((uri.as_str(), *keyed), ("/v1/lookup", false), "nothing in the URL, no key");
        assert_eq!(body, &serde_json::json!({"field": "identity.iin", "value": "900101300017", "purpose": "loan_issuance"}));
    }
}
