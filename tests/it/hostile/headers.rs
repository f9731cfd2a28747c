//! Header abuse.

use super::*;

pub(super) async fn healthy(app: &TestApp) {
    let r = send(host(app), &request("GET", b"/healthz", &[], None)).await;
    assert_eq!(r.status, 200, "the server stopped serving");
}

#[tokio::test]
async fn abusive_headers_are_refused_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    app.put_fields("h-1", json!({"identity.full_name": "Header Abuse"})).await;
    let addr = host(&app).to_owned();
    let good = format!("Bearer {}", token("svc-all")).into_bytes();
    let read = b"/v1/subjects/h-1?purpose=loan_issuance";
    let h = |k: &str, v: &[u8]| (k.to_string(), v.to_vec());
    let mut results = Vec::new();

    // A 100 KB header: refused whether or not a valid token rides along.
    let big = vec![b'a'; 100 * 1024];
    for target in [&b"/healthz"[..], read] {
        let r = send(&addr, &request("GET", target, &[h("Authorization", &good), h("X-Big", &big)], None)).await;
        results.push(("100 KB header", r.status));
        assert_eq!(r.status, 431, "a 100 KB header was not refused");
    }
    healthy(&app).await;

    // 1,000 headers.
    let many: Vec<(String, Vec<u8>)> = (0..1000).map(|i| (format!("X-H{i}"), b"v".to_vec())).chain([h("Authorization", &good)]).collect();
    let r = send(&addr, &request("GET", read, &many, None)).await;
    results.push(("1,000 headers", r.status));
    assert_eq!(r.status, 431, "1,000 headers were not refused");
    healthy(&app).await;

    // Authorization abuse on a subject read: always 401, a problem document, no data.
    let long = format!("Bearer {}", "A".repeat(10 * 1024)).into_bytes();
    let mut non_ascii = b"Bearer ".to_vec();
    non_ascii.extend_from_slice("тест-токен-\u{1F511}".as_bytes());
    let mut latin1 = b"Bearer test-token-svc-all".to_vec();
    latin1.push(0xe9);
    let basic = b"Basic c3ZjLWFsbDp0ZXN0LXRva2VuLXN2Yy1hbGw=".to_vec();
    let token_only = token("svc-all").into_bytes();
    let abuses: Vec<(&str, Headers)> = vec![
        ("bad scheme", vec![h("Authorization", &basic)]),
        ("no scheme", vec![h("Authorization", &token_only)]),
        ("empty bearer", vec![h("Authorization", b"Bearer ")]),
        ("10 KB token", vec![h("Authorization", &long)]),
        ("non-ASCII token", vec![h("Authorization", &non_ascii)]),
        ("obs-text token", vec![h("Authorization", &latin1)]),
        ("duplicated, good first", vec![h("Authorization", &good), h("Authorization", b"Bearer nobody")]),
        ("duplicated, good last", vec![h("Authorization", b"Bearer nobody"), h("Authorization", &good)]),
        ("duplicated, both good", vec![h("Authorization", &good), h("Authorization", &good)]),
        ("two tokens in one", vec![h("Authorization", format!("Bearer {0}, Bearer {0}", token("svc-all")).as_bytes())]),
    ];
    for (what, headers) in abuses {
        let r = send(&addr, &request("GET", read, &headers, None)).await;
        results.push((what, r.status));
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"), "{what}");
        assert!(!r.text().contains("Header Abuse"), "{what}: data leaked");
        healthy(&app).await;
    }

    // Malformed at the protocol level: a 4xx from the HTTP layer (or a closed connection),
    // never a crash. A bare LF as line end is one a server MAY accept (RFC 9112 §2.2): that
    // one may be answered.
    let protocol: Vec<(&str, Vec<u8>)> = vec![
        ("control byte in a header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\nConnection: close\r\n\r\n".to_vec()),
        ("NUL in a header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n".to_vec()),
        ("space in a header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX A: b\r\nConnection: close\r\n\r\n".to_vec()),
        ("bare LF", b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n".to_vec()),
        ("obs-fold", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\nConnection: close\r\n\r\n".to_vec()),
        ("raw space in the target", b"GET /v1/subjects/a b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("non-ASCII target", "GET /v1/subjects/é HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes().to_vec()),
        (
            "conflicting lengths",
            b"PUT /v1/subjects/h-2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{}".to_vec(),
        ),
        (
            "length and chunked",
            b"PUT /v1/subjects/h-2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("bad chunk", b"PUT /v1/subjects/h-2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n".to_vec()),
        ("HTTP/9", b"GET /healthz HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in protocol {
        let r = send(&addr, &bytes).await;
        results.push((what, r.status));
        let may_serve = what == "bare LF";
        assert!(r.status == 0 || (400..500).contains(&r.status) || (may_serve && r.status == 200), "{what}: {}", r.status);
        healthy(&app).await;
    }
    assert_eq!(app.read("h-2", "svc-all", "loan_issuance").await.status, 404, "a malformed request stored something");
    eprintln!("header abuse: {results:?}");
}
