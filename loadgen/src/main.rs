//! `ledger-load`: drives the ledger's HTTP API through the typed client
//! (`ledger-client`, retries off so every failure is counted), transfers through a lean
//! HTTP/1.1 client of its own (`raw.rs`; `--typed-client` for the typed one), and
//! reports throughput, latency percentiles, errors by code and projection lag. Loopback
//! targets only; every run is bounded in time.

use anyhow::bail;
use clap::{Parser, ValueEnum};
use ledger_client::wire::{self, Amount, Currency};
use ledger_client::{Client, Read, RetryPolicy};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

mod raw;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// POST /v1/transfers with unique keys (and a share of re-sent keys).
    Transfers,
    /// GET /v1/accounts/{id} (eventual, served from the cache when warm).
    Reads,
    /// GET /v1/accounts/{id}?consistency=strong (folded from the log, no cache).
    StrongReads,
    /// POST /v1/bulk of --bulk-size one-posting transactions (non-atomic) per request.
    Bulk,
    /// POST /v1/accounts without personal data (nothing to seal).
    Opens,
    /// POST /v1/accounts with an `owner` and two `pii.` metadata values (sealed under
    /// the subject's key from issue 29 on).
    OpensPersonal,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the ledger HTTP API")]
struct Args {
    #[arg(long, value_enum, default_value = "transfers")]
    mode: Mode,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "LEDGER_ADMIN_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Target total requests per second (open loop); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Share of transfers that re-send an earlier key (idempotent replays).
    #[arg(long, default_value_t = 0.0)]
    resend_share: f64,
    /// Share of transfers that debit the first account (a hot account; mode transfers).
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Items per bulk (mode bulk).
    #[arg(long, default_value_t = 1000)]
    bulk_size: usize,
    /// Measure commit → visible-in-read-model lag on every Nth transfer.
    #[arg(long, default_value_t = 20)]
    lag_sample_every: u64,
    /// Ledgers to spread the load over, comma-separated (they must exist): the
    /// accounts are divided among them and worker `w` works in ledger `w mod n`, so the
    /// total load is the same as in one ledger. Default: the ledger `default`.
    #[arg(long, value_delimiter = ',')]
    ledgers: Vec<String>,
    /// Open every connection (one `GET /health/live` per worker, at once) before the
    /// measured run, so the run measures requests, not a storm of new connections.
    #[arg(long)]
    connect_first: bool,
    /// Send transfers through the typed client (reqwest) instead of the lean one
    /// (`raw.rs`): the same requests, at about twice the load generator's CPU.
    #[arg(long)]
    typed_client: bool,
    /// Threads of the load generator's own runtime: 1 runs every worker on one thread
    /// (no wake-ups across threads: 35 % less of the load generator's CPU per transfer
    /// than one per core, measured); 0 one per core. Default: 1, but one per core for
    /// reads (tens of thousands a second, more than one thread sends).
    #[arg(long)]
    threads: Option<usize>,
}

/// What the workers observed.
#[derive(Default)]
struct Observed {
    latencies_us: Vec<u64>,
    codes: BTreeMap<String, u64>,
    lags_us: Vec<u64>,
    sent_keys: Vec<(String, wire::TransferRequest)>,
    /// Transfers recorded (bulk items answered 201).
    items_ok: u64,
    /// Latencies of the accepted requests, and of those refused for load (503, 429).
    ok_latencies_us: Vec<u64>,
    /// The accepted requests' latencies by the second of the run they started in.
    ok_by_second: BTreeMap<u64, Vec<u64>>,
    refused_latencies_us: Vec<u64>,
    /// Refusals for load that said when to come back (`Retry-After`).
    refused_with_retry_after: u64,
    /// Lag probes not sent because `LAG_PROBES_MAX` were in flight.
    lags_skipped: u64,
}

/// The most lag probes in flight at once. A probe runs beside its worker's next
/// request and waits for the read model, so without a bound a slow start would pile
/// them up past the service's in-flight bound and have it refuse the measured load.
const LAG_PROBES_MAX: usize = 16;

/// Whether an answer refused the request for load (the service's bounds: 503
/// `unavailable`, 429 `rate_limited`), and whether it said when to come back.
fn shed(e: &ledger_client::Error) -> Option<bool> {
    match e {
        ledger_client::Error::Api { status: 503 | 429, retry_after, .. } => Some(retry_after.is_some()),
        _ => None,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main_url(args: &Args) -> anyhow::Result<()> {
    let host = args.url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("load runs only against loopback addresses, not {host}");
    }
    Ok(())
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("a currency code")
}

/// The client of a run: one connection pool of `pool` idle connections, no retries.
fn client(args: &Args, pool: usize) -> anyhow::Result<(Client, reqwest::Client)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(pool).build()?;
    Ok((Client::builder(&args.url, &args.token).http(http.clone()).retry(RetryPolicy::none()).build()?, http))
}

/// Opens `n` connections of `http`'s pool at once (`--connect-first`); they stay idle
/// in the pool for the run.
async fn connect_first(http: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<()> {
    let live = format!("{}/health/live", url.trim_end_matches('/'));
    let opened = futures::future::join_all((0..n).map(|_| http.get(&live).send())).await;
    let failed = opened.iter().filter(|r| !r.as_ref().is_ok_and(|r| r.status().is_success())).count();
    if failed > 0 {
        bail!("{failed} of {n} connections could not be opened first");
    }
    Ok(())
}

/// The stable code of a failure, for the report.
fn code(e: &ledger_client::Error) -> String {
    match (e.code(), e) {
        (Some(code), _) => code.as_str().to_owned(),
        (None, ledger_client::Error::Transport(_)) => "connection_error".to_owned(),
        (None, _) => e.status().map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
    }
}

async fn setup_accounts(ledger: &Client, args: &Args) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(args.accounts);
    let owner: wire::Text = "load@example.com".try_into().map_err(anyhow::Error::msg)?;
    for _ in 0..args.accounts {
        let open = wire::OpenAccountRequest {
            currency: eur(),
            owner: Some(owner.clone()),
            overdraft_limit: None,
            id: None,
            metadata: None,
            subject: None,
        };
        let account = ledger.open_account(&open, None).await?;
        let deposit = wire::DepositRequest {
            effective_at: None,
            account_id: account.id,
            amount: Amount::new(1_000_000_000_000)?,
            currency: eur(),
            reference: None,
            metadata: None,
        };
        ledger.deposit(&deposit, None).await?;
        ids.push(account.id);
    }
    Ok(ids)
}

/// A transfer sent on the lean client's connection: its position, or its code and
/// whether it was refused for load with a `Retry-After`.
async fn raw_transfer(
    connection: &mut raw::Connection,
    body: &wire::TransferRequest,
    key: &str,
) -> Result<Option<i64>, (String, bool)> {
    #[derive(serde::Deserialize)]
    struct Answered {
        position: Option<i64>,
        code: Option<String>,
    }
    let json = serde_json::to_vec(body).expect("a transfer request serializes");
    let path = format!("{}/transfers", connection.prefix());
    match connection.post(&path, key, &json).await {
        Ok(answer) => {
            let parsed: Option<Answered> = serde_json::from_slice(&answer.body).ok();
            match (answer.status, parsed) {
                (200..=299, Some(a)) => Ok(a.position),
                (200..=299, None) => Err(("unreadable_answer".to_owned(), false)),
                (status, parsed) => {
                    let code = parsed.and_then(|a| a.code).unwrap_or_else(|| status.to_string());
                    Err((code, matches!(status, 429 | 503) && answer.retry_after))
                }
            }
        }
        Err(_) => Err(("connection_error".to_owned(), false)),
    }
}

/// One request of the run: its code (`ok` or the error code), and for a transfer the
/// position it was recorded at and its payer (for the lag probe).
async fn one_request(
    ledger: &Client,
    raw: Option<&mut raw::Connection>,
    args: &Args,
    accounts: &[Uuid],
    n: u64,
    observed: &Mutex<Observed>,
) -> (String, Option<i64>, Option<Uuid>) {
    match args.mode {
        Mode::Transfers => {
            let resend = args.resend_share > 0.0 && rand::random::<f64>() < args.resend_share;
            let earlier = if resend { observed.lock().await.sent_keys.last().cloned() } else { None };
            let (key, body) = earlier.unwrap_or_else(|| {
                let hot = args.hot_share > 0.0 && rand::random::<f64>() < args.hot_share;
                let from = if hot { 0 } else { rand::random_range(0..accounts.len()) };
                let to = (from + 1 + rand::random_range(0..accounts.len() - 1)) % accounts.len();
                let body = wire::TransferRequest {
                    effective_at: None,
                    from: accounts[from],
                    to: accounts[to],
                    amount: Amount::new(1 + (n % 100) as i64).expect("1 ..= 100"),
                    currency: eur(),
                    reference: None,
                    metadata: None,
                };
                (Uuid::new_v4().to_string(), body)
            });
            let sent = match raw {
                Some(connection) => raw_transfer(connection, &body, &key).await,
                None => match ledger.transfer(&body, Some(&key)).await {
                    Ok(reply) => Ok(reply.position),
                    Err(e) => Err((code(&e), shed(&e) == Some(true))),
                },
            };
            match sent {
                Ok(position) => {
                    if !resend && n.is_multiple_of(50) {
                        observed.lock().await.sent_keys.push((key, body.clone()));
                    }
                    ("ok".to_owned(), position, Some(body.from))
                }
                Err((code, retry_after)) => {
                    if retry_after {
                        observed.lock().await.refused_with_retry_after += 1;
                    }
                    (code, None, None)
                }
            }
        }
        Mode::Bulk => {
            let items = (0..args.bulk_size)
                .map(|i| {
                    let from = rand::random_range(0..accounts.len());
                    let to = (from + 1 + rand::random_range(0..accounts.len() - 1)) % accounts.len();
                    let body = json!({ "postings": [{ "from": accounts[from], "to": accounts[to],
                                                      "amount": 1 + (n + i as u64) % 100, "currency": "EUR" }] });
                    wire::BulkItem {
                        method: "POST".into(),
                        path: "/v1/transactions".into(),
                        idempotency_key: Uuid::new_v4().to_string(),
                        body: Some(body),
                    }
                })
                .collect();
            match ledger.bulk(&wire::BulkRequest { atomic: false, items }, None).await {
                Ok(reply) => {
                    let ok = reply.results.iter().filter(|r| r.status == 201).count() as u64;
                    let last = reply.results.iter().rev().find_map(|r| r.body["position"].as_i64());
                    observed.lock().await.items_ok += ok;
                    ("ok".to_owned(), last, Some(accounts[0]))
                }
                Err(e) => (code(&e), None, None),
            }
        }
        Mode::Opens | Mode::OpensPersonal => {
            let personal = args.mode == Mode::OpensPersonal;
            let open = wire::OpenAccountRequest {
                currency: eur(),
                owner: personal.then(|| format!("load-{n}@example.com").try_into().expect("an owner")),
                overdraft_limit: None,
                id: None,
                metadata: Some(wire::AccountMetadata(if personal {
                    json!({ "pii.phone": format!("+49-{n}"), "pii.birth_year": 1980 + (n % 40) as i64, "tier": "gold" })
                } else {
                    json!({ "tier": "gold" })
                })),
                subject: None,
            };
            match ledger.open_account(&open, Some(&Uuid::new_v4().to_string())).await {
                Ok(reply) => ("ok".to_owned(), Some(reply.position), None),
                Err(e) => (code(&e), None, None),
            }
        }
        Mode::Reads | Mode::StrongReads => {
            let id = accounts[rand::random_range(0..accounts.len())];
            let read = if args.mode == Mode::StrongReads { Read::Strong } else { Read::Eventual };
            match ledger.account_read(id, read).await {
                Ok(_) => ("ok".to_owned(), None, None),
                Err(e) => (code(&e), None, None),
            }
        }
    }
}

/// CPU seconds (user and system) this process has spent so far (Linux; 0 elsewhere).
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Time from a command's answer until the read model shows its position.
async fn measure_lag(ledger: Client, account: Uuid, position: i64, observed: Arc<Mutex<Observed>>) {
    let started = Instant::now();
    if ledger.account_read(account, Read::AtLeast(position)).await.is_ok() {
        observed.lock().await.lags_us.push(started.elapsed().as_micros() as u64);
    }
}

/// One ledger of a run: its client and its accounts.
type Target = (Client, Arc<Vec<Uuid>>);

/// The lean client's connections of a run of transfers, one per worker (worker `w` in
/// ledger `w mod n`), opened before it is measured; none for other modes, or with
/// `--typed-client`.
async fn raw_connections(args: &Args, names: &[String]) -> anyhow::Result<Vec<Option<raw::Connection>>> {
    let mut connections = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        if args.mode != Mode::Transfers || args.typed_client {
            connections.push(None);
            continue;
        }
        let name = &names[worker % names.len()];
        let prefix = if name == "default" { "/v1".to_owned() } else { format!("/v1/ledgers/{name}") };
        connections.push(Some(raw::Connection::open(&args.url, &args.token, prefix).await?));
    }
    Ok(connections)
}

async fn run(targets: Vec<Target>, connections: Vec<Option<raw::Connection>>, args: Arc<Args>) -> (Observed, Duration) {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(tokio::sync::Semaphore::new(LAG_PROBES_MAX));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let per_worker_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let workers = connections.into_iter().enumerate().map(|(worker, mut connection)| {
        let (ledger, accounts) = targets[worker % targets.len()].clone();
        let (args, observed, counter, probes) = (args.clone(), observed.clone(), counter.clone(), probes.clone());
        tokio::spawn(async move {
            // Paced workers start staggered so arrivals are spread out, not in bursts.
            let stagger =
                per_worker_interval.map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / args.concurrency as f64));
            let mut next = Instant::now() + stagger;
            while Instant::now() < deadline {
                if let Some(interval) = per_worker_interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let (code, position, account) =
                    one_request(&ledger, connection.as_mut(), &args, &accounts, n, &observed).await;
                let us = t.elapsed().as_micros() as u64;
                let mut o = observed.lock().await;
                o.latencies_us.push(us);
                match code.as_str() {
                    "ok" => {
                        o.ok_latencies_us.push(us);
                        o.ok_by_second.entry(t.duration_since(started).as_secs()).or_default().push(us);
                    }
                    "unavailable" | "rate_limited" => o.refused_latencies_us.push(us),
                    _ => {}
                }
                *o.codes.entry(code).or_default() += 1;
                if let (Some(p), Some(a)) = (position, account)
                    && n.is_multiple_of(args.lag_sample_every)
                {
                    match probes.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (ledger, observed) = (ledger.clone(), observed.clone());
                            tokio::spawn(async move {
                                measure_lag(ledger, a, p, observed).await;
                                drop(permit);
                            });
                        }
                        Err(_) => o.lags_skipped += 1,
                    }
                }
                drop(o);
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        let _ = w;
    }
    let elapsed = started.elapsed();
    // Let the last lag probes finish (bounded by the server's consistency wait).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let observed = std::mem::take(&mut *observed.lock().await);
    (observed, elapsed)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    main_url(&args)?;
    let reads = matches!(args.mode, Mode::Reads | Mode::StrongReads);
    let runtime = match args.threads.unwrap_or(if reads { 0 } else { 1 }) {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(load(args))
}

async fn load(args: Args) -> anyhow::Result<()> {
    if args.duration_s > 600 {
        bail!("a run is at most 600 s");
    }
    let (base, http) = client(&args, args.concurrency)?;
    let names = if args.ledgers.is_empty() { vec!["default".to_owned()] } else { args.ledgers.clone() };
    let mut targets: Vec<Target> = Vec::new();
    for name in &names {
        let ledger = base.ledger(name)?;
        let per_ledger = Args { accounts: (args.accounts / names.len()).max(2), ..args.clone() };
        let accounts = Arc::new(setup_accounts(&ledger, &per_ledger).await?);
        if args.mode != Mode::Transfers {
            // Warm the read model and the cache before measuring.
            for id in accounts.iter() {
                let _ = ledger.account(*id).await;
            }
        }
        targets.push((ledger, accounts));
    }
    if args.connect_first {
        connect_first(&http, &args.url, args.concurrency).await?;
    }
    let connections = raw_connections(&args, &names).await?;
    let args = Arc::new(args);
    // A marker for measurements that sample processes' CPU over the measured run only
    // (`scripts/measure/transfers-cpu`), not over the set-up.
    eprintln!("ledger-load: measuring");
    let cpu_before = own_cpu_seconds();
    let (mut o, elapsed) = run(targets, connections, args.clone()).await;
    let own_cpu_s = own_cpu_seconds() - cpu_before;
    eprintln!("ledger-load: done");
    o.latencies_us.sort_unstable();
    o.lags_us.sort_unstable();
    o.ok_latencies_us.sort_unstable();
    o.refused_latencies_us.sort_unstable();
    let total: u64 = o.codes.values().sum();
    let ok = o.codes.get("ok").copied().unwrap_or(0);
    let summary = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "concurrency": args.concurrency,
        "ledgers": names,
        "target_rate_per_s": args.rate,
        "duration_s": elapsed.as_secs_f64(),
        "requests": total,
        "ok": ok,
        "items_ok": o.items_ok,
        "own_cpu_s": own_cpu_s,
        "ok_per_s": ok as f64 / elapsed.as_secs_f64(),
        "transfers_per_s": if args.mode == Mode::Bulk { o.items_ok as f64 / elapsed.as_secs_f64() } else { ok as f64 / elapsed.as_secs_f64() },
        "latency_ms": {
            "p50": percentile(&o.latencies_us, 0.50) as f64 / 1000.0,
            "p95": percentile(&o.latencies_us, 0.95) as f64 / 1000.0,
            "p99": percentile(&o.latencies_us, 0.99) as f64 / 1000.0,
            "max": o.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
        "codes": o.codes,
        "accepted_latency_ms": {
            "p50": percentile(&o.ok_latencies_us, 0.50) as f64 / 1000.0,
            "p99": percentile(&o.ok_latencies_us, 0.99) as f64 / 1000.0,
        },
        "accepted_p99_ms_by_second": o.ok_by_second.values_mut().map(|l| {
            l.sort_unstable();
            percentile(l, 0.99) as f64 / 1000.0
        }).collect::<Vec<_>>(),
        "refused": {
            "count": o.refused_latencies_us.len(),
            "with_retry_after": o.refused_with_retry_after,
            "p99_ms": percentile(&o.refused_latencies_us, 0.99) as f64 / 1000.0,
            "max_ms": o.refused_latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
        "projection_lag_ms": {
            "samples": o.lags_us.len(),
            "skipped": o.lags_skipped,
            "p50": percentile(&o.lags_us, 0.50) as f64 / 1000.0,
            "p99": percentile(&o.lags_us, 0.99) as f64 / 1000.0,
        },
    });
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
