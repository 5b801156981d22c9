//! The `provider-sim` binary: reads flags (or `PROVIDER_SIM_*` env vars), serves the
//! simulator until Ctrl-C or SIGTERM, and owns nothing else.

use anyhow::Context;
use clap::Parser;
use ledger_provider_sim::{Faults, Simulator};

/// Simulator of the payment provider (shared/spec/PROVIDER.md) with fault injection.
/// Faults can also be changed at run time with `PUT /_sim/faults`.
#[derive(Debug, Parser)]
#[command(name = "provider-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "PROVIDER_SIM_ADDR", default_value = "127.0.0.1:9090")]
    addr: String,
    /// Share of calls answered 503.
    #[arg(long, env = "PROVIDER_SIM_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Share of payout calls that hang for --hang-ms, then answer 504.
    #[arg(long, env = "PROVIDER_SIM_TIMEOUT_RATE", default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a simulated timeout hangs, in milliseconds.
    #[arg(long, env = "PROVIDER_SIM_HANG_MS", default_value_t = 10_000)]
    hang_ms: u64,
    /// Delay added to every call, in milliseconds.
    #[arg(long, env = "PROVIDER_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share of new payouts recorded as rejected.
    #[arg(long, env = "PROVIDER_SIM_REJECT_RATE", default_value_t = 0.0)]
    reject_rate: f64,
    /// Share of new payouts answered 422, nothing recorded.
    #[arg(long, env = "PROVIDER_SIM_PERMANENT_ERROR_RATE", default_value_t = 0.0)]
    permanent_error_rate: f64,
    /// Share of new payouts recorded (paid) but answered 502.
    #[arg(long, env = "PROVIDER_SIM_DROP_RESPONSE_RATE", default_value_t = 0.0)]
    drop_response_rate: f64,
    /// Answer every call 503.
    #[arg(long, env = "PROVIDER_SIM_DOWN")]
    down: bool,
    /// Seconds to send in Retry-After with 503 answers.
    #[arg(long, env = "PROVIDER_SIM_RETRY_AFTER_S")]
    retry_after_s: Option<u64>,
    /// Seed of the fault RNG: the same seed and call order give the same faults.
    #[arg(long, env = "PROVIDER_SIM_SEED", default_value_t = 1)]
    seed: u64,
}

impl Cli {
    fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            timeout_rate: self.timeout_rate,
            hang_ms: self.hang_ms,
            latency_ms: self.latency_ms,
            reject_rate: self.reject_rate,
            permanent_error_rate: self.permanent_error_rate,
            drop_response_rate: self.drop_response_rate,
            down: self.down,
            retry_after_s: self.retry_after_s,
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    let faults = cli.faults();
    faults.validate().context("invalid fault flags")?;
    let listener = tokio::net::TcpListener::bind(&cli.addr).await.with_context(|| format!("binding {}", cli.addr))?;
    println!("provider simulator listening on http://{}", listener.local_addr()?);
    tracing::info!(?faults, seed = cli.seed, "provider simulator started");
    let app = Simulator::new(faults, cli.seed).router();
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("serving")?;
    Ok(())
}
