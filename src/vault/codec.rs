//! How the vault's values are laid out in the store. Wrapped keys are stored as raw bytes
//! (not hex or base64) so a scan of the data directory for them is meaningful.

use std::collections::BTreeMap;

use qoima_keys::{DekVersion, Generation, WrappedDek};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::policy::{ConsentFact, ContractStatus};
use crate::store::StoreError;

const META_FORMAT: u8 = 1;

fn corrupt(space: &'static str, what: &'static str) -> StoreError {
    StoreError::Corrupt { space, what }
}

/// Everything about a live subject except its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectMeta {
    /// Record version counter: each write takes the next one.
    pub version: u64,
    pub dek_version: DekVersion,
    pub wrapped_dek: WrappedDek,
    /// Field encryptions under the current DEK (NIST SP 800-38D cap on random nonces).
    pub seals: u64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Fields held per category.
    pub categories: BTreeMap<String, u32>,
}

/// The entry after its wrapped DEK, as JSON. Generic over how it holds the category counts, so
/// encoding borrows them (every write encodes the entry) and decoding owns them.
#[derive(Serialize, Deserialize)]
struct MetaRest<C> {
    version: u64,
    dek_version: u32,
    seals: u64,
    created_at: i64,
    updated_at: i64,
    categories: C,
}

impl SubjectMeta {
    /// The KEK generation that wraps this subject's DEK.
    pub fn generation(&self) -> Result<Generation, StoreError> {
        self.wrapped_dek.generation().ok_or(corrupt("subjects", "wrapped DEK header"))
    }

    pub fn encode(&self) -> Vec<u8> {
        let rest = MetaRest {
            version: self.version,
            dek_version: self.dek_version.0,
            seals: self.seals,
            created_at: self.created_at,
            updated_at: self.updated_at,
            categories: &self.categories,
        };
        let w = &self.wrapped_dek.0;
        let mut out = Vec::with_capacity(3 + w.len() + 96);
        out.push(META_FORMAT);
        out.extend_from_slice(&(w.len() as u16).to_be_bytes());
        out.extend_from_slice(w);
        serde_json::to_writer(&mut out, &rest).expect("meta serialises");
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let bad = || corrupt("subjects", "subject entry");
        if b.len() < 3 || b[0] != META_FORMAT {
            return Err(bad());
        }
        let len = u16::from_be_bytes([b[1], b[2]]) as usize;
        let wrapped = b.get(3..3 + len).ok_or_else(bad)?.to_vec();
        let rest: MetaRest<BTreeMap<String, u32>> = serde_json::from_slice(&b[3 + len..]).map_err(|_| bad())?;
        Ok(Self {
            version: rest.version,
            dek_version: DekVersion(rest.dek_version),
            wrapped_dek: WrappedDek(wrapped),
            seals: rest.seals,
            created_at: rest.created_at,
            updated_at: rest.updated_at,
            categories: rest.categories,
        })
    }
}

/// A stored field: the record version it was written at, when, and its ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub written_at: i64,
    pub ciphertext: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.ciphertext.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.written_at.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// The stored form of a record whose ciphertext `seal` appends, without an intermediate
    /// copy of the ciphertext.
    pub fn encode_sealed<E>(
        version: u64,
        written_at: i64,
        plaintext_len: usize,
        seal: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(16 + qoima_keys::OVERHEAD + plaintext_len);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&written_at.to_be_bytes());
        seal(&mut out)?;
        Ok(out)
    }

    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let (version, ciphertext) = Self::decode_parts(b)?;
        let written_at = i64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
        Ok(Self { version, written_at, ciphertext: ciphertext.to_vec() })
    }

    /// What opening a stored record takes, its version and ciphertext, borrowed from `b`.
    pub fn decode_parts(b: &[u8]) -> Result<(u64, &[u8]), StoreError> {
        if b.len() < 16 {
            return Err(corrupt("records", "record"));
        }
        Ok((u64::from_be_bytes(b[..8].try_into().expect("8 bytes")), &b[16..]))
    }
}

/// A loan contract as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractRecord {
    pub contract: String,
    pub status: ContractStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A consent as stored (Law 94-V art. 8, docs/privacy-policy-map.md): the policy version it was given under,
/// its validity, and whether it covers transfer to third parties and abroad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub purpose: String,
    pub policy_version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub given_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub valid_until: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub withdrawn_at: Option<OffsetDateTime>,
    pub third_parties: bool,
    pub abroad: bool,
    pub recorded_by: String,
}

impl ConsentRecord {
    pub fn fact(&self) -> Option<ConsentFact> {
        Some(ConsentFact {
            purpose: crate::domain::Purpose::parse(&self.purpose).ok()?,
            given_at: self.given_at,
            valid_until: self.valid_until,
            withdrawn_at: self.withdrawn_at,
            abroad: self.abroad,
        })
    }
}

/// A disclosure to a third party (P10), shown to the subject in the export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisclosureRecord {
    pub id: String,
    pub recipient: String,
    pub basis: String,
    pub reference: Option<String>,
    pub fields: Vec<String>,
    pub abroad: bool,
    pub caller: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// Pending or done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErasureStatus {
    Pending,
    Erased,
}

/// The erasure record: no personal data, kept forever (docs/erasure-and-backups.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    pub subject: String,
    pub status: ErasureStatus,
    pub receipt: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub requested_by: String,
    /// Contracts that held (or hold) the erasure.
    pub held_by: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub erased_at: Option<OffsetDateTime>,
    /// Fingerprint of the destroyed wrapped DEK.
    pub key_fingerprint: Option<String>,
    /// The KEK generation that wrapped it: once destroyed, old backups cannot open it either.
    pub kek_generation: Option<u32>,
    /// Flush and forced compaction done: no live store file holds the wrapped DEK.
    #[serde(default)]
    pub purged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_keeps_wrapped_bytes_raw() {
        let m = SubjectMeta {
            version: 7,
            dek_version: DekVersion(2),
            wrapped_dek: WrappedDek(vec![1, 2, 3, 250]),
            seals: 99,
            created_at: 1,
            updated_at: 2,
            categories: [("identity".to_string(), 3)].into(),
        };
        let b = m.encode();
        assert!(b.windows(4).any(|w| w == [1, 2, 3, 250]));
        assert_eq!(SubjectMeta::decode(&b).unwrap(), m);
        assert!(SubjectMeta::decode(&b[..2]).is_err());
        assert!(SubjectMeta::decode(&[9, 0, 0]).is_err());
    }

    #[test]
    fn record_round_trip() {
        let r = Record { version: 3, written_at: -5, ciphertext: vec![9; 40] };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(&[0; 15]).is_err());
        // Sealing straight into the stored form lays it out the same way.
        let sealed = Record::encode_sealed(3, -5, 40, |out| {
            out.extend_from_slice(&[9; 40]);
            Ok::<(), ()>(())
        });
        assert_eq!(sealed.unwrap(), r.encode());
    }
}
