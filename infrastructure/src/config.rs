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
    /// `LEDGER_NATS_REPLICAS` (default: 3 on a cluster of three or more servers, else 1):
    /// replicas of the JetStream stream; its consumers follow it.
    pub nats_replicas: Option<usize>,
    /// `DATABASE_READ_URL` (unset by default): a streaming replica for eventual reads and
    /// queries; strong reads, commands and the workers use `DATABASE_URL` only.
    pub database_read_url: Option<String>,
    /// `LEDGER_SHARDS` (`name=postgres://…,name2=postgres://…`; default: one shard
    /// `main` at `DATABASE_URL`): the Postgres primaries ledgers are placed on. The
    /// first is `DATABASE_URL` (it holds the directory and the tokens); each shard's
    /// replica comes from `LEDGER_SHARD_READ_URLS` (same form; the first shard's
    /// default is `DATABASE_READ_URL`).
    pub shards: Vec<crate::ledgers::Shard>,
    /// The ledger this configuration serves (`default` unless built by
    /// [`crate::ledgers::LedgerRecord::config`]).
    pub ledger: String,
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
    /// `LEDGER_LEDGER_DB_POOL_MAX` (2): the pool of each ledger other than `default`, in
    /// each process (its connections close after 30 s idle). See docs/SCALING.md for the
    /// connections each ledger takes.
    pub ledger_db_pool_max: u32,
    /// `LEDGER_DB_ACQUIRE_TIMEOUT_MS` (default 3000): a command fails fast instead of hanging.
    pub db_acquire_timeout: Duration,
    /// `LEDGER_DB_CONNECT_TIMEOUT_MS` (default 5000): how long making a session outside
    /// the pools may take (the relay leader's, the listeners', the lock sessions of
    /// reconciliation and rebuilds, migrations, creating a database or a ledger's
    /// schema), so a Postgres that accepts the socket and answers nothing holds none
    /// of them for ever.
    pub db_connect_timeout: Duration,
    /// `LEDGER_DB_MIGRATION_LOCK_TIMEOUT_MS` (default 120000): how long the migrator may
    /// wait for a lock, its advisory lock (held by another instance that migrates)
    /// included, so a peer paused mid-migration makes a start fail with a time-out
    /// instead of waiting for ever, and a migration never queues behind traffic for long.
    pub db_migration_lock_timeout: Duration,
    /// `LEDGER_DB_KEEPALIVE_MS` (default 30000; 0: the server's own): the server's TCP
    /// keepalive idle time and `tcp_user_timeout` on every session of this process, so
    /// Postgres ends a session whose client went silent (a partition, a cut flow) after
    /// about twice this, releasing its locks, instead of after hours.
    pub db_keepalive: Duration,
    /// `LEDGER_DB_WAIT_MS` (default 8000, below the request time-out): how long a request
    /// behind the Postgres breaker may take before it is answered 503 and counted as a
    /// dependency failure, so a Postgres that hangs (sockets open, nothing answered)
    /// opens the breaker and later requests fail at once.
    pub db_wait: Duration,
    /// `LEDGER_APPEND_IDLE_TIMEOUT_MS` (default 5000): how long an append's transaction,
    /// which holds its ledger's head lock, may sit idle (its process paused) before
    /// Postgres ends it, so the other writers go on.
    pub append_idle_timeout: Duration,
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
    /// `LEDGER_DB_BREAKER_FAILURES` (default 3) dependency failures within
    /// `LEDGER_DB_BREAKER_WINDOW_MS` (default 10000) open the Postgres breaker in front
    /// of /v1 for `LEDGER_DB_BREAKER_COOLDOWN_MS` (default 2000).
    pub db_breaker_failures: u32,
    pub db_breaker_window: Duration,
    pub db_breaker_cooldown: Duration,
    /// `LEDGER_BODY_BYTES_MAX` (default 64 KiB).
    pub body_bytes_max: usize,
    /// `LEDGER_REQUEST_TIMEOUT_MS` (default 10000).
    pub request_timeout: Duration,
    /// `LEDGER_APPEND_BATCH_MAX` (default 256): commands per append transaction (a bulk's
    /// items are never split, so a bulk of 1,000 is one append).
    pub append_batch_max: usize,
    /// `LEDGER_COMMAND_QUEUE_MAX` (default 4096): submissions waiting for the writer (a
    /// command, or a bulk's items).
    pub command_queue_max: usize,
    /// `LEDGER_CONFLICT_RETRIES_MAX` (default 8): re-decisions after a version conflict.
    pub conflict_retries_max: u32,
    /// `LEDGER_APPEND_BEHIND` (default false): append a batch right behind the one in
    /// flight, while that one commits (`EventStore::append_behind`), instead of once it
    /// has landed. Off by default: on a fast machine it cost Postgres 6–11 % more per
    /// transfer and gained no rate (docs/PERFORMANCE.md, issue 27, fifteenth stop); it
    /// shortens what is serialized between batches, for a machine whose appends' wall
    /// time bounds the rate.
    pub append_behind: bool,
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
    /// `LEDGER_WEBHOOK_TIMEOUT_MS` (default 5000): one webhook request.
    pub webhook_timeout: Duration,
    /// `LEDGER_WEBHOOK_ATTEMPTS_MAX` (default 8): attempts at one event before it is dead-lettered.
    pub webhook_attempts_max: u32,
    /// `LEDGER_WEBHOOK_BACKOFF_MAX_MS` (default 60000): the longest backoff between attempts.
    pub webhook_backoff_max: Duration,
    /// `LEDGER_WEBHOOK_BREAKER_COOLDOWN_MS` (default 5000): how long a webhook's breaker
    /// stays open before one request probes (it opens after 5 failures within 60 s).
    pub webhook_breaker_cooldown: Duration,
    /// `LEDGER_WEBHOOK_CA_FILE` (unset by default): PEM certificates trusted for `https`
    /// webhook endpoints besides the platform's roots (a private CA).
    pub webhook_ca_file: Option<String>,
    /// `LEDGER_WEBHOOK_ALLOW` (unset: every host not denied) and `LEDGER_WEBHOOK_DENY`:
    /// comma-separated CIDR ranges and host names webhooks may (only) or may not send
    /// to, checked at registration and on every resolved address at connect time.
    /// Link-local and cloud metadata addresses, 0.0.0.0/8, multicast and broadcast are
    /// always denied (`webhooks::hosts::DEFAULT_DENY`).
    pub webhook_allow: String,
    pub webhook_deny: String,
    /// `LEDGER_WEBHOOKS_MAX` (default 100): active webhooks at most.
    pub webhooks_max: usize,
    /// `LEDGER_WEBHOOK_DB_POOL_MAX` (default 4): the connections webhook deliveries use,
    /// apart from the pool of commands and reads.
    pub webhook_db_pool_max: u32,
    /// `LEDGER_MASTER_KEY` (unset: dev mode keeps a generated key in the database):
    /// base64 of 32 bytes; seals secrets at rest (`keys`).
    /// `LEDGER_SIGNING_KEY`: base64 Ed25519 seeds, comma-separated, the first signing
    /// tree heads (unset: dev mode keeps a generated one in the database).
    pub signing_key: Option<String>,
    pub master_key: Option<String>,
    /// `LEDGER_BULK_CONCURRENCY_MAX` (default 2): bulks read, parsed and run at once in
    /// one process; more wait up to `LEDGER_BULK_WAIT_MS` (default 1000), then 503.
    pub bulk_concurrency_max: usize,
    /// `LEDGER_HTTP_IN_FLIGHT_MAX` (96): requests this process works on at once; one
    /// more is answered 503 `unavailable` with `Retry-After` at once (shed, never queued
    /// to time out). `/health/*` and `/metrics` are not counted. Size it at about 1.5
    /// times the concurrency at which the process reaches its peak: every request above
    /// that only waits, and an accepted request waits about bound ÷ throughput
    /// (docs/PERFORMANCE.md, "Overload").
    pub http_in_flight_max: usize,
    /// `LEDGER_TOKEN_IN_FLIGHT_MAX` (72): requests one token has in flight in this
    /// process; one more is 429 `rate_limited` at once, so one client cannot take every
    /// turn of the process's bound.
    pub token_in_flight_max: usize,
    pub bulk_wait: Duration,
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
    /// `LEDGER_RECONCILE_PROVIDER_ATTEMPTS_MAX` (default 5): look-ups of one statement
    /// page or payout before a run fails.
    pub reconcile_provider_attempts_max: u32,
    /// `LEDGER_BACKDATE_MAX_S` (default 2592000 = 30 days): how far in the past an
    /// `effective_at` may be.
    pub backdate_max: Duration,
    /// `LEDGER_RELAY_BATCH_MAX` (default 1000; 1 to 100000): events per JetStream publish batch.
    pub relay_batch_max: i64,
    /// `LEDGER_RELAY_POLL_MS` (default 1000): the relay's poll when no notification came.
    pub relay_poll_interval: Duration,
    /// `LEDGER_RELAY_ELECTION_MS` (default 500): how often a follower tries to lead.
    pub relay_election_interval: Duration,
    /// `LEDGER_RELAY_BACKOFF_BASE_MS` (default 50) and `LEDGER_RELAY_BACKOFF_MAX_MS`
    /// (default 5000): the relay's backoff while JetStream fails.
    pub relay_backoff_base: Duration,
    pub relay_backoff_max: Duration,
    /// `LEDGER_RELAY_LEASE_MS` (default 15000, three times NATS' request time-out, so a
    /// slow publish does not cost the leader its lease): how long the relay leader's session may
    /// go unused before Postgres ends it (`idle_session_timeout`), releasing leadership;
    /// the leader uses it at least every second, so only a leader that stopped (a paused
    /// process, a host gone without closing its connection) loses it, and another takes over.
    pub relay_lease: Duration,
    /// `LEDGER_TREE_POLL_MS` (default 250; 0: this process does not grow the Merkle
    /// tree): how often the tree worker looks for new events when it is at the head.
    /// A tree head or proof of this process waiting for a size wakes it at once; one of
    /// a process without the worker waits for another process's poll (`tree.rs`).
    pub tree_poll: Duration,
    /// `LEDGER_PROJECTION_LINGER_MS` (default 5; 0: none): how long the projector waits
    /// after a delivery that was not a full batch before it fetches the next, so that at
    /// moderate rates it applies fewer, larger batches (each is one transaction of
    /// several statements); read models lag by up to this much more.
    pub projection_linger: Duration,
    /// `LEDGER_RELAY_LINGER_MS` (default 25; 0: none; at most 250, and 1000 with the
    /// projector's linger): how long the relay leader waits after publishing less than a batch
    /// before it publishes again, so that several writer batches travel as one
    /// JetStream message (a message costs JetStream, the relay's checkpoint and the
    /// projector's delivery much the same whatever it holds); read models and
    /// side-effect workers lag by up to this much more. The first batch after a quiet
    /// spell is published at once.
    pub relay_linger: Duration,
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

/// The defaults of every setting: the one set production and tests start from.
impl Default for Config {
    fn default() -> Config {
        Config {
            database_url: "postgres://postgres@127.0.0.1:5432/ledger".to_owned(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_prefix: "ledger".to_owned(),
            nats_replicas: None,
            database_read_url: None,
            shards: Vec::new(),
            ledger: crate::ledgers::DEFAULT_LEDGER.to_owned(),
            http_addr: "127.0.0.1:8080".to_owned(),
            metrics_addr: None,
            admin_token: None,
            provider_url: "http://127.0.0.1:9090".to_owned(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            consistency_wait: Duration::from_millis(2000),
            db_pool_max: 16,
            db_wait: Duration::from_millis(8_000),
            append_idle_timeout: crate::store::APPEND_IDLE_TIMEOUT,
            ledger_db_pool_max: 2,
            db_acquire_timeout: Duration::from_millis(3000),
            db_connect_timeout: Duration::from_millis(5000),
            db_migration_lock_timeout: Duration::from_millis(120_000),
            db_keepalive: Duration::from_millis(30_000),
            db_statement_timeout: Duration::from_millis(30_000),
            db_lock_timeout: Duration::from_millis(10_000),
            db_idle_in_transaction_timeout: Duration::from_millis(60_000),
            db_breaker_failures: 3,
            db_breaker_window: Duration::from_millis(10_000),
            db_breaker_cooldown: Duration::from_millis(2000),
            body_bytes_max: 64 * 1024,
            request_timeout: Duration::from_millis(10_000),
            append_batch_max: 256,
            command_queue_max: 4096,
            conflict_retries_max: 8,
            append_behind: false,
            state_cache_max: 100_000,
            provider_timeout: Duration::from_millis(2000),
            payout_attempts_max: 8,
            payout_retry_total: Duration::from_millis(600_000),
            payout_backoff_base: Duration::from_millis(200),
            payout_backoff_max: Duration::from_millis(30_000),
            webhook_timeout: Duration::from_millis(5000),
            webhook_attempts_max: 8,
            webhook_backoff_max: Duration::from_millis(60_000),
            webhook_breaker_cooldown: Duration::from_millis(5000),
            webhook_ca_file: None,
            webhook_allow: String::new(),
            webhook_deny: String::new(),
            webhooks_max: 100,
            webhook_db_pool_max: 4,
            master_key: None,
            signing_key: None,
            bulk_concurrency_max: 2,
            http_in_flight_max: 96,
            token_in_flight_max: 72,
            bulk_wait: Duration::from_millis(1000),
            provider_breaker_failures: 5,
            provider_breaker_window: Duration::from_millis(30_000),
            provider_breaker_cooldown: Duration::from_millis(5000),
            rate_limit_per_s: 5000,
            rate_limit_burst: 10_000,
            snapshot_every: 100,
            reconcile_interval: Duration::from_secs(3600),
            reconcile_window: Duration::from_secs(86_400),
            reconcile_provider_attempts_max: 5,
            backdate_max: Duration::from_secs(2_592_000),
            relay_batch_max: 1000,
            relay_poll_interval: Duration::from_millis(1000),
            relay_election_interval: Duration::from_millis(500),
            relay_backoff_base: Duration::from_millis(50),
            relay_backoff_max: Duration::from_millis(5000),
            tree_poll: Duration::from_millis(250),
            projection_linger: Duration::from_millis(5),
            relay_linger: Duration::from_millis(25),
            relay_lease: Duration::from_millis(15_000),
        }
    }
}

/// A duration in milliseconds from `name`, else `default`.
fn env_ms(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    env_num(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX)).map(Duration::from_millis)
}

/// A duration in seconds from `name`, else `default`.
fn env_s(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    env_num(name, default.as_secs()).map(Duration::from_secs)
}

impl Config {
    /// Reads the configuration from the process environment; what is not set keeps its
    /// [`Default`].
    pub fn from_env() -> Result<Config, ConfigError> {
        let d = Config::default();
        let optional = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let shards = crate::ledgers::Shard::parse_list(
            optional("LEDGER_SHARDS").as_deref(),
            optional("LEDGER_SHARD_READ_URLS").as_deref(),
        )
        .map_err(|value| ConfigError::Invalid { name: "LEDGER_SHARDS".into(), value })?;
        let mut config = Config {
            database_url: env_or("DATABASE_URL", &d.database_url),
            nats_url: env_or("NATS_URL", &d.nats_url),
            nats_prefix: env_or("LEDGER_NATS_PREFIX", &d.nats_prefix),
            nats_replicas: match optional("LEDGER_NATS_REPLICAS") {
                None => None,
                Some(_) => Some(env_num("LEDGER_NATS_REPLICAS", 1usize)?),
            },
            database_read_url: optional("DATABASE_READ_URL"),
            http_addr: env_or("LEDGER_HTTP_ADDR", &d.http_addr),
            admin_token: optional("LEDGER_ADMIN_TOKEN"),
            metrics_addr: optional("LEDGER_METRICS_ADDR"),
            provider_url: env_or("LEDGER_PROVIDER_URL", &d.provider_url),
            idempotency_ttl: env_s("LEDGER_IDEMPOTENCY_TTL", d.idempotency_ttl)?,
            consistency_wait: env_ms("LEDGER_CONSISTENCY_WAIT_MS", d.consistency_wait)?,
            db_pool_max: env_num("LEDGER_DB_POOL_MAX", d.db_pool_max)?,
            ledger_db_pool_max: env_num("LEDGER_LEDGER_DB_POOL_MAX", d.ledger_db_pool_max)?,
            db_acquire_timeout: env_ms("LEDGER_DB_ACQUIRE_TIMEOUT_MS", d.db_acquire_timeout)?,
            db_connect_timeout: env_ms("LEDGER_DB_CONNECT_TIMEOUT_MS", d.db_connect_timeout)?,
            db_migration_lock_timeout: env_ms("LEDGER_DB_MIGRATION_LOCK_TIMEOUT_MS", d.db_migration_lock_timeout)?,
            db_keepalive: env_ms("LEDGER_DB_KEEPALIVE_MS", d.db_keepalive)?,
            db_wait: env_ms("LEDGER_DB_WAIT_MS", d.db_wait)?,
            append_idle_timeout: env_ms("LEDGER_APPEND_IDLE_TIMEOUT_MS", d.append_idle_timeout)?,
            db_statement_timeout: env_ms("LEDGER_DB_STATEMENT_TIMEOUT_MS", d.db_statement_timeout)?,
            db_lock_timeout: env_ms("LEDGER_DB_LOCK_TIMEOUT_MS", d.db_lock_timeout)?,
            db_idle_in_transaction_timeout: env_ms(
                "LEDGER_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                d.db_idle_in_transaction_timeout,
            )?,
            db_breaker_failures: env_num("LEDGER_DB_BREAKER_FAILURES", d.db_breaker_failures)?,
            db_breaker_window: env_ms("LEDGER_DB_BREAKER_WINDOW_MS", d.db_breaker_window)?,
            db_breaker_cooldown: env_ms("LEDGER_DB_BREAKER_COOLDOWN_MS", d.db_breaker_cooldown)?,
            body_bytes_max: env_num("LEDGER_BODY_BYTES_MAX", d.body_bytes_max)?,
            request_timeout: env_ms("LEDGER_REQUEST_TIMEOUT_MS", d.request_timeout)?,
            append_batch_max: env_num("LEDGER_APPEND_BATCH_MAX", d.append_batch_max)?,
            command_queue_max: env_num("LEDGER_COMMAND_QUEUE_MAX", d.command_queue_max)?,
            conflict_retries_max: env_num("LEDGER_CONFLICT_RETRIES_MAX", d.conflict_retries_max)?,
            append_behind: env_num("LEDGER_APPEND_BEHIND", d.append_behind)?,
            state_cache_max: env_num("LEDGER_STATE_CACHE_MAX", d.state_cache_max)?,
            provider_timeout: env_ms("LEDGER_PROVIDER_TIMEOUT_MS", d.provider_timeout)?,
            payout_attempts_max: env_num("LEDGER_PAYOUT_ATTEMPTS_MAX", d.payout_attempts_max)?,
            payout_retry_total: env_ms("LEDGER_PAYOUT_RETRY_TOTAL_MS", d.payout_retry_total)?,
            payout_backoff_base: env_ms("LEDGER_PAYOUT_BACKOFF_BASE_MS", d.payout_backoff_base)?,
            payout_backoff_max: env_ms("LEDGER_PAYOUT_BACKOFF_MAX_MS", d.payout_backoff_max)?,
            webhook_timeout: env_ms("LEDGER_WEBHOOK_TIMEOUT_MS", d.webhook_timeout)?,
            webhook_attempts_max: env_num("LEDGER_WEBHOOK_ATTEMPTS_MAX", d.webhook_attempts_max)?,
            webhook_backoff_max: env_ms("LEDGER_WEBHOOK_BACKOFF_MAX_MS", d.webhook_backoff_max)?,
            webhook_breaker_cooldown: env_ms("LEDGER_WEBHOOK_BREAKER_COOLDOWN_MS", d.webhook_breaker_cooldown)?,
            webhook_ca_file: optional("LEDGER_WEBHOOK_CA_FILE"),
            webhook_allow: env_or("LEDGER_WEBHOOK_ALLOW", &d.webhook_allow),
            webhook_deny: env_or("LEDGER_WEBHOOK_DENY", &d.webhook_deny),
            webhooks_max: env_num("LEDGER_WEBHOOKS_MAX", d.webhooks_max)?,
            webhook_db_pool_max: env_num("LEDGER_WEBHOOK_DB_POOL_MAX", d.webhook_db_pool_max)?,
            master_key: optional("LEDGER_MASTER_KEY"),
            signing_key: optional("LEDGER_SIGNING_KEY"),
            bulk_concurrency_max: env_num("LEDGER_BULK_CONCURRENCY_MAX", d.bulk_concurrency_max)?,
            http_in_flight_max: env_num("LEDGER_HTTP_IN_FLIGHT_MAX", d.http_in_flight_max)?,
            token_in_flight_max: env_num("LEDGER_TOKEN_IN_FLIGHT_MAX", d.token_in_flight_max)?,
            bulk_wait: env_ms("LEDGER_BULK_WAIT_MS", d.bulk_wait)?,
            provider_breaker_failures: env_num("LEDGER_PROVIDER_BREAKER_FAILURES", d.provider_breaker_failures)?,
            provider_breaker_window: env_ms("LEDGER_PROVIDER_BREAKER_WINDOW_MS", d.provider_breaker_window)?,
            provider_breaker_cooldown: env_ms("LEDGER_PROVIDER_BREAKER_COOLDOWN_MS", d.provider_breaker_cooldown)?,
            rate_limit_per_s: env_num("LEDGER_RATE_LIMIT_PER_S", d.rate_limit_per_s)?,
            rate_limit_burst: env_num("LEDGER_RATE_LIMIT_BURST", d.rate_limit_burst)?,
            snapshot_every: env_num("LEDGER_SNAPSHOT_EVERY", d.snapshot_every)?,
            reconcile_interval: env_s("LEDGER_RECONCILE_INTERVAL_S", d.reconcile_interval)?,
            reconcile_window: env_s("LEDGER_RECONCILE_WINDOW_S", d.reconcile_window)?,
            reconcile_provider_attempts_max: env_num(
                "LEDGER_RECONCILE_PROVIDER_ATTEMPTS_MAX",
                d.reconcile_provider_attempts_max,
            )?,
            backdate_max: env_s("LEDGER_BACKDATE_MAX_S", d.backdate_max)?,
            relay_batch_max: env_num("LEDGER_RELAY_BATCH_MAX", d.relay_batch_max)?,
            relay_poll_interval: env_ms("LEDGER_RELAY_POLL_MS", d.relay_poll_interval)?,
            relay_election_interval: env_ms("LEDGER_RELAY_ELECTION_MS", d.relay_election_interval)?,
            relay_backoff_base: env_ms("LEDGER_RELAY_BACKOFF_BASE_MS", d.relay_backoff_base)?,
            relay_backoff_max: env_ms("LEDGER_RELAY_BACKOFF_MAX_MS", d.relay_backoff_max)?,
            relay_lease: env_ms("LEDGER_RELAY_LEASE_MS", d.relay_lease)?,
            tree_poll: env_ms("LEDGER_TREE_POLL_MS", d.tree_poll)?,
            projection_linger: env_ms("LEDGER_PROJECTION_LINGER_MS", d.projection_linger)?,
            relay_linger: env_ms("LEDGER_RELAY_LINGER_MS", d.relay_linger)?,
            shards,
            ledger: d.ledger,
        };
        config.settle_shards();
        for (name, limit) in [
            ("LEDGER_DB_CONNECT_TIMEOUT_MS", config.db_connect_timeout),
            ("LEDGER_DB_MIGRATION_LOCK_TIMEOUT_MS", config.db_migration_lock_timeout),
        ] {
            if limit.is_zero() {
                return Err(ConfigError::Invalid { name: name.into(), value: "0".into() });
            }
        }
        // Every session made outside the pools, from here on (the first is the one that
        // creates the database, before any pool).
        crate::db::set_session_limits(config.db_connect_timeout, config.db_migration_lock_timeout, config.db_keepalive);
        // A projector lingering a second would leave it to the stall detector, which
        // applies the log itself after a second without progress; so would the two
        // lingers together (the relay's, then the projector's).
        if config.projection_linger > Duration::from_millis(1000) {
            return Err(ConfigError::Invalid {
                name: "LEDGER_PROJECTION_LINGER_MS".into(),
                value: format!("{} (at most 1000)", config.projection_linger.as_millis()),
            });
        }
        if config.relay_linger > Duration::from_millis(250)
            || config.relay_linger + config.projection_linger > Duration::from_millis(1000)
        {
            return Err(ConfigError::Invalid {
                name: "LEDGER_RELAY_LINGER_MS".into(),
                value: format!(
                    "{} (at most 250, and 1000 with LEDGER_PROJECTION_LINGER_MS, {})",
                    config.relay_linger.as_millis(),
                    config.projection_linger.as_millis()
                ),
            });
        }
        // A relay that may read no event stalls at the first gap for good; one that may
        // read billions overflows the position it reads to.
        if !(1..=100_000).contains(&config.relay_batch_max) {
            return Err(ConfigError::Invalid {
                name: "LEDGER_RELAY_BATCH_MAX".into(),
                value: format!("{} (1 to 100000)", config.relay_batch_max),
            });
        }
        // The wait on Postgres must end before the request does, or it never counts.
        if config.db_wait >= config.request_timeout {
            config.db_wait = config.request_timeout * 4 / 5;
        }
        // An erasure answers `ERASURE_SETTLE` after its commit (docs/PRIVACY.md): a
        // shorter request time-out would answer every erasure, and every retry, 503.
        let erasure = crate::privacy::ERASURE_SETTLE + Duration::from_secs(1);
        if config.request_timeout < erasure {
            return Err(ConfigError::Invalid {
                name: "LEDGER_REQUEST_TIMEOUT_MS".into(),
                value: format!(
                    "{} (an erasure needs at least {})",
                    config.request_timeout.as_millis(),
                    erasure.as_millis()
                ),
            });
        }
        Ok(config)
    }

    /// Makes `shards` whole: without `LEDGER_SHARDS`, one shard `main` at
    /// `DATABASE_URL`; with it, the first shard is `DATABASE_URL` (and its replica
    /// `DATABASE_READ_URL` unless listed).
    pub fn settle_shards(&mut self) {
        match self.shards.first_mut() {
            None => self.shards.push(crate::ledgers::Shard {
                name: crate::ledgers::FIRST_SHARD.to_owned(),
                url: self.database_url.clone(),
                read_url: self.database_read_url.clone(),
            }),
            Some(first) => {
                self.database_url = first.url.clone();
                if first.read_url.is_none() {
                    first.read_url = self.database_read_url.clone();
                }
                self.database_read_url = first.read_url.clone();
            }
        }
    }

    /// The provider's circuit breaker, as configured.
    pub fn provider_breaker(&self) -> crate::breaker::BreakerConfig {
        crate::breaker::BreakerConfig {
            failure_threshold: self.provider_breaker_failures,
            window: self.provider_breaker_window,
            cooldown: self.provider_breaker_cooldown,
        }
    }

    /// The defaults, for a test: the given database, a private NATS prefix, port 0, the
    /// test admin token, no scheduled reconciliation, and a provider and payout retries
    /// that give up in milliseconds rather than minutes (so failure tests run fast).
    /// Everything else is [`Config::default`]; tests set other fields themselves.
    pub fn for_tests(database_url: &str, nats_prefix: &str) -> Config {
        Config {
            database_url: database_url.to_owned(),
            nats_prefix: nats_prefix.to_owned(),
            http_addr: "127.0.0.1:0".to_owned(),
            admin_token: Some("test-admin-token".to_owned()),
            provider_timeout: Duration::from_millis(500),
            payout_retry_total: Duration::from_secs(60),
            payout_backoff_base: Duration::from_millis(5),
            payout_backoff_max: Duration::from_millis(50),
            provider_breaker_cooldown: Duration::from_millis(500),
            reconcile_interval: Duration::ZERO,
            // Tests of concurrency send hundreds of requests at once with one token; the
            // tests of the bounds set them.
            http_in_flight_max: 4096,
            token_in_flight_max: 4096,
            ..Config::default()
        }
    }
}
