//! A circuit breaker: closed → open after `failure_threshold` failures within
//! `window` → half-open after `cooldown` (one probe at a time) → closed on the probe's
//! success, open again on its failure. While open, callers make no calls at all.

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
    probe_in_flight: bool,
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

impl CircuitBreaker {
    pub fn new(name: &str, config: BreakerConfig) -> CircuitBreaker {
        let inner =
            Inner { state: BreakerState::Closed, failures: VecDeque::new(), opened: None, probe_in_flight: false };
        CircuitBreaker { name: name.into(), config, inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state half-updated in a way
        // that matters more than failing every later call, so recover the guard.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call now.
    pub fn try_acquire(&self) -> Result<(), BreakerOpen> {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let (since, _) = inner.opened.expect("an open breaker knows when it opened");
                let elapsed = since.elapsed();
                if elapsed >= self.config.cooldown {
                    inner.state = BreakerState::HalfOpen;
                    inner.probe_in_flight = true;
                    Ok(())
                } else {
                    Err(BreakerOpen { retry_in: self.config.cooldown - elapsed })
                }
            }
            BreakerState::HalfOpen if inner.probe_in_flight => Err(BreakerOpen { retry_in: self.config.cooldown }),
            BreakerState::HalfOpen => {
                inner.probe_in_flight = true;
                Ok(())
            }
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.state = BreakerState::Closed;
        inner.failures.clear();
        inner.opened = None;
        inner.probe_in_flight = false;
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.probe_in_flight = false;
        match inner.state {
            BreakerState::HalfOpen => self.open(&mut inner, now),
            BreakerState::Open => {}
            BreakerState::Closed => {
                inner.failures.push_back(now);
                while inner.failures.front().is_some_and(|t| now.duration_since(*t) > self.config.window) {
                    inner.failures.pop_front();
                }
                if inner.failures.len() >= self.config.failure_threshold as usize {
                    self.open(&mut inner, now);
                }
            }
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        tracing::warn!(breaker = %self.name, "circuit breaker opened");
        inner.state = BreakerState::Open;
        inner.opened = Some((now, Utc::now()));
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
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

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig { failure_threshold: 3, window: Duration::from_secs(10), cooldown: Duration::from_secs(5) },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_then_closes() {
        let b = breaker();
        for _ in 0..2 {
            b.record_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_err(), "no calls while open");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_acquire().is_ok(), "one probe after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_old_failures_expire() {
        let b = breaker();
        b.record_failure();
        b.record_failure();
        tokio::time::advance(Duration::from_secs(11)).await;
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed, "failures outside the window do not count");
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.try_acquire().is_ok());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_err());
        assert!(b.snapshot().opened_at.is_some());
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            let d = backoff_delay(attempt, Duration::from_millis(50), Duration::from_secs(2));
            assert!(d <= Duration::from_secs(2));
        }
    }
}
