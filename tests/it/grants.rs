//! Issue #23, callers that can do less: write grants (a caller writes only the fields its
//! grant allows) and subject assertions (a website caller configured for them acts for one
//! borrower at a time). Black-box over HTTP, but for the one check that the fast write path
//! refuses too.

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use qoima::auth::token_digest;
use qoima::domain::{ManualClock, RequestId, SubjectId};
use qoima::vault::{Ctx, Mode, VaultError};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// Write grants
// ---------------------------------------------------------------------------------------

/// An extra caller for the tests: (name, role, purposes, writes line or "").
fn extra_caller(name: &str, role: &str, purposes: &[&str], writes: Option<&str>) -> String {
    let p: Vec<String> = purposes.iter().map(|p| format!("\"{p}\"")).collect();
    let mut t = format!(
        "[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\npurposes = [{}]\n",
        hex::encode(token_digest(&token(name))),
        p.join(", ")
    );
    if let Some(w) = writes {
        t.push_str(&format!("writes = {w}\n"));
    }
    t
}

async fn put_as(app: &TestApp, caller: &str, subject: &str, fields: Value) -> Resp {
    app.call(Method::PUT, &format!("/v1/subjects/{subject}"), Some(caller), Some(json!({ "fields": fields }))).await
}

async fn rectify_as(app: &TestApp, caller: &str, subject: &str, fields: Value) -> Resp {
    app.call(Method::PATCH, &format!("/v1/subjects/{subject}/rectify"), Some(caller), Some(json!({ "fields": fields }))).await
}

/// Everything stored on a subject, as the export shows it.
async fn stored(app: &TestApp, subject: &str) -> Value {
    let r = app.get(&format!("/v1/subjects/{subject}/export"), "website").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["fields"].clone()
}

/// The audit entries of a subject.
async fn audit_of(app: &TestApp, subject: &str) -> Vec<Value> {
    app.get(&format!("/v1/audit?subject={subject}&limit=1000"), "auditor").await.body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_advertising_caller_cannot_plant_data_outside_what_it_reads() {
    let app = spawn_with(&extra_caller("svc-marketing-ro", "service", &["advertising"], Some("[]")), None).await;
    assert_eq!(app.put_fields("g-1", application("GRANTS")).await.status, StatusCode::CREATED);
    let before = stored(&app, "g-1").await;

    // advertising reads full_name, phone and email, so with no `writes` it writes only those:
    // an address (or the IIN, an income, a contract amount) is refused, whole.
    for fields in [
        json!({"identity.address": "Planted 1"}),
        json!({"identity.iin": "900101300017", "identity.email": "planted@example.kz"}),
        json!({"questionnaire.monthly_income": 1}),
        json!({"contract.amount": 1}),
        json!({"technical.ip": "198.51.100.1"}),
    ] {
        let r = put_as(&app, "svc-marketing", "g-1", fields.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{fields}: {:?}", r.body);
        assert_eq!(r.body["type"], "urn:qoima:problem:forbidden");
        assert!(r.problem_detail().contains("outside this caller's write grant"), "{:?}", r.body);
        assert!(!r.body.to_string().contains("planted") && !r.body.to_string().contains("Planted"));
    }
    // A caller granted no writes at all (`writes = []`) cannot plant a phone number.
    let r = put_as(&app, "svc-marketing-ro", "g-1", json!({"identity.phone": "+77000000666"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    // Nor can it create a subject.
    let r = put_as(&app, "svc-marketing", "g-new", json!({"identity.address": "Planted 2"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/subjects/g-new/export", "website").await.status, StatusCode::NOT_FOUND);

    // Nothing was stored: read back (all fields) as svc-all and the website.
    assert_eq!(stored(&app, "g-1").await, before);
    let r = app.read("g-1", "svc-all", "loan_issuance").await;
    assert_eq!(r.body["fields"]["identity.phone"], "+77011234567");
    assert_eq!(r.body["fields"]["identity.address"], "Almaty, Abay 1, GRANTS");

    // Every refusal is audited, with the field names and no value.
    let entries = audit_of(&app, "g-1").await;
    let denied: Vec<&Value> = entries.iter().filter(|e| e["action"] == "subject.put" && e["decision"] == "deny").collect();
    assert_eq!(denied.len(), 6, "{entries:#?}");
    let phone = denied.iter().find(|e| e["caller"] == "svc-marketing-ro").expect("the phone refusal is audited");
    assert_eq!(phone["fields"], json!(["identity.phone"]));
    assert!(phone["reason"].as_str().unwrap().contains("write grant"));
    let address = denied.iter().find(|e| e["fields"] == json!(["identity.address"])).expect("the address refusal is audited");
    assert_eq!(address["caller"], "svc-marketing");
    let all = serde_json::to_string(&entries).unwrap();
    assert!(!all.contains("Planted") && !all.contains("planted") && !all.contains("+77000000666"), "audit entries hold names only");

    // What it reads, it may write.
    let r = put_as(&app, "svc-marketing", "g-1", json!({"identity.email": "new@example.kz"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn the_website_rectifies_application_data_never_contract_terms() {
    let app = spawn_app().await;
    app.put_fields("g-2", application("RECT")).await;
    for fields in [json!({"contract.amount": 1}), json!({"contract.offer_id": "OF-666", "identity.phone": "+77019998877"})] {
        let r = rectify_as(&app, "website", "g-2", fields.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{fields}: {:?}", r.body);
        assert_eq!(r.body["type"], "urn:qoima:problem:forbidden");
    }
    let r = rectify_as(&app, "website", "g-2", json!({"technical.ip": "198.51.100.1"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "technical data is not the borrower's to rectify: {:?}", r.body);
    let s = stored(&app, "g-2").await;
    assert_eq!((s["contract.amount"].clone(), s["contract.offer_id"].clone()), (json!(150000), json!("OF-1")));
    assert_eq!(s["identity.phone"], "+77011234567", "a refused rectify stores none of its fields");
    let denied = audit_of(&app, "g-2").await.into_iter().filter(|e| e["action"] == "subject.rectify" && e["decision"] == "deny").count();
    assert_eq!(denied, 3);
    // Identity and questionnaire fields: allowed, as before.
    let r = rectify_as(&app, "website", "g-2", json!({"identity.phone": "+77019998877", "questionnaire.dependants": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn a_caller_with_writes_writes_what_it_lists_and_nothing_else() {
    let writes = r#"["identity.phone", "technical.*"]"#;
    let app = spawn_with(&extra_caller("svc-collector", "service", &["loan_issuance"], Some(writes)), None).await;
    app.put_fields("g-3", application("LISTS")).await;
    let r = put_as(&app, "svc-collector", "g-3", json!({"identity.phone": "+77015550000", "technical.ip": "198.51.100.9"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // loan_issuance reads the IIN and income, but `writes` replaces what the purposes give.
    for fields in [json!({"identity.iin": "900101300017"}), json!({"questionnaire.monthly_income": 1}), json!({"identity.email": "x@y.kz"})]
    {
        let r = put_as(&app, "svc-collector", "g-3", fields.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{fields}: {:?}", r.body);
    }
    let s = stored(&app, "g-3").await;
    assert_eq!((s["identity.phone"].clone(), s["technical.ip"].clone()), (json!("+77015550000"), json!("198.51.100.9")));
    assert_eq!((s["questionnaire.monthly_income"].clone(), s["identity.email"].clone()), (json!(350000), json!("aigerim@example.kz")));
}

#[tokio::test]
async fn the_fast_write_path_decides_as_the_blocking_one() {
    if rocksdb_only("the in-memory write path needs RocksDB's memory tier (PostgreSQL answers every read from the server)") {
        return;
    }
    let app = spawn_app().await;
    app.put_fields("g-4", application("FAST")).await;
    // Read it so it is in memory: the fast path would take the write.
    assert_eq!(app.read("g-4", "svc-all", "loan_issuance").await.status, StatusCode::OK);
    let caller = |name: &str| app.config.callers.entries().iter().find(|e| e.caller.name.as_str() == name).unwrap().caller.clone();
    let ctx =
        |name: &str| Ctx { caller: caller(name), request_id: RequestId::generate(), client_request_id: None, via: None, idempotency: None };
    let s = SubjectId::parse("g-4").unwrap();
    let planted = [("identity.address".to_string(), json!("Planted fast"))].into();
    let refused = app.vault.put_fields(Mode::NoWait, &ctx("svc-marketing"), &s, &planted);
    assert!(!refused.would_block(), "a refusal is answered where it stands");
    assert!(matches!(refused.durable().await, Err(VaultError::Denied(_))), "the fast path refuses what the policy refuses");
    let allowed = [("identity.email".to_string(), json!("fast@example.kz"))].into();
    let answer = app.vault.put_fields(Mode::NoWait, &ctx("svc-marketing"), &s, &allowed);
    assert!(!answer.would_block(), "an allowed write of a cached subject is taken at once");
    answer.durable().await.unwrap();
    let s = stored(&app, "g-4").await;
    assert_eq!((s["identity.address"].clone(), s["identity.email"].clone()), (json!("Almaty, Abay 1, FAST"), json!("fast@example.kz")));
}

// ---------------------------------------------------------------------------------------
// Subject assertions
// ---------------------------------------------------------------------------------------

pub(crate) const ISSUER: &str = "https://id.100tenge.example";
pub(crate) const AUDIENCE: &str = "qoima";

/// A signing key of the test identity provider: its JWK (public) and its signer.
pub(crate) struct IdpKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Ed25519, P-256 and RSA-2048 keys, made once per test binary (RSA takes a moment).
pub(crate) fn idp_keys() -> &'static [IdpKey] {
    static KEYS: OnceLock<Vec<IdpKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pub = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap().public_key().as_ref().to_vec();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec_pub = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng).unwrap().public_key().as_ref().to_vec();
        let rsa = {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let k = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
            let jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())});
            IdpKey { kid: "rsa-1", alg: Algorithm::RS256, encoding: EncodingKey::from_rsa_der(k.to_pkcs1_der().unwrap().as_bytes()), jwk }
        };
        vec![
            IdpKey {
                kid: "ed-1",
                alg: Algorithm::EdDSA,
                encoding: EncodingKey::from_ed_der(ed.as_ref()),
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(&ed_pub)}),
            },
            IdpKey {
                kid: "ec-1",
                alg: Algorithm::ES256,
                encoding: EncodingKey::from_ec_der(ec.as_ref()),
                jwk: json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "x": b64(&ec_pub[1..33]), "y": b64(&ec_pub[33..])}),
            },
            rsa,
        ]
    })
}

/// A compact JWS of `claims` signed with `key` (the header names `kid`).
pub(crate) fn sign(key: &IdpKey, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

/// A vault with the website caller `web-idp` configured for assertions (JWKS in `jwks_dir`),
/// on a hand-moved clock.
pub(crate) async fn asserted_app(jwks_dir: &Path) -> TestApp {
    let jwks = jwks_dir.join("jwks.json");
    let keys: Vec<Value> = idp_keys().iter().map(|k| k.jwk.clone()).collect();
    // An encryption key and a symmetric one are passed over, not accepted.
    let mut all = keys.clone();
    all.push(json!({"kty": "oct", "kid": "hmac-1", "k": b64(b"not a signing key of the provider")}));
    std::fs::write(&jwks, serde_json::to_vec(&json!({ "keys": all })).unwrap()).unwrap();
    let extra = format!(
        "[[callers]]\nname = \"web-idp\"\ntoken_sha256 = \"{}\"\nroles = [\"website\"]\n\
         subject_assertion = {{ jwks_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", max_age_secs = 300, subject_claim = \"sub\" }}\n",
        hex::encode(token_digest(&token("web-idp"))),
        jwks.display()
    );
    spawn_with(&extra, Some(ManualClock::new(now()))).await
}

fn unix(app: &TestApp) -> i64 {
    app.vault.now().unix_timestamp()
}

/// Claims valid now for `subject`, with a fresh `jti`.
fn claims(app: &TestApp, subject: &str) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = unix(app);
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": t, "exp": t + 120, "jti": format!("jti-{n}")})
}

/// `method path` as `web-idp`, with the assertion if one is given.
async fn as_web(app: &TestApp, method: Method, path: &str, assertion: Option<&str>, body: Option<Value>) -> Resp {
    let headers: Vec<_> = assertion.map(|a| ("Qoima-Subject-Assertion", a)).into_iter().collect();
    send_request(&app.client, method, &format!("{}{path}", app.addr), Some("web-idp"), &headers, body).await
}

fn assert_refused(r: &Resp, case: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{case}: {:?}", r.body);
    assert_eq!(r.body["type"], "urn:qoima:problem:subject-assertion", "{case}: {:?}", r.body);
}

#[tokio::test]
async fn the_website_acts_only_for_the_borrower_its_assertion_names() {
    let keys_dir = tempfile::tempdir().unwrap();
    let app = asserted_app(keys_dir.path()).await;
    app.put_fields("sa-1", application("ASSERT")).await;
    app.put_fields("sa-2", application("OTHER")).await;
    let export = "/v1/subjects/sa-1/export";
    let [ed, ec, rsa] = idp_keys() else { unreachable!() };
    let mut tokens = Vec::new();

    // Valid, under each of the three algorithms.
    for key in [ed, ec, rsa] {
        let t = sign(key, key.kid, &claims(&app, "sa-1"));
        let r = as_web(&app, Method::GET, export, Some(&t), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}: {:?}", key.alg, r.body);
        assert_eq!(r.body["subject"], "sa-1");
        tokens.push(t);
    }

    // Missing.
    assert_refused(&as_web(&app, Method::GET, export, None, None).await, "missing");
    // Every way of being wrong.
    let now = unix(&app);
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(&app, "sa-1");
        f(c.as_object_mut().unwrap());
        c
    };
    let cases: Vec<(&str, String)> = vec![
        ("another subject", sign(ed, "ed-1", &claims(&app, "sa-2"))),
        (
            "expired",
            sign(
                ed,
                "ed-1",
                &with(&|c| {
                    c.insert("iat".into(), json!(now - 400));
                    c.insert("exp".into(), json!(now - 120));
                }),
            ),
        ),
        ("nbf in the future", sign(ec, "ec-1", &with(&|c| drop(c.insert("nbf".into(), json!(now + 600)))))),
        ("exp beyond iat + max_age", sign(rsa, "rsa-1", &with(&|c| drop(c.insert("exp".into(), json!(now + 301)))))),
        (
            "iat in the future",
            sign(
                ed,
                "ed-1",
                &with(&|c| {
                    c.insert("iat".into(), json!(now + 600));
                    c.insert("exp".into(), json!(now + 700));
                }),
            ),
        ),
        ("wrong issuer", sign(ed, "ed-1", &with(&|c| drop(c.insert("iss".into(), json!("https://evil.example")))))),
        ("wrong audience", sign(ed, "ed-1", &with(&|c| drop(c.insert("aud".into(), json!("another-service")))))),
        ("no jti", sign(ed, "ed-1", &with(&|c| drop(c.remove("jti"))))),
        ("no exp", sign(ed, "ed-1", &with(&|c| drop(c.remove("exp"))))),
        ("unknown kid", sign(ed, "ed-9", &claims(&app, "sa-1"))),
        // Signed by a key the provider does not have, under a known kid: the signature does
        // not verify.
        ("bad signature", {
            let other = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
            let stranger =
                IdpKey { kid: "ed-1", alg: Algorithm::EdDSA, encoding: EncodingKey::from_ed_der(other.as_ref()), jwk: Value::Null };
            sign(&stranger, stranger.kid, &claims(&app, "sa-1"))
        }),
        ("key of another algorithm", sign(ed, "ec-1", &claims(&app, "sa-1"))),
        ("tampered", {
            let t = sign(ed, "ed-1", &claims(&app, "sa-1"));
            let (head, sig) = t.rsplit_once('.').unwrap();
            let forged = b64(serde_json::to_vec(&claims(&app, "sa-2")).unwrap().as_slice());
            format!("{}.{forged}.{sig}", head.split('.').next().unwrap())
        }),
        ("not a JWS", "not-a-token".into()),
        ("an HMAC token under the provider's symmetric kid", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("hmac-1".into());
            jsonwebtoken::encode(&h, &claims(&app, "sa-1"), &EncodingKey::from_secret(b"not a signing key of the provider")).unwrap()
        }),
    ];
    for (case, t) in &cases {
        assert_refused(&as_web(&app, Method::GET, export, Some(t), None).await, case);
        tokens.push(t.clone());
    }
    // The claim must name the subject the handler acts on, not a spelling of it: `sa%2D1` is
    // `sa-1` once decoded.
    let encoded = sign(ed, "ed-1", &claims(&app, "sa%2D1"));
    assert_refused(&as_web(&app, Method::GET, "/v1/subjects/sa%2D1/export", Some(&encoded), None).await, "percent-encoded subject");
    tokens.push(encoded);

    // Replayed: a valid assertion is good once.
    let once = sign(ed, "ed-1", &claims(&app, "sa-1"));
    assert_eq!(as_web(&app, Method::GET, export, Some(&once), None).await.status, StatusCode::OK);
    assert_refused(&as_web(&app, Method::GET, export, Some(&once), None).await, "replayed");
    // ... even after the clock moves, while it lives.
    app.advance(time::Duration::seconds(60));
    assert_refused(&as_web(&app, Method::GET, export, Some(&once), None).await, "replayed later");
    tokens.push(once);

    // Every refusal is audited, naming the rule, with no part of any token.
    let entries = audit_of(&app, "sa-1").await;
    let refused: Vec<&Value> = entries.iter().filter(|e| e["action"] == "subject_assertion.refused").collect();
    // One per refusal (missing, each case, two replays), all about the subject in the path.
    assert_eq!(refused.len(), 1 + cases.len() + 2, "{refused:#?}");
    assert!(refused.iter().all(|e| e["caller"] == "web-idp" && e["decision"] == "deny"));
    assert!(refused.iter().any(|e| e["reason"].as_str().unwrap().contains("already used")));
    assert!(refused.iter().any(|e| e["reason"].as_str().unwrap().contains("another subject")));
    let trail = app.get("/v1/audit?limit=1000", "auditor").await.body.to_string();
    for t in &tokens {
        for part in t.split('.').filter(|p| p.len() >= 16) {
            assert!(!trail.contains(part), "the audit trail holds part of an assertion");
        }
    }
    // Nor does any file of the vault (the replay cache keeps digests, in memory).
    let parts: Vec<&[u8]> = tokens.iter().flat_map(|t| t.split('.')).filter(|p| p.len() >= 16).map(str::as_bytes).collect();
    assert!(app.store_dirs().iter().all(|d| files_holding(d, &parts).is_empty()), "a file of the vault holds part of an assertion");
}

#[tokio::test]
async fn every_website_route_about_a_subject_needs_the_assertion() {
    let keys_dir = tempfile::tempdir().unwrap();
    let app = asserted_app(keys_dir.path()).await;
    app.put_fields("sa-3", application("ROUTES")).await;
    let routes: Vec<(Method, &str, Option<Value>, StatusCode)> = vec![
        (Method::GET, "/v1/subjects/sa-3/export", None, StatusCode::OK),
        (Method::PATCH, "/v1/subjects/sa-3/rectify", Some(json!({"fields": {"identity.phone": "+77017770000"}})), StatusCode::OK),
        (
            Method::POST,
            "/v1/subjects/sa-3/consents",
            Some(json!({"purpose": "advertising", "policy_version": "2019-01-29"})),
            StatusCode::CREATED,
        ),
        (Method::DELETE, "/v1/subjects/sa-3/consents/advertising", None, StatusCode::NO_CONTENT),
        (Method::POST, "/v1/subjects/sa-3/privacy-session", None, StatusCode::CREATED),
        (Method::POST, "/v1/subjects/sa-3/erasure", None, StatusCode::ACCEPTED),
        (Method::GET, "/v1/subjects/sa-3/erasure", None, StatusCode::OK),
    ];
    for (method, path, body, ok) in routes {
        let r = as_web(&app, method.clone(), path, None, body.clone()).await;
        assert_refused(&r, &format!("{method} {path} without"));
        let t = sign(&idp_keys()[0], "ed-1", &claims(&app, "sa-3"));
        let r = as_web(&app, method.clone(), path, Some(&t), body).await;
        assert_eq!(r.status, ok, "{method} {path} with: {:?}", r.body);
    }
    // Off unless configured: the plain website caller and the services need none.
    app.put_fields("sa-4", application("PLAIN")).await;
    assert_eq!(app.get("/v1/subjects/sa-4/export", "website").await.status, StatusCode::OK);
    assert_eq!(app.read("sa-4", "svc-all", "loan_issuance").await.status, StatusCode::OK);
}

#[test]
fn a_bad_subject_assertion_configuration_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = format!("data_dir = \"{}\"\n[root_key]\nfile = \"{}\"\n", d.join("data").display(), d.join("root.key").display());
    let caller = |role: &str, assertion: &str| {
        format!(
            "{base}[[callers]]\nname = \"w\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\nsubject_assertion = {{ {assertion} }}\n",
            hex::encode(token_digest("t"))
        )
    };
    let parse = |text: &str| qoima::config::Config::parse(text, "qoima.toml", d, &|_| None).map(|_| ()).map_err(|e| e.to_string());
    let jwks = d.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp_keys()[0].jwk.clone()]}).to_string()).unwrap();
    let ok = format!("jwks_file = \"{}\", issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\"", jwks.display());
    assert_eq!(parse(&caller("website", &ok)), Ok(()));
    let hs = d.join("hs.json");
    std::fs::write(&hs, json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}).to_string()).unwrap();
    for (role, assertion, needle) in [
        ("service", ok.clone(), "for website callers"),
        ("website", ok.replace("jwks.json", "missing.json"), "cannot read"),
        ("website", ok.replace("jwks.json", "hs.json"), "no usable key"),
        ("website", format!("{ok}, max_age_secs = 86400"), "max_age_secs"),
        ("website", format!("{ok}, colour = 1"), "colour"),
    ] {
        let e = parse(&caller(role, &assertion)).unwrap_err();
        assert!(e.contains(needle), "{assertion}: {e}");
    }
}

/// `qoima callers add NAME --role website --subject-assertion-*` turns assertions on in one
/// command: the entry gets its `subject_assertion` table and the configuration checks. Half the
/// options, another role, or a JWKS file without a usable key are refused in one line, with
/// nothing written.
#[test]
fn callers_add_turns_subject_assertions_on_for_a_website_caller() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("qoima.toml");
    std::fs::write(&cfg, config_text(d.path(), "")).unwrap();
    let jwks = d.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp_keys()[0].jwk.clone()]}).to_string()).unwrap();
    let hs = d.path().join("hs.json");
    std::fs::write(&hs, json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}).to_string()).unwrap();
    let (c, j, h) = (cfg.to_str().unwrap(), jwks.to_str().unwrap(), hs.to_str().unwrap());
    let add = |name: &str, role: &str, flags: &[&str]| {
        let mut args = vec!["callers", "add", name, "--role", role, "--config", c];
        args.extend_from_slice(flags);
        cli(&args)
    };
    fn all(jwks: &str) -> Vec<&str> {
        vec!["--subject-assertion-jwks", jwks, "--subject-assertion-issuer", ISSUER, "--subject-assertion-audience", AUDIENCE]
    }
    let before = std::fs::read_to_string(&cfg).unwrap();
    let missing = j.replace("jwks.json", "missing.json");
    for (name, role, flags, needle) in [
        ("w-half", "website", all(j)[..4].to_vec(), "all three or none"),
        ("w-age", "website", vec!["--subject-assertion-max-age", "60"], "all three or none"),
        ("w-role", "service", all(j), "role website"),
        ("w-hs", "website", all(h), "no usable key"),
        ("w-missing", "website", all(&missing), "cannot read"),
        ("w-long", "website", [all(j), vec!["--subject-assertion-max-age", "86400"]].concat(), "max_age_secs must be between 1 and 3600"),
    ] {
        let (ok, out) = add(name, role, &flags);
        assert!(!ok && out.trim().lines().count() == 1 && out.contains(needle), "{name}: {out}");
    }
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before, "a refused add writes nothing");

    let mut flags = all(j);
    flags.extend(["--subject-assertion-max-age", "120"]);
    let (ok, out) = add("web-asserted", "website", &flags);
    assert!(ok && out.contains("token for web-asserted"), "{out}");
    let (ok, out) = cli(&["config", "check", c]);
    assert!(ok, "{out}");
    let config = qoima::config::Config::load(&cfg, &|_| None).unwrap();
    let entry = config.callers.entries().iter().find(|e| e.caller.name.as_str() == "web-asserted").expect("the entry");
    assert!(entry.subject_assertion.is_some());
    let text: toml::Value = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    let table = text["callers"].as_array().unwrap().iter().find(|e| e["name"].as_str() == Some("web-asserted")).unwrap();
    let expected: toml::Value = format!(
        "jwks_file = {}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nmax_age_secs = 120\nsubject_claim = \"sub\"\n",
        toml::Value::String(j.to_string())
    )
    .parse()
    .unwrap();
    assert_eq!(table["subject_assertion"], expected);
}

/// The privacy centre's rectify goes through the same grant: a website caller whose `writes`
/// names only the phone gets "not editable" back for anything else, with nothing stored.
#[tokio::test]
async fn the_privacy_centre_rectifies_within_the_website_grant() {
    let app = spawn_with(&extra_caller("web-narrow", "website", &[], Some(r#"["identity.phone"]"#)), None).await;
    app.put_fields("g-5", application("CENTRE")).await;
    let r = app.call(Method::POST, "/v1/subjects/g-5/privacy-session", Some("web-narrow"), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let url = r.body["url"].as_str().unwrap().to_owned();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let html = browser.get(&url).send().await.unwrap().text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF field") + "name=\"csrf\" value=\"".len();
    let csrf = html[at..].split('"').next().unwrap().to_owned();
    let rectify = |field: &'static str, value: &'static str| {
        let (browser, url, csrf) = (browser.clone(), format!("{url}/rectify"), csrf.clone());
        async move {
            let res = browser.post(url).form(&[("csrf", csrf.as_str()), ("field", field), ("value", value)]).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            res.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    assert!(rectify("questionnaire.monthly_income", "1").await.contains("notice=not-editable"));
    assert!(rectify("identity.phone", "+77016660000").await.contains("notice=rectified"));
    let s = stored(&app, "g-5").await;
    assert_eq!((s["questionnaire.monthly_income"].clone(), s["identity.phone"].clone()), (json!(350000), json!("+77016660000")));
}
