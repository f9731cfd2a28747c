//! The `qoima` binary itself: the README's first command starts a vault that answers
//! /healthz on the embedded default, and SIGTERM/SIGINT shut it down cleanly.

use std::process::Command;

use crate::helpers::{config_text, files_containing, qoima_command, spawn_binary, spawn_binary_with_env, token, vault_files, BinaryVault};

/// Starts `qoima serve` in `cwd`, with no configuration: the embedded default.
fn serve(cwd: &std::path::Path) -> BinaryVault {
    let mut cmd = qoima_command();
    cmd.arg("serve").current_dir(cwd).env("QOIMA_LISTEN", "127.0.0.1:0");
    BinaryVault::start(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_starts_answers_and_stops_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = serve(cwd.path());
    let (addr, printed) = (child.addr.clone(), child.startup.clone());
    assert!(printed.contains("WARNING: DEVELOPMENT MODE"), "{printed}");
    let tokens: Vec<&str> = printed.split_whitespace().filter(|w| w.starts_with("qv1_")).collect();
    assert_eq!(tokens.len(), 4, "{printed}");
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{addr}/healthz")).send().await.unwrap().status(), 200);
    // The service token works; the data lands under ./data; the key is outside it, 0600.
    let r = client
        .put(format!("{addr}/v1/subjects/first"))
        .bearer_auth(tokens[0])
        .json(&serde_json::json!({"fields": {"identity.full_name": "First"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = cwd.path().join(".qoima-dev/root.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(cwd.path().join("data/CURRENT").exists());
    assert!(tokens.iter().all(|t| files_containing(cwd.path(), t.as_bytes()).is_empty()), "a token reached the disk");
    assert!(child.stop(libc::SIGTERM).success());

    // A second start prints no tokens, keeps the data, and stops on SIGINT.
    let mut child = serve(cwd.path());
    let (addr, printed) = (child.addr.clone(), child.startup.clone());
    assert!(!printed.contains("qv1_"), "tokens are shown once: {printed}");
    let r = client.get(format!("{addr}/v1/subjects/first?purpose=loan_issuance")).bearer_auth(tokens[0]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(child.stop(libc::SIGINT).success());
}

#[test]
fn config_check_names_the_line_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "data_dir = \"/tmp/x\"\n[root_key]\nfile = \"/etc/k\"\n[[callers]]\nname = \"a\"\ntoken_sha256 = \"00\"\nroles = [\"service\"]\n",
    )
    .unwrap();
    let out = qoima_command().args(["config", "check"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:") && err.contains("64 hex"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn config_check_checks_the_root_key_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).unwrap();
    let f = dir.path().join("q.toml");
    std::fs::write(&f, config_text(dir.path(), "")).unwrap();
    let out = qoima_command().args(["config", "check"]).arg(&f).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("root key "), "{}", String::from_utf8_lossy(&out.stdout));
    std::fs::set_permissions(dir.path().join("root.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = qoima_command().args(["config", "check"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be 0600 or 0400"));
}

/// The root key as a systemd credential (`[root_key] credential = NAME`): read from
/// `$CREDENTIALS_DIRECTORY/NAME` with the mode systemd gives it (0440 where an ACL grants the
/// unit's user read access). Without the directory, `config check` says where the key will come
/// from and `serve` refuses to start with one line saying what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_key_can_be_a_systemd_credential() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    qoima_keys::RootKey::generate_file(&creds.join("qoima-root-key")).unwrap();
    std::fs::set_permissions(creds.join("qoima-root-key"), std::fs::Permissions::from_mode(0o440)).unwrap();
    let mut text = config_text(dir.path(), "");
    let file_line = format!("file = \"{}\"", dir.path().join("root.key").display());
    assert!(text.contains(&file_line));
    text = text.replace(&file_line, "credential = \"qoima-root-key\"");
    let config = dir.path().join("qoima.toml");
    std::fs::write(&config, text).unwrap();

    let check = qoima_command().args(["config", "check"]).arg(&config).env_remove("CREDENTIALS_DIRECTORY").output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && said.contains("root key not present on this machine (systemd credential qoima-root-key)"), "{said}");
    let refused = qoima_command().args(["serve", "--config"]).arg(&config).env_remove("CREDENTIALS_DIRECTORY").output().unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("CREDENTIALS_DIRECTORY is not set"), "{why}");

    let mut child = spawn_binary_with_env(&config, [("CREDENTIALS_DIRECTORY", &creds)]);
    let addr = child.addr.clone();
    let client = reqwest::Client::new();
    let ready = client.get(format!("{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let put = client
        .put(format!("{addr}/v1/subjects/cred-1"))
        .bearer_auth(token("svc-all"))
        .json(&serde_json::json!({"fields": {"identity.full_name": "Aliya"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    child.kill();
}

fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).expect("VmLck in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `lock_memory = true`: the vault's pages are locked in RAM (never swapped), and where the
/// memory-lock limit forbids it the vault refuses to start, saying which limit to raise. Needs
/// root, as CI runs (like the faults suite): to lock without a raised limit, and to drop
/// CAP_IPC_LOCK for the refusal.
#[tokio::test(flavor = "multi_thread")]
async fn locked_memory_is_locked_or_the_vault_does_not_start() {
    let (dir, config) = vault_files("lock_memory = true\n");
    let mut child = spawn_binary(&config);
    let addr = child.addr.clone();
    assert_eq!(reqwest::get(format!("{addr}/readyz")).await.unwrap().status(), 200);
    let locked = locked_kib(child.pid());
    child.kill();
    assert!(locked > 1024, "expected the touched pages locked, VmLck {locked} kB");

    // Unlocked by default.
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    let mut child = spawn_binary(&config);
    let locked = locked_kib(child.pid());
    child.kill();
    assert_eq!(locked, 0);

    // A 64 KiB limit and no CAP_IPC_LOCK (dropped even for root): start refused, in one line.
    std::fs::write(&config, config_text(dir.path(), "lock_memory = true\n")).unwrap();
    let out = Command::new("prlimit")
        .args(["--memlock=65536", "setpriv", "--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock"])
        .arg(env!("CARGO_BIN_EXE_qoima"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("prlimit and setpriv (util-linux) run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("cannot lock the vault's memory") && said.contains("LimitMEMLOCK=infinity"), "{said}");
}
