//! `POST /v1/subjects:batch`: a bulk import (docs/api.md, "Bulk import"). The vault side is
//! `vault::import`; here the request is bounded and each item's outcome becomes the status and
//! problem document the single `PUT /v1/subjects/{id}` would have answered.

use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;

use super::error::{ApiError, Problem};
use super::extract::{run, ApiJson, App, Authed, IdemKey};
use super::wire::{BatchBody, BatchResponse, BatchResult};
use crate::vault::import::{ImportItem, ItemOutcome, ItemResult, Refusal, RefusalKind, MAX_BATCH};
use crate::vault::VaultError;

/// Largest body the batch route takes (8 KiB a subject at the most subjects), or the
/// configured `[limits] max_body_bytes` if that is larger: every other route keeps the
/// configured limit.
pub const MAX_BATCH_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Store or merge up to 1,000 subjects' fields in one request and one group commit (role
/// service). Each subject is written, or refused, on its own, as `PUT /v1/subjects/{id}`
/// would; the answer is 200 with one result per subject, in request order.
#[utoipa::path(post, path = "/v1/subjects:batch", tag = "subjects",
    request_body = BatchBody,
    responses((status = 200, body = BatchResponse, description = "one result per subject, in request order: 201 created, 200 updated, else the single put's status and problem"),
        (status = 400, body = Problem, description = "malformed body, or no subjects, or more than 1,000"), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_batch(state: App, Authed(ctx): Authed, idem: IdemKey, ApiJson(body): ApiJson<BatchBody>) -> Result<Response, ApiError> {
    let n = body.subjects.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::bad_request(format!("subjects must list 1 to {MAX_BATCH} subjects (got {n})")));
    }
    let (ctx, replayed) = idem.bind(ctx, &body);
    let items: Vec<ImportItem> = body.subjects.into_iter().map(|i| ImportItem { subject: i.subject, fields: i.fields }).collect();
    let outcomes = run(&state.vault, move |v| v.put_batch(&ctx, &items)).await?;
    Ok(replayed.mark(Json(BatchResponse { results: outcomes.into_iter().map(result).collect() })))
}

fn result(o: ItemOutcome) -> BatchResult {
    match o.result {
        ItemResult::Written(w) => BatchResult {
            status: if w.created { 201 } else { 200 },
            version: Some(w.version),
            missing_mandatory: Some(w.missing_mandatory),
            problem: None,
            subject: o.subject,
        },
        ItemResult::Refused(r) => {
            let problem = problem(&o.subject, r);
            BatchResult { subject: o.subject, status: problem.status, version: None, missing_mandatory: None, problem: Some(problem) }
        }
    }
}

/// The problem document of a refused item: the one `ApiError::from` gives the single put for
/// the same error (the test below holds the two together).
fn problem(subject: &str, r: Refusal) -> Problem {
    let e = match r.kind {
        RefusalKind::Invalid => ApiError::bad_request(r.detail),
        RefusalKind::Forbidden => ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.detail),
        RefusalKind::BasisMissing => ApiError::new(StatusCode::FORBIDDEN, "basis-missing", r.detail),
        RefusalKind::NotFound => ApiError::not_found(r.detail),
        RefusalKind::Conflict => ApiError::new(StatusCode::CONFLICT, "conflict", r.detail),
        RefusalKind::Erased => ApiError::from(VaultError::Erased { subject: subject.to_owned(), receipt: r.receipt.unwrap_or_default() }),
        RefusalKind::KeyDestroyed => ApiError::new(StatusCode::GONE, "key-destroyed", r.detail),
    };
    e.problem()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Purpose;
    use crate::policy::Denial;
    use crate::vault::error::{Conflict, Missing};

    /// Every error an item can be refused with, as the single put would answer it.
    #[test]
    fn a_refused_items_problem_is_the_single_puts() {
        let errors: Vec<fn() -> VaultError> = vec![
            VaultError::no_fields,
            || VaultError::Denied(Denial::WriteNotGranted { action: "subject.put", fields: vec!["identity.iin".into()] }),
            || VaultError::Denied(Denial::BasisMissing { purpose: Purpose::parse("marketing").unwrap(), missing: "consent".into() }),
            || VaultError::NotFound(Missing::Subject { subject: "s-1".into() }),
            || VaultError::Conflict(Conflict::SessionExpired),
            || VaultError::Erased { subject: "s-1".into(), receipt: "rcpt".into() },
            || VaultError::KeyDestroyed { subject: "s-1".into(), generation: 2 },
        ];
        for e in errors {
            let single = serde_json::to_value(ApiError::from(e()).problem()).unwrap();
            let item = serde_json::to_value(problem("s-1", Refusal::of(e()).unwrap())).unwrap();
            assert_eq!(item, single);
        }
    }

    #[test]
    fn results_carry_a_version_or_a_problem() {
        let dup = Refusal::of(VaultError::Conflict(Conflict::SessionExpired)).unwrap();
        let r = result(ItemOutcome { subject: "s".into(), result: ItemResult::Refused(dup) });
        assert_eq!((r.status, r.version, r.problem.map(|p| p.kind)), (409, None, Some("urn:qoima:problem:conflict".to_string())));
    }
}
