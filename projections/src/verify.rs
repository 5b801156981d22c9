//! Verification: recompute every account, transfer and withdrawal from the log and
//! compare with the read models; every difference is reported.

use crate::apply::ApplyError;
use ledger_domain::{Aggregate, Ledger, WithdrawalStatus};
use ledger_infrastructure::EventStore;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// Folds the whole log (in pages) into a ledger.
pub async fn fold_log(pool: &PgPool, mut progress: impl FnMut(i64, i64)) -> Result<(Ledger, i64), ApplyError> {
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(pool).await?;
    let mut ledger = Ledger::new();
    let mut at = 0;
    while at < head {
        let up_to = (at + 20_000).min(head);
        for e in EventStore::read_range(pool, at, up_to).await? {
            ledger.apply(&e.event()?);
        }
        at = up_to;
        progress(at, head);
    }
    Ok((ledger, head))
}

type AccountRow = (Uuid, String, String, i64, String, String, i64);

/// Differences between the read models and the log, as of the projections' current
/// positions (call it when they are caught up).
pub async fn verify(pool: &PgPool, progress: impl FnMut(i64, i64)) -> Result<Vec<String>, ApplyError> {
    let (ledger, head) = fold_log(pool, progress).await?;
    let mut diffs = Vec::new();
    for (name, position) in
        sqlx::query_as::<_, (String, i64)>("select name, position from projection_checkpoints").fetch_all(pool).await?
    {
        if position != head {
            diffs.push(format!("projection {name} is at {position}, the log at {head}"));
        }
    }
    let rows: Vec<AccountRow> = sqlx::query_as(
        "select a.id, a.balance::text, a.pending_holds::text, a.version, a.status,
                coalesce(sum(e.amount), 0)::text, count(e.position)
         from accounts_view a left join account_entries e on e.account_id = a.id group by a.id",
    )
    .fetch_all(pool)
    .await?;
    let mut seen: HashMap<Uuid, AccountRow> = rows.into_iter().map(|r| (r.0, r)).collect();
    for (id, state) in ledger.streams() {
        match &state.aggregate {
            Aggregate::Account(a) => match seen.remove(id) {
                None => diffs.push(format!("account {id}: missing from accounts_view")),
                Some((_, balance, holds, version, status, sum, _)) => {
                    let want_status = if a.status == ledger_domain::AccountStatus::Closed { "closed" } else { "open" };
                    let balance = crate::queries::wide_money(&balance)?.minor_units();
                    let sum = crate::queries::wide_money(&sum)?.minor_units();
                    let holds = crate::queries::wide_money(&holds)?.minor_units();
                    let want = (a.balance.minor_units(), a.pending_holds.minor_units(), state.version, want_status);
                    if (balance, holds, version, status.as_str()) != want {
                        diffs.push(format!(
                            "account {id}: view has balance {balance}, holds {holds}, version {version}, {status}; log has {want:?}"
                        ));
                    }
                    if sum != a.balance.minor_units() {
                        diffs.push(format!(
                            "account {id}: statement sums to {sum}, balance is {}",
                            a.balance.minor_units()
                        ));
                    }
                }
            },
            Aggregate::Withdrawal(w) => {
                let status: Option<String> = sqlx::query_scalar("select status from withdrawals_view where id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                let want = match w.status {
                    WithdrawalStatus::Pending => "pending",
                    WithdrawalStatus::Settled => "settled",
                    WithdrawalStatus::Failed => "failed",
                };
                if status.as_deref() != Some(want) {
                    diffs.push(format!("withdrawal {id}: view has {status:?}, log has {want}"));
                }
            }
            _ => {}
        }
    }
    for id in seen.keys() {
        diffs.push(format!("account {id}: in accounts_view but not in the log"));
    }
    let transfers: i64 = sqlx::query_scalar(TRANSFER_ROWS).fetch_one(pool).await?;
    let want = ledger.streams().filter(|(_, s)| matches!(s.aggregate, Aggregate::Transfer(_))).count() as i64;
    if transfers != want {
        diffs.push(format!("transactions_view has {transfers} transfers, the log {want}"));
    }
    // Every transfer is also a transaction.
    let transactions: i64 = sqlx::query_scalar("select count(*) from transactions_view").fetch_one(pool).await?;
    let want = ledger
        .streams()
        .filter(|(_, s)| matches!(s.aggregate, Aggregate::Transfer(_) | Aggregate::Transaction(_)))
        .count() as i64;
    if transactions != want {
        diffs.push(format!("transactions_view has {transactions} transactions, the log {want}"));
    }
    Ok(diffs)
}

/// The transfers of `transactions_view` (see `queries::transfer`): the rows marked so,
/// and those projected before migration 0029 that `transfers_view` names.
pub const TRANSFER_ROWS: &str = "select count(*) from transactions_view t
     where t.transfer or exists (select 1 from transfers_view l where l.id = t.id)";
