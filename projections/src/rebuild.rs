//! Rebuilding a projection without downtime (blue-green): the projection is built
//! into fresh `*_rebuild` tables straight from the Postgres log in large batches while
//! the live tables keep answering; once caught up, one short transaction holds the
//! projection's checkpoint (pausing its live worker), applies the last events, renames
//! the new tables into place and moves the checkpoint; then the old tables are dropped.

use crate::accounts::Known;
use crate::apply::{ApplyError, Projection, Tables};
use ledger_infrastructure::EventStore;
use sqlx::{Connection, PgConnection, PgPool};

/// Events per rebuild batch.
pub const REBUILD_BATCH_MAX: i64 = 20_000;

/// Why a rebuild did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(&'static str),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        RebuildError::Apply(ApplyError::Database(e))
    }
}

/// Holds the per-projection rebuild lock for as long as it lives.
pub struct RebuildLock {
    conn: PgConnection,
    projection: Projection,
}

impl RebuildLock {
    /// Takes the rebuild lock of `projection`, or says a rebuild is already running.
    pub async fn acquire(database_url: &str, projection: Projection) -> Result<RebuildLock, RebuildError> {
        let mut conn = ledger_infrastructure::db::session(database_url).await?;
        let try_lock = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1), ledger_lock_key())")
            .bind(format!("ledger-rebuild:{}", projection.name()));
        let limit = ledger_infrastructure::db::connect_timeout();
        let got: bool =
            ledger_infrastructure::db::within(limit, "taking a rebuild's lock", try_lock.fetch_one(&mut conn)).await?;
        if !got {
            return Err(RebuildError::AlreadyRunning(projection.name()));
        }
        Ok(RebuildLock { conn, projection })
    }

    /// Runs the rebuild; `progress(done, target)` after each batch. Returns the
    /// position the new tables were switched in at.
    pub async fn rebuild(self, pool: &PgPool, mut progress: impl FnMut(i64, i64)) -> Result<i64, RebuildError> {
        let result = rebuild(pool, self.projection, &mut progress).await;
        if result.is_err() {
            let _ = sqlx::query(
                "update projection_checkpoints set status = 'running', rebuild_position = null where name = $1",
            )
            .bind(self.projection.name())
            .execute(pool)
            .await;
        }
        ledger_infrastructure::db::close_within(self.conn).await;
        result
    }
}

async fn rebuild(
    pool: &PgPool,
    projection: Projection,
    progress: &mut impl FnMut(i64, i64),
) -> Result<i64, RebuildError> {
    let name = projection.name();
    for table in projection.tables() {
        let fresh = Tables::REBUILD.name(table);
        sqlx::query(sqlx::AssertSqlSafe(format!("drop table if exists {fresh}"))).execute(pool).await?;
        // Insert-only tables get their indexes after the bulk load (much faster than
        // maintaining them row by row); the others need them while rows are updated.
        let copy =
            if INDEXED_LATER.contains(table) { "including defaults including constraints" } else { "including all" };
        sqlx::query(sqlx::AssertSqlSafe(format!("create table {fresh} (like {table} {copy})"))).execute(pool).await?;
    }
    let mut head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(pool).await?;
    sqlx::query(
        "update projection_checkpoints set status = 'rebuilding', rebuild_position = 0, rebuild_target = $2 where name = $1",
    )
    .bind(name)
    .bind(head)
    .execute(pool)
    .await?;
    let mut done = 0i64;
    // Catch up in large batches, chasing the head, without blocking the live worker.
    while done < head {
        let up_to = (done + REBUILD_BATCH_MAX).min(head);
        let mut tx = pool.begin().await?;
        let events = EventStore::read_range(&mut *tx, done, up_to).await?;
        projection.apply(&mut tx, &Tables::REBUILD, &events, &mut Known::new()).await?;
        sqlx::query("update projection_checkpoints set rebuild_position = $2, rebuild_target = $3 where name = $1")
            .bind(name)
            .bind(up_to)
            .bind(head)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done = up_to;
        progress(done, head);
        if done == head {
            head = sqlx::query_scalar("select position from log_head").fetch_one(pool).await?;
        }
    }
    for table in projection.tables().iter().filter(|t| INDEXED_LATER.contains(t)) {
        copy_indexes(pool, table).await?;
    }
    switch(pool, projection, done).await
}

/// Tables written only by inserts during a rebuild: indexed after the load.
const INDEXED_LATER: [&str; 2] = ["account_entries", "transactions_view"];

/// Gives `{table}_rebuild` the indexes (and primary key) of `table`. Index names
/// alternate between `name` and `name_rb` from one rebuild to the next, so they never
/// collide with the live table's.
async fn copy_indexes(pool: &PgPool, table: &str) -> Result<(), RebuildError> {
    let fresh = Tables::REBUILD.name(table);
    // The ledger's own schema (its sessions' `search_path`: `public` for `default`), as
    // `pg_get_indexdef` names the table, qualified.
    let indexes: Vec<(String, String, bool, String, String)> = sqlx::query_as(
        "select i.relname::text, pg_get_indexdef(i.oid), x.indisprimary,
                quote_ident(current_schema()) || '.' || quote_ident($1),
                quote_ident(current_schema()) || '.' || quote_ident($2)
         from pg_index x
         join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
         where t.relname = $1 and t.relnamespace = current_schema()::regnamespace",
    )
    .bind(table)
    .bind(&fresh)
    .fetch_all(pool)
    .await?;
    for (name, definition, primary, live, rebuilt) in indexes {
        let renamed = name.strip_suffix("_rb").map_or_else(|| format!("{name}_rb"), str::to_owned);
        let on_live = format!(" ON {live} ");
        if !definition.contains(&on_live) {
            return Err(sqlx::Error::Protocol(format!("an index of {live} not defined on it: {definition}")).into());
        }
        let sql = definition.replacen(&format!("INDEX {name} ON"), &format!("INDEX {renamed} ON"), 1).replacen(
            &on_live,
            &format!(" ON {rebuilt} "),
            1,
        );
        // Building an index over a long log may take longer than the pool's statement
        // timeout allows an ordinary statement: this one alone runs without it.
        let mut tx = pool.begin().await?;
        sqlx::query("set local statement_timeout = 0").execute(&mut *tx).await?;
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        if primary {
            let sql = format!("alter table {fresh} add constraint {renamed} primary key using index {renamed}");
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The atomic switch: pause the live worker (checkpoint row lock), apply what came
/// since, rename the new tables in, move the checkpoint.
async fn switch(pool: &PgPool, projection: Projection, mut done: i64) -> Result<i64, RebuildError> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    sqlx::query("select position from projection_checkpoints where name = $1 for update")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&mut *tx).await?;
    while done < head {
        let up_to = (done + REBUILD_BATCH_MAX).min(head);
        let events = EventStore::read_range(&mut *tx, done, up_to).await?;
        projection.apply(&mut tx, &Tables::REBUILD, &events, &mut Known::new()).await?;
        done = up_to;
    }
    for table in projection.tables() {
        let (fresh, old) = (Tables::REBUILD.name(table), format!("{table}_old"));
        sqlx::query(sqlx::AssertSqlSafe(format!("drop table if exists {old}"))).execute(&mut *tx).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("alter table {table} rename to {old}"))).execute(&mut *tx).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("alter table {fresh} rename to {table}"))).execute(&mut *tx).await?;
    }
    sqlx::query(
        "update projection_checkpoints set position = $2, status = 'running', rebuild_position = null,
                rebuild_target = null, updated_at = now() where name = $1",
    )
    .bind(name)
    .bind(done)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select pg_notify(ledger_scoped('ledger_projection'), $1)")
        .bind(format!("{name}:{done}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for table in projection.tables() {
        sqlx::query(sqlx::AssertSqlSafe(format!("drop table if exists {table}_old"))).execute(pool).await?;
    }
    Ok(done)
}

/// A process that died mid-rebuild leaves its projection marked `rebuilding` and its
/// `*_rebuild` tables behind; the live tables were never touched. Whoever can take a
/// projection's rebuild lock knows no rebuild is running and clears that state.
pub async fn recover_interrupted(pool: &PgPool, database_url: &str) -> Result<(), RebuildError> {
    for projection in Projection::ALL {
        let Ok(lock) = RebuildLock::acquire(database_url, projection).await else { continue };
        let cleared = sqlx::query(
            "update projection_checkpoints set status = 'running', rebuild_position = null, rebuild_target = null
             where name = $1 and status = 'rebuilding'",
        )
        .bind(projection.name())
        .execute(pool)
        .await?;
        if cleared.rows_affected() > 0 {
            tracing::warn!(projection = projection.name(), "cleared an interrupted rebuild");
            for table in projection.tables() {
                let fresh = Tables::REBUILD.name(table);
                sqlx::query(sqlx::AssertSqlSafe(format!("drop table if exists {fresh}"))).execute(pool).await?;
            }
        }
        let _ = lock.conn.close().await;
    }
    Ok(())
}
