//! The payout worker: a durable JetStream work-queue consumer of the log that pays
//! each `WithdrawalRequested` out through the provider (Idempotency-Key = withdrawal
//! id, so the provider never pays twice), then records `WithdrawalSettled` or
//! `WithdrawalFailed` as a command (the domain refuses to settle twice).
//!
//! Retries are redeliveries: a transient failure NAKs the message with exponential
//! backoff and full jitter (or the provider's `Retry-After`); attempts are counted in
//! Postgres, so only real provider calls count. While the provider's circuit breaker
//! is open, messages are NAKed until the cool-down ends, with no call made. A payout
//! out of attempts or time is dead-lettered (an event, a row, a JetStream message);
//! the withdrawal stays pending with its hold until an operator redrives or discards it.

use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::nats::{Names, ensure_dead_letter_stream, ensure_events_stream};
use crate::provider::{PayoutStatus, ProviderClient, ProviderError};
use crate::store::{EventMetadata, RecordedEvent};
use crate::writer::{CommandBus, CommandRequest};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use ledger_domain::decide::{DeadLetterPayout, FailWithdrawal, SettleWithdrawal};
use ledger_domain::{Command, Event, Ledger, WithdrawalStatus};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Limits of the payout worker.
#[derive(Clone, Copy, Debug)]
pub struct PayoutLimits {
    pub attempts_max: u32,
    pub retry_total: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub concurrency_max: usize,
    pub batch_max: usize,
    pub max_ack_pending: i64,
    pub ack_wait: Duration,
}

impl Default for PayoutLimits {
    fn default() -> Self {
        PayoutLimits {
            attempts_max: 8,
            retry_total: Duration::from_secs(600),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            concurrency_max: 16,
            // No more than are handled at once: a fetched message waiting its turn gets
            // no progress acks and would be redelivered after `ack_wait`.
            batch_max: 16,
            max_ack_pending: 1_000,
            // Short, so that the payouts a dead worker held go to another within
            // seconds; a payout taking longer keeps its message with progress acks.
            ack_wait: Duration::from_secs(10),
        }
    }
}

/// The payout worker of one ledger.
#[derive(Clone)]
pub struct PayoutWorker {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub names: Names,
    pub bus: CommandBus,
    pub provider: ProviderClient,
    pub breaker: CircuitBreaker,
    pub limits: PayoutLimits,
}

/// What to do with a message after handling it.
enum Disposition {
    Ack,
    Retry(Duration),
}

impl PayoutWorker {
    /// Consumes until `shutdown`, finishing the payouts in hand first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            if let Err(e) = self.consume(&shutdown).await {
                attempt += 1;
                let delay = backoff_delay(attempt, Duration::from_millis(100), Duration::from_secs(5));
                tracing::warn!(error = %e, ?delay, "payout worker backing off");
                tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(delay) => {} }
            } else {
                attempt = 0;
            }
        }
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
        let stream = ensure_events_stream(&self.js, &self.names).await?;
        let name = format!("{}_payouts", self.names.prefix());
        let config = pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.limits.ack_wait,
            // Unbounded on purpose: NAKs while the breaker is open must not burn the
            // message; real provider calls are counted (and bounded) in Postgres.
            max_deliver: -1,
            max_ack_pending: self.limits.max_ack_pending,
            filter_subject: self.names.payout_subjects(),
            ..Default::default()
        };
        let mut consumer: jetstream::consumer::PullConsumer = stream.get_or_create_consumer(&name, config).await?;
        let mut checked = std::time::Instant::now();
        while !shutdown.is_cancelled() {
            // A fetch from a consumer that no longer exists comes back empty: look now
            // and then, so that a lost stream's consumer is created again.
            if checked.elapsed() >= Duration::from_secs(5) {
                consumer.info().await?;
                checked = std::time::Instant::now();
            }
            let batch = consumer
                .fetch()
                .max_messages(self.limits.batch_max)
                .expires(Duration::from_millis(500))
                .messages()
                .await?;
            batch
                .for_each_concurrent(self.limits.concurrency_max, |message| async move {
                    let Ok(message) = message else { return };
                    let disposition = match serde_json::from_slice::<RecordedEvent>(&message.payload) {
                        Ok(event) => {
                            let handling = self.handle(&event);
                            tokio::pin!(handling);
                            let mut progress = tokio::time::interval(self.limits.ack_wait / 3);
                            progress.tick().await;
                            // Progress acks keep the message ours while it is handled, so a
                            // handling stuck for good (a connection cut off by a silent
                            // network) would keep it for ever: past four ack waits it is
                            // given up, as a crash between its steps would be, and NAKed.
                            let deadline = tokio::time::sleep(self.limits.ack_wait * 4);
                            tokio::pin!(deadline);
                            loop {
                                tokio::select! {
                                    disposition = &mut handling => break disposition,
                                    () = &mut deadline => {
                                        tracing::warn!("a payout step took four ack waits; given up, it runs again");
                                        break Disposition::Retry(Duration::from_secs(1));
                                    }
                                    _ = progress.tick() => {
                                        let _ = message.ack_with(AckKind::Progress).await;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "undecodable event message");
                            Disposition::Ack
                        }
                    };
                    let _ = match disposition {
                        Disposition::Ack => message.ack().await,
                        Disposition::Retry(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
                    };
                })
                .await;
        }
        Ok(())
    }

    async fn handle(&self, recorded: &RecordedEvent) -> Disposition {
        let withdrawal_id = match recorded.event() {
            Ok(Event::WithdrawalRequested(w)) => w.withdrawal_id,
            Ok(Event::PayoutRedriven(r)) => {
                if let Err(e) = sqlx::query("delete from payout_attempts where withdrawal_id = $1")
                    .bind(r.withdrawal_id)
                    .execute(&self.pool)
                    .await
                {
                    tracing::warn!(error = %e, "resetting payout attempts failed");
                    return Disposition::Retry(Duration::from_secs(1));
                }
                r.withdrawal_id
            }
            _ => return Disposition::Ack,
        };
        match self.pay(withdrawal_id, recorded.position).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, %withdrawal_id, "payout step failed; will retry");
                Disposition::Retry(Duration::from_secs(1))
            }
        }
    }

    async fn pay(&self, withdrawal_id: Uuid, source_position: i64) -> Result<Disposition, PayoutStepError> {
        let mut state = Ledger::new();
        self.bus.loader().load(&mut state, &[withdrawal_id]).await?;
        let Some(w) = state.withdrawal(withdrawal_id).cloned() else { return Ok(Disposition::Ack) };
        if w.status != WithdrawalStatus::Pending || w.dead_letter.is_some() {
            return Ok(Disposition::Ack);
        }
        // Held until the provider answers; any earlier exit (a database error counting
        // the attempt) drops it, which frees the probe slot with no verdict.
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(open) => return Ok(Disposition::Retry(open.retry_in.max(Duration::from_millis(10)))),
        };
        let (attempts, elapsed) = self.count_attempt(withdrawal_id).await?;
        let outcome = self.provider.pay(w.id, w.amount.minor_units(), w.currency.as_str(), &w.destination).await;
        // The verdict is the provider's answer, given before anything after it can fail.
        let command = match outcome {
            Ok(payout) => {
                permit.success();
                match payout.status {
                    PayoutStatus::Settled => Command::SettleWithdrawal(SettleWithdrawal {
                        withdrawal_id,
                        provider_ref: Some(payout.provider_ref),
                    }),
                    PayoutStatus::Rejected => Command::FailWithdrawal(FailWithdrawal {
                        withdrawal_id,
                        reason: payout.reason.unwrap_or_else(|| "rejected by the provider".into()),
                    }),
                }
            }
            Err(ProviderError::Permanent { detail, .. }) => {
                permit.success();
                Command::FailWithdrawal(FailWithdrawal { withdrawal_id, reason: detail })
            }
            Err(ProviderError::Transient { detail, retry_after }) => {
                permit.failure();
                // Only a note for operators: failing to write it must not stop the
                // attempt from counting towards the dead letter.
                if let Err(e) = self.record_error(withdrawal_id, &detail).await {
                    tracing::warn!(error = %e, %withdrawal_id, "recording the payout's last error failed");
                }
                metrics::counter!("ledger_payout_retries_total").increment(1);
                if attempts < self.limits.attempts_max && elapsed < self.limits.retry_total {
                    let backoff = backoff_delay(attempts, self.limits.backoff_base, self.limits.backoff_max);
                    return Ok(Disposition::Retry(retry_after.map_or(backoff, |r| r.max(backoff))));
                }
                let dead = DeadLetterPayout {
                    dead_letter_id: Uuid::now_v7(),
                    withdrawal_id,
                    attempts,
                    last_error: detail,
                    source_position,
                };
                // Recorded first: only a dead letter the log holds is kept in JetStream
                // (not one refused because another worker settled or dead-lettered it).
                if self.record(Command::DeadLetterPayout(dead.clone())).await? {
                    metrics::counter!("ledger_payouts_dead_lettered_total").increment(1);
                    self.publish_dead_letter(&dead).await;
                }
                return Ok(Disposition::Ack);
            }
        };
        self.record(command).await?;
        Ok(Disposition::Ack)
    }

    /// Counts one more provider call; returns the count and the time since the first.
    async fn count_attempt(&self, withdrawal_id: Uuid) -> Result<(u32, Duration), PayoutStepError> {
        let (attempts, elapsed_s): (i32, f64) = sqlx::query_as(
            "insert into payout_attempts (withdrawal_id, attempts, first_attempt_at, updated_at)
             values ($1, 1, now(), now())
             on conflict (withdrawal_id) do update set attempts = payout_attempts.attempts + 1, updated_at = now()
             returning attempts, extract(epoch from now() - first_attempt_at)::float8",
        )
        .bind(withdrawal_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((u32::try_from(attempts).unwrap_or(u32::MAX), Duration::from_secs_f64(elapsed_s.max(0.0))))
    }

    async fn record_error(&self, withdrawal_id: Uuid, error: &str) -> Result<(), PayoutStepError> {
        sqlx::query("update payout_attempts set last_error = $2 where withdrawal_id = $1")
            .bind(withdrawal_id)
            .bind(error)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(PayoutStepError::from)
    }

    /// Keeps a recorded dead letter in JetStream for inspection, in a stream of its own
    /// (made at the first dead letter, and again if it was lost), its id the message's
    /// (the retry below stores it once). The event records it either way, so a failure
    /// here (or a crash before it) is logged or lost, not retried for ever, and the
    /// whole is bounded by `DEAD_LETTER_PUBLISH_MAX`.
    async fn publish_dead_letter(&self, dead: &DeadLetterPayout) {
        let payload: bytes::Bytes = serde_json::to_vec(dead).expect("dead letters serialize").into();
        let publish = || async {
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(dead.dead_letter_id.to_string());
            self.js.send_publish(self.names.payout_dead_letter_subject(), message).await?.await?;
            Ok::<(), async_nats::Error>(())
        };
        let kept = tokio::time::timeout(DEAD_LETTER_PUBLISH_MAX, async {
            if publish().await.is_ok() {
                return Ok(());
            }
            ensure_dead_letter_stream(&self.js, &self.names).await?;
            publish().await
        })
        .await;
        let error = match kept {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("not done within {DEAD_LETTER_PUBLISH_MAX:?}"),
        };
        tracing::warn!(%error, dead_letter_id = %dead.dead_letter_id,
            "keeping the dead letter in JetStream failed (the event records it)");
    }

    /// Records the outcome; whether it was recorded. A rejection (already settled,
    /// failed or dead-lettered by another worker) means there is nothing left to do.
    async fn record(&self, command: Command) -> Result<bool, PayoutStepError> {
        let request = CommandRequest {
            command,
            metadata: EventMetadata { actor: "payout-worker".into(), ..EventMetadata::default() },
            idempotency: None,
            fresh_stream: None,
            owner_index: None,
        };
        self.bus.execute(request).await.map(|reply| !reply.recorded.is_empty()).map_err(PayoutStepError::from)
    }
}

/// How long keeping a dead letter in JetStream may take, its stream made included.
const DEAD_LETTER_PUBLISH_MAX: Duration = Duration::from_secs(10);

/// Why a payout step could not finish (it is retried later).
#[derive(Debug, thiserror::Error)]
enum PayoutStepError {
    #[error("loading the withdrawal: {0}")]
    Load(#[from] crate::store::StoreError),
    #[error("counting the attempt: {0}")]
    Database(#[from] sqlx::Error),
    #[error("recording the outcome: {0}")]
    Record(#[from] crate::writer::CommandError),
}
