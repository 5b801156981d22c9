//! Shared pieces of `ledger-bench`: the throw-away database each mode runs in, the
//! bulk log generator and latency statistics.

pub mod loggen;
pub mod queries;
pub mod reads;
pub mod rebuild;
pub mod stats;
pub mod temporal;
pub mod tree;

use anyhow::{Context, bail};
use ledger_infrastructure::{Config, EventStore, connect_and_migrate};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// What every mode is given.
#[derive(Clone, Debug)]
pub struct Params {
    pub events: u64,
    pub log_accounts: u64,
    pub accounts: u64,
    pub transactions: u64,
    pub stream_events: u64,
    pub batch_commits: usize,
    pub iterations: usize,
    pub snapshot_interval: i64,
    pub concurrency: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// Checks that `base` is `postgres://[user[:password]@]host[:port]` with a loopback
/// host, and returns it without a trailing slash.
pub fn check_base_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let rest = base
        .strip_prefix("postgres://")
        .or_else(|| base.strip_prefix("postgresql://"))
        .context("the database URL base must start with postgres:// or postgresql://")?;
    if rest.contains(['/', '?', '#']) {
        bail!("the database URL base must not name a database or carry options: {base}");
    }
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("benchmarks run only against a loopback Postgres, not {host:?}");
    }
    Ok(base.to_owned())
}

/// A fresh database for one mode: created and migrated by the library itself.
pub struct BenchDb {
    pub url: String,
    pub pool: PgPool,
    pub store: EventStore,
}

impl BenchDb {
    /// Creates and migrates the database at `url` with a 16-connection pool.
    pub async fn create(url: &str, name: &str) -> anyhow::Result<BenchDb> {
        let mut config = Config::for_tests(url, name);
        config.db_pool_max = 16;
        // 64 concurrent readers share 16 connections: waiting for one is part of the
        // measured latency, failing after 3 s is not wanted.
        config.db_acquire_timeout = Duration::from_secs(60);
        let pool = connect_and_migrate(&config).await.context("creating and migrating the bench database")?;
        Ok(BenchDb { url: url.to_owned(), store: EventStore::new(pool.clone()), pool })
    }

    pub async fn close(self) {
        self.pool.close().await;
    }

    /// `vacuum (analyze)` of the given tables, as autovacuum would have done by the
    /// time anyone reads a log this size. Returns the seconds it took.
    pub async fn vacuum_analyze(&self, tables: &[&'static str]) -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        for table in tables {
            let sql = match *table {
                "events" => "vacuum (analyze) events",
                "stream_entries" => "vacuum (analyze) stream_entries",
                "accounts_view" => "vacuum (analyze) accounts_view",
                "snapshots" => "vacuum (analyze) snapshots",
                "transactions_view" => "vacuum (analyze) transactions_view",
                "account_entries" => "vacuum (analyze) account_entries",
                other => bail!("no vacuum statement for {other}"),
            };
            sqlx::raw_sql(sql).execute(&self.pool).await.context(sql)?;
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Size of a relation (table or index) in MiB.
    pub async fn relation_mb(&self, relation: &str) -> anyhow::Result<f64> {
        let bytes: i64 = sqlx::query_scalar("select pg_total_relation_size($1::regclass)")
            .bind(relation)
            .fetch_one(&self.pool)
            .await?;
        Ok(round(bytes as f64 / (1024.0 * 1024.0), 1))
    }
}

/// Drops the database `name` (terminating any connection still open to it).
pub async fn drop_database(base: &str, name: &str) -> anyhow::Result<()> {
    if !name.starts_with("ledger_bench_") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("refusing to drop {name:?}: not a bench database");
    }
    let mut conn = PgConnectOptions::from_str(&format!("{base}/postgres"))?.connect().await?;
    let sql = format!("drop database if exists \"{name}\" with (force)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.with_context(|| format!("dropping {name}"))?;
    sqlx::Connection::close(conn).await?;
    Ok(())
}

/// Facts about the server and the machine that help read the numbers.
pub async fn environment(base: &str) -> anyhow::Result<serde_json::Value> {
    let mut conn = PgConnectOptions::from_str(&format!("{base}/postgres"))?.connect().await?;
    let version: String = sqlx::query_scalar("select version()").fetch_one(&mut conn).await?;
    let shared_buffers: String = sqlx::query_scalar("show shared_buffers").fetch_one(&mut conn).await?;
    let sync_commit: String = sqlx::query_scalar("show synchronous_commit").fetch_one(&mut conn).await?;
    sqlx::Connection::close(conn).await?;
    Ok(serde_json::json!({
        "postgres": version,
        "shared_buffers": shared_buffers,
        "synchronous_commit": sync_commit,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    }))
}

/// The 1-minute load average (other work on the machine skews the numbers).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// `x` rounded to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Events (or operations) per second.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { round(count as f64 / seconds, 1) } else { 0.0 }
}

/// CPU time used so far by this process and by every process named `postgres` (the
/// whole server: other databases' clients, the WAL writer and the checkpointer too,
/// and not the backends that exited meanwhile), from /proc in USER_HZ (100 per s).
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    client_s: f64,
    server_s: f64,
}

fn stat_cpu_s(stat: &str) -> Option<(&str, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); field 3 is the first after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((stat.get(open + 1..close)?, ticks / 100.0))
}

impl Cpu {
    pub fn now() -> Cpu {
        let client_s = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_cpu_s(&s).map(|(_, t)| t));
        let mut server_s = 0.0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
                    && let Some(("postgres", t)) = stat_cpu_s(&stat)
                {
                    server_s += t;
                }
            }
        }
        Cpu { client_s: client_s.unwrap_or(0.0), server_s }
    }

    /// CPU seconds used since `self` by this process and by Postgres.
    pub fn delta(self) -> (f64, f64) {
        let now = Cpu::now();
        (now.client_s - self.client_s, now.server_s - self.server_s)
    }

    /// [`Cpu::delta`] as JSON, in seconds.
    pub fn since(self) -> serde_json::Value {
        let (client, server) = self.delta();
        serde_json::json!({ "client_cpu_s": round(client, 2), "postgres_cpu_s": round(server, 2) })
    }

    /// [`Cpu::delta`] as JSON, in ms per operation.
    pub fn per_op_ms(self, ops: usize) -> serde_json::Value {
        let (client, server) = self.delta();
        let per = |s: f64| round(s * 1000.0 / ops.max(1) as f64, 2);
        serde_json::json!({ "client_cpu_ms_per_op": per(client), "postgres_cpu_ms_per_op": per(server) })
    }
}
