//! Subject data-encryption keys and the field cipher built from them.

use std::fmt;

use ring::aead::{Aad as RingAad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::digest;
use zeroize::Zeroizing;

use crate::envelope::{Aad, Envelope, Header, Kind, NONCE_LEN, TAG_LEN};
use crate::kek::Generation;
use crate::secret::Secret;
use crate::{Error, FieldContext};

/// The version of a subject's DEK. A rekey makes version n+1; field ciphertexts name theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DekVersion(pub u32);

impl fmt::Display for DekVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A DEK wrapped by a KEK generation: ciphertext, safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek(pub Vec<u8>);

impl WrappedDek {
    /// The KEK generation that wrapped it, read from the (not yet authenticated) header.
    pub fn generation(&self) -> Option<Generation> {
        Envelope::parse_kind(&self.0, Kind::Dek).ok().map(|e| Generation(e.header.key_id))
    }

    /// A short public fingerprint of the wrapped key (SHA-256 of the ciphertext, 16 bytes as
    /// hex). It names the key in erasure receipts without revealing anything about it, and lets
    /// an auditor match a wrapped DEK found in an old backup to the one that was destroyed.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.0);
        hex::encode(&d.as_ref()[..16])
    }
}

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedDek({})", self.fingerprint())
    }
}

/// An unwrapped subject DEK. The raw bytes live in a zeroizing box; `Debug` is redacted.
pub struct Dek {
    version: DekVersion,
    secret: Secret,
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dek(version {}, <redacted>)", self.version)
    }
}

impl Dek {
    /// A fresh random DEK.
    pub fn generate(version: DekVersion) -> Result<Self, Error> {
        Ok(Self { version, secret: Secret::random()? })
    }

    pub(crate) fn from_secret(version: DekVersion, secret: Secret) -> Self {
        Self { version, secret }
    }

    pub fn version(&self) -> DekVersion {
        self.version
    }

    pub(crate) fn secret(&self) -> &Secret {
        &self.secret
    }

    /// A cipher for sealing and opening this subject's fields. Build one per request: ring's
    /// key schedule is not zeroized on drop (ring 0.17.14 implements no `Drop` for its AEAD
    /// keys), so it should live no longer than the work.
    pub fn cipher(&self) -> FieldCipher {
        // The key is exactly 32 bytes, the length AES-256-GCM takes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, self.secret.expose()).expect("32-byte AES-256 key");
        FieldCipher { key: LessSafeKey::new(unbound), version: self.version }
    }
}

/// AES-256-GCM (ring) over field values, bound to subject, field, record version and DEK
/// version.
pub struct FieldCipher {
    key: LessSafeKey,
    version: DekVersion,
}

impl fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldCipher(dek version {}, <redacted>)", self.version)
    }
}

impl FieldCipher {
    /// Seals `plaintext` for `ctx` with a fresh random nonce.
    pub fn seal(&self, ctx: &FieldContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(crate::OVERHEAD + plaintext.len());
        self.seal_with(crate::rand::array()?, ctx, plaintext, &mut out)?;
        Ok(out)
    }

    /// A sealer for about `n` fields: their nonces are drawn from the OS CSPRNG in one call
    /// instead of one call each (a write seals every field it stores).
    pub fn sealer(&self, n: usize) -> Result<Sealer<'_>, Error> {
        let mut nonces = vec![0u8; n * NONCE_LEN];
        crate::rand::fill(&mut nonces)?;
        Ok(Sealer { cipher: self, nonces, used: 0 })
    }

    /// Appends the envelope of `plaintext` sealed for `ctx` under `nonce` to `out`.
    fn seal_with(&self, nonce: [u8; NONCE_LEN], ctx: &FieldContext<'_>, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let header = Header::new(Kind::Field, self.version.0).to_bytes();
        let aad = field_aad(&header, ctx);
        out.reserve(crate::OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), RingAad::from(aad.as_slice()), &mut out[body_start..])
            .map_err(|_| Error::Decrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens a field ciphertext sealed for exactly `ctx` under this DEK version.
    pub fn open(&self, ctx: &FieldContext<'_>, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let env = Envelope::parse_kind(ciphertext, Kind::Field)?;
        if env.header.key_id != self.version.0 {
            return Err(Error::WrongKey {
                expected: format!("DEK version {}", self.version),
                found: format!("DEK version {}", env.header.key_id),
            });
        }
        let aad = field_aad(env.header_bytes, ctx);
        // The tag apart, so the buffer is the plaintext's exact size: a caller that keeps it
        // as a boxed string does not reallocate it.
        let (body, tag) = env.sealed.split_at(env.sealed.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| Error::Malformed("tag"))?;
        let mut buf = Zeroizing::new(body.to_vec());
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*env.nonce),
                RingAad::from(aad.as_slice()),
                tag,
                buf.as_mut_slice(),
                0..,
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(buf)
    }
}

/// Seals fields with nonces drawn ahead from the OS CSPRNG ([`FieldCipher::sealer`]). Each
/// nonce is taken once; past the ones drawn ahead, each seal draws its own.
pub struct Sealer<'a> {
    cipher: &'a FieldCipher,
    nonces: Vec<u8>,
    used: usize,
}

impl fmt::Debug for Sealer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({:?}, {} nonces left)", self.cipher, (self.nonces.len() - self.used) / NONCE_LEN)
    }
}

impl Sealer<'_> {
    /// Appends the envelope of `plaintext` sealed for `ctx` to `out` (which may already hold
    /// the start of a stored value).
    pub fn seal_into(&mut self, ctx: &FieldContext<'_>, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let nonce: [u8; NONCE_LEN] = match self.nonces.get(self.used..self.used + NONCE_LEN) {
            Some(n) => n.try_into().expect("NONCE_LEN bytes"),
            None => crate::rand::array()?,
        };
        self.used = (self.used + NONCE_LEN).min(self.nonces.len());
        self.cipher.seal_with(nonce, ctx, plaintext, out)
    }
}

fn field_aad(header: &[u8], ctx: &FieldContext<'_>) -> Aad {
    Aad::new(header, "qoima.field").bytes(ctx.subject.as_bytes()).bytes(ctx.field.as_bytes()).u64(ctx.record_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(subject: &'a str, field: &'a str, v: u64) -> FieldContext<'a> {
        FieldContext { subject, field, record_version: v }
    }

    #[test]
    fn seal_open_round_trip() {
        let dek = Dek::generate(DekVersion(1)).unwrap();
        let c = dek.cipher();
        for pt in [&b""[..], b"x", &[7u8; 4096]] {
            let ct = c.seal(&ctx("s", "identity.full_name", 1), pt).unwrap();
            assert_eq!(ct.len(), pt.len() + crate::OVERHEAD);
            assert_eq!(c.open(&ctx("s", "identity.full_name", 1), &ct).unwrap().as_slice(), pt);
        }
    }

    #[test]
    fn moved_ciphertext_fails() {
        let dek = Dek::generate(DekVersion(1)).unwrap();
        let c = dek.cipher();
        let ct = c.seal(&ctx("s-1", "identity.phone", 4), b"+77011234567").unwrap();
        assert!(c.open(&ctx("s-2", "identity.phone", 4), &ct).is_err(), "other subject");
        assert!(c.open(&ctx("s-1", "identity.email", 4), &ct).is_err(), "other field");
        assert!(c.open(&ctx("s-1", "identity.phone", 5), &ct).is_err(), "other version");
        // Another subject's key (or another DEK version) fails too.
        let other = Dek::generate(DekVersion(1)).unwrap().cipher();
        assert!(other.open(&ctx("s-1", "identity.phone", 4), &ct).is_err());
        let v2 = Dek::generate(DekVersion(2)).unwrap().cipher();
        assert!(matches!(v2.open(&ctx("s-1", "identity.phone", 4), &ct), Err(Error::WrongKey { .. })));
    }

    #[test]
    fn every_flipped_bit_fails() {
        let dek = Dek::generate(DekVersion(9)).unwrap();
        let c = dek.cipher();
        let k = ctx("s", "questionnaire.employer", 2);
        let ct = c.seal(&k, b"Kaspi Bank").unwrap();
        for i in 0..ct.len() * 8 {
            let mut bad = ct.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(c.open(&k, &bad).is_err(), "bit {i} flipped still opened");
        }
        // Truncation and extension fail too.
        assert!(c.open(&k, &ct[..ct.len() - 1]).is_err());
        let mut longer = ct.clone();
        longer.push(0);
        assert!(c.open(&k, &longer).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let c = Dek::generate(DekVersion(1)).unwrap().cipher();
        let a = c.seal(&ctx("s", "f.f", 1), b"same").unwrap();
        let b = c.seal(&ctx("s", "f.f", 1), b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_sealer_never_repeats_a_nonce_and_opens_like_seal() {
        let dek = Dek::generate(DekVersion(3)).unwrap();
        let c = dek.cipher();
        let mut sealer = c.sealer(2).unwrap();
        let mut nonces = std::collections::BTreeSet::new();
        // Two drawn ahead, then two more drawn one at a time.
        for i in 0..4u64 {
            let k = ctx("s", "identity.phone", i);
            let mut out = b"prefix".to_vec();
            sealer.seal_into(&k, b"+77011234567", &mut out).unwrap();
            assert_eq!(&out[..6], b"prefix", "the value's start is kept");
            let ct = &out[6..];
            assert_eq!(c.open(&k, ct).unwrap().as_slice(), b"+77011234567");
            let env = Envelope::parse_kind(ct, Kind::Field).unwrap();
            assert!(nonces.insert(*env.nonce), "nonce {i} repeated");
        }
        assert!(format!("{sealer:?}").contains("0 nonces left"));
    }

    #[test]
    fn debug_is_redacted() {
        let dek = Dek::generate(DekVersion(1)).unwrap();
        assert_eq!(format!("{dek:?}"), "Dek(version 1, <redacted>)");
        assert_eq!(format!("{:?}", dek.cipher()), "FieldCipher(dek version 1, <redacted>)");
    }
}
