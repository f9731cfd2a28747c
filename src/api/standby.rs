//! The API of a standby node (docs/scale-out.md): while another node holds the shared store's
//! active lease, this one forwards every request to it, as received, and its answer back; or,
//! when the active node gave no address, or cannot be reached, answers 503 `standby` with
//! `Retry-After`. `/healthz` answers (the process is alive), `/readyz` does not (a load
//! balancer sends to the active node).
//!
//! **Invariant:** a standby holds no vault: it decrypts, decides and records nothing; a
//! forwarded request is decided and audited by the active node alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use crate::vault::ActiveNode;

/// Marks a forwarded request, so a standby never forwards one again (two standbys each
/// believing the other active would otherwise bounce it between them).
const FORWARDED: HeaderName = HeaderName::from_static("qoima-forwarded");

/// Who is active, as this standby last found out.
#[derive(Clone)]
pub struct StandbyState {
    active: Arc<Mutex<ActiveNode>>,
    http: reqwest::Client,
    max_body_bytes: usize,
}

impl StandbyState {
    /// `timeout`: how long a forwarded request may take (`limits.request_timeout_secs`, as the
    /// active node's own; a frozen active node's forwards then end no later than its own would).
    pub fn new(active: ActiveNode, max_body_bytes: usize, timeout: Duration) -> Self {
        // No redirects followed, no proxy from the environment: the answer is the active node's.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .build()
            .expect("a client without a proxy or custom TLS builds");
        Self { active: Arc::new(Mutex::new(active)), http, max_body_bytes }
    }

    /// What the last attempt to take the lease found.
    pub fn set_active(&self, active: ActiveNode) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = active;
    }

    fn active(&self) -> ActiveNode {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub fn router(state: StandbyState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "standby"})) }))
        .route("/readyz", get(not_active))
        .fallback(forward)
        .with_state(state)
}

/// 503 `standby`: this node is not active and does not forward this request.
fn standby(retry_after: u64, detail: impl Into<String>) -> Response {
    ApiError { retry_after: Some(retry_after.max(1)), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "standby", detail) }.into_response()
}

async fn not_active(State(state): State<StandbyState>) -> Response {
    let active = state.active();
    standby(active.expires_in_secs, format!("this vault node is a standby; {} is active", active.holder))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the client recomputes: not forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(State(state): State<StandbyState>, req: Request) -> Response {
    let active = state.active();
    let Some(address) = active.address.as_deref() else {
        return standby(
            active.expires_in_secs,
            "this vault node is a standby and the active node gave no address: nothing was done; retry",
        );
    };
    if req.headers().contains_key(&FORWARDED) {
        return standby(1, "a forwarded request reached a standby (the active node changed): nothing was done; retry");
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "request body too large or unreadable").into_response(),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = state.http.request(parts.method, format!("{address}{path}")).body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        out = out.header(name, value);
    }
    let answer = match out.header(FORWARDED, "1").send().await {
        Ok(a) => a,
        // Not connected: the request never left this node.
        Err(e) if e.is_connect() => {
            tracing::warn!(active = %active.holder, "the active node does not answer; request not forwarded");
            return standby(1, "the active vault node cannot be reached: nothing was done; retry");
        }
        Err(_) => {
            tracing::warn!(active = %active.holder, "a forwarded request got no answer");
            return ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome-unknown",
                    "the request was forwarded to the active vault node but its answer was lost: retry with the same Idempotency-Key to learn its outcome",
                )
            }
            .into_response();
        }
    };
    let mut res = Response::builder().status(answer.status());
    for (name, value) in answer.headers().iter().filter(|(n, _)| !hop_by_hop(n)) {
        res = res.header(name, value);
    }
    match answer.bytes().await {
        Ok(bytes) => res.body(Body::from(bytes)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
        Err(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "the active vault node's answer was cut off: retry with the same Idempotency-Key to learn its outcome",
            )
        }
        .into_response(),
    }
}
