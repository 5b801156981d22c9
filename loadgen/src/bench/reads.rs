//! `reads`: `accounts` rows inserted straight into `accounts_view` (one
//! `insert ... select generate_series`), then account reads from Postgres
//! (`queries::account`) against hits of the API's moka cache (`AccountCache`), and
//! the owner look-up (`queries::accounts_by_owner`), each in a closed loop.

use super::stats::run_closed_loop;
use super::{BenchDb, Params, round};
use anyhow::{Context, bail};
use ledger_api::read::AccountCache;
use ledger_projections::queries;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CACHE_ENTRIES: u64 = 100_000;
const WARMUP: Duration = Duration::from_secs(1);
const SERIAL: Duration = Duration::from_secs(2);

/// The owner look-up's first half (`privacy::Privacy::sealed_owners`), with the bench's
/// stand-in for the keyed hash (see the insert into `owner_index`).
async fn sealed_owners(pool: &sqlx::PgPool, owner: &str) -> anyhow::Result<Vec<String>> {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(owner.as_bytes()).to_vec();
    Ok(sqlx::query_scalar("select owner_sealed from owner_index where owner_hash = $1 limit 1000")
        .bind(hash)
        .fetch_all(pool)
        .await?)
}

fn owner(n: u64) -> String {
    format!("owner-{n}@example.com")
}

pub async fn run(db: &BenchDb, p: &Params) -> anyhow::Result<Value> {
    if p.accounts < 10 {
        bail!("--accounts must be at least 10");
    }
    let owners = (p.accounts / 10).max(1);
    eprintln!("reads: inserting {} accounts", p.accounts);
    let t = Instant::now();
    let inserted = sqlx::query(
        "insert into accounts_view (id, currency, owner, status, balance, pending_holds, overdraft_limit, system,
                                    metadata, version, position, updated_at)
         select gen_random_uuid(), 'EUR', 'owner-' || (n % $2) || '@example.com', 'open', (n * 7919) % 10000000, 0, 0,
                false, case when n % 10 = 0 then jsonb_build_object('segment', 'retail', 'n', n) end, 1 + n % 50, n, now()
         from generate_series(1, $1::bigint) as n",
    )
    .bind(p.accounts as i64)
    .bind(owners as i64)
    .execute(&db.pool)
    .await?
    .rows_affected();
    // The look-up goes through `owner_index` (migration 0023): a hash per sealed owner.
    // Here the "sealed" owner is the text itself and the hash its SHA-256: the same
    // statement and indexes as the service's keyed hash of a sealed value.
    sqlx::query(
        "insert into owner_index (owner_hash, owner_sealed, key_id)
         select sha256(convert_to(owner, 'UTF8')), owner, gen_random_uuid()
         from (select distinct owner from accounts_view where owner is not null) o on conflict do nothing",
    )
    .execute(&db.pool)
    .await?;
    let insert_s = t.elapsed().as_secs_f64();
    let vacuum_s = db.vacuum_analyze(&["accounts_view"]).await?;
    let ids: Arc<Vec<Uuid>> = Arc::new(sqlx::query_scalar("select id from accounts_view").fetch_all(&db.pool).await?);
    let table = json!({
        "rows": inserted,
        "owners": owners,
        "insert_s": round(insert_s, 3),
        "vacuum_analyze_s": round(vacuum_s, 3),
        "table_and_indexes_mb": db.relation_mb("accounts_view").await?,
        "pkey_mb": db.relation_mb("accounts_view_pkey").await?,
        "owner_index_mb": db.relation_mb("accounts_view_owner").await?,
        "ids": "gen_random_uuid() (v4; the API uses v7)",
    });
    eprintln!("reads: {inserted} rows in {insert_s:.1} s");

    let explain_owner = explain(
        &db.pool,
        &queries::accounts_by_owner_sql()
            .replace("$1", &format!("array['{}']", owner(owners / 2)))
            .replace("$2", "1000"),
    )
    .await?;
    let owner_index_used = explain_owner.iter().any(|l| l.contains("accounts_view_owner"));
    let explain_account =
        explain(&db.pool, &queries::account_sql().replace("$1", &format!("'{}'", ids[ids.len() / 2]))).await?;

    // Uncached: one query per read.
    let account_op = {
        let (pool, ids) = (db.pool.clone(), ids.clone());
        move |r: u64| {
            let (pool, id) = (pool.clone(), ids[(r % ids.len() as u64) as usize]);
            async move { Ok(queries::account(&pool, id).await?.0.is_some()) }
        }
    };
    eprintln!("reads: uncached account reads");
    run_closed_loop(p.concurrency, WARMUP, p.seed, account_op.clone()).await?;
    let uncached = run_closed_loop(p.concurrency, p.duration, p.seed + 1, account_op.clone()).await?;
    let uncached_serial = run_closed_loop(1, SERIAL, p.seed + 2, account_op).await?;

    // Cached: hits of the API's cache, filled with the views of CACHE_ENTRIES accounts.
    eprintln!("reads: cached account reads");
    let cache = Arc::new(AccountCache::new(CACHE_ENTRIES, Duration::from_secs(60)));
    let cached_ids: Arc<Vec<Uuid>> = Arc::new(ids.iter().take(CACHE_ENTRIES as usize).copied().collect());
    let t = Instant::now();
    for chunk in cached_ids.chunks(10_000) {
        for row in queries::accounts(&db.pool, chunk).await.context("cache fill")? {
            let id = row.id;
            let json = serde_json::to_vec(&ledger_api::read::views::account_row(row))?;
            cache.insert(id, json.into(), 0).await;
        }
    }
    let fill_s = t.elapsed().as_secs_f64();
    let cache_op = {
        let (cache, ids) = (cache.clone(), cached_ids.clone());
        move |r: u64| {
            let (cache, id) = (cache.clone(), ids[(r % ids.len() as u64) as usize]);
            async move { Ok(cache.get(id, 0).await.is_some()) }
        }
    };
    let cached = run_closed_loop(p.concurrency, p.duration, p.seed + 3, cache_op.clone()).await?;
    let cached_serial = run_closed_loop(1, SERIAL, p.seed + 4, cache_op).await?;
    let (hits, misses, entries) = cache.stats();

    // The owner look-up.
    eprintln!("reads: owner look-ups");
    let owner_op = {
        let pool = db.pool.clone();
        move |r: u64| {
            let (pool, owner) = (pool.clone(), owner(r % owners));
            async move {
                Ok(!queries::accounts_by_owner(&pool, &sealed_owners(&pool, &owner).await?, 1000).await?.0.is_empty())
            }
        }
    };
    let mut rows_returned = 0usize;
    for n in 0..100 {
        let sealed = sealed_owners(&db.pool, &owner(n * owners / 100)).await?;
        rows_returned += queries::accounts_by_owner(&db.pool, &sealed, 1000).await?.0.len();
    }
    run_closed_loop(p.concurrency, WARMUP, p.seed + 5, owner_op.clone()).await?;
    let by_owner = run_closed_loop(p.concurrency, p.duration, p.seed + 6, owner_op.clone()).await?;
    let by_owner_serial = run_closed_loop(1, SERIAL, p.seed + 7, owner_op).await?;

    let speedup = |cached: f64, uncached: f64| if uncached > 0.0 { round(cached / uncached, 1) } else { 0.0 };
    let ops_per_s = |s: &super::stats::RunStats| s.ops as f64 / s.elapsed.as_secs_f64();
    Ok(json!({
        "table": table,
        "account_uncached": {
            "what": "ledger_projections::queries::account(pool, id), random ids, pool of 16 connections",
            "concurrent": uncached.to_json(),
            "serial": uncached_serial.to_json(),
        },
        "account_cached": {
            "what": format!(
                "ledger_api::read::AccountCache::new({CACHE_ENTRIES}, 60 s) .get(id, 0) (moka), {} entries filled from the view, random hits",
                cached_ids.len()
            ),
            "fill_s": round(fill_s, 3),
            "concurrent": cached.to_json(),
            "serial": cached_serial.to_json(),
            "cache_stats": { "hits": hits, "misses": misses, "entries": entries },
            "speedup_ops_per_s_vs_uncached": speedup(ops_per_s(&cached), ops_per_s(&uncached)),
        },
        "accounts_by_owner": {
            "what": "ledger_projections::queries::accounts_by_owner(pool, owner, 1000), random owners",
            "rows_per_owner_mean": round(rows_returned as f64 / 100.0, 1),
            "concurrent": by_owner.to_json(),
            "serial": by_owner_serial.to_json(),
            "owner_index_used": owner_index_used,
            "explain": explain_owner,
        },
        "explain_account": explain_account,
    }))
}

async fn explain(pool: &PgPool, query: &str) -> anyhow::Result<Vec<String>> {
    let sql = format!("explain (analyze, buffers) {query}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.context("explain")
}
