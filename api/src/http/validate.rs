//! The edge's checks of text: JSON bodies parsed strictly (duplicate keys refused),
//! the metadata rules, timestamps, and query parameters. The metadata and timestamp
//! rules are the wire types' own (`ledger_wire::fields`).

use crate::http::error::ApiError;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use ledger_wire::fields::{metadata_refusal, timestamp};

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

/// A command's `effective_at` within the backdating window (API.md "Effective dates"):
/// at most `LEDGER_BACKDATE_MAX_S` before now and 60 s after, else 422; kept to the
/// microsecond, as the read models store it.
pub fn effective_at(
    state: &crate::run::state::Core,
    given: Option<ledger_wire::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(ledger_wire::Timestamp(t)) = given else { return Ok(None) };
    let now = state.clock.now();
    let earliest = now - chrono::Duration::from_std(state.config.backdate_max).unwrap_or(chrono::Duration::zero());
    let latest = now + chrono::Duration::seconds(ledger_wire::limits::EFFECTIVE_AHEAD_S);
    if t < earliest || t > latest {
        return Err(ApiError::validation(format!(
            "`effective_at` must be from {} to {} (at most LEDGER_BACKDATE_MAX_S = {} s back, {} s ahead)",
            earliest.to_rfc3339(),
            latest.to_rfc3339(),
            state.config.backdate_max.as_secs(),
            ledger_wire::limits::EFFECTIVE_AHEAD_S
        )));
    }
    // Postgres keeps microseconds: the event keeps what every view can show.
    Ok(Some(chrono::SubsecRound::trunc_subsecs(t, 6)))
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
