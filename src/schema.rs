//! The field schema: which fields exist, their types, which are mandatory for a loan (P2),
//! and how long technical data is kept (P3). Values are checked here before anything is stored.

use std::collections::BTreeMap;

use serde_json::Value;
use time::macros::format_description;

use crate::domain::{push_json_str, FieldName, FieldRef};

/// The type of a field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldType {
    /// Free text up to 1,024 characters.
    Text,
    /// A 12-digit Kazakh individual identification number with a valid check digit.
    Iin,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A date-time in RFC 3339, or a plain date.
    Timestamp,
    /// An E.164 phone number: `+` and 8 to 15 digits.
    Phone,
    /// An email address.
    Email,
    /// A non-negative number (JSON number, or a string holding one).
    Number,
    /// A non-negative integer.
    Integer,
    /// An IPv4 or IPv6 address.
    Ip,
}

/// One field of the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub ty: FieldType,
    /// Mandatory for a loan application (P2).
    pub mandatory: bool,
}

/// A category of fields (`identity`, `questionnaire`, `technical`, `contract`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// Fields of this category are removed this many days after they were written.
    pub retention_days: Option<u32>,
    /// Counts as application data for the `loan_issuance` basis.
    pub application: bool,
    /// If set, any well-formed field name in this category is accepted with this type
    /// (for lenders' own questionnaires); listed fields keep their own spec.
    pub open: Option<FieldType>,
    pub fields: BTreeMap<String, FieldSpec>,
}

/// Why a field or value was refused. Messages name the field and the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// No category of that name.
    #[error("unknown category `{0}`")]
    UnknownCategory(String),
    /// The category exists, is not open, and does not list the field.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// The value is not of the field's type; `rule` says what it must be.
    #[error("field `{field}`: {rule}")]
    BadValue { field: String, rule: &'static str },
}

/// The whole schema, keyed by category name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    pub categories: BTreeMap<String, Category>,
}

const MAX_TEXT_CHARS: usize = 1024;

impl Default for Schema {
    /// The shipped default (listed in docs/integrator-guide.md; `*` there = mandatory).
    fn default() -> Self {
        use FieldType::*;
        let cat = |retention_days, application, fields: &[(&str, FieldType, bool)]| Category {
            retention_days,
            application,
            open: None,
            fields: fields.iter().map(|(n, ty, m)| (n.to_string(), FieldSpec { ty: *ty, mandatory: *m })).collect(),
        };
        let mut categories = BTreeMap::new();
        categories.insert(
            "identity".into(),
            cat(
                None,
                true,
                &[
                    ("full_name", Text, true),
                    ("iin", Iin, true),
                    ("birth_date", Date, true),
                    ("phone", Phone, true),
                    ("email", Email, false),
                    ("address", Text, false),
                ],
            ),
        );
        categories.insert(
            "questionnaire".into(),
            cat(
                None,
                true,
                &[
                    ("employer", Text, false),
                    ("monthly_income", Number, true),
                    ("dependants", Integer, false),
                    ("loan_purpose", Text, false),
                ],
            ),
        );
        categories.insert(
            "technical".into(),
            cat(
                Some(90),
                false,
                &[
                    ("ip", Ip, false),
                    ("cookie_id", Text, false),
                    ("user_agent", Text, false),
                    ("page", Text, false),
                    ("isp_domain", Text, false),
                    ("access_time", Timestamp, false),
                ],
            ),
        );
        categories.insert(
            "contract".into(),
            cat(
                None,
                false,
                &[
                    ("offer_id", Text, false),
                    ("amount", Number, false),
                    ("term_days", Integer, false),
                    ("offer_sent_at", Timestamp, false),
                    ("offer_accepted_at", Timestamp, false),
                ],
            ),
        );
        Schema { categories }
    }
}

impl Schema {
    /// The spec of `field`, or why it does not exist.
    pub fn spec(&self, field: &FieldName) -> Result<FieldSpec, SchemaError> {
        let cat = self.categories.get(field.category()).ok_or_else(|| SchemaError::UnknownCategory(field.category().to_owned()))?;
        match (cat.fields.get(field.name()), cat.open) {
            (Some(spec), _) => Ok(spec.clone()),
            (None, Some(ty)) => Ok(FieldSpec { ty, mandatory: false }),
            (None, None) => Err(SchemaError::UnknownField(field.as_str().to_owned())),
        }
    }

    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.get(name)
    }

    /// Checks `value` against the field's type and returns the bytes to seal (its JSON text).
    pub fn encode(&self, field: &FieldName, value: &Value) -> Result<Vec<u8>, SchemaError> {
        let spec = self.spec(field)?;
        check_value(spec.ty, value).map_err(|rule| SchemaError::BadValue { field: field.as_str().to_owned(), rule })?;
        Ok(json_text(value))
    }

    /// Every listed mandatory field, in name order.
    pub fn mandatory(&self) -> Vec<FieldName> {
        let mut out = Vec::new();
        for (c, cat) in &self.categories {
            for (n, spec) in &cat.fields {
                if spec.mandatory {
                    if let Ok(f) = FieldName::parse(&format!("{c}.{n}")) {
                        out.push(f);
                    }
                }
            }
        }
        out
    }

    /// Whether a field pattern (`category.name` or `category.*`) matches `field`.
    pub fn pattern_matches(pattern: &str, field: FieldRef<'_>) -> bool {
        match pattern.strip_suffix(".*") {
            Some(cat) => field.category() == cat,
            None => pattern == field.as_str(),
        }
    }

    /// Whether a pattern names something in this schema.
    pub fn pattern_is_known(&self, pattern: &str) -> bool {
        match pattern.strip_suffix(".*") {
            Some(cat) => self.categories.contains_key(cat),
            None => FieldName::parse(pattern).map(|f| self.spec(&f).is_ok()).unwrap_or(false),
        }
    }
}

/// The form of a value a blind index is made of: what two spellings of one value share.
/// Zeroized when dropped (it is a plaintext value).
pub type Normalised = zeroize::Zeroizing<String>;

impl Schema {
    /// Whether a field of this type can be indexed ([`Schema::normalise`] has a form for it).
    pub fn indexable(ty: FieldType) -> bool {
        matches!(ty, FieldType::Text | FieldType::Iin | FieldType::Phone | FieldType::Email | FieldType::Date | FieldType::Integer)
    }

    /// `value` of `field` in its normal form, checked as a stored value is: an IIN's digits
    /// (spaces and hyphens dropped), an E.164 phone (spaces, hyphens, dots and brackets
    /// dropped: `+7 (701) 123-45-67` is `+77011234567`), an email trimmed and lower-cased, a
    /// text or date trimmed, an integer's digits. A value that fails its field's check is
    /// refused as a write would refuse it; a field of a type that is not indexable is refused.
    pub fn normalise(&self, field: &FieldName, value: &Value) -> Result<Normalised, SchemaError> {
        let spec = self.spec(field)?;
        let bad = |rule| SchemaError::BadValue { field: field.as_str().to_owned(), rule };
        if !Self::indexable(spec.ty) {
            return Err(bad("is not a field that can be indexed"));
        }
        match value {
            Value::String(s) => self.normalise_str(field, spec.ty, s),
            Value::Number(n) if spec.ty == FieldType::Integer && n.as_u64().is_some() => Ok(zeroize::Zeroizing::new(n.to_string())),
            _ => Err(bad("must be a JSON string")),
        }
    }

    fn normalise_str(&self, field: &FieldName, ty: FieldType, s: &str) -> Result<Normalised, SchemaError> {
        let without = |drop: &[char]| -> String { s.trim().chars().filter(|c| !drop.contains(c)).collect() };
        let text = match ty {
            FieldType::Iin => without(&[' ', '-']),
            FieldType::Phone => without(&[' ', '-', '.', '(', ')']),
            FieldType::Email => s.trim().to_lowercase(),
            _ => s.trim().to_owned(),
        };
        // Checked as a stored value is; moved in and out of a `Value`, never copied.
        let mut checked = Value::String(text);
        let verdict = check_value(ty, &checked);
        let Value::String(text) = &mut checked else { unreachable!("made a string above") };
        let normal = zeroize::Zeroizing::new(std::mem::take(text));
        verdict.map_err(|rule| SchemaError::BadValue { field: field.as_str().to_owned(), rule })?;
        Ok(normal)
    }

    /// [`Schema::normalise`] of a stored value, given as the JSON text it was sealed as.
    pub fn normalise_text(&self, field: &FieldName, json: &[u8]) -> Result<Normalised, SchemaError> {
        let not_json = || SchemaError::BadValue { field: field.as_str().to_owned(), rule: "must be JSON" };
        if json.first() == Some(&b'"') {
            let spec = self.spec(field)?;
            if !Self::indexable(spec.ty) {
                return Err(SchemaError::BadValue { field: field.as_str().to_owned(), rule: "is not a field that can be indexed" });
            }
            let text = zeroize::Zeroizing::new(serde_json::from_slice::<String>(json).map_err(|_| not_json())?);
            return self.normalise_str(field, spec.ty, &text);
        }
        // Not a string: a number, which is no one's name.
        self.normalise(field, &serde_json::from_slice(json).map_err(|_| not_json())?)
    }
}

/// The JSON text of `value`, as `serde_json` writes it (strings through [`push_json_str`]).
fn json_text(value: &Value) -> Vec<u8> {
    if let Value::String(s) = value {
        let mut out = Vec::with_capacity(s.len() + 2);
        push_json_str(&mut out, s);
        return out;
    }
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(value).expect("JSON value serialises")
}

fn check_value(ty: FieldType, value: &Value) -> Result<(), &'static str> {
    let text = || value.as_str().ok_or("must be a JSON string");
    match ty {
        FieldType::Text => {
            let s = text()?;
            // Most values are ASCII: checked a byte at a time (which vectorises) rather than a
            // char at a time. For ASCII, `char::is_control` is exactly < 0x20 and 0x7f.
            let (chars, control) = if s.is_ascii() {
                (s.len(), s.bytes().fold(false, |any, b| any | ((b < 0x20) & (b != b'\n') & (b != b'\t')) | (b == 0x7f)))
            } else {
                (s.chars().count(), s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
            };
            if s.is_empty() || chars > MAX_TEXT_CHARS {
                return Err("must be 1 to 1024 characters");
            }
            if control {
                return Err("must not contain control characters");
            }
            Ok(())
        }
        FieldType::Iin => iin_is_valid(text()?).then_some(()).ok_or("must be a 12-digit IIN with a valid check digit"),
        FieldType::Date => parse_date(text()?).then_some(()).ok_or("must be a date YYYY-MM-DD"),
        FieldType::Timestamp => {
            let s = text()?;
            let ok = parse_date(s) || time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok();
            ok.then_some(()).ok_or("must be an RFC 3339 date-time or a date YYYY-MM-DD")
        }
        FieldType::Phone => is_e164(text()?).then_some(()).ok_or("must be an E.164 phone number (+ and 8 to 15 digits)"),
        FieldType::Email => is_email(text()?).then_some(()).ok_or("must be an email address"),
        FieldType::Number => {
            let n = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok().filter(|_| !s.trim().is_empty()),
                _ => None,
            };
            match n {
                Some(n) if n.is_finite() && n >= 0.0 => Ok(()),
                _ => Err("must be a non-negative number"),
            }
        }
        FieldType::Integer => match value {
            Value::Number(n) if n.as_u64().is_some() => Ok(()),
            Value::String(s) if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err("must be a non-negative integer"),
        },
        FieldType::Ip => text()?.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| "must be an IPv4 or IPv6 address"),
    }
}

fn parse_date(s: &str) -> bool {
    s.len() == 10 && time::Date::parse(s, format_description!("[year]-[month]-[day]")).is_ok()
}

fn is_e164(s: &str) -> bool {
    match s.strip_prefix('+') {
        Some(d) => (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'),
        None => false,
    }
}

fn is_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !local.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
                && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

/// The Kazakh IIN check digit: weights 1..11, and if the sum mod 11 is 10, weights
/// 3..11,1,2; a second 10 makes the number invalid.
pub fn iin_is_valid(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if s.len() != 12 || d.len() != 12 {
        return false;
    }
    iin_check_digit(&d[..11]) == Some(d[11])
}

/// The check digit for the first eleven digits of an IIN, if one exists.
pub fn iin_check_digit(first11: &[u32]) -> Option<u32> {
    let sum = |w: &[u32]| first11.iter().zip(w).map(|(a, b)| a * b).sum::<u32>() % 11;
    let c = sum(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let c = if c == 10 { sum(&[3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2]) } else { c };
    (c != 10).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> FieldName {
        FieldName::parse(s).unwrap()
    }

    #[test]
    fn iin_check_digit_known_values() {
        // 900101300011: weights 1..11 give 1*9+2*0+3*0+4*1+5*0+6*1+7*3+8*0+9*0+10*0+11*1 = 51, 51 mod 11 = 7.
        assert!(!iin_is_valid("900101300011"));
        assert!(iin_is_valid("900101300017"));
        assert!(!iin_is_valid("90010130001"));
        assert!(!iin_is_valid("9001013000170"));
        assert!(!iin_is_valid("90010130001a"));
        // Every valid 11-digit prefix has exactly one check digit.
        let digits = [8, 5, 0, 3, 1, 2, 4, 0, 1, 2, 3];
        let c = iin_check_digit(&digits).unwrap();
        let s: String = digits.iter().chain([c].iter()).map(|d| char::from_digit(*d, 10).unwrap()).collect();
        assert!(iin_is_valid(&s));
    }

    #[test]
    fn each_type_accepts_and_refuses() {
        let s = Schema::default();
        let ok = [
            ("identity.full_name", json!("Айгерім Сейтқали")),
            ("identity.iin", json!("900101300017")),
            ("identity.birth_date", json!("1990-01-01")),
            ("identity.phone", json!("+77011234567")),
            ("identity.email", json!("a.b@mail.kz")),
            ("questionnaire.monthly_income", json!(350000)),
            ("questionnaire.monthly_income", json!("350000.50")),
            ("questionnaire.dependants", json!(2)),
            ("technical.ip", json!("2001:db8::1")),
            ("technical.access_time", json!("2026-11-26T10:00:00Z")),
            ("contract.amount", json!(150000.0)),
        ];
        for (name, v) in ok {
            assert!(s.encode(&f(name), &v).is_ok(), "{name} {v}");
        }
        let bad = [
            ("identity.full_name", json!("")),
            ("identity.full_name", json!(12)),
            ("identity.iin", json!("900101300011")),
            ("identity.birth_date", json!("1990-02-30")),
            ("identity.birth_date", json!("01.01.1990")),
            ("identity.phone", json!("87011234567")),
            ("identity.phone", json!("+7 701 123")),
            ("identity.email", json!("not-an-email")),
            ("questionnaire.monthly_income", json!(-1)),
            ("questionnaire.monthly_income", json!("abc")),
            ("questionnaire.dependants", json!(1.5)),
            ("technical.ip", json!("999.1.1.1")),
            ("technical.access_time", json!("yesterday")),
        ];
        for (name, v) in bad {
            let err = s.encode(&f(name), &v).unwrap_err();
            assert!(matches!(err, SchemaError::BadValue { .. }), "{name} {v}");
            if let Some(text) = v.as_str() {
                if !text.is_empty() {
                    assert!(!err.to_string().contains(text), "error echoes the value");
                }
            }
        }
        assert_eq!(s.encode(&f("passport.number"), &json!("x")), Err(SchemaError::UnknownCategory("passport".into())));
        assert_eq!(s.encode(&f("identity.shoe_size"), &json!("x")), Err(SchemaError::UnknownField("identity.shoe_size".into())));
    }

    #[test]
    fn text_length_and_control_characters_ascii_or_not() {
        let s = Schema::default();
        let check = |v: &str| s.encode(&f("identity.address"), &json!(v)).map(|_| ()).map_err(|e| e.to_string());
        // Both paths (all-ASCII and not) take newlines and tabs, refuse other controls.
        for ok in ["Abay 1\nflat 2\tA", "Абай 1\nпәтер 2\tА", &"x".repeat(1024), &"ә".repeat(1024)] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
        for (bad, rule) in [
            ("a\rb", "control"),
            ("a\u{7f}b", "control"),
            ("a\u{0}b", "control"),
            ("ә\rb", "control"),
            ("ә\u{85}b", "control"),
            ("ә\u{7f}b", "control"),
            (&"x".repeat(1025), "1024 characters"),
            (&"ә".repeat(1025), "1024 characters"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(rule), "{bad:?}: {err}");
        }
    }

    #[test]
    fn json_text_is_serde_jsons() {
        let cases = [
            json!("plain ascii"),
            json!("Айгерім Сейтқали"),
            json!("quote \" and backslash \\"),
            json!("line\nbreak\ttab\u{1}\u{7f}\u{85}"),
            json!(""),
            json!(350000),
            json!(1.5),
            json!(true),
        ];
        for v in cases {
            assert_eq!(json_text(&v), serde_json::to_vec(&v).unwrap(), "{v}");
        }
    }

    #[test]
    fn normal_forms_are_what_two_spellings_share() {
        let s = Schema::default();
        let n = |name: &str, v: Value| s.normalise(&f(name), &v).map(|t| t.to_string()).map_err(|e| e.to_string());
        assert_eq!(n("identity.phone", json!("+7 701 123 45 67")), Ok("+77011234567".into()));
        assert_eq!(n("identity.phone", json!("+7 (701) 123-45-67")), Ok("+77011234567".into()));
        assert_eq!(n("identity.phone", json!("+77011234567")), Ok("+77011234567".into()));
        assert_eq!(n("identity.iin", json!(" 900101 300017 ")), Ok("900101300017".into()));
        assert_eq!(n("identity.iin", json!("900101-300017")), Ok("900101300017".into()));
        assert_eq!(n("identity.email", json!("  A.B@Mail.KZ ")), Ok("a.b@mail.kz".into()));
        assert_eq!(n("identity.full_name", json!(" Айгерім ")), Ok("Айгерім".into()));
        assert_eq!(n("questionnaire.dependants", json!(2)), Ok("2".into()));
        // A value that fails its field's check is refused, naming the rule, never the value.
        for (name, v) in [("identity.iin", json!("900101300011")), ("identity.phone", json!("8 701 123")), ("identity.email", json!("x"))] {
            let e = n(name, v.clone()).unwrap_err();
            assert!(e.starts_with(&format!("field `{name}`")) && !e.contains(v.as_str().unwrap()), "{e}");
        }
        assert!(n("identity.iin", json!(900101300017u64)).unwrap_err().contains("JSON string"));
        assert!(n("technical.ip", json!("10.0.0.1")).unwrap_err().contains("can be indexed"));
        assert_eq!(s.normalise_text(&f("identity.email"), br#""A@B.KZ""#).unwrap().as_str(), "a@b.kz");
    }

    #[test]
    fn patterns_and_mandatory() {
        assert!(Schema::pattern_matches("identity.*", f("identity.iin").borrowed()));
        assert!(!Schema::pattern_matches("identity.*", f("contract.amount").borrowed()));
        assert!(Schema::pattern_matches("identity.phone", f("identity.phone").borrowed()));
        let s = Schema::default();
        assert!(s.pattern_is_known("contract.*") && s.pattern_is_known("identity.email"));
        assert!(!s.pattern_is_known("identity.nope") && !s.pattern_is_known("nope.*"));
        let m: Vec<String> = s.mandatory().iter().map(|f| f.to_string()).collect();
        assert_eq!(m, ["identity.birth_date", "identity.full_name", "identity.iin", "identity.phone", "questionnaire.monthly_income"]);
    }
}
