//! The commands the documentation prints are run here against a live vault, so they keep
//! working as printed.
//!
//! The README's session is marked `<!-- readme-session … -->` and checked below with its
//! expectations in code. The guides in `docs/` mark each block to run with a line
//! `<!-- tested: NAME … -->` right above a ```sh block; inside it, the lines `# → …` after a
//! command are what its output (stdout and stderr) must show, as fragments separated by `…`
//! that must appear in that order, and `# → [exit N]` the exit status it must end with
//! (0 otherwise). A block runs in one `bash`, so `cd`, `export` and here-documents work; a
//! block holding only `cargo run -- serve` or `qoima serve …` is started by the test itself
//! (the real binary, on a free port), and the base URL `http://127.0.0.1:8750` and the
//! tokens (`$SERVICE`, `$WEBSITE`, `$SECURITY`, `$AUDITOR`, `$MARKETING`; `$QOIMA_URL`) are
//! those of the vault under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::*;

/// The shell commands of the ```sh block that follows `marker` in `text`, with `\` line
/// continuations and lines inside an open single quote joined, comments dropped.
fn commands_after(text: &str, marker: &str) -> Vec<String> {
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

fn read_doc(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A command of a tested block and what its output must show.
#[derive(Debug)]
struct Step {
    /// The command as printed: continuation lines, quotes and here-documents kept.
    cmd: String,
    /// The `# → …` lines after it.
    expect: Vec<String>,
    /// `# → [exit N]`: the exit status it must end with.
    exit: i32,
}

#[derive(Debug)]
struct Block {
    name: String,
    steps: Vec<Step>,
}

/// Tracks shell quoting across the lines of one command.
#[derive(Default)]
struct Lexer {
    single: bool,
    double: bool,
    heredoc: Option<String>,
}

impl Lexer {
    /// Takes one line; true when the command is complete at its end.
    fn feed(&mut self, line: &str) -> bool {
        if let Some(end) = &self.heredoc {
            if line.trim() == end {
                self.heredoc = None;
                return true;
            }
            return false;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut continued = false;
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            if self.single {
                self.single = c != '\'';
            } else if self.double {
                match c {
                    '\\' => k += 1,
                    '"' => self.double = false,
                    _ => {}
                }
            } else {
                match c {
                    '\'' => self.single = true,
                    '"' => self.double = true,
                    '\\' => {
                        continued = k + 1 == chars.len();
                        k += 1;
                    }
                    '#' if k == 0 || chars[k - 1].is_whitespace() => break,
                    '<' if chars.get(k + 1) == Some(&'<') && chars.get(k + 2) != Some(&'<') => {
                        let rest: String = chars[k + 2..].iter().collect();
                        let word = rest.split_whitespace().next().unwrap_or_default().trim_matches(['\'', '"']).to_string();
                        assert!(!word.is_empty(), "a here-document needs its end word: {line}");
                        self.heredoc = Some(word);
                        return false;
                    }
                    _ => {}
                }
            }
            k += 1;
        }
        !(self.single || self.double || continued)
    }
}

/// The commands of a ```sh block's lines, with the expectations that follow each.
fn split_steps(name: &str, body: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut lex = Lexer::default();
    for line in body {
        if cur.is_empty() {
            let t = line.trim();
            if let Some(e) = t.strip_prefix("# →") {
                let step = steps.last_mut().unwrap_or_else(|| panic!("{name}: `# →` before any command"));
                match e.trim().strip_prefix("[exit ").and_then(|c| c.strip_suffix(']')) {
                    Some(code) => step.exit = code.parse().expect("[exit N] holds a number"),
                    None => step.expect.push(e.trim().to_string()),
                }
                continue;
            }
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
        }
        cur.push(line);
        if lex.feed(line) {
            steps.push(Step { cmd: cur.join("\n"), expect: Vec::new(), exit: 0 });
            cur.clear();
        }
    }
    assert!(cur.is_empty(), "{name}: unterminated command {cur:?}");
    steps
}

/// Every block of `text` marked `<!-- tested: NAME … -->`, in order.
fn tested_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(m) = lines[i].strip_prefix("<!-- tested: ") {
            let name = m.split_whitespace().next().unwrap_or_default().trim_end_matches("-->").to_string();
            assert_eq!(lines.get(i + 1).copied(), Some("```sh"), "{name}: the marker sits right above a ```sh block");
            let end = (i + 2..lines.len()).find(|&j| lines[j] == "```").unwrap_or_else(|| panic!("{name}: unclosed block"));
            assert!(!out.iter().any(|b: &Block| b.name == name), "two blocks named {name}");
            out.push(Block { steps: split_steps(&name, &lines[i + 2..end]), name });
            i = end;
        }
        i += 1;
    }
    out
}

/// The ```sh blocks of `text` that `curl` the vault but carry no `tested` marker.
fn untested_curl_blocks(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "```sh" {
            let end = (i + 1..lines.len()).find(|&j| lines[j] == "```").unwrap_or(lines.len());
            let tested = i > 0 && lines[i - 1].starts_with("<!-- tested: ");
            if !tested
                && lines[i + 1..end].iter().any(|l| {
                    l.contains("curl ") && (l.contains("127.0.0.1:8750") || l.contains("$QOIMA_URL")) && !l.trim_start().starts_with('#')
                })
            {
                out.push(format!("line {}: {}", i + 1, lines[i + 1..end].join("\n")));
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Whether `output` shows `expected`: its `…`-separated fragments, in order.
fn shows(output: &str, expected: &str) -> bool {
    let mut at = 0;
    for fragment in expected.split('…').map(str::trim).filter(|f| !f.is_empty()) {
        match output[at..].find(fragment) {
            Some(i) => at += i + fragment.len(),
            None => return false,
        }
    }
    true
}

/// `cargo run -- serve ARGS` or `qoima serve ARGS`: the ARGS.
fn serve_args(cmd: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["cargo", "run", "--", "serve", rest @ ..] | ["qoima", "serve", rest @ ..] => Some(rest.iter().map(|w| w.to_string()).collect()),
        _ => None,
    }
}

const STEP_MARK: &str = "@@qoima-docs-step@@";
const RC_MARK: &str = "@@qoima-docs-rc ";

/// A reader following a guide: a home directory, a working directory, environment variables,
/// textual substitutions (paths, the base URL), and the vault it started, if any.
struct Session {
    home: tempfile::TempDir,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    replace: Vec<(String, String)>,
    /// Caller name → the variable its token goes into, when a step prints a new token.
    token_vars: BTreeMap<String, String>,
    server: Option<std::process::Child>,
    /// Everything each block printed, by block name.
    printed: BTreeMap<String, String>,
}

impl Session {
    fn new() -> Self {
        let home = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_qoima")).parent().expect("bin dir").to_path_buf();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut env = BTreeMap::new();
        env.insert("HOME".to_string(), home.path().display().to_string());
        env.insert("PATH".to_string(), path);
        let cwd = home.path().to_path_buf();
        Self { home, cwd, env, replace: Vec::new(), token_vars: BTreeMap::new(), server: None, printed: BTreeMap::new() }
    }

    /// Points the session at a vault started by `spawn_app()`, with its test callers' tokens.
    fn with_app(mut self, app: &TestApp) -> Self {
        self.use_base_url(&app.addr);
        for (var, caller) in [
            ("SERVICE", "svc-all"),
            ("WEBSITE", "website"),
            ("SECURITY", "security"),
            ("AUDITOR", "auditor"),
            ("MARKETING", "svc-marketing"),
        ] {
            self.env.insert(var.to_string(), token(caller));
        }
        self
    }

    fn use_base_url(&mut self, addr: &str) {
        self.replace.retain(|(from, _)| from != "http://127.0.0.1:8750");
        self.replace.push(("http://127.0.0.1:8750".to_string(), addr.to_string()));
        self.env.insert("QOIMA_URL".to_string(), addr.to_string());
    }

    fn substitute(&self, cmd: &str) -> String {
        self.replace.iter().fold(cmd.to_string(), |c, (from, to)| c.replace(from, to))
    }

    /// `output` with the substitutions undone (longest first), so it reads as the guide's
    /// reader would see it: `/var/lib/qoima/…` rather than a temp directory.
    fn unsubstitute(&self, output: &str) -> String {
        let mut pairs: Vec<&(String, String)> = self.replace.iter().filter(|(_, to)| !to.is_empty()).collect();
        pairs.sort_by_key(|(_, to)| std::cmp::Reverse(to.len()));
        pairs.iter().fold(output.to_string(), |o, (from, to)| o.replace(to.as_str(), from))
    }

    fn learn_tokens(&mut self, output: &str) {
        for line in output.lines() {
            let line = line.trim();
            // `qoima callers add NAME …`
            if let Some((name, token)) = line.strip_prefix("token for ").and_then(|r| r.split_once(" (shown once, stored nowhere): ")) {
                if let Some(var) = self.token_vars.get(name) {
                    self.env.insert(var.clone(), token.trim().to_string());
                }
            }
            // The development callers printed at the first `qoima serve`.
            if let [name, "role", _, token] = line.split_whitespace().collect::<Vec<_>>()[..] {
                if let (Some(var), true) = (self.token_vars.get(name), token.starts_with("qv1_")) {
                    self.env.insert(var.clone(), token.to_string());
                }
            }
        }
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.current_dir(&self.cwd).envs(&self.env);
        for v in ["QOIMA_LISTEN", "QOIMA_DATA_DIR", "QOIMA_ROOT_KEY_FILE", "QOIMA_LOG", "QOIMA_LOG_FORMAT"] {
            c.env_remove(v);
        }
        c
    }

    /// Starts `qoima serve ARGS` as printed, on a free port, and waits until it listens.
    fn start_server(&mut self, block: &str, args: &[String]) {
        use std::io::{BufRead, BufReader};
        self.stop_server();
        let home = self.home.path().display().to_string();
        let args: Vec<String> =
            args.iter().map(|a| a.strip_prefix("~/").map(|r| format!("{home}/{r}")).unwrap_or_else(|| a.clone())).collect();
        let mut cmd = self.command(env!("CARGO_BIN_EXE_qoima"));
        cmd.arg("serve").args(&args).env("QOIMA_LISTEN", "127.0.0.1:0");
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("qoima starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.server = Some(child);
        let mut printed = String::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{block}: `qoima serve {}` did not start:\n{printed}", args.join(" ")));
            printed.push_str(&line);
            printed.push('\n');
            if let Some(addr) = line.strip_prefix("qoima: listening on ") {
                self.use_base_url(addr.trim());
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.learn_tokens(&printed);
        self.printed.insert(block.to_string(), printed);
    }

    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            // SAFETY: sending SIGTERM to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "the vault stopped with {status}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("the vault did not stop within 10 s of SIGTERM");
        }
    }

    /// Runs a block's commands in one bash and checks each one's output and exit status.
    async fn run_block(&mut self, block: &Block) {
        if let [step] = &block.steps[..] {
            if let Some(args) = serve_args(&step.cmd) {
                let name = block.name.clone();
                tokio::task::block_in_place(|| self.start_server(&name, &args));
                return;
            }
        }
        assert!(block.steps.iter().all(|s| serve_args(&s.cmd).is_none()), "{}: a serve command stands alone in its block", block.name);
        let mut script = String::from("exec 2>&1\n");
        for s in &block.steps {
            script.push_str(&format!("printf '\\n{STEP_MARK}\\n'\n{}\nprintf '\\n{RC_MARK}%s@@\\n' \"$?\"\n", self.substitute(&s.cmd)));
        }
        let mut cmd = tokio::process::Command::from(self.command("bash"));
        cmd.arg("-c").arg(&script).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{}: the block did not finish within 5 minutes", block.name))
            .expect("bash runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let parts: Vec<&str> = text.split(&format!("\n{STEP_MARK}\n")).skip(1).collect();
        assert_eq!(parts.len(), block.steps.len(), "{}: every command ran (bash said {})\n{text}", block.name, out.status);
        for (step, part) in block.steps.iter().zip(parts) {
            let (output, rc) =
                part.rsplit_once(&format!("\n{RC_MARK}")).unwrap_or_else(|| panic!("{}: no exit status in {part}", block.name));
            let rc: i32 = rc.trim_end().trim_end_matches("@@").parse().expect("exit status");
            let output = self.unsubstitute(output);
            let ctx = format!("block {}, command\n{}\nprinted\n{output}", block.name, step.cmd);
            assert_eq!(rc, step.exit, "exit status; {ctx}");
            for e in &step.expect {
                assert!(shows(&output, e), "missing `{e}`; {ctx}");
            }
            self.learn_tokens(&output);
        }
        self.printed.insert(block.name.clone(), text);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_block_reader_splits_commands_and_expectations() {
    let doc = "text `<!-- tested: not-a-marker -->`\n<!-- tested: demo (notes) -->\n```sh\n# a comment: it's ignored\ncurl -s 'http://x/a' \\\n  -d '{\"a\":\n 1}'\n# → {\"a\":…1}\n# → [exit 3]\ncat > f <<'EOF'\nx = 1 # kept\nEOF\necho \"it's\" # done\n```\n";
    let blocks = tested_blocks(doc);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].name, "demo");
    let s = &blocks[0].steps;
    assert_eq!(s.len(), 3, "{s:#?}");
    assert_eq!(s[0].cmd, "curl -s 'http://x/a' \\\n  -d '{\"a\":\n 1}'");
    assert_eq!((s[0].expect.clone(), s[0].exit), (vec!["{\"a\":…1}".to_string()], 3));
    assert_eq!(s[1].cmd, "cat > f <<'EOF'\nx = 1 # kept\nEOF");
    assert_eq!(s[2].cmd, "echo \"it's\" # done");
    assert!(shows("{\"a\": 2, \"b\": 1}", "{\"a\":…1}") && !shows("1 {\"a\":", "{\"a\":…1}"));
    assert_eq!(serve_args("cargo run -- serve"), Some(vec![]));
    assert_eq!(serve_args("qoima serve --config ~/q.toml"), Some(vec!["--config".to_string(), "~/q.toml".to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_getting_started_guide_works_as_printed() {
    let doc = read_doc("docs/getting-started.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "getting-started-dev",
            "getting-started-first-session",
            "getting-started-config",
            "getting-started-serve",
            "getting-started-own-config"
        ]
    );
    let mut s = Session::new();
    // `cargo run -- serve` runs in the clone.
    s.cwd = s.home.path().join("qoima");
    std::fs::create_dir_all(&s.cwd).unwrap();
    for (caller, var) in [
        ("dev-service", "SERVICE"),
        ("dev-website", "WEBSITE"),
        ("dev-security", "SECURITY"),
        ("dev-auditor", "AUDITOR"),
        ("origination", "SERVICE"),
        ("website", "WEBSITE"),
        ("auditor", "AUDITOR"),
    ] {
        s.token_vars.insert(caller.to_string(), var.to_string());
    }
    for b in &blocks {
        s.run_block(b).await;
    }
    // The development vault printed its warning and four tokens, once.
    let dev = &s.printed["getting-started-dev"];
    assert!(dev.contains("WARNING: DEVELOPMENT MODE"), "{dev}");
    assert_eq!(dev.matches("qv1_").count(), 4, "{dev}");
    // The trial vault's root key stays outside its data directory and out of the backup.
    let trial = s.home.path().join("qoima-trial");
    let key = std::fs::read_to_string(trial.join("root.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    for dir in ["data", "backups"] {
        assert!(files_containing(&trial.join(dir), key.trim().as_bytes()).is_empty(), "the root key reached {dir}/");
    }
    tokio::task::block_in_place(|| s.stop_server());
}

/// Every `METHOD /path` of the endpoint table in docs/api.md (query strings dropped).
fn api_endpoints(api: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in api.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split(" | ").next().unwrap_or_default();
        for span in first_cell.split('`').skip(1).step_by(2) {
            if let Some((method, path)) = span.split_once(' ') {
                if ["GET", "PUT", "POST", "PATCH", "DELETE"].contains(&method) && path.starts_with('/') {
                    let path = path.split(['?', '[']).next().unwrap_or_default();
                    out.push((method.to_string(), path.to_string()));
                }
            }
        }
    }
    out
}

/// The (method, path) of every curl call to `$QOIMA_URL` in `blocks`.
fn curl_calls(blocks: &[Block]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for step in blocks.iter().flat_map(|b| &b.steps) {
        for call in step.cmd.split("curl ").skip(1) {
            let Some(at) = call.find("$QOIMA_URL") else { continue };
            let path: String = call[at + "$QOIMA_URL".len()..].chars().take_while(|c| !"'\"? \n".contains(*c)).collect();
            let words: Vec<&str> = call.split_whitespace().collect();
            let method = words.iter().position(|w| *w == "-X").and_then(|i| words.get(i + 1)).copied().unwrap_or("GET");
            out.push((method.to_string(), path));
        }
    }
    out
}

/// Whether `path` fits `template` (`{x}` is any one segment).
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// A CA for the lender, a server certificate for 127.0.0.1 and a client certificate for the
/// origination service, written under `dir` (server) and `cwd` (what an integrator holds).
/// Returns the client certificate's SHA-256 (hex).
fn lender_pki(dir: &Path, cwd: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "lender test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(&["127.0.0.1"]);
    let (client, client_key) = leaf(&["origination"]);
    std::fs::write(dir.join("server.pem"), server.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("clients-ca.pem"), ca.pem()).unwrap();
    std::fs::write(cwd.join("lender-ca.pem"), ca.pem()).unwrap();
    std::fs::write(cwd.join("origination.pem"), client.pem()).unwrap();
    std::fs::write(cwd.join("origination.key"), client_key.serialize_pem()).unwrap();
    hex::encode(qoima::tls::ClientCert::of(client.der()).0)
}

/// A second test vault serving HTTPS, which knows the origination certificate as a caller.
async fn spawn_tls_app(cwd: &Path) -> (TestApp, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    qoima_keys::RootKey::generate_file(&dir.path().join("root.key")).expect("root key");
    let fingerprint = lender_pki(dir.path(), cwd);
    let d = dir.path();
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        d.join("server.pem").display(),
        d.join("server.key").display(),
        d.join("clients-ca.pem").display()
    );
    let mut text = config_text(d, &tls);
    text.push_str(&format!(
        "\n[[callers]]\nname = \"origination\"\nclient_cert_sha256 = \"{fingerprint}\"\nroles = [\"service\"]\npurposes = [\"loan_issuance\"]\n"
    ));
    std::fs::write(d.join("qoima.toml"), text).unwrap();
    let config = qoima::config::Config::load(&d.join("qoima.toml"), &|_| None).expect("TLS test config parses");
    (start(dir, config, None).await, fingerprint)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_integrator_guide_works_as_printed() {
    let doc = read_doc("docs/integrator-guide.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    // Every endpoint of the API reference has an example here.
    let calls = curl_calls(&blocks);
    for (method, template) in api_endpoints(&read_doc("docs/api.md")) {
        assert!(
            calls.iter().any(|(m, p)| *m == method && fits(&template, p)),
            "docs/api.md lists {method} {template}, which no example in docs/integrator-guide.md calls"
        );
    }
    let app = spawn_app().await;
    let mut s = Session::new().with_app(&app);
    let (tls_app, fingerprint) = spawn_tls_app(s.home.path()).await;
    s.replace.push(("https://qoima.internal:8750".to_string(), tls_app.addr.clone()));
    for b in &blocks {
        let failing = b.name == "integrator-unavailable";
        app.faults.set(failing);
        s.run_block(b).await;
        app.faults.set(false);
    }
    assert!(s.printed["integrator-tls"].contains(&fingerprint), "sha256sum printed the fingerprint the vault knows");
    assert!(blocks.len() >= 15, "{} blocks", blocks.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_runs_its_demo_against_a_live_vault() {
    let app = spawn_app().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/lending_client.py");
    // -I -S: no user or site packages, so the example needs nothing but the standard library.
    let run = tokio::process::Command::new("python3")
        .arg("-I")
        .arg("-S")
        .arg(&script)
        .env("QOIMA_URL", &app.addr)
        .env("QOIMA_SERVICE_TOKEN", token("svc-all"))
        .env("QOIMA_WEBSITE_TOKEN", token("website"))
        .env("QOIMA_DEMO_SUBJECT", "python-demo-1")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(120), run).await.expect("the demo finishes within 2 minutes") {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is not installed: the Python example (docs/examples/lending_client.py) cannot be tested; install python3")
        }
        Err(e) => panic!("python3 did not start: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed ({}):\n{stdout}\n{stderr}", out.status);
    for line in [
        "stored python-demo-1: version 1, created True, missing []",
        "read for loan_issuance: ['identity.birth_date', 'identity.email', 'identity.full_name', 'identity.iin', 'identity.phone', 'questionnaire.monthly_income']",
        "advertising refused: 403 basis-missing: legal basis missing for advertising: no consent for advertising on record",
        "consent for advertising given under policy 2019-01-29",
        "read for advertising: ['identity.email', 'identity.full_name', 'identity.phone']",
        "read for loan_monitoring: ['identity.phone']",
        "disclosed ['identity.full_name', 'identity.iin'] to First Credit Bureau on consent (dis_",
        "erasure pending, held by ['L-",
        "settled; erasure erased (KEK generation 1)",
        "read after erasure: 410 erased, receipt rcpt_",
        "demo complete",
    ] {
        assert!(stdout.contains(line), "the demo did not print `{line}`:\n{stdout}");
    }
    // What the vault recorded matches what the demo says it did.
    let audit = app.get("/v1/audit?subject=python-demo-1&limit=1000", "auditor").await;
    let entries = audit.body["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["subject.put", "subject.read", "consent.give", "contract.open", "subject.disclose", "erasure.request", "contract.update"]
    {
        assert!(actions.contains(&action), "no {action} in {actions:?}");
    }
    // Every call carried the client's own request id, kept beside the vault's.
    let mut by_client = entries.iter().filter(|e| e["caller"] != "qoima");
    assert!(by_client.all(|e| e["client_request_id"].as_str().is_some_and(|r| r.starts_with("py-"))), "{entries:#?}");
    let erasure = app.get("/v1/subjects/python-demo-1/erasure", "website").await;
    assert_eq!(erasure.body["status"], "erased");
    // The demo printed no personal data it read.
    assert!(!stdout.contains("900101300017") && !stdout.contains("Demo Borrower"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_guide_works_as_printed() {
    let doc = read_doc("docs/operator-guide.md");
    assert_eq!(untested_curl_blocks(&doc), Vec::<String>::new(), "every curl example is tested");
    let blocks = tested_blocks(&doc);
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["operator-health", "operator-audit", "operator-backup", "operator-keys"]);
    let app = spawn_app().await;
    for i in 1..=3 {
        assert_eq!(app.put_fields(&format!("ops-{i}"), serde_json::json!({"identity.full_name": "Ops"})).await.status, 201);
    }
    let mut s = Session::new().with_app(&app);
    // The guide's paths are those of the test vault; the CLI runs as the test's own user.
    let dir = app.dir.path().display().to_string();
    s.replace.push(("/etc/qoima/qoima.toml".to_string(), format!("{dir}/qoima.toml")));
    s.replace.push(("/var/lib/qoima/".to_string(), format!("{dir}/")));
    s.replace.push(("sudo -u qoima ".to_string(), String::new()));
    for b in &blocks {
        s.run_block(b).await;
    }
    assert!(!app.dir.path().join("restore-drill").exists(), "the drill cleans up after itself");
}

#[test]
fn the_deploy_examples_hold_together() {
    // The example configuration passes `qoima config check` as shipped, with no callers (so no
    // token anyone could know) and every file outside the data directory.
    let (ok, out) = cli(&["config", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy/qoima.toml")]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "ok (0 callers, 4 purposes, data_dir /var/lib/qoima/data, listen http://127.0.0.1:8750, root key not present on this machine"
        ),
        "{out}"
    );
    // The unit runs that configuration, hardened as the operator guide says.
    let unit = read_doc("docs/deploy/qoima.service");
    for line in [
        "User=qoima",
        "ExecStart=/usr/local/bin/qoima serve --config /etc/qoima/qoima.toml",
        "StateDirectory=qoima",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitCORE=0",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
        "RestartPreventExitStatus=2 3",
    ] {
        assert!(unit.lines().any(|l| l == line), "docs/deploy/qoima.service lacks `{line}`");
    }
    let toml = read_doc("docs/deploy/qoima.toml");
    assert!(toml.contains("file = \"/etc/qoima/root.key\"") && toml.contains("data_dir        = \"/var/lib/qoima/data\""));
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_links_of_the_guides_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "docs/getting-started.md", "docs/integrator-guide.md", "docs/operator-guide.md", "docs/threat-model.md"] {
        let text = read_doc(doc);
        let base = root.join(doc).parent().expect("a directory").to_path_buf();
        let mut in_code = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for link in line.split("](").skip(1) {
                let target = link.split(')').next().unwrap_or_default();
                if target.starts_with("http") || target.is_empty() {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() { root.join(doc) } else { base.join(file) };
                assert!(path.exists(), "{doc}: link to {target}: no such file");
                if !anchor.is_empty() {
                    let linked = std::fs::read_to_string(&path).unwrap();
                    let mut fenced = false;
                    let anchors: Vec<String> = linked
                        .lines()
                        .filter(|l| {
                            fenced ^= l.starts_with("```");
                            !fenced && l.starts_with('#')
                        })
                        .map(|h| slug(h.trim_start_matches('#')))
                        .collect();
                    assert!(anchors.iter().any(|a| a == anchor), "{doc}: link to {target}: no heading with that anchor in {anchors:?}");
                }
            }
        }
    }
}

/// The Python example turns a 429 into `RateLimited` with the wait the vault names.
#[tokio::test]
async fn the_python_example_reports_a_rate_limit_with_its_wait() {
    let app = spawn_with(&limited_caller(1), Some(qoima::domain::ManualClock::new(now()))).await;
    app.put_fields("py-rl-1", application("PYMARK")).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let snippet = "import os, sys\n\
        sys.path.insert(0, os.environ['EXAMPLES'])\n\
        import lending_client as q\n\
        c = q.QoimaClient(os.environ['QOIMA_URL'], os.environ['TOKEN'])\n\
        c.read('py-rl-1', 'loan_issuance')\n\
        try:\n    c.read('py-rl-1', 'loan_issuance')\n\
        except q.RateLimited as e:\n    print('rate limited', e.status, e.slug, e.retry_after)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-I", "-S", "-c", snippet])
        .env("EXAMPLES", &dir)
        .env("QOIMA_URL", &app.addr)
        .env("TOKEN", token("svc-limited"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "rate limited 429 rate-limited 60.0");
}
