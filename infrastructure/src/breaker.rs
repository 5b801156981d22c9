//! A circuit breaker: closed → open after `failure_threshold` failures within
//! `window` → half-open after `cooldown` (one probe at a time) → closed on the probe's
//! success, open again on its failure. While open, callers make no calls at all.
//!
//! A call is made under a [`Permit`]. The permit reports the call's outcome
//! ([`Permit::success`], [`Permit::failure`]); a permit dropped without either (the
//! call was cancelled by a time-out, a client hung up, an early `?` return) is released
//! with no verdict: if it was the probe, the next caller may probe. The breaker never
//! stays half-open waiting for a probe that nobody is running.
//!
//! Each permit remembers the epoch it was issued in (the epoch changes each time the
//! breaker opens or closes). A verdict from an earlier epoch is stale — the call was let
//! through before the breaker changed its mind — and is ignored: it neither counts nor
//! touches the probe of another caller.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Limits of one breaker.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, window: Duration::from_secs(30), cooldown: Duration::from_secs(5) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What `GET /v1/admin/circuit-breakers` shows of a breaker.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerSnapshot {
    pub name: String,
    pub state: BreakerState,
    pub failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: VecDeque<Instant>,
    opened: Option<(Instant, DateTime<Utc>)>,
    /// Whether the half-open breaker's one probe is out.
    probe_in_flight: bool,
    /// Changes each time the breaker opens or closes; permits of an earlier epoch are stale.
    epoch: u64,
}

/// A thread-safe circuit breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
}

/// The call was not made: the breaker is open (or its one probe is out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_in:?}")]
pub struct BreakerOpen {
    pub retry_in: Duration,
}

/// Leave to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping the permit without either releases it with no verdict
/// (a probe frees the probe slot, nothing is counted), so every path releases it.
#[derive(Debug)]
#[must_use = "a permit is the leave to make a call: make it, then report success or failure"]
pub struct Permit {
    breaker: CircuitBreaker,
    epoch: u64,
    probe: bool,
    settled: bool,
}

/// How a permit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    /// Dropped without a verdict: the call was cancelled or never made.
    Released,
}

impl Permit {
    /// Whether this permit is the half-open breaker's one probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: a probe closes the breaker; a call let through while closed
    /// clears the failures counted so far.
    pub fn success(mut self) {
        self.settle(Verdict::Success);
    }

    /// The call failed because the dependency did: a probe opens the breaker again; a
    /// call let through while closed counts one failure towards the threshold.
    pub fn failure(mut self) {
        self.settle(Verdict::Failure);
    }

    fn settle(&mut self, verdict: Verdict) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.breaker.settle(self.epoch, self.probe, verdict);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.settle(Verdict::Released);
    }
}

impl CircuitBreaker {
    pub fn new(name: &str, config: BreakerConfig) -> CircuitBreaker {
        let inner = Inner {
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            opened: None,
            probe_in_flight: false,
            epoch: 0,
        };
        CircuitBreaker { name: name.into(), config, inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-updated in a way
        // that matters more than failing every later call, so recover the guard.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call now. The permit is the probe if the breaker is half-open.
    pub fn acquire(&self) -> Result<Permit, BreakerOpen> {
        let mut inner = self.lock();
        let probe = self.admit(&mut inner)?;
        Ok(Permit { breaker: self.clone(), epoch: inner.epoch, probe, settled: false })
    }

    /// Lets a call through or refuses it; returns whether the call is the probe.
    fn admit(&self, inner: &mut Inner) -> Result<bool, BreakerOpen> {
        match inner.state {
            BreakerState::Closed => Ok(false),
            BreakerState::Open => {
                let (since, _) = inner.opened.expect("an open breaker knows when it opened");
                let elapsed = since.elapsed();
                if elapsed >= self.config.cooldown {
                    inner.state = BreakerState::HalfOpen;
                    inner.probe_in_flight = true;
                    Ok(true)
                } else {
                    Err(BreakerOpen { retry_in: self.config.cooldown - elapsed })
                }
            }
            BreakerState::HalfOpen if inner.probe_in_flight => Err(BreakerOpen { retry_in: self.config.cooldown }),
            BreakerState::HalfOpen => {
                inner.probe_in_flight = true;
                Ok(true)
            }
        }
    }

    fn settle(&self, epoch: u64, probe: bool, verdict: Verdict) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            // Issued before the breaker last opened or closed: stale evidence, and the
            // probe slot (if any) belongs to another caller.
            return;
        }
        let now = Instant::now();
        if probe {
            // Only one probe is out per epoch, and only it settles the half-open state.
            // (Not `assert!`: this runs in `Drop`, where a panic may abort the process.)
            debug_assert!(inner.state == BreakerState::HalfOpen && inner.probe_in_flight, "a live probe");
            match verdict {
                Verdict::Success => self.close(&mut inner),
                Verdict::Failure => self.open(&mut inner, now),
                Verdict::Released => inner.probe_in_flight = false,
            }
        } else {
            // Same epoch and no probe: the breaker is still in the closed spell the call
            // was let through in.
            debug_assert!(inner.state == BreakerState::Closed, "a current non-probe permit means closed");
            match verdict {
                Verdict::Success => inner.failures.clear(),
                Verdict::Failure => self.count_failure(&mut inner, now),
                Verdict::Released => {}
            }
        }
    }

    fn count_failure(&self, inner: &mut Inner, now: Instant) {
        inner.failures.push_back(now);
        while inner.failures.front().is_some_and(|t| now.duration_since(*t) > self.config.window) {
            inner.failures.pop_front();
        }
        if inner.failures.len() >= self.config.failure_threshold as usize {
            self.open(inner, now);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        tracing::warn!(breaker = %self.name, "circuit breaker opened");
        inner.state = BreakerState::Open;
        inner.opened = Some((now, Utc::now()));
        inner.probe_in_flight = false;
        inner.epoch += 1;
    }

    fn close(&self, inner: &mut Inner) {
        if inner.state != BreakerState::Closed {
            tracing::info!(breaker = %self.name, "circuit breaker closed");
            inner.epoch += 1;
        }
        inner.state = BreakerState::Closed;
        inner.failures.clear();
        inner.opened = None;
        inner.probe_in_flight = false;
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether the half-open breaker's one probe is out (callers are refused meanwhile).
    pub fn probe_in_flight(&self) -> bool {
        self.lock().probe_in_flight
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        BreakerSnapshot {
            name: self.name.to_string(),
            state: inner.state,
            failures: u32::try_from(inner.failures.len()).unwrap_or(u32::MAX),
            opened_at: inner.opened.map(|(_, at)| at),
        }
    }
}

/// Exponential backoff with full jitter: a uniformly random delay in
/// [0, min(max, base · 2^attempt)].
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const COOLDOWN: Duration = Duration::from_secs(5);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig { failure_threshold: 3, window: Duration::from_secs(10), cooldown: COOLDOWN },
        )
    }

    fn fail(b: &CircuitBreaker) {
        b.acquire().expect("closed").failure();
    }

    /// Opens the breaker and waits out the cool-down: the next caller probes.
    async fn half_open(b: &CircuitBreaker) {
        for _ in 0..3 {
            fail(b);
        }
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(COOLDOWN).await;
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_then_closes() {
        let b = breaker();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_err(), "no calls while open");
        tokio::time::advance(COOLDOWN).await;
        let probe = b.acquire().expect("one probe after the cool-down");
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        let call = b.acquire().expect("closed again");
        assert!(!call.is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_old_failures_expire() {
        let b = breaker();
        fail(&b);
        fail(&b);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed, "failures outside the window do not count");
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(COOLDOWN).await;
        b.acquire().expect("the probe").failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_err(), "a failed probe starts a new cool-down");
        assert!(b.snapshot().opened_at.is_some());
        tokio::time::advance(COOLDOWN).await;
        assert!(b.acquire().expect("the next probe").is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_a_verdict_lets_the_next_caller_probe() {
        let b = breaker();
        half_open(&b).await;
        let probe = b.acquire().expect("the probe");
        assert!(b.probe_in_flight());
        drop(probe);
        assert_eq!(b.state(), BreakerState::HalfOpen, "no verdict: still half-open");
        assert!(!b.probe_in_flight());
        assert_eq!(b.snapshot().failures, 3, "no failure recorded");
        let next = b.acquire().expect("the next caller probes");
        assert!(next.is_probe());
        next.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_cancelled_by_a_timeout_is_released() {
        let b = breaker();
        half_open(&b).await;
        // The call never finishes; the time-out drops the future and the permit with it.
        let call = async {
            let permit = b.acquire().expect("the probe");
            std::future::pending::<()>().await;
            permit.success();
        };
        assert!(tokio::time::timeout(Duration::from_secs(1), call).await.is_err());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.probe_in_flight(), "the cancelled probe released its slot");
        b.acquire().expect("the next caller probes").failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_in_an_aborted_task_is_released() {
        let b = breaker();
        half_open(&b).await;
        // As when a client hangs up: the task serving it is dropped mid-call.
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
        let held = b.clone();
        let task = tokio::spawn(async move {
            let _permit = held.acquire().expect("the probe");
            let _ = taken_tx.send(());
            std::future::pending::<()>().await;
        });
        taken_rx.await.expect("the task took the probe");
        assert!(b.acquire().is_err(), "the probe is out");
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert!(!b.probe_in_flight());
        b.acquire().expect("the next caller probes").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_permits_neither_free_nor_settle_another_callers_probe() {
        let b = breaker();
        // Let through while closed; they finish only after the breaker opened.
        let stale: Vec<Permit> = (0..4).map(|_| b.acquire().expect("closed")).collect();
        half_open(&b).await;
        let probe = b.acquire().expect("the probe");
        let mut stale = stale.into_iter();
        let verdicts: [Box<dyn FnOnce(Permit)>; 3] =
            [Box::new(Permit::success), Box::new(Permit::failure), Box::new(drop)];
        for (settle, permit) in verdicts.into_iter().zip(stale.by_ref()) {
            assert!(!permit.is_probe());
            settle(permit);
            assert_eq!(b.state(), BreakerState::HalfOpen, "a stale verdict changes nothing");
            assert!(b.probe_in_flight(), "nor frees the probe slot");
            assert!(b.acquire().is_err(), "so no second probe");
        }
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        // From before the outage: not counted in the new closed spell either.
        stale.next().expect("a fourth stale permit").failure();
        assert_eq!(b.snapshot().failures, 0);
    }

    /// A random mix of acquisitions, verdicts, drops and waits never leaves the breaker
    /// refusing everyone while no probe is out (the bug: half-open until restart).
    #[tokio::test(start_paused = true)]
    async fn random_sequences_never_strand_the_breaker_half_open() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let b = breaker();
            let mut live: Vec<Permit> = Vec::new();
            for step in 0..200 {
                match rng.random_range(0..10) {
                    0..=3 => {
                        if let Ok(p) = b.acquire() {
                            live.push(p);
                        }
                    }
                    4..=7 if !live.is_empty() => {
                        let p = live.swap_remove(rng.random_range(0..live.len()));
                        match rng.random_range(0..3) {
                            0 => p.success(),
                            1 => p.failure(),
                            _ => drop(p),
                        }
                    }
                    _ => tokio::time::advance(Duration::from_millis(rng.random_range(0..=3_000))).await,
                }
                let (state, in_flight, epoch) = {
                    let inner = b.lock();
                    (inner.state, inner.probe_in_flight, inner.epoch)
                };
                let probes = live.iter().filter(|p| p.probe && p.epoch == epoch).count();
                let at = format!("seed {seed}, step {step}");
                assert!(probes <= 1, "{at}: one probe at a time");
                assert_eq!(in_flight, probes == 1, "{at}: the probe slot is taken exactly while a probe is out");
                if state == BreakerState::HalfOpen && probes == 0 {
                    let p = b.acquire().unwrap_or_else(|e| panic!("{at}: half-open, no probe out, refused: {e}"));
                    assert!(p.is_probe(), "{at}");
                    live.push(p);
                }
            }
        }
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            let d = backoff_delay(attempt, Duration::from_millis(50), Duration::from_secs(2));
            assert!(d <= Duration::from_secs(2));
        }
    }
}
