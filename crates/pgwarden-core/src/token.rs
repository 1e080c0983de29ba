//! pgwarden tokens: what a login returns. Only a SHA-256 hash of the token is ever stored.

use crate::names::random_alphanumeric;
use crate::{Identity, Ttl};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Prefix of every pgwarden token, so leaked ones are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "pgw_";
/// Random characters after the prefix: 40 alphanumerics, about 238 bits.
const TOKEN_RANDOM_LEN: usize = 40;

/// A token as stored: its hash, who it stands for and how long it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public handle for the token (safe to log, used to revoke it).
    pub accessor: String,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// Who logged in.
    pub identity: Identity,
    /// The auth mount used.
    pub mount: String,
    /// The login role used.
    pub role: String,
    /// When it was issued.
    pub issued_at: OffsetDateTime,
    /// When it stops working unless renewed.
    pub expires_at: OffsetDateTime,
    /// Hard end of its life.
    pub max_expires_at: OffsetDateTime,
    /// TTL a renewal without increment grants.
    pub ttl: Ttl,
}

/// Hex SHA-256 of `token`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token and its hash.
pub fn generate_token() -> (SecretString, String) {
    let token = format!("{TOKEN_PREFIX}{}", random_alphanumeric(TOKEN_RANDOM_LEN));
    let hash = hash_token(&token);
    (SecretString::from(token), hash)
}

/// A fresh accessor.
pub fn generate_accessor() -> String {
    random_alphanumeric(24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, hash_a) = generate_token();
        let (b, _) = generate_token();
        assert!(a.expose_secret().starts_with("pgw_"));
        assert_eq!(a.expose_secret().len(), 44);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(hash_a, hash_token(a.expose_secret()));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
