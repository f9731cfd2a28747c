//! A small typed client for the HTTP API, for Rust lending services (and this project's
//! integration tests). Request and response types are the server's own wire types, so the two
//! cannot drift apart; errors are the problem documents the server sends.
//!
//! Every mutating call sends an `Idempotency-Key` made for that call, and every call is
//! retried after a 408, a 503 or a lost connection (bounded attempts, exponential backoff with
//! jitter) with the same key and the same `X-Request-Id`: the vault answers a retry of a call
//! that went through with the first answer, so a retry never does the work twice
//! (docs/integrator-guide.md, "Retries and idempotency"). A website caller that must send
//! subject assertions gives the client a source of them ([`Client::with_subject_assertions`]).
//! [`Client::lookup`] finds a returning borrower by an indexed field such as the IIN, and a
//! put that would give a unique field's value to a second subject fails with
//! [`ClientError::UniqueConflict`] (docs/integrator-guide.md, "Dedupe at application").
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
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use crate::api::error::Problem;
pub use crate::api::wire::*;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The vault answered with a problem document.
    #[error("{} {}: {}", .0.status, .0.kind, .0.detail)]
    Problem(Box<ProblemOwned>),
    /// 409 `conflict` from [`Client::put_fields`] or [`Client::rectify`]: a value of a unique
    /// indexed field (`identity.iin` by default) is held by another live subject, so nothing was
    /// stored. `field` is the field the vault's `detail` names, among those sent (`None` if it
    /// names none of them); the other subject is never named: [`Client::lookup`] finds it.
    #[error("{} {}: {}", .problem.status, .problem.kind, .problem.detail)]
    UniqueConflict { field: Option<String>, problem: Box<ProblemOwned> },
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
    /// Seconds to wait before retrying, from `Retry-After` (on 429, and on a 503 of a lookup
    /// while the index is being built).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ClientError {
    /// The HTTP status of a problem answer.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// The problem document the vault answered with, if it did.
    pub fn problem(&self) -> Option<&ProblemOwned> {
        match self {
            ClientError::Problem(p) | ClientError::UniqueConflict { problem: p, .. } => Some(p),
            _ => None,
        }
    }

    /// The problem type's slug (`basis-missing`, `erased`, …).
    pub fn slug(&self) -> Option<&str> {
        self.problem().and_then(|p| p.kind.strip_prefix("urn:qoima:problem:"))
    }

    /// Whether retrying the same call later is safe and may succeed: 503 and 429 mean nothing
    /// was done (after a 429, wait [`ClientError::retry_after`]). The client has retried 503s
    /// itself before returning one (see [`Retry`]).
    pub fn retryable(&self) -> bool {
        matches!(self, ClientError::Problem(p) if p.status == 503 || p.status == 429)
            || matches!(self, ClientError::Transport(e) if e.is_timeout() || e.is_connect())
    }

    /// What the client retries by itself, with the call's idempotency key: 503 (nothing was
    /// done), 408 and a lost answer (perhaps done: the vault then answers the retry with the
    /// first answer), and 409 `idempotency-key-in-flight` (the first attempt still running).
    fn retried(&self) -> bool {
        match self {
            ClientError::Problem(p) => matches!(p.status, 408 | 503) || self.slug() == Some("idempotency-key-in-flight"),
            ClientError::Transport(e) => e.is_timeout() || e.is_connect() || e.is_request(),
            ClientError::Unexpected { status, .. } => matches!(status, 408 | 503),
            ClientError::UniqueConflict { .. } => false,
        }
    }

    /// How long the vault asked to wait before the next call (429 `rate-limited`; 503 of a
    /// lookup while the index is being built).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.problem()?.retry_after.map(std::time::Duration::from_secs)
    }
}

/// How the client retries a call that got a 408, a 503 or no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (1: never retry).
    pub attempts: u32,
    /// The backoff before the first retry; it doubles for each further one, up to `max_delay`.
    /// Each wait is drawn at random between zero and that bound ("full jitter"), so callers
    /// refused together do not come back together.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 4, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) }
    }
}

impl Retry {
    /// The wait before retry `n` (1 for the first): random in `[0, min(max, base · 2^(n-1))]`.
    fn delay(&self, n: u32) -> Duration {
        use ring::rand::SecureRandom;
        let bound = self.base_delay.saturating_mul(1 << (n - 1).min(16)).min(self.max_delay);
        let mut b = [0u8; 8];
        // Without the OS random source the wait is the bound itself.
        let r = ring::rand::SystemRandom::new().fill(&mut b).map(|_| u64::from_le_bytes(b) as f64 / u64::MAX as f64).unwrap_or(1.0);
        bound.mul_f64(r)
    }
}

/// Gives the subject assertion to send with a request about a subject (its id).
type Assertions = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A client for one caller (one bearer token).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    retry: Retry,
    assertions: Option<Assertions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("base", &self.base).field("retry", &self.retry).finish_non_exhaustive()
    }
}

/// The header a subject assertion travels in.
pub const SUBJECT_ASSERTION_HEADER: &str = "qoima-subject-assertion";
/// The header of a mutating call's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

impl Client {
    pub fn new(base_url: &str, token: &str) -> Self {
        Self::with_http(reqwest::Client::new(), base_url, token)
    }

    /// With a configured `reqwest::Client` (TLS roots, client certificate, timeouts).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self { http, base: base_url.trim_end_matches('/').to_owned(), token: token.to_owned(), retry: Retry::default(), assertions: None }
    }

    /// With another retry policy (`Retry { attempts: 1, .. }` never retries).
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = Retry { attempts: retry.attempts.max(1), ..retry };
        self
    }

    /// Sends a subject assertion (`Qoima-Subject-Assertion`, docs/integrator-guide.md) with every
    /// request about a subject: `assertion(subject_id)` is asked once per attempt, and gives the
    /// compact JWS the identity provider signed for the signed-in borrower, or `None` to send
    /// none. Asked again for a retry: the vault accepts each assertion (`jti`) once, so a retry
    /// needs a fresh one.
    pub fn with_subject_assertions(mut self, assertion: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.assertions = Some(Arc::new(assertion));
        self
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("wire types serialise"));
        // One key and one request id per logical call, the same for each of its attempts.
        let key = changes(&method, path).then(|| format!("rs-{}", crate::domain::random_hex::<16>()));
        let request_id = format!("rs-{}", crate::domain::random_hex::<8>());
        let mut attempt = 1;
        loop {
            match self.attempt(&method, path, body.as_deref(), key.as_deref(), &request_id).await {
                Err(e) if e.retried() && attempt < self.retry.attempts => {
                    let wait = self.retry.delay(attempt);
                    // The vault's own wait (an in-flight key's Retry-After), if longer.
                    tokio::time::sleep(e.retry_after().map_or(wait, |w| w.max(wait))).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        key: Option<&str>,
        request_id: &str,
    ) -> Result<T, ClientError> {
        let mut req =
            self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token).header("x-request-id", request_id);
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_vec());
        }
        if let Some(k) = key {
            req = req.header(IDEMPOTENCY_KEY_HEADER, k);
        }
        let subject = path.strip_prefix("/v1/subjects/").map(|rest| rest.split(['/', '?']).next().unwrap_or_default());
        if let (Some(assertions), Some(subject)) = (&self.assertions, subject) {
            if let Some(jws) = assertions(subject) {
                req = req.header(SUBJECT_ASSERTION_HEADER, jws);
            }
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
        self.call(Method::PUT, &format!("/v1/subjects/{subject}"), Some(&body)).await.map_err(|e| unique_conflict(e, &body.fields))
    }

    /// Stores or merges up to 1,000 subjects in one request (role service, `POST
    /// /v1/subjects:batch`): one result per subject, in order; a refused subject is a result
    /// with its status and problem, not an error. With `idempotency_key`, every attempt (and a
    /// later call with the same key and subjects, e.g. a resumed import) sends that key, so a
    /// batch whose answer was lost is answered again, not applied twice; without one, the
    /// call makes its own, as every mutating call does.
    pub async fn put_batch(&self, subjects: &[BatchItem], idempotency_key: Option<&str>) -> Result<BatchResponse, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            subjects: &'a [BatchItem],
        }
        let body = serde_json::to_vec(&Body { subjects }).expect("wire types serialise");
        let key = idempotency_key.map_or_else(|| format!("rs-{}", crate::domain::random_hex::<16>()), str::to_owned);
        let request_id = format!("rs-{}", crate::domain::random_hex::<8>());
        let mut attempt = 1;
        loop {
            match self.attempt(&Method::POST, "/v1/subjects:batch", Some(&body), Some(&key), &request_id).await {
                Err(e) if e.retried() && attempt < self.retry.attempts => {
                    let wait = self.retry.delay(attempt);
                    tokio::time::sleep(e.retry_after().map_or(wait, |w| w.max(wait))).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
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
        let body = FieldsBody { fields };
        self.call(Method::PATCH, &format!("/v1/subjects/{subject}/rectify"), Some(&body))
            .await
            .map_err(|e| unique_conflict(e, &body.fields))
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

// --- Lookup (issue #25): finding a subject by an indexed field, and the uniqueness refusal ---

/// Where a lookup is posted: the value travels in the body, never in a URL.
const LOOKUP_PATH: &str = "/v1/lookup";

/// `POST /v1/lookup`'s body, as the server's [`LookupBody`] reads it (which is not
/// `Serialize`: the server only ever reads one). The value is personal data: it is serialised
/// into the request body and nowhere else (no URL, no log line, no error message).
#[derive(Serialize)]
struct LookupQuery<'a> {
    field: &'a str,
    value: &'a str,
    purpose: &'a str,
}

impl Client {
    /// The live subjects whose indexed `field` (e.g. `identity.iin`) holds `value`, looked up
    /// for `purpose` (role service; the caller must be granted the purpose and the purpose must
    /// read the field in full), in id order. Only subjects for whom the purpose's legal basis
    /// holds now are named, and erased subjects never match; an empty list means none. The vault
    /// normalises the value as its schema does (`+7 701 123 45 67` finds `+77011234567`). A field that is not indexed, or a value that fails its
    /// field's check, is 400; while the vault is still building the index it answers 503 with
    /// `Retry-After`, which this call waits out and retries like any 503 (see [`Retry`]).
    /// Audited with the field, the purpose and the number of matches, never the value; counts
    /// against the caller's `max_reads_per_minute`.
    pub async fn lookup(&self, field: &str, value: &str, purpose: &str) -> Result<Vec<String>, ClientError> {
        let query = LookupQuery { field, value, purpose };
        let answer: LookupResponse = self.call(Method::POST, LOOKUP_PATH, Some(&query)).await?;
        Ok(answer.subjects)
    }
}

/// Whether a call changes something, and so carries an idempotency key: everything but a GET
/// and a lookup (a read, posted only so that its value stays out of the URL; retrying one
/// without a key is as safe as retrying a GET).
fn changes(method: &Method, path: &str) -> bool {
    *method != Method::GET && path != LOOKUP_PATH
}

/// A put's or rectify's 409 `conflict` as [`ClientError::UniqueConflict`], naming the field
/// (among `sent`) that the vault's detail names. Other errors pass through unchanged.
fn unique_conflict(e: ClientError, sent: &BTreeMap<String, Value>) -> ClientError {
    match e {
        ClientError::Problem(problem) if problem.status == 409 && problem.kind == "urn:qoima:problem:conflict" => {
            // The longest name that matches, so `identity.email` is not taken for a prefix of it.
            let field = sent.keys().filter(|f| problem.detail.contains(f.as_str())).max_by_key(|f| f.len()).cloned();
            ClientError::UniqueConflict { field, problem }
        }
        other => other,
    }
}
