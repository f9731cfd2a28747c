//! Record and request helpers shared by the write, read, disclosure and export paths.

use super::codec::Record;
use super::subject_cache::SealedRecords;
use super::{Vault, VaultError};
use crate::domain::{FieldName, FieldRef, Purpose};
use crate::layout::{subject_key, subject_prefix};
use crate::policy::{self};
use crate::store::{Space, StoreError, Tier};

/// Subjects with more fields than this are read field by field, never cached whole.
pub(super) const VIEW_FIELDS: u64 = 256;

impl Vault {
    /// [`Vault::missing_mandatory`] of a subject whose stored fields `stored` tells.
    pub(super) fn missing_mandatory_of(&self, writing: &[String], stored: impl Fn(&str) -> bool) -> Vec<String> {
        self.mandatory.iter().filter(|f| !writing.iter().any(|w| w == f.as_str()) && !stored(f.as_str())).map(|f| f.to_string()).collect()
    }

    /// Mandatory fields (P2) neither being written nor stored for `stored` (`None`: a subject
    /// with no records yet).
    pub(super) fn missing_mandatory(&self, tier: Tier, stored: Option<&str>, writing: &[String]) -> Result<Vec<String>, VaultError> {
        let mandatory: Vec<&FieldName> = self.mandatory.iter().filter(|f| !writing.iter().any(|w| w == f.as_str())).collect();
        let Some(s) = stored else {
            return Ok(mandatory.into_iter().map(|f| f.to_string()).collect());
        };
        let keys: Vec<Vec<u8>> = mandatory.iter().map(|f| subject_key(s, f.as_str())).collect();
        let found = self.store.get_many_in(tier, Space::Records, &keys)?;
        Ok(mandatory.into_iter().zip(found).filter(|(_, v)| v.is_none()).map(|(f, _)| f.to_string()).collect())
    }

    /// Reads stored records of `s`: the named ones, or all that `keep` accepts.
    pub(super) fn load_records(
        &self,
        s: &str,
        names: Option<&[FieldName]>,
        keep: impl Fn(FieldRef<'_>) -> bool,
    ) -> Result<Vec<(FieldName, Record)>, VaultError> {
        self.load_records_in(Tier::Any, s, names, keep)
    }

    pub(super) fn load_records_in(
        &self,
        tier: Tier,
        s: &str,
        names: Option<&[FieldName]>,
        keep: impl Fn(FieldRef<'_>) -> bool,
    ) -> Result<Vec<(FieldName, Record)>, VaultError> {
        let mut out = Vec::new();
        match names {
            Some(names) => {
                let names: Vec<&FieldName> = names.iter().filter(|f| keep(f.borrowed())).collect();
                let keys: Vec<Vec<u8>> = names.iter().map(|f| subject_key(s, f.as_str())).collect();
                for (f, v) in names.into_iter().zip(self.store.get_many_in(tier, Space::Records, &keys)?) {
                    if let Some(v) = v {
                        out.push((f.clone(), Record::decode(&v)?));
                    }
                }
            }
            None => self.scan_records_in(tier, s, |f, v| {
                if keep(f) {
                    out.push((f.to_owned(), Record::decode(v)?));
                }
                Ok(())
            })?,
        }
        Ok(out)
    }

    /// Every record of `s`, packed as the subject cache keeps them, straight from the scan.
    pub(super) fn load_sealed_in(&self, tier: Tier, s: &str, fields: usize) -> Result<SealedRecords, VaultError> {
        let mut out = SealedRecords::builder(fields);
        self.scan_records_in(tier, s, |f, v| {
            let (version, ciphertext) = Record::decode_parts(v)?;
            out.push(f, version, ciphertext);
            Ok(())
        })?;
        out.build()
    }

    /// Hands each stored record of `s`, in key order, to `each`: its name (checked) and its
    /// stored value. The first error stops the scan and is returned.
    fn scan_records_in(
        &self,
        tier: Tier,
        s: &str,
        mut each: impl FnMut(FieldRef<'_>, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), VaultError> {
        let mut failed = None;
        self.store.scan_prefix_in(tier, Space::Records, &subject_prefix(s), |k, v| {
            let step = match crate::layout::parse_record(k).and_then(|r| FieldRef::parse(r.field).ok()) {
                Some(f) => each(f, v),
                None => Err(StoreError::Corrupt { space: "records", what: "field name" }),
            };
            step.map_err(|e| failed = Some(e)).is_ok()
        })?;
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    pub(super) fn parse_requested(&self, requested: Option<&[String]>) -> Result<Option<Vec<FieldName>>, VaultError> {
        requested
            .map(|names| {
                names
                    .iter()
                    .map(|n| {
                        let f = FieldName::parse(n)?;
                        self.settings.schema.spec(&f)?;
                        Ok(f)
                    })
                    .collect::<Result<Vec<_>, VaultError>>()
            })
            .transpose()
    }

    pub(super) fn purpose(&self, name: &str) -> Result<&policy::PurposeDef, VaultError> {
        let p = Purpose::parse(name)?;
        self.settings.purposes.get(&p).ok_or_else(|| {
            let known: Vec<&str> = self.settings.purposes.0.keys().map(|p| p.as_str()).collect();
            VaultError::Invalid(super::error::Invalid::UnknownPurposeOf {
                purpose: p.to_string(),
                configured: known.iter().map(|k| k.to_string()).collect(),
            })
        })
    }
}
