//! The sections of a live subject's page: the data (with the rectify forms), consents,
//! contracts, disclosures, access, the download and the erasure request.

use std::fmt::Write;

use serde_json::Value;
use time::OffsetDateTime;

use super::super::i18n::{self, label, T};
use super::frame::*;
use super::PageCtx;
use crate::domain::FieldName;
use crate::schema::{FieldType, Schema};
use crate::vault::{ConsentRecord, ErasureStatus, Export};

/// The order categories and fields are shown in: the default schema's, then the rest by name.
pub(super) fn rank(table: &[(&str, [&str; 3])], key: &str) -> (usize, String) {
    (table.iter().position(|(k, _)| *k == key).unwrap_or(usize::MAX), key.to_owned())
}

pub(super) fn input_attrs(schema: &Schema, f: &FieldName) -> &'static str {
    match schema.spec(f).map(|s| s.ty) {
        Ok(FieldType::Phone) => "type=\"tel\" autocomplete=\"tel\" inputmode=\"tel\"",
        Ok(FieldType::Email) => "type=\"email\" autocomplete=\"email\"",
        Ok(FieldType::Date) => "type=\"text\" inputmode=\"numeric\" pattern=\"[0-9]{4}-[0-9]{2}-[0-9]{2}\" placeholder=\"YYYY-MM-DD\"",
        Ok(FieldType::Number) => "type=\"text\" inputmode=\"decimal\"",
        Ok(FieldType::Integer) | Ok(FieldType::Iin) => "type=\"text\" inputmode=\"numeric\"",
        _ => "type=\"text\"",
    }
}

pub(super) fn data_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
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
            if super::super::editable(c.schema, &f) {
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

pub(super) fn consent_state(c: &ConsentRecord, now: OffsetDateTime) -> (T, &'static str) {
    if c.withdrawn_at.is_some() {
        (T::Withdrawn, "off")
    } else if c.valid_until.is_some_and(|u| u <= now) {
        (T::Expired, "off")
    } else {
        (T::InForce, "on")
    }
}

pub(super) fn consents_section(o: &mut String, c: &PageCtx<'_>, e: &Export, now: OffsetDateTime) {
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

pub(super) fn contracts_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
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

pub(super) fn field_list(c: &PageCtx<'_>, fields: &[String]) -> String {
    let mut fields: Vec<&String> = fields.iter().collect();
    // A field read through a view (`identity.iin:last4`) sorts as the field.
    let field = |f: &str| f.split(':').next().unwrap_or_default().to_owned();
    fields.sort_by_key(|f| (rank(i18n::CATEGORIES, f.split('.').next().unwrap_or_default()), rank(i18n::FIELDS, &field(f))));
    let labels: Vec<String> = fields.into_iter().map(|f| c.field_label(f)).collect();
    esc(&labels.join(", "))
}

pub(super) fn disclosures_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
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

pub(super) fn access_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
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

pub(super) fn download_section(o: &mut String, c: &PageCtx<'_>) {
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

pub(super) fn contract_names(list: &[String]) -> String {
    let names: Vec<String> = list.iter().map(|n| format!("<strong class=\"nowrap\">{}</strong>", esc(n))).collect();
    names.join(", ")
}

pub(super) fn erasure_section(o: &mut String, c: &PageCtx<'_>, e: &Export) {
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

pub(super) fn intro(o: &mut String, c: &PageCtx<'_>, erased: bool) {
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
