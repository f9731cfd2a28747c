//! `spawn_app()`: the real server on 127.0.0.1:0, a fresh data directory, a real root key
//! file, and one bearer token per kind of caller.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qoima::audit::FaultSwitch;
use qoima::auth::token_digest;
use qoima::config::Config;
use qoima::domain::{Clock, ManualClock, SystemClock};
use qoima::server::{Application, Options};
use qoima::vault::Vault;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The callers every test app has: (name, role, purposes).
pub const CALLERS: &[(&str, &str, &[&str])] = &[
    ("svc-all", "service", &["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"]),
    ("svc-issuance", "service", &["loan_issuance"]),
    ("svc-monitoring", "service", &["loan_monitoring"]),
    ("svc-marketing", "service", &["advertising"]),
    ("svc-transfer", "service", &["third_party_transfer"]),
    ("website", "website", &[]),
    ("security", "security", &[]),
    ("auditor", "auditor", &[]),
    ("monitoring", "monitoring", &[]),
];

/// The token of a test caller (deterministic, never used outside tests).
pub fn token(caller: &str) -> String {
    format!("test-token-{caller}")
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub config: Config,
    pub vault: Arc<Vault>,
    pub faults: Arc<FaultSwitch>,
    pub clock: Option<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

/// A response: status, headers and JSON body (Null if none).
/// `method url` as `caller` (its test token), with extra `headers` and a JSON `body`.
pub async fn send_request(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    caller: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Resp {
    let mut req = http.request(method, url);
    if let Some(c) = caller {
        req = req.bearer_auth(token(c));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Resp { status, headers, body }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn problem_detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

pub fn config_text(dir: &Path, extra: &str) -> String {
    let mut t = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", dir.join("data").display());
    t.push_str(extra);
    t.push_str(&engine_section(dir));
    t.push_str(&format!("\n[root_key]\nfile = \"{}\"\n", dir.join("root.key").display()));
    for (name, role, purposes) in CALLERS {
        let p: Vec<String> = purposes.iter().map(|p| format!("\"{p}\"")).collect();
        t.push_str(&format!(
            "\n[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\npurposes = [{}]\n",
            hex::encode(token_digest(&token(name))),
            p.join(", ")
        ));
        if *name == "svc-all" {
            // Its purposes read no technical data; it writes the whole application (issue #23:
            // a caller writes only what its grant allows).
            t.push_str("writes = [\"identity.*\", \"questionnaire.*\", \"contract.*\", \"technical.*\"]\n");
        }
    }
    t
}

/// Whether this run is against PostgreSQL (`QOIMA_TEST_ENGINE=postgres`, which `scripts/test`
/// sets for the suite's second pass) rather than the embedded RocksDB.
pub fn on_postgres() -> bool {
    std::env::var("QOIMA_TEST_ENGINE").is_ok_and(|e| e == "postgres")
}

/// For a test of the embedded engine's own behaviour (its files, its memory tier, its backup
/// format): true, saying so, when the suite runs against PostgreSQL; `why` says why, or where
/// the PostgreSQL twin is.
pub fn rocksdb_only(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    on_postgres()
}

/// The `[storage]` section of a vault on `dir`: none for RocksDB; for PostgreSQL the test server
/// (`QOIMA_TEST_POSTGRES`) and a schema of this vault's own, the same for every restart on
/// `dir` within this run (and never one a past run used).
pub fn engine_section(dir: &Path) -> String {
    if !on_postgres() {
        return String::new();
    }
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(qoima::domain::random_hex::<16>);
    let schema = &hex::encode(token_digest(&format!("{run}/{}", dir.display())))[..16];
    let url = std::env::var("QOIMA_TEST_POSTGRES").expect("QOIMA_TEST_POSTGRES names the test server (scripts/test starts one)");
    // A single test server: no standby, so `allow_async`.
    format!("\n[storage]\nengine = \"postgres\"\n[storage.postgres]\nurl = \"{url}\"\nschema = \"t_{schema}\"\nallow_async = true\npool_size = 8\nlease_seconds = 3\n")
}

/// Extra configuration adding the caller `svc-limited` (service, loan_issuance) held to
/// `per_minute` reads of personal data a minute; its token is `token("svc-limited")`.
pub fn limited_caller(per_minute: u32) -> String {
    format!(
        "[[callers]]\nname = \"svc-limited\"\ntoken_sha256 = \"{}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\nmax_reads_per_minute = {per_minute}\n",
        hex::encode(token_digest(&token("svc-limited")))
    )
}

/// Starts a vault with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_with("", None).await
}

/// Starts a vault with extra top-level configuration and, optionally, a hand-moved clock.
pub async fn spawn_with(extra: &str, clock: Option<ManualClock>) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).expect("root key");
    let path = dir.path().join("qoima.toml");
    std::fs::write(&path, config_text(dir.path(), extra)).unwrap();
    let config = Config::load(&path, &|_| None).expect("test config parses");
    start(dir, config, clock).await
}

pub async fn start(dir: TempDir, config: Config, clock: Option<ManualClock>) -> TestApp {
    let faults = Arc::new(FaultSwitch::default());
    let c: Arc<dyn Clock> = match &clock {
        Some(m) => Arc::new(m.clone()),
        None => Arc::new(SystemClock),
    };
    let app = Application::build(config.clone(), Options { clock: c, faults: faults.clone() }).await.expect("app builds");
    let addr = format!("{}://{}", app.scheme(), app.local_addr());
    let vault = app.vault();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    TestApp { addr, client: reqwest::Client::new(), dir, config, vault, faults, clock, stop: Some(stop), served: Some(served) }
}

impl TestApp {
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Every folder holding the vault's data: the data directory and, on PostgreSQL, the
    /// server's (shared with other tests' schemas: scan it for needles only this test made).
    pub fn store_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.data_dir()];
        dirs.extend(postgres_data_dir());
        dirs
    }

    /// [`TestApp::store_dirs`] and the test's whole folder: everywhere the vault could write.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.dir.path().to_path_buf()];
        dirs.extend(postgres_data_dir());
        dirs
    }

    /// Stops the server and closes the store (the vault's last handle is dropped).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.served.take() {
            h.await.unwrap();
        }
    }

    /// Stops and starts again on the same data directory and configuration.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let TestApp { dir, config, clock, vault, .. } = self;
        wait_for_last_handle(vault).await;
        start(dir, config, clock).await
    }

    pub async fn call(&self, method: Method, path: &str, caller: Option<&str>, body: Option<Value>) -> Resp {
        send_request(&self.client, method, &format!("{}{path}", self.addr), caller, &[], body).await
    }

    /// Starts the online rewrap (as the security team) and waits until it is complete; its
    /// last progress report.
    pub async fn rewrap_to_completion(&self) -> Value {
        let r = self.call(Method::POST, "/v1/keys/rewrap", Some("security"), None).await;
        assert_eq!(r.status, reqwest::StatusCode::ACCEPTED, "{:?}", r.body);
        for _ in 0..600 {
            let p = self.get("/v1/keys/rewrap", "security").await;
            if p.body["state"] == "complete" {
                return p.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("rewrap did not finish");
    }

    /// `/metrics` in detail, as a scraper with role monitoring sees it.
    pub async fn metrics(&self) -> String {
        let res = self.client.get(format!("{}/metrics", self.addr)).bearer_auth(token("monitoring")).send().await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        res.text().await.unwrap()
    }

    pub async fn get(&self, path: &str, caller: &str) -> Resp {
        self.call(Method::GET, path, Some(caller), None).await
    }

    pub async fn put_fields(&self, subject: &str, fields: Value) -> Resp {
        self.call(Method::PUT, &format!("/v1/subjects/{subject}"), Some("svc-all"), Some(json!({ "fields": fields }))).await
    }

    pub async fn read(&self, subject: &str, caller: &str, purpose: &str) -> Resp {
        self.get(&format!("/v1/subjects/{subject}?purpose={purpose}"), caller).await
    }

    pub async fn open_contract(&self, subject: &str, contract: &str) -> Resp {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/contracts"), Some("svc-all"), Some(json!({ "contract": contract }))).await
    }

    pub async fn set_contract(&self, subject: &str, contract: &str, status: &str) -> Resp {
        self.call(
            Method::PATCH,
            &format!("/v1/subjects/{subject}/contracts/{contract}"),
            Some("svc-all"),
            Some(json!({ "status": status })),
        )
        .await
    }

    pub async fn give_consent(&self, subject: &str, purpose: &str) -> Resp {
        self.call(
            Method::POST,
            &format!("/v1/subjects/{subject}/consents"),
            Some("website"),
            Some(json!({ "purpose": purpose, "policy_version": "2019-01-29" })),
        )
        .await
    }

    pub async fn erase(&self, subject: &str) -> Resp {
        self.call(Method::POST, &format!("/v1/subjects/{subject}/erasure"), Some("website"), None).await
    }

    pub fn advance(&self, by: time::Duration) {
        self.clock.as_ref().expect("spawned with a manual clock").advance(by);
    }
}

/// Waits until every other holder of the vault (server tasks) has let go, then closes it so
/// the store can be reopened.
pub async fn wait_for_last_handle(vault: Arc<Vault>) {
    let mut v = vault;
    for _ in 0..500 {
        match Arc::try_unwrap(v) {
            Ok(inner) => {
                inner.close();
                drop(inner);
                return;
            }
            Err(back) => {
                v = back;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    panic!("the vault is still referenced after shutdown");
}

/// A valid IIN of its own for `marker` (a unique field: no two live subjects share one), born
/// 1990-01-01, its serial digits a hash of the marker.
pub fn iin_for(marker: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    marker.hash(&mut h);
    let mut serial = h.finish() % 100_000;
    loop {
        let first11 = format!("900101{serial:05}");
        let digits: Vec<u32> = first11.chars().map(|c| c.to_digit(10).unwrap()).collect();
        if let Some(c) = qoima::schema::iin_check_digit(&digits) {
            return format!("{first11}{c}");
        }
        serial = (serial + 1) % 100_000;
    }
}

/// A full, valid application (P2 mandatory fields) with unique markers in the text fields and
/// an IIN no other call's gives (the IIN is unique: [`iin_for`] of the marker and a count).
pub fn application(marker: &str) -> Value {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "identity.full_name": format!("Aigerim {marker}"),
        "identity.iin": iin_for(&format!("{marker}/{n}")),
        "identity.birth_date": "1990-01-01",
        "identity.phone": "+77011234567",
        "identity.email": "aigerim@example.kz",
        "identity.address": format!("Almaty, Abay 1, {marker}"),
        "questionnaire.employer": format!("Employer {marker}"),
        "questionnaire.monthly_income": 350000,
        "questionnaire.dependants": 2,
        "contract.offer_id": "OF-1",
        "contract.amount": 150000,
        "contract.offer_sent_at": "2026-11-01T09:30:00+05:00",
        "technical.ip": "203.0.113.7",
        "technical.access_time": "2026-11-01T09:29:58Z",
    })
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
/// The test PostgreSQL server's data directory, when the suite runs against it.
pub fn postgres_data_dir() -> Option<PathBuf> {
    on_postgres()
        .then(|| std::env::var_os("QOIMA_TEST_POSTGRES_DATA").expect("QOIMA_TEST_POSTGRES_DATA names the server's data directory").into())
}

/// Whether `needle` is in some file of `dirs`: the check that a scan can see a live value.
/// Tried a few times: on a server shared with other tests, a checkpoint can move the value from
/// a WAL segment to a table's file between the two reads of one scan.
pub fn seen_in(dirs: &[PathBuf], needle: &[u8]) -> bool {
    (0..10).any(|_| {
        !files_in(dirs, needle).is_empty() || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        }
    })
}

/// [`files_containing`] over several folders.
pub fn files_in(dirs: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    dirs.iter().flat_map(|d| files_containing(d, needle)).collect()
}

pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_holding(dir, &[needle]).into_iter().map(|(_, p)| p).collect()
}

/// Every (needle index, file) pair under `dir` where the file holds that needle; each file is
/// read once, whatever the number of needles.
pub fn files_holding(dir: &Path, needles: &[&[u8]]) -> Vec<(usize, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                for (i, needle) in needles.iter().enumerate() {
                    if memchr::memmem::find(&bytes, needle).is_some() {
                        out.push((i, p.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The wrapped DEK bytes of a live subject, read from the store.
pub fn wrapped_dek(vault: &Vault, subject: &str) -> Vec<u8> {
    let raw = vault.store().get(qoima::store::Space::Subjects, subject.as_bytes()).unwrap().expect("subject exists");
    qoima::vault::codec::SubjectMeta::decode(&raw).unwrap().wrapped_dek.0
}

/// Runs the `qoima` binary with `args`; returns (success, stdout + stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    let out = qoima_command().args(args).output().expect("qoima runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// [`cli`] off the async runtime's thread, for commands that talk to the running test vault.
pub async fn cli_async(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// How many keys of a subject remain in a space.
pub fn keys_of(vault: &Vault, space: qoima::store::Space, subject: &str) -> usize {
    let mut n = 0;
    vault
        .store()
        .scan_prefix(space, &qoima::layout::subject_prefix(subject), |_, _| {
            n += 1;
            true
        })
        .unwrap();
    n
}

/// Sends raw bytes over TCP and returns the response status code.
pub async fn raw_http(app: &TestApp, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr.trim_start_matches("http://")).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The real time, once, to start a manual clock from.
pub fn now() -> time::OffsetDateTime {
    SystemClock.now()
}

/// The `qoima` binary under test, to add arguments, environment and limits to.
pub fn qoima_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_qoima"))
}

/// `qoima serve --config FILE`, not started yet (see [`BinaryVault::start`]).
pub fn serve_command(config: &Path) -> std::process::Command {
    let mut cmd = qoima_command();
    cmd.args(["serve", "--config"]).arg(config);
    cmd
}

/// The real `qoima serve --config FILE` as a child process, listening.
pub fn spawn_binary(config: &Path) -> BinaryVault {
    BinaryVault::start(serve_command(config))
}

/// [`spawn_binary`] with extra environment variables.
pub fn spawn_binary_with_env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    config: &Path,
    env: impl IntoIterator<Item = (K, V)>,
) -> BinaryVault {
    let mut cmd = serve_command(config);
    cmd.envs(env);
    BinaryVault::start(cmd)
}

/// The real binary on a fresh vault ([`vault_files`]) with tracing at its most verbose, for
/// the tests that read its log for secrets.
pub fn spawn_traced_binary() -> (TempDir, BinaryVault) {
    let (dir, config) = vault_files("");
    (dir, spawn_binary_with_env(&config, [("QOIMA_LOG", "trace"), ("RUST_LOG", "trace")]))
}

/// A temp directory holding a root key and a `qoima.toml` with the test callers and `extra`,
/// for the real binary.
pub fn vault_files(extra: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let config = dir.path().join("qoima.toml");
    std::fs::write(&config, config_text(dir.path(), extra)).unwrap();
    (dir, config)
}

/// A `qoima serve` child process that has said where it listens. Its stderr is read to the
/// end (so it never blocks on a full pipe) and kept; dropping it kills the child, so a failing
/// test leaves no vault running.
pub struct BinaryVault {
    pub child: std::process::Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub addr: String,
    /// What it printed on stderr up to and including its "listening on" line.
    pub startup: String,
    /// Every stderr line so far; more keep arriving while it runs.
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BinaryVault {
    /// Spawns `cmd` (a `qoima serve …`) with stderr piped and stdout discarded, and waits
    /// until it prints `qoima: listening on ADDR`.
    pub fn start(mut cmd: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let what = format!("{cmd:?}");
        let mut child = cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("qoima starts");
        let pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut startup = Some(String::new());
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the reading.
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(printed) = startup.as_mut() {
                    printed.push_str(&line);
                    printed.push('\n');
                    if let Some(addr) = line.strip_prefix("qoima: listening on ") {
                        let _ = tx.send((addr.trim().to_string(), startup.take().unwrap_or_default()));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut vault = Self { child, addr: String::new(), startup: String::new(), stderr, reader: Some(reader) };
        match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok((addr, startup)) => {
                vault.addr = addr;
                vault.startup = startup;
                vault
            }
            Err(_) => panic!("{what} did not say where it listens; it printed:\n{}", vault.stderr_text()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().iter().fold(String::new(), |t, l| t + l + "\n")
    }

    /// Sends `signal` and waits up to 10 s for it to exit.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("the vault did not stop within 10 s of signal {signal}");
    }

    /// `kill -9`; returns everything it printed on stderr.
    pub fn kill(&mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.stderr_text()
    }
}

impl Drop for BinaryVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
