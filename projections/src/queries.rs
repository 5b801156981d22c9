//! Queries over the read models. Every query returns typed rows and the projection's
//! checkpoint read in the same statement, which is the log position the data reflects.
//! No JSON is built here: the API turns rows into its wire types.

use chrono::{DateTime, Utc};
use ledger_domain::{AccountStatus, WithdrawalStatus};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use uuid::Uuid;

/// A row of `accounts_view`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub id: Uuid,
    pub currency: String,
    /// Sealed (revealed by the API on the way out).
    pub owner: Option<String>,
    /// `None` for accounts opened before subjects existed (their subject is their id).
    pub subject: Option<String>,
    pub erased: bool,
    pub status: AccountStatus,
    pub balance: i128,
    pub pending_holds: i128,
    pub overdraft_limit: i64,
    pub system: bool,
    pub metadata: Option<Value>,
    pub version: i64,
    pub position: i64,
}

/// A transfer: its row of `transactions_view`, with its one posting's sides.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TransferRow {
    pub id: Uuid,
    pub from_account: Uuid,
    pub to_account: Uuid,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub reverses: Option<Uuid>,
    pub reason: Option<String>,
    pub reversed_by: Option<Uuid>,
    pub metadata: Option<Value>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// Business time (null only in rows projected before effective dates existed,
    /// which the migration filled in).
    pub effective_at: Option<DateTime<Utc>>,
}

/// A row of `transactions_view` (transfers included).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TransactionRow {
    pub id: Uuid,
    /// `[{"from","to","amount","currency"}]`.
    pub postings: Value,
    pub reference: Option<String>,
    pub metadata: Option<Value>,
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub reverses: Option<Uuid>,
    pub reversed_by: Option<Uuid>,
    pub position: i64,
}

/// The filters of `GET /v1/transactions`, combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionFilter {
    pub account_id: Option<Uuid>,
    pub reference: Option<String>,
    /// `(key, value)`: a top-level key whose value is the string, or the integer
    /// written in decimal.
    pub metadata: Vec<(String, String)>,
    pub recorded_from: Option<DateTime<Utc>>,
    pub recorded_to: Option<DateTime<Utc>>,
    pub effective_from: Option<DateTime<Utc>>,
    pub effective_to: Option<DateTime<Utc>>,
    /// Only transactions at positions below this one (the cursor).
    pub before: Option<i64>,
    pub limit: i64,
}

/// A row of `withdrawals_view`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub destination: String,
    pub status: WithdrawalStatus,
    pub provider_ref: Option<String>,
    pub failure_reason: Option<String>,
    pub metadata: Option<Value>,
}

/// One line of an account's statement (`account_entries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRow {
    pub position: i64,
    pub kind: String,
    pub movement_id: Uuid,
    pub amount: i64,
    pub balance_after: i128,
    pub counterparty: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub effective_at: DateTime<Utc>,
}

/// An open dead letter.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub source: String,
    pub withdrawal_id: Uuid,
    pub event_position: i64,
    pub attempts: i32,
    pub last_error: String,
    pub dead_lettered_at: DateTime<Utc>,
}

/// A status column holds the snake_case name of a domain enum; anything else is a
/// corrupted read model, refused rather than shown as something it is not.
fn status<T: serde::de::DeserializeOwned>(row: &PgRow, column: &str) -> Result<T, sqlx::Error> {
    use sqlx::Row;
    let raw: String = row.try_get(column)?;
    serde_json::from_value(Value::String(raw.clone()))
        .map_err(|_| sqlx::Error::Decode(format!("{column} {raw:?} is not a known status").into()))
}

impl<'r> sqlx::FromRow<'r, PgRow> for AccountRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(AccountRow {
            id: row.try_get("id")?,
            currency: row.try_get("currency")?,
            owner: row.try_get("owner")?,
            subject: row.try_get("subject")?,
            erased: row.try_get("erased")?,
            status: status(row, "status")?,
            balance: wide(row, "balance")?,
            pending_holds: wide(row, "pending_holds")?,
            overdraft_limit: row.try_get("overdraft_limit")?,
            system: row.try_get("system")?,
            metadata: row.try_get("metadata")?,
            version: row.try_get("version")?,
            position: row.try_get("position")?,
        })
    }
}

/// A balance as Postgres keeps it (`numeric`, 128 bits' worth: migration 0018), read as
/// text: sqlx decodes `numeric` only through a decimal crate.
pub fn wide_money(text: &str) -> Result<ledger_domain::Money, sqlx::Error> {
    text.parse::<i128>()
        .map(ledger_domain::Money::wide)
        .map_err(|_| sqlx::Error::Decode(format!("{text:?} is not a balance").into()))
}

/// A `numeric` balance column, selected as `{column}::text as {column}`.
fn wide(row: &PgRow, column: &str) -> Result<i128, sqlx::Error> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    wide_money(&text).map(ledger_domain::Money::minor_units)
}

impl<'r> sqlx::FromRow<'r, PgRow> for EntryRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(EntryRow {
            position: row.try_get("position")?,
            kind: row.try_get("kind")?,
            movement_id: row.try_get("movement_id")?,
            amount: row.try_get("amount")?,
            balance_after: wide(row, "balance_after")?,
            counterparty: row.try_get("counterparty")?,
            occurred_at: row.try_get("occurred_at")?,
            effective_at: row.try_get("effective_at")?,
        })
    }
}

impl<'r> sqlx::FromRow<'r, PgRow> for WithdrawalRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(WithdrawalRow {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            amount: row.try_get("amount")?,
            currency: row.try_get("currency")?,
            destination: row.try_get("destination")?,
            status: status(row, "status")?,
            provider_ref: row.try_get("provider_ref")?,
            failure_reason: row.try_get("failure_reason")?,
            metadata: row.try_get("metadata")?,
        })
    }
}

/// A query's rows and the checkpoint of its projection, from one statement (so one
/// snapshot): the checkpoint row left-joined to the rows, so that it comes back even
/// when they are none (their columns are then null).
struct Checked<R> {
    checkpoint: i64,
    row: Option<R>,
}

impl<'r, R: sqlx::FromRow<'r, PgRow>> sqlx::FromRow<'r, PgRow> for Checked<R> {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let checkpoint = row.try_get("checkpoint")?;
        let id: Option<Uuid> = row.try_get("id")?;
        Ok(Checked { checkpoint, row: id.map(|_| R::from_row(row)).transpose()? })
    }
}

/// The rows and the checkpoint of `Checked` rows (at least one: the checkpoint's).
fn unchecked<R>(rows: Vec<Checked<R>>) -> Result<(Vec<R>, i64), sqlx::Error> {
    let checkpoint = rows.first().map(|r| r.checkpoint).ok_or(sqlx::Error::RowNotFound)?;
    Ok((rows.into_iter().filter_map(|r| r.row).collect(), checkpoint))
}

/// `select` of a projection's checkpoint with `rows` (a query aliased `v`) joined in.
fn with_checkpoint(projection: &str, columns: &str, rows: &str, order: &str) -> String {
    format!(
        "select c.position as checkpoint, {columns} from projection_checkpoints c
         left join lateral ({rows}) v on true where c.name = '{projection}' {order}"
    )
}

const ACCOUNT_COLUMNS: &str = "v.id, v.currency, v.owner, v.subject, v.erased, v.status, v.balance::text as balance, v.pending_holds::text as pending_holds, v.overdraft_limit, \
     v.system, v.metadata, v.version, v.position";

/// The statement of [`account`] (`$1`: the id), for benchmarks to explain.
pub fn account_sql() -> String {
    with_checkpoint("accounts", ACCOUNT_COLUMNS, "select * from accounts_view where id = $1", "")
}

/// The statement of [`accounts_by_owner`] (`$1`: the sealed owners, `$2`: the limit).
pub fn accounts_by_owner_sql() -> String {
    let rows = "select * from accounts_view where owner = any($1) order by id limit $2";
    with_checkpoint("accounts", ACCOUNT_COLUMNS, rows, "order by v.id")
}

/// An account row and the position it reflects.
pub async fn account(pool: &PgPool, id: Uuid) -> Result<(Option<AccountRow>, i64), sqlx::Error> {
    let sql = account_sql();
    let row: Checked<AccountRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((row.row, row.checkpoint))
}

/// Accounts whose owner is one of `sealed` (the sealed forms the owner look-up found
/// for an owner, `privacy::Privacy::sealed_owners`; indexed), at most `limit`, by id.
pub async fn accounts_by_owner(
    pool: &PgPool,
    sealed: &[String],
    limit: i64,
) -> Result<(Vec<AccountRow>, i64), sqlx::Error> {
    let sql = accounts_by_owner_sql();
    unchecked(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(sealed).bind(limit).fetch_all(pool).await?)
}

/// The rows of the given accounts (those the read model has), in no order.
pub async fn accounts(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<AccountRow>, sqlx::Error> {
    // One primary-key probe per id, not a scan comparing every row with every id.
    let sql = format!(
        "select {} from unnest($1::uuid[]) as k(id) join lateral (select * from accounts_view x where x.id = k.id offset 0) v on true",
        ACCOUNT_COLUMNS
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(pool).await
}

/// One page of an account's statement, newest first, before `before` (a position).
pub async fn entries(
    pool: &PgPool,
    account: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<EntryRow>, i64), sqlx::Error> {
    let rows = "select position, kind, movement_id as id, amount, balance_after, counterparty, occurred_at,
                       effective_at
                from account_entries where account_id = $1 and position < $2 order by position desc limit $3";
    let columns = "v.position, v.kind, v.id as movement_id, v.id, v.amount, v.balance_after::text as balance_after, v.counterparty, \
                   v.occurred_at, v.effective_at";
    let sql = with_checkpoint("accounts", columns, rows, "order by v.position desc");
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(account).bind(before.unwrap_or(i64::MAX)).bind(limit);
    unchecked(query.fetch_all(pool).await?)
}

/// A transfer row and the position it reflects.
pub async fn transfer(pool: &PgPool, id: Uuid) -> Result<(Option<TransferRow>, i64), sqlx::Error> {
    let columns = "v.id, (v.postings -> 0 ->> 'from')::uuid as from_account, (v.postings -> 0 ->> 'to')::uuid as to_account, \
                   (v.postings -> 0 ->> 'amount')::int8 as amount, v.postings -> 0 ->> 'currency' as currency, v.reference, \
                   v.reverses, v.reason, v.reversed_by, v.metadata, v.recorded_at as created_at, v.effective_at";
    // A row projected before migration 0029 (or by an older process) is a transfer
    // when `transfers_view`, no longer written, has it; everything else is read from
    // `transactions_view`, where reversals still mark it.
    let rows =
        "select t.id, t.postings, t.reference, coalesce(t.reason, l.reason) as reason, t.reverses, t.reversed_by,
                       t.metadata, t.recorded_at, t.effective_at
                from transactions_view t left join transfers_view l on l.id = t.id
                where t.id = $1 and (t.transfer or l.id is not null)";
    let sql = with_checkpoint("transfers", columns, rows, "");
    let row: Checked<TransferRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((row.row, row.checkpoint))
}

const TRANSACTION_COLUMNS: &str =
    "v.id, v.postings, v.reference, v.metadata, v.effective_at, v.recorded_at, v.reverses, v.reversed_by, v.position";

/// A transaction row (transfers included) and the position it reflects.
pub async fn transaction(pool: &PgPool, id: Uuid) -> Result<(Option<TransactionRow>, i64), sqlx::Error> {
    let sql = with_checkpoint("transfers", TRANSACTION_COLUMNS, "select * from transactions_view where id = $1", "");
    let row: Checked<TransactionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((row.row, row.checkpoint))
}

/// The statement of [`transactions`] for a filter, and its binds in order: each filter
/// adds its condition only when given, so the planner sees exactly the conditions its
/// index serves (`$1` is always the limit).
pub fn transactions_sql(f: &TransactionFilter) -> (String, Vec<Bind>) {
    let mut conditions = Vec::new();
    let mut binds = vec![Bind::Int(f.limit)];
    let next = |b: Bind, binds: &mut Vec<Bind>| {
        binds.push(b);
        format!("${}", binds.len())
    };
    let mut from = "transactions_view t".to_owned();
    let ordered = if let Some(account) = f.account_id {
        let p = next(Bind::Uuid(account), &mut binds);
        // The account's statement entries (the accounts projection; the projector keeps
        // both projections at one checkpoint) joined to the transactions among them.
        from = "account_entries a join transactions_view t on t.position = a.position".to_owned();
        conditions.push(format!("a.account_id = {p}"));
        "a.position"
    } else {
        "t.position"
    };
    if let Some(before) = f.before {
        let p = next(Bind::Int(before), &mut binds);
        conditions.push(format!("{ordered} < {p}"));
    }
    if let Some(reference) = &f.reference {
        let p = next(Bind::Text(reference.clone()), &mut binds);
        conditions.push(format!("t.reference = {p}"));
    }
    for (key, value) in &f.metadata {
        let as_string = serde_json::json!({ key.as_str(): value });
        let p = next(Bind::Json(as_string), &mut binds);
        match value.parse::<i64>() {
            // An integer written in decimal matches the integer too (never `007`: not
            // how that integer is written).
            Ok(n) if n.to_string() == *value => {
                let q = next(Bind::Json(serde_json::json!({ key.as_str(): n })), &mut binds);
                conditions.push(format!("(t.metadata @> {p} or t.metadata @> {q})"));
            }
            _ => conditions.push(format!("t.metadata @> {p}")),
        }
    }
    for (column, op, value) in [
        ("recorded_at", ">=", f.recorded_from),
        ("recorded_at", "<", f.recorded_to),
        ("effective_at", ">=", f.effective_from),
        ("effective_at", "<", f.effective_to),
    ] {
        if let Some(t) = value {
            let p = next(Bind::Time(t), &mut binds);
            conditions.push(format!("t.{column} {op} {p}"));
        }
    }
    let columns = TRANSACTION_COLUMNS.replace("v.", "t.");
    let filter = if conditions.is_empty() { String::new() } else { format!("where {}", conditions.join(" and ")) };
    let rows = format!("select {columns} from {from} {filter} order by {ordered} desc limit $1");
    (rows, binds)
}

/// A value bound to a statement of [`transactions_sql`].
#[derive(Clone, Debug, PartialEq)]
pub enum Bind {
    Int(i64),
    Uuid(Uuid),
    Text(String),
    Json(Value),
    Time(DateTime<Utc>),
}

/// One page of transactions matching `filter`, newest first, and the position the
/// read model reflects.
pub async fn transactions(
    pool: &PgPool,
    filter: &TransactionFilter,
) -> Result<(Vec<TransactionRow>, i64), sqlx::Error> {
    let (rows, binds) = transactions_sql(filter);
    let sql = format!(
        "select c.position as checkpoint, {} from projection_checkpoints c
         left join lateral ({rows}) v on true where c.name = 'transfers' order by v.position desc",
        TRANSACTION_COLUMNS
    );
    let query = sqlx::query_as_with::<_, Checked<TransactionRow>, _>(sqlx::AssertSqlSafe(sql), arguments(binds)?);
    unchecked(query.fetch_all(pool).await?)
}

/// The plan Postgres chooses for a filter's statement (`explain`), one line per row.
pub async fn explain_transactions(pool: &PgPool, filter: &TransactionFilter) -> Result<Vec<String>, sqlx::Error> {
    let (sql, binds) = transactions_sql(filter);
    let explain = format!("explain {sql}");
    sqlx::query_scalar_with(sqlx::AssertSqlSafe(explain), arguments(binds)?).fetch_all(pool).await
}

fn arguments(binds: Vec<Bind>) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
    use sqlx::Arguments;
    let mut args = sqlx::postgres::PgArguments::default();
    for b in binds {
        match b {
            Bind::Int(n) => args.add(n),
            Bind::Uuid(u) => args.add(u),
            Bind::Text(t) => args.add(t),
            Bind::Json(j) => args.add(j),
            Bind::Time(t) => args.add(t),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// A row of `holds_view`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HoldRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub to_account: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub captured_amount: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub reference: Option<String>,
    pub metadata: Option<Value>,
    pub position: i64,
}

/// A hold row and the position it reflects.
pub async fn hold(pool: &PgPool, id: Uuid) -> Result<(Option<HoldRow>, i64), sqlx::Error> {
    let columns = "v.id, v.account_id, v.to_account, v.amount, v.currency, v.status, v.captured_amount, \
                   v.expires_at, v.reference, v.metadata, v.position";
    let sql = with_checkpoint("transfers", columns, "select * from holds_view where id = $1", "");
    let row: Checked<HoldRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((row.row, row.checkpoint))
}

/// Pending holds whose `expires_at` is at or before `now`, soonest first, at most `limit`.
pub async fn expired_holds(
    pool: &PgPool,
    now: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<(DateTime<Utc>, Uuid)>, sqlx::Error> {
    // Pages in `(expires_at, id)` order: a page of holds that turn out not to be
    // pending any more (the read model lags the log) is passed, never asked again.
    let (at, id) = after.unzip();
    sqlx::query_as(
        "select expires_at, id from holds_view
         where status = 'pending' and expires_at is not null and expires_at <= $1
           and ($2::timestamptz is null or (expires_at, id) > ($2, $3))
         order by expires_at, id limit $4",
    )
    .bind(now)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A withdrawal row and the position it reflects.
pub async fn withdrawal(pool: &PgPool, id: Uuid) -> Result<(Option<WithdrawalRow>, i64), sqlx::Error> {
    let columns = "v.id, v.account_id, v.amount, v.currency, v.destination, v.status, v.provider_ref, \
                   v.failure_reason, v.metadata";
    let sql = with_checkpoint("transfers", columns, "select * from withdrawals_view where id = $1", "");
    let row: Checked<WithdrawalRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(pool).await?;
    Ok((row.row, row.checkpoint))
}

/// A projection's checkpoint, status, last update and rebuild progress.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusRow {
    pub name: String,
    pub position: i64,
    pub status: String,
    pub updated_at: DateTime<Utc>,
    pub rebuild_position: Option<i64>,
    pub rebuild_target: Option<i64>,
}

/// How far a projection has applied the log, as its checkpoint says.
pub async fn checkpoint(pool: &PgPool, projection: crate::Projection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select position from projection_checkpoints where name = $1")
        .bind(projection.name())
        .fetch_one(pool)
        .await
}

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
pub async fn open_dead_letters(pool: &PgPool) -> Result<(Vec<DeadLetterRow>, i64), sqlx::Error> {
    let rows = "select id, source, withdrawal_id, event_position, attempts, last_error, dead_lettered_at
                from dead_letters where status = 'open' order by dead_lettered_at";
    let columns = "v.id, v.source, v.withdrawal_id, v.event_position, v.attempts, v.last_error, v.dead_lettered_at";
    let sql = with_checkpoint("transfers", columns, rows, "order by v.dead_lettered_at");
    unchecked(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?)
}

/// The withdrawal a dead letter belongs to.
pub async fn dead_letter_withdrawal(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select withdrawal_id from dead_letters where id = $1").bind(id).fetch_optional(pool).await
}
