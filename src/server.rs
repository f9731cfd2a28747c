//! Start-up and shutdown: build the vault from a configuration, bind the listener (port 0 in
//! tests), serve until told to stop, then drain the audit log.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::audit::FaultSwitch;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::vault::{Vault, VaultError};

/// Why the server could not start. One line each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    RootKey(#[from] qoima_keys::Error),
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Things tests pass in: the clock and fault switches. Production uses the defaults.
#[derive(Clone)]
pub struct Options {
    pub clock: Arc<dyn Clock>,
    pub faults: Arc<FaultSwitch>,
}

impl Default for Options {
    fn default() -> Self {
        Self { clock: Arc::new(SystemClock), faults: Arc::default() }
    }
}

/// A built, bound, not yet serving vault.
pub struct Application {
    listener: TcpListener,
    vault: Arc<Vault>,
    router: axum::Router,
    sweep_every: Duration,
}

/// Opens the vault described by `config` (blocking: RocksDB open and start-up work).
pub fn open_vault(config: &Config, options: &Options) -> Result<Vault, StartError> {
    let root = config.root_key.load()?;
    Ok(Vault::open(config.vault_settings(), root, options.clock.clone(), options.faults.clone())?)
}

impl Application {
    pub async fn build(config: Config, options: Options) -> Result<Self, StartError> {
        let cfg = config.clone();
        let opts = options.clone();
        let vault = tokio::task::spawn_blocking(move || open_vault(&cfg, &opts))
            .await
            .map_err(|e| VaultError::Internal(format!("start-up task failed: {e}")))??;
        let vault = Arc::new(vault);
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let state = AppState { vault: vault.clone(), callers: Arc::new(config.callers.clone()) };
        let router = api::router(state, &config.limits);
        Ok(Self { listener, vault, router, sweep_every: Duration::from_secs(config.retention.sweep_interval_secs.max(1)) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn vault(&self) -> Arc<Vault> {
        self.vault.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and closes the
    /// audit log.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let sweeper = tokio::spawn(sweep_loop(self.vault.clone(), self.sweep_every));
        let served = axum::serve(self.listener, self.router.into_make_service()).with_graceful_shutdown(shutdown).await;
        sweeper.abort();
        let vault = self.vault;
        let _ = tokio::task::spawn_blocking(move || vault.close()).await;
        served
    }
}

/// Removes expired technical data on a timer (P3).
async fn sweep_loop(vault: Arc<Vault>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.sweep_expired()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(fields = n, "expired fields removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention sweep failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "retention sweep task failed"),
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// Keeps key material out of core dumps: the process is made non-dumpable and its core size
/// limit set to zero.
pub fn refuse_core_dumps() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls with constant arguments and a valid pointer to a local struct.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
