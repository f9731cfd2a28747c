//! `[[indexes]]`: the fields kept in the blind index, and which of them are unique.

use std::collections::BTreeSet;

use toml::Spanned;

use super::error::{ConfigError, Source};
use super::file;
use crate::domain::FieldName;
use crate::schema::Schema;
use crate::vault::{default_indexes, IndexedField};

/// The `[[indexes]]` entries, which replace the shipped default (`identity.iin` unique,
/// `identity.phone`, `identity.email`) when present: each a field the schema lists (not merely
/// accepts through an open category), of a type that has a normal form, named once.
pub(super) fn indexes(
    raw: Option<Vec<Spanned<file::IndexDef>>>,
    schema: &Schema,
    src: Source<'_>,
) -> Result<Vec<IndexedField>, ConfigError> {
    let Some(raw) = raw else {
        let shipped = default_indexes();
        // The default must still fit a schema the file changed.
        for i in &shipped {
            check(schema, &i.field)
                .map_err(|why| src.rule(format!("the default index on {}: {why}; list [[indexes]] explicitly", i.field)))?;
        }
        return Ok(shipped);
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for entry in raw {
        let at = entry.span().start;
        let file::IndexDef { field, unique } = entry.into_inner();
        let field =
            FieldName::parse(&field).map_err(|_| src.at(at, format!("index field `{field}` is not a field name (category.name)")))?;
        check(schema, &field).map_err(|why| src.at(at, format!("index on {field}: {why}")))?;
        if !seen.insert(field.clone()) {
            return Err(src.at(at, format!("index on {field} is defined twice")));
        }
        out.push(IndexedField { field, unique });
    }
    Ok(out)
}

fn check(schema: &Schema, field: &FieldName) -> Result<(), String> {
    let listed = schema.category(field.category()).is_some_and(|c| c.fields.contains_key(field.name()));
    if !listed {
        return Err("the schema does not list this field".into());
    }
    let spec = schema.spec(field).map_err(|e| e.to_string())?;
    if !Schema::indexable(spec.ty) {
        return Err(format!("a field of type {:?} cannot be indexed (text, iin, phone, email, date or integer)", spec.ty).to_lowercase());
    }
    Ok(())
}
