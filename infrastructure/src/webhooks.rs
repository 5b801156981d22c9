//! Webhooks (API.md "Webhooks"): committed events POSTed to clients' endpoints, signed
//! with HMAC-SHA256, in log order per webhook, one request in flight per webhook, at
//! least once.
//!
//! The cursor of a webhook is a log position in Postgres (`webhooks.delivered_position`),
//! not a JetStream consumer: the log is the truth, the cursor commits beside it, and
//! deliveries go on while NATS is down or after its stream was lost. A dispatcher runs
//! in every worker process; each webhook is delivered by one process at a time, the one
//! holding its lease (`lease_owner`, `lease_until`, renewed before every request; a
//! process that dies loses it after `lease`). Each webhook has its own task, its own
//! breaker (`webhook:<id>`) and a per-request time-out, so a slow or dead endpoint holds
//! only its own task: never commands, other webhooks, projections or payouts.
//!
//! Failures are retried with exponential backoff and full jitter (the first retry within
//! `backoff_base`·2, capped at `backoff_max`), honouring `Retry-After`. While the breaker
//! is open no request is sent and no attempt counted. After `attempts_max` attempts the
//! event is dead-lettered (`webhook_dead_letters`) and delivery goes on with the next one;
//! a redriven dead letter is sent again when it is redriven.

use crate::breaker::{BreakerConfig, BreakerSnapshot, BreakerState, CircuitBreaker, backoff_delay};
use crate::store::{IdempotencyClaim, RecordedEvent, StoredResponse};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod https;

/// Limits of the dispatcher.
#[derive(Clone, Copy, Debug)]
pub struct WebhookLimits {
    /// One request (`LEDGER_WEBHOOK_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Attempts at one event before it is dead-lettered (`LEDGER_WEBHOOK_ATTEMPTS_MAX`).
    pub attempts_max: u32,
    pub backoff_base: Duration,
    /// `LEDGER_WEBHOOK_BACKOFF_MAX_MS`.
    pub backoff_max: Duration,
    /// How long a lease lasts without renewal (a dead process's webhooks move on after it).
    pub lease: Duration,
    /// How often new webhooks and new events are looked for (besides `NOTIFY`).
    pub poll: Duration,
    /// The most of a response body that is read.
    pub response_bytes_max: usize,
    pub breaker: BreakerConfig,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            timeout: Duration::from_millis(5000),
            attempts_max: 8,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_millis(60_000),
            lease: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            response_bytes_max: 16 * 1024,
            // A success clears the count, so with a day's window this is "5 consecutive
            // failures", however far apart `Retry-After` spaces them.
            breaker: BreakerConfig {
                failure_threshold: 5,
                window: Duration::from_secs(86_400),
                cooldown: Duration::from_secs(5),
            },
        }
    }
}

impl WebhookLimits {
    pub fn from_config(c: &crate::Config) -> WebhookLimits {
        WebhookLimits {
            timeout: c.webhook_timeout,
            // Longer than any one request, which runs between two renewals.
            lease: Duration::from_secs(10).max(c.webhook_timeout * 2 + Duration::from_secs(5)),
            attempts_max: c.webhook_attempts_max.max(1),
            backoff_max: c.webhook_backoff_max,
            breaker: BreakerConfig { cooldown: c.webhook_breaker_cooldown, ..WebhookLimits::default().breaker },
            ..WebhookLimits::default()
        }
    }
}

/// A webhook as stored (the secret aside).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub status: String,
    pub delivered_position: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub breaker: String,
    pub breaker_failures: i32,
    pub breaker_opened_at: Option<DateTime<Utc>>,
}

const WEBHOOK_COLUMNS: &str = "id, url, event_types, description, status, delivered_position, attempts, last_error, \
    breaker, breaker_failures, breaker_opened_at";

/// A webhook to register.
#[derive(Clone, Debug)]
pub struct NewWebhook {
    pub id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub secret: String,
}

/// A new secret: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// `Ledger-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Registers a webhook and the final answer of its creation (the claim `token` holds
/// on the key) in one transaction. Returns `false` (nothing created) if the claim was
/// lost meanwhile.
pub async fn register(
    pool: &PgPool,
    new: &NewWebhook,
    claim: &IdempotencyClaim,
    token: Uuid,
    response: &StoredResponse,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !crate::EventStore::finish_claim(&mut *tx, claim, token, response).await? {
        return Ok(false);
    }
    // Events committed after this statement's snapshot are delivered; the head is
    // moved only by committing appends, so none is missed and none from before sent.
    sqlx::query(
        "insert into webhooks (id, url, event_types, description, secret, created_position, delivered_position)
         select $1, $2, $3, $4, $5, position, position from log_head",
    )
    .bind(new.id)
    .bind(&new.url)
    .bind(&new.event_types)
    .bind(&new.description)
    .bind(&new.secret)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The active webhooks, oldest first.
pub async fn active(pool: &PgPool) -> Result<Vec<WebhookRow>, sqlx::Error> {
    let sql = format!("select {WEBHOOK_COLUMNS} from webhooks where status = 'active' order by created_at, id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await
}

/// Stops a webhook's deliveries. Returns whether it exists (deleted before or now).
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update webhooks set status = 'deleted', deleted_at = coalesce(deleted_at, now()), lease_owner = null
         where id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The breakers of the active webhooks, as their dispatchers last recorded them.
pub async fn breakers(pool: &PgPool) -> Result<Vec<BreakerSnapshot>, sqlx::Error> {
    Ok(active(pool)
        .await?
        .into_iter()
        .map(|w| BreakerSnapshot {
            name: format!("webhook:{}", w.id),
            state: match w.breaker.as_str() {
                "open" => BreakerState::Open,
                "half_open" => BreakerState::HalfOpen,
                _ => BreakerState::Closed,
            },
            failures: u32::try_from(w.breaker_failures).unwrap_or(0),
            opened_at: w.breaker_opened_at,
        })
        .collect())
}

/// An open webhook dead letter.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WebhookDeadLetter {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_position: i64,
    pub attempts: i32,
    pub last_error: String,
    pub dead_lettered_at: DateTime<Utc>,
}

/// The open dead letters of all webhooks, oldest first.
pub async fn open_dead_letters(pool: &PgPool) -> Result<Vec<WebhookDeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "select id, webhook_id, event_position, attempts, last_error, dead_lettered_at from webhook_dead_letters
         where status = 'open' order by dead_lettered_at, id",
    )
    .fetch_all(pool)
    .await
}

/// What an operator does with a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Redrive,
    Discard,
}

/// Why a dead letter was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no such webhook dead letter")]
    NotFound,
    #[error("the dead letter is not open any more")]
    NotOpen,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Redrives (sends again, when its dispatcher next looks) or discards an open webhook
/// dead letter.
/// A redrive needs its webhook active (a deleted one has no dispatcher); a discard also
/// takes a dead letter whose redrive has not been sent yet.
pub async fn resolve_dead_letter(pool: &PgPool, id: Uuid, resolution: Resolution) -> Result<(), ResolveError> {
    let done = match resolution {
        Resolution::Redrive => {
            sqlx::query(
                "update webhook_dead_letters d set status = 'redriving' from webhooks w
                 where d.id = $1 and d.status = 'open' and w.id = d.webhook_id and w.status = 'active'",
            )
            .bind(id)
            .execute(pool)
            .await?
        }
        Resolution::Discard => {
            sqlx::query(
                "update webhook_dead_letters set status = 'discarded', resolved_at = now()
                 where id = $1 and status in ('open', 'redriving')",
            )
            .bind(id)
            .execute(pool)
            .await?
        }
    };
    if done.rows_affected() == 1 {
        return Ok(());
    }
    let exists: bool = sqlx::query_scalar("select exists (select 1 from webhook_dead_letters where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Err(if exists { ResolveError::NotOpen } else { ResolveError::NotFound })
}

/// Turns an event into the request body (the event exactly as `GET /v1/events` shows it).
pub type Render = Arc<dyn Fn(&RecordedEvent) -> Result<Vec<u8>, String> + Send + Sync>;

/// The webhook dispatcher of one process.
#[derive(Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub database_url: String,
    /// TLS for `https` endpoints.
    pub tls: tokio_rustls::TlsConnector,
    pub limits: WebhookLimits,
    pub render: Render,
    /// This process, as a lease owner.
    pub owner: Uuid,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Failed { error: String, retry_after: Option<Duration> },
}

/// One webhook's delivery state, loaded with its lease.
#[derive(sqlx::FromRow)]
struct Leased {
    id: Uuid,
    url: String,
    event_types: Option<Vec<String>>,
    secret: String,
    delivered_position: i64,
    attempts: i32,
}

impl Dispatcher {
    /// The TLS client for `https` endpoints: the platform's roots plus `ca_file`'s
    /// (`LEDGER_WEBHOOK_CA_FILE`). An unreadable file is logged and left out.
    pub fn tls(ca_file: Option<&str>) -> tokio_rustls::TlsConnector {
        https::connector(ca_file).unwrap_or_else(|e| {
            tracing::error!(error = %e, "LEDGER_WEBHOOK_CA_FILE is unusable; only the platform's roots are trusted");
            https::connector(None).expect("the platform's roots make a TLS client")
        })
    }

    /// Runs until `shutdown`: takes the leases of active webhooks and delivers each in a
    /// task of its own.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks: HashMap<Uuid, tokio::task::JoinHandle<()>> = HashMap::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(listen(self.database_url.clone(), wake.clone(), shutdown.clone()));
        while !shutdown.is_cancelled() {
            tasks.retain(|_, t| !t.is_finished());
            match active(&self.pool).await {
                Ok(webhooks) => {
                    for w in webhooks {
                        if tasks.contains_key(&w.id) {
                            continue;
                        }
                        let (me, stop, wake) = (self.clone(), shutdown.clone(), wake.clone());
                        tasks
                            .insert(w.id, tokio::spawn(async move { me.deliver_while_leased(w.id, stop, wake).await }));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing webhooks failed"),
            }
            tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(self.limits.poll) => {} }
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
        let _ = listener.await;
    }

    /// Takes (or renews) the lease; `None` if another process holds it or the webhook
    /// was deleted.
    async fn lease(&self, id: Uuid) -> Result<Option<Leased>, sqlx::Error> {
        sqlx::query_as(
            "update webhooks set lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond'
             where id = $1 and status = 'active'
               and (lease_owner is null or lease_owner = $2 or lease_until < now())
             returning id, url, event_types, secret, delivered_position, attempts",
        )
        .bind(id)
        .bind(self.owner)
        .bind(i64::try_from(self.limits.lease.as_millis()).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
    }

    async fn release(&self, id: Uuid) {
        let _ = sqlx::query("update webhooks set lease_owner = null where id = $1 and lease_owner = $2")
            .bind(id)
            .bind(self.owner)
            .execute(&self.pool)
            .await;
    }

    /// Delivers one webhook while this process holds its lease.
    async fn deliver_while_leased(self, id: Uuid, shutdown: CancellationToken, wake: Arc<tokio::sync::Notify>) {
        let breaker = CircuitBreaker::new(&format!("webhook:{id}"), self.limits.breaker);
        let mut retry_in = Duration::ZERO;
        while !shutdown.is_cancelled() {
            if !retry_in.is_zero() {
                match self.wait_leased(id, retry_in, &shutdown).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(webhook = %id, error = %e, "renewing a webhook lease failed"),
                }
            }
            match self.step(id, &breaker).await {
                Ok(Step::Leased(next)) => retry_in = next,
                Ok(Step::Idle) => {
                    retry_in = Duration::ZERO;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.limits.poll) => {}
                    }
                }
                Ok(Step::NotLeased) => return,
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "webhook delivery step failed; retrying");
                    retry_in = Duration::from_secs(1);
                }
            }
        }
        self.release(id).await;
    }

    /// Waits `total` (a backoff, a `Retry-After`, a breaker's cool-down), renewing the
    /// lease meanwhile. Returns whether this process still holds it.
    async fn wait_leased(&self, id: Uuid, total: Duration, shutdown: &CancellationToken) -> Result<bool, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + total;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || shutdown.is_cancelled() {
                return Ok(true);
            }
            let nap = (deadline - now).min(self.limits.lease / 3);
            tokio::select! { _ = shutdown.cancelled() => return Ok(true), _ = tokio::time::sleep(nap) => {} }
            if self.lease(id).await?.is_none() {
                return Ok(false);
            }
        }
    }

    /// Renews the lease and sends the next thing due: a redriven dead letter first, else
    /// the next matching event after the cursor.
    async fn step(&self, id: Uuid, breaker: &CircuitBreaker) -> Result<Step, sqlx::Error> {
        let Some(hook) = self.lease(id).await? else { return Ok(Step::NotLeased) };
        let redriven: Option<(Uuid, i64)> = sqlx::query_as(
            "select id, event_position from webhook_dead_letters where webhook_id = $1 and status = 'redriving'
             order by event_position limit 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((dead_letter, position)) = redriven {
            let event = crate::EventStore::read_range(&self.pool, position - 1, position).await?;
            let Some(event) = event.into_iter().next() else { return Ok(Step::Idle) };
            return match self.attempt(&hook, &event, breaker).await {
                // The breaker is open: nothing sent, the redrive stays due.
                Err((_, Err(retry_in))) => Ok(Step::Leased(retry_in.max(Duration::from_millis(10)))),
                Ok(()) => {
                    sqlx::query(
                        "update webhook_dead_letters set status = 'delivered', resolved_at = now() where id = $1",
                    )
                    .bind(dead_letter)
                    .execute(&self.pool)
                    .await?;
                    Ok(Step::Leased(Duration::ZERO))
                }
                Err((error, _)) => {
                    // A redrive is one more try; a failed one is open again.
                    sqlx::query(
                        "update webhook_dead_letters set status = 'open', attempts = attempts + 1, last_error = $2
                         where id = $1",
                    )
                    .bind(dead_letter)
                    .bind(&error)
                    .execute(&self.pool)
                    .await?;
                    Ok(Step::Leased(Duration::ZERO))
                }
            };
        }
        let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&self.pool).await?;
        let types = hook.event_types.as_deref();
        let next = crate::EventStore::next_matching(&self.pool, hook.delivered_position, head, types).await?;
        let Some(event) = next else {
            // Nothing up to the head is for this webhook: the cursor moves past it, so the
            // next look scans only what is appended after.
            if head > hook.delivered_position && hook.attempts == 0 {
                self.advance(id, head).await?;
            }
            return Ok(Step::Idle);
        };
        match self.attempt(&hook, &event, breaker).await {
            Ok(()) => {
                self.advance(id, event.position).await?;
                Ok(Step::Leased(Duration::ZERO))
            }
            Err((error, Err(retry_in))) => {
                // The breaker is open: nothing was sent, nothing counted.
                tracing::debug!(webhook = %id, %error, "webhook breaker open");
                Ok(Step::Leased(retry_in.max(Duration::from_millis(10))))
            }
            Err((error, Ok(retry_after))) => {
                let attempts = u32::try_from(hook.attempts).unwrap_or(0) + 1;
                if attempts >= self.limits.attempts_max {
                    self.dead_letter(id, event.position, attempts, &error).await?;
                    return Ok(Step::Leased(Duration::ZERO));
                }
                sqlx::query("update webhooks set attempts = $2, last_error = $3 where id = $1 and lease_owner = $4")
                    .bind(id)
                    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
                    .bind(&error)
                    .bind(self.owner)
                    .execute(&self.pool)
                    .await?;
                metrics::counter!("ledger_webhook_retries_total").increment(1);
                let backoff = backoff_delay(attempts - 1, self.limits.backoff_base, self.limits.backoff_max);
                // The endpoint's Retry-After wins when it asks for longer, up to the cap.
                let wait = retry_after.map_or(backoff, |r| r.max(backoff)).min(self.limits.backoff_max);
                Ok(Step::Leased(wait))
            }
        }
    }

    /// Moves the cursor past `position` (delivered or dead-lettered).
    async fn advance(&self, id: Uuid, position: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update webhooks set delivered_position = greatest(delivered_position, $2), attempts = 0
             where id = $1 and lease_owner = $3",
        )
        .bind(id)
        .bind(position)
        .bind(self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Dead-letters the event and moves the cursor past it, in one transaction, if this
    /// process still holds the lease.
    async fn dead_letter(&self, id: Uuid, position: i64, attempts: u32, error: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "update webhooks set delivered_position = greatest(delivered_position, $2), attempts = 0, last_error = $3
             where id = $1 and lease_owner = $4 and delivered_position < $2",
        )
        .bind(id)
        .bind(position)
        .bind(error)
        .bind(self.owner)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(());
        }
        sqlx::query(
            "insert into webhook_dead_letters (id, webhook_id, event_position, attempts, last_error, status)
             values ($1, $2, $3, $4, $5, 'open') on conflict (webhook_id, event_position) do nothing",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(position)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("ledger_webhooks_dead_lettered_total").increment(1);
        tracing::warn!(webhook = %id, position, attempts, error, "webhook event dead-lettered");
        Ok(())
    }

    /// One request behind the breaker. `Err((error, Err(retry_in)))`: the breaker
    /// refused it (nothing sent); `Err((error, Ok(retry_after)))`: it was sent and failed.
    async fn attempt(
        &self,
        hook: &Leased,
        event: &RecordedEvent,
        breaker: &CircuitBreaker,
    ) -> Result<(), (String, Result<Option<Duration>, Duration>)> {
        let permit = breaker.acquire().map_err(|open| (open.to_string(), Err(open.retry_in)))?;
        let outcome = self.send(hook, event).await;
        match &outcome {
            Attempt::Delivered => permit.success(),
            Attempt::Failed { .. } => permit.failure(),
        }
        self.record_breaker(hook.id, breaker).await;
        metrics::counter!("ledger_webhook_attempts_total", "outcome" => match outcome {
            Attempt::Delivered => "delivered",
            Attempt::Failed { .. } => "failed",
        })
        .increment(1);
        match outcome {
            Attempt::Delivered => Ok(()),
            Attempt::Failed { error, retry_after } => Err((error, Ok(retry_after))),
        }
    }

    /// Keeps the breaker's state where every API instance can list it.
    async fn record_breaker(&self, id: Uuid, breaker: &CircuitBreaker) {
        let snapshot = breaker.snapshot();
        let state = match snapshot.state {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        let _ = sqlx::query(
            "update webhooks set breaker = $2, breaker_failures = $3, breaker_opened_at = $4
             where id = $1 and lease_owner = $5",
        )
        .bind(id)
        .bind(state)
        .bind(i32::try_from(snapshot.failures).unwrap_or(i32::MAX))
        .bind(snapshot.opened_at)
        .bind(self.owner)
        .execute(&self.pool)
        .await;
    }

    /// POSTs the event, signed; reads at most `response_bytes_max` of the answer.
    /// Redirects are not followed (a 3xx is a failure).
    async fn send(&self, hook: &Leased, event: &RecordedEvent) -> Attempt {
        let body = match (self.render)(event) {
            Ok(body) => body,
            Err(e) => return Attempt::Failed { error: format!("the event does not render: {e}"), retry_after: None },
        };
        let t = Utc::now().timestamp();
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("ledger-event-id", event.event_id.to_string()),
            ("ledger-signature", signature(&hook.secret, t, &body)),
        ];
        let limits = &self.limits;
        match https::post(&self.tls, &hook.url, &headers, body, limits.timeout, limits.response_bytes_max).await {
            Ok(answer) if (200..300).contains(&answer.status) => Attempt::Delivered,
            Ok(answer) => Attempt::Failed {
                error: format!("the endpoint answered {}", answer.status),
                retry_after: answer.retry_after,
            },
            Err(error) => Attempt::Failed { error, retry_after: None },
        }
    }
}

/// What a step did.
enum Step {
    /// Sent or tried something; go again after the duration.
    Leased(Duration),
    /// Nothing due.
    Idle,
    /// Another process holds the lease, or the webhook was deleted.
    NotLeased,
}

/// Wakes the webhook tasks on every append's `NOTIFY ledger_events`.
async fn listen(database_url: String, wake: Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect(&database_url).await?;
            listener.listen("ledger_events").await?;
            loop {
                listener.recv().await?;
                wake.notify_waiters();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = listener => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "webhook listener reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
