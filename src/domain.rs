//! The vocabulary of the vault, parsed once at the edge: a value of these types is valid by
//! construction (parse, don't validate).

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why an identifier did not parse. The message never echoes the rejected input, which may
/// be personal data sent by mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must match {rule}")]
pub struct InvalidId {
    pub what: &'static str,
    pub rule: &'static str,
}

fn id_chars(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        // "." and ".." match the character rule but read as path segments; refuse them.
        && !s.bytes().all(|b| b == b'.')
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $what:literal, $rule:literal, $check:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId { what: $what, rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }
    };
}

string_newtype!(
    /// An opaque, lender-chosen subject id. Never personal data (not an IIN, phone or email).
    SubjectId, "subject id", "^[A-Za-z0-9._-]{1,128}$ (and not only dots)", |s| id_chars(s, 128)
);
string_newtype!(
    /// A loan contract id, as the lender numbers it.
    ContractId, "contract id", "^[A-Za-z0-9._-]{1,64}$", |s| id_chars(s, 64)
);
string_newtype!(
    /// The name of a processing purpose, e.g. `loan_monitoring`.
    Purpose, "purpose", "^[a-z][a-z0-9_]{0,63}$", is_snake
);
string_newtype!(
    /// The name of a configured caller.
    CallerName, "caller name", "^[A-Za-z0-9._-]{1,64}$", |s| id_chars(s, 64)
);

fn is_snake(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A field name `category.name`, both parts snake case. Whether the field exists is the
/// schema's business; this type only guarantees the shape.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FieldName {
    text: String,
    /// Where the dot is, found once when parsed: every write and read asks for the category.
    /// A function of `text`, so the derived comparisons and hash agree with the text's.
    #[serde(skip)]
    dot: usize,
}

impl FieldName {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        FieldRef::parse(s).map(FieldRef::to_owned)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn category(&self) -> &str {
        &self.text[..self.dot]
    }

    pub fn name(&self) -> &str {
        &self.text[self.dot + 1..]
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// The name borrowed, for what only looks at it (the policy, the decryption).
    pub fn borrowed(&self) -> FieldRef<'_> {
        FieldRef { text: &self.text, dot: self.dot }
    }
}

/// A [`FieldName`] borrowed from where it is kept: the subject cache packs its records' names
/// into one buffer instead of a `FieldName` each.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldRef<'a> {
    text: &'a str,
    dot: usize,
}

impl<'a> FieldRef<'a> {
    /// [`FieldName::parse`] without a copy of the text.
    pub fn parse(s: &'a str) -> Result<Self, InvalidId> {
        match s.split_once('.') {
            Some((c, n)) if is_snake(c) && is_snake(n) => Ok(Self { text: s, dot: c.len() }),
            _ => Err(InvalidId { what: "field name", rule: "category.name, both ^[a-z][a-z0-9_]{0,63}$" }),
        }
    }

    /// The text of a name parsed before (a [`FieldName::borrowed`] kept as text). Only the
    /// shape of such a text is trusted, not checked again: a text without a dot is all category.
    pub(crate) fn of_parsed(text: &'a str) -> Self {
        Self { text, dot: text.find('.').unwrap_or(text.len()) }
    }

    pub fn as_str(self) -> &'a str {
        self.text
    }

    pub fn category(self) -> &'a str {
        &self.text[..self.dot]
    }

    pub fn to_owned(self) -> FieldName {
        FieldName { text: self.text.to_owned(), dot: self.dot }
    }
}

impl fmt::Debug for FieldRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldRef({:?})", self.text)
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldName({:?})", self.text)
    }
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a caller is allowed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Lending services: store, read for a purpose, contracts, consents, disclosures.
    Service,
    /// The lender's website acting for a signed-in borrower: export, rectify, consents, erasure.
    Website,
    /// The security team: keys, audit.
    Security,
    /// Auditors: the audit trail, read only.
    Auditor,
    /// A metrics scraper: the detail of `/metrics` and `/readyz`, nothing else.
    Monitoring,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Service, Role::Website, Role::Security, Role::Auditor, Role::Monitoring];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::Website => "website",
            Role::Security => "security",
            Role::Auditor => "auditor",
            Role::Monitoring => "monitoring",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of one HTTP request (or CLI command), carried into its audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts a caller-supplied id if it is short and plain; otherwise `None`.
    pub fn parse(s: &str) -> Option<Self> {
        (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')))
            .then(|| Self(s.to_owned()))
    }

    /// A fresh random id (12 bytes from the OS CSPRNG, as hex). Every request without an id
    /// of its own takes one, so the bytes come from a small per-thread pool refilled from the
    /// OS 32 ids at a time rather than one system call each. Ids are not secrets (they are
    /// echoed and logged); keys and tokens never come from this pool.
    pub fn generate() -> Self {
        const ID: usize = 12;
        thread_local! {
            static POOL: std::cell::RefCell<([u8; 32 * ID], usize)> = const { std::cell::RefCell::new(([0; 32 * ID], 32 * ID)) };
        }
        POOL.with_borrow_mut(|(bytes, used)| {
            if *used == bytes.len() {
                fill_os_random(bytes);
                *used = 0;
            }
            let id = hex_string(&bytes[*used..*used + ID]);
            *used += ID;
            Self(id)
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `N` random bytes from the OS CSPRNG, as hex. For ids, never for keys.
pub fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    fill_os_random(&mut b);
    hex_string(&b)
}

/// Lower-case hex of `bytes`, as `hex::encode` writes it. That one collects its `String` one
/// `char` at a time (some 2,000 instructions for a SHA-256); this writes the digits into a
/// buffer of the right size. Every request id and every audit entry's hash goes through it.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the buffer holds two digits a byte");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Appends `s` as a JSON string, byte for byte as serde_json writes it. One without `"`, `\\`
/// or a byte below 0x20 (most field values, every id, name and hash) is copied between quotes
/// in one pass that vectorises, instead of serde_json's byte-at-a-time escaping loop; any
/// other goes through serde_json.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let escapes = s.bytes().fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Fills `buf` from the OS CSPRNG. Its failing is unrecoverable for a vault: ids must not repeat.
fn fill_os_random(buf: &mut [u8]) {
    use ring::rand::{SecureRandom, SystemRandom};
    SystemRandom::new().fill(buf).expect("OS random number generator");
}

/// Where "now" comes from. Passed in, so retention, holds and rotation are testable.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system clock, the only place the vault reads the real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned call
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// RFC 3339 text of a time, the one format the vault writes.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids() {
        for ok in ["a", "S-1", "borrower_0001.x", &"x".repeat(128)] {
            assert!(SubjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../etc", "a b", "ä", &"x".repeat(129), "a\0"] {
            let e = SubjectId::parse(bad).unwrap_err();
            assert!(bad.len() < 4 || !e.to_string().contains(bad), "error echoes input {bad:?}");
        }
    }

    #[test]
    fn field_names() {
        let f = FieldName::parse("identity.full_name").unwrap();
        assert_eq!((f.category(), f.name()), ("identity", "full_name"));
        // Serialised as its text alone; read back through parse.
        assert_eq!(serde_json::to_string(&f).unwrap(), r#""identity.full_name""#);
        assert_eq!(serde_json::from_str::<FieldName>(r#""identity.full_name""#).unwrap(), f);
        for bad in ["identity", "identity.", ".x", "Identity.x", "a.b.c", "a.b-c", "a..b"] {
            assert!(FieldName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_string_is_hex_encode() {
        for bytes in [&[][..], &[0x00], &[0x0f, 0xf0, 0xab], &[0xff; 32]] {
            assert_eq!(hex_string(bytes), hex::encode(bytes));
        }
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("abc-123").is_some());
        assert!(RequestId::parse("<script>").is_none());
        assert!(RequestId::parse(&"a".repeat(65)).is_none());
        assert_ne!(RequestId::generate(), RequestId::generate());
        // Across pool refills too: 100 ids (three refills) are all distinct and well-formed.
        let ids: std::collections::BTreeSet<String> = (0..100).map(|_| RequestId::generate().as_str().to_owned()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|i| i.len() == 24 && RequestId::parse(i).is_some()));
    }
}
