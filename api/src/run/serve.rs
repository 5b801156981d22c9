//! Starting the service: state, background tasks (relay, projection workers, cache
//! invalidation, projection-position listener, idempotency sweeper) and the HTTP server
//! with graceful shutdown.

use crate::run::state::{AppState, Core};
use ledger_infrastructure::Config;
use ledger_infrastructure::payouts::{PayoutLimits, PayoutWorker};
use ledger_infrastructure::relay::{Relay, RelayLimits};
use ledger_projections::{OnApplied, Projection, ProjectionWorker, WorkerLimits};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Connects (creating and migrating the database if needed) and builds the process's
/// core. NATS is connected in the background: the service starts without it.
pub async fn build_core(mut config: Config) -> Result<Core, StartError> {
    config.settle_shards();
    let pool = ledger_infrastructure::connect_and_migrate(&config).await?;
    // A wrong or missing master key stops start-up here, before anything is served.
    let master_key = ledger_infrastructure::keys::MasterKey::load(&pool, config.master_key.as_deref()).await?;
    let sealed = ledger_infrastructure::webhooks::store::seal_legacy(&pool, &master_key).await?;
    if sealed > 0 {
        tracing::info!(webhooks = sealed, "sealed webhook secrets kept in clear by an earlier version");
    }
    let webhook_policy = ledger_infrastructure::webhooks::HostPolicy::new(&config.webhook_allow, &config.webhook_deny)
        .map_err(StartError::Config)?;
    let nats = ledger_infrastructure::nats::connect(&config.nats_url)
        .await
        .map_err(|e| sqlx::Error::Configuration(format!("invalid NATS_URL: {e}").into()))?;
    // Lazy: the service starts (and writes) while the replica is down or still
    // replaying the database's creation; reads go to the primary until it answers.
    let replica = match &config.database_read_url {
        Some(url) => Some(ledger_infrastructure::db::connect_lazy(url, &config, config.db_pool_max)?),
        None => None,
    };
    let mut core = Core::new(config, pool, nats);
    // Decisions take the database's time from the start; a database that does not
    // answer yet leaves this process's wall clock until the first reading.
    if let Err(e) = core.clock.sync(&core.pool).await {
        tracing::warn!(error = %e, "reading the database's clock failed; using this process's until it answers");
    }
    // A log stamped ahead of the database's clock (by a process of an earlier version
    // whose clock ran fast) stamps every new event at its head's time until real time
    // catches up: say so.
    let ahead: Option<f64> =
        sqlx::query_scalar("select extract(epoch from recorded_at - clock_timestamp())::float8 from log_head")
            .fetch_one(&core.pool)
            .await
            .ok();
    if let Some(s) = ahead.filter(|s| *s > 60.0) {
        tracing::warn!(
            seconds_ahead = s,
            "the log's head is stamped ahead of the database's clock; new events keep its time until the clock passes it (docs/CAP.md, clock)"
        );
    }
    core.replica_pool = replica;
    let mut core = core.keyed(std::sync::Arc::new(master_key));
    core.webhook_policy = std::sync::Arc::new(webhook_policy);
    core.signer = std::sync::Arc::new(
        ledger_infrastructure::signing::Signer::load(&core.pool, core.config.signing_key.as_deref(), &core.master_key)
            .await?,
    );
    seal_legacy(&core).await?;
    Ok(core)
}

/// Seals in place the personal values an earlier version kept in clear, once, before
/// anything is served (`privacy::legacy`; docs/PRIVACY.md).
pub async fn seal_legacy(core: &Core) -> Result<(), StartError> {
    if let Some(r) = core.privacy.seal_legacy().await? {
        tracing::warn!(
            ledger = %core.config.ledger,
            accounts = r.rewritten,
            first_position = r.first_position,
            position = r.position,
            "personal values kept in clear by an earlier version were sealed in place; the chain was re-anchored"
        );
    }
    Ok(())
}

/// After a re-anchoring, purges the clear `AccountOpened` messages from JetStream
/// (retried while NATS does not answer, for at most an hour; a later start tries again).
fn spawn_legacy_purge(state: &Core, shutdown: CancellationToken) -> JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        let js = async_nats::jetstream::new(state.nats.clone());
        for _ in 0..360 {
            match ledger_infrastructure::privacy::purge_legacy_messages(&state.pool, &js, &state.names).await {
                Ok(0) => return,
                Ok(n) => {
                    tracing::info!(ledger = %state.config.ledger, messages = n, "purged messages published in clear");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "purging messages published in clear failed; trying again"),
            }
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(10)) => {} }
        }
    })
}

/// How many expired idempotency records one sweep deletes at most.
const SWEEP_BATCH_MAX: i64 = 10_000;

/// Deletes expired idempotency records every minute.
pub fn spawn_idempotency_sweeper(state: &AppState, shutdown: CancellationToken) -> JoinHandle<()> {
    let store = state.store.clone();
    let limit = state.config.db_statement_timeout;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
            // Bounded: a connection cut off by a silent network must not stop the sweeps.
            let sweeping = store.sweep_expired_keys(SWEEP_BATCH_MAX);
            match ledger_infrastructure::db::within(limit, "sweeping idempotency keys", sweeping).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "swept expired idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
    })
}

/// Starts the relay, the payout worker, the projection workers (each calling
/// `on_applied` after a batch) and the scheduled reconciliation: what `ledger worker`
/// runs. Workers get only the process's core.
pub fn spawn_workers(state: &Core, on_applied: OnApplied, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let relay = Relay::new(
        state.config.database_url.clone(),
        async_nats::jetstream::new(state.nats.clone()),
        state.names.clone(),
        state.relay_breaker.clone(),
        RelayLimits::from_config(&state.config),
    )
    .fed_by(&state.store);
    let config = &state.config;
    let payouts = PayoutWorker {
        pool: state.pool.clone(),
        js: async_nats::jetstream::new(state.nats.clone()),
        names: state.names.clone(),
        bus: state.bus.clone(),
        provider: state.provider.clone(),
        breaker: state.provider_breaker.clone(),
        limits: PayoutLimits {
            attempts_max: config.payout_attempts_max,
            retry_total: config.payout_retry_total,
            backoff_base: config.payout_backoff_base,
            backoff_max: config.payout_backoff_max,
            ..PayoutLimits::default()
        },
    };
    let expiry = ledger_projections::expiry::ExpiryWorker {
        pool: state.pool.clone(),
        bus: state.bus.clone(),
        interval: Duration::from_secs(1),
        clock: state.clock.clone(),
        step_time_limit: state.config.db_statement_timeout,
    };
    let webhooks = ledger_infrastructure::webhooks::Dispatcher {
        pool: ledger_infrastructure::db::connect_lazy(&config.database_url, config, config.webhook_db_pool_max)
            .expect("the database URL parsed when the main pool connected"),
        database_url: config.database_url.clone(),
        tls: ledger_infrastructure::webhooks::Dispatcher::tls(config.webhook_ca_file.as_deref()),
        policy: state.webhook_policy.clone(),
        key: state.master_key.clone(),
        privacy: state.privacy.clone(),
        limits: ledger_infrastructure::webhooks::WebhookLimits::from_config(config),
        owner: state.instance_id,
        ledger: config.ledger.clone(),
    };
    let mut handles = vec![
        tokio::spawn(relay.run(shutdown.clone())),
        tokio::spawn(webhooks.run(shutdown.clone())),
        tokio::spawn(payouts.run(shutdown.clone())),
        tokio::spawn(expiry.run(shutdown.clone())),
    ];
    handles.push(spawn_legacy_purge(state, shutdown.clone()));
    if !state.config.tree_poll.is_zero() {
        let tree = ledger_infrastructure::tree::run(
            state.pool.clone(),
            state.config.tree_poll,
            state.config.db_statement_timeout,
            state.tree.clone(),
            shutdown.clone(),
        );
        handles.push(tokio::spawn(tree));
    }
    let (pool, url) = (state.pool.clone(), state.config.database_url.clone());
    handles.push(tokio::spawn(async move {
        if let Err(e) = ledger_projections::rebuild::recover_interrupted(&pool, &url).await {
            tracing::warn!(error = %e, "checking for interrupted rebuilds failed");
        }
    }));
    if !config.reconcile_interval.is_zero() {
        handles.push(spawn_scheduled_reconciliation(state, shutdown.clone()));
    }
    let projector = ProjectionWorker {
        pool: state.pool.clone(),
        js: async_nats::jetstream::new(state.nats.clone()),
        names: state.names.clone(),
        projections: Projection::ALL.to_vec(),
        // A step is one transaction of several statements per projection: four statement
        // time-outs, so a slow but sound batch is never given up again and again.
        limits: WorkerLimits {
            step_time_limit: state.config.db_statement_timeout * 4,
            linger: state.config.projection_linger,
            ..WorkerLimits::default()
        },
        on_applied: on_applied.clone(),
        memo: Default::default(),
    };
    handles.push(tokio::spawn(projector.run(shutdown.clone())));
    handles
}

/// Reconciles the last `reconcile_window` every `reconcile_interval`; a run already
/// going in another instance makes this one skip its turn.
fn spawn_scheduled_reconciliation(state: &Core, shutdown: CancellationToken) -> JoinHandle<()> {
    let state = state.clone();
    let (interval, window) = (state.config.reconcile_interval, state.config.reconcile_window);
    tokio::spawn(async move {
        loop {
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(interval) => {} }
            // One per run: what a run knows of the other ledgers is read when it starts.
            let reconciler = crate::routes::reconciliations::reconciler(&state);
            let Ok(lock) = reconciler.lock().await else { continue };
            let to = state.clock.now();
            let from = to - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::days(1));
            let run_id = Uuid::now_v7();
            if reconciler.start(run_id, from, to, "scheduler").await.is_ok() {
                match reconciler.run(lock, run_id, (from, to), "scheduler", |_, _| {}).await {
                    Ok(t) => {
                        tracing::info!(%run_id, matched = t.matched, mismatches = t.mismatches, "scheduled reconciliation")
                    }
                    Err(e) => tracing::warn!(%run_id, error = %e, "scheduled reconciliation failed"),
                }
            }
        }
    })
}

/// Serves the API of every ledger on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve(
    ledgers: std::sync::Arc<crate::run::ledgers::Ledgers>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = ledgers.home().config.request_timeout;
    // A request past its deadline gets a problem document, like every other error.
    let app = crate::app(ledgers).layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                crate::http::error::ApiError::unavailable(&"the request timed out")
            }))
            .layer(tower::timeout::TimeoutLayer::new(timeout)),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Starts what a process of `mode` runs for one ledger: the workers (relay, payouts,
/// projections, ...) unless it only serves the API, and the read side (cache
/// followers, idempotency sweeper) unless it only runs workers.
pub fn spawn_ledger_tasks(state: &AppState, mode: Mode, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if mode != Mode::Api {
        let local = (mode == Mode::All).then(|| state.clone());
        tasks.extend(spawn_workers(
            &state.core,
            crate::read::coherence::on_applied(&state.core, local),
            shutdown.clone(),
        ));
    }
    if mode != Mode::Worker {
        tasks.push(spawn_idempotency_sweeper(state, shutdown.clone()));
        tasks.extend(crate::read::coherence::spawn_read_side(state, shutdown));
    }
    tasks
}

/// Which parts of the service a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// API and workers (`ledger serve`).
    All,
    /// Only the HTTP API (`ledger api`).
    Api,
    /// Only the relay and projection workers (`ledger worker`).
    Worker,
}

/// A started service.
pub struct Running {
    /// The process's HTTP state (for `Mode::Worker`, built over its core but serving
    /// nothing: tests read the core through it).
    pub state: AppState,
    /// Where the API listens (not for `Mode::Worker`).
    pub addr: Option<std::net::SocketAddr>,
    /// Every ledger the process has met (`state` is `default`'s).
    pub ledgers: std::sync::Arc<crate::run::ledgers::Ledgers>,
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("master key: {0}")]
    MasterKey(#[from] ledger_infrastructure::keys::KeyError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Starts the parts of the service that `mode` names.
pub async fn start(config: Config, mode: Mode) -> Result<Running, StartError> {
    let addr = config.http_addr.clone();
    let core = build_core(config).await?;
    let state = AppState::new(core.clone());
    let shutdown = CancellationToken::new();
    let mut tasks = spawn_ledger_tasks(&state, mode, shutdown.clone());
    tasks.push(core.clock.spawn_sync(core.pool.clone(), shutdown.clone()));
    let ledgers = crate::run::ledgers::Ledgers::new(state.clone(), mode, shutdown.clone()).await?;
    if mode != Mode::Api {
        tasks.push(ledgers.spawn_discovery());
    }
    let (mut bound, mut server) = (None, None);
    if mode == Mode::Worker
        && let Some(metrics_addr) = state.config.metrics_addr.clone()
    {
        // A worker has no API; it still exposes its metrics (relay, projections, payouts).
        let listener =
            TcpListener::bind(&metrics_addr).await.map_err(|source| StartError::Bind { addr: metrics_addr, source })?;
        bound = listener.local_addr().ok();
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(crate::http::metrics::render_core))
            .route("/health/live", axum::routing::get(|| async { "live" }))
            .with_state(core.clone());
        let stop = shutdown.clone();
        server = Some(tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        }));
    }
    if mode != Mode::Worker {
        let listener =
            TcpListener::bind(&addr).await.map_err(|source| StartError::Bind { addr: addr.clone(), source })?;
        bound = listener.local_addr().ok();
        let stop = shutdown.clone();
        server = Some(tokio::spawn(serve(ledgers.clone(), listener, async move { stop.cancelled().await })));
    }
    Ok(Running { state, addr: bound, ledgers, shutdown, tasks, server })
}

impl Running {
    /// Stops accepting, lets in-flight requests and the workers' current batches
    /// finish, flushes NATS and closes the pool, all within `deadline`.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        let drain = async {
            if let Some(server) = self.server {
                let _ = server.await;
            }
            for task in self.tasks.into_iter().chain(self.ledgers.take_tasks()) {
                let _ = task.await;
            }
            let _ = self.state.nats.flush().await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(?deadline, "shutdown deadline passed; exiting with work in flight");
        }
        self.ledgers.close().await;
        self.state.pool.close().await;
    }

    /// Resolves when the HTTP server has stopped (after shutdown).
    pub async fn wait(&mut self) {
        if let Some(server) = self.server.as_mut() {
            let _ = server.await;
            self.server = None;
        } else {
            self.shutdown.cancelled().await;
        }
    }
}
