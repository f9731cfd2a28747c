//! The active node's lease: one row, on the database's clock, with a fencing epoch. Several
//! vaults may run on one schema (docs/scale-out.md); the one holding the lease is the only one
//! that writes. Every write transaction checks, with a share lock on the row, that the epoch
//! is still this engine's and the lease unexpired, so a node paused past its lease (while
//! another took it, raising the epoch) can commit nothing — not an audit entry, so not the
//! release of a plaintext either — and a new holder's epoch raise waits for the old holder's
//! transactions in flight.
//!
//! The holder renews every third of the lease; a renewal that finds the epoch moved on, or no
//! renewal answered within the lease (as the local monotonic clock counts from when the last
//! successful one was sent: never later than the database's expiry), **fences** the engine
//! for good: every write is refused and the process is meant to restart (the store watchdog
//! stops it), taking the lease again, with empty caches, only once it is free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::super::StoreError;
use super::conn::Connector;
use super::{db_error, tables};

/// The lease table: one row (`id = 1`).
pub const TABLE: &str = "qoima_lease";

/// Who holds the lease, when this engine could not take it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holding node's name (host and process).
    pub holder: String,
    /// The URL its API is reached at (`[storage.postgres] advertise_url`), if it gave one.
    pub address: Option<String>,
    /// Seconds until its lease expires unless renewed.
    pub expires_in_secs: u64,
}

/// The lease this engine holds.
pub(super) struct Lease {
    pub epoch: i64,
    state: Arc<State>,
    renewer: tokio::task::JoinHandle<()>,
}

struct State {
    fenced: AtomicBool,
    /// Until when the lease is certainly still held (by the local clock).
    valid_until: Mutex<Instant>,
}

/// The SQL of the lease, for the engine's schema.
pub(super) struct LeaseSql {
    acquire: String,
    holder: String,
    renew: String,
    release: String,
    /// Run in every write transaction: one row if the epoch `$1` still holds the lease.
    pub fence: String,
}

impl LeaseSql {
    pub fn new(schema: &str) -> Self {
        let t = tables::qualified(schema, TABLE);
        Self {
            // Taken if absent or expired, raising the epoch; a live lease is left alone.
            acquire: format!(
                "INSERT INTO {t} AS l (id, holder, address, epoch, expires_at) \
                 VALUES (1, $1, $2, 1, clock_timestamp() + make_interval(secs => $3)) \
                 ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, address = EXCLUDED.address, epoch = l.epoch + 1, \
                 expires_at = EXCLUDED.expires_at WHERE l.expires_at < clock_timestamp() RETURNING epoch"
            ),
            holder: format!(
                "SELECT holder, address, greatest(0, ceil(extract(epoch FROM expires_at - clock_timestamp())))::int8 FROM {t} WHERE id = 1"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + make_interval(secs => $2) \
                 WHERE id = 1 AND epoch = $1 AND expires_at > clock_timestamp()"
            ),
            release: format!("UPDATE {t} SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1"),
            fence: format!("SELECT 1 FROM {t} WHERE id = 1 AND epoch = $1 AND expires_at > clock_timestamp() FOR SHARE"),
        }
    }

    pub fn ddl(schema: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (id int2 PRIMARY KEY CHECK (id = 1), holder text NOT NULL, address text, \
             epoch int8 NOT NULL, expires_at timestamptz NOT NULL);\n",
            tables::qualified(schema, TABLE)
        )
    }
}

/// This process's name as a lease holder: the host, the process id, and a random part (a
/// restarted process is a new holder, so it waits for its predecessor's lease to expire).
pub(super) fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    let mut r = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
    format!("{host}/{}/{}", std::process::id(), hex::encode(r))
}

/// Takes the lease if it is free: this engine's epoch, or who holds it.
pub(super) async fn acquire(
    client: &Client,
    sql: &LeaseSql,
    holder: &str,
    address: Option<&str>,
    ttl: Duration,
) -> Result<Result<i64, Holder>, StoreError> {
    let secs = ttl.as_secs_f64();
    if let Some(row) = client.query_opt(&sql.acquire, &[&holder, &address, &secs]).await.map_err(|e| db_error("lease", &e))? {
        return Ok(Ok(row.get(0)));
    }
    let row = client.query_one(&sql.holder, &[]).await.map_err(|e| db_error("lease", &e))?;
    Ok(Err(Holder { holder: row.get(0), address: row.get(1), expires_in_secs: row.get::<_, i64>(2).max(0) as u64 }))
}

impl Lease {
    /// The lease at `epoch`, just taken (at `taken`, by the local clock), renewed from now on
    /// by a task on the engine's runtime.
    pub fn start(epoch: i64, taken: Instant, ttl: Duration, connector: Arc<Connector>, sql: Arc<LeaseSql>) -> Self {
        let state = Arc::new(State { fenced: AtomicBool::new(false), valid_until: Mutex::new(taken + ttl) });
        let renewer = connector.runtime().spawn(renew_loop(epoch, ttl, connector.clone(), sql, state.clone()));
        Self { epoch, state, renewer }
    }

    /// Why this engine may not write, if it may not.
    pub fn fenced(&self) -> Option<StoreError> {
        let expired = Instant::now() >= *self.state.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if expired {
            self.state.fenced.store(true, Ordering::SeqCst);
        }
        self.state.fenced.load(Ordering::SeqCst).then_some(StoreError::Fenced { epoch: self.epoch })
    }

    /// Marks the lease lost (a write found the epoch moved on).
    pub fn fence(&self) {
        self.state.fenced.store(true, Ordering::SeqCst);
    }

    /// Gives the lease up (a clean close), so another node need not wait for it to expire;
    /// from then on this engine writes nothing. Once only.
    pub async fn release(&self, client: &Client, sql: &LeaseSql) {
        if self.state.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        self.renewer.abort();
        if let Err(e) = client.execute(&sql.release, &[&self.epoch]).await {
            tracing::warn!(error = %db_error("lease release", &e), "the lease is left to expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew_loop(epoch: i64, ttl: Duration, connector: Arc<Connector>, sql: Arc<LeaseSql>, state: Arc<State>) {
    let every = ttl / 3;
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(every).await;
        if state.fenced.load(Ordering::SeqCst) {
            return;
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout(every, async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(connector.connect_bare().await?.0);
            }
            let c = client.as_ref().expect("connected above");
            c.execute(&sql.renew, &[&epoch, &ttl.as_secs_f64()]).await.map_err(|e| db_error("lease renewal", &e))
        })
        .await;
        match renewed {
            Ok(Ok(1)) => *state.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + ttl,
            Ok(Ok(_)) => {
                tracing::error!(epoch, "the active lease was taken by another node: this node writes nothing more");
                state.fenced.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Err(e)) => {
                client = None;
                tracing::warn!(error = %e, "could not renew the active lease; retrying");
            }
            Err(_) => {
                client = None;
                tracing::warn!("the active lease's renewal timed out; retrying");
            }
        }
        if Instant::now() >= *state.valid_until.lock().unwrap_or_else(|p| p.into_inner()) {
            tracing::error!(epoch, "the active lease expired unrenewed: this node writes nothing more");
            state.fenced.store(true, Ordering::SeqCst);
            return;
        }
    }
}
