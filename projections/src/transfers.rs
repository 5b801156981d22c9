//! The transfers projection: `transactions_view` (every transaction, transfers included:
//! a transfer is a one-posting transaction, marked `transfer`), `withdrawals_view`,
//! `dead_letters` and `holds_view`.

use crate::apply::{ApplyError, Tables};
use ledger_domain::Event;
use ledger_infrastructure::RecordedEvent;
use sqlx::{Postgres, Transaction};

/// Applies events (in position order, above the checkpoint): the batch's transfers in
/// bulk, then each withdrawal and dead-letter event in order.
pub async fn apply(tx: &mut Transaction<'_, Postgres>, t: &Tables, events: &[RecordedEvent]) -> Result<(), ApplyError> {
    write_transfers(tx, t, events).await?;
    write_transactions(tx, t, events).await?;
    // Written in bulk above, so not decoded again.
    let bulk = |e: &&RecordedEvent| matches!(e.event_type.as_str(), "TransferPosted" | "TransactionPosted");
    for recorded in events.iter().filter(|e| !bulk(e)) {
        let at = At { position: recorded.position, time: recorded.recorded_at };
        match recorded.event_ref()? {
            // Written in bulk above.
            Event::TransferPosted(_) | Event::TransactionPosted(_) => {}
            Event::HoldPlaced(h) => hold_placed(tx, t, h, at).await?,
            Event::HoldCaptured(h) => {
                hold_ended(tx, t, h.hold_id, "captured", Some(h.amount.minor_units()), at).await?
            }
            Event::HoldVoided(h) => hold_ended(tx, t, h.hold_id, "voided", None, at).await?,
            Event::HoldExpired(h) => hold_ended(tx, t, h.hold_id, "expired", None, at).await?,
            Event::WithdrawalRequested(w) => withdrawal_requested(tx, t, w, at).await?,
            Event::WithdrawalSettled(w) => {
                let end =
                    Ended { status: "settled", provider_ref: Set::To(w.provider_ref.as_deref()), failure_reason: None };
                withdrawal_ended(tx, t, w.withdrawal_id, end, at).await?;
            }
            Event::WithdrawalFailed(w) => {
                let end = Ended { status: "failed", provider_ref: Set::Keep, failure_reason: Some(&w.reason) };
                withdrawal_ended(tx, t, w.withdrawal_id, end, at).await?;
            }
            Event::WithdrawalReconciled(w) => {
                let status = match w.status_after {
                    ledger_domain::WithdrawalStatus::Pending => "pending",
                    ledger_domain::WithdrawalStatus::Settled => "settled",
                    ledger_domain::WithdrawalStatus::Failed => "failed",
                };
                let provider_ref = w.provider_ref.as_deref().map_or(Set::Keep, |r| Set::To(Some(r)));
                let end = Ended { status, provider_ref, failure_reason: None };
                withdrawal_ended(tx, t, w.withdrawal_id, end, at).await?;
            }
            Event::PayoutDeadLettered(d) => dead_lettered(tx, t, d, at).await?,
            Event::PayoutRedriven(r) => redriven(tx, t, r.dead_letter_id, at).await?,
            Event::AccountOpened(_)
            | Event::AccountClosed(_)
            | Event::DepositRecorded(_)
            | Event::TokenIssued(_)
            | Event::LedgerCreated(_)
            | Event::ReconciliationStarted(_)
            | Event::ReconciliationMismatchFound(_)
            | Event::ReconciliationFinished(_)
            | Event::SubjectErased(_)
            | Event::ChainReanchored(_)
            | Event::PeriodClosed(_) => {}
        }
    }
    Ok(())
}

/// Where and when an event was recorded.
#[derive(Clone, Copy)]
struct At {
    position: i64,
    time: chrono::DateTime<chrono::Utc>,
}

/// How a withdrawal's payout ended (or was corrected to end), as the view shows it
/// (the fields `evolve` sets on the withdrawal, set the same way).
struct Ended<'a> {
    status: &'a str,
    provider_ref: Set<&'a str>,
    /// Kept as it was when `None`.
    failure_reason: Option<&'a str>,
}

/// A column's new value, or the one it has.
enum Set<T> {
    To(Option<T>),
    Keep,
}

/// The batch's transactions in one statement: their rows and one row per account each
/// touches; then, for reversals, the original's `reversed_by` (an original in the same
/// batch is inserted by then).
async fn write_transactions(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let mut rows: (Vec<uuid::Uuid>, Vec<serde_json::Value>, Vec<Option<String>>, Vec<Option<serde_json::Value>>) =
        Default::default();
    let mut more: (Vec<chrono::DateTime<chrono::Utc>>, Vec<chrono::DateTime<chrono::Utc>>, Vec<Option<uuid::Uuid>>) =
        Default::default();
    let mut positions: Vec<i64> = Vec::new();
    let mut reversals: (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = Default::default();
    for recorded in events.iter().filter(|e| e.event_type == "TransactionPosted") {
        let Event::TransactionPosted(p) = recorded.event_ref()? else { continue };
        if let Some(original) = p.reverses {
            reversals.0.push(original);
            reversals.1.push(p.transaction_id);
        }
        rows.0.push(p.transaction_id);
        rows.1.push(serde_json::to_value(&p.postings)?);
        rows.2.push(p.reference.clone());
        rows.3.push(p.metadata.clone());
        more.0.push(p.effective_at.unwrap_or(recorded.recorded_at));
        more.1.push(recorded.recorded_at);
        more.2.push(p.reverses);
        positions.push(recorded.position);
    }
    if rows.0.is_empty() {
        return Ok(());
    }
    let transactions = t.name("transactions_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {transactions} (id, postings, reference, metadata, effective_at, recorded_at, reverses, position)
         select * from unnest($1::uuid[], $2::jsonb[], $3::text[], $4::jsonb[], $5::timestamptz[],
                              $6::timestamptz[], $7::uuid[], $8::int8[])"
    )))
    .bind(rows.0)
    .bind(rows.1)
    .bind(rows.2)
    .bind(rows.3)
    .bind(more.0)
    .bind(more.1)
    .bind(more.2)
    .bind(positions)
    .execute(&mut **tx)
    .await?;
    if !reversals.0.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update {transactions} v set reversed_by = r.by from unnest($1::uuid[], $2::uuid[]) as r(id, by)
             where v.id = r.id"
        )))
        .bind(reversals.0)
        .bind(reversals.1)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn hold_placed(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    h: &ledger_domain::events::HoldPlaced,
    at: At,
) -> Result<(), ApplyError> {
    let holds = t.name("holds_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {holds} (id, account_id, to_account, amount, currency, status, expires_at, reference, metadata,
                              position)
         values ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9)"
    )))
    .bind(h.hold_id)
    .bind(h.account_id)
    .bind(h.to)
    .bind(h.amount.minor_units())
    .bind(h.currency.as_str())
    .bind(h.expires_at)
    .bind(&h.reference)
    .bind(&h.metadata)
    .bind(at.position)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn hold_ended(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    hold_id: uuid::Uuid,
    status: &str,
    captured_amount: Option<i64>,
    at: At,
) -> Result<(), ApplyError> {
    let holds = t.name("holds_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update {holds} set status = $2, captured_amount = $3, position = $4 where id = $1"
    )))
    .bind(hold_id)
    .bind(status)
    .bind(captured_amount)
    .bind(at.position)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn withdrawal_requested(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    w: &ledger_domain::events::WithdrawalRequested,
    at: At,
) -> Result<(), ApplyError> {
    let withdrawals = t.name("withdrawals_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {withdrawals} (id, account_id, amount, currency, destination, status, position, updated_at, metadata)
         values ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)"
    )))
    .bind(w.withdrawal_id)
    .bind(w.account_id)
    .bind(w.amount.minor_units())
    .bind(w.currency.as_str())
    .bind(&w.destination)
    .bind(at.position)
    .bind(at.time)
    .bind(&w.metadata)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A withdrawal settled, failed or was corrected by reconciliation: its row, and the
/// dead letters its payout left open, which are resolved with it.
async fn withdrawal_ended(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    withdrawal_id: uuid::Uuid,
    end: Ended<'_>,
    at: At,
) -> Result<(), ApplyError> {
    let withdrawals = t.name("withdrawals_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update {withdrawals} set status = $2, provider_ref = case when $7 then $3 else provider_ref end,
                failure_reason = coalesce($4, failure_reason), position = $5, updated_at = $6
         where id = $1"
    )))
    .bind(withdrawal_id)
    .bind(end.status)
    .bind(match end.provider_ref {
        Set::To(r) => r,
        Set::Keep => None,
    })
    .bind(end.failure_reason)
    .bind(at.position)
    .bind(at.time)
    .bind(matches!(end.provider_ref, Set::To(_)))
    .execute(&mut **tx)
    .await?;
    resolve_dead_letters(tx, t, withdrawal_id, end.status, at.time).await
}

async fn dead_lettered(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    d: &ledger_domain::events::PayoutDeadLettered,
    at: At,
) -> Result<(), ApplyError> {
    let dead = t.name("dead_letters");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {dead} (id, source, withdrawal_id, event_position, attempts, last_error, status, dead_lettered_at)
         values ($1, 'payouts', $2, $3, $4, $5, 'open', $6)"
    )))
    .bind(d.dead_letter_id)
    .bind(d.withdrawal_id)
    .bind(d.source_position)
    .bind(i32::try_from(d.attempts).unwrap_or(i32::MAX))
    .bind(&d.last_error)
    .bind(at.time)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn redriven(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    dead_letter_id: uuid::Uuid,
    at: At,
) -> Result<(), ApplyError> {
    let dead = t.name("dead_letters");
    sqlx::query(sqlx::AssertSqlSafe(format!("update {dead} set status = 'redriven', resolved_at = $2 where id = $1")))
        .bind(dead_letter_id)
        .bind(at.time)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn resolve_dead_letters(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    withdrawal_id: uuid::Uuid,
    status: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApplyError> {
    let dead = t.name("dead_letters");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update {dead} set status = $2, resolved_at = $3 where withdrawal_id = $1 and status = 'open'"
    )))
    .bind(withdrawal_id)
    .bind(status)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// All transfers of the batch in one insert into `transactions_view` (a transfer is a
/// one-posting transaction, marked `transfer`, with its reversal's `reason`), then all
/// reversal links in one update (transfers are the bulk of the log; one statement per
/// row made rebuilds slow).
async fn write_transfers(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let mut rows: (Vec<uuid::Uuid>, Vec<serde_json::Value>, Vec<Option<String>>, Vec<Option<serde_json::Value>>) =
        Default::default();
    let mut more: (
        Vec<chrono::DateTime<chrono::Utc>>,
        Vec<chrono::DateTime<chrono::Utc>>,
        Vec<Option<uuid::Uuid>>,
        Vec<i64>,
        Vec<Option<String>>,
    ) = Default::default();
    let mut reversals: (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = Default::default();
    for recorded in events.iter().filter(|e| e.event_type == "TransferPosted") {
        let Event::TransferPosted(e) = recorded.event_ref()? else { continue };
        let leg = ledger_domain::Leg { from: e.from, to: e.to, amount: e.amount, currency: e.currency };
        rows.0.push(e.transfer_id);
        rows.1.push(serde_json::to_value([leg])?);
        rows.2.push(e.reference.clone());
        rows.3.push(e.metadata.clone());
        more.0.push(e.effective_at.unwrap_or(recorded.recorded_at));
        more.1.push(recorded.recorded_at);
        more.2.push(e.reverses);
        more.3.push(recorded.position);
        more.4.push(e.reason.clone());
        if let Some(original) = e.reverses {
            reversals.0.push(original);
            reversals.1.push(e.transfer_id);
        }
    }
    if rows.0.is_empty() {
        return Ok(());
    }
    let transactions = t.name("transactions_view");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {transactions} (id, postings, reference, metadata, effective_at, recorded_at, reverses, position,
                                     reason, transfer)
         select *, true from unnest($1::uuid[], $2::jsonb[], $3::text[], $4::jsonb[], $5::timestamptz[],
                                    $6::timestamptz[], $7::uuid[], $8::int8[], $9::text[])"
    )))
    .bind(rows.0)
    .bind(rows.1)
    .bind(rows.2)
    .bind(rows.3)
    .bind(more.0)
    .bind(more.1)
    .bind(more.2)
    .bind(more.3)
    .bind(more.4)
    .execute(&mut **tx)
    .await?;
    if !reversals.0.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update {transactions} v set reversed_by = r.by from unnest($1::uuid[], $2::uuid[]) as r(id, by)
             where v.id = r.id"
        )))
        .bind(reversals.0)
        .bind(reversals.1)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
