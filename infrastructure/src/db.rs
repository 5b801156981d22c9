//! Connecting to Postgres: creates the database if it is missing and runs the
//! embedded migrations.
//!
//! Every pool connection starts with `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout` from the config, so Postgres itself ends a
//! statement, a lock wait or an abandoned transaction past its limit, even when the
//! client that started it has gone. Connections made outside the pool (migrations
//! here; the advisory-lock sessions of the relay, reconciliation and rebuilds) do not
//! get them, but their making is bounded by `LEDGER_DB_CONNECT_TIMEOUT_MS`
//! ([`session`], [`listener`]).

use crate::config::Config;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `LEDGER_DB_CONNECT_TIMEOUT_MS` of this process, in ms (set when its configuration is
/// read, and by [`connect`]).
static CONNECT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(5000);

/// `LEDGER_DB_MIGRATION_LOCK_TIMEOUT_MS` of this process, in ms (set as above).
static MIGRATION_LOCK_TIMEOUT_MS: AtomicU64 = AtomicU64::new(120_000);

/// `LEDGER_DB_KEEPALIVE_MS` of this process, in ms (set as above; 0: the server's own).
static KEEPALIVE_MS: AtomicU64 = AtomicU64::new(30_000);

/// Sets [`connect_timeout`], the migrator's lock wait and the server's keepalive for
/// this process's sessions (its configuration's).
pub fn set_session_limits(connect: Duration, migration_lock: Duration, keepalive: Duration) {
    CONNECT_TIMEOUT_MS.store(connect.as_millis().max(1) as u64, Ordering::Relaxed);
    MIGRATION_LOCK_TIMEOUT_MS.store(migration_lock.as_millis().max(1) as u64, Ordering::Relaxed);
    KEEPALIVE_MS.store(keepalive.as_millis() as u64, Ordering::Relaxed);
}

/// What makes Postgres notice a client that is gone, for every session of this process:
/// `client_connection_check_interval` ends a running query whose client closed its
/// socket (a query given up and its connection closed stops costing the server), and
/// the TCP keepalive and `tcp_user_timeout` of `LEDGER_DB_KEEPALIVE_MS` end a session
/// whose client went silent, releasing its locks (the advisory ones included).
fn gone_client_limits() -> Vec<(&'static str, String)> {
    let mut limits = vec![("client_connection_check_interval", "1000ms".to_owned())];
    let keepalive = KEEPALIVE_MS.load(Ordering::Relaxed);
    if keepalive > 0 {
        let seconds = keepalive.div_ceil(1000);
        limits.extend([
            ("tcp_keepalives_idle", format!("{seconds}s")),
            ("tcp_keepalives_interval", format!("{}s", seconds.div_ceil(3))),
            ("tcp_keepalives_count", "3".to_owned()),
            ("tcp_user_timeout", format!("{keepalive}ms")),
        ]);
    }
    limits
}

/// How long making a session outside the pools may take.
pub fn connect_timeout() -> Duration {
    Duration::from_millis(CONNECT_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Bounds the making of a session by [`connect_timeout`]: a Postgres that hangs (the
/// socket open, nothing answered) is then an I/O time-out, which callers already treat
/// as Postgres unavailable, never a wait without end.
async fn bounded<T>(connecting: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    within(connect_timeout(), "connecting to Postgres (LEDGER_DB_CONNECT_TIMEOUT_MS)", connecting).await
}

/// Bounds one round trip on a session of its own by `limit`. Such a session gets no
/// TCP keepalive (sqlx sets none), so when the network between it and Postgres goes
/// silent (nothing answered, nothing closed) only the client can notice: past `limit`
/// the round trip is an I/O time-out (`TimedOut`), and the caller must drop the
/// session, whose protocol state is then unknown. A `limit` of 0 is no limit.
pub async fn within<T, E: From<sqlx::Error>>(
    limit: Duration,
    what: &str,
    round_trip: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if limit.is_zero() {
        // A limit of 0 is none, as Postgres reads its own.
        return round_trip.await;
    }
    let mut round_trip = std::pin::pin!(round_trip);
    if let Ok(done) = tokio::time::timeout(limit, &mut round_trip).await {
        return done;
    }
    Err(E::from(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {} ms", limit.as_millis()),
    ))))
}

/// The pools' `after_release`: sqlx tests every connection given back with a ping that
/// has no bound, so a connection cut off by a silent network (a query on it given up,
/// or one given back just as the network went silent) would hold its pool slot until
/// the kernel gives up on it (`tcp_retries2`, about 15 minutes), and enough of them
/// would leave the pool empty. So a connection given back must first answer a ping
/// within [`connect_timeout`], or is closed. That costs a round trip per release (sqlx's
/// own ping then answers at once); only checking after a wait was given up missed the
/// connections given back at the moment of the cut (docs/PERFORMANCE.md).
fn released(
    conn: &mut sqlx::PgConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        within(connect_timeout(), "a connection given back to its pool", conn.ping()).await?;
        Ok(true)
    })
}

/// Closes a session of its own, waiting at most a second: a session whose network went
/// silent is dropped instead (its server ends it by its own limits).
pub async fn close_within(conn: sqlx::PgConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
}

/// A session of its own (an advisory lock's, the relay leader's), bounded in the making.
pub async fn session(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options(gone_client_limits());
    bounded(options.connect()).await
}

/// A `LISTEN` session, bounded in the making.
pub async fn listener(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    bounded(sqlx::postgres::PgListener::connect(url)).await
}

/// How long a `LISTEN` session may stay silent before [`next_notification`] asks it
/// whether it still answers.
pub const LISTEN_QUIET: Duration = Duration::from_secs(10);

/// The next notification on `listener`. A listener only receives, so a network gone
/// silent would leave it waiting for ever: after [`LISTEN_QUIET`] without one, the
/// session must answer a `select 1` within [`connect_timeout`], or this is an I/O
/// time-out and the caller makes a new listener.
pub async fn next_notification(
    listener: &mut sqlx::postgres::PgListener,
) -> Result<sqlx::postgres::PgNotification, sqlx::Error> {
    loop {
        if let Ok(n) = tokio::time::timeout(LISTEN_QUIET, listener.recv()).await {
            return n;
        }
        still_answers(listener).await?;
    }
}

/// Whether a quiet `LISTEN` session still answers: a `select 1` within
/// [`connect_timeout`], or an I/O time-out.
pub async fn still_answers(listener: &mut sqlx::postgres::PgListener) -> Result<(), sqlx::Error> {
    let ping = sqlx::query("select 1").execute(&mut *listener);
    within(connect_timeout(), "a quiet LISTEN session's answer", ping).await.map(drop)
}

/// Has `listener` listen to this ledger's channels named `bases` (see [`scoped_name`]),
/// each step within [`connect_timeout`]; returns their names, in order.
pub async fn listen_to(listener: &mut sqlx::postgres::PgListener, bases: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let limit = connect_timeout();
    let mut channels = Vec::with_capacity(bases.len());
    for base in bases {
        channels.push(within(limit, "naming a channel", scoped_name(&mut *listener, base)).await?);
    }
    within(limit, "LISTEN", listener.listen_all(channels.iter().map(String::as_str))).await?;
    Ok(channels)
}

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let admin = options.clone().database("postgres");
    let mut conn = bounded(admin.connect()).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let sql = format!("create database \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            // Another process may have created it at the same moment.
            let raced = e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e);
            }
        }
    }
    conn.close().await
}

/// The session limits of a pool connection, as Postgres settings (0 disables one).
fn session_limits(config: &Config) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut limits = vec![
        ("statement_timeout", ms(config.db_statement_timeout)),
        ("lock_timeout", ms(config.db_lock_timeout)),
        ("idle_in_transaction_session_timeout", ms(config.db_idle_in_transaction_timeout)),
    ];
    limits.extend(gone_client_limits());
    limits
}

/// Connects a bounded pool (size and acquire timeout from the config) whose
/// connections carry the config's statement, lock-wait and idle-transaction limits.
pub async fn connect(config: &Config) -> Result<PgPool, sqlx::Error> {
    set_session_limits(config.db_connect_timeout, config.db_migration_lock_timeout, config.db_keepalive);
    let options = PgConnectOptions::from_str(&config.database_url)?.options(session_limits(config));
    PgPoolOptions::new()
        .max_connections(config.db_pool_max)
        .acquire_timeout(config.db_acquire_timeout)
        .after_release(released)
        .connect_with(options)
        .await
}

/// A pool like [`connect`]'s, of `max_connections`, on `url` (a read replica, or the
/// primary for a worker that must not share the main pool), connecting on first use.
pub fn connect_lazy(url: &str, config: &Config, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options(session_limits(config));
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.db_acquire_timeout)
        .after_release(released)
        // Idle connections go: a ledger or a worker that is quiet holds none.
        .idle_timeout(Some(Duration::from_secs(30)))
        .connect_lazy_with(options))
}

/// A pool of `max_connections` on the server and session settings of `pool`, whose
/// sessions always use a statement's generic plan (`plan_cache_mode`), connecting on
/// first use: only for statements whose plan cannot depend on their parameters (a
/// probe per key: `join lateral (… offset 0)`). Postgres plans such a statement over
/// `unnest($1)` again on every execution, as the custom plan over a few keys looks
/// cheaper than the generic one; the writer's idempotency look-up cost more to plan
/// than to run (docs/PERFORMANCE.md). Not for joins: a generic plan of one, made while
/// a table was small, read a whole table on every execution (snapshots, 20 ms a call).
pub fn generic_plans(pool: &PgPool, config: &Config, max_connections: u32) -> PgPool {
    // And never a sequential scan: a generic plan made while the table was a few pages
    // (a new ledger, or one whose keys were all swept) would scan it for every key
    // until the next analyze, however large it had grown meanwhile.
    let options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.db_acquire_timeout)
        .after_release(released)
        .idle_timeout(Some(Duration::from_secs(30)))
        .connect_lazy_with(options)
}

/// Runs the migrations on a connection of their own, without the pool's statement
/// limit: a migration may build an index on a large table for longer than any request
/// may take. The migrator waits on its advisory lock while another instance migrates,
/// at most `LEDGER_DB_MIGRATION_LOCK_TIMEOUT_MS` (so does every lock a migration takes).
pub async fn migrate(database_url: &str) -> Result<(), sqlx::Error> {
    let lock_wait = format!("{}ms", MIGRATION_LOCK_TIMEOUT_MS.load(Ordering::Relaxed));
    // A pool of one rather than a connection: the migrator's future over `&mut
    // PgConnection` is not `Send` for every lifetime, and ledgers are migrated from
    // request handlers and spawned tasks.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout())
        .connect_with(
            PgConnectOptions::from_str(database_url)?
                .options([("lock_timeout", lock_wait)])
                .options(gone_client_limits()),
        )
        .await?;
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    Ok(migrated?)
}

/// The name Postgres knows `base` by in this connection's ledger: notification channels
/// and advisory-lock keys are shared by a whole database, so each ledger's schema gets
/// its own (migration 0022's `ledger_scoped`; `public` keeps the names unchanged).
pub async fn scoped_name<'e, E>(executor: E, base: &str) -> Result<String, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_scalar("select ledger_scoped($1)").bind(base).fetch_one(executor).await
}

/// Creates the database if needed, connects and migrates.
pub async fn connect_and_migrate(config: &Config) -> Result<PgPool, sqlx::Error> {
    ensure_database(&config.database_url).await?;
    let pool = connect(config).await?;
    migrate(&config.database_url).await?;
    Ok(pool)
}
