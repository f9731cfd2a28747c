//! Running a case, and the property test that runs them.

use super::*;

pub(super) struct Sent {
    pub(super) bytes: Vec<u8>,
    /// The subject id the server will see, if it is a valid one.
    pub(super) subject: Option<String>,
    /// Markers carried in value positions.
    pub(super) markers: Vec<String>,
}

pub(super) fn render(case: &Case, fresh: &str) -> Sent {
    let (segment, decoded) = match &case.target {
        Target::Seed(i) => (format!("seed-{i}"), Some(format!("seed-{i}"))),
        Target::Fresh => (fresh.to_owned(), Some(fresh.to_owned())),
        Target::Any(s) => (pct(s.as_bytes()), Some(s.clone())),
        Target::Raw(s) => (s.clone(), None),
    };
    let subject = decoded.filter(|s| SubjectId::parse(s).is_ok());
    let param = pct(case.param.as_bytes());
    let mut path = match case.route {
        Route::Put | Route::Read => format!("/v1/subjects/{segment}"),
        Route::Rectify => format!("/v1/subjects/{segment}/rectify"),
        Route::OpenContract => format!("/v1/subjects/{segment}/contracts"),
        Route::UpdateContract => format!("/v1/subjects/{segment}/contracts/{param}"),
        Route::Consent => format!("/v1/subjects/{segment}/consents"),
        Route::WithdrawConsent => format!("/v1/subjects/{segment}/consents/{param}"),
        Route::Disclose => format!("/v1/subjects/{segment}/disclosures"),
        Route::Export => format!("/v1/subjects/{segment}/export"),
        Route::Erase | Route::ErasureStatus => format!("/v1/subjects/{segment}/erasure"),
        Route::Audit => "/v1/audit".to_string(),
        Route::AuditVerify => "/v1/audit/verify".to_string(),
    };
    if let Some(q) = &case.query {
        path.push('?');
        path.push_str(q);
    }
    let body: Option<Vec<u8>> = match &case.body {
        Body::None => None,
        Body::Json(v) => Some(serde_json::to_vec(v).unwrap()),
        Body::Bytes(b) => Some(b.clone()),
        Body::Deep { depth, arrays } => Some(if *arrays {
            format!("{{\"fields\": {}{}}}", "[".repeat(*depth), "]".repeat(*depth)).into_bytes()
        } else {
            format!("{{\"fields\": {{\"identity.full_name\": {}\"{MARK}DEEP0000\"{}}}}}", "{\"a\":".repeat(*depth), "}".repeat(*depth))
                .into_bytes()
        }),
        Body::Huge(n) => {
            Some(format!("{{\"fields\": {{\"identity.address\": \"{MARK}HUGE0000{}\"}}}}", "\u{0416}".repeat(n / 2)).into_bytes())
        }
        Body::BadUtf8(bad) => {
            let mut b = format!("{{\"fields\": {{\"identity.full_name\": \"{MARK}UTF80000").into_bytes();
            b.extend_from_slice(bad);
            b.extend_from_slice(b"\"}}");
            Some(b)
        }
    };
    let mut headers = case.headers.clone();
    match &case.auth {
        Auth::Good => headers.push(("Authorization".into(), format!("Bearer {}", token(case.route.caller())).into_bytes())),
        Auth::None => {}
        Auth::Other(c) => headers.push(("Authorization".into(), format!("Bearer {}", token(c)).into_bytes())),
        Auth::Header(v) => headers.push(("Authorization".into(), v.clone())),
    }
    if body.is_some() {
        if let Some(ct) = &case.content_type {
            headers.push(("Content-Type".into(), ct.clone()));
        }
    }
    let mut markers = markers_in(body.as_deref().unwrap_or_default());
    markers.extend(markers_in(path.as_bytes()));
    markers.sort();
    markers.dedup();
    Sent { bytes: request(case.route.method(), path.as_bytes(), &headers, body.as_deref()), subject, markers }
}

/// Everything the store holds for a subject, outside the audit log (which records refusals).
pub(super) fn snapshot(app: &TestApp, subject: &str) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
    let store = app.vault.store();
    let mut out = Vec::new();
    for (space, key) in [(Space::Subjects, subject.as_bytes().to_vec()), (Space::Erasures, subject.as_bytes().to_vec())] {
        if let Some(v) = store.get(space, &key).unwrap() {
            out.push((space, key, v));
        }
    }
    for space in [Space::Records, Space::Facts, Space::Disclosures] {
        store
            .scan_prefix(space, &subject_prefix(subject), |k, v| {
                out.push((space, k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
    }
    out
}

#[derive(Default)]
pub(super) struct Tally {
    pub(super) cases: usize,
    pub(super) by_status: BTreeMap<u16, usize>,
    pub(super) by_route: BTreeMap<String, usize>,
    pub(super) markers_total: usize,
    /// Markers that must never reach the disk in plaintext.
    pub(super) markers_sent: Vec<String>,
}

pub(super) async fn check(app: &TestApp, case: &Case, n: usize, tally: &mut Tally) -> Result<(), TestCaseError> {
    let fresh = format!("fresh-{n}");
    let sent = render(case, &fresh);
    let before = sent.subject.as_deref().map(|s| snapshot(app, s));
    let r = send(host(app), &sent.bytes).await;
    tally.cases += 1;
    tally.markers_total += sent.markers.len();
    *tally.by_status.entry(r.status).or_default() += 1;
    *tally.by_route.entry(format!("{:?}", case.route)).or_default() += 1;
    // Field values are sealed before they reach the store, and a refused request writes
    // nothing but its audit entry (ids and names): neither may leave a marker on disk. Only
    // the records an accepted consent or disclosure keeps (policy version, recipient,
    // reference) are stored as sent.
    if matches!(case.route, Route::Put | Route::Rectify) || r.status >= 400 {
        tally.markers_sent.extend(sent.markers.iter().cloned());
    }

    let what = format!("{} {:?} -> {}", case.route.method(), case.route, r.status);
    if std::env::var_os("QOIMA_HOSTILE_VERBOSE").is_some() {
        // Problem details never hold values (this test checks it), so they may be printed.
        let detail = serde_json::from_slice::<Value>(&r.body).ok().and_then(|p| p["detail"].as_str().map(str::to_owned));
        eprintln!("{what} {}", detail.unwrap_or_default());
    }
    prop_assert!((200..500).contains(&r.status), "{what}: not a 2xx-4xx answer: {}", String::from_utf8_lossy(&r.body));
    if r.status >= 400 {
        prop_assert_eq!(r.header("content-type"), Some("application/problem+json"), "{}", what);
        let p: Value = serde_json::from_slice(&r.body).map_err(|e| TestCaseError::fail(format!("{what}: problem is not JSON: {e}")))?;
        for k in ["type", "title", "detail"] {
            prop_assert!(p[k].is_string(), "{what}: problem lacks {k}: {p}");
        }
        prop_assert_eq!(p["status"].as_u64(), Some(r.status as u64), "{}", what);
        prop_assert!(p["type"].as_str().unwrap().starts_with("urn:qoima:problem:"), "{what}: {p}");
    }
    prop_assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()), "{what}: no request id");
    if r.status >= 400 || !case.route.success_echoes() {
        let text = r.text();
        for m in &sent.markers {
            prop_assert!(!text.contains(m.as_str()), "{what}: the response reflects a value sent: {text}");
        }
    }
    if let (Some(s), Some(before)) = (sent.subject.as_deref(), before) {
        if r.status >= 400 || case.route.reads_only() {
            let after = snapshot(app, s);
            prop_assert!(before == after, "{what}: a refused or read-only request changed what is stored for {s}");
        }
    }
    Ok(())
}

#[test]
fn hostile_requests_never_5xx_never_reflect_never_store() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = rt.block_on(async {
        let app = spawn_app().await;
        for i in 0..SEEDS {
            let s = format!("seed-{i}");
            assert_eq!(app.put_fields(&s, application(&format!("seed{i}"))).await.status, 201);
            if i % 2 == 0 {
                assert_eq!(app.open_contract(&s, "L-1").await.status, 201);
            }
            if i == 1 {
                assert_eq!(app.give_consent(&s, "third_party_transfer").await.status, 201);
            }
        }
        app
    });
    let cases: u32 = std::env::var("QOIMA_HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut runner = TestRunner::new(PropConfig { cases, failure_persistence: None, max_shrink_iters: 200, ..PropConfig::default() });
    let tally = std::cell::RefCell::new(Tally::default());
    let counter = std::cell::Cell::new(0usize);
    let started = Instant::now();
    let result = runner.run(&case(), |c| {
        counter.set(counter.get() + 1);
        rt.block_on(check(&app, &c, counter.get(), &mut tally.borrow_mut()))
    });
    let t = tally.into_inner();
    eprintln!(
        "hostile: {} requests in {:.1} s; statuses {:?}; routes {:?}; {} marked values sent, {} of them checked on disk",
        t.cases,
        started.elapsed().as_secs_f64(),
        t.by_status,
        t.by_route,
        t.markers_total,
        t.markers_sent.len()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        // Still serving, the audit chain intact, and no marked value anywhere on disk in
        // plaintext (accepted ones are sealed, refused ones never written).
        assert_eq!(app.call(reqwest::Method::GET, "/healthz", None, None).await.status, 200);
        let v = app.get("/v1/audit/verify", "auditor").await;
        assert_eq!(v.body["ok"], true, "{:?}", v.body);
    });
    let mut markers = t.markers_sent;
    markers.sort();
    markers.dedup();
    // The whole temporary directory: the data directory, and beside it the erasure journal,
    // the keyring escrow and the root key.
    let files = all_files(app.dir.path());
    for m in &markers {
        let found: Vec<_> = files.iter().filter(|(_, b)| b.windows(m.len()).any(|w| w == m.as_bytes())).map(|(p, _)| p).collect();
        assert!(found.is_empty(), "a sent value is on disk in plaintext: {found:?}");
    }
}

pub(super) fn all_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}
