//! The privacy centre's HTML, rendered on the server. Every value from the vault (field
//! values, names, ids, recipients, references) goes through [`esc`]; texts come from
//! [`super::i18n`]. No inline script or style: the page works without JavaScript, and the
//! Content-Security-Policy allows only the vault's own stylesheet and script.

use std::fmt::Write;

use serde_json::Value;
use time::OffsetDateTime;

use super::i18n::{self, label, Lang, T};
use crate::domain::{rfc3339, FieldName};
use crate::schema::{FieldType, Schema};
use crate::vault::{ConsentRecord, ErasureRecord, ErasureStatus, Export};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A message with `{name}` placeholders filled by markup that is already safe; the text
/// around them is escaped.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        let name = &rest[start + 1..start + len];
        out.push_str(&esc(&rest[..start]));
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&esc(&rest[start..=start + len])),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(&esc(rest));
    out
}

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

fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let shown = format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute());
    format!("<time datetime=\"{}\">{}</time>", esc(&rfc3339(t)), esc(&shown))
}

/// An audit time (RFC 3339 text) as a `<time>`; shown as it is if it does not parse.
fn time_text(s: &str) -> String {
    match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => time(t),
        Err(_) => esc(s),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn head(o: &mut String, lang: Lang, prefix: &str, title: &str) {
    let p = esc(prefix);
    let _ = writeln!(
        o,
        "<!doctype html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{title}</title>\n\
         <link rel=\"stylesheet\" href=\"{p}/privacy/assets/privacy.css\">\n\
         <link rel=\"icon\" href=\"{p}/privacy/assets/icon.svg\" type=\"image/svg+xml\">\n\
         <script src=\"{p}/privacy/assets/privacy.js\" defer></script>\n</head>\n<body>",
        lang = lang.code(),
        title = esc(title),
    );
}

fn top(o: &mut String, c: &PageCtx<'_>) {
    // No title here: the page's h1 says it, and inside the lender's iframe it would repeat.
    let _ = write!(o, "<header class=\"top\"><div class=\"wrap\"><nav class=\"langs\" aria-label=\"{}\"><ul>", esc(c.t(T::Language)));
    for l in Lang::ALL {
        let href = esc(&format!("{}/privacy/s/{}?lang={}", c.prefix, c.token, l.code()));
        let current = if l == c.lang { " aria-current=\"page\"" } else { "" };
        let _ = write!(o, "<li><a href=\"{href}\" lang=\"{0}\" hreflang=\"{0}\"{current}>{1}</a></li>", l.code(), esc(l.endonym()));
    }
    o.push_str("</ul></nav></div></header>\n");
}

fn foot(o: &mut String, lang: Lang, policy_version: &str) {
    let v = format!("<span class=\"nowrap\">{}</span>", esc(policy_version));
    let _ = writeln!(
        o,
        "<footer class=\"wrap foot\"><p>{}</p><p>{}</p></footer>\n</body>\n</html>",
        esc(T::Footer.get(lang)),
        fill(T::PolicyInForce.get(lang), &[("version", &v)])
    );
}

/// The notice of the last action, unless the subject's state has moved on since (a reload
/// keeps the query string): on the erased page only "erased", elsewhere anything else.
fn notice(o: &mut String, c: &PageCtx<'_>, erased: bool) {
    let Some(n) = &c.notice else { return };
    if erased != (n.notice == Notice::Erased) {
        return;
    }
    let field = n.field.as_ref().map(|f| esc(&c.field_label(f.as_str()))).unwrap_or_default();
    let purpose = n.purpose.as_deref().map(|p| esc(&c.purpose_label(p))).unwrap_or_default();
    let text = fill(c.t(n.notice.text()), &[("field", &field), ("purpose", &purpose)]);
    let (class, role) = if n.notice.is_error() { ("notice error", "alert") } else { ("notice ok", "status") };
    let _ = writeln!(o, "<div id=\"notice\" class=\"{class}\" role=\"{role}\" tabindex=\"-1\"><p>{text}</p></div>");
}

/// A `<dl>` of label/value pairs whose values are already markup.
fn pairs(o: &mut String, rows: &[(&str, String)]) {
    o.push_str("<dl class=\"kv\">");
    for (k, v) in rows {
        let _ = write!(o, "<div><dt>{}</dt><dd>{v}</dd></div>", esc(k));
    }
    o.push_str("</dl>");
}

fn hidden_csrf(c: &PageCtx<'_>) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(c.csrf))
}

/// The order categories and fields are shown in: the default schema's, then the rest by name.
fn rank(table: &[(&str, [&str; 3])], key: &str) -> (usize, String) {
    (table.iter().position(|(k, _)| *k == key).unwrap_or(usize::MAX), key.to_owned())
}

fn input_attrs(schema: &Schema, f: &FieldName) -> &'static str {
    match schema.spec(f).map(|s| s.ty) {
        Ok(FieldType::Phone) => "type=\"tel\" autocomplete=\"tel\" inputmode=\"tel\"",
        Ok(FieldType::Email) => "type=\"email\" autocomplete=\"email\"",
        Ok(FieldType::Date) => "type=\"text\" inputmode=\"numeric\" pattern=\"[0-9]{4}-[0-9]{2}-[0-9]{2}\" placeholder=\"YYYY-MM-DD\"",
        Ok(FieldType::Number) => "type=\"text\" inputmode=\"decimal\"",
        Ok(FieldType::Integer) | Ok(FieldType::Iin) => "type=\"text\" inputmode=\"numeric\"",
        _ => "type=\"text\"",
    }
}

fn data_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
    let _ = write!(o, "<section id=\"data\" aria-labelledby=\"data-h\"><h2 id=\"data-h\">{}</h2>", esc(c.t(T::DataHeading)));
    let _ = write!(o, "<p>{}</p>", esc(c.t(T::DataIntro)));
    if e.fields.is_empty() {
        let _ = writeln!(o, "<p class=\"empty\">{}</p></section>", esc(c.t(T::NoData)));
        return;
    }
    let mut by_cat: Vec<(String, Vec<(FieldName, &Value)>)> = Vec::new();
    let mut fields: Vec<(FieldName, &Value)> = e.fields.iter().filter_map(|(k, v)| Some((FieldName::parse(k).ok()?, v))).collect();
    fields.sort_by_key(|(f, _)| (rank(i18n::CATEGORIES, f.category()), rank(i18n::FIELDS, f.as_str())));
    for (f, v) in fields {
        match by_cat.last_mut() {
            Some((cat, list)) if cat == f.category() => list.push((f, v)),
            _ => by_cat.push((f.category().to_owned(), vec![(f, v)])),
        }
    }
    for (cat, list) in by_cat {
        let cat_label = label(i18n::CATEGORIES, &cat, c.lang).map(str::to_owned).unwrap_or_else(|| cat.clone());
        let id = format!("cat-{cat}");
        let _ = write!(
            o,
            "<section class=\"card\" aria-labelledby=\"{id}\"><h3 id=\"{id}\">{}</h3><dl class=\"fields\">",
            esc(&cat_label),
            id = esc(&id)
        );
        let mut read_only = false;
        for (f, v) in list {
            let name = c.field_label(f.as_str());
            let value = value_text(v);
            let shown = match (c.schema.spec(&f).map(|s| s.ty), v.as_str()) {
                (Ok(FieldType::Timestamp), Some(t)) => time_text(t),
                _ => esc(&value),
            };
            let _ = write!(o, "<div class=\"field\"><dt>{}</dt><dd><span class=\"value\">{shown}</span>", esc(&name));
            if super::editable(c.schema, &f) {
                let input_id = format!("v-{}", f.as_str().replace('.', "-"));
                let _ = write!(
                    o,
                    "<details class=\"correct\"><summary>{correct}<span class=\"vh\"> — {name}</span></summary>\
                     <form method=\"post\" action=\"{action}\" class=\"stack\">{csrf}\
                     <input type=\"hidden\" name=\"field\" value=\"{field}\">\
                     <label for=\"{input_id}\">{new_value}<span class=\"vh\"> — {name}</span></label>\
                     <input id=\"{input_id}\" name=\"value\" {attrs} value=\"{value}\" required maxlength=\"1024\">\
                     <button type=\"submit\">{save}</button></form></details>",
                    correct = esc(c.t(T::Correct)),
                    name = esc(&name),
                    action = c.url("/rectify"),
                    csrf = hidden_csrf(c),
                    field = esc(f.as_str()),
                    input_id = esc(&input_id),
                    new_value = esc(c.t(T::NewValue)),
                    attrs = input_attrs(c.schema, &f),
                    value = esc(&value),
                    save = esc(c.t(T::SaveCorrection)),
                );
            } else {
                read_only = true;
            }
            o.push_str("</dd></div>");
        }
        o.push_str("</dl>");
        if read_only {
            let _ = write!(o, "<p class=\"note\">{}</p>", esc(c.t(T::ReadOnlyNote)));
        }
        o.push_str("</section>");
    }
    o.push_str("</section>\n");
}

fn consent_state(c: &ConsentRecord, now: OffsetDateTime) -> (T, &'static str) {
    if c.withdrawn_at.is_some() {
        (T::Withdrawn, "off")
    } else if c.valid_until.is_some_and(|u| u <= now) {
        (T::Expired, "off")
    } else {
        (T::InForce, "on")
    }
}

fn consents_section(o: &mut String, c: &PageCtx<'_>, e: &Export, now: OffsetDateTime) {
    let _ = write!(
        o,
        "<section id=\"consents\" aria-labelledby=\"consents-h\"><h2 id=\"consents-h\">{}</h2><p>{}</p>",
        esc(c.t(T::ConsentsHeading)),
        esc(c.t(T::ConsentsIntro))
    );
    if e.consents.is_empty() {
        let _ = writeln!(o, "<p class=\"empty\">{}</p></section>", esc(c.t(T::NoConsents)));
        return;
    }
    o.push_str("<ul class=\"cards\">");
    for k in &e.consents {
        let (state, class) = consent_state(k, now);
        let _ = write!(
            o,
            "<li class=\"card\" data-purpose=\"{}\"><h3>{}</h3><p><span class=\"badge {class}\">{}</span></p>",
            esc(&k.purpose),
            esc(&c.purpose_label(&k.purpose)),
            esc(c.t(state))
        );
        let mut rows = vec![(c.t(T::PolicyVersion), esc(&k.policy_version)), (c.t(T::Given), time(k.given_at))];
        if let Some(u) = k.valid_until {
            rows.push((c.t(T::ValidUntil), time(u)));
        }
        if let Some(w) = k.withdrawn_at {
            rows.push((c.t(T::WithdrawnAt), time(w)));
        }
        let covers: Vec<&str> = [(k.third_parties, T::CoversThirdParties), (k.abroad, T::CoversAbroad)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, t)| c.t(t))
            .collect();
        if !covers.is_empty() {
            rows.push((c.t(T::Covers), esc(&covers.join(", "))));
        }
        pairs(o, &rows);
        if k.withdrawn_at.is_none() {
            let _ = write!(
                o,
                "<form method=\"post\" action=\"{}\">{}<button type=\"submit\" class=\"secondary\">{}<span class=\"vh\"> — {}</span></button></form>",
                c.url(&format!("/consents/{}/withdraw", k.purpose)),
                hidden_csrf(c),
                esc(c.t(T::Withdraw)),
                esc(&c.purpose_label(&k.purpose)),
            );
        }
        o.push_str("</li>");
    }
    o.push_str("</ul></section>\n");
}

fn contracts_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
    let _ = write!(
        o,
        "<section id=\"contracts\" aria-labelledby=\"contracts-h\"><h2 id=\"contracts-h\">{}</h2>",
        esc(c.t(T::ContractsHeading))
    );
    if e.contracts.is_empty() {
        let _ = writeln!(o, "<p class=\"empty\">{}</p></section>", esc(c.t(T::NoContracts)));
        return;
    }
    o.push_str("<ul class=\"cards\">");
    for k in &e.contracts {
        let status = k.status.as_str();
        let holds = k.status.holds();
        let _ = write!(
            o,
            "<li class=\"card\" data-contract=\"{}\"><h3>{}</h3><p><span class=\"badge {}\">{}</span></p>",
            esc(&k.contract),
            esc(&k.contract),
            if holds { "hold" } else { "off" },
            esc(label(i18n::CONTRACT_STATUS, status, c.lang).unwrap_or(status)),
        );
        pairs(o, &[(c.t(T::Opened), time(k.opened_at)), (c.t(T::Updated), time(k.updated_at))]);
        if holds {
            let _ = write!(o, "<p class=\"hold-note\">{}</p>", esc(c.t(T::HoldsErasure)));
        }
        o.push_str("</li>");
    }
    o.push_str("</ul></section>\n");
}

fn field_list(c: &PageCtx<'_>, fields: &[String]) -> String {
    let mut fields: Vec<&String> = fields.iter().collect();
    // A field read through a view (`identity.iin:last4`) sorts as the field.
    let field = |f: &str| f.split(':').next().unwrap_or_default().to_owned();
    fields.sort_by_key(|f| (rank(i18n::CATEGORIES, f.split('.').next().unwrap_or_default()), rank(i18n::FIELDS, &field(f))));
    let labels: Vec<String> = fields.into_iter().map(|f| c.field_label(f)).collect();
    esc(&labels.join(", "))
}

fn disclosures_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
    let _ = write!(
        o,
        "<section id=\"disclosures\" aria-labelledby=\"disclosures-h\"><h2 id=\"disclosures-h\">{}</h2><p>{}</p>",
        esc(c.t(T::DisclosuresHeading)),
        esc(c.t(T::DisclosuresIntro))
    );
    if e.disclosures.is_empty() {
        let _ = writeln!(o, "<p class=\"empty\">{}</p></section>", esc(c.t(T::NoDisclosures)));
        return;
    }
    o.push_str("<ul class=\"cards\">");
    for d in &e.disclosures {
        let _ = write!(o, "<li class=\"card\"><h3>{}</h3>", esc(&d.recipient));
        let mut rows = vec![(c.t(T::Basis), esc(label(i18n::BASES, &d.basis, c.lang).unwrap_or(&d.basis)))];
        if let Some(r) = &d.reference {
            rows.push((c.t(T::LegalReference), esc(r)));
        }
        rows.push((c.t(T::Data), field_list(c, &d.fields)));
        rows.push((c.t(T::When), time(d.time)));
        if d.abroad {
            rows.push((c.t(T::AbroadTransfer), "✓".into()));
        }
        pairs(o, &rows);
        o.push_str("</li>");
    }
    o.push_str("</ul></section>\n");
}

fn access_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
    let _ = write!(
        o,
        "<section id=\"access\" aria-labelledby=\"access-h\"><h2 id=\"access-h\">{}</h2><p>{}</p>",
        esc(c.t(T::AccessHeading)),
        esc(c.t(T::AccessIntro))
    );
    if e.access.is_empty() {
        let _ = writeln!(o, "<p class=\"empty\">{}</p></section>", esc(c.t(T::NoAccess)));
        return;
    }
    o.push_str("<ul class=\"cards\">");
    for a in &e.access {
        let action = label(i18n::ACTIONS, &a.action, c.lang).unwrap_or(&a.action);
        let _ = write!(o, "<li class=\"card\"><h3>{} <span class=\"muted\">· {}</span></h3>", esc(&a.caller), esc(action));
        let mut rows = Vec::new();
        if let Some(p) = &a.purpose {
            rows.push((c.t(T::Purpose), esc(&c.purpose_label(p))));
        }
        rows.push((c.t(T::Data), field_list(c, &a.fields)));
        rows.push((c.t(T::HowOften), a.count.to_string()));
        rows.push((c.t(T::LastTime), time_text(&a.last)));
        pairs(o, &rows);
        o.push_str("</li>");
    }
    o.push_str("</ul></section>\n");
}

fn download_section(o: &mut String, c: &PageCtx<'_>) {
    let _ = writeln!(
        o,
        "<section id=\"download\" aria-labelledby=\"download-h\"><h2 id=\"download-h\">{}</h2><p>{}</p>\
         <p><a class=\"button secondary\" href=\"{}\" download>{}</a></p></section>",
        esc(c.t(T::DownloadHeading)),
        esc(c.t(T::DownloadIntro)),
        c.url("/export"),
        esc(c.t(T::Download)),
    );
}

fn contract_names(list: &[String]) -> String {
    let names: Vec<String> = list.iter().map(|n| format!("<strong class=\"nowrap\">{}</strong>", esc(n))).collect();
    names.join(", ")
}

fn erasure_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
    let _ = write!(o, "<section id=\"erasure\" aria-labelledby=\"erasure-h\"><h2 id=\"erasure-h\">{}</h2>", esc(c.t(T::ErasureHeading)));
    let holds: Vec<String> = e.contracts.iter().filter(|k| k.status.holds()).map(|k| k.contract.clone()).collect();
    if let Some(r) = e.erasure.as_ref().filter(|r| r.status == ErasureStatus::Pending) {
        let held = if holds.is_empty() { &r.held_by } else { &holds };
        let _ = write!(
            o,
            "<div class=\"panel pending\"><h3>{}</h3><p>{}</p>",
            esc(c.t(T::PendingHeading)),
            fill(c.t(T::Pending), &[("time", &time(r.requested_at)), ("contracts", &contract_names(held))])
        );
        pairs(o, &[(c.t(T::Receipt), format!("<code>{}</code>", esc(&r.receipt))), (c.t(T::RequestedAt), time(r.requested_at))]);
        o.push_str("</div></section>\n");
        return;
    }
    let _ = write!(o, "<p>{}</p>", esc(c.t(T::ErasureIntro)));
    if !holds.is_empty() {
        let _ = write!(o, "<p class=\"panel hold\">{}</p>", fill(c.t(T::ErasureHeld), &[("contracts", &contract_names(&holds))]));
    }
    let _ = writeln!(
        o,
        "<form method=\"post\" action=\"{}\" class=\"stack danger-zone\">{}\
         <div class=\"check\"><input type=\"checkbox\" id=\"confirm-erasure\" name=\"confirm\" value=\"yes\" required>\
         <label for=\"confirm-erasure\">{}</label></div>\
         <button type=\"submit\" class=\"danger\">{}</button></form></section>",
        c.url("/erasure"),
        hidden_csrf(c),
        esc(c.t(T::ErasureConfirm)),
        esc(c.t(T::EraseButton)),
    );
}

fn intro(o: &mut String, c: &PageCtx<'_>, erased: bool) {
    let _ = write!(o, "<main id=\"main\" class=\"wrap\"><h1>{}</h1>", esc(c.t(T::Title)));
    if !erased {
        let _ = write!(o, "<p class=\"lead\">{}</p>", esc(c.t(T::Intro)));
    }
    let _ = writeln!(
        o,
        "<p class=\"meta\">{}: <strong class=\"nowrap\" id=\"subject\">{}</strong><br>{}</p>",
        esc(c.t(T::Reference)),
        esc(c.subject),
        fill(c.t(T::LinkValidUntil), &[("time", &time(c.expires_at))])
    );
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
    use super::*;
    use crate::vault::{ContractRecord, DisclosureRecord};
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
