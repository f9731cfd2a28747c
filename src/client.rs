//! A small typed client for the HTTP API, for Rust lending services (and this project's
//! integration tests). Request and response types are the server's own wire types, so the two
//! cannot drift apart; errors are the problem documents the server sends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qoima::client::ClientError> {
//! use serde_json::json;
//! let vault = qoima::client::Client::new("http://127.0.0.1:8750", "qv1_…");
//! vault.put_fields("borrower-0001", [("identity.full_name", json!("Aigerim"))]).await?;
//! let read = vault.read("borrower-0001", "loan_issuance", None).await?;
//! println!("{:?}", read.fields);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use crate::api::error::Problem;
pub use crate::api::wire::*;
pub use crate::policy::DisclosureBasis;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The vault answered with a problem document.
    #[error("{} {}: {}", .0.status, .0.kind, .0.detail)]
    Problem(Box<ProblemOwned>),
    /// The request did not get an answer (connection, TLS, timeout).
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer was not what the API documents.
    #[error("unexpected answer ({status}): {message}")]
    Unexpected { status: u16, message: String },
}

/// A problem document as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProblemOwned {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default)]
    pub receipt: Option<String>,
    /// Seconds to wait before retrying, from `Retry-After` (on 429).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ClientError {
    /// The HTTP status of a problem answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem(p) => Some(p.status),
            _ => None,
        }
    }

    /// The problem type's slug (`basis-missing`, `erased`, …).
    pub fn slug(&self) -> Option<&str> {
        match self {
            ClientError::Problem(p) => p.kind.strip_prefix("urn:qoima:problem:"),
            _ => None,
        }
    }

    /// Whether retrying the same call later is safe and may succeed: 503 and 429 mean nothing
    /// was done (after a 429, wait [`ClientError::retry_after`]).
    pub fn retryable(&self) -> bool {
        matches!(self, ClientError::Problem(p) if p.status == 503 || p.status == 429)
            || matches!(self, ClientError::Transport(e) if e.is_timeout() || e.is_connect())
    }

    /// How long the vault asked to wait before the next call (429 `rate-limited`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Problem(p) => p.retry_after.map(std::time::Duration::from_secs),
            _ => None,
        }
    }
}

/// A client for one caller (one bearer token).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base_url: &str, token: &str) -> Self {
        Self::with_http(reqwest::Client::new(), base_url, token)
    }

    /// With a configured `reqwest::Client` (TLS roots, client certificate, timeouts).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self { http, base: base_url.trim_end_matches('/').to_owned(), token: token.to_owned() }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await?;
        let status = res.status();
        let retry_after = res.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = res.bytes().await?;
        if status.is_success() {
            let bytes = if status == StatusCode::NO_CONTENT { &b"null"[..] } else { &bytes[..] };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Unexpected { status: status.as_u16(), message: e.to_string() });
        }
        match serde_json::from_slice::<ProblemOwned>(&bytes) {
            Ok(p) => Err(ClientError::Problem(Box::new(ProblemOwned { retry_after, ..p }))),
            Err(_) => Err(ClientError::Unexpected {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    /// Stores or merges fields (role service).
    pub async fn put_fields<K: Into<String>>(
        &self,
        subject: &str,
        fields: impl IntoIterator<Item = (K, Value)>,
    ) -> Result<WriteResponse, ClientError> {
        let body = FieldsBody { fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect() };
        self.call(Method::PUT, &format!("/v1/subjects/{subject}"), Some(&body)).await
    }

    /// Reads for a purpose, optionally narrowed to some fields (role service).
    pub async fn read(&self, subject: &str, purpose: &str, fields: Option<&[&str]>) -> Result<FieldsResponse, ClientError> {
        let mut path = format!("/v1/subjects/{subject}?purpose={purpose}");
        if let Some(f) = fields {
            path.push_str("&fields=");
            path.push_str(&f.join(","));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Corrects fields (role website).
    pub async fn rectify(&self, subject: &str, fields: BTreeMap<String, Value>) -> Result<WriteResponse, ClientError> {
        self.call(Method::PATCH, &format!("/v1/subjects/{subject}/rectify"), Some(&FieldsBody { fields })).await
    }

    pub async fn open_contract(&self, subject: &str, contract: &str) -> Result<ContractResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/contracts"), Some(&ContractBody { contract: contract.into() })).await
    }

    /// `status`: `settled` or `breached`.
    pub async fn set_contract(&self, subject: &str, contract: &str, status: &str) -> Result<ContractResponse, ClientError> {
        let body = ContractUpdateBody { status: status.into() };
        self.call(Method::PATCH, &format!("/v1/subjects/{subject}/contracts/{contract}"), Some(&body)).await
    }

    pub async fn give_consent(&self, subject: &str, consent: &ConsentBody) -> Result<ConsentResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/consents"), Some(consent)).await
    }

    pub async fn withdraw_consent(&self, subject: &str, purpose: &str) -> Result<(), ClientError> {
        self.call::<Value>(Method::DELETE, &format!("/v1/subjects/{subject}/consents/{purpose}"), None::<&()>).await.map(|_| ())
    }

    pub async fn disclose(&self, subject: &str, disclosure: &DisclosureBody) -> Result<DisclosureResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/disclosures"), Some(disclosure)).await
    }

    /// Everything held on the subject (role website).
    pub async fn export(&self, subject: &str) -> Result<ExportResponse, ClientError> {
        self.call(Method::GET, &format!("/v1/subjects/{subject}/export"), None::<&()>).await
    }

    /// Requests erasure; idempotent (roles website, service).
    pub async fn request_erasure(&self, subject: &str) -> Result<ErasureResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/erasure"), None::<&()>).await
    }

    pub async fn erasure_status(&self, subject: &str) -> Result<ErasureResponse, ClientError> {
        self.call(Method::GET, &format!("/v1/subjects/{subject}/erasure"), None::<&()>).await
    }

    pub async fn rekey(&self, subject: &str) -> Result<RekeyResponse, ClientError> {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/rekey"), None::<&()>).await
    }

    pub async fn keys(&self) -> Result<KeysResponse, ClientError> {
        self.call(Method::GET, "/v1/keys", None::<&()>).await
    }

    pub async fn rotate(&self) -> Result<GenerationWire, ClientError> {
        self.call(Method::POST, "/v1/keys/rotate", None::<&()>).await
    }

    pub async fn start_rewrap(&self) -> Result<RewrapResponse, ClientError> {
        self.call(Method::POST, "/v1/keys/rewrap", None::<&()>).await
    }

    pub async fn rewrap_progress(&self) -> Result<RewrapResponse, ClientError> {
        self.call(Method::GET, "/v1/keys/rewrap", None::<&()>).await
    }

    pub async fn destroy_generation(&self, generation: u32) -> Result<(), ClientError> {
        self.call::<Value>(Method::DELETE, &format!("/v1/keys/{generation}"), None::<&()>).await.map(|_| ())
    }

    /// Audit entries (roles auditor, security).
    pub async fn audit(&self, subject: Option<&str>, after: u64, limit: usize) -> Result<AuditResponse, ClientError> {
        let mut path = format!("/v1/audit?after={after}&limit={limit}");
        if let Some(s) = subject {
            path.push_str(&format!("&subject={s}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn audit_verify(&self) -> Result<VerifyResponse, ClientError> {
        self.call(Method::GET, "/v1/audit/verify", None::<&()>).await
    }
}
