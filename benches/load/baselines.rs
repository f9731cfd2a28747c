//! The ceilings measured in the same run: a bare axum handler returning the bytes of a fetch
//! response (HTTP on this machine), raw ring AES-256-GCM seal+open of 1 KiB (crypto), and
//! raw RocksDB put (synced) / get of 1 KiB through `qoima::store::Store` (storage).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use qoima::layout::subject_key;
use qoima::store::{Batch, Space, Store};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::oneshot;

use crate::Point;

/// Starts a bare axum server on 127.0.0.1:0 whose GET /v1/subjects/{id} answers `body` with
/// the same headers the vault sends. Returns its address and a stop switch.
pub async fn bare_axum(body: Bytes) -> Result<(SocketAddr, oneshot::Sender<()>), String> {
    let app = Router::new().route(
        "/v1/subjects/{id}",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "no-store"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::HeaderName::from_static("x-request-id"), "req_0123456789abcdef01234567"),
                    ],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((addr, tx))
}

/// Latency samples (ns) of every thread, and the wall time.
fn point_from(system: &'static str, scenario: &'static str, threads: usize, mut lat: Vec<u64>, wall: Duration) -> Point {
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1e6
    };
    let seconds = wall.as_secs_f64();
    Point {
        system,
        scenario,
        connections: threads,
        requests: lat.len() as u64,
        seconds,
        throughput: lat.len() as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        mean_ms: if lat.is_empty() { 0.0 } else { lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e6 },
        max_ms: lat.last().map(|v| *v as f64 / 1e6).unwrap_or(0.0),
        errors: 0,
        rss_mib: None,
        settled_s: 0.0,
        cpu_us_per_request: None,
        note: None,
        rounds: Vec::new(),
    }
}

/// Runs `op(thread, i)` on `threads` threads for `d`; returns every latency and the wall time.
fn hammer(threads: usize, d: Duration, op: impl Fn(usize, u64) + Sync) -> (Vec<u64>, Duration) {
    let start = Instant::now();
    let deadline = start + d;
    let lats: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(1 << 16);
                    let mut i = 0u64;
                    loop {
                        let t0 = Instant::now();
                        op(t, i);
                        let t1 = Instant::now();
                        lat.push((t1 - t0).as_nanos() as u64);
                        i += 1;
                        if t1 >= deadline {
                            break;
                        }
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("baseline thread")).collect()
    });
    let wall = start.elapsed();
    (lats.concat(), wall)
}

/// ring AES-256-GCM: seal then open 1 KiB with a 16-byte AAD, a fresh nonce each time.
pub fn ring_seal_open(threads: usize, d: Duration) -> Point {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).expect("random key");
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("key"));
    let plain = vec![0x5au8; 1024];
    let aad = *b"qoima.load.aad!!";
    let (lat, wall) = hammer(threads, d, |t, i| {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&(t as u32).to_be_bytes());
        n[4..].copy_from_slice(&i.to_be_bytes());
        let mut buf = Vec::with_capacity(1024 + 16);
        buf.extend_from_slice(&plain);
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut buf).expect("seal");
        let out = key.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut buf).expect("open");
        assert_eq!(out.len(), 1024);
    });
    point_from("ring", "seal_open", threads, lat, wall)
}

/// Writes `n` keys of "thread 0" in batches of 1,000, so get points have data to read.
pub fn prefill(store: &Store, n: u64) -> Result<(), String> {
    let value = vec![0xa5u8; 1024];
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::default();
        for &i in chunk {
            b.put(Space::Records, raw_key(0, i), value.clone());
        }
        store.write(&b).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn raw_key(t: usize, i: u64) -> Vec<u8> {
    subject_key(&format!("raw-{t:02}-{i:09}"), "identity.full_name")
}

/// RocksDB put of one 1 KiB value, one synced batch per put (what the vault's writes cost
/// at the bottom, without the audit entry).
pub fn rocks_put(store: &Store, threads: usize, d: Duration) -> Point {
    let value = vec![0xa5u8; 1024];
    let (lat, wall) = hammer(threads, d, |t, i| {
        let mut b = Batch::default();
        b.put(Space::Records, raw_key(t, i), value.clone());
        store.write(&b).expect("synced put");
    });
    point_from("rocksdb", "put_sync", threads, lat, wall)
}

/// RocksDB point get of a random key among those of "thread 0" (the prefill and the puts).
pub fn rocks_get(store: &Store, threads: usize, d: Duration) -> Point {
    // Thread 0's keys run 0, 1, 2, … without gaps: find how far they go.
    let exists = |i: u64| store.get(Space::Records, &raw_key(0, i)).ok().flatten().is_some();
    let mut last = 0u64;
    while last < 1 << 20 && exists(last + 1024) {
        last += 1024;
    }
    let span = last + 1;
    let (lat, wall) = hammer(threads, d, |t, i| {
        // A cheap, thread-distinct pseudo-random walk over the written range.
        let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) % span;
        let v = store.get(Space::Records, &raw_key(0, x)).expect("get");
        std::hint::black_box(v);
    });
    point_from("rocksdb", "get", threads, lat, wall)
}
