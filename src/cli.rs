//! The `qoima` command line. Every command takes `--config FILE` (default: the embedded
//! development configuration in the working directory). Errors are one line on stderr.
//!
//! Exit codes: 0 success; 1 a check failed (e.g. the audit chain is broken); 2 usage;
//! 3 configuration error; 4 the vault or its store failed.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{process_env, Config, DevSetup};
use crate::domain::{CallerName, RequestId, Role};
use crate::policy::Caller;
use crate::server::{self, admin, Application, Options};
use crate::store::{Store, StoreError};
use crate::vault::KekInfo;
use crate::vault::{Ctx, Vault};

#[derive(Parser, Debug)]
#[command(name = "qoima", version, about = "Qoima: an encrypted personal-data vault with per-subject crypto-shredding")]
pub struct Cli {
    /// Configuration file (TOML). Without it, the embedded development default is used:
    /// data in ./data, a development root key and callers in ./.qoima-dev/.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the vault's HTTP server until SIGINT or SIGTERM.
    Serve,
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// KEK generations.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Callers (API clients).
    #[command(subcommand)]
    Callers(CallersCmd),
    /// Backups that never contain the root key, and restores that replay erasures.
    #[command(subcommand)]
    Backup(BackupCmd),
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Consistent backup of the data directory into DIR (a new folder). Works while the vault
    /// runs (through its local admin socket) and offline.
    Create {
        /// The new backup folder.
        dir: PathBuf,
    },
    /// Restore DIR into DATA_DIR (offline), then replay every erasure recorded since the
    /// backup was taken (from the erasure journal and the configured live data directory).
    Restore {
        /// The backup folder.
        dir: PathBuf,
        /// Where to restore (must not exist, or be empty).
        #[arg(long = "to", value_name = "DATA_DIR")]
        to: PathBuf,
        /// The restored store's erasure journal (default: `<DATA_DIR>-erasures.jsonl`, or the
        /// configured one when DATA_DIR is the configured data directory). Never the live vault's.
        #[arg(long = "erasure-journal", value_name = "PATH")]
        erasure_journal: Option<PathBuf>,
        /// The restored store's keyring escrow (default: `<DATA_DIR>-keyring.json`, or the
        /// configured one when DATA_DIR is the configured data directory). Never the live vault's.
        #[arg(long = "keyring-escrow", value_name = "PATH")]
        keyring_escrow: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Write audit entries as JSON lines (oldest first) to stdout; offline or beside a running
    /// vault (read-only). Entries hold ids and field names, never values.
    Export {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only entries about this subject.
        #[arg(long)]
        subject: Option<String>,
    },
    /// Recompute the hash chain; exit 0 when intact, 1 naming the first broken entry.
    /// Works offline or beside a running vault (read-only).
    Verify {
        /// SEQ:HASH recorded earlier outside the vault: fail if that entry changed.
        #[arg(long)]
        anchor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Every KEK generation: state, times, DEKs wrapped.
    Status,
    /// Create and activate a new KEK generation.
    Rotate,
    /// Move every subject DEK onto the active generation, with a progress bar; resumes an
    /// interrupted rewrap.
    Rewrap,
    /// Destroy a KEK generation that is not active and wraps no DEK.
    Destroy {
        /// The generation number.
        generation: u32,
    },
    /// Rewrap every KEK generation under a new root key (offline). Afterwards point
    /// root_key.file at the new key; the old one is no longer needed.
    RotateRoot {
        /// The new root key file (64 hex characters, mode 0600 or 0400).
        #[arg(long = "new-root-key", value_name = "FILE")]
        new_root_key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a configuration file; names the offending line.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CallersCmd {
    /// Create a caller: print a fresh token once, and its [[callers]] entry (digest only).
    /// With --config, the entry is appended to that file.
    Add {
        /// The caller's name.
        name: String,
        /// Roles: service, website, security, auditor, monitoring.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Purposes it may read for (service role).
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// Reads of personal data (read, disclose, export) allowed per minute; beyond, 429.
        #[arg(long)]
        max_reads_per_minute: Option<u32>,
        #[command(flatten)]
        subject_assertion: SubjectAssertionArgs,
    },
}

/// `callers add … --role website`: require a subject assertion (all of jwks, issuer and
/// audience, or none), written as the entry's `subject_assertion = { … }`.
#[derive(clap::Args, Debug)]
pub struct SubjectAssertionArgs {
    /// Website callers: every request about a subject must carry an assertion signed by one
    /// of these keys (the identity provider's JWKS file, checked now).
    #[arg(long = "subject-assertion-jwks", value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// The `iss` the assertions must carry.
    #[arg(long = "subject-assertion-issuer", value_name = "ISS")]
    issuer: Option<String>,
    /// The `aud` the assertions must carry.
    #[arg(long = "subject-assertion-audience", value_name = "AUD")]
    audience: Option<String>,
    /// Longest assertion lifetime accepted, in seconds [default: 300].
    #[arg(long = "subject-assertion-max-age", value_name = "SECS")]
    max_age: Option<u32>,
    /// The claim that names the subject [default: sub].
    #[arg(long = "subject-assertion-claim", value_name = "CLAIM")]
    claim: Option<String>,
}

impl SubjectAssertionArgs {
    /// The `subject_assertion = { … }` line, once the JWKS file has been read; `None` without
    /// the options.
    fn entry_line(&self, roles: &[String]) -> Result<Option<String>, Failure> {
        const TOGETHER: &str =
            "--subject-assertion-jwks, --subject-assertion-issuer and --subject-assertion-audience go together (all three or none)";
        let (jwks, issuer, audience) = match (&self.jwks, &self.issuer, &self.audience) {
            (None, None, None) if self.max_age.is_none() && self.claim.is_none() => return Ok(None),
            (Some(j), Some(i), Some(a)) => (j, i, a),
            _ => return Err(Failure(2, TOGETHER.into())),
        };
        if !roles.iter().any(|r| r == "website") {
            return Err(Failure(2, "--subject-assertion-* is for a caller with role website".into()));
        }
        let settings = crate::assertion::AssertionSettings {
            jwks_file: absolute(jwks)?,
            issuer: issuer.clone(),
            audience: audience.clone(),
            max_age_secs: self.max_age.unwrap_or(300),
            subject_claim: self.claim.clone().unwrap_or_else(|| "sub".into()),
        };
        // The loader's messages name the key and the file (`subject_assertion.jwks_file …`).
        crate::assertion::SubjectAssertions::load(settings.clone()).map_err(|msg| Failure(2, msg))?;
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        Ok(Some(format!(
            "subject_assertion = {{ jwks_file = {}, issuer = {}, audience = {}, max_age_secs = {}, subject_claim = {} }}\n",
            s(&settings.jwks_file.to_string_lossy()),
            s(&settings.issuer),
            s(&settings.audience),
            settings.max_age_secs,
            s(&settings.subject_claim)
        )))
    }
}

/// A failed command: what to print, and the exit code.
struct Failure(u8, String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(4, e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure(code, msg)) => {
            eprintln!("qoima: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn load_config(path: &Option<PathBuf>) -> Result<(Config, DevSetup), Failure> {
    match path {
        Some(p) => Config::load(p, &process_env).map(|c| (c, DevSetup::default())).map_err(|e| Failure(3, e.to_string())),
        None => {
            let cwd = std::env::current_dir().map_err(|e| Failure(3, format!("no working directory: {e}")))?;
            Config::embedded_default(&cwd, &process_env).map_err(|e| Failure(3, e.to_string()))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Serve => serve(&cli.config),
        Command::Audit(AuditCmd::Verify { anchor }) => {
            let (config, _) = load_config(&cli.config)?;
            let anchor = anchor.map(|a| crate::api::parse_anchor(&a).map_err(|e| Failure(2, e.detail))).transpose()?;
            let store = open_store_for_reading(&config)?;
            let v = crate::audit::verify(&store, anchor.as_ref().map(|(s, h)| (*s, h.as_str())))?;
            match v.first_broken {
                None => {
                    println!("audit chain intact: {} entries, head {}:{}", v.entries, v.entries, v.head);
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    println!("audit chain BROKEN at entry {}: {}", b.seq, b.reason);
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Audit(AuditCmd::Export { after, subject }) => {
            let (config, _) = load_config(&cli.config)?;
            if let Some(s) = &subject {
                crate::domain::SubjectId::parse(s).map_err(|e| Failure(2, e.to_string()))?;
            }
            let store = open_store_for_reading(&config)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after = after;
            loop {
                let page =
                    crate::audit::query(&store, &crate::audit::Query { subject: subject.clone(), caller: None, after, limit: 10_000 })?;
                for e in &page {
                    use std::io::Write;
                    serde_json::to_writer(&mut out, e).map_err(|e| Failure(4, e.to_string()))?;
                    out.write_all(b"\n").map_err(|e| Failure(4, e.to_string()))?;
                }
                match page.last() {
                    Some(e) if page.len() == 10_000 => after = e.seq,
                    _ => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCmd::Status) => {
            let (config, _) = load_config(&cli.config)?;
            let store = open_store_for_reading(&config)?;
            println!("{:<11} {:<13} {:>10}  {:<25} {:<25}", "GENERATION", "STATE", "DEKS", "CREATED", "ACTIVATED");
            for (i, n) in crate::vault::keyring::read_infos(&store)? {
                let state = serde_json::to_value(i.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                let activated = i.activated_at.map(crate::domain::rfc3339).unwrap_or_else(|| "-".into());
                println!("{:<11} {:<13} {:>10}  {:<25} {:<25}", i.generation, state, n, crate::domain::rfc3339(i.created_at), activated);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCmd::Rotate) => {
            let (config, _) = load_config(&cli.config)?;
            let (info, escrow): (KekInfo, EscrowCopy) = key_change(&config, &admin::Request::Rotate, |v| v.rotate_kek(&cli_ctx()))?;
            println!("KEK generation {} created and active; run `qoima keys rewrap` to move existing DEKs onto it", info.generation);
            escrow.say();
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCmd::Rewrap) => rewrap(&cli.config),
        Command::Keys(KeysCmd::Destroy { generation }) => {
            let (config, _) = load_config(&cli.config)?;
            let (_, escrow): (KekInfo, EscrowCopy) =
                key_change(&config, &admin::Request::Destroy { generation }, |v| v.destroy_generation(&cli_ctx(), generation))?;
            match escrow {
                EscrowCopy::Written => {
                    println!("KEK generation {generation} destroyed: its key bytes are gone from the store and the keyring escrow")
                }
                pending => {
                    println!("KEK generation {generation} destroyed: its key bytes are gone from the store");
                    pending.say();
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCmd::RotateRoot { new_root_key }) => {
            let (config, _) = load_config(&cli.config)?;
            let new_root = qoima_keys::RootKeySource::File(new_root_key.clone()).load().map_err(|e| Failure(3, e.to_string()))?;
            let Target::Offline(v) = target(&config)? else {
                return Err(Failure(4, "the vault is running: root-key rotation is offline; stop it first".into()));
            };
            let n = finish(&v, v.rotate_root(&cli_ctx(), &new_root))?;
            println!(
                "{n} KEK generation(s) now wrapped by root key {:08x}; set root_key.file = \"{}\" and restart; the old root key is no longer needed",
                new_root.id(),
                new_root_key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCmd::Check { file }) => {
            let c = Config::load(&file, &process_env).map_err(|e| Failure(3, e.to_string()))?;
            // The root key is checked too (mode, format), so a bad key shows here, not at start;
            // a key that is simply not on this machine (a config checked elsewhere) is noted.
            let root = match c.root_key.load() {
                Ok(k) => format!("root key {:08x}", k.id()),
                Err(qoima_keys::Error::RootKeyUnreadable { reason, .. })
                    if reason.contains("No such file")
                        || reason.contains("environment variable not found")
                        || reason.contains("CREDENTIALS_DIRECTORY is not set") =>
                {
                    format!("root key not present on this machine ({})", c.root_key)
                }
                Err(e) => return Err(Failure(3, format!("{}: {e}", file.display()))),
            };
            println!(
                "{}: ok ({} callers, {} purposes, data_dir {}, listen {}{}, {})",
                file.display(),
                c.callers.entries().len(),
                c.purposes.0.len(),
                c.data_dir.display(),
                if c.tls.is_some() { "https://" } else { "http://" },
                c.listen,
                root
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Callers(CallersCmd::Add { name, roles, purposes, max_reads_per_minute, subject_assertion }) => {
            let assertion = subject_assertion.entry_line(&roles)?;
            add_caller(&cli.config, &name, &roles, &purposes, max_reads_per_minute, assertion)
        }
        Command::Backup(BackupCmd::Create { dir }) => backup_create(&cli.config, &dir),
        Command::Backup(BackupCmd::Restore { dir, to, erasure_journal, keyring_escrow }) => {
            backup_restore(&cli.config, &dir, &to, erasure_journal.as_deref(), keyring_escrow.as_deref())
        }
    }
}

fn absolute(p: &std::path::Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p).map_err(|e| Failure(2, format!("{}: {e}", p.display())))
}

fn backup_create(config: &Option<PathBuf>, dir: &std::path::Path) -> Result<ExitCode, Failure> {
    let (config, _) = load_config(config)?;
    let dir = absolute(dir)?;
    let manifest: crate::vault::backup::Manifest = match target(&config)? {
        Target::Offline(v) => finish(&v, v.create_backup(&cli_ctx(), &dir))?,
        Target::Online(rt) => parse_answer(ask(&rt, &config, &admin::Request::Backup { dir: dir.clone() })?)?,
    };
    println!(
        "backup written to {} (audit position {}; no root key and no KEKs inside: a restore takes them from the live store or the keyring escrow)",
        dir.display(),
        manifest.audit_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// Where a key or backup command runs: in this process on a stopped vault, or in the running
/// vault through its admin socket.
enum Target {
    Offline(Box<Vault>),
    Online(tokio::runtime::Runtime),
}

fn target(config: &Config) -> Result<Target, Failure> {
    match Store::open(&config.data_dir) {
        Ok(store) => {
            drop(store);
            Ok(Target::Offline(Box::new(open_vault_offline(config)?)))
        }
        Err(StoreError::Locked(_)) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure(4, e.to_string()))?;
            Ok(Target::Online(rt))
        }
        Err(e) => Err(e.into()),
    }
}

/// Closes an offline vault after one operation.
fn finish<T>(vault: &Vault, result: Result<T, crate::vault::VaultError>) -> Result<T, Failure> {
    vault.close();
    result.map_err(|e| Failure(4, e.to_string()))
}

/// Whether a committed key change's keyring escrow copy is written.
enum EscrowCopy {
    Written,
    /// Not yet: the running vault retries it in the background.
    RetriedByTheVault,
    /// Not yet: this offline run could not write it; the vault writes it when it opens.
    AtTheNextStart,
}

impl EscrowCopy {
    /// One line when the copy is behind; nothing when it is written.
    fn say(&self) {
        match self {
            EscrowCopy::Written => {}
            EscrowCopy::RetriedByTheVault => println!(
                "the change is committed; its keyring escrow copy is not written yet and the vault retries it in the background (metric qoima_keyring_escrow_pending)"
            ),
            EscrowCopy::AtTheNextStart => {
                println!("the change is committed; its keyring escrow copy could not be written and the vault writes it when it next starts")
            }
        }
    }
}

/// A KEK rotation or destruction, offline or through the running vault's admin socket, with
/// the state of its escrow copy.
fn key_change<T: serde::de::DeserializeOwned>(
    config: &Config,
    request: &admin::Request,
    offline: impl FnOnce(&Vault) -> Result<T, crate::vault::VaultError>,
) -> Result<(T, EscrowCopy), Failure> {
    match target(config)? {
        Target::Offline(v) => {
            let r = offline(&v).map(|t| (t, if v.escrow_pending() { EscrowCopy::AtTheNextStart } else { EscrowCopy::Written }));
            finish(&v, r)
        }
        Target::Online(rt) => {
            let answer = ask_for(&rt, config, request)?;
            let escrow = if answer.escrow_pending { EscrowCopy::RetriedByTheVault } else { EscrowCopy::Written };
            Ok((parse_answer(answer.message)?, escrow))
        }
    }
}

fn ask(rt: &tokio::runtime::Runtime, config: &Config, request: &admin::Request) -> Result<String, Failure> {
    ask_for(rt, config, request).map(|a| a.message)
}

fn ask_for(rt: &tokio::runtime::Runtime, config: &Config, request: &admin::Request) -> Result<admin::Response, Failure> {
    let answer = rt.block_on(admin::call(&config.data_dir, request)).map_err(|e| {
        Failure(
            4,
            format!("the vault is running but its admin socket {} does not answer: {e}", admin::socket_path(&config.data_dir).display()),
        )
    })?;
    if answer.ok {
        Ok(answer)
    } else {
        Err(Failure(4, answer.message))
    }
}

fn parse_answer<T: serde::de::DeserializeOwned>(text: String) -> Result<T, Failure> {
    serde_json::from_str(&text).map_err(|e| Failure(4, format!("unexpected answer from the vault: {e}")))
}

fn rewrap(config: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    use crate::vault::rewrap::{RewrapJob, RewrapState};
    let (config, _) = load_config(config)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("rewrap to generation {msg} [{bar:40}] {pos}/{len} DEKs, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let show = |job: &RewrapJob| {
        bar.set_message(job.target.to_string());
        bar.set_length(job.total);
        bar.set_position(job.done);
    };
    let job: RewrapJob = match target(&config)? {
        Target::Offline(v) => {
            let r = v.run_rewrap(&cli_ctx(), show);
            finish(&v, r)?
        }
        Target::Online(rt) => {
            let mut p: crate::vault::rewrap::RewrapJob = parse_answer(ask(&rt, &config, &admin::Request::RewrapStart)?)?;
            while p.state == RewrapState::Running {
                show(&p);
                std::thread::sleep(std::time::Duration::from_millis(200));
                p = parse_answer(ask(&rt, &config, &admin::Request::RewrapProgress)?)?;
            }
            show(&p);
            p
        }
    };
    bar.finish_and_clear();
    println!(
        "rewrap to generation {} {}: {} of {} DEKs moved",
        job.target,
        if job.state == RewrapState::Complete { "complete" } else { "stopped" },
        job.done,
        job.total
    );
    Ok(ExitCode::SUCCESS)
}

fn backup_restore(
    config: &Option<PathBuf>,
    dir: &std::path::Path,
    to: &std::path::Path,
    journal: Option<&std::path::Path>,
    escrow: Option<&std::path::Path>,
) -> Result<ExitCode, Failure> {
    use crate::vault::backup;
    let (config, _) = load_config(config)?;
    let to = absolute(to)?;
    let root = config.root_key.load().map_err(|e| Failure(4, e.to_string()))?;
    let live = (absolute(&config.data_dir)? != to).then_some(config.data_dir.as_path());
    // The restored store's own journal and escrow: the configured ones only when it takes the
    // configured data directory's place; otherwise beside it (or as given), so a restore beside a
    // live vault never writes the live vault's files.
    let (own_journal, own_escrow) = match live {
        None => (config.erasure_journal.clone(), config.keyring_escrow.clone()),
        Some(_) => (crate::vault::default_journal_path(&to), crate::vault::sibling(&to, "-keyring.json")),
    };
    let own_journal = journal.map(absolute).transpose()?.unwrap_or(own_journal);
    let own_escrow = escrow.map(absolute).transpose()?.unwrap_or(own_escrow);
    if live.is_some() {
        for (what, mine, theirs) in
            [("--erasure-journal", &own_journal, &config.erasure_journal), ("--keyring-escrow", &own_escrow, &config.keyring_escrow)]
        {
            if mine == theirs || absolute(theirs).is_ok_and(|t| &t == mine) {
                return Err(Failure(2, format!("{what} {} is the live vault's; give the restored store its own", mine.display())));
            }
        }
    }
    for (what, p) in [("--erasure-journal", &own_journal), ("--keyring-escrow", &own_escrow)] {
        if p.starts_with(&to) {
            return Err(Failure(2, format!("{what} must not live inside {} (a restore replaces it)", to.display())));
        }
    }
    let entries = backup::erasures_to_replay(&config.erasure_journal, live).map_err(|e| Failure(4, e.to_string()))?;
    let (manifest, files) = backup::copy_backup(dir, &to).map_err(|e| Failure(4, e.to_string()))?;
    let unreadable = backup::install_keyring(&to, live, &config.keyring_escrow).map_err(|e| Failure(4, e.to_string()))?;
    if own_journal != config.erasure_journal {
        // The restored store's journal starts with every erasure it replays, so a later restore
        // into it from an older backup replays them too.
        let journal = crate::vault::ErasureJournal::open(&own_journal).map_err(|e| Failure(4, e.to_string()))?;
        journal.append_entries(&entries).map_err(|e| Failure(4, e.to_string()))?;
    }
    let mut settings = config.vault_settings();
    settings.data_dir = to.clone();
    settings.erasure_journal = own_journal;
    settings.keyring_escrow = own_escrow;
    let vault =
        Vault::open(settings, root, Arc::new(crate::domain::SystemClock), Default::default()).map_err(|e| Failure(4, e.to_string()))?;
    let replayed = vault.replay_erasures(&entries).map_err(|e| Failure(4, e.to_string()))?;
    vault.close();
    println!(
        "restored {files} files from the backup of {} into {}; replayed {replayed} erasure(s) recorded since",
        manifest.created_at,
        to.display()
    );
    if unreadable > 0 {
        println!("{unreadable} subject(s) in the backup have DEKs under destroyed KEK generations: unreadable for good");
    }
    Ok(ExitCode::SUCCESS)
}

/// The caller the CLI acts as: the local operator, with the security role.
fn cli_ctx() -> Ctx {
    let user = std::env::var("USER").ok().filter(|u| CallerName::parse(&format!("cli.{u}")).is_ok()).unwrap_or_else(|| "operator".into());
    Ctx {
        caller: std::sync::Arc::new(Caller {
            name: CallerName::parse(&format!("cli.{user}")).expect("checked above"),
            roles: [Role::Security].into(),
            purposes: Default::default(),
        }),
        request_id: RequestId::generate(),
        client_request_id: None,
        via: None,
        idempotency: None,
    }
}

fn open_store_for_reading(config: &Config) -> Result<Store, Failure> {
    Ok(Store::open_for_reading(&config.data_dir)?)
}

fn open_vault_offline(config: &Config) -> Result<Vault, Failure> {
    server::open_vault(config, &Options::default()).map_err(|e| match e {
        server::StartError::Vault(e @ crate::vault::VaultError::InUse(_)) => {
            Failure(4, format!("{e}; this command runs offline, or use the HTTP API of the running vault"))
        }
        e => Failure(4, e.to_string()),
    })
}

fn add_caller(
    config: &Option<PathBuf>,
    name: &str,
    roles: &[String],
    purposes: &[String],
    max_reads_per_minute: Option<u32>,
    subject_assertion: Option<String>,
) -> Result<ExitCode, Failure> {
    let name = CallerName::parse(name).map_err(|e| Failure(2, e.to_string()))?;
    let token = crate::config::new_token();
    let quote = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let mut block = format!(
        "\n[[callers]]\nname         = \"{name}\"\ntoken_sha256 = \"{}\"\nroles        = [{}]\npurposes     = [{}]\n",
        hex::encode(crate::auth::token_digest(&token)),
        quote(roles),
        quote(purposes)
    );
    if let Some(n) = max_reads_per_minute {
        block.push_str(&format!("max_reads_per_minute = {n}\n"));
    }
    block.push_str(subject_assertion.as_deref().unwrap_or_default());
    match config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Failure(3, format!("{}: {e}", path.display())))?;
            let base = path.parent().map(PathBuf::from).unwrap_or_default();
            let combined = format!("{text}{block}");
            Config::parse(&combined, &path.display().to_string(), &base, &process_env).map_err(|e| Failure(3, e.to_string()))?;
            std::fs::write(path, combined).map_err(|e| Failure(3, format!("{}: {e}", path.display())))?;
            eprintln!("caller {name} added to {} (digest only); restart the vault to load it", path.display());
        }
        None => println!("# add to your configuration:{block}"),
    }
    println!("token for {name} (shown once, stored nowhere): {token}");
    Ok(ExitCode::SUCCESS)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QOIMA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("QOIMA_LOG_FORMAT").map(|f| f == "json").unwrap_or(false);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
    init_tracing();
    if let Err(e) = server::refuse_core_dumps() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let (config, setup) = load_config(config_path)?;
    if config_path.is_none() {
        warn_development(&config, &setup);
    }
    if config.lock_memory {
        server::lock_memory().map_err(|e| {
            Failure(
                4,
                format!(
                    "cannot lock the vault's memory ({e}); raise the limit (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited) or set lock_memory = false"
                ),
            )
        })?;
        tracing::info!("memory locked: keys and decrypted data are never swapped out");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(4, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let app = Application::build(config, Options::default()).await.map_err(|e| Failure(4, e.to_string()))?;
        tracing::info!(addr = %app.local_addr(), scheme = app.scheme(), "qoima listening");
        eprintln!("qoima: listening on {}://{}", app.scheme(), app.local_addr());
        app.run_until_stopped(server::shutdown_signal()).await.map_err(|e| Failure(4, format!("server failed: {e}")))?;
        Ok(ExitCode::SUCCESS)
    })
}

fn warn_development(config: &Config, setup: &DevSetup) {
    let key = match &config.root_key {
        qoima_keys::RootKeySource::File(p) => p.display().to_string(),
        other => other.to_string(),
    };
    eprintln!("################################################################################");
    eprintln!("#  WARNING: DEVELOPMENT MODE: the embedded default configuration is in use.");
    eprintln!("#  Root key: {key}{}", if setup.root_key_created.is_some() { " (just generated)" } else { "" });
    eprintln!("#  It sits outside the data directory ({}) but on the same machine:", config.data_dir.display());
    eprintln!("#  never hold real personal data under a development root key.");
    eprintln!("#  Production: qoima serve --config FILE with a root key you manage (docs/operator-guide.md).");
    eprintln!("################################################################################");
    if !setup.new_tokens.is_empty() {
        eprintln!("Development callers created. Their tokens are shown ONCE and stored nowhere");
        eprintln!("(delete .qoima-dev/callers.toml to get new ones):");
        for (name, role, token) in &setup.new_tokens {
            eprintln!("  {name:<13} role {role:<9} {token}");
        }
    }
}
