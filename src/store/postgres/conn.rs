//! Connections to PostgreSQL: how one is made (TLS or not), the task that drives it and counts
//! the notices the server sends on it, its prepared statements, and a bounded pool of them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Statement};

use super::super::{Space, StoreError};
use super::tables::SpaceSql;
use super::{db_error, Sql};

/// How connections are made: the parsed connection string, TLS, and the SQL to prepare.
pub(super) struct Connector {
    /// The runtime that drives every connection (the engine's own): never the caller's, which
    /// may be blocked waiting for the very answer the connection carries.
    runtime: tokio::runtime::Handle,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    sql: Arc<Sql>,
}

/// One open connection, with its statements prepared.
pub(super) struct Conn {
    pub client: Client,
    /// Notices (warnings) the server sent on this connection so far. A write that saw one
    /// arrive during its COMMIT does not count as committed (mod.rs).
    pub notices: Arc<AtomicU64>,
    /// Per space, in [`Space::ALL`]'s order.
    pub spaces: Vec<Prepared>,
    pub insert_token: Statement,
    /// The lease check every write runs (lease.rs).
    pub fence: Statement,
}

/// One space's prepared statements ([`SpaceSql`]).
pub(super) struct Prepared {
    pub get: Statement,
    pub get_many: Statement,
    pub scan: Statement,
    pub scan_head: Statement,
    pub last: Statement,
    pub put: Statement,
    pub delete: Statement,
    pub delete_range: Statement,
    pub reserve: Statement,
    pub lock: Statement,
}

impl Conn {
    pub fn space(&self, space: Space) -> &Prepared {
        &self.spaces[super::index(space)]
    }

    pub fn notices(&self) -> u64 {
        self.notices.load(Ordering::SeqCst)
    }
}

/// The CA certificates the server's certificate must chain to, as a rustls client config.
pub(super) fn tls_config(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let bad = |what: String| StoreError::Io(format!("[storage.postgres] ca_file {}: {what}", ca_file.display()));
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Connector {
    pub fn new(
        runtime: tokio::runtime::Handle,
        config: tokio_postgres::Config,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
        sql: Arc<Sql>,
    ) -> Self {
        Self { runtime, config, tls, sql }
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// A connection without prepared statements (for setting up the tables, and the checks).
    pub async fn connect_bare(&self) -> Result<(Client, Arc<AtomicU64>), StoreError> {
        let notices = Arc::new(AtomicU64::new(0));
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await.map_err(|e| connect_error(&e))?;
                self.runtime.spawn(drive(connection, notices.clone()));
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(|e| connect_error(&e))?;
                self.runtime.spawn(drive(connection, notices.clone()));
                client
            }
        };
        Ok((client, notices))
    }

    /// A connection with every statement prepared (pipelined: one round trip, not a hundred),
    /// then `session` run on it.
    pub async fn connect(&self, session: Option<&str>) -> Result<Conn, StoreError> {
        let (client, notices) = self.connect_bare().await?;
        let prepare = |sql: &SpaceSql| {
            let c = &client;
            let sql = sql.clone();
            async move {
                let [get, get_many, scan, scan_head, last, put, delete, delete_range, reserve, lock] = futures_util::future::try_join_all(
                    [
                        &sql.get,
                        &sql.get_many,
                        &sql.scan,
                        &sql.scan_head,
                        &sql.last,
                        &sql.put,
                        &sql.delete,
                        &sql.delete_range,
                        &sql.reserve,
                        &sql.lock,
                    ]
                    .map(|q| c.prepare(q)),
                )
                .await?
                .try_into()
                .unwrap_or_else(|_| unreachable!("ten statements prepared"));
                Ok::<_, tokio_postgres::Error>(Prepared { get, get_many, scan, scan_head, last, put, delete, delete_range, reserve, lock })
            }
        };
        let (spaces, insert_token, fence) = futures_util::future::try_join3(
            futures_util::future::try_join_all(self.sql.spaces.iter().map(prepare)),
            client.prepare(&self.sql.insert_token),
            client.prepare(&self.sql.lease.fence),
        )
        .await
        .map_err(|e| db_error("prepare", &e))?;
        if let Some(session) = session {
            client.batch_execute(session).await.map_err(|e| db_error("session settings", &e))?;
        }
        Ok(Conn { client, notices, spaces, insert_token, fence })
    }
}

impl Connector {
    /// One connection to each host the connection string names (the primary and every
    /// standby), whatever its role: `(host:port, connection or why not)`.
    pub async fn connect_each_host(&self) -> Vec<(String, Result<Client, StoreError>)> {
        use tokio_postgres::config::Host;
        let ports = self.config.get_ports();
        let mut out = Vec::new();
        for (i, host) in self.config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let mut one = tokio_postgres::Config::new();
            let name = match host {
                Host::Tcp(h) => {
                    one.host(h);
                    format!("{h}:{port}")
                }
                Host::Unix(p) => {
                    one.host_path(p);
                    format!("{}:{port}", p.display())
                }
            };
            one.port(port).ssl_mode(self.config.get_ssl_mode()).application_name("qoima").keepalives(true);
            if let Some(u) = self.config.get_user() {
                one.user(u);
            }
            if let Some(p) = self.config.get_password() {
                one.password(p);
            }
            if let Some(d) = self.config.get_dbname() {
                one.dbname(d);
            }
            if let Some(t) = self.config.get_connect_timeout() {
                one.connect_timeout(*t);
            }
            let client = Connector { runtime: self.runtime.clone(), config: one, tls: self.tls.clone(), sql: self.sql.clone() }
                .connect_bare()
                .await
                .map(|(c, _)| c);
            out.push((name, client));
        }
        out
    }
}

fn connect_error(e: &tokio_postgres::Error) -> StoreError {
    db_error("connect to PostgreSQL", e)
}

/// Drives a connection until it closes, counting and logging the notices it receives (their
/// severity, code and message; never their detail, which may quote values).
async fn drive<S, T>(mut connection: Connection<S, T>, notices: Arc<AtomicU64>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(n))) => {
                notices.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(severity = n.severity(), code = n.code().code(), message = n.message(), "PostgreSQL notice");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %db_error("connection", &e), "PostgreSQL connection closed");
                return;
            }
            None => return,
        }
    }
}

/// A bounded pool of connections: at most `size` open at once; a caller waits for a free one
/// at most `wait`. A broken connection is dropped, and a new one made in its place on demand.
pub(super) struct Pool {
    name: &'static str,
    /// Run on each new connection (the write pool's session settings).
    session: Option<String>,
    idle: Mutex<Vec<Conn>>,
    permits: tokio::sync::Semaphore,
    wait: Duration,
    pub connector: Arc<Connector>,
}

/// A connection taken from a [`Pool`]; back to the pool on drop unless broken or discarded.
pub(super) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Pool {
    pub fn new(name: &'static str, size: usize, wait: Duration, connector: Arc<Connector>, session: Option<String>) -> Self {
        Self { name, session, idle: Mutex::new(Vec::new()), permits: tokio::sync::Semaphore::new(size.max(1)), wait, connector }
    }

    pub async fn get(&self) -> Result<Lease<'_>, StoreError> {
        let permit = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Io(format!("no free PostgreSQL {} connection within {} s", self.name, self.wait.as_secs())))?
            .map_err(|_| StoreError::Io("the PostgreSQL engine is closed".into()))?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match idle {
            Some(c) => c,
            None => self.connector.connect(self.session.as_deref()).await?,
        };
        Ok(Lease { pool: self, conn: Some(conn), _permit: permit })
    }
}

impl Lease<'_> {
    /// Closes this connection instead of returning it (its state is not known).
    pub fn discard(mut self) {
        self.conn.take();
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.client.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
            }
        }
    }
}
