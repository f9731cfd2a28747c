//! AES-256-GCM: ring against RustCrypto's aes-gcm, seal+open, on 64 B, 1 KiB and 64 KiB
//! (issue #2), plus Qoima's own field cipher (ring underneath, with the envelope and AAD).
//! The faster one takes the hot path; figures in docs/crypto-benchmarks.md.
//!
//! Run: `cargo bench --bench aead`

use aes_gcm::aead::{AeadInPlace, KeyInit};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qoima_keys::{Dek, DekVersion, FieldContext};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];

fn bench(c: &mut Criterion) {
    let key = [7u8; 32];
    let nonce = [9u8; 12];
    let aad = b"qoima bench aad";
    let mut group = c.benchmark_group("aes256gcm_seal_open");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let plain = vec![0x5au8; size];

        let ring_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        group.bench_with_input(BenchmarkId::new("ring", label), &plain, |b, plain| {
            let mut buf = Vec::with_capacity(size + 16);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(plain);
                ring_key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).unwrap();
                let out = ring_key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).unwrap();
                assert_eq!(out.len(), size);
            })
        });

        let rc = aes_gcm::Aes256Gcm::new((&key).into());
        group.bench_with_input(BenchmarkId::new("aes-gcm", label), &plain, |b, plain| {
            let mut buf = Vec::with_capacity(size + 16);
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(plain);
                rc.encrypt_in_place(aes_gcm::Nonce::from_slice(&nonce), aad, &mut buf).unwrap();
                rc.decrypt_in_place(aes_gcm::Nonce::from_slice(&nonce), aad, &mut buf).unwrap();
                assert_eq!(buf.len(), size);
            })
        });

        let dek = Dek::generate(DekVersion(1)).unwrap();
        let ctx = FieldContext { subject: "borrower-000123", field: "questionnaire.loan_purpose", record_version: 7 };
        group.bench_with_input(BenchmarkId::new("qoima-field", label), &plain, |b, plain| {
            let cipher = dek.cipher();
            b.iter(|| {
                let ct = cipher.seal(&ctx, plain).unwrap();
                let pt = cipher.open(&ctx, &ct).unwrap();
                assert_eq!(pt.len(), size);
            })
        });
    }
    group.finish();

    // What a read costs in key handling: building the ring key from DEK bytes, per request.
    let dek = Dek::generate(DekVersion(1)).unwrap();
    c.bench_function("dek_cipher_setup", |b| b.iter(|| dek.cipher()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
