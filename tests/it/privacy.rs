//! Issue #9: the borrower's privacy centre. Over HTTP without a browser (sessions, headers,
//! escaping, expiry, tampering, CSRF, audit), then end to end in real headless Chromium
//! (`tests/e2e/privacy.mjs`, driven by playwright-core).

use std::path::PathBuf;

use qoima::domain::ManualClock;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

const VIA: &str = "(via the privacy centre, on behalf of the subject)";

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn open_session(app: &TestApp, subject: &str) -> String {
    let r = app.call(Method::POST, &format!("/v1/subjects/{subject}/privacy-session"), Some("website"), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["url"].as_str().unwrap().to_owned()
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    html: String,
}

async fn get_page(url: &str, accept_language: Option<&str>) -> Page {
    let mut req = browser().get(url);
    if let Some(l) = accept_language {
        req = req.header("accept-language", l);
    }
    let res = req.send().await.unwrap();
    Page { status: res.status(), headers: res.headers().clone(), html: res.text().await.unwrap() }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

/// Posts a form as a browser on `origin` would (no `Origin` header when `None`).
async fn post_form(url: &str, form: &[(&str, &str)], origin: Option<&str>) -> reqwest::Response {
    let mut req = browser().post(url).form(form);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap()
}

fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default()
}

async fn audit_of(app: &TestApp, subject: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/audit?subject={subject}&limit=1000"), "auditor").await;
    assert_eq!(r.status, StatusCode::OK);
    r.body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn sessions_are_opened_by_the_website_only_and_audited() {
    let app = spawn_app().await;
    app.put_fields("pc-1", application("PC1")).await;
    let path = "/v1/subjects/pc-1/privacy-session";
    for caller in ["svc-all", "security", "auditor"] {
        let r = app.call(Method::POST, path, Some(caller), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{caller}");
    }
    assert_eq!(app.call(Method::POST, path, None, None).await.status, StatusCode::UNAUTHORIZED);
    let r = app.call(Method::POST, path, Some("website"), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let url = r.body["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/privacy/s/", app.addr)), "{url}");
    let expires =
        time::OffsetDateTime::parse(r.body["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let minutes = (expires - now()).whole_minutes();
    assert!((14..=15).contains(&minutes), "15 minutes by default: {minutes}");

    let unknown = app.call(Method::POST, "/v1/subjects/nobody/privacy-session", Some("website"), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(app.call(Method::POST, "/v1/subjects/a%20b/privacy-session", Some("website"), None).await.status, StatusCode::BAD_REQUEST);
    app.put_fields("pc-gone", application("PCG")).await;
    app.erase("pc-gone").await;
    let gone = app.call(Method::POST, "/v1/subjects/pc-gone/privacy-session", Some("website"), None).await;
    assert_eq!(gone.status, StatusCode::GONE);

    let entries = audit_of(&app, "pc-1").await;
    let sessions: Vec<&Value> = entries.iter().filter(|e| e["action"] == "privacy_session.create").collect();
    assert_eq!(sessions.iter().filter(|e| e["decision"] == "deny").count(), 3, "{sessions:#?}");
    let allowed: Vec<&&Value> = sessions.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["caller"], "website");
    assert!(allowed[0]["reason"].as_str().unwrap().starts_with("privacy-centre session opened until "));
    // The link is a credential: it is nowhere in the audit trail.
    let token = url.rsplit('/').next().unwrap();
    assert!(!serde_json::to_string(&entries).unwrap().contains(token));
    let denied = audit_of(&app, "pc-gone").await;
    assert!(denied.iter().any(|e| e["action"] == "privacy_session.create" && e["decision"] == "deny" && e["reason"] == "subject erased"));
}

#[tokio::test]
async fn the_page_shows_the_data_escaped_under_a_strict_policy() {
    let app = spawn_app().await;
    let mut fields = application("PC2");
    fields["identity.address"] = json!("<script>alert(1)</script>");
    fields["questionnaire.loan_purpose"] = json!("\"><img src=x onerror=alert(2)>");
    app.put_fields("pc-2", fields).await;
    app.give_consent("pc-2", "advertising").await;
    app.open_contract("pc-2", "L-7").await;
    let d = app
        .call(
            Method::POST,
            "/v1/subjects/pc-2/disclosures",
            Some("svc-all"),
            Some(json!({"recipient": "Bureau <b>X</b>", "basis": "legal_obligation", "reference": "Law 94-V", "fields": ["identity.full_name"]})),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK);
    app.read("pc-2", "svc-all", "loan_issuance").await;
    let url = open_session(&app, "pc-2").await;

    let p = get_page(&url, None).await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.headers["content-type"], "text/html; charset=utf-8");
    assert!(p.html.contains("<html lang=\"kk\">"), "Kazakh by default");
    assert!(p.html.contains("Aigerim PC2"));
    assert!(p.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!p.html.contains("<script>alert(1)"));
    assert!(!p.html.contains("<img src=x") && p.html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(p.html.contains("Bureau &lt;b&gt;X&lt;/b&gt;") && !p.html.contains("<b>X"));
    assert!(p.html.contains("L-7") && p.html.contains("2019-01-29") && p.html.contains("Law 94-V"));
    assert!(p.html.contains("svc-all"), "the access summary names who read");

    let csp = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
    assert_eq!(p.headers["content-security-policy"], csp);
    assert_eq!(p.headers["referrer-policy"], "same-origin");
    assert_eq!(p.headers["x-frame-options"], "DENY");
    assert_eq!(p.headers["cache-control"], "no-store");
    assert_eq!(p.headers["x-content-type-options"], "nosniff");

    for (asset, kind) in [("privacy.css", "text/css"), ("privacy.js", "text/javascript"), ("icon.svg", "image/svg+xml")] {
        let a = get_page(&format!("{}/privacy/assets/{asset}", app.addr), None).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert!(a.headers["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
        assert_eq!(a.headers["content-security-policy"], csp);
    }

    // The language: ?lang= first, then Accept-Language, then the default.
    assert!(get_page(&format!("{url}?lang=en"), Some("ru")).await.html.contains("<html lang=\"en\">"));
    let ru = get_page(&url, Some("ru-RU,ru;q=0.9,en;q=0.8")).await.html;
    assert!(ru.contains("<html lang=\"ru\">") && ru.contains("Центр конфиденциальности"));

    // Showing the page is an access by the website, via the privacy centre.
    let entries = audit_of(&app, "pc-2").await;
    let shown = entries.iter().filter(|e| e["action"] == "subject.export" && e["caller"] == "website").count();
    assert_eq!(shown, 3);
    assert!(entries.iter().filter(|e| e["action"] == "subject.export").all(|e| e["reason"].as_str().unwrap().ends_with(VIA)));
}

#[tokio::test]
async fn configured_origins_may_embed_the_page() {
    let app = spawn_with(
        "[privacy]\nframe_ancestors = [\"https://www.100tenge.kz\", \"https://100tenge.kz/\"]\ndefault_language = \"ru\"\n",
        None,
    )
    .await;
    app.put_fields("pc-3", application("PC3")).await;
    let p = get_page(&open_session(&app, "pc-3").await, None).await;
    assert!(p.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .ends_with("frame-ancestors https://www.100tenge.kz https://100tenge.kz"));
    assert!(p.headers.get("x-frame-options").is_none(), "X-Frame-Options cannot name several origins");
    assert!(p.html.contains("<html lang=\"ru\">"));
}

#[tokio::test]
async fn expired_tampered_and_old_links_are_refused() {
    let app = spawn_with("", Some(ManualClock::new(now()))).await;
    app.put_fields("pc-a", application("PCA")).await;
    app.put_fields("pc-b", application("PCB")).await;
    app.give_consent("pc-a", "advertising").await;
    let url = open_session(&app, "pc-a").await;
    let page = get_page(&url, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = csrf_of(&page.html);

    // A's link, its payload naming B: the signature no longer holds.
    let token = url.rsplit('/').next().unwrap();
    let (payload, tag) = token.split_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(b64.decode(payload).unwrap()).unwrap();
    assert!(claims.contains("\"subject\":\"pc-a\""), "{claims}");
    let forged = format!("{}.{tag}", b64.encode(claims.replace("pc-a", "pc-b")));
    let forged_url = format!("{}/privacy/s/{forged}", app.addr);
    let p = get_page(&forged_url, Some("en")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.html.contains("The link is not valid.") && !p.html.contains("PCB"));
    let r = post_form(&format!("{forged_url}/erasure"), &[("csrf", &csrf), ("confirm", "yes")], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/subjects/pc-b/erasure", "website").await.status, StatusCode::NOT_FOUND, "B untouched");
    for junk in ["x", "x.y", "", "..", &"a".repeat(3000)] {
        assert_eq!(get_page(&format!("{}/privacy/s/{junk}", app.addr), None).await.status.as_u16() / 100, 4, "{junk:.10}");
    }

    // Past session_minutes the link is refused, for reading and for acting.
    app.advance(time::Duration::minutes(15) + time::Duration::seconds(1));
    let p = get_page(&url, Some("en")).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(p.html.contains("The link has expired") && !p.html.contains("Aigerim"));
    assert_eq!(p.headers["cache-control"], "no-store");
    let r = post_form(&format!("{url}/consents/advertising/withdraw"), &[("csrf", &csrf)], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.read("pc-a", "svc-all", "advertising").await.status, StatusCode::OK, "the consent still holds");
    assert_eq!(browser().get(format!("{url}/export")).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    let entries = audit_of(&app, "pc-a").await;
    assert!(entries.iter().any(|e| e["action"] == "auth.failed" && e["reason"] == "privacy-centre link expired"), "{entries:#?}");

    // Links die with the process: the key that signed them is gone after a restart.
    let fresh = open_session(&app, "pc-a").await;
    assert_eq!(get_page(&fresh, None).await.status, StatusCode::OK);
    let app = app.restart().await;
    let old = fresh.replace(&fresh[..fresh.find("/privacy/").unwrap()], &app.addr);
    assert_eq!(get_page(&old, None).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_field_and_the_vaults_origin() {
    let app = spawn_app().await;
    app.put_fields("pc-c", application("PCC")).await;
    app.give_consent("pc-c", "advertising").await;
    let url = open_session(&app, "pc-c").await;
    let other = open_session(&app, "pc-c").await;
    let csrf = csrf_of(&get_page(&url, None).await.html);
    let other_csrf = csrf_of(&get_page(&other, None).await.html);
    assert_ne!(csrf, other_csrf);
    let own = app.addr.as_str();

    let posts: [(&str, Vec<(&str, &str)>); 3] = [
        ("/consents/advertising/withdraw", vec![]),
        ("/rectify", vec![("field", "identity.phone"), ("value", "+77000000001")]),
        ("/erasure", vec![("confirm", "yes")]),
    ];
    for (tail, fields) in &posts {
        let target = format!("{url}{tail}");
        let with = |csrf: Option<&'static str>| {
            let mut f = fields.clone();
            f.extend(csrf.map(|c| ("csrf", c)));
            f
        };
        let (good, stranger): (&'static str, &'static str) = (csrf.clone().leak(), other_csrf.clone().leak());
        let cases = [
            (with(None), Some(own), "no CSRF field"),
            (with(Some("00")), Some(own), "a wrong CSRF field"),
            (with(Some(stranger)), Some(own), "another session's CSRF field"),
            (with(Some(good)), Some("https://evil.example"), "another origin"),
            (with(Some(good)), Some("null"), "an opaque origin"),
        ];
        for (form, origin, what) in cases {
            let r = post_form(&target, &form, origin).await;
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{tail} with {what}");
            let body = r.text().await.unwrap();
            assert!(body.contains("<html lang=\"kk\">"), "{tail} with {what}: a page, not JSON");
        }
    }
    // Nothing changed.
    assert_eq!(app.read("pc-c", "svc-all", "advertising").await.status, StatusCode::OK);
    assert_eq!(app.read("pc-c", "svc-all", "loan_issuance").await.body["fields"]["identity.phone"], "+77011234567");
    assert_eq!(app.get("/v1/subjects/pc-c/erasure", "website").await.status, StatusCode::NOT_FOUND);
    let refused = audit_of(&app, "pc-c").await.into_iter().filter(|e| e["action"] == "auth.failed").count();
    assert_eq!(refused, 15, "each refused form is recorded");

    // The same forms with the field, from the vault's own page (or without Origin), work.
    let r = post_form(&format!("{url}/consents/advertising/withdraw"), &[("csrf", &csrf)], Some(own)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post_form(&format!("{url}/rectify"), &[("csrf", &csrf), ("field", "identity.phone"), ("value", "+77000000001")], None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_action_goes_through_the_vault_as_the_website_via_the_privacy_centre() {
    let app = spawn_app().await;
    app.put_fields("pc-d", application("PCD")).await;
    app.give_consent("pc-d", "advertising").await;
    app.open_contract("pc-d", "L-9").await;
    let url = open_session(&app, "pc-d").await;
    let csrf = csrf_of(&get_page(&format!("{url}?lang=en"), None).await.html);
    let form = |extra: &[(&'static str, &'static str)]| {
        let mut f: Vec<(&str, String)> = vec![("csrf", csrf.clone())];
        f.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        f
    };
    let post = |tail: &'static str, f: Vec<(&'static str, String)>| {
        let target = format!("{url}{tail}?lang=en");
        async move { browser().post(target).form(&f).send().await.unwrap() }
    };

    // Rectify: a good value, a bad one (nothing stored), a field the borrower may not change.
    let r = post("/rectify", form(&[("field", "questionnaire.monthly_income"), ("value", " 420000 ")])).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(location(&r).ends_with("?lang=en&notice=rectified&field=questionnaire.monthly_income"), "{}", location(&r));
    let fields = app.read("pc-d", "svc-all", "loan_issuance").await.body["fields"].clone();
    assert_eq!(fields["questionnaire.monthly_income"], 420000, "stored as a number, as the API would");
    let r = post("/rectify", form(&[("field", "identity.phone"), ("value", "not a phone")])).await;
    assert!(location(&r).contains("notice=rectify-invalid&field=identity.phone"));
    let r = post("/rectify", form(&[("field", "contract.amount"), ("value", "1")])).await;
    assert!(location(&r).contains("notice=not-editable"));
    let fields = app.read("pc-d", "svc-all", "loan_issuance").await.body["fields"].clone();
    assert_eq!((fields["identity.phone"].as_str(), fields["contract.amount"].as_i64()), (Some("+77011234567"), Some(150000)));
    let p = get_page(&format!("{url}?lang=en&notice=rectify-invalid&field=identity.phone"), None).await;
    assert!(p.html.contains("The new value for “Phone” is not in the right form."));

    // Withdraw: the next advertising read is refused.
    assert_eq!(app.read("pc-d", "svc-marketing", "advertising").await.status, StatusCode::OK);
    let r = post("/consents/advertising/withdraw", form(&[])).await;
    assert!(location(&r).ends_with("notice=withdrawn&purpose=advertising"));
    let denied = app.read("pc-d", "svc-marketing", "advertising").await;
    assert_eq!((denied.status, denied.body["type"].as_str()), (StatusCode::FORBIDDEN, Some("urn:qoima:problem:basis-missing")));

    // Export: a download of the API's export document.
    let res = browser().get(format!("{url}/export")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-disposition"], "attachment; filename=\"privacy-export-pc-d.json\"");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["fields"]["questionnaire.monthly_income"], 420000);
    assert!(doc["consents"][0]["withdrawn_at"].is_string());

    // Erasure: a confirmation first; then pending behind L-9, shown with the contract.
    let r = post("/erasure", form(&[])).await;
    assert!(location(&r).ends_with("notice=confirm-erasure"));
    assert_eq!(app.get("/v1/subjects/pc-d/erasure", "website").await.status, StatusCode::NOT_FOUND);
    let r = post("/erasure", form(&[("confirm", "yes")])).await;
    assert!(location(&r).ends_with("notice=erasure-pending"));
    let status = app.get("/v1/subjects/pc-d/erasure", "website").await;
    assert_eq!((status.body["status"].as_str(), status.body["held_by"][0].as_str()), (Some("pending"), Some("L-9")));
    let receipt = status.body["receipt"].as_str().unwrap().to_owned();
    let p = get_page(&format!("{url}?lang=en"), None).await.html;
    assert!(p.contains("Erasure requested") && p.contains("L-9") && p.contains(&receipt));

    // Settled through the API: the page shows the erased state and its receipt.
    let settled = app.set_contract("pc-d", "L-9", "settled").await;
    assert_eq!(settled.body["erasure"]["status"], "erased");
    let p = get_page(&format!("{url}?lang=en"), None).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.html.contains("Your data has been erased") && p.html.contains(&format!("<code id=\"receipt\">{receipt}</code>")));
    assert!(!p.html.contains("Aigerim") && !p.html.contains("<form"));
    let r = post("/consents/advertising/withdraw", form(&[])).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "an action after erasure goes back to the erased page");

    // Every one of these is in the audit trail as the website, via the privacy centre.
    let entries = audit_of(&app, "pc-d").await;
    let via: Vec<&Value> = entries.iter().filter(|e| e["reason"].as_str().unwrap().ends_with(VIA)).collect();
    assert!(via.iter().all(|e| e["caller"] == "website"), "{via:#?}");
    for action in ["subject.export", "subject.rectify", "consent.withdraw", "erasure.request", "erasure.status"] {
        assert!(via.iter().any(|e| e["action"] == action && e["decision"] == "allow"), "{action} missing: {via:#?}");
    }
    // The website's own API calls (the consent, the status reads above) are not marked.
    let api_calls = entries.iter().filter(|e| e["caller"] == "website" && !e["reason"].as_str().unwrap().ends_with(VIA));
    let api_actions: Vec<&str> = api_calls.map(|e| e["action"].as_str().unwrap()).collect();
    assert!(api_actions.contains(&"consent.give") && api_actions.contains(&"erasure.status"), "{api_actions:?}");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("420000") && !text.contains("not a phone"), "no values in the audit trail");
}

/// Where test artefacts go: `$CARGO_TARGET_DIR`, else the target directory this binary runs from.
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// What the browser test needs, or a message saying how to install it (the test fails:
/// skipping silently would leave the privacy centre untested).
fn browser_prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let e2e = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e"));
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!("{} not found: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)", chromium.display()));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            let major: u32 = v.trim().trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if major < 20 {
                missing.push(format!("node {} is too old: playwright-core needs Node.js 20 or later", v.trim()));
            }
        }
        _ => missing.push("node not found: install Node.js 20 or later (and npm)".into()),
    }
    if !e2e.join("node_modules/playwright-core/package.json").exists() {
        missing.push(format!("playwright-core not installed: run `npm ci --prefix {}` (.ci/run does)", e2e.display()));
    }
    if missing.is_empty() {
        Ok((e2e, chromium))
    } else {
        Err(missing.join("; "))
    }
}

#[tokio::test]
async fn a_borrower_uses_the_privacy_centre_in_chromium() {
    let (e2e, chromium) = browser_prerequisites().unwrap_or_else(|m| panic!("the privacy centre's browser test cannot run: {m}"));
    let lender_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("[privacy]\nframe_ancestors = [\"http://127.0.0.1:{lender_port}\"]\n");
    let app = spawn_with(&extra, Some(ManualClock::new(now()))).await;

    let subject = "borrower-e2e";
    let mut fields = application("E2E");
    fields["identity.full_name"] = json!("Aigerim E2E");
    fields["identity.address"] = json!("<script>alert(1)</script>");
    assert_eq!(app.put_fields(subject, fields).await.status, StatusCode::CREATED);
    app.put_fields("borrower-other", application("OTHER")).await;
    assert_eq!(app.give_consent(subject, "advertising").await.status, StatusCode::CREATED);
    assert_eq!(app.open_contract(subject, "L-2026-001").await.status, StatusCode::CREATED);
    let d = app
        .call(
            Method::POST,
            &format!("/v1/subjects/{subject}/disclosures"),
            Some("svc-all"),
            Some(json!({"recipient": "First Credit Bureau", "basis": "legal_obligation", "reference": "Law 94-V art. 9",
                        "fields": ["identity.full_name", "identity.iin"]})),
        )
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(app.read(subject, "svc-issuance", "loan_issuance").await.status, StatusCode::OK);

    // One link that will have expired by the time the browser opens it, then the real one.
    let expired = open_session(&app, subject).await;
    app.advance(time::Duration::minutes(16));
    let link = open_session(&app, subject).await;

    let shots = target_dir().join("privacy-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(e2e.join("privacy.mjs"))
        .current_dir(&e2e)
        .env("QOIMA_URL", &app.addr)
        .env("PRIVACY_LINK", &link)
        .env("EXPIRED_LINK", &expired)
        .env("SUBJECT", subject)
        .env("OTHER_SUBJECT", "borrower-other")
        .env("CONTRACT", "L-2026-001")
        .env("SERVICE_TOKEN", token("svc-all"))
        .env("WEBSITE_TOKEN", token("website"))
        .env("LENDER_PORT", lender_port.to_string())
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser test finishes within 5 minutes")
        .expect("node starts");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{log}");
    assert!(out.status.success(), "the browser walk failed (screenshots in {}):\n{log}", shots.display());

    for name in [
        "01-page-kk",
        "02-page-en",
        "03-phone-ru",
        "04-rectified",
        "06-consent-withdrawn",
        "07-erasure-pending",
        "09-erased",
        "10-expired",
        "11-tampered",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "screenshot {name}");
    }
    // The vault's side of it: the borrower's actions, as the website via the privacy centre.
    let entries = audit_of(&app, subject).await;
    for action in ["subject.rectify", "consent.withdraw", "erasure.request"] {
        assert!(
            entries.iter().any(|e| e["action"] == action && e["caller"] == "website" && e["reason"].as_str().unwrap().ends_with(VIA)),
            "{action}"
        );
    }
    assert_eq!(app.read(subject, "svc-all", "loan_issuance").await.status, StatusCode::GONE);
    assert_eq!(app.read("borrower-other", "svc-all", "loan_issuance").await.status, StatusCode::OK);
}

/// One GET through the real router, in process, with these callers and these links (so a
/// test can change the configured callers under a link that stays valid).
async fn get_with(
    vault: &std::sync::Arc<qoima::vault::Vault>,
    callers: qoima::auth::Callers,
    sessions: &std::sync::Arc<qoima::privacy::Sessions>,
    limits: &qoima::config::Limits,
    path: &str,
) -> (StatusCode, String) {
    use tower::ServiceExt;
    let state = qoima::api::AppState {
        vault: vault.clone(),
        callers: std::sync::Arc::new(callers),
        http: Default::default(),
        privacy: sessions.clone(),
    };
    let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
    let res = qoima::api::router(state, limits.into()).oneshot(req).await.unwrap();
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_link_stops_working_when_its_caller_loses_the_website_role() {
    use qoima::auth::Callers;
    use qoima::domain::{CallerName, RequestId, Role, SubjectId};
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    std::fs::write(dir.path().join("qoima.toml"), config_text(dir.path(), "")).unwrap();
    let config = qoima::config::Config::load(&dir.path().join("qoima.toml"), &|_| None).unwrap();
    let c = config.clone();
    let vault = tokio::task::spawn_blocking(move || qoima::server::open_vault(&c, &Default::default())).await.unwrap().unwrap();
    let vault = std::sync::Arc::new(vault);
    let entries = config.callers.entries().to_vec();
    let svc = entries.iter().find(|e| e.caller.name.as_str() == "svc-all").unwrap().caller.clone();
    let ctx = qoima::vault::Ctx { caller: svc, request_id: RequestId::generate(), client_request_id: None, via: None, idempotency: None };
    let subject = SubjectId::parse("pc-role").unwrap();
    let fields = application("PCR").as_object().unwrap().clone().into_iter().collect();
    vault.put_fields(qoima::vault::Mode::Wait, &ctx, &subject, &fields).durable().await.unwrap();

    let sessions =
        std::sync::Arc::new(qoima::privacy::Sessions::new(&config.privacy, qoima::privacy::PublicUrl::parse("http://vault.test").unwrap()));
    let link = sessions.issue(&subject, &CallerName::parse("website").unwrap(), sessions.expiry(vault.now()));
    let path = format!("/privacy/s/{}", link.token.as_str());

    let (status, html) = get_with(&vault, config.callers.clone(), &sessions, &config.limits, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Aigerim PCR"));
    // The same caller name, now only a service: refused.
    let demoted: Vec<_> = entries
        .iter()
        .cloned()
        .map(|mut e| {
            if e.caller.name.as_str() == "website" {
                std::sync::Arc::make_mut(&mut e.caller).roles = [Role::Service].into();
            }
            e
        })
        .collect();
    let (status, html) = get_with(&vault, Callers::new(demoted), &sessions, &config.limits, &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!html.contains("Aigerim"));
    // Removed from the configuration: refused.
    let removed: Vec<_> = entries.iter().filter(|e| e.caller.name.as_str() != "website").cloned().collect();
    let (status, _) = get_with(&vault, Callers::new(removed), &sessions, &config.limits, &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    vault.close();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_link_and_form_values_never_reach_the_log() {
    let (_dir, mut child) = spawn_traced_binary();
    let addr = child.addr.clone();
    let c = reqwest::Client::new();
    let marker = format!("PCLOG{}", qoima::domain::random_hex::<6>());
    let mut fields = application(&marker);
    fields["identity.full_name"] = json!(format!("Aigerim {marker}"));
    let r =
        c.put(format!("{addr}/v1/subjects/pc-log")).bearer_auth(token("svc-all")).json(&json!({ "fields": fields })).send().await.unwrap();
    assert!(r.status().is_success());
    let r = c.post(format!("{addr}/v1/subjects/pc-log/privacy-session")).bearer_auth(token("website")).send().await.unwrap();
    let url = r.json::<Value>().await.unwrap()["url"].as_str().unwrap().to_owned();
    let page = get_page(&format!("{url}?lang=en"), None).await;
    assert!(page.html.contains(&marker));
    let csrf = csrf_of(&page.html);
    let new_address = format!("Astana {marker}-NEW");
    let r = post_form(&format!("{url}/rectify"), &[("csrf", &csrf), ("field", "identity.address"), ("value", &new_address)], None).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post_form(&format!("{url}/rectify"), &[("csrf", "00"), ("field", "identity.address"), ("value", &new_address)], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(browser().get(format!("{url}/export")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get_page(&format!("{url}x"), None).await.status, StatusCode::FORBIDDEN);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = child.kill();
    assert!(logs.contains("/privacy/s/…"), "requests to the privacy centre are logged, without their token");
    let token = url.rsplit('/').next().unwrap();
    let (payload, tag) = token.split_once('.').unwrap();
    for (what, secret) in
        [("token", token), ("claims", payload), ("signature", tag), ("CSRF field", csrf.as_str()), ("value", marker.as_str())]
    {
        assert!(!logs.contains(secret), "the log holds the {what}");
    }
}
