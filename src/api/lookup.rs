//! `POST /v1/lookup`: the subjects an indexed field's value belongs to, found through the
//! blind index. The value travels in the body only, never in a URL (which proxies log).

use axum::Json;

use super::error::{ApiError, Problem};
use super::extract::{run, ApiJson, App, Authed};
use super::wire::{LookupBody, LookupResponse};

/// Find subjects by an indexed field's value (role service): the caller must be granted the
/// purpose, and the purpose must read the field in full. Names only live subjects for whom the
/// purpose's legal basis holds; none is `[]`. Audited as `subject.lookup` (field, purpose,
/// number of matches; never the value); counts against `max_reads_per_minute`.
#[utoipa::path(post, path = "/v1/lookup", tag = "subjects",
    request_body = LookupBody,
    responses((status = 200, body = LookupResponse),
        (status = 400, body = Problem, description = "unknown or unindexed field, unknown purpose, or a value that fails the field's check"),
        (status = 401, body = Problem), (status = 403, body = Problem, description = "purpose not granted, or the purpose does not read the field in full"),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 429, body = Problem, description = "over the caller's max_reads_per_minute; see Retry-After"),
        (status = 503, body = Problem, description = "the field's index is still being built (see Retry-After), or the vault cannot record the lookup")),
    security(("bearer" = [])))]
pub async fn lookup(state: App, Authed(ctx): Authed, ApiJson(body): ApiJson<LookupBody>) -> Result<Json<LookupResponse>, ApiError> {
    let LookupBody { field, value, purpose } = body;
    let (f, p) = (field.clone(), purpose.clone());
    let subjects = run(&state.vault, move |v| v.lookup(&ctx, &f, &value, &p)).await?;
    Ok(Json(LookupResponse { field, purpose, subjects }))
}
