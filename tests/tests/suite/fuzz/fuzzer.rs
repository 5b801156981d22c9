//! The fuzzer's state and plumbing: starting the app, sending a request, the log of recent
//! steps, reporting a failure (at once, or once per key when keeping going), and the seeded
//! choices of hostile parts and variants every generator goes through.

use crate::fuzz::LOG_MAX;
use crate::fuzz::idempotency::Sent;
use crate::fuzz::model::Model;
use crate::fuzz::wire::{Req, Resp};
use ledger_tests::{ADMIN_TOKEN, TestApp, test_config};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use uuid::Uuid;

pub(crate) struct Failure {
    pub(crate) key: String,
    pub(crate) first: String,
    pub(crate) count: usize,
}

pub(crate) struct Fuzz {
    pub(crate) app: TestApp,
    /// A second writer process on the same database (`ledger api`'s parts): what races
    /// send to it decides against the same log through another writer.
    pub(crate) second: TestApp,
    pub(crate) rng: StdRng,
    pub(crate) seed: u64,
    pub(crate) steps: usize,
    pub(crate) step: usize,
    pub(crate) model: Model,
    pub(crate) log: VecDeque<String>,
    pub(crate) keep_going: bool,
    pub(crate) skip: Vec<String>,
    pub(crate) failures: Vec<Failure>,
    /// Commands answered 2xx or with a business rejection: these replay.
    pub(crate) sent: Vec<Sent>,
    /// (correlation id, position) of accepted commands.
    pub(crate) correlations: Vec<(String, i64)>,
    pub(crate) requests: u64,
    pub(crate) consistency_timeouts: u64,
    pub(crate) label: String,
    /// Plan plausible requests only (no hostile part, a valid key).
    pub(crate) calm: bool,
    /// Print every step as it runs (`LEDGER_FUZZ_TRACE=1`).
    pub(crate) trace: bool,
    /// The last log position `check_log_growth` has looked at, and the dead letters seen.
    pub(crate) log_seen: i64,
    pub(crate) dead_letters: u64,
    /// The part the next plan makes hostile, and the variants it prefers: so that the
    /// rules with many variants (metadata, reserved ids) are reached in a short run.
    pub(crate) force: Option<&'static str>,
    pub(crate) prefer: Vec<&'static str>,
}

/// A port nothing listens on (bound, then released): payouts to it never succeed.
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("addr").port()
}

impl Fuzz {
    pub(crate) async fn start(seed: u64, steps: usize, keep_going: bool, skip: Vec<String>) -> Fuzz {
        let mut config = test_config();
        config.provider_url = format!("http://127.0.0.1:{}", closed_port());
        let app = TestApp::spawn_with(config.clone()).await;
        let second = TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Api).await;
        Fuzz {
            app,
            second,
            rng: StdRng::seed_from_u64(seed),
            seed,
            steps,
            step: 0,
            model: Model::default(),
            log: VecDeque::new(),
            keep_going,
            skip,
            failures: Vec::new(),
            sent: Vec::new(),
            correlations: Vec::new(),
            requests: 0,
            consistency_timeouts: 0,
            label: String::new(),
            calm: false,
            trace: std::env::var("LEDGER_FUZZ_TRACE").is_ok_and(|v| v == "1"),
            force: None,
            prefer: Vec::new(),
            log_seen: 0,
            dead_letters: 0,
        }
    }

    /// The last steps (all of them when failing at once; a few when keeping going).
    pub(crate) fn recent(&self) -> String {
        let n = if self.keep_going { 3 } else { LOG_MAX };
        let skip = self.log.len().saturating_sub(n);
        self.log.iter().skip(skip).map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    }

    /// Reports a broken invariant: panics at once, or (keep-going) records it once per key.
    pub(crate) fn fail(&mut self, key: String, message: String) {
        let text = format!(
            "fuzz failure [{key}] at step {} (seed {}): {message}\nreproduce: LEDGER_FUZZ_SEED={} LEDGER_FUZZ_STEPS={} \
             cargo test -p ledger-tests --test suite fuzz:: -- --nocapture\nlast steps:\n{}",
            self.step,
            self.seed,
            self.seed,
            self.steps,
            self.recent()
        );
        if !self.keep_going {
            panic!("{text}");
        }
        match self.failures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.count += 1,
            None => {
                eprintln!("\n{text}\n");
                self.failures.push(Failure { key, first: message, count: 1 });
            }
        }
    }

    pub(crate) fn note(&mut self, line: String) {
        if self.log.len() == LOG_MAX {
            self.log.pop_front();
        }
        let line = format!("step {}: {line}", self.step);
        if self.trace {
            eprintln!("{line}");
        }
        self.log.push_back(line);
    }

    pub(crate) fn skipped(&self, tag: &str) -> bool {
        self.skip.iter().any(|s| !s.is_empty() && tag.starts_with(s.as_str()))
    }

    /// One of `variants`, minus the skipped ones (`None` if all are).
    pub(crate) fn variant<'a>(&mut self, prefix: &str, variants: &[&'a str]) -> Option<&'a str> {
        let allowed: Vec<&'a str> =
            variants.iter().copied().filter(|v| !self.skipped(&format!("{prefix}={v}"))).collect();
        let preferred: Vec<&'a str> = allowed.iter().copied().filter(|v| self.prefer.contains(v)).collect();
        if !preferred.is_empty() {
            return preferred.choose(&mut self.rng).copied();
        }
        allowed.choose(&mut self.rng).copied()
    }

    /// Which part of a command to make hostile, if any (about a third of commands).
    pub(crate) fn hostile_part(&mut self, parts: &[&'static str]) -> Option<&'static str> {
        if let Some(forced) = self.force.filter(|f| parts.contains(f)) {
            return Some(forced);
        }
        if !self.calm && self.rng.random_bool(0.35) { parts.choose(&mut self.rng).copied() } else { None }
    }

    pub(crate) fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    pub(crate) async fn send(&mut self, req: &Req) -> Resp {
        self.requests += 1;
        match transport(&self.app, req).await {
            Ok(resp) => resp,
            Err(e) => self.transport_failed(req, e),
        }
    }

    /// A request that got no HTTP answer: a failure, and an empty answer to go on with.
    pub(crate) fn transport_failed(&mut self, req: &Req, e: String) -> Resp {
        let label = self.label.clone();
        self.fail(format!("{label} :: transport error"), format!("{} -> {e}", req.describe()));
        Resp { status: 0, headers: HeaderMap::new(), body: Value::Null, text: e }
    }
}

/// Sends a request to `app` (the fuzzer's own, or the second writer process), without
/// borrowing the fuzzer: requests that race are sent at once.
pub(crate) async fn transport(app: &TestApp, req: &Req) -> Result<Resp, String> {
    let mut r = app
        .client
        .request(req.method.clone(), format!("{}{}", app.base, req.path))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(30));
    if let Some(b) = &req.body {
        r = r.header("content-type", "application/json").body(b.clone());
    }
    if let Some(k) = &req.key {
        r = r.header("idempotency-key", HeaderValue::from_bytes(k).expect("generated keys are header values"));
    }
    if let Some(c) = &req.correlation {
        r = r.header("x-correlation-id", HeaderValue::from_bytes(c).expect("generated ids are header values"));
    }
    let response = r.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Resp { status, headers, body, text: String::from_utf8_lossy(&bytes).into_owned() })
}
