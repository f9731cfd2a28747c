//! The generated cases: what a case is (route, target, body, headers, credentials).

use super::*;

/// Values that are personal data carry a marker `QMRK` + 8 characters [A-Z0-9]: no response
/// may contain one (only these positions carry markers; ids and names do not, since those are
/// echoed by design).
pub(super) const MARK: &str = "QMRK";

pub(super) fn markers_in(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let m = MARK.as_bytes();
    let mut i = 0;
    while i + m.len() + 8 <= bytes.len() {
        if &bytes[i..i + m.len()] == m {
            let tail = &bytes[i + m.len()..i + m.len() + 8];
            if tail.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                out.push(String::from_utf8_lossy(&bytes[i..i + m.len() + 8]).into_owned());
            }
        }
        i += 1;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Put,
    Read,
    Rectify,
    OpenContract,
    UpdateContract,
    Consent,
    WithdrawConsent,
    Disclose,
    Export,
    Erase,
    ErasureStatus,
    Audit,
    AuditVerify,
}

impl Route {
    pub(super) fn method(self) -> &'static str {
        match self {
            Route::Put => "PUT",
            Route::Read | Route::Export | Route::ErasureStatus | Route::Audit | Route::AuditVerify => "GET",
            Route::Rectify | Route::UpdateContract => "PATCH",
            Route::OpenContract | Route::Consent | Route::Disclose | Route::Erase => "POST",
            Route::WithdrawConsent => "DELETE",
        }
    }

    /// The caller a well-behaved client would use.
    pub(super) fn caller(self) -> &'static str {
        match self {
            Route::Rectify | Route::Export | Route::Erase | Route::ErasureStatus => "website",
            Route::Audit | Route::AuditVerify => "auditor",
            _ => "svc-all",
        }
    }

    /// A success response may echo what the caller sent (consent policy version, disclosure
    /// recipient and reference): those are records about the subject, not field values.
    pub(super) fn success_echoes(self) -> bool {
        matches!(self, Route::Consent | Route::Disclose)
    }

    pub(super) fn reads_only(self) -> bool {
        matches!(self, Route::Read | Route::Export | Route::ErasureStatus | Route::Audit | Route::AuditVerify)
    }
}

#[derive(Clone, Debug)]
pub(super) enum Target {
    /// One of the seeded subjects.
    Seed(usize),
    /// A valid id no case has used.
    Fresh,
    /// Any string at all, percent-encoded into the path.
    Any(String),
    /// Raw path bytes (dot segments, an empty segment, an over-long id).
    Raw(String),
}

#[derive(Clone, Debug)]
pub(super) enum Body {
    None,
    Json(Value),
    /// Bytes that need not be JSON nor UTF-8.
    Bytes(Vec<u8>),
    /// `{"fields": [[[…]]]}`, `{"fields": {"a.b": {"x": {…}}}}`.
    Deep {
        depth: usize,
        arrays: bool,
    },
    /// A valid-looking body with one huge string value.
    Huge(usize),
    /// JSON with invalid UTF-8 inside a string value.
    BadUtf8(Vec<u8>),
}

#[derive(Clone, Debug)]
pub(super) enum Auth {
    Good,
    None,
    Other(&'static str),
    Header(Vec<u8>),
}

#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) route: Route,
    pub(super) target: Target,
    /// A second path parameter (contract id, consent purpose).
    pub(super) param: String,
    pub(super) query: Option<String>,
    pub(super) body: Body,
    pub(super) content_type: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) auth: Auth,
}

pub(super) const FIELDS: &[&str] = &[
    "identity.full_name",
    "identity.iin",
    "identity.birth_date",
    "identity.phone",
    "identity.email",
    "identity.address",
    "questionnaire.employer",
    "questionnaire.monthly_income",
    "questionnaire.dependants",
    "contract.offer_id",
    "contract.amount",
    "contract.offer_sent_at",
    "technical.ip",
    "technical.access_time",
];
pub(super) const PURPOSES: &[&str] = &["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"];
pub(super) const SEEDS: usize = 4;
