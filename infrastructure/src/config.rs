//! One `Config` read from environment variables with documented defaults. Every limit
//! the service enforces lives here, named `*_max` or with its unit last.

use std::time::Duration;

/// The service's configuration. Tests build it with [`Config::for_tests`] and set fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`: Postgres; the database is created if missing.
    pub database_url: String,
    /// `NATS_URL` (several servers of a cluster may be listed, comma-separated).
    pub nats_url: String,
    /// `LEDGER_NATS_PREFIX`: prefixes every stream, consumer and subject.
    pub nats_prefix: String,
    /// `LEDGER_NATS_REPLICAS` (default 1): replicas of the JetStream stream (3 in a cluster).
    pub nats_replicas: usize,
    /// `LEDGER_HTTP_ADDR`.
    pub http_addr: String,
    /// `LEDGER_METRICS_ADDR` (unset by default): where `ledger worker`, which has no
    /// HTTP API, serves `/metrics` and `/health/live`.
    pub metrics_addr: Option<String>,
    /// `LEDGER_ADMIN_TOKEN`: accepted as an admin token.
    pub admin_token: Option<String>,
    /// `LEDGER_PROVIDER_URL`.
    pub provider_url: String,
    /// `LEDGER_IDEMPOTENCY_TTL` (seconds, default 24h).
    pub idempotency_ttl: Duration,
    /// `LEDGER_CONSISTENCY_WAIT_MS` (default 2000).
    pub consistency_wait: Duration,
    /// `LEDGER_DB_POOL_MAX` (default 16).
    pub db_pool_max: u32,
    /// `LEDGER_DB_ACQUIRE_TIMEOUT_MS` (default 3000): a command fails fast instead of hanging.
    pub db_acquire_timeout: Duration,
    /// `LEDGER_DB_STATEMENT_TIMEOUT_MS` (default 30000; 0 disables): Postgres cancels a
    /// statement of a pool connection running longer, even if its client has gone (a
    /// request dropped by its time-out does not stop its query). Migrations run on a
    /// connection of their own without it.
    pub db_statement_timeout: Duration,
    /// `LEDGER_DB_LOCK_TIMEOUT_MS` (default 10000; 0 disables): a pool connection's
    /// statement waiting longer for a lock (a row, a table, an advisory lock) fails.
    pub db_lock_timeout: Duration,
    /// `LEDGER_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` (default 60000; 0 disables): Postgres
    /// ends a pool connection's session whose transaction sat idle longer, releasing its locks.
    pub db_idle_in_transaction_timeout: Duration,
    /// `LEDGER_BODY_BYTES_MAX` (default 64 KiB).
    pub body_bytes_max: usize,
    /// `LEDGER_REQUEST_TIMEOUT_MS` (default 10000).
    pub request_timeout: Duration,
    /// `LEDGER_APPEND_BATCH_MAX` (default 256): commands per append transaction.
    pub append_batch_max: usize,
    /// `LEDGER_COMMAND_QUEUE_MAX` (default 4096): commands waiting for the writer.
    pub command_queue_max: usize,
    /// `LEDGER_CONFLICT_RETRIES_MAX` (default 8): re-decisions after a version conflict.
    pub conflict_retries_max: u32,
    /// `LEDGER_STATE_CACHE_MAX` (default 100000): folded streams kept by the writer.
    pub state_cache_max: u64,
    /// `LEDGER_PROVIDER_TIMEOUT_MS` (default 2000): one provider call.
    pub provider_timeout: Duration,
    /// `LEDGER_PAYOUT_ATTEMPTS_MAX` (default 8): provider calls before dead-lettering.
    pub payout_attempts_max: u32,
    /// `LEDGER_PAYOUT_RETRY_TOTAL_MS` (default 600000): time from the first call before dead-lettering.
    pub payout_retry_total: Duration,
    /// `LEDGER_PAYOUT_BACKOFF_BASE_MS` (default 200) and `LEDGER_PAYOUT_BACKOFF_MAX_MS` (default 30000).
    pub payout_backoff_base: Duration,
    pub payout_backoff_max: Duration,
    /// `LEDGER_PROVIDER_BREAKER_FAILURES` (default 5) within `LEDGER_PROVIDER_BREAKER_WINDOW_MS`
    /// (default 30000) open the provider's breaker for `LEDGER_PROVIDER_BREAKER_COOLDOWN_MS` (default 5000).
    pub provider_breaker_failures: u32,
    pub provider_breaker_window: Duration,
    pub provider_breaker_cooldown: Duration,
    /// `LEDGER_RATE_LIMIT_PER_S` (default 5000) and `LEDGER_RATE_LIMIT_BURST` (default 10000):
    /// requests per token; past them 429 with `Retry-After`.
    pub rate_limit_per_s: u32,
    pub rate_limit_burst: u32,
    /// `LEDGER_SNAPSHOT_EVERY` (default 100): snapshot a stream after this many events
    /// were folded to load it; 0 disables snapshots.
    pub snapshot_every: usize,
    /// `LEDGER_RECONCILE_INTERVAL_S` (default 3600; 0 disables): scheduled reconciliation
    /// of the last `LEDGER_RECONCILE_WINDOW_S` (default 86400) against the provider.
    pub reconcile_interval: Duration,
    pub reconcile_window: Duration,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| ConfigError::Invalid { name: name.to_owned(), value: v }),
        _ => Ok(default),
    }
}

/// A configuration variable that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} has an invalid value {value:?}")]
    Invalid { name: String, value: String },
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Ok(Config {
            database_url: env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ledger"),
            nats_url: env_or("NATS_URL", "nats://127.0.0.1:4222"),
            nats_prefix: env_or("LEDGER_NATS_PREFIX", "ledger"),
            nats_replicas: env_num("LEDGER_NATS_REPLICAS", 1)?,
            http_addr: env_or("LEDGER_HTTP_ADDR", "127.0.0.1:8080"),
            admin_token: std::env::var("LEDGER_ADMIN_TOKEN").ok().filter(|v| !v.is_empty()),
            metrics_addr: std::env::var("LEDGER_METRICS_ADDR").ok().filter(|v| !v.is_empty()),
            provider_url: env_or("LEDGER_PROVIDER_URL", "http://127.0.0.1:9090"),
            idempotency_ttl: Duration::from_secs(env_num("LEDGER_IDEMPOTENCY_TTL", 24 * 3600)?),
            consistency_wait: Duration::from_millis(env_num("LEDGER_CONSISTENCY_WAIT_MS", 2000)?),
            db_pool_max: env_num("LEDGER_DB_POOL_MAX", 16)?,
            db_acquire_timeout: Duration::from_millis(env_num("LEDGER_DB_ACQUIRE_TIMEOUT_MS", 3000)?),
            db_statement_timeout: Duration::from_millis(env_num("LEDGER_DB_STATEMENT_TIMEOUT_MS", 30_000)?),
            db_lock_timeout: Duration::from_millis(env_num("LEDGER_DB_LOCK_TIMEOUT_MS", 10_000)?),
            db_idle_in_transaction_timeout: Duration::from_millis(env_num(
                "LEDGER_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                60_000,
            )?),
            body_bytes_max: env_num("LEDGER_BODY_BYTES_MAX", 64 * 1024)?,
            request_timeout: Duration::from_millis(env_num("LEDGER_REQUEST_TIMEOUT_MS", 10_000)?),
            append_batch_max: env_num("LEDGER_APPEND_BATCH_MAX", 256)?,
            command_queue_max: env_num("LEDGER_COMMAND_QUEUE_MAX", 4096)?,
            conflict_retries_max: env_num("LEDGER_CONFLICT_RETRIES_MAX", 8)?,
            state_cache_max: env_num("LEDGER_STATE_CACHE_MAX", 100_000)?,
            provider_timeout: Duration::from_millis(env_num("LEDGER_PROVIDER_TIMEOUT_MS", 2000)?),
            payout_attempts_max: env_num("LEDGER_PAYOUT_ATTEMPTS_MAX", 8)?,
            payout_retry_total: Duration::from_millis(env_num("LEDGER_PAYOUT_RETRY_TOTAL_MS", 600_000)?),
            payout_backoff_base: Duration::from_millis(env_num("LEDGER_PAYOUT_BACKOFF_BASE_MS", 200)?),
            payout_backoff_max: Duration::from_millis(env_num("LEDGER_PAYOUT_BACKOFF_MAX_MS", 30_000)?),
            provider_breaker_failures: env_num("LEDGER_PROVIDER_BREAKER_FAILURES", 5)?,
            provider_breaker_window: Duration::from_millis(env_num("LEDGER_PROVIDER_BREAKER_WINDOW_MS", 30_000)?),
            provider_breaker_cooldown: Duration::from_millis(env_num("LEDGER_PROVIDER_BREAKER_COOLDOWN_MS", 5000)?),
            rate_limit_per_s: env_num("LEDGER_RATE_LIMIT_PER_S", 5000)?,
            rate_limit_burst: env_num("LEDGER_RATE_LIMIT_BURST", 10_000)?,
            snapshot_every: env_num("LEDGER_SNAPSHOT_EVERY", 100)?,
            reconcile_interval: Duration::from_secs(env_num("LEDGER_RECONCILE_INTERVAL_S", 3600)?),
            reconcile_window: Duration::from_secs(env_num("LEDGER_RECONCILE_WINDOW_S", 86_400)?),
        })
    }

    /// Defaults for tests: the given database, a private NATS prefix, port 0.
    pub fn for_tests(database_url: &str, nats_prefix: &str) -> Config {
        Config {
            database_url: database_url.to_owned(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_prefix: nats_prefix.to_owned(),
            nats_replicas: 1,
            http_addr: "127.0.0.1:0".to_owned(),
            admin_token: Some("test-admin-token".to_owned()),
            metrics_addr: None,
            provider_url: "http://127.0.0.1:9090".to_owned(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            consistency_wait: Duration::from_millis(2000),
            db_pool_max: 16,
            db_acquire_timeout: Duration::from_millis(3000),
            db_statement_timeout: Duration::from_millis(30_000),
            db_lock_timeout: Duration::from_millis(10_000),
            db_idle_in_transaction_timeout: Duration::from_millis(60_000),
            body_bytes_max: 64 * 1024,
            request_timeout: Duration::from_millis(10_000),
            append_batch_max: 256,
            command_queue_max: 4096,
            conflict_retries_max: 8,
            state_cache_max: 100_000,
            provider_timeout: Duration::from_millis(500),
            payout_attempts_max: 8,
            payout_retry_total: Duration::from_secs(60),
            payout_backoff_base: Duration::from_millis(5),
            payout_backoff_max: Duration::from_millis(50),
            provider_breaker_failures: 5,
            provider_breaker_window: Duration::from_secs(30),
            provider_breaker_cooldown: Duration::from_millis(500),
            rate_limit_per_s: 5000,
            rate_limit_burst: 10_000,
            snapshot_every: 100,
            reconcile_interval: Duration::ZERO,
            reconcile_window: Duration::from_secs(86_400),
        }
    }
}
