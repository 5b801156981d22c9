//! The OpenAPI document and the docs page: served without a token, valid OpenAPI 3.1
//! (checked by a real validator, `openapi-spec-validator`), covering every route of
//! API.md, and in step with the router both ways.

use ledger_tests::{ADMIN_TOKEN, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Every route API.md promises: the document may not drop one (even together with its handler).
const API_MD_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{id}"),
    ("POST", "/v1/accounts/{id}/close"),
    ("GET", "/v1/accounts/{id}/events"),
    ("GET", "/v1/accounts/{id}/transactions"),
    ("GET", "/v1/accounts/{id}/balance"),
    ("POST", "/v1/deposits"),
    ("POST", "/v1/transfers"),
    ("GET", "/v1/transfers/{id}"),
    ("POST", "/v1/transfers/{id}/reverse"),
    ("POST", "/v1/transactions"),
    ("GET", "/v1/transactions"),
    ("GET", "/v1/transactions/{id}"),
    ("POST", "/v1/transactions/{id}/reverse"),
    ("POST", "/v1/holds"),
    ("GET", "/v1/holds/{id}"),
    ("POST", "/v1/holds/{id}/capture"),
    ("POST", "/v1/holds/{id}/void"),
    ("POST", "/v1/bulk"),
    ("POST", "/v1/withdrawals"),
    ("GET", "/v1/withdrawals/{id}"),
    ("GET", "/v1/events"),
    ("GET", "/v1/system-accounts"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/admin/projections"),
    ("POST", "/v1/admin/projections/{name}/rebuild"),
    ("GET", "/v1/admin/circuit-breakers"),
    ("GET", "/v1/admin/dead-letters"),
    ("POST", "/v1/admin/dead-letters/{id}/redrive"),
    ("POST", "/v1/admin/dead-letters/{id}/discard"),
    ("POST", "/v1/admin/tokens"),
    ("POST", "/v1/admin/reconciliations"),
    ("GET", "/v1/admin/reconciliations/{id}"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
];

/// The v1.1 codes of API.md that belong to features not built yet (holds, conditions).
const NOT_ANSWERED_YET: &[&str] = &[];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The document as served, fetched without a token.
async fn document(app: &TestApp) -> Value {
    let response = app.client.get(format!("{}/openapi.json", app.base)).send().await.expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/json"), "content type {content_type}");
    response.json().await.expect("the document is JSON")
}

/// (method, path template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_needs_no_token() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1"), "openapi {version:?}");

    let file = std::env::temp_dir().join(format!("ledger-openapi-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("serializable")).expect("temp file written");
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/test installs openapi-spec-validator)");
    let _ = std::fs::remove_file(&file);
    // The validator quotes the whole document after its verdict: the verdict is enough.
    let shorten = |bytes: &[u8]| String::from_utf8_lossy(bytes).chars().take(2_000).collect::<String>();
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected the document:\n{}\n{}",
        shorten(&output.stdout),
        shorten(&output.stderr)
    );

    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let answered: Vec<&str> =
        ledger_tests::API_MD_ERROR_CODES.iter().copied().filter(|c| !NOT_ANSWERED_YET.contains(c)).collect();
    assert_eq!(codes, answered, "the problem `code` enum is API.md's list");

    // What middleware and extractors apply to whole groups of routes is documented on each.
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let refs: Vec<&str> =
            op["parameters"].as_array().into_iter().flatten().filter_map(|p| p["$ref"].as_str()).collect();
        assert!(refs.contains(&"#/components/parameters/CorrelationId"), "{method} {path}: X-Correlation-Id");
        if !path.starts_with("/v1/") {
            assert!(op.get("security").is_none(), "{method} {path} needs no token");
            continue;
        }
        assert_eq!(op["security"], serde_json::json!([{ "bearer": [] }]), "{method} {path}: bearer auth");
        for status in ["401", "403", "429", "500", "503"] {
            let problem = &op["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(problem, "#/components/schemas/Problem", "{method} {path}: {status} is a problem");
        }
        if method == "POST" {
            assert!(refs.contains(&"#/components/parameters/IdempotencyKey"), "{method} {path}: Idempotency-Key");
            for status in ["400", "409", "413", "422"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path}: {status}");
            }
            let success = op["responses"].as_object().expect("responses").iter().find(|(s, _)| s.starts_with('2'));
            let (_, success) = success.expect("a success response");
            assert!(success["headers"].get("Idempotent-Replayed").is_some(), "{method} {path}: Idempotent-Replayed");
        } else if path.starts_with("/v1/admin/webhooks") {
            // API.md: webhook routes answer no position.
            let header = &op["responses"]["200"]["headers"]["X-Ledger-Position"];
            assert!(header.is_null(), "{method} {path}: no X-Ledger-Position");
        } else {
            let header = &op["responses"]["200"]["headers"]["X-Ledger-Position"];
            assert!(header.is_object(), "{method} {path}: X-Ledger-Position");
        }
    }
}

/// A concrete URL for a documented path: a random UUID for ids, a real projection name.
fn concrete(path: &str) -> String {
    path.replace("{id}", &Uuid::new_v4().to_string()).replace("{name}", "accounts")
}

/// Whether the router's fallbacks answered (no route, or no such method on a route).
async fn fallback(app: &TestApp, method: &str, path: &str) -> (bool, StatusCode) {
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = app.client.request(method.clone(), format!("{}{path}", app.base)).bearer_auth(ADMIN_TOKEN);
    if method != Method::GET {
        request = request
            .header("idempotency-key", Uuid::new_v4().to_string())
            .header("content-type", "application/json")
            .body("{}");
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let no_route = status == StatusCode::NOT_FOUND && body["detail"] == "no such route";
    (no_route || status == StatusCode::METHOD_NOT_ALLOWED, status)
}

/// The (method, path) of every `.route("path", get(..).post(..))` and every command route
/// (`CommandRoute { path: "..", .. }`) in the API's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    let mut files = vec![dir.join("lib.rs")];
    for entry in std::fs::read_dir(dir.join("routes")).expect("api/src/routes") {
        files.push(entry.expect("dir entry").path());
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("source readable");
        for unsupported in [".nest(", ".route_service(", ".nest_service("] {
            assert!(!source.contains(unsupported), "{file:?} uses {unsupported}: teach routes_in_source about it");
        }
        // The command routes' table (`routes/commands.rs`): each entry is served as POST.
        let mut rest = source.as_str();
        while let Some(at) = rest.find("CommandRoute { path: \"") {
            rest = &rest[at + "CommandRoute { path: \"".len()..];
            routes.insert(("POST".to_owned(), rest[..rest.find('"').expect("closing quote")].to_owned()));
        }
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(\"") {
            rest = &rest[at + ".route(\"".len()..];
            let path = &rest[..rest.find('"').expect("closing quote")];
            let call = balanced(rest);
            // `get(` as a call of its own, not the end of a longer name such as `budget(`.
            let starts_name = |i: usize| {
                i == 0 || !(call.as_bytes()[i - 1].is_ascii_alphanumeric() || call.as_bytes()[i - 1] == b'_')
            };
            for method in ["get", "post", "put", "patch", "delete"] {
                if call.match_indices(&format!("{method}(")).any(|(i, _)| starts_name(i)) {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    assert!(routes.len() >= 25, "the source scan found only {routes:?}");
    routes
}

/// The text of a call's arguments, from just after its opening parenthesis to the one that closes it.
fn balanced(text: &str) -> &str {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced .route( call")
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let app = TestApp::spawn().await;
    let documented = operations(&document(&app).await);

    for (method, path) in API_MD_ROUTES {
        assert!(documented.contains(&(method.to_string(), path.to_string())), "API.md's {method} {path} is missing");
    }
    // Every documented operation is served...
    for (method, path) in &documented {
        let (fell_back, status) = fallback(&app, method, &concrete(path)).await;
        assert!(!fell_back, "documented {method} {path} is not routed ({status})");
    }
    // ...and nothing else is: no other method on a documented path,
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS.iter().filter(|m| !documented.contains(&(m.to_string(), path.clone()))) {
            let (fell_back, status) = fallback(&app, method, &concrete(path)).await;
            assert!(fell_back, "{method} {path} is served ({status}) but not documented");
        }
    }
    // ...and no route registered in the source is missing from the document.
    for (method, path) in routes_in_source() {
        assert!(documented.contains(&(method.clone(), path.clone())), "routed {method} {path} is not documented");
    }
}

#[tokio::test]
async fn the_docs_page_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let response = app.client.get(format!("{}/docs", app.base)).send().await.expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/html"), "content type {content_type}");
    let page_url = response.url().clone();
    let html = response.text().await.expect("page readable");
    assert!(html.contains("swagger-ui"), "{html}");
    for scheme in ["http://", "https://"] {
        assert!(!html.contains(scheme), "the page refers to a remote URL:\n{html}");
    }

    // Every asset it loads is local, served without a token, and points at our document.
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let value = &html[at + attribute.len()..];
            assets.push(value[..value.find('"').expect("closing quote")].to_owned());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with("swagger-initializer.js")), "{assets:?}");
    for asset in &assets {
        let url = page_url.join(asset).expect("a relative URL");
        assert_eq!(url.host_str(), page_url.host_str(), "{asset} is not local");
        let response = app.client.get(url.clone()).send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        if asset.ends_with("swagger-initializer.js") {
            let script = response.text().await.expect("script readable");
            assert!(script.contains("/openapi.json"), "{script}");
            assert!(!script.contains("http://") && !script.contains("https://"), "{script}");
        }
    }
}
