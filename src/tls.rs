//! HTTPS for the listener (rustls, ring provider), with optional client certificates: a
//! client presenting a certificate signed by the configured CA, whose SHA-256 fingerprint a
//! caller lists as `client_cert_sha256`, is that caller — an alternative to bearer tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// HTTPS for the listener (`[tls]` in the configuration), paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain of the listener.
    pub cert_file: PathBuf,
    /// PEM private key of the listener (refused unless mode 0600/0400).
    pub key_file: PathBuf,
    /// PEM CA certificates: clients may present a certificate signed by one of them.
    pub client_ca_file: Option<PathBuf>,
}

/// The SHA-256 of a client certificate's DER bytes, as the request carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCert(pub [u8; 32]);

impl ClientCert {
    pub fn of(der: &[u8]) -> Self {
        Self(digest::digest(&digest::SHA256, der).as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2 via ALPN).
pub fn server_config(t: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(&t.key_file).map_err(|e| format!("cannot read {}: {e}", t.key_file.display()))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!("TLS key {} has mode {mode:o}; it must not be readable by group or others", t.key_file.display()));
        }
    }
    let key_bytes = zeroize::Zeroizing::new(read_pem(&t.key_file)?);
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{} holds no PEM private key", t.key_file.display()),
        e => format!("{}: {e}", t.key_file.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            // Optional: callers without a certificate still authenticate with a bearer token.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&t.cert_file)?, key).map_err(|e| format!("TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
