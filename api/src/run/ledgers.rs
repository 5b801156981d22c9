//! The ledgers this process serves: one [`Runtime`] per ledger (its pool on its shard
//! and schema, its writer, its router, and once it is ready its workers and read
//! side), built the first time the ledger is addressed. Two ledgers share nothing a
//! command waits on: not a pool, a writer, a `log_head` lock or a batch.
//!
//! The directory is the log of `default` ([`ledger_infrastructure::ledgers`]); a ledger
//! another process created is found there on first use, and processes that run
//! workers look for new ledgers every [`DIRECTORY_POLL`].

use crate::http::error::ApiError;
use crate::run::serve::Mode;
use crate::run::state::{AppState, Core};
use axum::Router;
use ledger_infrastructure::ledgers::{self, DEFAULT_LEDGER, LedgerRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a process that runs workers looks for ledgers created elsewhere.
pub const DIRECTORY_POLL: Duration = Duration::from_secs(1);

/// One ledger in this process.
pub struct Runtime {
    pub record: LedgerRecord,
    pub state: AppState,
    /// [`crate::ledger_router`] over `state`.
    pub router: Router,
    /// Set once the ledger's schema is prepared and its tasks run.
    ready: std::sync::OnceLock<()>,
    /// Held while it is made ready, so that happens once.
    readying: tokio::sync::Mutex<()>,
    /// When making it ready last failed: for [`READY_RETRY`] after, requests are refused
    /// at once rather than each waiting on a shard that does not answer.
    failed_at: Mutex<Option<std::time::Instant>>,
}

/// How long a ledger whose shard did not answer is refused at once before it is tried again.
pub const READY_RETRY: Duration = Duration::from_secs(2);

/// Every ledger this process has met.
pub struct Ledgers {
    default: Arc<Runtime>,
    mode: Mode,
    shutdown: CancellationToken,
    others: RwLock<HashMap<String, Arc<Runtime>>>,
    /// Held while a runtime is built, so two requests build one.
    building: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Ledgers {
    /// The ledgers of a process whose `default` is `home` (started already: its tasks
    /// are the caller's).
    pub async fn new(home: AppState, mode: Mode, shutdown: CancellationToken) -> Result<Arc<Ledgers>, sqlx::Error> {
        let record = ledgers::default_record(&home.store, &home.config).await?;
        let ready = std::sync::OnceLock::from(());
        let router = crate::ledger_router(home.clone());
        let default = Arc::new(Runtime {
            record,
            router,
            state: home,
            ready,
            readying: tokio::sync::Mutex::new(()),
            failed_at: Mutex::default(),
        });
        Ok(Arc::new(Ledgers {
            default,
            mode,
            shutdown,
            others: RwLock::default(),
            building: tokio::sync::Mutex::new(()),
            tasks: Mutex::default(),
        }))
    }

    /// The state of `default`, which holds the directory and the tokens.
    pub fn home(&self) -> &AppState {
        &self.default.state
    }

    pub fn default_runtime(&self) -> &Arc<Runtime> {
        &self.default
    }

    /// The ledger named `name` if the directory has it (not necessarily ready).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<Runtime>>, ApiError> {
        if name == DEFAULT_LEDGER {
            return Ok(Some(self.default.clone()));
        }
        if let Some(r) = self.known(name) {
            return Ok(Some(r));
        }
        if !ledgers::valid_ledger_name(name) {
            return Ok(None);
        }
        let Some(record) = ledgers::find(&self.home().store, name).await? else { return Ok(None) };
        let _building = self.building.lock().await;
        if let Some(r) = self.known(name) {
            return Ok(Some(r));
        }
        let runtime = self.build(record)?;
        self.others.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned(), runtime.clone());
        Ok(Some(runtime))
    }

    fn known(&self, name: &str) -> Option<Arc<Runtime>> {
        self.others.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Every ledger this process has met, `default` first.
    pub fn met(&self) -> Vec<Arc<Runtime>> {
        let others = self.others.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::once(self.default.clone()).chain(others.values().cloned()).collect()
    }

    fn build(&self, record: LedgerRecord) -> Result<Arc<Runtime>, ApiError> {
        let home = self.home();
        let config = record.config(&home.config).ok_or_else(|| {
            ApiError::unavailable(&format!("the shard {} of this ledger is not configured here", record.shard))
        })?;
        let pool = ledger_infrastructure::db::connect_lazy(&config.database_url, &config, config.db_pool_max)?;
        let replica = match &config.database_read_url {
            Some(url) => Some(ledger_infrastructure::db::connect_lazy(url, &config, config.db_pool_max)?),
            None => None,
        };
        let mut core = Core::new(config, pool, home.nats.clone());
        core.replica_pool = replica;
        let mut core = core.keyed(home.master_key.clone());
        core.webhook_policy = home.webhook_policy.clone();
        core.signer = home.signer.clone();
        core.clock = home.clock.clone();
        let state = AppState::within(core, home.clone());
        let router = crate::ledger_router(state.clone());
        let (ready, readying) = (std::sync::OnceLock::new(), tokio::sync::Mutex::new(()));
        Ok(Arc::new(Runtime { record, state, router, ready, readying, failed_at: Mutex::default() }))
    }

    /// Makes the ledger's schema whole on its shard (once per process) and starts its
    /// tasks; 503 while its shard does not answer.
    pub async fn ready(&self, runtime: &Runtime) -> Result<(), ApiError> {
        if runtime.ready.get().is_some() {
            return Ok(());
        }
        let recently_failed = || {
            runtime
                .failed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() < READY_RETRY)
        };
        if recently_failed() {
            return Err(ApiError::unavailable(&"the shard of this ledger does not answer"));
        }
        let _readying = runtime.readying.lock().await;
        if runtime.ready.get().is_some() {
            return Ok(());
        }
        if recently_failed() {
            return Err(ApiError::unavailable(&"the shard of this ledger does not answer"));
        }
        let record = &runtime.record;
        let shard = self
            .home()
            .config
            .shards
            .iter()
            .find(|s| s.name == record.shard)
            .ok_or_else(|| ApiError::unavailable(&"the shard of this ledger is not configured here"))?;
        if let Err(e) = ledgers::prepare_existing(&shard.url, &record.schema).await {
            *runtime.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
            tracing::warn!(ledger = %record.name, shard = %shard.name, error = %e, "ledger not ready");
            return Err(ApiError::unavailable(&"the shard of this ledger does not answer"));
        }
        if let Err(e) = crate::run::serve::seal_legacy(&runtime.state).await {
            *runtime.failed_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
            tracing::warn!(ledger = %record.name, error = %e, "ledger not ready: sealing data of an earlier version");
            return Err(ApiError::unavailable(&"the shard of this ledger does not answer"));
        }
        let tasks = crate::run::serve::spawn_ledger_tasks(&runtime.state, self.mode, self.shutdown.clone());
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(tasks);
        let _ = runtime.ready.set(());
        tracing::info!(ledger = %record.name, shard = %shard.name, "ledger ready");
        Ok(())
    }

    /// Looks for ledgers created by any process and readies each (what a process that
    /// runs workers does, so every ledger's relay, projections and payouts run).
    pub fn spawn_discovery(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DIRECTORY_POLL);
            loop {
                tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
                let Some(ledgers) = this.upgrade() else { return };
                let records = match ledgers::list(&ledgers.home().store).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the directory failed");
                        continue;
                    }
                };
                for record in records {
                    let Ok(Some(runtime)) = ledgers.get(&record.name).await else { continue };
                    if runtime.ready.get().is_some() || runtime.readying.try_lock().is_err() {
                        continue;
                    }
                    // Each in its own task: a shard that hangs delays only its ledgers;
                    // one that does not answer is tried again at the next tick.
                    let ledgers = ledgers.clone();
                    tokio::spawn(async move {
                        let _ = ledgers.ready(&runtime).await;
                    });
                }
            }
        })
    }

    /// The tasks started for ledgers other than `default`, to wait for at shutdown.
    pub fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Closes the pools of every ledger but `default`.
    pub async fn close(&self) {
        let others: Vec<Arc<Runtime>> =
            self.others.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        for r in others {
            r.state.pool.close().await;
        }
    }
}
