//! Issue #3: the HTTP contract of design §6: status codes, problem documents, limits, ids.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

fn assert_problem(r: &Resp, status: StatusCode) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    for k in ["type", "title", "status", "detail"] {
        assert!(!r.body[k].is_null(), "problem lacks {k}: {:?}", r.body);
    }
    assert_eq!(r.body["status"], status.as_u16());
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn put_creates_then_updates_and_get_reads() {
    let app = spawn_app().await;
    let r = app.put_fields("c-1", json!({"identity.full_name": "Aigerim"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["subject"], "c-1");
    assert_eq!(r.body["version"], 1);
    let r = app.put_fields("c-1", json!({"identity.phone": "+77011234567"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 2);
    let r = app.read("c-1", "svc-all", "loan_issuance").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"subject": "c-1", "purpose": "loan_issuance", "fields": {"identity.full_name": "Aigerim", "identity.phone": "+77011234567"}})
    );
    // A narrowed read returns only what was asked.
    let r = app.get("/v1/subjects/c-1?purpose=loan_issuance&fields=identity.phone", "svc-all").await;
    assert_eq!(r.body["fields"], json!({"identity.phone": "+77011234567"}));
}

#[tokio::test]
async fn concurrent_writes_to_one_subject_each_get_their_own_version() {
    let app = spawn_app().await;
    assert_eq!(app.put_fields("race", json!({"identity.full_name": "start"})).await.status, StatusCode::CREATED);
    // Writes planned on the async thread and on blocking threads alike: each must read the one
    // before it (the subject's lock is held until the batch is written), so none is lost.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (client, url, bearer) = (app.client.clone(), format!("{}/v1/subjects/race", app.addr), token("svc-all"));
        tasks.spawn(async move {
            let r =
                client.put(url).bearer_auth(bearer).json(&json!({"fields": {"identity.full_name": format!("w{i}")}})).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<serde_json::Value>().await.unwrap()["version"].as_u64().unwrap()
        });
    }
    let mut versions = tasks.join_all().await;
    versions.sort_unstable();
    assert_eq!(versions, (2..=33).collect::<Vec<u64>>());
    let r = app.read("race", "svc-all", "loan_issuance").await;
    assert!(r.body["fields"]["identity.full_name"].as_str().unwrap().starts_with('w'));
}

#[tokio::test]
async fn authentication_failures_are_401() {
    let app = spawn_app().await;
    app.put_fields("a-1", json!({"identity.full_name": "A"})).await;
    let r = app.call(Method::GET, "/v1/subjects/a-1?purpose=loan_issuance", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"qoima\"");
    let r = app.call(Method::GET, "/v1/subjects/a-1?purpose=loan_issuance", Some("nobody"), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED);
    let raw = app.client.get(format!("{}/v1/keys", app.addr)).header("authorization", "Basic Zm9vOmJhcg==").send().await.unwrap();
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    // The failed attempts on the subject are audited.
    let audit = app.get("/v1/audit?subject=a-1", "auditor").await;
    let failed: Vec<_> = audit.body["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "auth.failed").collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["decision"] == "deny" && e["caller"] == "anonymous"));
}

#[tokio::test]
async fn status_codes_403_404_410() {
    let app = spawn_app().await;
    app.put_fields("s-1", json!({"identity.full_name": "A"})).await;
    // Known caller lacking the role.
    let r = app.call(Method::PUT, "/v1/subjects/s-1", Some("website"), Some(json!({"fields": {"identity.full_name": "B"}}))).await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert_problem(&app.get("/v1/keys", "svc-all").await, StatusCode::FORBIDDEN);
    assert_problem(&app.get("/v1/audit", "website").await, StatusCode::FORBIDDEN);
    // Purpose not granted.
    let r = app.read("s-1", "svc-marketing", "loan_issuance").await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert!(r.problem_detail().contains("not granted"));
    // Unknown subject.
    assert_problem(&app.read("nobody", "svc-all", "loan_issuance").await, StatusCode::NOT_FOUND);
    // Erased subject.
    app.erase("s-1").await;
    let r = app.read("s-1", "svc-all", "loan_issuance").await;
    assert_problem(&r, StatusCode::GONE);
    assert!(r.body["receipt"].as_str().unwrap().starts_with("rcpt_"));
}

#[tokio::test]
async fn bad_input_is_400_and_stores_nothing() {
    let app = spawn_app().await;
    let cases = [
        ("/v1/subjects/a%20b", json!({"fields": {"identity.full_name": "A"}})),
        ("/v1/subjects/a%2Fb", json!({"fields": {"identity.full_name": "A"}})),
        ("/v1/subjects/x1", json!({"fields": {"passport.number": "N1"}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.shoe_size": "42"}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.full_name": "A", "identity.iin": "900101300011"}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.full_name": "A", "identity.phone": "87011234567"}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.full_name": "A", "questionnaire.monthly_income": -5}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.full_name": {"nested": true}}})),
        ("/v1/subjects/x1", json!({"fields": {}})),
        ("/v1/subjects/x1", json!({"fields": {"identity.full_name": "A"}, "extra": 1})),
        ("/v1/subjects/x1", json!({"data": {}})),
    ];
    for (path, body) in cases {
        let r = app.call(Method::PUT, path, Some("svc-all"), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_problem(&r, StatusCode::BAD_REQUEST);
        assert!(
            !r.problem_detail().contains("900101300011") && !r.problem_detail().contains("87011234567"),
            "a value echoed: {}",
            r.problem_detail()
        );
    }
    assert_problem(&app.read("x1", "svc-all", "loan_issuance").await, StatusCode::NOT_FOUND);
    // Dot segments, sent raw (HTTP clients normalise them away).
    for target in ["/v1/subjects/..", "/v1/subjects/%2e%2e", "/v1/subjects/."] {
        let status = raw_http(
            &app,
            &format!(
                "GET {target}?purpose=loan_issuance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                token("svc-all")
            ),
        )
        .await;
        assert_eq!(status, 400, "{target}");
    }

    // Malformed JSON, wrong content type, too large.
    let raw = |body: Vec<u8>, ct: &'static str| {
        app.client.put(format!("{}/v1/subjects/x1", app.addr)).bearer_auth(token("svc-all")).header("content-type", ct).body(body).send()
    };
    let r = raw(b"{\"fields\": {".to_vec(), "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = raw(b"{\"fields\": {\"identity.full_name\": \"\xff\xfe\"}}".to_vec(), "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "invalid UTF-8");
    let r = raw(b"fields=1".to_vec(), "application/x-www-form-urlencoded").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!("{{\"fields\": {{\"identity.full_name\": \"{}\"}}}}", "x".repeat(300 * 1024));
    let r = raw(big.into_bytes(), "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let deep = format!("{{\"fields\": {}{}}}", "[".repeat(5000), "]".repeat(5000));
    let r = raw(deep.into_bytes(), "application/json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "deep JSON");
    assert_problem(&app.read("x1", "svc-all", "loan_issuance").await, StatusCode::NOT_FOUND);

    // Reads: purpose missing, unknown purpose, unknown field, unknown parameter.
    app.put_fields("y1", json!({"identity.full_name": "Y"})).await;
    for path in [
        "/v1/subjects/y1",
        "/v1/subjects/y1?purpose=",
        "/v1/subjects/y1?purpose=spying",
        "/v1/subjects/y1?purpose=loan_issuance&fields=identity.nope",
        "/v1/subjects/y1?purpose=loan_issuance&colour=red",
    ] {
        assert_problem(&app.get(path, "svc-all").await, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    for (m, p) in [(Method::GET, "/healthz"), (Method::GET, "/nope"), (Method::DELETE, "/healthz"), (Method::GET, "/v1/keys")] {
        let r = app.call(m, p, None, None).await;
        assert!(r.headers.get("x-request-id").is_some_and(|v| !v.is_empty()), "{p}");
        assert_eq!(r.headers["cache-control"], "no-store");
    }
    assert_problem(&app.call(Method::GET, "/nope", None, None).await, StatusCode::NOT_FOUND);
    assert_problem(&app.call(Method::DELETE, "/healthz", None, None).await, StatusCode::METHOD_NOT_ALLOWED);
    // A caller's own id is kept in a field of its own: the request id is always the vault's,
    // so a client cannot pass its requests off as the vault's own (issue #23: `summary`).
    app.put_fields("rid", json!({"identity.full_name": "R"})).await;
    let get = |client_id: &'static str| {
        app.client
            .get(format!("{}/v1/subjects/rid?purpose=loan_issuance", app.addr))
            .bearer_auth(token("svc-all"))
            .header("x-request-id", client_id)
            .send()
    };
    let r = get("lender-req-42").await.unwrap();
    let vault_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(vault_id, "lender-req-42");
    assert_eq!(vault_id.len(), 24, "the vault's own: {vault_id}");
    assert_eq!(r.headers()["x-client-request-id"], "lender-req-42");
    let r = get("summary").await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "summary");
    let audit = app.get("/v1/audit?subject=rid", "auditor").await;
    let entries = audit.body["entries"].as_array().unwrap();
    let mine = entries.iter().find(|e| e["client_request_id"] == "lender-req-42").expect("the client's id is recorded");
    assert_eq!(mine["request_id"], vault_id.as_str());
    assert!(entries.iter().all(|e| e["request_id"] != "summary" && e["request_id"] != "lender-req-42"), "{entries:#?}");
    assert!(entries.iter().any(|e| e["client_request_id"] == "summary"));
    // Without one of its own, an entry has none (the field is left out).
    assert!(entries.iter().any(|e| e["action"] == "subject.put" && e.get("client_request_id").is_none()));
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
    // A hostile id is dropped: neither echoed nor recorded.
    let r = app.client.get(format!("{}/healthz", app.addr)).header("x-request-id", "<script>alert(1)</script>").send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "<script>alert(1)</script>");
    assert!(r.headers().get("x-client-request-id").is_none());
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let app = spawn_app().await;
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for check in ["store", "root_key", "audit"] {
        assert!(r.body["checks"][check].as_str().unwrap().starts_with("ok"), "{check}");
    }
    let doc = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for p in ["/v1/subjects/{id}", "/v1/subjects/{id}/erasure", "/v1/keys", "/v1/audit/verify", "/healthz"] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(doc.body["paths"]["/v1/subjects/{id}"]["put"]["requestBody"].is_object());
    // Every operation about a subject names the subject assertion a website may be held to.
    let mut about_subjects = 0;
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/subjects/{id}")) {
        for (method, op) in item.as_object().unwrap() {
            let names: Vec<String> =
                op["parameters"].as_array().into_iter().flatten().map(|p| p["name"].as_str().unwrap().to_ascii_lowercase()).collect();
            assert!(names.contains(&"qoima-subject-assertion".to_string()), "{method} {path}: {names:?}");
            assert_eq!(names.iter().filter(|n| *n == "qoima-subject-assertion").count(), 1, "{method} {path}");
            about_subjects += 1;
        }
    }
    assert!(about_subjects >= 12, "{about_subjects}");
}

#[tokio::test]
async fn consents_and_contracts_through_their_lifecycle() {
    let app = spawn_app().await;
    app.put_fields("k-1", json!({"identity.full_name": "K", "identity.phone": "+77011234567"})).await;
    assert_eq!(app.read("k-1", "svc-marketing", "advertising").await.status, StatusCode::FORBIDDEN);
    let r = app.give_consent("k-1", "advertising").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["policy_version"], "2019-01-29");
    let r = app.read("k-1", "svc-marketing", "advertising").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["fields"], json!({"identity.full_name": "K", "identity.phone": "+77011234567"}));
    let r = app.call(Method::DELETE, "/v1/subjects/k-1/consents/advertising", Some("website"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Withdrawal takes effect on the very next read.
    let r = app.read("k-1", "svc-marketing", "advertising").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.problem_detail().contains("withdrawn"), "{}", r.problem_detail());
    assert_problem(
        &app.call(Method::DELETE, "/v1/subjects/k-1/consents/loan_monitoring", Some("website"), None).await,
        StatusCode::NOT_FOUND,
    );

    // Contracts: open, duplicate, breach, settle, settled is final.
    assert_eq!(app.open_contract("k-1", "L-1").await.status, StatusCode::CREATED);
    assert_problem(&app.open_contract("k-1", "L-1").await, StatusCode::CONFLICT);
    assert_eq!(app.read("k-1", "svc-monitoring", "loan_monitoring").await.status, StatusCode::OK);
    assert_eq!(app.set_contract("k-1", "L-1", "breached").await.body["status"], "breached");
    assert_eq!(app.read("k-1", "svc-monitoring", "loan_monitoring").await.status, StatusCode::OK);
    assert_eq!(app.set_contract("k-1", "L-1", "settled").await.body["status"], "settled");
    assert_eq!(app.read("k-1", "svc-monitoring", "loan_monitoring").await.status, StatusCode::FORBIDDEN);
    assert_problem(&app.set_contract("k-1", "L-1", "breached").await, StatusCode::CONFLICT);
    assert_problem(&app.set_contract("k-1", "L-1", "open").await, StatusCode::BAD_REQUEST);
    assert_problem(&app.set_contract("k-1", "L-9", "settled").await, StatusCode::NOT_FOUND);
}

/// A connection that sends a PUT's headers and 5 of its 100 body bytes, then stalls.
async fn stalled_upload(app: &TestApp) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(app.addr.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "PUT /v1/subjects/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"fie",
        token("svc-all")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_slow_client_is_cut_off_with_408() {
    use tokio::io::AsyncReadExt;
    let app = spawn_with("[limits]\nrequest_timeout_secs = 1\n", None).await;
    let mut s = stalled_upload(&app).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await.expect("answered in time").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json") && text.contains("request-timeout"), "{text}");
    assert_eq!(app.read("slow", "svc-all", "loan_issuance").await.status, StatusCode::NOT_FOUND);
}

/// `limits.max_concurrent_requests` bounds the whole server, not each route: while a slow
/// upload holds the only slot, a request to another route waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_limit_is_one_for_the_whole_server() {
    let app = spawn_with("[limits]\nmax_concurrent_requests = 1\n", None).await;
    let slow = stalled_upload(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // the PUT takes the slot
    let client = app.client.clone();
    let url = format!("{}/healthz", app.addr);
    let waiting = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a request to another route was served while the only slot was taken");
    drop(slow); // the upload is abandoned: its slot comes free
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.expect("served once the slot is free");
    assert_eq!(status.unwrap().unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let mode = std::fs::metadata(app.data_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let journal = std::fs::metadata(&app.config.erasure_journal).unwrap().permissions().mode() & 0o777;
    assert_eq!(journal, 0o600);
}

#[tokio::test]
async fn metrics_are_exposed_without_ids_or_values() {
    let app = spawn_app().await;
    app.put_fields("metric-subject-42", application("METRICMARK")).await;
    app.read("metric-subject-42", "svc-all", "loan_issuance").await;
    app.read("metric-subject-42", "svc-marketing", "advertising").await;
    app.call(Method::GET, "/nowhere", None, None).await;
    let res = app.client.get(format!("{}/metrics", app.addr)).bearer_auth(token("monitoring")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for needle in [
        "qoima_http_requests_total{route=\"/v1/subjects/{id}\",method=\"PUT\",status=\"201\"} 1",
        "qoima_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "qoima_http_request_duration_seconds_bucket{route=\"/v1/subjects/{id}\",le=\"+Inf\"} 3",
        "qoima_decisions_total{action=\"subject.read\",purpose=\"loan_issuance\",decision=\"allow\"} 1",
        "qoima_decisions_total{action=\"subject.read\",purpose=\"advertising\",decision=\"deny\"} 1",
        "qoima_dek_cache_hits_total",
        // The first read looked the subject up and kept it; the refused one found it there.
        "qoima_subject_cache_misses_total 1",
        "qoima_subject_cache_hits_total 1",
        "qoima_subject_cache_entries 1",
        // Both reads found everything in memory: the refusal was answered and recorded where it
        // stood, on the async thread.
        "qoima_reads_in_memory_total 2",
        "qoima_reads_blocking_total 0",
        // So did the write (a new subject in an empty store).
        "qoima_writes_in_memory_total 1",
        "qoima_writes_blocking_total 0",
        "qoima_kek_deks{generation=\"1\",state=\"active\"} 1",
        "qoima_rewrap_running 0",
        "qoima_rocksdb_estimate_keys{cf=\"records\"}",
        "qoima_rocksdb_background_errors 0",
        "qoima_process_resident_memory_bytes",
    ] {
        // The memory tier, the subject cache it fills and the RocksDB figures are the embedded
        // engine's (on PostgreSQL every read is a blocking one).
        let embedded = ["in_memory", "blocking_total", "subject_cache", "rocksdb"].iter().any(|e| needle.contains(e));
        if embedded && on_postgres() {
            continue;
        }
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    // Every group commit is timed: the write and the two reads are three (each was alone).
    let commits = text.lines().find_map(|l| l.strip_prefix("qoima_audit_commit_seconds_count ")).expect("commit count");
    assert!(commits.parse::<u64>().unwrap() >= 3, "{commits} audit groups timed");
    assert!(!text.contains("metric-subject-42") && !text.contains("METRICMARK") && !text.contains("test-token"));
}

/// Unauthenticated clients cannot grow the audit trail without bound: over
/// `limits.audited_auth_failures_per_second` (here 1, a burst of 10) failed authentications
/// are counted into summary entries, every one still answered 401, none lost from the count.
#[tokio::test]
async fn failed_authentications_over_the_budget_are_summarised_not_lost() {
    let app = spawn_with("[limits]\naudited_auth_failures_per_second = 1\n", Some(qoima::domain::ManualClock::new(now()))).await;
    for i in 0..25 {
        let r = app.call(Method::GET, &format!("/v1/subjects/probe-{i}?purpose=loan_issuance"), Some("nobody"), None).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED);
    }
    // The clock stands still: no token comes back, so 10 were recorded and 15 counted. The
    // server writes the count within about a second.
    let (mut individual, mut summarised) = (0, 0);
    for _ in 0..100 {
        let audit = app.get("/v1/audit?caller=anonymous&limit=1000", "auditor").await;
        let entries = audit.body["entries"].as_array().unwrap().clone();
        assert!(entries.iter().all(|e| e["action"] == "auth.failed" && e["decision"] == "deny"));
        individual = entries.iter().filter(|e| e["request_id"] != "summary").count();
        summarised = entries
            .iter()
            .filter(|e| e["request_id"] == "summary")
            .map(|e| e["reason"].as_str().unwrap().split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
        if summarised == 15 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((individual, summarised), (10, 15));
    let metrics = app.metrics().await;
    assert!(metrics.contains("qoima_auth_failures_unrecorded_total 15"), "{metrics}");
    // A second later one attempt is recorded one by one again.
    app.advance(time::Duration::seconds(1));
    app.call(Method::GET, "/v1/subjects/probe-x?purpose=loan_issuance", Some("nobody"), None).await;
    let audit = app.get("/v1/audit?subject=probe-x", "auditor").await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/audit/verify", "auditor").await.body["ok"], true);
}

/// `[[callers]] max_reads_per_minute`: a caller over its limit gets 429 with `Retry-After`,
/// the refusal is audited, nothing is read; other callers are not affected; a read comes back
/// every 60/limit seconds.
#[tokio::test]
async fn a_caller_over_its_read_limit_gets_429_and_nothing() {
    let app = spawn_with(&limited_caller(3), Some(qoima::domain::ManualClock::new(now()))).await;
    app.put_fields("rl-1", application("RATEMARK")).await;
    for _ in 0..3 {
        assert_eq!(app.read("rl-1", "svc-limited", "loan_issuance").await.status, StatusCode::OK);
    }
    let r = app.read("rl-1", "svc-limited", "loan_issuance").await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["type"], "urn:qoima:problem:rate-limited");
    assert_eq!(r.headers["retry-after"], "20");
    assert!(r.body["fields"].is_null() && !r.body.to_string().contains("RATEMARK"));
    assert_eq!(app.read("rl-1", "svc-all", "loan_issuance").await.status, StatusCode::OK, "another caller is not limited");
    let audit = app.get("/v1/audit?caller=svc-limited", "auditor").await;
    let denied: Vec<_> = audit.body["entries"].as_array().unwrap().iter().filter(|e| e["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1);
    assert!(denied[0]["reason"].as_str().unwrap().contains("limit of 3 reads of personal data per minute"), "{:?}", denied[0]);
    app.advance(time::Duration::seconds(20));
    assert_eq!(app.read("rl-1", "svc-limited", "loan_issuance").await.status, StatusCode::OK);
}
