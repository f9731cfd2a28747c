//! A raw HTTP/1.1 client: every byte of the request line and headers is ours (HTTP clients
//! normalise paths, encode queries and refuse odd header values).

use super::*;

pub(super) struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(super) fn text(&self) -> String {
        let mut t = String::from_utf8_lossy(&self.body).into_owned();
        for (k, v) in &self.headers {
            t.push_str(&format!("\n{k}: {v}"));
        }
        t
    }
}

pub(super) type Headers = Vec<(String, Vec<u8>)>;

pub(super) fn host(app: &TestApp) -> &str {
    app.addr.trim_start_matches("http://")
}

/// Builds a request; `Host`, `Connection: close` and `Content-Length` (when there is a body)
/// are added.
pub(super) fn request(method: &str, target: &[u8], headers: &[(String, Vec<u8>)], body: Option<&[u8]>) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(target);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: qoima.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    if let Some(b) = body {
        r.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        r.extend_from_slice(b);
    }
    r
}

/// Sends `req` on a fresh connection and reads the whole response (the request asks the
/// server to close). A write cut short by the server (it may answer 413/431 and close before
/// reading everything) is not an error: the response is still read.
pub async fn send(addr: &str, req: &[u8]) -> RawResp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(req).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete response within 30 s");
    parse_response(&buf)
}

pub(super) fn parse_response(buf: &[u8]) -> RawResp {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawResp { status: 0, headers: vec![], body: buf.to_vec() };
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    let mut body = buf[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    RawResp { status, headers, body }
}

pub(super) fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// Percent-encodes every byte outside the unreserved set.
pub(super) fn pct(s: &[u8]) -> String {
    let mut out = String::new();
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
