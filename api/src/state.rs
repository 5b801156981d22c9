//! Shared state of the HTTP layer.

use ledger_infrastructure::{CommandBus, Config, EventStore};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub store: EventStore,
    pub bus: CommandBus,
    /// Idempotency keys whose request is executing in this process.
    pub in_flight: Arc<Mutex<HashSet<(String, String)>>>,
}

impl AppState {
    pub fn new(config: Config, pool: PgPool) -> AppState {
        let store = EventStore::new(pool.clone());
        let bus = CommandBus::start(
            store.clone(),
            ledger_infrastructure::WriterLimits {
                batch_max: config.append_batch_max,
                queue_max: config.command_queue_max,
                conflict_retries_max: config.conflict_retries_max,
                cache_max: config.state_cache_max,
            },
        );
        AppState { config: Arc::new(config), pool, store, bus, in_flight: Arc::default() }
    }
}
