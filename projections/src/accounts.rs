//! The accounts projection: `accounts_view` (balance, available, holds, owner) and
//! `account_entries` (the statement, with `balance_after`). The state is folded with
//! the domain's own `evolve`, so the view cannot drift from the write side's rules.

use crate::apply::{ApplyError, Tables};
use ledger_domain::{Account, AccountStatus, Aggregate, Currency, Event, Money, StreamState, evolve};
use ledger_infrastructure::RecordedEvent;
use sqlx::{Postgres, Transaction};
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// A statement line: one per account per money-moving event, with the account's net.
struct Entry {
    account_id: Uuid,
    position: i64,
    kind: &'static str,
    movement_id: Uuid,
    amount: i64,
    /// `numeric`, as text (see `queries::wide_money`).
    balance_after: String,
    /// The other side when all of the account's postings in the event share one.
    counterparty: Option<Uuid>,
    occurred_at: chrono::DateTime<chrono::Utc>,
    effective_at: chrono::DateTime<chrono::Utc>,
}

/// Accounts as the view holds them: each one's state and the position it was last
/// written at.
pub type Known = HashMap<Uuid, (StreamState, i64)>;

/// The accounts this process's projector last committed to the live view, with the
/// accounts checkpoint's position and stamp that commit left, so that the next batch
/// neither reads them back nor folds them again.
///
/// It holds only while nobody else wrote the view: a batch takes it for the position
/// and stamp it read under the checkpoint's row lock, and gets it only when both are
/// exactly what the last commit through this memo left. The stamp is the row's `xmin`
/// (the transaction that wrote it last, whoever that was) and its `updated_at`: another
/// process's projector, a rebuild's switch (even one that ends where the view was), a
/// reset, or a history replayed to the same position after a failover all leave
/// another. A batch that fails leaves the memo empty; one that commits puts back what it
/// wrote. Every update is still conditioned on the version its state came from
/// (`write_accounts`), so a state remembered wrongly fails the batch rather than being
/// written. The read models are repaired by a rebuild, never by hand while projectors
/// run (docs/ARCHITECTURE.md, step 4).
///
/// At most [`AccountsMemo::ACCOUNTS_MAX`] accounts are kept, without their owner and
/// metadata (written only by an erasure, whose accounts are always read from the view):
/// a few hundred bytes each, whatever a client puts in them.
#[derive(Default)]
pub struct AccountsMemo {
    inner: std::sync::Mutex<Option<(i64, String, Known)>>,
}

/// The stamp of a `projection_checkpoints` row `c`, as SQL (see [`AccountsMemo`]): a
/// literal, so that the statements naming it are too.
macro_rules! checkpoint_stamp {
    () => {
        "c.xmin::text || '/' || (extract(epoch from c.updated_at) * 1000000)::bigint::text"
    };
}
pub(crate) use checkpoint_stamp;

impl AccountsMemo {
    pub const ACCOUNTS_MAX: usize = 10_000;

    /// The accounts as of the checkpoint at `position` with `stamp`, taken out (none
    /// unless the last commit through this memo left exactly that).
    pub(crate) fn take(&self, position: i64, stamp: &str) -> Known {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some((at, stamped, known)) if at == position && stamped == stamp => known,
            _ => Known::new(),
        }
    }

    /// After a commit that left the checkpoint at `position` with `stamp`: `known` as
    /// the view now holds it, `touched` the accounts that batch wrote (kept first when
    /// there are too many).
    pub(crate) fn put(&self, position: i64, stamp: String, mut known: Known, touched: &[Uuid]) {
        if known.len() > Self::ACCOUNTS_MAX {
            let mut kept = Known::with_capacity(touched.len().min(Self::ACCOUNTS_MAX));
            for id in touched.iter().take(Self::ACCOUNTS_MAX) {
                if let Some(state) = known.remove(id) {
                    kept.insert(*id, state);
                }
            }
            known = kept;
        }
        // Only this batch's accounts can be whole: those before it were stripped when
        // their own batch put them.
        for id in touched {
            if let Some((StreamState { aggregate: Aggregate::Account(a), .. }, _)) = known.get_mut(id)
                && !a.erased
            {
                a.owner = None;
                a.metadata = None;
            }
        }
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some((position, stamp, known));
    }
}

fn kind(event: &Event) -> &'static str {
    match event {
        Event::DepositRecorded(_) => "deposit",
        Event::TransferPosted(t) if t.reverses.is_some() => "reversal",
        Event::TransferPosted(_) => "transfer",
        Event::TransactionPosted(t) if t.reverses.is_some() => "reversal",
        Event::TransactionPosted(_) => "transaction",
        Event::HoldCaptured(_) => "capture",
        Event::WithdrawalSettled(_) => "withdrawal",
        Event::WithdrawalReconciled(_) => "reconciliation",
        _ => "other",
    }
}

type Row = (
    Uuid,
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    bool,
    Option<serde_json::Value>,
    i64,
    i64,
    Option<String>,
    bool,
);

async fn load(tx: &mut Transaction<'_, Postgres>, t: &Tables, ids: &[Uuid]) -> Result<Known, ApplyError> {
    let sql = format!(
        // One primary-key probe per id (`offset 0` keeps the planner from turning the
        // probes into a scan that compares every row with every id).
        "select v.id, v.currency, v.owner, v.status, v.balance::text, v.pending_holds::text, v.overdraft_limit, v.system,
                v.metadata, v.version, v.position, v.subject, v.erased
         from unnest($1::uuid[]) as k(id) join lateral (select * from {} x where x.id = k.id offset 0) v on true",
        t.name("accounts_view")
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(&mut **tx).await?;
    let mut states = HashMap::with_capacity(rows.len());
    for (id, currency, owner, status, balance, holds, limit, system, metadata, version, position, subject, erased) in
        rows
    {
        let account = Account {
            id,
            currency: Currency::parse(&currency).expect("the view stores valid currencies"),
            owner,
            overdraft_limit: Money::new(limit),
            system,
            status: if status == "closed" { AccountStatus::Closed } else { AccountStatus::Open },
            balance: crate::queries::wide_money(&balance)?,
            pending_holds: crate::queries::wide_money(&holds)?,
            metadata,
            subject,
            erased,
        };
        states.insert(id, (StreamState { version, aggregate: Aggregate::Account(account) }, position));
    }
    Ok(states)
}

/// Applies events (in position order, above the checkpoint) to the accounts view. A
/// closed period's balances are taken as its `PeriodClosed` event is applied: the
/// events up to it are applied first, so the view holds exactly the accounts and
/// entries of the log up to it.
///
/// `known` holds accounts as the view has them (see [`AccountsMemo`]): those are not
/// read again, and every account the events touch is in it afterwards, as written.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    events: &[RecordedEvent],
    known: &mut Known,
) -> Result<Vec<Uuid>, ApplyError> {
    let mut ids = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let mut closes = None;
        let mut end = rest.len();
        for (i, r) in rest.iter().enumerate() {
            if let Event::PeriodClosed(e) = r.event_ref()? {
                closes = Some(e.clone());
                end = i + 1;
                break;
            }
        }
        let (segment, later) = rest.split_at(end);
        ids.extend(apply_segment(tx, t, segment, known).await?);
        if let Some(period) = closes {
            close_period(tx, t, &period).await?;
        }
        rest = later;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Keeps a closed period's balances: every account in the view (those opened up to
/// the close) with the sum of its entries effective at or before `closes_at`. Balances
/// per currency sum to zero (every event's postings do); a period whose do not is
/// reported, loudly.
async fn close_period(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    period: &ledger_domain::events::PeriodClosed,
) -> Result<(), ApplyError> {
    let sql = format!(
        "insert into {balances} (period_id, account_id, currency, balance)
         select $1, v.id, v.currency, coalesce(s.total, 0)
         from {accounts} v
         left join (select account_id, sum(amount) as total from {entries} where effective_at <= $2
                    group by account_id) s on s.account_id = v.id
         on conflict do nothing",
        balances = t.name("period_balances"),
        accounts = t.name("accounts_view"),
        entries = t.name("account_entries"),
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(period.period_id).bind(period.closes_at).execute(&mut **tx).await?;
    let sql = format!(
        "select currency from {} where period_id = $1 group by currency having sum(balance) <> 0",
        t.name("period_balances")
    );
    let unbalanced: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(period.period_id).fetch_all(&mut **tx).await?;
    if !unbalanced.is_empty() {
        tracing::error!(period = %period.period_id, ?unbalanced, "a closed period's balances do not sum to zero");
        metrics::counter!("ledger_period_unbalanced_total").increment(1);
    }
    Ok(())
}

async fn apply_segment(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    events: &[RecordedEvent],
    states: &mut Known,
) -> Result<Vec<Uuid>, ApplyError> {
    let decoded: Vec<(&RecordedEvent, &Event)> =
        events.iter().map(|r| Ok((r, r.event_ref()?))).collect::<Result<_, serde_json::Error>>()?;
    let ids: BTreeSet<Uuid> = decoded.iter().flat_map(|(_, e)| e.accounts()).collect();
    let ids: Vec<Uuid> = ids.into_iter().collect();
    // An erasure writes the view's owner and metadata from the state it evolves: that
    // state is read from the view itself, never remembered (the view's are the truth
    // for those two, e.g. after `privacy::legacy` sealed them in place).
    for (_, event) in &decoded {
        if let Event::SubjectErased(e) = event {
            for id in &e.accounts {
                states.remove(id);
            }
        }
    }
    let missing: Vec<Uuid> = ids.iter().filter(|id| !states.contains_key(id)).copied().collect();
    if !missing.is_empty() {
        states.extend(load(tx, t, &missing).await?);
    }
    // Each account's version in the view before this segment (0: not in the view).
    let was: HashMap<Uuid, i64> =
        ids.iter().map(|id| (*id, states.get(id).map_or(0, |(state, _)| state.version))).collect();
    let mut entries = Vec::new();
    for (recorded, event) in &decoded {
        for id in event.accounts() {
            let (state, _) = states.remove(&id).unwrap_or_default();
            let version = state.version + 1;
            states.insert(id, (evolve(state, id, version, event), recorded.position));
        }
        for (account_id, amount, counterparty) in net_entries(event) {
            let Some((StreamState { aggregate: Aggregate::Account(a), .. }, _)) = states.get(&account_id) else {
                unreachable!("a posting's account was just evolved");
            };
            entries.push(Entry {
                account_id,
                position: recorded.position,
                kind: kind(event),
                movement_id: event.movement_id().expect("money-moving events have a movement id"),
                amount,
                balance_after: a.balance.minor_units().to_string(),
                counterparty,
                occurred_at: recorded.recorded_at,
                effective_at: event.effective_at().unwrap_or(recorded.recorded_at),
            });
        }
    }
    write_accounts(tx, t, &ids, &was, states).await?;
    write_entries(tx, t, entries).await?;
    Ok(ids)
}

async fn write_accounts(
    tx: &mut Transaction<'_, Postgres>,
    t: &Tables,
    ids: &[Uuid],
    was: &HashMap<Uuid, i64>,
    states: &Known,
) -> Result<(), ApplyError> {
    let mut cols: (Vec<Uuid>, Vec<String>, Vec<Option<String>>, Vec<&str>, Vec<String>, Vec<String>) =
        Default::default();
    let mut more: (Vec<i64>, Vec<bool>, Vec<Option<serde_json::Value>>, Vec<i64>, Vec<i64>) = Default::default();
    let mut personal: (Vec<Option<String>>, Vec<bool>) = Default::default();
    let mut before: Vec<i64> = Vec::new();
    for id in ids {
        let Some((StreamState { version, aggregate: Aggregate::Account(a) }, position)) = states.get(id) else {
            continue;
        };
        cols.0.push(a.id);
        cols.1.push(a.currency.to_string());
        cols.2.push(a.owner.clone());
        cols.3.push(if a.status == AccountStatus::Closed { "closed" } else { "open" });
        cols.4.push(a.balance.minor_units().to_string());
        cols.5.push(a.pending_holds.minor_units().to_string());
        more.0.push(customer_units(a.overdraft_limit));
        more.1.push(a.system);
        more.2.push(a.metadata.clone());
        more.3.push(*version);
        more.4.push(*position);
        personal.0.push(a.subject.clone());
        personal.1.push(a.erased);
        before.push(was.get(id).copied().unwrap_or(0));
    }
    if cols.0.is_empty() {
        return Ok(());
    }
    let expected_new = before.iter().filter(|w| **w == 0).count() as i64;
    let expected_moved = before.len() as i64 - expected_new;
    // Each account is inserted when it was in no view (version 0), and otherwise moved
    // on only from the version its state was folded from (`folded_from`, migration
    // 0030): an account anyone else moved (or a state remembered wrongly) is left as it
    // is and not counted, and an account that should have been there is counted as
    // inserted; either fails the batch, which is then applied again from the view.
    // Owner and metadata change only with an erasure.
    let sql = format!(
        "with written as (
             insert into {0} (id, currency, owner, status, balance, pending_holds, overdraft_limit, system,
                              metadata, version, position, subject, erased, folded_from, updated_at)
             select *, now() from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[],
                                         $7::int8[], $8::bool[], $9::jsonb[], $10::int8[], $11::int8[], $12::text[],
                                         $13::bool[], $14::int8[])
             on conflict (id) do update set status = excluded.status, balance = excluded.balance,
                 pending_holds = excluded.pending_holds, version = excluded.version,
                 position = excluded.position, updated_at = excluded.updated_at,
                 erased = excluded.erased, folded_from = excluded.folded_from,
                 owner = case when excluded.erased then excluded.owner else {0}.owner end,
                 metadata = case when excluded.erased then excluded.metadata else {0}.metadata end
             where {0}.version = excluded.folded_from
             returning xmax = 0 as inserted
         )
         select count(*) filter (where inserted), count(*) filter (where not inserted) from written",
        t.name("accounts_view")
    );
    let (inserted, moved): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .bind(cols.5)
        .bind(more.0)
        .bind(more.1)
        .bind(more.2)
        .bind(more.3)
        .bind(more.4)
        .bind(personal.0)
        .bind(personal.1)
        .bind(before)
        .fetch_one(&mut **tx)
        .await?;
    if (inserted, moved) != (expected_new, expected_moved) {
        return Err(ApplyError::Moved { expected: (expected_new, expected_moved), found: (inserted, moved) });
    }
    Ok(())
}

/// Each account an event posts to, in order: its net amount, and its counterparty when
/// all of its postings in the event have the same other side (else none). An event
/// has its legs in pairs (`postings` is `from, to, from, to, …`).
fn net_entries(event: &Event) -> Vec<(Uuid, i64, Option<Uuid>)> {
    let postings = event.postings();
    let mut out: Vec<(Uuid, i64, Option<Uuid>)> = Vec::new();
    for pair in postings.chunks(2) {
        let [a, b] = pair else { continue };
        for (p, other) in [(a, b.account_id), (b, a.account_id)] {
            match out.iter_mut().find(|(id, _, _)| *id == p.account_id) {
                Some((_, amount, counterparty)) => {
                    *amount += customer_units(p.delta);
                    // A second counterparty: none to name (and none once it is gone).
                    if *counterparty != Some(other) {
                        *counterparty = None;
                    }
                }
                None => out.push((p.account_id, customer_units(p.delta), Some(other))),
            }
        }
    }
    out
}

/// A value that fits in 64 bits by construction (a posting's delta, an overdraft limit:
/// amounts of at most 10^15, checked at the edge); balances and holds are kept whole.
fn customer_units(m: Money) -> i64 {
    m.to_i64().expect("amounts, holds and limits fit in 64 bits")
}

async fn write_entries(tx: &mut Transaction<'_, Postgres>, t: &Tables, entries: Vec<Entry>) -> Result<(), ApplyError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut c: (
        Vec<Uuid>,
        Vec<i64>,
        Vec<&str>,
        Vec<Uuid>,
        Vec<i64>,
        Vec<String>,
        Vec<Option<Uuid>>,
        Vec<chrono::DateTime<chrono::Utc>>,
        Vec<chrono::DateTime<chrono::Utc>>,
    ) = Default::default();
    for e in entries {
        c.0.push(e.account_id);
        c.1.push(e.position);
        c.2.push(e.kind);
        c.3.push(e.movement_id);
        c.4.push(e.amount);
        c.5.push(e.balance_after);
        c.6.push(e.counterparty);
        c.7.push(e.occurred_at);
        c.8.push(e.effective_at);
    }
    let sql = format!(
        "insert into {} (account_id, position, kind, movement_id, amount, balance_after, counterparty, occurred_at,
                        effective_at)
         select * from unnest($1::uuid[], $2::int8[], $3::text[], $4::uuid[], $5::int8[], $6::numeric[], $7::uuid[],
                              $8::timestamptz[], $9::timestamptz[])",
        t.name("account_entries")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(c.0)
        .bind(c.1)
        .bind(c.2)
        .bind(c.3)
        .bind(c.4)
        .bind(c.5)
        .bind(c.6)
        .bind(c.7)
        .bind(c.8)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{AccountsMemo, Known};
    use ledger_domain::StreamState;
    use uuid::Uuid;

    fn known(n: usize) -> (Known, Vec<Uuid>) {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        (ids.iter().map(|id| (*id, (StreamState::default(), 1))).collect(), ids)
    }

    /// Taken only for the position and stamp it was put at, and only once; more than
    /// the bound keeps the last batch's accounts alone.
    #[test]
    fn a_memo_is_taken_once_and_only_where_it_was_left() {
        let memo = AccountsMemo::default();
        let (s, other) = ("17/1", "18/1");
        assert!(memo.take(0, s).is_empty(), "nothing before any commit");
        let (states, ids) = known(3);
        memo.put(9, s.to_owned(), states, &ids[..1]);
        assert!(memo.take(8, s).is_empty(), "another position: not used");
        assert!(memo.take(9, s).is_empty(), "and gone once looked at for another");
        let (states, ids) = known(3);
        memo.put(9, s.to_owned(), states, &ids[..1]);
        assert!(memo.take(9, other).is_empty(), "the same position written by another: not used");
        let (states, ids) = known(3);
        memo.put(9, s.to_owned(), states, &ids[..1]);
        assert_eq!(memo.take(9, s).len(), 3);
        assert!(memo.take(9, s).is_empty(), "taken: a second batch meanwhile reads the view");
        let (states, ids) = known(AccountsMemo::ACCOUNTS_MAX + 1);
        memo.put(10, s.to_owned(), states, &ids[5..7]);
        let kept = memo.take(10, s);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(&ids[5]) && kept.contains_key(&ids[6]));
        // What "a few hundred bytes" an account rests on: the entry itself (an
        // account's subject, its one other allocation, is at most 128 characters).
        let entry = std::mem::size_of::<(Uuid, (StreamState, i64))>();
        assert!(entry <= 320, "a memo entry is {entry} bytes");
    }
}
