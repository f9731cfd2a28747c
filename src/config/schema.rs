//! `[schema.…]` and `[[purposes]]`: the field schema and the purposes that read from it,
//! parsed into [`crate::schema`] and [`crate::policy`] types.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file;
use crate::domain::FieldName;
use crate::policy::{BasisRule, FieldGrant, PurposeDef, Purposes, View};
use crate::schema::{Category, FieldSpec, FieldType, Schema};

/// `[schema.<category>]` sections over the shipped default: a category named in the file
/// replaces the default's; names are snake case (they become `category.field` names).
pub(super) fn schema(raw: BTreeMap<String, file::Category>, src: Source<'_>) -> Result<Schema, ConfigError> {
    let mut schema = Schema::default();
    for (cat, def) in raw {
        if FieldName::parse(&format!("{cat}.x")).is_err() {
            return Err(src.rule(format!("schema category `{cat}` must be snake case")));
        }
        for field in def.fields.keys() {
            if FieldName::parse(&format!("{cat}.{field}")).is_err() {
                return Err(src.rule(format!("schema field `{cat}.{field}` must be snake case")));
            }
        }
        schema.categories.insert(cat, category(def));
    }
    Ok(schema)
}

fn category(raw: file::Category) -> Category {
    Category {
        retention_days: raw.retention_days,
        application: raw.application,
        open: raw.open.map(field_type),
        fields: raw
            .fields
            .into_iter()
            .map(|(name, file::FieldSpec { ty, mandatory })| (name, FieldSpec { ty: field_type(ty), mandatory }))
            .collect(),
    }
}

fn field_type(raw: file::FieldType) -> FieldType {
    match raw {
        file::FieldType::Text => FieldType::Text,
        file::FieldType::Iin => FieldType::Iin,
        file::FieldType::Date => FieldType::Date,
        file::FieldType::Timestamp => FieldType::Timestamp,
        file::FieldType::Phone => FieldType::Phone,
        file::FieldType::Email => FieldType::Email,
        file::FieldType::Number => FieldType::Number,
        file::FieldType::Integer => FieldType::Integer,
        file::FieldType::Ip => FieldType::Ip,
    }
}

fn basis(raw: file::BasisRule) -> BasisRule {
    match raw {
        file::BasisRule::ApplicationOrContract => BasisRule::ApplicationOrContract,
        file::BasisRule::OpenContract => BasisRule::OpenContract,
        file::BasisRule::Consent => BasisRule::Consent,
        file::BasisRule::ConsentObligationOrBreach => BasisRule::ConsentObligationOrBreach,
    }
}

/// `[[purposes]]` over the shipped default: each named once, reading at least one field, and
/// only fields the schema has, each view on a field of a type it fits. The defaults kept must
/// still fit a schema the file changed.
pub(super) fn purposes(raw: Vec<Spanned<file::PurposeDef>>, schema: &Schema, src: Source<'_>) -> Result<Purposes, ConfigError> {
    let mut purposes = Purposes::default();
    let mut seen = BTreeSet::new();
    for p in raw {
        let span = p.span();
        let file::PurposeDef { name, basis: rule, fields } = p.into_inner();
        if !seen.insert(name.clone()) {
            return Err(src.at(span.start, format!("purpose {name} is defined twice")));
        }
        if fields.is_empty() {
            return Err(src.at(span.start, format!("purpose {name} allows no fields")));
        }
        let fields = fields
            .iter()
            .map(|entry| FieldGrant::parse(entry).map_err(|e| src.at(span.start, format!("purpose {name} names `{entry}`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let def = PurposeDef { name, basis: basis(rule), fields };
        if let Some(misfit) = misfit(&def, schema) {
            return Err(src.at(span.start, misfit.say(&def, "which is not in the schema")));
        }
        purposes.0.insert(def.name.clone(), def);
    }
    for def in purposes.0.values() {
        if let Some(misfit) = misfit(def, schema) {
            return Err(src.rule(misfit.say(def, "which the schema no longer has")));
        }
    }
    Ok(purposes)
}

/// An entry of a purpose's `fields` the schema does not fit.
enum Misfit<'a> {
    /// Its pattern names nothing in the schema.
    Unknown(&'a FieldGrant),
    /// Its view does not apply to the field's type; the text says which types it needs.
    View(&'a FieldGrant, &'static str),
    /// The same field with another view: which one a read shows would be the order's accident.
    TwoViews(&'a FieldGrant, &'a FieldGrant),
}

impl Misfit<'_> {
    fn say(&self, def: &PurposeDef, unknown: &str) -> String {
        match self {
            Misfit::Unknown(g) => format!("purpose {} names `{g}`, {unknown}", def.name),
            Misfit::View(g, needs) => format!("purpose {} names `{g}`: {needs}", def.name),
            Misfit::TwoViews(g, other) => format!("purpose {} names `{g}` and `{other}`: a field takes one view", def.name),
        }
    }
}

fn misfit<'a>(def: &'a PurposeDef, schema: &Schema) -> Option<Misfit<'a>> {
    def.fields.iter().find_map(|g| {
        if !schema.pattern_is_known(&g.pattern) {
            return Some(Misfit::Unknown(g));
        }
        let view = g.view?;
        // A view names one field (`FieldGrant::parse` refuses `cat.*`), which the schema has.
        let ty = FieldName::parse(&g.pattern).ok().and_then(|f| schema.spec(&f).ok())?.ty;
        let fits = match view {
            View::Year => matches!(ty, FieldType::Date | FieldType::Timestamp),
            View::Last4 => !matches!(ty, FieldType::Number | FieldType::Integer),
        };
        let needs = match view {
            View::Year => "the year view applies only to date and timestamp fields",
            View::Last4 => "the last4 view applies only to fields held as text, not to number or integer fields",
        };
        if !fits {
            return Some(Misfit::View(g, needs));
        }
        let other = def.fields.iter().find(|o| o.pattern == g.pattern && o.view.is_some_and(|v| v != view))?;
        Some(Misfit::TwoViews(g, other))
    })
}
