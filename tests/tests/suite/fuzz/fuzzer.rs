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
    /// The ledger every request addresses (`default`: unprefixed paths).
    pub(crate) ledger: String,
    /// Its log, read directly.
    pub(crate) store: ledger_infrastructure::EventStore,
    /// Ids of the other ledgers' streams (none in this ledger): what "unknown" ids are
    /// often drawn from, and what no answer of this ledger may contain.
    pub(crate) foreign: Vec<Uuid>,
}

/// A port nothing listens on: payouts to it never succeed.
pub(crate) fn closed_port() -> u16 {
    // Port 9 (discard), which nothing on these machines listens on. A port bound and
    // released here could be taken by another test's server meanwhile, whose 404 the
    // payout worker would take for the provider's refusal (and fail the withdrawal).
    9
}

impl Fuzz {
    pub(crate) async fn start(seed: u64, steps: usize, keep_going: bool, skip: Vec<String>) -> Fuzz {
        let (app, second) = Fuzz::apps().await;
        Fuzz::over(app, second, ledger_infrastructure::ledgers::DEFAULT_LEDGER, seed, steps, keep_going, skip)
    }

    /// The service, and a second writer process (`ledger api`) on the same databases.
    async fn apps() -> (TestApp, TestApp) {
        let mut config = test_config();
        config.provider_url = format!("http://127.0.0.1:{}", closed_port());
        let app = TestApp::spawn_with(config.clone()).await;
        let second = TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Api).await;
        (app, second)
    }

    /// One fuzzer per ledger of `names` (created first; `default` exists), on one
    /// service and its second writer; each its own seeded choices (`seed + i`).
    pub(crate) async fn start_ledgers(
        seed: u64,
        steps: usize,
        keep_going: bool,
        skip: Vec<String>,
        names: &[&str],
    ) -> Vec<Fuzz> {
        let (app, second) = Fuzz::apps().await;
        let mut fuzzers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if *name != ledger_infrastructure::ledgers::DEFAULT_LEDGER {
                let r = app
                    .post("/v1/admin/ledgers", &Uuid::new_v4().to_string(), &serde_json::json!({ "name": name }))
                    .await;
                assert_eq!(r.status, reqwest::StatusCode::CREATED, "{r:?}");
            }
            let (a, b) = (app.clone_handle(), second.clone_handle());
            fuzzers.push(Fuzz::over(a, b, name, seed.wrapping_add(i as u64), steps, keep_going, skip.clone()));
        }
        // The directory's events (`LedgerCreated`) are in default's log before any step.
        let head = app.state.store.head().await.expect("the log head");
        for f in fuzzers.iter_mut().filter(|f| f.ledger == ledger_infrastructure::ledgers::DEFAULT_LEDGER) {
            (f.log_seen, f.model.head) = (head, head);
        }
        // The first keeps the running processes (stopped when it is dropped).
        fuzzers[0].app = app;
        fuzzers[0].second = second;
        fuzzers
    }

    fn over(
        app: TestApp,
        second: TestApp,
        ledger: &str,
        seed: u64,
        steps: usize,
        keep_going: bool,
        skip: Vec<String>,
    ) -> Fuzz {
        let store = if ledger == ledger_infrastructure::ledgers::DEFAULT_LEDGER {
            app.state.store.clone()
        } else {
            let schema = ledger_infrastructure::ledgers::schema_for(ledger);
            let url = ledger_infrastructure::ledgers::scoped_url(&app.state.config.database_url, &schema);
            ledger_infrastructure::EventStore::new(sqlx::PgPool::connect_lazy(&url).expect("a database URL"))
        };
        Fuzz {
            ledger: ledger.to_owned(),
            store,
            foreign: Vec::new(),
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

    /// An id no stream of this ledger has: half the time one of another ledger's.
    pub(crate) fn unknown_id(&mut self) -> Uuid {
        if !self.foreign.is_empty() && self.rng.random_bool(0.5) {
            let candidate = *self.foreign.choose(&mut self.rng).expect("not empty");
            if !self.model.ids().contains(&candidate) {
                return candidate;
            }
        }
        self.uuid()
    }

    /// Whether a successful answer shows a stream of another ledger (an id of theirs
    /// that this ledger does not have and the request did not name).
    pub(crate) fn leaked(&self, req: &Req, resp: &Resp) -> Option<Uuid> {
        if !(200..300).contains(&resp.status) {
            return None;
        }
        let own = self.model.ids();
        let asked = req.describe();
        self.foreign
            .iter()
            .copied()
            .filter(|id| !own.contains(id))
            .find(|id| resp.text.contains(&id.to_string()) && !asked.contains(&id.to_string()))
    }

    pub(crate) async fn send(&mut self, req: &Req) -> Resp {
        self.requests += 1;
        match transport(&self.app, &self.ledger, req).await {
            Ok(resp) => {
                if let Some(id) = self.leaked(req, &resp) {
                    let label = self.label.clone();
                    self.fail(
                        format!("{label} :: another ledger's data"),
                        format!("{} -> answered {id}, a stream of another ledger: {}", req.describe(), resp.short()),
                    );
                }
                resp
            }
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
pub(crate) async fn transport(app: &TestApp, ledger: &str, req: &Req) -> Result<Resp, String> {
    let path = match req.path.strip_prefix("/v1/") {
        Some(rest) if ledger != ledger_infrastructure::ledgers::DEFAULT_LEDGER => {
            format!("/v1/ledgers/{ledger}/{rest}")
        }
        _ => req.path.clone(),
    };
    let mut r = app
        .client
        .request(req.method.clone(), format!("{}{path}", app.base))
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
