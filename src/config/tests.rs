//! The parser end to end: text in, `Config` or the one-line error out.

use std::path::{Path, PathBuf};

use qoima_keys::RootKeySource;

use super::*;
use crate::privacy::{Lang, PrivacySettings};

fn no_env(_: &str) -> Option<String> {
    None
}

const GOOD: &str = r#"
listen   = "127.0.0.1:9999"
data_dir = "/var/lib/qoima"

[root_key]
file = "/etc/qoima/root.key"

[[callers]]
name         = "origination"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
roles        = ["service"]
purposes     = ["loan_issuance"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "qoima.toml", Path::new("/etc/qoima"), &no_env)
}

#[test]
fn the_design_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
    assert_eq!(c.root_key, RootKeySource::File("/etc/qoima/root.key".into()));
    assert_eq!(c.erasure_journal, PathBuf::from("/var/lib/qoima-erasures.jsonl"));
    let caller = c.callers.authenticate("test").unwrap();
    assert_eq!(caller.name.as_str(), "origination");
    assert_eq!(c.purposes.0.len(), 5, "the shipped four and call_centre");
}

#[test]
fn the_audit_budget_of_failed_authentications() {
    assert_eq!(parse(GOOD).unwrap().vault_settings().audited_auth_failures_per_second, 20);
    let five = GOOD.to_string() + "\n[limits]\naudited_auth_failures_per_second = 5\n";
    assert_eq!(parse(&five).unwrap().vault_settings().audited_auth_failures_per_second, 5);
    let none = GOOD.to_string() + "\n[limits]\naudited_auth_failures_per_second = 0\n";
    assert!(parse(&none).unwrap_err().to_string().contains("too small"));
}

#[test]
fn the_connection_limits() {
    let l = parse(GOOD).unwrap().limits;
    assert_eq!((l.header_read_timeout_secs, l.idle_timeout_secs, l.max_connections), (10, 60, 1024));
    let set = GOOD.to_string() + "\n[limits]\nheader_read_timeout_secs = 2\nidle_timeout_secs = 5\nmax_connections = 64\n";
    let l = parse(&set).unwrap().limits;
    assert_eq!((l.header_read_timeout_secs, l.idle_timeout_secs, l.max_connections), (2, 5, 64));
    for (bad, says) in [
        ("header_read_timeout_secs = 0", "limits.header_read_timeout_secs must be between 1 and 86400"),
        ("idle_timeout_secs = 86401", "limits.idle_timeout_secs must be between 1 and 86400"),
        ("max_connections = 0", "limits.max_connections must be between 1 and 1048576"),
        ("max_connections = 1048577", "limits.max_connections must be between 1 and 1048576"),
    ] {
        let e = parse(&(GOOD.to_string() + "\n[limits]\n" + bad + "\n")).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn the_subject_cache_size() {
    assert_eq!(parse(GOOD).unwrap().vault_settings().subject_cache_bytes, 32 << 20);
    let off = GOOD.to_string() + "\n[cache]\nsubjects_mib = 0\n";
    assert_eq!(parse(&off).unwrap().vault_settings().subject_cache_bytes, 0);
    let huge = GOOD.to_string() + "\n[cache]\nsubjects_mib = 20000\n";
    assert!(parse(&huge).unwrap_err().to_string().contains("cache.subjects_mib must be at most 16384"));
    let unknown = GOOD.to_string() + "\n[cache]\nsubjects = 1\n";
    assert!(parse(&unknown).is_err(), "an unknown cache key is refused");
}

#[test]
fn a_caller_read_limit() {
    assert!(parse(GOOD).unwrap().vault_settings().max_reads_per_minute.is_empty());
    let limited = GOOD.to_string() + "max_reads_per_minute = 600\n";
    assert_eq!(parse(&limited).unwrap().vault_settings().max_reads_per_minute, [("origination".to_string(), 600)].into());
    let zero = GOOD.to_string() + "max_reads_per_minute = 0\n";
    let e = parse(&zero).unwrap_err().to_string();
    assert!(e.starts_with("qoima.toml:13:") && e.contains("at least 1"), "{e}");
}

#[test]
fn a_caller_write_grant() {
    assert!(parse(GOOD).unwrap().vault_settings().write_grants.is_empty());
    let w = GOOD.to_string() + "writes = [\"identity.*\", \"technical.ip\"]\n";
    let want = [("origination".to_string(), vec!["identity.*".to_string(), "technical.ip".to_string()])].into();
    assert_eq!(parse(&w).unwrap().vault_settings().write_grants, want);
    let none = GOOD.to_string() + "writes = []\n";
    assert_eq!(parse(&none).unwrap().vault_settings().write_grants["origination"], Vec::<String>::new());
    let bad = GOOD.to_string() + "writes = [\"identity.shoe\"]\n";
    let e = parse(&bad).unwrap_err().to_string();
    assert!(e.starts_with("qoima.toml:13:") && e.contains("writes names `identity.shoe`, which is not in the schema"), "{e}");
    let web = GOOD.replace("[\"service\"]", "[\"website\"]") + "writes = [\"contract.*\"]\n";
    assert!(parse(&web).unwrap_err().to_string().contains("never writes contract fields"));
}

#[test]
fn errors_name_the_line() {
    let cases = [
        (GOOD.replace("[\"service\"]", "[\"admin\"]"), 11, "admin"),
        (GOOD.replace("[\"loan_issuance\"]", "[\"spying\"]"), 12, "unknown purpose spying"),
        (GOOD.replace("9f86d0", "zz86d0"), 10, "64 hex"),
        (GOOD.replace("listen ", "lisen "), 2, "lisen"),
        (GOOD.to_string() + "\n[[purposes]]\nname = \"x\"\nbasis = \"consent\"\nfields = [\"identity.shoe\"]\n", 14, "not in the schema"),
        // Found by the config fuzz target: a name quoted into the message held a newline.
        (
            GOOD.to_string() + "\n[[purposes]]\nname = \"x\"\nbasis = \"consent\"\nfields = [\"\\nidentity\\u001b[2J\"]\n",
            14,
            "names `\\nidentity\\u{1b}[2J`, which is not in the schema",
        ),
    ];
    for (text, line, needle) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with(&format!("qoima.toml:{line}:")), "{e}");
        assert!(e.contains(needle), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn env_overrides_and_root_key_rules() {
    let env = |k: &str| match k {
        "QOIMA_LISTEN" => Some("0.0.0.0:1234".to_string()),
        "QOIMA_DATA_DIR" => Some("/srv/q".to_string()),
        _ => None,
    };
    let c = Config::parse(GOOD, "x", Path::new("/"), &env).unwrap();
    assert_eq!(c.listen.port(), 1234);
    assert_eq!(c.data_dir, PathBuf::from("/srv/q"));
    let inside = GOOD.replace("/etc/qoima/root.key", "/var/lib/qoima/root.key");
    assert!(parse(&inside).unwrap_err().to_string().contains("must not live inside data_dir"));
    let both = GOOD.replace("file = \"/etc/qoima/root.key\"", "file = \"/k\"\nenv = \"K\"");
    assert!(parse(&both).unwrap_err().to_string().contains("exactly one"));
    assert!(!parse(GOOD).unwrap().lock_memory);
    let locked = format!("lock_memory = true\n{GOOD}");
    assert!(parse(&locked).unwrap().lock_memory);
    let off = |k: &str| (k == "QOIMA_LOCK_MEMORY").then(|| "false".to_string());
    assert!(!Config::parse(&locked, "x", Path::new("/"), &off).unwrap().lock_memory);
    let bad = |k: &str| (k == "QOIMA_LOCK_MEMORY").then(|| "yes".to_string());
    assert!(Config::parse(GOOD, "x", Path::new("/"), &bad).unwrap_err().to_string().contains("QOIMA_LOCK_MEMORY must be true or false"));
    let cred = GOOD.replace("file = \"/etc/qoima/root.key\"", "credential = \"qoima-root-key\"");
    assert_eq!(parse(&cred).unwrap().root_key, RootKeySource::Credential(qoima_keys::CredentialName::parse("qoima-root-key").unwrap()));
    let escape = GOOD.replace("file = \"/etc/qoima/root.key\"", "credential = \"../root.key\"");
    let e = parse(&escape).unwrap_err().to_string();
    assert!(e.starts_with("qoima.toml:5:") && e.contains("plain file name"), "{e}");
}

#[test]
fn the_privacy_section() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.privacy, PrivacySettings::default());
    assert_eq!((c.privacy.session_minutes, c.privacy.default_language), (15, Lang::Kk));
    let text = format!(
        "{GOOD}\n[privacy]\npublic_url = \"https://vault.example.kz/q/\"\nsession_minutes = 10\n\
         frame_ancestors = [\"https://www.100tenge.kz\", \"https://100tenge.kz/\"]\ndefault_language = \"ru\"\n"
    );
    let p = parse(&text).unwrap().privacy;
    assert_eq!(p.public_url.unwrap().as_str(), "https://vault.example.kz/q");
    assert_eq!(p.session_minutes, 10);
    assert_eq!(p.frame_ancestors, ["https://www.100tenge.kz", "https://100tenge.kz"]);
    assert_eq!(p.default_language, Lang::Ru);
    for (bad, needle) in [
        ("public_url = \"vault.example.kz\"", "privacy.public_url"),
        ("public_url = \"https://x/?q=1\"", "privacy.public_url"),
        ("session_minutes = 0", "session_minutes"),
        ("session_minutes = 1440", "session_minutes"),
        ("frame_ancestors = [\"*\"]", "frame_ancestors"),
        ("frame_ancestors = [\"https://x.kz/page\"]", "frame_ancestors"),
        ("default_language = \"de\"", "default_language"),
        ("colour = \"red\"", "colour"),
    ] {
        let e = parse(&format!("{GOOD}\n[privacy]\n{bad}\n")).unwrap_err().to_string();
        assert!(e.starts_with("qoima.toml:1") && e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn duplicate_tokens_and_names_are_refused() {
    let dup = GOOD.to_string() + &GOOD[GOOD.find("[[callers]]").unwrap()..].replace("origination", "other");
    assert!(parse(&dup).unwrap_err().to_string().contains("shares its token"));
}

#[test]
fn embedded_default_creates_key_and_callers_once() {
    let dir = tempfile::tempdir().unwrap();
    let (c, setup) = Config::embedded_default(dir.path(), &no_env).unwrap();
    assert!(setup.root_key_created.is_some());
    assert_eq!(setup.new_tokens.len(), 4);
    assert_eq!(c.data_dir, dir.path().join("data"));
    assert!(!c.data_dir.join("root.key").exists());
    let (_, token) = (&setup.new_tokens[0].0, &setup.new_tokens[0].2);
    assert!(c.callers.authenticate(token).is_some());
    let files = std::fs::read_to_string(dir.path().join(".qoima-dev/callers.toml")).unwrap();
    assert!(!files.contains(token.as_str()), "tokens are never written");
    let (_, again) = Config::embedded_default(dir.path(), &no_env).unwrap();
    assert!(again.root_key_created.is_none() && again.new_tokens.is_empty());
}

#[test]
fn every_field_type_and_basis_reaches_the_core_types() {
    use crate::policy::BasisRule;
    use crate::schema::FieldType;
    let types = [
        ("text", FieldType::Text),
        ("iin", FieldType::Iin),
        ("date", FieldType::Date),
        ("timestamp", FieldType::Timestamp),
        ("phone", FieldType::Phone),
        ("email", FieldType::Email),
        ("number", FieldType::Number),
        ("integer", FieldType::Integer),
        ("ip", FieldType::Ip),
    ];
    let bases = [
        ("application_or_contract", BasisRule::ApplicationOrContract),
        ("open_contract", BasisRule::OpenContract),
        ("consent", BasisRule::Consent),
        ("consent_obligation_or_breach", BasisRule::ConsentObligationOrBreach),
    ];
    let mut text = GOOD.to_string() + "\n[schema.extra]\nretention_days = 7\nopen = \"date\"\n[schema.extra.fields]\n";
    for (i, (name, _)) in types.iter().enumerate() {
        text += &format!("f_{name} = {{ type = \"{name}\", mandatory = {} }}\n", i % 2 == 0);
    }
    for (name, _) in bases {
        text += &format!("\n[[purposes]]\nname = \"p_{name}\"\nbasis = \"{name}\"\nfields = [\"extra.*\"]\n");
    }
    let c = parse(&text).unwrap();
    let extra = c.schema.category("extra").unwrap();
    assert_eq!((extra.retention_days, extra.application, extra.open), (Some(7), false, Some(FieldType::Date)));
    for (i, (name, ty)) in types.iter().enumerate() {
        let spec = &extra.fields[&format!("f_{name}")];
        assert_eq!((spec.ty, spec.mandatory), (*ty, i % 2 == 0), "{name}");
    }
    for (name, basis) in bases {
        let p = c.purposes.get(&crate::domain::Purpose::parse(&format!("p_{name}")).unwrap()).unwrap();
        assert_eq!((p.basis, p.fields.clone()), (basis, vec![crate::policy::FieldGrant::full("extra.*")]), "{name}");
    }
}

#[test]
fn purpose_views_parse_and_fit_the_schema() {
    use crate::policy::{Access, View};
    let purpose = |fields: &str| format!("{GOOD}\n[[purposes]]\nname = \"desk\"\nbasis = \"consent\"\nfields = [{fields}]\n");
    let text = purpose(r#""identity.iin:last4", "identity.birth_date:year", "technical.access_time:year", "identity.email:last4""#);
    let c = parse(&text).unwrap();
    let desk = c.purposes.get(&crate::domain::Purpose::parse("desk").unwrap()).unwrap();
    let f = |n: &str| crate::domain::FieldName::parse(n).unwrap();
    assert_eq!(desk.access(f("identity.iin").borrowed()), Some(Access::View(View::Last4)));
    assert_eq!(desk.access(f("identity.birth_date").borrowed()), Some(Access::View(View::Year)));
    assert_eq!(desk.fields[2].to_string(), "technical.access_time:year");
    let cc = c.purposes.get(&crate::domain::Purpose::parse("call_centre").unwrap()).unwrap();
    assert_eq!(cc.access(f("identity.phone").borrowed()), Some(Access::View(View::Last4)), "the shipped default has its views");
    for (fields, says) in [
        (r#""identity.iin:first4""#, "purpose desk names `identity.iin:first4`: unknown view `first4` (views: last4, year)"),
        (r#""identity.iin:""#, "purpose desk names `identity.iin:`: unknown view `` (views: last4, year)"),
        (r#""identity.*:last4""#, "purpose desk names `identity.*:last4`: a view applies to one field, not to a whole category"),
        (r#""identity.iin:year""#, "purpose desk names `identity.iin:year`: the year view applies only to date and timestamp fields"),
        (
            r#""questionnaire.monthly_income:last4""#,
            "purpose desk names `questionnaire.monthly_income:last4`: the last4 view applies only to fields held as text, not to number or integer fields",
        ),
        (
            r#""questionnaire.dependants:last4""#,
            "purpose desk names `questionnaire.dependants:last4`: the last4 view applies only to fields held as text",
        ),
        (r#""identity.shoe:last4""#, "purpose desk names `identity.shoe:last4`, which is not in the schema"),
        (
            r#""identity.birth_date:year", "identity.birth_date:last4""#,
            "purpose desk names `identity.birth_date:year` and `identity.birth_date:last4`: a field takes one view",
        ),
    ] {
        let e = parse(&purpose(fields)).unwrap_err().to_string();
        assert!(e.starts_with("qoima.toml:14:") && e.contains(says), "{fields}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // A view and the whole value of the same field: allowed, and the whole value wins.
    let both = parse(&purpose(r#""identity.iin:last4", "identity.*""#)).unwrap();
    let desk = both.purposes.get(&crate::domain::Purpose::parse("desk").unwrap()).unwrap();
    assert_eq!(desk.access(f("identity.iin").borrowed()), Some(Access::Full));
    // A schema change the shipped call centre's views no longer fit names the default.
    let changed = format!("{GOOD}\n[schema.identity.fields]\nfull_name = {{ type = \"text\" }}\niin = {{ type = \"text\" }}\nphone = {{ type = \"phone\" }}\nbirth_date = {{ type = \"text\" }}\nemail = {{ type = \"email\" }}\naddress = {{ type = \"text\" }}\n");
    let e = parse(&changed).unwrap_err().to_string();
    assert!(
        e.contains("purpose call_centre names `identity.birth_date:year`: the year view applies only to date and timestamp fields"),
        "{e}"
    );
}

#[test]
fn indexes_default_or_as_listed() {
    let c = parse(GOOD).unwrap();
    let shipped: Vec<(String, bool)> = c.indexes.iter().map(|i| (i.field.to_string(), i.unique)).collect();
    assert_eq!(shipped, [("identity.iin".into(), true), ("identity.phone".into(), false), ("identity.email".into(), false)]);
    assert_eq!(c.vault_settings().indexes, c.indexes);
    // A list replaces the default; an empty one indexes nothing.
    let c = parse(&format!("{GOOD}\n[[indexes]]\nfield = \"identity.email\"\nunique = true\n")).unwrap();
    assert_eq!(c.indexes.iter().map(|i| (i.field.as_str(), i.unique)).collect::<Vec<_>>(), [("identity.email", true)]);
    assert!(parse(&format!("indexes = []\n{GOOD}")).unwrap().indexes.is_empty());
    for (entry, rule) in [
        ("field = \"identity.shoe_size\"", "the schema does not list this field"),
        ("field = \"technical.ip\"", "cannot be indexed"),
        ("field = \"Identity\"", "is not a field name"),
        ("field = \"identity.iin\"\nunique = true\n[[indexes]]\nfield = \"identity.iin\"", "defined twice"),
        ("field = \"identity.iin\"\ncolour = \"red\"", "unknown field"),
    ] {
        let e = parse(&format!("{GOOD}\n[[indexes]]\n{entry}\n")).unwrap_err().to_string();
        assert!(e.contains(rule) && e.starts_with("qoima.toml:"), "{entry}: {e}");
    }
    // The default must fit a schema the file changed.
    let identity = "[schema.identity]\napplication = true\n[schema.identity.fields]\nfull_name = { type = \"text\" }\niin = { type = \"ip\" }\n\
                    birth_date = { type = \"date\" }\nphone = { type = \"phone\" }\nemail = { type = \"email\" }\naddress = { type = \"text\" }\n";
    let e = parse(&format!("{GOOD}\n{identity}")).unwrap_err().to_string();
    assert!(e.contains("the default index on identity.iin") && e.contains("[[indexes]]"), "{e}");
}
