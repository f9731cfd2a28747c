//! Runs `wrk` (Debian's package) with `load.lua`, bounded in time, and parses the JSON line
//! its `done` function prints.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{say, Point};

/// The installed wrk's version line, installing it with apt-get when missing and root.
pub fn ensure() -> Result<String, String> {
    if let Some(v) = version() {
        return Ok(v);
    }
    let root = is_root();
    let cmd = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk";
    if !root {
        return Err(format!("wrk is not installed; install it with: sudo sh -c '{cmd}'"));
    }
    say(format!("wrk is missing; installing it: {cmd}"));
    let ok = Command::new("sh").arg("-c").arg(cmd).status().map(|s| s.success()).unwrap_or(false);
    match (ok, version()) {
        (true, Some(v)) => Ok(v),
        _ => Err(format!("could not install wrk; install it with: sh -c '{cmd}'")),
    }
}

fn is_root() -> bool {
    // The effective uid, read from /proc so no unsafe call is needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn version() -> Option<String> {
    // `wrk --version` prints its banner and exits 1.
    let out = Command::new("wrk").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines().find(|l| l.starts_with("wrk ")).map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_string())
}

/// One wrk run.
pub struct Load {
    pub mode: &'static str,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    pub timeout: Duration,
    pub env: Vec<(&'static str, String)>,
}

/// What `done` in load.lua prints (latencies in microseconds).
#[derive(Debug, Deserialize)]
pub struct Outcome {
    pub requests: f64,
    pub duration_us: f64,
    pub connect: f64,
    pub read: f64,
    pub write: f64,
    pub status: f64,
    pub timeout: f64,
    /// Lookups answered 200 without naming exactly one subject (load.lua's `response`).
    #[serde(default)]
    pub misses: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Outcome {
    pub fn errors(&self) -> u64 {
        (self.connect + self.read + self.write + self.status + self.timeout + self.misses) as u64
    }

    pub fn point(&self, system: &'static str, scenario: &'static str, connections: usize, rss_kib: Option<u64>) -> Point {
        let seconds = self.duration_us / 1e6;
        Point {
            system,
            scenario,
            connections,
            requests: self.requests as u64,
            seconds,
            throughput: self.requests / seconds.max(1e-9),
            p50_ms: self.p50 / 1e3,
            p99_ms: self.p99 / 1e3,
            p999_ms: self.p999 / 1e3,
            mean_ms: self.mean / 1e3,
            max_ms: self.max / 1e3,
            errors: self.errors(),
            rss_mib: rss_kib.map(crate::report::mib),
            settled_s: 0.0,
            cpu_us_per_request: None,
            note: None,
            rounds: Vec::new(),
        }
    }
}

/// Runs wrk against `url` and returns what it measured. wrk stops itself after the duration;
/// if it has not exited well after that, it is killed.
pub fn run(script: &Path, url: &str, load: &Load) -> Result<Outcome, String> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", load.threads.max(1)))
        .arg(format!("-c{}", load.connections.max(load.threads)))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg(format!("{}s", load.timeout.as_secs().max(1)))
        .arg("-s")
        .arg(script)
        .arg(url)
        .env("QLOAD_MODE", load.mode)
        .env("QLOAD_THREADS", load.threads.max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &load.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run wrk: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + load.duration + load.timeout + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("wrk ({}, {} connections) did not stop in time and was killed", load.mode, load.connections));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("QLOAD_RESULT "))
        .ok_or_else(|| format!("wrk ({}) printed no result (exit {status}):\n{}\n{}", load.mode, stdout.trim(), stderr.trim()))?;
    let o: Outcome = serde_json::from_str(line).map_err(|e| format!("cannot parse wrk's result `{line}`: {e}"))?;
    if o.requests == 0.0 {
        return Err(format!("wrk ({}, {} connections) completed no request:\n{}", load.mode, load.connections, stdout.trim()));
    }
    Ok(o)
}
