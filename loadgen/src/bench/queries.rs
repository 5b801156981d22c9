//! `queries`: each filter of `GET /v1/transactions` (through
//! `ledger_projections::queries::transactions`, the statement the API runs) over
//! `--transactions` rows of `transactions_view` and their `account_entries`, inserted
//! directly (as the projection writes them) and vacuumed: latency median and p99 of
//! a serial run per filter with random values, each with the plan it used.

use super::stats::run_closed_loop;
use super::{BenchDb, Params, round};
use anyhow::Context;
use ledger_projections::queries::{self, TransactionFilter};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Instant;
use uuid::Uuid;

/// Accounts the generated transactions touch (two each).
const ACCOUNTS: i64 = 10_000;
/// Distinct references (`ref-0` …).
const REFERENCES: i64 = 100_000;
/// Seconds between consecutive transactions' times.
const SPACING_MS: i64 = 100;

/// The id the insert gives account `n` (its number in decimal in the last group).
fn account(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-7000-8000-{:012}", n % ACCOUNTS as u64)).expect("a uuid")
}

pub async fn run(db: &BenchDb, p: &Params) -> anyhow::Result<Value> {
    let rows = p.transactions as i64;
    eprintln!("queries: inserting {rows} transactions");
    let t = Instant::now();
    // Times count back from now, SPACING_MS apart; every tenth is backdated an hour.
    sqlx::query(
        "insert into transactions_view (id, postings, reference, metadata, effective_at, recorded_at, position)
         select gen_random_uuid(),
                jsonb_build_array(jsonb_build_object('from', a, 'to', b, 'amount', 1 + n % 1000, 'currency', 'EUR')),
                'ref-' || (n % $2), jsonb_build_object('order', n, 'channel', 'c' || (n % 20)),
                now() - make_interval(secs => ($1 - n) * $3 / 1000.0) - case when n % 10 = 0 then interval '1 hour' else interval '0' end,
                now() - make_interval(secs => ($1 - n) * $3 / 1000.0), n
         from (select n, ('00000000-0000-7000-8000-' || lpad((n % $4)::text, 12, '0'))::uuid a,
                         ('00000000-0000-7000-8000-' || lpad(((n * 7 + 1) % $4)::text, 12, '0'))::uuid b
               from generate_series(1, $1) n) g",
    )
    .bind(rows)
    .bind(REFERENCES)
    .bind(SPACING_MS)
    .bind(ACCOUNTS)
    .execute(&db.pool)
    .await
    .context("transactions")?;
    sqlx::query(
        "insert into account_entries (account_id, position, kind, movement_id, amount, balance_after, counterparty,
                                      occurred_at, effective_at)
         select (p ->> 'from')::uuid, position, 'transaction', id, -1, 0, null, recorded_at, effective_at
         from transactions_view, jsonb_array_elements(postings) p
         union all
         select (p ->> 'to')::uuid, position, 'transaction', id, 1, 0, null, recorded_at, effective_at
         from transactions_view, jsonb_array_elements(postings) p",
    )
    .execute(&db.pool)
    .await
    .context("transaction accounts")?;
    let insert_s = t.elapsed().as_secs_f64();
    let vacuum_s = db.vacuum_analyze(&["transactions_view", "account_entries"]).await?;
    eprintln!("queries: {rows} rows in {insert_s:.1} s, vacuum {vacuum_s:.1} s");
    let now = chrono::Utc::now();
    let span_ms = rows * SPACING_MS;
    let time_at = move |r: u64| now - chrono::Duration::milliseconds((r % rows as u64) as i64 * SPACING_MS);
    type Make = fn(u64, &dyn Fn(u64) -> chrono::DateTime<chrono::Utc>) -> TransactionFilter;
    let filters: [(&str, &str, Make); 8] = [
        ("account_id", "one account's transactions (about 200 each)", |r, _| TransactionFilter {
            account_id: Some(account(r)),
            ..Default::default()
        }),
        ("reference", "one reference (10 each)", |r, _| TransactionFilter {
            reference: Some(format!("ref-{}", r % REFERENCES as u64)),
            ..Default::default()
        }),
        ("metadata", "metadata.order=N (one each)", |r, _| TransactionFilter {
            metadata: vec![("order".into(), (r % 1_000_000 + 1).to_string())],
            ..Default::default()
        }),
        ("metadata_wide", "metadata.channel=cN (5% each), newest 50", |r, _| TransactionFilter {
            metadata: vec![("channel".into(), format!("c{}", r % 20))],
            ..Default::default()
        }),
        ("recorded_range", "a one-minute recorded window", |r, at| TransactionFilter {
            recorded_from: Some(at(r) - chrono::Duration::seconds(60)),
            recorded_to: Some(at(r)),
            ..Default::default()
        }),
        ("effective_range", "a one-minute effective window", |r, at| TransactionFilter {
            effective_from: Some(at(r) - chrono::Duration::seconds(60)),
            effective_to: Some(at(r)),
            ..Default::default()
        }),
        ("account_and_range", "an account within a recorded day", |r, at| TransactionFilter {
            account_id: Some(account(r)),
            recorded_from: Some(at(r) - chrono::Duration::days(1)),
            recorded_to: Some(at(r)),
            ..Default::default()
        }),
        ("newest_page", "no filter, a random cursor", |r, _| TransactionFilter {
            before: Some(1 + (r % 1_000_000) as i64),
            ..Default::default()
        }),
    ];
    let mut results = serde_json::Map::new();
    for (i, (name, what, make)) in filters.into_iter().enumerate() {
        let sample = TransactionFilter { limit: 50, ..make(12_345, &time_at) };
        let plan = explain(&db.pool, &sample).await?;
        let op = {
            let pool = db.pool.clone();
            move |r: u64| {
                let pool = pool.clone();
                let filter = TransactionFilter { limit: 50, ..make(r, &time_at) };
                async move { Ok(!queries::transactions(&pool, &filter).await?.0.is_empty()) }
            }
        };
        eprintln!("queries: {name}");
        run_closed_loop(1, std::time::Duration::from_millis(500), p.seed, op.clone()).await?;
        let serial = run_closed_loop(1, p.duration, p.seed + 1 + i as u64, op).await?;
        results.insert(name.to_owned(), json!({ "what": what, "serial": serial.to_json(), "plan": plan }));
    }
    Ok(json!({
        "table": {
            "transactions": rows,
            "accounts": ACCOUNTS,
            "span_h": round(span_ms as f64 / 3_600_000.0, 1),
            "insert_s": round(insert_s, 1),
            "vacuum_analyze_s": round(vacuum_s, 1),
            "transactions_view_mb": db.relation_mb("transactions_view").await?,
            "account_entries_mb": db.relation_mb("account_entries").await?,
        },
        "what": "ledger_projections::queries::transactions(pool, filter) with limit 50, one client, random values",
        "filters": results,
    }))
}

async fn explain(pool: &PgPool, filter: &TransactionFilter) -> anyhow::Result<Vec<String>> {
    queries::explain_transactions(pool, filter).await.context("explain")
}
