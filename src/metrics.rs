//! A small Prometheus registry: labelled counters and fixed-bucket histograms, rendered in the
//! text exposition format. Labels are route templates, purposes and outcomes — never subject
//! ids or values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The bucket a duration falls in (the last one holds what is over every bound).
fn bucket(d: Duration) -> usize {
    let secs = d.as_secs_f64();
    BUCKETS.iter().position(|le| secs <= *le).unwrap_or(BUCKETS.len())
}

/// A histogram of durations, shared between threads. Each observation adds to one bucket;
/// rendering sums them into Prometheus's cumulative `le` buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.counts[bucket(d)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines with the given labels.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let snapshot = Buckets {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        };
        snapshot.render(out, name, labels);
    }
}

/// A histogram of durations owned by one thread (or kept under the owner's lock).
#[derive(Clone, Debug, Default)]
pub struct Buckets {
    counts: [u64; BUCKETS.len() + 1],
    sum_micros: u64,
}

impl Buckets {
    pub fn observe(&mut self, d: Duration) {
        self.counts[bucket(d)] += 1;
        self.sum_micros += d.as_micros() as u64;
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines with the given labels.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let count = cumulative + self.counts[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = |s: &str| if s.is_empty() { String::new() } else { format!("{{{s}}}") };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_micros as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// A label set: `(name, value)` pairs in emission order.
pub type Labels = Vec<(&'static str, String)>;

/// Counters keyed by a label set.
#[derive(Debug, Default)]
pub struct CounterFamily(Mutex<BTreeMap<Labels, u64>>);

impl CounterFamily {
    pub fn add(&self, labels: Labels, n: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(labels).or_default() += n;
    }

    pub fn render(&self, out: &mut String, name: &str) {
        for (labels, v) in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{{}}} {v}", label_text(labels));
        }
    }
}

pub fn label_text(labels: &[(&'static str, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect::<Vec<_>>()
        .join(",")
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "route=\"/a\"");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0025\"} 0"), "{out}");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"10\"} 1"), "over every bound: only in +Inf");
        assert!(out.contains("x_seconds_count{route=\"/a\"} 2"));
        assert!(out.contains("x_seconds_sum{route=\"/a\"} 20.003"), "{out}");
        let c = CounterFamily::default();
        c.add(vec![("status", "200".into())], 1);
        c.add(vec![("status", "200".into())], 1);
        let mut out = String::new();
        c.render(&mut out, "y_total");
        assert_eq!(out, "y_total{status=\"200\"} 2\n");
        assert_eq!(label_text(&[("a", "q\"x".into())]), "a=\"q\\\"x\"");
    }
}
