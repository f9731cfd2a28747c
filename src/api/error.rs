//! One web error type: every failure becomes `application/problem+json` (RFC 9457) with
//! `type`, `title`, `status`, `detail`. 5xx details are logged, not shown.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::InvalidId;
use crate::policy::Denial;
use crate::vault::VaultError;

/// A problem details document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:qoima:problem:<slug>`; the slugs are listed in docs/api.md.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The erasure receipt, on 410.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// An error on its way to becoming a problem response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub detail: String,
    pub receipt: Option<String>,
    /// Seconds for `Retry-After`, on 429 (and 409 `idempotency-key-in-flight`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, detail: detail.into(), receipt: None, retry_after: None }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// The problem document this error answers with (also a bulk import's refused item's).
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:qoima:problem:{}", self.slug),
            title: title(self.status).into(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            receipt: self.receipt.clone(),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Invalid(d) => Self::bad_request(d.to_string()),
            VaultError::Denied(d @ Denial::BasisMissing { .. }) => Self::new(StatusCode::FORBIDDEN, "basis-missing", d.to_string()),
            VaultError::Denied(d) => Self::new(StatusCode::FORBIDDEN, "forbidden", d.to_string()),
            VaultError::NotFound(d) => Self::not_found(d.to_string()),
            VaultError::Erased { subject, receipt } => Self {
                status: StatusCode::GONE,
                slug: "erased",
                detail: format!("subject {subject} was erased (crypto-shredded); receipt {receipt}"),
                receipt: Some(receipt),
                retry_after: None,
            },
            VaultError::Conflict(d) => Self::new(StatusCode::CONFLICT, "conflict", d.to_string()),
            e @ VaultError::IdempotencyKeyReused => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", e.to_string()),
            e @ VaultError::IdempotencyInFlight => {
                Self { retry_after: Some(1), ..Self::new(StatusCode::CONFLICT, "idempotency-key-in-flight", e.to_string()) }
            }
            e @ VaultError::RateLimited { retry_after_secs, .. } => {
                Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", e.to_string()) }
            }
            e @ VaultError::IndexBuilding { retry_after_secs, .. } => {
                Self { retry_after: Some(retry_after_secs), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "index-building", e.to_string()) }
            }
            e @ VaultError::KeyDestroyed { .. } => Self::new(StatusCode::GONE, "key-destroyed", e.to_string()),
            e @ VaultError::WrapLimit { .. } => {
                tracing::warn!(detail = %e, "write refused at the KEK wrap limit");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            e @ VaultError::InUse(_) => {
                tracing::error!(detail = %e, "vault unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the vault cannot durably record this request right now; nothing was done and nothing is returned",
                )
            }
            e @ VaultError::Standby(_) => {
                Self { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "standby", e.to_string()) }
            }
            e @ VaultError::OutcomeUnknown(_) => {
                tracing::error!(detail = %e, "write outcome unknown");
                Self {
                    retry_after: Some(5),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "outcome-unknown",
                        "the vault could not learn whether this request's write committed (the database's answer was lost); nothing is \
                         returned: retry with the same Idempotency-Key to learn its outcome",
                    )
                }
            }
            VaultError::Unavailable(d) => {
                tracing::error!(detail = %d, "vault unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the vault cannot durably record this request right now; nothing was done and nothing is returned",
                )
            }
            // A NoWait attempt that would block is run again by `extract::answer`; one that
            // got here is a defect, told as one.
            e @ (VaultError::RootKey { .. } | VaultError::Internal(_) | VaultError::WouldBlock) => {
                tracing::error!(detail = %e, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the request id identifies it in the vault's log")
            }
        }
    }
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        Self::bad_request(e.to_string())
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.problem();
        let mut res = (self.status, serde_json::to_vec(&body).expect("problem serialises")).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"qoima\""));
        }
        res
    }
}
