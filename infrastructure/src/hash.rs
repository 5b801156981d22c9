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
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => push_json_str(s, out),
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
            out.push('{');
            let mut member = |i: usize, k: &String, v: &Value| {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(k, out);
                out.push(':');
                canonical_json(v, out);
            };
            // serde_json's map is a BTreeMap unless a crate turns on `preserve_order`:
            // its keys then come sorted already, and no copy of them is made.
            if map.keys().is_sorted() {
                map.iter().enumerate().for_each(|(i, (k, v))| member(i, k, v));
            } else {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                keys.into_iter().enumerate().for_each(|(i, k)| member(i, k, &map[k]));
            }
            out.push('}');
        }
    }
}

/// Writes `s` as a JSON string exactly as serde_json's compact serializer does
/// (`"` and `\` escaped, the short escapes `\b \t \n \f \r`, other control
/// characters as `\u00xx`, everything else as is), without an allocation.
fn push_json_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x09 => "\\t",
            0x0A => "\\n",
            0x0C => "\\f",
            0x0D => "\\r",
            0x00..=0x1F => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xF) as usize] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Why a JSON value would not read back from Postgres `jsonb` exactly as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    /// `jsonb` keeps numbers as `numeric`: a float may come back in another form
    /// (`1e17` as `100000000000000000`), so only integers are stored.
    #[error("a number that is not an integer")]
    Float,
    /// `jsonb` refuses U+0000 in strings and keys.
    #[error("a string holding U+0000")]
    Nul,
    /// A customer account's personal values must be sealed under its subject's key
    /// before they are stored (`privacy`): never in clear, never without a subject.
    #[error("a personal value not sealed under its subject's key")]
    PersonalInClear,
}

/// Checks that `value` round-trips through `jsonb` unchanged: integers only, and no
/// U+0000 in any string or key. Every event and its metadata pass this before they
/// are hashed and stored.
pub fn check_storable(value: &Value) -> Result<(), Unstorable> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
        Value::Number(_) => Err(Unstorable::Float),
        Value::String(s) if s.contains('\0') => Err(Unstorable::Nul),
        Value::String(_) => Ok(()),
        Value::Array(items) => items.iter().try_for_each(check_storable),
        Value::Object(map) => {
            map.iter().try_for_each(|(k, v)| if k.contains('\0') { Err(Unstorable::Nul) } else { check_storable(v) })
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
    fn only_values_that_read_back_unchanged_are_storable() {
        for (text, ok) in [
            (r#"{"n":1}"#, true),
            (r#"{"n":-9223372036854775808,"u":18446744073709551615}"#, true),
            (r#"{"n":1e17}"#, false),
            (r#"{"n":7.0}"#, false),
            (r#"{"a":[{"b":0.5}]}"#, false),
            (r#"{"s":"a\u0000b"}"#, false),
            (r#"{"k\u0000":1}"#, false),
            (r#"{"s":"\u00e9\ud83d\ude00","t":true,"z":null}"#, true),
        ] {
            let v: Value = serde_json::from_str(text).expect("json");
            assert_eq!(check_storable(&v).is_ok(), ok, "{text}");
        }
    }

    /// The canonical form as it was first written (every string through serde_json's
    /// own serializer, keys sorted by a copy): hashes stored since must not change.
    fn canonical_oracle(value: &Value, out: &mut String) {
        match value {
            Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&value.to_string()),
            Value::Number(_) => canonical_json(value, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical_oracle(item, out);
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
                    canonical_oracle(&map[k], out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn the_canonical_form_is_byte_for_byte_the_one_chains_were_hashed_with() {
        // Every character up to U+00FF, some beyond, as strings and as keys, nested.
        let mut texts: Vec<String> = (0u32..0x100).filter_map(char::from_u32).map(String::from).collect();
        texts.extend(
            ["", "plain", "a\"b\\c", "\u{2028}\u{2029}", "é😀\u{7f}", "tab\tnl\ncr\r\u{1}\u{1f}"].map(String::from),
        );
        let mut cases = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            cases.push(Value::String(t.clone()));
            cases.push(serde_json::json!({ t.clone(): i, "z": [t.clone(), { t.clone(): null }], "a": true }));
        }
        cases.push(serde_json::from_str(r#"{"b":1.0,"a":[1e2,0.5,"x"],"c":{"y":false,"x":-3}}"#).expect("json"));
        for case in &cases {
            let (mut new, mut old) = (String::new(), String::new());
            canonical_json(case, &mut new);
            canonical_oracle(case, &mut old);
            assert_eq!(new, old, "{case:?}");
        }
    }

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
