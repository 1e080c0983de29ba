//! Message boundaries in a byte stream, without decoding the messages: after the startup
//! phase every PostgreSQL message is a type byte, a big-endian length (counting itself) and a
//! body. Relaying needs only the types and first body bytes (a `ReadyForQuery`'s status, a
//! `Parse`'s statement name being empty), so traffic is passed on in the chunks it arrived in
//! while a [`Walker`] follows the boundaries.

/// What a [`Walker`] saw in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A message of this type began.
    Message(u8),
    /// The first body byte of a message of this type (for `ReadyForQuery`, the transaction
    /// status `I`, `T` or `E`; for `Parse`, 0 when the statement is unnamed).
    FirstByte(u8, u8),
}

/// Why a stream is not PostgreSQL messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {0}")]
pub struct BadLength(pub i32);

/// Longest body a [`Walker`] keeps whole; a longer one is kept empty.
const MAX_KEPT_BODY: usize = 4096;

/// Follows message boundaries across chunks.
#[derive(Debug, Default)]
pub struct Walker {
    /// Bytes of the current header read so far (type and length: 5 bytes).
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to come.
    left: usize,
    /// The current message's type, while its first body byte is still to come.
    want_first: Option<u8>,
    /// Messages of this type have their bodies kept.
    keep: Option<u8>,
    /// The body of the current message, while it is one to keep (`None` once too long).
    keeping: Option<Option<Vec<u8>>>,
    /// Bodies of the messages kept, whole (empty when longer than [`MAX_KEPT_BODY`]).
    kept: Vec<Vec<u8>>,
}

impl Walker {
    /// A walker that also keeps the bodies of messages of type `tag` (a server's
    /// `ParameterStatus`, say), for [`Walker::take_kept`].
    pub fn keeping(tag: u8) -> Walker {
        Walker {
            keep: Some(tag),
            ..Walker::default()
        }
    }

    /// The bodies kept since the last call, oldest first.
    pub fn take_kept(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.kept)
    }

    /// Adds `bytes` of the current message's body to the one being kept, if it is.
    fn keep_body(&mut self, bytes: &[u8]) {
        if let Some(body) = &mut self.keeping {
            match body {
                Some(kept) if kept.len() + bytes.len() <= MAX_KEPT_BODY => {
                    kept.extend_from_slice(bytes);
                }
                _ => *body = None,
            }
            if self.left == 0 {
                self.kept
                    .push(self.keeping.take().flatten().unwrap_or_default());
            }
        }
    }

    /// True between messages (no header or body partly read).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Walks `chunk`, calling `seen` for each message start and first body byte.
    pub fn walk(&mut self, mut chunk: &[u8], mut seen: impl FnMut(Seen)) -> Result<(), BadLength> {
        while !chunk.is_empty() {
            if self.left > 0 {
                if let Some(tag) = self.want_first.take() {
                    seen(Seen::FirstByte(tag, chunk[0]));
                }
                let step = self.left.min(chunk.len());
                self.left -= step;
                self.keep_body(&chunk[..step]);
                chunk = &chunk[step..];
                continue;
            }
            let step = (5 - self.have).min(chunk.len());
            self.header[self.have..self.have + step].copy_from_slice(&chunk[..step]);
            self.have += step;
            chunk = &chunk[step..];
            if self.have < 5 {
                break;
            }
            self.have = 0;
            let tag = self.header[0];
            self.left = body_length(&self.header)?;
            seen(Seen::Message(tag));
            self.want_first = (self.left > 0).then_some(tag);
            if self.keep == Some(tag) {
                self.keeping = Some(Some(Vec::new()));
                self.keep_body(&[]);
            }
        }
        Ok(())
    }
}

/// The body length a message header (type byte and big-endian length) announces.
pub fn body_length(header: &[u8; 5]) -> Result<usize, BadLength> {
    let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .ok_or(BadLength(length))
}

/// Appends the header of a message of type `tag` whose body will be `body_len` bytes.
pub fn start_message(out: &mut Vec<u8>, tag: u8, body_len: usize) {
    out.push(tag);
    // Bodies the proxy writes are under 2^31 bytes: what a client sent, and names.
    out.extend_from_slice(&((body_len + 4) as u32).to_be_bytes());
}

/// A message of type `tag` with `body`, as it travels (for tests).
#[cfg(test)]
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    start_message(&mut out, tag, body.len());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_survive_any_split() {
        let mut stream = message(b'D', &[1; 300]);
        stream.extend(message(b'C', b"SELECT 1\0"));
        stream.extend(message(b'Z', b"I"));
        stream.extend(message(b'Z', b"T"));
        for split in 0..stream.len() {
            let mut walker = Walker::default();
            let mut seen = Vec::new();
            walker.walk(&stream[..split], |s| seen.push(s)).unwrap();
            walker.walk(&stream[split..], |s| seen.push(s)).unwrap();
            assert_eq!(
                seen,
                vec![
                    Seen::Message(b'D'),
                    Seen::FirstByte(b'D', 1),
                    Seen::Message(b'C'),
                    Seen::FirstByte(b'C', b'S'),
                    Seen::Message(b'Z'),
                    Seen::FirstByte(b'Z', b'I'),
                    Seen::Message(b'Z'),
                    Seen::FirstByte(b'Z', b'T'),
                ],
                "split at {split}"
            );
            assert!(walker.at_boundary());
        }
        let mut walker = Walker::default();
        walker.walk(&stream[..7], |_| {}).unwrap();
        assert!(!walker.at_boundary());
    }

    #[test]
    fn kept_bodies_come_whole_across_any_split() {
        let mut stream = message(b'S', b"TimeZone\0UTC\0");
        stream.extend(message(b'D', &[7; 50]));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'S', &[b'x'; MAX_KEPT_BODY + 1]));
        stream.extend(message(b'Z', b"I"));
        for split in 0..stream.len() {
            let mut walker = Walker::keeping(b'S');
            walker.walk(&stream[..split], |_| {}).unwrap();
            let mut kept = walker.take_kept();
            walker.walk(&stream[split..], |_| {}).unwrap();
            kept.extend(walker.take_kept());
            assert_eq!(
                kept,
                vec![b"TimeZone\0UTC\0".to_vec(), Vec::new(), Vec::new()],
                "split at {split}"
            );
        }
        let mut plain = Walker::default();
        plain.walk(&stream, |_| {}).unwrap();
        assert!(plain.take_kept().is_empty());
    }

    #[test]
    fn a_length_below_four_is_refused() {
        let mut walker = Walker::default();
        assert_eq!(walker.walk(&[b'Q', 0, 0, 0, 3], |_| {}), Err(BadLength(3)));
        assert_eq!(
            walker.walk(&[b'Q', 0xff, 0xff, 0xff, 0xff], |_| {}),
            Err(BadLength(-1))
        );
    }
}
