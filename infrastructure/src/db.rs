//! Connecting to Postgres: creates the database if it is missing and runs the
//! embedded migrations.

use crate::config::Config;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let admin = options.clone().database("postgres");
    let mut conn = admin.connect().await?;
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

/// Connects a bounded pool (size and acquire timeout from the config).
pub async fn connect(config: &Config) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(&config.database_url)?;
    PgPoolOptions::new()
        .max_connections(config.db_pool_max)
        .acquire_timeout(config.db_acquire_timeout)
        .connect_with(options)
        .await
}

/// Creates the database if needed, connects and migrates.
pub async fn connect_and_migrate(config: &Config) -> Result<PgPool, sqlx::Error> {
    ensure_database(&config.database_url).await?;
    let pool = connect(config).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
