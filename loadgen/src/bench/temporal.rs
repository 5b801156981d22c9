//! `temporal`: one hot account with `stream_events` events (deposits and transfers in
//! and out, among 100 counterparties), then the write side's strong load
//! (`StateLoader::load`, empty cache) and `snapshots::state_at` (as-of reads near the
//! end of the stream), each without and with snapshots.

use super::loggen::{Appender, LogGen};
use super::stats::summarize_ms;
use super::{BenchDb, Cpu, Params, rate, round};
use anyhow::{Context, bail};
use ledger_domain::{Aggregate, Ledger, StreamState, evolve};
use ledger_infrastructure::{StateLoader, snapshots};
use rand::Rng;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

const COUNTERPARTIES: usize = 100;
const WARMUP: usize = 2;

pub async fn run(db: &BenchDb, p: &Params) -> anyhow::Result<Value> {
    if p.stream_events < 10 {
        bail!("--stream-events must be at least 10");
    }
    let target = p.stream_events as i64;
    eprintln!("temporal: generating a stream of {target} events");
    let started = Instant::now();
    let cpu = Cpu::now();
    let mut g = LogGen::new(p.seed)?;
    let mut app = Appender::new(db.store.clone(), p.batch_commits);
    app.push(g.open_system()).await?;
    app.push(g.open_account()).await?;
    let hot_id = g.accounts[0];
    for i in 0..COUNTERPARTIES {
        app.push(g.open_account()).await?;
        app.push(g.deposit(i + 1, 1_000_000_000)?).await?;
    }
    const HOT: usize = 0;
    while g.version(hot_id) < target {
        let r: f64 = g.rng.random();
        let other = g.rng.random_range(1..=COUNTERPARTIES);
        let commit = if r < 0.2 {
            let amount = g.rng.random_range(1..=100_000);
            g.deposit(HOT, amount)?
        } else if r < 0.6 && g.balances[HOT] >= 1 {
            let amount = g.rng.random_range(1..=g.balances[HOT].min(50_000));
            g.transfer(HOT, other, amount)?
        } else if g.balances[other] < 50_000 {
            // Top the counterparty up first (an event that does not touch the hot stream).
            g.deposit(other, 1_000_000_000)?
        } else {
            let amount = g.rng.random_range(1..=50_000);
            g.transfer(other, HOT, amount)?
        };
        app.push(commit).await?;
    }
    app.finish().await?;
    let generation_s = started.elapsed().as_secs_f64();
    let generation_cpu = cpu.since();
    let vacuum_s = db.vacuum_analyze(&["events", "stream_entries"]).await?;
    let head = db.store.head().await?;
    let expected_balance = g.balances[HOT];
    let stream = json!({
        "account_id": hot_id,
        "stream_events": target,
        "log_events": head,
        "generation_s": round(generation_s, 3),
        "append_events_per_s": rate(app.appended, generation_s),
        "cpu": generation_cpu,
        "vacuum_analyze_s": round(vacuum_s, 3),
    });
    eprintln!("temporal: generated {head} events in {generation_s:.1} s");

    // (a) Strong load of the write side, a new loader (empty cache) per iteration.
    let no_snapshots = time_loads(db, hot_id, 0, p.iterations, target, expected_balance).await?;
    let snapshot_every = 100;
    let t = Instant::now();
    load_checked(db, hot_id, snapshot_every, target, expected_balance).await?;
    let first_load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let saved: i64 = sqlx::query_scalar("select count(*) from snapshots where stream_id = $1")
        .bind(hot_id)
        .fetch_one(&db.pool)
        .await?;
    if saved < 1 {
        bail!("the loader saved no snapshot after folding {target} events");
    }
    let with_snapshot = time_loads(db, hot_id, snapshot_every, p.iterations, target, expected_balance).await?;
    eprintln!("temporal: strong loads measured");

    // (b) As-of reads near the end, after snapshots every `snapshot_interval` versions.
    let t = Instant::now();
    let snapshot_count = build_snapshots(db, hot_id, p.snapshot_interval).await?;
    let build_s = t.elapsed().as_secs_f64();
    db.vacuum_analyze(&["snapshots"]).await?;
    let window = (target / 2).min(1000);
    let positions: Vec<i64> = sqlx::query_scalar(
        "select position from stream_entries where stream_id = $1 and version > $2 order by version",
    )
    .bind(hot_id)
    .bind(target - window)
    .fetch_all(&db.pool)
    .await?;
    let picks: Vec<i64> = (0..WARMUP + p.iterations)
        .map(|i| if i == WARMUP { head } else { positions[g.rng.random_range(0..positions.len())] })
        .collect();
    let (as_of_plain, states_plain) = time_state_at(db, hot_id, &picks, false).await?;
    let (as_of_snap, states_snap) = time_state_at(db, hot_id, &picks, true).await?;
    let same_states = states_plain == states_snap;
    eprintln!("temporal: as-of reads measured");

    Ok(json!({
        "stream": stream,
        "strong_load": {
            "what": "StateLoader::new(store, 1, snapshot_every).load(&mut Ledger, &[id]) with a new loader (empty cache) per iteration",
            "no_snapshots": no_snapshots,
            "first_load_that_saves_snapshot_ms": round(first_load_ms, 3),
            "snapshots_after_first_load": saved,
            "with_snapshot_every_100": with_snapshot,
        },
        "as_of": {
            "what": format!("snapshots::state_at(pool, id, position, use_snapshots) at random positions among the stream's last {window} events (and once at the head)"),
            "snapshots": { "every_versions": p.snapshot_interval, "count": snapshot_count, "build_s": round(build_s, 3) },
            "without_snapshots": as_of_plain,
            "with_snapshots": as_of_snap,
            "same_states": same_states,
        },
    }))
}

async fn load_checked(
    db: &BenchDb,
    id: Uuid,
    snapshot_every: usize,
    version: i64,
    balance: i64,
) -> anyhow::Result<Duration> {
    let loader = StateLoader::new(db.store.clone(), 1, snapshot_every);
    let mut ledger = Ledger::new();
    let t = Instant::now();
    loader.load(&mut ledger, &[id]).await?;
    let elapsed = t.elapsed();
    let got = ledger.account(id).and_then(|a| a.balance.to_i64());
    if ledger.version(id) != version || got != Some(balance) {
        bail!(
            "strong load gave version {} balance {got:?}, expected version {version} balance {balance}",
            ledger.version(id)
        );
    }
    Ok(elapsed)
}

async fn time_loads(
    db: &BenchDb,
    id: Uuid,
    snapshot_every: usize,
    iterations: usize,
    version: i64,
    balance: i64,
) -> anyhow::Result<Value> {
    let mut samples = Vec::with_capacity(iterations);
    let mut cpu = Cpu::now();
    for i in 0..WARMUP + iterations {
        if i == WARMUP {
            cpu = Cpu::now();
        }
        let elapsed = load_checked(db, id, snapshot_every, version, balance).await?;
        if i >= WARMUP {
            samples.push(elapsed);
        }
    }
    let mut out = summarize_ms(&samples);
    out["cpu"] = cpu.per_op_ms(samples.len());
    out["snapshot_every"] = json!(snapshot_every);
    out["warmup"] = json!(WARMUP);
    Ok(out)
}

/// Folds the stream from the log and saves a snapshot every `every` versions (and at
/// the last one). Returns how many snapshots the stream has.
async fn build_snapshots(db: &BenchDb, id: Uuid, every: i64) -> anyhow::Result<i64> {
    if every < 1 {
        bail!("--snapshot-interval must be at least 1");
    }
    let mut state = StreamState::default();
    loop {
        let page = db.store.read_stream(id, state.version + 1, 10_000).await?;
        let Some(last) = page.last().map(|e| e.version) else { break };
        for recorded in &page {
            state = evolve(state, id, recorded.version, &recorded.event()?);
            if recorded.version % every == 0 || (recorded.version == last && page.len() < 10_000) {
                snapshots::save(&db.pool, id, &state).await?;
            }
        }
    }
    if !matches!(state.aggregate, Aggregate::Account(_)) {
        bail!("the hot stream did not fold into an account");
    }
    Ok(sqlx::query_scalar("select count(*) from snapshots where stream_id = $1").bind(id).fetch_one(&db.pool).await?)
}

async fn time_state_at(
    db: &BenchDb,
    id: Uuid,
    positions: &[i64],
    use_snapshots: bool,
) -> anyhow::Result<(Value, Vec<StreamState>)> {
    let mut samples = Vec::with_capacity(positions.len());
    let mut folded_total = 0usize;
    let mut states = Vec::with_capacity(positions.len());
    let mut cpu = Cpu::now();
    for (i, at) in positions.iter().enumerate() {
        if i == WARMUP {
            cpu = Cpu::now();
        }
        let t = Instant::now();
        let (state, folded) = snapshots::state_at(&db.pool, id, *at, use_snapshots).await.context("state_at")?;
        let elapsed = t.elapsed();
        if i >= WARMUP {
            samples.push(elapsed);
            folded_total += folded;
        }
        states.push(state);
    }
    let mut out = summarize_ms(&samples);
    out["cpu"] = cpu.per_op_ms(samples.len());
    out["events_folded_mean"] = json!(round(folded_total as f64 / samples.len().max(1) as f64, 1));
    out["use_snapshots"] = json!(use_snapshots);
    out["warmup"] = json!(WARMUP);
    Ok((out, states))
}
