//! Ledgers: independent books in one deployment (API.md "Ledgers").
//!
//! A ledger's tables live in a Postgres schema of its own on one shard (a Postgres
//! primary of `LEDGER_SHARDS`); the ledger `default` keeps `public` on the first
//! shard, so what was written before ledgers existed is its log, unchanged. Every
//! connection a ledger's components open carries the schema as its `search_path` (in
//! the URL, see [`scoped_url`]), so a query of one ledger cannot name another's rows:
//! the isolation is in where a connection points, not in a predicate each query must
//! remember. Channels and advisory locks, which Postgres shares per database, are
//! scoped by `ledger_scoped` (migration 0022).
//!
//! The directory is the log of `default`: one `LedgerCreated` event per ledger, one
//! stream per name (so a name is created once), read by [`find`] and [`list`].

use crate::EventStore;
use crate::config::Config;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use ledger_domain::access::{DEFAULT_LEDGER, valid_ledger_name};

/// The schema of the ledger `default`.
pub const DEFAULT_SCHEMA: &str = "public";

/// The name of the one shard a deployment without `LEDGER_SHARDS` has.
pub const FIRST_SHARD: &str = "main";

/// A Postgres primary ledgers are placed on, and its streaming replica if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    pub url: String,
    pub read_url: Option<String>,
}

impl Shard {
    /// Parses `LEDGER_SHARDS` (`name=url,…`) and `LEDGER_SHARD_READ_URLS` (same form,
    /// naming shards of the first list). Names follow the rules of ledger names.
    pub fn parse_list(shards: Option<&str>, read_urls: Option<&str>) -> Result<Vec<Shard>, String> {
        let pairs = |raw: &str| -> Result<Vec<(String, String)>, String> {
            raw.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((name, url)) if valid_ledger_name(name.trim()) && !url.trim().is_empty() => {
                        Ok((name.trim().to_owned(), url.trim().to_owned()))
                    }
                    _ => Err(format!("{p:?} is not name=postgres://… with a name of [a-z0-9-]")),
                })
                .collect()
        };
        let listed = shards;
        let mut shards: Vec<Shard> = Vec::new();
        for (name, url) in pairs(listed.unwrap_or(""))? {
            if shards.iter().any(|s| s.name == name) {
                return Err(format!("shard {name} is listed twice"));
            }
            shards.push(Shard { name, url, read_url: None });
        }
        for (name, url) in pairs(read_urls.unwrap_or(""))? {
            let shard = shards.iter_mut().find(|s| s.name == name).ok_or_else(|| format!("no shard {name}"))?;
            shard.read_url = Some(url);
        }
        Ok(shards)
    }
}

/// The schema a ledger's tables live in: `l_{up to 9 characters of the name}_{128 bits
/// of sha256 of the name}`, at most 44 bytes (so every scoped channel name stays within
/// Postgres' 63). The hash, not the readable part, keeps names apart; the directory
/// also refuses a schema a ledger already has (`events_ledger_created_schema`).
pub fn schema_for(name: &str) -> String {
    if name == DEFAULT_LEDGER {
        return DEFAULT_SCHEMA.to_owned();
    }
    let readable: String = name.chars().take(9).map(|c| if c == '-' { '_' } else { c }).collect();
    let digest = Sha256::digest(format!("ledger-schema:{name}").as_bytes());
    format!("l_{readable}_{}", &hex::encode(digest)[..32])
}

/// `url` with every connection's `search_path` set to `schema`.
pub fn scoped_url(url: &str, schema: &str) -> String {
    if schema == DEFAULT_SCHEMA {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

/// A ledger's stream id in the directory, derived from its name so each name is
/// created once.
pub fn ledger_id(name: &str) -> Uuid {
    let digest = Sha256::digest(format!("ledger-ledger:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// A ledger of the directory.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerRecord {
    pub name: String,
    pub shard: String,
    pub schema: String,
    pub metadata: Option<serde_json::Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl LedgerRecord {
    /// The configuration of this ledger's components: `base` pointed at its shard and
    /// schema, with NATS names of its own. `None` if its shard is not configured.
    pub fn config(&self, base: &Config) -> Option<Config> {
        if self.name == DEFAULT_LEDGER {
            return Some(base.clone());
        }
        let shard = base.shards.iter().find(|s| s.name == self.shard)?;
        let mut config = base.clone();
        config.database_url = scoped_url(&shard.url, &self.schema);
        config.database_read_url = shard.read_url.as_deref().map(|u| scoped_url(u, &self.schema));
        config.nats_prefix = format!("{}-{}", base.nats_prefix, self.name);
        config.ledger = self.name.clone();
        config.db_pool_max = base.ledger_db_pool_max;
        config.webhook_db_pool_max = base.webhook_db_pool_max.min(1);
        Some(config)
    }
}

/// The ledger `default`: on the first shard, in `public`, created with the database.
pub async fn default_record(home: &EventStore, config: &Config) -> Result<LedgerRecord, sqlx::Error> {
    let created_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select min(installed_on) from _sqlx_migrations").fetch_one(home.pool()).await?;
    Ok(LedgerRecord {
        name: DEFAULT_LEDGER.to_owned(),
        shard: config.shards.first().map_or(FIRST_SHARD, |s| s.name.as_str()).to_owned(),
        schema: DEFAULT_SCHEMA.to_owned(),
        metadata: None,
        created_at: created_at.unwrap_or_else(chrono::Utc::now),
    })
}

fn record(data: serde_json::Value, created_at: chrono::DateTime<chrono::Utc>) -> Option<LedgerRecord> {
    let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some(LedgerRecord {
        name: text("name")?,
        shard: text("shard")?,
        schema: text("schema")?,
        metadata: data.get("metadata").cloned().filter(|m| !m.is_null()),
        created_at,
    })
}

/// The ledger named `name` (not `default`), as the directory has it now.
pub async fn find(home: &EventStore, name: &str) -> Result<Option<LedgerRecord>, sqlx::Error> {
    let row: Option<(serde_json::Value, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select data, recorded_at from events where type = 'LedgerCreated' and data ->> 'name' = $1")
            .bind(name)
            .fetch_optional(home.pool())
            .await?;
    Ok(row.and_then(|(data, at)| record(data, at)))
}

/// Every ledger of the directory but `default`, oldest first.
pub async fn list(home: &EventStore) -> Result<Vec<LedgerRecord>, sqlx::Error> {
    let rows: Vec<(serde_json::Value, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select data, recorded_at from events where type = 'LedgerCreated' order by position")
            .fetch_all(home.pool())
            .await?;
    Ok(rows.into_iter().filter_map(|(data, at)| record(data, at)).collect())
}

/// The ledgers other than `default`, as the runs of `default`'s reconciliation ask
/// them whether a statement line is theirs: one small pool per shard, made on first use.
pub struct Elsewhere {
    home: EventStore,
    config: Config,
    pools: std::sync::Mutex<std::collections::HashMap<String, sqlx::PgPool>>,
    /// The directory, read once per run.
    others: tokio::sync::OnceCell<Vec<LedgerRecord>>,
}

/// Whether `id` is a withdrawal (its `WithdrawalRequested`) in the ledger of `pool`, or
/// of the schema named (on a pool of its shard).
pub async fn is_withdrawal(pool: &sqlx::PgPool, schema: Option<&str>, id: Uuid) -> Result<bool, sqlx::Error> {
    // The schema name is ours ([a-z0-9_]), never a client's string.
    let prefix = schema.map_or_else(String::new, |s| format!("{s}."));
    let sql = format!(
        "select exists (select 1 from {prefix}stream_entries s join {prefix}events e on e.position = s.position
                        where s.stream_id = $1 and s.version = 1 and e.type = 'WithdrawalRequested')"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await
}

impl Elsewhere {
    /// Over the directory of `home` (the store of `default`), placed as `config` says.
    pub fn new(home: EventStore, config: &Config) -> Elsewhere {
        Elsewhere { home, config: config.clone(), pools: std::sync::Mutex::default(), others: Default::default() }
    }

    fn pool(&self, shard: &str) -> Result<Option<sqlx::PgPool>, sqlx::Error> {
        if self.config.shards.first().is_none_or(|s| s.name == shard) {
            return Ok(Some(self.home.pool().clone()));
        }
        let Some(url) = self.config.shards.iter().find(|s| s.name == shard).map(|s| s.url.clone()) else {
            return Ok(None);
        };
        let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = pools.get(shard) {
            return Ok(Some(p.clone()));
        }
        let pool = crate::db::connect_lazy(&url, &self.config, 2)?;
        pools.insert(shard.to_owned(), pool.clone());
        Ok(Some(pool))
    }

    /// Whether `id` is a withdrawal of another ledger. A shard that does not answer
    /// (within the pool's acquire time-out) is an error: the caller cannot tell.
    pub async fn has_withdrawal(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let others = self.others.get_or_try_init(|| list(&self.home)).await?;
        for record in others {
            let Some(pool) = self.pool(&record.shard)? else { continue };
            if is_withdrawal(&pool, Some(&record.schema), id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// How long making a ledger's schema whole may take, connecting included (a shard that
/// accepts connections and never answers must not hold a caller for ever).
pub const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a ledger's schema could not be made whole.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the shard did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("the schema {0} of this ledger is missing on its shard (a dropped or misnamed database?)")]
    Missing(String),
}

/// Migrates an existing ledger's schema (what each process does at the ledger's first
/// use). Creates nothing: a shard whose database or schema is gone is an error, never a
/// silently empty ledger.
pub async fn prepare_existing(shard_url: &str, schema: &str) -> Result<(), PrepareError> {
    let work = async {
        if schema != DEFAULT_SCHEMA {
            use sqlx::Connection;
            let mut conn = crate::db::session(shard_url).await?;
            let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_namespace where nspname = $1)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            if !exists {
                return Err(PrepareError::Missing(schema.to_owned()));
            }
        }
        Ok(crate::db::migrate(&scoped_url(shard_url, schema)).await?)
    };
    tokio::time::timeout(PREPARE_TIMEOUT, work).await.unwrap_or(Err(PrepareError::TimedOut(PREPARE_TIMEOUT)))
}

/// Creates a ledger's schema on its shard (the database too, if missing) and migrates
/// it. Idempotent: a ledger whose creation was cut short, or a deployment upgraded to
/// new migrations, is made whole by running it again.
pub async fn prepare(shard_url: &str, schema: &str) -> Result<(), PrepareError> {
    tokio::time::timeout(PREPARE_TIMEOUT, create_and_migrate(shard_url, schema))
        .await
        .unwrap_or(Err(PrepareError::TimedOut(PREPARE_TIMEOUT)))
}

async fn create_and_migrate(shard_url: &str, schema: &str) -> Result<(), PrepareError> {
    crate::db::ensure_database(shard_url).await?;
    if schema != DEFAULT_SCHEMA {
        use sqlx::Connection;
        let mut conn = crate::db::session(shard_url).await?;
        // The schema name is ours ([a-z0-9_]), never a client's string.
        debug_assert!(schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        let created =
            sqlx::query(sqlx::AssertSqlSafe(format!("create schema if not exists {schema}"))).execute(&mut conn).await;
        let _ = conn.close().await;
        if let Err(e) = created {
            // Two processes creating it at once: one wins, the other finds it.
            let raced = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "23505" || c == "42P06");
            if !raced {
                return Err(e.into());
            }
        }
    }
    Ok(crate::db::migrate(&scoped_url(shard_url, schema)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_short_distinct_and_plain() {
        let long = "a".repeat(63);
        for name in ["acme", "a-b", "a", long.as_str(), "x1-2-3"] {
            let s = schema_for(name);
            assert!(s.len() <= 44 && "ledger_projection@".len() + s.len() <= 63, "{s}");
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_ne!(schema_for(&"a".repeat(30)), schema_for(&"a".repeat(31)));
        // 128 bits of hash: no two of many similar names share a schema.
        let many: std::collections::HashSet<String> =
            (0..200_000).map(|i| schema_for(&format!("collide-xxxxxxxxxxxxxxxx{i}"))).collect();
        assert_eq!(many.len(), 200_000);
        assert_eq!(schema_for("default"), "public");
    }

    #[test]
    fn shard_lists_parse_or_say_why_not() {
        let shards = Shard::parse_list(
            Some("main=postgres://a/x?sslmode=disable, two=postgres://b/y"),
            Some("two=postgres://r/y"),
        )
        .expect("two shards");
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].url, "postgres://a/x?sslmode=disable");
        assert_eq!(shards[1].read_url.as_deref(), Some("postgres://r/y"));
        assert!(Shard::parse_list(Some("main=x,main=y"), None).is_err());
        assert!(Shard::parse_list(Some("Main=x"), None).is_err());
        assert!(Shard::parse_list(Some("main=x"), Some("other=y")).is_err());
        assert!(Shard::parse_list(Some("nourl"), None).is_err());
    }

    #[test]
    fn scoped_urls_keep_their_query() {
        assert_eq!(scoped_url("postgres://h/db", "l_a_1"), "postgres://h/db?options[search_path]=l_a_1");
        assert_eq!(scoped_url("postgres://h/db?x=1", "s"), "postgres://h/db?x=1&options[search_path]=s");
        assert_eq!(scoped_url("postgres://h/db", "public"), "postgres://h/db");
    }
}
