//! The `qoima` command line. Every command takes `--config FILE` (default: the embedded
//! development configuration in the working directory). Errors are one line on stderr.
//!
//! Exit codes: 0 success; 1 a check failed (e.g. the audit chain is broken); 2 usage;
//! 3 configuration error; 4 the vault or its store failed. (`qoima import`: 1 some lines were
//! refused.)

mod audit;
mod backup;
mod callers;
mod config;
mod import;
mod keys;
mod lookup;
mod serve;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{process_env, Config, DevSetup};
use crate::domain::{CallerName, RequestId, Role};
use crate::policy::Caller;
use crate::store::{Store, StoreError};
use crate::vault::Ctx;

pub use callers::SubjectAssertionArgs;

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
    /// Import subjects from a JSON Lines file (one {"subject","fields"} object per line) into a
    /// running vault, in batches of POST /v1/subjects:batch, with a progress bar. Resumes after
    /// an interruption from the checkpoint FILE.qoima-import beside the file, never applying a
    /// batch twice. Prints a summary: imported, updated, refused (line numbers and reasons,
    /// never values). Exit codes: 0 every line imported or updated; 1 some lines were refused
    /// (listed); 2 usage (no token, unreadable file); 4 the vault failed or refused a request
    /// (the lines acknowledged so far stay done: run again to resume).
    Import(import::ImportArgs),
    /// The blind index lookups use: its build and the duplicates it found.
    #[command(subcommand)]
    Lookup(LookupCmd),
}

#[derive(Subcommand, Debug)]
pub enum LookupCmd {
    /// Whether the index is complete or being built for a data directory written before a field
    /// was indexed (lookups on a field being built answer 503 with Retry-After).
    Status,
    /// Values of unique fields that more than one live subject held when the build indexed
    /// them: one line per value, the field and the subjects' ids (never the value). Both are
    /// kept; resolve them by rectifying or erasing one.
    Duplicates,
    /// Find the subjects holding a value of an indexed field, through a running vault's
    /// POST /v1/lookup, as a service caller. The value is read from the first line of stdin
    /// (never an argument: arguments show in `ps` and shell history). Prints one subject id
    /// per line; exit 0 if any was found, 1 if none.
    Find {
        /// The indexed field, e.g. identity.iin.
        field: String,
        /// The purpose the lookup is for (the caller must be granted it).
        #[arg(long)]
        purpose: String,
        /// The running vault's base URL.
        #[arg(long, default_value_t = format!("http://{}", crate::config::DEFAULT_LISTEN))]
        url: String,
        /// A file holding the service caller's bearer token (else QOIMA_TOKEN).
        #[arg(long = "token-file", value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
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
        Command::Serve => serve::serve(&cli.config),
        Command::Audit(AuditCmd::Verify { anchor }) => audit::verify(&cli.config, anchor),
        Command::Audit(AuditCmd::Export { after, subject }) => audit::export(&cli.config, after, subject),
        Command::Keys(KeysCmd::Status) => keys::status(&cli.config),
        Command::Keys(KeysCmd::Rotate) => keys::rotate(&cli.config),
        Command::Keys(KeysCmd::Rewrap) => keys::rewrap(&cli.config),
        Command::Keys(KeysCmd::Destroy { generation }) => keys::destroy(&cli.config, generation),
        Command::Keys(KeysCmd::RotateRoot { new_root_key }) => keys::rotate_root(&cli.config, new_root_key),
        Command::Config(ConfigCmd::Check { file }) => config::check(file),
        Command::Callers(CallersCmd::Add { name, roles, purposes, max_reads_per_minute, subject_assertion }) => {
            let assertion = subject_assertion.entry_line(&roles)?;
            callers::add_caller(&cli.config, &name, &roles, &purposes, max_reads_per_minute, assertion)
        }
        Command::Import(args) => import::import(args),
        Command::Lookup(LookupCmd::Status) => lookup::status(&cli.config),
        Command::Lookup(LookupCmd::Duplicates) => lookup::duplicates(&cli.config),
        Command::Lookup(LookupCmd::Find { field, purpose, url, token_file }) => lookup::find(&field, &purpose, &url, token_file.as_deref()),
        Command::Backup(BackupCmd::Create { dir }) => backup::backup_create(&cli.config, &dir),
        Command::Backup(BackupCmd::Restore { dir, to, erasure_journal, keyring_escrow }) => {
            backup::backup_restore(&cli.config, &dir, &to, erasure_journal.as_deref(), keyring_escrow.as_deref())
        }
    }
}

fn absolute(p: &std::path::Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p).map_err(|e| Failure(2, format!("{}: {e}", p.display())))
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
    Ok(Store::open_engine_for_reading(&config.storage, &config.data_dir, crate::audit::summary::merge)?)
}
