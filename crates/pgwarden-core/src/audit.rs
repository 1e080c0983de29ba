//! The audit log's records and their hash chain: each record holds the hash of the one
//! before, so altering or removing any record breaks the chain at a place that can be named.
//! With a [`ChainKey`] (derived from the seal key) the hashes are HMAC-SHA256, which only a
//! holder of the key can make: someone who can write the state database but lacks the key
//! cannot re-hash the records they changed.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::RwLock;
use time::OffsetDateTime;

/// The previous-record hash of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What starts the hash of a record chained with a [`ChainKey`]; a record without it was
/// chained with plain SHA-256 (before a seal key was set, or without one).
pub const KEYED_PREFIX: &str = "hmac-sha256:";

/// The secret the audit chain is keyed with: HMAC-SHA256 of a fixed label under the seal key,
/// so it never equals the key that seals stored secrets.
#[derive(Clone)]
pub struct ChainKey(zeroize::Zeroizing<[u8; 32]>);

impl ChainKey {
    /// The chain key derived from the seal key `seal_key`.
    pub fn derive(seal_key: &[u8; 32]) -> ChainKey {
        let mut mac = hmac_sha256(seal_key);
        mac.update(b"pgwarden audit chain v1");
        ChainKey(zeroize::Zeroizing::new(mac.finalize().into_bytes().into()))
    }
}

/// HMAC-SHA256 under the 32-byte `key`: zero-padded to SHA-256's block, as HMAC pads a short
/// key (taking the padded block, unlike a key of any length, cannot fail).
fn hmac_sha256(key: &[u8; 32]) -> Hmac<Sha256> {
    let block = zeroize::Zeroizing::new(std::array::from_fn::<u8, 64, _>(|i| {
        key.get(i).copied().unwrap_or(0)
    }));
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was refused: bad credentials or no permission.
    Denied,
    /// It was allowed but failed.
    Failure,
    /// It was allowed and is under way: recorded before it takes effect, and followed by a
    /// record of how it ended (unless pgwarden stopped first).
    Started,
}

impl Outcome {
    /// The outcome's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
            Outcome::Started => "started",
        }
    }

    /// The outcome named `text`, if any.
    pub fn parse(text: &str) -> Option<Outcome> {
        Some(match text {
            "success" => Outcome::Success,
            "denied" => Outcome::Denied,
            "failure" => Outcome::Failure,
            "started" => Outcome::Started,
            _ => return None,
        })
    }
}

/// One audited event, before it is chained. Never holds a password or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, to the millisecond.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Who: a subject, `root`, `pgwarden` for the broker itself, or `anonymous`.
    pub actor: String,
    /// What, e.g. `creds.issue`, `lease.revoke`, `request.approve`, `auth.login`.
    pub action: String,
    /// On what: a lease id, request id, role path, auth mount or file.
    pub object: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP request's id (the `request_id` of its response), empty for the broker's own.
    pub request_id: String,
    /// Anything else worth knowing: why it was refused, why revoked.
    pub detail: String,
}

/// Longest text kept in one field of a record, in characters.
pub const MAX_FIELD_CHARS: usize = 1024;

/// `text` made safe to keep: what looks like a pgwarden token or a JWT is replaced, control
/// characters (a NUL, which PostgreSQL refuses, or terminal escapes) are written as `\u{…}`, and
/// the whole is cut to [`MAX_FIELD_CHARS`].
pub fn clean(text: &str) -> String {
    scrub(text, MAX_FIELD_CHARS)
}

/// Longest value kept in one field of a log line, in characters.
pub const MAX_LOG_FIELD_CHARS: usize = 4096;

/// `text` made safe to log, as [`clean`] makes it (cut to [`MAX_LOG_FIELD_CHARS`]): no token,
/// and no line break or terminal escape with which a caller's input could forge or hide log
/// lines.
pub fn clean_for_log(text: &str) -> String {
    scrub(text, MAX_LOG_FIELD_CHARS)
}

/// Secrets of this process whose shape tells nothing (the root token), redacted wherever
/// [`clean`] and [`clean_for_log`] see them.
static KNOWN_SECRETS: RwLock<Vec<SecretString>> = RwLock::new(Vec::new());

/// Shortest secret [`redact_everywhere`] takes, in bytes: a shorter one would redact ordinary
/// words.
pub const MIN_KNOWN_SECRET_BYTES: usize = 16;

/// From now on, [`clean`], [`clean_for_log`] and [`holds_secret`] treat `secret` as a token
/// wherever it appears, as it is and as Rust's `{:?}` escapes it (log fields are formatted
/// so): for a secret the process holds whose shape nothing else gives away, such as the root
/// token pasted where a lease id belongs. Ignored if shorter than [`MIN_KNOWN_SECRET_BYTES`].
pub fn redact_everywhere(secret: &SecretString) {
    let plain = secret.expose_secret();
    if plain.len() < MIN_KNOWN_SECRET_BYTES {
        return;
    }
    let debug = format!("{plain:?}");
    let escaped = debug
        .get(1..debug.len().saturating_sub(1))
        .unwrap_or_default();
    let mut known = KNOWN_SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for form in [plain, escaped] {
        if !known.iter().any(|k| k.expose_secret() == form) {
            known.push(SecretString::from(form.to_string()));
        }
    }
}

/// `text` with every known secret replaced by `[redacted]`.
fn without_known_secrets(text: &str) -> Cow<'_, str> {
    let known = KNOWN_SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = Cow::Borrowed(text);
    for secret in known.iter().map(ExposeSecret::expose_secret) {
        if text.contains(secret) {
            text = Cow::Owned(text.replace(secret, "[redacted]"));
        }
    }
    text
}

/// Whether `text` holds what looks like a pgwarden token or a JWT, or a known secret (what
/// [`clean`] redacts).
pub fn holds_secret(text: &str) -> bool {
    if matches!(without_known_secrets(text), Cow::Owned(_)) {
        return true;
    }
    let mut previous = None;
    for (at, c) in text.char_indices() {
        if secret_at(text.get(at..).unwrap_or_default(), previous).is_some() {
            return true;
        }
        previous = Some(c);
    }
    false
}

/// `text` with tokens redacted and control characters escaped, cut to `max_chars`.
fn scrub(text: &str, max_chars: usize) -> String {
    let text = without_known_secrets(text);
    let mut out = String::with_capacity(text.len().min(max_chars));
    let mut rest = text.as_ref();
    let mut previous = None;
    let mut kept = 0usize;
    while let Some(c) = rest.chars().next() {
        if kept >= max_chars {
            out.push('…');
            break;
        }
        kept = kept.saturating_add(1);
        if let Some(len) = secret_at(rest, previous) {
            out.push_str("[redacted]");
            let (secret, after) = rest.split_at(len);
            previous = secret.chars().next_back();
            rest = after;
            continue;
        }
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
        previous = Some(c);
    }
    out
}

/// The length of a pgwarden token (`pgw_` and 40 alphanumerics) or a JWT (three base64url
/// parts, the first starting `eyJ`, not within a word: `previous` is the character before
/// `text`, so `surveyJobs.v2.ro` is no JWT) at the start of `text`, if one is there. Each look
/// reads at most to the end of a run of characters that cannot hold the start of another
/// look, so a text is read in linear time however it is made.
fn secret_at(text: &str, previous: Option<char>) -> Option<usize> {
    let word =
        |s: &str, allowed: fn(char) -> bool| s.find(|c: char| !allowed(c)).unwrap_or(s.len());
    let starts_word = |allowed: fn(char) -> bool| previous.is_none_or(|c| !allowed(c));
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    let base64url = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if let Some(after) = text.strip_prefix(crate::token::TOKEN_PREFIX) {
        let len = word(after, alphanumeric);
        return (len >= 40).then(|| crate::token::TOKEN_PREFIX.len().saturating_add(len));
    }
    if text.starts_with("eyJ") && starts_word(base64url) {
        let len = word(text, base64url);
        let token = text.get(..len).unwrap_or_default();
        return (token.matches('.').count() >= 2).then_some(len);
    }
    None
}

impl AuditEvent {
    /// An event happening now, its time cut to the millisecond the store keeps; the texts
    /// are [`clean`]ed.
    pub fn now(actor: &str, action: &str, object: &str, outcome: Outcome) -> AuditEvent {
        let now = OffsetDateTime::now_utc();
        let time = now.replace_millisecond(now.millisecond()).unwrap_or(now);
        AuditEvent {
            time,
            actor: clean(actor),
            action: clean(action),
            object: clean(object),
            outcome,
            request_id: String::new(),
            detail: String::new(),
        }
    }

    /// The same event with `detail` ([`clean`]ed).
    pub fn with_detail(mut self, detail: impl AsRef<str>) -> AuditEvent {
        self.detail = clean(detail.as_ref());
        self
    }
}

/// A record of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The hash of the record before ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of this record's contents and `prev_hash`, or, chained with a
    /// [`ChainKey`], [`KEYED_PREFIX`] and their hex HMAC-SHA256.
    pub hash: String,
}

/// The hash of record `seq` holding `event` after the record hashed `prev_hash`, keyed with
/// `key` if given. Every field is length-prefixed, so no two different records hash the same
/// bytes.
pub fn record_hash(
    seq: u64,
    event: &AuditEvent,
    prev_hash: &str,
    key: Option<&ChainKey>,
) -> String {
    match key {
        None => {
            let mut hasher = Sha256::new();
            feed_fields(seq, event, prev_hash, |bytes| hasher.update(bytes));
            hex::encode(hasher.finalize())
        }
        Some(key) => {
            let mut mac = hmac_sha256(&key.0);
            feed_fields(seq, event, prev_hash, |bytes| mac.update(bytes));
            format!("{KEYED_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
        }
    }
}

/// Feeds a record's fields, each after its length, to `update`.
fn feed_fields(seq: u64, event: &AuditEvent, prev_hash: &str, mut update: impl FnMut(&[u8])) {
    let millis = event.time.unix_timestamp_nanos() / 1_000_000;
    for field in [
        seq.to_string().as_str(),
        millis.to_string().as_str(),
        &event.actor,
        &event.action,
        &event.object,
        event.outcome.as_str(),
        &event.request_id,
        &event.detail,
        prev_hash,
    ] {
        update(&(field.len() as u64).to_be_bytes());
        update(field.as_bytes());
    }
}

impl AuditRecord {
    /// Chains `event` as record `seq` after the record hashed `prev_hash`, keyed with `key`
    /// if given.
    pub fn chain(
        seq: u64,
        event: AuditEvent,
        prev_hash: &str,
        key: Option<&ChainKey>,
    ) -> AuditRecord {
        let hash = record_hash(seq, &event, prev_hash, key);
        AuditRecord {
            seq,
            event,
            prev_hash: prev_hash.into(),
            hash,
        }
    }
}

/// Where the chain breaks; the message names the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// A record's contents no longer match its hash.
    #[error("audit record {seq} was altered: its contents do not match its hash")]
    Altered {
        /// The record.
        seq: u64,
    },
    /// A keyed record's contents do not match its hash under the key given: it was altered,
    /// or keyed with another seal key.
    #[error(
        "audit record {seq} was altered, or keyed with another seal key than this configuration's: its contents do not match its hash"
    )]
    AlteredOrOtherKey {
        /// The record.
        seq: u64,
    },
    /// Records are missing between two that remain.
    #[error("audit record(s) {first} to {last} were removed: record {next} follows record {prev}", first = prev.saturating_add(1), last = next.saturating_sub(1))]
    Removed {
        /// The last record before the gap (0: the start of the chain).
        prev: u64,
        /// The first record after it.
        next: u64,
    },
    /// A record does not name the hash of the one before: that one was altered and re-hashed,
    /// or replaced.
    #[error("audit record {seq} does not follow record {prev}: record {prev} was altered or replaced", prev = seq.saturating_sub(1))]
    Unlinked {
        /// The record whose link is wrong.
        seq: u64,
    },
    /// A keyed record, and no key to check it with.
    #[error("audit record {seq} is keyed with the seal key: give the configuration that has it")]
    KeyNeeded {
        /// The record.
        seq: u64,
    },
    /// A record chained without the key after keyed ones: it was rewritten by someone
    /// without the key, or written by pgwarden without a seal key.
    #[error(
        "audit record {seq} is not keyed, though records before it are: it was rewritten without the seal key, or written by pgwarden without one"
    )]
    Unkeyed {
        /// The record.
        seq: u64,
    },
    /// The chain ends in records chained without the key, though the key is set.
    #[error(
        "the audit chain ends in records that are not keyed (from {seq} on, which may include records written before the seal key was set), though pgwarden keys every record once it has one: the records written since were rewritten without the key, or none was written since the key was set"
    )]
    EndsUnkeyed {
        /// The first of them.
        seq: u64,
    },
}

/// Checks records in order, one at a time, so a long chain can be read in pages.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    last_seq: u64,
    last_hash: String,
    key: Option<ChainKey>,
    /// The first record of the run of unkeyed records the chain ends with so far.
    unkeyed_since: Option<u64>,
    keyed_seen: bool,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new(None)
    }
}

impl ChainVerifier {
    /// A verifier of a chain whose records are keyed with `key` (from the first keyed one on);
    /// without one, a keyed record is a [`ChainBreak::KeyNeeded`].
    pub fn new(key: Option<ChainKey>) -> ChainVerifier {
        ChainVerifier {
            last_seq: 0,
            last_hash: GENESIS_HASH.into(),
            key,
            unkeyed_since: None,
            keyed_seen: false,
        }
    }

    /// Checks the next record of the chain.
    pub fn check(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        let expected = self.last_seq.saturating_add(1);
        if record.seq != expected {
            return Err(ChainBreak::Removed {
                prev: self.last_seq,
                next: record.seq.max(expected),
            });
        }
        let keyed = record.hash.starts_with(KEYED_PREFIX);
        let key = match (keyed, &self.key) {
            (true, None) => return Err(ChainBreak::KeyNeeded { seq: record.seq }),
            (true, Some(key)) => Some(key),
            (false, _) if self.keyed_seen => return Err(ChainBreak::Unkeyed { seq: record.seq }),
            (false, _) => None,
        };
        if record_hash(record.seq, &record.event, &record.prev_hash, key) != record.hash {
            let seq = record.seq;
            return Err(if keyed {
                ChainBreak::AlteredOrOtherKey { seq }
            } else {
                ChainBreak::Altered { seq }
            });
        }
        if record.prev_hash != self.last_hash {
            return Err(ChainBreak::Unlinked { seq: record.seq });
        }
        self.keyed_seen |= keyed;
        if keyed {
            self.unkeyed_since = None;
        } else {
            self.unkeyed_since.get_or_insert(record.seq);
        }
        self.last_seq = record.seq;
        self.last_hash.clone_from(&record.hash);
        Ok(())
    }

    /// Ends the check: with a key, the chain must end in keyed records (pgwarden keys every
    /// record once it has a seal key), or else its newest records were rewritten without it
    /// (or none was written since the key was set).
    pub fn finish(&self) -> Result<(), ChainBreak> {
        match (&self.key, self.unkeyed_since) {
            (Some(_), Some(seq)) => Err(ChainBreak::EndsUnkeyed { seq }),
            _ => Ok(()),
        }
    }

    /// Records checked so far.
    pub fn checked(&self) -> u64 {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn event(seq: u64) -> AuditEvent {
        AuditEvent {
            time: datetime!(2026-11-25 12:00:00.123 UTC),
            actor: "user:ola".into(),
            action: "creds.issue".into(),
            object: format!("database/creds/r/{seq}"),
            outcome: Outcome::Success,
            request_id: "r1".into(),
            detail: String::new(),
        }
    }

    /// Appends `n` records to `records`, keyed with `key` if given.
    fn extend(records: &mut Vec<AuditRecord>, n: u64, key: Option<&ChainKey>) {
        for _ in 0..n {
            let (seq, prev) = records
                .last()
                .map_or((1, GENESIS_HASH), |last| (last.seq + 1, last.hash.as_str()));
            let record = AuditRecord::chain(seq, event(seq), prev, key);
            records.push(record);
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        extend(&mut records, n, None);
        records
    }

    fn verify_with(records: &[AuditRecord], key: Option<&ChainKey>) -> Result<u64, ChainBreak> {
        let mut verifier = ChainVerifier::new(key.cloned());
        for record in records {
            verifier.check(record)?;
        }
        verifier.finish()?;
        Ok(verifier.checked())
    }

    fn verify(records: &[AuditRecord]) -> Result<u64, ChainBreak> {
        verify_with(records, None)
    }

    #[test]
    fn the_padded_key_is_hmac_with_the_key_itself() {
        let key = [0x5a; 32];
        let mut padded = hmac_sha256(&key);
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        padded.update(b"record");
        plain.update(b"record");
        assert_eq!(
            padded.finalize().into_bytes(),
            plain.finalize().into_bytes()
        );
    }

    #[test]
    fn a_keyed_chain_verifies_only_with_its_key_and_only_whole() {
        let key = ChainKey::derive(&[7; 32]);
        let other = ChainKey::derive(&[8; 32]);
        // Two records from before the seal key was set, then three keyed ones.
        let mut records = chain(2);
        extend(&mut records, 3, Some(&key));
        assert!(
            records[2].hash.starts_with(KEYED_PREFIX),
            "{}",
            records[2].hash
        );
        assert_eq!(verify_with(&records, Some(&key)), Ok(5));
        assert_eq!(
            verify(&records).unwrap_err().to_string(),
            "audit record 3 is keyed with the seal key: give the configuration that has it"
        );
        assert_eq!(
            verify_with(&records, Some(&other)).unwrap_err().to_string(),
            "audit record 3 was altered, or keyed with another seal key than this \
             configuration's: its contents do not match its hash"
        );

        // Someone without the key edits record 4 and re-hashes it and what follows: the
        // chain turns unkeyed where it was keyed.
        let mut rewritten = records[..3].to_vec();
        let edited = AuditEvent {
            actor: "user:mallory".into(),
            ..event(4)
        };
        rewritten.push(AuditRecord::chain(4, edited, &records[2].hash, None));
        extend(&mut rewritten, 1, None);
        assert_eq!(
            verify_with(&rewritten, Some(&key)).unwrap_err().to_string(),
            "audit record 4 is not keyed, though records before it are: it was rewritten \
             without the seal key, or written by pgwarden without one"
        );
        // Every keyed record rewritten unkeyed: the chain no longer ends keyed.
        let mut downgraded = records[..2].to_vec();
        extend(&mut downgraded, 3, None);
        assert_eq!(
            verify(&downgraded),
            Ok(5),
            "a plain chain, as far as it shows"
        );
        assert_eq!(
            verify_with(&downgraded, Some(&key)).unwrap_err(),
            ChainBreak::EndsUnkeyed { seq: 1 }
        );
        // An unkeyed record before the keyed ones edited and re-hashed: the first keyed
        // record's link, which only the key can make, gives it away.
        let mut early = records.clone();
        early[1] = AuditRecord::chain(2, event(20), &records[0].hash, None);
        assert_eq!(
            verify_with(&early, Some(&key)).unwrap_err().to_string(),
            "audit record 3 does not follow record 2: record 2 was altered or replaced"
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn each_kind_of_tampering_names_its_record() {
        let mut edited = chain(5);
        edited[2].event.actor = "user:mallory".into();
        assert_eq!(
            verify(&edited).unwrap_err().to_string(),
            "audit record 3 was altered: its contents do not match its hash"
        );

        let mut removed = chain(5);
        removed.remove(1);
        removed.remove(1);
        assert_eq!(
            verify(&removed).unwrap_err().to_string(),
            "audit record(s) 2 to 3 were removed: record 4 follows record 1"
        );

        // Edited and re-hashed: the next record's link gives it away.
        let mut rehashed = chain(5);
        rehashed[1].event.outcome = Outcome::Denied;
        rehashed[1] = AuditRecord::chain(2, rehashed[1].event.clone(), &rehashed[0].hash, None);
        assert_eq!(
            verify(&rehashed).unwrap_err().to_string(),
            "audit record 3 does not follow record 2: record 2 was altered or replaced"
        );

        let mut first_gone = chain(3);
        first_gone.remove(0);
        assert_eq!(
            verify(&first_gone).unwrap_err().to_string(),
            "audit record(s) 1 to 1 were removed: record 2 follows record 0"
        );
    }

    #[test]
    fn known_secrets_are_redacted_wherever_they_appear() {
        let secret = format!("root-{}", crate::names::random_alphanumeric(24));
        let text = format!("lease \"{secret}\" not found; again:{secret}.");
        assert_eq!(clean(&text), text, "not known yet");
        redact_everywhere(&SecretString::from(secret.clone()));
        redact_everywhere(&SecretString::from(secret.clone()));
        assert_eq!(
            clean(&text),
            "lease \"[redacted]\" not found; again:[redacted]."
        );
        assert_eq!(clean_for_log(&text), clean(&text));
        assert!(holds_secret(&format!("x{secret}x")));
        // Too short to tell from ordinary words (under 16 bytes): not taken.
        redact_everywhere(&SecretString::from("short-secret".to_string()));
        assert_eq!(clean("a short-secret here"), "a short-secret here");
        let quoted = format!("tok\"{}\\", crate::names::random_alphanumeric(16));
        redact_everywhere(&SecretString::from(quoted.clone()));
        assert_eq!(clean(&format!("({quoted})")), "([redacted])");
        assert_eq!(
            clean_for_log(&format!("{:?}", format!("lease {quoted}"))),
            "\"lease [redacted]\"",
            "as a log field formats it"
        );
    }

    #[test]
    fn texts_lose_secrets_control_characters_and_excess() {
        let token = format!("pgw_{}", "a1".repeat(20));
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(
            clean(&format!("invalid TTL \"{token}\" or {jwt}; pgw_short")),
            "invalid TTL \"[redacted]\" or [redacted]; pgw_short"
        );
        assert_eq!(clean("a\0b\u{1b}[31m"), "a\\u{0}b\\u{1b}[31m");
        let long = clean(&"x".repeat(5000));
        assert_eq!(long.chars().count(), MAX_FIELD_CHARS + 1);
        assert!(long.ends_with('…'));
        // Within paths and after punctuation a token is found; within a word, nothing is.
        assert_eq!(
            clean(&format!("database/creds/{token} x.{token} {jwt}")),
            "database/creds/[redacted] x.[redacted] [redacted]"
        );
        for name in ["db/surveyJobs.v2.ro", "moneyJournal.eu.ro", "my_pgw_role"] {
            assert!(!holds_secret(name), "{name}");
            assert_eq!(clean(name), name);
        }
        assert!(holds_secret(&format!("x/{token}")) && holds_secret(jwt));
    }

    #[test]
    fn any_text_is_read_in_linear_time() {
        // Words that each start like a secret and are not one: read once each, not once per
        // place they could start (which took minutes for a megabyte). The bound is a hundred
        // times what the linear reading takes.
        for text in [
            "eyJ".repeat(350_000),
            "pgw_".repeat(260_000),
            "eyJ.".repeat(260_000),
        ] {
            let started = std::time::Instant::now();
            assert!(!holds_secret(&text) || text.starts_with("eyJ."));
            let _ = scrub(&text, usize::MAX);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{:?} for {} bytes",
                started.elapsed(),
                text.len()
            );
        }
        assert_eq!(
            clean_for_log(&"y".repeat(10_000)).chars().count(),
            MAX_LOG_FIELD_CHARS + 1
        );
    }

    #[test]
    fn hashes_match_an_independent_implementation() {
        // Computed with Python's hashlib over the same length-prefixed fields, so a change to
        // the hashed bytes (which would break every stored chain) fails here.
        assert_eq!(
            chain(1)[0].hash,
            "0ad9634e67c0d0629e7a21903497ceb4ae436f5040f4c42974f7e5ceba0a85eb"
        );
    }
}
