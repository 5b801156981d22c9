//! The CLI subcommands that work on the database directly (no HTTP): tokens, the
//! audit chain. Progress goes to stderr; results to stdout.

use crate::http::auth::token_hash;
use crate::routes::admin::token_id;
use ledger_domain::Command;
use ledger_domain::decide::IssueToken;
use ledger_infrastructure::audit::verify_chain;
use ledger_infrastructure::ledgers::DEFAULT_LEDGER;
use ledger_infrastructure::{CommandBus, CommandRequest, Config, EventMetadata, EventStore, WriterLimits};

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("role must be admin, operator or client, not {0:?}")]
    UnknownRole(String),
    #[error("a token name must be 1 to 64 characters of [A-Za-z0-9_.-], not {0:?}")]
    InvalidTokenName(String),
    #[error("no projection named {0:?} (accounts, transfers)")]
    UnknownProjection(String),
    #[error("the command was not recorded: {0}")]
    Command(#[from] ledger_infrastructure::CommandError),
    #[error("refused: {0}")]
    Rejected(ledger_domain::DomainError),
    #[error("rebuild: {0}")]
    Rebuild(#[from] ledger_projections::rebuild::RebuildError),
    #[error("reading the read models: {0}")]
    Apply(#[from] ledger_projections::apply::ApplyError),
    #[error("reconciliation: {0}")]
    Reconcile(#[from] ledger_infrastructure::reconcile::ReconcileError),
    #[error("reconciliation {0} left no record of its run")]
    RunNotRecorded(uuid::Uuid),
    #[error("an event of the log does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger schema: {0}")]
    Prepare(#[from] ledger_infrastructure::ledgers::PrepareError),
    #[error("no ledger is named {0:?}")]
    UnknownLedger(String),
    #[error("the ledger's shard {0:?} is not in LEDGER_SHARDS")]
    UnknownShard(String),
    #[error("keys: {0}")]
    Key(#[from] ledger_infrastructure::keys::KeyError),
}

/// The deployment's master key, checked against the database of `default` (a wrong
/// or missing one is refused, as at start-up).
pub async fn master_key(config: &Config) -> Result<std::sync::Arc<ledger_infrastructure::keys::MasterKey>, CliError> {
    let pool = ledger_infrastructure::connect_and_migrate(config).await?;
    let key = ledger_infrastructure::keys::MasterKey::load(&pool, config.master_key.as_deref()).await?;
    Ok(std::sync::Arc::new(key))
}

/// The configuration of the ledger `name` (`--ledger`): `config` itself for
/// `default`, else pointed at the ledger's shard and schema as the directory has them.
pub async fn for_ledger(mut config: Config, name: &str) -> Result<Config, CliError> {
    config.settle_shards();
    if name == DEFAULT_LEDGER {
        return Ok(config);
    }
    if !ledger_infrastructure::ledgers::valid_ledger_name(name) {
        return Err(CliError::UnknownLedger(name.to_owned()));
    }
    let home = store(&config).await?;
    let record = ledger_infrastructure::ledgers::find(&home, name)
        .await?
        .ok_or_else(|| CliError::UnknownLedger(name.to_owned()))?;
    home.pool().close().await;
    record.config(&config).ok_or(CliError::UnknownShard(record.shard))
}

/// `ledger migrate`: the first shard's database, then every ledger's schema on its
/// shard (what start-up would do at each ledger's first use). Returns the ledgers.
/// Also seals, in every ledger, the personal values an earlier version kept in clear
/// (`privacy::legacy`: it changes recorded events, which only the schema's owner, who
/// runs migrations, may do; a service that runs as a less privileged role finds it done).
pub async fn migrate_all(mut config: Config) -> Result<usize, CliError> {
    config.settle_shards();
    let home = store(&config).await?;
    let master_key = std::sync::Arc::new(
        ledger_infrastructure::keys::MasterKey::load(home.pool(), config.master_key.as_deref()).await?,
    );
    let seal = |pool: sqlx::PgPool| {
        let key = master_key.clone();
        async move {
            if let Some(r) = ledger_infrastructure::privacy::Privacy::new(pool, key).seal_legacy().await? {
                tracing::warn!(accounts = r.rewritten, position = r.position, "sealed personal values kept in clear");
            }
            Ok::<(), CliError>(())
        }
    };
    let records = ledger_infrastructure::ledgers::list(&home).await?;
    for record in &records {
        let shard = config
            .shards
            .iter()
            .find(|s| s.name == record.shard)
            .ok_or_else(|| CliError::UnknownShard(record.shard.clone()))?;
        ledger_infrastructure::ledgers::prepare_existing(&shard.url, &record.schema).await?;
        let scoped = for_ledger(config.clone(), &record.name).await?;
        let pool = ledger_infrastructure::connect_and_migrate(&scoped).await?;
        seal(pool.clone()).await?;
        pool.close().await;
    }
    seal(home.pool().clone()).await?;
    home.pool().close().await;
    Ok(records.len() + 1)
}

/// `ledger keys rotate`: every ledger's sealed secrets re-sealed from the configured
/// master key to `new` (base64), `default` last (its check value is what start-up
/// compares the key with, so a rotation cut short is finished by running it again
/// with the same keys: a ledger already rotated is refused by the old key and skipped).
pub async fn rotate_master_key(
    mut config: Config,
    new: &str,
) -> Result<Vec<(String, ledger_infrastructure::keys::Rotated)>, CliError> {
    use ledger_infrastructure::keys::{KeyError, MasterKey, rotate};
    config.settle_shards();
    let new = MasterKey::from_base64(new)?;
    let home = store(&config).await?;
    let old = MasterKey::load(home.pool(), config.master_key.as_deref()).await?;
    let mut done = Vec::new();
    for record in ledger_infrastructure::ledgers::list(&home).await? {
        let scoped = for_ledger(config.clone(), &record.name).await?;
        let pool = ledger_infrastructure::connect_and_migrate(&scoped).await?;
        match rotate(&pool, &old, &new).await {
            Ok(r) => done.push((record.name.clone(), r)),
            // Rotated by an earlier run that was cut short: under the new key already.
            Err(KeyError::Unopenable) if rotate(&pool, &new, &new).await.is_ok() => {}
            Err(e) => return Err(e.into()),
        }
        pool.close().await;
    }
    done.push((ledger_infrastructure::ledgers::DEFAULT_LEDGER.to_owned(), rotate(home.pool(), &old, &new).await?));
    Ok(done)
}

async fn store(config: &Config) -> Result<EventStore, CliError> {
    Ok(EventStore::new(ledger_infrastructure::connect_and_migrate(config).await?))
}

/// `ledger token create --name N --role R`: prints the new token once.
pub async fn create_token(
    config: &Config,
    name: &str,
    role: &str,
    ledgers: Option<Vec<String>>,
) -> Result<String, CliError> {
    let role = ledger_domain::Role::parse(role).ok_or_else(|| CliError::UnknownRole(role.to_owned()))?;
    if !crate::http::auth::valid_token_name(name) {
        return Err(CliError::InvalidTokenName(name.to_owned()));
    }
    let store = store(config).await?;
    for ledger in ledgers.iter().flatten() {
        let known = ledger == DEFAULT_LEDGER
            || (ledger_infrastructure::ledgers::valid_ledger_name(ledger)
                && ledger_infrastructure::ledgers::find(&store, ledger).await?.is_some());
        if !known {
            return Err(CliError::UnknownLedger(ledger.clone()));
        }
    }
    let bus = CommandBus::start(
        store,
        WriterLimits {
            batch_max: 1,
            queue_max: 1,
            conflict_retries_max: config.conflict_retries_max,
            cache_max: 16,
            snapshot_every: 0,
            append_behind: false,
        },
    );
    let token = format!("ltk_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let command = Command::IssueToken(IssueToken {
        token_id: token_id(name),
        name: name.to_owned(),
        role,
        token_sha256: token_hash(&token),
        ledgers,
    });
    let request = CommandRequest {
        command,
        metadata: EventMetadata { actor: "cli".into(), ..EventMetadata::default() },
        idempotency: None,
        fresh_stream: None,
        owner_index: None,
    };
    let reply = bus.execute(request).await?;
    if let Some(ledger_infrastructure::Outcome::Rejected(e)) = reply.outcome() {
        return Err(CliError::Rejected(e.clone()));
    }
    Ok(token)
}

/// `ledger audit verify`: walks the chain; Ok(report) whether or not it verified.
pub async fn audit_verify(config: &Config) -> Result<ledger_infrastructure::audit::ChainReport, CliError> {
    let store = store(config).await?;
    let bar = crate::run::progress::Progress::new("verifying the hash chain");
    let report = verify_chain(&store, 5_000, |done, total| bar.update(done, total)).await?;
    bar.finish();
    Ok(report)
}

/// `ledger projections rebuild NAME`: blue-green rebuild from the log.
pub async fn rebuild_projection(config: &Config, name: &str) -> Result<i64, CliError> {
    let projection =
        ledger_projections::Projection::from_name(name).ok_or_else(|| CliError::UnknownProjection(name.to_owned()))?;
    let store = store(config).await?;
    let lock = ledger_projections::rebuild::RebuildLock::acquire(&config.database_url, projection).await?;
    let bar = crate::run::progress::Progress::new(&format!("rebuilding {name}"));
    let position = lock.rebuild(store.pool(), |done, total| bar.update(done, total)).await?;
    bar.finish();
    Ok(position)
}

/// `ledger projections verify`: the differences between read models and the log.
pub async fn verify_projections(config: &Config) -> Result<Vec<String>, CliError> {
    let store = store(config).await?;
    let bar = crate::run::progress::Progress::new("folding the log");
    let diffs = ledger_projections::verify::verify(store.pool(), |done, total| bar.update(done, total)).await?;
    bar.finish();
    Ok(diffs)
}

/// `ledger replay --stream ID [--to-position N]`: each event of the stream with the
/// stream's state after it, as JSON lines on `out`.
/// Personal values are shown as the API shows them: in clear while their subject's
/// key exists, erased after.
pub async fn replay(
    config: &Config,
    master_key: std::sync::Arc<ledger_infrastructure::keys::MasterKey>,
    stream: uuid::Uuid,
    to_position: Option<i64>,
    out: &mut impl std::io::Write,
) -> Result<usize, CliError> {
    let store = store(config).await?;
    let privacy = ledger_infrastructure::privacy::Privacy::new(store.pool().clone(), master_key);
    let mut state = ledger_domain::StreamState::default();
    let mut printed = 0;
    loop {
        let page = store.read_stream(stream, state.version + 1, 1000).await?;
        if page.is_empty() {
            break;
        }
        for e in page {
            if to_position.is_some_and(|p| e.position > p) {
                return Ok(printed);
            }
            let event = e.event()?;
            state = ledger_domain::evolve(state, stream, e.version, &event);
            let mut line = serde_json::json!({ "event": e, "state_after": state });
            privacy.reveal(&mut line).await?;
            writeln!(out, "{line}")?;
            printed += 1;
        }
    }
    Ok(printed)
}

/// `ledger reconcile [--from TS --to TS]`: one run, with progress; returns its report.
pub async fn reconcile(
    config: &Config,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<ledger_wire::ReconciliationReport, CliError> {
    let store = store(config).await?;
    let to = to.unwrap_or_else(chrono::Utc::now);
    let from = from.unwrap_or(to - chrono::Duration::hours(24));
    let bus = CommandBus::start(
        store.clone(),
        WriterLimits {
            batch_max: 64,
            queue_max: 64,
            conflict_retries_max: config.conflict_retries_max,
            cache_max: 10_000,
            snapshot_every: 0,
            append_behind: false,
        },
    );
    let reconciler = ledger_infrastructure::reconcile::Reconciler {
        pool: store.pool().clone(),
        database_url: config.database_url.clone(),
        bus,
        provider: ledger_infrastructure::provider::ProviderClient::new(&config.provider_url, config.provider_timeout),
        breaker: ledger_infrastructure::breaker::CircuitBreaker::new("payment-provider", config.provider_breaker()),
        provider_attempts_max: config.reconcile_provider_attempts_max,
        reports_unknown: config.ledger == DEFAULT_LEDGER,
        elsewhere: (config.ledger == DEFAULT_LEDGER)
            .then(|| std::sync::Arc::new(ledger_infrastructure::ledgers::Elsewhere::new(store.clone(), config))),
    };
    let lock = reconciler.lock().await?;
    let run_id = uuid::Uuid::now_v7();
    reconciler.start(run_id, from, to, "cli").await?;
    let bar = crate::run::progress::Progress::new("reconciling");
    let outcome = reconciler.run(lock, run_id, (from, to), "cli", |done, total| bar.update(done, total)).await;
    bar.finish();
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "reconciliation failed");
    }
    let events = store.read_stream(run_id, 1, 1_000_000).await?;
    ledger_infrastructure::reconcile::report(run_id, &events)
        .map(crate::read::views::reconciliation)
        .ok_or(CliError::RunNotRecorded(run_id))
}

/// The signer of tree heads, as the service has it: `LEDGER_SIGNING_KEY`, or dev
/// mode's key kept in the database of `default` (read before `--ledger` points the
/// configuration elsewhere); none is made here.
pub async fn signer(config: &Config) -> Result<ledger_infrastructure::signing::Signer, CliError> {
    let pool = ledger_infrastructure::connect_and_migrate(config).await?;
    let master = ledger_infrastructure::keys::MasterKey::load(&pool, config.master_key.as_deref()).await?;
    ledger_infrastructure::signing::Signer::existing(&pool, config.signing_key.as_deref(), &master).await?.ok_or_else(
        || {
            CliError::Invalid(
                "no LEDGER_SIGNING_KEY, and the database keeps no dev-mode key: give the service's LEDGER_SIGNING_KEY"
                    .into(),
            )
        },
    )
}

/// `ledger audit prove --position P --out DIR`: writes what an auditor needs to check
/// offline that the event at `P` is in the log (`keys.json`, `head.json` signed at
/// `tree_size`, default the tree's size, `proof.json`, `event.json`, each as the API
/// shows it), then checks them as `audit check-inclusion` does. Returns the paths
/// written and the check's outcome.
pub async fn prove(
    config: &Config,
    signer: &ledger_infrastructure::signing::Signer,
    position: i64,
    tree_size: Option<i64>,
    out: &std::path::Path,
) -> Result<(Vec<std::path::PathBuf>, Result<String, String>), CliError> {
    use ledger_infrastructure::tree;
    let store = store(config).await?;
    let pool = store.pool().clone();
    let grown = tree::size(&pool).await?;
    let size = tree_size.unwrap_or(grown);
    if position < 1 || size < position || size > grown {
        return Err(CliError::Invalid(format!(
            "the position must be from 1 to the tree size, and the tree size at most the tree's ({grown}): \
             got position {position}, tree size {size}"
        )));
    }
    let tree_error = |e: tree::TreeError| CliError::Invalid(e.to_string());
    let head =
        crate::routes::audit::sign_head(signer, &config.ledger, &tree::head(&pool, size).await.map_err(tree_error)?);
    let (leaf, path) = tree::inclusion(&pool, position, size).await.map_err(tree_error)?;
    let proof = crate::routes::audit::inclusion_view(position, size, &leaf, &path);
    let event = EventStore::read_range(&pool, position - 1, position)
        .await?
        .pop()
        .ok_or_else(|| CliError::Invalid(format!("no event at position {position}")))?;
    let event = crate::read::views::recorded_event(event).map_err(|e| CliError::Invalid(format!("{e:?}")))?;
    let keys = crate::routes::audit::signing_keys(signer);
    std::fs::create_dir_all(out).map_err(|e| CliError::Invalid(format!("{}: {e}", out.display())))?;
    let mut written = Vec::with_capacity(4);
    let values = [
        ("keys.json", serde_json::to_value(&keys)),
        ("head.json", serde_json::to_value(&head)),
        ("proof.json", serde_json::to_value(&proof)),
        ("event.json", serde_json::to_value(&event)),
    ];
    let mut saved = Vec::new();
    for (name, value) in values {
        let value = value.expect("wire types serialize");
        let file = out.join(name);
        let text = serde_json::to_string_pretty(&value).expect("JSON values print");
        std::fs::write(&file, text).map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
        written.push(file);
        saved.push(value);
    }
    let outcome = offline::check_inclusion(&saved[0], &saved[1], &saved[2], &saved[3], Some(&config.ledger));
    Ok((written, outcome))
}

/// Offline checks of what an auditor saved (docs/AUDIT.md): no database, no network,
/// only the saved JSON answers and the saved keys (`GET /v1/audit/keys`).
pub mod offline {
    use ledger_infrastructure::merkle::{self, Hash};
    use serde_json::Value;

    fn hash_of(v: &Value, what: &str) -> Result<Hash, String> {
        let text = v.as_str().ok_or_else(|| format!("{what}: not a string"))?;
        let bytes = hex::decode(text).map_err(|_| format!("{what}: not hex"))?;
        bytes.as_slice().try_into().map_err(|_| format!("{what}: not 32 bytes"))
    }

    fn int_of(v: &Value, what: &str) -> Result<i64, String> {
        v.as_i64().filter(|n| *n >= 0).ok_or_else(|| format!("{what}: not a non-negative integer"))
    }

    fn hashes_of(v: &Value, what: &str) -> Result<Vec<Hash>, String> {
        v.as_array().ok_or_else(|| format!("{what}: not a list"))?.iter().map(|h| hash_of(h, what)).collect()
    }

    /// A saved tree head, its signature checked with the saved key it names (whose id
    /// is derived again from the key itself), and of the `expected` ledger if one is
    /// given: its ledger, size and root.
    pub fn check_head(keys: &Value, head: &Value, expected: Option<&str>) -> Result<(String, i64, Hash), String> {
        let key_id = head["key_id"].as_str().ok_or("tree head: no key_id")?;
        let public = keys["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["public_key"].as_str())
            .find(|public| ledger_infrastructure::signing::key_id_of(public).as_deref() == Some(key_id))
            .ok_or_else(|| format!("tree head: signed by key {key_id}, which no saved public key has as its id"))?;
        let ledger = head["ledger"].as_str().ok_or("tree head: no ledger")?;
        if let Some(expected) = expected.filter(|e| *e != ledger) {
            return Err(format!("tree head: of the ledger {ledger}, not {expected}"));
        }
        let size = int_of(&head["tree_size"], "tree head: tree_size")?;
        let root = head["root_hash"].as_str().ok_or("tree head: no root_hash")?;
        let timestamp = head["timestamp"].as_str().ok_or("tree head: no timestamp")?;
        let signature = head["signature"].as_str().ok_or("tree head: no signature")?;
        if !ledger_infrastructure::signing::verify_head(public, ledger, size, root, timestamp, signature) {
            return Err(format!("tree head of size {size}: the signature does not verify with key {key_id}"));
        }
        Ok((ledger.to_owned(), size, hash_of(&head["root_hash"], "tree head: root_hash")?))
    }

    /// An event (as `/v1/events` shows it) is in the tree of a signed head.
    pub fn check_inclusion(
        keys: &Value,
        head: &Value,
        proof: &Value,
        event: &Value,
        ledger: Option<&str>,
    ) -> Result<String, String> {
        let (ledger, size, root) = check_head(keys, head, ledger)?;
        let position = int_of(&event["position"], "event: position")?;
        if int_of(&proof["position"], "proof: position")? != position
            || int_of(&proof["tree_size"], "proof: tree_size")? != size
        {
            return Err("the proof is not for this event at this head's size".into());
        }
        let leaf = merkle::leaf_hash(&hash_of(&event["hash"], "event: hash")?);
        if hash_of(&proof["leaf_hash"], "proof: leaf_hash")? != leaf {
            return Err(format!("the proof's leaf is not the event's hash (position {position})"));
        }
        let path = hashes_of(&proof["audit_path"], "proof: audit_path")?;
        if position < 1 || !merkle::verify_inclusion(position as u64 - 1, size as u64, &leaf, &path, &root) {
            return Err(format!("the event at position {position} is not in the tree of size {size}"));
        }
        Ok(format!("the event at position {position} is in the log of {ledger} at size {size}"))
    }

    /// The log of one signed head is a prefix of the log of another.
    pub fn check_consistency(
        keys: &Value,
        from: &Value,
        to: &Value,
        proof: &Value,
        ledger: Option<&str>,
    ) -> Result<String, String> {
        let (ledger, old, old_root) = check_head(keys, from, ledger)?;
        let (other, new, new_root) = check_head(keys, to, Some(&ledger))?;
        if ledger != other {
            return Err(format!("the heads are of two ledgers: {ledger} and {other}"));
        }
        if old > new {
            return Err(format!("the first head ({old}) is larger than the second ({new}): give them oldest first"));
        }
        if int_of(&proof["from_size"], "proof: from_size")? != old
            || int_of(&proof["to_size"], "proof: to_size")? != new
        {
            return Err("the proof is not between these two heads' sizes".into());
        }
        let path = hashes_of(&proof["proof"], "proof: proof")?;
        if old < 1 || !merkle::verify_consistency(old as u64, new as u64, &old_root, &new_root, &path) {
            return Err(format!("the log of size {old} is not a prefix of the log of size {new}: it was rewritten"));
        }
        Ok(format!("the log of {ledger} at size {old} is a prefix of its log at size {new}"))
    }
}
