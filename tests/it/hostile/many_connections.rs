//! Many connections.

use super::*;

pub(super) fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_cur < want {
            let raised = libc::rlimit { rlim_cur: want.min(l.rlim_max), rlim_max: l.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raised), 0, "setrlimit(RLIMIT_NOFILE)");
            l = raised;
        }
        l.rlim_cur
    }
}

pub(super) fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

pub(super) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub(super) async fn timed_health(addr: &str) -> Duration {
    let t = Instant::now();
    let r = send(addr, &request("GET", b"/healthz", &[], None)).await;
    assert_eq!(r.status, 200);
    t.elapsed()
}

/// 1,500 concurrent connections against the real binary in its own process (so its RSS and
/// open files are its own, not those of whatever other tests run in this process): 500 that
/// sent a keep-alive request and stay idle, 500 that connect and say nothing, 500 that send a
/// request one byte at a time. `/healthz` must answer quickly throughout, and the server's RSS
/// must not grow by more than 200 MB: 1,500 connections × 128 KB, which is ten times what a
/// hyper connection with its 8 KB read buffer, 16 KB write buffer and task needs — a leak or
/// an unbounded buffer per connection would pass it, a per-connection copy of anything big
/// would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_connections_do_not_exhaust_the_server() {
    const EACH: usize = 500;
    let limit = raise_nofile(16_384);
    // The server holds one descriptor per connection, this process one more; plus slack.
    assert!(limit >= (3 * EACH as u64) + 512, "RLIMIT_NOFILE hard limit {limit} is too low for this test: raise it (ulimit -Hn)");

    // A cap above the 1,500 (the default is 1,024; tests/it/connections.rs covers the cap).
    let (_dir, config) = vault_files("[limits]\nmax_connections = 2048\n");
    let mut child = spawn_binary(&config);
    let base = child.addr.clone();
    let pid = child.pid();
    let addr = base.trim_start_matches("http://").to_owned();
    timed_health(&addr).await;
    let rss_before = proc_status(pid, "VmRSS:");
    let fds_before = open_fds(pid);

    let keep_alive = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", token("svc-all"));
    let mut conns = Vec::with_capacity(3 * EACH);
    let started = Instant::now();
    for i in 0..3 * EACH {
        let mut s = TcpStream::connect(&addr).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        match i % 3 {
            0 => {
                // A keep-alive request, answered, then idle.
                s.write_all(keep_alive.as_bytes()).await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "keep-alive connection {i}");
            }
            1 => {}                                // connected, silent
            _ => s.write_all(b"G").await.unwrap(), // the first byte of a slow request
        }
        conns.push(s);
    }
    let opened = started.elapsed();
    let during = timed_health(&addr).await;
    let mut fds_during = open_fds(pid);
    for _ in 0..50 {
        if fds_during >= fds_before + 3 * EACH {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_during = open_fds(pid);
    }
    // The slow ones send the rest of a request one byte every 100 ms.
    let rest = b"ET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    for chunk in rest.chunks(1).take(20) {
        for s in conns.iter_mut().skip(2).step_by(3) {
            let _ = s.write_all(chunk).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let while_slow = timed_health(&addr).await;
    let rss_peak = proc_status(pid, "VmRSS:");
    let hwm = proc_status(pid, "VmHWM:");
    // Every connection the server accepted is still open (nothing dropped under load).
    let fds_peak = open_fds(pid);
    drop(conns);
    let mut fds_after = open_fds(pid);
    for _ in 0..100 {
        if fds_after <= fds_before + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = open_fds(pid);
    }
    let after = timed_health(&addr).await;
    let rss_after = proc_status(pid, "VmRSS:");
    eprintln!(
        "connections: {} opened in {:.2} s; server fds {fds_before} -> {fds_during} -> {fds_peak} -> {fds_after}; \
         RSS {rss_before} kB -> {rss_peak} kB (high-water {hwm} kB) -> {rss_after} kB; /healthz {during:?} / {while_slow:?} / {after:?}",
        3 * EACH,
        opened.as_secs_f64()
    );
    child.kill();
    assert!(fds_during >= fds_before + 3 * EACH - 10, "the server did not hold the connections open: {fds_during} fds");
    assert!(during < Duration::from_secs(2) && while_slow < Duration::from_secs(2), "/healthz slowed down: {during:?} {while_slow:?}");
    assert!(after < Duration::from_secs(2), "/healthz slow after: {after:?}");
    assert!(rss_peak.saturating_sub(rss_before) < 200 * 1024, "RSS grew by {} kB", rss_peak.saturating_sub(rss_before));
    assert!(fds_after <= fds_before + 8, "connections leaked: {fds_before} -> {fds_after} fds");
}
