//! Bulk generation of a realistic, valid event log straight through
//! `EventStore::append_batch`: one event per commit (as one API command would record
//! it), expected versions tracked here, balances tracked so no customer account ever
//! goes below zero. The next batch is built while the previous one is appended.

use anyhow::{Context, bail};
use ledger_domain::events::{AccountOpened, DepositRecorded, TransferPosted};
use ledger_domain::{Amount, Concurrency, Currency, Event, Money, system_account_id};
use ledger_infrastructure::store::{AppendError, Commit};
use ledger_infrastructure::{EventMetadata, EventStore};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::HashMap;
use std::time::Instant;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Builds commits and remembers what they did to the accounts.
pub struct LogGen {
    pub rng: SmallRng,
    pub currency: Currency,
    pub system: Uuid,
    pub system_balance: i64,
    /// Customer accounts, by index.
    pub accounts: Vec<Uuid>,
    pub balances: Vec<i64>,
    /// Version of every account stream (system included). New transfer streams are
    /// not kept: they are always at version 0 and never appended to again.
    versions: HashMap<Uuid, i64>,
    metadata: EventMetadata,
    pub events: u64,
    pub opened: u64,
    pub deposits: u64,
    pub transfers: u64,
}

impl LogGen {
    pub fn new(seed: u64) -> anyhow::Result<LogGen> {
        let currency = Currency::parse("EUR")?;
        Ok(LogGen {
            rng: SmallRng::seed_from_u64(seed),
            currency,
            system: system_account_id(currency),
            system_balance: 0,
            accounts: Vec::new(),
            balances: Vec::new(),
            versions: HashMap::new(),
            metadata: EventMetadata { actor: "ledger-bench".to_owned(), ..EventMetadata::default() },
            events: 0,
            opened: 0,
            deposits: 0,
            transfers: 0,
        })
    }

    /// The version the log has (or will have, once appended) for an account stream.
    pub fn version(&self, id: Uuid) -> i64 {
        self.versions.get(&id).copied().unwrap_or(0)
    }

    /// Wraps one event in a commit, expecting the current version of each of its
    /// `Exact` streams, and advances the versions of the streams it belongs to.
    fn commit(&mut self, event: Event) -> Commit {
        let mut expected = Vec::with_capacity(3);
        for (stream, concurrency) in event.streams() {
            if concurrency == Concurrency::Exact {
                expected.push((stream, self.version(stream)));
            }
            if let Some(v) = self.versions.get_mut(&stream) {
                *v += 1;
            }
        }
        self.events += 1;
        Commit {
            events: vec![event],
            expected,
            read: Vec::new(),
            metadata: self.metadata.clone(),
            idempotency: None,
            streams: Vec::new(),
            rejection: None,
            owner_index: None,
        }
    }

    /// The currency's system account (must come first).
    pub fn open_system(&mut self) -> Commit {
        self.versions.insert(self.system, 0);
        self.opened += 1;
        self.commit(Event::AccountOpened(AccountOpened {
            account_id: self.system,
            currency: self.currency,
            owner: None,
            overdraft_limit: Money::ZERO,
            system: true,
            metadata: None,
            subject: None,
        }))
    }

    /// A customer account; it gets the next index. Without an owner: personal values
    /// are sealed by the API (`privacy`), which a generated log bypasses.
    pub fn open_account(&mut self) -> Commit {
        let id = Uuid::now_v7();
        self.accounts.push(id);
        self.balances.push(0);
        self.versions.insert(id, 0);
        self.opened += 1;
        self.commit(Event::AccountOpened(AccountOpened {
            account_id: id,
            currency: self.currency,
            owner: None,
            overdraft_limit: Money::ZERO,
            system: false,
            metadata: None,
            subject: Some(id.to_string()),
        }))
    }

    pub fn deposit(&mut self, account: usize, amount: i64) -> anyhow::Result<Commit> {
        let account_id = *self.accounts.get(account).context("no such account")?;
        self.balances[account] = self.balances[account].checked_add(amount).context("balance overflow")?;
        self.system_balance -= amount;
        self.deposits += 1;
        let deposit_id = Uuid::now_v7();
        Ok(self.commit(Event::DepositRecorded(DepositRecorded {
            effective_at: None,
            metadata: None,
            deposit_id,
            account_id,
            system_account_id: self.system,
            amount: Amount::new(amount)?,
            currency: self.currency,
            reference: Some(format!("dep-{}", self.deposits)),
        })))
    }

    pub fn transfer(&mut self, from: usize, to: usize, amount: i64) -> anyhow::Result<Commit> {
        if from == to {
            bail!("a transfer needs two accounts");
        }
        let (from_id, to_id) =
            (*self.accounts.get(from).context("no such account")?, *self.accounts.get(to).context("no such account")?);
        if self.balances[from] < amount {
            bail!("account {from} would go below zero: balance {}, amount {amount}", self.balances[from]);
        }
        self.balances[from] -= amount;
        self.balances[to] += amount;
        self.transfers += 1;
        Ok(self.commit(Event::TransferPosted(TransferPosted {
            effective_at: None,
            metadata: None,
            transfer_id: Uuid::now_v7(),
            from: from_id,
            to: to_id,
            amount: Amount::new(amount)?,
            currency: self.currency,
            reference: Some(format!("inv-{}", self.transfers)),
            reverses: None,
            reason: None,
        })))
    }
}

/// Collects commits into batches and appends them, one batch in flight at a time
/// (appends serialize on the log head anyway) while the caller builds the next.
pub struct Appender {
    store: EventStore,
    batch_max: usize,
    pending: Vec<Commit>,
    inflight: Option<JoinHandle<Result<usize, AppendError>>>,
    pub appended: u64,
    pub batches: u64,
    started: Instant,
    next_report: u64,
}

impl Appender {
    pub fn new(store: EventStore, batch_max: usize) -> Appender {
        Appender {
            store,
            batch_max,
            pending: Vec::with_capacity(batch_max),
            inflight: None,
            appended: 0,
            batches: 0,
            started: Instant::now(),
            next_report: 100_000,
        }
    }

    pub async fn push(&mut self, commit: Commit) -> anyhow::Result<()> {
        self.pending.push(commit);
        if self.pending.len() >= self.batch_max {
            self.submit().await?;
        }
        Ok(())
    }

    /// Appends what is pending and waits for every append to finish.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        self.submit().await?;
        self.wait().await
    }

    async fn submit(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch_max));
        self.wait().await?;
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        self.inflight = Some(tokio::spawn(async move {
            let results = store.append_batch(&batch).await?;
            Ok(results.results.iter().map(|r| r.recorded.len()).sum())
        }));
        Ok(())
    }

    async fn wait(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.inflight.take() {
            let n = task.await.context("the append task failed")?.context("append_batch failed")?;
            self.appended += n as u64;
            self.batches += 1;
            if self.appended >= self.next_report {
                let secs = self.started.elapsed().as_secs_f64();
                eprintln!(
                    "  appended {} events in {:.1} s ({:.0} events/s)",
                    self.appended,
                    secs,
                    self.appended as f64 / secs
                );
                self.next_report += 100_000;
            }
        }
        Ok(())
    }
}
