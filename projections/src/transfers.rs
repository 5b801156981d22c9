//! The transfers projection: `transfers_view` and `withdrawals_view`.

use crate::apply::ApplyError;
use ledger_domain::Event;
use ledger_infrastructure::RecordedEvent;
use sqlx::{Postgres, Transaction};

/// Applies events (in position order, above the checkpoint).
pub async fn apply(tx: &mut Transaction<'_, Postgres>, events: &[RecordedEvent]) -> Result<(), ApplyError> {
    for recorded in events {
        let at = recorded.recorded_at;
        let position = recorded.position;
        match recorded.event()? {
            Event::TransferPosted(t) => {
                sqlx::query(
                    "insert into transfers_view (id, from_account, to_account, amount, currency, reference, reverses,
                                                 reason, position, created_at)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
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
                    sqlx::query("update transfers_view set reversed_by = $2 where id = $1")
                        .bind(original)
                        .bind(t.transfer_id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Event::WithdrawalRequested(w) => {
                sqlx::query(
                    "insert into withdrawals_view (id, account_id, amount, currency, destination, status, position, updated_at)
                     values ($1, $2, $3, $4, $5, 'pending', $6, $7)",
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
                sqlx::query(
                    "update withdrawals_view set status = 'settled', provider_ref = $2, position = $3, updated_at = $4
                     where id = $1",
                )
                .bind(w.withdrawal_id)
                .bind(&w.provider_ref)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            Event::WithdrawalFailed(w) => {
                sqlx::query(
                    "update withdrawals_view set status = 'failed', failure_reason = $2, position = $3, updated_at = $4
                     where id = $1",
                )
                .bind(w.withdrawal_id)
                .bind(&w.reason)
                .bind(position)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            Event::AccountOpened(_) | Event::AccountClosed(_) | Event::DepositRecorded(_) => {}
        }
    }
    Ok(())
}
