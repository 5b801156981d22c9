//! Money and currency value types. Money is a count of minor units with checked
//! arithmetic only: a balance never wraps and never panics on overflow.
//!
//! Amounts (what one command moves), limits and customer balances fit in an `i64`
//! (API.md: amounts up to 10^15; `decide` refuses a customer balance past `i64`).
//! A system account's balance is the negative sum of every customer balance in its
//! currency, which any number of accounts can push past an `i64` (issue 26: one client
//! depositing 10^15 at a time drove it to `i64::MIN` in seconds and made the currency
//! unusable for everyone), so balances are accumulated in an `i128`: the shared
//! account cannot be exhausted (2^127 minor units is 10^23 deposits of the largest
//! amount), and every customer still gets an `i64`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest amount a single command may move (API.md: 1 ..= 10^15 minor units).
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;

/// A signed quantity of minor units (balances, limits, deltas). Serialized as a JSON
/// integer when it fits in 64 bits (always, in events: their amounts are bounded), else
/// as a string of its digits (a system account's balance in a stored state): a
/// `serde_json::Value` holds no exact integer past 64 bits, and states are read through
/// one. Both forms are read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i128);

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_i64() {
            Some(n) => s.serialize_i64(n),
            None => s.collect_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        struct Units;
        impl serde::de::Visitor<'_> for Units {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer count of minor units, or its digits in a string")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Money, E> {
                Ok(Money::new(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Money, E> {
                Ok(Money(i128::from(n)))
            }
            fn visit_i128<E: serde::de::Error>(self, n: i128) -> Result<Money, E> {
                Ok(Money(n))
            }
            fn visit_str<E: serde::de::Error>(self, digits: &str) -> Result<Money, E> {
                digits.parse().map(Money).map_err(|_| E::invalid_value(serde::de::Unexpected::Str(digits), &self))
            }
        }
        d.deserialize_any(Units)
    }
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn new(minor_units: i64) -> Money {
        Money(minor_units as i128)
    }

    /// Any count of minor units (a system account's balance may pass an `i64`).
    pub const fn wide(minor_units: i128) -> Money {
        Money(minor_units)
    }

    pub const fn minor_units(self) -> i128 {
        self.0
    }

    /// The value as an `i64`, if it fits (every customer balance, amount and limit does).
    pub fn to_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn checked_neg(self) -> Option<Money> {
        self.0.checked_neg().map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A strictly positive amount of at most [`AMOUNT_MAX`] minor units: what a command moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

/// Why a number is not a valid [`Amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be at least 1 minor unit, got {0}")]
    NotPositive(i64),
    #[error("amount must be at most {AMOUNT_MAX} minor units, got {0}")]
    TooLarge(i64),
}

impl Amount {
    pub fn new(minor_units: i64) -> Result<Amount, AmountError> {
        if minor_units < 1 {
            return Err(AmountError::NotPositive(minor_units));
        }
        if minor_units > AMOUNT_MAX {
            return Err(AmountError::TooLarge(minor_units));
        }
        Ok(Amount(minor_units))
    }

    pub const fn minor_units(self) -> i64 {
        self.0
    }

    pub const fn money(self) -> Money {
        Money::new(self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<i64> for Amount {
    type Error = AmountError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Amount::new(value)
    }
}

impl From<Amount> for i64 {
    fn from(value: Amount) -> i64 {
        value.0
    }
}

/// An ISO-4217 style currency code: exactly three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Why a string is not a currency code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be three upper-case letters, got {0:?}")]
pub struct CurrencyError(pub String);

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, CurrencyError> {
        let bytes = code.as_bytes();
        match bytes {
            [a, b, c] if bytes.iter().all(u8::is_ascii_uppercase) => Ok(Currency([*a, *b, *c])),
            _ => Err(CurrencyError(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII upper-case letters only")
    }

    pub const fn bytes(&self) -> [u8; 3] {
        self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_limits() {
        for (input, ok) in [
            (0, false),
            (-1, false),
            (i64::MIN, false),
            (1, true),
            (AMOUNT_MAX, true),
            (AMOUNT_MAX + 1, false),
            (i64::MAX, false),
        ] {
            assert_eq!(Amount::new(input).is_ok(), ok, "amount {input}");
        }
    }

    #[test]
    fn money_arithmetic_is_checked() {
        assert_eq!(Money::wide(i128::MAX).checked_add(Money::new(1)), None);
        assert_eq!(Money::wide(i128::MIN).checked_sub(Money::new(1)), None);
        assert_eq!(Money::wide(i128::MIN).checked_neg(), None);
        assert_eq!(Money::new(2).checked_sub(Money::new(5)), Some(Money::new(-3)));
        let past = Money::new(i64::MIN).checked_sub(Money::new(1)).expect("an i128 holds it");
        assert_eq!((past.to_i64(), Money::new(i64::MIN).to_i64()), (None, Some(i64::MIN)));
        // An integer while it fits in 64 bits, else its digits; both read back, through a
        // `Value` too.
        assert_eq!(serde_json::to_string(&Money::new(-7)).expect("serializes"), "-7");
        assert_eq!(serde_json::to_string(&past).expect("serializes"), "\"-9223372036854775809\"");
        for m in [Money::new(-7), Money::new(i64::MAX), past, Money::wide(i128::MIN)] {
            let value = serde_json::to_value(m).expect("a value");
            assert_eq!(serde_json::from_value::<Money>(value).expect("reads back"), m);
            let text = serde_json::to_string(&m).expect("text");
            assert_eq!(serde_json::from_str::<Money>(&text).expect("reads back"), m);
        }
    }

    #[test]
    fn currency_codes() {
        for (input, ok) in
            [("EUR", true), ("eur", false), ("EU", false), ("EURO", false), ("E1R", false), ("ÉUR", false)]
        {
            assert_eq!(Currency::parse(input).is_ok(), ok, "currency {input}");
        }
        let c = Currency::parse("USD").expect("valid code");
        assert_eq!(serde_json::to_string(&c).expect("serializes"), "\"USD\"");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }
}
