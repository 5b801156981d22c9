//! `ledger-bench`: measures the library directly against a throw-away Postgres
//! database per mode (created, migrated, and dropped at the end) and prints JSON:
//! `rebuild` (projection rebuild rate over a large log), `temporal` (strong and as-of
//! reads of a long stream, with and without snapshots) and `reads` (cached and
//! uncached account reads, owner look-ups) and `queries` (each filter of
//! `GET /v1/transactions` over a large read model) and `tree` (the Merkle tree over a
//! large log: growth, tree heads, inclusion and consistency proofs). Loopback servers
//! only; each mode is bounded in time.

#[path = "../bench/mod.rs"]
mod bench;

use anyhow::{anyhow, bail};
use bench::Params;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Rebuild rate (events/s) of each projection over a log of --events events.
    Rebuild,
    /// Strong and as-of read latency of an account with --stream-events events.
    Temporal,
    /// Cached vs uncached account reads and owner look-ups over --accounts rows.
    Reads,
    /// Each filter of `GET /v1/transactions` over --transactions transactions.
    Queries,
    /// The Merkle tree over a log of --events events: growth, heads and proofs.
    Tree,
    /// All of them, one after another, each in its own database.
    All,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Rebuild => "rebuild",
            Mode::Temporal => "temporal",
            Mode::Reads => "reads",
            Mode::Queries => "queries",
            Mode::Tree => "tree",
            Mode::All => "all",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the ledger library against a fresh local Postgres database")]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// Server to create the bench databases on (loopback only; no database name).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    database_url_base: String,
    /// rebuild: events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// rebuild: customer accounts the log's transfers move money between.
    #[arg(long, default_value_t = 10_000)]
    log_accounts: u64,
    /// reads: rows in accounts_view.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    /// queries: transactions in the read model.
    #[arg(long, default_value_t = 1_000_000)]
    transactions: u64,
    /// temporal: events in the hot account's stream.
    #[arg(long, default_value_t = 100_000)]
    stream_events: u64,
    /// Commits per append_batch call while generating logs.
    #[arg(long, default_value_t = 5_000)]
    batch_commits: usize,
    /// temporal: timed iterations per measurement (after 2 warm-up ones).
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// temporal: save a snapshot every this many versions for the as-of reads.
    #[arg(long, default_value_t = 1_000)]
    snapshot_interval: i64,
    /// reads: concurrent tasks.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// reads: seconds per measured run.
    #[arg(long, default_value_t = 5)]
    duration_s: u64,
    /// Seconds a mode may run before it fails (at most 900).
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = bench::check_base_url(&args.database_url_base)?;
    if args.timeout_s == 0 || args.timeout_s > 900 {
        bail!("--timeout-s must be in 1..=900");
    }
    if args.batch_commits == 0 || args.iterations == 0 || args.concurrency == 0 {
        bail!("--batch-commits, --iterations and --concurrency must be positive");
    }
    if args.duration_s == 0 || args.duration_s > 60 {
        bail!("--duration-s must be in 1..=60");
    }
    let params = Params {
        events: args.events,
        log_accounts: args.log_accounts,
        accounts: args.accounts,
        transactions: args.transactions,
        stream_events: args.stream_events,
        batch_commits: args.batch_commits,
        iterations: args.iterations,
        snapshot_interval: args.snapshot_interval,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration_s),
        seed: args.seed,
    };
    let modes = match args.mode {
        Mode::All => vec![Mode::Rebuild, Mode::Temporal, Mode::Reads, Mode::Queries, Mode::Tree],
        mode => vec![mode],
    };
    let environment = bench::environment(&base).await?;
    let mut results = serde_json::Map::new();
    let mut failures = Vec::new();
    for mode in modes {
        let value = match run_mode(&base, mode, &params, Duration::from_secs(args.timeout_s)).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{}: FAILED: {e:#}", mode.name());
                failures.push(mode.name());
                json!({ "error": format!("{e:#}") })
            }
        };
        results.insert(mode.name().to_owned(), value);
    }
    let report = json!({
        "tool": "ledger-bench",
        "started_at": chrono::Utc::now().to_rfc3339(),
        "environment": environment,
        "params": {
            "events": params.events, "log_accounts": params.log_accounts, "accounts": params.accounts,
            "transactions": params.transactions,
            "stream_events": params.stream_events, "batch_commits": params.batch_commits,
            "iterations": params.iterations, "snapshot_interval": params.snapshot_interval,
            "concurrency": params.concurrency, "duration_s": args.duration_s, "seed": params.seed,
        },
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failures.is_empty() {
        bail!("modes failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Runs one mode in its own database, bounded by `timeout`, and drops the database
/// whatever happened.
async fn run_mode(base: &str, mode: Mode, params: &Params, timeout: Duration) -> anyhow::Result<Value> {
    let name = format!("ledger_bench_{}", Uuid::new_v4().simple());
    let url = format!("{base}/{name}");
    eprintln!("{}: database {name}", mode.name());
    let started = Instant::now();
    let load_before = bench::loadavg();
    let work = async {
        let db = bench::BenchDb::create(&url, &name).await?;
        let outcome = match mode {
            Mode::Rebuild => bench::rebuild::run(&db, params).await,
            Mode::Temporal => bench::temporal::run(&db, params).await,
            Mode::Reads => bench::reads::run(&db, params).await,
            Mode::Queries => bench::queries::run(&db, params).await,
            Mode::Tree => bench::tree::run(&db, params).await,
            Mode::All => Err(anyhow!("`all` is not a single mode")),
        };
        db.close().await;
        outcome
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, work) => {
            r.map_err(|_| anyhow!("{} ran longer than {} s", mode.name(), timeout.as_secs())).and_then(|r| r)
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let dropped = bench::drop_database(base, &name).await;
    if let Err(e) = &dropped {
        eprintln!("{}: dropping {name} failed: {e:#}", mode.name());
    }
    let mut value = outcome?;
    dropped?;
    value["database"] = json!(name);
    value["total_s"] = json!(bench::round(started.elapsed().as_secs_f64(), 1));
    value["loadavg_1m_before_after"] = json!([load_before, bench::loadavg()]);
    eprintln!("{}: done in {:.1} s", mode.name(), started.elapsed().as_secs_f64());
    Ok(value)
}
