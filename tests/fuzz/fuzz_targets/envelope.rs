//! Fuzz target: the ciphertext envelope parser and every opener that takes stored bytes.
//!
//! Arbitrary bytes must never panic `Envelope::parse`, `FieldCipher::open`, `Kek::unwrap_dek`
//! or `RootKey::unwrap_kek` (or `unwrap_index_key`); they must never open (no forgery); and a sealed value with any
//! edit must fail to open while the untouched one opens to the same plaintext.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qoima_keys::{Dek, DekVersion, Envelope, FieldContext, Generation, Kek, Kind, RootKey, WrappedDek, WrappedIndexKey, WrappedKek, OVERHEAD};

struct Keys {
    dek: Dek,
    kek: Kek,
    root: RootKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // A throwaway root key in a private temp dir, made once per process.
        let dir = std::env::temp_dir().join(format!("qoima-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.key");
        let _ = std::fs::remove_file(&path);
        let root = RootKey::generate_file(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        Keys { dek: Dek::generate(DekVersion(1)).unwrap(), kek: Kek::generate(Generation(1)).unwrap(), root }
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let ctx = FieldContext { subject: "s-1", field: "identity.full_name", record_version: 1 };

    // 1. Parsing: never panics; what parses has a sane shape.
    if let Ok(env) = Envelope::parse(data) {
        assert!(data.len() >= OVERHEAD);
        assert_eq!(env.header.format, qoima_keys::FORMAT_V1);
        assert!(matches!(env.header.kind, Kind::Field | Kind::Dek | Kind::Kek | Kind::IndexKey));
    } else {
        assert!(data.len() < OVERHEAD || data[0] != qoima_keys::FORMAT_V1 || !(1..=4).contains(&data[1]));
    }

    // 2. Opening arbitrary bytes as stored ciphertexts: an error, never a panic, never a forgery.
    let cipher = k.dek.cipher();
    assert!(cipher.open(&ctx, data).is_err(), "arbitrary bytes opened as a field");
    assert!(k.kek.unwrap_dek("s-1", DekVersion(1), &WrappedDek(data.to_vec())).is_err(), "arbitrary bytes unwrapped as a DEK");
    assert!(k.root.unwrap_kek(Generation(1), &WrappedKek(data.to_vec())).is_err(), "arbitrary bytes unwrapped as a KEK");
    assert!(k.root.unwrap_index_key(Generation(1), &WrappedIndexKey(data.to_vec())).is_err(), "arbitrary bytes unwrapped as an index key");
    let _ = WrappedDek(data.to_vec()).generation();

    // 3. Seal the input, then flip one byte chosen by the input: the edit never opens, the
    //    original always does.
    let sealed = cipher.seal(&ctx, data).unwrap();
    assert_eq!(cipher.open(&ctx, &sealed).unwrap().as_slice(), data);
    if let Some(&b) = data.first() {
        let mut edited = sealed.clone();
        let i = (b as usize * 7 + data.len()) % edited.len();
        edited[i] ^= b | 1;
        assert!(cipher.open(&ctx, &edited).is_err(), "an edited ciphertext opened");
        // Truncation and extension fail too.
        assert!(cipher.open(&ctx, &sealed[..sealed.len() - 1]).is_err());
        // The same ciphertext in another place (subject, field, version) fails.
        let moved = FieldContext { subject: "s-2", ..ctx };
        assert!(cipher.open(&moved, &sealed).is_err());
    }
});
