//! The middleware every request passes first, in one layer: the header limit, the request id,
//! the request's metrics, a problem body for the middleware's own refusals, and the headers
//! every response carries. One `from_fn` instead of three: each axum `from_fn` layer boxes a
//! future and clones the stack below it on every request (`docs/performance.md`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::metrics::HttpMetrics;
use crate::domain::RequestId;

/// The most header bytes (names, values and separators) a request may carry. hyper itself
/// buffers up to ~400 KB of headers; no caller of this API needs more than a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The header that echoes the client's own request id, when it sent a plain one.
pub const CLIENT_REQUEST_ID: &str = "x-client-request-id";

/// The id a client gave its request (`x-request-id`, if plain and short), kept apart from the
/// vault's own: a client chooses it, so it could imitate one of the vault's (e.g. `summary`).
#[derive(Clone, Debug)]
pub struct ClientRequestId(pub RequestId);

/// Gives every request an id of the vault's own (and keeps the caller's `x-request-id`, if
/// plain and short, as [`ClientRequestId`]), refuses oversized headers with 431, counts and
/// times the request by route template, and sets the headers every response carries.
pub async fn edge(State(metrics): State<Arc<HttpMetrics>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let id = RequestId::generate();
    let client_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).and_then(RequestId::parse);
    // The path holds opaque ids only; queries, headers and bodies are never logged. A
    // privacy-centre link carries its session token in the path: that part is left out. The
    // fields are evaluated only if the span is enabled (QOIMA_LOG=qoima=debug).
    let span = tracing::debug_span!(
        "request",
        request_id = %id.as_str(),
        client_request_id = client_id.as_ref().map(RequestId::as_str),
        method = %req.method(),
        path = %crate::privacy::loggable_path(req.uri().path())
    );
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let mut res = if header_bytes > MAX_HEADER_BYTES {
        let detail = format!("request headers exceed {} KiB", MAX_HEADER_BYTES / 1024);
        ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers-too-large", detail).into_response()
    } else {
        req.extensions_mut().insert(id.clone());
        if let Some(c) = &client_id {
            req.extensions_mut().insert(ClientRequestId(c.clone()));
        }
        tracing::Instrument::instrument(next.run(req), span.clone()).await
    };
    let elapsed = started.elapsed();
    metrics.record(super::metrics::route_of(&res), &method, res.status(), elapsed);
    // One line per request at debug: at info it would cost every request a formatted write;
    // counts and latencies are in /metrics.
    span.in_scope(|| tracing::debug!(status = res.status().as_u16(), latency_ms = elapsed.as_secs_f64() * 1e3, "served"));
    // Errors produced by middleware (timeouts, limits) come without a body: give them one.
    if (res.status().is_client_error() || res.status().is_server_error()) && !res.headers().contains_key(header::CONTENT_TYPE) {
        let slug = match res.status() {
            StatusCode::REQUEST_TIMEOUT => "request-timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "internal",
            _ => "invalid-request",
        };
        let detail = res.status().canonical_reason().unwrap_or("error").to_string();
        res = ApiError::new(res.status(), slug, detail).into_response();
    }
    let h = res.headers_mut();
    // A RequestId holds only [A-Za-z0-9._:-], always a valid header value.
    h.insert("x-request-id", HeaderValue::from_str(id.as_str()).expect("plain request id"));
    if let Some(c) = &client_id {
        h.insert(CLIENT_REQUEST_ID, HeaderValue::from_str(c.as_str()).expect("plain request id"));
    }
    // Responses may hold personal data: never cache them anywhere.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    res
}
