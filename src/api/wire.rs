//! The JSON shapes of the HTTP contract (docs/api.md). Kept apart from the core's types so the
//! contract changes only on purpose; `From` impls map one to the other. The audit entry is the
//! exception: its JSON is fixed by the hash chain, so it is served as stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use crate::domain::rfc3339;
use crate::policy;
use crate::vault::{self, KekInfo};

/// `PUT /v1/subjects/{id}` and `PATCH …/rectify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldsBody {
    /// Field name (`category.name`) → value (JSON string or number).
    #[schema(value_type = BTreeMap<String, Object>)]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteResponse {
    pub subject: String,
    /// The subject's record version after this write.
    pub version: u64,
    pub created: bool,
    /// Fields mandatory for a loan application (P2) still missing.
    pub missing_mandatory: Vec<String>,
}

impl WriteResponse {
    /// A put's or rectify's answer about `subject`: 201 if it created the subject, else 200.
    pub fn of(subject: String, out: crate::vault::WriteOutcome) -> (axum::http::StatusCode, axum::Json<Self>) {
        let status = if out.created { axum::http::StatusCode::CREATED } else { axum::http::StatusCode::OK };
        (status, axum::Json(Self { subject, version: out.version, created: out.created, missing_mandatory: out.missing_mandatory }))
    }
}

/// `POST /v1/subjects:batch`: a bulk import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1,000 subjects, each written as `PUT /v1/subjects/{id}` would write it.
    pub subjects: Vec<BatchItem>,
}

/// One subject of a [`BatchBody`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// Opaque subject id, `^[A-Za-z0-9._-]{1,128}$`.
    pub subject: String,
    /// Field name (`category.name`) → value (JSON string or number).
    #[schema(value_type = BTreeMap<String, Object>)]
    pub fields: BTreeMap<String, Value>,
}

/// A bulk import's answer: one result per subject, in request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// What became of one subject of a bulk import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The subject id as sent; empty when the id itself was refused (it is not repeated).
    pub subject: String,
    /// 201 created, 200 updated; otherwise the status `PUT /v1/subjects/{id}` would have
    /// answered (400, 403, 409, 410, …), and nothing of the subject was stored.
    pub status: u16,
    /// The subject's record version after this write (stored subjects only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Fields mandatory for a loan application (P2) still missing (stored subjects only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_mandatory: Option<Vec<String>>,
    /// Why it was refused: the problem document the single put would have answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<super::error::Problem>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// The purpose of the read (required).
    pub purpose: Option<String>,
    /// Comma-separated field names to narrow the read.
    pub fields: Option<String>,
}

impl ReadQuery {
    /// The purpose (required) and the field names asked for, if any.
    pub fn parse(self) -> Result<(String, Option<Vec<String>>), ApiError> {
        let purpose =
            self.purpose.filter(|p| !p.is_empty()).ok_or_else(|| ApiError::bad_request("the purpose query parameter is required"))?;
        let fields = self.fields.map(|f| f.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect());
        Ok((purpose, fields))
    }
}

/// Field values disclosed for a purpose.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FieldsResponse {
    pub subject: String,
    pub purpose: String,
    #[schema(value_type = BTreeMap<String, Object>)]
    pub fields: BTreeMap<String, Value>,
}

/// [`FieldsResponse`] as the server writes it: each field's JSON text passed through as it
/// was sealed, not parsed and re-serialised. The same JSON (`fields_out_is_a_fields_response`).
#[derive(Debug, Serialize)]
pub struct FieldsOut {
    pub subject: String,
    pub purpose: String,
    pub fields: vault::FieldTexts,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    pub contract: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContractUpdateBody {
    /// `settled` or `breached`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ContractResponse {
    pub subject: String,
    pub contract: String,
    /// `open`, `settled` or `breached`.
    pub status: String,
    pub opened_at: String,
    pub updated_at: String,
    /// The subject's erasure, if one was requested (settling the last contract runs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erasure: Option<ErasureResponse>,
}

impl ContractResponse {
    pub fn new(subject: &str, c: vault::ContractRecord, erasure: Option<ErasureResponse>) -> Self {
        Self {
            subject: subject.to_owned(),
            contract: c.contract,
            status: c.status.as_str().to_owned(),
            opened_at: rfc3339(c.opened_at),
            updated_at: rfc3339(c.updated_at),
            erasure,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    pub purpose: String,
    /// The privacy-policy version the consent is given under; the current one if absent.
    pub policy_version: Option<String>,
    /// RFC 3339; absent means until withdrawn.
    pub valid_until: Option<String>,
    /// Covers transfer to third parties (default: true for third_party_transfer).
    pub third_parties: Option<bool>,
    /// Covers transfer abroad.
    #[serde(default)]
    pub abroad: bool,
}

impl ConsentBody {
    /// The vault's consent request; 400 if `valid_until` is not an RFC 3339 date-time.
    pub fn into_request(self) -> Result<vault::ConsentRequest, ApiError> {
        let valid_until = self
            .valid_until
            .map(|t| time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339))
            .transpose()
            .map_err(|_| ApiError::bad_request("valid_until must be an RFC 3339 date-time"))?;
        Ok(vault::ConsentRequest {
            purpose: self.purpose,
            policy_version: self.policy_version,
            valid_until,
            third_parties: self.third_parties,
            abroad: self.abroad,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsentResponse {
    pub purpose: String,
    pub policy_version: String,
    pub given_at: String,
    pub valid_until: Option<String>,
    pub withdrawn_at: Option<String>,
    pub third_parties: bool,
    pub abroad: bool,
    pub recorded_by: String,
}

impl From<vault::ConsentRecord> for ConsentResponse {
    fn from(c: vault::ConsentRecord) -> Self {
        Self {
            purpose: c.purpose,
            policy_version: c.policy_version,
            given_at: rfc3339(c.given_at),
            valid_until: c.valid_until.map(rfc3339),
            withdrawn_at: c.withdrawn_at.map(rfc3339),
            third_parties: c.third_parties,
            abroad: c.abroad,
            recorded_by: c.recorded_by,
        }
    }
}

/// The basis a disclosure claims, as the request body spells it ([`policy::DisclosureBasis`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisclosureBasis {
    /// `consent`: a consent for the transfer purpose on record (covering abroad if `abroad`).
    Consent,
    /// `legal_obligation`: required by law; `reference` cites it.
    LegalObligation,
    /// `contract_breach`: a breached contract on record.
    ContractBreach,
}

impl From<DisclosureBasis> for policy::DisclosureBasis {
    fn from(b: DisclosureBasis) -> Self {
        match b {
            DisclosureBasis::Consent => policy::DisclosureBasis::Consent,
            DisclosureBasis::LegalObligation => policy::DisclosureBasis::LegalObligation,
            DisclosureBasis::ContractBreach => policy::DisclosureBasis::ContractBreach,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisclosureBody {
    pub recipient: String,
    /// `consent`, `legal_obligation` or `contract_breach`.
    #[schema(value_type = String)]
    pub basis: DisclosureBasis,
    /// The legal reference (required for legal_obligation).
    pub reference: Option<String>,
    pub fields: Vec<String>,
    #[serde(default)]
    pub abroad: bool,
}

impl From<DisclosureBody> for vault::DisclosureRequest {
    fn from(body: DisclosureBody) -> Self {
        Self { recipient: body.recipient, basis: body.basis.into(), reference: body.reference, fields: body.fields, abroad: body.abroad }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DisclosureRecordWire {
    pub id: String,
    pub recipient: String,
    pub basis: String,
    pub reference: Option<String>,
    pub fields: Vec<String>,
    pub abroad: bool,
    pub caller: String,
    pub time: String,
}

impl From<vault::DisclosureRecord> for DisclosureRecordWire {
    fn from(d: vault::DisclosureRecord) -> Self {
        Self {
            id: d.id,
            recipient: d.recipient,
            basis: d.basis,
            reference: d.reference,
            fields: d.fields,
            abroad: d.abroad,
            caller: d.caller,
            time: rfc3339(d.time),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DisclosureResponse {
    pub subject: String,
    pub purpose: String,
    #[schema(value_type = BTreeMap<String, Object>)]
    pub fields: BTreeMap<String, Value>,
    pub disclosure: DisclosureRecordWire,
}

impl DisclosureResponse {
    pub fn new(subject: String, record: vault::DisclosureRecord, values: BTreeMap<String, Value>) -> Self {
        Self { subject, purpose: "third_party_transfer".into(), fields: values, disclosure: record.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErasureResponse {
    pub subject: String,
    /// `pending` or `erased`.
    pub status: String,
    pub receipt: String,
    /// Contracts holding the erasure (open or breached when requested).
    pub held_by: Vec<String>,
    pub requested_at: String,
    pub erased_at: Option<String>,
    /// Fingerprint of the destroyed wrapped DEK.
    pub key_fingerprint: Option<String>,
    /// The KEK generation that wrapped it.
    pub kek_generation: Option<u32>,
    /// What the receipt promises, in words.
    pub statement: String,
    /// The shred is committed (the subject is erased) but forcing its key out of the store
    /// files has not finished yet; the vault retries in the background. False once purged.
    #[serde(default)]
    pub purge_pending: bool,
}

impl ErasureResponse {
    pub fn new(e: vault::ErasureRecord, statement: String) -> Self {
        Self {
            subject: e.subject,
            status: match e.status {
                vault::ErasureStatus::Pending => "pending".into(),
                vault::ErasureStatus::Erased => "erased".into(),
            },
            receipt: e.receipt,
            held_by: e.held_by,
            requested_at: rfc3339(e.requested_at),
            erased_at: e.erased_at.map(rfc3339),
            key_fingerprint: e.key_fingerprint,
            kek_generation: e.kek_generation,
            statement,
            purge_pending: e.status == vault::ErasureStatus::Erased && !e.purged,
        }
    }
}

impl ErasureResponse {
    /// The record with what its receipt promises, in the vault's words.
    pub fn stated(v: &vault::Vault, e: vault::ErasureRecord) -> Self {
        let statement = v.erasure_statement(&e);
        Self::new(e, statement)
    }
}

/// Every access by one caller, action (`subject.read`, `subject.disclose`, `subject.export`)
/// and purpose.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessWire {
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    /// Every field any of them handed out.
    pub fields: Vec<String>,
    pub count: u64,
    /// Times of the first and the last.
    pub first: String,
    pub last: String,
}

/// One access, in full.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessEventWire {
    pub time: String,
    pub caller: String,
    pub action: String,
    pub purpose: Option<String>,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExportResponse {
    pub subject: String,
    pub version: u64,
    #[schema(value_type = BTreeMap<String, Object>)]
    pub fields: BTreeMap<String, Value>,
    pub missing_mandatory: Vec<String>,
    pub consents: Vec<ConsentResponse>,
    pub contracts: Vec<ContractResponse>,
    pub disclosures: Vec<DisclosureRecordWire>,
    /// Who read, received or exported which fields for which purpose: by caller, action and
    /// purpose, complete however long the subject's audit trail.
    pub access: Vec<AccessWire>,
    /// The last 20 accesses in full, oldest first.
    pub recent_access: Vec<AccessEventWire>,
    /// The privacy-policy version in force.
    pub policy_version: String,
    pub erasure: Option<ErasureResponse>,
}

impl ExportResponse {
    /// The core's export in the contract's shape; `statement` is the erasure receipt's text.
    pub fn new(e: vault::Export, statement: Option<String>) -> Self {
        let subject = e.subject.clone();
        Self {
            erasure: e.erasure.map(|r| ErasureResponse::new(r, statement.unwrap_or_default())),
            subject: e.subject,
            version: e.version,
            fields: e.fields,
            missing_mandatory: e.missing_mandatory,
            consents: e.consents.into_iter().map(Into::into).collect(),
            contracts: e.contracts.into_iter().map(|c| ContractResponse::new(&subject, c, None)).collect(),
            disclosures: e.disclosures.into_iter().map(Into::into).collect(),
            access: e
                .access
                .into_iter()
                .map(|a| AccessWire {
                    caller: a.caller,
                    action: a.action,
                    purpose: a.purpose,
                    fields: a.fields,
                    count: a.count,
                    first: a.first,
                    last: a.last,
                })
                .collect(),
            recent_access: e
                .recent_access
                .into_iter()
                .map(|a| AccessEventWire { time: a.time, caller: a.caller, action: a.action, purpose: a.purpose, fields: a.fields })
                .collect(),
            policy_version: e.policy_version,
        }
    }
}

impl ExportResponse {
    /// The export with what its erasure receipt promises, if there is one.
    pub fn stated(v: &vault::Vault, e: vault::Export) -> Self {
        let statement = e.erasure.as_ref().map(|r| v.erasure_statement(r));
        Self::new(e, statement)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RekeyResponse {
    pub subject: String,
    pub dek_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GenerationWire {
    pub generation: u32,
    /// `active`, `decrypt-only` or `destroyed`.
    pub state: String,
    /// Subject DEKs it wraps now.
    pub deks: i64,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
    pub destroyed_at: Option<String>,
    /// Only in a rotation's answer, when true: the rotation is committed, but the keyring escrow
    /// copy has not been written yet; the vault retries in the background.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escrow_pending: bool,
}

impl GenerationWire {
    pub fn new(i: KekInfo, deks: i64) -> Self {
        let state = serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        Self {
            generation: i.generation,
            state,
            deks,
            created_at: rfc3339(i.created_at),
            activated_at: i.activated_at.map(rfc3339),
            retired_at: i.retired_at.map(rfc3339),
            destroyed_at: i.destroyed_at.map(rfc3339),
            escrow_pending: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeysResponse {
    pub generations: Vec<GenerationWire>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub subject: Option<String>,
    pub caller: Option<String>,
    /// Only entries after this sequence number.
    pub after: Option<u64>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// The log's query; 400 if `subject` is not a subject id. At most 100 entries unless asked.
    pub fn into_query(self) -> Result<crate::audit::Query, ApiError> {
        if let Some(s) = &self.subject {
            crate::domain::SubjectId::parse(s)?;
        }
        Ok(crate::audit::Query {
            subject: self.subject,
            caller: self.caller,
            after: self.after.unwrap_or(0),
            limit: self.limit.unwrap_or(100),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    /// Served as stored: the same JSON the hash chain covers.
    pub entries: Vec<crate::audit::AuditEntry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// `SEQ:HASH` recorded earlier outside the vault; the check fails if that entry changed.
    pub anchor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrokenWire {
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    pub ok: bool,
    pub entries: u64,
    /// Hash of the last entry.
    pub head: String,
    pub first_broken: Option<BrokenWire>,
}

impl From<crate::audit::Verification> for VerifyResponse {
    fn from(v: crate::audit::Verification) -> Self {
        Self {
            ok: v.ok,
            entries: v.entries,
            head: v.head,
            first_broken: v.first_broken.map(|b| BrokenWire { seq: b.seq, reason: b.reason }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RewrapResponse {
    /// `idle`, `running` or `complete`.
    pub state: String,
    /// The generation DEKs are moved onto.
    pub target_generation: u32,
    pub done: u64,
    pub total: u64,
    pub rate_per_s: f64,
    pub eta_s: Option<f64>,
    pub pass: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<crate::vault::rewrap::RewrapProgress> for RewrapResponse {
    fn from(p: crate::vault::rewrap::RewrapProgress) -> Self {
        use crate::vault::rewrap::RewrapState;
        Self {
            state: match p.job.state {
                RewrapState::Idle => "idle",
                RewrapState::Running => "running",
                RewrapState::Complete => "complete",
            }
            .into(),
            target_generation: p.job.target,
            done: p.job.done,
            total: p.job.total,
            rate_per_s: p.rate_per_s,
            eta_s: p.eta_s,
            pass: p.job.pass,
            started_at: p.job.started_at,
            finished_at: p.job.finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_out_is_a_fields_response() {
        let texts: vault::FieldTexts =
            serde_json::from_str(r#"{"identity.full_name":"Айгерім \"A\"","questionnaire.monthly_income":350000}"#).unwrap();
        let out = FieldsOut { subject: "s-1".into(), purpose: "loan_issuance".into(), fields: texts };
        let json = serde_json::to_string(&out).unwrap();
        let back: FieldsResponse = serde_json::from_str(&json).unwrap();
        assert_eq!((back.subject.as_str(), back.purpose.as_str()), ("s-1", "loan_issuance"));
        assert_eq!(back.fields["identity.full_name"], "Айгерім \"A\"");
        assert_eq!(back.fields["questionnaire.monthly_income"], 350000);
        assert_eq!(format!("{:?}", out.fields["identity.full_name"]), "FieldText(<22 bytes>)", "Debug shows no value");
    }
}

/// `POST /v1/lookup`'s body. No `Debug`: the value is personal data.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    /// An indexed field (`[[indexes]]`; shipped: `identity.iin`, `identity.phone`, `identity.email`).
    pub field: String,
    /// The value, in any spelling its field's normal form accepts (`+7 701 123 45 67`).
    #[schema(value_type = String)]
    pub value: serde_json::Value,
    pub purpose: String,
}

/// `POST /v1/lookup`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LookupResponse {
    pub field: String,
    pub purpose: String,
    /// The live subjects holding the value for whom the purpose's basis holds, in id order.
    pub subjects: Vec<String>,
}
