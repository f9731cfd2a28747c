//! Handlers for keys, audit, health and readiness.

use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;

use super::error::{ApiError, Problem};
use super::extract::{run, ApiPath, ApiQuery, App, Authed, IdemKey, Scrape};
use super::wire::*;

/// Every KEK generation with its state and how many DEKs it wraps (role security).
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = KeysResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn keys(state: App, Authed(ctx): Authed) -> Result<Json<KeysResponse>, ApiError> {
    let gens = run(&state.vault, move |v| v.keys_status(&ctx)).await?;
    Ok(Json(KeysResponse { generations: gens.into_iter().map(|(i, n)| GenerationWire::new(i, n)).collect() }))
}

/// Create and activate a new KEK generation (role security).
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "keys",
    responses((status = 201, body = GenerationWire, description = "rotated; `escrow_pending` if the escrow copy is still to be written"),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate(state: App, Authed(ctx): Authed, idem: IdemKey) -> Result<Response, ApiError> {
    let (ctx, replayed) = idem.bind(ctx, &());
    let (info, escrow_pending) = run(&state.vault, move |v| v.rotate_kek(&ctx).map(|i| (i, v.escrow_pending()))).await?;
    Ok(replayed.mark((StatusCode::CREATED, Json(GenerationWire { escrow_pending, ..GenerationWire::new(info, 0) }))))
}

/// Set on a committed key change whose keyring escrow copy is still to be written (retried).
pub const ESCROW_PENDING_HEADER: &str = "qoima-escrow-pending";

/// Start (or resume) the online rewrap of every DEK onto the active generation (role security).
#[utoipa::path(post, path = "/v1/keys/rewrap", tag = "keys",
    responses((status = 202, body = RewrapResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn start_rewrap(state: App, Authed(ctx): Authed, idem: IdemKey) -> Result<Response, ApiError> {
    let (ctx, replayed) = idem.bind(ctx, &());
    let vault = state.vault.clone();
    let p = tokio::task::spawn_blocking(move || vault.start_rewrap(&ctx))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "rewrap task failed"))??;
    Ok(replayed.mark((StatusCode::ACCEPTED, Json(RewrapResponse::from(p)))))
}

/// Progress of the rewrap: done/total, rate, ETA (role security).
#[utoipa::path(get, path = "/v1/keys/rewrap", tag = "keys",
    responses((status = 200, body = RewrapResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn rewrap_progress(state: App, Authed(ctx): Authed) -> Result<Json<RewrapResponse>, ApiError> {
    let p = run(&state.vault, move |v| v.rewrap_progress(&ctx)).await?;
    Ok(Json(p.into()))
}

/// Destroy a KEK generation: 409 while it is active or wraps any DEK (role security).
#[utoipa::path(delete, path = "/v1/keys/{generation}", tag = "keys",
    params(("generation" = u32, Path)),
    responses((status = 204, description = "destroyed", headers(("qoima-escrow-pending" = String,
            description = "`true` when the destruction is committed but the keyring escrow copy is still to be written (retried in the background)"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn destroy(state: App, Authed(ctx): Authed, idem: IdemKey, ApiPath(generation): ApiPath<String>) -> Result<Response, ApiError> {
    let g: u32 = generation.parse().map_err(|_| ApiError::bad_request("generation must be a number"))?;
    let (ctx, replayed) = idem.bind(ctx, &());
    let escrow_pending = run(&state.vault, move |v| v.destroy_generation(&ctx, g).map(|_| v.escrow_pending())).await?;
    Ok(replayed.mark((StatusCode::NO_CONTENT, escrow_pending_header(escrow_pending))))
}

/// [`ESCROW_PENDING_HEADER`]`: true` when the escrow copy is still to be written, else nothing.
fn escrow_pending_header(pending: bool) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if pending {
        headers.insert(ESCROW_PENDING_HEADER, axum::http::HeaderValue::from_static("true"));
    }
    headers
}

/// Audit entries (roles auditor, security).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn audit(state: App, Authed(ctx): Authed, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Json<AuditResponse>, ApiError> {
    let query = q.into_query()?;
    let entries = run(&state.vault, move |v| v.audit_entries(&ctx, query)).await?;
    Ok(Json(AuditResponse { entries }))
}

/// Recompute the audit hash chain (roles auditor, security).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = VerifyResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn audit_verify(state: App, Authed(ctx): Authed, ApiQuery(q): ApiQuery<VerifyQuery>) -> Result<Json<VerifyResponse>, ApiError> {
    let anchor = q.anchor.map(|a| parse_anchor(&a)).transpose()?;
    let v = run(&state.vault, move |v| v.audit_verify(&ctx, anchor.as_ref().map(|(s, h)| (*s, h.as_str())))).await?;
    Ok(Json(v.into()))
}

/// Parses `SEQ:HASH`.
pub fn parse_anchor(a: &str) -> Result<(u64, String), ApiError> {
    let (seq, hash) = a.split_once(':').ok_or_else(|| ApiError::bad_request("anchor must be SEQ:HASH"))?;
    let seq = seq.parse().map_err(|_| ApiError::bad_request("anchor must be SEQ:HASH"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("anchor hash must be 64 hex characters"));
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = HealthResponse)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), checks: Default::default() })
}

/// What `/readyz` and `/metrics` check: store open and writable, root key loaded, audit
/// writable.
pub struct Health {
    /// The store's error, if it has one (its text names files and RocksDB's state).
    pub store: Result<(), String>,
    pub audit: bool,
    pub active_generation: u32,
}

impl Health {
    pub async fn of(vault: &std::sync::Arc<crate::vault::Vault>) -> Option<Health> {
        let vault = vault.clone();
        tokio::task::spawn_blocking(move || Health {
            store: vault.store_ready().map_err(|e| e.to_string()),
            audit: vault.audit_healthy(),
            active_generation: vault.keyring().active_generation().0,
        })
        .await
        .ok()
    }

    pub fn ready(&self) -> bool {
        self.store.is_ok() && self.audit
    }

    /// `/readyz`'s answer: 200 when ready, else 503 (also when the checks could not run).
    fn answer(health: Option<Health>, detail: bool) -> (StatusCode, Json<HealthResponse>) {
        let Some(health) = health else {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(HealthResponse { status: "not ready".into(), checks: Default::default() }));
        };
        let ready = health.ready();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, Json(HealthResponse { status: if ready { "ready".into() } else { "not ready".into() }, checks: health.checks(detail) }))
    }

    /// Each check as `/readyz` names it: "ok" or what is wrong, in detail only for `detail`.
    fn checks(&self, detail: bool) -> std::collections::BTreeMap<String, String> {
        let failing = |what: String| if detail { what } else { "failing".into() };
        let store = match &self.store {
            Ok(()) => "ok".into(),
            Err(e) => failing(e.clone()),
        };
        let root_key = if detail { format!("ok (active KEK generation {})", self.active_generation) } else { "ok".into() };
        let audit = if self.audit { "ok".into() } else { failing("last audit write failed".into()) };
        [("store", store), ("root_key", root_key), ("audit", audit)].into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Readiness: store open and writable, root key loaded, audit writable. Without credentials
/// each check says only "ok" or "failing"; a caller with role monitoring or security gets the
/// active KEK generation and the store's error text.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse), (status = 401, body = Problem), (status = 403, body = Problem)),
    security((), ("bearer" = [])))]
pub async fn readyz(state: App, scrape: Scrape) -> (StatusCode, Json<HealthResponse>) {
    Health::answer(Health::of(&state.vault).await, matches!(scrape, Scrape::Detailed))
}
