//! The server's replication: what start-up, readiness and `qoima config check` require of it.

use std::sync::Arc;

use super::super::StoreError;
use super::conn::Connector;
use super::settings::{client_config, PostgresSettings};
use super::{db_error, lease, Sql};

/// The server's replication, as the engine checks it at open and for readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replication {
    pub synchronous_commit: String,
    pub synchronous_standby_names: String,
    /// Standbys streaming now as synchronous (`sync` or `quorum`).
    pub synchronous_standbys: u32,
    pub server_version: String,
    /// Every standby streaming now: `name sync_state state`, comma-separated.
    pub standbys: String,
}

impl std::fmt::Display for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL {}, synchronous_commit {}, synchronous_standby_names '{}', {} synchronous standby(s) streaming{}",
            self.server_version,
            self.synchronous_commit,
            self.synchronous_standby_names,
            self.synchronous_standbys,
            if self.standbys.is_empty() { String::new() } else { format!(" ({})", self.standbys) }
        )
    }
}

impl Replication {
    /// Why commits on this server are not known to reach a standby before they return.
    pub fn not_quorum(&self) -> Option<String> {
        if !matches!(self.synchronous_commit.as_str(), "on" | "remote_write" | "remote_apply") {
            return Some(format!("synchronous_commit is {}", self.synchronous_commit));
        }
        if self.synchronous_standby_names.trim().is_empty() {
            return Some("synchronous_standby_names is empty (no synchronous standby)".into());
        }
        if self.synchronous_standbys == 0 {
            return Some("no synchronous standby is streaming (commits wait)".into());
        }
        None
    }
}

/// The replication of the server `client` is connected to; an error if it is a standby.
pub(super) async fn replication_of(client: &tokio_postgres::Client) -> Result<Replication, StoreError> {
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('synchronous_standby_names'), \
             (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))::int4, \
             current_setting('server_version'), pg_is_in_recovery(), \
             (SELECT coalesce(string_agg(application_name || ' ' || sync_state || ' ' || state, ', ' ORDER BY application_name), '') \
              FROM pg_stat_replication)",
            &[],
        )
        .await
        .map_err(|e| db_error("replication check", &e))?;
    if row.get::<_, bool>(4) {
        return Err(StoreError::Io(
            "the PostgreSQL server is a standby (in recovery): connect to the primary (target_session_attrs=read-write)".into(),
        ));
    }
    Ok(Replication {
        synchronous_commit: row.get(0),
        synchronous_standby_names: row.get(1),
        synchronous_standbys: row.get::<_, i32>(2).max(0) as u32,
        server_version: row.get(3),
        standbys: row.get(5),
    })
}

/// Connects once and reads the server's replication, creating nothing (`qoima config check`).
pub fn probe(settings: &PostgresSettings) -> Result<Replication, StoreError> {
    let (config, tls) = client_config(settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Io(format!("cannot start a runtime: {e}")))?;
    let connector = Connector::new(
        runtime.handle().clone(),
        config,
        tls,
        Arc::new(Sql {
            schema: settings.schema.clone(),
            spaces: Vec::new(),
            insert_token: String::new(),
            lease: Arc::new(lease::LeaseSql::new(&settings.schema)),
        }),
    );
    runtime.block_on(async {
        let (client, _) = connector.connect_bare().await?;
        replication_of(&client).await
    })
}
