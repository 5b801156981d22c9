//! Synchronous tests of the simulator's state: determinism, idempotency and the
//! fault rules, without HTTP.

use chrono::{Duration, TimeZone};

use super::*;

fn request(reference: &str, amount: i64) -> PayoutRequest {
    PayoutRequest {
        reference: reference.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        destination: "NL00BANK0123456789".to_owned(),
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("a valid date")
}

/// The kind of each outcome of `calls` payout calls under `faults`, as a string.
fn run(faults: Faults, seed: u64, calls: usize) -> Vec<&'static str> {
    let mut state = State::new(faults, seed);
    (0..calls)
        .map(|i| match state.arrive(Route::CreatePayout).fault {
            Some(Transient::Unavailable { .. }) => "503",
            Some(Transient::Hang { .. }) => "504",
            None => match state.create_payout(&format!("w{i}"), request(&format!("w{i}"), 100), t0()) {
                Ok(PayoutOutcome::Created(p)) if p.status == PayoutStatus::Rejected => "rejected",
                Ok(PayoutOutcome::Created(_)) => "settled",
                Ok(PayoutOutcome::ResponseLost(_)) => "502",
                Ok(PayoutOutcome::Replayed(_)) => "replayed",
                Err(_) => "422",
            },
        })
        .collect()
}

fn half_of_everything() -> Faults {
    Faults {
        error_rate: 0.2,
        timeout_rate: 0.2,
        reject_rate: 0.2,
        permanent_error_rate: 0.2,
        drop_response_rate: 0.2,
        ..Faults::default()
    }
}

#[test]
fn the_same_seed_and_call_order_give_the_same_faults() {
    let first = run(half_of_everything(), 7, 200);
    assert_eq!(first, run(half_of_everything(), 7, 200));
    assert_ne!(first, run(half_of_everything(), 8, 200));
    for kind in ["503", "504", "rejected", "settled", "502", "422"] {
        assert!(first.contains(&kind), "{kind} never happened in {first:?}");
    }
}

#[test]
fn a_rate_is_roughly_the_share_of_calls_hit() {
    let outcomes = run(Faults { reject_rate: 0.3, ..Faults::default() }, 1, 1000);
    let rejected = outcomes.iter().filter(|kind| **kind == "rejected").count();
    assert!((200..400).contains(&rejected), "{rejected} of 1000 rejected at rate 0.3");
}

#[test]
fn no_faults_means_every_payout_settles() {
    assert!(run(Faults::default(), 1, 50).iter().all(|kind| *kind == "settled"));
}

#[test]
fn a_replay_is_never_rejected_refused_or_lost_and_pays_once() {
    let mut state = State::new(Faults::default(), 1);
    let created = state.create_payout("w1", request("w1", 100), t0()).expect("created");
    state.set_faults(Faults {
        reject_rate: 1.0,
        permanent_error_rate: 1.0,
        drop_response_rate: 1.0,
        ..Faults::default()
    });
    let replayed = state.create_payout("w1", request("w1", 100), t0() + Duration::seconds(5)).expect("replayed");
    let PayoutOutcome::Created(created) = created else { panic!("expected Created, got {created:?}") };
    assert_eq!(replayed, PayoutOutcome::Replayed(created));
    let stats = state.stats();
    assert_eq!((stats.payouts, stats.paid.get("w1").copied()), (1, Some(1)));
}

#[test]
fn a_key_reused_with_another_body_conflicts() {
    let mut state = State::new(Faults::default(), 1);
    state.create_payout("w1", request("w1", 100), t0()).expect("created");
    let result = state.create_payout("w1", request("w1", 101), t0());
    assert_eq!(result, Err(SimError::IdempotencyConflict { key: "w1".to_owned() }));
}

#[test]
fn a_rejected_payout_is_recorded_but_not_paid() {
    let mut state = State::new(Faults { reject_rate: 1.0, ..Faults::default() }, 1);
    let outcome = state.create_payout("w1", request("w1", 100), t0()).expect("recorded");
    let PayoutOutcome::Created(payout) = outcome else { panic!("expected Created, got {outcome:?}") };
    assert_eq!((payout.status, payout.reason.as_deref()), (PayoutStatus::Rejected, Some(SIMULATED_REJECTION)));
    assert_eq!(state.stats().paid.get("w1").copied(), Some(0));
}

#[test]
fn a_new_key_for_a_paid_reference_is_counted_as_a_double_payment() {
    let mut state = State::new(Faults::default(), 1);
    state.create_payout("k1", request("w1", 100), t0()).expect("created");
    state.create_payout("k2", request("w1", 100), t0()).expect("created");
    assert_eq!(state.stats().double_paid(), vec!["w1"]);
}

#[test]
fn the_statement_window_is_half_open() {
    let mut state = State::new(Faults::default(), 1);
    state.create_payout("w1", request("w1", 100), t0()).expect("created");
    let second = Duration::seconds(1);
    assert_eq!(state.statement(t0(), t0() + second).len(), 1);
    assert_eq!(state.statement(t0() - second, t0()).len(), 0);
    assert_eq!(state.statement(t0() + second, t0() + second * 2).len(), 0);
}

#[test]
fn overrides_change_the_record_and_removal_hides_it() {
    let mut state = State::new(Faults::default(), 1);
    let outcome = state.create_payout("w1", request("w1", 100), t0()).expect("created");
    let PayoutOutcome::Created(payout) = outcome else { panic!("expected Created, got {outcome:?}") };
    let change = PayoutOverride { amount: Some(90), status: Some(PayoutStatus::Rejected), remove: None };
    state.override_payout("w1", &change).expect("overridden");
    let entry = &state.statement(t0(), t0() + Duration::seconds(1))[0];
    assert_eq!((entry.amount, entry.status), (90, PayoutStatus::Rejected));
    state.override_payout("w1", &PayoutOverride { remove: Some(true), ..PayoutOverride::default() }).expect("hidden");
    assert!(state.statement(t0(), t0() + Duration::seconds(1)).is_empty());
    assert!(matches!(state.payout(&payout.provider_ref), Err(SimError::PayoutNotFound { .. })));
    assert_eq!(state.stats().paid.get("w1").copied(), Some(1), "overrides do not rewrite what was paid");
}

#[test]
fn overrides_of_unknown_references_or_to_non_positive_amounts_are_refused() {
    let mut state = State::new(Faults::default(), 1);
    let result = state.override_payout("nope", &PayoutOverride::default());
    assert_eq!(result, Err(SimError::ReferenceNotFound { reference: "nope".to_owned() }));
    state.create_payout("w1", request("w1", 100), t0()).expect("created");
    let result = state.override_payout("w1", &PayoutOverride { amount: Some(0), ..PayoutOverride::default() });
    assert!(matches!(result, Err(SimError::AmountNotPositive { .. })));
}
