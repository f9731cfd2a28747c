//! Authorisation as a pure function: (caller, action, purpose, subject facts, clock) →
//! decision with a reason. No I/O, no clock reads, no HTTP: the vault gathers the facts and
//! passes "now" in, so every combination is a table test.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{CallerName, ContractId, FieldRef, Purpose, Role};
use crate::schema::Schema;

/// The legal basis a purpose needs (policy clauses P9–P10, docs/privacy-policy-map.md; the
/// shipped purposes' bases are the table in docs/api.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BasisRule {
    /// The subject's application data, or a contract (`loan_issuance`).
    ApplicationOrContract,
    /// An open or breached contract (`loan_monitoring`).
    OpenContract,
    /// A consent for this purpose, given, not withdrawn, not expired (`advertising`).
    Consent,
    /// A consent for this purpose, a legal obligation with a cited reference, or a breached
    /// contract (`third_party_transfer`).
    ConsentObligationOrBreach,
}

/// A masked view of a field: what a purpose that may not see the whole value sees instead
/// (`identity.iin:last4` in a purpose's `fields`). The masked value is still a JSON string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum View {
    /// Every character but the last four replaced by `*` (characters, not bytes). A value of
    /// four characters or fewer is masked whole: a view never shows an entire value.
    Last4,
    /// The `YYYY` of a date or timestamp; anything else is masked whole.
    Year,
}

impl View {
    pub const ALL: [View; 2] = [View::Last4, View::Year];

    /// The name after the `:` in a purpose's `fields`.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Last4 => "last4",
            View::Year => "year",
        }
    }

    pub fn parse(name: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.as_str() == name)
    }

    /// The masked text of `value`.
    pub fn apply(self, value: &str) -> String {
        let chars = value.chars().count();
        match self {
            View::Last4 if chars > 4 => {
                let mut out = String::with_capacity(value.len());
                out.extend(std::iter::repeat_n('*', chars - 4));
                out.extend(value.chars().skip(chars - 4));
                out
            }
            // A date `YYYY-MM-DD` or an RFC 3339 timestamp both begin with the year and a dash.
            View::Year => match value.get(..4) {
                Some(year) if year.bytes().all(|b| b.is_ascii_digit()) && (value.len() == 4 || value[4..].starts_with('-')) => {
                    year.to_owned()
                }
                _ => "*".repeat(chars),
            },
            View::Last4 => "*".repeat(chars),
        }
    }
}

/// How a purpose may read a field: the value itself, or only a masked view of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    Full,
    View(View),
}

/// One entry of a purpose's `fields`: a pattern (`cat.name` or `cat.*`) and, for one named
/// field, an optional view (`identity.iin:last4`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldGrant {
    pub pattern: String,
    pub view: Option<View>,
}

/// Why an entry of a purpose's `fields` does not read (the config names the purpose and entry).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The text after `:` names no [`View`].
    #[error("unknown view `{0}` (views: last4, year)")]
    UnknownView(String),
    /// A view on `cat.*`: views apply to one named field.
    #[error("a view applies to one field, not to a whole category")]
    ViewOnCategory,
}

impl FieldGrant {
    /// The whole value of the fields `pattern` matches.
    pub fn full(pattern: &str) -> Self {
        Self { pattern: pattern.to_owned(), view: None }
    }

    /// An entry as a purpose's `fields` writes it: `pattern` or `field:view`. Whether the
    /// pattern names something in the schema is the schema's question, not this one's.
    pub fn parse(entry: &str) -> Result<Self, GrantError> {
        let Some((pattern, view)) = entry.split_once(':') else { return Ok(Self::full(entry)) };
        let view = View::parse(view).ok_or_else(|| GrantError::UnknownView(view.to_owned()))?;
        if pattern.ends_with(".*") {
            return Err(GrantError::ViewOnCategory);
        }
        Ok(Self { pattern: pattern.to_owned(), view: Some(view) })
    }

    fn matches(&self, field: FieldRef<'_>) -> bool {
        Schema::pattern_matches(&self.pattern, field)
    }
}

impl std::fmt::Display for FieldGrant {
    /// The entry as written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.view {
            None => f.write_str(&self.pattern),
            Some(v) => write!(f, "{}:{}", self.pattern, v.as_str()),
        }
    }
}

/// A configured purpose: its basis and the fields it may read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurposeDef {
    pub name: Purpose,
    pub basis: BasisRule,
    pub fields: Vec<FieldGrant>,
}

impl PurposeDef {
    /// How this purpose may read `field`, if at all. The whole value wins over a view: a
    /// field listed in full (by name or by `cat.*`) and as a view is read in full.
    pub fn access(&self, field: FieldRef<'_>) -> Option<Access> {
        let mut view = None;
        for g in self.fields.iter().filter(|g| g.matches(field)) {
            match g.view {
                None => return Some(Access::Full),
                Some(v) => view = view.or(Some(v)),
            }
        }
        view.map(Access::View)
    }

    /// Whether this purpose reads `field` at all, in full or as a view.
    pub fn allows(&self, field: FieldRef<'_>) -> bool {
        self.fields.iter().any(|g| g.matches(field))
    }

    /// Whether this purpose reads the whole value of `field` (what a lookup by value needs).
    pub fn allows_in_full(&self, field: FieldRef<'_>) -> bool {
        self.access(field) == Some(Access::Full)
    }

    /// The view a read of `field` applies: `None` for a field read in full (or not at all).
    pub fn view(&self, field: FieldRef<'_>) -> Option<View> {
        match self.access(field) {
            Some(Access::View(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether any entry is a view (a purpose without one reads every field in full).
    pub fn has_views(&self) -> bool {
        self.fields.iter().any(|g| g.view.is_some())
    }
}

/// Every configured purpose by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purposes(pub BTreeMap<Purpose, PurposeDef>);

impl Default for Purposes {
    /// The shipped default: the table "Purposes and their legal bases" in docs/api.md.
    fn default() -> Self {
        let def = |name: &str, basis, fields: &[&str]| PurposeDef {
            name: Purpose::parse(name).expect("default purpose names are valid"),
            basis,
            fields: fields.iter().map(|s| FieldGrant::parse(s).expect("default field entries are valid")).collect(),
        };
        let list = [
            def("loan_issuance", BasisRule::ApplicationOrContract, &["identity.*", "questionnaire.*", "contract.*"]),
            def(
                "loan_monitoring",
                BasisRule::OpenContract,
                &["identity.full_name", "identity.phone", "identity.email", "identity.address", "contract.*"],
            ),
            def("third_party_transfer", BasisRule::ConsentObligationOrBreach, &["identity.*", "contract.*"]),
            def("advertising", BasisRule::Consent, &["identity.full_name", "identity.phone", "identity.email"]),
            // Answers a borrower on the phone: checks who is calling, never holds the numbers.
            def(
                "call_centre",
                BasisRule::OpenContract,
                &["identity.full_name", "identity.iin:last4", "identity.phone:last4", "identity.birth_date:year", "contract.*"],
            ),
        ];
        Purposes(list.into_iter().map(|p| (p.name.clone(), p)).collect())
    }
}

impl Purposes {
    pub fn get(&self, p: &Purpose) -> Option<&PurposeDef> {
        self.0.get(p)
    }
}

/// The state of a loan contract. Its serde form (lowercase) is how a contract's status is
/// stored (`vault/codec.rs` `ContractRecord`): part of the on-disk format, not a file shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ContractStatus {
    Open,
    Settled,
    Breached,
}

impl ContractStatus {
    /// Open and breached contracts are obligations: a legal basis, and a hold on erasure (P7).
    pub fn holds(self) -> bool {
        matches!(self, ContractStatus::Open | ContractStatus::Breached)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContractStatus::Open => "open",
            ContractStatus::Settled => "settled",
            ContractStatus::Breached => "breached",
        }
    }
}

/// A consent as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentFact {
    pub purpose: Purpose,
    pub given_at: OffsetDateTime,
    pub valid_until: Option<OffsetDateTime>,
    pub withdrawn_at: Option<OffsetDateTime>,
    pub abroad: bool,
}

impl ConsentFact {
    fn in_force(&self, now: OffsetDateTime) -> Result<(), &'static str> {
        if self.withdrawn_at.is_some_and(|w| w <= now) {
            return Err("withdrawn");
        }
        if self.valid_until.is_some_and(|u| u <= now) {
            return Err("expired");
        }
        if self.given_at > now {
            return Err("not yet given");
        }
        Ok(())
    }
}

/// What the vault knows about a subject that bears on a decision. No field values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectFacts {
    /// Application data (an application category field) is on record.
    pub has_application: bool,
    pub contracts: Vec<(ContractId, ContractStatus)>,
    pub consents: Vec<ConsentFact>,
}

impl SubjectFacts {
    /// Contracts that hold erasure (open or breached).
    pub fn holds(&self) -> Vec<ContractId> {
        self.contracts.iter().filter(|(_, s)| s.holds()).map(|(c, _)| c.clone()).collect()
    }

    fn consent(&self, purpose: &Purpose, now: OffsetDateTime) -> Result<&ConsentFact, String> {
        let mut last_problem = None;
        for c in self.consents.iter().filter(|c| &c.purpose == purpose) {
            match c.in_force(now) {
                Ok(()) => return Ok(c),
                Err(why) => last_problem = Some(why),
            }
        }
        Err(match last_problem {
            Some(why) => format!("the consent for {purpose} was {why}"),
            None => format!("no consent for {purpose} on record"),
        })
    }

    fn contract_with(&self, status: ContractStatus) -> Option<&ContractId> {
        self.contracts.iter().find(|(_, s)| *s == status).map(|(c, _)| c)
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: CallerName,
    pub roles: BTreeSet<Role>,
    /// Purposes it may read for (service role).
    pub purposes: BTreeSet<Purpose>,
}

impl Caller {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Everything a caller can ask the vault to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    PutFields,
    Read,
    /// Finding subjects by an indexed field's value.
    Lookup,
    Rectify,
    Export,
    OpenContract,
    UpdateContract,
    GiveConsent,
    WithdrawConsent,
    Disclose,
    RequestErasure,
    ErasureStatus,
    PrivacySession,
    KeysRead,
    KeysManage,
    Rekey,
    AuditRead,
    Backup,
    /// The detail of `/metrics` and `/readyz` (counts, key generations, store errors).
    Observe,
}

impl Action {
    /// The roles allowed to take this action.
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::PutFields | Action::Read | Action::Lookup | Action::OpenContract | Action::UpdateContract | Action::Disclose => {
                &[Service]
            }
            Action::Rectify | Action::Export | Action::PrivacySession => &[Website],
            Action::GiveConsent | Action::WithdrawConsent | Action::RequestErasure | Action::ErasureStatus => &[Website, Service],
            Action::KeysRead | Action::KeysManage | Action::Rekey | Action::Backup => &[Security],
            Action::AuditRead => &[Auditor, Security],
            Action::Observe => &[Monitoring, Security],
        }
    }

    /// The name written into audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::PutFields => "subject.put",
            Action::Read => "subject.read",
            Action::Lookup => "subject.lookup",
            Action::Rectify => "subject.rectify",
            Action::Export => "subject.export",
            Action::OpenContract => "contract.open",
            Action::UpdateContract => "contract.update",
            Action::GiveConsent => "consent.give",
            Action::WithdrawConsent => "consent.withdraw",
            Action::Disclose => "subject.disclose",
            Action::RequestErasure => "erasure.request",
            Action::ErasureStatus => "erasure.status",
            Action::PrivacySession => "privacy_session.create",
            Action::KeysRead => "keys.read",
            Action::KeysManage => "keys.manage",
            Action::Rekey => "subject.rekey",
            Action::AuditRead => "audit.read",
            Action::Backup => "backup.create",
            Action::Observe => "metrics.read",
        }
    }
}

/// Why a request is refused. The texts go into audit entries and problem details.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The caller has none of the roles the action needs ([`Action::roles`]).
    #[error("caller {caller} lacks the role for {action} (needs one of: {needed})")]
    Role { caller: String, action: &'static str, needed: String },
    /// The purpose exists, but this caller's `purposes` do not list it.
    #[error("purpose {0} is not granted to this caller")]
    PurposeNotGranted(Purpose),
    /// The purpose's basis does not hold for this subject now; `missing` says what is absent.
    #[error("legal basis missing for {purpose}: {missing}")]
    BasisMissing { purpose: Purpose, missing: String },
    /// A lookup by a field the purpose does not read in full.
    #[error("purpose {purpose} does not read {field} in full, so it cannot look subjects up by it")]
    FieldNotAllowed { purpose: Purpose, field: String },
    /// Fields outside the caller's write grant (names only, never values).
    #[error("{action} of {} is outside this caller's write grant", fields.join(", "))]
    WriteNotGranted { action: &'static str, fields: Vec<String> },
}

/// May `caller` take `action` at all?
pub fn may(caller: &Caller, action: Action) -> Result<(), Denial> {
    if action.roles().iter().any(|r| caller.has_role(*r)) {
        Ok(())
    } else {
        Err(Denial::Role {
            caller: caller.name.to_string(),
            action: action.as_str(),
            needed: action.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// What a website caller may rectify when its configuration names no `writes`: the
/// borrower's own application data (P6). Contract fields are never rectified by the website.
pub const DEFAULT_RECTIFY: &[&str] = &["identity.*", "questionnaire.*"];

/// The category the website never writes, whatever its grant says: contract terms come from
/// the lender's systems, not from the borrower's page.
const NEVER_RECTIFIED: &str = "contract";

/// May `caller` take `action` (put or rectify) on these fields? A caller's write grant is
/// `writes` (patterns as in purposes, `[[callers]] writes`); without one, a put may write
/// exactly the fields the caller's granted purposes may read in full (not through a view), and a rectify the borrower's
/// application data ([`DEFAULT_RECTIFY`]). A rectify never writes contract fields. Every
/// field must be granted, or nothing is written.
pub fn decide_write<'a>(
    caller: &Caller,
    action: Action,
    writes: Option<&[String]>,
    purposes: &Purposes,
    fields: impl IntoIterator<Item = FieldRef<'a>>,
) -> Result<(), Denial> {
    may(caller, action)?;
    let granted = |f: FieldRef<'_>| match (writes, action) {
        (_, Action::Rectify) if f.category() == NEVER_RECTIFIED => false,
        (Some(patterns), _) => patterns.iter().any(|p| Schema::pattern_matches(p, f)),
        (None, Action::Rectify) => DEFAULT_RECTIFY.iter().any(|p| Schema::pattern_matches(p, f)),
        // In full: a caller that sees only a masked view could otherwise learn from a unique
        // field's 409 whether someone else holds a value.
        (None, _) => caller.purposes.iter().filter_map(|p| purposes.get(p)).any(|p| p.allows_in_full(f)),
    };
    let refused: Vec<String> = fields.into_iter().filter(|f| !granted(*f)).map(|f| f.as_str().to_owned()).collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(Denial::WriteNotGranted { action: action.as_str(), fields: refused })
    }
}

/// The grant behind an allowed read: which fields, and the basis that held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub basis: String,
}

/// May `caller` read for `purpose` about a subject with these facts, now? The two halves of
/// [`permit_read`] and [`ReadPermit::basis`] in one call.
pub fn decide_read(caller: &Caller, purpose: &PurposeDef, facts: &SubjectFacts, now: OffsetDateTime) -> Result<Grant, Denial> {
    permit_read(caller, purpose)?.basis(facts, now)
}

/// The first half of a read's decision, made before any subject is looked up: the caller has
/// the role and is granted the purpose. A caller refused here learns nothing about the subject,
/// not even whether it exists. The only way to a read's [`Grant`] is through one of these.
#[derive(Clone, Copy, Debug)]
pub struct ReadPermit<'a> {
    purpose: &'a PurposeDef,
}

/// May `caller` read for `purpose` at all (role, purpose granted)?
pub fn permit_read<'a>(caller: &Caller, purpose: &'a PurposeDef) -> Result<ReadPermit<'a>, Denial> {
    may(caller, Action::Read)?;
    if !caller.purposes.contains(&purpose.name) {
        return Err(Denial::PurposeNotGranted(purpose.name.clone()));
    }
    Ok(ReadPermit { purpose })
}

/// May `caller` look subjects up by `field` for `purpose`: a read's permit (role service,
/// purpose granted), and the purpose reads the field in full (a lookup by a value confirms the
/// value: a masked view's holder must not have that oracle). What the lookup names is then limited to
/// the subjects for whom the basis holds ([`ReadPermit::basis`]).
pub fn permit_lookup<'a>(caller: &Caller, purpose: &'a PurposeDef, field: FieldRef<'_>) -> Result<ReadPermit<'a>, Denial> {
    may(caller, Action::Lookup)?;
    let permit = permit_read(caller, purpose)?;
    if !purpose.allows_in_full(field) {
        return Err(Denial::FieldNotAllowed { purpose: purpose.name.clone(), field: field.as_str().to_owned() });
    }
    Ok(permit)
}

impl<'a> ReadPermit<'a> {
    /// The purpose permitted.
    pub fn purpose(&self) -> &'a PurposeDef {
        self.purpose
    }

    /// The second half: does the purpose's legal basis hold for a subject with these facts, now?
    pub fn basis(&self, facts: &SubjectFacts, now: OffsetDateTime) -> Result<Grant, Denial> {
        basis(self.purpose, facts, now)
    }
}

fn basis(purpose: &PurposeDef, facts: &SubjectFacts, now: OffsetDateTime) -> Result<Grant, Denial> {
    let missing = |missing: String| Denial::BasisMissing { purpose: purpose.name.clone(), missing };
    let basis = match purpose.basis {
        BasisRule::ApplicationOrContract => {
            if let Some(c) = facts.contracts.first() {
                format!("contract {}", c.0)
            } else if facts.has_application {
                "application data on record".to_string()
            } else {
                return Err(missing("no application data and no contract on record".into()));
            }
        }
        BasisRule::OpenContract => match facts.contract_with(ContractStatus::Open).or(facts.contract_with(ContractStatus::Breached)) {
            Some(c) => format!("contract {c} in force"),
            None => return Err(missing("no open or breached contract".into())),
        },
        BasisRule::Consent => {
            let c = facts.consent(&purpose.name, now).map_err(missing)?;
            format!("consent for {} given {}", c.purpose, crate::domain::rfc3339(c.given_at))
        }
        BasisRule::ConsentObligationOrBreach => match (facts.consent(&purpose.name, now), facts.contract_with(ContractStatus::Breached)) {
            (Ok(c), _) => format!("consent for {} given {}", c.purpose, crate::domain::rfc3339(c.given_at)),
            (Err(_), Some(b)) => format!("breach of contract {b}"),
            (Err(why), None) => {
                return Err(missing(format!("{why}, no breached contract (a legal obligation needs a disclosure with a cited reference)")))
            }
        },
    };
    Ok(Grant { basis })
}

/// The basis a disclosure to a third party claims (P10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisclosureBasis {
    Consent,
    LegalObligation,
    ContractBreach,
}

impl DisclosureBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            DisclosureBasis::Consent => "consent",
            DisclosureBasis::LegalObligation => "legal_obligation",
            DisclosureBasis::ContractBreach => "contract_breach",
        }
    }
}

/// May `caller` disclose to a third party on `basis`? `purpose` is the transfer purpose.
pub fn decide_disclosure(
    caller: &Caller,
    purpose: &PurposeDef,
    basis: DisclosureBasis,
    reference: Option<&str>,
    abroad: bool,
    facts: &SubjectFacts,
    now: OffsetDateTime,
) -> Result<Grant, Denial> {
    may(caller, Action::Disclose)?;
    if !caller.purposes.contains(&purpose.name) {
        return Err(Denial::PurposeNotGranted(purpose.name.clone()));
    }
    let missing = |missing: String| Denial::BasisMissing { purpose: purpose.name.clone(), missing };
    let held = match basis {
        DisclosureBasis::Consent => {
            let c = facts.consent(&purpose.name, now).map_err(missing)?;
            if abroad && !c.abroad {
                return Err(missing(format!("the consent for {} does not cover transfer abroad", purpose.name)));
            }
            format!("consent for {} given {}", c.purpose, crate::domain::rfc3339(c.given_at))
        }
        DisclosureBasis::LegalObligation => match reference.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) => format!("legal obligation: {r}"),
            None => return Err(missing("a legal obligation must cite its legal reference".into())),
        },
        DisclosureBasis::ContractBreach => match facts.contract_with(ContractStatus::Breached) {
            Some(c) => format!("breach of contract {c}"),
            None => return Err(missing("no breached contract on record".into())),
        },
    };
    Ok(Grant { basis: held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

    fn caller(roles: &[Role], purposes: &[&str]) -> Caller {
        Caller {
            name: CallerName::parse("c").unwrap(),
            roles: roles.iter().copied().collect(),
            purposes: purposes.iter().map(|p| Purpose::parse(p).unwrap()).collect(),
        }
    }

    fn consent(purpose: &str, withdrawn: bool, expired: bool) -> ConsentFact {
        ConsentFact {
            purpose: Purpose::parse(purpose).unwrap(),
            given_at: datetime!(2026-01-01 0:00 UTC),
            valid_until: expired.then_some(datetime!(2026-06-01 0:00 UTC)),
            withdrawn_at: withdrawn.then_some(datetime!(2026-11-01 0:00 UTC)),
            abroad: false,
        }
    }

    /// The states a subject can be in, as far as bases go.
    fn bases() -> Vec<(&'static str, SubjectFacts)> {
        let c = |s| vec![(ContractId::parse("L-1").unwrap(), s)];
        vec![
            ("nothing", SubjectFacts::default()),
            ("application", SubjectFacts { has_application: true, ..Default::default() }),
            ("open contract", SubjectFacts { has_application: true, contracts: c(ContractStatus::Open), ..Default::default() }),
            ("breached contract", SubjectFacts { has_application: true, contracts: c(ContractStatus::Breached), ..Default::default() }),
            ("settled contract", SubjectFacts { has_application: true, contracts: c(ContractStatus::Settled), ..Default::default() }),
            (
                "advertising consent",
                SubjectFacts { has_application: true, consents: vec![consent("advertising", false, false)], ..Default::default() },
            ),
            (
                "withdrawn advertising consent",
                SubjectFacts { has_application: true, consents: vec![consent("advertising", true, false)], ..Default::default() },
            ),
            (
                "expired advertising consent",
                SubjectFacts { has_application: true, consents: vec![consent("advertising", false, true)], ..Default::default() },
            ),
            (
                "transfer consent",
                SubjectFacts { has_application: true, consents: vec![consent("third_party_transfer", false, false)], ..Default::default() },
            ),
        ]
    }

    /// Which (purpose, basis state) pairs hold. Everything not listed must be denied.
    fn expected_allowed(purpose: &str, state: &str) -> bool {
        matches!(
            (purpose, state),
            (
                "loan_issuance",
                "application"
                    | "open contract"
                    | "breached contract"
                    | "settled contract"
                    | "advertising consent"
                    | "withdrawn advertising consent"
                    | "expired advertising consent"
                    | "transfer consent"
            ) | ("loan_monitoring" | "call_centre", "open contract" | "breached contract")
                | ("advertising", "advertising consent")
                | ("third_party_transfer", "breached contract" | "transfer consent")
        )
    }

    #[test]
    fn every_role_purpose_basis_combination() {
        let purposes = Purposes::default();
        let mut checked = 0;
        for role in Role::ALL {
            for (pname, pdef) in &purposes.0 {
                for granted in [true, false] {
                    let grants = [pname.as_str()];
                    let c = caller(&[role], if granted { &grants } else { &[] });
                    for (state, facts) in bases() {
                        let got = decide_read(&c, pdef, &facts, NOW);
                        let want = role == Role::Service && granted && expected_allowed(pname.as_str(), state);
                        assert_eq!(got.is_ok(), want, "role {role} purpose {pname} granted {granted} state {state}: {got:?}");
                        match got {
                            Err(Denial::Role { .. }) => assert_ne!(role, Role::Service),
                            Err(Denial::PurposeNotGranted(_)) => {
                                assert!(role == Role::Service && !granted)
                            }
                            Err(Denial::BasisMissing { ref missing, .. }) => {
                                assert!(role == Role::Service && granted);
                                assert!(!missing.is_empty());
                            }
                            Ok(ref g) => assert!(!g.basis.is_empty()),
                            Err(Denial::WriteNotGranted { .. }) => panic!("a read is never a write denial"),
                            Err(Denial::FieldNotAllowed { .. }) => panic!("a read is never a lookup denial"),
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, Role::ALL.len() * purposes.0.len() * 2 * bases().len());
    }

    #[test]
    fn views_mask_characters_not_bytes() {
        assert_eq!(View::Last4.apply("900101300017"), "********0017");
        assert_eq!(View::Last4.apply("+77011234567"), "********4567");
        assert_eq!(View::Last4.apply("Айгерім"), "***ерім");
        assert_eq!(View::Last4.apply("12345"), "*2345");
        // Four characters or fewer: masked whole, so a view never shows a whole value.
        for (short, masked) in [("1234", "****"), ("әлі", "***"), ("7", "*"), ("", "")] {
            assert_eq!(View::Last4.apply(short), masked, "{short}");
        }
        assert_eq!(View::Year.apply("1990-01-01"), "1990");
        assert_eq!(View::Year.apply("2026-11-01T09:30:00+05:00"), "2026");
        assert_eq!(View::Year.apply("2026"), "2026");
        for odd in ["01.01.1990", "19900101", "199", "ә990-01-01", ""] {
            assert_eq!(View::Year.apply(odd), "*".repeat(odd.chars().count()), "{odd}");
        }
        for v in View::ALL {
            assert_eq!(View::parse(v.as_str()), Some(v));
        }
        assert_eq!(View::parse("last3"), None);
        assert_eq!(View::parse("LAST4"), None);
    }

    #[test]
    fn field_entries_parse_and_print_as_written() {
        assert_eq!(FieldGrant::parse("identity.*"), Ok(FieldGrant::full("identity.*")));
        let g = FieldGrant::parse("identity.iin:last4").unwrap();
        assert_eq!((g.pattern.as_str(), g.view), ("identity.iin", Some(View::Last4)));
        assert_eq!(g.to_string(), "identity.iin:last4");
        assert_eq!(FieldGrant::parse("identity.birth_date:year").unwrap().view, Some(View::Year));
        assert_eq!(FieldGrant::parse("identity.iin:first4"), Err(GrantError::UnknownView("first4".into())));
        assert_eq!(FieldGrant::parse("identity.iin:"), Err(GrantError::UnknownView(String::new())));
        assert_eq!(FieldGrant::parse("identity.*:last4"), Err(GrantError::ViewOnCategory));
    }

    #[test]
    fn access_full_wins_over_a_view() {
        let f = |n: &str| crate::domain::FieldName::parse(n).unwrap();
        let purpose = |fields: &[&str]| PurposeDef {
            name: Purpose::parse("p").unwrap(),
            basis: BasisRule::Consent,
            fields: fields.iter().map(|e| FieldGrant::parse(e).unwrap()).collect(),
        };
        let masked = purpose(&["identity.iin:last4", "identity.full_name"]);
        let iin = f("identity.iin");
        assert_eq!(masked.access(iin.borrowed()), Some(Access::View(View::Last4)));
        assert!(masked.allows(iin.borrowed()) && !masked.allows_in_full(iin.borrowed()));
        assert_eq!(masked.view(iin.borrowed()), Some(View::Last4));
        assert_eq!(masked.access(f("identity.full_name").borrowed()), Some(Access::Full));
        assert_eq!(masked.access(f("identity.phone").borrowed()), None);
        assert!(!masked.allows(f("identity.phone").borrowed()) && !masked.allows_in_full(f("identity.phone").borrowed()));
        assert!(masked.has_views());
        // In full by name or by category, before or after the view: full.
        for fields in [
            &["identity.iin:last4", "identity.iin"][..],
            &["identity.iin", "identity.iin:last4"],
            &["identity.iin:last4", "identity.*"],
            &["identity.*", "identity.iin:last4"],
        ] {
            let p = purpose(fields);
            assert_eq!(p.access(iin.borrowed()), Some(Access::Full), "{fields:?}");
            assert!(p.allows_in_full(iin.borrowed()) && p.view(iin.borrowed()).is_none(), "{fields:?}");
        }
        // The shipped call centre: views where minimisation asks, the rest in full.
        let shipped = Purposes::default();
        let cc = shipped.get(&Purpose::parse("call_centre").unwrap()).unwrap();
        let want = [
            ("identity.full_name", Some(Access::Full)),
            ("identity.iin", Some(Access::View(View::Last4))),
            ("identity.phone", Some(Access::View(View::Last4))),
            ("identity.birth_date", Some(Access::View(View::Year))),
            ("identity.email", None),
            ("identity.address", None),
            ("questionnaire.monthly_income", None),
            ("contract.amount", Some(Access::Full)),
        ];
        for (name, access) in want {
            assert_eq!(cc.access(f(name).borrowed()), access, "{name}");
        }
        assert_eq!(cc.basis, BasisRule::OpenContract);
        let others = ["loan_issuance", "loan_monitoring", "third_party_transfer", "advertising"];
        assert!(others.iter().all(|p| !shipped.get(&Purpose::parse(p).unwrap()).unwrap().has_views()), "the four read in full");
    }

    #[test]
    fn basis_messages_name_what_is_missing() {
        let p = Purposes::default();
        let c = caller(&[Role::Service], &["advertising", "loan_monitoring"]);
        let ad = p.get(&Purpose::parse("advertising").unwrap()).unwrap();
        let withdrawn = SubjectFacts { consents: vec![consent("advertising", true, false)], ..Default::default() };
        let e = decide_read(&c, ad, &withdrawn, NOW).unwrap_err();
        assert_eq!(e.to_string(), "legal basis missing for advertising: the consent for advertising was withdrawn");
        let e = decide_read(&c, ad, &SubjectFacts::default(), NOW).unwrap_err();
        assert_eq!(e.to_string(), "legal basis missing for advertising: no consent for advertising on record");
        let mon = p.get(&Purpose::parse("loan_monitoring").unwrap()).unwrap();
        let e = decide_read(&c, mon, &SubjectFacts::default(), NOW).unwrap_err();
        assert!(e.to_string().contains("no open or breached contract"));
    }

    #[test]
    fn withdrawal_in_the_future_still_counts_until_then() {
        let p = Purposes::default();
        let c = caller(&[Role::Service], &["advertising"]);
        let ad = p.get(&Purpose::parse("advertising").unwrap()).unwrap();
        let mut f = consent("advertising", false, false);
        f.withdrawn_at = Some(NOW + time::Duration::seconds(1));
        let facts = SubjectFacts { consents: vec![f], ..Default::default() };
        assert!(decide_read(&c, ad, &facts, NOW).is_ok());
        assert!(decide_read(&c, ad, &facts, NOW + time::Duration::seconds(1)).is_err());
    }

    #[test]
    fn disclosure_bases() {
        let p = Purposes::default();
        let tpt = p.get(&Purpose::parse("third_party_transfer").unwrap()).unwrap();
        let c = caller(&[Role::Service], &["third_party_transfer"]);
        let none = SubjectFacts::default();
        use DisclosureBasis::*;
        assert!(decide_disclosure(&c, tpt, Consent, None, false, &none, NOW).is_err());
        assert!(decide_disclosure(&c, tpt, LegalObligation, None, false, &none, NOW).is_err());
        assert!(decide_disclosure(&c, tpt, LegalObligation, Some("  "), false, &none, NOW).is_err());
        assert!(decide_disclosure(&c, tpt, LegalObligation, Some("Law 94-V art. 9"), false, &none, NOW).is_ok());
        assert!(decide_disclosure(&c, tpt, ContractBreach, None, false, &none, NOW).is_err());
        let breached =
            SubjectFacts { contracts: vec![(ContractId::parse("L-1").unwrap(), ContractStatus::Breached)], ..Default::default() };
        assert!(decide_disclosure(&c, tpt, ContractBreach, None, false, &breached, NOW).is_ok());
        let consented = SubjectFacts { consents: vec![consent("third_party_transfer", false, false)], ..Default::default() };
        assert!(decide_disclosure(&c, tpt, Consent, None, false, &consented, NOW).is_ok());
        assert!(decide_disclosure(&c, tpt, Consent, None, true, &consented, NOW).is_err(), "abroad needs a consent that covers it");
        let other = caller(&[Role::Service], &["advertising"]);
        assert!(matches!(decide_disclosure(&other, tpt, LegalObligation, Some("x"), false, &none, NOW), Err(Denial::PurposeNotGranted(_))));
        let web = caller(&[Role::Website], &["third_party_transfer"]);
        assert!(matches!(decide_disclosure(&web, tpt, LegalObligation, Some("x"), false, &none, NOW), Err(Denial::Role { .. })));
    }

    #[test]
    fn write_grants() {
        let p = Purposes::default();
        let f = |n: &str| crate::domain::FieldName::parse(n).unwrap();
        let names = |ns: &[&str]| ns.iter().map(|n| f(n)).collect::<Vec<_>>();
        let decide = |c: &Caller, action, writes: Option<&[String]>, fields: &[&str]| {
            let fields = names(fields);
            decide_write(c, action, writes, &p, fields.iter().map(|f| f.borrowed()))
        };
        // No `writes`: a put writes what the granted purposes read.
        let marketing = caller(&[Role::Service], &["advertising"]);
        assert!(decide(&marketing, Action::PutFields, None, &["identity.full_name", "identity.email"]).is_ok());
        let e = decide(&marketing, Action::PutFields, None, &["identity.email", "identity.iin", "contract.amount"]).unwrap_err();
        assert_eq!(e, Denial::WriteNotGranted { action: "subject.put", fields: vec!["identity.iin".into(), "contract.amount".into()] });
        assert!(decide(&caller(&[Role::Service], &[]), Action::PutFields, None, &["identity.full_name"]).is_err());
        let issuance = caller(&[Role::Service], &["loan_issuance"]);
        assert!(decide(&issuance, Action::PutFields, None, &["identity.iin", "questionnaire.employer", "contract.amount"]).is_ok());
        assert!(decide(&issuance, Action::PutFields, None, &["technical.ip"]).is_err());
        // `writes` replaces the purposes' fields, both ways.
        let writes = vec!["identity.phone".to_string(), "technical.*".to_string()];
        assert!(decide(&issuance, Action::PutFields, Some(&writes), &["identity.phone", "technical.ip"]).is_ok());
        assert!(decide(&issuance, Action::PutFields, Some(&writes), &["identity.iin"]).is_err());
        assert!(decide(&issuance, Action::PutFields, Some(&[]), &["identity.phone"]).is_err());
        // Rectify: application data by default, never contract fields.
        let web = caller(&[Role::Website], &[]);
        assert!(decide(&web, Action::Rectify, None, &["identity.phone", "questionnaire.dependants"]).is_ok());
        assert!(decide(&web, Action::Rectify, None, &["contract.amount"]).is_err());
        assert!(decide(&web, Action::Rectify, None, &["technical.ip"]).is_err());
        let all = vec!["identity.*".to_string(), "contract.*".to_string()];
        assert!(decide(&web, Action::Rectify, Some(&all), &["contract.amount"]).is_err());
        assert!(decide(&web, Action::Rectify, Some(&all), &["questionnaire.dependants"]).is_err());
        // A field its purposes show only through a view is not written by default either.
        let call_centre = caller(&[Role::Service], &["call_centre"]);
        assert!(decide(&call_centre, Action::PutFields, None, &["identity.full_name", "contract.amount"]).is_ok());
        assert!(decide(&call_centre, Action::PutFields, None, &["identity.iin"]).is_err());
        // The role still comes first.
        assert!(matches!(decide(&web, Action::PutFields, None, &["identity.phone"]), Err(Denial::Role { .. })));
        assert!(matches!(decide(&issuance, Action::Rectify, None, &["identity.phone"]), Err(Denial::Role { .. })));
    }

    #[test]
    fn lookups_need_the_field_in_full() {
        let p = Purposes::default();
        let f = |n: &str| crate::domain::FieldName::parse(n).unwrap();
        let get = |n: &str| p.get(&Purpose::parse(n).unwrap()).unwrap();
        let c = caller(&[Role::Service], &["loan_issuance", "call_centre", "advertising"]);
        assert!(permit_lookup(&c, get("loan_issuance"), f("identity.iin").borrowed()).is_ok());
        // call_centre sees the IIN's last four only: a lookup by the whole IIN would confirm it.
        assert!(matches!(permit_lookup(&c, get("call_centre"), f("identity.iin").borrowed()), Err(Denial::FieldNotAllowed { .. })));
        assert!(matches!(permit_lookup(&c, get("advertising"), f("identity.iin").borrowed()), Err(Denial::FieldNotAllowed { .. })));
        assert!(permit_lookup(&c, get("advertising"), f("identity.phone").borrowed()).is_ok());
        let ungranted = caller(&[Role::Service], &["advertising"]);
        assert!(matches!(permit_lookup(&ungranted, get("loan_issuance"), f("identity.iin").borrowed()), Err(Denial::PurposeNotGranted(_))));
        let web = caller(&[Role::Website], &["loan_issuance"]);
        assert!(matches!(permit_lookup(&web, get("loan_issuance"), f("identity.iin").borrowed()), Err(Denial::Role { .. })));
    }

    #[test]
    fn role_table() {
        for action in [Action::PutFields, Action::Rectify, Action::Export, Action::KeysManage, Action::AuditRead, Action::RequestErasure] {
            for role in Role::ALL {
                let c = caller(&[role], &[]);
                assert_eq!(may(&c, action).is_ok(), action.roles().contains(&role));
            }
        }
        assert!(may(&caller(&[Role::Auditor], &[]), Action::KeysManage).is_err());
        assert!(may(&caller(&[Role::Security], &[]), Action::Read).is_err());
        // A scraper's token reads the metrics' detail and nothing else.
        let scraper = caller(&[Role::Monitoring], &[]);
        assert!(may(&scraper, Action::Observe).is_ok());
        for action in [Action::PutFields, Action::Read, Action::Rectify, Action::Export, Action::Disclose, Action::RequestErasure]
            .into_iter()
            .chain([Action::PrivacySession, Action::KeysRead, Action::KeysManage, Action::Rekey, Action::AuditRead, Action::Backup])
        {
            assert!(may(&scraper, action).is_err(), "{action:?}");
        }
        assert!(may(&caller(&[Role::Service], &[]), Action::Observe).is_err());
    }
}
