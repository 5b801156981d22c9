//! Generators for metadata fields: valid objects (up to the 8 KiB limit, exactly sized when
//! asked) and the hostile ones the contract refuses.

use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{Field, Validity, js};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use std::collections::BTreeSet;

impl Fuzz {
    pub(crate) fn metadata_key(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";
        let len = if self.rng.random_bool(0.1) { 64 } else { self.rng.random_range(1..=12) };
        (0..len).map(|_| *ALPHABET.choose(&mut self.rng).expect("alphabet") as char).collect()
    }

    pub(crate) fn metadata_value(&mut self) -> String {
        let values = [
            "\"plain\"".to_owned(),
            "\"\\ud83d\\ude00 escaped pair\"".to_owned(),
            js("é ü 例"),
            "\"\"".to_owned(),
            "0".to_owned(),
            "-42".to_owned(),
            "9223372036854775807".to_owned(),
            "-9223372036854775808".to_owned(),
            "true".to_owned(),
            "false".to_owned(),
            "null".to_owned(),
            js(&"é".repeat(1024)),
            js(&"x".repeat(1024)),
            format!("{}", self.rng.random_range(-1_000_000i64..1_000_000)),
        ];
        values.choose(&mut self.rng).cloned().expect("values")
    }

    /// A valid metadata object, as JSON text.
    pub(crate) fn valid_metadata(&mut self) -> String {
        if self.rng.random_bool(0.05) {
            return metadata_of_size(8192);
        }
        let n = if self.rng.random_bool(0.05) { 64 } else { self.rng.random_range(0..=5) };
        let mut keys = BTreeSet::new();
        let mut entries = Vec::new();
        let mut bytes = 2;
        while keys.len() < n {
            let k = self.metadata_key();
            let mut v = self.metadata_value();
            if bytes + k.len() + v.len() + 4 > 7000 {
                v = "1".to_owned();
            }
            if keys.insert(k.clone()) {
                bytes += k.len() + v.len() + 4;
                entries.push(format!("{}:{v}", js(&k)));
            }
        }
        format!("{{{}}}", entries.join(","))
    }

    /// A metadata field: absent, valid, or (hostile) something the contract refuses.
    pub(crate) fn g_metadata(&mut self, hostile: bool, prefix: &str, present: f64) -> Field<Option<Value>> {
        if !hostile {
            let tag = format!("{prefix}=valid");
            if !self.rng.random_bool(present) || self.skipped(&tag) {
                return Field::absent(Some(None));
            }
            let raw = self.valid_metadata();
            let value: Value = serde_json::from_str(&raw).expect("valid metadata parses");
            // Valid account metadata is plausible; on movements it is a v1.1 variant.
            let tag = prefix.starts_with("mv").then_some(tag);
            return Field { raw: Some(raw), validity: Validity::Valid, value: Some(Some(value)), tag };
        }
        let variants = [
            "float",
            "7.0",
            "1e3",
            "1e17",
            "-1e2",
            "1e400",
            "2^63",
            "2^64",
            "-2^63-1",
            "nested",
            "empty_object",
            "array",
            "nul",
            "nul_key",
            "surrogate",
            "low_surrogate",
            "surrogate_key",
            "string_1025",
            "65_keys",
            "key_65",
            "key_empty",
            "key_space",
            "key_unicode",
            "key_slash",
            "over_8k",
            "dup_same",
            "dup_different",
            "deep",
            "not_object",
            "string",
            "null",
        ];
        let Some(v) = self.variant(prefix, &variants) else { return Field::absent(Some(None)) };
        let one = |value: &str| format!("{{\"ok\":1,\"k\":{value}}}");
        let raw = match v {
            "float" => one("1.5"),
            "7.0" => one("7.0"),
            "1e3" => one("1e3"),
            "1e17" => "{\"n\":1e17}".to_owned(),
            "-1e2" => one("-1e2"),
            "1e400" => one("1e400"),
            "2^63" => one("9223372036854775808"),
            "2^64" => one("18446744073709551616"),
            "-2^63-1" => one("-9223372036854775809"),
            "nested" => one("{\"a\":1}"),
            "empty_object" => one("{}"),
            "array" => one("[1,2]"),
            "nul" => one("\"a\\u0000b\""),
            "nul_key" => "{\"a\\u0000\":1}".to_owned(),
            "surrogate" => one("\"\\ud800\""),
            "low_surrogate" => one("\"x\\udc00\""),
            "surrogate_key" => "{\"\\ud800\":1}".to_owned(),
            "string_1025" => one(&js(&"é".repeat(1025))),
            "65_keys" => format!("{{{}}}", (0..65).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(",")),
            "key_65" => format!("{{{}:1}}", js(&"k".repeat(65))),
            "key_empty" => "{\"\":1}".to_owned(),
            "key_space" => "{\"a b\":1}".to_owned(),
            "key_unicode" => "{\"ключ\":1}".to_owned(),
            "key_slash" => "{\"a/b\":1}".to_owned(),
            "over_8k" => metadata_of_size(8193),
            "dup_same" => "{\"a\":1,\"a\":1}".to_owned(),
            "dup_different" => "{\"a\":1,\"a\":\"x\"}".to_owned(),
            "deep" => format!("{{\"d\":{}{}}}", "[".repeat(200), "]".repeat(200)),
            "not_object" => "[{\"a\":1}]".to_owned(),
            "string" => js("{\"a\":1}"),
            _ => "null".to_owned(),
        };
        let (validity, value) = if v == "null" { (Validity::Open, Some(None)) } else { (Validity::Invalid, None) };
        Field::hostile(format!("{prefix}={v}"), Some(raw), validity, value)
    }
}

/// A valid metadata object whose compact serialization is exactly `size` bytes (ASCII).
pub(crate) fn metadata_of_size(size: usize) -> String {
    let n = 9;
    // `{` `}`, n-1 commas, and per entry `"kN":"…"` = 7 bytes around the value.
    let overhead = 2 + (n - 1) + 7 * n;
    let mut left = size - overhead;
    let mut entries = Vec::new();
    for i in 0..n {
        let len = left.min(1024);
        left -= len;
        entries.push(format!("\"k{i}\":\"{}\"", "m".repeat(len)));
    }
    let text = format!("{{{}}}", entries.join(","));
    assert_eq!(text.len(), size, "metadata sized exactly");
    text
}
