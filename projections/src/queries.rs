//! Queries over the read models. Every query returns the projection's checkpoint
//! read in the same snapshot, which is the log position the data reflects.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// The columns of `accounts_view` as the API shows them.
const ACCOUNT_COLUMNS: &str = "json_build_object('id', id, 'currency', currency, 'owner', owner, 'status', status,
    'balance', balance, 'available', balance - pending_holds, 'pending_holds', pending_holds,
    'overdraft_limit', overdraft_limit, 'system', system, 'metadata', metadata, 'version', version,
    'position', position)";

async fn checkpoint(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select position from projection_checkpoints where name = $1").bind(name).fetch_one(pool).await
}

/// An account view and the position it reflects.
pub async fn account(pool: &PgPool, id: Uuid) -> Result<(Option<Value>, i64), sqlx::Error> {
    let sql = format!(
        "select (select {ACCOUNT_COLUMNS} from accounts_view where id = $1),
                (select position from projection_checkpoints where name = 'accounts')"
    );
    let (view, position): (Option<Value>, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((view, position))
}

/// Accounts with the given owner (indexed), at most `limit`.
pub async fn accounts_by_owner(pool: &PgPool, owner: &str, limit: i64) -> Result<(Vec<Value>, i64), sqlx::Error> {
    let sql = format!(
        "select coalesce((select json_agg(a) from (select {ACCOUNT_COLUMNS} as a from accounts_view
                          where owner = $1 order by id limit $2) s), '[]'::json),
                (select position from projection_checkpoints where name = 'accounts')"
    );
    let (list, position): (Value, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(owner).bind(limit).fetch_one(pool).await?;
    let list = match list {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    Ok((list, position))
}

/// One page of an account's statement, newest first, before `cursor` (a position).
pub async fn entries(
    pool: &PgPool,
    account: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Value>, i64), sqlx::Error> {
    let rows: Vec<(i64, String, Uuid, i64, i64, Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select position, kind, movement_id, amount, balance_after, counterparty, occurred_at
         from account_entries where account_id = $1 and position < $2
         order by position desc limit $3",
    )
    .bind(account)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let position = checkpoint(pool, "accounts").await?;
    let entries = rows
        .into_iter()
        .map(|(position, kind, movement, amount, balance_after, counterparty, occurred_at)| {
            json!({
                "position": position, "kind": kind, "transfer_id": movement, "amount": amount,
                "balance_after": balance_after, "counterparty": counterparty, "occurred_at": occurred_at,
            })
        })
        .collect();
    Ok((entries, position))
}

/// A transfer view and the position it reflects.
pub async fn transfer(pool: &PgPool, id: Uuid) -> Result<(Option<Value>, i64), sqlx::Error> {
    sqlx::query_as(
        "select (select json_build_object('id', id, 'from', from_account, 'to', to_account, 'amount', amount,
                    'currency', currency, 'status', 'completed', 'reference', reference, 'reverses', reverses,
                    'reason', reason, 'reversed_by', reversed_by, 'metadata', metadata) from transfers_view where id = $1),
                (select position from projection_checkpoints where name = 'transfers')",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// A withdrawal view and the position it reflects.
pub async fn withdrawal(pool: &PgPool, id: Uuid) -> Result<(Option<Value>, i64), sqlx::Error> {
    sqlx::query_as(
        "select (select json_build_object('id', id, 'account_id', account_id, 'amount', amount, 'currency', currency,
                    'destination', destination, 'status', status, 'provider_ref', provider_ref,
                    'failure_reason', failure_reason, 'metadata', metadata) from withdrawals_view where id = $1),
                (select position from projection_checkpoints where name = 'transfers')",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// A projection's checkpoint, status, last update and rebuild progress.
pub type StatusRow = (String, i64, String, chrono::DateTime<chrono::Utc>, Option<i64>, Option<i64>);

/// Each projection's status, and the head of the log.
pub async fn statuses(pool: &PgPool) -> Result<(i64, Vec<StatusRow>), sqlx::Error> {
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(pool).await?;
    let rows = sqlx::query_as(
        "select name, position, status, updated_at, rebuild_position, rebuild_target
         from projection_checkpoints order by name",
    )
    .fetch_all(pool)
    .await?;
    Ok((head, rows))
}

/// The open dead letters, oldest first, and the position they reflect.
pub async fn open_dead_letters(pool: &PgPool) -> Result<(Vec<Value>, i64), sqlx::Error> {
    let (list, position): (Value, i64) = sqlx::query_as(
        "select coalesce((select json_agg(d order by d.dead_lettered_at) from (
                    select id, source, withdrawal_id, event_position, attempts, last_error, dead_lettered_at
                    from dead_letters where status = 'open') d), '[]'::json),
                (select position from projection_checkpoints where name = 'transfers')",
    )
    .fetch_one(pool)
    .await?;
    let list = match list {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    Ok((list, position))
}

/// The withdrawal a dead letter belongs to.
pub async fn dead_letter_withdrawal(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select withdrawal_id from dead_letters where id = $1").bind(id).fetch_optional(pool).await
}
