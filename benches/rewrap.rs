//! Rewrap throughput and its effect on reads (issue #5): loads N subjects (default 100,000;
//! `-- --subjects 1000000` for the full run), rotates the KEK, then measures
//!
//! 1. read latency (p50/p99 of `Vault::read` for random subjects) with no rewrap running;
//! 2. the rewrap on its background thread, with the same reads running against it: DEKs per
//!    second, DEKs per second per core (from the process's CPU time), and read latency during.
//!
//! Run: `cargo bench --bench rewrap [-- --subjects N]`. Figures in docs/performance.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qoima::domain::{CallerName, Purpose, RequestId, Role, SubjectId, SystemClock};
use qoima::policy::Caller;
use qoima::vault::rewrap::RewrapState;
use qoima::vault::{Ctx, Mode, Settings, Vault};
use serde_json::{json, Value};

fn ctx(role: Role) -> Ctx {
    Ctx {
        caller: Caller {
            name: CallerName::parse("bench").unwrap(),
            roles: [role].into(),
            purposes: [Purpose::parse("loan_issuance").unwrap()].into(),
        }
        .into(),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1)]
}

/// Reads random subjects on `threads` threads until `stop`; returns the latencies.
fn reads(vault: &Arc<Vault>, n: usize, threads: usize, stop: &Arc<AtomicBool>) -> Vec<Duration> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (vault, stop) = (vault.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = ctx(Role::Service);
                let mut lat = Vec::new();
                let mut x = 0x9e3779b97f4a7c15u64.wrapping_mul(t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = SubjectId::parse(&format!("s{:07}", x as usize % n)).unwrap();
                    let t0 = Instant::now();
                    vault.read(Mode::Wait, &c, &id, "loan_issuance", None).wait().unwrap();
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    all
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize =
        args.iter().position(|a| a == "--subjects").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let root = qoima_keys::RootKeySource::File(dir.path().join("root.key")).load().unwrap();
    let mut settings = Settings::new(dir.path().join("data"));
    settings.rewrap_batch = 512;
    settings.dek_cache_capacity = 10_000;
    let vault = Arc::new(Vault::open(settings, root, Arc::new(SystemClock), Default::default()).unwrap());

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..64)
        .map(|_| {
            let (vault, next) = (vault.clone(), next.clone());
            std::thread::spawn(move || {
                let c = ctx(Role::Service);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let fields: BTreeMap<String, Value> = [
                        ("identity.full_name".to_string(), json!(format!("Borrower {i}"))),
                        ("questionnaire.monthly_income".to_string(), json!(i)),
                    ]
                    .into();
                    vault.put_fields(Mode::Wait, &c, &SubjectId::parse(&format!("s{i:07}")).unwrap(), &fields).wait().unwrap();
                }
            })
        })
        .collect();
    for l in loaders {
        l.join().unwrap();
    }
    eprintln!("loaded {n} subjects in {:.1} s", t0.elapsed().as_secs_f64());

    let sec = ctx(Role::Security);
    vault.rotate_kek(&sec).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        s2.store(true, Ordering::SeqCst);
    });
    let quiet = reads(&vault, n, 4, &stop);
    timer.join().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (v2, s2) = (vault.clone(), stop.clone());
    let reader = std::thread::spawn(move || reads(&v2, n, 4, &s2));
    let (cpu0, w0) = (cpu_seconds(), Instant::now());
    vault.start_rewrap(&sec).unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if vault.rewrap_job().unwrap().state == RewrapState::Complete {
            break;
        }
    }
    let (wall, cpu) = (w0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    stop.store(true, Ordering::SeqCst);
    let busy = reader.join().unwrap();
    let job = vault.rewrap_job().unwrap();
    vault.close();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| subjects | DEKs moved | wall | DEKs/s | CPU s (whole process, 4 readers included) | DEKs/s per core of rewrap+reads |");
    println!("|---|---|---|---|---|---|");
    println!("| {n} | {} | {wall:.1} s | {:.0} | {cpu:.1} | {:.0} |", job.done, job.done as f64 / wall, job.done as f64 / cpu);
    println!();
    println!("| reads (4 threads) | count | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|");
    for (name, l) in [("without rewrap", &quiet), ("during rewrap", &busy)] {
        println!(
            "| {name} | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            l.len(),
            ms(percentile(l, 50.0)),
            ms(percentile(l, 99.0)),
            ms(percentile(l, 99.9))
        );
    }
}
