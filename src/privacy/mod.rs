//! The borrower's privacy centre (issue #9): a server-rendered page the lender's website links
//! to or embeds, on which a borrower sees what the vault holds on them and exercises their
//! rights (rectify, withdraw consent, export, erase).
//!
//! This module holds what is not HTTP: the session links ([`Sessions`]), the `[privacy]`
//! settings, the texts ([`i18n`]) and the HTML ([`page`]). The handlers are in
//! `api/privacy.rs`; every action goes through the vault core as the website caller named in
//! the link, with [`VIA`] on the audit entry.
//!
//! **Invariants.**
//! - A session link is `base64url(claims) "." base64url(HMAC-SHA256)`, keyed by 32 bytes from
//!   the OS CSPRNG generated at start-up and never stored: links die with the process.
//!   Verification is constant-time (`ring::hmac::verify`); expiry and the subject come only
//!   from verified claims, checked on every request against the vault's clock.
//! - A link names one subject; nothing on the privacy routes names another.
//! - The link is a credential: it is never logged (see [`loggable_path`]) and pages are sent
//!   with `Referrer-Policy: same-origin`, so no other origin ever receives it.
//! - Every value shown is escaped ([`page::esc`]); pages carry no inline script or style, so
//!   the Content-Security-Policy allows only the vault's own assets.

pub mod i18n;
pub mod page;

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub use i18n::Lang;

use crate::domain::{random_hex, CallerName, FieldName, SubjectId};
use crate::schema::{FieldType, Schema};

/// Appended to the audit reason of every action taken through the privacy centre.
pub const VIA: &str = "via the privacy centre, on behalf of the subject";

/// The longest session token accepted; real ones are about 200 characters.
const MAX_TOKEN_LEN: usize = 1024;

/// Domain separation between the two uses of the one key.
const SESSION_TAG: &[u8] = b"qoima.privacy.session\0";
const CSRF_TAG: &[u8] = b"qoima.privacy.csrf\0";

/// `[privacy]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivacySettings {
    /// The base of session links; `None`: the listener's own `http(s)://address`.
    pub public_url: Option<PublicUrl>,
    pub session_minutes: u32,
    /// Origins allowed to embed the page in a frame; empty: none.
    pub frame_ancestors: Vec<String>,
    pub default_language: Lang,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self { public_url: None, session_minutes: 15, frame_ancestors: Vec::new(), default_language: Lang::Kk }
    }
}

/// The base URL the borrower's browser reaches the vault at: `http(s)://host[:port][/prefix]`,
/// no credentials, query or fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    /// Without a trailing slash.
    base: String,
    /// `scheme://host[:port]`, as browsers send it in `Origin`.
    origin: String,
    /// The path prefix, `""` or `/prefix` (when a proxy serves the vault under a path).
    path: String,
}

impl PublicUrl {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        const RULE: &str = "must be an http(s) URL without credentials, query or fragment, e.g. https://vault.example.kz";
        let u = url::Url::parse(text).map_err(|_| RULE)?;
        if !matches!(u.scheme(), "http" | "https")
            || u.host_str().is_none_or(str::is_empty)
            || !u.username().is_empty()
            || u.password().is_some()
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(RULE);
        }
        let path = u.path().trim_end_matches('/').to_owned();
        let origin = u.origin().ascii_serialization();
        Ok(Self { base: format!("{origin}{path}"), origin, path })
    }

    pub fn as_str(&self) -> &str {
        &self.base
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The path prefix for links inside pages (`""` at the root).
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Parses an origin allowed to embed the page: `https://host[:port]`, nothing after it.
pub fn parse_origin(text: &str) -> Result<String, &'static str> {
    const RULE: &str = "must be an origin like https://www.example.kz (scheme, host and port only)";
    let u = url::Url::parse(text).map_err(|_| RULE)?;
    if !matches!(u.scheme(), "http" | "https")
        || u.host_str().is_none_or(str::is_empty)
        || !u.username().is_empty()
        || u.password().is_some()
        || u.path() != "/"
        || u.query().is_some()
        || u.fragment().is_some()
        || text.trim_end_matches('/').len() != u.origin().ascii_serialization().len()
    {
        return Err(RULE);
    }
    Ok(u.origin().ascii_serialization())
}

/// What a session link carries. Signed; read only after the signature is verified.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    v: u8,
    subject: String,
    caller: String,
    exp: i64,
    nonce: String,
}

/// A session token as it travels in the link. A credential: its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(…)")
    }
}

/// A verified session: one subject, the website caller that opened it, until when.
#[derive(Clone, Debug)]
pub struct Session {
    pub subject: SubjectId,
    pub caller: CallerName,
    pub expires_at: OffsetDateTime,
    pub token: SessionToken,
}

/// A newly issued link.
#[derive(Clone, Debug)]
pub struct Issued {
    pub url: String,
    pub token: SessionToken,
    pub expires_at: OffsetDateTime,
}

/// Why a link is refused. Says nothing about which check failed beyond what the borrower
/// needs: expired links name their subject only because their signature held.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Too long, malformed, or not signed by this process's key (links do not outlive a restart).
    #[error("privacy-centre link not valid")]
    Invalid,
    /// Genuine but past its expiry; the subject is named so the refusal can be audited.
    #[error("privacy-centre link expired")]
    Expired { subject: SubjectId },
}

/// Issues and verifies session links, and the CSRF field of their forms.
pub struct Sessions {
    key: hmac::Key,
    url: PublicUrl,
    minutes: u32,
    frame_ancestors: Vec<String>,
    default_language: Lang,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({}, {} min)", self.url.as_str(), self.minutes)
    }
}

impl Sessions {
    /// A fresh key from the OS CSPRNG; `fallback` is the base URL when none is configured.
    pub fn new(settings: &PrivacySettings, fallback: PublicUrl) -> Self {
        let rng = ring::rand::SystemRandom::new();
        // Without the OS random source the vault cannot make keys of any kind.
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("OS random number generator");
        Self {
            key,
            url: settings.public_url.clone().unwrap_or(fallback),
            minutes: settings.session_minutes,
            frame_ancestors: settings.frame_ancestors.clone(),
            default_language: settings.default_language,
        }
    }

    pub fn public_url(&self) -> &PublicUrl {
        &self.url
    }

    pub fn default_language(&self) -> Lang {
        self.default_language
    }

    /// When a session opened now ends.
    pub fn expiry(&self, now: OffsetDateTime) -> OffsetDateTime {
        now + time::Duration::minutes(self.minutes.into())
    }

    /// A link for `subject`, opened by `caller`, valid until `expires_at`.
    pub fn issue(&self, subject: &SubjectId, caller: &CallerName, expires_at: OffsetDateTime) -> Issued {
        let claims = Claims {
            v: 1,
            subject: subject.to_string(),
            caller: caller.to_string(),
            exp: expires_at.unix_timestamp(),
            nonce: random_hex::<16>(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let tag = hmac::sign(&self.key, &[SESSION_TAG, payload.as_bytes()].concat());
        let token = SessionToken(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())));
        Issued { url: format!("{}/privacy/s/{}", self.url.as_str(), token.0), token, expires_at }
    }

    /// Verifies a token: signature first (constant time), then its claims, then expiry.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Session, LinkError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(LinkError::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| LinkError::Invalid)?;
        hmac::verify(&self.key, &[SESSION_TAG, payload.as_bytes()].concat(), &tag).map_err(|_| LinkError::Invalid)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|c: &Claims| c.v == 1)
            .ok_or(LinkError::Invalid)?;
        let subject = SubjectId::parse(&claims.subject).map_err(|_| LinkError::Invalid)?;
        let caller = CallerName::parse(&claims.caller).map_err(|_| LinkError::Invalid)?;
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| LinkError::Invalid)?;
        if now >= expires_at {
            return Err(LinkError::Expired { subject });
        }
        Ok(Session { subject, caller, expires_at, token: SessionToken(token.to_owned()) })
    }

    /// The CSRF field of the session's forms: HMAC(key, tag ‖ token), hex. Only the vault can
    /// compute it, and it changes with every session.
    pub fn csrf(&self, token: &SessionToken) -> String {
        hex::encode(hmac::sign(&self.key, &[CSRF_TAG, token.0.as_bytes()].concat()))
    }

    /// Whether `presented` is the CSRF field of `token` (constant time).
    pub fn csrf_ok(&self, token: &SessionToken, presented: &str) -> bool {
        match hex::decode(presented) {
            Ok(tag) => hmac::verify(&self.key, &[CSRF_TAG, token.0.as_bytes()].concat(), &tag).is_ok(),
            Err(_) => false,
        }
    }

    /// The Content-Security-Policy of every privacy-centre response.
    pub fn csp(&self) -> String {
        let ancestors = if self.frame_ancestors.is_empty() { "'none'".to_string() } else { self.frame_ancestors.join(" ") };
        format!(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
        )
    }

    /// Whether any origin may embed the page (else `X-Frame-Options: DENY` is sent too).
    pub fn embeddable(&self) -> bool {
        !self.frame_ancestors.is_empty()
    }
}

/// The request path as it may be logged: a session token in it is replaced by `…`.
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    match path.find("/privacy/s/") {
        Some(i) => {
            let start = i + "/privacy/s/".len();
            let rest = &path[start..];
            let after = rest.find('/').map(|j| &rest[j..]).unwrap_or("");
            Cow::Owned(format!("{}…{after}", &path[..start]))
        }
        None => Cow::Borrowed(path),
    }
}

/// Whether the borrower may correct `field` here: fields of application categories (what
/// they gave when applying, P2/P6). Contract and technical data are recorded by the lender.
pub fn editable(schema: &Schema, field: &FieldName) -> bool {
    schema.category(field.category()).is_some_and(|c| c.application) && schema.spec(field).is_ok()
}

/// A form's text as the JSON value the schema checks: numbers for numeric fields (when the
/// text is one), text otherwise, so a bad number is refused by the schema's own rule.
pub fn form_value(schema: &Schema, field: &FieldName, text: &str) -> Value {
    let text = text.trim();
    let number = match schema.spec(field).map(|s| s.ty) {
        Ok(FieldType::Integer) => text.parse::<u64>().ok().map(Value::from),
        Ok(FieldType::Number) => match text.parse::<u64>() {
            Ok(n) => Some(Value::from(n)),
            Err(_) => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
        },
        _ => None,
    };
    number.unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

    fn sessions() -> Sessions {
        Sessions::new(&PrivacySettings::default(), PublicUrl::parse("http://127.0.0.1:8750").unwrap())
    }

    fn ids(s: &str, c: &str) -> (SubjectId, CallerName) {
        (SubjectId::parse(s).unwrap(), CallerName::parse(c).unwrap())
    }

    #[test]
    fn a_link_verifies_until_it_expires() {
        let s = sessions();
        let (subject, caller) = ids("borrower-1", "website");
        let issued = s.issue(&subject, &caller, s.expiry(NOW));
        assert!(issued.url.starts_with("http://127.0.0.1:8750/privacy/s/"));
        assert_eq!(issued.expires_at, NOW + time::Duration::minutes(15));
        let session = s.verify(issued.token.as_str(), NOW).unwrap();
        assert_eq!((session.subject, session.caller), (subject.clone(), caller));
        let almost = NOW + time::Duration::minutes(15) - time::Duration::seconds(1);
        assert!(s.verify(issued.token.as_str(), almost).is_ok());
        let at = NOW + time::Duration::minutes(15);
        assert_eq!(s.verify(issued.token.as_str(), at).unwrap_err(), LinkError::Expired { subject });
    }

    #[test]
    fn tampered_foreign_and_malformed_tokens_are_invalid() {
        let s = sessions();
        let (a, caller) = ids("borrower-a", "website");
        let token = s.issue(&a, &caller, s.expiry(NOW)).token.0;
        let (payload, tag) = token.split_once('.').unwrap();
        // Another subject, another expiry: the signature no longer holds.
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        for forged in [claims.replace("borrower-a", "borrower-b"), claims.replace("\"exp\":", "\"exp\":9")] {
            let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged));
            assert_eq!(s.verify(&forged, NOW).unwrap_err(), LinkError::Invalid);
        }
        // A flipped bit anywhere.
        for i in 0..token.len() {
            let mut b = token.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            if let Ok(t) = String::from_utf8(b) {
                if t != token {
                    assert!(s.verify(&t, NOW).is_err(), "flip at {i}");
                }
            }
        }
        // Another vault's key (or this one after a restart).
        assert_eq!(sessions().verify(&token, NOW).unwrap_err(), LinkError::Invalid);
        for bad in ["", ".", "abc", "a.b.c", &"x".repeat(5000), &format!("{payload}."), &format!(".{tag}")] {
            assert_eq!(s.verify(bad, NOW).unwrap_err(), LinkError::Invalid, "{bad:.20}");
        }
    }

    #[test]
    fn csrf_fields_belong_to_their_session() {
        let s = sessions();
        let (a, caller) = ids("a", "website");
        let t1 = s.issue(&a, &caller, s.expiry(NOW)).token;
        let t2 = s.issue(&a, &caller, s.expiry(NOW)).token;
        assert_ne!(t1, t2, "a nonce makes every link unique");
        let c1 = s.csrf(&t1);
        assert!(s.csrf_ok(&t1, &c1));
        assert!(!s.csrf_ok(&t2, &c1));
        assert!(!s.csrf_ok(&t1, ""));
        assert!(!s.csrf_ok(&t1, "zz"));
        assert!(!s.csrf_ok(&t1, &c1[..62]));
        assert!(!sessions().csrf_ok(&t1, &c1));
        assert_eq!(format!("{t1:?}"), "SessionToken(…)");
    }

    #[test]
    fn public_urls_and_origins() {
        let u = PublicUrl::parse("https://vault.example.kz/qoima/").unwrap();
        assert_eq!((u.as_str(), u.origin(), u.path()), ("https://vault.example.kz/qoima", "https://vault.example.kz", "/qoima"));
        let u = PublicUrl::parse("http://127.0.0.1:8750").unwrap();
        assert_eq!((u.as_str(), u.origin(), u.path()), ("http://127.0.0.1:8750", "http://127.0.0.1:8750", ""));
        for bad in ["vault.example.kz", "ftp://x", "https://u:p@x", "https://x/?a=1", "https://x/#f", "https://"] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_origin("https://www.100tenge.kz").unwrap(), "https://www.100tenge.kz");
        assert_eq!(parse_origin("https://www.100tenge.kz/").unwrap(), "https://www.100tenge.kz");
        assert_eq!(parse_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        for bad in ["*", "'self'", "https://x/path", "www.x.kz", "https://x?q", "javascript:alert(1)", "https://a b"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csp_names_the_configured_ancestors() {
        let s = sessions();
        assert!(s.csp().ends_with("frame-ancestors 'none'"));
        assert!(!s.embeddable());
        let settings = PrivacySettings { frame_ancestors: vec!["https://a.kz".into(), "https://b.kz".into()], ..Default::default() };
        let s = Sessions::new(&settings, PublicUrl::parse("http://x").unwrap());
        assert!(s.csp().ends_with("frame-ancestors https://a.kz https://b.kz"));
        assert!(s.csp().starts_with("default-src 'none'; style-src 'self'; script-src 'self';"));
    }

    #[test]
    fn tokens_never_reach_the_log() {
        assert_eq!(loggable_path("/privacy/s/abc.def"), "/privacy/s/…");
        assert_eq!(loggable_path("/privacy/s/abc.def/consents/advertising/withdraw"), "/privacy/s/…/consents/advertising/withdraw");
        assert_eq!(loggable_path("/v1/subjects/x"), "/v1/subjects/x");
        assert_eq!(loggable_path("/privacy/assets/privacy.css"), "/privacy/assets/privacy.css");
    }

    #[test]
    fn editable_fields_and_form_values() {
        let schema = Schema::default();
        let f = |n: &str| FieldName::parse(n).unwrap();
        assert!(editable(&schema, &f("identity.full_name")));
        assert!(editable(&schema, &f("questionnaire.monthly_income")));
        assert!(!editable(&schema, &f("contract.amount")));
        assert!(!editable(&schema, &f("technical.ip")));
        assert!(!editable(&schema, &f("identity.shoe_size")));
        assert_eq!(form_value(&schema, &f("questionnaire.monthly_income"), " 350000 "), Value::from(350000u64));
        assert_eq!(form_value(&schema, &f("questionnaire.monthly_income"), "1.5"), serde_json::json!(1.5));
        assert_eq!(form_value(&schema, &f("questionnaire.dependants"), "2"), Value::from(2u64));
        assert_eq!(form_value(&schema, &f("questionnaire.dependants"), "two"), Value::from("two"));
        assert_eq!(form_value(&schema, &f("identity.phone"), "+77011234567"), Value::from("+77011234567"));
    }
}
