//! `[[callers]]`: who may call, how each authenticates, and what each is granted.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file::{self, RawCaller};
use super::paths::resolve;
use crate::assertion::{AssertionSettings, SubjectAssertions, DEFAULT_MAX_AGE_SECS, DEFAULT_SUBJECT_CLAIM};
use crate::auth::{CallerEntry, Callers};
use crate::domain::{CallerName, Role};
use crate::policy::{Caller, Purposes};
use crate::schema::Schema;

/// What the callers must not share: names, and token or certificate digests.
#[derive(Default)]
struct Taken {
    names: BTreeSet<CallerName>,
    digests: BTreeSet<[u8; 32]>,
}

/// What a caller's grants are checked against, and where its files are.
struct Known<'a> {
    purposes: &'a Purposes,
    schema: &'a Schema,
    base: &'a Path,
}

/// Every `[[callers]]` entry: named once, with a credential no other caller shares, roles,
/// and grants that name configured purposes and schema fields.
pub(super) fn callers(
    raw: Vec<Spanned<RawCaller>>,
    purposes: &Purposes,
    schema: &Schema,
    base: &Path,
    src: Source<'_>,
) -> Result<Callers, ConfigError> {
    let known = Known { purposes, schema, base };
    let mut taken = Taken::default();
    let entries = raw.into_iter().map(|c| caller(c, &known, &mut taken, src)).collect::<Result<Vec<_>, _>>()?;
    Ok(Callers::new(entries))
}

fn caller(raw: Spanned<RawCaller>, known: &Known<'_>, taken: &mut Taken, src: Source<'_>) -> Result<CallerEntry, ConfigError> {
    let at = raw.span().start;
    let c = raw.into_inner();
    let name = &c.name;
    let digest = |field: &Option<Spanned<String>>, what: &str| -> Result<Option<[u8; 32]>, ConfigError> {
        let Some(f) = field else { return Ok(None) };
        let mut digest = [0u8; 32];
        let text = f.get_ref();
        if text.len() != 64 || hex::decode_to_slice(text, &mut digest).is_err() {
            return Err(src.at(f.span().start, format!("caller {name}: {what} must be 64 hex characters (a SHA-256)")));
        }
        Ok(Some(digest))
    };
    let token = digest(&c.token_sha256, "token_sha256")?;
    let cert = digest(&c.client_cert_sha256, "client_cert_sha256")?;
    if token.is_none() && cert.is_none() {
        return Err(src.at(at, format!("caller {name} needs token_sha256 or client_cert_sha256")));
    }
    if !taken.names.insert(name.clone()) {
        return Err(src.at(at, format!("caller {name} is defined twice")));
    }
    for d in token.iter().chain(cert.iter()) {
        if !taken.digests.insert(*d) {
            return Err(src.at(at, format!("caller {name} shares its token or certificate with another caller")));
        }
    }
    if c.roles.is_empty() {
        return Err(src.at(at, format!("caller {name} has no roles")));
    }
    let mut granted = BTreeSet::new();
    for p in c.purposes {
        let pspan = p.span();
        let p = p.into_inner();
        if known.purposes.get(&p).is_none() {
            return Err(src.at(pspan.start, format!("caller {name}: unknown purpose {p}")));
        }
        granted.insert(p);
    }
    let max_reads_per_minute = match c.max_reads_per_minute {
        Some(m) if *m.get_ref() == 0 => {
            return Err(
                src.at(m.span().start, format!("caller {name}: max_reads_per_minute must be at least 1 (leave it out for no limit)"))
            )
        }
        m => m.map(|m| m.into_inner()),
    };
    let roles: BTreeSet<Role> = c.roles.into_iter().collect();
    let writes = c.writes.map(|w| writes(w, name, &roles, known.schema, src)).transpose()?;
    let subject_assertion = c.subject_assertion.map(|a| assertion(a, name, &roles, known.base, src)).transpose()?;
    Ok(CallerEntry {
        caller: Arc::new(Caller { name: c.name, roles, purposes: granted }),
        token_sha256: token,
        client_cert_sha256: cert,
        max_reads_per_minute,
        writes,
        subject_assertion,
    })
}

/// `writes`: patterns as in purposes, checked by the same rule; contract fields only for a
/// service (the website never writes them).
fn writes(
    raw: Spanned<Vec<String>>,
    name: &CallerName,
    roles: &BTreeSet<Role>,
    schema: &Schema,
    src: Source<'_>,
) -> Result<Vec<String>, ConfigError> {
    let at = raw.span().start;
    let w = raw.into_inner();
    if let Some(bad) = w.iter().find(|f| !schema.pattern_is_known(f)) {
        return Err(src.at(at, format!("caller {name}: writes names `{bad}`, which is not in the schema")));
    }
    let contract = w.iter().find(|f| f.split('.').next() == Some("contract"));
    if let (Some(bad), false) = (contract, roles.contains(&Role::Service)) {
        return Err(src.at(at, format!("caller {name}: writes names `{bad}`; the website never writes contract fields")));
    }
    Ok(w)
}

/// `subject_assertion`: for website callers; its JWKS file is read now, so a bad one stops
/// start-up rather than every request.
fn assertion(
    raw: Spanned<file::AssertionSettings>,
    name: &CallerName,
    roles: &BTreeSet<Role>,
    base: &Path,
    src: Source<'_>,
) -> Result<Arc<SubjectAssertions>, ConfigError> {
    let at = raw.span().start;
    if !roles.contains(&Role::Website) {
        return Err(src.at(at, format!("caller {name}: subject_assertion is for website callers")));
    }
    let a = raw.into_inner();
    let settings = AssertionSettings {
        jwks_file: resolve(base, a.jwks_file),
        issuer: a.issuer,
        audience: a.audience,
        max_age_secs: a.max_age_secs.unwrap_or(DEFAULT_MAX_AGE_SECS),
        subject_claim: a.subject_claim.unwrap_or_else(|| DEFAULT_SUBJECT_CLAIM.to_string()),
    };
    let v = SubjectAssertions::load(settings).map_err(|msg| src.at(at, format!("caller {name}: {msg}")))?;
    Ok(Arc::new(v))
}
