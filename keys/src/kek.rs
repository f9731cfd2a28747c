//! Key-encryption keys: one per generation, wrapped by the root key, wrapping subject DEKs.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Deref;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{ZeroizeOnDrop, Zeroizing};

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

/// Compile-time pin: the AES-256 key schedule zeroizes on drop. `aes-gcm`'s `zeroize` feature
/// does not switch on `aes`'s (keys/Cargo.toml names `aes` for that); without it this fails to
/// compile ("the trait bound `Aes256: ZeroizeOnDrop` is not satisfied"). `polyval` has no
/// `ZeroizeOnDrop` to pin, hence [`GcmKey`].
const _: fn() = || {
    fn assert_zeroize_on_drop<T: ZeroizeOnDrop>() {}
    assert_zeroize_on_drop::<aes::Aes256>();
    assert_zeroize_on_drop::<GcmKey>();
    assert_zeroize_on_drop::<secrecy::SecretBox<[u8; 32]>>();
};

/// An AES-256-GCM key (RustCrypto's `Aes256Gcm`) every byte of which is zeroized on drop.
///
/// `aes`'s `zeroize` feature clears the round keys, but the GHASH key H = AES_K(0¹²⁸) sits in
/// `polyval`, whose CPU-detecting backend (the one x86-64 uses; 0.6.2) holds its two
/// implementations in a `ManuallyDrop` union and never drops either, so its zeroizing `Drop`
/// never runs, `zeroize` feature or not. `Aes256Gcm` is flat (arrays and SIMD registers, no
/// pointers), so after dropping it in place this clears all of it, H included.
pub(crate) struct GcmKey(ManuallyDrop<Aes256Gcm>);

impl GcmKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self(ManuallyDrop::new(Aes256Gcm::new(key.into())))
    }
}

impl Deref for GcmKey {
    type Target = Aes256Gcm;
    fn deref(&self) -> &Aes256Gcm {
        &self.0
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        // SAFETY: the cipher is dropped exactly once, here, and never used again; what is then
        // zeroed is its own inline storage, for which all-zero bytes are a valid pattern (it holds
        // no references, pointers, enums or heap data: round-key arrays, SIMD values, ZST tokens).
        unsafe {
            ManuallyDrop::drop(&mut self.0);
            zeroize::zeroize_flat_type(&mut self.0 as *mut ManuallyDrop<Aes256Gcm>);
        }
    }
}

impl ZeroizeOnDrop for GcmKey {}

/// An unwrapped key-encryption key. Zeroized on drop (the secret, and the whole AES-GCM key
/// schedule through [`GcmKey`]); `Debug` shows only the generation.
pub struct Kek {
    generation: Generation,
    secret: Secret,
    cipher: GcmKey,
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
        let cipher = GcmKey::new(secret.expose());
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
    fn a_dropped_gcm_key_leaves_only_zeros() {
        let mut slot = std::mem::MaybeUninit::<GcmKey>::uninit();
        slot.write(GcmKey::new(&[0x5a; 32]));
        // Used once, so the GHASH state is the one a real wrap leaves.
        let sealed = wrap(unsafe { slot.assume_init_ref() }, Header::new(Kind::Dek, 1), Aad::new(b"h", "t"), &[7; 32]).unwrap();
        assert_eq!(sealed.len(), crate::OVERHEAD + 32);
        let bytes = unsafe {
            slot.assume_init_drop();
            std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), std::mem::size_of::<GcmKey>())
        };
        assert!(bytes.iter().all(|b| *b == 0), "key schedule bytes left after drop");
    }

    #[test]
    fn debug_is_redacted() {
        let kek = Kek::generate(Generation(2)).unwrap();
        assert_eq!(format!("{kek:?}"), "Kek(generation 2, <redacted>)");
    }
}
