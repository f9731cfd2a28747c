//! Start-up and shutdown: build the vault from a configuration, bind the listener (port 0 in
//! tests), serve until told to stop, then drain the audit log.
//!
//! One accept loop serves plain HTTP and TLS alike (issue #23): at most
//! `limits.max_connections` connections at once (more wait in the kernel's accept queue),
//! each closed when its request head is late (`limits.header_read_timeout_secs`) or when it
//! has had no request in flight for `limits.idle_timeout_secs`. The cap is kept below the
//! descriptor limit with RocksDB's reserve free, and a watchdog exits the process when the
//! store stops taking writes, so the supervisor restarts it instead of a vault that refuses
//! everything staying up.

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

pub mod admin;
mod listener;
mod watchdog;

pub use listener::{fit_connections, DESCRIPTOR_MARGIN, MIN_CONNECTIONS};
use listener::{serve, ConnectionLimits, ACCEPT_BACKOFF};
use watchdog::store_watchdog;

/// Why the server could not start. One line each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The root key could not be read from its source.
    #[error("{0}")]
    RootKey(#[from] qoima_keys::Error),
    /// The vault did not open (e.g. [`VaultError::InUse`]: a vault already runs on the data).
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The TLS certificate or key could not be loaded (the reason as [`crate::tls`] gives it).
    #[error("TLS: {0}")]
    Tls(String),
    /// The file descriptor limit leaves too little room for connections (what to raise).
    #[error("{0}")]
    Descriptors(String),
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
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: ConnectionLimits,
}

/// The router's limits from `[limits]`: the api takes its own small type, not the config's.
impl From<&crate::config::Limits> for api::HttpLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            max_body_bytes: l.max_body_bytes,
            request_timeout: Duration::from_secs(l.request_timeout_secs),
            max_concurrent_requests: l.max_concurrent_requests,
        }
    }
}

/// Opens the vault described by `config` (blocking: RocksDB open and start-up work).
pub fn open_vault(config: &Config, options: &Options) -> Result<Vault, StartError> {
    let root = config.root_key.load()?;
    Ok(Vault::open(config.vault_settings(), root, options.clock.clone(), options.faults.clone())?)
}

impl Application {
    pub async fn build(config: Config, options: Options) -> Result<Self, StartError> {
        let tls = config.tls.as_ref().map(crate::tls::server_config).transpose().map_err(StartError::Tls)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let vault = Arc::new(open_active(&config, &options, &listener, tls.clone()).await?);
        let v = vault.clone();
        tokio::task::spawn_blocking(move || v.resume_jobs())
            .await
            .map_err(|e| VaultError::Internal(crate::vault::error::Internal::StartupTask(e)))??;
        // Session links default to the listener's own address (set privacy.public_url in production).
        let scheme = if tls.is_some() { "https" } else { "http" };
        let own = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let fallback = crate::privacy::PublicUrl::parse(&format!("{scheme}://{own}")).expect("a socket address is a valid URL authority");
        let privacy = crate::privacy::Sessions::new(&config.privacy, fallback);
        let state = AppState::new(vault.clone(), config.callers.clone(), privacy);
        let router = api::router(state, (&config.limits).into());
        let connections = ConnectionLimits {
            max: fit_connections(config.limits.max_connections)?,
            header_read: Duration::from_secs(config.limits.header_read_timeout_secs),
            idle: Duration::from_secs(config.limits.idle_timeout_secs),
        };
        Ok(Self {
            listener,
            vault,
            router,
            sweep_every: Duration::from_secs(config.retention.sweep_interval_secs.max(1)),
            tls,
            connections,
        })
    }

    /// Connections served at once (`limits.max_connections`, fitted to the descriptor limit).
    pub fn max_connections(&self) -> usize {
        self.connections.max
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// `https` when the listener serves TLS.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn vault(&self) -> Arc<Vault> {
        self.vault.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and closes the
    /// audit log. Fails (the binary then exits non-zero) when the store stops taking writes.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let sweeper = tokio::spawn(sweep_loop(self.vault.clone(), self.sweep_every));
        let summariser = tokio::spawn(auth_failure_summary_loop(self.vault.clone()));
        let admin = admin::listen(self.vault.clone())?;
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let watchdog = tokio::spawn({
            let vault = self.vault.clone();
            async move {
                let _ = failed_tx.send(store_watchdog(vault).await);
            }
        });
        let failure = Arc::new(std::sync::OnceLock::new());
        let stop = {
            let failure = failure.clone();
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    Ok(e) = failed => {
                        let _ = failure.set(e);
                    }
                }
            }
        };
        let served = serve(self.listener, self.router, self.tls, self.connections, stop).await;
        watchdog.abort();
        sweeper.abort();
        summariser.abort();
        admin.stop();
        let vault = self.vault;
        let _ = tokio::task::spawn_blocking(move || vault.close()).await;
        match Arc::try_unwrap(failure).ok().and_then(|f| f.into_inner()) {
            Some(e) => Err(std::io::Error::other(e)),
            None => served,
        }
    }
}

/// Opens the vault; while another node holds the shared store's active lease, serves the
/// standby API ([`api::standby`]) on `listener` and tries again, until this node takes it.
async fn open_active(
    config: &Config,
    options: &Options,
    listener: &TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Vault, StartError> {
    let mut standby: Option<(api::standby::StandbyState, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> = None;
    let vault = loop {
        let (cfg, opts) = (config.clone(), options.clone());
        let opened = tokio::task::spawn_blocking(move || open_vault(&cfg, &opts))
            .await
            .map_err(|e| VaultError::Internal(crate::vault::error::Internal::StartupTask(e)))?;
        let active = match opened {
            Err(StartError::Vault(VaultError::Standby(active))) => active,
            other => break other,
        };
        // Soon after the active node's lease would expire, but at least once a second.
        let retry = Duration::from_secs(active.expires_in_secs.clamp(1, 5));
        match &standby {
            Some((state, ..)) => state.set_active(active),
            None => {
                tracing::info!(active = %active.holder, address = ?active.address, "another node is active: standing by");
                let state = api::standby::StandbyState::new(
                    active,
                    config.limits.max_body_bytes,
                    Duration::from_secs(config.limits.request_timeout_secs),
                );
                // The same socket, served by the standby until this node opens the vault.
                let bind_error = |source| StartError::Bind { addr: config.listen, source };
                let own = {
                    use std::os::fd::AsFd;
                    let fd = listener.as_fd().try_clone_to_owned().map_err(bind_error)?;
                    let l = std::net::TcpListener::from(fd);
                    l.set_nonblocking(true).map_err(bind_error)?;
                    TcpListener::from_std(l).map_err(bind_error)?
                };
                let (state_for_serve, tls) = (state.clone(), tls.clone());
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let connections = ConnectionLimits {
                    max: fit_connections(config.limits.max_connections)?,
                    header_read: Duration::from_secs(config.limits.header_read_timeout_secs),
                    idle: Duration::from_secs(config.limits.idle_timeout_secs),
                };
                let served = tokio::spawn(async move {
                    let stop = async {
                        let _ = stop_rx.await;
                    };
                    if let Err(e) = serve(own, api::standby::router(state_for_serve), tls, connections, stop).await {
                        tracing::warn!(error = %e, "the standby listener stopped");
                    }
                });
                standby = Some((state, stop_tx, served));
            }
        }
        tokio::time::sleep(retry).await;
    };
    if let Some((_, stop, _draining)) = standby {
        // Not awaited: a request still forwarded to the old active node (perhaps frozen) may
        // take its whole timeout; this node serves meanwhile, on the same socket.
        let _ = stop.send(());
        if vault.is_ok() {
            tracing::info!("took the active lease: serving");
        }
    }
    vault
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

/// Once a second, records the count of failed authentications that were over the audit
/// budget, so a count never waits for the next attempt to be written.
async fn auth_failure_summary_loop(vault: Arc<Vault>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !vault.has_unrecorded_auth_failures() {
            continue;
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.flush_unrecorded_auth_failures()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the count of unrecorded failed authentications; will retry"),
            Err(e) => tracing::warn!(error = %e, "auth failure summary task failed"),
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

/// Locks every page the process has and will have into RAM (`lock_memory = true`), so keys,
/// unwrapped DEKs and decrypted values never reach swap, which is a file on disk. Pages are
/// locked as they are touched (MCL_ONFAULT), so reserved but unused memory costs nothing.
pub fn lock_memory() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain syscall with constant flags.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "memory locking is implemented for Linux only"))
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
