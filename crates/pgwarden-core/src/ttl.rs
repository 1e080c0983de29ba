//! TTLs in Vault's accepted forms: integer seconds (`3600`, `"3600"`) or Go-style durations
//! (`90s`, `15m`, `1h30m`, `1.5h`, `24h`, and Vault's extra `d` for days).

use crate::CoreError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr, time::Duration};
use time::{OffsetDateTime, PrimitiveDateTime};

/// A whole number of seconds; zero means "not set" wherever Vault treats it that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Ttl(u64);

impl Ttl {
    /// The longest TTL accepted from users: 100 years. Longer ones are refused, so lease and
    /// token arithmetic never leaves the range of dates.
    pub const MAX: Ttl = Ttl(100 * 365 * 86_400 + 25 * 86_400);

    /// A TTL of `secs` seconds given as `text`, refused when over [`Ttl::MAX`].
    fn bounded(secs: u64, text: impl fmt::Display) -> Result<Ttl, CoreError> {
        if secs > Ttl::MAX.0 {
            return Err(CoreError::TtlTooLong {
                value: text.to_string(),
            });
        }
        Ok(Ttl(secs))
    }

    /// The instant this long after `start`, or the latest representable instant if that is
    /// later; never panics.
    pub fn after(self, start: OffsetDateTime) -> OffsetDateTime {
        time::Duration::try_from(self.as_duration())
            .ok()
            .and_then(|d| start.checked_add(d))
            .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc())
    }

    /// The whole seconds from `from` to `to`; zero when `to` is not later.
    pub fn between(from: OffsetDateTime, to: OffsetDateTime) -> Ttl {
        // Reviewed: the difference of two valid instants (years -9999..=9999) always fits
        // time's Duration, so this subtraction cannot overflow.
        #[allow(clippy::arithmetic_side_effects)]
        let seconds = (to - from).whole_seconds();
        Ttl(u64::try_from(seconds).unwrap_or(0))
    }

    /// A TTL of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Ttl(secs)
    }

    /// The TTL in seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// True when no TTL was given (zero).
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The TTL as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

/// Seconds per unit of a Go-style duration; sub-second units are allowed and rounded up.
fn unit_nanos(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    })
}

impl FromStr for Ttl {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CoreError::InvalidTtl {
            value: text.to_string(),
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(invalid());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let secs = s.parse::<u64>().unwrap_or(u64::MAX);
            return Ttl::bounded(secs, text);
        }
        let mut total_nanos = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let (number, after_number) = rest.split_at(number_len);
            let unit_len = after_number
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after_number.len());
            let (unit, next) = after_number.split_at(unit_len);
            let number: f64 = number.parse().map_err(|_| invalid())?;
            total_nanos += number * unit_nanos(unit).ok_or_else(invalid)?;
            rest = next;
        }
        let secs = (total_nanos / 1e9).ceil();
        if !secs.is_finite() || secs > Ttl::MAX.0 as f64 {
            return Err(CoreError::TtlTooLong {
                value: text.to_string(),
            });
        }
        // In range and whole: the conversion is exact.
        Ok(Ttl(secs as u64))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Number(f64),
            Text(String),
        }
        // Only a value of the wrong type gets the message of what a TTL may be; a broken
        // document keeps its own error.
        let raw = Raw::deserialize(deserializer).map_err(|error: D::Error| {
            if error
                .to_string()
                .starts_with("data did not match any variant")
            {
                serde::de::Error::custom(
                    "expected a number of seconds or a duration such as \"90s\", \"15m\" or \"1h\"",
                )
            } else {
                error
            }
        })?;
        let ttl = match raw {
            Raw::Seconds(secs) => Ttl::bounded(secs, secs),
            Raw::Number(n) if n >= 0.0 && n.fract() == 0.0 && n <= Ttl::MAX.0 as f64 => {
                // Whole and in range: the conversion is exact.
                Ok(Ttl(n as u64))
            }
            Raw::Number(n) if n >= 0.0 && n.is_finite() && n.fract() == 0.0 => {
                Err(CoreError::TtlTooLong {
                    value: n.to_string(),
                })
            }
            Raw::Number(n) => Err(CoreError::InvalidTtl {
                value: n.to_string(),
            }),
            Raw::Text(text) => text.parse(),
        };
        ttl.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        s.parse::<Ttl>().unwrap().as_secs()
    }

    #[test]
    fn parses_vault_forms() {
        assert_eq!(secs("3600"), 3600);
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("1h"), 3600);
        assert_eq!(secs("24h"), 86_400);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1.5h"), 5400);
        assert_eq!(secs("2d"), 172_800);
        assert_eq!(secs("1500ms"), 2);
        assert_eq!(secs("0"), 0);
    }

    #[test]
    fn rejects_garbage_with_the_users_text() {
        for bad in ["", "h", "1x", "abc", "1h-", "-5", "1..5s"] {
            let err = bad.parse::<Ttl>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid TTL {bad:?}: use integer seconds or a duration like 90s, 15m, 1h, 24h"
                )
            );
        }
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let t: Ttl = serde_json::from_str("120").unwrap();
        assert_eq!(t.as_secs(), 120);
        let t: Ttl = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(t.as_secs(), 120);
        let err = serde_json::from_str::<Ttl>("\"2 parsecs\"").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid TTL \"2 parsecs\""),
            "{err}"
        );
    }

    #[test]
    fn refuses_ttls_past_the_maximum_in_every_form() {
        let max = Ttl::MAX.as_secs();
        assert_eq!(secs(&max.to_string()), max);
        let too_long = |text: &str| {
            format!("TTL {text:?} is too long: the maximum is 3155760000s (100 years)")
        };
        for text in [
            "18446744073709551615",
            "99999999999999999999999",
            "3155760001",
            "1000000h",
        ] {
            assert_eq!(text.parse::<Ttl>().unwrap_err().to_string(), too_long(text));
        }
        for (json, shown) in [
            ("18446744073709551615", "18446744073709551615"),
            ("9223372036854775807", "9223372036854775807"),
            ("3e11", "300000000000"),
        ] {
            let err = serde_json::from_str::<Ttl>(json).unwrap_err().to_string();
            assert_eq!(err, too_long(shown));
        }
        let err = serde_json::from_str::<Ttl>("1.5").unwrap_err().to_string();
        assert!(err.starts_with("invalid TTL \"1.5\""), "{err}");
        let err = serde_json::from_str::<Ttl>("-3").unwrap_err().to_string();
        assert!(err.starts_with("invalid TTL \"-3\""), "{err}");
        for json in ["true", "[1]", "{\"a\":1}", "null"] {
            let err = serde_json::from_str::<Ttl>(json).unwrap_err().to_string();
            assert!(
                err.starts_with(
                    "expected a number of seconds or a duration such as \"90s\", \"15m\" or \"1h\""
                ),
                "{json}: {err}"
            );
        }
        let cut = serde_json::from_str::<Ttl>("\"1h").unwrap_err().to_string();
        assert!(cut.starts_with("EOF while parsing a string"), "{cut}");
    }

    #[test]
    fn after_saturates_instead_of_overflowing() {
        let start = OffsetDateTime::now_utc();
        assert_eq!(Ttl(60).after(start), start + Duration::from_secs(60));
        let latest = PrimitiveDateTime::MAX.assume_utc();
        assert_eq!(Ttl(u64::MAX).after(start), latest);
        assert_eq!(Ttl::MAX.after(latest), latest);
    }

    proptest::proptest! {
        /// Any text parses to a TTL within the maximum or to an error; it never panics.
        #[test]
        fn any_text_parses_within_bounds_or_fails(text in "\\PC{0,24}") {
            if let Ok(ttl) = text.parse::<Ttl>() {
                proptest::prop_assert!(ttl <= Ttl::MAX);
            }
        }

        /// Numbers and duration strings of any size stay within the maximum or are refused.
        #[test]
        fn any_number_is_bounded(n in proptest::num::u64::ANY, unit in "(|s|m|h|d)") {
            match format!("{n}{unit}").parse::<Ttl>() {
                Ok(ttl) => proptest::prop_assert!(ttl <= Ttl::MAX),
                Err(e) => proptest::prop_assert!(e.to_string().contains("too long"), "{}", e),
            }
        }

        /// Adding any TTL to any instant gives an instant no earlier than the start.
        #[test]
        fn after_never_goes_backwards(secs in proptest::num::u64::ANY, start in 0i64..253_402_300_799) {
            let start = OffsetDateTime::from_unix_timestamp(start).unwrap();
            proptest::prop_assert!(Ttl(secs).after(start) >= start);
        }

        #[test]
        fn go_durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60) {
            let text = format!("{h}h{m}m{s}s");
            proptest::prop_assert_eq!(secs(&text), h * 3600 + m * 60 + s);
        }
    }
}
