//! The page's frame and the small pieces every part of it uses: escaping, the head, top bar,
//! foot and notice, label/value lists, times and values as text.

use std::fmt::Write;

use serde_json::Value;
use time::OffsetDateTime;

use super::super::i18n::{Lang, T};
use super::{Notice, PageCtx};
use crate::domain::rfc3339;

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
pub(super) fn fill(template: &str, values: &[(&str, &str)]) -> String {
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

pub(super) fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let shown = format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute());
    format!("<time datetime=\"{}\">{}</time>", esc(&rfc3339(t)), esc(&shown))
}

/// An audit time (RFC 3339 text) as a `<time>`; shown as it is if it does not parse.
pub(super) fn time_text(s: &str) -> String {
    match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => time(t),
        Err(_) => esc(s),
    }
}

pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

pub(super) fn head(o: &mut String, lang: Lang, prefix: &str, title: &str) {
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

pub(super) fn top(o: &mut String, c: &PageCtx<'_>) {
    // No title here: the page's h1 says it, and inside the lender's iframe it would repeat.
    let _ = write!(o, "<header class=\"top\"><div class=\"wrap\"><nav class=\"langs\" aria-label=\"{}\"><ul>", esc(c.t(T::Language)));
    for l in Lang::ALL {
        let href = esc(&format!("{}/privacy/s/{}?lang={}", c.prefix, c.token, l.code()));
        let current = if l == c.lang { " aria-current=\"page\"" } else { "" };
        let _ = write!(o, "<li><a href=\"{href}\" lang=\"{0}\" hreflang=\"{0}\"{current}>{1}</a></li>", l.code(), esc(l.endonym()));
    }
    o.push_str("</ul></nav></div></header>\n");
}

pub(super) fn foot(o: &mut String, lang: Lang, policy_version: &str) {
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
pub(super) fn notice(o: &mut String, c: &PageCtx<'_>, erased: bool) {
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
pub(super) fn pairs(o: &mut String, rows: &[(&str, String)]) {
    o.push_str("<dl class=\"kv\">");
    for (k, v) in rows {
        let _ = write!(o, "<div><dt>{}</dt><dd>{v}</dd></div>", esc(k));
    }
    o.push_str("</dl>");
}

pub(super) fn hidden_csrf(c: &PageCtx<'_>) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(c.csrf))
}
