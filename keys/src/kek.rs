//! Key-encryption keys: one per generation, wrapped by the root key, wrapping subject DEKs.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use crate::dek::{Dek, DekVersion, WrappedDek};
use crate::envelope::{frame, Aad, Envelope, Header, Kind, NONCE_LEN};
use crate::secret::Secret;
use crate::Error;

/// A KEK generation number. Generation 1 is the first; rotation adds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u32);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A KEK generation wrapped by the root key: ciphertext, safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKek(pub Vec<u8>);

impl fmt::Debug for WrappedKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKek({} bytes)", self.0.len())
    }
}

/// An unwrapped key-encryption key. Zeroized on drop (the secret and, through `aes-gcm`'s
/// `zeroize` feature, the key schedule); `Debug` shows only the generation.
pub struct Kek {
    generation: Generation,
    secret: Secret,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek(generation {}, <redacted>)", self.generation)
    }
}

impl Kek {
    /// A fresh random KEK for `generation`.
    pub fn generate(generation: Generation) -> Result<Self, Error> {
        Ok(Self::from_secret(generation, Secret::random()?))
    }

    pub(crate) fn from_secret(generation: Generation, secret: Secret) -> Self {
        let cipher = Aes256Gcm::new(secret.expose().into());
        Self { generation, secret, cipher }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub(crate) fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Wraps a subject's DEK; the result is bound to the subject, the DEK version and this
    /// generation.
    pub fn wrap_dek(&self, subject: &str, dek: &Dek) -> Result<WrappedDek, Error> {
        let header = Header::new(Kind::Dek, self.generation.0);
        let aad = dek_aad(&header.to_bytes(), subject, dek.version());
        let sealed = wrap(&self.cipher, header, aad, dek.secret().expose())?;
        Ok(WrappedDek(sealed))
    }

    /// Unwraps a DEK previously wrapped for `subject` at `version` by this generation.
    pub fn unwrap_dek(&self, subject: &str, version: DekVersion, wrapped: &WrappedDek) -> Result<Dek, Error> {
        let env = Envelope::parse_kind(&wrapped.0, Kind::Dek)?;
        if env.header.key_id != self.generation.0 {
            return Err(Error::WrongKey {
                expected: format!("KEK generation {}", self.generation),
                found: format!("KEK generation {}", env.header.key_id),
            });
        }
        let aad = dek_aad(env.header_bytes, subject, version);
        let secret = unwrap(&self.cipher, &env, aad)?;
        Ok(Dek::from_secret(version, secret))
    }
}

fn dek_aad(header: &[u8], subject: &str, version: DekVersion) -> Aad {
    Aad::new(header, "qoima.dek").bytes(subject.as_bytes()).u64(u64::from(version.0))
}

/// Seals 32 key bytes into an envelope with `aes-gcm` and a random nonce.
pub(crate) fn wrap(cipher: &Aes256Gcm, header: Header, aad: Aad, key: &[u8; 32]) -> Result<Vec<u8>, Error> {
    let nonce: [u8; NONCE_LEN] = crate::rand::array()?;
    let mut body = Zeroizing::new(*key);
    let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), aad.as_slice(), body.as_mut()).map_err(|_| Error::Decrypt)?;
    let mut out = frame(header, &nonce, body.len() + tag.len());
    out.extend_from_slice(body.as_ref());
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens an envelope holding 32 key bytes.
pub(crate) fn unwrap(cipher: &Aes256Gcm, env: &Envelope<'_>, aad: Aad) -> Result<Secret, Error> {
    if env.sealed.len() != 32 + 16 {
        return Err(Error::Malformed("wrapped key has the wrong length"));
    }
    let (ct, tag) = env.sealed.split_at(32);
    let mut body = Zeroizing::new([0u8; 32]);
    body.copy_from_slice(ct);
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(env.nonce), aad.as_slice(), body.as_mut(), Tag::from_slice(tag))
        .map_err(|_| Error::Decrypt)?;
    Ok(Secret::from_bytes(&mut body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dek_wrap_round_trip_and_binding() {
        let kek = Kek::generate(Generation(3)).unwrap();
        let dek = Dek::generate(DekVersion(1)).unwrap();
        let wrapped = kek.wrap_dek("s-1", &dek).unwrap();
        assert_eq!(wrapped.generation(), Some(Generation(3)));
        let back = kek.unwrap_dek("s-1", DekVersion(1), &wrapped).unwrap();
        assert_eq!(back.secret().expose(), dek.secret().expose());

        // Bound to the subject and the DEK version.
        assert!(matches!(kek.unwrap_dek("s-2", DekVersion(1), &wrapped), Err(Error::Decrypt)));
        assert!(matches!(kek.unwrap_dek("s-1", DekVersion(2), &wrapped), Err(Error::Decrypt)));
        // Another generation refuses it by id before trying.
        let other = Kek::generate(Generation(4)).unwrap();
        assert!(matches!(other.unwrap_dek("s-1", DekVersion(1), &wrapped), Err(Error::WrongKey { .. })));
    }

    #[test]
    fn every_flipped_bit_of_a_wrapped_dek_fails() {
        let kek = Kek::generate(Generation(1)).unwrap();
        let dek = Dek::generate(DekVersion(1)).unwrap();
        let wrapped = kek.wrap_dek("s", &dek).unwrap();
        for i in 0..wrapped.0.len() * 8 {
            let mut bad = wrapped.clone();
            bad.0[i / 8] ^= 1 << (i % 8);
            assert!(kek.unwrap_dek("s", DekVersion(1), &bad).is_err(), "bit {i} flipped still opened");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let kek = Kek::generate(Generation(2)).unwrap();
        assert_eq!(format!("{kek:?}"), "Kek(generation 2, <redacted>)");
    }
}
