//! Heap allocations per request (issue #6): a counting allocator around the system one, the
//! real router driven in-process (no sockets, so hyper's own work is left out), the audit
//! committer's work included. Allocation counts are deterministic where timings are noise, so
//! this is where the request path's waste shows. Run: `cargo bench --bench allocs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOKEN: &str = "qv1_allocs_bench_token_0123456789abcdef";

fn main() {
    // `cargo test --benches` runs benches without --bench: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[root_key]\nfile = \"{}\"\n[[callers]]\nname = \"svc\"\ntoken_sha256 = \"{}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\n",
        dir.path().join("data").display(),
        dir.path().join("root.key").display(),
        hex::encode(qoima::auth::token_digest(TOKEN)),
    );
    let config = qoima::config::Config::parse(&text, "bench", dir.path(), &|_| None).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let vault = Arc::new(qoima::server::open_vault(&config, &Default::default()).unwrap());
        let fallback = qoima::privacy::PublicUrl::parse("http://127.0.0.1:1").unwrap();
        let state =
            qoima::api::AppState::new(vault.clone(), config.callers.clone(), qoima::privacy::Sessions::new(&config.privacy, fallback));
        let router = qoima::api::router(state, (&config.limits).into());
        let fields = serde_json::json!({"fields": {
            "identity.full_name": "Aigerim Seitkali", "identity.iin": "900101300017", "identity.phone": "+77011234567",
            "identity.address": "x".repeat(900), "questionnaire.monthly_income": 350000}});
        let body = serde_json::to_vec(&fields).unwrap();
        let put = |i: usize| {
            Request::put(format!("/v1/subjects/s-{i}"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap()
        };
        let get = |i: usize| {
            Request::get(format!("/v1/subjects/s-{i}?purpose=loan_issuance"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap()
        };
        // QOIMA_ALLOCS_N: fewer requests, for runs under `valgrind --tool=callgrind`, where the
        // difference of two runs' instruction counts is the cost of the extra requests.
        let n: usize = std::env::var("QOIMA_ALLOCS_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
        println!("| request | allocations per request | bytes allocated per request |");
        println!("|---|---:|---:|");
        // The first fetch of each subject looks it up in the store and keeps its view; the
        // second finds it in the subject cache, as a hot subject's reads do.
        for (name, make) in [
            ("subject create, 1 KiB (PUT)", &put as &dyn Fn(usize) -> Request<Body>),
            ("fetch-with-purpose (GET), first read of the subject", &get),
            ("fetch-with-purpose (GET), subject cached", &get),
        ] {
            // Warm up (DEK cache, lazily built state), then count.
            for i in 0..200 {
                let res = router.clone().oneshot(make(i)).await.unwrap();
                assert!(res.status().is_success(), "{name}: {}", res.status());
                axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            }
            let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
            for i in 200..200 + n {
                let res = router.clone().oneshot(make(i)).await.unwrap();
                assert!(res.status().is_success(), "{name}: {}", res.status());
                axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
            }
            let (a, b) = (ALLOCS.load(Ordering::Relaxed) - a0, BYTES.load(Ordering::Relaxed) - b0);
            // The request builders' own allocations are part of the count; they are the
            // same few for every request and small next to the vault's.
            println!("| {name} | {:.0} | {:.0} |", a as f64 / n as f64, b as f64 / n as f64);
        }
        vault.close();
    });
}
