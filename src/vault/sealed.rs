//! A subject's sealed records packed as the subject cache keeps them, and the reference a read
//! opens one through.

use super::codec::Record;
use super::VaultError;
use crate::domain::{FieldName, FieldRef};

/// A subject's sealed records packed for the cache: their names and ciphertexts back to back
/// in one buffer, beside a table of where each ends. Two heap blocks for all of a subject's
/// records instead of two per record (a `FieldName` and a `Record` each), so the same budget
/// holds about a third more subjects.
#[derive(Debug, Default)]
pub struct SealedRecords {
    bytes: Box<[u8]>,
    items: Box<[Item]>,
}

#[derive(Debug, Clone, Copy)]
struct Item {
    version: u64,
    /// Where the name ends and the ciphertext begins, and where that ends, in `bytes`.
    name_end: u32,
    end: u32,
}

/// One record of a [`SealedRecords`], or of a loaded `(FieldName, Record)`: what opening it takes.
#[derive(Debug, Clone, Copy)]
pub struct SealedRef<'a> {
    pub field: FieldRef<'a>,
    pub version: u64,
    pub ciphertext: &'a [u8],
}

impl<'a> From<&'a (FieldName, Record)> for SealedRef<'a> {
    fn from((field, record): &'a (FieldName, Record)) -> Self {
        Self { field: field.borrowed(), version: record.version, ciphertext: &record.ciphertext }
    }
}

impl SealedRecords {
    /// A builder with room for about `records` records (of a 1 KiB-per-dozen-fields size).
    pub fn builder(records: usize) -> SealedBuilder {
        SealedBuilder { bytes: Vec::with_capacity(records * 160), items: Vec::with_capacity(records), too_large: false }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `i`th record (key order). Panics past the end, as indexing does.
    pub fn get(&self, i: usize) -> SealedRef<'_> {
        let start = if i == 0 { 0 } else { self.items[i - 1].end as usize };
        let Item { version, name_end, end } = self.items[i];
        // Names went in as `str` (from parsed `FieldName`s): a split there is a char boundary.
        let name = std::str::from_utf8(&self.bytes[start..name_end as usize]).unwrap_or_default();
        SealedRef { field: FieldRef::of_parsed(name), version, ciphertext: &self.bytes[name_end as usize..end as usize] }
    }

    pub fn iter(&self) -> impl Iterator<Item = SealedRef<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Whether a record of `field` is here (records are in key order, i.e. by name).
    pub fn contains(&self, field: &str) -> bool {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).field.as_str().cmp(field) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The heap the records take: the buffer and the table.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.len() + std::mem::size_of_val(&*self.items)
    }

    /// These records with `newer` written over them (both in key order): what the store holds
    /// once a write of `newer` is applied.
    pub fn merged(&self, newer: &SealedRecords) -> Result<SealedRecords, VaultError> {
        let mut out = SealedRecords::builder(self.len() + newer.len());
        let (mut old, mut new) = (self.iter().peekable(), newer.iter().peekable());
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => match o.field.as_str().cmp(n.field.as_str()) {
                    std::cmp::Ordering::Less => old.next(),
                    std::cmp::Ordering::Equal => {
                        old.next();
                        new.next()
                    }
                    std::cmp::Ordering::Greater => new.next(),
                },
                (Some(_), None) => old.next(),
                (None, Some(_)) => new.next(),
                (None, None) => break,
            };
            if let Some(r) = next {
                out.push(r.field, r.version, r.ciphertext);
            }
        }
        out.build()
    }

    /// `records` packed (copied).
    pub fn pack<'a>(records: impl ExactSizeIterator<Item = SealedRef<'a>>) -> Result<Self, VaultError> {
        let mut b = SealedRecords::builder(records.len());
        for r in records {
            b.push(r.field, r.version, r.ciphertext);
        }
        b.build()
    }
}

/// Builds a [`SealedRecords`] record by record, as a scan finds them.
pub struct SealedBuilder {
    bytes: Vec<u8>,
    items: Vec<Item>,
    /// Past the 4 GiB that 32-bit offsets reach (a cached view is a few KiB; only a read of a
    /// subject too large for the cache, with no fields named, could get there).
    too_large: bool,
}

impl SealedBuilder {
    pub fn push(&mut self, field: FieldRef<'_>, version: u64, ciphertext: &[u8]) {
        let name_end = self.bytes.len() + field.as_str().len();
        let end = name_end + ciphertext.len();
        let (Ok(name_end), Ok(end)) = (u32::try_from(name_end), u32::try_from(end)) else {
            self.too_large = true;
            return;
        };
        self.bytes.extend_from_slice(field.as_str().as_bytes());
        self.bytes.extend_from_slice(ciphertext);
        self.items.push(Item { version, name_end, end });
    }

    pub fn build(self) -> Result<SealedRecords, VaultError> {
        if self.too_large {
            return Err(VaultError::Invalid(super::error::Invalid::TooLarge));
        }
        Ok(SealedRecords { bytes: self.bytes.into_boxed_slice(), items: self.items.into_boxed_slice() })
    }
}
