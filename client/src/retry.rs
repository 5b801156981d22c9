//! When to send a request again: exponential backoff with full jitter (AWS
//! Architecture Blog, "Exponential Backoff And Jitter"), never sooner than the
//! server's `Retry-After`.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends in all, the first included (1: never retry).
    pub attempts_max: u32,
    /// The backoff of the first retry, before jitter; it doubles each time.
    pub delay_base: Duration,
    /// The longest backoff, before jitter.
    pub delay_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { attempts_max: 5, delay_base: Duration::from_millis(50), delay_max: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// Send once; report every failure as it is (load generators measure these).
    pub const fn none() -> RetryPolicy {
        RetryPolicy { attempts_max: 1, delay_base: Duration::ZERO, delay_max: Duration::ZERO }
    }

    /// The wait after failed attempt number `attempt` (1-based): uniformly random in
    /// `0 ..= min(delay_max, delay_base · 2^(attempt-1))`, and at least `retry_after`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self.delay_base.saturating_mul(1 << exponent).min(self.delay_max);
        let jittered = ceiling.mul_f64(rand::random::<f64>());
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_honours_retry_after() {
        let p =
            RetryPolicy { attempts_max: 10, delay_base: Duration::from_millis(100), delay_max: Duration::from_secs(1) };
        for _ in 0..200 {
            assert!(p.delay(1, None) <= Duration::from_millis(100));
            assert!(p.delay(3, None) <= Duration::from_millis(400));
            assert!(p.delay(40, None) <= Duration::from_secs(1));
            assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
        // Full jitter: the waits spread over the range instead of all retrying at once.
        let waits: std::collections::BTreeSet<Duration> = (0..50).map(|_| p.delay(5, None)).collect();
        assert!(waits.len() > 40, "{waits:?}");
    }
}
