//! Issue #8: the listener serves HTTPS from configured certificate and key files, and a
//! client certificate listed by a caller authenticates as that caller instead of a token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

struct Pki {
    server_ca_pem: String,
    client_pem: String,
    client_key_pem: String,
    client_der_sha256: String,
    stranger_pem: String,
    stranger_key_pem: String,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let k = KeyPair::generate().unwrap();
    (p.self_signed(&k).unwrap(), k)
}

fn leaf(name: &str, issuer: &rcgen::Certificate, issuer_key: &KeyPair) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    let k = KeyPair::generate().unwrap();
    (p.signed_by(&k, issuer, issuer_key).unwrap(), k)
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn pki(dir: &Path) -> Pki {
    let (server_ca, server_ca_key) = ca("qoima test server CA");
    let (server, server_key) = leaf("localhost", &server_ca, &server_ca_key);
    let (client_ca, client_ca_key) = ca("lender clients CA");
    let (client, client_key) = leaf("origination-service", &client_ca, &client_ca_key);
    let (other_ca, other_ca_key) = ca("somebody else's CA");
    let (stranger, stranger_key) = leaf("stranger", &other_ca, &other_ca_key);
    std::fs::write(dir.join("server.pem"), server.pem() + &server_ca.pem()).unwrap();
    write_private(&dir.join("server.key"), &server_key.serialize_pem());
    std::fs::write(dir.join("clients-ca.pem"), client_ca.pem()).unwrap();
    Pki {
        server_ca_pem: server_ca.pem(),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        client_der_sha256: hex::encode(qoima::tls::ClientCert::of(client.der()).0),
        stranger_pem: stranger.pem(),
        stranger_key_pem: stranger_key.serialize_pem(),
    }
}

fn tls_config(dir: &Path, pki: &Pki) -> String {
    let mut text = config_text(
        dir,
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.join("clients-ca.pem").display()
        ),
    );
    text.push_str(&format!(
        "\n[[callers]]\nname = \"cert-origination\"\nclient_cert_sha256 = \"{}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\n",
        pki.client_der_sha256
    ));
    text
}

fn client(pki: &Pki, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.server_ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_tokens_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let pki = pki(dir.path());
    std::fs::write(dir.path().join("qoima.toml"), tls_config(dir.path(), &pki)).unwrap();
    let config = qoima::config::Config::load(&dir.path().join("qoima.toml"), &|_| None).unwrap();
    let app = start(dir, config, None).await;
    assert!(app.addr.starts_with("https://"), "{}", app.addr);
    let base = app.addr.replace("127.0.0.1", "localhost");

    // A bearer token over TLS.
    let plain = client(&pki, None);
    let r = plain
        .put(format!("{base}/v1/subjects/tls-1"))
        .bearer_auth(token("svc-all"))
        .json(&json!({"fields": {"identity.full_name": "TLS"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // No token, no certificate: 401.
    assert_eq!(
        plain.get(format!("{base}/v1/subjects/tls-1?purpose=loan_issuance")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // A client certificate from the lender's CA, listed by a caller: that caller, no token.
    let with_cert = client(&pki, Some((&pki.client_pem, &pki.client_key_pem)));
    let r = with_cert.get(format!("{base}/v1/subjects/tls-1?purpose=loan_issuance")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let audit: serde_json::Value =
        plain.get(format!("{base}/v1/audit?subject=tls-1")).bearer_auth(token("auditor")).send().await.unwrap().json().await.unwrap();
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["caller"] == "cert-origination"), "{audit}");
    // Its grants are its own: not granted advertising.
    let r = with_cert.get(format!("{base}/v1/subjects/tls-1?purpose=advertising")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A certificate from another CA does not get through the handshake.
    let stranger = client(&pki, Some((&pki.stranger_pem, &pki.stranger_key_pem)));
    assert!(stranger.get(format!("{base}/healthz")).send().await.is_err());
    // Plain HTTP to the TLS listener gets nothing.
    let http = app.addr.replace("https://", "http://");
    assert!(reqwest::Client::new().get(format!("{http}/healthz")).send().await.map(|r| !r.status().is_success()).unwrap_or(true));
}

#[tokio::test]
async fn a_readable_tls_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let pki = pki(dir.path());
    std::fs::set_permissions(dir.path().join("server.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(dir.path().join("qoima.toml"), tls_config(dir.path(), &pki)).unwrap();
    let config = qoima::config::Config::load(&dir.path().join("qoima.toml"), &|_| None).unwrap();
    let err = qoima::server::Application::build(config, Default::default()).await.err().expect("refused");
    assert!(err.to_string().contains("must not be readable by group or others"), "{err}");
}
