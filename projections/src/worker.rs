//! The projector: one durable JetStream pull consumer for every projection, with
//! explicit acks (ack-all: one ack per committed batch) and bounded `max_ack_pending`,
//! `ack_wait` and `max_deliver`. Each batch is applied to every projection in one
//! transaction (`apply_delivered_all`: each projection from its own checkpoint), so an
//! event is delivered once and committed once, whatever the number of read models.
//! Messages are acked only after the batch and its checkpoints committed; a failed batch
//! is NAKed with a delay.
//!
//! JetStream is for latency, the Postgres log is the truth: beside the consumer, the
//! projector watches the lowest of its projections' checkpoints against the log head.
//! When one is behind and JetStream has moved it no further for `log_stall_after` (no
//! server, a lost stream, a stuck consumer, a dead relay), the projector applies the
//! log itself, page by page, through the same exactly-once apply, until JetStream
//! delivers again. Deliveries of what the log already applied are at or below the
//! checkpoints and are acked without effect.

use crate::accounts::AccountsMemo;
use crate::apply::{Projection, apply_delivered_all};
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use ledger_infrastructure::RecordedEvent;
use ledger_infrastructure::breaker::backoff_delay;
use ledger_infrastructure::nats::{Names, ensure_events_stream};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Called after a batch committed: the projection and what the batch did (the
/// positions before and after it and the accounts whose views changed), to invalidate
/// caches and wake `min_position` readers.
pub type OnApplied = Arc<dyn Fn(Projection, &crate::apply::Applied) + Send + Sync>;

/// How often an idle worker checks that its consumer still exists.
pub const CONSUMER_CHECK: Duration = Duration::from_secs(5);

/// Limits of a projection worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerLimits {
    pub batch_max: usize,
    pub max_ack_pending: i64,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub fetch_expires: Duration,
    /// How often the checkpoint is compared with the log head.
    pub log_poll_interval: Duration,
    /// How long the projection may stay behind the head without progress before the
    /// worker applies the log itself.
    pub log_stall_after: Duration,
    /// How long one step on Postgres (a batch applied, a look at the log) may take
    /// before it is given up and run again (four times `LEDGER_DB_STATEMENT_TIMEOUT_MS`:
    /// a step is a transaction of several statements per projection).
    pub step_time_limit: Duration,
    /// How long to wait after a delivery that was not a full batch before the next
    /// fetch (`LEDGER_PROJECTION_LINGER_MS`).
    pub linger: Duration,
    /// The bytes one fetch may deliver; `None`: [`FETCH_BYTES_MAX`], or the server's
    /// `max_payload` and 64 KiB if that is larger.
    pub fetch_bytes_max: Option<usize>,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            batch_max: 500,
            max_ack_pending: 5_000,
            ack_wait: Duration::from_secs(30),
            max_deliver: 50,
            fetch_expires: Duration::from_millis(500),
            log_poll_interval: Duration::from_millis(250),
            log_stall_after: Duration::from_secs(1),
            step_time_limit: Duration::from_secs(120),
            linger: Duration::ZERO,
            fetch_bytes_max: None,
        }
    }
}

/// The projector of a worker process: every projection, one consumer.
pub struct ProjectionWorker {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub names: Names,
    pub projections: Vec<Projection>,
    pub limits: WorkerLimits,
    pub on_applied: OnApplied,
    /// The accounts its last batch left in the view ([`AccountsMemo`]).
    pub memo: AccountsMemo,
}

/// The events of a message: a run (`{prefix}.events.ledger.batch`, the JSON array the
/// relay's `run_payload` writes) or one event.
pub fn decode_message(run: bool, payload: &[u8]) -> serde_json::Result<Vec<RecordedEvent>> {
    if run { serde_json::from_slice(payload) } else { serde_json::from_slice(payload).map(|e| vec![e]) }
}

/// The bytes one fetch may deliver: about a thousand events of a typical size.
pub const FETCH_BYTES_MAX: usize = 1024 * 1024;

/// The projector's durable consumer (`{prefix}_projection_all`).
pub const CONSUMER: &str = "all";

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("apply: {0}")]
    Apply(#[from] crate::apply::ApplyError),
}

impl ProjectionWorker {
    /// Consumes until `shutdown`, finishing (and acking) the batch in hand first, and
    /// follows the log whenever JetStream does not deliver.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(self.consume_jetstream(&shutdown), self.follow_log(&shutdown));
    }

    async fn consume_jetstream(&self, shutdown: &CancellationToken) {
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.consume(shutdown).await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    attempt += 1;
                    let delay = backoff_delay(attempt, Duration::from_millis(100), Duration::from_secs(5));
                    tracing::warn!(error = %e, ?delay, "projector backing off");
                    tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(delay) => {} }
                }
            }
        }
    }

    /// Applies the Postgres log whenever the projection stays behind the head with no
    /// progress for `log_stall_after`.
    async fn follow_log(&self, shutdown: &CancellationToken) {
        let mut progress = (i64::MIN, Instant::now());
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.limits.log_poll_interval) => {}
            }
            if let Err(e) = self.log_step(&mut progress, shutdown).await {
                tracing::warn!(error = %e, "following the log failed; retrying");
            }
        }
    }

    /// One look at the checkpoint and the head; `progress` is the checkpoint last seen
    /// moving and when.
    async fn log_step(
        &self,
        progress: &mut (i64, Instant),
        shutdown: &CancellationToken,
    ) -> Result<(), crate::apply::ApplyError> {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        let look = sqlx::query_as(
            "select min(p.position), min(h.position) from projection_checkpoints p cross join log_head h
             where p.name = any($1)",
        )
        .bind(&names);
        let (checkpoint, head): (i64, i64) = self.bounded(look.fetch_one(&self.pool)).await?;
        if checkpoint >= head || checkpoint > progress.0 {
            *progress = (checkpoint, Instant::now());
            return Ok(());
        }
        if progress.1.elapsed() < self.limits.log_stall_after {
            return Ok(());
        }
        tracing::info!(checkpoint, head, "JetStream is not delivering; applying the log");
        let store = ledger_infrastructure::EventStore::new(self.pool.clone());
        let mut at = checkpoint;
        while at < head && !shutdown.is_cancelled() {
            let page = self.bounded(store.read_all(at, (self.limits.batch_max as i64).min(head - at))).await?;
            let Some(last) = page.last().map(|e| e.position) else { break };
            for (projection, applied) in
                self.bounded(apply_delivered_all(&self.pool, &self.memo, &self.projections, &page)).await?
            {
                metrics::counter!("ledger_projection_log_events_applied_total", "projection" => projection.name())
                    .increment(applied.applied as u64);
                (self.on_applied)(projection, &applied);
            }
            at = last;
        }
        // Still no JetStream progress of its own: the next look applies again at once.
        progress.0 = at;
        Ok(())
    }

    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, WorkerError> {
        let stream = ensure_events_stream(&self.js, &self.names).await.map_err(|e| WorkerError::Nats(e.to_string()))?;
        let name = self.names.projection_consumer(CONSUMER);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            // Acking the last message of a batch acks the batch: one ack per transaction.
            ack_policy: jetstream::consumer::AckPolicy::All,
            ack_wait: self.limits.ack_wait,
            max_deliver: self.limits.max_deliver,
            max_ack_pending: self.limits.max_ack_pending,
            filter_subject: self.names.events_subjects(),
            ..Default::default()
        };
        let consumer =
            stream.get_or_create_consumer(&name, config).await.map_err(|e| WorkerError::Nats(e.to_string()))?;
        // Before one projector, each projection had a consumer of its own: gone, nothing
        // reads them, and the stream would keep counting what they have not acked.
        for legacy in Projection::ALL {
            let _ = stream.delete_consumer(&self.names.projection_consumer(legacy.name())).await;
        }
        Ok(consumer)
    }

    /// One step on Postgres, bounded by `step_time_limit`: a session cut off by a silent
    /// network fails the step (its transaction never commits) instead of stalling the
    /// projection for ever, and the step runs again.
    async fn bounded<T, E: From<sqlx::Error>>(
        &self,
        step: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        ledger_infrastructure::db::within(self.limits.step_time_limit, "a projection step", step).await
    }

    /// One delivery: at most `batch_max` messages and `fetch_bytes`. The server may end
    /// a fetch with a status after some messages (409 when the next one would pass the
    /// byte bound, or a leadership change): those are applied, and the rest comes with
    /// the next fetch. A fetch that ends so before any message is tried again for one
    /// message without the byte bound, so that a message larger than the bound (a
    /// server whose `max_payload` was lowered after storing it) cannot stall the consumer.
    async fn fetch(
        &self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        fetch_bytes: usize,
    ) -> Result<Vec<jetstream::Message>, WorkerError> {
        let nats = |e: &dyn std::fmt::Display| WorkerError::Nats(e.to_string());
        let mut batch = consumer
            .fetch()
            .max_messages(self.limits.batch_max)
            .max_bytes(fetch_bytes)
            .expires(self.limits.fetch_expires)
            .messages()
            .await
            .map_err(|e| nats(&e))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(m) => messages.push(m),
                Err(e) if !messages.is_empty() => {
                    tracing::debug!(error = %e, delivered = messages.len(), "fetch ended by the server");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fetch ended before any message; fetching one alone");
                    let mut one = consumer
                        .fetch()
                        .max_messages(1)
                        .expires(self.limits.fetch_expires)
                        .messages()
                        .await
                        .map_err(|e| nats(&e))?;
                    while let Some(m) = one.next().await {
                        messages.push(m.map_err(|e| nats(&e))?);
                    }
                    if messages.is_empty() {
                        return Err(nats(&e));
                    }
                    break;
                }
            }
        }
        Ok(messages)
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut consumer = self.consumer().await?;
        // A message may carry a run of events (up to the relay's `GROUP_BYTES_MAX`):
        // bytes bound a delivery, and so the transaction it is applied in, as well as
        // messages. The bound admits any message the server accepts.
        let fetch_bytes = self
            .limits
            .fetch_bytes_max
            .unwrap_or_else(|| FETCH_BYTES_MAX.max(self.js.client().server_info().max_payload + 64 * 1024));
        let batch_subject = self.names.events_batch_subject();
        let mut checked = Instant::now();
        while !shutdown.is_cancelled() {
            // A fetch from a consumer that no longer exists (its stream was deleted or
            // lost) just comes back empty: look now and then, so that it is created again.
            if checked.elapsed() >= CONSUMER_CHECK {
                consumer.info().await.map_err(|e| WorkerError::Nats(format!("the consumer is gone: {e}")))?;
                checked = Instant::now();
            }
            let messages = self.fetch(&consumer, fetch_bytes).await?;
            if messages.is_empty() {
                continue;
            }
            let mut events = Vec::with_capacity(messages.len());
            for m in &messages {
                match decode_message(m.subject.as_str() == batch_subject, &m.payload) {
                    Ok(e) => events.extend(e),
                    // The gap this leaves is filled from the Postgres log.
                    Err(e) => tracing::error!(error = %e, "undecodable event message"),
                }
            }
            // A delivery smaller than a batch (counted in events: a message may be a run)
            // is followed by a pause, so that at moderate rates batches grow.
            let linger =
                (events.len() < self.limits.batch_max && !self.limits.linger.is_zero()).then_some(self.limits.linger);
            match self.bounded(apply_delivered_all(&self.pool, &self.memo, &self.projections, &events)).await {
                Ok(batches) => {
                    if let Some(last) = messages.last() {
                        let _ = last.ack().await;
                    }
                    for (projection, applied) in batches {
                        let name = projection.name();
                        metrics::counter!("ledger_projection_events_applied_total", "projection" => name)
                            .increment(applied.applied as u64);
                        metrics::histogram!("ledger_projection_batch_size", "projection" => name)
                            .record(applied.applied as f64);
                        (self.on_applied)(projection, &applied);
                    }
                }
                Err(e) => {
                    for m in &messages {
                        let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                    return Err(e.into());
                }
            }
            if let Some(linger) = linger {
                tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(linger) => {} }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::decode_message;
    use ledger_infrastructure::RecordedEvent;
    use ledger_infrastructure::relay::run_payload;
    use ledger_infrastructure::store::handoff::Outgoing;

    fn event(position: i64, event_type: &str) -> RecordedEvent {
        serde_json::from_value(serde_json::json!({
            "position": position, "event_id": uuid::Uuid::new_v4(), "stream_id": uuid::Uuid::new_v4(),
            "version": position, "type": event_type, "data": { "amount": position, "note": "a \"quoted\", [bracketed] text" },
            "metadata": { "k": [1, 2] }, "recorded_at": "2026-12-06T16:00:00.123456Z",
        }))
        .expect("an event")
    }

    /// What the relay frames, the projector reads back: a run's events in order, each
    /// equal to the event published alone; one event alone as itself.
    #[test]
    fn a_run_framed_by_the_relay_decodes_to_its_events_in_order() {
        let events: Vec<RecordedEvent> = (1..=5).map(|p| event(p, "TransferCompleted")).collect();
        let outgoing: Vec<Outgoing> = events.iter().map(Outgoing::of).collect();
        let decoded = decode_message(true, &run_payload(&outgoing)).expect("a run decodes");
        assert_eq!(decoded, events);
        assert_eq!(decoded.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        let alone = decode_message(false, &outgoing[2].payload).expect("an event decodes");
        assert_eq!(alone, vec![events[2].clone()]);
        // A run read as an event, or an event as a run, is refused (its gap is then
        // filled from the log), never half-read.
        assert!(decode_message(false, &run_payload(&outgoing)).is_err());
        assert!(decode_message(true, &outgoing[0].payload).is_err());
    }
}
