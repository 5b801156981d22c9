//! The operator console (`GET /console`) driven in headless Chromium through
//! chromedriver's WebDriver API, the way a person would: sign in, find an account by
//! owner and read its balance and statement, open a transaction, redrive a dead letter,
//! start a reconciliation and read its result, register and delete a webhook, verify
//! the chain, check the signed tree head, close a period and read its balances, check
//! an event's inclusion; then a client-role token, which is offered no admin action.
//! Screenshots of every page go to `target/console-screenshots/`. No request leaves the
//! origin.

use ledger_tests::procs::free_port;
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually, with_simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// How long the test waits for the browser to show something: generous, since a loaded
/// 2-core machine runs Chromium, the service and other tests at once.
const WAIT: Duration = Duration::from_secs(30);

/// A WebDriver session on a chromedriver of its own.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        // A process group of its own: chromedriver starts Chromium, which must go with it.
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is installed (scripts/test installs chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver answers", 30, || {
            let (http, base) = (http.clone(), base.clone());
            async move { http.get(format!("{base}/status")).send().await.is_ok() }
        })
        .await;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync"]
            }
        } } });
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("session")
            .json()
            .await
            .expect("json");
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        Browser { http, base, session, _driver: driver, shots }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, url);
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        let answer: Value = request.send().await.expect("webdriver").json().await.expect("webdriver json");
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The element for `css`, waiting (bounded) until it is there.
    async fn find(&self, css: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            let v = self
                .call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })))
                .await;
            if let Some(id) = v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str) {
                return id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shot = self.screenshot("missing-element").await;
        panic!("no element {css} (screenshot {shot:?})");
    }

    async fn count(&self, css: &str) -> usize {
        let v =
            self.call(reqwest::Method::POST, "/elements", Some(json!({ "using": "css selector", "value": css }))).await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await.as_str().unwrap_or("").to_owned()
    }

    /// Waits (bounded) until the element's text satisfies `check`.
    async fn text_until(&self, css: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.count(css).await > 0 {
                last = self.text(css).await;
                if check(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shot = self.screenshot("unexpected-text").await;
        panic!("{css} never matched; last text {last:?} (screenshot {shot:?})");
    }

    /// Clicks a link and waits (bounded) until the page's hash starts with `hash`,
    /// clicking again if the first click landed while the page was still settling.
    async fn follow(&self, css: &str, hash: &str) {
        for _ in 0..3 {
            self.click(css).await;
            let deadline = std::time::Instant::now() + WAIT / 3;
            while std::time::Instant::now() < deadline {
                let now = self.script("return location.hash").await;
                if now.as_str().is_some_and(|h| h.starts_with(hash)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let shot = self.screenshot("link-not-followed").await;
        panic!("{css} never led to {hash} (screenshot {shot:?})");
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.fill(&[(css, text)]).await;
    }

    /// Types each text into its field, then checks every field holds its text, all
    /// typed again if one does not (a page drawn again meanwhile replaces its fields).
    async fn fill(&self, fields: &[(&str, &str)]) {
        for _ in 0..3 {
            for (css, text) in fields {
                let id = self.find(css).await;
                self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await;
                self.call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({ "text": text }))).await;
            }
            let mut held = true;
            for (css, text) in fields {
                let id = self.find(css).await;
                let value = self.call(reqwest::Method::GET, &format!("/element/{id}/property/value"), None).await;
                held &= value.as_str() == Some(*text);
            }
            if held {
                return;
            }
        }
        let shot = self.screenshot("fields-not-filled").await;
        panic!("{fields:?} never held their text (screenshot {shot:?})");
    }

    async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    async fn displayed(&self, css: &str) -> bool {
        let id = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/displayed"), None).await == json!(true)
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = decode_base64(png.as_str().unwrap_or(""));
        let path = self.shots.join(format!("{name}.png"));
        std::fs::File::create(&path).and_then(|mut f| f.write_all(&bytes)).expect("screenshot written");
        path
    }

    async fn size(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started (killing
        // chromedriver alone left them running, and busy, after every test run).
        if let Some(pid) = self._driver.id() {
            let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
        }
        let _ = self._driver.start_kill();
    }
}

/// Standard base64 (WebDriver screenshots), without another dependency.
fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_and_a_client_use_the_console_in_a_real_browser() {
    let (app, _sim) = with_simulator(ledger_provider_sim::Faults::default(), |c| c.webhook_attempts_max = 1).await;
    // What the operator will look at: an account with an owner, money, a statement.
    let owner = format!("alice-{}", Uuid::new_v4().simple());
    let opened =
        app.post("/v1/accounts", &Uuid::new_v4().to_string(), &json!({ "currency": "EUR", "owner": owner })).await;
    let a = opened.id();
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 12_345, "EUR").await;
    let transfer = app.transfer(a, b, 2_345, "EUR").await;
    assert_eq!(transfer.status, StatusCode::CREATED);
    // A dead letter to redrive: a webhook whose endpoint refuses connections.
    let dead_port = free_port();
    let r = app
        .post(
            "/v1/admin/webhooks",
            &Uuid::new_v4().to_string(),
            &json!({ "url": format!("http://127.0.0.1:{dead_port}/x"), "event_types": ["DepositRecorded"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.deposit(a, 1, "EUR").await;
    // After the last posting was recorded (the database's clock is this host's): the
    // period below closes here, so it holds every posting and is not in the future.
    let posted = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    eventually("a webhook dead letter exists", 30, || async {
        app.get("/v1/admin/dead-letters").await.body["dead_letters"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let client_token = app
        .post(
            "/v1/admin/tokens",
            &Uuid::new_v4().to_string(),
            &json!({ "name": format!("console-client-{}", Uuid::new_v4().simple()), "role": "client" }),
        )
        .await
        .body["token"]
        .as_str()
        .expect("a client token")
        .to_owned();
    app.catch_up().await;

    // The page itself: static, no token, a policy that allows this origin only.
    let page = app.client.get(format!("{}/console", app.base)).send().await.expect("console");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(
        csp,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "this origin only"
    );

    let browser = Browser::start().await;
    browser.go(&format!("{}/console", app.base)).await;
    browser.find("#token").await;
    browser.screenshot("01-sign-in").await;
    browser.type_into("#token", "not-a-token").await;
    browser.click("#sign-in-button").await;
    let error = browser.text_until("#error", |t| !t.is_empty()).await;
    assert!(error.contains("not accepted"), "a clear error: {error}");
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#sign-in-button").await;
    let head = browser.text_until("#log-head", |t| t.parse::<i64>().is_ok()).await;
    assert!(head.parse::<i64>().expect("head") > 0);
    browser.screenshot("02-overview").await;

    // Find the account by owner; read balance and statement.
    browser.go(&format!("{}/console#/accounts", app.base)).await;
    browser.type_into("#account-query", &owner).await;
    browser.click("#account-search button").await;
    browser.follow(".account-link", "#/account/").await;
    let balance = browser.text_until("#balance", |t| t.contains("100.01")).await;
    assert!(
        balance.contains('€') || balance.contains("EUR"),
        "minor units shown as an amount in its currency: {balance}"
    );
    assert_eq!(browser.count("#statement tbody tr").await, 3, "the statement: two deposits and a transfer");
    browser.screenshot("03-account").await;
    let hover = browser.script("return document.querySelector('#statement time').getAttribute('title')").await;
    assert!(hover.as_str().is_some_and(|t| t.ends_with("(UTC)")), "the UTC value on hover: {hover}");
    // A transaction with its audit metadata.
    browser.go(&format!("{}/console#/transaction/{}", app.base, transfer.id())).await;
    browser.find("#transaction").await;
    let posting = browser.text("#transaction tbody").await;
    assert!(posting.contains(&a.to_string()) && posting.contains(&b.to_string()), "the posting's accounts: {posting}");
    let audit = browser.text("#audit").await;
    assert!(audit.contains("TransferPosted") && audit.contains("LEDGER_ADMIN_TOKEN"), "audit metadata shown: {audit}");
    browser.screenshot("04-transaction").await;

    // Redrive the dead letter.
    browser.go(&format!("{}/console#/dead-letters", app.base)).await;
    browser.find("button.redrive").await;
    browser.screenshot("05-dead-letters").await;
    browser.click("button.redrive").await;
    // The redrive was sent: one more attempt at the event (the endpoint still refuses,
    // so the letter is open again with two attempts).
    eventually("the redrive was sent", 20, || async {
        let attempts: Option<i32> = sqlx::query_scalar("select attempts from webhook_dead_letters")
            .fetch_optional(&app.pool)
            .await
            .ok()
            .flatten();
        attempts == Some(2)
    })
    .await;

    // Start a reconciliation and read its result.
    browser.go(&format!("{}/console#/reconciliations", app.base)).await;
    browser.click("#start-reconciliation").await;
    let status = browser.text_until("#reconciliation-status", |t| t == "finished" || t == "failed").await;
    assert_eq!(status, "finished", "the run finished");
    browser.text_until("#reconciliation-matched", |t| t.parse::<u64>().is_ok()).await;
    browser.screenshot("06-reconciliation").await;
    browser.go(&format!("{}/console#/overview", app.base)).await;
    let last = browser.text_until("#last-reconciliation #reconciliation-status", |t| !t.is_empty()).await;
    assert_eq!(last, "finished", "the overview shows the last reconciliation");

    // Register and delete a webhook.
    browser.go(&format!("{}/console#/webhooks", app.base)).await;
    browser.fill(&[("#webhook-url", "http://127.0.0.1:9/console-test"), ("#webhook-types", "TransferPosted")]).await;
    browser.click("#webhook-form button").await;
    let secret = browser.text_until("#webhook-created .secret", |t| t.starts_with("whsec_")).await;
    assert!(secret.len() > 20);
    browser.screenshot("07-webhooks").await;
    let listed = app.get("/v1/admin/webhooks").await.body["webhooks"].clone();
    let mine = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["url"] == "http://127.0.0.1:9/console-test")
        .and_then(|w| w["id"].as_str())
        .expect("the webhook registered through the console")
        .to_owned();
    assert!(listed.as_array().is_some_and(|l| l.len() == 2));
    browser.click(&format!("tr[data-id='{mine}'] button.delete-webhook")).await;
    eventually("the console's webhook is deleted, the other one kept", 20, || async {
        let ids: Vec<Value> = app.get("/v1/admin/webhooks").await.body["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w["id"].clone())
            .collect();
        ids.len() == 1 && ids[0] != json!(mine)
    })
    .await;
    let row = format!("tr[data-id='{mine}']");
    eventually("and gone from the page", 5, || async { browser.count(&row).await == 0 }).await;

    // Verify the chain.
    browser.go(&format!("{}/console#/verify", app.base)).await;
    browser.click("#verify").await;
    let verified = browser.text_until("#verify-result", |t| t.contains("verifies") || t.contains("broken")).await;
    assert!(verified.contains("The chain verifies"), "{verified}");
    browser.screenshot("08-verify").await;

    // The verifiable log: the latest tree head, its signature checked in the browser
    // (WebCrypto Ed25519; a Chromium without it says so, and that is accepted).
    browser.go(&format!("{}/console#/audit", app.base)).await;
    let signature = browser
        .text_until("#tree-head-signature", |t| t.starts_with("Signature") || t.starts_with("This browser"))
        .await;
    assert!(
        !signature.contains("NOT")
            && (signature.starts_with("Signature verifies") || signature.starts_with("This browser cannot check")),
        "the tree head's signature: {signature}"
    );
    // Close a period at `posted`: after the last posting and, this test's only period,
    // later than any previous one; in the past.
    let closes_at = posted;
    // Typed and sent again if the page was drawn again meanwhile (its fields replaced);
    // a close that went through shows its row, and is not sent again.
    for _ in 0..3 {
        browser.fill(&[("#period-closes-at", closes_at.as_str())]).await;
        browser.click("#close-period").await;
        // A bounded poll on the page (not a fixed pause).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && browser.count("#periods a.period-link").await == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if browser.count("#periods a.period-link").await > 0 {
            break;
        }
    }
    browser.find("#periods a.period-link").await;
    assert_eq!(browser.count("#periods a.period-link").await, 1, "one period closed");
    browser.screenshot("08a-audit").await;
    // The period's balances: the account's, effective at the close.
    browser.follow("#periods a.period-link", "#/period/").await;
    let row = format!("#period-balances tr[data-account='{a}']");
    let closed = browser.text_until(&row, |t| t.contains("100.01")).await;
    assert!(closed.contains("EUR"), "the balance at the close, with its currency: {closed}");
    browser.screenshot("08a-period").await;
    // An event of the transaction checked in the browser: its leaf hashed from its chain
    // hash, its audit path folded up to the signed head's root.
    browser.go(&format!("{}/console#/transaction/{}", app.base, transfer.id())).await;
    browser.find("#audit .check-inclusion").await;
    let position = browser
        .script("return document.querySelector('#audit .check-inclusion').getAttribute('data-position')")
        .await
        .as_str()
        .expect("the event's position")
        .to_owned();
    let result = format!("inclusion-{position}");
    let shown = format!("const e = document.getElementById('{result}'); return e === null ? '' : e.textContent");
    // Clicked again if the page was drawn again meanwhile (the click then went nowhere).
    for _ in 0..3 {
        browser.click("#audit .check-inclusion").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && browser.script(&shown).await == json!("") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if browser.script(&shown).await != json!("") {
            break;
        }
    }
    let included =
        browser.text_until(&format!("#{result}"), |t| t.starts_with("Included") || t.starts_with("NOT")).await;
    assert!(included.starts_with("Included in the tree of size"), "the event's inclusion: {included}");
    assert!(!included.contains("does NOT verify"), "in a head whose signature verifies: {included}");
    browser.screenshot("08a-inclusion").await;

    // Erase the subject of the owner's account (its own id): offered to the admin, and
    // only once the subject is typed to confirm it.
    browser.go(&format!("{}/console#/account/{a}", app.base)).await;
    browser.find("#erase-form").await;
    let disabled = "const b = document.getElementById('erase'); return b === null ? null : b.disabled";
    eventually("the erase button waits for the subject to be typed", 10, || async {
        browser.script(disabled).await == json!(true)
    })
    .await;
    // Typed and sent again if the page was drawn again meanwhile (its fields replaced).
    for _ in 0..3 {
        browser.fill(&[("#erase-confirm", &a.to_string()), ("#erase-reason", "console test")]).await;
        browser.click("#erase").await;
        let erased = "const e = document.getElementById('erased'); return e === null ? null : e.textContent";
        // A bounded poll on the page's text (not a fixed pause).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && browser.script(erased).await != json!("erased") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if browser.script(erased).await == json!("erased") {
            break;
        }
    }
    browser.text_until("#erased", |t| t == "erased").await;
    assert_eq!(browser.text("#owner").await, "—", "the owner is gone");
    assert_eq!(browser.count("#erase-form").await, 0, "nothing more to erase");
    browser.screenshot("08b-erased").await;

    // Another ledger: picked by name, its accounts are found, default's are not.
    let made = app.post("/v1/admin/ledgers", &Uuid::new_v4().to_string(), &json!({ "name": "console-books" })).await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    let other_owner = format!("bob-{}", Uuid::new_v4().simple());
    let body = json!({ "currency": "EUR", "owner": other_owner });
    let other = app.post("/v1/ledgers/console-books/accounts", &Uuid::new_v4().to_string(), &body).await;
    assert_eq!(other.status, StatusCode::CREATED, "{other:?}");
    let look_up = format!("/v1/ledgers/console-books/accounts?owner={other_owner}");
    eventually("the other ledger's read model has the account", 30, || async {
        app.get(&look_up).await.body["accounts"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    browser.type_into("#ledger", "console-books").await;
    browser.click("#ledger-go").await;
    browser.text_until("#ledger-now", |t| t == "console-books").await;
    browser.go(&format!("{}/console#/accounts", app.base)).await;
    browser.type_into("#account-query", &owner).await;
    browser.click("#account-search button").await;
    browser.text_until("#account-results", |t| t.contains("None.")).await;
    browser.type_into("#account-query", &other_owner).await;
    browser.click("#account-search button").await;
    let found = browser.text_until("#account-results", |t| t.contains(&other.id().to_string())).await;
    assert!(!found.contains(&a.to_string()), "default's account is not in another ledger: {found}");
    browser.screenshot("09-ledger-picked").await;
    browser.type_into("#ledger", "default").await;
    browser.click("#ledger-go").await;
    browser.text_until("#ledger-now", |t| t == "default").await;

    // A phone-sized window.
    browser.size(390, 844).await;
    browser.go(&format!("{}/console#/overview", app.base)).await;
    browser.find("#log-head").await;
    let overflow = browser.script("return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(overflow, json!(true), "no sideways scrolling of the page on a phone");
    browser.screenshot("10-overview-phone").await;
    browser.size(1280, 900).await;

    // Nothing was fetched from another origin.
    let resources = browser.script("return performance.getEntriesByType('resource').map(e => e.name)").await;
    let origin = app.base.clone();
    let foreign: Vec<&str> = resources
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|u| !u.starts_with(&origin))
        .collect();
    assert!(foreign.is_empty(), "requests to another origin: {foreign:?}");

    // A client-role token: no admin page, no admin action offered.
    browser.click("#sign-out").await;
    browser.type_into("#token", &client_token).await;
    browser.click("#sign-in-button").await;
    browser.find("#account-query").await;
    for link in ["#/overview", "#/dead-letters", "#/reconciliations", "#/webhooks", "#/audit"] {
        assert!(!browser.displayed(&format!("nav a[href='{link}']")).await, "{link} is not offered to a client");
    }
    browser.go(&format!("{}/console#/dead-letters", app.base)).await;
    eventually("an admin route sends a client back", 5, || async {
        browser.script("return location.hash").await == json!("#/accounts")
    })
    .await;
    assert_eq!(
        browser.script("return document.getElementById('error').hidden").await,
        json!(true),
        "and asks nothing it may not"
    );
    let actions = "button.redrive, button.discard, button.delete-webhook, #start-reconciliation, #close-period";
    assert_eq!(browser.count(actions).await, 0);
    browser.go(&format!("{}/console#/account/{b}", app.base)).await;
    browser.find("#erased").await;
    assert_eq!(browser.count("#erase-form").await, 0, "erasure is not offered to a client");
    browser.screenshot("11-client").await;
    let resources = browser.script("return performance.getEntriesByType('resource').map(e => e.name)").await;
    assert!(
        resources.as_array().into_iter().flatten().filter_map(Value::as_str).all(|u| u.starts_with(&origin)),
        "requests to another origin: {resources}"
    );
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_is_static_and_needs_no_token() {
    let app = TestApp::spawn().await;
    for (path, kind) in
        [("/console", "text/html"), ("/console/app.js", "text/javascript"), ("/console/app.css", "text/css")]
    {
        let r = app.client.get(format!("{}{path}", app.base)).send().await.expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let body = r.text().await.expect("body");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} names no other host");
    }
    let missing = app.client.get(format!("{}/console/nope.js", app.base)).send().await.expect("missing");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
