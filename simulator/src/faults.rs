//! The fault-injection knobs of the simulator and their validation.
//!
//! This module owns only the configuration (what share of calls fail, and how);
//! the dice are rolled in `state`, under the same lock as the payout records, so
//! that a given seed and call order always produce the same faults.

use serde::{Deserialize, Serialize};

/// What the simulator does wrong, and how often. Rates are shares in `[0, 1]`.
///
/// The default injects nothing: every call succeeds at once.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of calls answered `503 Service Unavailable` (all contract routes).
    #[serde(default)]
    pub error_rate: f64,
    /// Share of `POST /payouts` calls that hang for `hang_ms` and then answer
    /// `504 Gateway Timeout`, recording nothing.
    #[serde(default)]
    pub timeout_rate: f64,
    /// How long a simulated timeout hangs before answering, in milliseconds.
    #[serde(default)]
    pub hang_ms: u64,
    /// Delay added to every call on the contract routes, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of new payouts recorded with status `rejected` (answered 201).
    #[serde(default)]
    pub reject_rate: f64,
    /// Share of new payouts answered `422` with nothing recorded.
    #[serde(default)]
    pub permanent_error_rate: f64,
    /// Share of new payouts that are recorded (paid) but answered `502`, as if
    /// the response had been lost on the way back.
    #[serde(default)]
    pub drop_response_rate: f64,
    /// When set, every contract call is answered `503`.
    #[serde(default)]
    pub down: bool,
    /// When set, `503` and `429` answers carry `Retry-After: <seconds>`.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// A `Faults` value that cannot be applied.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultsError {
    /// A rate is NaN or outside `[0, 1]`.
    RateOutOfRange {
        /// The field's name, e.g. `error_rate`.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
}

impl std::fmt::Display for FaultsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultsError::RateOutOfRange { field, value } => {
                write!(f, "{field} must be a share between 0 and 1, got {value}")
            }
        }
    }
}

impl std::error::Error for FaultsError {}

impl Faults {
    /// Checks that every rate is a share in `[0, 1]`.
    pub fn validate(&self) -> Result<(), FaultsError> {
        let rates = [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("reject_rate", self.reject_rate),
            ("permanent_error_rate", self.permanent_error_rate),
            ("drop_response_rate", self.drop_response_rate),
        ];
        for (field, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::RateOutOfRange { field, value });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_their_defaults() {
        let faults: Faults = serde_json::from_str(r#"{"error_rate": 0.5}"#).expect("valid faults JSON");
        assert_eq!(faults, Faults { error_rate: 0.5, ..Faults::default() });
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Faults>(r#"{"eror_rate": 0.5}"#).is_err());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        for value in [-0.1, 1.1, f64::NAN] {
            let faults = Faults { reject_rate: value, ..Faults::default() };
            assert!(matches!(faults.validate(), Err(FaultsError::RateOutOfRange { field: "reject_rate", .. })));
        }
        assert_eq!(Faults { reject_rate: 1.0, error_rate: 0.0, ..Faults::default() }.validate(), Ok(()));
    }
}
