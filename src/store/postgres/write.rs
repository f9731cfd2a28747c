//! A write on PostgreSQL (module doc of mod.rs): one transaction per batch, its outcome
//! success only if COMMIT returned with no notice, and otherwise resolved before answering.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::super::{Batch, Space, StoreError};
use super::plan::{self, Step};
use super::{conn, db_error, index, tables, PostgresEngine};

/// Write tokens are kept this long (a resolution runs within the resolve timeout, minutes).
const TOKEN_LIFE: &str = "1 hour";
/// Every this many writes, tokens older than [`TOKEN_LIFE`] are deleted.
const TOKEN_SWEEP_EVERY: u64 = 4096;

/// Whether a failed COMMIT certainly did not commit: the server answered with an ERROR (it
/// rolled back). Anything else — a lost connection, a FATAL (the backend was terminated,
/// possibly after committing locally) — leaves the outcome open.
fn rolled_back(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| db.severity() == "ERROR" && !db.code().code().starts_with("57"))
}

/// How a write attempt ended.
enum Attempt {
    Committed,
    NotApplied(StoreError),
    /// Why the outcome is not known.
    Unknown(String),
}

impl PostgresEngine {
    pub(super) async fn write_async(&self, batch: &Batch) -> Result<(), StoreError> {
        let lease = self.lease.as_ref().ok_or_else(|| StoreError::Io("this PostgreSQL store was opened for reading".into()))?;
        if let Some(fenced) = lease.fenced() {
            return Err(fenced);
        }
        let mut token = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| StoreError::Io("the OS random source failed".into()))?;
        let epoch = lease.epoch;
        let mut lease = self.writes.get().await?;
        let before = lease.notices();
        let attempt = self.attempt(&mut lease, batch, &token, epoch).await;
        let why = match attempt {
            Attempt::Committed if lease.notices() == before => return Ok(()),
            Attempt::Committed => "a notice arrived during COMMIT (a cancelled wait for synchronous replication?)".to_string(),
            Attempt::NotApplied(e) => {
                if matches!(e, StoreError::Fenced { .. }) {
                    if let Some(l) = &self.lease {
                        l.fence();
                    }
                }
                return Err(e);
            }
            Attempt::Unknown(why) => why,
        };
        lease.discard();
        self.resolve(&token, &why).await
    }

    /// One try at `batch` in a transaction on `c`.
    async fn attempt(&self, c: &mut conn::Conn, batch: &Batch, token: &[u8], epoch: i64) -> Attempt {
        let not_applied = |what: &str, e: tokio_postgres::Error| Attempt::NotApplied(db_error(what, &e));
        let conn::Conn { client, spaces, insert_token, fence, .. } = c;
        let (spaces, insert_token, fence) = (&*spaces, &*insert_token, &*fence);
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => return not_applied("begin", e),
        };
        let sweep = self.written.fetch_add(1, Ordering::Relaxed) % TOKEN_SWEEP_EVERY == TOKEN_SWEEP_EVERY - 1;
        let sweep_sql = format!(
            "DELETE FROM {} WHERE written_at < now() - interval '{TOKEN_LIFE}'",
            tables::qualified(&self.sql.schema, tables::TOKENS)
        );
        // The token, and the locks on the keys whose values the batch adds or merges to.
        let needed = plan::needed(batch);
        let locks = needed.iter().map(|(space, keys)| {
            let st = &spaces[index(*space)];
            let keys: Vec<&[u8]> = keys.iter().copied().collect();
            let parts: Vec<i16> = keys.iter().map(|k| tables::partition(k)).collect();
            let tx = &tx;
            async move {
                let params: Vec<&(dyn ToSql + Sync)> = if tables::partitioned(*space) { vec![&keys, &parts] } else { vec![&keys] };
                tx.execute(&st.reserve, &params).await?;
                let rows = tx.query(&st.lock, &params).await?;
                Ok::<_, tokio_postgres::Error>(
                    rows.into_iter().map(|r| ((*space, r.get::<_, Vec<u8>>(0)), r.get::<_, Option<Vec<u8>>>(1))).collect::<Vec<_>>(),
                )
            }
        });
        let token_param: [&(dyn ToSql + Sync); 1] = [&token];
        let token_insert = tx.execute(insert_token, &token_param);
        let epoch_param: [&(dyn ToSql + Sync); 1] = [&epoch];
        // First in the pipeline: the lease still ours, its row share-locked to the commit.
        let fenced = tx.query(fence, &epoch_param);
        let (held, inserted, locked) =
            match futures_util::future::try_join3(fenced, token_insert, futures_util::future::try_join_all(locks)).await {
                Ok(v) => v,
                Err(e) => return not_applied("write", e),
            };
        if held.is_empty() {
            return Attempt::NotApplied(StoreError::Fenced { epoch });
        }
        debug_assert_eq!(inserted, 1);
        let locked: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>> = locked.into_iter().flatten().collect();
        if let Err(e) = batch.check_expects(|e| Ok(locked.get(&(e.space, e.key.clone())).cloned().flatten())) {
            return Attempt::NotApplied(e);
        }
        let current = needed
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| (*s, *k)))
            .map(|(s, k)| ((s, k), locked.get(&(s, k.to_vec())).cloned().flatten()))
            .collect();
        let steps = plan::steps(batch, current, self.merge);
        let parts: Vec<i16> = steps
            .iter()
            .map(|s| match s {
                Step::Put(_, k, _) | Step::PutRef(_, k, _) | Step::Delete(_, k) => tables::partition(k),
                Step::DeleteRange(..) => 0,
            })
            .collect();
        let statements = steps.iter().zip(&parts).map(|(step, part)| {
            let tx = &tx;
            async move {
                match step {
                    Step::Put(s, k, v) => put(tx, &spaces[index(*s)], *s, k, part, v).await,
                    Step::PutRef(s, k, v) => put(tx, &spaces[index(*s)], *s, k, part, v).await,
                    Step::Delete(s, k) if tables::partitioned(*s) => tx.execute(&spaces[index(*s)].delete, &[k, part]).await,
                    Step::Delete(s, k) => tx.execute(&spaces[index(*s)].delete, &[k]).await,
                    Step::DeleteRange(s, from, to) => tx.execute(&spaces[index(*s)].delete_range, &[from, to]).await,
                }
            }
        });
        if let Err(e) = futures_util::future::try_join_all(statements).await {
            return not_applied("write", e);
        }
        if sweep {
            if let Err(e) = tx.execute(&sweep_sql, &[]).await {
                return not_applied("token sweep", e);
            }
        }
        match tx.commit().await {
            Ok(()) => Attempt::Committed,
            Err(e) if rolled_back(&e) => not_applied("commit", e),
            Err(e) => Attempt::Unknown(format!("{}", db_error("commit", &e))),
        }
    }

    /// Finds out whether the write that inserted `token` committed, on new connections, until
    /// [`PostgresSettings::resolve_timeout`]; see the module doc.
    async fn resolve(&self, token: &[u8], why: &str) -> Result<(), StoreError> {
        tracing::warn!(reason = why, "a PostgreSQL write's outcome is unknown; resolving it before answering");
        let deadline = tokio::time::Instant::now() + self.resolve_timeout;
        let tokens = tables::qualified(&self.sql.schema, tables::TOKENS);
        let poison = format!("INSERT INTO {tokens} (token) VALUES ($1) ON CONFLICT DO NOTHING");
        let mut pause = Duration::from_millis(50);
        let mut last = why.to_string();
        while tokio::time::Instant::now() < deadline {
            // Bounded: the resolution's own commit waits for a standby too. Dropping it there
            // cancels nothing (its row is only a witness).
            let patience = deadline.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_secs(10));
            let outcome = tokio::time::timeout(patience, async {
                let (mut client, notices) = self.writes.connector.connect_bare().await?;
                let before = notices.load(Ordering::SeqCst);
                let tx = client.transaction().await.map_err(|e| db_error("begin", &e))?;
                let inserted = tx.execute(&poison, &[&token]).await.map_err(|e| db_error("resolve", &e))?;
                // Always a row of our own: the commit then waits for the standbys, which proves
                // that everything before it in the WAL (the original write) reached them.
                let mut own = [0u8; 16];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut own)
                    .map_err(|_| StoreError::Io("the OS random source failed".into()))?;
                tx.execute(&poison, &[&&own[..]]).await.map_err(|e| db_error("resolve", &e))?;
                tx.commit().await.map_err(|e| db_error("resolve commit", &e))?;
                if notices.load(Ordering::SeqCst) != before {
                    return Err(StoreError::Io("a notice arrived during the resolution's COMMIT".into()));
                }
                Ok(inserted == 0)
            })
            .await
            .unwrap_or_else(|_| Err(StoreError::Io("the resolution got no answer in time".into())));
            match outcome {
                Ok(true) => {
                    tracing::warn!("the PostgreSQL write committed (resolved)");
                    return Ok(());
                }
                Ok(false) => {
                    tracing::warn!("the PostgreSQL write did not commit (resolved)");
                    return Err(StoreError::Io(format!("PostgreSQL write not applied ({why})")));
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        Err(StoreError::OutcomeUnknown(format!("{why}; still unresolved after {} s: {last}", self.resolve_timeout.as_secs())))
    }
}

async fn put(
    tx: &tokio_postgres::Transaction<'_>,
    st: &conn::Prepared,
    space: Space,
    key: &[u8],
    part: &i16,
    value: &[u8],
) -> Result<u64, tokio_postgres::Error> {
    if tables::partitioned(space) {
        tx.execute(&st.put, &[&key, part, &value]).await
    } else {
        tx.execute(&st.put, &[&key, &value]).await
    }
}
