//! `[schema.…]` and `[[purposes]]`: the field schema and the purposes that read from it,
//! parsed into [`crate::schema`] and [`crate::policy`] types.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file::{RawBasis, RawCategory, RawFieldSpec, RawFieldType, RawPurpose};
use crate::domain::FieldName;
use crate::policy::{BasisRule, PurposeDef, Purposes};
use crate::schema::{Category, FieldSpec, FieldType, Schema};

/// `[schema.<category>]` sections over the shipped default: a category named in the file
/// replaces the default's; names are snake case (they become `category.field` names).
pub(super) fn schema(raw: BTreeMap<String, RawCategory>, src: Source<'_>) -> Result<Schema, ConfigError> {
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

fn category(raw: RawCategory) -> Category {
    Category {
        retention_days: raw.retention_days,
        application: raw.application,
        open: raw.open.map(field_type),
        fields: raw.fields.into_iter().map(|(name, RawFieldSpec { ty, mandatory })| (name, FieldSpec { ty: field_type(ty), mandatory })).collect(),
    }
}

fn field_type(raw: RawFieldType) -> FieldType {
    match raw {
        RawFieldType::Text => FieldType::Text,
        RawFieldType::Iin => FieldType::Iin,
        RawFieldType::Date => FieldType::Date,
        RawFieldType::Timestamp => FieldType::Timestamp,
        RawFieldType::Phone => FieldType::Phone,
        RawFieldType::Email => FieldType::Email,
        RawFieldType::Number => FieldType::Number,
        RawFieldType::Integer => FieldType::Integer,
        RawFieldType::Ip => FieldType::Ip,
    }
}

fn basis(raw: RawBasis) -> BasisRule {
    match raw {
        RawBasis::ApplicationOrContract => BasisRule::ApplicationOrContract,
        RawBasis::OpenContract => BasisRule::OpenContract,
        RawBasis::Consent => BasisRule::Consent,
        RawBasis::ConsentObligationOrBreach => BasisRule::ConsentObligationOrBreach,
    }
}

/// `[[purposes]]` over the shipped default: each named once, reading at least one field, and
/// only fields the schema has. The defaults kept must still fit a schema the file changed.
pub(super) fn purposes(raw: Vec<Spanned<RawPurpose>>, schema: &Schema, src: Source<'_>) -> Result<Purposes, ConfigError> {
    let mut purposes = Purposes::default();
    let mut seen = BTreeSet::new();
    for p in raw {
        let span = p.span();
        let RawPurpose { name, basis: rule, fields } = p.into_inner();
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
