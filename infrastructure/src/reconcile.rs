//! Reconciliation runs: fetch the provider's statement for a window (through the same
//! retry and circuit-breaker policy as payouts), reconcile each entry with the ledger,
//! then look for payouts the ledger settled in the window that the statement lacks.
//! Every step is a command, so the run, each mismatch and each correction are events
//! carrying the run id as causation and the run's actor. Only one run at a time
//! across instances (a Postgres advisory lock).

use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::provider::{PayoutStatus, ProviderClient, ProviderError, StatementEntry};
use crate::store::{EventMetadata, StoredResponse};
use crate::writer::{CommandBus, CommandRequest};
use chrono::{DateTime, Utc};
use ledger_domain::Command;
use ledger_domain::decide::{FinishReconciliation, ProviderRecord, ReconcilePayout, StartReconciliation};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Provider calls a run makes per request before giving up.
const PROVIDER_ATTEMPTS_MAX: u32 = 5;

/// What a run needs.
#[derive(Clone)]
pub struct Reconciler {
    pub pool: PgPool,
    pub database_url: String,
    pub bus: CommandBus,
    pub provider: ProviderClient,
    pub breaker: CircuitBreaker,
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
    Command(String),
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
        let mut conn = PgConnection::connect(&self.database_url).await?;
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext('ledger-reconcile'))")
            .fetch_one(&mut conn)
            .await?;
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
            render: Arc::new(|_| StoredResponse { status: 200, body: serde_json::Value::Null }),
        };
        let reply = self.bus.execute(request).await.map_err(|e| ReconcileError::Command(e.to_string()))?;
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

    async fn compare(
        &self,
        run_id: Uuid,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        actor: &str,
        progress: &mut impl FnMut(i64, i64),
    ) -> Result<RunTotals, ReconcileError> {
        let entries = self.with_retries(|| self.provider.statement(from, to)).await?;
        let mut totals = RunTotals::default();
        let mut seen = HashSet::new();
        let total = entries.len() as i64;
        for (i, entry) in entries.iter().enumerate() {
            seen.insert(entry.reference.clone());
            self.reconcile(run_id, actor, entry_command(run_id, entry), &mut totals).await?;
            progress(i as i64 + 1, total);
        }
        // Payouts the ledger settled in the window that the statement does not list.
        for (withdrawal_id, provider_ref) in self.settled_in_window(from, to).await? {
            if seen.contains(&withdrawal_id.to_string()) {
                continue;
            }
            let lookup = match provider_ref.as_deref() {
                Some(r) => self.with_retries(|| self.provider.payout(r)).await?,
                None => None,
            };
            let provider = match lookup {
                None => None,
                Some(p) => match (p.status, p.amount) {
                    // Settled, but this provider's look-up does not say how much: no
                    // basis for a correction; the statement of a wider window will.
                    (PayoutStatus::Settled, None) => {
                        tracing::warn!(%withdrawal_id, "provider look-up without an amount; left as is");
                        totals.matched += 1;
                        continue;
                    }
                    (status, amount) => Some(ProviderRecord {
                        provider_ref: p.provider_ref,
                        settled: status == PayoutStatus::Settled,
                        amount: amount.unwrap_or_default(),
                    }),
                },
            };
            let command = ReconcilePayout {
                run_id,
                reference: withdrawal_id.to_string(),
                withdrawal_id: Some(withdrawal_id),
                provider,
            };
            self.reconcile(run_id, actor, command, &mut totals).await?;
        }
        Ok(totals)
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

    /// Withdrawals whose settlement was recorded in the window, from the log.
    async fn settled_in_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, Option<String>)>, sqlx::Error> {
        sqlx::query_as(
            "select (data ->> 'withdrawal_id')::uuid, data ->> 'provider_ref' from events
             where type = 'WithdrawalSettled' and recorded_at >= $1 and recorded_at < $2 order by position",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
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
            if let Err(open) = self.breaker.try_acquire() {
                if attempt >= PROVIDER_ATTEMPTS_MAX {
                    return Err(ReconcileError::Command(format!("provider unavailable: {open}")));
                }
                tokio::time::sleep(open.retry_in).await;
                continue;
            }
            match call().await {
                Ok(v) => {
                    self.breaker.record_success();
                    return Ok(v);
                }
                Err(ProviderError::Permanent { detail, .. }) => {
                    self.breaker.record_success();
                    return Err(ReconcileError::Command(format!("provider refused: {detail}")));
                }
                Err(ProviderError::Transient { detail, retry_after }) => {
                    self.breaker.record_failure();
                    if attempt >= PROVIDER_ATTEMPTS_MAX {
                        return Err(ReconcileError::Command(format!("provider unavailable: {detail}")));
                    }
                    let backoff = backoff_delay(attempt, Duration::from_millis(100), Duration::from_secs(5));
                    tokio::time::sleep(retry_after.map_or(backoff, |r| r.max(backoff))).await;
                }
            }
        }
    }
}

fn entry_command(run_id: Uuid, entry: &StatementEntry) -> ReconcilePayout {
    ReconcilePayout {
        run_id,
        reference: entry.reference.clone(),
        withdrawal_id: Uuid::parse_str(&entry.reference).ok(),
        provider: Some(ProviderRecord {
            provider_ref: entry.provider_ref.clone(),
            settled: entry.status == PayoutStatus::Settled,
            amount: entry.amount,
        }),
    }
}

/// The report of a run, folded from its stream: `{"id","status","from","to","matched",
/// "mismatches":[{"kind","withdrawal_id","provider_ref","ours","theirs","resolution",
/// "resolution_position","account_below_limit"}],"error"}`; `None` if there is no such run.
pub fn report(run_id: Uuid, events: &[crate::store::RecordedEvent]) -> Option<serde_json::Value> {
    use ledger_domain::Event;
    let mut report = None;
    let mut mismatches = Vec::new();
    for recorded in events {
        match recorded.event().ok()? {
            Event::ReconciliationStarted(e) => {
                report = Some(serde_json::json!({
                    "id": run_id, "status": "running", "from": e.from, "to": e.to, "matched": 0,
                    "started_position": recorded.position,
                }));
            }
            Event::ReconciliationMismatchFound(m) => {
                // A correction is appended in the same commit right before its mismatch.
                let resolution_position = (m.resolution != "flagged").then_some(recorded.position - 1);
                mismatches.push(serde_json::json!({
                    "kind": m.kind, "withdrawal_id": m.withdrawal_id, "reference": m.reference,
                    "provider_ref": m.provider_ref, "ours": m.ours, "theirs": m.theirs,
                    "resolution": m.resolution, "resolution_position": resolution_position,
                    "account_below_limit": m.account_below_limit,
                }));
            }
            Event::ReconciliationFinished(f) => {
                if let Some(r) = report.as_mut() {
                    r["status"] = serde_json::json!(if f.error.is_some() { "failed" } else { "finished" });
                    r["matched"] = serde_json::json!(f.matched);
                    r["error"] = serde_json::json!(f.error);
                    r["finished_position"] = serde_json::json!(recorded.position);
                }
            }
            _ => {}
        }
    }
    let mut report = report?;
    report["mismatches"] = serde_json::Value::Array(mismatches);
    Some(report)
}
