//! TTLs in Vault's accepted forms: integer seconds (`3600`, `"3600"`) or Go-style durations
//! (`90s`, `15m`, `1h30m`, `1.5h`, `24h`, and Vault's extra `d` for days).

use crate::CoreError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr, time::Duration};

/// A whole number of seconds; zero means "not set" wherever Vault treats it that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Ttl(u64);

impl Ttl {
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
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Ttl(secs));
        }
        let mut total_nanos = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            let unit_len = rest[number_len..]
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len() - number_len);
            let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
            let unit = unit_nanos(&rest[number_len..number_len + unit_len]).ok_or_else(invalid)?;
            total_nanos += number * unit;
            rest = &rest[number_len + unit_len..];
        }
        let secs = (total_nanos / 1e9).ceil();
        if !secs.is_finite() || secs > u32::MAX as f64 {
            return Err(invalid());
        }
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
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(secs) => Ok(Ttl(secs)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
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

    proptest::proptest! {
        #[test]
        fn go_durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60) {
            let text = format!("{h}h{m}m{s}s");
            proptest::prop_assert_eq!(secs(&text), h * 3600 + m * 60 + s);
        }
    }
}
