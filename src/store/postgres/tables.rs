//! The engine's tables: one per space, in a schema of its own, and the SQL each operation runs.
//!
//! Every space is `(k bytea PRIMARY KEY, v bytea)`: bytea compares bytewise, as RocksDB's
//! comparator does, so a range scan means the same on both engines. The spaces whose deleted
//! values a purge must force out of the files (the wrapped DEKs and the blind-index records)
//! are list-partitioned on a bucket of the key, so a purge rewrites one small partition
//! (`VACUUM FULL`), not the whole space. `v` is NULL only inside a write's transaction (the
//! placeholder a counter or merge locks, mod.rs), never in a committed row.

use super::super::Space;

/// Partitions of a [`partitioned`] space: at a million subjects, ~3 MB each for the wrapped
/// DEKs, so a purge's rewrite takes milliseconds.
pub const PARTITIONS: u16 = 64;

/// The engine's own table of write tokens: one row per write transaction, so a write whose
/// outcome was lost (a dropped connection, a notice during COMMIT) can be resolved (mod.rs).
pub const TOKENS: &str = "qoima_write_tokens";

/// The spaces split into [`PARTITIONS`] (those an erasure purges key by key).
pub fn partitioned(space: Space) -> bool {
    matches!(space, Space::Subjects | Space::Index)
}

/// The partition of `key` in a [`partitioned`] space: FNV-1a of the key, stable across
/// versions and machines (it is part of the stored layout). Not a security boundary: it only
/// spreads keys.
pub fn partition(key: &[u8]) -> i16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(PARTITIONS)) as i16
}

/// `"schema"."table"`; the schema name is checked by [`check_schema`] first.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("\"{schema}\".\"{table}\"")
}

/// The table of a space.
pub fn table(schema: &str, space: Space) -> String {
    qualified(schema, space.name())
}

/// The table of partition `p` of a partitioned space.
pub fn partition_table(schema: &str, space: Space, p: u16) -> String {
    qualified(schema, &format!("{}_p{p:02}", space.name()))
}

/// A schema name the engine may create and quote: lower-case letters, digits and `_`, not
/// starting with a digit or `pg_`, at most 48 bytes (room for suffixes within PostgreSQL's 63).
pub fn check_schema(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && !name.starts_with("pg_")
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!("schema {name:?} is not a plain lower-case identifier (a-z, 0-9, _; at most 48 bytes; not pg_…)"))
    }
}

/// The statements creating the schema and its tables, idempotent.
pub fn ddl(schema: &str) -> String {
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n");
    for space in Space::ALL {
        let t = table(schema, space);
        if partitioned(space) {
            sql += &format!(
                "CREATE TABLE IF NOT EXISTS {t} (k bytea NOT NULL, part int2 NOT NULL, v bytea, PRIMARY KEY (k, part)) PARTITION BY LIST (part);\n"
            );
            for p in 0..PARTITIONS {
                sql += &format!("CREATE TABLE IF NOT EXISTS {} PARTITION OF {t} FOR VALUES IN ({p});\n", partition_table(schema, space, p));
            }
        } else {
            sql += &format!("CREATE TABLE IF NOT EXISTS {t} (k bytea PRIMARY KEY, v bytea);\n");
        }
    }
    sql += &format!(
        "CREATE TABLE IF NOT EXISTS {} (token bytea PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now());\n",
        qualified(schema, TOKENS)
    );
    sql += &super::lease::LeaseSql::ddl(schema);
    sql
}

/// The SQL of one space's operations. Parameters: `$1` the key (or the range's start, or the
/// keys), then, for a partitioned space, the partition(s), then the value or the range's end.
#[derive(Debug, Clone)]
pub struct SpaceSql {
    pub get: String,
    pub get_many: String,
    pub scan: String,
    /// [`SpaceSql::scan`] limited to one chunk and one more row (mod.rs).
    pub scan_head: String,
    pub last: String,
    pub put: String,
    pub delete: String,
    pub delete_range: String,
    /// Inserts a NULL placeholder for each absent key of `$1` (so it can be locked).
    pub reserve: String,
    /// Locks the keys `$1` in key order and returns their values (NULL: absent).
    pub lock: String,
}

impl SpaceSql {
    pub fn new(schema: &str, space: Space, chunk: usize) -> Self {
        let t = table(schema, space);
        let scan = format!("SELECT k, v FROM {t} WHERE k >= $1 AND k < $2 ORDER BY k");
        let scan_head = format!("{scan} LIMIT {}", chunk + 1);
        if partitioned(space) {
            Self {
                get: format!("SELECT v FROM {t} WHERE k = $1 AND part = $2"),
                get_many: format!(
                    "SELECT x.k, t.v FROM unnest($1::bytea[], $2::int2[]) AS x(k, part) JOIN {t} t ON t.k = x.k AND t.part = x.part"
                ),
                scan: scan.clone(),
                scan_head: scan_head.clone(),
                last: format!("SELECT k, v FROM {t} ORDER BY k DESC LIMIT 1"),
                put: format!("INSERT INTO {t} (k, part, v) VALUES ($1, $2, $3) ON CONFLICT (k, part) DO UPDATE SET v = EXCLUDED.v"),
                delete: format!("DELETE FROM {t} WHERE k = $1 AND part = $2"),
                delete_range: format!("DELETE FROM {t} WHERE k >= $1 AND k < $2"),
                reserve: format!(
                    "INSERT INTO {t} (k, part) SELECT * FROM unnest($1::bytea[], $2::int2[]) ORDER BY 1 ON CONFLICT DO NOTHING"
                ),
                lock: format!(
                    "SELECT t.k, t.v FROM {t} t JOIN unnest($1::bytea[], $2::int2[]) AS x(k, part) ON t.k = x.k AND t.part = x.part ORDER BY t.k FOR UPDATE OF t"
                ),
            }
        } else {
            Self {
                get: format!("SELECT v FROM {t} WHERE k = $1"),
                get_many: format!("SELECT k, v FROM {t} WHERE k = ANY($1)"),
                scan,
                scan_head,
                last: format!("SELECT k, v FROM {t} ORDER BY k DESC LIMIT 1"),
                put: format!("INSERT INTO {t} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"),
                delete: format!("DELETE FROM {t} WHERE k = $1"),
                delete_range: format!("DELETE FROM {t} WHERE k >= $1 AND k < $2"),
                reserve: format!("INSERT INTO {t} (k) SELECT * FROM unnest($1::bytea[]) ORDER BY 1 ON CONFLICT DO NOTHING"),
                lock: format!("SELECT k, v FROM {t} WHERE k = ANY($1) ORDER BY k FOR UPDATE"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Part of the stored layout: these must never change.
        assert_eq!(partition(b""), (0xcbf2_9ce4_8422_2325u64 % 64) as i16);
        assert_eq!(partition(b"subject-1"), partition(b"subject-1"));
        let mut seen = [0u32; PARTITIONS as usize];
        for i in 0..6400 {
            seen[partition(format!("s{i}").as_bytes()) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["qoima", "t_1", "a"] {
            check_schema(ok).unwrap();
        }
        for bad in ["", "Qoima", "1a", "pg_x", "a\"b", "a;drop", &"x".repeat(49)] {
            assert!(check_schema(bad).is_err(), "{bad:?}");
        }
    }
}
