//! Issue #23: what `/metrics` and `/readyz` show, and to whom. Their label sets come from
//! closed sets, so no request can grow them; without credentials they say only whether the
//! vault is healthy.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

async fn public_metrics(app: &TestApp) -> String {
    let res = app.client.get(format!("{}/metrics", app.addr)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

/// The label sets of one metric family, as written.
fn series<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{family}{{"))).collect()
}

#[tokio::test]
async fn no_request_adds_a_label_set() {
    let app = spawn_app().await;
    app.put_fields("lbl-1", application("LABELS")).await;
    let before = app.metrics().await;
    // Methods: any token hyper accepts reaches the router.
    for i in 0..40 {
        let method = Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let res = app.client.request(method, format!("{}/v1/subjects/lbl-1", app.addr)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    // Purposes: well-formed but unconfigured, over the API and the privacy centre's link.
    let r = app.call(Method::DELETE, "/v1/subjects/lbl-1/consents/no_such_purpose", Some("website"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("unknown purpose"), "{:?}", r.body);
    for i in 0..20 {
        let r = app.call(Method::DELETE, &format!("/v1/subjects/lbl-1/consents/made_up_{i}"), Some("svc-all"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let session = app.call(Method::POST, "/v1/subjects/lbl-1/privacy-session", Some("website"), None).await;
    let url = session.body["url"].as_str().unwrap().to_owned();
    let res = app.client.post(format!("{url}/consents/pc_made_up/withdraw")).form(&[("csrf", "x")]).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "an unknown purpose is refused before the CSRF check");
    // Reads naming an unconfigured purpose.
    for i in 0..5 {
        app.read("lbl-1", "svc-all", &format!("read_made_up_{i}")).await;
    }

    let after = app.metrics().await;
    assert!(!after.contains("PROBE") && !after.contains("made_up"), "{after}");
    assert!(after.contains("qoima_http_requests_total{route=\"unmatched\",method=\"other\",status=\"405\"} 40"), "{after}");
    for family in ["qoima_http_requests_total", "qoima_decisions_total"] {
        let added: Vec<_> = series(&after, family)
            .into_iter()
            .filter(|l| {
                let labels = l.rsplit_once(' ').unwrap().0;
                !before.lines().any(|b| b.starts_with(labels))
            })
            .collect();
        // What these requests may add: the `other` method on one route, one 400 per route
        // template, and the session link's routes.
        assert!(added.len() <= 8, "{family}: {added:#?}");
    }
    // Nothing was recorded about a purpose that does not exist.
    let audit = app.get("/v1/audit?subject=lbl-1&limit=1000", "auditor").await;
    let entries = audit.body["entries"].as_array().unwrap();
    assert!(!entries.iter().any(|e| e["action"] == "consent.withdraw"), "{entries:#?}");
}

#[tokio::test]
async fn health_without_credentials_is_coarse() {
    let app = spawn_app().await;
    app.put_fields("exp-1", application("EXPOSURE")).await;

    let public = public_metrics(&app).await;
    assert!(
        public.contains("qoima_ready 1") && public.contains("qoima_store_healthy 1") && public.contains("qoima_audit_healthy 1"),
        "{public}"
    );
    for detail in
        ["qoima_kek_deks", "qoima_rocksdb", "qoima_decisions_total", "qoima_http_requests_total", "generation", "qoima_subject_cache"]
    {
        assert!(!public.contains(detail), "{detail} in the public scrape:\n{public}");
    }
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let checks = ready.body["checks"].as_object().unwrap();
    assert!(checks.values().all(|v| v == "ok"), "{checks:?}");

    // A scraper's token (role monitoring) or the security team's gets the detail.
    let detail = app.metrics().await;
    assert!(detail.contains("qoima_kek_deks{generation=\"1\",state=\"active\"} 1"), "{detail}");
    for caller in ["monitoring", "security"] {
        let r = app.get("/readyz", caller).await;
        assert_eq!(r.body["checks"]["root_key"], Value::from("ok (active KEK generation 1)"), "{caller}");
    }
    // Credentials are checked as anywhere else: unknown 401, a role without it 403.
    for (caller, status) in [("nobody", StatusCode::UNAUTHORIZED), ("svc-all", StatusCode::FORBIDDEN), ("auditor", StatusCode::FORBIDDEN)] {
        let r = app.client.get(format!("{}/metrics", app.addr)).bearer_auth(token(caller)).send().await.unwrap();
        assert_eq!(r.status(), status, "{caller}");
        assert_eq!(app.get("/readyz", caller).await.status, status, "{caller}");
    }
}

#[tokio::test]
async fn a_failing_check_is_named_without_its_detail() {
    let app = spawn_app().await;
    app.faults.set(true);
    assert_eq!(app.put_fields("exp-2", application("FAIL")).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["checks"]["audit"], "failing");
    assert!(public_metrics(&app).await.contains("qoima_audit_healthy 0"));
    let detailed = app.get("/readyz", "monitoring").await;
    assert_eq!(detailed.body["checks"]["audit"], "last audit write failed");
    app.faults.set(false);
}
