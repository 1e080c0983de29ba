//! Encryption of secrets at rest (connection passwords written through the API) with
//! ChaCha20-Poly1305 under a 256-bit key given as 64 hex digits.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// Seals and opens secrets; the key never leaves it.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The configured key is not 64 hex digits.
    #[error("the seal key must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`")]
    BadKey,
    /// Decryption failed: wrong key or tampered data.
    #[error(
        "a stored secret cannot be decrypted: the seal key differs from the one it was written with, or the data was altered"
    )]
    Open,
    /// Encryption failed (not expected for secrets of any realistic size).
    #[error("a secret could not be encrypted")]
    Seal,
}

/// The 32 bytes of the hex seal key `key`.
fn key_bytes(key: &SecretString) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let bytes =
        Zeroizing::new(hex::decode(key.expose_secret().trim()).map_err(|_| SealError::BadKey)?);
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| SealError::BadKey)?;
    Ok(Zeroizing::new(bytes))
}

/// The key the audit chain is keyed with, derived from the hex seal key `key`.
pub fn chain_key(key: &SecretString) -> Result<pgwarden_core::ChainKey, SealError> {
    Ok(pgwarden_core::ChainKey::derive(&*key_bytes(key)?))
}

impl Sealer {
    /// A sealer for the hex `key`.
    pub fn new(key: &SecretString) -> Result<Sealer, SealError> {
        let bytes = key_bytes(key)?;
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&*bytes)),
        })
    }

    /// Encrypts `secret`, bound to `context` (e.g. the row's mount and name).
    pub fn seal(&self, secret: &SecretString, context: &str) -> Result<Vec<u8>, SealError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from_slice(&nonce_bytes);
        let mut out = nonce_bytes.to_vec();
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: context.as_bytes(),
        };
        out.extend(
            self.cipher
                .encrypt(nonce, payload)
                .map_err(|_| SealError::Seal)?,
        );
        Ok(out)
    }

    /// Decrypts what [`Sealer::seal`] produced for the same `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<SecretString, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: context.as_bytes(),
                    },
                )
                .map_err(|_| SealError::Open)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| SealError::Open)?;
        Ok(SecretString::from(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex: &str) -> SecretString {
        SecretString::from(hex.to_string())
    }

    #[test]
    fn round_trips_and_binds_context() {
        let sealer = Sealer::new(&key(&"ab".repeat(32))).unwrap();
        let sealed = sealer
            .seal(&SecretString::from("hunter2"), "database/appdb")
            .unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer
                .open(&sealed, "database/appdb")
                .unwrap()
                .expose_secret(),
            "hunter2"
        );
        assert_eq!(
            sealer.open(&sealed, "database/other").unwrap_err(),
            SealError::Open
        );
        let other = Sealer::new(&key(&"cd".repeat(32))).unwrap();
        assert_eq!(
            other.open(&sealed, "database/appdb").unwrap_err(),
            SealError::Open
        );
    }

    #[test]
    fn rejects_short_or_non_hex_keys() {
        assert_eq!(Sealer::new(&key("abcd")).err(), Some(SealError::BadKey));
        assert_eq!(
            Sealer::new(&key(&"zz".repeat(32))).err(),
            Some(SealError::BadKey)
        );
    }
}
