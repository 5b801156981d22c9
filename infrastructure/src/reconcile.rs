//! Reconciliation runs: fetch the provider's statement for a window (through the same
//! retry and circuit-breaker policy as payouts), group its lines by reference (one
//! decision per withdrawal, however many lines name it: PROVIDER.md v1.1), reconcile
//! each group with the ledger, then look for payouts the ledger settled in the window
//! that the statement lacks. Lines that cannot be read are grouped and decided too
//! (the domain flags them); only a statement that is not JSON at all fails the run.
//! Every step is a command, so the run, each mismatch and each correction are events
//! carrying the run id as causation and the run's actor. Only one run at a time
//! across instances (a Postgres advisory lock).

use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::outcome::Outcome;
use crate::provider::{ProviderClient, ProviderError, ProviderLine};
use crate::store::EventMetadata;
use crate::writer::{CommandBus, CommandRequest};
use chrono::{DateTime, Utc};
use ledger_domain::decide::{FinishReconciliation, ProviderRecord, ReconcilePayout, StartReconciliation};
use ledger_domain::{Command, DomainError};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// What a run needs.
#[derive(Clone)]
pub struct Reconciler {
    pub pool: PgPool,
    pub database_url: String,
    pub bus: CommandBus,
    pub provider: ProviderClient,
    pub breaker: CircuitBreaker,
    /// Provider look-ups of one page or payout before the run fails.
    pub provider_attempts_max: u32,
    /// Whether statement lines that name no withdrawal of this ledger are reported
    /// (`unknown_reference`): by the runs of `default` only, and then only for lines
    /// that name no withdrawal of any ledger (API.md "Ledgers"). Another ledger's runs
    /// pass over lines that are not theirs.
    pub reports_unknown: bool,
    /// The other ledgers' withdrawals, which `default`'s runs do not report.
    pub elsewhere: Option<std::sync::Arc<crate::ledgers::Elsewhere>>,
}

/// Why a run did not happen (a run that started and failed is recorded as finished
/// with its error instead).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("another reconciliation is running")]
    AlreadyRunning,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("recording the run failed: {0}")]
    Command(#[from] crate::writer::CommandError),
    /// The provider's breaker stayed open through every attempt.
    #[error("the provider is unavailable: {0}")]
    ProviderOpen(#[from] crate::breaker::BreakerOpen),
    /// The provider refused the look-up, or kept failing through every attempt.
    #[error("the provider failed: {0}")]
    Provider(crate::provider::ProviderError),
    /// The domain refused a step of the run: a bug, never a statement line (the domain
    /// flags what it cannot decide), so the run fails rather than count it as matched.
    #[error("the ledger refused a reconciliation step: {0}")]
    Refused(DomainError),
}

/// The totals of a finished run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub matched: u64,
    pub mismatches: u64,
}

/// Holds the cluster-wide reconciliation lock.
pub struct RunLock(PgConnection);

impl Reconciler {
    /// Takes the lock that keeps runs one at a time.
    pub async fn lock(&self) -> Result<RunLock, ReconcileError> {
        let mut conn = crate::db::session(&self.database_url).await?;
        let try_lock =
            sqlx::query_scalar("select pg_try_advisory_lock(hashtext('ledger-reconcile'), ledger_lock_key())");
        let limit = crate::db::connect_timeout();
        let got: bool =
            crate::db::within(limit, "taking the reconciliation lock", try_lock.fetch_one(&mut conn)).await?;
        if !got {
            return Err(ReconcileError::AlreadyRunning);
        }
        self.finish_interrupted().await?;
        Ok(RunLock(conn))
    }

    /// Runs that started but never finished died with their process (no run holds the
    /// lock now): they are recorded as finished with an error, so none shows `running`.
    async fn finish_interrupted(&self) -> Result<(), ReconcileError> {
        let open: Vec<Uuid> = sqlx::query_scalar(
            "select s.stream_id from events s where s.type = 'ReconciliationStarted' and not exists (
                 select 1 from stream_entries f join events e on e.position = f.position
                 where f.stream_id = s.stream_id and e.type = 'ReconciliationFinished')",
        )
        .fetch_all(&self.pool)
        .await?;
        for run_id in open {
            let finish = FinishReconciliation {
                run_id,
                matched: 0,
                mismatches: 0,
                error: Some("interrupted: the process running it stopped".into()),
            };
            self.command(Command::FinishReconciliation(finish), run_id, "reconciler").await?;
        }
        Ok(())
    }

    /// Executes one step of a run: the number of events it recorded.
    async fn command(&self, command: Command, run_id: Uuid, actor: &str) -> Result<usize, ReconcileError> {
        let request = CommandRequest {
            command,
            metadata: EventMetadata {
                actor: actor.to_owned(),
                causation_id: Some(run_id.to_string()),
                correlation_id: Some(run_id.to_string()),
                ..EventMetadata::default()
            },
            idempotency: None,
            fresh_stream: None,
            owner_index: None,
        };
        let reply = self.bus.execute(request).await?;
        if let Some(Outcome::Rejected(e)) = reply.outcome() {
            return Err(ReconcileError::Refused(e.clone()));
        }
        Ok(reply.recorded.len())
    }

    /// Records the start of a run (so `GET …/{id}` finds it at once).
    pub async fn start(
        &self,
        run_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        actor: &str,
    ) -> Result<(), ReconcileError> {
        self.command(Command::StartReconciliation(StartReconciliation { run_id, from, to }), run_id, actor)
            .await
            .map(|_| ())
    }

    /// Runs a started reconciliation to its end; `progress(done, total)` per entry.
    pub async fn run(
        &self,
        lock: RunLock,
        run_id: Uuid,
        window: (DateTime<Utc>, DateTime<Utc>),
        actor: &str,
        mut progress: impl FnMut(i64, i64),
    ) -> Result<RunTotals, ReconcileError> {
        let outcome = self.compare(run_id, window, actor, &mut progress).await;
        let (totals, error) = match &outcome {
            Ok(t) => (*t, None),
            Err(e) => (RunTotals::default(), Some(e.to_string())),
        };
        let finish = FinishReconciliation { run_id, matched: totals.matched, mismatches: totals.mismatches, error };
        self.command(Command::FinishReconciliation(finish), run_id, actor).await?;
        let _ = lock.0.close().await;
        outcome
    }

    /// The run's comparison: every group of statement lines, then every payout the
    /// ledger settled in the window that the statement does not list.
    async fn compare(
        &self,
        run_id: Uuid,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        actor: &str,
        progress: &mut impl FnMut(i64, i64),
    ) -> Result<RunTotals, ReconcileError> {
        let lines = self.with_retries(|| self.provider.statement(from, to)).await?;
        let mut totals = RunTotals::default();
        let listed = self.compare_statement(run_id, actor, lines, &mut totals, progress).await?;
        self.compare_unlisted(run_id, actor, (from, to), &listed, &mut totals).await?;
        Ok(totals)
    }

    /// Decides each group of the statement's lines; returns the withdrawals it listed.
    async fn compare_statement(
        &self,
        run_id: Uuid,
        actor: &str,
        lines: Vec<ProviderLine>,
        totals: &mut RunTotals,
        progress: &mut impl FnMut(i64, i64),
    ) -> Result<HashSet<Uuid>, ReconcileError> {
        let mut listed = HashSet::new();
        let groups = by_reference(lines);
        let total = groups.len() as i64;
        for (i, (reference, records)) in groups.into_iter().enumerate() {
            let command = group_command(run_id, reference, records);
            if self.concerns_this_ledger(&command).await? {
                listed.extend(command.withdrawal_id);
                self.reconcile(run_id, actor, command, totals).await?;
            }
            progress(i as i64 + 1, total);
        }
        Ok(listed)
    }

    /// Whether a group of lines is this ledger's to decide: it names a withdrawal of
    /// this ledger, or (for `default`) it names no withdrawal of any other ledger. A line
    /// whose reference another ledger's shard cannot be asked about now is passed over
    /// (with a warning): it is neither this ledger's nor known to be nobody's, and one
    /// shard being down must not fail `default`'s run.
    async fn concerns_this_ledger(&self, command: &ReconcilePayout) -> Result<bool, ReconcileError> {
        if let Some(id) = command.withdrawal_id
            && crate::ledgers::is_withdrawal(&self.pool, None, id).await?
        {
            return Ok(true);
        }
        if !self.reports_unknown {
            return Ok(false);
        }
        match (command.withdrawal_id, &self.elsewhere) {
            (Some(id), Some(elsewhere)) => match elsewhere.has_withdrawal(id).await {
                Ok(theirs) => Ok(!theirs),
                Err(e) => {
                    tracing::warn!(reference = %id, error = %e, "a statement line passed over: a shard does not answer");
                    Ok(false)
                }
            },
            _ => Ok(true),
        }
    }

    /// Payouts the ledger settled in the window that the statement does not list: each
    /// is looked up at the provider and decided on what the look-up says.
    async fn compare_unlisted(
        &self,
        run_id: Uuid,
        actor: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        listed: &HashSet<Uuid>,
        totals: &mut RunTotals,
    ) -> Result<(), ReconcileError> {
        for settled in self.settled_in_window(from, to).await? {
            if listed.contains(&settled.withdrawal_id) {
                continue;
            }
            let lookup = match settled.provider_ref.as_deref() {
                Some(r) => self.with_retries(|| self.provider.payout(r)).await?,
                None => None,
            };
            let Some(provider) = unlisted_record(&settled, lookup) else {
                totals.matched += 1;
                continue;
            };
            let command = ReconcilePayout {
                run_id,
                reference: settled.withdrawal_id.to_string(),
                withdrawal_id: Some(settled.withdrawal_id),
                provider,
                also_listed: Vec::new(),
            };
            self.reconcile(run_id, actor, command, totals).await?;
        }
        Ok(())
    }

    async fn reconcile(
        &self,
        run_id: Uuid,
        actor: &str,
        command: ReconcilePayout,
        totals: &mut RunTotals,
    ) -> Result<(), ReconcileError> {
        match self.command(Command::ReconcilePayout(command), run_id, actor).await? {
            0 => totals.matched += 1,
            _ => totals.mismatches += 1,
        }
        Ok(())
    }

    /// Withdrawals whose settlement was recorded in the window, from the log: by the
    /// payout worker or by an earlier run's correction, once each, with the latest
    /// provider reference and amount. A withdrawal an earlier run flagged as missing at
    /// the provider is here again, so every run over the window lists it again.
    async fn settled_in_window(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Settled>, sqlx::Error> {
        let rows: Vec<(Uuid, Option<String>, i64)> = sqlx::query_as(
            "select (data ->> 'withdrawal_id')::uuid, data ->> 'provider_ref',
                    coalesce(data ->> 'amount', data ->> 'provider_amount', '0')::bigint
             from events
             where recorded_at >= $1 and recorded_at < $2
               and type in ('WithdrawalSettled', 'WithdrawalReconciled')
               and (type = 'WithdrawalSettled' or data ->> 'status_after' = 'settled')
             order by position",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut settled: Vec<Settled> = Vec::with_capacity(rows.len());
        let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(rows.len());
        for (withdrawal_id, provider_ref, amount) in rows {
            let latest = Settled { withdrawal_id, provider_ref, amount };
            match index.get(&withdrawal_id) {
                Some(&i) => settled[i] = latest,
                None => {
                    index.insert(withdrawal_id, settled.len());
                    settled.push(latest);
                }
            }
        }
        Ok(settled)
    }

    /// A provider call with the payouts' policy: the breaker first, then backoff with
    /// jitter (honouring `Retry-After`) on transient failures, bounded in attempts.
    async fn with_retries<T, F, Fut>(&self, call: F) -> Result<T, ReconcileError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Dropped on any path without a verdict (the run cancelled mid-call), the
            // permit frees the probe slot.
            let permit = match self.breaker.acquire() {
                Ok(permit) => permit,
                Err(open) => {
                    if attempt >= self.provider_attempts_max {
                        return Err(ReconcileError::ProviderOpen(open));
                    }
                    tokio::time::sleep(open.retry_in).await;
                    continue;
                }
            };
            match call().await {
                Ok(v) => {
                    permit.success();
                    return Ok(v);
                }
                Err(refused @ ProviderError::Permanent { .. }) => {
                    permit.success();
                    return Err(ReconcileError::Provider(refused));
                }
                Err(ProviderError::Transient { detail, retry_after }) => {
                    permit.failure();
                    if attempt >= self.provider_attempts_max {
                        return Err(ReconcileError::Provider(ProviderError::Transient { detail, retry_after }));
                    }
                    let backoff = backoff_delay(attempt, Duration::from_millis(100), Duration::from_secs(5));
                    tokio::time::sleep(retry_after.map_or(backoff, |r| r.max(backoff))).await;
                }
            }
        }
    }
}

/// A withdrawal the ledger settled in a run's window.
struct Settled {
    withdrawal_id: Uuid,
    provider_ref: Option<String>,
    /// What the ledger recorded as paid out.
    amount: i64,
}

/// The provider's record of a settled payout the statement did not list, from its
/// look-up: `Some(None)` when the provider has none, `None` when there is nothing to
/// decide (settled there too, but the look-up gives no amount to compare: the
/// statement of a wider window will).
fn unlisted_record(settled: &Settled, lookup: Option<ProviderLine>) -> Option<Option<ProviderRecord>> {
    match lookup {
        None => Some(None),
        Some(line) if !line.amount_given && line.record.defect.is_none() && line.record.settled => {
            tracing::warn!(withdrawal_id = %settled.withdrawal_id, "provider look-up without an amount; left as is");
            None
        }
        // Rejected without an amount: a rejection moves back what left, whatever the
        // amount, so ours stands in for the one the provider did not give.
        Some(line) if !line.amount_given && line.record.defect.is_none() => {
            Some(Some(ProviderRecord { amount: settled.amount, ..line.record }))
        }
        Some(line) => Some(Some(line.record)),
    }
}

/// What a group of statement lines is about: one of our withdrawals (however its id is
/// spelled, so two spellings cannot split one withdrawal's lines) or another reference.
/// A line without a readable reference stands alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum GroupKey {
    Withdrawal(Uuid),
    Reference(String),
}

/// The statement's lines grouped by what they are about, in the order each group first
/// appears: one decision per withdrawal, so two lines about one withdrawal can never
/// correct it back and forth.
fn by_reference(lines: Vec<ProviderLine>) -> Vec<(Option<String>, Vec<ProviderRecord>)> {
    let mut groups: Vec<(Option<String>, Vec<ProviderRecord>)> = Vec::new();
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    for line in lines {
        let Some(reference) = line.reference else {
            groups.push((None, vec![line.record]));
            continue;
        };
        let key =
            Uuid::parse_str(&reference).map_or_else(|_| GroupKey::Reference(reference.clone()), GroupKey::Withdrawal);
        match index.get(&key) {
            Some(&i) => groups[i].1.push(line.record),
            None => {
                index.insert(key, groups.len());
                groups.push((Some(reference), vec![line.record]));
            }
        }
    }
    groups
}

/// The command deciding one group: its first line and the others listed with it.
fn group_command(run_id: Uuid, reference: Option<String>, records: Vec<ProviderRecord>) -> ReconcilePayout {
    let mut records = records.into_iter();
    ReconcilePayout {
        run_id,
        withdrawal_id: reference.as_deref().and_then(|r| Uuid::parse_str(r).ok()),
        reference: reference.unwrap_or_default(),
        provider: records.next(),
        also_listed: records.collect(),
    }
}

/// Where a reconciliation run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
}

/// A mismatch as recorded, and the log position of the event correcting it (none when
/// it was only flagged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundMismatch {
    pub found: ledger_domain::events::ReconciliationMismatchFound,
    pub resolution_position: Option<i64>,
}

/// The report of a run, folded from its stream. The kinds are those of
/// `ledger_domain::MismatchKind`; `theirs` is one line (`{"status","amount","currency",
/// "provider_ref"}`, or `{"unreadable","provider_ref","line"}` for a line that could not
/// be read) or, for a duplicated reference, `{"lines":[…],"lines_total"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    pub id: Uuid,
    pub status: RunStatus,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
    pub matched: u64,
    pub started_position: i64,
    pub mismatches: Vec<FoundMismatch>,
    /// Once finished: why a failed run failed.
    pub error: Option<String>,
    /// Once finished: the log position of its last event.
    pub finished_position: Option<i64>,
}

/// The report of a run folded from its stream; `None` if there is no such run.
pub fn report(run_id: Uuid, events: &[crate::store::RecordedEvent]) -> Option<RunReport> {
    use ledger_domain::Event;
    let mut report = None;
    let mut mismatches = Vec::new();
    for recorded in events {
        match recorded.event().ok()? {
            Event::ReconciliationStarted(e) => {
                report = Some(RunReport {
                    id: run_id,
                    status: RunStatus::Running,
                    from: e.from,
                    to: e.to,
                    matched: 0,
                    started_position: recorded.position,
                    mismatches: Vec::new(),
                    error: None,
                    finished_position: None,
                });
            }
            Event::ReconciliationMismatchFound(found) => {
                // A correction is appended in the same commit right before its mismatch.
                let corrected = found.resolution != ledger_domain::Resolution::Flagged;
                let resolution_position = corrected.then_some(recorded.position - 1);
                mismatches.push(FoundMismatch { found, resolution_position });
            }
            Event::ReconciliationFinished(f) => {
                if let Some(r) = report.as_mut() {
                    r.status = if f.error.is_some() { RunStatus::Failed } else { RunStatus::Finished };
                    r.matched = f.matched;
                    r.error = f.error;
                    r.finished_position = Some(recorded.position);
                }
            }
            _ => {}
        }
    }
    let mut report = report?;
    report.mismatches = mismatches;
    Some(report)
}
