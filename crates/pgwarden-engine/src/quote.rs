//! The one quoting function for identifiers and the one for literals that every piece of SQL
//! pgwarden writes goes through.

/// `name` as a double-quoted SQL identifier, inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `value` as a SQL string literal (`'…'`, or `E'…'` when it holds backslashes).
pub fn quote_literal(value: &str) -> String {
    // escape_literal prefixes a space before E'…' so it can follow an identifier; we never need that.
    postgres_protocol::escape::escape_literal(value)
        .trim_start()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_keep_hostile_text_inside_quotes() {
        assert_eq!(
            quote_ident("a\"; DROP TABLE t; --"),
            "\"a\"\"; DROP TABLE t; --\""
        );
        assert_eq!(quote_ident("plain"), "\"plain\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
