//! Applying a batch of events to a projection, exactly once, with its checkpoint.

use crate::accounts::{AccountsMemo, Known, checkpoint_stamp};
use ledger_infrastructure::RecordedEvent;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The read models, each with its own checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `accounts_view` and `account_entries` (balances, holds, statements), and closed
    /// periods' balances (`period_balances`).
    Accounts,
    /// `transactions_view` (transfers included), `withdrawals_view`, `dead_letters` and
    /// `holds_view`.
    Transfers,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Accounts, Projection::Transfers];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Accounts => "accounts",
            Projection::Transfers => "transfers",
        }
    }

    pub fn from_name(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The tables this projection writes.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Accounts => &["accounts_view", "account_entries", "period_balances"],
            Projection::Transfers => &["withdrawals_view", "dead_letters", "transactions_view", "holds_view"],
        }
    }

    /// `known`: the accounts projection's accounts as the view holds them
    /// ([`crate::accounts::apply`]); other projections leave it alone.
    pub(crate) async fn apply(
        self,
        tx: &mut Transaction<'_, Postgres>,
        tables: &Tables,
        events: &[RecordedEvent],
        known: &mut Known,
    ) -> Result<Vec<Uuid>, ApplyError> {
        match self {
            Projection::Accounts => crate::accounts::apply(tx, tables, events, known).await,
            Projection::Transfers => crate::transfers::apply(tx, tables, events).await.map(|()| Vec::new()),
        }
    }
}

/// Which set of a projection's tables to write: the live ones, or a rebuild's.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    suffix: &'static str,
}

impl Tables {
    pub const LIVE: Tables = Tables { suffix: "" };
    pub const REBUILD: Tables = Tables { suffix: "_rebuild" };

    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }
}

/// Why a batch was not applied (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("an event does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// Accounts were not where the projector's memo had them (`accounts::AccountsMemo`):
    /// the batch is applied again from the view.
    #[error(
        "the accounts view moved under the projector: accounts inserted and moved on {found:?}, expected {expected:?}"
    )]
    Moved { expected: (i64, i64), found: (i64, i64) },
}

/// What a batch did.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// The checkpoint before the batch.
    pub from: i64,
    /// The checkpoint after the batch.
    pub position: i64,
    /// Events applied (not counting those at or below the old checkpoint).
    pub applied: usize,
    /// Accounts whose view changed.
    pub accounts: Vec<Uuid>,
}

/// Applies `delivered` (events as received, possibly duplicated, out of order or with
/// gaps) to one projection in one transaction. See [`apply_in`].
pub async fn apply_delivered(
    pool: &PgPool,
    projection: Projection,
    delivered: &[RecordedEvent],
) -> Result<Applied, ApplyError> {
    let mut applied = apply_delivered_all(pool, &AccountsMemo::default(), &[projection], delivered).await?;
    Ok(applied.pop().expect("one projection, one answer").1)
}

/// Applies `delivered` to every projection of `projections` in one transaction (one
/// commit for all of them: what the projector does with each JetStream batch). Their
/// checkpoints are locked one by one, in the order of `projections`, and moved in one
/// statement. `memo` is what the last batch through it left of the accounts, taken for
/// this batch and put back once it committed ([`AccountsMemo`]).
pub async fn apply_delivered_all(
    pool: &PgPool,
    memo: &AccountsMemo,
    projections: &[Projection],
    delivered: &[RecordedEvent],
) -> Result<Vec<(Projection, Applied)>, ApplyError> {
    let mut tx = pool.begin().await?;
    let mut applied = Vec::with_capacity(projections.len());
    let (mut known, mut accounts_stamp) = (Known::new(), None);
    for &projection in projections {
        // One statement per name, not `name = any($1)`: that one was planned again on
        // every batch (a custom plan over the array looks cheaper than the generic one).
        let (checkpoint, stamp): (i64, String) = sqlx::query_as(concat!(
            "select c.position, ",
            checkpoint_stamp!(),
            " from projection_checkpoints c where c.name = $1 for update"
        ))
        .bind(projection.name())
        .fetch_one(&mut *tx)
        .await?;
        if projection == Projection::Accounts {
            known = memo.take(checkpoint, &stamp);
            accounts_stamp = Some(stamp);
        }
        applied.push((projection, apply_in(&mut tx, projection, checkpoint, delivered, &mut known).await?));
    }
    let (names, positions): (Vec<&str>, Vec<i64>) = applied
        .iter()
        .filter(|(_, a)| a.position > a.from)
        .map(|(projection, a)| (projection.name(), a.position))
        .unzip();
    if !names.is_empty() {
        // The accounts' new stamp is kept for the memo.
        let stamps: Vec<(String, String)> = sqlx::query_as(concat!(
            "update projection_checkpoints c set position = m.position, updated_at = now()
             from unnest($1::text[], $2::int8[]) as m(name, position) where c.name = m.name
             returning c.name, ",
            checkpoint_stamp!()
        ))
        .bind(names)
        .bind(positions)
        .fetch_all(&mut *tx)
        .await?;
        if let Some((_, stamp)) = stamps.into_iter().find(|(name, _)| name == Projection::Accounts.name()) {
            accounts_stamp = Some(stamp);
        }
    }
    tx.commit().await?;
    if let (Some((_, a)), Some(stamp)) = (applied.iter().find(|(p, _)| *p == Projection::Accounts), accounts_stamp) {
        memo.put(a.position, stamp, known, &a.accounts);
    }
    Ok(applied)
}

/// Applies `delivered` to one projection inside `tx`, exactly once: events at or below
/// its `checkpoint` (locked `for update` by the caller) are ignored; if the delivered
/// positions above it are not exactly checkpoint+1 ..= max, that range is read from the
/// Postgres log instead, so nothing is skipped. The caller moves the checkpoint to the
/// last applied position ([`Applied::position`]).
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    projection: Projection,
    checkpoint: i64,
    delivered: &[RecordedEvent],
    known: &mut Known,
) -> Result<Applied, ApplyError> {
    let mut fresh: Vec<&RecordedEvent> = delivered.iter().filter(|e| e.position > checkpoint).collect();
    fresh.sort_by_key(|e| e.position);
    fresh.dedup_by_key(|e| e.position);
    let Some(max) = fresh.last().map(|e| e.position) else {
        return Ok(Applied { from: checkpoint, position: checkpoint, ..Applied::default() });
    };
    // An opening in the form versions before 1.2 published (owner in clear, no
    // subject) was sealed in place since (`privacy::legacy`): the log has it as it is now.
    let legacy = fresh.iter().any(|e| {
        e.event_type == "AccountOpened"
            && e.data.get("subject").is_none()
            && e.data["system"] != serde_json::json!(true)
    });
    let contiguous = !legacy && fresh.iter().enumerate().all(|(i, e)| e.position == checkpoint + 1 + i as i64);
    // The usual delivery is exactly the next positions, in order: applied as delivered,
    // without copying a single event (nor the event each projection decodes once).
    let as_delivered =
        contiguous && fresh.len() == delivered.len() && delivered.iter().zip(&fresh).all(|(d, f)| std::ptr::eq(d, *f));
    let events: std::borrow::Cow<'_, [RecordedEvent]> = if as_delivered {
        std::borrow::Cow::Borrowed(delivered)
    } else if contiguous {
        std::borrow::Cow::Owned(fresh.into_iter().cloned().collect())
    } else {
        tracing::info!(projection = projection.name(), checkpoint, max, "gap in delivery; reading the log");
        std::borrow::Cow::Owned(ledger_infrastructure::EventStore::read_range(&mut **tx, checkpoint, max).await?)
    };
    let accounts = projection.apply(tx, &Tables::LIVE, &events, known).await?;
    // No NOTIFY here: it serializes commits on the notification queue. Readers learn of
    // new positions from the worker's NATS announcement (and a slow poll).
    Ok(Applied { from: checkpoint, position: max, applied: events.len(), accounts })
}

/// Applies the log straight from Postgres, in batches of `batch_max`, until the
/// projection has reached `up_to` (or the head when `None`). Used to catch up without
/// NATS and by tests to drive a projection deterministically.
pub async fn catch_up(
    pool: &PgPool,
    projection: Projection,
    up_to: Option<i64>,
    batch_max: i64,
) -> Result<i64, ApplyError> {
    let batches = catch_up_applied(pool, &[projection], up_to, batch_max).await?;
    Ok(batches.iter().map(|(_, a)| a.position).max().unwrap_or(0))
}

/// Catches `projections` up together (each batch applied to all of them in one
/// transaction, as the projector does), returning each batch each applied (for cache
/// invalidation), or its checkpoint alone (an empty batch) when it was already there.
pub async fn catch_up_applied(
    pool: &PgPool,
    projections: &[Projection],
    up_to: Option<i64>,
    batch_max: i64,
) -> Result<Vec<(Projection, Applied)>, ApplyError> {
    let target = match up_to {
        Some(p) => p,
        None => sqlx::query_scalar("select position from log_head").fetch_one(pool).await?,
    };
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let mut batches = Vec::new();
    let memo = AccountsMemo::default();
    loop {
        let lowest: Option<i64> =
            sqlx::query_scalar("select min(position) from projection_checkpoints where name = any($1)")
                .bind(&names)
                .fetch_one(pool)
                .await?;
        let lowest = lowest.unwrap_or(target);
        if lowest >= target {
            if batches.is_empty() {
                batches.extend(
                    projections.iter().map(|p| (*p, Applied { from: lowest, position: lowest, ..Applied::default() })),
                );
            }
            return Ok(batches);
        }
        let store = ledger_infrastructure::EventStore::new(pool.clone());
        let page = store.read_all(lowest, batch_max.min(target - lowest)).await?;
        batches.extend(apply_delivered_all(pool, &memo, projections, &page).await?);
    }
}
