//! A session that runs a guide's blocks in bash, as its reader would, against a live vault.

use super::*;

pub(super) const STEP_MARK: &str = "@@qoima-docs-step@@";
pub(super) const RC_MARK: &str = "@@qoima-docs-rc ";

/// A reader following a guide: a home directory, a working directory, environment variables,
/// textual substitutions (paths, the base URL), and the vault it started, if any.
pub(super) struct Session {
    pub(super) home: tempfile::TempDir,
    pub(super) cwd: PathBuf,
    pub(super) env: BTreeMap<String, String>,
    pub(super) replace: Vec<(String, String)>,
    /// Caller name → the variable its token goes into, when a step prints a new token.
    pub(super) token_vars: BTreeMap<String, String>,
    pub(super) server: Option<BinaryVault>,
    /// Everything each block printed, by block name.
    pub(super) printed: BTreeMap<String, String>,
}

impl Session {
    pub(super) fn new() -> Self {
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
    pub(super) fn with_app(mut self, app: &TestApp) -> Self {
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

    pub(super) fn use_base_url(&mut self, addr: &str) {
        self.replace.retain(|(from, _)| from != "http://127.0.0.1:8750");
        self.replace.push(("http://127.0.0.1:8750".to_string(), addr.to_string()));
        self.env.insert("QOIMA_URL".to_string(), addr.to_string());
    }

    pub(super) fn substitute(&self, cmd: &str) -> String {
        self.replace.iter().fold(cmd.to_string(), |c, (from, to)| c.replace(from, to))
    }

    /// `output` with the substitutions undone (longest first), so it reads as the guide's
    /// reader would see it: `/var/lib/qoima/…` rather than a temp directory.
    pub(super) fn unsubstitute(&self, output: &str) -> String {
        let mut pairs: Vec<&(String, String)> = self.replace.iter().filter(|(_, to)| !to.is_empty()).collect();
        pairs.sort_by_key(|(_, to)| std::cmp::Reverse(to.len()));
        pairs.iter().fold(output.to_string(), |o, (from, to)| o.replace(to.as_str(), from))
    }

    pub(super) fn learn_tokens(&mut self, output: &str) {
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

    pub(super) fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.current_dir(&self.cwd).envs(&self.env);
        for v in ["QOIMA_LISTEN", "QOIMA_DATA_DIR", "QOIMA_ROOT_KEY_FILE", "QOIMA_LOG", "QOIMA_LOG_FORMAT"] {
            c.env_remove(v);
        }
        c
    }

    /// Starts `qoima serve ARGS` as printed, on a free port, and waits until it listens.
    pub(super) fn start_server(&mut self, block: &str, args: &[String]) {
        self.stop_server();
        let home = self.home.path().display().to_string();
        let args: Vec<String> =
            args.iter().map(|a| a.strip_prefix("~/").map(|r| format!("{home}/{r}")).unwrap_or_else(|| a.clone())).collect();
        let mut cmd = self.command(env!("CARGO_BIN_EXE_qoima"));
        cmd.arg("serve").args(&args).env("QOIMA_LISTEN", "127.0.0.1:0");
        let server = BinaryVault::start(cmd);
        self.use_base_url(&server.addr);
        let printed = server.startup.clone();
        self.server = Some(server);
        self.learn_tokens(&printed);
        self.printed.insert(block.to_string(), printed);
    }

    pub(super) fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            let status = server.stop(libc::SIGTERM);
            assert!(status.success(), "the vault stopped with {status}");
        }
    }

    /// Runs a block's commands in one bash and checks each one's output and exit status.
    pub(super) async fn run_block(&mut self, block: &Block) {
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
    /// The vault stops before its home directory is removed.
    fn drop(&mut self) {
        self.server.take();
    }
}
