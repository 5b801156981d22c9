//! Overload (issue 31): beyond its bounds the service refuses at once, with
//! `Retry-After`, and goes on serving what it accepted; one token cannot take every
//! turn of the process.

use ledger_tests::{ADMIN_TOKEN, TestApp, test_config};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn get(app: &TestApp, token: &str, path: &str) -> (StatusCode, Option<String>, Duration) {
    let started = Instant::now();
    let r = app.client.get(format!("{}{path}", app.base)).bearer_auth(token).send().await.expect("sent");
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (r.status(), retry_after, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_its_bounds_the_service_sheds_at_once_and_serves_the_rest() {
    let mut config = test_config();
    config.http_in_flight_max = 6;
    config.token_in_flight_max = 3;
    config.consistency_wait = Duration::from_secs(3);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let issue = |name: String| {
        let app = app.clone_handle();
        async move {
            let r = app
                .post("/v1/admin/tokens", &Uuid::new_v4().to_string(), &json!({ "name": name, "role": "client" }))
                .await;
            r.body["token"].as_str().expect("a token").to_owned()
        }
    };
    let (second, third) = (
        issue(format!("second-{}", Uuid::new_v4().simple())).await,
        issue(format!("third-{}", Uuid::new_v4().simple())).await,
    );
    // A read that waits (a position the log has not reached): it holds its turn 3 s.
    let slow_path = format!("/v1/accounts/{a}?min_position=1000000000");
    let slow = |token: String| {
        let (app, path) = (app.clone_handle(), slow_path.clone());
        tokio::spawn(async move { get(&app, &token, &path).await })
    };
    let plain = format!("/v1/accounts/{a}");
    let mut waiting: Vec<_> = (0..3).map(|_| slow(ADMIN_TOKEN.to_owned())).collect();
    ledger_tests::eventually("the admin token's three turns are out", 10, || async {
        app.state.shared.token_in_flight.held(ledger_api::http::auth::BOOTSTRAP_PRINCIPAL) == 3
    })
    .await;
    // The admin token has its three turns out: a fourth is 429 at once.
    let (status, retry, took) = get(&app, ADMIN_TOKEN, &plain).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some() && took < Duration::from_secs(1), "at once, not after a wait: {retry:?} {took:?}");
    // Another token is served meanwhile.
    assert_eq!(get(&app, &second, &plain).await.0, StatusCode::OK);
    // The process's six turns out (three of each token): anyone else is 503 at once.
    waiting.extend((0..3).map(|_| slow(second.clone())));
    ledger_tests::eventually("the process's six turns are out", 10, || async {
        app.state.shared.request_permits.available_permits() == 0
    })
    .await;
    let (status, retry, took) = get(&app, &third, &plain).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry.is_some() && took < Duration::from_secs(1), "at once, not after a wait: {retry:?} {took:?}");
    // Health and metrics are not counted.
    let live = app.client.get(format!("{}/health/live", app.base)).send().await.expect("sent");
    assert_eq!(live.status(), StatusCode::OK);
    // What was accepted is answered as ever (here: its wait runs out), then turns free.
    for w in waiting {
        let (status, _, took) = w.await.expect("a request");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "consistency_timeout after its wait");
        assert!(took >= Duration::from_secs(2), "{took:?}");
    }
    assert_eq!(get(&app, &third, &plain).await.0, StatusCode::OK);
    assert_eq!(get(&app, ADMIN_TOKEN, &plain).await.0, StatusCode::OK);
}
