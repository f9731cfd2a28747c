//! The accept loop and its connections: the cap fitted to the descriptor limit, TLS
//! handshakes, and closing connections that idle out (issue #23).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::StartError;

/// The listener's per-connection limits ([`crate::config::Limits`], cap fitted to the
/// descriptor limit).
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnectionLimits {
    pub(super) max: usize,
    pub(super) header_read: Duration,
    pub(super) idle: Duration,
}

/// Descriptors kept free beyond RocksDB's reserve: the listener, the admin socket, the
/// runtime's epoll and event descriptors, standard streams, the erasure journal and escrow
/// file, TLS and configuration files read at start, and a client or two of the admin socket.
pub const DESCRIPTOR_MARGIN: u64 = 64;
/// Fewer connections than this and the vault refuses to start rather than lower the cap.
pub const MIN_CONNECTIONS: usize = 16;
/// How long an accept error (EMFILE, ENFILE, ENOBUFS…) pauses the accept loop.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
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

/// The accept loop, for plain HTTP and TLS alike. A connection is accepted only with a free
/// slot: over the cap the loop waits (backpressure) and new connections queue in the kernel's
/// accept backlog, costing the process no descriptor, and are served as slots free. (Accepting
/// and closing at once would cost a descriptor and a wake-up per attempt and refuse honest
/// clients as fast as a flood's.)
pub(super) async fn serve(
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
    /// [`Activity::idle_out`] waits for the requests in flight to end (rather than sleeping
    /// to a deadline), so the end of the last one must wake it.
    awaited: bool,
}

impl Activity {
    fn new() -> Self {
        let state = ActivityState { in_flight: 0, served: false, since: tokio::time::Instant::now(), awaited: false };
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
                let mut s = self.state();
                s.awaited = s.in_flight > 0;
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
        // Wakes the idle watch only when it waits for this end, or when the first response
        // moves its deadline from the header-read timeout to the idle one (maybe sooner). A
        // watch sleeping to a deadline finds the later `since` when it wakes and sleeps on:
        // one timer per idle period, not a wake-up, a re-poll of the connection and a new
        // timer per request (docs/performance.md).
        let wake = {
            let mut s = self.0.state();
            s.in_flight -= 1;
            let first = !s.served;
            if s.in_flight == 0 {
                s.served = true;
                s.since = tokio::time::Instant::now();
            }
            (s.in_flight == 0 && s.awaited) || first
        };
        if wake {
            self.0.changed.notify_waiters();
        }
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
