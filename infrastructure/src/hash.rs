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
        Value::Number(n) => push_number(n, out),
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

/// A number in its one canonical form (see [`canonical_json`]).
fn push_number(n: &serde_json::Number, out: &mut String) {
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

/// Writes the JSON `text` as canonical JSON: exactly what [`canonical_json`] writes
/// for `serde_json::from_str(text)` (numbers parsed alike, a repeated key's last
/// value kept; a text with an object led by serde_json's raw-value marker, which
/// `Value` reads as something else, is refused), without building a [`Value`]:
/// strings without escapes stay borrowed from the text and objects are member lists,
/// sorted once. The tree worker recomputes every event's hash from the log's text with
/// a fraction of the allocations a `Value` takes.
pub fn canonical_json_text(text: &str, out: &mut String) -> Result<(), serde_json::Error> {
    let value: Canon<'_> = serde_json::from_str(text)?;
    value.write(out);
    Ok(())
}

/// The member name serde_json's `raw_value` feature reads, first in an object, as a
/// raw value.
const RAW_VALUE_MARKER: &str = "$serde_json::private::RawValue";

/// A JSON value parsed only to be written canonically (see [`canonical_json_text`]).
enum Canon<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Text<'a>),
    Array(Vec<Canon<'a>>),
    Object(Vec<(Text<'a>, Canon<'a>)>),
}

/// A string of the text: borrowed unless it had escapes.
struct Text<'a>(std::borrow::Cow<'a, str>);

impl Canon<'_> {
    fn write(self, out: &mut String) {
        match self {
            Canon::Null => out.push_str("null"),
            Canon::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Canon::Number(n) => push_number(&n, out),
            Canon::Str(s) => push_json_str(&s.0, out),
            Canon::Array(items) => {
                out.push('[');
                for (i, item) in items.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Canon::Object(mut members) => {
                // A stable sort keeps a repeated key's members in the text's order, so
                // the last of each run is the value `Value`'s map would keep.
                members.sort_by(|(a, _), (b, _)| a.0.cmp(&b.0));
                out.push('{');
                let mut members = members.into_iter().peekable();
                let mut first = true;
                while let Some((key, value)) = members.next() {
                    if members.peek().is_some_and(|(next, _)| next.0 == key.0) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    push_json_str(&key.0, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// Reads a [`Text`], borrowing it when the parser can.
struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(std::borrow::Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
        Ok(Text(std::borrow::Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
        Ok(Text(std::borrow::Cow::Owned(s)))
    }
}

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for Canon<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Canon<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Canon<'de>, E> {
                Ok(Canon::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Canon<'de>, E> {
                Ok(Canon::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Canon<'de>, E> {
                Ok(Canon::Number(n.into()))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Canon<'de>, E> {
                // As `Value` does: a float JSON cannot hold is null.
                Ok(serde_json::Number::from_f64(f).map_or(Canon::Null, Canon::Number))
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Canon<'de>, E> {
                TextVisitor.visit_borrowed_str(s).map(Canon::Str)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Canon<'de>, E> {
                TextVisitor.visit_str(s).map(Canon::Str)
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Canon<'de>, E> {
                TextVisitor.visit_string(s).map(Canon::Str)
            }
            fn visit_unit<E>(self) -> Result<Canon<'de>, E> {
                Ok(Canon::Null)
            }
            fn visit_none<E>(self) -> Result<Canon<'de>, E> {
                Ok(Canon::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Canon<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Canon::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Canon<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    // `Value` reads an object whose first member has this name as a raw
                    // value, not as an object (serde_json's `raw_value`; later members
                    // of the name are members), so such a text is refused here.
                    if members.is_empty() && key.0 == RAW_VALUE_MARKER {
                        return Err(serde::de::Error::custom("an object led by serde_json's raw-value marker"));
                    }
                    members.push((key, map.next_value()?));
                }
                Ok(Canon::Object(members))
            }
        }
        d.deserialize_any(Visitor)
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
    pub header: HashedHeader<'a>,
    pub data: &'a Value,
    pub metadata: &'a Value,
}

/// The fields of an event that the chain covers before its data and metadata.
#[derive(Clone, Copy)]
pub struct HashedHeader<'a> {
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub stream_id: uuid::Uuid,
    pub version: i64,
    pub event_type: &'a str,
    pub recorded_at_us: i64,
}

/// sha256(previous hash ‖ canonical content).
pub fn chain_hash(previous: &[u8], content: &HashedContent<'_>) -> [u8; 32] {
    let mut text = content_prefix(content.header);
    canonical_json(content.data, &mut text);
    text.push('|');
    canonical_json(content.metadata, &mut text);
    hash_after(previous, &text)
}

/// [`chain_hash`] of content whose data and metadata are given as JSON text (as read
/// back from the log), canonicalized without a [`Value`] (see [`canonical_json_text`]).
pub fn chain_hash_text(
    previous: &[u8],
    header: HashedHeader<'_>,
    data: &str,
    metadata: &str,
) -> Result<[u8; 32], serde_json::Error> {
    let mut text = content_prefix(header);
    canonical_json_text(data, &mut text)?;
    text.push('|');
    canonical_json_text(metadata, &mut text)?;
    Ok(hash_after(previous, &text))
}

/// The content's fields before its JSON, as the chain writes them.
fn content_prefix(h: HashedHeader<'_>) -> String {
    let mut text = String::with_capacity(512);
    let _ = write!(
        text,
        "{}|{}|{}|{}|{}|{}|",
        h.position, h.event_id, h.stream_id, h.version, h.event_type, h.recorded_at_us
    );
    text
}

fn hash_after(previous: &[u8], text: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(text.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random JSON text of `depth` levels at most, with what a parser must get right:
    /// escapes (short, `\u`, surrogate pairs), repeated keys, whitespace, and numbers
    /// of every form (negative zero, exponents, past `u64`, fractions).
    fn next(x: &mut u64, n: u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % n
    }

    fn random_json(x: &mut u64, depth: u32, out: &mut String) {
        const STRINGS: [&str; 9] = [
            "\"a\"",
            "\"\"",
            "\"b\\\"q\"",
            "\"\\n\\t\\u0001\"",
            "\"\\u00e9t\\u00E9\"",
            "\"\\ud83d\\ude00\"",
            "\"\u{e9}\u{1F600}\"",
            "\"\\/x\"",
            "\"zz\"",
        ];
        const NUMBERS: [&str; 14] = [
            "0",
            "-0",
            "7",
            "-42",
            "1e2",
            "1.5",
            "2.0",
            "1E-5",
            "-9223372036854775808",
            "18446744073709551615",
            "123456789012345678901",
            "9007199254740993",
            "-1.25e300",
            "0.1",
        ];
        let kind = if depth == 0 { next(x, 4) } else { next(x, 6) };
        match kind {
            0 => out.push_str(["null", "true", "false"][next(x, 3) as usize]),
            1 => out.push_str(NUMBERS[next(x, NUMBERS.len() as u64) as usize]),
            2 | 3 => out.push_str(STRINGS[next(x, STRINGS.len() as u64) as usize]),
            4 => {
                out.push_str(if next(x, 2) == 0 { "[" } else { "[ " });
                for i in 0..next(x, 4) {
                    if i > 0 {
                        out.push_str(if next(x, 2) == 0 { "," } else { " ,\n" });
                    }
                    random_json(x, depth - 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..next(x, 5) {
                    if i > 0 {
                        out.push(',');
                    }
                    // Few keys, so that some repeat.
                    out.push_str(STRINGS[next(x, 4) as usize + 5]);
                    out.push_str(if next(x, 2) == 0 { ":" } else { " : " });
                    random_json(x, depth - 1, out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn text_is_canonicalized_exactly_as_its_value_is() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut x, 4, &mut text);
            let (mut from_text, mut from_value) = (String::new(), String::new());
            let value: Result<Value, _> = serde_json::from_str(&text);
            match (canonical_json_text(&text, &mut from_text), value) {
                (Ok(()), Ok(value)) => {
                    canonical_json(&value, &mut from_value);
                    assert_eq!(from_text, from_value, "for {text}");
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("one parsed and the other did not: {a:?} / {b:?} for {text}"),
            }
        }
        // Postgres' jsonb writes keys shortest first; both orders give one text.
        let (mut a, mut b) = (String::new(), String::new());
        canonical_json_text(r#"{"b": 1, "aa": [2, {"d": null, "c": "\u00e9"}]}"#, &mut a).expect("JSON");
        canonical_json_text(r#"{"aa":[2,{"c":"é","d":null}],"b":1}"#, &mut b).expect("JSON");
        assert_eq!(a, b);
        assert_eq!(a, r#"{"aa":[2,{"c":"é","d":null}],"b":1}"#);
        assert!(canonical_json_text("{\"a\":", &mut String::new()).is_err());
        // `Value` would read this object as the number 1; the text is refused instead.
        let marked = r#"{"x":{"$serde_json::private::RawValue":"1"}}"#;
        assert!(canonical_json_text(marked, &mut String::new()).is_err());
        // Not first, the name is a member like any other, to `Value` as here.
        let member = r#"{"a":{"b":2,"$serde_json::private::RawValue":"1"}}"#;
        let (mut text, mut value) = (String::new(), String::new());
        canonical_json_text(member, &mut text).expect("JSON");
        canonical_json(&serde_json::from_str(member).expect("JSON"), &mut value);
        assert_eq!(text, value);
    }

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
