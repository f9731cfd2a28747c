//! Connections cannot take the vault down (issue #23): late request heads and idle keep-alive
//! connections are closed, open connections are capped below the descriptor limit, and a
//! store that stops taking writes is reported not ready and the process exits non-zero (so
//! its supervisor restarts it) instead of staying up refusing everything.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{serve_command, spawn_with, token, vault_files, BinaryVault};

fn host(addr: &str) -> &str {
    addr.trim_start_matches("http://")
}

/// Reads until the peer closes (EOF or reset); how long that took, or None if it is still open
/// after `limit`. Bytes it sends meanwhile (a 408, a GOAWAY) are read and dropped.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + limit, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body.
async fn request(s: &mut TcpStream, method: &str, path: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: vault\r\n");
    if let Some(t) = bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    s.write_all(head.as_bytes()).await.expect("request sent");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = text.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (status, String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("an answer in time").expect("read");
        assert!(n > 0, "the connection closed mid-answer: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_that_does_not_arrive_in_time_is_cut_off() {
    let app = spawn_with("[limits]\nheader_read_timeout_secs = 1\n", None).await;
    let addr = host(&app.addr).to_string();

    // Half a request head, then nothing.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n").await.unwrap();
    // A connection that says nothing at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // A head trickled a byte at a time, each well within the timeout (slowloris).
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    let trickled = tokio::spawn(async move {
        let start = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
            if trickle.write_all(&[*b]).await.is_err() || start.elapsed() > Duration::from_secs(6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    });

    let partial_closed = closed_within(&mut partial, Duration::from_secs(5)).await;
    let silent_closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(partial_closed.is_some_and(|t| t < Duration::from_secs(3)), "a partial head held the connection: {partial_closed:?}");
    assert!(silent_closed.is_some_and(|t| t < Duration::from_secs(3)), "a silent connection was held: {silent_closed:?}");
    let trickled = trickled.await.unwrap();
    assert!(trickled < Duration::from_secs(4), "a trickled head held the connection for {trickled:?}");

    // Whoever sends a whole head is served as before.
    let mut good = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(request(&mut good, "GET", "/healthz", None, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header-read timeout is far off: what closes the connection is the idle timeout.
    let app = spawn_with("[limits]\nheader_read_timeout_secs = 30\nidle_timeout_secs = 1\n", None).await;
    let mut s = TcpStream::connect(host(&app.addr)).await.unwrap();
    assert_eq!(request(&mut s, "GET", "/healthz", None, None).await.0, 200);
    // Kept alive: a second request on it within the timeout is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request(&mut s, "GET", "/healthz", None, None).await.0, 200);
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some_and(|t| t >= Duration::from_millis(700) && t < Duration::from_secs(3)), "idle for {closed:?}");
}

/// HTTP/2 (prior knowledge, by hand): a frame header.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_with("[limits]\nheader_read_timeout_secs = 30\nidle_timeout_secs = 1\n", None).await;
    let mut s = TcpStream::connect(host(&app.addr)).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS (empty), then GET /healthz: :method GET (static 2), :scheme http (6), :path
    // (literal, name 4), :authority (literal, name 1); END_STREAM | END_HEADERS.
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend(b"/healthz");
    block.extend([0x01, 5]);
    block.extend(b"vault");
    hello.extend(h2_frame(0x1, 0x5, 1, &block));
    s.write_all(&hello).await.unwrap();
    // Read frames until the response's end of stream on stream 1 (acknowledging SETTINGS).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Where the next whole frame starts: each frame is looked at once (a second SETTINGS ACK
    // would be a protocol error).
    let mut at = 0;
    let answered = 'read: loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before answering; got {got:?}");
        got.extend_from_slice(&buf[..n]);
        while got.len() >= at + 9 {
            let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
            let (kind, flags, stream) =
                (got[at + 3], got[at + 4], u32::from_be_bytes(got[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff);
            if got.len() < at + 9 + len {
                break;
            }
            if kind == 0x4 && flags & 1 == 0 {
                s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.unwrap();
            }
            if stream == 1 && flags & 1 == 1 && (kind == 0x0 || kind == 0x1) {
                break 'read Instant::now();
            }
            at += 9 + len;
        }
    };
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    let idle = answered.elapsed();
    assert!(
        closed.is_some() && idle >= Duration::from_millis(700) && idle < Duration::from_secs(3),
        "idle for {idle:?}, closed {closed:?}"
    );
}

/// Sets a child's descriptor limit (soft and hard) before it runs.
trait LimitDescriptors {
    fn pre_exec_limit(&mut self, nofile: u64) -> &mut Self;
}

impl LimitDescriptors for Command {
    fn pre_exec_limit(&mut self, nofile: u64) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: only the async-signal-safe setrlimit between fork and exec.
        unsafe {
            self.pre_exec(move || {
                let r = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// `qoima serve` as a child with its descriptor limit set to `nofile` (soft and hard) when
/// given.
fn serve_child(config: &Path, nofile: Option<u64>) -> BinaryVault {
    let mut cmd = serve_command(config);
    if let Some(n) = nofile {
        cmd.pre_exec_limit(n);
    }
    BinaryVault::start(cmd)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

const PUT: &str = r#"{"fields":{"identity.full_name":"Flood Test"}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_is_capped_below_the_descriptor_limit_and_writes_go_on() {
    // Room for the fewest connections the vault starts with beside RocksDB's reserve: the
    // default cap (1024) is lowered to fit, with a warning.
    let cap = qoima::server::MIN_CONNECTIONS as u64;
    let nofile = qoima::store::DESCRIPTOR_RESERVE + qoima::server::DESCRIPTOR_MARGIN + cap;
    let (_dir, config) = vault_files("[limits]\nheader_read_timeout_secs = 2\nidle_timeout_secs = 2\n");
    // One descriptor less and it refuses to start, saying why in one line.
    let mut refused = serve_command(&config)
        .env("QOIMA_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .pre_exec_limit(nofile - 1)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while refused.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = refused.kill();
    let refused = refused.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{err}");
    assert!(err.trim().lines().count() == 1 && err.contains("descriptor limit"), "{err}");
    let mut child = serve_child(&config, Some(nofile));
    let (addr, lines) = (child.addr.clone(), child.stderr.clone());
    let pid = child.pid();
    let addr = host(&addr).to_string();
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("max_connections lowered")), "{:?}", lines.lock().unwrap());
    let mut first = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(request(&mut first, "PUT", "/v1/subjects/before", Some(&token("svc-all")), Some(PUT)).await.0, 201);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = open_descriptors(pid);

    // Six times the cap in idle connections: beyond it they wait in the kernel's accept queue
    // (128 deep here; more would wait for SYN retries, not for the vault).
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connection {} of the flood: {e}", flood.len())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_descriptors(pid);
    assert!(during <= baseline + cap as usize + 4, "{during} descriptors open with the flood, {baseline} before it (cap {cap})");
    assert!((during as u64) < nofile, "{during} descriptors of {nofile}");

    // The flood ends: writes are served again at once, and the store took no harm.
    drop(flood);
    let start = Instant::now();
    let mut after = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(request(&mut after, "PUT", "/v1/subjects/after", Some(&token("svc-all")), Some(PUT)).await.0, 201);
    assert!(start.elapsed() < Duration::from_secs(5), "served {:?} after the flood ended", start.elapsed());
    let (status, body) = request(&mut after, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(child.child.try_wait().unwrap(), None, "the vault is still running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_stops_taking_writes_is_not_ready_and_the_vault_exits_for_a_restart() {
    if crate::helpers::rocksdb_only("RocksDB's write refusal; a fenced PostgreSQL node refuses and exits the same way (store::postgres::tests, tests/failover/scenarios stop-active-qoima)") {
        return;
    }
    let (_dir, config) = vault_files("");
    let mut child = serve_child(&config, None);
    let (addr, lines) = (child.addr.clone(), child.stderr.clone());
    let pid = child.pid();
    let mut conn = TcpStream::connect(host(&addr)).await.unwrap();
    assert_eq!(request(&mut conn, "PUT", "/v1/subjects/victim", Some(&token("svc-all")), Some(PUT)).await.0, 201);
    assert_eq!(request(&mut conn, "GET", "/readyz", None, None).await.0, 200);

    // A real fault: no descriptor left (as a flood left none before the cap). The erasure's
    // purge flushes every memtable; RocksDB cannot create the next WAL and stops for good.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = open_descriptors(pid) as u64;
    let mut hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reading and setting our own child's limit, valid pointers to local structs.
    unsafe {
        assert_eq!(libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut hard), 0);
        let low = libc::rlimit { rlim_cur: open, rlim_max: hard.rlim_max };
        assert_eq!(libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()), 0);
    }
    let _ = request(&mut conn, "POST", "/v1/subjects/victim/erasure", Some(&token("website")), None).await;
    let (status, body) = request(&mut conn, "PUT", "/v1/subjects/other", Some(&token("svc-all")), Some(PUT)).await;
    assert_eq!(status, 503, "the store refuses writes: {body}");

    // Meanwhile /readyz says so.
    let (status, body) = request(&mut conn, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "/readyz while the store refuses every write: {body}");
    assert!(body.contains("not ready"), "{body}");
    // Where the answer names its checks, the store's is among those failing (not only the
    // audit log's).
    if let Some(store) =
        serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|b| b["checks"]["store"].as_str().map(str::to_owned))
    {
        assert!(!store.starts_with("ok"), "{body}");
    }

    // Then the vault exits non-zero, for its supervisor to restart it.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(15) {
            panic!("the vault stayed up with a store that refuses writes: {:?}", lines.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{status}");
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("refuses writes")), "{:?}", lines.lock().unwrap());

    // The restart reopens the store: writes are served and the erasure's purge completes.
    let child = serve_child(&config, None);
    let addr = child.addr.clone();
    let mut conn = TcpStream::connect(host(&addr)).await.unwrap();
    assert_eq!(request(&mut conn, "PUT", "/v1/subjects/other", Some(&token("svc-all")), Some(PUT)).await.0, 201);
    assert_eq!(request(&mut conn, "GET", "/readyz", None, None).await.0, 200);
}
