//! `[schema.…]` and `[[purposes]]`: the field schema and the purposes that read from it,
//! parsed into [`crate::schema`] and [`crate::policy`] types.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file;
use crate::domain::FieldName;
use crate::policy::{BasisRule, PurposeDef, Purposes};
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
/// only fields the schema has. The defaults kept must still fit a schema the file changed.
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
        if let Some(bad) = fields.iter().find(|f| !schema.pattern_is_known(f)) {
            return Err(src.at(span.start, format!("purpose {name} names `{bad}`, which is not in the schema")));
        }
        purposes.0.insert(name.clone(), PurposeDef { name, basis: basis(rule), fields });
    }
    for def in purposes.0.values() {
        if let Some(bad) = def.fields.iter().find(|f| !schema.pattern_is_known(f)) {
            return Err(src.rule(format!("purpose {} names `{bad}`, which the schema no longer has", def.name)));
        }
    }
    Ok(purposes)
}
