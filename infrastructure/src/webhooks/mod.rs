//! Webhooks (API.md "Webhooks"): committed events POSTed to clients' endpoints, signed
//! with HMAC-SHA256, in log order per webhook, one request in flight per webhook, at
//! least once.
//!
//! # Layout
//! - this module: limits, the types the API sees, the payload and its signature;
//! - [`store`]: every statement about webhooks (registration, leases, cursors, dead
//!   letters, breakers, sealed secrets);
//! - `dispatch`: the [`Dispatcher`] of a worker process and its per-webhook deliveries;
//! - `hosts`: where webhooks may send ([`HostPolicy`]); `https`: one request.
//!
//! The cursor of a webhook is a log position in Postgres (`webhooks.delivered_position`),
//! not a JetStream consumer: the log is the truth, the cursor commits beside it, and
//! deliveries go on while NATS is down or after its stream was lost. A dispatcher runs in
//! every worker process with a small pool of its own (`LEDGER_WEBHOOK_DB_POOL_MAX`), so
//! webhooks never take the connections commands need. It leases the webhooks it delivers
//! in one statement (renewed every third of the lease; a process that dies loses them
//! after `lease`), reads the types of newly committed events once per append for all of
//! them, and wakes only the webhooks that asked for one of those types: a webhook that
//! asked for a rare type costs nothing per append. Each webhook has its own task, its own
//! breaker (`webhook:<id>`) and a per-request time-out, so a slow or dead endpoint holds
//! only its own task: never commands, other webhooks, projections or payouts.
//!
//! Failures are retried with exponential backoff and full jitter (the first retry within
//! `backoff_base`·2, capped at `backoff_max`), honouring `Retry-After`. While the breaker
//! is open no request is sent and no attempt counted. After `attempts_max` attempts the
//! event is dead-lettered (`webhook_dead_letters`) and delivery goes on with the next one;
//! a redriven dead letter is sent again when it is redriven. What a dead letter says of a
//! failure is a coarse class ([`Failure`]): the cause goes to the log only.
//!
//! A webhook's secret is sealed under the master key (`keys`); the idempotency record of
//! its registration keeps no secret (a replay reads it back from the webhook).

mod dispatch;
mod hosts;
mod https;
pub mod store;

use crate::breaker::BreakerConfig;
use crate::store::RecordedEvent;
use hmac::{KeyInit, Mac};
use std::time::Duration;
use uuid::Uuid;

pub use dispatch::Dispatcher;
pub use hosts::{HostPolicy, HostRefusal};
pub use store::{DeadLetterAction, NewWebhook, Resolved, WebhookDeadLetter, WebhookRow};

/// Limits of webhooks and their dispatcher.
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
    /// How often new events are looked for when no `NOTIFY` came.
    pub poll: Duration,
    /// The most of a response body that is read.
    pub response_bytes_max: usize,
    /// Active webhooks at most (`LEDGER_WEBHOOKS_MAX`): registration refuses more.
    pub count_max: usize,
    /// Newly committed events whose types one look reads; a longer stretch wakes every
    /// webhook instead (each then finds its next event itself).
    pub scan_max: i64,
    /// The shortest time between two looks at newly committed events.
    pub scan_interval: Duration,
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
            count_max: 100,
            scan_max: 10_000,
            scan_interval: Duration::from_millis(25),
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
            // Longer than any one request, and renewed every third of it.
            lease: Duration::from_secs(10).max(c.webhook_timeout * 2 + Duration::from_secs(5)),
            attempts_max: c.webhook_attempts_max.max(1),
            backoff_max: c.webhook_backoff_max,
            count_max: c.webhooks_max,
            breaker: BreakerConfig { cooldown: c.webhook_breaker_cooldown, ..WebhookLimits::default().breaker },
            ..WebhookLimits::default()
        }
    }
}

/// Whether a webhook delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookStatus {
    Active,
    Deleted,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Active => "active",
            WebhookStatus::Deleted => "deleted",
        }
    }
}

/// Why an attempt failed, as a dead letter and the webhook's row keep it: a class, never
/// the transport's own words (which would tell a closed port from an open or a filtered
/// one, or echo what an internal service answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The host policy refuses the URL's host, or every address it resolves to.
    Denied,
    /// No HTTP answer: resolution, connection, TLS, protocol or time-out.
    Unreachable,
    /// An HTTP answer that is not 2xx: its status class (3, 4 or 5).
    Status(u16),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Denied => f.write_str("refused by the webhook host policy"),
            Failure::Unreachable => f.write_str("unreachable: no HTTP answer within the time-out"),
            Failure::Status(class) => write!(f, "the endpoint answered {class}xx"),
        }
    }
}

/// A new secret: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What a webhook's secret is sealed for: its own row.
pub fn secret_context(id: Uuid) -> Vec<u8> {
    format!("webhook-secret:{id}").into_bytes()
}

/// `Ledger-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A delivery's body: the event exactly as `GET /v1/events` shows it (the fields of
/// `RecordedEvent`, its stored metadata as it is, its chain `hash`), and the name of
/// its ledger; and, when it reveals personal values, the moment it must be sent by
/// (the end of their keys' lease: `privacy::KEY_LEASE`).
pub async fn payload(
    event: &RecordedEvent,
    ledger: &str,
    privacy: &crate::privacy::Privacy,
) -> Result<(Vec<u8>, Option<std::time::Instant>), crate::keys::KeyError> {
    let mut body = serde_json::to_value(event).expect("a recorded event serializes");
    if let Some(fields) = body.as_object_mut() {
        fields.insert("ledger".into(), serde_json::Value::String(ledger.to_owned()));
        if let Some(hash) = &event.hash {
            fields.insert("hash".into(), serde_json::Value::String(hex::encode(hash)));
        }
    }
    let send_by = privacy.reveal_until(&mut body).await?;
    Ok((serde_json::to_vec(&body).expect("a JSON value serializes"), send_by))
}
