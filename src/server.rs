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

/// The listener's per-connection limits ([`crate::config::Limits`], cap fitted to the
/// descriptor limit).
#[derive(Clone, Copy, Debug)]
struct ConnectionLimits {
    max: usize,
    header_read: Duration,
    idle: Duration,
}

/// Descriptors kept free beyond RocksDB's reserve: the listener, the admin socket, the
/// runtime's epoll and event descriptors, standard streams, the erasure journal and escrow
/// file, TLS and configuration files read at start, and a client or two of the admin socket.
pub const DESCRIPTOR_MARGIN: u64 = 64;
/// Fewer connections than this and the vault refuses to start rather than lower the cap.
pub const MIN_CONNECTIONS: usize = 16;
/// How long an accept error (EMFILE, ENFILE, ENOBUFS…) pauses the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idled-out connection may take to close by itself before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a graceful shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Raises the soft descriptor limit (RLIMIT_NOFILE) to the hard one, then fits `wanted`
/// connections below it with RocksDB's reserve and a margin kept free: lowered with a
/// warning when they do not fit, refused (one line) when not even [`MIN_CONNECTIONS`] do.
pub fn fit_connections(wanted: usize) -> Result<usize, StartError> {
    let limit = raise_descriptor_limit();
    let reserved = crate::store::DESCRIPTOR_RESERVE + DESCRIPTOR_MARGIN;
    let room = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
    if wanted <= room {
        return Ok(wanted);
    }
    if room < MIN_CONNECTIONS {
        return Err(StartError::Descriptors(format!(
            "the descriptor limit ({limit}) leaves room for {room} connections after RocksDB's {} and {DESCRIPTOR_MARGIN} more; at least {MIN_CONNECTIONS} are needed: raise it (systemd LimitNOFILE=, ulimit -n)",
            crate::store::DESCRIPTOR_RESERVE
        )));
    }
    tracing::warn!(
        wanted,
        allowed = room,
        descriptor_limit = limit,
        "limits.max_connections lowered to fit the descriptor limit with RocksDB's reserve kept free; raise the limit (systemd LimitNOFILE=, ulimit -n) to allow more"
    );
    Ok(room)
}

/// The soft RLIMIT_NOFILE after raising it as far as the hard limit allows.
fn raise_descriptor_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls with a valid pointer to a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return 1024;
            }
            if r.rlim_cur < r.rlim_max {
                // An unlimited hard limit is still capped by the kernel (fs.nr_open).
                let target = if r.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { r.rlim_max };
                let raised = libc::rlimit { rlim_cur: target.max(r.rlim_cur), rlim_max: r.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    r.rlim_cur = raised.rlim_cur;
                }
            }
        }
        // rlim_t is u64 on Linux, not on every Unix.
        #[allow(clippy::unnecessary_cast)]
        let soft = r.rlim_cur as u64;
        soft
    }
    #[cfg(not(unix))]
    u64::MAX
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
        /// A key change committed whose keyring escrow copy is still to be written (retried in
        /// the background), as `escrow_pending` in the HTTP answers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub escrow_pending: bool,
    }

    impl Response {
        fn refused(message: String) -> Self {
            Self { ok: false, message, escrow_pending: false }
        }
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
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, vault.clone()));
                    }
                    // EMFILE and the like pass; ending the loop would end the admin socket.
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed; pausing");
                        tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                    }
                }
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
                    let answer = tokio::task::spawn_blocking(move || -> Result<Response, crate::vault::VaultError> {
                        let (text, key_change) = match request {
                            Request::Backup { dir } => (serde_json::to_string(&vault.create_backup(&ctx, &dir)?), false),
                            Request::Rotate => (serde_json::to_string(&vault.rotate_kek(&ctx)?), true),
                            Request::RewrapStart => (serde_json::to_string(&vault.start_rewrap(&ctx)?), false),
                            Request::RewrapProgress => (serde_json::to_string(&vault.rewrap_progress(&ctx)?), false),
                            Request::Destroy { generation } => (serde_json::to_string(&vault.destroy_generation(&ctx, generation)?), true),
                        };
                        let escrow_pending = key_change && vault.escrow_pending();
                        Ok(Response { ok: true, message: text.unwrap_or_default(), escrow_pending })
                    })
                    .await;
                    match answer {
                        Ok(Ok(response)) => response,
                        Ok(Err(e)) => Response::refused(e.to_string()),
                        Err(e) => Response::refused(format!("task failed: {e}")),
                    }
                }
                Err(e) => Response::refused(format!("bad request: {e}")),
            },
            Err(e) => Response::refused(format!("cannot read request: {e}")),
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

/// The accept loop, for plain HTTP and TLS alike. A connection is accepted only with a free
/// slot: over the cap the loop waits (backpressure) and new connections queue in the kernel's
/// accept backlog, costing the process no descriptor, and are served as slots free. (Accepting
/// and closing at once would cost a descriptor and a wake-up per attempt and refuse honest
/// clients as fast as a flood's.)
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = Builder::new(TokioExecutor::new());
    // Without a timer hyper's header-read timeout never fires (issue #23).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: retrying at once would spin on the same error.
                    tracing::warn!(error = %e, "accept failed; pausing the accept loop");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        tokio::spawn(connection(stream, acceptor.clone(), builder.clone(), router.clone(), limits, slot, stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Each connection holds its slot until it ends: every slot back means every one closed.
    let max = u32::try_from(limits.max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(max)).await.is_err() {
        tracing::warn!("connections still open after 30 s; closing");
    }
    Ok(())
}

/// One connection, holding its `slot` until it ends: the TLS handshake (bounded in time) if
/// any, then HTTP/1.1 or HTTP/2; a verified client certificate's fingerprint rides into every
/// request of the connection.
async fn connection(
    stream: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    router: axum::Router,
    limits: ConnectionLimits,
    _slot: tokio::sync::OwnedSemaphorePermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::TokioIo;
    match acceptor {
        None => drive(TokioIo::new(stream), None, &builder, router, limits, stop).await,
        Some(acceptor) => {
            let tls = tokio::select! {
                tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match tls {
                    Ok(Ok(s)) => s,
                    _ => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| crate::tls::ClientCert::of(c.as_ref()));
            drive(TokioIo::new(tls), cert, &builder, router, limits, stop).await
        }
    }
}

/// Serves HTTP on `io` until the client closes, the connection idles out, or the server stops.
async fn drive<I>(
    io: I,
    cert: Option<crate::tls::ClientCert>,
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    router: axum::Router,
    limits: ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use tower::ServiceExt;

    let activity = Arc::new(Activity::new());
    let a = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let busy = a.begin();
        if let Some(c) = cert {
            req.extensions_mut().insert(c);
        }
        let call = router.clone().oneshot(req.map(axum::body::Body::new));
        async move {
            let response = call.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| axum::body::Body::new(Tracked { body, _busy: busy })))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let idled = tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = activity.idle_out(limits) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    // HTTP/1.1: closes now (nothing in flight); HTTP/2: GOAWAY, then closes once its streams end.
    conn.as_mut().graceful_shutdown();
    if idled {
        // Nothing is in flight: an HTTP/2 client that does not answer the GOAWAY's ping
        // within a second loses only the courtesy.
        let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await;
    } else {
        let _ = conn.await;
    }
}

/// What a connection is doing: requests in flight, whether it has served one, and since when
/// it has had none in flight; `changed` wakes [`Activity::idle_out`] when a request ends.
struct Activity {
    state: std::sync::Mutex<ActivityState>,
    changed: tokio::sync::Notify,
}

struct ActivityState {
    in_flight: usize,
    served: bool,
    since: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        let state = ActivityState { in_flight: 0, served: false, since: tokio::time::Instant::now() };
        Self { state: std::sync::Mutex::new(state), changed: tokio::sync::Notify::new() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.state().in_flight += 1;
        Busy(self.clone())
    }

    /// Completes when the connection has had no request in flight for too long: its first
    /// request head is due within the header-read timeout of the accept (for HTTP/2 too, and
    /// before the protocol is even known), later ones within the idle timeout of the last
    /// response. (hyper also bounds each HTTP/1.1 head, from when it starts waiting for it.)
    async fn idle_out(&self, limits: ConnectionLimits) {
        loop {
            // Registered before the state is read, so a request ending in between still wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let s = self.state();
                match (s.in_flight, s.served) {
                    (0, false) => Some(s.since + limits.header_read),
                    (0, true) => Some(s.since + limits.idle),
                    _ => None,
                }
            };
            match deadline {
                Some(d) if tokio::time::Instant::now() >= d => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A request in flight, until its response body has been sent (or dropped).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.served = true;
                s.since = tokio::time::Instant::now();
            }
        }
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How often the watchdog asks RocksDB whether it takes writes.
const WATCHDOG_EVERY: Duration = Duration::from_secs(1);
/// How long a refusing store is given before the process exits: RocksDB recovers some errors
/// itself (retryable I/O errors, about once a second); meanwhile /readyz says not ready, so a
/// load balancer stops sending first. The C API has no `Resume`, so beyond that only a
/// restart (reopen) clears the error state.
const REFUSING_GRACE: Duration = Duration::from_secs(3);
/// The same for a full disk: RocksDB resumes by itself once space returns (tests/it/faults.rs)
/// and a restart cannot help while the disk is full, so the vault waits, not ready, this long.
const NO_SPACE_GRACE: Duration = Duration::from_secs(300);
/// How long writes may stall before the store counts as stuck (flushes stopped on an error
/// leave writes stalled for ever; under load stalls last well under this).
const STALL_GRACE: Duration = Duration::from_secs(60);

/// Watches whether the store takes writes; returns, with what to report, once it has refused
/// or stalled them for longer than RocksDB could recover by itself. The server then stops and
/// the process exits non-zero, so the supervisor restarts it (reopening clears the error).
async fn store_watchdog(vault: Arc<Vault>) -> String {
    use crate::store::WriteState;
    let mut tick = tokio::time::interval(WATCHDOG_EVERY);
    let mut failing: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        tick.tick().await;
        let v = vault.clone();
        let Ok(state) = tokio::task::spawn_blocking(move || v.store_write_state()).await else { continue };
        let (grace, what) = match state {
            WriteState::Accepting => {
                if failing.take().is_some() {
                    tracing::info!("the store takes writes again");
                }
                continue;
            }
            WriteState::Stalled => (STALL_GRACE, "RocksDB has stalled writes".to_string()),
            WriteState::NoSpace(e) => (NO_SPACE_GRACE, format!("RocksDB refuses writes ({e})")),
            WriteState::Refused(e) => (REFUSING_GRACE, format!("RocksDB refuses writes ({e})")),
        };
        let since = match failing {
            Some((at, g)) if g == grace => at,
            _ => {
                tracing::error!(grace_secs = grace.as_secs(), "{what}; /readyz reports not ready");
                failing.insert((tokio::time::Instant::now(), grace)).0
            }
        };
        if since.elapsed() >= grace {
            tracing::error!(
                "{what} for {} s; stopping so the supervisor restarts the vault (reopening clears it)",
                since.elapsed().as_secs()
            );
            return format!("{what}; a restart reopens the store");
        }
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
