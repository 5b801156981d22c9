//! Latency statistics: exact percentiles of a few samples, and a log-linear histogram
//! (< 1.6 % error) for the millions of samples of a throughput run.

use super::round;
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};

/// p50/p99/mean/min/max (nearest rank) of a handful of timed iterations, in ms.
pub fn summarize_ms(samples: &[Duration]) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let rank = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        ms[i]
    };
    let mean = if n == 0 { 0.0 } else { ms.iter().sum::<f64>() / n as f64 };
    json!({
        "n": n,
        "p50_ms": round(rank(0.50), 3),
        "p99_ms": round(rank(0.99), 3),
        "mean_ms": round(mean, 3),
        "min_ms": round(ms.first().copied().unwrap_or(0.0), 3),
        "max_ms": round(ms.last().copied().unwrap_or(0.0), 3),
    })
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (2 * SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// Nanosecond latencies in log-linear buckets: exact below 128 ns, then 64 buckets per
/// power of two.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], n: 0, sum_ns: 0, max_ns: 0 }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - SUB_BITS;
    let sub = (v >> shift) - SUB;
    (2 * SUB + u64::from(shift - 1) * SUB + sub) as usize
}

fn bucket_low(b: usize) -> u64 {
    let b = b as u64;
    if b < 2 * SUB {
        return b;
    }
    let shift = (b - 2 * SUB) / SUB + 1;
    let sub = (b - 2 * SUB) % SUB;
    (SUB + sub) << shift
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.n += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The `p` quantile in ns (midpoint of its bucket).
    pub fn quantile_ns(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = (bucket_low(b), bucket_low(b + 1));
                return (low as f64 + high as f64) / 2.0 - 0.5;
            }
        }
        self.max_ns as f64
    }

    /// p50/p90/p99/p99.9/mean/max in µs.
    pub fn summary_us(&self) -> Value {
        let us = |ns: f64| round(ns / 1000.0, 2);
        let mean = if self.n == 0 { 0.0 } else { self.sum_ns as f64 / self.n as f64 };
        json!({
            "p50_us": us(self.quantile_ns(0.50)),
            "p90_us": us(self.quantile_ns(0.90)),
            "p99_us": us(self.quantile_ns(0.99)),
            "p999_us": us(self.quantile_ns(0.999)),
            "mean_us": us(mean),
            "max_us": us(self.max_ns as f64),
        })
    }
}

/// What a closed-loop throughput run observed.
pub struct RunStats {
    pub hist: Histogram,
    pub ops: u64,
    /// Operations that found nothing (`Ok(false)`).
    pub misses: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub concurrency: usize,
    /// CPU used by this process and by Postgres during the run.
    pub cpu: Value,
}

impl RunStats {
    pub fn to_json(&self) -> Value {
        let secs = self.elapsed.as_secs_f64();
        json!({
            "concurrency": self.concurrency,
            "seconds": round(secs, 3),
            "ops": self.ops,
            "ops_per_s": super::rate(self.ops, secs),
            "latency": self.hist.summary_us(),
            "misses": self.misses,
            "errors": self.errors,
            "first_error": self.first_error,
            "cpu": self.cpu,
        })
    }
}

/// Runs `op` in a closed loop on `concurrency` tasks for `duration`. `op` gets a
/// random number (to pick its key) and says whether it found what it looked for.
/// Each operation's latency is timed around `op` alone (pool waits included).
pub async fn run_closed_loop<F, Fut>(
    concurrency: usize,
    duration: Duration,
    seed: u64,
    op: F,
) -> anyhow::Result<RunStats>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send,
{
    use rand::{Rng, SeedableRng};
    let cpu = super::Cpu::now();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed.wrapping_add(t as u64).wrapping_mul(0x9E37_79B9));
            let mut hist = Histogram::default();
            let (mut misses, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r: u64 = rng.random();
                let t0 = Instant::now();
                let outcome = op(r).await;
                hist.record(t0.elapsed());
                match outcome {
                    Ok(true) => {}
                    Ok(false) => misses += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                n += 1;
                // An in-memory op never yields on its own: let the other tasks run.
                if n.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            (hist, misses, errors, first_error)
        }));
    }
    let mut total = RunStats {
        hist: Histogram::default(),
        ops: 0,
        misses: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        concurrency,
        cpu: Value::Null,
    };
    for task in tasks {
        let (hist, misses, errors, first_error) = task.await?;
        total.hist.merge(&hist);
        total.misses += misses;
        total.errors += errors;
        if total.first_error.is_none() {
            total.first_error = first_error;
        }
    }
    total.elapsed = started.elapsed();
    total.ops = total.hist.count();
    total.cpu = cpu.since();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 123_456, 9_999_999_999, u64::MAX / 2] {
            let b = bucket_of(v);
            assert!(bucket_low(b) <= v, "{v}");
            assert!(bucket_low(b + 1) > v, "{v}");
            assert!((bucket_low(b + 1) - bucket_low(b)) as f64 <= (v as f64 / 64.0).max(1.0), "{v}");
        }
    }
}
