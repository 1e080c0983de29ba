//! SCRAM-SHA-256 password verifiers in PostgreSQL's `rolpassword` format
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, RFC 5802 and 7677), so only a
//! verifier of a new user's password ever reaches the server.
//!
//! `postgres_protocol` makes the same verifier, but keys a fresh HMAC for each of the 4096
//! PBKDF2 rounds; the `pbkdf2` crate keys it once, which halves the work. Here each round is
//! just SHA-256's two compressions of blocks padded once, without the hashing API's buffering
//! around them: a quarter less CPU again (0.52 ms against the `pbkdf2` crate's 0.71 ms on
//! the benchmark machine), which counts where pgwarden shares the database's CPUs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretString};
use sha2_11::block_api::compress256;
use sha2_11::{Digest, Sha256};
use zeroize::Zeroizing;

/// PostgreSQL's default iteration count (`scram_iterations`).
const ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length.
const SALT_LEN: usize = 16;
// PBKDF2's first round hashes the salt and a 4-byte block number in one block.
const _: () = assert!(SALT_LEN + 4 <= SHORT_MESSAGE);

/// A new user's random password, and the SCRAM verifier PostgreSQL stores for it.
pub struct NewPassword {
    password: SecretString,
    verifier: SecretString,
}

impl NewPassword {
    /// A fresh random password and its verifier. Costs about half a millisecond of CPU (4096
    /// PBKDF2 rounds): call it off the async runtime's workers (`spawn_blocking`).
    pub fn generate() -> NewPassword {
        let password = pgwarden_core::names::generate_password();
        let verifier = SecretString::from(verifier(password.expose_secret()));
        NewPassword { password, verifier }
    }

    /// `password` (one pgwarden made and kept, e.g. a static role's pending one) and a fresh
    /// verifier of it. Costs like [`NewPassword::generate`].
    pub fn from_password(password: SecretString) -> NewPassword {
        let verifier = SecretString::from(verifier(password.expose_secret()));
        NewPassword { password, verifier }
    }

    /// The password, for the one response that returns it.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// The verifier, for the statement that creates the user.
    pub(crate) fn verifier(&self) -> &str {
        self.verifier.expose_secret()
    }
}

/// Passwords made ahead of need by a background thread, so an issuance does not wait for
/// PBKDF2 while the CPU has time to spare. When issuances outrun the thread, each makes its
/// own on the blocking pool. Ready passwords live only in memory and are wiped when dropped.
pub struct PasswordPool {
    ready: parking_lot::Mutex<tokio::sync::mpsc::Receiver<NewPassword>>,
}

impl PasswordPool {
    /// Starts the thread that keeps up to `ahead` passwords ready; it stops with the pool.
    /// (Should the thread fail to start, every password is made on demand.)
    pub fn start(ahead: usize) -> PasswordPool {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let started = std::thread::Builder::new()
            .name("pgwarden-passwords".into())
            .spawn(move || while tx.blocking_send(NewPassword::generate()).is_ok() {});
        if let Err(error) = started {
            tracing::warn!(%error, "cannot start the password thread; making passwords on demand");
        }
        PasswordPool {
            ready: parking_lot::Mutex::new(rx),
        }
    }

    /// A new password: a ready one, or else one made now off the async workers.
    pub async fn take(&self) -> NewPassword {
        let ready = self.ready.lock().try_recv();
        match ready {
            Ok(password) => password,
            Err(_) => tokio::task::spawn_blocking(NewPassword::generate)
                .await
                .unwrap_or_else(|_| NewPassword::generate()),
        }
    }
}

/// The verifier of `password`, with a random salt.
fn verifier(password: &str) -> String {
    if !password.is_ascii() {
        // SASLprep may change non-ASCII passwords; the driver's version applies it. (For
        // ASCII, SASLprep is the identity, or PostgreSQL uses the raw bytes anyway.)
        return postgres_protocol::password::scram_sha_256(password.as_bytes());
    }
    verifier_with_salt(password.as_bytes(), &rand::random::<[u8; SALT_LEN]>())
}

/// The verifier of an ASCII `password` with `salt` (at most [`SHORT_MESSAGE`] bytes less
/// four: PBKDF2's first round hashes the salt and a block number).
fn verifier_with_salt(password: &[u8], salt: &[u8]) -> String {
    let salted = salted_password(password, salt);
    let (inner, outer) = keyed_states(&*salted);
    let client_key = hmac(&inner, &outer, b"Client Key");
    let stored_key = hash_short(&SHA256_INITIAL_STATE, 0, &*client_key);
    let server_key = hmac(&inner, &outer, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(*stored_key),
        BASE64.encode(*server_key)
    )
}

/// SCRAM's `SaltedPassword`: PBKDF2-HMAC-SHA256 of `password` and `salt`, [`ITERATIONS`]
/// rounds, one 32-byte block. Every round after the first hashes a 32-byte message, so both of
/// its HMAC's hashes are one compression of a block padded once, from states keyed once.
/// Everything derived from the password (keyed states, rounds, blocks) is wiped after use.
fn salted_password(password: &[u8], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let (inner, outer) = keyed_states(password);
    let mut first = Zeroizing::new(Vec::new());
    first.extend_from_slice(salt);
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut round = hmac(&inner, &outer, &first);
    let mut salted = round.clone();
    // One block: 32 bytes of message after a 64-byte key block, then SHA-256's padding.
    let mut block = Zeroizing::new([0u8; 64]);
    block
        .iter_mut()
        .skip(32)
        .zip(PADDING)
        .for_each(|(b, p)| *b = p);
    for _ in 1..ITERATIONS {
        block
            .iter_mut()
            .zip(round.iter())
            .for_each(|(b, r)| *b = *r);
        hash_into(&inner, &mut block);
        hash_into(&outer, &mut block);
        round
            .iter_mut()
            .zip(block.iter())
            .for_each(|(r, b)| *r = *b);
        salted
            .iter_mut()
            .zip(round.iter())
            .for_each(|(s, r)| *s ^= r);
    }
    salted
}

/// SHA-256's state after the HMAC key block of `key` XORed with its inner pad (0x36), and
/// with its outer pad (0x5c).
fn keyed_states(key: &[u8]) -> (Zeroizing<[u32; 8]>, Zeroizing<[u32; 8]>) {
    let mut key_block = Zeroizing::new([0u8; 64]);
    let long_key_hash: Zeroizing<[u8; 32]>;
    let key = if key.len() > 64 {
        // Only longer passwords than pgwarden makes; the hasher's buffer is not wiped.
        long_key_hash = Zeroizing::new(Sha256::digest(key).into());
        long_key_hash.as_slice()
    } else {
        key
    };
    key_block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
    let keyed = |pad: u8| {
        let mut padded = Zeroizing::new([0u8; 64]);
        padded
            .iter_mut()
            .zip(key_block.iter())
            .for_each(|(p, k)| *p = k ^ pad);
        let mut state = Zeroizing::new(SHA256_INITIAL_STATE);
        compress256(&mut state, std::slice::from_ref(&*padded));
        state
    };
    (keyed(0x36), keyed(0x5c))
}

/// HMAC-SHA256 of a `message` of at most [`SHORT_MESSAGE`] bytes, from the key's
/// [`keyed_states`]; wiped when dropped (a client key is enough to log in).
fn hmac(inner: &[u32; 8], outer: &[u32; 8], message: &[u8]) -> Zeroizing<[u8; 32]> {
    let inner_hash = hash_short(inner, 64, message);
    hash_short(outer, 64, &*inner_hash)
}

/// Longest message [`hash_short`] takes: what fits in one block with SHA-256's padding.
const SHORT_MESSAGE: usize = 55;

/// SHA-256 of `hashed` bytes already compressed into `state` (0, or a 64-byte key block)
/// followed by `message` (at most [`SHORT_MESSAGE`] bytes): one compression of the message
/// padded into a block. The block and the state are wiped after use.
fn hash_short(state: &[u32; 8], hashed: u64, message: &[u8]) -> Zeroizing<[u8; 32]> {
    assert!(
        message.len() <= SHORT_MESSAGE,
        "a message of {} bytes does not fit one block",
        message.len()
    );
    let mut block = Zeroizing::new([0u8; 64]);
    let (body, length) = block.split_at_mut(64 - 8);
    body.iter_mut()
        .zip(message.iter().chain(std::iter::once(&0x80)))
        .for_each(|(b, m)| *b = *m);
    let bits = hashed
        .saturating_add(message.len() as u64)
        .saturating_mul(8);
    length.copy_from_slice(&bits.to_be_bytes());
    hash_into(state, &mut block);
    let mut digest = Zeroizing::new([0u8; 32]);
    digest
        .iter_mut()
        .zip(block.iter())
        .for_each(|(d, b)| *d = *b);
    digest
}

/// SHA-256's padding after a 32-byte message that follows one 64-byte block: a 1 bit, zeros,
/// and the length in bits (768) as a big-endian 64-bit number.
const PADDING: [u8; 32] = {
    let mut padding = [0u8; 32];
    padding[0] = 0x80;
    padding[30] = 0x03;
    padding
};

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Replaces the first 32 bytes of `block` (padded, with the message's length) with the hash
/// of the message it ends, continuing from `state`.
fn hash_into(state: &[u32; 8], block: &mut [u8; 64]) {
    let mut next = Zeroizing::new(*state);
    compress256(&mut next, std::slice::from_ref(&*block));
    for (bytes, word) in block.chunks_exact_mut(4).zip(next.iter()) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_computation() {
        // Python's hashlib.pbkdf2_hmac and hmac, salt bytes 0..16.
        let salt: Vec<u8> = (0..16).collect();
        assert_eq!(
            verifier_with_salt(b"Wq3o9Zk1Xb7Lr2Tt5Yv8Nm4Pc6Jd0Hs", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$\
             a0RJuqlmQyBTBX8q4f65wag7t03hjQDvQ5ovHSLdq6U=:\
             rw7JFhS+ytUNSKAbUrLHjTBK3EEHlqAA3j34vYGBiD8="
        );
    }

    #[test]
    fn matches_the_drivers_verifier_for_its_salt() {
        let password = "pR8sQ2vX7mK4nB1cZ9";
        let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let salt_b64 = theirs.split(['$', ':']).nth(2).expect("a salt field");
        let salt = BASE64.decode(salt_b64).unwrap();
        assert_eq!(verifier_with_salt(password.as_bytes(), &salt), theirs);
    }

    #[test]
    fn long_and_empty_passwords_match_the_driver() {
        for password in [
            String::new(),
            "k".repeat(63),
            "k".repeat(64),
            "k".repeat(65),
            "long".repeat(40),
        ] {
            let theirs = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let salt = BASE64
                .decode(theirs.split(['$', ':']).nth(2).unwrap())
                .unwrap();
            assert_eq!(verifier_with_salt(password.as_bytes(), &salt), theirs);
        }
    }

    #[tokio::test]
    async fn the_pool_hands_out_distinct_ready_passwords_and_makes_more_when_empty() {
        let pool = PasswordPool::start(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let new = pool.take().await;
            let (password, verifier) = (new.password().expose_secret(), new.verifier());
            let salt = BASE64
                .decode(verifier.split(['$', ':']).nth(2).unwrap())
                .unwrap();
            assert_eq!(verifier_with_salt(password.as_bytes(), &salt), verifier);
            assert!(
                seen.insert(password.to_string()),
                "a password was handed out twice"
            );
        }
    }

    #[test]
    fn one_block_hashes_match_sha256_up_to_the_longest_message() {
        let message: Vec<u8> = (0..=SHORT_MESSAGE as u8).collect();
        for len in 0..=SHORT_MESSAGE {
            let ours = hash_short(&SHA256_INITIAL_STATE, 0, &message[..len]);
            let theirs: [u8; 32] = Sha256::digest(&message[..len]).into();
            assert_eq!(*ours, theirs, "length {len}");
        }
    }

    #[test]
    #[should_panic(expected = "a message of 56 bytes does not fit one block")]
    fn a_message_longer_than_one_block_is_refused() {
        hash_short(&SHA256_INITIAL_STATE, 0, &[0; 56]);
    }

    #[test]
    fn salts_differ_between_calls() {
        assert_ne!(verifier("same"), verifier("same"));
        assert!(verifier("same").starts_with("SCRAM-SHA-256$4096:"));
    }

    #[test]
    fn non_ascii_passwords_take_the_saslprep_path() {
        assert!(verifier("pässwörd").starts_with("SCRAM-SHA-256$4096:"));
    }
}
