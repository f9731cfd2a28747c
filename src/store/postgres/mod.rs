//! PostgreSQL: the engine for running past one machine (docs/scale-out.md), on a server that
//! replicates synchronously to a quorum of standbys (Patroni). **The only file tree in `src/`
//! that uses tokio-postgres.**
//!
//! - Tables: one per space in a schema of the vault's own (`tables.rs`); the spaces an
//!   erasure purges key by key are partitioned, so a purge rewrites one small partition.
//! - Calls: the engine's methods are blocking, as the trait's are; each runs its future on
//!   the calling thread (`futures_executor::block_on`) while the engine's own two-thread
//!   runtime drives the connections, so a call works from any thread. Reads take a
//!   connection from one pool, writes from another, so reads can never starve the audit
//!   committer of a connection.
//! - [`Tier::Memory`]: nothing is in this process's memory, so every such read answers
//!   [`StoreError::NotInMemory`] at once and the vault asks again from a blocking thread.
//! - Settings and the server's replication: `settings.rs`, `replication.rs`; connections and
//!   pools: `conn.rs`; the active node's lease: `lease.rs`.
//! - Writes (`write.rs`): one transaction per batch (`plan.rs` turns it into statements). Its
//!   outcome is success only if COMMIT returned and no notice arrived meanwhile: PostgreSQL
//!   reports a cancelled wait for synchronous replication as a *warning* and an ordinary
//!   COMMIT (the transaction committed locally, maybe nowhere else). On such a notice, a lost
//!   connection or an unclear error, the write is **resolved** before anything is answered:
//!   each transaction inserts a random token, and the resolution, on a new connection,
//!   inserts the same token if absent (waiting, by the unique index, for a transaction still
//!   in flight) together with a row of its own, and commits synchronously. If its insert found
//!   the token the write committed, and has now reached the standbys (the resolution's own
//!   commit, later in the WAL, did); if it inserted the token the write can never commit. A
//!   commit is never cancelled.
//! - Purges (`purge.rs`): once no snapshot predates the deletions, `VACUUM FULL` of the
//!   partitions or tables holding the ranges (a rewrite, so no page keeps a deleted row's
//!   bytes), then WAL switches and checkpoints past what
//!   `wal_keep_size` keeps, after which the server removes the WAL segments that held them
//!   (with `wal_recycle = off`; a recycled segment keeps its old bytes); then a restartpoint
//!   on every standby once it replayed them. Archives: docs/scale-out.md.
//! - Backups: a consistent copy in the embedded engine's format (one repeatable-read snapshot
//!   copied into a RocksDB checkpoint folder). Restore into a PostgreSQL store is not built
//!   yet (issue #26: PostgreSQL's own tools with erasure replay).

mod conn;
mod lease;
mod plan;
mod purge;
mod replication;
mod settings;
mod tables;
mod write;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::IsolationLevel;

use super::engine::{Engine, EngineStats, PurgeRange, SpaceStats, WriteState};
use super::{Batch, KeyValue, MergeRule, Space, StoreError, Tier};
use conn::{Connector, Pool};
pub use lease::Holder;
use replication::replication_of;
pub use replication::{probe, Replication};
use settings::client_config;
pub use settings::PostgresSettings;
pub use tables::{check_schema, PARTITIONS};

/// Rows fetched per round trip of a long scan; a scan that fits in one is a single statement.
const SCAN_CHUNK: usize = 256;

/// The SQL the engine runs, made once for its schema.
pub(super) struct Sql {
    schema: String,
    spaces: Vec<tables::SpaceSql>,
    insert_token: String,
    lease: Arc<lease::LeaseSql>,
}

pub(super) fn index(space: Space) -> usize {
    Space::ALL.iter().position(|s| *s == space).expect("every space is in Space::ALL")
}

/// A PostgreSQL error as the engine reports it: the server's severity, code and message, never
/// its detail (which may quote a key or value), or the client's own error text.
pub(super) fn db_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Io(format!("PostgreSQL {what}: {} {}: {}", db.severity(), db.code().code(), db.message())),
        None => StoreError::Io(format!("PostgreSQL {what}: {e}")),
    }
}

/// The PostgreSQL engine.
pub struct PostgresEngine {
    runtime: Option<tokio::runtime::Runtime>,
    reads: Pool,
    writes: Pool,
    sql: Arc<Sql>,
    merge: MergeRule,
    allow_async: bool,
    resolve_timeout: Duration,
    purge_lock: Mutex<()>,
    written: AtomicU64,
    /// The active lease, once taken; `None` for an engine opened for reading.
    lease: Option<lease::Lease>,
}

impl std::fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresEngine({})", self.sql.schema)
    }
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        // A drop without close (a panic, a test): released all the same.
        self.close();
        // Not `drop`: the engine may be dropped on an async thread, where a runtime cannot
        // wait for its threads.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PostgresEngine {
    /// Connects, creates the schema and tables if absent, checks the server's replication
    /// (refusing one without a synchronous quorum unless `allow_async`), and takes the active
    /// lease ([`StoreError::LeaseHeld`] if another node holds it).
    pub fn open(settings: &PostgresSettings, merge: MergeRule) -> Result<Self, StoreError> {
        let mut engine = Self::connect(settings, merge)?;
        let taken = std::time::Instant::now();
        let epoch = engine.run(async {
            let (client, _) = engine.writes.connector.connect_bare().await?;
            lease::acquire(&client, &engine.sql.lease, &lease::holder_name(), settings.advertise_url.as_deref(), settings.lease).await
        })?;
        let epoch = epoch.map_err(StoreError::LeaseHeld)?;
        tracing::info!(epoch, "took the active lease");
        engine.lease = Some(lease::Lease::start(epoch, taken, settings.lease, engine.writes.connector.clone(), engine.sql.lease.clone()));
        Ok(engine)
    }

    /// [`PostgresEngine::open`] without the lease: for reading beside the active node (its
    /// writes are refused).
    pub fn open_for_reading(settings: &PostgresSettings, merge: MergeRule) -> Result<Self, StoreError> {
        Self::connect(settings, merge)
    }

    fn connect(settings: &PostgresSettings, merge: MergeRule) -> Result<Self, StoreError> {
        let (config, tls) = client_config(settings)?;
        let schema = settings.schema.clone();
        let sql = Arc::new(Sql {
            spaces: Space::ALL.iter().map(|&s| tables::SpaceSql::new(&schema, s, SCAN_CHUNK)).collect(),
            insert_token: format!("INSERT INTO {} (token) VALUES ($1)", tables::qualified(&schema, tables::TOKENS)),
            lease: Arc::new(lease::LeaseSql::new(&schema)),
            schema,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qoima-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the PostgreSQL engine's runtime: {e}")))?;
        let connector = Arc::new(Connector::new(runtime.handle().clone(), config, tls, sql.clone()));
        let wait = settings.connect_timeout.max(Duration::from_secs(30));
        let engine = Self {
            reads: Pool::new("read", settings.pool_size, wait, connector.clone(), None),
            // A write's transaction left open by a paused process would hold the lease row's
            // share lock, and so hold off the next node's take-over: the server ends it.
            writes: Pool::new(
                "write",
                (settings.pool_size / 4).max(2),
                wait,
                connector,
                Some(format!("SET idle_in_transaction_session_timeout = {}", settings.lease.as_millis().max(1000))),
            ),
            runtime: Some(runtime),
            sql,
            merge,
            allow_async: settings.allow_async,
            resolve_timeout: settings.resolve_timeout,
            purge_lock: Mutex::new(()),
            written: AtomicU64::new(0),
            lease: None,
        };
        // Tables first: pooled connections prepare statements on them.
        engine.run(engine.create_tables())?;
        let replication = engine.replication()?;
        match replication.not_quorum() {
            Some(why) if !settings.allow_async => {
                return Err(StoreError::Io(format!(
                    "PostgreSQL does not replicate commits to a synchronous standby: {why}; an acknowledged write could be \
                     lost in a failover (run it under Patroni with synchronous_mode, or set [storage.postgres] allow_async = true)"
                )))
            }
            Some(why) => tracing::warn!(
                "PostgreSQL does not replicate commits synchronously ({why}); allow_async = true: an acknowledged write can be lost in a failover"
            ),
            None => {}
        }
        Ok(engine)
    }

    /// Runs `f` to completion on this thread, inside the engine's runtime (whose threads drive
    /// the connections and timers). Unconstrained: called from a tokio task (a test's, or a
    /// handler's), tokio's cooperative budget is that task's, which never yields while this
    /// blocks; once spent (after ~128 operations) tokio would defer every wake-up to that
    /// task's next yield, and the call would hang.
    fn run<F: Future>(&self, f: F) -> F::Output {
        let _inside = self.runtime.as_ref().expect("the runtime lives as long as the engine").enter();
        futures_executor::block_on(tokio::task::unconstrained(f))
    }

    async fn create_tables(&self) -> Result<(), StoreError> {
        let (mut client, _) = self.writes.connector.connect_bare().await?;
        let tx = client.transaction().await.map_err(|e| db_error("begin", &e))?;
        // Two vaults starting at once must not both create: one waits for the other.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&self.sql.schema]).await.map_err(|e| db_error("lock", &e))?;
        tx.batch_execute(&tables::ddl(&self.sql.schema)).await.map_err(|e| db_error("create tables", &e))?;
        tx.commit().await.map_err(|e| db_error("create tables", &e))
    }

    /// The server's replication settings and synchronous standbys now.
    pub fn replication(&self) -> Result<Replication, StoreError> {
        self.run(async { replication_of(&self.reads.get().await?.client).await })
    }
}

impl Engine for PostgresEngine {
    fn get(&self, tier: Tier, space: Space, key: &[u8], found: &mut dyn FnMut(&[u8])) -> Result<bool, StoreError> {
        if tier == Tier::Memory {
            return Err(StoreError::NotInMemory);
        }
        self.run(async {
            let c = self.reads.get().await?;
            let st = &c.space(space).get;
            let row = if tables::partitioned(space) {
                c.client.query_opt(st, &[&key, &tables::partition(key)]).await
            } else {
                c.client.query_opt(st, &[&key]).await
            }
            .map_err(|e| db_error("get", &e))?;
            match row.and_then(|r| r.get::<_, Option<&[u8]>>(0).map(&mut *found)) {
                Some(()) => Ok(true),
                None => Ok(false),
            }
        })
    }

    fn get_many(&self, tier: Tier, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if tier == Tier::Memory {
            return Err(StoreError::NotInMemory);
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(async {
            let c = self.reads.get().await?;
            let st = &c.space(space).get_many;
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            // One statement: one snapshot.
            let rows = if tables::partitioned(space) {
                let parts: Vec<i16> = refs.iter().map(|k| tables::partition(k)).collect();
                c.client.query(st, &[&refs, &parts]).await
            } else {
                c.client.query(st, &[&refs]).await
            }
            .map_err(|e| db_error("get_many", &e))?;
            let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
                rows.into_iter().filter_map(|r| Some((r.get::<_, Vec<u8>>(0), r.get::<_, Option<Vec<u8>>>(1)?))).collect();
            Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
        })
    }

    fn scan(
        &self,
        tier: Tier,
        space: Space,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        if tier == Tier::Memory {
            return Err(StoreError::NotInMemory);
        }
        if from >= to {
            return Ok(());
        }
        self.run(async {
            let mut c = self.reads.get().await?;
            // Most scans are a subject's few keys: one statement (one snapshot) answers them.
            let rows = c.client.query(&c.space(space).scan_head, &[&from, &to]).await.map_err(|e| db_error("scan", &e))?;
            if rows.len() <= SCAN_CHUNK {
                for r in &rows {
                    if let Some(v) = r.get::<_, Option<&[u8]>>(1) {
                        if !visit(r.get(0), v) {
                            break;
                        }
                    }
                }
                return Ok(());
            }
            // Longer: in chunks, inside one repeatable-read snapshot, from the start.
            let conn::Conn { client, spaces, .. } = &mut *c;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| db_error("scan", &e))?;
            let portal = tx.bind(&spaces[index(space)].scan, &[&from, &to]).await.map_err(|e| db_error("scan", &e))?;
            loop {
                let rows = tx.query_portal(&portal, SCAN_CHUNK as i32).await.map_err(|e| db_error("scan", &e))?;
                for r in &rows {
                    if let Some(v) = r.get::<_, Option<&[u8]>>(1) {
                        if !visit(r.get(0), v) {
                            return Ok(());
                        }
                    }
                }
                if rows.len() < SCAN_CHUNK {
                    return Ok(());
                }
            }
        })
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        self.run(async {
            let c = self.reads.get().await?;
            let row = c.client.query_opt(&c.space(space).last, &[]).await.map_err(|e| db_error("last", &e))?;
            Ok(row.and_then(|r| Some((r.get::<_, Vec<u8>>(0), r.get::<_, Option<Vec<u8>>>(1)?))))
        })
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.run(self.write_async(batch))
    }

    fn purge(&self, ranges: &[PurgeRange<'_>]) -> Result<(), StoreError> {
        let _one_at_a_time = self.purge_lock.lock().unwrap_or_else(|p| p.into_inner());
        let tables = self.purge_tables(ranges);
        self.run(self.purge_async(&tables))
    }

    fn backup(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.exists() {
            return Err(StoreError::Io(format!("backup folder {} already exists", dir.display())));
        }
        let copy = super::rocks::RocksEngine::open(dir, self.merge)?;
        self.run(async {
            let mut c = self.reads.get().await?;
            let tx = c
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| db_error("backup", &e))?;
            for space in Space::ALL {
                let all = format!("SELECT k, v FROM {} ORDER BY k", tables::table(&self.sql.schema, space));
                let portal = tx.bind(all.as_str(), &[]).await.map_err(|e| db_error("backup", &e))?;
                loop {
                    let rows = tx.query_portal(&portal, 1024).await.map_err(|e| db_error("backup", &e))?;
                    let mut b = Batch::default();
                    for r in &rows {
                        if let Some(v) = r.get::<_, Option<&[u8]>>(1) {
                            b.put(space, r.get::<_, &[u8]>(0), v);
                        }
                    }
                    copy.write(&b)?;
                    if rows.len() < 1024 {
                        break;
                    }
                }
            }
            Ok::<_, StoreError>(())
        })?;
        // Into the copy's files, so the folder is complete without a WAL replay.
        copy.purge(&[])
    }

    fn open_backup(&self, dir: &Path) -> Result<Arc<dyn Engine>, StoreError> {
        Ok(Arc::new(super::rocks::RocksEngine::open(dir, self.merge)?))
    }

    /// Always accepting: whether the server takes writes is asked by [`Engine::ready`] (a
    /// restart of the vault, which the watchdog would cause, cannot help a server that is down).
    fn write_state(&self) -> WriteState {
        match self.lease.as_ref().and_then(lease::Lease::fenced) {
            Some(fenced) => WriteState::Refused(fenced.to_string()),
            None => WriteState::Accepting,
        }
    }

    fn close(&self) {
        if let Some(lease) = self.lease.as_ref().filter(|l| l.fenced().is_none()) {
            self.run(async {
                match tokio::time::timeout(Duration::from_secs(2), self.writes.connector.connect_bare()).await {
                    Ok(Ok((client, _))) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), lease.release(&client, &self.sql.lease)).await;
                    }
                    _ => tracing::warn!("could not reach PostgreSQL to release the active lease; it expires by itself"),
                }
            });
        }
    }

    fn ready(&self) -> Result<(), StoreError> {
        if let Some(fenced) = self.lease.as_ref().and_then(lease::Lease::fenced) {
            return Err(fenced);
        }
        let replication = self.replication()?;
        match replication.not_quorum() {
            Some(why) if !self.allow_async => Err(StoreError::Io(format!("PostgreSQL: {why}"))),
            _ => Ok(()),
        }
    }

    fn stats(&self) -> EngineStats {
        let rows = self.run(async {
            let c = self.reads.get().await?;
            c.client
                .query(
                    "SELECT regexp_replace(c.relname, '_p[0-9]{2}$', ''), sum(s.n_live_tup)::int8, sum(pg_total_relation_size(c.oid))::int8 \
                     FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname = $1 GROUP BY 1",
                    &[&self.sql.schema],
                )
                .await
                .map_err(|e| db_error("stats", &e))
        });
        let found: BTreeMap<String, (i64, i64)> =
            rows.map(|rows| rows.into_iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect()).unwrap_or_default();
        let spaces = Space::ALL
            .iter()
            .map(|s| {
                let (keys, bytes) = found.get(s.name()).map(|(k, b)| (Some(*k as u64), Some(*b as u64))).unwrap_or((None, None));
                SpaceStats::new(*s, keys, bytes, None)
            })
            .collect();
        EngineStats::new(spaces, 0, None)
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! The PostgreSQL server the tests run against: `QOIMA_TEST_POSTGRES` (a connection string)
    //! and `QOIMA_TEST_POSTGRES_DATA` (its data directory, for the byte scans), which
    //! `scripts/test` sets after starting one with `scripts/postgres`.

    /// A fresh schema name for one test.
    pub fn schema() -> String {
        let mut b = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        format!("t_{}", hex::encode(b))
    }

    pub fn url() -> String {
        std::env::var("QOIMA_TEST_POSTGRES")
            .expect("QOIMA_TEST_POSTGRES is not set: run the suite with scripts/test, which starts a PostgreSQL server (scripts/postgres)")
    }

    pub fn data_dir() -> std::path::PathBuf {
        std::env::var_os("QOIMA_TEST_POSTGRES_DATA").expect("QOIMA_TEST_POSTGRES_DATA is not set: run the suite with scripts/test").into()
    }

    pub fn settings() -> super::PostgresSettings {
        let mut s = super::PostgresSettings::new(url().into());
        s.schema = schema();
        s.allow_async = true;
        s.pool_size = 4;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        crate::store::conformance::run_with(
            |_dir, merge| PostgresEngine::open(&test_server::settings(), merge).unwrap(),
            &crate::store::conformance::Forensics { files: |dir| vec![dir.to_path_buf(), test_server::data_dir()], memtables: false },
        );
    }

    #[test]
    fn refuses_a_server_without_a_synchronous_standby_unless_allowed() {
        let mut s = test_server::settings();
        s.allow_async = false;
        let e = PostgresEngine::open(&s, crate::store::conformance::join).unwrap_err().to_string();
        assert!(e.contains("synchronous_standby_names is empty") && e.contains("allow_async"), "{e}");
        s.allow_async = true;
        let engine = PostgresEngine::open(&s, crate::store::conformance::join).unwrap();
        assert_eq!(
            engine.replication().unwrap().not_quorum().as_deref(),
            Some("synchronous_standby_names is empty (no synchronous standby)")
        );
    }

    #[test]
    fn bad_settings_fail_with_one_clear_line() {
        let mut s = test_server::settings();
        s.schema = "Bad-Name".into();
        assert!(PostgresEngine::open(&s, crate::store::conformance::join).unwrap_err().to_string().contains("schema"));
        let mut s = test_server::settings();
        s.url = "host=127.0.0.1 port=1 user=x connect_timeout=1".to_string().into();
        let e = PostgresEngine::open(&s, crate::store::conformance::join).unwrap_err().to_string();
        assert!(e.contains("connect to PostgreSQL"), "{e}");
        let mut s = test_server::settings();
        s.url = format!("{} password=hunter2-secret sslmode=require", test_server::url()).into();
        let e = PostgresEngine::open(&s, crate::store::conformance::join).unwrap_err().to_string();
        assert!(e.contains("ca_file") && !e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn calls_from_a_single_threaded_async_runtime_complete() {
        let engine = PostgresEngine::open(&test_server::settings(), crate::store::conformance::join).unwrap();
        put(&engine, b"k").unwrap();
        let store = super::super::Store::with_engine(Arc::new(engine));
        for i in 0..300 {
            assert!(store.get(Space::Records, b"k").unwrap().is_some(), "{i}");
        }
    }

    #[test]
    fn concurrent_adds_to_shared_counters_lose_nothing() {
        let engine = Arc::new(PostgresEngine::open(&test_server::settings(), crate::store::conformance::join).unwrap());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let e = &engine;
                scope.spawn(move || {
                    for _ in 0..50 {
                        let mut batch = Batch::default();
                        batch.add(Space::Keyring, b"n".to_vec(), 1);
                        batch.add(Space::Keyring, b"m".to_vec(), 2);
                        e.write(&batch).unwrap();
                    }
                });
            }
        });
        let store = super::super::Store::with_engine(engine);
        assert_eq!(store.counter(Space::Keyring, b"n").unwrap(), 200, "no add lost between concurrent writers");
        assert_eq!(store.counter(Space::Keyring, b"m").unwrap(), 400);
    }

    fn put(engine: &PostgresEngine, key: &[u8]) -> Result<(), StoreError> {
        let mut b = Batch::default();
        b.put(Space::Records, key.to_vec(), b"v".to_vec());
        engine.write(&b)
    }

    #[test]
    fn one_engine_holds_the_lease_and_a_clean_close_hands_it_on() {
        let mut s = test_server::settings();
        s.lease = Duration::from_secs(3);
        s.advertise_url = Some("http://10.0.0.1:8750".into());
        let a = PostgresEngine::open(&s, crate::store::conformance::join).unwrap();
        let held = PostgresEngine::open(&s, crate::store::conformance::join).unwrap_err();
        let StoreError::LeaseHeld(holder) = &held else { panic!("{held}") };
        assert_eq!(holder.address.as_deref(), Some("http://10.0.0.1:8750"));
        assert!(holder.expires_in_secs <= 3, "{holder:?}");
        // Renewed meanwhile: still held after more than a lease.
        std::thread::sleep(Duration::from_secs(4));
        put(&a, b"a").unwrap();
        assert!(matches!(PostgresEngine::open(&s, crate::store::conformance::join), Err(StoreError::LeaseHeld(_))));
        // A reader needs no lease, and writes nothing.
        let reader = PostgresEngine::open_for_reading(&s, crate::store::conformance::join).unwrap();
        assert!(put(&reader, b"r").is_err());
        drop(a);
        let b = PostgresEngine::open(&s, crate::store::conformance::join).expect("released on close");
        put(&b, b"b").unwrap();
    }

    #[test]
    fn a_node_whose_lease_was_taken_writes_nothing_more() {
        let mut s = test_server::settings();
        s.lease = Duration::from_secs(3);
        let old = PostgresEngine::open(&s, crate::store::conformance::join).unwrap();
        put(&old, b"before").unwrap();
        // As if `old` had been paused past its lease: it expires, and another node takes it.
        let admin = PostgresEngine::open_for_reading(&s, crate::store::conformance::join).unwrap();
        admin
            .run(async {
                let (c, _) = admin.writes.connector.connect_bare().await?;
                c.batch_execute(&format!(
                    "UPDATE {} SET expires_at = now() - interval '1 second'",
                    tables::qualified(&s.schema, lease::TABLE)
                ))
                .await
                .map_err(|e| db_error("test", &e))
            })
            .unwrap();
        let new = PostgresEngine::open(&s, crate::store::conformance::join).expect("an expired lease is taken");
        let refused = put(&old, b"after").unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { epoch: 1 }), "{refused}");
        assert!(matches!(old.write_state(), WriteState::Refused(_)) && old.ready().is_err(), "fenced for good");
        let store = super::super::Store::with_engine(Arc::new(new));
        assert_eq!(store.get(Space::Records, b"after").unwrap(), None, "the fenced write applied nothing");
        assert!(store.get(Space::Records, b"before").unwrap().is_some());
        // The old node's drop releases nothing that is not its own.
        drop(old);
        let mut b = Batch::default();
        b.put(Space::Records, b"new".to_vec(), b"v".to_vec());
        store.write(&b).unwrap();
    }

    /// A server of the test's own, whose commits can be made to wait for a synchronous standby
    /// that never comes (`synchronous_standby_names = 'ghost'`), so a commit's wait can be
    /// cancelled.
    struct GhostStandby {
        dir: tempfile::TempDir,
        url: String,
    }

    impl GhostStandby {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres");
            let out = std::process::Command::new(script).arg("start").arg(dir.path()).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
            Self { dir, url }
        }

        /// From now on, every commit waits for the standby that never comes.
        fn wait_for_the_ghost(&self, wait: bool) {
            let set = if wait { "SET synchronous_standby_names = 'ghost'" } else { "RESET synchronous_standby_names" };
            self.sql(&format!("ALTER SYSTEM {set}"));
            self.sql("SELECT pg_reload_conf()");
        }

        fn sql(&self, sql: &str) -> String {
            let psql = std::fs::read_dir("/usr/lib/postgresql").unwrap().next().unwrap().unwrap().path().join("bin/psql");
            let out = std::process::Command::new(psql).args(["-Atq", "-d", &self.url, "-c", sql]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }

        fn settings(&self, resolve: Duration) -> PostgresSettings {
            let mut s = PostgresSettings::new(self.url.clone().into());
            s.schema = test_server::schema();
            s.allow_async = true;
            s.resolve_timeout = resolve;
            // Renewals wait for the ghost too: a lease longer than the test.
            s.lease = Duration::from_secs(120);
            s
        }

        /// Cancels the first commit found waiting for the standby.
        fn cancel_a_waiting_commit(&self) {
            for _ in 0..200 {
                let n = self.sql("SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND application_name = 'qoima'");
                if n != "0" {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("no commit waited for the standby");
        }
    }

    impl Drop for GhostStandby {
        fn drop(&mut self) {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres");
            let _ = std::process::Command::new(script).arg("stop").arg(self.dir.path()).status();
        }
    }

    #[test]
    fn a_cancelled_wait_for_the_standby_is_never_reported_as_a_commit() {
        let server = GhostStandby::start();
        let unresolved = PostgresEngine::open(&server.settings(Duration::from_secs(3)), crate::store::conformance::join).unwrap();
        let resolved = PostgresEngine::open(&server.settings(Duration::from_secs(60)), crate::store::conformance::join).unwrap();
        server.wait_for_the_ghost(true);
        // The standby stays away: the write's outcome cannot be settled, and is not guessed.
        let result = std::thread::scope(|scope| {
            let w = scope.spawn(|| put(&unresolved, b"k"));
            server.cancel_a_waiting_commit();
            w.join().unwrap()
        });
        assert!(matches!(result, Err(StoreError::OutcomeUnknown(_))), "{result:?}");
        // The standby returns while the write is being resolved: it committed, and says so.
        let result = std::thread::scope(|scope| {
            let w = scope.spawn(|| put(&resolved, b"k"));
            server.cancel_a_waiting_commit();
            std::thread::sleep(Duration::from_secs(1));
            assert!(!w.is_finished(), "the write answered while its replication was unknown");
            server.wait_for_the_ghost(false);
            w.join().unwrap()
        });
        result.expect("resolved: committed");
        let store = super::super::Store::with_engine(Arc::new(resolved));
        assert!(store.get(Space::Records, b"k").unwrap().is_some());
    }
}
