//! A typed client of the ledger's HTTP API, on the server's own wire types
//! (`ledger-wire`), so a request this client can build is one the server parses, and
//! a response the server sends is one this client reads.
//!
//! - One method per route, taking the route's request type and returning its response
//!   type ([`Reply`] adds the status, whether it was a replay and the position).
//! - Every command carries an `Idempotency-Key`: the one given, or a fresh UUID. A
//!   retry re-sends the same key, so a command is recorded at most once however often
//!   it is sent (API.md "Idempotency").
//! - Retries ([`RetryPolicy`]): transport failures, 5xx, 429 and 409
//!   `idempotency_key_in_flight`, with exponential backoff and full jitter, never
//!   sooner than the server's `Retry-After`. Business answers (4xx) are returned at once.
//! - Read-your-writes ([`ClientBuilder::read_your_writes`]): eventual reads then carry
//!   `min_position` of the last command this client saw recorded, so they reflect it.
//!
//! ```no_run
//! # async fn example() -> Result<(), ledger_client::Error> {
//! use ledger_client::Client;
//! use ledger_client::wire::{Amount, Currency, DepositRequest, OpenAccountRequest, TransferRequest};
//! let eur = Currency::parse("EUR").expect("a currency");
//! let amount = |n| Amount::new(n).expect("1 ..= 10^15 minor units");
//! let ledger = Client::builder("http://127.0.0.1:8080", "my-token").read_your_writes(true).build()?;
//! let open = |owner: &str| OpenAccountRequest {
//!     currency: eur,
//!     owner: Some(owner.try_into().expect("1 to 1024 bytes")),
//!     overdraft_limit: None,
//!     id: None,
//!     metadata: None,
//!     subject: None,
//! };
//! let alice = ledger.open_account(&open("alice@example.com"), None).await?;
//! let bob = ledger.open_account(&open("bob@example.com"), None).await?;
//! let deposit = DepositRequest {
//!     account_id: alice.id,
//!     amount: amount(2500),
//!     currency: eur,
//!     reference: None,
//!     metadata: None,
//!     effective_at: None,
//! };
//! // A key of your own makes the deposit safe to send again, even from another process.
//! ledger.deposit(&deposit, Some("order-42-deposit")).await?;
//! let transfer = TransferRequest {
//!     from: alice.id,
//!     to: bob.id,
//!     amount: amount(1000),
//!     currency: eur,
//!     reference: None,
//!     metadata: None,
//!     effective_at: None,
//! };
//! ledger.transfer(&transfer, None).await?;
//! // Read-your-writes: this eventual read waits until the read model shows the transfer.
//! assert_eq!(ledger.account(bob.id).await?.balance, 1000);
//! # Ok(()) }
//! ```

mod query;
mod retry;

pub use ledger_wire as wire;
pub use retry::RetryPolicy;

use ledger_wire::*;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem document (after any retries).
    #[error("{status} {}: {}", problem.code, problem.detail)]
    Api { status: u16, problem: Box<Problem>, retry_after: Option<Duration> },
    /// The server could not be reached or the answer was cut short (after any retries).
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer is not what the route's wire type says.
    #[error("{status}: the body does not parse as the route's type: {error}; body: {body}")]
    Decode { status: u16, body: String, error: String },
    /// The client was configured with something unusable.
    #[error("client: {0}")]
    Config(String),
}

impl Error {
    /// The stable error code of a problem answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { problem, .. } => Some(problem.code),
            _ => None,
        }
    }

    /// The HTTP status of an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            Error::Transport(e) => e.status().map(|s| s.as_u16()),
            Error::Config(_) => None,
        }
    }
}

/// A successful answer: the body as its wire type, and what the headers said.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply<T> {
    pub body: T,
    /// The HTTP status (a body's own `status` field is `reply.status`).
    pub http_status: u16,
    /// `Idempotent-Replayed: true`: the stored answer of an earlier request with this key.
    pub replayed: bool,
    /// `X-Ledger-Position` of a read: the log position the data reflects. (A command's
    /// own position is in its body.)
    pub as_of_position: Option<i64>,
    /// How many times the request was sent (1 without retries).
    pub attempts: u32,
}

impl<T> std::ops::Deref for Reply<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

/// What an observer ([`ClientBuilder::observe`]) is shown of each answer, before it is
/// decoded: for logging, metrics, or checking answers against the OpenAPI document.
pub struct Seen<'a> {
    pub method: &'a Method,
    /// The path, without the query string.
    pub path: &'a str,
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

type Observer = Arc<dyn Fn(&Seen<'_>) + Send + Sync>;

/// Builds a [`Client`].
pub struct ClientBuilder {
    base: String,
    token: String,
    retry: RetryPolicy,
    read_your_writes: bool,
    timeout: Duration,
    http: Option<reqwest::Client>,
    observer: Option<Observer>,
}

impl ClientBuilder {
    /// Retries as given (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Eventual reads wait for the position of this client's last recorded command.
    pub fn read_your_writes(mut self, on: bool) -> Self {
        self.read_your_writes = on;
        self
    }

    /// The timeout of one attempt (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses this HTTP client (its pool, its limits) instead of a new one.
    pub fn http(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Shows every answer (each attempt's) to `observer` before it is decoded.
    pub fn observe(mut self, observer: impl Fn(&Seen<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = self.base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Config(format!("the base URL must be http(s)://…, not {base:?}")));
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder().timeout(self.timeout).build()?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token: self.token,
                retry: self.retry,
                read_your_writes: self.read_your_writes,
                observer: self.observer,
            }),
            ledger: None,
            last_position: Arc::new(AtomicI64::new(0)),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    base: String,
    token: String,
    retry: RetryPolicy,
    read_your_writes: bool,
    observer: Option<Observer>,
}

/// A client of one ledger service, for one token, addressing one ledger (`default`
/// unless made by [`Client::ledger`]). Cheap to clone (clones share the connection
/// pool and the read-your-writes position).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The addressed ledger's path prefix (`/v1/ledgers/{name}`), `None` for `default`'s
    /// unprefixed routes.
    ledger: Option<Arc<str>>,
    /// The highest position of a command this client saw recorded: positions are a
    /// ledger's own, so each ledger's client keeps its own.
    last_position: Arc<AtomicI64>,
}

/// How a read may see the ledger: the read model (default), at least a position, or
/// the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Read {
    /// The read model as it is (with read-your-writes on: at least the last write).
    #[default]
    Eventual,
    /// The read model once it has applied this position.
    AtLeast(i64),
    /// Folded from the log: every command acknowledged before the request.
    Strong,
}

impl Client {
    pub fn builder(base: &str, token: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_owned(),
            token: token.to_owned(),
            retry: RetryPolicy::default(),
            read_your_writes: false,
            timeout: Duration::from_secs(30),
            http: None,
            observer: None,
        }
    }

    /// A client of the ledger `name` (API.md "Ledgers"): the same connection pool,
    /// token and policies, its routes under `/v1/ledgers/{name}/…`, and a
    /// read-your-writes position of its own. The directory and token routes
    /// (`/v1/admin/ledgers…`, `/v1/admin/tokens`) stay the deployment's.
    pub fn ledger(&self, name: &str) -> Result<Client, Error> {
        if !ledger_wire::fields::valid_ledger_name(name) {
            return Err(Error::Config(format!("{name:?} is not a ledger name ([a-z][a-z0-9-]{{0,62}})")));
        }
        let ledger = (name != ledger_wire::fields::DEFAULT_LEDGER).then(|| Arc::from(format!("/v1/ledgers/{name}")));
        Ok(Client { inner: self.inner.clone(), ledger, last_position: Arc::new(AtomicI64::new(0)) })
    }

    /// The path of `path` (a contract route under `/v1/`) for the addressed ledger.
    fn route(&self, path: &str) -> String {
        let deployment_wide = path.starts_with("/v1/admin/ledgers") || path.starts_with("/v1/admin/tokens");
        match (&self.ledger, path.strip_prefix("/v1")) {
            (Some(prefix), Some(rest)) if !deployment_wide => format!("{prefix}{rest}"),
            _ => path.to_owned(),
        }
    }

    /// The position of the last command this client saw recorded (0 before any).
    pub fn last_position(&self) -> i64 {
        self.last_position.load(Ordering::Acquire)
    }

    fn consistency(&self, read: Read) -> ConsistencyQuery {
        match read {
            Read::Strong => ConsistencyQuery { consistency: Some(Consistency::Strong), min_position: None },
            Read::AtLeast(p) => ConsistencyQuery { consistency: None, min_position: Some(p) },
            Read::Eventual if self.inner.read_your_writes && self.last_position() > 0 => {
                ConsistencyQuery { consistency: None, min_position: Some(self.last_position()) }
            }
            Read::Eventual => ConsistencyQuery::default(),
        }
    }

    /// Sends a request (retrying as the policy allows) and reads its answer as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<&serde_json::Value>,
        key: Option<&str>,
    ) -> Result<Reply<T>, Error> {
        let url = format!("{}{}{query}", self.inner.base, self.route(path));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.inner.http.request(method.clone(), &url).bearer_auth(&self.inner.token);
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = match request.send().await {
                Ok(response) => self.read(&method, response, key.is_some(), attempt).await,
                Err(e) => Err(Error::Transport(e)),
            };
            match outcome {
                Err(e) if attempt < self.inner.retry.attempts_max && retryable(&e) => {
                    let retry_after = match &e {
                        Error::Api { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(self.inner.retry.delay(attempt, retry_after)).await;
                }
                other => return other,
            }
        }
    }

    async fn read<T: DeserializeOwned>(
        &self,
        method: &Method,
        response: reqwest::Response,
        command: bool,
        attempts: u32,
    ) -> Result<Reply<T>, Error> {
        let status = response.status();
        let path = response.url().path().to_owned();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
        let position = header("x-ledger-position").and_then(|v| v.parse().ok());
        let retry_after = header("retry-after").and_then(|v| v.parse().ok()).map(Duration::from_secs);
        let content_type = header("content-type").unwrap_or_default();
        let bytes = response.bytes().await?;
        if let Some(observe) = &self.inner.observer {
            observe(&Seen { method, path: &path, status: status.as_u16(), content_type: &content_type, body: &bytes });
        }
        let decode_error = |error: String| Error::Decode {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(2048).collect(),
            error,
        };
        if !status.is_success() {
            let problem: Problem = serde_json::from_slice(&bytes).map_err(|e| decode_error(e.to_string()))?;
            return Err(Error::Api { status: status.as_u16(), problem: Box::new(problem), retry_after });
        }
        // Straight from the bytes, never through a `Value`: a system account's balance may
        // pass 64 bits, which a `Value` holds only as an inexact float.
        let body = serde_json::from_slice(&bytes).map_err(|e| decode_error(e.to_string()))?;
        // A command's answer carries the position of its last event.
        #[derive(serde::Deserialize)]
        struct Positioned {
            position: Option<i64>,
        }
        if command && let Ok(Positioned { position: Some(p) }) = serde_json::from_slice(&bytes) {
            self.last_position.fetch_max(p, Ordering::AcqRel);
        }
        Ok(Reply { body, http_status: status.as_u16(), replayed, as_of_position: position, attempts })
    }

    /// A command: POST with an Idempotency-Key (given, or a fresh UUID kept for retries).
    async fn command<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: Option<&str>,
    ) -> Result<Reply<T>, Error> {
        let generated;
        let key = match key {
            Some(k) => k,
            None => {
                generated = Uuid::new_v4().to_string();
                &generated
            }
        };
        let json =
            serde_json::to_value(body).map_err(|e| Error::Config(format!("the body does not serialize: {e}")))?;
        self.call(Method::POST, path, "", Some(&json), Some(key)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> Result<Reply<T>, Error> {
        self.call(Method::GET, path, &query::encode(query)?, None, None).await
    }

    // ---- Accounts ----

    pub async fn open_account(&self, r: &OpenAccountRequest, key: Option<&str>) -> Result<Reply<Account>, Error> {
        self.command("/v1/accounts", r, key).await
    }

    pub async fn close_account(&self, id: Uuid, key: Option<&str>) -> Result<Reply<Account>, Error> {
        self.command(&format!("/v1/accounts/{id}/close"), &EmptyRequest {}, key).await
    }

    /// `GET /v1/accounts/{id}`, eventual (with read-your-writes if on).
    pub async fn account(&self, id: Uuid) -> Result<Reply<Account>, Error> {
        self.account_read(id, Read::Eventual).await
    }

    pub async fn account_read(&self, id: Uuid, read: Read) -> Result<Reply<Account>, Error> {
        self.get(&format!("/v1/accounts/{id}"), &self.consistency(read)).await
    }

    pub async fn accounts_by_owner(&self, owner: &str) -> Result<Reply<AccountList>, Error> {
        #[derive(Serialize)]
        struct Q<'a> {
            owner: &'a str,
            #[serde(flatten)]
            consistency: ConsistencyQuery,
        }
        self.get("/v1/accounts", &Q { owner, consistency: self.consistency(Read::Eventual) }).await
    }

    /// One page of the statement; pass the page's `next_cursor` as `q.cursor` for the next.
    pub async fn transactions(&self, id: Uuid, q: &TransactionsQuery) -> Result<Reply<TransactionsPage>, Error> {
        #[derive(Serialize)]
        struct Q<'a> {
            #[serde(flatten)]
            page: &'a TransactionsQuery,
            #[serde(flatten)]
            consistency: ConsistencyQuery,
        }
        let q = Q { page: q, consistency: self.consistency(Read::Eventual) };
        self.get(&format!("/v1/accounts/{id}/transactions"), &q).await
    }

    pub async fn account_events(&self, id: Uuid, q: &StreamEventsQuery) -> Result<Reply<StreamEventsPage>, Error> {
        self.get(&format!("/v1/accounts/{id}/events"), q).await
    }

    pub async fn balance_at(&self, id: Uuid, q: &BalanceQuery) -> Result<Reply<HistoricalBalance>, Error> {
        self.get(&format!("/v1/accounts/{id}/balance"), q).await
    }

    // ---- Movements ----

    pub async fn deposit(&self, r: &DepositRequest, key: Option<&str>) -> Result<Reply<Deposit>, Error> {
        self.command("/v1/deposits", r, key).await
    }

    pub async fn transfer(&self, r: &TransferRequest, key: Option<&str>) -> Result<Reply<Transfer>, Error> {
        self.command("/v1/transfers", r, key).await
    }

    pub async fn get_transfer(&self, id: Uuid, read: Read) -> Result<Reply<Transfer>, Error> {
        self.get(&format!("/v1/transfers/{id}"), &self.consistency(read)).await
    }

    pub async fn reverse(&self, id: Uuid, r: &ReverseRequest, key: Option<&str>) -> Result<Reply<Transfer>, Error> {
        self.command(&format!("/v1/transfers/{id}/reverse"), r, key).await
    }

    pub async fn post_transaction(
        &self,
        r: &TransactionRequest,
        key: Option<&str>,
    ) -> Result<Reply<Transaction>, Error> {
        self.command("/v1/transactions", r, key).await
    }

    pub async fn get_transaction(&self, id: Uuid, read: Read) -> Result<Reply<Transaction>, Error> {
        self.get(&format!("/v1/transactions/{id}"), &self.consistency(read)).await
    }

    pub async fn reverse_transaction(
        &self,
        id: Uuid,
        r: &ReverseRequest,
        key: Option<&str>,
    ) -> Result<Reply<Transaction>, Error> {
        self.command(&format!("/v1/transactions/{id}/reverse"), r, key).await
    }

    /// `GET /v1/transactions`: one page (pass its `next_cursor` as `q.cursor` for the
    /// next); `q.metadata` is sent as `metadata.KEY=VALUE` parameters.
    pub async fn search_transactions(
        &self,
        q: &TransactionSearch,
        read: Read,
    ) -> Result<Reply<TransactionList>, Error> {
        let mut query = query::encode(q)?;
        let consistency = query::encode(&self.consistency(read))?;
        for part in [consistency.trim_start_matches('?').to_owned()]
            .into_iter()
            .chain(q.metadata.iter().map(|(k, v)| query::pair(&format!("metadata.{k}"), v)))
            .filter(|p| !p.is_empty())
        {
            query.push(if query.is_empty() { '?' } else { '&' });
            query.push_str(&part);
        }
        self.call(Method::GET, "/v1/transactions", &query, None, None).await
    }

    pub async fn place_hold(&self, r: &HoldRequest, key: Option<&str>) -> Result<Reply<Hold>, Error> {
        self.command("/v1/holds", r, key).await
    }

    pub async fn capture_hold(&self, id: Uuid, r: &CaptureRequest, key: Option<&str>) -> Result<Reply<Hold>, Error> {
        self.command(&format!("/v1/holds/{id}/capture"), r, key).await
    }

    pub async fn void_hold(&self, id: Uuid, key: Option<&str>) -> Result<Reply<Hold>, Error> {
        self.command(&format!("/v1/holds/{id}/void"), &EmptyRequest {}, key).await
    }

    pub async fn get_hold(&self, id: Uuid, read: Read) -> Result<Reply<Hold>, Error> {
        self.get(&format!("/v1/holds/{id}"), &self.consistency(read)).await
    }

    /// `POST /v1/bulk`: the items' own keys are theirs; `key` is the bulk's.
    pub async fn bulk(&self, r: &BulkRequest, key: Option<&str>) -> Result<Reply<BulkResponse>, Error> {
        self.command("/v1/bulk", r, key).await
    }

    pub async fn withdraw(&self, r: &WithdrawalRequest, key: Option<&str>) -> Result<Reply<Withdrawal>, Error> {
        self.command("/v1/withdrawals", r, key).await
    }

    pub async fn get_withdrawal(&self, id: Uuid, read: Read) -> Result<Reply<Withdrawal>, Error> {
        self.get(&format!("/v1/withdrawals/{id}"), &self.consistency(read)).await
    }

    // ---- The log and its audit ----

    pub async fn events(&self, q: &EventsQuery) -> Result<Reply<EventsPage>, Error> {
        self.get("/v1/events", q).await
    }

    pub async fn system_accounts(&self) -> Result<Reply<SystemAccounts>, Error> {
        self.get("/v1/system-accounts", &()).await
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<Reply<AuditPage>, Error> {
        self.get("/v1/audit", q).await
    }

    pub async fn verify_chain(&self) -> Result<Reply<ChainReport>, Error> {
        self.get("/v1/audit/verify", &()).await
    }

    // ---- Operations ----

    pub async fn projections(&self) -> Result<Reply<Projections>, Error> {
        self.get("/v1/admin/projections", &()).await
    }

    pub async fn rebuild(&self, name: ProjectionName, key: Option<&str>) -> Result<Reply<RebuildStarted>, Error> {
        let name = serde_json::to_value(name).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        self.command(&format!("/v1/admin/projections/{name}/rebuild"), &EmptyRequest {}, key).await
    }

    pub async fn breakers(&self) -> Result<Reply<Breakers>, Error> {
        self.get("/v1/admin/circuit-breakers", &()).await
    }

    pub async fn dead_letters(&self) -> Result<Reply<DeadLetters>, Error> {
        self.get("/v1/admin/dead-letters", &self.consistency(Read::Eventual)).await
    }

    pub async fn redrive(&self, id: Uuid, key: Option<&str>) -> Result<Reply<DeadLetterResolution>, Error> {
        self.command(&format!("/v1/admin/dead-letters/{id}/redrive"), &EmptyRequest {}, key).await
    }

    pub async fn discard(&self, id: Uuid, key: Option<&str>) -> Result<Reply<DeadLetterResolution>, Error> {
        self.command(&format!("/v1/admin/dead-letters/{id}/discard"), &EmptyRequest {}, key).await
    }

    pub async fn create_token(&self, r: &TokenRequest, key: Option<&str>) -> Result<Reply<TokenCreated>, Error> {
        self.command("/v1/admin/tokens", r, key).await
    }

    /// `POST /v1/admin/ledgers`: creates a ledger (admin).
    pub async fn create_ledger(&self, r: &LedgerRequest, key: Option<&str>) -> Result<Reply<LedgerView>, Error> {
        self.command("/v1/admin/ledgers", r, key).await
    }

    /// `GET /v1/admin/ledgers`: every ledger, with its head.
    pub async fn ledgers(&self) -> Result<Reply<Ledgers>, Error> {
        self.call(Method::GET, "/v1/admin/ledgers", "", None, None).await
    }

    /// `GET /v1/admin/ledgers/{name}`.
    pub async fn ledger_view(&self, name: &str) -> Result<Reply<LedgerView>, Error> {
        self.call(Method::GET, &format!("/v1/admin/ledgers/{name}"), "", None, None).await
    }

    pub async fn start_reconciliation(
        &self,
        r: &ReconciliationRequest,
        key: Option<&str>,
    ) -> Result<Reply<ReconciliationStarted>, Error> {
        self.command("/v1/admin/reconciliations", r, key).await
    }

    pub async fn reconciliation(&self, id: Uuid) -> Result<Reply<ReconciliationReport>, Error> {
        self.get(&format!("/v1/admin/reconciliations/{id}"), &()).await
    }

    // ---- Health ----

    pub async fn live(&self) -> Result<Reply<Live>, Error> {
        self.get("/health/live", &()).await
    }

    /// `GET /health/ready`; a not-ready service answers 503 with the same body, which
    /// is returned as `Ok` (status 503) rather than as an error.
    pub async fn ready(&self) -> Result<Reply<Ready>, Error> {
        let url = format!("{}/health/ready", self.inner.base);
        let response = self.inner.http.get(url).send().await?;
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = response.bytes().await?;
        if let Some(observe) = &self.inner.observer {
            observe(&Seen {
                method: &Method::GET,
                path: "/health/ready",
                status,
                content_type: &content_type,
                body: &bytes,
            });
        }
        let body = serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            error: e.to_string(),
        })?;
        Ok(Reply { body, http_status: status, replayed: false, as_of_position: None, attempts: 1 })
    }
}

/// Whether sending the same request again may succeed: the server or the network
/// failed, the token was rate limited, or the same key is still executing.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Transport(t) => t.is_connect() || t.is_timeout() || t.is_request() || t.is_body(),
        Error::Api { status, problem, .. } => {
            *status >= 500 || *status == 429 || problem.code == ErrorCode::IdempotencyKeyInFlight
        }
        Error::Decode { .. } | Error::Config(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16, code: ErrorCode) -> Error {
        Error::Api { status, problem: Box::new(Problem::new(status, "x", code, "x")), retry_after: None }
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        assert!(retryable(&problem(503, ErrorCode::Unavailable)));
        assert!(retryable(&problem(500, ErrorCode::Internal)));
        assert!(retryable(&problem(429, ErrorCode::RateLimited)));
        assert!(retryable(&problem(409, ErrorCode::IdempotencyKeyInFlight)));
        assert!(!retryable(&problem(409, ErrorCode::VersionConflict)));
        assert!(!retryable(&problem(422, ErrorCode::InsufficientFunds)));
        assert!(!retryable(&problem(404, ErrorCode::AccountNotFound)));
    }
}
