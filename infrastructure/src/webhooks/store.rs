//! Every statement about webhooks: registration (with its idempotency answer and the
//! sealed secret), the list, deletion, dead letters, breakers; and the dispatcher's
//! leases, cursors and attempts, each write guarded by the lease (`lease_owner`), so a
//! process that lost a webhook changes nothing of it.

use super::{Failure, WebhookStatus, secret_context};
use crate::breaker::{BreakerSnapshot, BreakerState};
use crate::keys::{KeyError, MasterKey};
use crate::store::{IdempotencyClaim, StoredResponse};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// A webhook as listed (its secret aside).
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

/// What a registration came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    Created,
    /// The idempotency claim was taken over meanwhile (its lease lapsed): nothing created.
    ClaimLost,
    /// `count_max` webhooks are active already: nothing created.
    Full,
}

/// Tells every dispatcher at commit that a webhook changed (registered, deleted, a dead
/// letter redriven), so it leases, stops or wakes it at once.
const NOTIFY: &str = "select pg_notify(ledger_scoped('ledger_webhooks'), $1::text)";

/// Registers a webhook, its secret sealed under `key`, with the final answer of its
/// registration (the claim `token` holds on the key), in one transaction.
pub async fn register(
    pool: &PgPool,
    key: &MasterKey,
    new: &NewWebhook,
    claim: &IdempotencyClaim,
    token: Uuid,
    response: &StoredResponse,
    count_max: usize,
) -> Result<Registered, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Registrations count one at a time, so the cap holds with any number of processes.
    sqlx::query("select pg_advisory_xact_lock(hashtext('ledger-webhook-registration'), ledger_lock_key())")
        .execute(&mut *tx)
        .await?;
    let active: i64 =
        sqlx::query_scalar("select count(*) from webhooks where status = 'active'").fetch_one(&mut *tx).await?;
    if usize::try_from(active).unwrap_or(usize::MAX) >= count_max {
        return Ok(Registered::Full);
    }
    if !crate::EventStore::finish_claim(&mut *tx, claim, token, response).await? {
        return Ok(Registered::ClaimLost);
    }
    // Events committed after this statement's snapshot are delivered; the head is
    // moved only by committing appends, so none is missed and none from before sent.
    sqlx::query(
        "insert into webhooks (id, url, event_types, description, secret_sealed, created_position, delivered_position)
         select $1, $2, $3, $4, $5, position, position from log_head",
    )
    .bind(new.id)
    .bind(&new.url)
    .bind(&new.event_types)
    .bind(&new.description)
    .bind(key.seal(new.secret.as_bytes(), &secret_context(new.id)))
    .execute(&mut *tx)
    .await?;
    sqlx::query(NOTIFY).bind(new.id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Registered::Created)
}

/// A webhook's secret, opened (for the replay of its registration); `None` for an
/// unknown id.
pub async fn secret(pool: &PgPool, key: &MasterKey, id: Uuid) -> Result<Option<String>, KeyError> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> =
        sqlx::query_as("select secret, secret_sealed from webhooks where id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(|(clear, sealed)| open_secret(key, id, clear, sealed)).transpose()
}

fn open_secret(key: &MasterKey, id: Uuid, clear: Option<String>, sealed: Option<Vec<u8>>) -> Result<String, KeyError> {
    match (clear, sealed) {
        (_, Some(sealed)) => {
            let opened = key.open(&sealed, &secret_context(id))?;
            String::from_utf8(opened.to_vec()).map_err(|_| KeyError::Unopenable)
        }
        // Written before secrets were sealed, and not sealed yet (`seal_legacy`).
        (Some(clear), None) => Ok(clear),
        (None, None) => Err(KeyError::Unopenable),
    }
}

/// Seals the secrets of webhooks registered before secrets were sealed, and clears
/// them; run at start-up by every process (each row once: the update is conditional).
pub async fn seal_legacy(pool: &PgPool, key: &MasterKey) -> Result<u64, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("select id, secret from webhooks where secret is not null").fetch_all(pool).await?;
    let mut sealed = 0;
    for (id, secret) in rows {
        let done =
            sqlx::query("update webhooks set secret_sealed = $2, secret = null where id = $1 and secret is not null")
                .bind(id)
                .bind(key.seal(secret.as_bytes(), &secret_context(id)))
                .execute(pool)
                .await?;
        sealed += done.rows_affected();
    }
    Ok(sealed)
}

/// The active webhooks, oldest first.
pub async fn active(pool: &PgPool) -> Result<Vec<WebhookRow>, sqlx::Error> {
    let sql = format!("select {WEBHOOK_COLUMNS} from webhooks where status = 'active' order by created_at, id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await
}

/// Stops a webhook's deliveries. Returns whether it exists (deleted before or now).
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "update webhooks set status = $2, deleted_at = coalesce(deleted_at, now()), lease_owner = null where id = $1",
    )
    .bind(id)
    .bind(WebhookStatus::Deleted.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(NOTIFY).bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
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

/// Whether `id` names a webhook's dead letter (else perhaps a payout's).
pub async fn is_dead_letter(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from webhook_dead_letters where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// What an operator does with a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterAction {
    Redrive,
    Discard,
}

/// What resolving a dead letter came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Done; the log's head as the transaction saw it.
    Done {
        head: i64,
    },
    /// It exists but is not open (redriven or discarded before).
    NotOpen,
    NotFound,
}

/// Redrives (sent again by its webhook's dispatcher, woken at commit) or discards an
/// open webhook dead letter, in the caller's transaction (which also keeps the answer
/// for an idempotent replay). A redrive needs its webhook active (a deleted one has no
/// dispatcher); a discard also takes a dead letter whose redrive has not been sent yet.
pub async fn resolve_dead_letter(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    action: DeadLetterAction,
) -> Result<Resolved, sqlx::Error> {
    let resolved: Option<Uuid> = match action {
        DeadLetterAction::Redrive => {
            sqlx::query_scalar(
                "update webhook_dead_letters d set status = 'redriving' from webhooks w
                 where d.id = $1 and d.status = 'open' and w.id = d.webhook_id and w.status = 'active'
                 returning d.webhook_id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        DeadLetterAction::Discard => {
            sqlx::query_scalar(
                "update webhook_dead_letters set status = 'discarded', resolved_at = now()
                 where id = $1 and status in ('open', 'redriving') returning webhook_id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some(webhook) = resolved else {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from webhook_dead_letters where id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(if exists { Resolved::NotOpen } else { Resolved::NotFound });
    };
    sqlx::query(NOTIFY).bind(webhook).execute(&mut *tx).await?;
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&mut *tx).await?;
    Ok(Resolved::Done { head })
}

// ---- the dispatcher's statements ----

/// A webhook as its dispatcher leases it.
#[derive(sqlx::FromRow)]
pub(super) struct Leased {
    pub id: Uuid,
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub secret: Option<String>,
    pub secret_sealed: Option<Vec<u8>>,
    pub delivered_position: i64,
    pub attempts: i32,
}

impl Leased {
    pub fn secret(&self, key: &MasterKey) -> Result<String, KeyError> {
        open_secret(key, self.id, self.secret.clone(), self.secret_sealed.clone())
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Takes or renews, in one statement, the leases of up to `limit` active webhooks that
/// no other live process holds: the webhooks this process delivers until its next call.
pub(super) async fn lease_all(
    pool: &PgPool,
    owner: Uuid,
    lease: Duration,
    limit: usize,
) -> Result<Vec<Leased>, sqlx::Error> {
    sqlx::query_as(
        "update webhooks set lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond'
         where id in (select id from webhooks where status = 'active'
                        and (lease_owner is null or lease_owner = $1 or lease_until < now())
                      order by created_at, id limit $3 for update skip locked)
         returning id, url, event_types, secret, secret_sealed, delivered_position, attempts",
    )
    .bind(owner)
    .bind(ms(lease))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// Moves the cursors of webhooks with no event of their types up to `positions` (what
/// the dispatcher learnt without sending anything), so a later look starts there.
pub(super) async fn persist_frontiers(
    pool: &PgPool,
    owner: Uuid,
    ids: &[Uuid],
    positions: &[i64],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update webhooks w set delivered_position = f.position
         from unnest($1::uuid[], $2::bigint[]) as f(id, position)
         where w.id = f.id and w.lease_owner = $3 and w.attempts = 0 and w.delivered_position < f.position",
    )
    .bind(ids)
    .bind(positions)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives up this process's leases (at shutdown), so another process takes over at once.
pub(super) async fn release_all(pool: &PgPool, owner: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("update webhooks set lease_owner = null where lease_owner = $1").bind(owner).execute(pool).await?;
    Ok(())
}

pub(super) async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select position from log_head").fetch_one(pool).await
}

/// The types of the events at positions `after + 1 ..= up_to`.
pub(super) async fn types_between(pool: &PgPool, after: i64, up_to: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select distinct type from events where position > $1 and position <= $2")
        .bind(after)
        .bind(up_to)
        .fetch_all(pool)
        .await
}

/// The oldest redriven dead letter of a webhook: its id and event position.
pub(super) async fn next_redriven(pool: &PgPool, webhook: Uuid) -> Result<Option<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "select id, event_position from webhook_dead_letters where webhook_id = $1 and status = 'redriving'
         order by event_position limit 1",
    )
    .bind(webhook)
    .fetch_optional(pool)
    .await
}

/// A redriven dead letter was sent: delivered, or open again with one more attempt.
pub(super) async fn redriven(
    pool: &PgPool,
    dead_letter: Uuid,
    outcome: Result<(), Failure>,
) -> Result<(), sqlx::Error> {
    match outcome {
        Ok(()) => {
            // Guarded by the status: a discard that came meanwhile stands.
            sqlx::query(
                "update webhook_dead_letters set status = 'delivered', resolved_at = now()
                 where id = $1 and status = 'redriving'",
            )
            .bind(dead_letter)
            .execute(pool)
            .await?;
        }
        Err(failure) => {
            sqlx::query(
                "update webhook_dead_letters set status = 'open', attempts = attempts + 1, last_error = $2
                 where id = $1 and status = 'redriving'",
            )
            .bind(dead_letter)
            .bind(failure.to_string())
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Whether `owner` still leases the webhook (it was not deleted, nor taken over). Asked
/// after the event to send was read: a delete answered before that event committed is
/// seen, so nothing appended after a delete's answer is sent.
pub(super) async fn holds(pool: &PgPool, id: Uuid, owner: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from webhooks where id = $1 and lease_owner = $2 and status = 'active')",
    )
    .bind(id)
    .bind(owner)
    .fetch_one(pool)
    .await
}

/// Moves the cursor past `position` (delivered); `false` if the lease is lost.
pub(super) async fn advance(pool: &PgPool, id: Uuid, owner: Uuid, position: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update webhooks set delivered_position = greatest(delivered_position, $2), attempts = 0
         where id = $1 and lease_owner = $3",
    )
    .bind(id)
    .bind(position)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts a failed attempt at the next event; `false` if the lease is lost.
pub(super) async fn record_attempt(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    attempts: u32,
    failure: Failure,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("update webhooks set attempts = $2, last_error = $3 where id = $1 and lease_owner = $4")
        .bind(id)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(failure.to_string())
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Dead-letters the event and moves the cursor past it, in one transaction, if this
/// process still holds the lease; returns whether it did.
pub(super) async fn dead_letter(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    position: i64,
    attempts: u32,
    failure: Failure,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "update webhooks set delivered_position = greatest(delivered_position, $2), attempts = 0, last_error = $3
         where id = $1 and lease_owner = $4 and delivered_position < $2",
    )
    .bind(id)
    .bind(position)
    .bind(failure.to_string())
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "insert into webhook_dead_letters (id, webhook_id, event_position, attempts, last_error, status)
         values ($1, $2, $3, $4, $5, 'open') on conflict (webhook_id, event_position) do nothing",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(position)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(failure.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Keeps a webhook's breaker where every API instance can list it.
pub(super) async fn record_breaker(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    snapshot: &BreakerSnapshot,
) -> Result<(), sqlx::Error> {
    let state = match snapshot.state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    };
    sqlx::query(
        "update webhooks set breaker = $2, breaker_failures = $3, breaker_opened_at = $4 where id = $1 and lease_owner = $5",
    )
    .bind(id)
    .bind(state)
    .bind(i32::try_from(snapshot.failures).unwrap_or(i32::MAX))
    .bind(snapshot.opened_at)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}
