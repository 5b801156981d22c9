//! `rebuild`: a log of `events` events (accounts, deposits, transfers) appended in
//! large batches, then each projection rebuilt from it (blue-green, the library's own
//! `RebuildLock`), timed end to end.

use super::loggen::{Appender, LogGen};
use super::{BenchDb, Cpu, Params, rate, round};
use anyhow::{Context, bail};
use ledger_projections::Projection;
use ledger_projections::rebuild::RebuildLock;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Instant;
use uuid::Uuid;

pub async fn run(db: &BenchDb, p: &Params) -> anyhow::Result<Value> {
    let (g, generation) = generate(db, p, "rebuild").await?;
    let head = generation["events"].as_i64().expect("the generation reports its events");
    eprintln!("rebuild: rebuilding");
    let mut rebuilds = serde_json::Map::new();
    for projection in [Projection::Accounts, Projection::Transfers] {
        rebuilds.insert(projection.name().to_owned(), time_rebuild(db, projection, head).await?);
    }
    let verification = verify(db, &g).await?;
    Ok(json!({
        "generation": generation,
        "rebuild": rebuilds,
        "verification": verification,
    }))
}

/// A log of `p.events` events (accounts, deposits, transfers between `p.log_accounts`
/// accounts) appended in large batches; what was generated, and how fast.
pub async fn generate(db: &BenchDb, p: &Params, mode: &str) -> anyhow::Result<(LogGen, Value)> {
    if p.events < 10 {
        bail!("--events must be at least 10");
    }
    let accounts = p.log_accounts.min((p.events - 1) / 3).max(2) as usize;

    eprintln!("{mode}: generating {} events over {accounts} accounts", p.events);
    let started = Instant::now();
    let cpu = Cpu::now();
    let mut g = LogGen::new(p.seed)?;
    let mut app = Appender::new(db.store.clone(), p.batch_commits);
    app.push(g.open_system()).await?;
    for _ in 0..accounts {
        app.push(g.open_account()).await?;
    }
    for i in 0..accounts {
        let amount = g.rng.random_range(100_000..=1_000_000);
        app.push(g.deposit(i, amount)?).await?;
    }
    while g.events < p.events {
        let commit = match pick_payer(&mut g) {
            Some(from) if !g.rng.random_bool(0.05) => {
                let mut to = g.rng.random_range(0..accounts - 1);
                if to >= from {
                    to += 1;
                }
                let amount = g.rng.random_range(1..=(g.balances[from] / 5).max(1));
                g.transfer(from, to, amount)?
            }
            _ => {
                let account = g.rng.random_range(0..accounts);
                let amount = g.rng.random_range(1_000..=200_000);
                g.deposit(account, amount)?
            }
        };
        app.push(commit).await?;
    }
    app.finish().await?;
    let generation_s = started.elapsed().as_secs_f64();
    let generation_cpu = cpu.since();
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&db.pool).await?;
    if head != p.events as i64 {
        bail!("the log head is at {head}, expected {}", p.events);
    }
    let vacuum_s = db.vacuum_analyze(&["events", "stream_entries"]).await?;
    let generation = json!({
        "events": head,
        "accounts": accounts + 1,
        "account_opens": g.opened,
        "deposits": g.deposits,
        "transfers": g.transfers,
        "commits_per_batch": p.batch_commits,
        "batches": app.batches,
        "seconds": round(generation_s, 3),
        "append_events_per_s": rate(app.appended, generation_s),
        "cpu": generation_cpu,
        "vacuum_analyze_s": round(vacuum_s, 3),
        "events_table_mb": db.relation_mb("events").await?,
        "stream_entries_mb": db.relation_mb("stream_entries").await?,
    });
    eprintln!("{mode}: generated in {generation_s:.1} s");
    Ok((g, generation))
}

/// A random customer account with money to send (None if none is found quickly).
fn pick_payer(g: &mut LogGen) -> Option<usize> {
    (0..64).map(|_| g.rng.random_range(0..g.accounts.len())).find(|i| g.balances[*i] >= 1)
}

async fn time_rebuild(db: &BenchDb, projection: Projection, head: i64) -> anyhow::Result<Value> {
    let name = projection.name();
    let started = Instant::now();
    let cpu = Cpu::now();
    let lock = RebuildLock::acquire(&db.url, projection).await.with_context(|| format!("locking {name}"))?;
    let mut next_report = head / 10;
    let switched = lock
        .rebuild(&db.pool, |done, target| {
            if done >= next_report {
                let secs = started.elapsed().as_secs_f64();
                eprintln!("  {name}: {done}/{target} in {secs:.1} s ({:.0} events/s)", done as f64 / secs);
                next_report = done + head / 10;
            }
        })
        .await
        .with_context(|| format!("rebuilding {name}"))?;
    let secs = started.elapsed().as_secs_f64();
    if switched != head {
        bail!("{name} switched in at {switched}, the head is {head}");
    }
    eprintln!("rebuild: {name} done in {secs:.1} s");
    Ok(json!({
        "events": switched,
        "seconds": round(secs, 3),
        "events_per_s": rate(switched as u64, secs),
        "cpu": cpu.since(),
    }))
}

/// The rebuilt read models against what the generator knows.
async fn verify(db: &BenchDb, g: &LogGen) -> anyhow::Result<Value> {
    let rows: Vec<(Uuid, i64, bool)> =
        sqlx::query_as("select id, balance::bigint, system from accounts_view").fetch_all(&db.pool).await?;
    let views: HashMap<Uuid, (i64, bool)> = rows.iter().map(|(id, b, s)| (*id, (*b, *s))).collect();
    let mut mismatches = 0u64;
    for (id, balance) in g.accounts.iter().zip(&g.balances) {
        if views.get(id).map(|(b, _)| *b) != Some(*balance) {
            mismatches += 1;
        }
    }
    if views.get(&g.system).map(|(b, _)| *b) != Some(g.system_balance) {
        mismatches += 1;
    }
    let sum: i64 = rows.iter().map(|(_, b, _)| *b).sum();
    let min_customer = rows.iter().filter(|(_, _, s)| !s).map(|(_, b, _)| *b).min().unwrap_or(0);
    let transfers: i64 = sqlx::query_scalar(ledger_projections::verify::TRANSFER_ROWS).fetch_one(&db.pool).await?;
    let entries: i64 = sqlx::query_scalar("select count(*) from account_entries").fetch_one(&db.pool).await?;
    let checkpoints: Vec<(String, i64, String)> =
        sqlx::query_as("select name, position, status from projection_checkpoints order by name")
            .fetch_all(&db.pool)
            .await?;
    let ok = mismatches == 0
        && sum == 0
        && min_customer >= 0
        && rows.len() == g.accounts.len() + 1
        && transfers as u64 == g.transfers
        && entries as u64 == 2 * (g.deposits + g.transfers);
    if !ok {
        eprintln!("rebuild: WARNING: the rebuilt read models do not match the generated log");
    }
    Ok(json!({
        "ok": ok,
        "balance_mismatches": mismatches,
        "accounts_view_rows": rows.len(),
        "balance_sum": sum,
        "min_customer_balance": min_customer,
        "transfer_rows": transfers,
        "account_entries_rows": entries,
        "checkpoints": checkpoints,
    }))
}
