//! Process state, split by who needs it. [`Core`] is what every process of the service
//! holds (the database, the command writer, NATS, the provider and their breakers):
//! the workers get only this. [`AppState`] is what HTTP handlers need on top of it
//! (in-flight keys, the account cache, projection positions, the token cache, the
//! Postgres breaker) and dereferences to its `Core`.

use crate::http::limits::{ACCOUNT_CACHE_ENTRIES_MAX, ACCOUNT_CACHE_TTL};
use crate::read::{AccountCache, ProjectionPositions, Replica};
use ledger_infrastructure::breaker::{BreakerConfig, CircuitBreaker};
use ledger_infrastructure::nats::Names;
use ledger_infrastructure::provider::ProviderClient;
use ledger_infrastructure::{CommandBus, Config, EventStore};
use ledger_projections::Projection;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// What every process of the service holds; cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub store: EventStore,
    /// This process's command writer.
    pub bus: CommandBus,
    pub names: Names,
    /// NATS (connected in the background; commands never wait for it).
    pub nats: async_nats::Client,
    /// The breaker around JetStream publishing (outbox relay).
    pub relay_breaker: CircuitBreaker,
    /// The breaker around the payment provider (payouts, reconciliation).
    pub provider_breaker: CircuitBreaker,
    pub provider: ProviderClient,
    /// This process, in announcements to the others.
    pub instance_id: uuid::Uuid,
    /// The streaming replica for eventual reads (`DATABASE_READ_URL`), if any.
    pub replica_pool: Option<PgPool>,
    /// Seals and opens secrets at rest (`LEDGER_MASTER_KEY`); set with [`Core::keyed`].
    pub master_key: Arc<ledger_infrastructure::keys::MasterKey>,
    /// Signs tree heads (`LEDGER_SIGNING_KEY`; the deployment's, shared by its ledgers).
    pub signer: Arc<ledger_infrastructure::signing::Signer>,
    /// How far this ledger's Merkle tree has grown, as this process follows it.
    pub tree: Arc<ledger_infrastructure::tree::Follower>,
    /// Seals and reveals this ledger's personal data (its subjects' keys, under the
    /// master key); set with [`Core::keyed`].
    pub privacy: ledger_infrastructure::privacy::Privacy,
    /// Where webhooks may send (`LEDGER_WEBHOOK_ALLOW`, `LEDGER_WEBHOOK_DENY`).
    pub webhook_policy: Arc<ledger_infrastructure::webhooks::HostPolicy>,
    /// The ledger's time: the first shard's clock (`clock.rs`), shared by every ledger
    /// of the process.
    pub clock: ledger_infrastructure::clock::Clock,
}

impl Core {
    /// Starts this process's command writer over `pool`.
    pub fn new(config: Config, pool: PgPool, nats: async_nats::Client) -> Core {
        crate::http::metrics::handle();
        let store = EventStore::new(pool.clone())
            // One session: the writer looks keys up one batch at a time.
            .with_key_lookups(ledger_infrastructure::db::generic_plans(&pool, &config, 1))
            .with_append_idle_timeout(config.append_idle_timeout)
            .with_writer_time_limit(config.db_wait);
        let bus = CommandBus::start(
            store.clone(),
            ledger_infrastructure::WriterLimits {
                batch_max: config.append_batch_max,
                queue_max: config.command_queue_max,
                conflict_retries_max: config.conflict_retries_max,
                cache_max: config.state_cache_max,
                snapshot_every: config.snapshot_every,
                append_behind: config.append_behind,
            },
        );
        Core {
            names: Names::new(&config.nats_prefix).with_replicas(config.nats_replicas),
            replica_pool: None,
            // `build_core` puts the key the database was sealed with here; this one is a
            // stand-in for a core built without start-up (it matches no stored value).
            master_key: Arc::new(ledger_infrastructure::keys::MasterKey::generate().0),
            signer: Arc::new(ledger_infrastructure::signing::Signer::generate()),
            tree: Arc::default(),
            privacy: ledger_infrastructure::privacy::Privacy::new(
                pool.clone(),
                Arc::new(ledger_infrastructure::keys::MasterKey::generate().0),
            ),
            webhook_policy: Arc::default(),
            clock: ledger_infrastructure::clock::Clock::local(),
            pool,
            store,
            bus,
            nats,
            relay_breaker: CircuitBreaker::new("nats-relay", BreakerConfig::default()),
            provider_breaker: CircuitBreaker::new("payment-provider", config.provider_breaker()),
            provider: ProviderClient::new(&config.provider_url, config.provider_timeout),
            config: Arc::new(config),
            instance_id: uuid::Uuid::now_v7(),
        }
    }
}

impl Core {
    /// This core with the master key the database was sealed with (and so the
    /// personal data of its ledger sealed and revealed under it).
    pub fn keyed(mut self, key: Arc<ledger_infrastructure::keys::MasterKey>) -> Core {
        self.privacy = ledger_infrastructure::privacy::Privacy::new(self.pool.clone(), key.clone());
        self.master_key = key;
        self
    }
}

/// What an HTTP handler needs: the process's [`Core`] and the HTTP layer's own state,
/// behind one `Arc`. Every extractor and middleware layer clones the state of every
/// request; cloning the fields themselves (some twenty `Arc`s across the caches, the
/// writer, NATS and the breakers) was a quarter of the service's CPU on cached reads.
#[derive(Clone)]
pub struct AppState(Arc<Http>);

/// The state behind [`AppState`]; dereferences to its `Core`.
pub struct Http {
    pub core: Core,
    /// Idempotency keys whose request is executing in this process.
    pub in_flight: Mutex<HashSet<(String, String)>>,
    pub cache: AccountCache,
    pub positions: ProjectionPositions,
    /// What every ledger of the process shares (one, made with `default`'s state).
    pub shared: Arc<Shared>,
    /// The breaker in front of Postgres (see `guard`).
    pub db_breaker: CircuitBreaker,
    /// Where eventual reads go when `DATABASE_READ_URL` is set.
    pub replica: Option<Replica>,
    /// Turns of this ledger (not `default`, whose requests have the process's): three
    /// quarters of the process's, so a ledger whose shard hangs cannot take them all.
    pub ledger_permits: Arc<tokio::sync::Semaphore>,
    /// The state of the ledger `default` when this is another ledger's: it holds the
    /// directory and the tokens.
    home: Option<AppState>,
}

/// What every ledger of a process shares: the token cache and rate buckets, and the
/// bounds of the work in flight, which are the process's and each principal's whatever
/// ledger a request addresses.
pub struct Shared {
    pub tokens: crate::http::auth::TokenCache,
    /// Bulks read, parsed and run at once (`LEDGER_BULK_CONCURRENCY_MAX`): what bounds
    /// the memory bulks take, whatever clients send.
    pub bulk_permits: Arc<tokio::sync::Semaphore>,
    /// Bulks in flight per principal (`routes::bulk`), bounded like the permits.
    pub bulk_principals: crate::http::shed::Turns,
    /// Turns of `LEDGER_HTTP_IN_FLIGHT_MAX` (`http::shed`).
    pub request_permits: Arc<tokio::sync::Semaphore>,
    /// Requests in flight per principal, bounded by `LEDGER_TOKEN_IN_FLIGHT_MAX`.
    pub token_in_flight: crate::http::shed::Turns,
}

impl Shared {
    fn new(config: &ledger_infrastructure::Config) -> Shared {
        Shared {
            tokens: crate::http::auth::TokenCache::default(),
            bulk_permits: Arc::new(tokio::sync::Semaphore::new(config.bulk_concurrency_max.max(1))),
            bulk_principals: crate::http::shed::Turns::default(),
            request_permits: Arc::new(tokio::sync::Semaphore::new(config.http_in_flight_max.max(1))),
            token_in_flight: crate::http::shed::Turns::default(),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.0
    }
}

impl std::ops::Deref for Http {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl AppState {
    /// The state of the ledger `default` (of its core's ledger).
    pub fn new(core: Core) -> AppState {
        AppState::build(core, None)
    }

    /// The state of another ledger of the deployment whose `default` is `home`.
    pub fn within(core: Core, home: AppState) -> AppState {
        AppState::build(core, Some(home.home().clone()))
    }

    /// The state of the ledger `default`: the directory, the tokens and what every
    /// ledger shares of them.
    pub fn home(&self) -> &AppState {
        self.0.home.as_ref().unwrap_or(self)
    }

    fn build(core: Core, home: Option<AppState>) -> AppState {
        let config = &core.config;
        let db_breaker = CircuitBreaker::new(
            "postgres",
            BreakerConfig {
                failure_threshold: config.db_breaker_failures,
                window: config.db_breaker_window,
                cooldown: config.db_breaker_cooldown,
            },
        );
        AppState(Arc::new(Http {
            in_flight: Mutex::default(),
            cache: AccountCache::new(ACCOUNT_CACHE_ENTRIES_MAX, ACCOUNT_CACHE_TTL),
            positions: ProjectionPositions::default(),
            shared: home.as_ref().map_or_else(|| Arc::new(Shared::new(config)), |h| h.shared.clone()),
            db_breaker,
            replica: core.replica_pool.clone().map(Replica::new),
            ledger_permits: Arc::new(tokio::sync::Semaphore::new((config.http_in_flight_max * 3 / 4).max(1))),
            home,
            core,
        }))
    }

    /// The pool a read-model read goes to: the replica if it answers and has replayed
    /// `projection` to `min_position`, else the primary.
    pub fn read_pool(&self, projection: Projection, min_position: i64) -> &PgPool {
        match &self.replica {
            Some(r) if r.healthy() && r.positions.current(projection) >= min_position => &r.pool,
            _ => &self.pool,
        }
    }
}
