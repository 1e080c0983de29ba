//! Generated user names, passwords and lease ids, all drawn from an alphabet that needs no
//! escaping inside SQL quotes, and the check that keeps substituted values inside it.

use rand::RngExt;
use rand::distr::Alphanumeric;
use secrecy::SecretString;

/// PostgreSQL silently truncates identifiers past this many bytes, so pgwarden never makes longer ones.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Length of a generated password: 32 alphanumerics, about 190 bits.
const PASSWORD_LEN: usize = 32;

/// True when every character of `value` is one that cannot end a quoted SQL identifier or
/// literal: ASCII letters, digits, `-`, `_`, `.`, `:`, `+`, `/`, `=`, `$` and space.
pub fn is_safe_value(value: &str) -> bool {
    value.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '-' | '_' | '.' | ':' | '+' | '/' | '=' | '$' | ' ')
    })
}

/// `count` random ASCII letters and digits.
pub fn random_alphanumeric(count: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(count)
        .map(char::from)
        .collect()
}

/// Whether `role` is one of PostgreSQL's predefined roles (`pg_read_server_files`,
/// `pg_execute_server_program`, …): PostgreSQL reserves every name starting with `pg_`.
pub fn is_predefined_role(role: &str) -> bool {
    role.starts_with("pg_")
}

/// Why a predefined role is refused as the group role of dynamic users.
pub const PREDEFINED_ROLE_REFUSED: &str = "is a name PostgreSQL reserves for its predefined \
     roles (pg_*), whose powers (such as reading server files or running programs) every \
     dynamic user would get; use a NOLOGIN role of your own and grant it what the users need";

/// A fresh random password.
pub fn generate_password() -> SecretString {
    SecretString::from(random_alphanumeric(PASSWORD_LEN))
}

/// The first `max` characters of `text` that are letters, digits, `-` or `_` (others dropped).
fn safe_prefix(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(max)
        .collect()
}

/// Vault's username shape `v-<display 8>-<role 8>-<random 20>-<unix time>`, cut to 63 bytes.
/// Only letters, digits, `-` and `_` of the display and role names are kept.
pub fn generate_username(display_name: &str, role_name: &str, unix_time: i64) -> String {
    let mut name = format!(
        "v-{}-{}-{}-{}",
        safe_prefix(display_name, 8),
        safe_prefix(role_name, 8),
        random_alphanumeric(20),
        unix_time
    );
    name.truncate(MAX_IDENTIFIER_BYTES);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn username_has_vaults_shape() {
        let name = generate_username("kubernetes-team-a", "appdb-readonly", 1_795_000_000);
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts[0], "v");
        assert_eq!(parts[1], "kubernet");
        assert_eq!(parts[2], "appdb");
        assert_eq!(parts[3], "re");
        assert_eq!(parts[4].len(), 20);
        assert_eq!(parts[5], "1795000000");
        assert!(is_safe_value(&name));
    }

    #[test]
    fn hostile_role_names_leave_no_trace_in_usernames() {
        let name = generate_username("root", "a\"; DROP TABLE t; --", 1);
        assert!(name.starts_with("v-root-aDROPTAB-"), "{name}");
        assert!(is_safe_value(&name));
        assert!(name.len() <= MAX_IDENTIFIER_BYTES);
    }

    #[test]
    fn passwords_are_long_random_and_safe() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.expose_secret().len(), 32);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(is_safe_value(a.expose_secret()));
    }

    #[test]
    fn quotes_and_backslashes_are_unsafe() {
        for bad in ["'", "\"", "\\", ";", "\n", "é"] {
            assert!(!is_safe_value(bad), "{bad:?}");
        }
        assert!(is_safe_value("SCRAM-SHA-256$4096:c2FsdA==$a+b/c=:d+e/f="));
    }
}
