//! Resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`) read exactly as Kubernetes reads
//! them: an exact value in nano-units, rounded up (away from zero) below that precision, and
//! exposed as milli-units (CPU) or whole units (bytes) the way `MilliValue()` and `Value()` do.

use std::fmt;

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text does not follow `<signed number><suffix>`.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', got {0:?}")]
    Syntax(String),
    /// The suffix is not a known SI, binary or exponent suffix.
    #[error("unable to parse quantity's suffix in {0:?}")]
    Suffix(String),
    /// The value does not fit the exact representation (about ±1.7e29).
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// An exact resource quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;

fn div_away_from_zero(numerator: i128, denominator: i128) -> i128 {
    let q = numerator / denominator;
    if numerator % denominator != 0 {
        q + numerator.signum()
    } else {
        q
    }
}

impl Quantity {
    /// Parses a quantity string.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(input.to_string());
        let too_large = || QuantityError::TooLarge(input.to_string());
        let (negative, rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(syntax());
        }
        // Mantissa as an integer with `scale` decimal places.
        let mut mantissa: i128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        let scale = fraction.len() as i32;
        let (binary_shift, decimal_exp): (u32, i32) = match suffix {
            "" => (0, 0),
            "n" => (0, -9),
            "u" => (0, -6),
            "m" => (0, -3),
            "k" => (0, 3),
            "M" => (0, 6),
            "G" => (0, 9),
            "T" => (0, 12),
            "P" => (0, 15),
            "E" => (0, 18),
            "Ki" => (10, 0),
            "Mi" => (20, 0),
            "Gi" => (30, 0),
            "Ti" => (40, 0),
            "Pi" => (50, 0),
            "Ei" => (60, 0),
            s if s.starts_with(['e', 'E']) => {
                let exp = &s[1..];
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QuantityError::Suffix(input.to_string()));
                }
                (0, exp.parse::<i32>().map_err(|_| too_large())?)
            }
            _ => return Err(QuantityError::Suffix(input.to_string())),
        };
        let shifted = mantissa
            .checked_mul(1i128.checked_shl(binary_shift).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
        // nanos = shifted * 10^(decimal_exp + 9 - scale)
        let exp10 = decimal_exp.checked_add(9 - scale).ok_or_else(too_large)?;
        let nanos = if exp10 >= 0 {
            let factor = 10i128.checked_pow(exp10 as u32).ok_or_else(too_large)?;
            if shifted == 0 {
                0
            } else {
                shifted.checked_mul(factor).ok_or_else(too_large)?
            }
        } else {
            match 10i128.checked_pow(exp10.unsigned_abs()) {
                Some(divisor) => div_away_from_zero(shifted, divisor),
                None => i128::from(shifted != 0), // far below a nano: rounds up to 1n
            }
        };
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// A quantity of whole units.
    pub fn from_units(units: i64) -> Self {
        Quantity {
            nanos: i128::from(units) * NANOS_PER_UNIT,
        }
    }

    /// A quantity of milli-units.
    pub fn from_millis(millis: i64) -> Self {
        Quantity {
            nanos: i128::from(millis) * 1_000_000,
        }
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up (CPU: `100m` is 100), saturating at `i64` bounds.
    pub fn milli_value(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, 1_000_000))
    }

    /// The value in whole units, rounded up (memory: `128Mi` is 134217728), saturating at `i64`
    /// bounds.
    pub fn value(&self) -> i64 {
        saturate(div_away_from_zero(self.nanos, NANOS_PER_UNIT))
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Prints a canonical decimal form: whole units if exact, else milli, micro or nano units.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n % NANOS_PER_UNIT == 0 {
            write!(f, "{}", n / NANOS_PER_UNIT)
        } else if n % 1_000_000 == 0 {
            write!(f, "{}m", n / 1_000_000)
        } else if n % 1_000 == 0 {
            write!(f, "{}u", n / 1_000)
        } else {
            write!(f, "{n}n")
        }
    }
}

impl TryFrom<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> for Quantity {
    type Error = QuantityError;
    fn try_from(
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ) -> Result<Self, QuantityError> {
        Quantity::parse(&q.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_examples() {
        let milli = |s: &str| Quantity::parse(s).unwrap().milli_value();
        let units = |s: &str| Quantity::parse(s).unwrap().value();
        assert_eq!(milli("100m"), 100);
        assert_eq!(milli("1.5"), 1500);
        assert_eq!(milli("0.1"), 100);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("5."), 5000);
        assert_eq!(milli("2e3"), 2_000_000);
        assert_eq!(milli("1e-3"), 1);
        assert_eq!(milli("1n"), 1, "rounds up to a milli");
        assert_eq!(milli("-1"), -1000);
        assert_eq!(milli("+2"), 2000);
        assert_eq!(units("128Mi"), 134_217_728);
        assert_eq!(units("1Ki"), 1024);
        assert_eq!(units("0.5Gi"), 536_870_912);
        assert_eq!(units("1G"), 1_000_000_000);
        assert_eq!(units("1k"), 1000);
        assert_eq!(units("1E"), 1_000_000_000_000_000_000);
        assert_eq!(units("1Ei"), 1 << 60);
        assert_eq!(units("1.5"), 2, "Value() rounds up");
        assert_eq!(units("2E3"), 2000);
        assert_eq!(Quantity::parse("1.5").unwrap().to_string(), "1500m");
        assert_eq!(Quantity::parse("2k").unwrap().to_string(), "2000");
        assert_eq!(Quantity::parse("1e-40").unwrap().nanos(), 1);
    }

    #[test]
    fn rejects_bad_quantities() {
        for bad in [
            "", "1K", "1ki", "abc", "1.2.3", "--1", "1 Gi", "e3", "1e", "1e+", ".", "Mi", "1Mii",
            "1.5.Gi",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(
            Quantity::parse("1e40"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Quantity::parse(&"9".repeat(50)),
            Err(QuantityError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics(input in "[-+0-9.eEinumkKMGTP]{0,24}") {
            let _ = Quantity::parse(&input);
        }

        #[test]
        fn integers_with_suffixes_are_exact(n in 0i64..1_000_000, suffix in 0usize..6) {
            let (text, factor) = [("", 1i64), ("k", 1000), ("M", 1_000_000), ("Ki", 1024), ("Mi", 1 << 20), ("Gi", 1 << 30)][suffix];
            let q = Quantity::parse(&format!("{n}{text}")).unwrap();
            prop_assert_eq!(q.value(), n * factor);
            prop_assert_eq!(Quantity::parse(&q.to_string()).unwrap(), q);
        }

        #[test]
        fn millis_round_trip(m in -10_000_000i64..10_000_000) {
            let q = Quantity::parse(&format!("{m}m")).unwrap();
            prop_assert_eq!(q.milli_value(), m);
            prop_assert_eq!(q, Quantity::from_millis(m));
        }
    }
}
