//! Output for people (aligned columns) and scripts (JSON), and the small formatting helpers
//! the commands share.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How a command prints its answer.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// The answer's data as JSON (one record per line where records stream).
    Json,
}

/// `text` safe for a terminal: control characters (escape sequences that could redraw what
/// an approver sees, newlines that could fake rows) are written as `\u{…}`.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rows as aligned columns, two spaces apart; the last column is not padded. With
/// `headers`, they come first. Cells are made [`printable`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len().saturating_add(1));
    if !headers.is_empty() {
        all.push(headers.iter().map(|h| h.to_string()).collect());
    }
    all.extend(
        rows.iter()
            .map(|row| row.iter().map(|cell| printable(cell)).collect()),
    );
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c.saturating_add(1) == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Key–value pairs as two aligned columns.
pub fn pairs(rows: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.clone()])
        .collect();
    table(&[], &rows)
}

/// `value` as one line of JSON.
pub fn json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("cannot write JSON: {e}"))
}

/// Seconds as a Go-style duration: `1h30m`, `15m`, `90s` → `1m30s`, `0s`.
pub fn duration(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (hours, rest) = (rest / 3600, rest % 3600);
    let (minutes, secs) = (rest / 60, rest % 60);
    let mut out = String::new();
    let hours = days.saturating_mul(24).saturating_add(hours);
    for (n, unit) in [(hours, "h"), (minutes, "m"), (secs, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// An instant as RFC 3339 in UTC, to the second.
pub fn instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `text` quoted for a POSIX shell: as is when it holds only safe characters, else in single
/// quotes (a single quote written as `'\''`).
pub fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let rows = vec![
            vec!["req-1".to_string(), "pending".into(), "why".into()],
            vec!["req-22".to_string(), "ok".into(), "".into()],
        ];
        assert_eq!(
            table(&["ID", "STATE", "REASON"], &rows),
            "ID      STATE    REASON\nreq-1   pending  why\nreq-22  ok\n"
        );
        assert_eq!(
            pairs(&[("a", "1".into()), ("bbb", "2".into())]),
            "a    1\nbbb  2\n"
        );
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(90), "1m30s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(5400), "1h30m");
        assert_eq!(duration(86_400 + 1), "24h1s");
    }

    #[test]
    fn shell_quoting_survives_any_password() {
        assert_eq!(shell_quote("v-root-appdb-1"), "v-root-appdb-1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b'c$"), r"'a b'\''c$'");
    }
}
