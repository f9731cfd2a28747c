//! Handlers for `/v1/subjects/…`: each extracts, calls the vault, maps the result.

use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;

use super::error::{ApiError, Problem};
use super::extract::{answer, run, ApiJson, ApiPath, ApiQuery, App, Authed, IdemKey};
use super::wire::*;
use crate::domain::SubjectId;
use crate::vault::{DisclosureRequest, Vault};

fn subject(id: &str) -> Result<SubjectId, ApiError> {
    Ok(SubjectId::parse(id)?)
}

/// Store or merge a subject's fields (role service).
#[utoipa::path(put, path = "/v1/subjects/{id}", tag = "subjects",
    params(("id" = String, Path, description = "opaque subject id, ^[A-Za-z0-9._-]{1,128}$")),
    request_body = FieldsBody,
    responses((status = 201, body = WriteResponse, description = "created"), (status = 200, body = WriteResponse, description = "updated"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 410, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn put_subject(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let out = answer(&state.vault, move |v, mode| v.put_fields(mode, &ctx, &s, &body.fields)).await?;
    Ok(replayed.mark(WriteResponse::of(id, out)))
}

/// Read a subject's fields for a purpose (role service): only the fields the purpose allows,
/// only while its legal basis holds. A field the purpose has only as a masked view
/// (`identity.iin:last4`) comes back masked under its plain name, whatever `fields` asks.
#[utoipa::path(get, path = "/v1/subjects/{id}", tag = "subjects",
    params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = FieldsResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 429, body = Problem, description = "over the caller's max_reads_per_minute; see Retry-After"),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn read_subject(
    state: App,
    Authed(ctx): Authed,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Json<FieldsOut>, ApiError> {
    let (s, (purpose, fields)) = (subject(&id)?, q.parse()?);
    let p = purpose.clone();
    let values = answer(&state.vault, move |v, mode| v.read(mode, &ctx, &s, &p, fields.as_deref())).await?;
    Ok(Json(FieldsOut { subject: id, purpose, fields: values }))
}

/// Correct fields (role website); allowed even under a hold (P6).
#[utoipa::path(patch, path = "/v1/subjects/{id}/rectify", tag = "subjects",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")), request_body = FieldsBody,
    responses((status = 200, body = WriteResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn rectify(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<FieldsBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let out = answer(&state.vault, move |v, mode| v.rectify(mode, &ctx, &s, &body.fields)).await?;
    Ok(replayed.mark(WriteResponse::of(id, out)))
}

/// Open a loan contract (role service).
#[utoipa::path(post, path = "/v1/subjects/{id}/contracts", tag = "contracts",
    params(("id" = String, Path)), request_body = ContractBody,
    responses((status = 201, body = ContractResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn open_contract(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ContractBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let subj = s.to_string();
    let c = run(&state.vault, move |v| v.open_contract(&ctx, &s, &body.contract)).await?;
    Ok(replayed.mark((StatusCode::CREATED, Json(ContractResponse::new(&subj, c, None)))))
}

/// Settle or breach a contract (role service). Settling the last one runs a pending erasure.
#[utoipa::path(patch, path = "/v1/subjects/{id}/contracts/{contract}", tag = "contracts",
    params(("id" = String, Path), ("contract" = String, Path)), request_body = ContractUpdateBody,
    responses((status = 200, body = ContractResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn update_contract(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath((id, contract)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ContractUpdateBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let subj = s.to_string();
    let stated =
        move |v: &Vault| v.update_contract(&ctx, &s, &contract, &body.status).map(|(c, e)| (c, e.map(|e| ErasureResponse::stated(v, e))));
    let (c, erasure) = run(&state.vault, stated).await?;
    Ok(replayed.mark(Json(ContractResponse::new(&subj, c, erasure))))
}

/// Record a consent with the policy version it is given under (roles website, service).
#[utoipa::path(post, path = "/v1/subjects/{id}/consents", tag = "consents",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")), request_body = ConsentBody,
    responses((status = 201, body = ConsentResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn give_consent(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ConsentBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let req = body.into_request()?;
    let c = run(&state.vault, move |v| v.give_consent(&ctx, &s, &req)).await?;
    Ok(replayed.mark((StatusCode::CREATED, Json(ConsentResponse::from(c)))))
}

/// Withdraw a consent; it takes effect on the next read (roles website, service).
#[utoipa::path(delete, path = "/v1/subjects/{id}/consents/{purpose}", tag = "consents",
    params(("id" = String, Path), ("purpose" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")),
    responses((status = 204, description = "withdrawn"), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn withdraw_consent(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath((id, purpose)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &());
    run(&state.vault, move |v| v.withdraw_consent(&ctx, &s, &purpose)).await?;
    Ok(replayed.mark(StatusCode::NO_CONTENT))
}

/// Disclose fields to a third party on a basis (role service); recorded for the subject.
#[utoipa::path(post, path = "/v1/subjects/{id}/disclosures", tag = "disclosures",
    params(("id" = String, Path)), request_body = DisclosureBody,
    responses((status = 200, body = DisclosureResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 429, body = Problem, description = "over the caller's max_reads_per_minute; see Retry-After"),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn disclose(
    state: App,
    Authed(ctx): Authed,
    idem: IdemKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DisclosureBody>,
) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &body);
    let (subj, req) = (s.to_string(), DisclosureRequest::from(body));
    let (record, values) = run(&state.vault, move |v| v.disclose(&ctx, &s, &req)).await?;
    Ok(replayed.mark(Json(DisclosureResponse::new(subj, record, values))))
}

/// Everything the vault holds on the subject (role website; right of access).
#[utoipa::path(get, path = "/v1/subjects/{id}/export", tag = "subjects",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")),
    responses((status = 200, body = ExportResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 429, body = Problem, description = "over the caller's max_reads_per_minute; see Retry-After"),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn export(state: App, Authed(ctx): Authed, ApiPath(id): ApiPath<String>) -> Result<Json<ExportResponse>, ApiError> {
    let s = subject(&id)?;
    let doc = run(&state.vault, move |v| Ok(ExportResponse::stated(v, v.export(&ctx, &s)?))).await?;
    Ok(Json(doc))
}

/// Request erasure (roles website, service). Idempotent; pending while a contract holds it.
#[utoipa::path(post, path = "/v1/subjects/{id}/erasure", tag = "erasure",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")),
    responses((status = 202, body = ErasureResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn request_erasure(state: App, Authed(ctx): Authed, idem: IdemKey, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &());
    let r = run(&state.vault, move |v| Ok(ErasureResponse::stated(v, v.request_erasure(&ctx, &s)?))).await?;
    Ok(replayed.mark((StatusCode::ACCEPTED, Json(r))))
}

/// Erasure status and receipt (roles website, service); 404 if never requested.
#[utoipa::path(get, path = "/v1/subjects/{id}/erasure", tag = "erasure",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")),
    responses((status = 200, body = ErasureResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn erasure_status(state: App, Authed(ctx): Authed, ApiPath(id): ApiPath<String>) -> Result<Json<ErasureResponse>, ApiError> {
    let s = subject(&id)?;
    let r = run(&state.vault, move |v| Ok(ErasureResponse::stated(v, v.erasure_status(&ctx, &s)?))).await?;
    Ok(Json(r))
}

/// Re-encrypt a subject's fields under a fresh DEK (role security).
#[utoipa::path(post, path = "/v1/subjects/{id}/rekey", tag = "keys",
    params(("id" = String, Path)),
    responses((status = 200, body = RekeyResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn rekey(state: App, Authed(ctx): Authed, idem: IdemKey, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let s = subject(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &());
    let subj = s.to_string();
    let v = run(&state.vault, move |v| v.rekey(&ctx, &s)).await?;
    Ok(replayed.mark(Json(RekeyResponse { subject: subj, dek_version: v })))
}
