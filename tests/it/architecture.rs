//! The invariants of docs/ARCHITECTURE.md that text can check (issue #24): what a module does
//! not know shows in what it names. Comments are prose and may name anything; code lines may
//! not.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The files of the RocksDB engine: the only ones whose code names `rocksdb`.
const ENGINE_FILES: &[&str] = &["src/store/rocks.rs"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The file's code lines (comments and doc comments left out), with their numbers.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")).map(|(i, l)| (i + 1, l.to_owned())).collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT).unwrap().display().to_string()
}

/// Every code line under `dir` (but `except`) that contains one of `needles`.
fn offenders(dir: &str, except: &[&str], needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(&Path::new(ROOT).join(dir)) {
        let name = relative(&file);
        if except.contains(&name.as_str()) {
            continue;
        }
        for (n, line) in code_lines(&file) {
            if needles.iter().any(|needle| line.contains(needle)) {
                found.push(format!("{name}:{n}: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_the_engine_names_rocksdb() {
    let found = offenders("src", ENGINE_FILES, &["rocksdb::", "use rocksdb", "librocksdb"]);
    assert!(found.is_empty(), "RocksDB named outside {ENGINE_FILES:?}:\n{}", found.join("\n"));
}

/// The PostgreSQL client is the PostgreSQL engine's alone.
#[test]
fn only_the_postgres_engine_names_its_client() {
    let engine: Vec<String> = rust_files(&Path::new(ROOT).join("src/store/postgres")).iter().map(|f| relative(f)).collect();
    let engine: Vec<&str> = engine.iter().map(String::as_str).collect();
    let found = offenders("src", &engine, &["tokio_postgres", "postgres_rustls"]);
    assert!(found.is_empty(), "the PostgreSQL client named outside src/store/postgres:\n{}", found.join("\n"));
}

/// A standby forwards or refuses; it has no vault to decrypt, decide or record with.
#[test]
fn a_standby_holds_no_vault() {
    let file = Path::new(ROOT).join("src/api/standby.rs");
    let found: Vec<String> = code_lines(&file)
        .into_iter()
        .filter(|(_, l)| l.contains("Vault") || l.contains("AppState"))
        .map(|(n, l)| format!("{n}: {l}"))
        .collect();
    assert!(found.is_empty(), "src/api/standby.rs reaches a vault:\n{}", found.join("\n"));
}

#[test]
fn the_api_knows_no_engine_and_no_config_file() {
    let found = offenders("src/api", &[], &["crate::store", "crate::config", "rocksdb::", "toml::"]);
    assert!(found.is_empty(), "src/api reaches below the vault:\n{}", found.join("\n"));
}

/// The store names nothing of the vault's world: not its types, not the audit's merge rule
/// (the vault hands that over at open), not a subject id.
#[test]
fn the_store_knows_no_subject_or_policy() {
    let found = offenders(
        "src/store",
        &[],
        &["crate::vault", "crate::policy", "crate::schema", "crate::audit", "crate::api", "crate::layout", "SubjectId"],
    );
    assert!(found.is_empty(), "src/store knows the vault's world:\n{}", found.join("\n"));
}

#[test]
fn the_vault_knows_no_http_and_no_file_format() {
    let found = offenders("src/vault", &[], &["axum", "hyper", "crate::api", "toml::", "crate::config"]);
    assert!(found.is_empty(), "src/vault knows HTTP or the configuration file:\n{}", found.join("\n"));
}

/// The audit committer calls a plain callback after each batch: it holds no vault lock, cache
/// or view of its own.
#[test]
fn the_audit_knows_no_locks() {
    let found = offenders("src/audit", &[], &["crate::vault", "parking_lot", "SubjectLock", "Mutex<()>", "SubjectCache", "DekCache"]);
    assert!(found.is_empty(), "src/audit knows the vault's locks or caches:\n{}", found.join("\n"));
}

#[test]
fn policy_does_no_io_and_reads_no_clock() {
    let needles =
        ["std::fs", "std::net", "std::io", "SystemTime", "Instant::now", "OffsetDateTime::now", "crate::store", "crate::audit", "tokio"];
    let file = Path::new(ROOT).join("src/policy.rs");
    let found: Vec<_> = code_lines(&file).into_iter().filter(|(_, l)| needles.iter().any(|n| l.contains(n))).collect();
    assert!(found.is_empty(), "src/policy.rs: {found:?}");
}

/// The key crate's whole dependency tree, from Cargo.lock: crypto only, no runtime, no web
/// framework, no storage engine.
#[test]
fn the_key_crate_depends_on_no_runtime_web_or_storage_crate() {
    let lock: toml::Value = toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).unwrap()).unwrap();
    let packages = lock["package"].as_array().unwrap();
    let deps_of = |name: &str| -> Vec<String> {
        let p = packages.iter().find(|p| p["name"].as_str() == Some(name)).unwrap_or_else(|| panic!("{name} not in Cargo.lock"));
        // An entry is "name" or "name version" when several versions are locked.
        p.get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_owned())
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut todo = VecDeque::from(["qoima-keys".to_owned()]);
    while let Some(name) = todo.pop_front() {
        if seen.insert(name.clone()) {
            todo.extend(deps_of(&name));
        }
    }
    for banned in ["tokio", "axum", "hyper", "rocksdb", "librocksdb-sys", "reqwest", "tower"] {
        assert!(!seen.contains(banned), "qoima-keys reaches {banned}: {seen:?}");
    }
    assert!(seen.contains("ring") && seen.contains("aes-gcm"), "{seen:?}");
}

/// The codemap states each invariant this file checks, in bold.
#[test]
fn the_codemap_states_the_checked_invariants() {
    let map = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md")).unwrap();
    for invariant in [
        "**`store` knows no subject and no policy",
        "**`vault` knows no HTTP and no file format",
        "**`api` knows no engine and no configuration file",
        "**Only the RocksDB engine names RocksDB",
        "**Only `store/postgres/` names the PostgreSQL client",
        "**a standby holds no",
        "**`keys` depends on no runtime, web framework or storage engine",
        "**`policy` does no I/O and reads no clock",
        "**`audit` knows no locks",
    ] {
        assert!(map.contains(invariant), "docs/ARCHITECTURE.md lacks the invariant {invariant}");
    }
    let words = map.split_whitespace().count();
    assert!((700..=1400).contains(&words), "docs/ARCHITECTURE.md has {words} words; the codemap is meant to be about a thousand");
}
