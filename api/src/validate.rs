//! The edge's checks of text: JSON bodies parsed strictly (duplicate keys refused),
//! the metadata rules, timestamps, and query parameters. The typed request bodies of
//! `crate::requests` use these.

use crate::error::ApiError;
use crate::limits::{METADATA_BYTES_MAX, METADATA_KEY_CHARS_MAX, METADATA_KEYS_MAX, METADATA_STRING_CHARS_MAX};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Why `value` is refused as metadata by the rules of API.md ("Metadata", "Numbers"),
/// if it is: an object of at most [`METADATA_KEYS_MAX`] keys of 1–64 characters of
/// `[A-Za-z0-9_.-]`, each value a string (at most [`METADATA_STRING_CHARS_MAX`]
/// characters, no U+0000), a signed 64-bit integer written without fraction or
/// exponent, `true`, `false` or `null`; at most [`METADATA_BYTES_MAX`] bytes compact.
/// Such a value reads back from `jsonb` exactly as sent, so it hashes the same when the
/// chain is verified.
pub fn metadata_refusal(value: &Value) -> Option<String> {
    let Value::Object(map) = value else {
        return Some("must be a JSON object".into());
    };
    if map.len() > METADATA_KEYS_MAX {
        return Some(format!("may have at most {METADATA_KEYS_MAX} keys"));
    }
    for (key, v) in map {
        let key_ok = (1..=METADATA_KEY_CHARS_MAX).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Some(format!(
                "keys must be 1 to {METADATA_KEY_CHARS_MAX} characters of [A-Za-z0-9_.-], got {:?}",
                key.escape_debug().to_string()
            ));
        }
        let value_ok = match v {
            Value::Null | Value::Bool(_) => true,
            Value::Number(n) => n.is_i64(),
            Value::String(s) => s.chars().count() <= METADATA_STRING_CHARS_MAX && !s.contains('\0'),
            Value::Array(_) | Value::Object(_) => false,
        };
        if !value_ok {
            return Some(format!(
                "`{key}` must be a string of at most {METADATA_STRING_CHARS_MAX} characters without U+0000, \
                 a 64-bit integer, true, false or null"
            ));
        }
    }
    if value.to_string().len() > METADATA_BYTES_MAX {
        return Some(format!("must be at most {METADATA_BYTES_MAX} bytes"));
    }
    None
}

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
