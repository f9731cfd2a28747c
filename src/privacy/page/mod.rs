//! The privacy centre's HTML, rendered on the server. Every value from the vault (field
//! values, names, ids, recipients, references) goes through [`esc`]; texts come from
//! [`super::i18n`]. No inline script or style: the page works without JavaScript, and the
//! Content-Security-Policy allows only the vault's own stylesheet and script.

use std::fmt::Write;

use time::OffsetDateTime;

use super::i18n::{self, label, Lang, T};
use crate::domain::FieldName;
use crate::schema::Schema;
use crate::vault::{ErasureRecord, Export};

mod frame;
mod sections;

pub use frame::esc;
use frame::*;
use sections::*;

/// A short notice shown after an action (the `notice` query parameter after a redirect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    Rectified,
    RectifyInvalid,
    NotEditable,
    Withdrawn,
    Pending,
    Erased,
    Confirm,
}

impl Notice {
    const ALL: [Notice; 7] = [
        Notice::Rectified,
        Notice::RectifyInvalid,
        Notice::NotEditable,
        Notice::Withdrawn,
        Notice::Pending,
        Notice::Erased,
        Notice::Confirm,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Notice::Rectified => "rectified",
            Notice::RectifyInvalid => "rectify-invalid",
            Notice::NotEditable => "not-editable",
            Notice::Withdrawn => "withdrawn",
            Notice::Pending => "erasure-pending",
            Notice::Erased => "erased",
            Notice::Confirm => "confirm-erasure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Notice::ALL.into_iter().find(|n| n.code() == s)
    }

    fn is_error(self) -> bool {
        matches!(self, Notice::RectifyInvalid | Notice::NotEditable | Notice::Confirm)
    }

    fn text(self) -> T {
        match self {
            Notice::Rectified => T::NoticeRectified,
            Notice::RectifyInvalid => T::NoticeRectifyInvalid,
            Notice::NotEditable => T::NoticeNotEditable,
            Notice::Withdrawn => T::NoticeWithdrawn,
            Notice::Pending => T::NoticePending,
            Notice::Erased => T::NoticeErased,
            Notice::Confirm => T::NoticeConfirm,
        }
    }
}

/// A notice with what it names (a field or a purpose, already parsed as such).
#[derive(Clone, Debug)]
pub struct Shown {
    pub notice: Notice,
    pub field: Option<FieldName>,
    pub purpose: Option<String>,
}

/// What every page of a session needs.
pub struct PageCtx<'a> {
    pub lang: Lang,
    /// Path prefix of the vault's public URL (`""` at the root).
    pub prefix: &'a str,
    pub token: &'a str,
    pub csrf: &'a str,
    pub subject: &'a str,
    pub expires_at: OffsetDateTime,
    pub schema: &'a Schema,
    pub policy_version: &'a str,
    pub notice: Option<Shown>,
}

impl PageCtx<'_> {
    fn t(&self, t: T) -> &'static str {
        t.get(self.lang)
    }

    /// The session's URL plus `tail`, with the page's language (escaped, for attributes).
    fn url(&self, tail: &str) -> String {
        esc(&format!("{}/privacy/s/{}{tail}?lang={}", self.prefix, self.token, self.lang.code()))
    }

    /// A field's label; read through a masked view (`identity.iin:last4`), the field's with the
    /// view's (the borrower sees that only part of the value was read).
    fn field_label(&self, f: &str) -> String {
        let plain = |f: &str| label(i18n::FIELDS, f, self.lang).map(str::to_owned).unwrap_or_else(|| f.to_owned());
        match f.split_once(':') {
            Some((field, view)) => match label(i18n::VIEWS, view, self.lang) {
                Some(v) => format!("{} ({v})", plain(field)),
                None => plain(f),
            },
            None => plain(f),
        }
    }

    fn purpose_label(&self, p: &str) -> String {
        label(i18n::PURPOSES, p, self.lang).map(str::to_owned).unwrap_or_else(|| p.to_owned())
    }
}

/// The page of a live subject (possibly with a pending erasure).
pub fn subject_page(c: &PageCtx<'_>, e: &Export, now: OffsetDateTime) -> String {
    let mut o = String::with_capacity(16 * 1024);
    head(&mut o, c.lang, c.prefix, c.t(T::Title));
    top(&mut o, c);
    intro(&mut o, c, false);
    notice(&mut o, c, false);
    let _ = write!(o, "<nav class=\"toc\" aria-label=\"{}\"><ul>", esc(c.t(T::Contents)));
    for (id, t) in [
        ("data", T::DataHeading),
        ("consents", T::ConsentsHeading),
        ("contracts", T::ContractsHeading),
        ("disclosures", T::DisclosuresHeading),
        ("access", T::AccessHeading),
        ("download", T::DownloadHeading),
        ("erasure", T::ErasureHeading),
    ] {
        let _ = write!(o, "<li><a href=\"#{id}\">{}</a></li>", esc(c.t(t)));
    }
    o.push_str("</ul></nav>\n");
    data_section(&mut o, c, e);
    consents_section(&mut o, c, e, now);
    contracts_section(&mut o, c, e);
    disclosures_section(&mut o, c, e);
    access_section(&mut o, c, e);
    download_section(&mut o, c);
    erasure_section(&mut o, c, e);
    o.push_str("</main>\n");
    foot(&mut o, c.lang, c.policy_version);
    o
}

/// The page of an erased subject: the receipt and what it promises.
pub fn erased_page(c: &PageCtx<'_>, r: &ErasureRecord, statement: &str) -> String {
    let mut o = String::with_capacity(4096);
    head(&mut o, c.lang, c.prefix, c.t(T::Title));
    top(&mut o, c);
    intro(&mut o, c, true);
    notice(&mut o, c, true);
    let erased_at = r.erased_at.unwrap_or(r.requested_at);
    let _ = write!(
        o,
        "<section id=\"erasure\" class=\"panel erased\" aria-labelledby=\"erased-h\"><h2 id=\"erased-h\">{}</h2><p>{}</p>",
        esc(c.t(T::ErasedHeading)),
        fill(c.t(T::Erased), &[("time", &time(erased_at))])
    );
    if let Some(g) = r.kek_generation {
        let _ = write!(o, "<p>{}</p>", fill(c.t(T::ErasedBackups), &[("generation", &g.to_string())]));
    }
    let mut rows = vec![
        (c.t(T::Receipt), format!("<code id=\"receipt\">{}</code>", esc(&r.receipt))),
        (c.t(T::RequestedAt), time(r.requested_at)),
        (c.t(T::ErasedAt), time(erased_at)),
    ];
    if let Some(fp) = &r.key_fingerprint {
        rows.push((c.t(T::KeyFingerprint), format!("<code class=\"wrap-any\">{}</code>", esc(fp))));
    }
    pairs(&mut o, &rows);
    let _ = writeln!(
        o,
        "<p><strong>{}</strong></p><details><summary>{}</summary><p lang=\"en\">{}</p></details></section>\n</main>",
        esc(c.t(T::KeepReceipt)),
        esc(c.t(T::Statement)),
        esc(statement)
    );
    foot(&mut o, c.lang, c.policy_version);
    o
}

/// Why a page is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The link is not valid, its caller lost the website role, or its subject is gone.
    LinkInvalid,
    /// The link was issued but has expired.
    LinkExpired,
    /// Not from the vault's own page (origin, CSRF field), or a form it cannot take.
    RequestRefused,
    /// The vault cannot serve it now (503).
    Unavailable,
    /// Anything else that went wrong.
    Failed,
}

/// A page saying no, in the borrower's language, with no session data on it.
pub fn refusal_page(lang: Lang, prefix: &str, why: Refusal) -> String {
    let (title, text) = match why {
        Refusal::LinkInvalid => (T::RefusedTitle, T::LinkInvalid),
        Refusal::LinkExpired => (T::RefusedTitle, T::LinkExpired),
        Refusal::RequestRefused => (T::ErrorTitle, T::RequestRefused),
        Refusal::Unavailable => (T::ErrorTitle, T::Unavailable),
        Refusal::Failed => (T::ErrorTitle, T::Failed),
    };
    let mut o = String::with_capacity(2048);
    head(&mut o, lang, prefix, title.get(lang));
    let _ = writeln!(
        o,
        "<header class=\"top\"><div class=\"wrap\"><span class=\"brand\">{}</span></div></header>\n\
         <main id=\"main\" class=\"wrap\"><h1>{}</h1><div class=\"notice error\" role=\"alert\"><p>{}</p></div></main>\n\
         </body>\n</html>",
        esc(T::Title.get(lang)),
        esc(title.get(lang)),
        esc(text.get(lang))
    );
    o
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::vault::{ConsentRecord, ContractRecord, DisclosureRecord, ErasureStatus};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

    #[test]
    fn escaping() {
        assert_eq!(esc("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
        assert_eq!(esc("Әйгерім Сейітқали"), "Әйгерім Сейітқали");
        assert_eq!(fill("a {x} <b> {y}", &[("x", "<i>1</i>")]), "a <i>1</i> &lt;b&gt; {y}");
        assert_eq!(fill("{x}", &[("x", "ok")]), "ok");
        assert_eq!(fill("unclosed {x", &[("x", "ok")]), "unclosed {x");
    }

    fn export(name: &str) -> Export {
        let mut fields = crate::vault::FieldValues::new();
        fields.insert("identity.full_name".into(), Value::from(name));
        fields.insert("identity.address".into(), Value::from("\" onmouseover=\"alert(1)"));
        fields.insert("questionnaire.monthly_income".into(), Value::from(350000));
        fields.insert("contract.amount".into(), Value::from(150000));
        Export {
            subject: "borrower-1".into(),
            version: 3,
            fields,
            missing_mandatory: vec![],
            consents: vec![ConsentRecord {
                purpose: "advertising".into(),
                policy_version: "2019-01-29".into(),
                given_at: NOW,
                valid_until: None,
                withdrawn_at: None,
                third_parties: false,
                abroad: false,
                recorded_by: "website".into(),
            }],
            contracts: vec![ContractRecord {
                contract: "L-1".into(),
                status: crate::policy::ContractStatus::Open,
                opened_at: NOW,
                updated_at: NOW,
            }],
            disclosures: vec![DisclosureRecord {
                id: "dis_1".into(),
                recipient: "<b>Bureau</b>".into(),
                basis: "legal_obligation".into(),
                reference: Some("Law 94-V art. 9".into()),
                fields: vec!["identity.full_name".into()],
                abroad: false,
                caller: "svc".into(),
                time: NOW,
            }],
            access: vec![],
            recent_access: vec![],
            policy_version: "2019-01-29".into(),
            erasure: None,
        }
    }

    fn ctx(schema: &Schema, lang: Lang) -> PageCtx<'_> {
        PageCtx {
            lang,
            prefix: "",
            token: "tok.en",
            csrf: "c5rf",
            subject: "borrower-1",
            expires_at: NOW,
            schema,
            policy_version: "2019-01-29",
            notice: None,
        }
    }

    #[test]
    fn a_field_read_through_a_view_is_named_with_it() {
        let schema = Schema::default();
        let names = |lang| {
            field_list(&ctx(&schema, lang), &["identity.iin:last4".into(), "identity.birth_date:year".into(), "identity.full_name".into()])
        };
        assert_eq!(names(Lang::En), "Full name, IIN (last 4 characters), Date of birth (year)");
        assert_eq!(names(Lang::Ru), "ФИО, ИИН (последние 4 символа), Дата рождения (год)");
        // An unknown view is shown as it was recorded.
        assert_eq!(field_list(&ctx(&schema, Lang::En), &["identity.iin:x".into()]), "identity.iin:x");
    }

    #[test]
    fn values_are_escaped_and_nothing_is_inline() {
        let schema = Schema::default();
        for lang in Lang::ALL {
            let html = subject_page(&ctx(&schema, lang), &export("<script>alert(1)</script>"), NOW);
            assert!(!html.contains("<script>alert"), "a value became markup");
            assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
            assert!(!html.contains("\" onmouseover"), "a value left its attribute");
            assert!(!html.contains("<b>Bureau"));
            assert!(html.contains(&format!("<html lang=\"{}\">", lang.code())));
            // No inline script or style for the CSP to allow.
            assert_eq!(html.matches("<script").count(), 1);
            assert!(html.contains("<script src=\"/privacy/assets/privacy.js\" defer></script>"));
            assert!(!html.contains("style=") && !html.contains("<style"));
            let handler = html.match_indices(" on").any(|(i, _)| {
                let rest = &html[i + 3..];
                let n = rest.bytes().take_while(u8::is_ascii_lowercase).count();
                n > 0 && rest[n..].starts_with("=\"")
            });
            assert!(!handler, "an inline event handler");
            // Every input has a label.
            for id in html.split("<input id=\"").skip(1).map(|s| s.split('"').next().unwrap()) {
                assert!(html.contains(&format!("<label for=\"{id}\">")), "input {id} has no label");
            }
        }
    }

    #[test]
    fn forms_carry_the_csrf_field_and_the_language() {
        let schema = Schema::default();
        let html = subject_page(&ctx(&schema, Lang::Ru), &export("A"), NOW);
        let forms = html.matches("<form method=\"post\"").count();
        assert!(forms >= 4, "rectify ×3, withdraw, erase: {forms}");
        assert_eq!(html.matches("name=\"csrf\" value=\"c5rf\"").count(), forms);
        assert!(html.contains("action=\"/privacy/s/tok.en/consents/advertising/withdraw?lang=ru\""));
        assert!(html.contains("action=\"/privacy/s/tok.en/erasure?lang=ru\""));
        // Contract data is the lender's record: no form to change it.
        assert!(!html.contains("value=\"contract.amount\""));
        assert!(html.contains("value=\"identity.full_name\""));
        // The open contract holds erasure, and the page says so.
        assert!(html.contains(T::HoldsErasure.get(Lang::Ru)));
        assert!(html.contains("<strong class=\"nowrap\">L-1</strong>"));
    }

    #[test]
    fn pending_and_erased_states() {
        let schema = Schema::default();
        let mut e = export("A");
        let record = ErasureRecord {
            subject: "borrower-1".into(),
            status: ErasureStatus::Pending,
            receipt: "rcpt_1".into(),
            requested_at: NOW,
            requested_by: "website".into(),
            held_by: vec!["L-1".into()],
            erased_at: None,
            key_fingerprint: None,
            kek_generation: None,
            purged: false,
        };
        e.erasure = Some(record.clone());
        let html = subject_page(&ctx(&schema, Lang::En), &e, NOW);
        assert!(html.contains(T::PendingHeading.get(Lang::En)) && html.contains("rcpt_1"));
        assert!(!html.contains("/erasure?lang=en"), "no second request while one is pending");
        let erased = ErasureRecord {
            status: ErasureStatus::Erased,
            erased_at: Some(NOW),
            key_fingerprint: Some("ab12".into()),
            kek_generation: Some(1),
            ..record
        };
        let pending_notice = Shown { notice: Notice::Pending, field: None, purpose: None };
        let stale = PageCtx { notice: Some(pending_notice), ..ctx(&schema, Lang::En) };
        assert!(!erased_page(&stale, &erased, "").contains("id=\"notice\""), "a stale notice after a reload");
        let html = erased_page(&ctx(&schema, Lang::Kk), &erased, "unreadable <now>");
        assert!(html.contains("<code id=\"receipt\">rcpt_1</code>") && html.contains("unreadable &lt;now&gt;"));
        assert!(!html.contains("<form"));
    }

    #[test]
    fn refusals_show_no_session() {
        for why in [Refusal::LinkInvalid, Refusal::LinkExpired, Refusal::RequestRefused, Refusal::Unavailable, Refusal::Failed] {
            let html = refusal_page(Lang::En, "/q", why);
            assert!(html.contains("href=\"/q/privacy/assets/privacy.css\""));
            assert!(!html.contains("/privacy/s/"));
        }
    }
}
