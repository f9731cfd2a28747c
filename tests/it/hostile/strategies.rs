//! The generated cases: the proptest strategies that make them.

use super::*;

pub(super) fn marker() -> impl Strategy<Value = String> {
    "[A-Z0-9]{8}".prop_map(|s| format!("{MARK}{s}"))
}

/// Short hostile text: any unicode (control characters, NUL, bidi overrides, astral planes).
pub(super) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
        Just("\u{0}\u{1}\u{7}\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}\u{feff}".to_string()),
        Just("\"'<script>\\u0000%00${x}{{x}}\r\n".to_string()),
    ]
}

/// A personal-data value: marked hostile text, or a plausible (unmarked) typed value.
pub(super) fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => (text(), marker(), text()).prop_map(|(a, m, b)| Value::String(format!("{a}{m}{b}"))),
        1 => prop_oneof![
            Just(json!("900101300017")),
            Just(json!("900101300011")),
            Just(json!("+77011234567")),
            Just(json!("1990-01-01")),
            Just(json!("1990-02-30")),
            Just(json!("a@b.kz")),
            Just(json!("2026-11-01T09:30:00+05:00")),
            Just(json!("203.0.113.7")),
            Just(json!(350000)),
            Just(json!(-5)),
            Just(json!(0.5)),
            Just(json!(1e308)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(null)),
            Just(json!(true)),
            Just(json!("")),
        ],
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub(super) fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "[a-z]{1,10}\\.[a-z_0-9]{1,10}",
        1 => text(),
        1 => Just("identity.".to_string()),
        1 => Just(format!("identity.{}", "a".repeat(70))),
    ]
}

pub(super) fn fields_body() -> impl Strategy<Value = Value> {
    let hostile = (prop::collection::btree_map(field_name(), value(), 0..6), prop::option::weighted(0.1, text())).prop_map(|(m, extra)| {
        let mut b = json!({ "fields": m.into_iter().collect::<serde_json::Map<_, _>>() });
        if let Some(k) = extra {
            b[k] = json!(1);
        }
        b
    });
    // Free-text fields with marked unicode values: mostly accepted, so the sealed path runs.
    let free = prop::collection::btree_map(
        prop::sample::select(&["identity.full_name", "identity.address", "questionnaire.employer"][..]),
        ("[^\\p{Cc}]{0,16}", marker(), "[^\\p{Cc}]{0,16}").prop_map(|(a, m, b)| json!(format!("{a}{m}{b}"))),
        1..4,
    )
    .prop_map(|m| json!({ "fields": m.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<serde_json::Map<_, _>>() }));
    prop_oneof![2 => hostile, 1 => free]
}

pub(super) fn marked() -> impl Strategy<Value = String> {
    (text(), marker()).prop_map(|(a, m)| format!("{a}{m}"))
}

pub(super) fn id_like() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9._-]{1,16}", text(), Just("..".to_string()), Just("a".repeat(65))]
}

pub(super) fn shaped_body(route: Route) -> BoxedStrategy<Value> {
    match route {
        Route::Put | Route::Rectify => fields_body().boxed(),
        Route::OpenContract => id_like().prop_map(|c| json!({ "contract": c })).boxed(),
        Route::UpdateContract => {
            prop_oneof![Just("settled".to_string()), Just("breached".to_string()), marked()].prop_map(|s| json!({ "status": s })).boxed()
        }
        Route::Consent => (
            prop_oneof![prop::sample::select(PURPOSES).prop_map(str::to_owned), id_like()],
            prop::option::of(prop_oneof![marked(), Just("2019-01-29".to_string())]),
            prop::option::of(prop_oneof![marked(), Just("2999-01-01T00:00:00Z".to_string()), Just("2000-01-01T00:00:00Z".to_string())]),
            prop::option::of(any::<bool>()),
            prop_oneof![Just(json!(true)), Just(json!(false)), value()],
        )
            .prop_map(|(p, v, u, t, a)| json!({"purpose": p, "policy_version": v, "valid_until": u, "third_parties": t, "abroad": a}))
            .boxed(),
        Route::Disclose => (
            marked(),
            prop_oneof![Just("consent".to_string()), Just("legal_obligation".to_string()), Just("contract_breach".to_string()), marked()],
            prop::option::of(marked()),
            prop::collection::vec(field_name(), 0..4),
            any::<bool>(),
        )
            .prop_map(|(r, b, f, fields, a)| json!({"recipient": r, "basis": b, "reference": f, "fields": fields, "abroad": a}))
            .boxed(),
        _ => Just(Value::Null).boxed(),
    }
}

pub(super) fn body(route: Route) -> BoxedStrategy<Body> {
    let none_expected = matches!(
        route,
        Route::Read | Route::Export | Route::Erase | Route::ErasureStatus | Route::Audit | Route::AuditVerify | Route::WithdrawConsent
    );
    let shaped = shaped_body(route).prop_map(|v| if v.is_null() { Body::None } else { Body::Json(v) });
    let other = prop_oneof![
        value().prop_map(Body::Json),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Body::Bytes),
        (1usize..3000, any::<bool>()).prop_map(|(depth, arrays)| Body::Deep { depth, arrays }),
        prop_oneof![1000usize..20_000, 200_000usize..300_000].prop_map(Body::Huge),
        prop::collection::vec(128u8..=255, 1..8).prop_map(Body::BadUtf8),
    ];
    if none_expected {
        prop_oneof![4 => Just(Body::None), 1 => other].boxed()
    } else {
        prop_oneof![6 => shaped, 3 => other, 1 => Just(Body::None)].boxed()
    }
}

pub(super) fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => (0..SEEDS).prop_map(Target::Seed),
        3 => Just(Target::Fresh),
        2 => any::<String>().prop_map(|s| Target::Any(s.chars().take(40).collect())),
        1 => prop_oneof![
            Just(Target::Raw("..".into())),
            Just(Target::Raw(".".into())),
            Just(Target::Raw("%2e%2e".into())),
            Just(Target::Raw("".into())),
            Just(Target::Raw("a".repeat(129))),
            Just(Target::Raw("a%00b".into())),
            Just(Target::Raw("%ff%fe".into())),
            Just(Target::Raw("%".into())),
            Just(Target::Raw("a/../b".into())),
        ],
    ]
}

/// Characters a query may carry raw (RFC 3986 query), '%' included even when not followed
/// by hex digits.
pub(super) fn raw_query() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,60}"
}

pub(super) fn query(route: Route) -> BoxedStrategy<Option<String>> {
    let pairs = prop::collection::vec(
        (
            prop_oneof![
                Just("purpose".to_string()),
                Just("fields".to_string()),
                Just("subject".to_string()),
                Just("caller".to_string()),
                Just("after".to_string()),
                Just("limit".to_string()),
                Just("anchor".to_string()),
                "[a-z]{1,8}",
                text(),
            ],
            prop_oneof![
                marked(),
                prop::sample::select(PURPOSES).prop_map(str::to_owned),
                prop::collection::vec(prop::sample::select(FIELDS), 1..4).prop_map(|f| f.join(",")),
                Just("18446744073709551616".to_string()),
                Just("-1".to_string()),
                Just("0".to_string()),
                Just("1000000".to_string()),
                Just(format!("1:{}", "a".repeat(64))),
                text(),
            ],
        ),
        0..4,
    )
    .prop_map(|ps| {
        let q: Vec<String> = ps
            .into_iter()
            .map(|(k, v)| {
                // Keys, names and fields lists are echoed by design; only values carry markers.
                let v = if k == "fields" || k == "purpose" { v.replace(MARK, "qmrk") } else { v };
                format!("{}={}", pct(k.as_bytes()), pct(v.as_bytes()))
            })
            .collect();
        Some(q.join("&"))
    });
    let good = match route {
        Route::Read => prop::sample::select(PURPOSES).prop_map(|p| Some(format!("purpose={p}"))).boxed(),
        _ => Just(None).boxed(),
    };
    prop_oneof![3 => pairs, 2 => good, 1 => raw_query().prop_map(|q| Some(q.replace(MARK, "qmrk"))), 1 => Just(None)].boxed()
}

/// Header value bytes HTTP allows: tab, visible ASCII, obs-text.
pub(super) fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..80).prop_map(|mut v| {
            while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.remove(0);
            }
            v
        }),
        "[A-Za-z0-9._:-]{1,64}".prop_map(String::into_bytes),
        Just(b"x".repeat(65)),
    ]
}

pub(super) fn extra_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("x-request-id".to_string()),
                Just("accept".to_string()),
                Just("accept-encoding".to_string()),
                Just("user-agent".to_string()),
                Just("x-forwarded-for".to_string()),
                Just("cookie".to_string()),
                "x-[a-z0-9-]{1,20}",
            ],
            header_value(),
        ),
        0..4,
    )
}

pub(super) fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        14 => Just(Some(b"application/json".to_vec())),
        1 => Just(Some(b"APPLICATION/JSON; charset=utf-8".to_vec())),
        1 => Just(Some(b"application/json; charset=latin1; boundary=x".to_vec())),
        1 => Just(Some(b"text/plain".to_vec())),
        1 => Just(Some(b"application/jsonx".to_vec())),
        1 => Just(None),
        1 => header_value().prop_map(Some),
    ]
}

pub(super) fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        12 => Just(Auth::Good),
        1 => Just(Auth::None),
        1 => prop_oneof![Just(Auth::Other("website")), Just(Auth::Other("svc-marketing")), Just(Auth::Other("nobody"))],
        1 => header_value().prop_map(Auth::Header),
    ]
}

pub(super) fn route() -> impl Strategy<Value = Route> {
    prop::sample::select(vec![
        Route::Put,
        Route::Put,
        Route::Put,
        Route::Read,
        Route::Read,
        Route::Rectify,
        Route::Rectify,
        Route::OpenContract,
        Route::UpdateContract,
        Route::Consent,
        Route::Consent,
        Route::WithdrawConsent,
        Route::Disclose,
        Route::Disclose,
        Route::Export,
        Route::Erase,
        Route::ErasureStatus,
        Route::Audit,
        Route::AuditVerify,
    ])
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    route().prop_flat_map(|r| {
        (Just(r), target(), id_like(), query(r), body(r), content_type(), extra_headers(), auth()).prop_map(
            |(route, target, param, query, body, content_type, headers, auth)| Case {
                route,
                target,
                param,
                query,
                body,
                content_type,
                headers,
                auth,
            },
        )
    })
}
