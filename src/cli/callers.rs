//! `qoima callers add`, with its subject-assertion options.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{absolute, Failure};
use crate::config::{process_env, Config};
use crate::domain::CallerName;

/// `callers add … --role website`: require a subject assertion (all of jwks, issuer and
/// audience, or none), written as the entry's `subject_assertion = { … }`.
#[derive(clap::Args, Debug)]
pub struct SubjectAssertionArgs {
    /// Website callers: every request about a subject must carry an assertion signed by one
    /// of these keys (the identity provider's JWKS file, checked now).
    #[arg(long = "subject-assertion-jwks", value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// The `iss` the assertions must carry.
    #[arg(long = "subject-assertion-issuer", value_name = "ISS")]
    issuer: Option<String>,
    /// The `aud` the assertions must carry.
    #[arg(long = "subject-assertion-audience", value_name = "AUD")]
    audience: Option<String>,
    /// Longest assertion lifetime accepted, in seconds [default: 300].
    #[arg(long = "subject-assertion-max-age", value_name = "SECS")]
    max_age: Option<u32>,
    /// The claim that names the subject [default: sub].
    #[arg(long = "subject-assertion-claim", value_name = "CLAIM")]
    claim: Option<String>,
}

impl SubjectAssertionArgs {
    /// The `subject_assertion = { … }` line, once the JWKS file has been read; `None` without
    /// the options.
    pub(super) fn entry_line(&self, roles: &[String]) -> Result<Option<String>, Failure> {
        const TOGETHER: &str =
            "--subject-assertion-jwks, --subject-assertion-issuer and --subject-assertion-audience go together (all three or none)";
        let (jwks, issuer, audience) = match (&self.jwks, &self.issuer, &self.audience) {
            (None, None, None) if self.max_age.is_none() && self.claim.is_none() => return Ok(None),
            (Some(j), Some(i), Some(a)) => (j, i, a),
            _ => return Err(Failure(2, TOGETHER.into())),
        };
        if !roles.iter().any(|r| r == "website") {
            return Err(Failure(2, "--subject-assertion-* is for a caller with role website".into()));
        }
        let settings = crate::assertion::AssertionSettings {
            jwks_file: absolute(jwks)?,
            issuer: issuer.clone(),
            audience: audience.clone(),
            max_age_secs: self.max_age.unwrap_or(300),
            subject_claim: self.claim.clone().unwrap_or_else(|| "sub".into()),
        };
        // The loader's messages name the key and the file (`subject_assertion.jwks_file …`).
        crate::assertion::SubjectAssertions::load(settings.clone()).map_err(|msg| Failure(2, msg))?;
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        Ok(Some(format!(
            "subject_assertion = {{ jwks_file = {}, issuer = {}, audience = {}, max_age_secs = {}, subject_claim = {} }}\n",
            s(&settings.jwks_file.to_string_lossy()),
            s(&settings.issuer),
            s(&settings.audience),
            settings.max_age_secs,
            s(&settings.subject_claim)
        )))
    }
}

pub(super) fn add_caller(
    config: &Option<PathBuf>,
    name: &str,
    roles: &[String],
    purposes: &[String],
    max_reads_per_minute: Option<u32>,
    subject_assertion: Option<String>,
) -> Result<ExitCode, Failure> {
    let name = CallerName::parse(name).map_err(|e| Failure(2, e.to_string()))?;
    let token = crate::config::new_token();
    let quote = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let mut block = format!(
        "\n[[callers]]\nname         = \"{name}\"\ntoken_sha256 = \"{}\"\nroles        = [{}]\npurposes     = [{}]\n",
        hex::encode(crate::auth::token_digest(&token)),
        quote(roles),
        quote(purposes)
    );
    if let Some(n) = max_reads_per_minute {
        block.push_str(&format!("max_reads_per_minute = {n}\n"));
    }
    block.push_str(subject_assertion.as_deref().unwrap_or_default());
    match config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Failure(3, format!("{}: {e}", path.display())))?;
            let base = path.parent().map(PathBuf::from).unwrap_or_default();
            let combined = format!("{text}{block}");
            Config::parse(&combined, &path.display().to_string(), &base, &process_env).map_err(|e| Failure(3, e.to_string()))?;
            std::fs::write(path, combined).map_err(|e| Failure(3, format!("{}: {e}", path.display())))?;
            eprintln!("caller {name} added to {} (digest only); restart the vault to load it", path.display());
        }
        None => println!("# add to your configuration:{block}"),
    }
    println!("token for {name} (shown once, stored nowhere): {token}");
    Ok(ExitCode::SUCCESS)
}
