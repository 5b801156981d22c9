//! Reading command bodies: JSON values checked field by field so every malformed
//! input gets a precise 422 `validation_error` instead of a generic parse failure.

use crate::error::ApiError;
use ledger_domain::{Amount, Currency, Money};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest free-text field accepted (owner, reference, destination, reason).
pub const TEXT_BYTES_MAX: usize = 1024;

/// A JSON object body.
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn of(body: &'a Value) -> Result<Fields<'a>, ApiError> {
        body.as_object().map(Fields).ok_or_else(|| ApiError::validation("the body must be a JSON object"))
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, ApiError> {
        self.get(name).ok_or_else(|| ApiError::validation(format!("`{name}` is required")))
    }

    /// An amount: a JSON integer in 1 ..= 10^15 minor units.
    pub fn amount(&self, name: &str) -> Result<Amount, ApiError> {
        let value = self.required(name)?;
        let n = value
            .as_i64()
            .ok_or_else(|| ApiError::validation(format!("`{name}` must be an integer number of minor units")))?;
        Amount::new(n).map_err(|e| ApiError::validation(format!("`{name}`: {e}")))
    }

    pub fn currency(&self, name: &str) -> Result<Currency, ApiError> {
        let s =
            self.required(name)?.as_str().ok_or_else(|| ApiError::validation(format!("`{name}` must be a string")))?;
        Currency::parse(s).map_err(|e| ApiError::validation(e.to_string()))
    }

    pub fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        self.optional_uuid(name)?.ok_or_else(|| ApiError::validation(format!("`{name}` is required")))
    }

    pub fn optional_uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .map(Some)
                .ok_or_else(|| ApiError::validation(format!("`{name}` must be a UUID"))),
        }
    }

    pub fn text(&self, name: &str) -> Result<String, ApiError> {
        self.optional_text(name)?.ok_or_else(|| ApiError::validation(format!("`{name}` is required")))
    }

    pub fn optional_text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(ApiError::validation(format!("`{name}` must not be empty"))),
            Some(Value::String(s)) if s.len() > TEXT_BYTES_MAX => {
                Err(ApiError::validation(format!("`{name}` must be at most {TEXT_BYTES_MAX} bytes")))
            }
            Some(Value::String(s)) if s.contains('\0') => {
                Err(ApiError::validation(format!("`{name}` must not contain NUL")))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::validation(format!("`{name}` must be a string"))),
        }
    }

    /// A non-negative amount of money (the overdraft limit), default zero.
    pub fn limit(&self, name: &str) -> Result<Money, ApiError> {
        match self.get(name) {
            None => Ok(Money::ZERO),
            Some(v) => match v.as_i64() {
                Some(n) if (0..=ledger_domain::AMOUNT_MAX).contains(&n) => Ok(Money::new(n)),
                _ => Err(ApiError::validation(format!(
                    "`{name}` must be an integer from 0 to {}",
                    ledger_domain::AMOUNT_MAX
                ))),
            },
        }
    }

    /// Free-form JSON metadata; strings may not hold NUL (Postgres `jsonb` refuses it).
    pub fn metadata(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Value::Object(_)) if !contains_nul(v) => Ok(Some(v.clone())),
            Some(_) => Err(ApiError::validation(format!("`{name}` must be a JSON object without NUL characters"))),
        }
    }
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Parses a UUID path segment; anything else is unknown, so 404.
pub fn path_uuid(raw: &str, not_found: impl FnOnce() -> ApiError) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found())
}

/// Parses a `limit` query parameter within 1 ..= max.
pub fn limit_param(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!("`limit` must be an integer from 1 to {max}"))),
        },
    }
}

/// Parses a non-negative integer query parameter.
pub fn position_param(name: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!("`{name}` must be a non-negative integer"))),
        },
    }
}
