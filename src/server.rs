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
    #[error("TLS: {0}")]
    Tls(String),
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
}

/// Opens the vault described by `config` (blocking: RocksDB open and start-up work).
pub fn open_vault(config: &Config, options: &Options) -> Result<Vault, StartError> {
    let root = config.root_key.load()?;
    Ok(Vault::open(config.vault_settings(), root, options.clock.clone(), options.faults.clone())?)
}

impl Application {
    pub async fn build(config: Config, options: Options) -> Result<Self, StartError> {
        let tls = config.tls.as_ref().map(crate::tls::server_config).transpose().map_err(StartError::Tls)?;
        let cfg = config.clone();
        let opts = options.clone();
        let vault = tokio::task::spawn_blocking(move || open_vault(&cfg, &opts))
            .await
            .map_err(|e| VaultError::Internal(format!("start-up task failed: {e}")))??;
        let vault = Arc::new(vault);
        let v = vault.clone();
        tokio::task::spawn_blocking(move || v.resume_jobs())
            .await
            .map_err(|e| VaultError::Internal(format!("start-up task failed: {e}")))??;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
        // Session links default to the listener's own address (set privacy.public_url in production).
        let scheme = if tls.is_some() { "https" } else { "http" };
        let own = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let fallback = crate::privacy::PublicUrl::parse(&format!("{scheme}://{own}")).expect("a socket address is a valid URL authority");
        let privacy = crate::privacy::Sessions::new(&config.privacy, fallback);
        let state = AppState::new(vault.clone(), config.callers.clone(), privacy);
        let router = api::router(state, &config.limits);
        Ok(Self { listener, vault, router, sweep_every: Duration::from_secs(config.retention.sweep_interval_secs.max(1)), tls })
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
    /// audit log.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let sweeper = tokio::spawn(sweep_loop(self.vault.clone(), self.sweep_every));
        let summariser = tokio::spawn(auth_failure_summary_loop(self.vault.clone()));
        let admin = admin::listen(self.vault.clone())?;
        let served = match self.tls {
            Some(tls) => serve_tls(self.listener, self.router, tls, shutdown).await,
            None => axum::serve(self.listener, self.router.into_make_service()).with_graceful_shutdown(shutdown).await,
        };
        sweeper.abort();
        summariser.abort();
        admin.stop();
        let vault = self.vault;
        let _ = tokio::task::spawn_blocking(move || vault.close()).await;
        served
    }
}

/// The local admin socket, `<data_dir>/admin.sock` (mode 0600): lets the CLI take backups and
/// run key operations (rotate, rewrap, destroy) on a running vault. Reaching it takes the vault user's own file access,
/// which already reads the data directory, so it grants nothing new; callers are audited by uid.
pub mod admin {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use serde::{Deserialize, Serialize};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    use crate::domain::{CallerName, RequestId, Role};
    use crate::policy::Caller;
    use crate::vault::{Ctx, Vault};

    /// Where the socket of the vault on `data_dir` listens.
    pub fn socket_path(data_dir: &Path) -> PathBuf {
        data_dir.join("admin.sock")
    }

    /// A request on the admin socket (one JSON line).
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    pub enum Request {
        Backup { dir: PathBuf },
        Rotate,
        RewrapStart,
        RewrapProgress,
        Destroy { generation: u32 },
    }

    /// The answer (one JSON line).
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Response {
        pub ok: bool,
        pub message: String,
    }

    pub struct Handle {
        task: tokio::task::JoinHandle<()>,
        path: PathBuf,
    }

    impl Handle {
        pub fn stop(self) {
            self.task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub fn listen(vault: Arc<Vault>) -> std::io::Result<Handle> {
        let path = socket_path(&vault.settings().data_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, vault.clone()));
            }
        });
        Ok(Handle { task, path })
    }

    async fn serve(stream: UnixStream, vault: Arc<Vault>) {
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read).take(64 * 1024);
        let response = match reader.read_line(&mut line).await {
            Ok(_) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let ctx = Ctx {
                        caller: std::sync::Arc::new(Caller {
                            name: CallerName::parse(&format!("local.uid{uid}")).expect("valid name"),
                            roles: [Role::Security].into(),
                            purposes: Default::default(),
                        }),
                        request_id: RequestId::generate(),
                        client_request_id: None,
                        via: None,
                        idempotency: None,
                    };
                    let answer = tokio::task::spawn_blocking(move || -> Result<String, crate::vault::VaultError> {
                        let text = match request {
                            Request::Backup { dir } => serde_json::to_string(&vault.create_backup(&ctx, &dir)?),
                            Request::Rotate => serde_json::to_string(&vault.rotate_kek(&ctx)?),
                            Request::RewrapStart => serde_json::to_string(&vault.start_rewrap(&ctx)?),
                            Request::RewrapProgress => serde_json::to_string(&vault.rewrap_progress(&ctx)?),
                            Request::Destroy { generation } => serde_json::to_string(&vault.destroy_generation(&ctx, generation)?),
                        };
                        Ok(text.unwrap_or_default())
                    })
                    .await;
                    match answer {
                        Ok(Ok(message)) => Response { ok: true, message },
                        Ok(Err(e)) => Response { ok: false, message: e.to_string() },
                        Err(e) => Response { ok: false, message: format!("task failed: {e}") },
                    }
                }
                Err(e) => Response { ok: false, message: format!("bad request: {e}") },
            },
            Err(e) => Response { ok: false, message: format!("cannot read request: {e}") },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        let _ = write.write_all(&out).await;
    }

    /// Sends one request to the vault on `data_dir` and waits for its answer.
    pub async fn call(data_dir: &Path, request: &Request) -> std::io::Result<Response> {
        let stream = UnixStream::connect(socket_path(data_dir)).await?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(read).read_line(&mut answer).await?;
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    }
}

/// Serves HTTPS: each connection is a TLS handshake (bounded in time), then HTTP/1.1 or HTTP/2;
/// a verified client certificate's fingerprint rides into every request of the connection.
async fn serve_tls(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt;

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                _ => return,
            };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| crate::tls::ClientCert::of(c.as_ref()));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(c) = cert {
                    req.extensions_mut().insert(c);
                }
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("connections still open after 30 s; closing"),
    }
    Ok(())
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
