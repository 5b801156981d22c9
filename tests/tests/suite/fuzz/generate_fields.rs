//! Generators for the parts of a command request: the Idempotency-Key and X-Correlation-Id
//! headers, amounts, currencies, ids, free text, overdraft limits and whole-body mutations, and
//! the request built from a body (`command`). Metadata has its own module.

use crate::fuzz::expect::Expect;
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{Body, Field, Req, Validity, js};
use crate::fuzz::{AMOUNT_MAX, CURRENCIES, UNUSED_CURRENCIES, VALIDATION};
use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::Method;
use uuid::Uuid;

/// A malformed Idempotency-Key: its tag, and the (status, code) answers it may get.
pub(crate) type KeyError = (String, Vec<(u16, &'static str)>);

impl Fuzz {
    /// An Idempotency-Key header, and for a malformed one its tag and the answers it gets.
    pub(crate) fn g_key(&mut self) -> (Option<Vec<u8>>, Option<KeyError>) {
        let fresh = format!("fz-{}-{:x}", self.step, self.rng.random::<u64>());
        if self.calm || !self.rng.random_bool(0.08) {
            return (Some(fresh.into_bytes()), None);
        }
        let v = ["missing", "too_long", "non_ascii", "tab", "empty", "max_length"];
        let Some(v) = self.variant("key", &v) else { return (Some(fresh.into_bytes()), None) };
        let key_missing = vec![(400, "idempotency_key_missing")];
        let malformed = vec![(400, "validation_error")];
        let (key, error) = match v {
            "missing" => (None, Some(key_missing)),
            "too_long" => (Some(vec![b'k'; 256]), Some(malformed)),
            "non_ascii" => (Some("ключ-🔑".as_bytes().to_vec()), Some(malformed)),
            "tab" => (Some(b"a\tb".to_vec()), Some(malformed)),
            "empty" => (Some(Vec::new()), Some(vec![(400, "validation_error"), (400, "idempotency_key_missing")])),
            _ => {
                let mut k = fresh.into_bytes();
                k.resize(255, b'~');
                (Some(k), None)
            }
        };
        (key, error.map(|e| (format!("key={v}"), e)))
    }

    pub(crate) fn g_correlation(&mut self) -> (Option<Vec<u8>>, Option<String>) {
        match self.rng.random_range(0..100) {
            0..=19 => {
                let c = format!("fz-corr-{:016x}", self.rng.random::<u64>());
                (Some(c.clone().into_bytes()), Some(c))
            }
            20..=22 => {
                let v = [b"x".repeat(300), "корр".as_bytes().to_vec(), Vec::new(), b"a b;c=\"d\"".to_vec()];
                (v.choose(&mut self.rng).cloned(), None)
            }
            _ => (None, None),
        }
    }

    pub(crate) fn g_amount(&mut self, name: &str, hostile: bool, typical_max: i128) -> Field<i128> {
        let variants = [
            "0", "-1", "max+1", "1e18+1", "7.0", "1e3", "1.5", "string", "1e400", "2^64", "-2^63-1", "i64max", "null",
            "bool", "array", "object", "missing", "-0", "+5", "05", "NaN",
        ];
        let v = if hostile { self.variant(name, &variants) } else { None };
        let Some(v) = v else {
            let value = match self.rng.random_range(0..100) {
                0..=89 => self.rng.random_range(1..=typical_max.max(1)),
                90..=97 => self.rng.random_range(1..=1_000_000),
                _ => AMOUNT_MAX,
            };
            return Field::valid(value.to_string(), value);
        };
        let raw = match v {
            "max+1" => "1000000000000001",
            "1e18+1" => "1000000000000000001",
            "string" => "\"5\"",
            "2^64" => "18446744073709551616",
            "-2^63-1" => "-9223372036854775809",
            "i64max" => "9223372036854775807",
            "bool" => "true",
            "array" => "[5]",
            "object" => "{\"value\":5}",
            "missing" => "",
            other => other,
        };
        let raw = (!raw.is_empty()).then(|| raw.to_owned());
        Field::hostile(format!("{name}={v}"), raw, Validity::Invalid, None)
    }

    /// A currency field; `want` when plausible. `mismatch` allows another valid code.
    pub(crate) fn g_currency(
        &mut self,
        name: &str,
        hostile: bool,
        want: &'static str,
        mismatch: bool,
    ) -> Field<&'static str> {
        if !hostile {
            return Field::valid(js(want), want);
        }
        let mut variants = vec![
            "lower",
            "long",
            "euro_sign",
            "short",
            "empty",
            "digits",
            "number",
            "null",
            "missing",
            "nul",
            "surrogate",
            "space",
            "object",
        ];
        if mismatch {
            variants.extend(["other", "other", "other"]);
        }
        let Some(v) = self.variant(name, &variants) else { return Field::valid(js(want), want) };
        if v == "other" {
            let pool: Vec<&'static str> =
                CURRENCIES.iter().chain(UNUSED_CURRENCIES.iter()).copied().filter(|c| *c != want).collect();
            let other = pool.choose(&mut self.rng).copied().expect("several currencies");
            return Field::hostile(format!("{name}=other"), Some(js(other)), Validity::Valid, Some(other));
        }
        let raw = match v {
            "lower" => js(&want.to_lowercase()),
            "long" => js(&format!("{want}O")),
            "euro_sign" => js("€UR"),
            "short" => js(&want[..2]),
            "empty" => js(""),
            "digits" => js("978"),
            "number" => "978".to_owned(),
            "null" => "null".to_owned(),
            "nul" => "\"EU\\u0000\"".to_owned(),
            "surrogate" => "\"\\ud800UR\"".to_owned(),
            "space" => js(&format!(" {want}")),
            "object" => format!("{{\"code\":{}}}", js(want)),
            _ => String::new(),
        };
        Field::hostile(format!("{name}={v}"), (!raw.is_empty()).then_some(raw), Validity::Invalid, None)
    }

    /// An id naming an account (or a transfer) in a body or path; `want` when plausible.
    pub(crate) fn g_ref(&mut self, name: &str, hostile: bool, want: Uuid) -> Field<Uuid> {
        if !hostile {
            return Field::valid(js(&want.to_string()), want);
        }
        let variants = [
            "unknown",
            "unknown",
            "nil",
            "reserved",
            "reserved",
            "transfer_id",
            "upper",
            "simple",
            "braced",
            "urn",
            "garbage",
            "empty",
            "number",
            "null",
            "missing",
            "nul",
            "long",
        ];
        let Some(v) = self.variant(name, &variants) else { return Field::valid(js(&want.to_string()), want) };
        let id = |u: Uuid| (Some(js(&u.to_string())), Validity::Valid, Some(u));
        let (raw, validity, value) = match v {
            "unknown" => id(self.unknown_id()),
            "nil" => id(Uuid::nil()),
            "reserved" => {
                let reserved: Vec<Uuid> = self.model.reserved().into_iter().collect();
                id(*reserved.choose(&mut self.rng).expect("reserved ids exist"))
            }
            "transfer_id" => {
                let t = self.model.transfers.choose(&mut self.rng).map(|t| t.id);
                let u = t.unwrap_or_else(|| self.uuid());
                id(u)
            }
            "upper" => (Some(js(&want.to_string().to_uppercase())), Validity::Open, Some(want)),
            "simple" => (Some(js(&want.simple().to_string())), Validity::Open, Some(want)),
            "braced" => (Some(js(&want.braced().to_string())), Validity::Open, Some(want)),
            "urn" => (Some(js(&want.urn().to_string())), Validity::Open, Some(want)),
            "garbage" => (Some(js("not-a-uuid")), Validity::Invalid, None),
            "empty" => (Some(js("")), Validity::Invalid, None),
            "number" => (Some("5".to_owned()), Validity::Invalid, None),
            "null" | "missing" => (if v == "null" { Some("null".to_owned()) } else { None }, Validity::Invalid, None),
            "nul" => (Some("\"\\u0000\"".to_owned()), Validity::Invalid, None),
            _ => (Some(js(&"7".repeat(1000))), Validity::Invalid, None),
        };
        Field::hostile(format!("{name}={v}"), raw, validity, value)
    }

    pub(crate) fn plain_text(&mut self) -> String {
        let pieces =
            ["ref", "Zahlung für Miete", "支払い", "emoji 😀", "quote \" and \\ backslash", "line\nbreak", "x"];
        format!("{} {}", pieces.choose(&mut self.rng).expect("pieces"), self.rng.random_range(0..1000))
    }

    /// A free-text field (reference, reason, destination, owner).
    pub(crate) fn g_text(&mut self, name: &str, hostile: bool, required: bool) -> Field<Option<String>> {
        if !hostile {
            if !required && self.rng.random_bool(0.5) {
                return Field::absent(Some(None));
            }
            let t = self.plain_text();
            return Field::valid(js(&t), Some(t));
        }
        let variants = [
            "empty",
            "nul",
            "long",
            "very_long",
            "surrogate",
            "number",
            "bool",
            "object",
            "null",
            "missing",
            "unicode",
        ];
        let Some(v) = self.variant(name, &variants) else { return Field::absent(Some(None)) };
        let absent_validity = if required { Validity::Invalid } else { Validity::Valid };
        let (raw, validity, value) = match v {
            "empty" => (Some(js("")), Validity::Open, Some(Some(String::new()))),
            "nul" => (Some("\"a\\u0000b\"".to_owned()), Validity::Open, Some(Some("a\0b".to_owned()))),
            "long" => (Some(js(&"x".repeat(1025))), Validity::Open, Some(Some("x".repeat(1025)))),
            "very_long" => (Some(js(&"é".repeat(5000))), Validity::Open, Some(Some("é".repeat(5000)))),
            "surrogate" => (Some("\"\\ud800\"".to_owned()), Validity::Open, None),
            "number" => (Some("5".to_owned()), Validity::Invalid, None),
            "bool" => (Some("false".to_owned()), Validity::Invalid, None),
            "object" => (Some("{\"a\":\"b\"}".to_owned()), Validity::Invalid, None),
            "null" => (Some("null".to_owned()), absent_validity.max(Validity::Open), Some(None)),
            "missing" => (None, absent_validity, Some(None)),
            _ => {
                let t = "\u{202e}RTL \u{feff}BOM \u{1F600} \u{0301}combining".to_owned();
                (Some(js(&t)), Validity::Valid, Some(Some(t)))
            }
        };
        Field::hostile(format!("{name}={v}"), raw, validity, value)
    }

    pub(crate) fn g_overdraft(&mut self, hostile: bool) -> Field<i128> {
        if !hostile {
            return match self.rng.random_range(0..100) {
                0..=59 => Field::absent(Some(0)),
                60..=89 => {
                    let v = self.rng.random_range(0..=1000);
                    Field::valid(v.to_string(), v)
                }
                90..=94 => Field::valid(AMOUNT_MAX.to_string(), AMOUNT_MAX),
                _ => {
                    let v = self.rng.random_range(1..=1_000_000);
                    Field::valid(v.to_string(), v)
                }
            };
        }
        let variants = ["-1", "7.0", "1e3", "string", "1e400", "max+1", "2^64", "null", "bool", "-0"];
        let Some(v) = self.variant("overdraft_limit", &variants) else { return Field::absent(Some(0)) };
        let (raw, validity, value) = match v {
            "-1" => ("-1", Validity::Invalid, None),
            "7.0" => ("7.0", Validity::Open, None),
            "1e3" => ("1e3", Validity::Open, None),
            "string" => ("\"5\"", Validity::Invalid, None),
            "1e400" => ("1e400", Validity::Invalid, None),
            "max+1" => ("1000000000000001", Validity::Open, None),
            "2^64" => ("18446744073709551616", Validity::Open, None),
            "null" => ("null", Validity::Open, Some(0)),
            "bool" => ("true", Validity::Invalid, None),
            _ => ("-0", Validity::Open, Some(0)),
        };
        Field::hostile(format!("overdraft_limit={v}"), Some(raw.to_owned()), validity, value)
    }

    /// A mutation of the whole body, applied after its fields (when chosen).
    pub(crate) fn mutate_top(&mut self, body: &mut Body) {
        let variants = [
            "unknown_field",
            "dup_same",
            "array",
            "string",
            "number",
            "null",
            "truncated",
            "trailing",
            "raw_ff",
            "raw_nul",
            "bom",
            "padded_70k",
            "deep_unknown",
            "empty_object",
        ];
        let Some(v) = self.variant("top", &variants) else { return };
        body.tags.push(format!("top={v}"));
        let json = body.json();
        let (raw, validity): (Option<Vec<u8>>, Validity) = match v {
            "unknown_field" => {
                body.fields.push(("unexpected_field".into(), "{\"x\":[1,2,3]}".into()));
                (None, Validity::Open)
            }
            "dup_same" => {
                if let Some(f) = body.fields.first().cloned() {
                    body.fields.push(f);
                }
                (None, Validity::Open)
            }
            "array" => (Some(format!("[{json}]").into_bytes()), Validity::Invalid),
            "string" => (Some(js(&json).into_bytes()), Validity::Invalid),
            "number" => (Some(b"42".to_vec()), Validity::Invalid),
            "null" => (Some(b"null".to_vec()), Validity::Invalid),
            "truncated" => (Some(json.as_bytes()[..json.len() - 1].to_vec()), Validity::Invalid),
            "trailing" => (Some(format!("{json} x").into_bytes()), Validity::Invalid),
            "raw_ff" => (Some(b"{\"\xff\":1}".to_vec()), Validity::Invalid),
            "raw_nul" => (Some(b"{\"a\":\"\x00\"}".to_vec()), Validity::Invalid),
            "bom" => (Some([b"\xef\xbb\xbf".as_slice(), json.as_bytes()].concat()), Validity::Open),
            "padded_70k" => (Some(format!("{json}{}", " ".repeat(70 * 1024)).into_bytes()), Validity::Open),
            "deep_unknown" => {
                body.fields.push(("deep".into(), format!("{}{}", "[".repeat(1000), "]".repeat(1000))));
                (None, Validity::Open)
            }
            _ => (Some(b"{}".to_vec()), Validity::Invalid),
        };
        body.raw = raw;
        body.merge(validity);
    }

    /// A request for `body`, with a key and a correlation id; a hostile key overrides
    /// the expectation (nothing runs without a valid key).
    pub(crate) fn command(&mut self, family: &str, path: String, body: &Body, expect: Expect) -> (String, Req, Expect) {
        let (key, key_error) = self.g_key();
        let (correlation, _) = self.g_correlation();
        let req = Req { method: Method::POST, path, key, body: Some(body.bytes()), correlation };
        let mut tags = body.tags.clone();
        let path_hostile = matches!(expect, Expect::Refuse(_));
        let expect = match key_error {
            Some((tag, _)) if path_hostile => {
                // A malformed path may be refused before the key is looked at.
                tags.push(tag);
                Expect::Refuse(vec![400, 404, 414, 422])
            }
            Some((tag, mut codes)) => {
                tags.push(tag);
                if body.validity() == Validity::Invalid {
                    codes.extend(VALIDATION);
                }
                if body.validity() == Validity::Open && body.raw.is_some() {
                    codes.push((413, "payload_too_large"));
                }
                Expect::OneOf(codes)
            }
            None => expect,
        };
        let label =
            if tags.is_empty() { format!("{family}/plausible") } else { format!("{family}/{}", tags.join("+")) };
        (label, req, expect)
    }
}
