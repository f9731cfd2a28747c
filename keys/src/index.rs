//! Blind-index keys: one per KEK generation, wrapped by the root key like the KEK, turning a
//! field's normalised value into a keyed hash the vault can store beside the ciphertext and look
//! up by, without a plaintext index.
//!
//! The hash is HMAC-SHA-256 (RustCrypto's `hmac` and `sha2`) over a label, the field name and
//! the value, at its full 32 bytes: whoever holds the index key also holds the KEKs, so a
//! truncated index would hide nothing from them, while a full one never makes two values of a
//! unique field collide (docs/key-management.md).

use std::fmt;
use std::mem::ManuallyDrop;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::ZeroizeOnDrop;

use crate::envelope::{Aad, Envelope, Header, Kind};
use crate::kek::{unwrap, wrap, GcmKey, Generation};
use crate::secret::Secret;
use crate::Error;

/// A blind-index key wrapped by the root key: ciphertext, safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedIndexKey(pub Vec<u8>);

impl fmt::Debug for WrappedIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedIndexKey({} bytes)", self.0.len())
    }
}

/// The keyed hash of one field value. Equal values of one field under one key give equal
/// indexes; nothing else can be learnt from it without the key. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlindIndex(pub [u8; 32]);

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(<redacted>)")
    }
}

/// An HMAC-SHA-256 state every byte of which is zeroized on drop: the keyed inner and outer
/// hash states are as good as the key. `hmac` 0.12 and `sha2` 0.10 have no `zeroize`; their
/// state is flat (hash words, block buffers, no pointers), so after dropping it in place this
/// clears all of it, as [`GcmKey`] does for AES-GCM.
struct KeyedMac(ManuallyDrop<Hmac<Sha256>>);

impl Drop for KeyedMac {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here, and never used again; the storage zeroed is its
        // own inline state, for which all-zero bytes are a valid pattern (arrays and integers).
        unsafe {
            ManuallyDrop::drop(&mut self.0);
            zeroize::zeroize_flat_type(&mut self.0 as *mut ManuallyDrop<Hmac<Sha256>>);
        }
    }
}

impl ZeroizeOnDrop for KeyedMac {}

/// An unwrapped blind-index key. Zeroized on drop (the secret, and each keyed HMAC state it
/// makes); `Debug` shows only the generation.
pub struct IndexKey {
    generation: Generation,
    secret: Secret,
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexKey(generation {}, <redacted>)", self.generation)
    }
}

impl IndexKey {
    /// A fresh random index key for `generation`.
    pub fn generate(generation: Generation) -> Result<Self, Error> {
        Ok(Self { generation, secret: Secret::random()? })
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The index of `value` (already normalised) in `field`. The field is part of the input, so
    /// one value in two fields indexes differently.
    pub fn blind(&self, field: &str, value: &[u8]) -> BlindIndex {
        let mut mac = KeyedMac(ManuallyDrop::new(
            <Hmac<Sha256> as Mac>::new_from_slice(self.secret.expose()).expect("HMAC takes a key of any length"),
        ));
        mac.0.update(b"qoima.blind-index.v1\0");
        mac.0.update(&(field.len() as u32).to_be_bytes());
        mac.0.update(field.as_bytes());
        mac.0.update(value);
        // Finalised in place (`reset`), so no copy of the keyed state outlives `mac`, which
        // clears it when it drops.
        BlindIndex(mac.0.finalize_reset().into_bytes().into())
    }

    /// Wraps this key under the root key's cipher; bound to its generation.
    pub(crate) fn wrap_with(&self, cipher: &GcmKey, root_id: u32) -> Result<WrappedIndexKey, Error> {
        let header = Header::new(Kind::IndexKey, root_id);
        let aad = index_key_aad(&header.to_bytes(), self.generation);
        Ok(WrappedIndexKey(wrap(cipher, header, aad, self.secret.expose())?))
    }

    /// Unwraps the index key of `generation`.
    pub(crate) fn unwrap_with(cipher: &GcmKey, root_id: u32, generation: Generation, wrapped: &WrappedIndexKey) -> Result<Self, Error> {
        let env = Envelope::parse_kind(&wrapped.0, Kind::IndexKey)?;
        if env.header.key_id != root_id {
            return Err(Error::WrongKey {
                expected: format!("root key {root_id:08x}"),
                found: format!("root key {:08x}", env.header.key_id),
            });
        }
        let aad = index_key_aad(env.header_bytes, generation);
        Ok(Self { generation, secret: unwrap(cipher, &env, aad)? })
    }
}

fn index_key_aad(header: &[u8], generation: Generation) -> Aad {
    Aad::new(header, "qoima.index_key").u64(u64::from(generation.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_index_equally_and_nothing_else_does() {
        let k = IndexKey::generate(Generation(1)).unwrap();
        let a = k.blind("identity.iin", b"900101300017");
        assert_eq!(a, k.blind("identity.iin", b"900101300017"));
        assert_ne!(a, k.blind("identity.iin", b"900101300018"));
        assert_ne!(a, k.blind("identity.phone", b"900101300017"), "the field is part of the input");
        // The field's length is framed: ("ab", "c…") and ("a", "bc…") differ.
        assert_ne!(k.blind("ab", b"c"), k.blind("a", b"bc"));
        let other = IndexKey::generate(Generation(2)).unwrap();
        assert_ne!(a, other.blind("identity.iin", b"900101300017"), "each generation's key indexes apart");
        assert_eq!(format!("{a:?}"), "BlindIndex(<redacted>)");
        assert_eq!(format!("{k:?}"), "IndexKey(generation 1, <redacted>)");
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256 with a fixed key over the framed input, computed independently:
        // python3 -c 'import hmac,hashlib; print(hmac.new(bytes(32), b"qoima.blind-index.v1\0"
        //   + (1).to_bytes(4,"big") + b"f" + b"v", hashlib.sha256).hexdigest())'
        let mut zero = [0u8; 32];
        let k = IndexKey { generation: Generation(1), secret: Secret::from_bytes(&mut zero) };
        assert_eq!(hex::encode(k.blind("f", b"v").0), KNOWN);
    }

    const KNOWN: &str = "71980d1f9a737ed4f0583c567e441a48801b2abfaaa90dffb9459f479f00595c";
}
