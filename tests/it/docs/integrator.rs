//! The integrator guide, run as printed against a TLS vault, and its curl calls against docs/api.md.

use super::*;

pub(super) fn api_endpoints(api: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in api.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split(" | ").next().unwrap_or_default();
        for span in first_cell.split('`').skip(1).step_by(2) {
            if let Some((method, path)) = span.split_once(' ') {
                if ["GET", "PUT", "POST", "PATCH", "DELETE"].contains(&method) && path.starts_with('/') {
                    let path = path.split(['?', '[']).next().unwrap_or_default();
                    out.push((method.to_string(), path.to_string()));
                }
            }
        }
    }
    out
}

/// The (method, path) of every curl call to `$QOIMA_URL` in `blocks`.
pub(super) fn curl_calls(blocks: &[Block]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for step in blocks.iter().flat_map(|b| &b.steps) {
        for call in step.cmd.split("curl ").skip(1) {
            let Some(at) = call.find("$QOIMA_URL") else { continue };
            let path: String = call[at + "$QOIMA_URL".len()..].chars().take_while(|c| !"'\"? \n".contains(*c)).collect();
            let words: Vec<&str> = call.split_whitespace().collect();
            let method = words.iter().position(|w| *w == "-X").and_then(|i| words.get(i + 1)).copied().unwrap_or("GET");
            out.push((method.to_string(), path));
        }
    }
    out
}

/// Whether `path` fits `template` (`{x}` is any one segment).
pub(super) fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// A CA for the lender, a server certificate for 127.0.0.1 and a client certificate for the
/// origination service, written under `dir` (server) and `cwd` (what an integrator holds).
/// Returns the client certificate's SHA-256 (hex).
pub(super) fn lender_pki(dir: &Path, cwd: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "lender test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(&["127.0.0.1"]);
    let (client, client_key) = leaf(&["origination"]);
    std::fs::write(dir.join("server.pem"), server.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("clients-ca.pem"), ca.pem()).unwrap();
    std::fs::write(cwd.join("lender-ca.pem"), ca.pem()).unwrap();
    std::fs::write(cwd.join("origination.pem"), client.pem()).unwrap();
    std::fs::write(cwd.join("origination.key"), client_key.serialize_pem()).unwrap();
    hex::encode(qoima::tls::ClientCert::of(client.der()).0)
}

/// A second test vault serving HTTPS, which knows the origination certificate as a caller.
pub(super) async fn spawn_tls_app(cwd: &Path) -> (TestApp, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).expect("root key");
    let fingerprint = lender_pki(dir.path(), cwd);
    let d = dir.path();
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("clients-ca.pem").display()
    );
    let mut text = config_text(d, &tls);
    text.push_str(&format!(
        "\n[[callers]]\nname = \"origination\"\nclient_cert_sha256 = \"{fingerprint}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\n"
    ));
    std::fs::write(d.join("qoima.toml"), text).unwrap();
    let config = qoima::config::Config::load(&d.join("qoima.toml"), &|_| None).expect("TLS test config parses");
    (start(dir, config, None).await, fingerprint)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_integrator_guide_works_as_printed() {
    let doc = read_doc("docs/integrator-guide.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    // Every endpoint of the API reference has an example here.
    let calls = curl_calls(&blocks);
    for (method, template) in api_endpoints(&read_doc("docs/api.md")) {
        assert!(
            calls.iter().any(|(m, p)| *m == method && fits(&template, p)),
            "docs/api.md lists {method} {template}, which no example in docs/integrator-guide.md calls"
        );
    }
    let app = spawn_app().await;
    let mut s = Session::new().with_app(&app);
    let (tls_app, fingerprint) = spawn_tls_app(s.home.path()).await;
    s.replace.push(("https://qoima.internal:8750".to_string(), tls_app.addr.clone()));
    for b in &blocks {
        let failing = b.name == "integrator-unavailable";
        app.faults.set(failing);
        s.run_block(b).await;
        app.faults.set(false);
    }
    assert!(s.printed["integrator-tls"].contains(&fingerprint), "sha256sum printed the fingerprint the vault knows");
    assert!(blocks.len() >= 15, "{} blocks", blocks.len());
}
