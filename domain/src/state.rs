//! Stream state and `evolve`: how each event changes the streams it belongs to.
//! `evolve` makes no choices and cannot fail; it asserts the invariants instead.

use crate::effective::HoldChange;
use crate::events::*;
use crate::money::{Amount, Currency, Money};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Open,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Uuid,
    pub currency: Currency,
    pub owner: Option<String>,
    pub overdraft_limit: Money,
    pub system: bool,
    pub status: AccountStatus,
    pub balance: Money,
    pub pending_holds: Money,
    pub metadata: Option<serde_json::Value>,
    /// Whose personal values `owner` and the `pii.` metadata are (sealed under that
    /// subject's key); `None` for system accounts and accounts opened before subjects
    /// existed, whose subject is their own id.
    #[serde(default)]
    pub subject: Option<String>,
    /// The subject was erased: `owner` and the `pii.` metadata are gone.
    #[serde(default)]
    pub erased: bool,
}

/// The metadata keys that hold personal values (API.md v1.2 "Personal data").
pub const PERSONAL_METADATA_PREFIX: &str = "pii.";

/// Whether a metadata key holds a personal value.
pub fn is_personal_key(key: &str) -> bool {
    key.starts_with(PERSONAL_METADATA_PREFIX)
}

/// The person or company accounts belong to: the accounts opened for it since its last
/// erasure, and what that erasure covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub subject: String,
    /// Accounts whose personal values are readable (opened since the last erasure).
    pub accounts: Vec<Uuid>,
    /// The accounts the last erasure covered (empty if never erased).
    pub erased: Vec<Uuid>,
}

impl Account {
    /// The account's subject as the API shows it: its own id when none was given.
    pub fn subject_or_id(&self) -> String {
        self.subject.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// Balance less the funds held for pending withdrawals.
    pub fn available(&self) -> Money {
        self.balance.checked_sub(self.pending_holds).expect("holds are bounded by amounts that passed the funds check")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    pub reverses: Option<Uuid>,
    pub reason: Option<String>,
    pub reversed_by: Option<Uuid>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a hold is: `pending` until captured, voided or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Pending,
    Captured,
    Voided,
    Expired,
}

/// Funds reserved on one account for another (API.md v1.1 "Holds").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: Uuid,
    pub account_id: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub status: HoldStatus,
    pub captured_amount: Option<Amount>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// A transaction of many postings (API.md v1.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: Uuid,
    pub postings: Vec<crate::events::Leg>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reverses: Option<Uuid>,
    pub reason: Option<String>,
    pub reversed_by: Option<Uuid>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalStatus {
    Pending,
    Settled,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub destination: String,
    pub status: WithdrawalStatus,
    pub provider_ref: Option<String>,
    pub failure_reason: Option<String>,
    /// The open dead letter of its payout, if it is dead-lettered.
    pub dead_letter: Option<Uuid>,
    /// What left the account for it, once settled (reconciliation may correct it).
    pub settled_amount: Option<Money>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// The version of `evolve` and of the state it folds into. Bump it whenever either
/// changes: snapshots taken under another version are then ignored and rebuilt.
pub const EVOLVE_VERSION: i32 = 4;

/// What a stream is, once its first event has been seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregate {
    #[default]
    Empty,
    Account(Account),
    Transfer(Transfer),
    Transaction(Transaction),
    Hold(Hold),
    Withdrawal(Withdrawal),
    /// An API token (name and role; the secret is not part of the state).
    Token {
        name: String,
        role: crate::access::Role,
    },
    /// A ledger of the directory (only in the log of `default`).
    Ledger {
        name: String,
    },
    Reconciliation(Reconciliation),
    /// A subject of personal data (its own stream, `subject_stream_id`).
    Subject(Subject),
    /// The chain's own records (`chain_stream_id`): how often it was re-anchored.
    Chain {
        reanchored: u64,
    },
    /// The ledger's closed periods (`periods_stream_id`): the books are closed up to
    /// `closed_through` (the last period's `closes_at`).
    Periods {
        closed_through: chrono::DateTime<chrono::Utc>,
        count: u64,
    },
}

/// A reconciliation run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub id: Uuid,
    pub finished: bool,
    pub matched: u64,
    pub mismatches: u64,
}

/// The folded state of one stream, with the version of its last event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub version: i64,
    pub aggregate: Aggregate,
}

fn add(a: Money, b: Money) -> Money {
    a.checked_add(b).expect("decide rejects any command whose balances would overflow")
}

fn sub(a: Money, b: Money) -> Money {
    a.checked_sub(b).expect("decide rejects any command whose balances would overflow")
}

/// Applies `event`, recorded as `version` of stream `stream_id`, to that stream's state.
pub fn evolve(state: StreamState, stream_id: Uuid, version: i64, event: &Event) -> StreamState {
    assert_eq!(version, state.version + 1, "stream {stream_id}: versions must have no gaps");
    let aggregate = match state.aggregate {
        Aggregate::Empty => created(stream_id, event),
        Aggregate::Account(a) => Some(Aggregate::Account(evolve_account(a, event))),
        Aggregate::Transfer(t) => evolve_transfer(t, event).map(Aggregate::Transfer),
        Aggregate::Transaction(t) => evolve_transaction(t, event).map(Aggregate::Transaction),
        Aggregate::Hold(h) => evolve_hold(h, event).map(Aggregate::Hold),
        Aggregate::Withdrawal(w) => evolve_withdrawal(w, event).map(Aggregate::Withdrawal),
        Aggregate::Reconciliation(r) => evolve_reconciliation(r, event).map(Aggregate::Reconciliation),
        Aggregate::Subject(s) => evolve_subject(s, event).map(Aggregate::Subject),
        Aggregate::Chain { reanchored } => match event {
            Event::ChainReanchored(_) => Some(Aggregate::Chain { reanchored: reanchored + 1 }),
            _ => None,
        },
        Aggregate::Periods { closed_through, count } => match event {
            Event::PeriodClosed(e) => {
                assert!(e.closes_at > closed_through, "periods close in order");
                Some(Aggregate::Periods { closed_through: e.closes_at, count: count + 1 })
            }
            _ => None,
        },
        Aggregate::Token { .. } | Aggregate::Ledger { .. } => None,
    };
    let aggregate = aggregate.unwrap_or_else(|| {
        panic!("stream {stream_id}: event {} cannot apply at version {version}", event.event_type())
    });
    StreamState { version, aggregate }
}

/// The aggregate a stream's first event creates (`None`: that event creates nothing).
fn created(stream_id: Uuid, event: &Event) -> Option<Aggregate> {
    Some(match event {
        Event::AccountOpened(e) if e.account_id != stream_id => Aggregate::Subject(Subject {
            subject: e.subject.clone()?,
            accounts: vec![e.account_id],
            erased: Vec::new(),
        }),
        Event::AccountOpened(e) => Aggregate::Account(Account {
            id: e.account_id,
            currency: e.currency,
            owner: e.owner.clone(),
            overdraft_limit: e.overdraft_limit,
            system: e.system,
            status: AccountStatus::Open,
            balance: Money::ZERO,
            pending_holds: Money::ZERO,
            metadata: e.metadata.clone(),
            subject: e.subject.clone(),
            erased: false,
        }),
        Event::TransferPosted(e) if e.transfer_id == stream_id => Aggregate::Transfer(Transfer {
            id: e.transfer_id,
            from: e.from,
            to: e.to,
            amount: e.amount,
            currency: e.currency,
            reference: e.reference.clone(),
            reverses: e.reverses,
            reason: e.reason.clone(),
            reversed_by: None,
            metadata: e.metadata.clone(),
            effective_at: e.effective_at,
        }),
        Event::TransactionPosted(e) if e.transaction_id == stream_id => Aggregate::Transaction(Transaction {
            id: e.transaction_id,
            postings: e.postings.clone(),
            reference: e.reference.clone(),
            metadata: e.metadata.clone(),
            effective_at: e.effective_at,
            reverses: e.reverses,
            reason: e.reason.clone(),
            reversed_by: None,
        }),
        Event::HoldPlaced(e) if e.hold_id == stream_id => Aggregate::Hold(Hold {
            id: e.hold_id,
            account_id: e.account_id,
            to: e.to,
            amount: e.amount,
            currency: e.currency,
            status: HoldStatus::Pending,
            captured_amount: None,
            expires_at: e.expires_at,
            reference: e.reference.clone(),
            metadata: e.metadata.clone(),
        }),
        Event::WithdrawalRequested(e) => Aggregate::Withdrawal(Withdrawal {
            id: e.withdrawal_id,
            account_id: e.account_id,
            amount: e.amount,
            currency: e.currency,
            destination: e.destination.clone(),
            status: WithdrawalStatus::Pending,
            provider_ref: None,
            failure_reason: None,
            dead_letter: None,
            settled_amount: None,
            metadata: e.metadata.clone(),
        }),
        Event::ReconciliationStarted(e) => {
            Aggregate::Reconciliation(Reconciliation { id: e.run_id, finished: false, matched: 0, mismatches: 0 })
        }
        Event::ChainReanchored(_) => Aggregate::Chain { reanchored: 1 },
        Event::PeriodClosed(e) => Aggregate::Periods { closed_through: e.closes_at, count: 1 },
        Event::TokenIssued(e) => Aggregate::Token { name: e.name.clone(), role: e.role },
        Event::LedgerCreated(e) => Aggregate::Ledger { name: e.name.clone() },
        _ => return None,
    })
}

/// A transfer's stream sees one more event: the reversal that reverses it.
fn evolve_transfer(mut t: Transfer, event: &Event) -> Option<Transfer> {
    let Event::TransferPosted(e) = event else { return None };
    assert_eq!(e.reverses, Some(t.id), "only a reversal touches another transfer's stream");
    assert!(t.reversed_by.is_none(), "transfer {} reversed twice", t.id);
    t.reversed_by = Some(e.transfer_id);
    Some(t)
}

/// A transaction's stream sees one more event: the transaction that reverses it.
fn evolve_transaction(mut t: Transaction, event: &Event) -> Option<Transaction> {
    let Event::TransactionPosted(e) = event else { return None };
    assert_eq!(e.reverses, Some(t.id), "only a reversal touches another transaction's stream");
    assert!(t.reversed_by.is_none(), "transaction {} reversed twice", t.id);
    t.reversed_by = Some(e.transaction_id);
    Some(t)
}

/// A hold ends once: captured, voided or expired.
fn evolve_hold(mut h: Hold, event: &Event) -> Option<Hold> {
    let status = match event {
        Event::HoldCaptured(e) => {
            h.captured_amount = Some(e.amount);
            HoldStatus::Captured
        }
        Event::HoldVoided(_) => HoldStatus::Voided,
        Event::HoldExpired(_) => HoldStatus::Expired,
        _ => return None,
    };
    assert_eq!(h.status, HoldStatus::Pending, "hold {} ended twice", h.id);
    h.status = status;
    Some(h)
}

/// A withdrawal: pending until settled or failed; its payout may be dead-lettered and
/// redriven meanwhile; reconciliation may correct it afterwards.
fn evolve_withdrawal(mut w: Withdrawal, event: &Event) -> Option<Withdrawal> {
    match event {
        Event::WithdrawalSettled(e) => {
            assert_eq!(w.status, WithdrawalStatus::Pending, "withdrawal {} settled when not pending", w.id);
            w.status = WithdrawalStatus::Settled;
            w.provider_ref = e.provider_ref.clone();
            w.dead_letter = None;
            w.settled_amount = Some(e.amount.money());
        }
        Event::WithdrawalFailed(e) => {
            assert_eq!(w.status, WithdrawalStatus::Pending, "withdrawal {} failed when not pending", w.id);
            w.status = WithdrawalStatus::Failed;
            w.failure_reason = Some(e.reason.clone());
            w.dead_letter = None;
        }
        Event::PayoutDeadLettered(e) => {
            assert!(w.dead_letter.is_none(), "withdrawal {} dead-lettered twice", w.id);
            w.dead_letter = Some(e.dead_letter_id);
        }
        Event::PayoutRedriven(e) => {
            assert_eq!(w.dead_letter, Some(e.dead_letter_id), "withdrawal {}: redrive of another dead letter", w.id);
            w.dead_letter = None;
        }
        Event::WithdrawalReconciled(e) => {
            w.settled_amount = match e.status_after {
                WithdrawalStatus::Settled => Some(add(w.settled_amount.unwrap_or(Money::ZERO), e.delta)),
                _ => None,
            };
            w.status = e.status_after;
            w.dead_letter = None;
            if e.provider_ref.is_some() {
                w.provider_ref = e.provider_ref.clone();
            }
        }
        _ => return None,
    }
    Some(w)
}

/// A reconciliation run: its mismatches, then its end.
fn evolve_reconciliation(mut r: Reconciliation, event: &Event) -> Option<Reconciliation> {
    match event {
        Event::ReconciliationMismatchFound(_) => {
            assert!(!r.finished, "reconciliation {} found a mismatch after finishing", r.id);
            r.mismatches += 1;
        }
        Event::ReconciliationFinished(e) => {
            r.finished = true;
            r.matched = e.matched;
        }
        _ => return None,
    }
    Some(r)
}

fn evolve_account(mut a: Account, event: &Event) -> Account {
    for posting in event.postings() {
        if posting.account_id == a.id {
            assert_eq!(posting.currency, a.currency, "account {}: posting in a foreign currency", a.id);
            a.balance = add(a.balance, posting.delta);
        }
    }
    if let Event::AccountClosed(_) = event {
        a.status = AccountStatus::Closed;
    }
    if let Event::SubjectErased(e) = event {
        assert!(e.accounts.contains(&a.id), "account {}: erased by another subject's event", a.id);
        a.erased = true;
        a.owner = None;
        a.metadata = a.metadata.take().map(without_personal_keys);
    }
    match event.hold_change(a.id) {
        Some(HoldChange::Placed { amount, .. }) => a.pending_holds = add(a.pending_holds, amount),
        Some(HoldChange::Released { amount, .. }) => a.pending_holds = sub(a.pending_holds, amount),
        None => {}
    }
    assert!(a.pending_holds >= Money::ZERO, "account {}: negative holds", a.id);
    a
}

/// `metadata` without its personal keys.
pub fn without_personal_keys(mut metadata: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(map) = &mut metadata {
        map.retain(|k, _| !is_personal_key(k));
    }
    metadata
}

fn evolve_subject(mut s: Subject, event: &Event) -> Option<Subject> {
    match event {
        Event::AccountOpened(e) if e.subject.as_deref() == Some(s.subject.as_str()) => s.accounts.push(e.account_id),
        Event::SubjectErased(e) if e.subject == s.subject => {
            assert_eq!(e.accounts, s.accounts, "subject erasure must cover exactly its readable accounts");
            s.erased = std::mem::take(&mut s.accounts);
        }
        _ => return None,
    }
    Some(s)
}

/// A set of folded streams: the state a decision needs (loaded for one command) or,
/// in tests and verification, the whole ledger folded from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    streams: BTreeMap<Uuid, StreamState>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Records a stream's state as loaded from the store.
    pub fn insert(&mut self, stream_id: Uuid, state: StreamState) {
        self.streams.insert(stream_id, state);
    }

    pub fn is_loaded(&self, stream_id: Uuid) -> bool {
        self.streams.contains_key(&stream_id)
    }

    pub fn stream(&self, stream_id: Uuid) -> Option<&StreamState> {
        self.streams.get(&stream_id)
    }

    pub fn streams(&self) -> impl Iterator<Item = (&Uuid, &StreamState)> {
        self.streams.iter()
    }

    /// The streams, by value (a committed batch's states handed to a cache uncopied).
    pub fn into_streams(self) -> impl Iterator<Item = (Uuid, StreamState)> {
        self.streams.into_iter()
    }

    pub fn account(&self, id: Uuid) -> Option<&Account> {
        match self.streams.get(&id).map(|s| &s.aggregate) {
            Some(Aggregate::Account(a)) => Some(a),
            _ => None,
        }
    }

    pub fn subject(&self, subject: &str) -> Option<&Subject> {
        match self.streams.get(&crate::events::subject_stream_id(subject)).map(|s| &s.aggregate) {
            Some(Aggregate::Subject(s)) if s.subject == subject => Some(s),
            _ => None,
        }
    }

    /// The business time the books are closed up to, if a period was closed (the
    /// periods stream must be loaded: commands with a stated business time read it).
    pub fn closed_through(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.streams.get(&crate::events::periods_stream_id()).map(|s| &s.aggregate) {
            Some(Aggregate::Periods { closed_through, .. }) => Some(*closed_through),
            _ => None,
        }
    }

    pub fn transfer(&self, id: Uuid) -> Option<&Transfer> {
        match self.streams.get(&id).map(|s| &s.aggregate) {
            Some(Aggregate::Transfer(t)) => Some(t),
            _ => None,
        }
    }

    pub fn hold(&self, id: Uuid) -> Option<&Hold> {
        match self.streams.get(&id).map(|s| &s.aggregate) {
            Some(Aggregate::Hold(h)) => Some(h),
            _ => None,
        }
    }

    pub fn transaction(&self, id: Uuid) -> Option<&Transaction> {
        match self.streams.get(&id).map(|s| &s.aggregate) {
            Some(Aggregate::Transaction(t)) => Some(t),
            _ => None,
        }
    }

    pub fn withdrawal(&self, id: Uuid) -> Option<&Withdrawal> {
        match self.streams.get(&id).map(|s| &s.aggregate) {
            Some(Aggregate::Withdrawal(w)) => Some(w),
            _ => None,
        }
    }

    pub fn version(&self, stream_id: Uuid) -> i64 {
        self.streams.get(&stream_id).map_or(0, |s| s.version)
    }

    /// Applies an event recorded as `version` of one stream to that stream only (used
    /// when folding a stream read from the store).
    pub fn apply_to_stream(&mut self, stream_id: Uuid, version: i64, event: &Event) {
        let state = self.streams.remove(&stream_id).unwrap_or_default();
        self.streams.insert(stream_id, evolve(state, stream_id, version, event));
    }

    /// Applies an event to every stream it belongs to, each at its next version.
    pub fn apply(&mut self, event: &Event) {
        let mut per_currency: BTreeMap<Currency, i128> = BTreeMap::new();
        for p in event.postings() {
            let sum = per_currency.entry(p.currency).or_default();
            *sum = sum.checked_add(p.delta.minor_units()).expect("postings are bounded amounts");
        }
        assert!(per_currency.values().all(|s| *s == 0), "event {} is not balanced", event.event_type());
        for (stream_id, _) in event.streams() {
            let state = self.streams.remove(&stream_id).unwrap_or_default();
            let version = state.version + 1;
            self.streams.insert(stream_id, evolve(state, stream_id, version, event));
        }
    }

    /// Sum of all balances per currency; zero for every currency in a sound ledger.
    pub fn balance_sums(&self) -> BTreeMap<Currency, i128> {
        let mut sums = BTreeMap::new();
        for state in self.streams.values() {
            if let Aggregate::Account(a) = &state.aggregate {
                *sums.entry(a.currency).or_insert(0i128) += a.balance.minor_units();
            }
        }
        sums
    }
}
