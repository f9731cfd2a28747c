//! The HTTP API (docs/api.md): a thin axum layer over the vault core. Handlers extract, call
//! the vault off the async threads, and map the result; they hold no policy of their own.
//!
//! **Invariant:** the API knows no RocksDB and makes no decision; authorisation, audit and
//! crypto live below it.

mod admin;
mod edge;
pub mod error;
mod extract;
mod import;
mod lookup;
mod metrics;
mod privacy;
pub mod standby;
mod subjects;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use tower::limit::ConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::Callers;
use crate::privacy::Sessions;
use crate::vault::Vault;
use error::ApiError;

pub use admin::parse_anchor;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub vault: Arc<Vault>,
    pub callers: Arc<Callers>,
    pub http: Arc<metrics::HttpMetrics>,
    /// The privacy centre's session links.
    pub privacy: Arc<Sessions>,
}

impl AppState {
    pub fn new(vault: Arc<Vault>, callers: Callers, privacy: Sessions) -> Self {
        Self { vault, callers: Arc::new(callers), http: Arc::default(), privacy: Arc::new(privacy) }
    }
}

/// The OpenAPI document, generated from the handlers and wire types above.
#[derive(OpenApi)]
#[openapi(
    info(title = "Qoima", description = "Encrypted personal-data vault: purpose-scoped, audited decryption for authorised callers."),
    paths(
        subjects::put_subject, subjects::read_subject, subjects::rectify, subjects::open_contract, subjects::update_contract,
        subjects::give_consent, subjects::withdraw_consent, subjects::disclose, subjects::export, subjects::request_erasure,
        subjects::erasure_status, subjects::rekey, import::put_batch, lookup::lookup, privacy::create_session, admin::keys, admin::rotate,
        admin::start_rewrap, admin::rewrap_progress,
        admin::destroy, admin::audit, admin::audit_verify,
        admin::healthz, admin::readyz
    ),
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Errors are `application/problem+json`, and every operation can meet the middleware's
/// refusals (431 headers too large, 408 timeout; 413 and 415 where a body is taken): the
/// document says so, as schemathesis checks (tests/schemathesis/run.sh). Every mutating
/// operation takes an optional `Idempotency-Key` header, and can answer 409 (that key in
/// flight) and 422 (that key used for another request).
struct ProblemResponses;

/// Operations that are POSTs only to keep what they look for out of URLs: reads.
const READS_BY_POST: &[&str] = &["/v1/lookup"];

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, Response};
        const PROBLEM: &str = "application/problem+json";
        let problem = |description: &str| {
            let mut r = Response::new(description);
            r.content.insert(PROBLEM.into(), Content::new(Some(Ref::from_schema_name("Problem"))));
            r
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let about_a_subject = path.starts_with("/v1/subjects/{id}");
            let ops =
                [(false, &mut item.get), (true, &mut item.put), (true, &mut item.post), (true, &mut item.delete), (true, &mut item.patch)];
            // A POST that only reads (its value is in the body, never in a URL) takes no key.
            let reads = READS_BY_POST.contains(&path.as_str());
            for (mutating, op) in ops.into_iter().filter_map(|(m, op)| op.as_mut().map(|op| (m && !reads, op))) {
                for (code, response) in op.responses.responses.iter_mut() {
                    let utoipa::openapi::RefOr::T(response) = response else { continue };
                    if code.as_str() >= "400" {
                        if let Some(c) = response.content.shift_remove("application/json") {
                            response.content.insert(PROBLEM.into(), c);
                        }
                    }
                }
                // The id rules of domain.rs, so generated "valid" ids are valid.
                for param in op.parameters.iter_mut().flatten() {
                    let rule = match param.name.as_str() {
                        "id" => Some(("^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$", 128)),
                        "contract" => Some(("^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$", 64)),
                        "purpose" if param.parameter_in == utoipa::openapi::path::ParameterIn::Path => Some(("^[a-z][a-z0-9_]*$", 64)),
                        _ => None,
                    };
                    if let (Some((pattern, max)), Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(o)))) =
                        (rule, param.schema.as_mut())
                    {
                        o.pattern = Some(pattern.into());
                        o.min_length = Some(1);
                        o.max_length = Some(max);
                    }
                }
                let mut extra = vec![("408", "the request took too long"), ("431", "request headers too large")];
                if op.request_body.is_some() {
                    extra.extend([("413", "request body too large"), ("415", "not application/json")]);
                }
                let has = |op: &utoipa::openapi::path::Operation, name: &str| {
                    op.parameters.iter().flatten().any(|p| p.name.eq_ignore_ascii_case(name))
                };
                if about_a_subject && !has(op, crate::assertion::HEADER) {
                    op.parameters.get_or_insert_with(Vec::new).push(subject_assertion_parameter());
                }
                if mutating {
                    op.parameters.get_or_insert_with(Vec::new).push(idempotency_key_parameter());
                    extra.extend([
                        ("400", "a malformed Idempotency-Key"),
                        ("409", "a request with this Idempotency-Key is still in flight (idempotency-key-in-flight; see Retry-After)"),
                        ("422", "this Idempotency-Key was used for a different request (idempotency-key-reused)"),
                    ]);
                }
                for (code, description) in extra {
                    op.responses.responses.entry(code.into()).or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// The `Qoima-Subject-Assertion` header of every operation about a subject: required of a
/// caller configured with `subject_assertion` (docs/configuration.md, "Subject assertions").
fn subject_assertion_parameter() -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ParameterBuilder::new()
        .name("Qoima-Subject-Assertion")
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(
            "a JWT (compact JWS) the lender's identity provider signed for this subject; required (else 401 \
             subject-assertion) when the calling website is configured with subject_assertion",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// The `Idempotency-Key` header of every mutating operation (docs/api.md, "Idempotency").
fn idempotency_key_parameter() -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let schema =
        ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255)).pattern(Some("^[!-~]([ -~]*[!-~])?$"));
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(
            "1 to 255 printable ASCII characters, new for each logical request and the same for its retries: a retry \
             with the same key and request gets the first answer (marked Idempotent-Replayed: true); kept 24 h per caller",
        ))
        .schema(Some(schema))
        .build()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "method not allowed on this route")
}

/// What the router's middleware limits (from `[limits]`, built by the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// A request taking longer is answered 408.
    pub request_timeout: Duration,
    /// Requests served at once; more wait.
    pub max_concurrent_requests: usize,
}

/// The router with its middleware.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    // The borrower's page: HTML, with its own security headers.
    let privacy_centre = Router::new()
        .route("/privacy/s/{token}", get(privacy::show))
        .route("/privacy/s/{token}/rectify", post(privacy::rectify))
        .route("/privacy/s/{token}/consents/{purpose}/withdraw", post(privacy::withdraw))
        .route("/privacy/s/{token}/erasure", post(privacy::erase))
        .route("/privacy/s/{token}/export", get(privacy::export))
        .route("/privacy/assets/privacy.css", get(privacy::css))
        .route("/privacy/assets/privacy.js", get(privacy::js))
        .route("/privacy/assets/icon.svg", get(privacy::icon))
        .layer(axum::middleware::from_fn_with_state(state.privacy.clone(), privacy::headers));
    let v1 = Router::new()
        .route("/v1/subjects/{id}", put(subjects::put_subject).get(subjects::read_subject))
        // A literal segment of its own (`subjects:batch`), never `{id}`. Its body may be as
        // large as 1,000 subjects (the one route above `[limits] max_body_bytes`).
        .route(
            "/v1/subjects:batch",
            post(import::put_batch).layer(DefaultBodyLimit::max(limits.max_body_bytes.max(import::MAX_BATCH_BODY_BYTES))),
        )
        .route("/v1/subjects/{id}/rectify", patch(subjects::rectify))
        .route("/v1/subjects/{id}/contracts", post(subjects::open_contract))
        .route("/v1/subjects/{id}/contracts/{contract}", patch(subjects::update_contract))
        .route("/v1/subjects/{id}/consents", post(subjects::give_consent))
        .route("/v1/subjects/{id}/consents/{purpose}", axum::routing::delete(subjects::withdraw_consent))
        .route("/v1/subjects/{id}/disclosures", post(subjects::disclose))
        .route("/v1/subjects/{id}/export", get(subjects::export))
        .route("/v1/subjects/{id}/erasure", post(subjects::request_erasure).get(subjects::erasure_status))
        .route("/v1/subjects/{id}/rekey", post(subjects::rekey))
        .route("/v1/subjects/{id}/privacy-session", post(privacy::create_session))
        .route("/v1/lookup", post(lookup::lookup))
        .route("/v1/keys", get(admin::keys))
        .route("/v1/keys/rotate", post(admin::rotate))
        .route("/v1/keys/rewrap", post(admin::start_rewrap).get(admin::rewrap_progress))
        .route("/v1/keys/{generation}", axum::routing::delete(admin::destroy))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/audit/verify", get(admin::audit_verify))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics::render))
        .merge(privacy_centre)
        .route_layer(axum::middleware::from_fn(metrics::label_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // The stack wraps the router once, not each route (`Router::layer` would): a request then
    // clones no boxed route stack per layer (≈ 70 allocations per request saved). The edge
    // (request id, header limit, metrics, common headers) is one layer, not three.
    let stack = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(state.http.clone(), edge::edge))
        .layer(ConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))
        }))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .service(v1);
    Router::new().fallback_service(stack)
}
