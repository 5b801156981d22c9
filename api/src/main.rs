//! The `ledger` binary: thin wrapper over the library's subcommands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledger_api::run::serve::{self, Mode};
use ledger_infrastructure::Config;
use std::time::Duration;

/// glibc's malloc took about a fifth of the service's CPU under load (perf, bulk
/// requests). mimalloc took about a sixth at the single-transfer peak, most of it one
/// cache miss per allocation: it hands out a freed block only once its page's free list
/// runs dry, by when the block has gone cold (docs/PERFORMANCE.md, issue 27's
/// fourteenth stop). jemalloc's thread caches hand back the block freed last, still
/// warm: its allocation and free took about a twentieth, and the service's CPU per
/// transfer fell by about a tenth.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(name = "ledger", version, about = "Event-sourced double-entry ledger")]
struct Cli {
    /// The ledger a subcommand that reads or writes one ledger works on (replay,
    /// reconcile, audit, projections); the offline audit checks refuse heads of another.
    #[arg(long, global = true, default_value = "default")]
    ledger: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the HTTP API and all workers in one process.
    Serve,
    /// Runs only the HTTP API.
    Api,
    /// Runs only the workers: outbox relay, projections, payouts, scheduled reconciliation.
    Worker,
    /// Creates the database if missing and applies migrations (to every ledger's schema).
    Migrate,
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCmd,
    },
    /// Prints a stream's events, each with the stream's state after it.
    Replay {
        #[arg(long)]
        stream: uuid::Uuid,
        #[arg(long)]
        to_position: Option<i64>,
    },
    /// Reconciles the ledger with the provider's statement for a window (default: last 24 h).
    Reconcile {
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// The master key (docs/PRIVACY.md).
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Prints the OpenAPI 3.1 document of the HTTP API (as served at /openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Re-seals everything sealed under LEDGER_MASTER_KEY (or dev mode's key) under
    /// LEDGER_NEW_MASTER_KEY, in every ledger; no event changes. Start the service with
    /// the new key afterwards.
    Rotate,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issues a token and prints it (once; only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        /// The ledgers it may use, comma-separated (default: every ledger).
        #[arg(long, value_delimiter = ',')]
        ledgers: Option<Vec<String>>,
    },
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Rebuilds a projection from the log without downtime (blue-green).
    Rebuild { name: String },
    /// Compares every read model with the log; exits non-zero on any difference.
    Verify,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walks the tamper-evident hash chain; exits non-zero if it is broken.
    Verify,
    /// Offline: an event (saved from /v1/events) is in the tree of a signed head (saved
    /// from /v1/audit/tree-head), by its inclusion proof; needs only the saved keys
    /// (/v1/audit/keys). Exits non-zero if not.
    CheckInclusion {
        #[arg(long)]
        keys: std::path::PathBuf,
        #[arg(long)]
        head: std::path::PathBuf,
        #[arg(long)]
        proof: std::path::PathBuf,
        #[arg(long)]
        event: std::path::PathBuf,
    },
    /// Writes an event's inclusion proof, a signed tree head over it, the event and the
    /// public keys (as the API shows them) to `--out`, for `check-inclusion` offline,
    /// and checks them. Exits non-zero if they do not verify.
    Prove {
        #[arg(long)]
        position: i64,
        /// Default: as far as the tree has grown.
        #[arg(long)]
        tree_size: Option<i64>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Offline: the log of one saved signed head is a prefix of another's, by their
    /// consistency proof; needs only the saved keys. Exits non-zero if not.
    CheckConsistency {
        #[arg(long)]
        keys: std::path::PathBuf,
        #[arg(long)]
        from: std::path::PathBuf,
        #[arg(long)]
        to: std::path::PathBuf,
        #[arg(long)]
        proof: std::path::PathBuf,
    },
}

/// Prints an offline check's outcome; exits non-zero when it failed.
fn report_check(outcome: Result<String, String>) -> anyhow::Result<()> {
    match outcome {
        Ok(what) => {
            println!("ok: {what}");
            Ok(())
        }
        Err(why) => {
            println!("FAILED: {why}");
            std::process::exit(1);
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.with_writer(std::io::stderr).init();
    } else {
        builder.json().with_writer(std::io::stderr).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    // Offline checks need no configuration, no database and no network.
    match &cli.command {
        Cmd::Audit { command: AuditCmd::CheckInclusion { keys, head, proof, event } } => {
            let read = |p: &std::path::Path| -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)?)
            };
            let outcome = ledger_api::run::cli::offline::check_inclusion(
                &read(keys)?,
                &read(head)?,
                &read(proof)?,
                &read(event)?,
                Some(&cli.ledger),
            );
            return report_check(outcome);
        }
        Cmd::Audit { command: AuditCmd::CheckConsistency { keys, from, to, proof } } => {
            let read = |p: &std::path::Path| -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)?)
            };
            let outcome = ledger_api::run::cli::offline::check_consistency(
                &read(keys)?,
                &read(from)?,
                &read(to)?,
                &read(proof)?,
                Some(&cli.ledger),
            );
            return report_check(outcome);
        }
        _ => {}
    }
    let mut config = Config::from_env()?;
    let ledger_specific =
        matches!(cli.command, Cmd::Audit { .. } | Cmd::Projections { .. } | Cmd::Replay { .. } | Cmd::Reconcile { .. });
    // (The offline audit checks returned above.)
    // The master key is the deployment's: checked against (or, in dev mode, kept in)
    // the database of `default`, whatever ledger a command reads.
    let master_key = match cli.command {
        Cmd::Replay { .. } => Some(ledger_api::run::cli::master_key(&config).await?),
        _ => None,
    };
    let signer = match cli.command {
        Cmd::Audit { command: AuditCmd::Prove { .. } } => Some(ledger_api::run::cli::signer(&config).await?),
        _ => None,
    };
    if ledger_specific {
        config = ledger_api::run::cli::for_ledger(config, &cli.ledger).await?;
    } else if cli.ledger != ledger_infrastructure::ledgers::DEFAULT_LEDGER {
        anyhow::bail!("--ledger applies to audit, projections, replay and reconcile only");
    }
    let mode = match cli.command {
        Cmd::Migrate => {
            let ledgers = ledger_api::run::cli::migrate_all(config).await.context("migrating the database")?;
            println!("database migrated ({ledgers} ledgers)");
            return Ok(());
        }
        Cmd::Keys { command: KeysCmd::Rotate } => {
            let new =
                std::env::var("LEDGER_NEW_MASTER_KEY").context("LEDGER_NEW_MASTER_KEY is the key to rotate to")?;
            for (ledger, r) in ledger_api::run::cli::rotate_master_key(config, &new).await? {
                println!(
                    "{ledger}: {} subject keys, {} webhook secrets, {} look-up keys re-sealed",
                    r.subject_keys, r.webhook_secrets, r.lookup_keys
                );
            }
            return Ok(());
        }
        Cmd::Token { command: TokenCmd::Create { name, role, ledgers } } => {
            let token = ledger_api::run::cli::create_token(&config, &name, &role, ledgers).await?;
            println!("{token}");
            return Ok(());
        }
        Cmd::Openapi => {
            println!("{}", serde_json::to_string_pretty(&ledger_api::http::openapi::document())?);
            return Ok(());
        }
        Cmd::Audit { command: AuditCmd::CheckInclusion { .. } | AuditCmd::CheckConsistency { .. } } => {
            unreachable!("the offline checks returned before the configuration was read")
        }
        Cmd::Audit { command: AuditCmd::Prove { position, tree_size, out } } => {
            let signer = signer.expect("read above for `prove`");
            eprintln!("signing with key {}", signer.keys()[0].0);
            let (written, outcome) = ledger_api::run::cli::prove(&config, &signer, position, tree_size, &out).await?;
            for file in written {
                eprintln!("wrote {}", file.display());
            }
            return report_check(outcome);
        }
        Cmd::Audit { command: AuditCmd::Verify } => {
            let report = ledger_api::run::cli::audit_verify(&config).await?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.ok {
                std::process::exit(1);
            }
            return Ok(());
        }
        Cmd::Projections { command: ProjectionsCmd::Rebuild { name } } => {
            let position = ledger_api::run::cli::rebuild_projection(&config, &name).await?;
            println!("{name} rebuilt and switched at position {position}");
            return Ok(());
        }
        Cmd::Projections { command: ProjectionsCmd::Verify } => {
            let diffs = ledger_api::run::cli::verify_projections(&config).await?;
            for d in &diffs {
                println!("{d}");
            }
            if !diffs.is_empty() {
                eprintln!("{} differences", diffs.len());
                std::process::exit(1);
            }
            println!("read models match the log");
            return Ok(());
        }
        Cmd::Replay { stream, to_position } => {
            let master_key = master_key.context("the master key is loaded for replay")?;
            let mut out = std::io::stdout().lock();
            ledger_api::run::cli::replay(&config, master_key, stream, to_position, &mut out).await?;
            return Ok(());
        }
        Cmd::Reconcile { from, to } => {
            let report = ledger_api::run::cli::reconcile(&config, from, to).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.status != ledger_wire::ReconciliationStatus::Finished {
                std::process::exit(1);
            }
            return Ok(());
        }
        Cmd::Serve => Mode::All,
        Cmd::Api => Mode::Api,
        Cmd::Worker => Mode::Worker,
    };
    if config.admin_token.is_none() && mode != Mode::Worker {
        // Dev mode: pick a token and print it so the operator can use the API.
        let token = format!("dev-{}", uuid::Uuid::new_v4().simple());
        println!("LEDGER_ADMIN_TOKEN not set; generated dev admin token: {token}");
        config.admin_token = Some(token);
    }
    let running = serve::start(config, mode).await.context("starting the ledger")?;
    if let Some(addr) = running.addr {
        println!("ledger listening on http://{addr}");
    }
    shutdown_signal().await;
    running.stop(SHUTDOWN_DEADLINE).await;
    Ok(())
}
