//! Business time (API.md "Effective dates"): an account as it stood at a business time
//! `T`, with what the log holds. A posting counts when its effective time (the
//! `effective_at` it states, else when it was recorded) is at or before `T`. Funds held
//! (a hold, a pending withdrawal) count from when they were placed until their release
//! counts, and a release counts only for funds whose placement counted: a hold captured
//! with an `effective_at` before the hold was placed is neither held nor released at
//! times in between. So `pending_holds` is never negative, whatever order business
//! time puts the events in. (Recording order is the order `evolve` folds in; folding a
//! business-time subsequence through it would release holds that were never placed.)

use crate::events::Event;
use crate::money::Money;
use crate::state::Account;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use uuid::Uuid;

/// How an event changes the funds held on one account, by the id of the hold or
/// withdrawal that holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldChange {
    Placed { id: Uuid, amount: Money },
    Released { id: Uuid, amount: Money },
}

impl Event {
    /// What this event does to the funds held on `account_id`, if anything.
    pub fn hold_change(&self, account_id: Uuid) -> Option<HoldChange> {
        let placed = |id, amount: crate::Amount| Some(HoldChange::Placed { id, amount: amount.money() });
        let released = |id, amount: crate::Amount| Some(HoldChange::Released { id, amount: amount.money() });
        match self {
            Event::HoldPlaced(e) if e.account_id == account_id => placed(e.hold_id, e.amount),
            Event::HoldCaptured(e) if e.account_id == account_id => released(e.hold_id, e.held),
            Event::HoldVoided(e) | Event::HoldExpired(e) if e.account_id == account_id => released(e.hold_id, e.amount),
            Event::WithdrawalRequested(e) if e.account_id == account_id => placed(e.withdrawal_id, e.amount),
            Event::WithdrawalSettled(e) if e.account_id == account_id => released(e.withdrawal_id, e.amount),
            Event::WithdrawalFailed(e) if e.account_id == account_id => released(e.withdrawal_id, e.amount),
            _ => None,
        }
    }
}

/// An account at business time `effective`, folded from a state in which every event
/// counts (all of them recorded early enough) and the account's later events.
#[derive(Clone, Debug)]
pub struct EffectiveAccount {
    pub account: Account,
    effective: DateTime<Utc>,
    /// Holds and withdrawals placed after the base whose placement does not count.
    uncounted: HashSet<Uuid>,
}

impl EffectiveAccount {
    pub fn new(base: Account, effective: DateTime<Utc>) -> EffectiveAccount {
        EffectiveAccount { account: base, effective, uncounted: HashSet::new() }
    }

    /// Applies one later event of the account's stream, recorded at `recorded_at`.
    pub fn apply(&mut self, event: &Event, recorded_at: DateTime<Utc>) {
        let counts = event.effective_at().unwrap_or(recorded_at) <= self.effective;
        let a = &mut self.account;
        if counts {
            for p in event.postings().into_iter().filter(|p| p.account_id == a.id) {
                // A subset of postings may sum past what the recording order ever held,
                // but never past the `i128` a balance is kept in.
                a.balance = a.balance.checked_add(p.delta).expect("balances are i128: no log reaches their bounds");
            }
        }
        match event.hold_change(a.id) {
            Some(HoldChange::Placed { amount, .. }) if counts => {
                a.pending_holds = a.pending_holds.checked_add(amount).expect("holds are bounded by balances");
            }
            Some(HoldChange::Placed { id, .. }) => {
                self.uncounted.insert(id);
            }
            Some(HoldChange::Released { id, amount }) if counts && !self.uncounted.contains(&id) => {
                a.pending_holds = a.pending_holds.checked_sub(amount).expect("a counted release follows its placement");
                assert!(a.pending_holds >= Money::ZERO, "account {}: negative holds at a business time", a.id);
            }
            Some(HoldChange::Released { .. }) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AccountOpened, HoldCaptured, HoldPlaced};
    use crate::money::{Amount, Currency};
    use crate::state::{Aggregate, StreamState, evolve};

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(minutes)
    }

    fn opened(id: Uuid) -> Account {
        let event = Event::AccountOpened(AccountOpened {
            account_id: id,
            currency: Currency::parse("EUR").expect("valid"),
            owner: None,
            overdraft_limit: Money::new(10_000),
            system: false,
            metadata: None,
            subject: None,
        });
        match evolve(StreamState::default(), id, 1, &event).aggregate {
            Aggregate::Account(a) => a,
            other => panic!("not an account: {other:?}"),
        }
    }

    fn amount(n: i64) -> Amount {
        Amount::new(n).expect("valid")
    }

    #[test]
    fn a_capture_backdated_before_its_hold_releases_nothing_it_did_not_hold() {
        let (payer, payee, hold) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let eur = Currency::parse("EUR").expect("valid");
        // Given a hold placed at minute 10, captured at minute 20 with an effective time
        // of minute 5 (before the hold existed),
        let placed = Event::HoldPlaced(HoldPlaced {
            hold_id: hold,
            account_id: payer,
            to: payee,
            amount: amount(600),
            currency: eur,
            expires_at: None,
            reference: None,
            metadata: None,
        });
        let captured = Event::HoldCaptured(HoldCaptured {
            hold_id: hold,
            account_id: payer,
            to: payee,
            amount: amount(400),
            held: amount(600),
            currency: eur,
            effective_at: Some(at(5)),
        });
        // when the account is seen at every business time,
        for (minute, balance, holds) in [(4, 0, 0), (5, -400, 0), (9, -400, 0), (10, -400, 0), (30, -400, 0)] {
            let mut seen = EffectiveAccount::new(opened(payer), at(minute));
            seen.apply(&placed, at(10));
            seen.apply(&captured, at(20));
            // then the capture's posting counts from minute 5, and the hold never counts
            // as both held and released.
            let a = &seen.account;
            assert_eq!((a.balance, a.pending_holds), (Money::new(balance), Money::new(holds)), "minute {minute}");
        }
        // A hold placed and not yet released at a time counts as held then.
        let mut seen = EffectiveAccount::new(opened(payer), at(15));
        seen.apply(&placed, at(10));
        let late = Event::HoldCaptured(HoldCaptured { effective_at: None, ..captured_fields(&captured) });
        seen.apply(&late, at(20));
        assert_eq!((seen.account.balance, seen.account.pending_holds), (Money::ZERO, Money::new(600)));
    }

    fn captured_fields(e: &Event) -> HoldCaptured {
        match e {
            Event::HoldCaptured(c) => c.clone(),
            _ => unreachable!("a capture"),
        }
    }

    /// One step of a payer's history: a hold placed, or the oldest open hold captured
    /// (with an `effective_at` that many minutes before it is recorded, if any) or voided.
    #[derive(Clone, Debug)]
    enum Step {
        Place(i64),
        Capture { part: i64, backdate: Option<i64> },
        Void,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (1..1000i64).prop_map(Step::Place),
            (1..1000i64, proptest::option::of(0..120i64)).prop_map(|(part, backdate)| Step::Capture { part, backdate }),
            Just(Step::Void),
        ]
    }

    proptest::proptest! {
        /// At every business time: holds are never negative, the balance is the sum of the
        /// postings that count, funds are held exactly for placements that count and whose
        /// release does not; after the last event, the recording-order fold.
        #[test]
        fn every_business_time_sees_a_consistent_account(steps in proptest::collection::vec(step(), 1..40), probe in 0..200i64) {
            let (payer, payee) = (Uuid::from_u128(1), Uuid::from_u128(2));
            let eur = Currency::parse("EUR").expect("valid");
            let mut log: Vec<(Event, DateTime<Utc>)> = Vec::new();
            let mut open: Vec<(Uuid, Amount, DateTime<Utc>)> = Vec::new();
            for (n, s) in steps.into_iter().enumerate() {
                let recorded = at(60 + n as i64);
                let event = match s {
                    Step::Place(m) => {
                        let hold = Uuid::from_u128(100 + n as u128);
                        open.push((hold, amount(m), recorded));
                        Event::HoldPlaced(HoldPlaced { hold_id: hold, account_id: payer, to: payee, amount: amount(m),
                            currency: eur, expires_at: None, reference: None, metadata: None })
                    }
                    Step::Capture { .. } | Step::Void if open.is_empty() => continue,
                    Step::Capture { part, backdate } => {
                        let (hold, held, _) = open.remove(0);
                        Event::HoldCaptured(HoldCaptured { hold_id: hold, account_id: payer, to: payee,
                            amount: amount(part.min(held.minor_units())), held, currency: eur,
                            effective_at: backdate.map(|b| recorded - chrono::Duration::minutes(b)) })
                    }
                    Step::Void => {
                        let (hold, held, _) = open.remove(0);
                        Event::HoldVoided(crate::events::HoldReleased { hold_id: hold, account_id: payer, amount: held, currency: eur })
                    }
                };
                log.push((event, recorded));
            }
            let when = at(probe);
            let mut seen = EffectiveAccount::new(opened(payer), when);
            for (event, recorded) in &log {
                seen.apply(event, *recorded);
            }
            let counts = |e: &Event, r: DateTime<Utc>| e.effective_at().unwrap_or(r) <= when;
            let balance: i128 = log.iter().filter(|(e, r)| counts(e, *r)).flat_map(|(e, _)| e.postings())
                .filter(|p| p.account_id == payer).map(|p| p.delta.minor_units()).sum();
            let held: i128 = log.iter().filter_map(|(e, r)| match e.hold_change(payer) {
                Some(HoldChange::Placed { id, amount }) if counts(e, *r) => {
                    let released = log.iter().any(|(e2, r2)| matches!(e2.hold_change(payer), Some(HoldChange::Released { id: i2, .. }) if i2 == id) && counts(e2, *r2));
                    (!released).then_some(amount.minor_units())
                }
                _ => None,
            }).sum();
            proptest::prop_assert_eq!((seen.account.balance.minor_units(), seen.account.pending_holds.minor_units()), (balance, held));
            let mut state = StreamState { version: 1, aggregate: Aggregate::Account(opened(payer)) };
            let mut latest = EffectiveAccount::new(opened(payer), at(100_000));
            for (v, (event, recorded)) in log.iter().enumerate() {
                state = evolve(state, payer, v as i64 + 2, event);
                latest.apply(event, *recorded);
            }
            proptest::prop_assert_eq!(Aggregate::Account(latest.account), state.aggregate);
        }
    }
}
