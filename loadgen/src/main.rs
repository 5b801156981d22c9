//! `ledger-load`: drives the ledger's HTTP API and reports throughput, latency
//! percentiles, errors by code and projection lag. Loopback targets only; every run is
//! bounded in time.

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// POST /v1/transfers with unique keys (and a share of re-sent keys).
    Transfers,
    /// GET /v1/accounts/{id} (eventual, served from the cache when warm).
    Reads,
    /// GET /v1/accounts/{id}?consistency=strong (folded from the log, no cache).
    StrongReads,
}

#[derive(Parser, Debug)]
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
    /// Measure commit → visible-in-read-model lag on every Nth transfer.
    #[arg(long, default_value_t = 20)]
    lag_sample_every: u64,
}

/// What the workers observed.
#[derive(Default)]
struct Observed {
    latencies_us: Vec<u64>,
    codes: BTreeMap<String, u64>,
    lags_us: Vec<u64>,
    sent_keys: Vec<(String, Value)>,
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

async fn post(
    client: &reqwest::Client,
    args: &Args,
    path: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let r = client
        .post(format!("{}{path}", args.url))
        .bearer_auth(&args.token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn setup_accounts(client: &reqwest::Client, args: &Args) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(args.accounts);
    for _ in 0..args.accounts {
        let (status, body) = post(
            client,
            args,
            "/v1/accounts",
            &Uuid::new_v4().to_string(),
            &json!({ "currency": "EUR", "owner": "load@example.com" }),
        )
        .await?;
        if status != 201 {
            bail!("opening an account failed: {status} {body}");
        }
        let id = body["id"].as_str().context("account id")?.to_owned();
        let deposit = json!({ "account_id": id, "amount": 1_000_000_000_000i64, "currency": "EUR" });
        post(client, args, "/v1/deposits", &Uuid::new_v4().to_string(), &deposit).await?;
        ids.push(id);
    }
    Ok(ids)
}

async fn one_request(
    client: &reqwest::Client,
    args: &Args,
    accounts: &[String],
    n: u64,
    observed: &Mutex<Observed>,
) -> (u16, String, Option<i64>, Option<String>) {
    match args.mode {
        Mode::Transfers => {
            let resend = args.resend_share > 0.0 && rand::random::<f64>() < args.resend_share;
            let earlier = if resend { observed.lock().await.sent_keys.last().cloned() } else { None };
            let (key, body) = earlier.unwrap_or_else(|| {
                let from = rand::random_range(0..accounts.len());
                let to = (from + 1 + rand::random_range(0..accounts.len() - 1)) % accounts.len();
                let body = json!({ "from": accounts[from], "to": accounts[to], "amount": 1 + (n % 100) as i64, "currency": "EUR" });
                (Uuid::new_v4().to_string(), body)
            });
            match post(client, args, "/v1/transfers", &key, &body).await {
                Ok((status, reply)) => {
                    if !resend && status == 201 && n.is_multiple_of(50) {
                        observed.lock().await.sent_keys.push((key, body.clone()));
                    }
                    let code = reply["code"].as_str().unwrap_or(if status < 300 { "ok" } else { "unknown" }).to_owned();
                    (status, code, reply["position"].as_i64(), body["from"].as_str().map(str::to_owned))
                }
                Err(_) => (0, "connection_error".into(), None, None),
            }
        }
        Mode::Reads | Mode::StrongReads => {
            let id = &accounts[rand::random_range(0..accounts.len())];
            let suffix = if args.mode == Mode::StrongReads { "?consistency=strong" } else { "" };
            match client.get(format!("{}/v1/accounts/{id}{suffix}", args.url)).bearer_auth(&args.token).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    (status, if status == 200 { "ok".into() } else { status.to_string() }, None, None)
                }
                Err(_) => (0, "connection_error".into(), None, None),
            }
        }
    }
}

/// Time from a command's answer until the read model shows its position.
async fn measure_lag(
    client: reqwest::Client,
    args: Arc<Args>,
    account: String,
    position: i64,
    observed: Arc<Mutex<Observed>>,
) {
    let started = Instant::now();
    let url = format!("{}/v1/accounts/{account}?min_position={position}", args.url);
    if let Ok(r) = client.get(url).bearer_auth(&args.token).send().await
        && r.status().is_success()
    {
        observed.lock().await.lags_us.push(started.elapsed().as_micros() as u64);
    }
}

async fn run(args: Arc<Args>, accounts: Arc<Vec<String>>) -> (Observed, Duration) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().expect("client builds");
    let observed = Arc::new(Mutex::new(Observed::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let per_worker_interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let workers = (0..args.concurrency).map(|worker| {
        let (client, args, accounts, observed, counter) =
            (client.clone(), args.clone(), accounts.clone(), observed.clone(), counter.clone());
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
                let (_, code, position, account) = one_request(&client, &args, &accounts, n, &observed).await;
                let us = t.elapsed().as_micros() as u64;
                let mut o = observed.lock().await;
                o.latencies_us.push(us);
                *o.codes.entry(code).or_default() += 1;
                drop(o);
                if let (Some(p), Some(a)) = (position, account)
                    && n.is_multiple_of(args.lag_sample_every)
                {
                    tokio::spawn(measure_lag(client.clone(), args.clone(), a, p, observed.clone()));
                }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    main_url(&args)?;
    if args.duration_s > 600 {
        bail!("a run is at most 600 s");
    }
    let client = reqwest::Client::new();
    let accounts = Arc::new(setup_accounts(&client, &args).await?);
    let args = Arc::new(args);
    if args.mode != Mode::Transfers {
        // Warm the read model and the cache before measuring.
        for id in accounts.iter() {
            let _ = client.get(format!("{}/v1/accounts/{id}", args.url)).bearer_auth(&args.token).send().await;
        }
    }
    let (mut o, elapsed) = run(args.clone(), accounts).await;
    o.latencies_us.sort_unstable();
    o.lags_us.sort_unstable();
    let total: u64 = o.codes.values().sum();
    let ok = o.codes.get("ok").copied().unwrap_or(0);
    let summary = json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "concurrency": args.concurrency,
        "target_rate_per_s": args.rate,
        "duration_s": elapsed.as_secs_f64(),
        "requests": total,
        "ok": ok,
        "ok_per_s": ok as f64 / elapsed.as_secs_f64(),
        "latency_ms": {
            "p50": percentile(&o.latencies_us, 0.50) as f64 / 1000.0,
            "p95": percentile(&o.latencies_us, 0.95) as f64 / 1000.0,
            "p99": percentile(&o.latencies_us, 0.99) as f64 / 1000.0,
            "max": o.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
        "codes": o.codes,
        "projection_lag_ms": {
            "samples": o.lags_us.len(),
            "p50": percentile(&o.lags_us, 0.50) as f64 / 1000.0,
            "p99": percentile(&o.lags_us, 0.99) as f64 / 1000.0,
        },
    });
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
