//! Named prepared statements in transaction pooling. A client's statements must follow it
//! from one server connection to the next, and two clients may give different statements the
//! same name. So, as PgBouncer 1.21+ does, the proxy names each statement on the server after
//! its `Parse` (`pgwarden_` and a hash of the query and parameter types), remembers what each
//! client's names stand for, and prepares a statement on a server connection that lacks it
//! just before the `Bind` or `Describe` that needs it.
//!
//! The client sees what PostgreSQL would answer, in order: the `ParseComplete` of a `Parse`
//! the proxy added is dropped; a client's `Parse` of a statement the server already has is
//! sent as a `Close` of a name no one uses, whose `CloseComplete` reaches the client as
//! `ParseComplete`; a client's `Close` only forgets its name (the server's statement may
//! serve other clients), answered the same way; a `Parse` of a name in use gets `42P05` as
//! from PostgreSQL. Answers are matched to requests by order, and what the requests the
//! server skipped after an error would have done is undone at the `ReadyForQuery` that ends
//! their batch.

use crate::frame::{body_length, start_message};
use crate::reply::PgError;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Server-side statement names start with this.
const PREFIX: &str = "pgwarden_";
/// A statement name the proxy never prepares: closing it answers `CloseComplete`.
const NO_STATEMENT: &[u8] = b"pgwarden_none";
/// Most statement names one client may have, and most bytes of their definitions.
const MAX_NAMES: usize = 10_000;
const MAX_NAMED_BYTES: usize = 64 * 1024 * 1024;
/// Longest message whose whole body is read before it is passed on (a named `Parse`).
const MAX_HELD: usize = 8 * 1024 * 1024;
/// The command tags (with their NUL) of statements that drop every prepared statement.
const FORGETTING_TAGS: [&[u8]; 2] = [b"DISCARD ALL\0", b"DEALLOCATE ALL\0"];
/// Longest of them: a shorter command tag is read whole before it is passed on.
const LONGEST_FORGETTING_TAG: usize = 15;
/// The answers that are whole messages of five bytes.
const PARSE_COMPLETE: u8 = b'1';
const CLOSE_COMPLETE: u8 = b'3';

/// A statement as the server knows it.
#[derive(Debug)]
struct Prepared {
    /// Its name on every server connection.
    name: Box<[u8]>,
    /// The client's `Parse` body after the statement name: query and parameter types.
    definition: Box<[u8]>,
}

impl Prepared {
    fn new(definition: &[u8]) -> Prepared {
        let digest = Sha256::digest(definition);
        let name = format!("{PREFIX}{}", hex::encode(&digest[..16]));
        Prepared {
            name: name.into_bytes().into_boxed_slice(),
            definition: definition.into(),
        }
    }
}

/// The statements prepared on one server connection, least recently used first out, and
/// the batches (counted in `Sync`s, queries and function calls) sent to it and answered.
#[derive(Debug, Default)]
pub struct ServerStatements {
    /// Each statement's last use and the batch that prepared it.
    statements: HashMap<Box<[u8]>, (u64, u64)>,
    clock: u64,
    sent: u64,
    answered: u64,
}

impl ServerStatements {
    fn has(&mut self, name: &[u8]) -> bool {
        self.clock += 1;
        match self.statements.get_mut(name) {
            Some((used, _)) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    fn add(&mut self, name: &[u8]) {
        self.clock += 1;
        self.statements.insert(name.into(), (self.clock, self.sent));
    }

    fn least_recently_used(&self) -> Option<Box<[u8]>> {
        let (name, _) = self.statements.iter().min_by_key(|(_, (used, _))| *used)?;
        Some(name.clone())
    }

    /// Takes note of `count` syncs the server ignored (sent during `COPY … FROM STDIN`): they
    /// end no batch of their own.
    pub fn syncs_ignored(&mut self, count: usize) {
        self.answered += count as u64;
    }

    /// Forgets every statement, as `DISCARD ALL` by the proxy itself does.
    pub fn clear(&mut self) {
        self.statements.clear();
    }

    /// The server dropped every statement in the batch being answered: those prepared in
    /// later batches (pipelined after it) stay.
    fn dropped_all(&mut self) {
        let answering = self.answered;
        self.statements.retain(|_, (_, batch)| *batch > answering);
    }
}

/// What becomes of a server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on as it is.
    Keep,
    /// Not passed on (it answers the proxy).
    Drop,
    /// Passed on as a `ParseComplete`.
    AsParseComplete,
}

/// An answer the server owes.
#[derive(Debug)]
struct Owed {
    /// The batch of its request.
    batch: u64,
    verdict: Verdict,
    /// What its request does, undone if the server skips it (after an error) or done when
    /// the answer comes.
    effect: Effect,
}

/// What a request does to the statements.
#[derive(Debug, Default)]
struct Effect {
    /// A `Parse` prepares this server statement (gone if it is skipped).
    prepares: Option<Box<[u8]>>,
    /// A `Close` closes this server statement to make room (still there if it is skipped).
    evicts: Option<Box<[u8]>>,
    /// The client's name now stands for this statement (undefined if it is skipped).
    defines: Option<(Box<[u8]>, Arc<Prepared>)>,
    /// The client closed this name: forgotten once the server answers.
    forgets: Option<(Box<[u8]>, Arc<Prepared>)>,
}

/// Where the client's byte stream stands.
#[derive(Debug)]
enum Incoming {
    /// Reading a message header (type and length).
    Header { bytes: [u8; 5], have: usize },
    /// Passing on the rest of a message as it is.
    Pass { left: usize },
    /// Holding a message of type `tag` (`body_len` bytes of body) until it can be rewritten.
    Hold {
        tag: u8,
        body_len: usize,
        body: Vec<u8>,
        /// NUL-ended names still to read before the rest of the body.
        names: u8,
    },
}

/// One client's statements and the answers its server connection owes, in transaction
/// pooling.
#[derive(Debug)]
pub struct Tracker {
    /// What the client's statement names stand for.
    names: HashMap<Box<[u8]>, Arc<Prepared>>,
    parse_answers: VecDeque<Owed>,
    close_answers: VecDeque<Owed>,
    /// Bytes of the statements' definitions in `names`.
    named_bytes: usize,
    incoming: Incoming,
    /// Most statements kept on one server connection.
    capacity: usize,
}

impl Tracker {
    /// A tracker keeping at most `capacity` (at least 1) statements on a server connection.
    pub fn new(capacity: usize) -> Tracker {
        Tracker {
            names: HashMap::new(),
            parse_answers: VecDeque::new(),
            close_answers: VecDeque::new(),
            named_bytes: 0,
            incoming: header(),
            capacity: capacity.max(1),
        }
    }

    /// Rewrites the client's bytes for the server connection whose statements are `server`,
    /// appending to `out`. A message is held back (not in `out`) until the bytes that decide
    /// its rewriting have come.
    pub fn rewrite(
        &mut self,
        mut input: &[u8],
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) -> Result<(), PgError> {
        while !input.is_empty() {
            match &mut self.incoming {
                Incoming::Pass { left } => {
                    let step = (*left).min(input.len());
                    out.extend_from_slice(&input[..step]);
                    input = &input[step..];
                    *left -= step;
                    if *left == 0 {
                        self.incoming = header();
                    }
                }
                Incoming::Header { bytes, have } => {
                    let step = (5 - *have).min(input.len());
                    bytes[*have..*have + step].copy_from_slice(&input[..step]);
                    *have += step;
                    input = &input[step..];
                    if *have == 5 {
                        let bytes = *bytes;
                        self.begin(bytes, server, out)?;
                    }
                }
                Incoming::Hold {
                    tag,
                    body_len,
                    body,
                    names,
                } => {
                    let (tag, body_len) = (*tag, *body_len);
                    let room = (body_len - body.len()).min(input.len());
                    // The names (`Parse`: the statement; `Bind`: portal and statement) are
                    // read up to their NULs, the rest as it comes.
                    let take = match input[..room].iter().position(|b| *b == 0) {
                        Some(at) if *names > 0 => {
                            *names -= 1;
                            at + 1
                        }
                        _ => room,
                    };
                    if body.len() + take > MAX_HELD {
                        return Err(too_long(tag));
                    }
                    body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let settled = body.len() == body_len
                        || (tag == b'B' && *names == 0)
                        || (tag == b'P' && *names == 0 && body.len() == 1);
                    if settled {
                        let body = std::mem::take(body);
                        self.settle(tag, body_len, body, server, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on a message's header: its body is held if the message may need rewriting, else
    /// passed on.
    fn begin(
        &mut self,
        header: [u8; 5],
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) -> Result<(), PgError> {
        let tag = header[0];
        let body_len = body_length(&header)
            .map_err(|e| PgError::new("08P01", format!("invalid message from the client: {e}")))?;
        if matches!(tag, b'Q' | b'S' | b'F') {
            server.sent += 1;
        }
        if matches!(tag, b'P' | b'B' | b'D' | b'C') && body_len > 0 {
            self.incoming = Incoming::Hold {
                tag,
                body_len,
                body: Vec::with_capacity(body_len.min(1024)),
                names: match tag {
                    b'P' => 1,
                    b'B' => 2,
                    _ => 0,
                },
            };
            return Ok(());
        }
        self.owe_for(tag, server);
        out.extend_from_slice(&header);
        self.incoming = pass(body_len);
        Ok(())
    }

    /// Passes on a held message, rewritten if it names a statement of the client's.
    fn settle(
        &mut self,
        tag: u8,
        body_len: usize,
        body: Vec<u8>,
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) -> Result<(), PgError> {
        let rest = body_len - body.len();
        self.incoming = pass(rest);
        let (name, after) = cstring(&body);
        match tag {
            b'P' if !name.is_empty() && rest == 0 => {
                return self.parse(name, after, server, out);
            }
            b'B' => {
                let (statement, parameters) = cstring(after);
                if let Some(prepared) = self.named(statement) {
                    self.ensure(&prepared, server, out);
                    let head = name.len() + 1 + prepared.name.len() + 1 + parameters.len();
                    start_message(out, b'B', head + rest);
                    push_cstring(out, name);
                    push_cstring(out, &prepared.name);
                    out.extend_from_slice(parameters);
                    return Ok(());
                }
            }
            b'D' | b'C' if body.first() == Some(&b'S') => {
                let (statement, _) = cstring(&body[1..]);
                if tag == b'C' && !statement.is_empty() {
                    // The server's statement may serve other clients: only the name goes,
                    // once the server answers (after an error it skips the Close).
                    let effect = Effect {
                        forgets: self
                            .names
                            .get(statement)
                            .map(|p| (Box::from(statement), p.clone())),
                        ..Effect::default()
                    };
                    self.close_nothing(Verdict::Keep, effect, server, out);
                    return Ok(());
                }
                if let Some(prepared) = self.named(statement) {
                    self.ensure(&prepared, server, out);
                    about_statement(out, b'D', &prepared.name);
                    return Ok(());
                }
            }
            _ => {}
        }
        self.owe_for(tag, server);
        start_message(out, tag, body_len);
        out.extend_from_slice(&body);
        Ok(())
    }

    /// A client's named `Parse`: its name now stands for `definition`. A name already in
    /// use gets PostgreSQL's `42P05` (the server is asked to prepare its statement again).
    fn parse(
        &mut self,
        name: &[u8],
        definition: &[u8],
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) -> Result<(), PgError> {
        if let Some(existing) = self.names.get(name).cloned() {
            self.ensure(&existing, server, out);
            send_parse(out, &existing);
            self.owe(PARSE_COMPLETE, Verdict::Keep, Effect::default(), server);
            return Ok(());
        }
        let bytes = self.named_bytes + definition.len();
        if self.names.len() >= MAX_NAMES || bytes > MAX_NAMED_BYTES {
            return Err(PgError::new(
                "54000",
                format!(
                    "too many named prepared statements for one client in pool_mode \
                     transaction (at most {MAX_NAMES}, {} MiB of queries): close some",
                    MAX_NAMED_BYTES >> 20
                ),
            ));
        }
        let prepared = Arc::new(Prepared::new(definition));
        self.named_bytes = bytes;
        self.names.insert(name.into(), prepared.clone());
        let defines = Some((Box::from(name), prepared.clone()));
        if server.has(&prepared.name) {
            let effect = Effect {
                defines,
                ..Effect::default()
            };
            self.close_nothing(Verdict::AsParseComplete, effect, server, out);
        } else {
            self.prepare(&prepared, Verdict::Keep, defines, server, out);
        }
        Ok(())
    }

    /// Forgets the client's `name` if it still stands for `prepared`.
    fn forget(&mut self, name: &[u8], prepared: &Arc<Prepared>) {
        if self
            .names
            .get(name)
            .is_some_and(|p| Arc::ptr_eq(p, prepared))
        {
            self.names.remove(name);
            self.named_bytes = self.named_bytes.saturating_sub(prepared.definition.len());
        }
    }

    /// Prepares `prepared` on the server unless it has it, dropping the answer.
    fn ensure(&mut self, prepared: &Prepared, server: &mut ServerStatements, out: &mut Vec<u8>) {
        if !server.has(&prepared.name) {
            self.prepare(prepared, Verdict::Drop, None, server, out);
        }
    }

    /// Sends a `Parse` of `prepared`, first closing the least recently used statement if the
    /// server has as many as it may keep.
    fn prepare(
        &mut self,
        prepared: &Prepared,
        verdict: Verdict,
        defines: Option<(Box<[u8]>, Arc<Prepared>)>,
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) {
        if server.statements.len() >= self.capacity
            && let Some(oldest) = server.least_recently_used()
        {
            server.statements.remove(&oldest);
            about_statement(out, b'C', &oldest);
            let effect = Effect {
                evicts: Some(oldest),
                ..Effect::default()
            };
            self.owe(CLOSE_COMPLETE, Verdict::Drop, effect, server);
        }
        server.add(&prepared.name);
        send_parse(out, prepared);
        let effect = Effect {
            prepares: Some(prepared.name.clone()),
            defines,
            ..Effect::default()
        };
        self.owe(PARSE_COMPLETE, verdict, effect, server);
    }

    /// Sends a `Close` of a statement no one has, for the answer the client is owed.
    fn close_nothing(
        &mut self,
        verdict: Verdict,
        effect: Effect,
        server: &ServerStatements,
        out: &mut Vec<u8>,
    ) {
        about_statement(out, b'C', NO_STATEMENT);
        self.owe(CLOSE_COMPLETE, verdict, effect, server);
    }

    fn named(&self, statement: &[u8]) -> Option<Arc<Prepared>> {
        if statement.is_empty() {
            return None;
        }
        self.names.get(statement).cloned()
    }

    /// Notes the answer a message of type `tag` the client sent is owed, if it is one of
    /// those the proxy also asks for.
    fn owe_for(&mut self, tag: u8, server: &ServerStatements) {
        match tag {
            b'P' => self.owe(PARSE_COMPLETE, Verdict::Keep, Effect::default(), server),
            b'C' => self.owe(CLOSE_COMPLETE, Verdict::Keep, Effect::default(), server),
            _ => {}
        }
    }

    fn owe(&mut self, answer: u8, verdict: Verdict, effect: Effect, server: &ServerStatements) {
        let owed = Owed {
            batch: server.sent,
            verdict,
            effect,
        };
        match answer {
            PARSE_COMPLETE => self.parse_answers.push_back(owed),
            _ => self.close_answers.push_back(owed),
        }
    }

    /// What becomes of a server message of type `tag`; a `ReadyForQuery` ends a batch, and
    /// the answers its requests still owed were skipped (their statements are not prepared).
    pub fn answer(&mut self, tag: u8, server: &mut ServerStatements) -> Verdict {
        let owed = match tag {
            PARSE_COMPLETE => self.parse_answers.pop_front(),
            CLOSE_COMPLETE => self.close_answers.pop_front(),
            b'Z' => {
                let ended = server.answered;
                server.answered += 1;
                while let Some(skipped) = pop_if(&mut self.parse_answers, ended)
                    .or_else(|| pop_if(&mut self.close_answers, ended))
                {
                    self.undo(skipped.effect, server);
                }
                None
            }
            _ => None,
        };
        let Some(owed) = owed else {
            return Verdict::Keep;
        };
        if let Some((name, prepared)) = &owed.effect.forgets {
            self.forget(name, prepared);
        }
        owed.verdict
    }

    /// Undoes what a request the server skipped would have done.
    fn undo(&mut self, effect: Effect, server: &mut ServerStatements) {
        if let Some(name) = effect.prepares {
            server.statements.remove(&name);
        }
        if let Some(name) = effect.evicts {
            server.add(&name);
        }
        if let Some((name, prepared)) = effect.defines {
            self.forget(&name, &prepared);
        }
    }
}

/// The first answer owed in `owed` if its batch is `ended` or earlier.
fn pop_if(owed: &mut VecDeque<Owed>, ended: u64) -> Option<Owed> {
    if owed.front()?.batch <= ended {
        owed.pop_front()
    } else {
        None
    }
}

/// Sends a `Parse` of `prepared` under its server name.
fn send_parse(out: &mut Vec<u8>, prepared: &Prepared) {
    start_message(
        out,
        b'P',
        prepared.name.len() + 1 + prepared.definition.len(),
    );
    push_cstring(out, &prepared.name);
    out.extend_from_slice(&prepared.definition);
}

/// Sends a `Describe` or `Close` (`tag`) of the prepared statement `name`.
fn about_statement(out: &mut Vec<u8>, tag: u8, name: &[u8]) {
    start_message(out, tag, 1 + name.len() + 1);
    out.push(b'S');
    push_cstring(out, name);
}

/// Applies the tracker's verdicts to server bytes `buf[..len]` in place, message by message.
/// `left` is what is left of a message begun in an earlier chunk. Returns the length of what
/// may be passed on and of a trailing message start that is not whole (a header, or a short
/// command tag), moved right after it for the next chunk.
pub fn filter_answers(
    buf: &mut [u8],
    len: usize,
    left: &mut usize,
    tracker: &mut Tracker,
    server: &mut ServerStatements,
) -> Result<(usize, usize), PgError> {
    let (mut read, mut write) = (0, 0);
    // Moves `count` bytes from `read` down to `write`.
    let shift = |buf: &mut [u8], read: usize, write: usize, count: usize| {
        if read != write {
            buf.copy_within(read..read + count, write);
        }
    };
    while read < len {
        if *left > 0 {
            let step = (*left).min(len - read);
            shift(buf, read, write, step);
            (read, write, *left) = (read + step, write + step, *left - step);
            continue;
        }
        let header: Option<&[u8; 5]> = buf[read..len].first_chunk();
        let Some(&header) = header else {
            // Kept right after what is passed on: the relay reads on after it.
            shift(buf, read, write, len - read);
            return Ok((write, len - read));
        };
        let tag = header[0];
        let body_len = body_length(&header).map_err(|e| PgError::new("08P01", e.to_string()))?;
        if tag == b'C' && body_len <= LONGEST_FORGETTING_TAG {
            // `DISCARD ALL` and `DEALLOCATE ALL` drop every statement of the connection.
            let Some(command) = buf[read + 5..len].get(..body_len) else {
                shift(buf, read, write, len - read);
                return Ok((write, len - read));
            };
            if FORGETTING_TAGS.contains(&command) {
                server.dropped_all();
            }
        }
        match tracker.answer(tag, server) {
            Verdict::Drop if body_len == 0 => read += 5,
            verdict => {
                shift(buf, read, write, 5);
                if verdict == Verdict::AsParseComplete {
                    buf[write] = PARSE_COMPLETE;
                }
                (read, write, *left) = (read + 5, write + 5, body_len);
            }
        }
    }
    Ok((write, 0))
}

/// The error for a message too long to hold while its statement is rewritten.
fn too_long(tag: u8) -> PgError {
    PgError::new(
        "54000",
        format!(
            "a {:?} message longer than {} MiB with a named prepared statement cannot pass \
             the proxy in pool_mode transaction: use an unnamed statement or pool_mode session",
            char::from(tag),
            MAX_HELD >> 20
        ),
    )
}

fn header() -> Incoming {
    Incoming::Header {
        bytes: [0; 5],
        have: 0,
    }
}

fn pass(left: usize) -> Incoming {
    if left == 0 {
        header()
    } else {
        Incoming::Pass { left }
    }
}

/// A C string at the start of `bytes` (without its NUL) and what follows it.
fn cstring(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == 0) {
        Some(end) => (&bytes[..end], &bytes[end + 1..]),
        None => (bytes, &[]),
    }
}

fn push_cstring(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::message;

    fn parse(name: &str, query: &str) -> Vec<u8> {
        message(b'P', format!("{name}\0{query}\0\0\0").as_bytes())
    }
    fn bind(statement: &str) -> Vec<u8> {
        message(b'B', format!("\0{statement}\0\0\0\0\0\0\0").as_bytes())
    }
    fn close(statement: &str) -> Vec<u8> {
        message(b'C', format!("S{statement}\0").as_bytes())
    }
    fn describe(statement: &str) -> Vec<u8> {
        message(b'D', format!("S{statement}\0").as_bytes())
    }
    const EXECUTE: &[u8] = b"E\0\0\0\x09\0\0\0\0\0";
    const SYNC: &[u8] = b"S\0\0\0\x04";

    fn server_name(query: &str) -> String {
        let name = Prepared::new(format!("{query}\0\0\0").as_bytes()).name;
        String::from_utf8(name.into()).unwrap()
    }

    /// Rewrites `input` fed one split at a time (every split must give the same bytes).
    fn rewritten(tracker: &Tracker, server: &ServerStatements, input: &[u8]) -> Vec<u8> {
        let mut first: Option<Vec<u8>> = None;
        for split in 0..=input.len() {
            let (mut tracker, mut server) = (clone(tracker), clone_server(server));
            let mut out = Vec::new();
            tracker
                .rewrite(&input[..split], &mut server, &mut out)
                .unwrap();
            tracker
                .rewrite(&input[split..], &mut server, &mut out)
                .unwrap();
            match &first {
                None => first = Some(out),
                Some(first) => assert_eq!(first, &out, "split at {split}"),
            }
        }
        first.unwrap()
    }

    fn clone(tracker: &Tracker) -> Tracker {
        let mut copy = Tracker::new(tracker.capacity);
        copy.names = tracker.names.clone();
        copy.named_bytes = tracker.named_bytes;
        copy
    }

    fn clone_server(server: &ServerStatements) -> ServerStatements {
        ServerStatements {
            statements: server.statements.clone(),
            ..*server
        }
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// The server's answers, one message each, filtered as the relay does.
    fn answers(tracker: &mut Tracker, server: &mut ServerStatements, tags: &[u8]) -> Vec<u8> {
        let mut bytes: Vec<u8> = tags.iter().flat_map(|t| message(*t, &[])).collect();
        let (mut left, len) = (0, bytes.len());
        let (passed, kept) = filter_answers(&mut bytes, len, &mut left, tracker, server).unwrap();
        assert_eq!(kept, 0);
        bytes[..passed].chunks(5).map(|m| m[0]).collect()
    }

    #[test]
    fn a_statement_follows_its_client_to_another_server_connection() {
        let query = "SELECT $1::int";
        let name = server_name(query);
        let mut tracker = Tracker::new(10);
        let (mut a, mut b) = (ServerStatements::default(), ServerStatements::default());
        let input = concat(&[&parse("s1", query), &bind("s1"), EXECUTE, SYNC]);
        let out = rewritten(&tracker, &a, &input);
        assert_eq!(
            out,
            concat(&[&parse(&name, query), &bind(&name), EXECUTE, SYNC])
        );
        tracker.rewrite(&input, &mut a, &mut Vec::new()).unwrap();
        assert_eq!(answers(&mut tracker, &mut a, b"12CZ"), b"12CZ");
        // On a connection without it, the statement is prepared first; that answer is dropped.
        let input = concat(&[&bind("s1"), EXECUTE, &describe("s1"), SYNC]);
        let out = rewritten(&tracker, &b, &input);
        assert_eq!(
            out,
            concat(&[
                &parse(&name, query),
                &bind(&name),
                EXECUTE,
                &describe(&name),
                SYNC
            ])
        );
        tracker.rewrite(&input, &mut b, &mut Vec::new()).unwrap();
        assert_eq!(answers(&mut tracker, &mut b, b"12CtTZ"), b"2CtTZ");
        // Back on the first connection, nothing needs preparing.
        let input = concat(&[&bind("s1"), EXECUTE, SYNC]);
        assert_eq!(
            rewritten(&tracker, &a, &input),
            concat(&[&bind(&name), EXECUTE, SYNC])
        );
    }

    #[test]
    fn a_statement_the_server_has_is_answered_in_order_and_close_only_forgets_the_name() {
        let query = "SELECT 1";
        let name = server_name(query);
        let mut server = ServerStatements::default();
        server.add(name.as_bytes());
        let mut tracker = Tracker::new(10);
        // An unnamed Parse before it keeps its own answer, in order.
        let input = concat(&[&parse("", "SELECT 2"), &parse("mine", query), SYNC]);
        let out = rewritten(&tracker, &server, &input);
        assert_eq!(
            out,
            concat(&[&parse("", "SELECT 2"), &close("pgwarden_none"), SYNC])
        );
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"13Z"), b"11Z");
        // A Close the server skips (after an error) leaves the name defined.
        let failing = concat(&[&parse("", "SELECT broken"), &close("mine"), SYNC]);
        tracker
            .rewrite(&failing, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"EZ"), b"EZ");
        assert_eq!(
            rewritten(&tracker, &server, &concat(&[&bind("mine"), SYNC])),
            concat(&[&bind(&name), SYNC])
        );
        // One it answers forgets it.
        let input = concat(&[&close("mine"), SYNC]);
        assert_eq!(
            rewritten(&tracker, &server, &input),
            concat(&[&close("pgwarden_none"), SYNC])
        );
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"3Z"), b"3Z");
        assert_eq!(
            rewritten(&tracker, &server, &concat(&[&bind("mine"), SYNC])),
            concat(&[&bind("mine"), SYNC]),
            "after Close the name is unknown: PostgreSQL answers that it does not exist"
        );
        assert!(
            server.has(name.as_bytes()),
            "other clients may still use it"
        );
        // Parsing a name in use is PostgreSQL's 42P05: the server is asked to prepare the
        // statement it already has.
        let input = concat(&[&parse("again", query), SYNC]);
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"3Z"), b"1Z");
        assert_eq!(
            rewritten(
                &tracker,
                &server,
                &concat(&[&parse("again", "SELECT 9"), SYNC])
            ),
            concat(&[&parse(&name, query), SYNC])
        );
    }

    #[test]
    fn answers_skipped_after_an_error_are_forgotten_with_their_statements() {
        let query = "SELECT 1";
        let name = server_name(query);
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        let input = concat(&[
            &parse("", "SELECT broken"),
            &parse("s1", query),
            &bind("s1"),
            SYNC,
        ]);
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        // The first Parse fails: the server skips the rest up to Sync, so the statement is
        // neither prepared nor named (a Bind gets PostgreSQL's 26000).
        assert_eq!(answers(&mut tracker, &mut server, b"EZ"), b"EZ");
        assert!(!server.has(name.as_bytes()));
        assert_eq!(
            rewritten(&tracker, &server, &concat(&[&bind("s1"), SYNC])),
            concat(&[&bind("s1"), SYNC])
        );
        // Parsed again, it is prepared again, and its answers are not confused.
        let input = concat(&[&parse("s1", query), &bind("s1"), SYNC]);
        assert_eq!(
            rewritten(&tracker, &server, &input),
            concat(&[&parse(&name, query), &bind(&name), SYNC])
        );
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"12Z"), b"12Z");
    }

    #[test]
    fn syncs_ignored_in_a_copy_end_no_batch() {
        let query = "SELECT 1";
        let name = server_name(query);
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        let copy = concat(&[EXECUTE, SYNC, &message(b'c', &[]), SYNC]);
        tracker
            .rewrite(&copy, &mut server, &mut Vec::new())
            .unwrap();
        // The relay saw CopyInResponse: the first sync gets no ReadyForQuery.
        server.syncs_ignored(1);
        assert_eq!(answers(&mut tracker, &mut server, b"GCZ"), b"GCZ");
        let failing = concat(&[&parse("", "SELECT broken"), &parse("s1", query), SYNC]);
        tracker
            .rewrite(&failing, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"EZ"), b"EZ");
        assert!(
            !server.has(name.as_bytes()),
            "skipped at its own ReadyForQuery"
        );
    }

    #[test]
    fn a_skipped_eviction_leaves_the_statement_known() {
        let (a, b) = (server_name("SELECT 1"), server_name("SELECT 2"));
        let mut tracker = Tracker::new(1);
        let mut server = ServerStatements::default();
        tracker
            .rewrite(
                &concat(&[&parse("a", "SELECT 1"), SYNC]),
                &mut server,
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"1Z"), b"1Z");
        // An error skips both the Close that makes room and the Parse of b.
        let failing = concat(&[&parse("", "SELECT broken"), &parse("b", "SELECT 2"), SYNC]);
        tracker
            .rewrite(&failing, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"EZ"), b"EZ");
        assert!(server.has(a.as_bytes()) && !server.has(b.as_bytes()));
        assert_eq!(
            rewritten(&tracker, &server, &concat(&[&bind("a"), SYNC])),
            concat(&[&bind(&a), SYNC])
        );
    }

    #[test]
    fn a_pipelined_discard_all_keeps_statements_prepared_after_it() {
        let (one, two) = (server_name("SELECT 1"), server_name("SELECT 2"));
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        server.add(one.as_bytes());
        let input = concat(&[
            &message(b'Q', b"DISCARD ALL\0"),
            &parse("b", "SELECT 2"),
            SYNC,
        ]);
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        let mut stream = concat(&[
            &message(b'C', b"DISCARD ALL\0"),
            &message(b'Z', b"I"),
            &message(b'1', &[]),
            &message(b'Z', b"I"),
        ]);
        let (mut left, len) = (0, stream.len());
        filter_answers(&mut stream, len, &mut left, &mut tracker, &mut server).unwrap();
        assert!(!server.has(one.as_bytes()) && server.has(two.as_bytes()));
    }

    #[test]
    fn a_client_has_a_bounded_number_of_names() {
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        let mut input = Vec::new();
        for n in 0..=MAX_NAMES {
            input.extend(parse(&format!("s{n}"), "SELECT 1"));
        }
        let error = tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            (
                "54000",
                "too many named prepared statements for one client in pool_mode transaction \
                 (at most 10000, 64 MiB of queries): close some"
            )
        );
    }

    #[test]
    fn the_least_recently_used_statement_makes_room() {
        let mut tracker = Tracker::new(1);
        let mut server = ServerStatements::default();
        let input = concat(&[&parse("a", "SELECT 1"), &parse("b", "SELECT 2"), SYNC]);
        let out = rewritten(&tracker, &server, &input);
        assert_eq!(
            out,
            concat(&[
                &parse(&server_name("SELECT 1"), "SELECT 1"),
                &close(&server_name("SELECT 1")),
                &parse(&server_name("SELECT 2"), "SELECT 2"),
                SYNC
            ])
        );
        tracker
            .rewrite(&input, &mut server, &mut Vec::new())
            .unwrap();
        assert_eq!(answers(&mut tracker, &mut server, b"131Z"), b"11Z");
    }

    #[test]
    fn a_header_split_across_reads_is_kept_for_the_next() {
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        tracker
            .rewrite(
                &concat(&[&bind("x"), &parse("s", "SELECT 1"), SYNC]),
                &mut server,
                &mut Vec::new(),
            )
            .unwrap();
        let mut stream = concat(&[
            &message(b'E', b"xx"),
            &message(b'1', &[]),
            &message(b'Z', b"E"),
        ]);
        let mut left = 0;
        let len = stream.len();
        let (passed, kept) =
            filter_answers(&mut stream[..9], 9, &mut left, &mut tracker, &mut server).unwrap();
        assert_eq!((passed, kept), (7, 2));
        stream.copy_within(passed..len, 0);
        let (passed, kept) =
            filter_answers(&mut stream, len - 7, &mut left, &mut tracker, &mut server).unwrap();
        assert_eq!((passed, kept), (11, 0));
        assert_eq!(
            &stream[..passed],
            &concat(&[&message(b'1', &[]), &message(b'Z', b"E")])[..]
        );
    }

    #[test]
    fn discard_all_forgets_the_connections_statements_even_split_across_reads() {
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        server.add(b"pgwarden_x");
        let mut stream = concat(&[&message(b'C', b"DISCARD ALL\0"), &message(b'Z', b"I")]);
        let (mut left, len) = (0, stream.len());
        let (passed, kept) =
            filter_answers(&mut stream, 10, &mut left, &mut tracker, &mut server).unwrap();
        assert_eq!((passed, kept), (0, 10));
        assert!(server.has(b"pgwarden_x"));
        let (passed, kept) =
            filter_answers(&mut stream, len, &mut left, &mut tracker, &mut server).unwrap();
        assert_eq!((passed, kept), (len, 0));
        assert!(!server.has(b"pgwarden_x"));
    }

    #[test]
    fn oversized_and_malformed_messages_get_postgresql_errors() {
        let mut tracker = Tracker::new(10);
        let mut server = ServerStatements::default();
        let mut header = vec![b'P'];
        header.extend_from_slice(&(20 * 1024 * 1024i32).to_be_bytes());
        header.extend_from_slice(b"name\0");
        let mut huge = header.clone();
        huge.resize(9 * 1024 * 1024, b'x');
        let error = tracker
            .rewrite(&huge, &mut server, &mut Vec::new())
            .unwrap_err();
        assert_eq!(error.code, "54000");
        assert_eq!(
            error.message,
            "a 'P' message longer than 8 MiB with a named prepared statement cannot pass the \
             proxy in pool_mode transaction: use an unnamed statement or pool_mode session"
        );
        // An unnamed one that long passes as it comes.
        let mut tracker = Tracker::new(10);
        let mut unnamed = vec![b'P'];
        unnamed.extend_from_slice(&(20 * 1024 * 1024i32).to_be_bytes());
        unnamed.resize(9 * 1024 * 1024, 0);
        let mut out = Vec::new();
        tracker.rewrite(&unnamed, &mut server, &mut out).unwrap();
        assert_eq!(out, unnamed);
        let error = Tracker::new(1)
            .rewrite(&[b'Q', 0, 0, 0, 2], &mut server, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            (
                "08P01",
                "invalid message from the client: invalid message length 2"
            )
        );
    }
}
