//! The outbox relay: the events table is the outbox. The relay publishes events in
//! position order to JetStream with `Nats-Msg-Id` = event id (a re-publish after a
//! crash is dropped by JetStream's duplicate window) and advances its checkpoint only
//! after JetStream acknowledged every event up to it.
//!
//! Exactly one relay runs at a time: leadership is a Postgres session advisory lock
//! held on the relay's own connection. If the process or its connection dies, the lock
//! is released and another instance takes over. The relay is woken by `LISTEN` on the
//! append's `NOTIFY`, with a slow poll as a safety net. When NATS is unreachable it
//! backs off with jitter behind a circuit breaker; commands are unaffected.

use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::nats::{Names, ensure_events_stream};
use crate::store::RecordedEvent;
use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, Row};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Limits of the relay.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    pub batch_max: i64,
    pub poll_interval: Duration,
    pub election_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Statement and lock-wait limits of the leader's own connection (it is not a pool
    /// connection, so it does not get the pool's; 0 disables one).
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
}

impl RelayLimits {
    /// The relay's settings (`LEDGER_RELAY_*`, and the pool's statement and lock limits).
    pub fn from_config(c: &crate::Config) -> RelayLimits {
        RelayLimits {
            batch_max: c.relay_batch_max,
            poll_interval: c.relay_poll_interval,
            election_interval: c.relay_election_interval,
            backoff_base: c.relay_backoff_base,
            backoff_max: c.relay_backoff_max,
            statement_timeout: c.db_statement_timeout,
            lock_timeout: c.db_lock_timeout,
        }
    }
}

/// The relay of one ledger (one database, one NATS prefix).
pub struct Relay {
    pub database_url: String,
    /// Whether the events stream is known to exist (checked again after any failure).
    pub stream_ready: std::sync::atomic::AtomicBool,
    pub js: jetstream::Context,
    pub names: Names,
    pub breaker: CircuitBreaker,
    pub limits: RelayLimits,
    /// True while this instance holds the relay lock.
    pub leader: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("nats: {0}")]
    Nats(#[from] PublishError),
}

/// Why events did not reach JetStream.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Open(#[from] crate::breaker::BreakerOpen),
    #[error("ensuring the events stream: {0}")]
    Stream(async_nats::Error),
    #[error("sending: {0}")]
    Send(async_nats::jetstream::context::PublishError),
    #[error("awaiting the ack: {0}")]
    Ack(async_nats::jetstream::context::PublishError),
    #[error("timed out waiting for a JetStream ack")]
    AckTimeout,
}

impl Relay {
    /// Runs until `shutdown`: campaigns for leadership, relays while leader.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(true) => attempt = 0,
                Ok(false) => {}
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "relay stopped leading; will campaign again");
                }
            }
            let wait = self.limits.election_interval
                + backoff_delay(attempt, self.limits.backoff_base, self.limits.backoff_max);
            tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(wait) => {} }
        }
    }

    /// Takes the lock if free and relays until shutdown or an error. Returns whether
    /// this instance led.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<bool, RelayError> {
        let mut conn = PgConnection::connect(&self.database_url).await?;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        sqlx::query("select set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false)")
            .bind(ms(self.limits.statement_timeout))
            .bind(ms(self.limits.lock_timeout))
            .execute(&mut conn)
            .await?;
        let lock_key = format!("ledger-relay:{}", self.names.prefix());
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(&lock_key)
            .fetch_one(&mut conn)
            .await?;
        if !leader {
            return Ok(false);
        }
        tracing::info!("relay leadership acquired");
        self.leader.store(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.relay_while_leader(&mut conn, shutdown).await;
        self.leader.store(false, std::sync::atomic::Ordering::SeqCst);
        // Closing the connection releases the advisory lock.
        let _ = conn.close().await;
        result.map(|()| true)
    }

    async fn relay_while_leader(
        &self,
        conn: &mut PgConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut listener = PgListener::connect(&self.database_url).await?;
        listener.listen("ledger_events").await?;
        sqlx::query("insert into relay_checkpoints (name, position) values ($1, 0) on conflict do nothing")
            .bind(self.names.prefix())
            .execute(&mut *conn)
            .await?;
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.relay_batch(conn).await {
                Ok(0) => {
                    attempt = 0;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = listener.recv() => {}
                        _ = tokio::time::sleep(self.limits.poll_interval) => {}
                    }
                }
                Ok(_) => attempt = 0,
                Err(RelayError::Nats(e)) => {
                    attempt += 1;
                    metrics::counter!("ledger_relay_retries_total").increment(1);
                    let delay = backoff_delay(attempt, self.limits.backoff_base, self.limits.backoff_max);
                    tracing::warn!(error = %e, attempt, ?delay, "publishing to JetStream failed; backing off");
                    tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(delay) => {} }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Publishes the next batch after the checkpoint; returns how many were relayed.
    async fn relay_batch(&self, conn: &mut PgConnection) -> Result<usize, RelayError> {
        let checkpoint: i64 = sqlx::query_scalar("select position from relay_checkpoints where name = $1")
            .bind(self.names.prefix())
            .fetch_one(&mut *conn)
            .await?;
        let rows = sqlx::query(
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at
             from events where position > $1 order by position limit $2",
        )
        .bind(checkpoint)
        .bind(self.limits.batch_max)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Any exit before JetStream answered (an undecodable row) drops the permit, which
        // frees the probe slot with no verdict.
        let permit = self.breaker.acquire().map_err(PublishError::from)?;
        let events: Vec<RecordedEvent> = rows.iter().map(row_to_event).collect::<Result<_, _>>()?;
        let published = self.publish(&events).await;
        // The verdict is JetStream's answer, given before the checkpoint update can fail.
        let last_acked = match &published {
            Ok(()) => {
                permit.success();
                events.last().map(|e| e.position)
            }
            Err((last, _)) => {
                permit.failure();
                *last
            }
        };
        if let Some(position) = last_acked {
            sqlx::query("update relay_checkpoints set position = $2, updated_at = now() where name = $1")
                .bind(self.names.prefix())
                .bind(position)
                .execute(&mut *conn)
                .await?;
        }
        match published {
            Ok(()) => {
                metrics::counter!("ledger_relay_published_total").increment(events.len() as u64);
                Ok(events.len())
            }
            Err((_, e)) => Err(RelayError::Nats(e)),
        }
    }

    /// Publishes in order, awaiting the acks after sending the whole batch. On failure
    /// returns the last position acknowledged without a gap before it.
    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), (Option<i64>, PublishError)> {
        use std::sync::atomic::Ordering;
        let js = &self.js;
        if !self.stream_ready.load(Ordering::Relaxed) {
            ensure_events_stream(js, &self.names).await.map_err(|e| (None, PublishError::Stream(e)))?;
            self.stream_ready.store(true, Ordering::Relaxed);
        }
        let mut acks = Vec::with_capacity(events.len());
        let mut send_error = None;
        for e in events {
            let payload = serde_json::to_vec(e).expect("recorded events serialize");
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(e.event_id.to_string())
                .header("Ledger-Position", e.position.to_string().as_str());
            match js.send_publish(self.names.event_subject(&e.event_type), publish).await {
                Ok(ack) => acks.push((e.position, ack)),
                Err(err) => {
                    send_error = Some(PublishError::Send(err));
                    break;
                }
            }
        }
        let mut last = None;
        for (position, ack) in acks {
            let error = match tokio::time::timeout(Duration::from_secs(10), ack).await {
                Ok(Ok(_)) => {
                    last = Some(position);
                    continue;
                }
                Ok(Err(e)) => PublishError::Ack(e),
                Err(_) => PublishError::AckTimeout,
            };
            self.stream_ready.store(false, Ordering::Relaxed);
            return Err((last, error));
        }
        match send_error {
            Some(error) => {
                self.stream_ready.store(false, Ordering::Relaxed);
                Err((last, error))
            }
            None => Ok(()),
        }
    }
}

fn row_to_event(row: &sqlx::postgres::PgRow) -> Result<RecordedEvent, sqlx::Error> {
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        version: row.try_get("version")?,
        event_type: row.try_get("type")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}
