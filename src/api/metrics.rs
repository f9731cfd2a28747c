//! `GET /metrics`: Prometheus text. HTTP requests by route template and status, decisions by
//! action/purpose/outcome, audit commit latency, DEK cache, KEK generations, rewrap progress,
//! RocksDB and process figures. No subject ids, values or tokens.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::extract::Scrape;
use super::AppState;
use crate::metrics::{header as help, label_text, Buckets};

/// HTTP request counters and latencies, by route template (and method and status). Recording
/// one request takes one lock and, once a route has been seen, no allocation.
#[derive(Debug, Default)]
pub struct HttpMetrics(Mutex<HashMap<Box<str>, RouteStats>>);

#[derive(Debug, Default)]
struct RouteStats {
    latency: Buckets,
    /// Requests by method and status (a handful per route).
    requests: Vec<(&'static str, u16, u64)>,
}

/// The `method` label: the methods HTTP defines (RFC 9110 §9, and PATCH), else `other`. hyper
/// accepts any token as a method; labelling each one would let a client add label sets without
/// bound.
fn method_label(method: &Method) -> &'static str {
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN.iter().find(|m| *m == method).map_or("other", Method::as_str)
}

impl HttpMetrics {
    pub fn record(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let mut routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let stats = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.into()).or_default(),
        };
        stats.latency.observe(elapsed);
        let (method, status) = (method_label(method), status.as_u16());
        match stats.requests.iter_mut().find(|(m, s, _)| *m == method && *s == status) {
            Some(seen) => seen.2 += 1,
            None => stats.requests.push((method, status, 1)),
        }
    }

    fn render(&self, o: &mut String) {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut sorted: Vec<(&str, &RouteStats)> = routes.iter().map(|(r, s)| (&**r, s)).collect();
        sorted.sort_by_key(|(r, _)| *r);
        help(o, "qoima_http_requests_total", "counter", "HTTP requests by route template, method and status.");
        for (route, stats) in &sorted {
            let mut requests = stats.requests.clone();
            requests.sort();
            for (method, status, n) in requests {
                let labels = label_text(&[("route", (*route).to_owned()), ("method", method.to_owned()), ("status", status.to_string())]);
                let _ = writeln!(o, "qoima_http_requests_total{{{labels}}} {n}");
            }
        }
        help(o, "qoima_http_request_duration_seconds", "histogram", "HTTP request latency by route template.");
        for (route, stats) in &sorted {
            stats.latency.render(o, "qoima_http_request_duration_seconds", &label_text(&[("route", (*route).to_owned())]));
        }
    }
}

/// The matched route template, handed from routing to the edge middleware.
#[derive(Clone)]
struct RouteLabel(MatchedPath);

/// Puts the matched route template on the response for [`HttpMetrics::record`].
pub async fn label_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.extensions_mut().insert(RouteLabel(path));
    res
}

/// The route template a response was produced for, or `unmatched`.
pub fn route_of(res: &Response) -> &str {
    res.extensions().get::<RouteLabel>().map_or("unmatched", |r| r.0.as_str())
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(0) as u64)
}

/// Without credentials, coarse health only: whether the vault is ready and which check fails.
/// The rest — request and decision counts, key generations and the DEKs each wraps (close to
/// the number of borrowers), store figures — is for a caller with role monitoring or security
/// (a Prometheus `authorization` credential).
pub async fn render(State(state): State<AppState>, scrape: Scrape) -> Response {
    let health = super::admin::Health::of(&state.vault).await;
    let text = tokio::task::spawn_blocking(move || {
        let mut o = String::with_capacity(8192);
        let (ready, store, audit) = health.map_or((false, false, false), |h| (h.ready(), h.store.is_ok(), h.audit));
        for (name, what, value) in [
            ("qoima_ready", "1 when /readyz answers ready.", ready),
            ("qoima_store_healthy", "1 while the store is open and writable (no RocksDB background error).", store),
            ("qoima_audit_healthy", "1 while the last audit write succeeded.", audit),
        ] {
            help(&mut o, name, "gauge", what);
            let _ = writeln!(o, "{name} {}", u8::from(value));
        }
        if matches!(scrape, Scrape::Public) {
            return o;
        }
        let v = &state.vault;
        state.http.render(&mut o);

        let a = v.audit_stats();
        help(&mut o, "qoima_decisions_total", "counter", "Audited decisions by action, purpose and outcome.");
        a.decisions.render(&mut o, "qoima_decisions_total");
        help(&mut o, "qoima_audit_commit_seconds", "histogram", "Durable write of one audit group (group commit).");
        a.commit_seconds.render(&mut o, "qoima_audit_commit_seconds", "");
        let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
        for (name, kind, what, value) in [
            ("qoima_audit_groups_total", "counter", "Audit groups committed.", load(&a.groups)),
            ("qoima_audit_entries_total", "counter", "Audit entries committed.", load(&a.entries)),
            ("qoima_audit_failures_total", "counter", "Audit group writes that failed (requests refused).", load(&a.failures)),
            (
                "qoima_auth_failures_unrecorded_total",
                "counter",
                "Failed authentications over limits.audited_auth_failures_per_second: counted into summary audit entries, not recorded one by one.",
                v.unrecorded_auth_failures_total(),
            ),
            (
                "qoima_reads_in_memory_total",
                "counter",
                "Reads (allowed or refused) answered on the async thread, everything they needed being in memory.",
                load(&v.answer_paths().reads.in_memory),
            ),
            (
                "qoima_reads_blocking_total",
                "counter",
                "Reads answered on a blocking thread (data not in memory, a subject being written, a caller with a read limit, a full audit queue).",
                load(&v.answer_paths().reads.blocking),
            ),
            (
                "qoima_writes_in_memory_total",
                "counter",
                "Field writes (PUT, rectify; allowed or refused) answered on the async thread, everything they needed being in memory.",
                load(&v.answer_paths().writes.in_memory),
            ),
            (
                "qoima_writes_blocking_total",
                "counter",
                "Field writes (PUT, rectify) answered on a blocking thread (data not in memory, a subject being written, a used idempotency key, a full audit queue).",
                load(&v.answer_paths().writes.blocking),
            ),
            ("qoima_dek_cache_hits_total", "counter", "DEK cache hits.", load(&v.dek_cache().hits)),
            ("qoima_dek_cache_misses_total", "counter", "DEK cache misses (unwraps).", load(&v.dek_cache().misses)),
            ("qoima_dek_cache_entries", "gauge", "Unwrapped DEKs held in memory.", v.dek_cache().len() as u64),
            ("qoima_subject_cache_hits_total", "counter", "Subject lookups of reads answered from the subject cache (a read tried in memory first and then on a blocking thread looks up twice).", load(&v.subject_cache().hits)),
            ("qoima_subject_cache_misses_total", "counter", "Subject lookups of reads that went to the store.", load(&v.subject_cache().misses)),
            ("qoima_subject_cache_entries", "gauge", "Subjects held in the subject cache.", v.subject_cache().len() as u64),
            ("qoima_subject_cache_bytes", "gauge", "Bytes the subject cache accounts for (sealed records, entries, facts).", v.subject_cache().bytes() as u64),
        ] {
            help(&mut o, name, kind, what);
            let _ = writeln!(o, "{name} {value}");
        }

        help(&mut o, "qoima_kek_deks", "gauge", "Subject DEKs wrapped by each KEK generation.");
        if let Ok(gens) = v.key_generations() {
            for (i, n) in gens {
                let state = serde_json::to_value(i.state).ok().and_then(|s| s.as_str().map(str::to_owned)).unwrap_or_default();
                let _ = writeln!(o, "qoima_kek_deks{{generation=\"{}\",state=\"{state}\"}} {n}", i.generation);
            }
        }
        if let Ok(job) = v.rewrap_job() {
            for (name, what, value) in [
                ("qoima_rewrap_done", "DEKs moved by the current or last rewrap pass.", job.done as f64),
                ("qoima_rewrap_total", "DEKs the current or last rewrap pass had to move.", job.total as f64),
                (
                    "qoima_rewrap_running",
                    "1 while a rewrap runs.",
                    f64::from(u8::from(job.state == crate::vault::rewrap::RewrapState::Running)),
                ),
            ] {
                help(&mut o, name, "gauge", what);
                let _ = writeln!(o, "{name} {value}");
            }
        }
        // The wrap limit (NIST SP 800-38D) and follow-ups of committed changes still retried.
        let (wraps, limit) = v.keyring().active_wraps();
        for (name, what, value) in [
            ("qoima_kek_active_wraps", "DEK wraps made with the active KEK generation.", wraps),
            ("qoima_kek_wrap_limit", "Wraps one KEK generation may make (keys.kek_wrap_limit); rotation at 15/16.", limit),
            ("qoima_erasure_purges_pending", "Committed erasures whose purge is still being retried.", v.purges_pending() as u64),
            ("qoima_keyring_escrow_pending", "1 while the keyring escrow copy is behind the store (retried).", u64::from(v.escrow_pending())),
        ] {
            help(&mut o, name, "gauge", what);
            let _ = writeln!(o, "{name} {value}");
        }

        let stats = v.engine_stats();
        type Of = fn(&crate::vault::SpaceStats) -> Option<u64>;
        for (name, of, what) in [
            ("qoima_rocksdb_estimate_keys", (|s| s.keys) as Of, "Estimated keys per column family."),
            ("qoima_rocksdb_live_sst_bytes", |s| s.live_bytes, "Live SST bytes per column family."),
            ("qoima_rocksdb_memtable_bytes", |s| s.memtable_bytes, "Memtable bytes per column family."),
        ] {
            help(&mut o, name, "gauge", what);
            for space in &stats.spaces {
                if let Some(n) = of(space) {
                    let _ = writeln!(o, "{name}{{cf=\"{}\"}} {n}", space.space.name());
                }
            }
        }
        help(&mut o, "qoima_rocksdb_background_errors", "gauge", "RocksDB background errors (non-zero: writes refused).");
        let _ = writeln!(o, "qoima_rocksdb_background_errors {}", stats.background_errors);
        help(&mut o, "qoima_rocksdb_block_cache_bytes", "gauge", "Block cache usage.");
        let _ = writeln!(o, "qoima_rocksdb_block_cache_bytes {}", stats.cache_bytes.unwrap_or(0));
        if let Some(rss) = resident_bytes() {
            help(&mut o, "qoima_process_resident_memory_bytes", "gauge", "Resident memory of the vault process.");
            let _ = writeln!(o, "qoima_process_resident_memory_bytes {rss}");
        }
        o
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
