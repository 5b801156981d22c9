//! Parsing a command's body into its request type (`ledger_wire::requests`): one 422
//! `validation_error` naming the field that does not parse.

use crate::http::error::ApiError;
use serde_json::Value;

/// Parses a command's JSON body (already checked to be JSON by `CommandBody`) as `T`;
/// a body that is not an object, or a field that does not parse, is 422 naming it.
pub fn parse<T: serde::de::DeserializeOwned>(json: &Value) -> Result<T, ApiError> {
    object(json)?;
    serde_path_to_error::deserialize(json).map_err(refusal)
}

/// Like [`parse`], consuming the body: its strings move into the request instead of
/// being copied (a bulk's body is megabytes).
pub fn parse_owned<T: serde::de::DeserializeOwned>(json: Value) -> Result<T, ApiError> {
    object(&json)?;
    serde_path_to_error::deserialize(json).map_err(refusal)
}

fn object(json: &Value) -> Result<(), ApiError> {
    if json.is_object() { Ok(()) } else { Err(ApiError::validation("the body must be a JSON object")) }
}

fn refusal(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let field = e.path().to_string();
    ApiError::validation(format!("`{field}`: {}", e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_wire::*;
    use serde_json::json;
    use uuid::Uuid;

    fn refusal<T: serde::de::DeserializeOwned>(body: Value) -> String {
        match parse::<T>(&body) {
            Ok(_) => panic!("{body} should be refused"),
            Err(e) => {
                assert_eq!(
                    (e.status.as_u16(), e.code),
                    (422, crate::http::error::ErrorCode::ValidationError),
                    "{body}"
                );
                e.detail
            }
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        let id = Uuid::now_v7();
        let ok = json!({ "account_id": id, "amount": 5, "currency": "EUR" });
        assert!(parse::<DepositRequest>(&ok).is_ok());
        for (field, value) in [
            ("amount", json!(0)),
            ("amount", json!(7.0)),
            ("amount", json!("5")),
            ("amount", json!(1_000_000_000_000_001_i64)),
            ("currency", json!("eur")),
            ("account_id", json!("not-a-uuid")),
            ("reference", json!("")),
            ("reference", json!("a\u{0}b")),
            ("metadata", json!({ "n": 1.5 })),
            ("metadata", json!({ "bad key": 1 })),
        ] {
            let mut body = ok.clone();
            body[field] = value;
            let detail = refusal::<DepositRequest>(body);
            assert!(detail.starts_with(&format!("`{field}`")), "{field}: {detail}");
        }
        assert!(refusal::<DepositRequest>(json!({ "amount": 5, "currency": "EUR" })).contains("account_id"));
        refusal::<EmptyRequest>(json!([]));
        let reserved = Uuid::new_v8([1; 16]);
        assert!(refusal::<OpenAccountRequest>(json!({ "currency": "EUR", "id": reserved })).starts_with("`id`"));
        assert!(
            refusal::<OpenAccountRequest>(json!({ "currency": "EUR", "overdraft_limit": -1 })).contains("overdraft")
        );
        assert!(refusal::<TokenRequest>(json!({ "name": "a b", "role": "admin" })).starts_with("`name`"));
        assert!(refusal::<TokenRequest>(json!({ "name": "ok", "role": "root" })).starts_with("`role`"));
        let window = json!({ "from": "0000-01-01T00:00:00+23:59" });
        assert!(refusal::<ReconciliationRequest>(window).starts_with("`from`"));
    }
}
