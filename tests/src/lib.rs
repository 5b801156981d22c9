//! Helpers for integration tests: each test gets its own uuid-named, migrated database
//! and its own NATS prefix, and the server listens on a free loopback port.

use ledger_api::AppState;
use ledger_infrastructure::Config;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The Postgres server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("LEDGER_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh configuration for one test: its own database and NATS prefix.
pub fn test_config() -> Config {
    let name = format!("ledger_test_{}", Uuid::new_v4().simple());
    Config::for_tests(&format!("{}/{name}", server_url()), &name)
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub pool: PgPool,
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
        let state = ledger_api::serve::build_state(config).await.expect("database reachable and migrated");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let serving = state.clone();
        tokio::spawn(async move {
            let _ = ledger_api::serve::serve(serving, listener, std::future::pending()).await;
        });
        TestApp { base: format!("http://{addr}"), client: reqwest::Client::new(), pool: state.pool.clone(), state }
    }

    async fn decode(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body readable");
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
        TestApp::decode(request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let request = self.client.get(format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN);
        TestApp::decode(request.send().await.expect("request sent")).await
    }

    pub async fn open_account(&self, currency: &str, overdraft_limit: i64) -> Uuid {
        let body = json!({ "currency": currency, "overdraft_limit": overdraft_limit, "owner": "owner@example.com" });
        let reply = self.post("/v1/accounts", &Uuid::new_v4().to_string(), &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.id()
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
