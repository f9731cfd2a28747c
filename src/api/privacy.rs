//! The privacy centre over HTTP: `POST /v1/subjects/{id}/privacy-session` (role website)
//! issues a link; `/privacy/s/{token}…` serves the borrower's page and its actions; assets
//! under `/privacy/assets/`. Handlers check the link, the form's CSRF field and `Origin`,
//! then call the vault as the website caller named in the link (`Ctx::via` set), and answer
//! with a page or a 303 back to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, App, Authed, IdemKey};
use super::wire::ExportResponse;
use super::AppState;
use crate::domain::{rfc3339, FieldName, Purpose, RequestId, Role, SubjectId};
use crate::privacy::page::{self, Notice, PageCtx, Refusal, Shown};
use crate::privacy::{editable, form_value, Lang, LinkError, Session, Sessions, VIA};
use crate::vault::{Ctx, ErasureStatus, Export, Vault, VaultError};

/// `POST /v1/subjects/{id}/privacy-session`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrivacySessionResponse {
    /// The link to give the borrower (redirect or iframe `src`). A credential until it expires.
    pub url: String,
    pub expires_at: String,
}

/// Open a privacy-centre session for a subject (role website): a short-lived link to the
/// borrower's page, bound to this subject.
#[utoipa::path(post, path = "/v1/subjects/{id}/privacy-session", tag = "privacy",
    params(("id" = String, Path), ("Qoima-Subject-Assertion" = Option<String>, Header, description = "a JWT the identity provider signed for this subject; required (else 401 subject-assertion) when the website caller is configured with subject_assertion")),
    responses((status = 201, body = PrivacySessionResponse), (status = 400, body = Problem), (status = 401, body = Problem, description = "no valid bearer token (unauthenticated), or a missing or invalid subject assertion (subject-assertion)"),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 410, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_session(state: App, Authed(ctx): Authed, idem: IdemKey, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let subject = SubjectId::parse(&id)?;
    let (ctx, replayed) = idem.bind(ctx, &());
    let (caller, s, expires_at) = (ctx.caller.name.clone(), subject.clone(), state.privacy.expiry(state.vault.now()));
    // A replay names the first request's session: its link was never kept, so a fresh one to it.
    let expires_at = super::extract::run(&state.vault, move |v| v.open_privacy_session(&ctx, &s, expires_at)).await?;
    Ok(replayed.mark((StatusCode::CREATED, Json(PrivacySessionResponse::from(state.privacy.issue(&subject, &caller, expires_at))))))
}

impl From<crate::privacy::Issued> for PrivacySessionResponse {
    fn from(issued: crate::privacy::Issued) -> Self {
        Self { url: issued.url, expires_at: rfc3339(issued.expires_at) }
    }
}

/// Headers of every privacy-centre response: a strict CSP, no framing unless origins are
/// configured, and a referrer only to the vault itself (the link is a credential; no other
/// origin ever sees it). Not `no-referrer`: under it browsers send `Origin: null` with form
/// posts, which would leave the Origin check nothing to compare. `Cache-Control: no-store`
/// comes from the API's own middleware.
pub async fn headers(State(sessions): State<Arc<Sessions>>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let csp = HeaderValue::from_str(&sessions.csp()).unwrap_or(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !sessions.embeddable() {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

macro_rules! asset {
    ($name:ident, $file:literal, $type:literal) => {
        pub async fn $name() -> Response {
            ([(header::CONTENT_TYPE, HeaderValue::from_static($type))], include_str!(concat!("../privacy/assets/", $file))).into_response()
        }
    };
}

asset!(css, "privacy.css", "text/css; charset=utf-8");
asset!(js, "privacy.js", "text/javascript; charset=utf-8");
asset!(icon, "icon.svg", "image/svg+xml");

/// The query of a page: its language and the notice to show after a redirect.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    lang: Option<String>,
    notice: Option<String>,
    field: Option<String>,
    purpose: Option<String>,
}

fn page_query(uri: &Uri) -> PageQuery {
    Query::<PageQuery>::try_from_uri(uri).map(|q| q.0).unwrap_or_default()
}

fn token_in(path: &str) -> &str {
    path.split_once("/privacy/s/").map(|(_, rest)| rest.split('/').next().unwrap_or_default()).unwrap_or_default()
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], body).into_response()
}

fn refusal(state: &AppState, lang: Lang, status: StatusCode, why: Refusal) -> Response {
    html(status, page::refusal_page(lang, state.privacy.public_url().path(), why))
}

/// Records a refused use of a link (best effort: the borrower is refused either way).
async fn record_refusal(state: &AppState, subject: Option<SubjectId>, reason: &'static str, request_id: RequestId) {
    let vault = state.vault.clone();
    let _ = tokio::task::spawn_blocking(move || vault.record_unauthenticated(subject.as_ref().map(SubjectId::as_str), reason, &request_id))
        .await;
}

/// A borrower on their page: a verified link, the website caller it names (still configured
/// with the website role), and the page's language.
pub struct Borrower {
    session: Session,
    ctx: Ctx,
    lang: Lang,
}

impl FromRequestParts<AppState> for Borrower {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let q = page_query(&parts.uri);
        let accept = parts.headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
        let lang = Lang::negotiate(q.lang.as_deref(), accept, state.privacy.default_language());
        let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::generate);
        let token = token_in(parts.uri.path());
        let (subject, reason, why) = match state.privacy.verify(token, state.vault.now()) {
            Ok(session) => {
                let caller = state.callers.entries().iter().map(|e| &e.caller).find(|c| c.name == session.caller);
                match caller.filter(|c| c.has_role(Role::Website)) {
                    Some(c) => {
                        let client_request_id = super::extract::client_request_id_of(parts);
                        let ctx = Ctx { caller: c.clone(), request_id, client_request_id, via: Some(VIA), idempotency: None };
                        return Ok(Borrower { session, ctx, lang });
                    }
                    None => (
                        Some(session.subject),
                        "privacy-centre link of a caller no longer configured with the website role",
                        Refusal::LinkInvalid,
                    ),
                }
            }
            Err(LinkError::Expired { subject }) => (Some(subject), "privacy-centre link expired", Refusal::LinkExpired),
            Err(LinkError::Invalid) => (None, "privacy-centre link not valid", Refusal::LinkInvalid),
        };
        record_refusal(state, subject, reason, request_id).await;
        Err(refusal(state, lang, StatusCode::FORBIDDEN, why))
    }
}

/// A purpose the vault is configured with (an unknown one is refused before anything is
/// recorded, as `DELETE …/consents` does).
fn configured_purpose(state: &AppState, purpose: &str) -> Option<Purpose> {
    Purpose::parse(purpose).ok().filter(|p| state.vault.settings().purposes.get(p).is_some())
}

/// A form the borrower's page posts: it carries the session's CSRF field.
trait Posted {
    fn csrf(&self) -> &str;
}

impl Posted for RectifyForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl Posted for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl Borrower {
    /// A posted form that parses (else 400) and passes [`Borrower::check_post`].
    async fn posted<F: Posted>(&self, state: &AppState, headers: &HeaderMap, form: Result<Form<F>, FormRejection>) -> Result<F, Response> {
        let Ok(Form(f)) = form else {
            return Err(refusal(state, self.lang, StatusCode::BAD_REQUEST, Refusal::RequestRefused));
        };
        self.check_post(state, headers, f.csrf()).await?;
        Ok(f)
    }

    /// A POST must come from the vault's own page: `Origin` (when sent) is the vault's, and
    /// the form carries the session's CSRF field.
    async fn check_post(&self, state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<(), Response> {
        let origin_ok = match headers.get(header::ORIGIN) {
            None => true,
            Some(o) => o.to_str().is_ok_and(|o| o == state.privacy.public_url().origin()),
        };
        if origin_ok && state.privacy.csrf_ok(&self.session.token, csrf) {
            return Ok(());
        }
        let reason = if origin_ok { "privacy-centre form without a valid CSRF field" } else { "privacy-centre form from another origin" };
        record_refusal(state, Some(self.session.subject.clone()), reason, self.ctx.request_id.clone()).await;
        Err(refusal(state, self.lang, StatusCode::FORBIDDEN, Refusal::RequestRefused))
    }

    /// 303 back to the page, with a notice.
    fn back(&self, state: &AppState, notice: Option<Notice>, extra: &[(&str, &str)]) -> Response {
        let mut url = format!("{}/privacy/s/{}?lang={}", state.privacy.public_url().path(), self.session.token.as_str(), self.lang.code());
        if let Some(n) = notice {
            url.push_str("&notice=");
            url.push_str(n.code());
            for (k, v) in extra {
                // Field and purpose names are [a-z0-9_.]: nothing to encode.
                url.push_str(&format!("&{k}={v}"));
            }
        }
        match HeaderValue::from_str(&url) {
            Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
            Err(_) => refusal(state, self.lang, StatusCode::INTERNAL_SERVER_ERROR, Refusal::Failed),
        }
    }

    /// The page for a failed vault call (the error is logged by `ApiError` when it is a 5xx).
    fn failed(&self, state: &AppState, e: VaultError) -> Response {
        let e = ApiError::from(e);
        let why = match e.status {
            StatusCode::SERVICE_UNAVAILABLE => Refusal::Unavailable,
            StatusCode::NOT_FOUND => Refusal::LinkInvalid,
            _ => Refusal::Failed,
        };
        refusal(state, self.lang, e.status, why)
    }
}

/// Runs a vault call off the async threads; its errors stay typed.
async fn core<T, F>(vault: &Arc<Vault>, f: F) -> Result<T, VaultError>
where
    T: Send + 'static,
    F: FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static,
{
    let vault = vault.clone();
    tokio::task::spawn_blocking(move || f(&vault))
        .await
        .unwrap_or_else(|e| Err(VaultError::Internal(crate::vault::error::Internal::Task(e))))
}

/// What the page shows: the export of a live subject, or the erasure of an erased one.
enum Shows {
    Live(Box<Export>),
    Erased(crate::vault::ErasureRecord, String),
}

/// `GET /privacy/s/{token}`: the borrower's page. Showing it is a data-subject access, audited
/// as an export via the privacy centre.
pub async fn show(state: App, b: Borrower, uri: Uri) -> Response {
    let notice = shown_notice(&uri);
    let (ctx, s) = (b.ctx.clone(), b.session.subject.clone());
    let shown = core(&state.vault, move |v| Shows::of(v, &ctx, &s)).await;
    b.page(&state, notice, shown)
}

/// The notice a 303 back to the page asked it to show, if any.
fn shown_notice(uri: &Uri) -> Option<Shown> {
    let q = page_query(uri);
    q.notice.as_deref().and_then(Notice::parse).map(|notice| Shown {
        notice,
        field: q.field.as_deref().and_then(|f| FieldName::parse(f).ok()),
        purpose: q.purpose.as_deref().and_then(|p| Purpose::parse(p).ok()).map(|p| p.to_string()),
    })
}

impl Shows {
    /// The subject's export, or its erasure once it is erased.
    fn of(v: &Vault, ctx: &Ctx, s: &SubjectId) -> Result<Shows, VaultError> {
        match v.export(ctx, s) {
            Ok(e) => Ok(Shows::Live(Box::new(e))),
            Err(VaultError::Erased { .. }) => {
                let r = v.erasure_status(ctx, s)?;
                let st = v.erasure_statement(&r);
                Ok(Shows::Erased(r, st))
            }
            Err(e) => Err(e),
        }
    }
}

impl Borrower {
    /// The borrower's page showing `shown`, or the refusal page of a failed vault call.
    fn page(&self, state: &AppState, notice: Option<Shown>, shown: Result<Shows, VaultError>) -> Response {
        let csrf = state.privacy.csrf(&self.session.token);
        let settings = state.vault.settings();
        let c = PageCtx {
            lang: self.lang,
            prefix: state.privacy.public_url().path(),
            token: self.session.token.as_str(),
            csrf: &csrf,
            subject: self.session.subject.as_str(),
            expires_at: self.session.expires_at,
            schema: &settings.schema,
            policy_version: &settings.policy_version,
            notice,
        };
        match shown {
            Ok(Shows::Live(e)) => html(StatusCode::OK, page::subject_page(&c, &e, state.vault.now())),
            Ok(Shows::Erased(r, st)) => html(StatusCode::OK, page::erased_page(&c, &r, &st)),
            Err(e) => self.failed(state, e),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RectifyForm {
    #[serde(default)]
    csrf: String,
    field: String,
    value: String,
}

/// `POST /privacy/s/{token}/rectify`: one field of an application category (P6).
pub async fn rectify(
    state: App,
    b: Borrower,
    headers: HeaderMap,
    form: Result<Form<RectifyForm>, FormRejection>,
) -> Result<Response, Response> {
    let f = b.posted(&state, &headers, form).await?;
    let Some((field, fields)) = f.edit(&state.vault.settings().schema) else {
        return Ok(b.back(&state, Some(Notice::NotEditable), &[]));
    };
    let (ctx, s) = (b.ctx.clone(), b.session.subject.clone());
    Ok(match core(&state.vault, move |v| v.rectify(crate::vault::Mode::Wait, &ctx, &s, &fields).wait()).await {
        Ok(_) => b.back(&state, Some(Notice::Rectified), &[("field", field.as_str())]),
        Err(VaultError::Invalid(_)) => b.back(&state, Some(Notice::RectifyInvalid), &[("field", field.as_str())]),
        // Outside the website caller's write grant (its `writes`): not editable here.
        Err(VaultError::Denied(_)) => b.back(&state, Some(Notice::NotEditable), &[]),
        Err(VaultError::Erased { .. }) => b.back(&state, None, &[]),
        Err(e) => b.failed(&state, e),
    })
}

impl RectifyForm {
    /// The field to set and its new value, if it is one the borrower may edit here.
    fn edit(&self, schema: &crate::schema::Schema) -> Option<(FieldName, BTreeMap<String, serde_json::Value>)> {
        let field = FieldName::parse(&self.field).ok().filter(|fl| editable(schema, fl))?;
        let fields = BTreeMap::from([(field.to_string(), form_value(schema, &field, &self.value))]);
        Some((field, fields))
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
    confirm: Option<String>,
}

/// `POST /privacy/s/{token}/consents/{purpose}/withdraw`: effective on the next read.
pub async fn withdraw(
    state: App,
    b: Borrower,
    ApiPath((_, purpose)): ApiPath<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Response> {
    let purpose = configured_purpose(&state, &purpose).ok_or_else(|| refusal(&state, b.lang, StatusCode::BAD_REQUEST, Refusal::Failed))?;
    b.posted(&state, &headers, form).await?;
    let (ctx, s, p) = (b.ctx.clone(), b.session.subject.clone(), purpose.clone());
    Ok(match core(&state.vault, move |v| v.withdraw_consent(&ctx, &s, p.as_str())).await {
        Ok(_) => b.back(&state, Some(Notice::Withdrawn), &[("purpose", purpose.as_str())]),
        Err(VaultError::Erased { .. }) => b.back(&state, None, &[]),
        Err(e) => b.failed(&state, e),
    })
}

/// `POST /privacy/s/{token}/erasure`: pending while a contract holds it, else at once.
pub async fn erase(state: App, b: Borrower, headers: HeaderMap, form: Result<Form<CsrfForm>, FormRejection>) -> Result<Response, Response> {
    if b.posted(&state, &headers, form).await?.confirm.as_deref() != Some("yes") {
        return Ok(b.back(&state, Some(Notice::Confirm), &[]));
    }
    let (ctx, s) = (b.ctx.clone(), b.session.subject.clone());
    Ok(match core(&state.vault, move |v| v.request_erasure(&ctx, &s)).await {
        Ok(r) if r.status == ErasureStatus::Pending => b.back(&state, Some(Notice::Pending), &[]),
        Ok(_) => b.back(&state, Some(Notice::Erased), &[]),
        Err(e) => b.failed(&state, e),
    })
}

/// `GET /privacy/s/{token}/export`: everything, as the API's export document, for download.
pub async fn export(state: App, b: Borrower) -> Response {
    let (ctx, s) = (b.ctx.clone(), b.session.subject.clone());
    match core(&state.vault, move |v| Ok(ExportResponse::stated(v, v.export(&ctx, &s)?))).await {
        Ok(doc) => download(&doc),
        Err(VaultError::Erased { .. }) => b.back(&state, None, &[]),
        Err(e) => b.failed(&state, e),
    }
}

/// The export document as a JSON attachment named for its subject.
fn download(doc: &ExportResponse) -> Response {
    let name = format!("attachment; filename=\"privacy-export-{}.json\"", doc.subject);
    let body = serde_json::to_vec_pretty(doc).expect("export serialises");
    let disposition = HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("attachment"));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::CONTENT_DISPOSITION, disposition)],
        body,
    )
        .into_response()
}
