//! The client's startup parameters (`application_name`, `client_encoding`, `options=-c …`):
//! applied on its server connection in session pooling; in transaction pooling, where a
//! setting could not follow the client from one server connection to the next, only those
//! the server already has (and application names) are accepted.

use crate::reply::PgError;
use postgres_protocol::escape::escape_literal;
use std::collections::BTreeMap;

/// Startup parameters that only label the session.
const LABELS: [&str; 2] = ["application_name", "fallback_application_name"];

/// Settings a client asked for at startup, as (name, value).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    /// The settings in a startup packet's parameters (all but `user` and `database`).
    pub fn from_startup(parameters: &BTreeMap<String, String>) -> Result<Settings, PgError> {
        let mut settings = Vec::new();
        for (name, value) in parameters {
            match name.as_str() {
                "user" | "database" => {}
                "replication" => {
                    return Err(PgError::new(
                        "08P01",
                        "replication connections are not served by the proxy",
                    ));
                }
                "options" => settings.extend(parse_options(value)?),
                _ => settings.push((name.clone(), value.clone())),
            }
        }
        Ok(Settings(settings))
    }

    /// One statement applying every setting for the session, if there are any: `set_config`
    /// takes any parameter name (custom ones too) as a literal.
    pub fn sql(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let calls: Vec<String> = self
            .0
            .iter()
            .map(|(name, value)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    escape_literal(name),
                    escape_literal(value)
                )
            })
            .collect();
        Some(format!("SELECT {}", calls.join(", ")))
    }

    /// In transaction pooling: refuses the settings the server's `reported` parameters do not
    /// already have (see [`holds`]), other than application names and an
    /// `extra_float_digits` of 1 to 3.
    pub fn check_unchanged(&self, reported: &[(String, String)]) -> Result<(), PgError> {
        let unmet: Vec<String> = self
            .0
            .iter()
            .filter(|(name, value)| {
                !LABELS.contains(&name.as_str())
                    && !same_output(name, value)
                    && !holds(reported, name, value)
            })
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if unmet.is_empty() {
            return Ok(());
        }
        Err(PgError::new(
            "08P01",
            format!(
                "startup parameter(s) {} cannot follow a client from one server connection to \
                 the next with pool_mode transaction: set them inside each transaction (SET \
                 LOCAL), or use pool_mode session",
                unmet.join(", ")
            ),
        ))
    }
}

/// Whether a server's `reported` parameters have `name` at `value`, in any spelling
/// PostgreSQL takes as the same (`utf-8` for `UTF8`, say; see [`equivalent`]).
pub(crate) fn holds(reported: &[(String, String)], name: &str, value: &str) -> bool {
    reported
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case(name) && equivalent(name, value, v))
}

/// Whether the client's `wanted` value of parameter `name` is the server's `reported` one as
/// PostgreSQL reads both: an encoding's aliases (`utf-8`, `unicode` for `UTF8`), a `DateStyle`
/// naming part of the server's (`ISO` of `ISO, MDY`), the names of UTC (`UTC`, `Etc/UTC`).
fn equivalent(name: &str, wanted: &str, reported: &str) -> bool {
    if wanted.eq_ignore_ascii_case(reported) {
        return true;
    }
    match name.to_ascii_lowercase().as_str() {
        "client_encoding" => encoding(wanted) == encoding(reported),
        "datestyle" => {
            let server = date_style(reported);
            let mut client = date_style(wanted);
            // German alone also sets the field order to day first.
            if client.iter().any(|p| p == "german")
                && !client
                    .iter()
                    .any(|p| ["dmy", "mdy", "ymd"].contains(&p.as_str()))
            {
                client.push("dmy".into());
            }
            !client.is_empty() && client.iter().all(|part| server.contains(part))
        }
        "timezone" => is_utc(wanted) && is_utc(reported),
        _ => false,
    }
}

/// Settings whose value the client asks for gives the output the server's default gives:
/// from PostgreSQL 12 on, an `extra_float_digits` of 1 to 3 prints floats exactly (the
/// default, 1, included).
fn same_output(name: &str, value: &str) -> bool {
    name.eq_ignore_ascii_case("extra_float_digits")
        && value
            .trim()
            .parse::<i32>()
            .is_ok_and(|d| (1..=3).contains(&d))
}

/// An encoding's name as PostgreSQL compares them: without case and punctuation, `unicode`
/// being `utf8`.
fn encoding(name: &str) -> String {
    let bare: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if bare == "unicode" {
        "utf8".into()
    } else {
        bare
    }
}

/// A `DateStyle`'s parts (output format, field order), lower case, aliases resolved.
fn date_style(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|part| !part.is_empty())
        .map(|part| match part.to_ascii_lowercase().as_str() {
            "euro" | "european" => "dmy".to_string(),
            "us" | "noneuro" | "noneuropean" => "mdy".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// Whether `zone` names UTC itself (not merely a zone at offset 0 today).
fn is_utc(zone: &str) -> bool {
    let zone = zone.to_ascii_lowercase();
    let zone = zone.strip_prefix("etc/").unwrap_or(&zone);
    matches!(zone, "utc" | "uct" | "universal" | "zulu")
}

/// The settings in a startup `options` value: `-c name=value`, `-cname=value` and
/// `--name=value`, separated by spaces (a backslash keeps the next character, as PostgreSQL
/// reads it).
fn parse_options(text: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(rest) = word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
            rest.to_string()
        } else {
            return Err(unsupported_option(&word));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(unsupported_option(&setting));
        };
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

fn unsupported_option(word: &str) -> PgError {
    PgError::new(
        "08P01",
        format!("startup option {word:?} is not supported: use -c name=value"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_become_settings() {
        let settings = Settings::from_startup(&startup(&[
            ("user", "r"),
            ("database", "d"),
            ("application_name", "it's"),
            (
                "options",
                r"-c search_path=a,b -cstatement_timeout=5s --work-mem=8MB -c x.y=one\ two",
            ),
        ]))
        .unwrap();
        assert_eq!(
            settings.sql().unwrap(),
            "SELECT pg_catalog.set_config('application_name', 'it''s', false), \
             pg_catalog.set_config('search_path', 'a,b', false), \
             pg_catalog.set_config('statement_timeout', '5s', false), \
             pg_catalog.set_config('work_mem', '8MB', false), \
             pg_catalog.set_config('x.y', 'one two', false)"
        );
        assert_eq!(
            Settings::from_startup(&startup(&[("user", "r")]))
                .unwrap()
                .sql(),
            None
        );
        assert_eq!(
            Settings::from_startup(&startup(&[("options", "-X")]))
                .unwrap_err()
                .message,
            "startup option \"-X\" is not supported: use -c name=value"
        );
        assert_eq!(
            Settings::from_startup(&startup(&[("replication", "database")]))
                .unwrap_err()
                .code,
            "08P01"
        );
    }

    #[test]
    fn transaction_pooling_takes_only_what_the_server_has() {
        let reported = vec![("client_encoding".to_string(), "UTF8".to_string())];
        let fine = Settings::from_startup(&startup(&[
            ("client_encoding", "utf8"),
            ("application_name", "psql"),
        ]))
        .unwrap();
        assert_eq!(fine.check_unchanged(&reported), Ok(()));
        // What pgJDBC and asyncpg send, against what PostgreSQL reports.
        let reported: Vec<(String, String)> = [
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "Etc/UTC"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        for pairs in [
            &[
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO"),
                ("TimeZone", "UTC"),
                ("extra_float_digits", "2"),
            ][..],
            &[("client_encoding", "utf-8")][..],
            &[("client_encoding", "unicode"), ("DateStyle", "mdy, iso")][..],
        ] {
            let drivers = Settings::from_startup(&startup(pairs)).unwrap();
            assert_eq!(drivers.check_unchanged(&reported), Ok(()), "{pairs:?}");
        }
        for (name, value) in [
            ("client_encoding", "LATIN1"),
            ("DateStyle", "German"),
            ("DateStyle", "ISO, DMY"),
            ("TimeZone", "Europe/Berlin"),
            ("TimeZone", "GMT"),
            ("extra_float_digits", "0"),
            ("extra_float_digits", "4"),
        ] {
            let other = Settings::from_startup(&startup(&[(name, value)])).unwrap();
            assert!(
                other.check_unchanged(&reported).is_err(),
                "{name}={value} is not the server's"
            );
        }
        // German alone means German, DMY.
        let german = vec![("DateStyle".to_string(), "German, MDY".to_string())];
        let asking = |value: &str| {
            Settings::from_startup(&startup(&[("DateStyle", value)]))
                .unwrap()
                .check_unchanged(&german)
        };
        assert!(asking("German").is_err());
        assert_eq!(asking("german, us"), Ok(()));
        let changed = Settings::from_startup(&startup(&[("options", "-c search_path=x")])).unwrap();
        assert_eq!(
            changed.check_unchanged(&reported).unwrap_err().message,
            "startup parameter(s) search_path=x cannot follow a client from one server connection \
             to the next with pool_mode transaction: set them inside each transaction (SET LOCAL), \
             or use pool_mode session"
        );
    }
}
