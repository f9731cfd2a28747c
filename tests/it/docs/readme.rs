//! The README's session, with its expectations in code.

use super::*;

/// The shell commands of the ```sh block that follows `marker` in `text`, with `\` line
/// continuations and lines inside an open single quote joined, comments dropped.
pub(super) fn commands_after(text: &str, marker: &str) -> Vec<String> {
    let start = text.find(marker).expect("marker present");
    let block = &text[start..];
    let body = block.split("```sh\n").nth(1).expect("a sh block follows").split("\n```").next().unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in body.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if cur.matches('\'').count() % 2 == 0 {
                    out.push(std::mem::take(&mut cur));
                } else {
                    cur.push(' ');
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_readme_session_works_as_printed() {
    let app = spawn_app().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let commands = commands_after(&readme, "<!-- readme-session");
    // What each command's output must show, in order.
    let expect: &[&[&str]] = &[
        &["\"version\":1", "\"created\":true"],
        &["\"purpose\":\"loan_issuance\"", "\"identity.iin\":\"900101300017\""],
        &["basis-missing", "no consent for advertising"],
        &["\"policy_version\":\"2019-01-29\""],
        &["\"purpose\":\"advertising\"", "\"identity.phone\""],
        &["\"decision\":\"deny\"", "\"decision\":\"allow\""],
        &["\"ok\":true"],
        &["\"status\":\"erased\"", "\"receipt\":\"rcpt_"],
        &["urn:qoima:problem:erased", "\"status\":410"],
    ];
    assert_eq!(commands.len(), expect.len(), "README session changed: {commands:#?}");
    for (cmd, needles) in commands.iter().zip(expect) {
        let cmd = cmd.replace("http://127.0.0.1:8750", &app.addr);
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("SERVICE", token("svc-all"))
            .env("WEBSITE", token("website"))
            .env("AUDITOR", token("auditor"))
            .output()
            .await
            .expect("sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        for n in *needles {
            assert!(stdout.contains(n), "{cmd}\nprinted {stdout}\nmissing {n}");
        }
        // The advertising read shows contact fields only.
        if cmd.contains("purpose=advertising") && stdout.contains("\"fields\"") {
            assert!(!stdout.contains("identity.iin") && !stdout.contains("monthly_income"));
        }
    }
}
