//! The provider's memory: recorded payouts indexed by idempotency key and provider
//! reference, extra statement entries (typed and raw), call counters, the current faults and the
//! seeded RNG that decides them.
//!
//! Everything lives in one struct behind one lock, so that "look up the key, decide
//! the faults, record the payout" is a single atomic step: concurrent retries of one
//! key can never pay twice, and a seed plus a call order fixes every decision.
//! Nothing here awaits or knows about HTTP.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::error::SimError;
use crate::faults::Faults;
use crate::model::{Payout, PayoutOverride, PayoutRequest, PayoutStatus, StatementEntry, Stats};

/// Reason given with every injected rejection.
pub(crate) const SIMULATED_REJECTION: &str = "simulated rejection";
/// Reason given when an override turns a payout into a rejection.
pub(crate) const OVERRIDDEN_REJECTION: &str = "rejected after all (simulated override)";

/// The contract routes, for counting and for deciding which faults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    CreatePayout,
    GetPayout,
    Statement,
}

/// A fault decided on a call's arrival, before it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transient {
    /// Answer 503 at once.
    Unavailable { retry_after_s: Option<u64> },
    /// Hang for this long, then answer 504.
    Hang { hang_ms: u64 },
}

/// What happens to a call on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    pub latency_ms: u64,
    pub fault: Option<Transient>,
}

/// How a `POST /payouts` that got past the transient faults ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PayoutOutcome {
    /// A new payout was recorded (settled or rejected): 201.
    Created(Payout),
    /// The key was seen before with the same body: 200 with the stored payout.
    Replayed(Payout),
    /// A new payout was recorded but the answer is lost: 502.
    ResponseLost(Payout),
}

/// One recorded payout: the request it was made from (to detect key reuse with a
/// different body) and what the provider now says about it.
#[derive(Debug, Clone)]
struct Record {
    request: PayoutRequest,
    payout: Payout,
    hidden: bool,
}

/// All the simulator's mutable state; see the module docs.
#[derive(Debug)]
pub(crate) struct State {
    faults: Faults,
    rng: StdRng,
    /// provider_ref → record.
    records: HashMap<String, Record>,
    /// Idempotency key → provider_ref.
    by_key: HashMap<String, String>,
    extra_entries: Vec<StatementEntry>,
    /// Statement lines as JSON text, listed as written in every statement.
    raw_lines: Vec<String>,
    calls: u64,
    payout_calls: u64,
    paid: BTreeMap<String, u64>,
}

impl State {
    pub fn new(faults: Faults, seed: u64) -> State {
        State {
            faults,
            rng: StdRng::seed_from_u64(seed),
            records: HashMap::new(),
            by_key: HashMap::new(),
            extra_entries: Vec::new(),
            raw_lines: Vec::new(),
            calls: 0,
            payout_calls: 0,
            paid: BTreeMap::new(),
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// True with probability `rate`. Rates of 0 and 1 draw nothing from the RNG, so
    /// turning a fault fully on or off does not shift the other faults' dice.
    fn roll(&mut self, rate: f64) -> bool {
        if rate <= 0.0 {
            false
        } else if rate >= 1.0 {
            true
        } else {
            self.rng.random::<f64>() < rate
        }
    }

    /// Counts a call and decides its transient fault. `down` and `error_rate` apply
    /// to every contract route; timeouts only to `POST /payouts`.
    pub fn arrive(&mut self, route: Route) -> Arrival {
        self.calls += 1;
        if route == Route::CreatePayout {
            self.payout_calls += 1;
        }
        let faults = self.faults;
        let unavailable = Transient::Unavailable { retry_after_s: faults.retry_after_s };
        let fault = if faults.down || self.roll(faults.error_rate) {
            Some(unavailable)
        } else if route == Route::CreatePayout && self.roll(faults.timeout_rate) {
            Some(Transient::Hang { hang_ms: faults.hang_ms })
        } else {
            None
        };
        Arrival { latency_ms: faults.latency_ms, fault }
    }

    /// Records a new payout or replays the one stored under `key`. Replays never
    /// draw the reject, permanent-error or lost-response faults.
    pub fn create_payout(
        &mut self,
        key: &str,
        request: PayoutRequest,
        now: DateTime<Utc>,
    ) -> Result<PayoutOutcome, SimError> {
        if let Some(record) = self.by_key.get(key).and_then(|provider_ref| self.records.get(provider_ref)) {
            if record.request != request {
                return Err(SimError::IdempotencyConflict { key: key.to_owned() });
            }
            return Ok(PayoutOutcome::Replayed(record.payout.clone()));
        }
        let faults = self.faults;
        if self.roll(faults.permanent_error_rate) {
            return Err(SimError::SimulatedPermanentError);
        }
        let rejected = self.roll(faults.reject_rate);
        let response_lost = self.roll(faults.drop_response_rate);
        let payout = Payout {
            provider_ref: format!("prv_{}", Uuid::now_v7().simple()),
            reference: request.reference.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
            destination: request.destination.clone(),
            status: if rejected { PayoutStatus::Rejected } else { PayoutStatus::Settled },
            reason: rejected.then(|| SIMULATED_REJECTION.to_owned()),
            settled_at: now,
        };
        let paid = self.paid.entry(payout.reference.clone()).or_insert(0);
        if !rejected {
            *paid += 1;
        }
        self.by_key.insert(key.to_owned(), payout.provider_ref.clone());
        let record = Record { request, payout: payout.clone(), hidden: false };
        self.records.insert(payout.provider_ref.clone(), record);
        Ok(if response_lost { PayoutOutcome::ResponseLost(payout) } else { PayoutOutcome::Created(payout) })
    }

    /// The visible payout with this provider reference.
    pub fn payout(&self, provider_ref: &str) -> Result<Payout, SimError> {
        match self.records.get(provider_ref) {
            Some(record) if !record.hidden => Ok(record.payout.clone()),
            _ => Err(SimError::PayoutNotFound { provider_ref: provider_ref.to_owned() }),
        }
    }

    /// Every recorded payout, hidden ones included, oldest first.
    pub fn payouts(&self) -> Vec<Payout> {
        let mut payouts: Vec<Payout> = self.records.values().map(|record| record.payout.clone()).collect();
        payouts.sort_by(|a, b| (a.settled_at, &a.provider_ref).cmp(&(b.settled_at, &b.provider_ref)));
        payouts
    }

    /// Visible records and extra entries with `from <= settled_at < to`, oldest first.
    pub fn statement(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<StatementEntry> {
        let recorded = self.records.values().filter(|record| !record.hidden).map(|record| (&record.payout).into());
        let mut entries: Vec<StatementEntry> = recorded
            .chain(self.extra_entries.iter().cloned())
            .filter(|entry: &StatementEntry| from <= entry.settled_at && entry.settled_at < to)
            .collect();
        entries.sort_by(|a, b| (a.settled_at, &a.provider_ref).cmp(&(b.settled_at, &b.provider_ref)));
        entries
    }

    /// Applies `change` to every payout recorded for `reference` and returns them as
    /// they now read. Does not touch `paid`, which counts what was done, not what
    /// the record says.
    pub fn override_payout(&mut self, reference: &str, change: &PayoutOverride) -> Result<Vec<Payout>, SimError> {
        if let Some(amount) = change.amount.filter(|amount| *amount <= 0) {
            return Err(SimError::AmountNotPositive { amount: amount.to_string() });
        }
        let mut changed = Vec::new();
        for record in self.records.values_mut().filter(|record| record.payout.reference == reference) {
            if let Some(amount) = change.amount {
                record.payout.amount = amount;
            }
            if let Some(status) = change.status {
                record.payout.status = status;
                record.payout.reason = match status {
                    PayoutStatus::Settled => None,
                    PayoutStatus::Rejected => Some(OVERRIDDEN_REJECTION.to_owned()),
                };
            }
            if let Some(remove) = change.remove {
                record.hidden = remove;
            }
            changed.push(record.payout.clone());
        }
        if changed.is_empty() {
            return Err(SimError::ReferenceNotFound { reference: reference.to_owned() });
        }
        Ok(changed)
    }

    /// Adds a statement entry that matches no recorded payout.
    pub fn add_extra_entry(&mut self, entry: StatementEntry) {
        self.extra_entries.push(entry);
    }

    /// Adds a statement line as raw JSON text, listed in every statement after the
    /// entries of its window, whatever its `settled_at` says (it may say nothing).
    pub fn add_raw_line(&mut self, text: String) {
        self.raw_lines.push(text);
    }

    pub fn clear_raw_lines(&mut self) {
        self.raw_lines.clear();
    }

    pub fn raw_lines(&self) -> Vec<String> {
        self.raw_lines.clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            calls: self.calls,
            payout_calls: self.payout_calls,
            payouts: self.records.len() as u64,
            paid: self.paid.clone(),
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
