//! Every response the integration tests receive through [`crate::TestApp`] is checked
//! against the OpenAPI document the service serves: the route must document the
//! status, the content type must be the one documented, and a JSON body must validate
//! against the documented schema (JSON Schema 2020-12, formats asserted). A mismatch
//! fails the test that saw it, naming the route, the status and what differs, so the
//! document cannot drift from real bodies, successes and errors alike.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The OpenAPI document, and validators compiled on first use.
struct Checker {
    document: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

fn checker() -> &'static Checker {
    static CHECKER: OnceLock<Checker> = OnceLock::new();
    CHECKER.get_or_init(|| Checker {
        document: serde_json::to_value(ledger_api::http::openapi::document()).expect("the document serializes"),
        validators: Mutex::new(HashMap::new()),
    })
}

/// `path` without its query string, and with `/v1/ledgers/{ledger}/…` as the document's
/// `/v1/…` (the same route for one ledger, API.md "Ledgers").
fn unprefixed(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    path.strip_prefix("/v1/ledgers/")
        .and_then(|tail| tail.split_once('/'))
        .map_or_else(|| path.to_owned(), |(_, rest)| format!("/v1/{rest}"))
}

/// The path template of the document that `path` (no query string) falls under.
fn template<'a>(paths: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    let matches = |t: &str| {
        let ts: Vec<&str> = t.split('/').collect();
        ts.len() == segments.len()
            && ts.iter().zip(&segments).all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
    };
    // A literal segment wins over a parameter (`/v1/accounts` over `/v1/{x}`).
    let literal_count = |t: &str| t.split('/').filter(|s| !s.starts_with('{')).count();
    paths.keys().filter(|t| matches(t)).max_by_key(|t| literal_count(t)).map(String::as_str)
}

impl Checker {
    fn validator(&self, key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
        let mut validators = self.validators.lock().expect("validators lock");
        if let Some(v) = validators.get(key) {
            return v.clone();
        }
        // References (`#/components/schemas/X`) resolve against this root.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema of {key} does not compile: {e}"));
        let validator = Arc::new(validator);
        validators.insert(key.to_owned(), validator.clone());
        validator
    }

    /// Why the response does not conform to the document, if it does not.
    fn refusal(&self, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) -> Option<String> {
        let path = unprefixed(path);
        let path = path.as_str();
        let paths = self.document["paths"].as_object().expect("the document has paths");
        let method_key = method.to_ascii_lowercase();
        let operation = template(paths, path).and_then(|t| paths[t].get(&method_key).map(|op| (t, op)));
        let (route, response) = match operation {
            Some((t, op)) => {
                let responses = &op["responses"];
                let response = responses.get(status.to_string()).or_else(|| responses.get("default"));
                match response {
                    Some(r) => (format!("{method} {t}"), r.clone()),
                    None => return Some(format!("{method} {t} does not document status {status}")),
                }
            }
            // Outside every route (an unknown path or method): the router's problem document.
            None if status >= 400 => (
                "an unknown route".to_owned(),
                json!({ "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" } } } }),
            ),
            None => return Some(format!("{method} {path} answered {status} but is not in the document")),
        };
        let media = content_type.split(';').next().unwrap_or("").trim();
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return (!body.is_empty()).then(|| format!("{route} {status}: a body where the document declares none"));
        };
        let Some(declared) = content.get(media) else {
            let known: Vec<&String> = content.keys().collect();
            return Some(format!("{route} {status}: content type {media:?}, the document declares {known:?}"));
        };
        if !media.ends_with("json") {
            return None;
        }
        let schema = declared.get("schema")?;
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Some(format!("{route} {status}: the body is not JSON: {e}")),
        };
        let validator = self.validator(&format!("{route} {status} {media}"), schema);
        let errors: Vec<String> =
            validator.iter_errors(&value).take(5).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        (!errors.is_empty()).then(|| format!("{route} {status}: {}\nbody: {value}", errors.join("; ")))
    }
}

/// Panics (failing the test) when the response does not conform to the document.
/// With `LEDGER_CONFORMANCE_LOG` set to a directory, each checked `METHOD route status`
/// is also appended to a file there, so a run can report what it covered.
pub fn check(method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) {
    if let Some(why) = checker().refusal(method, path, status, content_type, body) {
        panic!("the response does not conform to the OpenAPI document: {why}");
    }
    if let Ok(dir) = std::env::var("LEDGER_CONFORMANCE_LOG") {
        let paths = checker().document["paths"].as_object().expect("the document has paths");
        let route = template(paths, &unprefixed(path)).unwrap_or("(unknown-route)");
        let file = std::path::Path::new(&dir).join(format!("checked-{}.txt", std::process::id()));
        let line = format!("{method} {route} {status}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        appended.unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_differs_from_its_schema_is_refused() {
        let c = checker();
        let problem = json!({ "type": "urn:ledger:problem:not_found", "title": "Not Found", "status": 404,
                              "detail": "x", "code": "not_found" });
        let ct = "application/problem+json";
        let bytes = |v: &Value| v.to_string().into_bytes();
        assert_eq!(c.refusal("GET", "/v1/transfers/x", 404, ct, &bytes(&problem)), None);
        let mut wrong = problem.clone();
        wrong["code"] = json!("no_such_code");
        assert!(c.refusal("GET", "/v1/transfers/x", 404, ct, &bytes(&wrong)).is_some());
        assert!(c.refusal("GET", "/v1/transfers/x", 418, ct, &bytes(&problem)).is_some(), "undocumented status");
        assert!(c.refusal("GET", "/v1/transfers/x", 404, "text/plain", b"x").is_some(), "content type");
        let account = json!({ "id": uuid::Uuid::now_v7(), "currency": "EUR", "owner": null, "subject": "c-1",
            "erased": false, "status": "open",
            "balance": 0, "available": 0, "pending_holds": 0, "overdraft_limit": 0, "system": false,
            "metadata": null, "version": 1, "position": 3 });
        let path = format!("/v1/accounts/{}", uuid::Uuid::now_v7());
        assert_eq!(c.refusal("GET", &path, 200, "application/json", &bytes(&account)), None);
        for (field, value) in [("id", json!("not-a-uuid")), ("status", json!("frozen")), ("balance", json!("1"))] {
            let mut bad = account.clone();
            bad[field] = value;
            assert!(c.refusal("GET", &path, 200, "application/json", &bytes(&bad)).is_some(), "{field}");
        }
        let mut missing = account.clone();
        missing.as_object_mut().expect("object").remove("version");
        assert!(c.refusal("GET", &path, 200, "application/json", &bytes(&missing)).is_some(), "required");
    }
}
