//! The transfers projection: `transfers_view` and `withdrawals_view`.

use crate::apply::{ApplyError, Tables};
use ledger_domain::Event;
use ledger_infrastructure::RecordedEvent;
use sqlx::{Postgres, Transaction};

/// Applies events (in position order, above the checkpoint).
pub async fn apply(tx: &mut Transaction<'_, Postgres>, t: &Tables, events: &[RecordedEvent]) -> Result<(), ApplyError> {
    let (transfers, withdrawals, dead) = (t.name("transfers_view"), t.name("withdrawals_view"), t.name("dead_letters"));
    for recorded in events {
        let at = recorded.recorded_at;
        let position = recorded.position;
        match recorded.event()? {
            Event::TransferPosted(t) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "insert into {transfers} (id, from_account, to_account, amount, currency, reference, reverses,
                                                 reason, position, created_at)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                )))
                .bind(t.transfer_id)
                .bind(t.from)
                .bind(t.to)
                .bind(t.amount.minor_units())
                .bind(t.currency.as_str())
                .bind(&t.reference)
                .bind(t.reverses)
                .bind(&t.reason)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
                if let Some(original) = t.reverses {
                    sqlx::query(sqlx::AssertSqlSafe(format!("update {transfers} set reversed_by = $2 where id = $1")))
                        .bind(original)
                        .bind(t.transfer_id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Event::WithdrawalRequested(w) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("insert into {withdrawals} (id, account_id, amount, currency, destination, status, position, updated_at)
                     values ($1, $2, $3, $4, $5, 'pending', $6, $7)")),
                )
                .bind(w.withdrawal_id)
                .bind(w.account_id)
                .bind(w.amount.minor_units())
                .bind(w.currency.as_str())
                .bind(&w.destination)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            Event::WithdrawalSettled(w) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "update {withdrawals} set status = 'settled', provider_ref = $2, position = $3, updated_at = $4
                     where id = $1"
                )))
                .bind(w.withdrawal_id)
                .bind(&w.provider_ref)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
                resolve_dead_letters(tx, t, w.withdrawal_id, "settled", at).await?;
            }
            Event::WithdrawalFailed(w) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "update {withdrawals} set status = 'failed', failure_reason = $2, position = $3, updated_at = $4
                     where id = $1"
                )))
                .bind(w.withdrawal_id)
                .bind(&w.reason)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
                resolve_dead_letters(tx, t, w.withdrawal_id, "failed", at).await?;
            }
            Event::PayoutDeadLettered(d) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "insert into {dead} (id, source, withdrawal_id, event_position, attempts, last_error, status,
                                               dead_lettered_at)
                     values ($1, 'payouts', $2, $3, $4, $5, 'open', $6)"
                )))
                .bind(d.dead_letter_id)
                .bind(d.withdrawal_id)
                .bind(d.source_position)
                .bind(i32::try_from(d.attempts).unwrap_or(i32::MAX))
                .bind(&d.last_error)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            Event::PayoutRedriven(r) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "update {dead} set status = 'redriven', resolved_at = $2 where id = $1"
                )))
                .bind(r.dead_letter_id)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            Event::WithdrawalReconciled(w) => {
                let status = match w.status_after {
                    ledger_domain::WithdrawalStatus::Pending => "pending",
                    ledger_domain::WithdrawalStatus::Settled => "settled",
                    ledger_domain::WithdrawalStatus::Failed => "failed",
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "update {withdrawals} set status = $2, provider_ref = coalesce($3, provider_ref), position = $4,
                            updated_at = $5 where id = $1"
                )))
                .bind(w.withdrawal_id)
                .bind(status)
                .bind(&w.provider_ref)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
                resolve_dead_letters(tx, t, w.withdrawal_id, status, at).await?;
            }
            Event::AccountOpened(_)
            | Event::AccountClosed(_)
            | Event::DepositRecorded(_)
            | Event::TokenIssued(_)
            | Event::ReconciliationStarted(_)
            | Event::ReconciliationMismatchFound(_)
            | Event::ReconciliationFinished(_) => {}
        }
    }
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
