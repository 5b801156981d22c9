//! Events: the facts the ledger records. Every event that moves money carries both
//! legs (who loses, who gains), so a single event at a single log position keeps the
//! sum of all balances per currency at zero.

use crate::money::{Amount, Currency, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The stream of a subject (API.md v1.2 "Personal data"): the accounts it has and its
/// erasures. Derived from the subject in the reserved space (UUID version 8), so no
/// client can name it and no look-up is needed to find it.
pub fn subject_stream_id(subject: &str) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest([b"ledger-subject\0".as_slice(), subject.as_bytes()].concat());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

/// The stream of the chain's own records ([`ChainReanchored`]), in the reserved space.
pub fn chain_stream_id() -> Uuid {
    Uuid::new_v8(*b"ledger-chain\0\0\0\0")
}

/// The stream of the ledger's closed periods ([`PeriodClosed`], API.md v1.2
/// "Verifiable log"), in the reserved space: every command with a stated business time
/// reads it, so none is decided into a closed period.
pub fn periods_stream_id() -> Uuid {
    Uuid::new_v8(*b"ledger-periods\0\0")
}

/// How the store must check a stream's version when appending an event to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// The stream must still be at the version the decision was made against.
    Exact,
    /// No decision depended on the stream's state (system accounts, which may go
    /// negative without limit); the event is appended at whatever version is next.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    pub account_id: Uuid,
    pub currency: Currency,
    pub owner: Option<String>,
    pub overdraft_limit: Money,
    pub system: bool,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The person or company the account belongs to (API.md v1.2 "Personal data"),
    /// under whose key `owner` and the `pii.` metadata are sealed. Absent in events
    /// written before subjects existed and for system accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A subject's key was destroyed: the personal values of `accounts` (sealed under it)
/// can no longer be read anywhere. Carries no personal value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectErased {
    pub subject: String,
    pub accounts: Vec<Uuid>,
    pub reason: String,
}

/// The books are closed up to the business time `closes_at`: no event effective at or
/// before it is recorded after this one (the append checks it under the head lock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodClosed {
    pub period_id: Uuid,
    pub closes_at: chrono::DateTime<chrono::Utc>,
}

/// The hash chain was recomputed from `first_position` on, once, because events written
/// by an earlier version held personal values in clear and were sealed in place
/// (docs/PRIVACY.md, "Data written before personal data was sealed"). Names the head
/// before (`before_position`, `before_hash`) and the hash at that same position after
/// (`after_hash`), so whoever kept the old head sees where and why the chain changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReanchored {
    pub reason: String,
    pub first_position: i64,
    pub before_position: i64,
    pub before_hash: String,
    pub after_hash: String,
    /// How many events were sealed in place.
    pub rewritten: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountClosed {
    pub account_id: Uuid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositRecorded {
    pub deposit_id: Uuid,
    pub account_id: Uuid,
    pub system_account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    /// The client's metadata, returned as sent (API.md "Metadata").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Business time (API.md "Effective dates"); `None`: the time it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferPosted {
    pub transfer_id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    /// Set when this transfer compensates an earlier one.
    pub reverses: Option<Uuid>,
    pub reason: Option<String>,
    /// The client's metadata, returned as sent (API.md "Metadata").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Business time (API.md "Effective dates"); `None`: the time it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One posting of a transaction: `amount` of `currency` moves from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub from: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

/// A transaction of 1..=100 postings, recorded whole at one position (API.md
/// "Transactions"); a reversal is one with every posting swapped and `reverses` set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionPosted {
    pub transaction_id: Uuid,
    pub postings: Vec<Leg>,
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Business time; `None`: the time it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TransactionPosted {
    /// The accounts the postings touch, each once, in posting order (`from` before `to`).
    pub fn accounts(&self) -> Vec<Uuid> {
        let mut accounts = Vec::with_capacity(self.postings.len() * 2);
        for leg in &self.postings {
            for id in [leg.from, leg.to] {
                if !accounts.contains(&id) {
                    accounts.push(id);
                }
            }
        }
        accounts
    }
}

/// Funds of `account_id` reserved for `to` (API.md v1.1 "Holds"): `available` drops by
/// `amount`, `balance` does not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlaced {
    pub hold_id: Uuid,
    pub account_id: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// A hold captured: `amount` (at most what was held) moves from `account_id` to `to`;
/// the whole hold (`held`) is released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCaptured {
    pub hold_id: Uuid,
    pub account_id: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub held: Amount,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A hold released without moving money: voided by a client, or expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReleased {
    pub hold_id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalRequested {
    pub withdrawal_id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub destination: String,
    /// The client's metadata, returned as sent (API.md "Metadata").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalSettled {
    pub withdrawal_id: Uuid,
    pub account_id: Uuid,
    pub system_account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub provider_ref: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalFailed {
    pub withdrawal_id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: String,
}

/// A payout exhausted its attempts; the withdrawal stays pending with its hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutDeadLettered {
    pub dead_letter_id: Uuid,
    pub withdrawal_id: Uuid,
    pub attempts: u32,
    pub last_error: String,
    /// Position of the event whose processing failed.
    pub source_position: i64,
}

/// An operator sent a dead-lettered payout back to the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutRedriven {
    pub dead_letter_id: Uuid,
    pub withdrawal_id: Uuid,
}

/// An API token was issued. Only a hash of the secret is recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token_id: Uuid,
    pub name: String,
    pub role: crate::access::Role,
    /// Hex sha256 of the token (the token itself is shown once and never stored).
    pub token_sha256: String,
    /// The ledgers the token may use (API.md "Ledgers"); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledgers: Option<Vec<String>>,
}

/// A ledger was added to the deployment's directory. Recorded only in the log of the
/// ledger `default` (on the first shard), which is the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCreated {
    pub ledger_id: Uuid,
    pub name: String,
    /// The shard (Postgres primary) that holds it for its whole life.
    pub shard: String,
    /// The Postgres schema on that shard that holds its tables.
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// Reconciliation corrected a withdrawal to the provider's record: money moves
/// between the account and the system account by `delta` (positive: out of the
/// account), and the withdrawal ends in `status_after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawalReconciled {
    pub run_id: Uuid,
    pub withdrawal_id: Uuid,
    pub account_id: Uuid,
    pub system_account_id: Uuid,
    pub currency: Currency,
    pub delta: Money,
    pub status_after: crate::state::WithdrawalStatus,
    pub provider_ref: Option<String>,
    pub provider_amount: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationStarted {
    pub run_id: Uuid,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
}

/// One difference between the provider's statement and the ledger, and how it was
/// resolved (`settled`, `adjusted`, `credited_back`, `failed` or `flagged`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationMismatchFound {
    pub run_id: Uuid,
    pub kind: crate::reconcile::MismatchKind,
    pub withdrawal_id: Option<Uuid>,
    pub reference: String,
    pub provider_ref: Option<String>,
    pub ours: Option<serde_json::Value>,
    pub theirs: Option<serde_json::Value>,
    pub resolution: crate::reconcile::Resolution,
    /// The correction left the account below its overdraft limit (reported, not refused).
    pub account_below_limit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationFinished {
    pub run_id: Uuid,
    pub matched: u64,
    pub mismatches: u64,
    pub error: Option<String>,
}

/// Every fact the ledger can record. Serialized adjacently tagged so the store can
/// keep the variant name in its own `type` column and the payload in `data`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    AccountOpened(AccountOpened),
    AccountClosed(AccountClosed),
    DepositRecorded(DepositRecorded),
    TransferPosted(TransferPosted),
    TransactionPosted(TransactionPosted),
    HoldPlaced(HoldPlaced),
    HoldCaptured(HoldCaptured),
    HoldVoided(HoldReleased),
    HoldExpired(HoldReleased),
    WithdrawalRequested(WithdrawalRequested),
    WithdrawalSettled(WithdrawalSettled),
    WithdrawalFailed(WithdrawalFailed),
    PayoutDeadLettered(PayoutDeadLettered),
    PayoutRedriven(PayoutRedriven),
    TokenIssued(TokenIssued),
    LedgerCreated(LedgerCreated),
    WithdrawalReconciled(WithdrawalReconciled),
    ReconciliationStarted(ReconciliationStarted),
    ReconciliationMismatchFound(ReconciliationMismatchFound),
    ReconciliationFinished(ReconciliationFinished),
    SubjectErased(SubjectErased),
    ChainReanchored(ChainReanchored),
    PeriodClosed(PeriodClosed),
}

/// One balance change of one account caused by an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posting {
    pub account_id: Uuid,
    pub currency: Currency,
    pub delta: Money,
}

/// Every `type` an event can have (what [`Event::event_type`] answers).
pub const EVENT_TYPES: &[&str] = &[
    "AccountOpened",
    "AccountClosed",
    "DepositRecorded",
    "TransferPosted",
    "TransactionPosted",
    "HoldPlaced",
    "HoldCaptured",
    "HoldVoided",
    "HoldExpired",
    "WithdrawalRequested",
    "WithdrawalSettled",
    "WithdrawalFailed",
    "PayoutDeadLettered",
    "PayoutRedriven",
    "TokenIssued",
    "LedgerCreated",
    "WithdrawalReconciled",
    "ReconciliationStarted",
    "ReconciliationMismatchFound",
    "ReconciliationFinished",
    "SubjectErased",
    "ChainReanchored",
    "PeriodClosed",
];

impl Event {
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::AccountOpened(_) => "AccountOpened",
            Event::AccountClosed(_) => "AccountClosed",
            Event::DepositRecorded(_) => "DepositRecorded",
            Event::TransferPosted(_) => "TransferPosted",
            Event::TransactionPosted(_) => "TransactionPosted",
            Event::HoldPlaced(_) => "HoldPlaced",
            Event::HoldCaptured(_) => "HoldCaptured",
            Event::HoldVoided(_) => "HoldVoided",
            Event::HoldExpired(_) => "HoldExpired",
            Event::WithdrawalRequested(_) => "WithdrawalRequested",
            Event::WithdrawalSettled(_) => "WithdrawalSettled",
            Event::WithdrawalFailed(_) => "WithdrawalFailed",
            Event::PayoutDeadLettered(_) => "PayoutDeadLettered",
            Event::PayoutRedriven(_) => "PayoutRedriven",
            Event::TokenIssued(_) => "TokenIssued",
            Event::LedgerCreated(_) => "LedgerCreated",
            Event::WithdrawalReconciled(_) => "WithdrawalReconciled",
            Event::ReconciliationStarted(_) => "ReconciliationStarted",
            Event::ReconciliationMismatchFound(_) => "ReconciliationMismatchFound",
            Event::ReconciliationFinished(_) => "ReconciliationFinished",
            Event::SubjectErased(_) => "SubjectErased",
            Event::ChainReanchored(_) => "ChainReanchored",
            Event::PeriodClosed(_) => "PeriodClosed",
        }
    }

    /// The streams this event belongs to, in a fixed order; the first is its primary
    /// stream. Each stream gets the next version of its own sequence.
    pub fn streams(&self) -> Vec<(Uuid, Concurrency)> {
        use Concurrency::{Any, Exact};
        match self {
            Event::AccountOpened(e) => match &e.subject {
                Some(subject) => vec![(e.account_id, Exact), (subject_stream_id(subject), Exact)],
                None => vec![(e.account_id, Exact)],
            },
            Event::SubjectErased(e) => {
                let mut streams = vec![(subject_stream_id(&e.subject), Exact)];
                streams.extend(e.accounts.iter().map(|id| (*id, Any)));
                streams
            }
            Event::ChainReanchored(_) => vec![(chain_stream_id(), Any)],
            Event::PeriodClosed(_) => vec![(periods_stream_id(), Exact)],
            Event::AccountClosed(e) => vec![(e.account_id, Exact)],
            Event::DepositRecorded(e) => vec![(e.account_id, Exact), (e.system_account_id, Any)],
            Event::TransferPosted(e) => {
                let mut streams = vec![(e.transfer_id, Exact), (e.from, Exact), (e.to, Exact)];
                if let Some(original) = e.reverses {
                    streams.push((original, Exact));
                }
                streams
            }
            Event::TransactionPosted(e) => {
                let mut streams = vec![(e.transaction_id, Exact)];
                streams.extend(e.accounts().into_iter().map(|id| (id, Exact)));
                if let Some(original) = e.reverses {
                    streams.push((original, Exact));
                }
                streams
            }
            Event::HoldPlaced(e) => vec![(e.hold_id, Exact), (e.account_id, Exact)],
            Event::HoldCaptured(e) => vec![(e.hold_id, Exact), (e.account_id, Exact), (e.to, Exact)],
            Event::HoldVoided(e) | Event::HoldExpired(e) => vec![(e.hold_id, Exact), (e.account_id, Exact)],
            Event::WithdrawalRequested(e) => vec![(e.withdrawal_id, Exact), (e.account_id, Exact)],
            Event::WithdrawalSettled(e) => {
                vec![(e.withdrawal_id, Exact), (e.account_id, Exact), (e.system_account_id, Any)]
            }
            Event::WithdrawalFailed(e) => vec![(e.withdrawal_id, Exact), (e.account_id, Exact)],
            Event::PayoutDeadLettered(e) => vec![(e.withdrawal_id, Exact)],
            Event::PayoutRedriven(e) => vec![(e.withdrawal_id, Exact)],
            Event::TokenIssued(e) => vec![(e.token_id, Exact)],
            Event::LedgerCreated(e) => vec![(e.ledger_id, Exact)],
            Event::WithdrawalReconciled(e) => {
                vec![(e.withdrawal_id, Exact), (e.account_id, Exact), (e.system_account_id, Any)]
            }
            Event::ReconciliationStarted(e) => vec![(e.run_id, Exact)],
            Event::ReconciliationMismatchFound(e) => vec![(e.run_id, Exact)],
            Event::ReconciliationFinished(e) => vec![(e.run_id, Exact)],
        }
    }

    /// The balance changes this event makes. For every event they sum to zero per
    /// currency: double entry.
    pub fn postings(&self) -> Vec<Posting> {
        let pair = |from: Uuid, to: Uuid, amount: Amount, currency: Currency| {
            vec![
                Posting { account_id: from, currency, delta: Money::new(-amount.minor_units()) },
                Posting { account_id: to, currency, delta: amount.money() },
            ]
        };
        match self {
            Event::DepositRecorded(e) => pair(e.system_account_id, e.account_id, e.amount, e.currency),
            Event::TransferPosted(e) => pair(e.from, e.to, e.amount, e.currency),
            Event::TransactionPosted(e) => {
                e.postings.iter().flat_map(|l| pair(l.from, l.to, l.amount, l.currency)).collect()
            }
            Event::HoldCaptured(e) => pair(e.account_id, e.to, e.amount, e.currency),
            Event::WithdrawalSettled(e) => pair(e.account_id, e.system_account_id, e.amount, e.currency),
            Event::WithdrawalReconciled(e) if e.delta == Money::ZERO => Vec::new(),
            Event::WithdrawalReconciled(e) => {
                let out = e.delta.checked_neg().expect("reconciliation deltas are bounded amounts");
                vec![
                    Posting { account_id: e.account_id, currency: e.currency, delta: out },
                    Posting { account_id: e.system_account_id, currency: e.currency, delta: e.delta },
                ]
            }
            Event::AccountOpened(_)
            | Event::AccountClosed(_)
            | Event::WithdrawalRequested(_)
            | Event::HoldPlaced(_)
            | Event::HoldVoided(_)
            | Event::HoldExpired(_)
            | Event::WithdrawalFailed(_)
            | Event::PayoutDeadLettered(_)
            | Event::PayoutRedriven(_)
            | Event::TokenIssued(_)
            | Event::LedgerCreated(_)
            | Event::ReconciliationStarted(_)
            | Event::ReconciliationMismatchFound(_)
            | Event::ReconciliationFinished(_)
            | Event::SubjectErased(_)
            | Event::ChainReanchored(_)
            | Event::PeriodClosed(_) => Vec::new(),
        }
    }

    /// The accounts whose state this event changes (balances, holds, status, or their
    /// personal values erased).
    pub fn accounts(&self) -> Vec<Uuid> {
        match self {
            Event::AccountOpened(e) => vec![e.account_id],
            Event::AccountClosed(e) => vec![e.account_id],
            Event::DepositRecorded(e) => vec![e.account_id, e.system_account_id],
            Event::TransferPosted(e) => vec![e.from, e.to],
            Event::TransactionPosted(e) => e.accounts(),
            Event::HoldPlaced(e) => vec![e.account_id],
            Event::HoldCaptured(e) => vec![e.account_id, e.to],
            Event::HoldVoided(e) | Event::HoldExpired(e) => vec![e.account_id],
            Event::WithdrawalRequested(e) => vec![e.account_id],
            Event::WithdrawalSettled(e) => vec![e.account_id, e.system_account_id],
            Event::WithdrawalFailed(e) => vec![e.account_id],
            Event::WithdrawalReconciled(e) => vec![e.account_id, e.system_account_id],
            Event::SubjectErased(e) => e.accounts.clone(),
            Event::ChainReanchored(_) | Event::PeriodClosed(_) => Vec::new(),
            Event::PayoutDeadLettered(_)
            | Event::PayoutRedriven(_)
            | Event::TokenIssued(_)
            | Event::LedgerCreated(_)
            | Event::ReconciliationStarted(_)
            | Event::ReconciliationMismatchFound(_)
            | Event::ReconciliationFinished(_) => Vec::new(),
        }
    }

    /// The id of the money movement this event records, if it moves money.
    pub fn movement_id(&self) -> Option<Uuid> {
        match self {
            Event::DepositRecorded(e) => Some(e.deposit_id),
            Event::TransferPosted(e) => Some(e.transfer_id),
            Event::TransactionPosted(e) => Some(e.transaction_id),
            Event::HoldCaptured(e) => Some(e.hold_id),
            Event::WithdrawalSettled(e) => Some(e.withdrawal_id),
            Event::WithdrawalReconciled(e) => Some(e.withdrawal_id),
            _ => None,
        }
    }

    /// The business time the event states, if it states one (API.md "Effective
    /// dates"); otherwise its effective time is the time it was recorded.
    pub fn effective_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Event::DepositRecorded(e) => e.effective_at,
            Event::TransferPosted(e) => e.effective_at,
            Event::TransactionPosted(e) => e.effective_at,
            Event::HoldCaptured(e) => e.effective_at,
            _ => None,
        }
    }

    /// Serializes into the store's (type, data) pair.
    pub fn to_parts(&self) -> (&'static str, serde_json::Value) {
        let mut tagged = serde_json::to_value(self).expect("events serialize: all keys are strings");
        let data = tagged.get_mut("data").map(serde_json::Value::take).unwrap_or_default();
        (self.event_type(), data)
    }

    /// Rebuilds an event from the store's (type, data) pair.
    pub fn from_parts(event_type: &str, data: serde_json::Value) -> Result<Event, serde_json::Error> {
        Event::tagged(serde_json::Value::String(event_type.to_owned()), data)
    }

    /// [`Event::from_parts`] reading `data` where it is, without a copy of it.
    pub fn from_data(event_type: &str, data: &serde_json::Value) -> Result<Event, serde_json::Error> {
        let tag = serde_json::Value::String(event_type.to_owned());
        Event::tagged(&tag, data)
    }

    /// The adjacently tagged form, its tag first: so the payload is read straight into
    /// its variant. A `json!` map would give `data` first (its keys are sorted), which
    /// serde must buffer whole, as a copy, until it has read the tag.
    fn tagged<'de, V>(tag: V, data: V) -> Result<Event, serde_json::Error>
    where
        V: serde::de::IntoDeserializer<'de, serde_json::Error>,
    {
        Event::deserialize(serde::de::value::MapDeserializer::new([("type", tag), ("data", data)].into_iter()))
    }
}
