//! The purge after an erasure on PostgreSQL (docs/scale-out.md): no snapshot older than the
//! deletions, a rewrite of the affected partitions, the WAL that logged the rows closed past
//! `wal_keep_size` and removed, a restartpoint on every standby, no slot holding it back.

use std::time::Duration;

use super::super::engine::PurgeRange;
use super::super::StoreError;
use super::{db_error, tables, PostgresEngine, PARTITIONS};

impl PostgresEngine {
    /// The purge of `tables` (`Engine::purge`; module doc of mod.rs): the rewrite, the WAL
    /// pushed out on the primary, then every standby.
    pub(super) async fn purge_async(&self, tables: &[String]) -> Result<(), StoreError> {
        let (client, _) = self.writes.connector.connect_bare().await?;
        if !tables.is_empty() {
            // A rewrite keeps every row some open snapshot may still see, deleted or not:
            // first, no transaction older than the purged rows' deletion may be running.
            self.wait_for_older_snapshots(&client).await?;
            // A rewrite: the new files hold only live rows; the old ones are truncated.
            client.batch_execute(&format!("VACUUM FULL {}", tables.join(", "))).await.map_err(|e| db_error("purge (VACUUM FULL)", &e))?;
        }
        let wal_error = |e: tokio_postgres::Error| db_error("purge (WAL)", &e);
        // The WAL that logged the deleted rows ends here.
        let logged: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(wal_error)?.get(0);
        // Closed, then removed by a checkpoint; but the server keeps the newest
        // `wal_keep_size` of WAL (Patroni sets 128 MB), so as many segments are closed
        // after it as that keeps, and one more. Each checkpoint writes a record, so each
        // switch closes a segment.
        let keep: i32 = client
            .query_one(
                "SELECT ceil(pg_size_bytes(current_setting('wal_keep_size')) / pg_size_bytes(current_setting('wal_segment_size')))::int4",
                &[],
            )
            .await
            .map_err(wal_error)?
            .get(0);
        for _ in 0..=keep.clamp(0, 4096) {
            client.batch_execute("SELECT pg_switch_wal(); CHECKPOINT").await.map_err(wal_error)?;
        }
        let lsn: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(wal_error)?.get(0);
        self.purge_standbys(&lsn).await?;
        // The standbys have confirmed past it, so their slots let it go: once more.
        client.batch_execute("CHECKPOINT").await.map_err(wal_error)?;
        let holding: Vec<String> = client
            .query("SELECT slot_name::text FROM pg_replication_slots WHERE restart_lsn < $1::text::pg_lsn", &[&logged])
            .await
            .map_err(wal_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !holding.is_empty() {
            return Err(StoreError::Io(format!(
                "purge: replication slot(s) {} keep the WAL that logged the purged rows (a standby or consumer that is down?)",
                holding.join(", ")
            )));
        }
        Ok(())
    }

    /// Waits until no snapshot anywhere in the cluster is older than now: no backend's, no
    /// standby's (hot-standby feedback), no replication slot's, no prepared transaction's.
    /// The purge runs after the deletions committed, so then no one can still see the deleted
    /// rows and `VACUUM FULL` drops them. Bounded by the resolve timeout: a transaction left
    /// open fails the purge, which is retried (it names no query, only the process).
    async fn wait_for_older_snapshots(&self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
        let error = |e: tokio_postgres::Error| db_error("purge (open transactions)", &e);
        let now: String = client.query_one("SELECT pg_current_xact_id()::text", &[]).await.map_err(error)?.get(0);
        // `age` counts back from the next transaction id: older than `now` is a larger age.
        let older = "SELECT string_agg(who, ', ') FROM ( \
             SELECT 'backend ' || pid AS who, greatest(age(backend_xmin), age(backend_xid)) AS a FROM pg_stat_activity \
               WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) \
             UNION ALL SELECT 'standby ' || application_name, age(backend_xmin) FROM pg_stat_replication WHERE backend_xmin IS NOT NULL \
             UNION ALL SELECT 'slot ' || slot_name, age(xmin) FROM pg_replication_slots WHERE xmin IS NOT NULL \
             UNION ALL SELECT 'prepared ' || gid, age(transaction) FROM pg_prepared_xacts) t \
             WHERE a > age(($1::text::xid8)::text::xid)";
        let deadline = tokio::time::Instant::now() + self.resolve_timeout;
        loop {
            let who: Option<String> = client.query_one(older, &[&now]).await.map_err(error)?.get(0);
            let Some(who) = who else { return Ok(()) };
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Io(format!(
                    "purge: transactions older than the erasure are still open ({who}); their snapshots keep the deleted rows"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for every standby the connection string names to replay the WAL up to `lsn`
    /// (the purge's rewrite), then has it run a restartpoint (`CHECKPOINT`), after which it
    /// keeps no segment holding the deleted rows. Purged only once every one confirmed: an
    /// unreachable standby fails the purge, which is retried (docs/scale-out.md).
    async fn purge_standbys(&self, lsn: &str) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.resolve_timeout;
        for (host, client) in self.writes.connector.connect_each_host().await {
            let client = client.map_err(|e| StoreError::Io(format!("purge: standby {host} not reached: {e}")))?;
            loop {
                let row = client
                    .query_one("SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)", &[&lsn])
                    .await
                    .map_err(|e| db_error(&format!("purge (standby {host})"), &e))?;
                let (standby, replayed): (bool, bool) = (row.get(0), row.get(1));
                if !standby {
                    break;
                }
                if replayed {
                    client.batch_execute("CHECKPOINT").await.map_err(|e| db_error(&format!("purge (standby {host} restartpoint)"), &e))?;
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(StoreError::Io(format!(
                        "purge: standby {host} has not replayed the purge within {} s",
                        self.resolve_timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The tables a purge of `ranges` rewrites.
    pub(super) fn purge_tables(&self, ranges: &[PurgeRange<'_>]) -> Vec<String> {
        let schema = &self.sql.schema;
        let mut out = std::collections::BTreeSet::new();
        for (space, from, to) in ranges {
            if !tables::partitioned(*space) {
                out.insert(tables::table(schema, *space));
                continue;
            }
            match (from, to) {
                // Exactly one key: its partition.
                (Some(f), Some(t)) if t.len() == f.len() + 1 && t.starts_with(f) && t.last() == Some(&0) => {
                    out.insert(tables::partition_table(schema, *space, tables::partition(f) as u16));
                }
                _ => out.extend((0..PARTITIONS).map(|p| tables::partition_table(schema, *space, p))),
            }
        }
        out.into_iter().collect()
    }
}
