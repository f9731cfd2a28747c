//! Key management for Qoima: the AEAD envelope, KEK generations, root-key sources and the
//! secret types that hold key bytes.
//!
//! **Invariants.** This crate knows nothing of tokio, axum or RocksDB. No public function
//! returns raw key bytes: keys go in (generated here, unwrapped here, or loaded from a root-key
//! source) and only ciphertexts come out. Every key type zeroizes on drop and its `Debug` is
//! redacted. All randomness comes from the OS CSPRNG (`ring::rand::SystemRandom`).
//!
//! The key hierarchy:
//! ```text
//! RootKey ──wraps──▶ Kek (generation g) ──wraps──▶ Dek (subject s, version v) ──seals──▶ fields
//!    └─────wraps──▶ IndexKey (generation g) ──blinds──▶ indexed field values
//! ```
//! Wrapping (root→KEK, KEK→DEK) uses RustCrypto's `aes-gcm`, held in a `GcmKey` that zeroizes
//! the whole key schedule on drop: the AES round keys (through `aes`'s `zeroize` feature, pinned
//! by a compile-time `ZeroizeOnDrop` check in `kek.rs`) and the GHASH key, which polyval 0.6.2's
//! CPU-detecting backend never clears itself. Bulk field sealing uses `ring`'s AES-256-GCM,
//! measured faster (see `docs/crypto-benchmarks.md`), with the raw DEK bytes kept in a zeroizing
//! box and the ring key schedule built per use. **ring does not zeroize its key schedules**
//! (0.17.14 has no `Drop` or `zeroize` in its AEAD code): a field cipher's round keys stay in
//! freed memory until reused, which is why it lives for one request only.

mod dek;
mod envelope;
mod error;
mod index;
mod kek;
mod rand;
mod root;
mod secret;

pub use dek::{Dek, DekVersion, FieldCipher, Sealer, WrappedDek};
pub use envelope::{Envelope, Header, Kind, FORMAT_V1, OVERHEAD};
pub use error::Error;
pub use index::{BlindIndex, IndexKey, WrappedIndexKey};
pub use kek::{Generation, Kek, WrappedKek};
pub use root::{CredentialName, RootKey, RootKeySource};
pub use secret::Secret;

/// Where a sealed field belongs. The AEAD binds a ciphertext to all three, so a ciphertext
/// copied to another subject, another field or another record version fails to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldContext<'a> {
    pub subject: &'a str,
    pub field: &'a str,
    pub record_version: u64,
}
