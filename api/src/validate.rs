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

    /// Metadata by the rules of API.md ("Metadata", "Numbers"): an object of at most
    /// [`METADATA_KEYS_MAX`] keys of 1–64 characters of `[A-Za-z0-9_.-]`, each value a
    /// string (at most [`METADATA_STRING_CHARS_MAX`] characters, no U+0000), a signed
    /// 64-bit integer written without fraction or exponent, `true`, `false` or `null`;
    /// at most [`METADATA_BYTES_MAX`] bytes compact. Such a value reads back from
    /// `jsonb` exactly as sent, so it hashes the same when the chain is verified.
    pub fn metadata(&self, name: &str) -> Result<Option<Value>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let Value::Object(map) = value else {
            return Err(ApiError::validation(format!("`{name}` must be a JSON object")));
        };
        if map.len() > METADATA_KEYS_MAX {
            return Err(ApiError::validation(format!("`{name}` may have at most {METADATA_KEYS_MAX} keys")));
        }
        for (key, v) in map {
            let key_ok = (1..=METADATA_KEY_CHARS_MAX).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !key_ok {
                return Err(ApiError::validation(format!(
                    "`{name}` keys must be 1 to {METADATA_KEY_CHARS_MAX} characters of [A-Za-z0-9_.-], got {:?}",
                    key.escape_debug().to_string()
                )));
            }
            let value_ok = match v {
                Value::Null | Value::Bool(_) => true,
                Value::Number(n) => n.is_i64(),
                Value::String(s) => s.chars().count() <= METADATA_STRING_CHARS_MAX && !s.contains('\0'),
                Value::Array(_) | Value::Object(_) => false,
            };
            if !value_ok {
                return Err(ApiError::validation(format!(
                    "`{name}.{key}` must be a string of at most {METADATA_STRING_CHARS_MAX} characters without \
                     U+0000, a 64-bit integer, true, false or null"
                )));
            }
        }
        if value.to_string().len() > METADATA_BYTES_MAX {
            return Err(ApiError::validation(format!("`{name}` must be at most {METADATA_BYTES_MAX} bytes")));
        }
        Ok(Some(value.clone()))
    }

    /// An id the client chooses for a new stream: a UUID outside the space the ledger
    /// reserves for its own streams (API.md "Ids").
    pub fn new_id(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        match self.optional_uuid(name)? {
            Some(id) if ledger_domain::decide::is_reserved_id(id) => Err(ApiError::validation(format!(
                "`{name}` is in the range the ledger reserves for its own ids (UUID version 8)"
            ))),
            other => Ok(other),
        }
    }
}

/// Most keys in a metadata object.
pub const METADATA_KEYS_MAX: usize = 64;
/// Longest metadata key, in characters.
pub const METADATA_KEY_CHARS_MAX: usize = 64;
/// Longest metadata string value, in characters.
pub const METADATA_STRING_CHARS_MAX: usize = 1024;
/// Largest metadata object, in bytes of its compact serialization.
pub const METADATA_BYTES_MAX: usize = 8 * 1024;

/// Parses a request body as JSON, refusing what `serde_json` would accept silently:
/// an object with a duplicate key (the last would win, so two readers of one body
/// could disagree). Invalid UTF-8 and lone surrogates are refused by the parser itself;
/// nesting is bounded by its recursion limit.
pub fn parse_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|Strict(v)| v)
}

/// The answer to a body that does not parse: 400 when it is not JSON at all (cut
/// short, a syntax error), 422 when it is JSON-shaped but holds what the contract
/// refuses (a duplicate key, a lone surrogate, a number no integer type holds).
pub fn body_rejection(e: serde_json::Error) -> ApiError {
    let text = e.to_string();
    let refused_value = ["surrogate", "hex escape", "unicode code point", "number out of range", "duplicate key"];
    if e.classify() == serde_json::error::Category::Data || refused_value.iter().any(|r| text.contains(r)) {
        ApiError::validation(format!("the body holds a value the contract refuses: {text}"))
    } else {
        ApiError::bad_request(format!("the body is not valid JSON: {text}"))
    }
}

struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {:?}", key.escape_debug().to_string())));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses an RFC 3339 timestamp whose UTC form is still RFC 3339 (years 0000–9999:
/// `0000-01-01T00:00:00+23:59` is refused, it would be year -1 in UTC), so every time
/// the ledger stores, compares or sends on to the provider can be written back.
pub fn timestamp(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    let t = chrono::DateTime::parse_from_rfc3339(raw).ok()?.with_timezone(&chrono::Utc);
    (0..=9999).contains(&t.year()).then_some(t)
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
