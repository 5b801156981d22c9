//! The tamper-evident hash chain: each event's hash covers the previous event's hash
//! and the event's own canonical content, so altering any event breaks every hash
//! after it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The hash "before" the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Writes `value` as canonical JSON: object keys sorted, no spaces, and numbers in one
/// form whatever their source (an integral float prints as an integer), so content
/// read back from `jsonb` hashes exactly like the content that was written.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&value.to_string()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    let _ = write!(out, "{}", f as i64);
                } else {
                    let _ = write!(out, "{f:e}");
                }
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// The fields of an event that the chain covers.
pub struct HashedContent<'a> {
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub stream_id: uuid::Uuid,
    pub version: i64,
    pub event_type: &'a str,
    pub data: &'a Value,
    pub metadata: &'a Value,
    pub recorded_at_us: i64,
}

/// sha256(previous hash ‖ canonical content).
pub fn chain_hash(previous: &[u8], content: &HashedContent<'_>) -> [u8; 32] {
    let mut text = String::with_capacity(512);
    let _ = write!(
        text,
        "{}|{}|{}|{}|{}|{}|",
        content.position,
        content.event_id,
        content.stream_id,
        content.version,
        content.event_type,
        content.recorded_at_us
    );
    canonical_json(content.data, &mut text);
    text.push('|');
    canonical_json(content.metadata, &mut text);
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(text.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_ignores_key_order_and_number_spelling() {
        let a: Value = serde_json::from_str(r#"{"b":1.0,"a":[1e2,0.5,"x"]}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":[100,0.5,"x"],"b":1}"#).expect("json");
        let (mut x, mut y) = (String::new(), String::new());
        canonical_json(&a, &mut x);
        canonical_json(&b, &mut y);
        assert_eq!(x, y);
    }
}
