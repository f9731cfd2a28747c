//! Subject assertions: a website caller configured with `subject_assertion` acts for one
//! borrower at a time. Each request about a subject carries `Qoima-Subject-Assertion: <JWS>`,
//! a JWT (RFC 7519) the lender's identity provider signed for the signed-in borrower; the vault
//! checks it against the provider's public keys (a JWKS file read at start-up) and the claims
//! against the vault's own clock. `jsonwebtoken` parses the JWS and checks the signature; this
//! module picks the key, checks the claims and refuses replays.
//!
//! Nothing here logs, stores or returns any part of a token: errors name the rule broken, the
//! replay cache keeps SHA-256 digests of `jti`s.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The request header that carries the assertion.
pub const HEADER: &str = "qoima-subject-assertion";

/// Clock skew allowed between the identity provider and the vault, on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 30;

/// Live `jti`s remembered per caller. With `max_age_secs = 300` that admits 100,000 assertions
/// in any five minutes (over 300 a second); the cache holds 32-byte digests, a few MiB at most.
pub const REPLAY_CAPACITY: usize = 100_000;

/// Longest `jti` accepted (the digest is kept, but the claim is parsed first).
const MAX_JTI: usize = 256;

/// The `max_age_secs` of a `subject_assertion` that names none.
pub const DEFAULT_MAX_AGE_SECS: u32 = 300;

/// The `subject_claim` of a `subject_assertion` that names none.
pub const DEFAULT_SUBJECT_CLAIM: &str = "sub";

/// How a website caller's subject assertions are checked (`[[callers]] subject_assertion`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionSettings {
    /// The identity provider's public keys (a JWKS document, RFC 7517).
    pub jwks_file: std::path::PathBuf,
    /// The `iss` the assertions must carry.
    pub issuer: String,
    /// The `aud` the assertions must carry (the vault, as the provider names it).
    pub audience: String,
    /// Longest lifetime accepted: `exp` no later than `iat` + this.
    pub max_age_secs: u32,
    /// The claim that names the subject.
    pub subject_claim: String,
}

/// Why an assertion was refused. The texts go into the 401's detail and the audit entry; they
/// name the rule, never any part of the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionError {
    #[error("missing subject assertion; send Qoima-Subject-Assertion: <JWS signed by the identity provider>")]
    Missing,
    #[error("more than one subject assertion")]
    Several,
    #[error("subject assertion is not a well-formed JWS")]
    Malformed,
    #[error("subject assertion names no key id (kid) the vault knows")]
    UnknownKey,
    #[error("subject assertion algorithm is not the one of its key (EdDSA, ES256 or RS256)")]
    Algorithm,
    #[error("subject assertion signature does not verify")]
    Signature,
    #[error("subject assertion claim {0} is missing or not of its type")]
    Claim(&'static str),
    #[error("subject assertion issuer is not the configured one")]
    Issuer,
    #[error("subject assertion audience is not this vault")]
    Audience,
    #[error("subject assertion expired")]
    Expired,
    #[error("subject assertion not valid yet (nbf)")]
    NotYetValid,
    #[error("subject assertion issued in the future (iat)")]
    IssuedInFuture,
    #[error("subject assertion lives longer than max_age_secs (exp after iat + max_age_secs)")]
    TooLong,
    #[error("subject assertion is for another subject")]
    WrongSubject,
    #[error("subject assertion was already used (jti replayed)")]
    Replayed,
    /// Every slot holds a live assertion: refuse rather than forget one (which would let it be
    /// replayed).
    #[error("too many live subject assertions; retry in {retry_after_secs} s")]
    CacheFull { retry_after_secs: u64 },
}

/// One accepted key of the JWKS file.
struct Key {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// Live `jti` digests and their expiry, oldest expiry first. Bounded by count: when full,
/// only expired entries are evicted, so a live assertion is never forgotten.
#[derive(Default)]
struct ReplayCache {
    by_digest: HashMap<[u8; 32], i64>,
    by_expiry: BTreeSet<(i64, [u8; 32])>,
}

impl ReplayCache {
    /// Records `digest` live until `exp`, unless it already is (a replay) or there is no room.
    fn admit(&mut self, digest: [u8; 32], exp: i64, now: i64, capacity: usize) -> Result<(), AssertionError> {
        while let Some(&(e, d)) = self.by_expiry.first() {
            if e + LEEWAY_SECS > now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_digest.remove(&d);
        }
        if self.by_digest.contains_key(&digest) {
            return Err(AssertionError::Replayed);
        }
        if self.by_digest.len() >= capacity {
            let oldest = self.by_expiry.first().map(|(e, _)| *e).unwrap_or(now);
            return Err(AssertionError::CacheFull { retry_after_secs: (oldest + LEEWAY_SECS - now).max(1) as u64 });
        }
        self.by_digest.insert(digest, exp);
        self.by_expiry.insert((exp, digest));
        Ok(())
    }
}

/// The verifier of one caller's assertions.
pub struct SubjectAssertions {
    settings: AssertionSettings,
    keys: Vec<Key>,
    replay: Mutex<ReplayCache>,
    capacity: usize,
}

impl std::fmt::Debug for SubjectAssertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("SubjectAssertions").field("settings", &self.settings).field("kids", &kids).finish()
    }
}

/// The algorithm a JWK is for, if it is one the vault accepts: Ed25519 (EdDSA), P-256 (ES256)
/// or RSA of at least 2048 bits (RS256). A key whose `alg` or `use` says otherwise is not.
fn accepted(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(p) => {
            use base64::Engine;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.n.trim_end_matches('=')).ok()?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return None;
            }
            Algorithm::RS256
        }
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => return Some(alg),
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(_) => return None,
    };
    (declared == alg).then_some(alg)
}

impl SubjectAssertions {
    /// Loads the JWKS file: every key with a `kid` that is EdDSA, ES256 or RS256 (others, such
    /// as encryption keys, are passed over). At least one must be usable.
    pub fn load(settings: AssertionSettings) -> Result<Self, String> {
        Self::with_capacity(settings, REPLAY_CAPACITY)
    }

    fn with_capacity(settings: AssertionSettings, capacity: usize) -> Result<Self, String> {
        if settings.issuer.trim().is_empty() || settings.audience.trim().is_empty() {
            return Err("subject_assertion needs a non-empty issuer and audience".into());
        }
        if !(1..=3600).contains(&settings.max_age_secs) {
            return Err("subject_assertion.max_age_secs must be between 1 and 3600 (an assertion is a credential: keep it short)".into());
        }
        if settings.subject_claim.is_empty() {
            return Err("subject_assertion.subject_claim must name a claim".into());
        }
        let keys = read_jwks(&settings.jwks_file)?;
        Ok(Self { settings, keys, replay: Mutex::new(ReplayCache::default()), capacity })
    }

    /// Checks `token` for a request about `subject` at `now`, and records its `jti`.
    pub fn verify(&self, token: &str, subject: &str, now: OffsetDateTime) -> Result<(), AssertionError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AssertionError::Malformed)?;
        let kid = header.kid.as_deref().ok_or(AssertionError::UnknownKey)?;
        let key = self.keys.iter().find(|k| k.kid == kid).ok_or(AssertionError::UnknownKey)?;
        if header.alg != key.alg {
            return Err(AssertionError::Algorithm);
        }
        // The signature only; every claim is checked below, against the vault's clock.
        let mut v = Validation::new(key.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => AssertionError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AssertionError::Algorithm,
                _ => AssertionError::Malformed,
            }
        })?;
        self.check_claims(&claims.claims, subject, now.unix_timestamp())
    }

    fn check_claims(&self, c: &Map<String, Value>, subject: &str, now: i64) -> Result<(), AssertionError> {
        let text = |name: &'static str| c.get(name).and_then(Value::as_str).ok_or(AssertionError::Claim(name));
        let time = |name: &'static str| c.get(name).and_then(Value::as_i64).ok_or(AssertionError::Claim(name));
        if text("iss")? != self.settings.issuer {
            return Err(AssertionError::Issuer);
        }
        let aud_ok = match c.get("aud") {
            Some(Value::String(a)) => *a == self.settings.audience,
            Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(self.settings.audience.as_str())),
            _ => return Err(AssertionError::Claim("aud")),
        };
        if !aud_ok {
            return Err(AssertionError::Audience);
        }
        let (exp, iat) = (time("exp")?, time("iat")?);
        if exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(AssertionError::Expired);
        }
        if c.contains_key("nbf") && time("nbf")? > now.saturating_add(LEEWAY_SECS) {
            return Err(AssertionError::NotYetValid);
        }
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err(AssertionError::IssuedInFuture);
        }
        if exp > iat.saturating_add(i64::from(self.settings.max_age_secs)) {
            return Err(AssertionError::TooLong);
        }
        let claimed = c.get(self.settings.subject_claim.as_str()).and_then(Value::as_str).ok_or(AssertionError::Claim("subject"))?;
        if claimed != subject {
            return Err(AssertionError::WrongSubject);
        }
        let jti = text("jti")?;
        if jti.is_empty() || jti.len() > MAX_JTI {
            return Err(AssertionError::Claim("jti"));
        }
        let digest = crate::auth::token_digest(jti);
        self.replay.lock().admit(digest, exp, now, self.capacity)
    }
}

/// The usable keys of a JWKS file.
fn read_jwks(path: &Path) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("subject_assertion.jwks_file {shown}: cannot read: {e}"))?;
    let set: Set = serde_json::from_slice(&bytes).map_err(|_| format!("subject_assertion.jwks_file {shown}: not a JWKS document"))?;
    let mut keys: Vec<Key> = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), accepted(&jwk)) else { continue };
        if keys.iter().any(|k| k.kid == kid) {
            return Err(format!("subject_assertion.jwks_file {shown}: two keys with kid {kid}"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| format!("subject_assertion.jwks_file {shown}: key {kid} is malformed"))?;
        keys.push(Key { kid, alg, key });
    }
    if keys.is_empty() {
        return Err(format!("subject_assertion.jwks_file {shown}: no usable key (EdDSA, ES256 or RS256 of 2048 bits or more, with a kid)"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn the_replay_cache_refuses_replays_and_forgets_only_the_expired() {
        let mut c = ReplayCache::default();
        assert_eq!(c.admit(d(1), 100, 0, 2), Ok(()));
        assert_eq!(c.admit(d(1), 100, 0, 2), Err(AssertionError::Replayed));
        assert_eq!(c.admit(d(2), 200, 0, 2), Ok(()));
        // Full of live entries: refused, and neither is forgotten.
        assert!(matches!(c.admit(d(3), 200, 10, 2), Err(AssertionError::CacheFull { retry_after_secs: 120 })));
        assert_eq!(c.admit(d(1), 100, 10, 2), Err(AssertionError::Replayed));
        // Once the first has expired (with the leeway), its slot is free, and a replay of it
        // would be refused by its exp anyway.
        assert_eq!(c.admit(d(3), 200, 100 + LEEWAY_SECS, 2), Ok(()));
        assert_eq!(c.admit(d(2), 200, 100 + LEEWAY_SECS, 2), Err(AssertionError::Replayed));
        assert_eq!(c.by_digest.len(), c.by_expiry.len());
    }
}
