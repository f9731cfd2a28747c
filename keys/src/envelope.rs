//! The ciphertext envelope: a six-byte header, a nonce, the AEAD output.
//!
//! ```text
//! 0      1      2            6             18
//! ┌──────┬──────┬────────────┬─────────────┬──────────────────────┐
//! │format│ kind │ key id u32 │ nonce (96b) │ ciphertext ‖ tag(16) │
//! └──────┴──────┴────────────┴─────────────┴──────────────────────┘
//! ```
//! The key id names the key that sealed it: the DEK version for a field, the KEK generation
//! for a wrapped DEK, the root-key id for a wrapped KEK. The header is part of the AAD, so it
//! cannot be edited, and the rest of the AAD binds the ciphertext to where it belongs.

use crate::Error;

/// The only format this version writes and reads.
pub const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 6;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// What an envelope holds. Part of the AAD: a wrapped DEK can never be opened as a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A field value sealed under a subject DEK.
    Field = 1,
    /// A subject DEK wrapped by a KEK generation.
    Dek = 2,
    /// A KEK generation wrapped by the root key.
    Kek = 3,
    /// A generation's blind-index key wrapped by the root key.
    IndexKey = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Result<Self, Error> {
        match b {
            1 => Ok(Kind::Field),
            2 => Ok(Kind::Dek),
            3 => Ok(Kind::Kek),
            4 => Ok(Kind::IndexKey),
            _ => Err(Error::Malformed("unknown envelope kind")),
        }
    }
}

/// The authenticated header of an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub format: u8,
    pub kind: Kind,
    pub key_id: u32,
}

impl Header {
    pub(crate) fn new(kind: Kind, key_id: u32) -> Self {
        Self { format: FORMAT_V1, kind, key_id }
    }

    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let id = self.key_id.to_be_bytes();
        [self.format, self.kind as u8, id[0], id[1], id[2], id[3]]
    }
}

/// A parsed, not yet authenticated, envelope borrowing its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub header: Header,
    pub(crate) header_bytes: &'a [u8],
    pub(crate) nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub(crate) sealed: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the framing. Never panics, whatever the input (a fuzz target holds it to that).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() < OVERHEAD {
            return Err(Error::Malformed("shorter than the envelope overhead"));
        }
        let (header_bytes, rest) = bytes.split_at(HEADER_LEN);
        if header_bytes[0] != FORMAT_V1 {
            return Err(Error::Malformed("unknown format version"));
        }
        let kind = Kind::from_byte(header_bytes[1])?;
        let key_id = u32::from_be_bytes([header_bytes[2], header_bytes[3], header_bytes[4], header_bytes[5]]);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Malformed("nonce"))?;
        Ok(Self { header: Header { format: FORMAT_V1, kind, key_id }, header_bytes, nonce, sealed })
    }

    /// Parses and checks the envelope is of `kind`.
    pub(crate) fn parse_kind(bytes: &'a [u8], kind: Kind) -> Result<Self, Error> {
        let env = Self::parse(bytes)?;
        if env.header.kind != kind {
            return Err(Error::Malformed("envelope holds another kind of ciphertext"));
        }
        Ok(env)
    }
}

/// Builds `header ‖ nonce` followed by room for the sealed body.
pub(crate) fn frame(header: Header, nonce: &[u8; NONCE_LEN], body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + body_len);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(nonce);
    out
}

/// Associated data, built from length-prefixed parts so no two contexts serialise alike.
pub(crate) struct Aad(Vec<u8>);

impl Aad {
    pub(crate) fn new(header: &[u8], label: &'static str) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(header);
        let mut aad = Aad(v);
        aad = aad.bytes(label.as_bytes());
        aad
    }

    pub(crate) fn bytes(mut self, part: &[u8]) -> Self {
        // Subject ids and field names are short; a u32 prefix never truncates.
        self.0.extend_from_slice(&(part.len() as u32).to_be_bytes());
        self.0.extend_from_slice(part);
        self
    }

    pub(crate) fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_short_and_unknown() {
        assert!(Envelope::parse(&[]).is_err());
        assert!(Envelope::parse(&[1u8; OVERHEAD - 1]).is_err());
        let mut ok = vec![FORMAT_V1, 1, 0, 0, 0, 7];
        ok.extend_from_slice(&[0u8; NONCE_LEN + TAG_LEN]);
        let env = Envelope::parse(&ok).expect("well-formed");
        assert_eq!(env.header, Header { format: 1, kind: Kind::Field, key_id: 7 });
        let mut bad_format = ok.clone();
        bad_format[0] = 2;
        assert!(matches!(Envelope::parse(&bad_format), Err(Error::Malformed(_))));
        let mut bad_kind = ok.clone();
        bad_kind[1] = 9;
        assert!(matches!(Envelope::parse(&bad_kind), Err(Error::Malformed(_))));
    }

    #[test]
    fn aad_parts_are_unambiguous() {
        let a = Aad::new(b"h", "x").bytes(b"ab").bytes(b"c");
        let b = Aad::new(b"h", "x").bytes(b"a").bytes(b"bc");
        assert_ne!(a.as_slice(), b.as_slice());
    }
}
