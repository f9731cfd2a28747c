//! `[privacy]`: the borrower's privacy centre (docs/privacy-centre.md).

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file::RawPrivacy;
use crate::privacy::{parse_origin, Lang, PrivacySettings, PublicUrl};

/// `[privacy]`, or the defaults without one; an error names the section's line.
pub(super) fn privacy(raw: Option<Spanned<RawPrivacy>>, src: Source<'_>) -> Result<PrivacySettings, ConfigError> {
    match raw {
        None => Ok(PrivacySettings::default()),
        Some(p) => {
            let at = p.span().start;
            settings(p.into_inner()).map_err(|rule| src.at(at, rule))
        }
    }
}

/// A public URL browsers can reach, a short session, origins only.
fn settings(raw: RawPrivacy) -> Result<PrivacySettings, String> {
    let public_url = raw.public_url.map(|u| PublicUrl::parse(&u)).transpose().map_err(|rule| format!("privacy.public_url {rule}"))?;
    let session_minutes = raw.session_minutes.unwrap_or(15);
    if !(1..=120).contains(&session_minutes) {
        return Err("privacy.session_minutes must be between 1 and 120 (a link is a credential: keep it short)".into());
    }
    let mut frame_ancestors = Vec::new();
    for o in &raw.frame_ancestors {
        let origin = parse_origin(o).map_err(|rule| format!("privacy.frame_ancestors: each entry {rule}"))?;
        if !frame_ancestors.contains(&origin) {
            frame_ancestors.push(origin);
        }
    }
    let default_language = match raw.default_language {
        None => Lang::Kk,
        Some(l) => Lang::parse(&l).ok_or("privacy.default_language must be one of kk, ru, en")?,
    };
    Ok(PrivacySettings { public_url, session_minutes, frame_ancestors, default_language })
}
