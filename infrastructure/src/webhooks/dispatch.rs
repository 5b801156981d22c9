//! The dispatcher of one worker process and the delivery of each webhook it leases.
//!
//! The dispatcher renews its leases in one statement every third of the lease (and at
//! once when a webhook is registered, deleted or redriven: `NOTIFY ledger_webhooks`),
//! starting a delivery task per newly leased webhook and stopping those it no longer
//! holds. On every append (`NOTIFY ledger_events`, or its poll) it reads the types of
//! the newly committed events once and wakes only the deliveries that want one of them;
//! for the others it only moves their frontier (nothing they want lies before it), which
//! it writes back to their cursors with the next renewal. A delivery, once woken, sends
//! its webhook's redriven dead letters first, then its next matching event.

use super::https::{self, Unanswered};
use super::store::{self, Leased};
use super::{Failure, HostPolicy, WebhookLimits, payload, signature};
use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::keys::MasterKey;
use crate::store::{EventStore, RecordedEvent};
use chrono::Utc;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The webhook dispatcher of one process.
#[derive(Clone)]
pub struct Dispatcher {
    /// Its own small pool (`LEDGER_WEBHOOK_DB_POOL_MAX`): webhooks never wait for, nor
    /// take, the connections of commands and reads.
    pub pool: PgPool,
    pub database_url: String,
    /// TLS for `https` endpoints.
    pub tls: tokio_rustls::TlsConnector,
    pub policy: Arc<HostPolicy>,
    /// Opens the webhooks' secrets.
    pub key: Arc<MasterKey>,
    /// Reveals the personal values of each payload when it is sent (the erased form
    /// once the subject is erased, whenever the event was recorded).
    pub privacy: crate::privacy::Privacy,
    pub limits: WebhookLimits,
    /// This process, as a lease owner.
    pub owner: Uuid,
    /// The ledger whose events it delivers (named in every payload).
    pub ledger: String,
}

/// A delivery task the dispatcher runs.
struct Running {
    task: tokio::task::JoinHandle<()>,
    wake: Arc<Notify>,
    types: Option<Vec<String>>,
    /// Nothing this webhook wants lies at or before it past its cursor.
    frontier: Arc<AtomicI64>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Sent (or refused by the host policy) and failed.
    Failed {
        failure: Failure,
        retry_after: Option<Duration>,
    },
    /// The breaker is open: nothing was sent, nothing counted.
    BreakerOpen {
        retry_in: Duration,
    },
}

/// What a delivery's step did.
enum Step {
    /// Sent or tried something; go again after the duration.
    Again(Duration),
    /// Nothing due until woken.
    Idle,
    /// The lease is gone (another process holds it, or the webhook was deleted).
    Lost,
}

/// The channel of webhooks that changed, as `NOTIFY ledger_webhooks` names them.
const CHANGES_MAX: usize = 1024;

impl Dispatcher {
    /// The TLS client for `https` endpoints: the platform's roots plus `ca_file`'s
    /// (`LEDGER_WEBHOOK_CA_FILE`). An unreadable file is logged and left out.
    pub fn tls(ca_file: Option<&str>) -> tokio_rustls::TlsConnector {
        https::connector(ca_file).unwrap_or_else(|e| {
            tracing::error!(error = %e, "LEDGER_WEBHOOK_CA_FILE is unusable; only the platform's roots are trusted");
            https::connector(None).expect("the platform's roots make a TLS client")
        })
    }

    /// Runs until `shutdown`: leases, wakes and stops the deliveries.
    pub async fn run(self, shutdown: CancellationToken) {
        let appended = Arc::new(Notify::new());
        let (changed_tx, mut changed) = mpsc::channel(CHANGES_MAX);
        let listener = tokio::spawn(listen(self.database_url.clone(), appended.clone(), changed_tx, shutdown.clone()));
        let scanned = Arc::new(AtomicI64::new(store::head(&self.pool).await.unwrap_or(0)));
        let mut running: HashMap<Uuid, Running> = HashMap::new();
        let mut renew_at = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= renew_at {
                // Each look is bounded by the lease: a connection cut off by a silent
                // network must not stop this process's deliveries for good.
                let renewing = self.renew(&mut running, &scanned, &shutdown);
                if let Err(e) = crate::db::within(self.limits.lease, "renewing webhook leases", renewing).await {
                    tracing::warn!(error = %e, "renewing webhook leases failed");
                }
                renew_at = tokio::time::Instant::now() + self.limits.lease / 3;
            }
            if let Err(e) =
                crate::db::within(self.limits.lease, "scanning for webhooks", self.scan(&running, &scanned)).await
            {
                tracing::warn!(error = %e, "reading newly committed events for webhooks failed");
            }
            // Appends under load come every few milliseconds: one look per interval
            // covers all of them (a notification meanwhile is kept by `appended`).
            tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(self.limits.scan_interval) => {} }
            let poll = tokio::time::Instant::now() + self.limits.poll;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = appended.notified() => {}
                Some(id) = changed.recv() => {
                    if let Some(r) = running.get(&id) {
                        r.wake.notify_one();
                    }
                    renew_at = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(poll.min(renew_at)) => {}
            }
        }
        for (_, r) in running {
            r.wake.notify_one();
            let _ = r.task.await;
        }
        if let Err(e) = store::release_all(&self.pool, self.owner).await {
            tracing::debug!(error = %e, "releasing webhook leases at shutdown failed; they lapse instead");
        }
        let _ = listener.await;
    }

    /// Takes and renews this process's leases in one statement; stops the deliveries of
    /// webhooks it no longer holds, writes the others' frontiers back to their cursors,
    /// and starts a delivery for each webhook newly leased.
    async fn renew(
        &self,
        running: &mut HashMap<Uuid, Running>,
        scanned: &Arc<AtomicI64>,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let leased = store::lease_all(&self.pool, self.owner, self.limits.lease, self.limits.count_max).await?;
        let held: HashSet<Uuid> = leased.iter().map(|w| w.id).collect();
        running.retain(|id, r| {
            let keep = held.contains(id) && !r.task.is_finished();
            if !keep {
                r.task.abort();
            }
            keep
        });
        let (ids, positions): (Vec<Uuid>, Vec<i64>) =
            running.iter().map(|(id, r)| (*id, r.frontier.load(Ordering::Acquire))).filter(|(_, p)| *p > 0).unzip();
        store::persist_frontiers(&self.pool, self.owner, &ids, &positions).await?;
        for w in leased {
            if running.contains_key(&w.id) {
                continue;
            }
            let secret = match w.secret(&self.key) {
                Ok(secret) => Zeroizing::new(secret),
                Err(e) => {
                    tracing::error!(webhook = %w.id, error = %e, "a webhook's secret does not open; it is not delivered");
                    continue;
                }
            };
            let (id, types) = (w.id, w.event_types.clone());
            let (wake, frontier) = (Arc::new(Notify::new()), Arc::new(AtomicI64::new(0)));
            let delivery = Delivery::new(self.clone(), w, secret, wake.clone(), frontier.clone(), scanned.clone());
            let task = tokio::spawn(delivery.run(shutdown.clone()));
            running.insert(id, Running { task, wake, types, frontier });
        }
        Ok(())
    }

    /// Reads the types of the events committed since the last look, once for every
    /// webhook, and wakes the deliveries that want one of them.
    async fn scan(&self, running: &HashMap<Uuid, Running>, scanned: &AtomicI64) -> Result<(), sqlx::Error> {
        let from = scanned.load(Ordering::Acquire);
        let head = store::head(&self.pool).await?;
        if head <= from {
            return Ok(());
        }
        let types: Option<HashSet<String>> = if head - from > self.limits.scan_max || running.is_empty() {
            None
        } else {
            Some(store::types_between(&self.pool, from, head).await?.into_iter().collect())
        };
        for r in running.values() {
            let wanted = match (&types, &r.types) {
                (Some(new), Some(want)) => want.iter().any(|t| new.contains(t)),
                _ => true,
            };
            if wanted {
                r.wake.notify_one();
            } else {
                // It had found nothing up to `from`, and nothing since is for it.
                let _ = r.frontier.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| (f >= from).then_some(head));
            }
        }
        scanned.store(head, Ordering::Release);
        Ok(())
    }
}

/// The delivery of one webhook while this process leases it.
struct Delivery {
    d: Dispatcher,
    id: Uuid,
    url: String,
    types: Option<Vec<String>>,
    secret: Zeroizing<String>,
    cursor: i64,
    attempts: u32,
    breaker: CircuitBreaker,
    wake: Arc<Notify>,
    frontier: Arc<AtomicI64>,
    scanned: Arc<AtomicI64>,
}

impl Delivery {
    fn new(
        d: Dispatcher,
        w: Leased,
        secret: Zeroizing<String>,
        wake: Arc<Notify>,
        frontier: Arc<AtomicI64>,
        scanned: Arc<AtomicI64>,
    ) -> Delivery {
        let breaker = CircuitBreaker::new(&format!("webhook:{}", w.id), d.limits.breaker);
        Delivery {
            d,
            id: w.id,
            url: w.url,
            types: w.event_types,
            secret,
            cursor: w.delivered_position,
            attempts: u32::try_from(w.attempts).unwrap_or(0),
            breaker,
            wake,
            frontier,
            scanned,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut wait = Duration::ZERO;
        while !shutdown.is_cancelled() {
            if !wait.is_zero() {
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(wait) => {} }
            }
            // Bounded by the lease (past it, another process may hold the webhook): a step
            // given up is sent again, as after a crash between its steps.
            let lease = self.d.limits.lease;
            match crate::db::within(lease, "a webhook delivery step", self.step()).await {
                Ok(Step::Again(next)) => wait = next,
                Ok(Step::Idle) => {
                    wait = Duration::ZERO;
                    tokio::select! { _ = shutdown.cancelled() => return, _ = self.wake.notified() => {} }
                }
                Ok(Step::Lost) => return,
                Err(e) => {
                    tracing::warn!(webhook = %self.id, error = %e, "webhook delivery step failed; retrying");
                    wait = Duration::from_secs(1);
                }
            }
        }
    }

    /// Sends the next thing due: a redriven dead letter first, else the next event of
    /// the webhook's types after its cursor (and frontier).
    async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let pool = self.d.pool.clone();
        if let Some((dead_letter, position)) = store::next_redriven(&pool, self.id).await? {
            let Some(event) = EventStore::read_range(&pool, position - 1, position).await?.into_iter().next() else {
                return Ok(Step::Idle);
            };
            if !store::holds(&pool, self.id, self.d.owner).await? {
                return Ok(Step::Lost);
            }
            return Ok(match self.attempt(&event).await {
                Attempt::BreakerOpen { retry_in } => Step::Again(retry_in.max(Duration::from_millis(10))),
                Attempt::Delivered => {
                    store::redriven(&pool, dead_letter, Ok(())).await?;
                    Step::Again(Duration::ZERO)
                }
                // A redrive is one more try; a failed one is open again.
                Attempt::Failed { failure, .. } => {
                    store::redriven(&pool, dead_letter, Err(failure)).await?;
                    Step::Again(Duration::ZERO)
                }
            });
        }
        let seen = self.scanned.load(Ordering::Acquire);
        let from = self.cursor.max(self.frontier.load(Ordering::Acquire));
        let Some(event) = EventStore::next_matching(&pool, from, i64::MAX, self.types.as_deref()).await? else {
            // Everything committed up to what the dispatcher has seen is handled; if it
            // saw more meanwhile, look once more before sleeping.
            self.frontier.fetch_max(seen.max(from), Ordering::AcqRel);
            return Ok(if self.scanned.load(Ordering::Acquire) > seen {
                Step::Again(Duration::ZERO)
            } else {
                Step::Idle
            });
        };
        // Deleted (or taken over) since the dispatcher last looked: its answer may have
        // come before this event was appended, and nothing after it is sent.
        if !store::holds(&pool, self.id, self.d.owner).await? {
            return Ok(Step::Lost);
        }
        match self.attempt(&event).await {
            Attempt::Delivered => {
                if !store::advance(&pool, self.id, self.d.owner, event.position).await? {
                    return Ok(Step::Lost);
                }
                (self.cursor, self.attempts) = (event.position, 0);
                Ok(Step::Again(Duration::ZERO))
            }
            Attempt::BreakerOpen { retry_in } => Ok(Step::Again(retry_in.max(Duration::from_millis(10)))),
            Attempt::Failed { failure, retry_after } => self.failed(&event, failure, retry_after).await,
        }
    }

    /// A failed attempt at `event`: counted, then retried after a backoff (or the
    /// endpoint's `Retry-After`), or dead-lettered once the attempts are used up.
    async fn failed(
        &mut self,
        event: &RecordedEvent,
        failure: Failure,
        retry_after: Option<Duration>,
    ) -> Result<Step, sqlx::Error> {
        let (pool, limits) = (&self.d.pool, &self.d.limits);
        self.attempts += 1;
        if self.attempts >= limits.attempts_max {
            if !store::dead_letter(pool, self.id, self.d.owner, event.position, self.attempts, failure).await? {
                return Ok(Step::Lost);
            }
            metrics::counter!("ledger_webhooks_dead_lettered_total").increment(1);
            tracing::warn!(webhook = %self.id, position = event.position, attempts = self.attempts, %failure, "webhook event dead-lettered");
            (self.cursor, self.attempts) = (event.position, 0);
            return Ok(Step::Again(Duration::ZERO));
        }
        if !store::record_attempt(pool, self.id, self.d.owner, self.attempts, failure).await? {
            return Ok(Step::Lost);
        }
        metrics::counter!("ledger_webhook_retries_total").increment(1);
        let backoff = backoff_delay(self.attempts - 1, limits.backoff_base, limits.backoff_max);
        // The endpoint's Retry-After wins when it asks for longer, up to the cap.
        Ok(Step::Again(retry_after.map_or(backoff, |r| r.max(backoff)).min(limits.backoff_max)))
    }

    /// One request behind the breaker, its outcome recorded in the breaker and its row.
    async fn attempt(&self, event: &RecordedEvent) -> Attempt {
        let (body, send_by) = match payload(event, &self.d.ledger, &self.d.privacy).await {
            Ok(body) => body,
            Err(e) => {
                // Not the endpoint's failure: tried again later, no attempt counted.
                tracing::warn!(webhook = %self.id, error = %e, "revealing a payload failed");
                return Attempt::BreakerOpen { retry_in: std::time::Duration::from_secs(1) };
            }
        };
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(open) => return Attempt::BreakerOpen { retry_in: open.retry_in },
        };
        let t = Utc::now().timestamp();
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("ledger-event-id", event.event_id.to_string()),
            ("ledger-signature", signature(&self.secret, t, &body)),
        ];
        let limits = &self.d.limits;
        let sent = https::post(
            &self.d.tls,
            &self.d.policy,
            &self.url,
            &headers,
            body,
            https::Bounds { timeout: limits.timeout, send_by, read_max: limits.response_bytes_max },
        );
        let outcome = match sent.await {
            Ok(answer) if (200..300).contains(&answer.status) => Attempt::Delivered,
            Ok(answer) => {
                Attempt::Failed { failure: Failure::Status(answer.status / 100), retry_after: answer.retry_after }
            }
            Err(Unanswered::Denied) => Attempt::Failed { failure: Failure::Denied, retry_after: None },
            Err(Unanswered::Unreachable(cause)) => {
                tracing::debug!(webhook = %self.id, %cause, "a webhook endpoint gave no answer");
                Attempt::Failed { failure: Failure::Unreachable, retry_after: None }
            }
        };
        match outcome {
            Attempt::Delivered => permit.success(),
            _ => permit.failure(),
        }
        if let Err(e) = store::record_breaker(&self.d.pool, self.id, self.d.owner, &self.breaker.snapshot()).await {
            tracing::debug!(webhook = %self.id, error = %e, "recording a webhook's breaker failed");
        }
        metrics::counter!("ledger_webhook_attempts_total", "outcome" => match outcome {
            Attempt::Delivered => "delivered",
            _ => "failed",
        })
        .increment(1);
        outcome
    }
}

/// Wakes the dispatcher on every append (`NOTIFY ledger_events`) and names the webhooks
/// that changed (`NOTIFY ledger_webhooks`).
async fn listen(database_url: String, appended: Arc<Notify>, changed: mpsc::Sender<Uuid>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut listener = crate::db::listener(&database_url).await?;
            let channels = crate::db::listen_to(&mut listener, &["ledger_events", "ledger_webhooks"]).await?;
            let webhooks = &channels[1];
            loop {
                let n = crate::db::next_notification(&mut listener).await?;
                if n.channel() == webhooks.as_str() {
                    if let Ok(id) = Uuid::parse_str(n.payload()) {
                        let _ = changed.try_send(id);
                    }
                } else {
                    appended.notify_one();
                }
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
