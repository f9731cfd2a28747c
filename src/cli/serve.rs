//! `qoima serve`, and the development-mode banner.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_config, Failure};
use crate::config::{Config, DevSetup};
use crate::server::{self, Application, Options};

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

pub(super) fn serve(config_path: &Option<PathBuf>) -> Result<ExitCode, Failure> {
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
