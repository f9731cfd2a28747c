//! Extractors: caller authentication, and JSON/query/path extractors whose rejections are the
//! API's own problem documents (never echoing values). The middleware is in `edge.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::assertion::AssertionError;
use crate::domain::RequestId;
use crate::vault::{canonical_json, Answer, Ctx, Idempotency, IdempotencyKey, Mode, Vault, VaultError};

fn request_id_of(parts: &Parts) -> RequestId {
    parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::generate)
}

/// The client's own id of the request, if it sent a plain one ([`super::edge`]).
pub(super) fn client_request_id_of(parts: &Parts) -> Option<RequestId> {
    parts.extensions.get::<super::edge::ClientRequestId>().map(|c| c.0.clone())
}

/// An authenticated caller and the request it makes. Missing or unknown tokens are refused
/// with 401, and the attempt is audited when it aims at a subject or at keys or audit.
pub struct Authed(pub Ctx);

fn bearer(parts: &Parts) -> Option<&str> {
    // Authorization is a singleton: with two, proxies and this server could each pick a
    // different one, so a request carrying more than one is unauthenticated.
    let mut all = parts.headers.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let request_id = request_id_of(parts);
        let client_request_id = client_request_id_of(parts);
        // A verified client certificate (HTTPS with a client CA) that a caller lists.
        if let Some(cert) = parts.extensions.get::<crate::tls::ClientCert>() {
            if let Some(caller) = state.callers.authenticate_certificate(&cert.0) {
                let ctx = Ctx { caller: caller.clone(), request_id, client_request_id, via: None, idempotency: None };
                check_subject_assertion(parts, state, &ctx).await?;
                return Ok(Authed(ctx));
            }
        }
        let token = bearer(parts);
        if let Some(caller) = token.and_then(|t| state.callers.authenticate(t)) {
            let ctx = Ctx { caller: caller.clone(), request_id, client_request_id, via: None, idempotency: None };
            check_subject_assertion(parts, state, &ctx).await?;
            return Ok(Authed(ctx));
        }
        let reason = if token.is_some() { "unknown bearer token" } else { "missing bearer token" };
        let path = parts.uri.path().to_owned();
        let subject = path.strip_prefix("/v1/subjects/").map(|rest| rest.split('/').next().unwrap_or_default().to_owned());
        let vault = state.vault.clone();
        let rid = request_id.clone();
        // Best effort: an unauthenticated caller gets 401 whether or not this is recorded.
        let _ = tokio::task::spawn_blocking(move || vault.record_unauthenticated(subject.as_deref(), reason, &rid)).await;
        Err(ApiError::unauthorized(format!("{reason}; send Authorization: Bearer <token>")))
    }
}

/// Who asks for `/metrics` or `/readyz`. Anyone may learn whether the vault is healthy; the
/// detail (counts that approach the number of borrowers, key generations, store error text) is
/// for a caller that may observe (role monitoring or security). A request with no credentials
/// is public; one with credentials is authenticated as anywhere else (401, 403).
pub enum Scrape {
    Public,
    Detailed,
}

impl FromRequestParts<AppState> for Scrape {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let known_cert =
            parts.extensions.get::<crate::tls::ClientCert>().is_some_and(|c| state.callers.authenticate_certificate(&c.0).is_some());
        if !known_cert && !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(Scrape::Public);
        }
        let Authed(ctx) = Authed::from_request_parts(parts, state).await?;
        run(&state.vault, move |v| v.may_observe(&ctx)).await?;
        Ok(Scrape::Detailed)
    }
}

/// The subject a `/v1/subjects/{id}…` request is about (the path's own text).
fn subject_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/subjects/").map(|rest| rest.split('/').next().unwrap_or_default())
}

/// A caller configured with `subject_assertion` acts for one borrower at a time: every request
/// about a subject carries an assertion for that subject (`Qoima-Subject-Assertion`), checked
/// here before anything else. A refusal is 401 `subject-assertion`, audited without the token.
async fn check_subject_assertion(parts: &Parts, state: &AppState, ctx: &Ctx) -> Result<(), ApiError> {
    let Some(verifier) = state.callers.subject_assertion(&ctx.caller) else { return Ok(()) };
    let Some(subject) = subject_in_path(parts.uri.path()) else { return Ok(()) };
    let mut all = parts.headers.get_all(crate::assertion::HEADER).iter();
    // The claim is compared with the path's own text, which must then be the id the handler
    // sees: a plain subject id (percent-encoding would decode to another).
    let plain = crate::domain::SubjectId::parse(subject).is_ok();
    let checked = match (all.next(), all.next()) {
        (None, _) => Err(AssertionError::Missing),
        _ if !plain => Err(AssertionError::WrongSubject),
        (Some(_), Some(_)) => Err(AssertionError::Several),
        (Some(v), None) => match v.to_str() {
            Ok(token) => verifier.verify(token.trim(), subject, state.vault.now()),
            Err(_) => Err(AssertionError::Malformed),
        },
    };
    let Err(why) = checked else { return Ok(()) };
    let (vault, ctx, reason) = (state.vault.clone(), ctx.clone(), why.to_string());
    let subject = crate::domain::SubjectId::parse(subject).ok();
    // Best effort, as for unauthenticated requests: the request is refused either way.
    let _ = tokio::task::spawn_blocking(move || vault.record_assertion_refused(&ctx, subject.as_ref().map(|s| s.as_str()), &reason)).await;
    Err(match why {
        AssertionError::CacheFull { retry_after_secs } => ApiError {
            retry_after: Some(retry_after_secs),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why.to_string())
        },
        why => ApiError::new(StatusCode::UNAUTHORIZED, "subject-assertion", why.to_string()),
    })
}

/// The request header naming an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header marking the first answer to a key, given again.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A mutating request's `Idempotency-Key`, if it sent one, with the method, route and path
/// its fingerprint covers. A bad key (empty, over 255 characters, not printable ASCII, or sent
/// twice) is 400, before anything is done.
pub struct IdemKey(Option<(IdempotencyKey, String, String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for IdemKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut all = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let value = match (all.next(), all.next()) {
            (None, _) => return Ok(IdemKey(None)),
            (Some(_), Some(_)) => return Err(ApiError::bad_request("send at most one Idempotency-Key")),
            (Some(v), None) => v,
        };
        // Not visible ASCII (`to_str` fails): as unprintable as a control character.
        let key = IdempotencyKey::parse(value.to_str().unwrap_or("\0"))?;
        let path = parts.uri.path().to_owned();
        let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| path.clone());
        Ok(IdemKey(Some((key, parts.method.as_str().to_owned(), route, path))))
    }
}

impl IdemKey {
    /// `ctx` carrying this key with the fingerprint of the request (method, route, path and
    /// `body`, canonical), and the marker for the answer.
    pub fn bind(self, mut ctx: Ctx, body: &impl Serialize) -> (Ctx, Replayed) {
        let Some((key, method, route, path)) = self.0 else { return (ctx, Replayed(None)) };
        let body = serde_json::to_value(body).map(|v| canonical_json(&v)).unwrap_or_default();
        let idem = Idempotency::new(key, Idempotency::fingerprint(&method, &route, &path, &body));
        ctx.idempotency = Some(idem.clone());
        (ctx, Replayed(Some(idem)))
    }
}

/// Marks an answer `Idempotent-Replayed: true` when the vault gave the first answer to the
/// request's key again.
pub struct Replayed(Option<Idempotency>);

impl Replayed {
    pub fn mark(self, answer: impl IntoResponse) -> Response {
        let mut res = answer.into_response();
        if self.0.is_some_and(|i| i.replayed()) {
            res.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        res
    }
}

/// Runs a vault operation that takes a [`Mode`]: first in [`Mode::NoWait`] here, on the async
/// worker, and only if that would block, again in [`Mode::Wait`] on a blocking thread; then
/// awaits its answer's durable audit entry without holding a thread (`vault::answer`).
pub async fn answer<T, F>(vault: &Arc<Vault>, op: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Fn(&Vault, Mode) -> Answer<T> + Send + 'static,
{
    let first = op(vault, Mode::NoWait);
    let answer = if first.would_block() { run(vault, move |v| Ok(op(v, Mode::Wait))).await? } else { first };
    Ok(answer.durable().await?)
}

/// Runs a blocking vault call off the async executor's threads.
pub async fn run<T, F>(vault: &Arc<Vault>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Vault) -> Result<T, VaultError> + Send + 'static,
{
    let vault = vault.clone();
    match tokio::task::spawn_blocking(move || f(&vault)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "vault task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the request id identifies it in the vault's log",
            ))
        }
    }
}

/// A JSON body. Wrong content type 415, too large 413, malformed or unknown fields 400. Error
/// details name keys and positions, never values (which may be personal data).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json"))
            .unwrap_or(false);
        if !json {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "send Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", "request body exceeds the configured limit")
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(json_error)
    }
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    let detail = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("malformed JSON at {at}"),
        Category::Data => {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or_default();
            if msg.starts_with("unknown field") || msg.starts_with("missing field") {
                format!("{} (at {at})", names_only(msg))
            } else if msg.starts_with("unknown variant") {
                // serde names the value sent ("unknown variant `…`, expected …"): keep only
                // what was expected, never the value.
                let expected = msg.rfind(", expected").map(|i| &msg[i..]).unwrap_or_default();
                format!("unknown variant{expected} (at {at})")
            } else {
                format!("a value has the wrong type or shape at {at}")
            }
        }
    };
    ApiError::bad_request(detail)
}

/// serde's "unknown field `X`, expected …" names the key the client sent. Keys are names, but
/// a client that put personal data in one must not get it back: a key is repeated only when it
/// looks like an identifier.
fn names_only(msg: &str) -> String {
    let Some(start) = msg.find('`') else { return msg.to_owned() };
    let Some(len) = msg[start + 1..].find('`') else { return msg.to_owned() };
    let name = &msg[start + 1..start + 1 + len];
    let plain = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        msg.to_owned()
    } else {
        format!("{}(not shown){}", &msg[..start], &msg[start + 2 + len..])
    }
}

/// Query parameters, rejected as a problem document.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri).map(|q| ApiQuery(q.0)).map_err(|e| {
            let text = e.body_text();
            let text = text.trim_start_matches("Failed to deserialize query string: ");
            ApiError::bad_request(format!("bad query string: {}", names_only(text)))
        })
    }
}

/// Path parameters, rejected as a problem document.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| ApiError::bad_request("malformed path parameter"))
    }
}

/// Lets handlers name the state without importing axum's extractor.
pub type App = State<AppState>;

#[cfg(test)]
mod tests {
    use super::names_only;

    #[test]
    fn only_identifier_like_keys_are_repeated() {
        assert_eq!(names_only("unknown field `colour`, expected `purpose`"), "unknown field `colour`, expected `purpose`");
        assert_eq!(names_only("unknown field `Aigerim +7701`, expected `fields`"), "unknown field (not shown), expected `fields`");
        assert_eq!(names_only("missing field `fields`"), "missing field `fields`");
    }
}
