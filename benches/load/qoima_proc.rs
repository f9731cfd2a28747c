//! The vault under test: a temporary home (configuration, root key, data), the preload through
//! the library, and the real `qoima` binary started as a child process.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use qoima::config::Config;
use qoima::domain::SubjectId;
use qoima::server::{open_vault, Options};
use qoima::vault::Ctx;
use serde_json::{json, Map, Value};

use crate::say;

/// Id of the i-th preloaded subject (load.lua builds the same ids).
pub fn preloaded_id(i: usize) -> String {
    format!("p-{i:08}")
}

/// The number of the first preloaded subject's IIN ([`iin`]): `p-i` has `PRELOADED_IINS + i`.
/// Disjoint ranges keep every subject's IIN its own, as the vault requires (`identity.iin` is
/// unique): the erasure pools from [`POOL_IINS`], each create point from [`CREATE_IINS`].
pub const PRELOADED_IINS: u64 = 1_000_000_000;
/// The pool of the k-th concurrency of `--connections` gets `POOL_IINS + k · 10⁶ + i`.
pub const POOL_IINS: u64 = 2_000_000_000;
/// The n-th create point's new subjects get `CREATE_IINS + n · 10⁷ + …` (load.lua counts on).
pub const CREATE_IINS: u64 = 3_000_000_000;

/// A valid IIN, one per number below 10¹⁰ (deterministic, so load.lua builds the same): the
/// ten digits of `n`, a tweak digit (0, or 1 when 0 leaves no check digit: then 1 always
/// has one, since the tweak weighs 0 in the first sum and 2 in the second), and the Kazakh
/// check digit (`qoima::schema::iin_check_digit`). Synthetic: no real person's number is meant.
pub fn iin(n: u64) -> String {
    assert!(n < 10_000_000_000, "IIN number {n} has more than ten digits");
    let prefix = format!("{n:010}");
    let mut d: Vec<u32> = prefix.chars().filter_map(|c| c.to_digit(10)).collect();
    for tweak in 0..10 {
        d.push(tweak);
        if let Some(check) = qoima::schema::iin_check_digit(&d) {
            return format!("{prefix}{tweak}{check}");
        }
        d.pop();
    }
    unreachable!("one of two tweaks always gives a check digit")
}

/// Id prefix of the erasure pool of the point at `connections`.
pub fn pool_prefix(connections: usize) -> String {
    format!("e{connections}")
}

/// 1 KiB of fields (the sum of the values' JSON texts is exactly 1,024 bytes), all readable
/// for `loan_issuance`. Synthetic: the IIN is the test suite's and only a template (every
/// subject is stored with its own, of the same length: [`iin`]), the rest is filler.
pub fn fields_1kib() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("identity.full_name".into(), json!("Load Test Subject"));
    m.insert("identity.iin".into(), json!("900101300017"));
    m.insert("identity.birth_date".into(), json!("1990-01-01"));
    m.insert("identity.phone".into(), json!("+77011234567"));
    m.insert("identity.email".into(), json!("load.test@example.kz"));
    m.insert("identity.address".into(), json!(format!("Almaty, Abay avenue 1, flat 1, {}", "x".repeat(120))));
    m.insert("questionnaire.employer".into(), json!(format!("Example employer LLP {}", "y".repeat(100))));
    m.insert("questionnaire.monthly_income".into(), json!(350000));
    m.insert("questionnaire.dependants".into(), json!(2));
    m.insert("contract.offer_id".into(), json!("OF-1"));
    m.insert("contract.amount".into(), json!(150000));
    let used = field_bytes(&m) + 2; // the padding field's quotes
    let pad = 1024usize.saturating_sub(used);
    m.insert("questionnaire.loan_purpose".into(), json!("z".repeat(pad)));
    m
}

/// The bytes of the fields' values as JSON text (what the vault seals).
pub fn field_bytes(m: &Map<String, Value>) -> usize {
    m.values().map(|v| v.to_string().len()).sum()
}

/// A temporary vault home.
pub struct Home {
    pub config_path: PathBuf,
    /// The service caller's token: in memory only; the configuration holds its digest.
    pub token: String,
}

impl Home {
    pub fn prepare(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let key = dir.join("root.key");
        qoima_keys::RootKey::generate_file(&key).map_err(|e| e.to_string())?;
        let token = qoima::config::new_token();
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[root_key]\nfile = \"{}\"\n\n\
             [[callers]]\nname = \"load-service\"\ntoken_sha256 = \"{}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\n",
            dir.join("data").display(),
            key.display(),
            hex::encode(qoima::auth::token_digest(&token)),
        );
        let config_path = dir.join("qoima.toml");
        std::fs::write(&config_path, text).map_err(|e| e.to_string())?;
        Ok(Self { config_path, token })
    }

    fn config(&self) -> Result<Config, String> {
        Config::load(&self.config_path, &|_| None).map_err(|e| e.to_string())
    }

    /// Stores `fields` under every id, with the id's own `identity.iin`, through the library
    /// (same code path as PUT, minus HTTP), from 16 threads so the audit log's group commit
    /// batches the fsyncs.
    pub fn preload(&self, ids: Vec<(String, String)>, fields: &Map<String, Value>) -> Result<(), String> {
        let config = self.config()?;
        let caller = config.callers.authenticate(&self.token).ok_or("the load caller does not authenticate")?.clone();
        let vault = open_vault(&config, &Options::default()).map_err(|e| e.to_string())?;
        let fields: BTreeMap<String, Value> = fields.clone().into_iter().collect();
        let done = AtomicUsize::new(0);
        let failed: Mutex<Option<String>> = Mutex::new(None);
        let threads = 16;
        let total = ids.len();
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (ids, vault, fields, done, failed, caller) = (&ids, &vault, &fields, &done, &failed, &caller);
                s.spawn(move || {
                    for (id, iin) in ids.iter().skip(t).step_by(threads) {
                        if failed.lock().unwrap().is_some() {
                            return;
                        }
                        let mut fields = fields.clone();
                        fields.insert("identity.iin".into(), json!(iin));
                        // Built from `system()` so fields added to Ctx later keep their defaults.
                        let mut ctx = Ctx::system();
                        ctx.caller = caller.clone();
                        let r = SubjectId::parse(id).map_err(|e| e.to_string()).and_then(|sid| {
                            vault.put_fields(qoima::vault::Mode::Wait, &ctx, &sid, &fields).wait().map_err(|e| e.to_string())
                        });
                        if let Err(e) = r {
                            *failed.lock().unwrap() = Some(format!("preloading {id}: {e}"));
                            return;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let mut last = Instant::now();
            while done.load(Ordering::Relaxed) < total && failed.lock().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(10) {
                    let n = done.load(Ordering::Relaxed);
                    say(format!("  preloaded {n}/{total} ({:.0}/s)", n as f64 / start.elapsed().as_secs_f64()));
                    last = Instant::now();
                }
            }
        });
        vault.close();
        drop(vault);
        match failed.into_inner().unwrap() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts `qoima serve --config …` (the binary cargo built with the bench profile) and
    /// waits for its "listening" line.
    pub fn spawn(&self, log_filter: Option<&str>) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qoima"));
        if let Some(f) = log_filter {
            cmd.env("QOIMA_LOG", f);
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qoima: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (tx, rx) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("qoima: listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
                l.lock().unwrap().push(line);
            }
        });
        let pid = child.id();
        let mut server = Server { child: Some(child), addr: String::new(), pid, log };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(_) => {
                let tail = server.log_tail();
                let _ = server.stop();
                Err(format!("qoima did not start within 120 s; its log:\n{tail}"))
            }
        }
    }

    /// `qoima audit verify` on the stopped vault: the chain is intact and holds every entry.
    pub fn verify_audit(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_qoima")).arg("--config").arg(&self.config_path).args(["audit", "verify"]).output();
        match out {
            Ok(o) => {
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                // The head hash identifies nothing personal, but keep the line short.
                text.lines().next().unwrap_or("no output").split(", head").next().unwrap_or_default().trim().to_string()
            }
            Err(e) => format!("could not run qoima audit verify: {e}"),
        }
    }
}

#[derive(Default)]
pub struct LogTail {
    lines: usize,
    tail: VecDeque<String>,
}

impl LogTail {
    fn push(&mut self, line: String) {
        self.lines += 1;
        self.tail.push_back(line);
        if self.tail.len() > 20 {
            self.tail.pop_front();
        }
    }
}

/// The running vault process.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub pid: u32,
    log: Arc<Mutex<LogTail>>,
}

impl Server {
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_lines(&self) -> usize {
        self.log.lock().unwrap().lines
    }

    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap().tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then up to 60 s for the graceful shutdown (audit drain), then SIGKILL.
    pub fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // SAFETY: a signal to our own child process, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() { Ok(()) } else { Err(format!("qoima exited with {status}; log tail:\n{}", self.log_tail())) };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("qoima did not stop within 60 s of SIGTERM and was killed".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One fetch-with-purpose of the first preloaded subject: the bytes the bare-axum ceiling
/// returns. Kept in memory only.
pub async fn sample_fetch(addr: &str, token: &str) -> Result<bytes_of::Bytes, String> {
    let url = format!("{addr}/v1/subjects/{}?purpose=loan_issuance", preloaded_id(0));
    let res = reqwest::Client::new().get(url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("the sample fetch answered {status}"));
    }
    Ok(body)
}

/// One lookup of the first preloaded subject by its IIN, which must find it (and only it): the
/// vault has `POST /v1/lookup` and the harness builds the IINs it stored. A 503 (the index
/// still being built) is waited out, as its `Retry-After` asks, for up to two minutes.
pub async fn sample_lookup(addr: &str, token: &str) -> Result<(), String> {
    let body = json!({"field": "identity.iin", "value": iin(PRELOADED_IINS), "purpose": "loan_issuance"});
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let res = reqwest::Client::new().post(format!("{addr}/v1/lookup")).bearer_auth(token).json(&body).send().await;
        let res = res.map_err(|e| e.to_string())?;
        let status = res.status();
        let wait = res.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        if status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 10))).await;
            continue;
        }
        if status != 200 {
            return Err(format!("the sample lookup answered {status} (does this vault have POST /v1/lookup?)"));
        }
        return match answer["subjects"].as_array() {
            Some(s) if s.len() == 1 && s[0] == preloaded_id(0).as_str() => Ok(()),
            _ => Err(format!("the sample lookup did not find {} alone: {}", preloaded_id(0), answer["subjects"])),
        };
    }
}

/// `bytes::Bytes` as re-exported by axum (no direct dependency on `bytes`).
pub mod bytes_of {
    pub use axum::body::Bytes;
}
