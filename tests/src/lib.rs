//! Helpers for integration tests: each test gets its own uuid-named, migrated database
//! and its own NATS prefix, and the server listens on a free loopback port.

pub mod conformance;
pub mod faultproxy;
pub mod procs;

use ledger_api::AppState;
use ledger_api::run::serve::Mode;
use ledger_infrastructure::Config;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The stable error codes of API.md (v1, then the v1.1 and v1.2 additions), in its
/// order.
pub const API_MD_ERROR_CODES: &[&str] = &[
    "validation_error",
    "unauthorized",
    "forbidden",
    "not_found",
    "account_not_found",
    "idempotency_key_missing",
    "idempotency_key_reused",
    "idempotency_key_in_flight",
    "insufficient_funds",
    "currency_mismatch",
    "account_closed",
    "same_account",
    "account_not_empty",
    "already_reversed",
    "version_conflict",
    "consistency_timeout",
    "payload_too_large",
    "unavailable",
    "internal",
    "condition_failed",
    "hold_not_pending",
    "hold_expired",
    "rate_limited",
    "ledger_not_found",
    "period_closed",
];

/// The typed client of a test: retries as in production, every answer checked against
/// the OpenAPI document.
pub fn typed_client(base: &str, token: &str) -> ledger_client::Client {
    ledger_client::Client::builder(base, token)
        .observe(|seen| conformance::check(seen.method.as_str(), seen.path, seen.status, seen.content_type, seen.body))
        .build()
        .expect("a loopback base URL")
}

/// The Postgres server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("LEDGER_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh configuration for one test: its own database and NATS prefix.
pub fn test_config() -> Config {
    let name = format!("ledger_test_{}", Uuid::new_v4().simple());
    Config::for_tests(&format!("{}/{name}", server_url()), &name)
}

/// A running server and clients for it: `ledger`, the typed client (admin token), and
/// `client`, raw HTTP for what a typed client cannot send. Every answer either sees is
/// checked against the OpenAPI document ([`conformance`]).
pub struct TestApp {
    pub base: String,
    pub ledger: ledger_client::Client,
    pub client: reqwest::Client,
    pub state: AppState,
    pub pool: PgPool,
    pub running: Option<ledger_api::run::serve::Running>,
}

/// A response, decoded.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn id(&self) -> Uuid {
        self.body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("response has an id")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(test_config()).await
    }

    pub async fn spawn_with(config: Config) -> TestApp {
        TestApp::spawn_mode(config, Mode::All).await
    }

    /// Starts the given parts of the service (API, workers or both).
    pub async fn spawn_mode(config: Config, mode: Mode) -> TestApp {
        let running = ledger_api::run::serve::start(config, mode).await.expect("database reachable and migrated");
        let base = running.addr.map(|a| format!("http://{a}")).unwrap_or_default();
        TestApp {
            ledger: typed_client(if base.is_empty() { "http://127.0.0.1:9" } else { &base }, ADMIN_TOKEN),
            base,
            client: reqwest::Client::new(),
            pool: running.state.pool.clone(),
            state: running.state.clone(),
            running: Some(running),
        }
    }

    /// A second handle on the same running service (no ownership of its lifetime).
    pub fn clone_handle(&self) -> TestApp {
        TestApp {
            base: self.base.clone(),
            ledger: self.ledger.clone(),
            client: self.client.clone(),
            state: self.state.clone(),
            pool: self.pool.clone(),
            running: None,
        }
    }

    /// Stops the service gracefully (as on SIGTERM).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop(std::time::Duration::from_secs(10)).await;
        }
    }

    /// Reads a response, after checking it against the OpenAPI document
    /// ([`conformance::check`]).
    pub async fn decode(method: &str, response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let path = response.url().path().to_owned();
        let bytes = response.bytes().await.expect("body readable");
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        conformance::check(method, &path, status.as_u16(), content_type, &bytes);
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    /// POSTs a JSON body with the admin token and the given Idempotency-Key.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.post_raw(path, Some(key), body.to_string().into_bytes()).await
    }

    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        TestApp::decode("POST", request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let request = self.client.get(format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        TestApp::decode("GET", request.send().await.expect("request sent")).await
    }

    pub async fn open_account(&self, currency: &str, overdraft_limit: i64) -> Uuid {
        let request = ledger_wire::OpenAccountRequest {
            currency: ledger_wire::Currency::parse(currency).expect("a currency code"),
            owner: Some("owner@example.com".try_into().expect("an owner")),
            overdraft_limit: Some(overdraft_limit.try_into().expect("an overdraft limit")),
            id: None,
            metadata: None,
            subject: None,
        };
        let reply = self.ledger.open_account(&request, None).await.expect("the account opens");
        assert_eq!(reply.http_status, 201);
        reply.id
    }

    pub async fn deposit(&self, account: Uuid, amount: i64, currency: &str) -> Reply {
        let body = json!({ "account_id": account, "amount": amount, "currency": currency });
        self.post("/v1/deposits", &Uuid::new_v4().to_string(), &body).await
    }

    pub async fn transfer(&self, from: Uuid, to: Uuid, amount: i64, currency: &str) -> Reply {
        let body = json!({ "from": from, "to": to, "amount": amount, "currency": currency });
        self.post("/v1/transfers", &Uuid::new_v4().to_string(), &body).await
    }

    /// The strong (write-side) view of an account.
    pub async fn account(&self, id: Uuid) -> Value {
        let reply = self.get(&format!("/v1/accounts/{id}?consistency=strong")).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body
    }

    /// Folds the whole log and checks the invariants: versions gapless per stream,
    /// every event balanced, the sum of balances zero per currency.
    pub async fn fold_log(&self) -> ledger_domain::Ledger {
        let mut ledger = ledger_domain::Ledger::new();
        let mut after = 0;
        loop {
            let page = self.state.store.read_all(after, 1000).await.expect("log readable");
            if page.is_empty() {
                break;
            }
            for e in &page {
                assert_eq!(e.position, after + 1, "positions are gapless");
                after = e.position;
                ledger.apply(&e.event().expect("event decodes"));
            }
        }
        for (currency, sum) in ledger.balance_sums() {
            assert_eq!(sum, 0, "money not conserved in {currency}");
        }
        ledger
    }
}

/// Makes every commit that moves the log's head take `seconds` longer (a deferred
/// trigger on `log_head`), so a fault finds the writer in the middle of an append;
/// [`fast_commits`] undoes it.
pub async fn slow_commits(pool: &PgPool, seconds: f64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create function test_slow_commit() returns trigger language plpgsql as
           $$ begin perform pg_sleep({seconds}); return null; end $$;
         create constraint trigger test_slow_commit after update on log_head
           deferrable initially deferred for each row execute function test_slow_commit();"
    )))
    .execute(pool)
    .await
    .expect("slow commits");
}

/// Undoes [`slow_commits`].
pub async fn fast_commits(pool: &PgPool) {
    sqlx::raw_sql("drop trigger test_slow_commit on log_head; drop function test_slow_commit();")
        .execute(pool)
        .await
        .expect("fast commits");
}

/// How far the furthest-behind projection is from the head of the log (1 if
/// Postgres does not answer, so a wait on it goes on).
pub async fn projection_lag(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select max(h.position - p.position) from projection_checkpoints p cross join log_head h")
        .fetch_one(pool)
        .await
        .unwrap_or(1)
}

/// Waits (bounded) until `check` holds, polling every 20 ms: for conditions that no
/// notification announces to a test.
pub async fn eventually<F, Fut>(what: &str, timeout_s: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout_s} s waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl TestApp {
    /// Checks the read models against a fold of the log: every account's balance,
    /// holds, version and statement, and every event applied exactly once. The
    /// projections are first brought up to the head (with the code the workers run),
    /// so a worker that is merely behind is not mistaken for a wrong one.
    pub async fn assert_read_models_match_log(&self) {
        self.catch_up().await;
        let ledger = self.fold_log().await;
        let mut accounts = 0;
        for (id, state) in ledger.streams() {
            let ledger_domain::Aggregate::Account(a) = &state.aggregate else { continue };
            accounts += 1;
            let row: (String, String, i64, String) = sqlx::query_as(
                "select balance::text, pending_holds::text, version, status from accounts_view where id = $1",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("account {id} missing from the read model: {e}"));
            assert_eq!(
                (row.0.parse::<i128>().ok(), row.1.parse::<i128>().ok(), row.2),
                (Some(a.balance.minor_units()), Some(a.pending_holds.minor_units()), state.version),
                "account {id}"
            );
            let sum: Option<String> =
                sqlx::query_scalar("select sum(amount)::text from account_entries where account_id = $1")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .expect("entries");
            let sum = sum.map_or(Some(0), |s| s.parse::<i128>().ok());
            assert_eq!(sum, Some(a.balance.minor_units()), "statement of {id} sums to its balance");
        }
        let rows: i64 =
            sqlx::query_scalar("select count(*) from accounts_view").fetch_one(&self.pool).await.expect("count");
        assert_eq!(rows, accounts, "no extra accounts in the read model");
    }

    /// Drives both projections straight from the log up to the head.
    pub async fn catch_up(&self) {
        for p in ledger_projections::Projection::ALL {
            ledger_projections::catch_up(&self.pool, p, None, 1000).await.expect("projection catches up");
        }
    }

    /// Waits until both projection consumers have nothing left to deliver or to be acked,
    /// so that what JetStream redelivers is counted too.
    pub async fn wait_consumers_drained(&self) {
        let js = async_nats::jetstream::new(self.state.nats.clone());
        let names = self.state.names.clone();
        eventually("the projection consumers have delivered everything", 30, || {
            let (js, names) = (js.clone(), names.clone());
            async move {
                let Ok(stream) = js.get_stream(names.events_stream()).await else { return false };
                for p in [ledger_projections::worker::CONSUMER] {
                    let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                        stream.get_consumer(&names.projection_consumer(p)).await;
                    let Ok(mut consumer) = consumer else { return false };
                    match consumer.info().await {
                        Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {}
                        _ => return false,
                    }
                }
                true
            }
        })
        .await;
    }

    /// The relay's checkpoint: the last position it has published (0 while it has none).
    pub async fn relayed(&self) -> i64 {
        sqlx::query_scalar("select position from relay_checkpoints").fetch_one(&self.pool).await.unwrap_or(0)
    }

    /// Waits until the relay has published up to `position`.
    pub async fn wait_relayed(&self, position: i64, seconds: u64) {
        eventually("relayed", seconds, || async { self.relayed().await >= position }).await;
    }

    /// How many messages the ledger's JetStream events stream holds (0 while it is missing).
    pub async fn stream_message_count(&self) -> u64 {
        let js = async_nats::jetstream::new(self.state.nats.clone());
        let Ok(mut stream) = js.get_stream(self.state.names.events_stream()).await else { return 0 };
        stream.info().await.map_or(0, |info| info.state.messages)
    }

    /// The position of every event the ledger's JetStream stream holds, in stream order:
    /// a message is one event, or a run of events (`{prefix}.events.ledger.batch`, a JSON
    /// array); nothing else is in it. `None` while the stream is missing.
    pub async fn stream_positions(&self) -> Option<Vec<i64>> {
        let js = async_nats::jetstream::new(self.state.nats.clone());
        let mut stream = js.get_stream(self.state.names.events_stream()).await.ok()?;
        let info = stream.info().await.ok()?.state.clone();
        let (batch, events) =
            (self.state.names.events_batch_subject(), format!("{}.events.", self.state.names.prefix()));
        let position = |e: &serde_json::Value| e["position"].as_i64().expect("an event's position");
        let mut positions = Vec::new();
        for sequence in info.first_sequence..=info.last_sequence {
            let Ok(m) = stream.get_raw_message(sequence).await else { continue };
            if m.subject.as_str() == batch {
                let run: Vec<serde_json::Value> = serde_json::from_slice(&m.payload).expect("a run of events");
                assert!(run.len() > 1, "message {sequence}: a run holds several events");
                positions.extend(run.iter().map(position));
            } else {
                assert!(m.subject.as_str().starts_with(&events), "message {sequence} is an event: {}", m.subject);
                positions.push(position(&serde_json::from_slice::<serde_json::Value>(&m.payload).expect("an event")));
            }
        }
        Some(positions)
    }

    pub async fn checkpoint(&self, name: &str) -> i64 {
        sqlx::query_scalar("select position from projection_checkpoints where name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .expect("checkpoint")
    }
}

/// A private nats-server with JetStream on a free loopback port, for fault tests
/// (never the machine's shared one).
pub struct NatsServer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let dir = std::env::temp_dir().join(format!("ledger-nats-{}", Uuid::new_v4().simple()));
        let mut server = NatsServer { port, dir, child: None };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (same port, same storage).
    pub async fn resume(&mut self) {
        let child = tokio::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server installed");
        self.child = Some(child);
        let port = self.port;
        eventually("nats-server accepts connections", 10, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    /// Kills the server (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ledger paying out through a fresh provider simulator with the given faults.
pub async fn with_simulator(
    faults: ledger_provider_sim::Faults,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, ledger_provider_sim::SimHandle) {
    let sim = ledger_provider_sim::Simulator::new(faults, 7).start_local().await.expect("simulator starts");
    let mut config = test_config();
    config.provider_url = sim.url();
    tweak(&mut config);
    (TestApp::spawn_with(config).await, sim)
}

impl TestApp {
    pub async fn withdraw(&self, account: Uuid, amount: i64) -> Uuid {
        let request = ledger_wire::WithdrawalRequest {
            account_id: account,
            amount: ledger_wire::Amount::new(amount).expect("an amount"),
            currency: ledger_wire::Currency::parse("EUR").expect("a currency code"),
            destination: "NL00BANK0001".try_into().expect("a destination"),
            metadata: None,
        };
        let reply = self.ledger.withdraw(&request, None).await.expect("the withdrawal is accepted");
        assert_eq!(reply.http_status, 202);
        reply.id
    }

    pub async fn withdrawal_status(&self, id: Uuid) -> String {
        let reply = self.ledger.get_withdrawal(id, ledger_client::Read::Strong).await.expect("the withdrawal reads");
        serde_json::to_value(reply.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// Waits (bounded) until every withdrawal has the given status.
    pub async fn wait_status(&self, ids: &[Uuid], status: &str, timeout_s: u64) {
        for id in ids {
            eventually(&format!("withdrawal {id} {status}"), timeout_s, || async {
                self.withdrawal_status(*id).await == status
            })
            .await;
        }
    }
}
