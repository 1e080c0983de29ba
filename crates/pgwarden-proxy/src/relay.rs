//! Relaying a client's session: bytes pass through in the chunks they arrive in, both
//! directions at once (a client that pipelines while the server answers never deadlocks the
//! two), while [`Walker`]s follow the message boundaries to know when a transaction ends
//! (transaction pooling gives the server connection back then) and when the session is idle
//! (a draining proxy closes it then).

use crate::cancel::CancelTarget;
use crate::client::Stream;
use crate::config::PoolMode;
use crate::frame::{BadLength, Seen, Walker};
use crate::metrics::Metrics;
use crate::pool::{Attached, Checkout};
use crate::reply::{self, PgError};
use crate::statements::{self, Tracker};
use crate::upstream;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::watch;

/// Most bytes read from one side before they are passed on.
const CHUNK: usize = 32 * 1024;
/// Longest `DISCARD ALL` may take before a session's connection is closed instead of reused.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// A client's `Terminate` message.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// One client's session.
pub struct Session {
    /// The client.
    pub client: Stream,
    /// Its pool.
    pub pool: Attached,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// In transaction pooling, the client's named prepared statements (none: refused).
    pub statements: Option<Tracker>,
    /// Longest wait for a server connection.
    pub wait: Duration,
    /// Turns true when the proxy is draining.
    pub draining: watch::Receiver<bool>,
    /// Updated with the server in use, for cancel requests.
    pub cancel: Arc<CancelTarget>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Where the messages of both directions stand.
#[derive(Default)]
struct Progress {
    client: Walker,
    server: Walker,
    /// Messages sent that each get a `ReadyForQuery` (query, sync, function call) whose
    /// `ReadyForQuery` has not come back yet.
    pending: usize,
    /// Extended-protocol messages sent since the last sync.
    unsynced: bool,
    /// The last `ReadyForQuery` status.
    status: u8,
    /// The client sent `Terminate`.
    terminated: bool,
    /// Where a `COPY … FROM STDIN` stands.
    copy: CopyIn,
    /// What the server still has to answer is unknown (see [`Progress::desync`]).
    desynced: bool,
    /// Settings the server reported (`ParameterStatus`: the client ran `SET client_encoding`,
    /// `SET LOCAL TimeZone`, …) since the connection was taken from the pool, last value of
    /// each (a name `None` when the message could not be read).
    reported: Vec<(Option<String>, String)>,
}

/// A server in `COPY … FROM STDIN` ignores syncs until the client's `CopyDone` or `CopyFail`,
/// including those a client of the extended protocol sent right after the `Execute` that
/// started it: those get no `ReadyForQuery`.
#[derive(Default)]
struct CopyIn {
    /// The server said it is copying in (`CopyInResponse`) and the client has not ended it.
    active: bool,
    /// Syncs sent since the last `Execute` or query, before any `CopyDone` or `CopyFail`.
    syncs: usize,
    /// The client sent `CopyDone` or `CopyFail` since the last `Execute` or query.
    ended: bool,
    /// Syncs found to be ignored, not yet told to the statement tracker.
    ignored: usize,
    /// A sync came while copying in: ignored if the copy succeeds, answered if a row before
    /// it failed, which the proxy cannot tell until the copy ends.
    uncertain: bool,
}

impl CopyIn {
    /// Counts a client's sync; false if the server will ignore it.
    fn answered(&mut self) -> bool {
        if self.active {
            self.ignored += 1;
            self.uncertain = true;
            return false;
        }
        if !self.ended {
            self.syncs += 1;
        }
        true
    }

    /// The client sent an `Execute` or a query.
    fn command(&mut self) {
        (self.syncs, self.ended) = (0, false);
    }

    /// The client sent `CopyDone` or `CopyFail`.
    fn end(&mut self) {
        self.active = false;
        self.ended = true;
    }

    /// The server is copying in: returns how many syncs already counted it will ignore.
    fn started(&mut self) -> usize {
        self.active = !self.ended;
        self.ignored += self.syncs;
        std::mem::take(&mut self.syncs)
    }

    /// The server sent an error: a copy in progress is over (a bad row, say), and the syncs
    /// the server reads after it are answered. Returns whether syncs counted as ignored may
    /// have been among them.
    fn failed(&mut self) -> bool {
        self.active = false;
        self.uncertain
    }

    /// The server is ready for the next command: no copy is in progress.
    fn ready(&mut self) {
        (self.active, self.uncertain) = (false, false);
    }
}

impl Progress {
    /// The proxy lost count of what the server still has to answer (a `ReadyForQuery` came
    /// that nothing awaited, or a copy failed after syncs it may or may not answer): the
    /// connection stays with this client and is closed after it, never handed on.
    fn desync(&mut self) {
        if !self.desynced {
            self.desynced = true;
            tracing::warn!(
                "the proxy lost count of the server's answers; its connection stays with this client and closes after it"
            );
        }
    }

    /// Takes note of a `ParameterStatus` body (`name\0value\0`).
    fn note_reported(&mut self, body: &[u8]) {
        let mut parts = body
            .split(|b| *b == 0)
            .map(|part| std::str::from_utf8(part).ok());
        let (name, value) = match (parts.next().flatten(), parts.next().flatten()) {
            (Some(name), Some(value)) if !name.is_empty() => (Some(name), value),
            _ => (None, ""),
        };
        match self
            .reported
            .iter_mut()
            .find(|(n, _)| name.is_some() && n.as_deref() == name)
        {
            Some((_, last)) => value.clone_into(last),
            None => self
                .reported
                .push((name.map(str::to_string), value.to_string())),
        }
    }

    /// Whether the settings reported since the connection was taken are the pool's own
    /// (`pool`: what its connections reported at start), as PostgreSQL reads them: a `SET
    /// LOCAL` reverted at commit, or `SET TIME ZONE 'UTC'` on an `Etc/UTC` server, changes
    /// nothing. Forgets them.
    fn settings_kept(&mut self, pool: &Attached) -> bool {
        if self.reported.is_empty() {
            return true;
        }
        let started = pool.parameters();
        let kept = self.reported.iter().all(|(name, value)| {
            name.as_deref()
                .is_some_and(|name| crate::settings::holds(&started, name, value))
        });
        self.reported.clear();
        kept
    }

    /// Between transactions: nothing in flight either way, no transaction open.
    fn idle(&self) -> bool {
        self.pending == 0
            && !self.desynced
            && !self.copy.active
            && !self.unsynced
            && self.status == b'I'
            && self.client.at_boundary()
            && self.server.at_boundary()
    }
}

/// Bytes read from one side and not yet all written to the other: `buf[start..end]`. The
/// side is read again only once all of it is written, so nothing is copied unless it is
/// rewritten. `kept` bytes after `end` (a message header not yet whole) are moved to the
/// front before the next read.
struct Pending {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    kept: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            kept: 0,
        }
    }

    /// Bytes to pass on, already read.
    fn holding(bytes: Vec<u8>) -> Pending {
        Pending {
            end: bytes.len(),
            buf: bytes,
            start: 0,
            kept: 0,
        }
    }

    /// Adds `bytes` after those there.
    fn append(&mut self, bytes: &[u8]) {
        let end = self.end + bytes.len();
        if end > self.buf.len() {
            self.buf.resize(end, 0);
        }
        self.buf[self.end..end].copy_from_slice(bytes);
        self.end = end;
    }

    /// Replaces the bytes with `bytes`.
    fn replace(&mut self, bytes: &[u8]) {
        if bytes.len() > self.buf.len() {
            self.buf.resize(bytes.len(), 0);
        }
        self.buf[..bytes.len()].copy_from_slice(bytes);
        (self.start, self.end) = (0, bytes.len());
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads from `from` into the emptied buffer, after the bytes kept.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
    ) -> Poll<std::io::Result<usize>> {
        let kept = self.kept;
        if self.end != 0 {
            // Once, and nothing to pass on until the read completes.
            self.buf.copy_within(self.end..self.end + kept, 0);
            (self.start, self.end) = (0, 0);
        }
        let mut read = ReadBuf::new(&mut self.buf[kept..]);
        ready!(Pin::new(from).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        (self.end, self.kept) = (kept + n, 0);
        Poll::Ready(Ok(n))
    }

    /// Writes some of the bytes to `to`.
    fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut Stream,
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(to).poll_write(cx, &self.buf[self.start..self.end]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        self.start += n;
        Poll::Ready(Ok(n))
    }
}

/// What woke the relay.
enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    Draining,
}

impl Session {
    /// Relays until the client leaves (or the proxy drains); `first` is the connection the
    /// client was welcomed with, if it took one.
    pub async fn run(self, first: Option<Checkout>) {
        let Session {
            mut client,
            pool,
            mode,
            mut statements,
            wait,
            draining,
            cancel,
            metrics,
        } = self;
        let mut held = match (mode, first) {
            (PoolMode::Session, Some(checkout)) => Some(checkout),
            (_, other) => {
                if let Some(checkout) = other {
                    checkout.release(true);
                }
                None
            }
        };
        if let Some(checkout) = held.as_mut() {
            point(&cancel, checkout);
        }
        let mut progress = Progress {
            status: b'I',
            server: Walker::keeping(b'S'),
            ..Progress::default()
        };
        let (mut to_server, mut to_client) = (Pending::new(), Pending::new());
        // Rewritten client bytes; the rest of a server message begun in an earlier read.
        let (mut rewritten, mut answer_left) = (Vec::new(), 0);
        let mut closing = *draining.borrow();
        let mut drain_signal = std::pin::pin!(drained(draining));
        let ending: Option<PgError> = loop {
            if closing && progress.idle() && to_server.is_empty() {
                break Some(PgError::new(
                    "57P01",
                    "terminating connection: the proxy is shutting down",
                ));
            }
            if mode == PoolMode::Transaction
                && progress.idle()
                && to_server.is_empty()
                && to_client.kept == 0
                && let Some(checkout) = held.take()
            {
                cancel.unpoint().await;
                // A connection whose settings a client changed is not handed to the next one
                // (which would, say, send UTF-8 to a LATIN1 session): it closes.
                let kept = progress.settings_kept(&pool);
                if !kept {
                    metrics.settings_closes.inc();
                }
                checkout.release(kept);
            }
            let reading_client = to_server.is_empty() && !progress.terminated;
            // A drain matters between transactions: a session in one hears of it at its end.
            let heed_drain = !closing && progress.idle();
            let event = std::future::poll_fn(|cx| {
                if let Some(checkout) = held.as_mut() {
                    let server = &mut checkout.server().stream;
                    if !to_server.is_empty()
                        && let Poll::Ready(r) = to_server.poll_drain(cx, server)
                    {
                        return Poll::Ready(Event::ServerWrote(r));
                    }
                    if to_client.is_empty()
                        && let Poll::Ready(r) = to_client.poll_fill(cx, server)
                    {
                        return Poll::Ready(Event::ServerRead(r));
                    }
                }
                if !to_client.is_empty()
                    && let Poll::Ready(r) = to_client.poll_drain(cx, &mut client)
                {
                    return Poll::Ready(Event::ClientWrote(r));
                }
                if reading_client && let Poll::Ready(r) = to_server.poll_fill(cx, &mut client) {
                    return Poll::Ready(Event::ClientRead(r));
                }
                if heed_drain && drain_signal.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Draining);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::ClientRead(Ok(0) | Err(_)) => break None,
                Event::ClientRead(Ok(_)) => {
                    let rules = Rules {
                        transaction: mode == PoolMode::Transaction,
                        refuse_named: mode == PoolMode::Transaction && statements.is_none(),
                    };
                    if let Err(error) = take_in(&mut to_server, &mut progress, rules) {
                        break Some(error);
                    }
                    if progress.terminated && to_server.is_empty() {
                        break None;
                    }
                    if held.is_none() && !to_server.is_empty() {
                        let permit = match pool.try_permit() {
                            Some(permit) => permit,
                            None => match wait_for_slot(&pool, wait, &mut client).await {
                                Waited::Slot(permit, early) => {
                                    let mut more = Pending::holding(early);
                                    if let Err(error) = take_in(&mut more, &mut progress, rules) {
                                        break Some(error);
                                    }
                                    to_server.append(more.bytes());
                                    permit
                                }
                                Waited::TimedOut(error) => break Some(error),
                                // Its query is not run for no one.
                                Waited::ClientLeft => break None,
                            },
                        };
                        match pool.acquire_with(permit).await {
                            Ok(mut checkout) => {
                                point(&cancel, &mut checkout);
                                held = Some(checkout);
                            }
                            Err(error) => break Some(error),
                        }
                    }
                    if statements.is_some() {
                        report_ignored_syncs(&mut progress, held.as_mut());
                    }
                    if let (Some(tracker), Some(checkout)) = (statements.as_mut(), held.as_mut())
                        && !to_server.is_empty()
                    {
                        rewritten.clear();
                        let server = checkout.server();
                        if let Err(error) = tracker.rewrite(
                            to_server.bytes(),
                            &mut server.statements,
                            &mut rewritten,
                        ) {
                            break Some(error);
                        }
                        to_server.replace(&rewritten);
                    }
                }
                Event::ServerWrote(Ok(n)) => {
                    metrics.bytes_to_server.inc_by(n as u64);
                    if progress.terminated && to_server.is_empty() {
                        break None;
                    }
                }
                Event::ServerWrote(Err(error)) => {
                    held.take();
                    break Some(PgError::new(
                        "08006",
                        format!("the server connection failed: {error}"),
                    ));
                }
                Event::ServerRead(Ok(0) | Err(_)) => {
                    // The server went away (terminated, crashed): so does the session.
                    held.take();
                    break None;
                }
                Event::ServerRead(Ok(_)) => {
                    if let (Some(tracker), Some(checkout)) = (statements.as_mut(), held.as_mut()) {
                        let Pending { buf, end, kept, .. } = &mut to_client;
                        let server = checkout.server();
                        match statements::filter_answers(
                            buf,
                            *end,
                            &mut answer_left,
                            tracker,
                            &mut server.statements,
                        ) {
                            Ok((passed, partial)) => (*end, *kept) = (passed, partial),
                            Err(_) => {
                                held.take();
                                break None;
                            }
                        }
                    }
                    if take_out(&mut progress, to_client.bytes()).is_err() {
                        held.take();
                        break None;
                    }
                    if statements.is_some() {
                        report_ignored_syncs(&mut progress, held.as_mut());
                    }
                }
                Event::ClientWrote(Ok(n)) => {
                    metrics.bytes_to_client.inc_by(n as u64);
                }
                Event::ClientWrote(Err(_)) => break None,
                Event::Draining => closing = true,
            }
        };
        if let Some(error) = ending {
            let mut out = BytesMut::new();
            reply::fatal(&mut out, &error);
            let _ = client.write_all(to_client.bytes()).await;
            let _ = client.write_all(&out).await;
        }
        cancel.unpoint().await;
        if let Some(checkout) = held {
            let clean = progress.idle() && to_server.is_empty() && to_client.is_empty();
            give_back(checkout, clean).await;
        }
    }
}

/// Resolves once the proxy starts draining (never, if its sender is gone).
async fn drained(mut draining: watch::Receiver<bool>) {
    while !*draining.borrow_and_update() {
        if draining.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a client may send.
#[derive(Clone, Copy)]
struct Rules {
    /// Transaction pooling: a query or function call may not come before the `Sync` of
    /// extended-protocol messages (after an error the server skips it, and its
    /// `ReadyForQuery` never comes).
    transaction: bool,
    /// Named prepared statements are refused.
    refuse_named: bool,
}

/// Walks what the client sent (appended to `buf`): counts what will be answered with
/// `ReadyForQuery`, drops a final `Terminate`, refuses what `rules` do not allow.
fn take_in(buf: &mut Pending, progress: &mut Progress, rules: Rules) -> Result<(), PgError> {
    let mut terminated = false;
    let mut named_statement = false;
    let mut unsynced_query = false;
    progress
        .client
        .walk(buf.bytes(), |seen| match seen {
            Seen::Message(b'S') => {
                if progress.copy.answered() {
                    progress.pending += 1;
                    progress.unsynced = false;
                }
            }
            Seen::Message(tag @ (b'Q' | b'F')) => {
                unsynced_query |= progress.unsynced;
                progress.pending += 1;
                progress.unsynced = false;
                if tag == b'Q' {
                    progress.copy.command();
                }
            }
            Seen::Message(b'X') => terminated = true,
            // Copy data belongs to the query that started it; a flush asks for no answer.
            Seen::Message(b'd' | b'H') => {}
            Seen::Message(b'c' | b'f') => progress.copy.end(),
            Seen::Message(tag) => {
                progress.unsynced = true;
                if tag == b'E' {
                    progress.copy.command();
                }
            }
            Seen::FirstByte(b'P', name) => named_statement |= name != 0,
            Seen::FirstByte(..) => {}
        })
        .map_err(|e| PgError::new("08P01", format!("invalid message from the client: {e}")))?;
    if unsynced_query && rules.transaction {
        return Err(PgError::new(
            "0A000",
            "a query or function call before the Sync of extended-protocol messages is not \
             supported with pool_mode transaction: send Sync first, or use pool_mode session",
        ));
    }
    if named_statement && rules.refuse_named {
        // Its next transaction may run on a server where another client's statement has the
        // same name: refused before anything of this chunk reaches a server.
        return Err(PgError::new(
            "0A000",
            "named prepared statements are not supported with pool_mode transaction: use \
             unnamed ones (e.g. psycopg prepare_threshold=None, JDBC prepareThreshold=0, \
             tokio-postgres query_typed), pool_mode session, or max_prepared_statements above 0",
        ));
    }
    if terminated {
        // `Terminate` is the client's last message: it is not passed on (the server
        // connection outlives the client). Should it not end the data whole, the server may
        // see part of a message: its connection is not reused.
        progress.terminated = true;
        if buf.bytes().ends_with(&TERMINATE) {
            buf.end -= TERMINATE.len();
        } else {
            progress.unsynced = true;
            buf.start = buf.end;
        }
    }
    Ok(())
}

/// Walks what the server sent (`bytes`, about to be passed on): counts the `ReadyForQuery`
/// messages awaited, follows `COPY … FROM STDIN`, keeps the settings it reported.
fn take_out(progress: &mut Progress, bytes: &[u8]) -> Result<(), BadLength> {
    let mut lost_count = false;
    progress.server.walk(bytes, |seen| match seen {
        Seen::FirstByte(b'Z', status) => {
            match progress.pending.checked_sub(1) {
                Some(left) => progress.pending = left,
                None => lost_count = true,
            }
            progress.status = status;
            progress.copy.ready();
        }
        Seen::Message(b'E') => lost_count |= progress.copy.failed(),
        Seen::Message(b'G') => {
            let ignored = progress.copy.started();
            progress.pending = progress.pending.saturating_sub(ignored);
        }
        _ => {}
    })?;
    if lost_count {
        progress.desync();
    }
    for body in progress.server.take_kept() {
        progress.note_reported(&body);
    }
    Ok(())
}

/// Tells the server connection's statement tracking of the syncs it ignored in a copy.
fn report_ignored_syncs(progress: &mut Progress, held: Option<&mut Checkout>) {
    if let Some(checkout) = held {
        let ignored = std::mem::take(&mut progress.copy.ignored);
        checkout.server().statements.syncs_ignored(ignored);
    }
}

/// Records which server a cancel request should reach.
fn point(cancel: &CancelTarget, checkout: &mut Checkout) {
    let server = checkout.server();
    cancel.point((server.address.clone(), server.key));
}

/// How a wait for a free slot ended.
enum Waited {
    /// With a slot, and what the client sent meanwhile.
    Slot(OwnedSemaphorePermit, Vec<u8>),
    TimedOut(PgError),
    ClientLeft,
}

/// Waits for a free slot of `pool`, keeping what the client sends meanwhile, and noticing
/// if it leaves.
async fn wait_for_slot(pool: &Attached, wait: Duration, client: &mut Stream) -> Waited {
    let mut early = Vec::new();
    let read_meanwhile = async {
        let mut chunk = [0; 1024];
        while early.len() < CHUNK {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => early.extend_from_slice(&chunk[..n]),
            }
        }
        std::future::pending().await
    };
    tokio::select! {
        biased;
        permit = pool.wait_for_permit(wait) => match permit {
            Ok(permit) => Waited::Slot(permit, early),
            Err(error) => Waited::TimedOut(error),
        },
        () = read_meanwhile => Waited::ClientLeft,
    }
}

/// Returns the connection after the client left: reset and kept if it was between
/// transactions (`clean`), else closed, and any query it was running cancelled (the server
/// would run it on for no one, beyond the pool's size).
async fn give_back(mut checkout: Checkout, clean: bool) {
    let reusable = clean && reset(&mut checkout).await;
    if !clean {
        let server = checkout.server();
        tokio::spawn(crate::cancel::deliver((server.address.clone(), server.key)));
    }
    checkout.release(reusable);
}

/// `DISCARD ALL`, so the next client finds a fresh session; false if it did not complete.
async fn reset(checkout: &mut Checkout) -> bool {
    let discard = upstream::simple_query(checkout.server(), "DISCARD ALL");
    let done = matches!(
        tokio::time::timeout(RESET_TIMEOUT, discard).await,
        Ok(Ok(answer)) if answer.idle
    );
    checkout.server().statements.clear();
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::message;

    fn taken(bytes: Vec<u8>, transaction: bool) -> (Result<(), PgError>, Progress, Vec<u8>) {
        let mut progress = Progress {
            status: b'I',
            server: Walker::keeping(b'S'),
            ..Progress::default()
        };
        let (outcome, buf) = taken_after(&mut progress, bytes, transaction);
        (outcome, progress, buf)
    }

    fn taken_after(
        progress: &mut Progress,
        bytes: Vec<u8>,
        transaction: bool,
    ) -> (Result<(), PgError>, Vec<u8>) {
        let mut buf = Pending::holding(bytes);
        let rules = Rules {
            transaction,
            refuse_named: transaction,
        };
        let outcome = take_in(&mut buf, progress, rules);
        (outcome, buf.bytes().to_vec())
    }

    #[test]
    fn a_query_inside_an_unsynced_extended_batch_is_refused_in_transaction_mode() {
        let bytes = [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'Q', b"SELECT 2\0"),
        ]
        .concat();
        let (outcome, _, _) = taken(bytes.clone(), true);
        assert_eq!(
            outcome,
            Err(PgError::new(
                "0A000",
                "a query or function call before the Sync of extended-protocol messages is not \
                 supported with pool_mode transaction: send Sync first, or use pool_mode session"
            ))
        );
        assert_eq!(taken(bytes, false).0, Ok(()));
        // A flush after the sync (psycopg ends a pipeline so) asks for nothing.
        let flushed = [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'S', &[]),
            message(b'H', &[]),
        ];
        let (outcome, mut progress, _) = taken(flushed.concat(), true);
        assert_eq!(outcome, Ok(()));
        progress.pending = 0;
        assert!(
            progress.idle(),
            "between transactions once the sync is answered"
        );
        let synced = [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'S', &[]),
            message(b'Q', b"SELECT 2\0"),
        ];
        assert_eq!(taken(synced.concat(), true).0, Ok(()));
    }

    #[test]
    fn kept_bytes_wait_for_the_read_that_completes_them() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut pending = Pending::new();
        pending.buf[10..13].copy_from_slice(b"Z\0\0");
        (pending.start, pending.end, pending.kept) = (10, 10, 3);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut stream: Stream = Box::new(far);
        assert!(pending.poll_fill(&mut cx, &mut stream).is_pending());
        assert!(
            pending.is_empty(),
            "nothing to pass on while the read is pending"
        );
        futures::executor::block_on(near.write_all(b"\0\x05I")).unwrap();
        assert!(matches!(
            pending.poll_fill(&mut cx, &mut stream),
            Poll::Ready(Ok(3))
        ));
        assert_eq!(pending.bytes(), b"Z\0\0\0\x05I");
    }

    #[test]
    fn syncs_ignored_during_copy_in_are_not_awaited() {
        let execute = || message(b'E', &[0, 0, 0, 0, 0]);
        let sync = || message(b'S', &[]);
        let copy_end = [message(b'd', b"1\n"), message(b'c', &[]), sync()].concat();
        // The client waits for CopyInResponse before sending its data (tokio-postgres, libpq).
        let (_, mut progress, _) = taken([execute(), sync()].concat(), false);
        assert_eq!(progress.pending, 1);
        assert_eq!(
            progress.copy.started(),
            1,
            "the sync after Execute is ignored"
        );
        let _ = taken_after(&mut progress, [sync(), copy_end.clone()].concat(), false);
        assert_eq!(progress.copy.ignored, 2);
        assert_eq!(
            progress.pending, 2,
            "one ignored sync subtracted by the relay, one counted"
        );
        // A client that sends everything before the server's CopyInResponse arrives.
        let (_, mut progress, _) = taken([execute(), sync(), copy_end].concat(), false);
        assert_eq!(progress.pending, 2);
        assert_eq!(progress.copy.started(), 1);
        assert!(!progress.copy.active, "the copy already ended");
        // A simple query's COPY: its own ReadyForQuery ends it.
        let (_, mut progress, _) = taken(message(b'Q', b"COPY t FROM STDIN\0"), false);
        assert_eq!(progress.copy.started(), 0);
    }

    #[test]
    fn a_copy_the_server_ended_with_an_error_answers_the_syncs_after_it() {
        let ready = || message(b'Z', b"I");
        // A simple query's COPY, a bad row: the server ends the copy itself (error, then
        // ReadyForQuery); the client never sends CopyDone or CopyFail.
        let (_, mut progress, _) = taken(message(b'Q', b"COPY t FROM STDIN\0"), true);
        take_out(&mut progress, &message(b'G', &[0, 0, 0])).unwrap();
        let _ = taken_after(&mut progress, message(b'd', b"not-an-int\n"), true);
        let failed = [message(b'E', b"SERROR\0C22P02\0\0"), ready()].concat();
        take_out(&mut progress, &failed).unwrap();
        assert!(progress.idle());
        // Its next sync and query: both answered, so the server is busy until the second
        // ReadyForQuery.
        let next = [message(b'S', &[]), message(b'Q', b"SELECT pg_sleep(2)\0")].concat();
        let _ = taken_after(&mut progress, next, true);
        assert_eq!(progress.pending, 2);
        take_out(&mut progress, &ready()).unwrap();
        assert!(!progress.idle(), "the query still runs");
        take_out(&mut progress, &ready()).unwrap();
        assert!(progress.idle());
    }

    #[test]
    fn a_connection_copying_in_is_not_between_transactions() {
        let (execute, sync) = (message(b'E', &[0, 0, 0, 0, 0]), message(b'S', &[]));
        // Outside a transaction, through the extended protocol: the sync after Execute is
        // ignored, so nothing is pending once the server copies in, yet it is busy.
        let (_, mut progress, _) = taken([execute, sync.clone()].concat(), true);
        take_out(&mut progress, &message(b'G', &[0, 0, 0])).unwrap();
        assert_eq!(progress.pending, 0);
        assert!(!progress.idle(), "copying in");
        let end = [message(b'd', b"1\n"), message(b'c', &[]), sync].concat();
        let _ = taken_after(&mut progress, end, true);
        take_out(
            &mut progress,
            &[message(b'C', b"COPY 1\0"), message(b'Z', b"I")].concat(),
        )
        .unwrap();
        assert!(progress.idle());
    }

    #[test]
    fn a_copy_that_fails_after_a_sync_sent_during_it_loses_count() {
        let copy = || message(b'Q', b"COPY t FROM STDIN\0");
        let (sync, ready) = (message(b'S', &[]), message(b'Z', b"I"));
        // A sync pipelined behind a bad row: the server answers it, or ignores it had the
        // row been good. The failure tells which, so the count is given up.
        let (_, mut progress, _) = taken(copy(), true);
        take_out(&mut progress, &message(b'G', &[0, 0, 0])).unwrap();
        let pipelined = [
            message(b'd', b"not-a-number\n"),
            sync.clone(),
            message(b'Q', b"SELECT pg_sleep(2)\0"),
        ];
        let _ = taken_after(&mut progress, pipelined.concat(), true);
        let failed = [message(b'E', b"SERROR\0C22P02\0\0"), ready.clone()];
        take_out(&mut progress, &failed.concat()).unwrap();
        take_out(&mut progress, &ready).unwrap();
        assert!(progress.desynced);
        assert!(!progress.idle(), "kept with its client");
        // The same sync in a copy that succeeds was ignored: the count holds.
        let (_, mut progress, _) = taken(copy(), true);
        take_out(&mut progress, &message(b'G', &[0, 0, 0])).unwrap();
        let good = [message(b'd', b"1\n"), sync, message(b'c', &[])];
        let _ = taken_after(&mut progress, good.concat(), true);
        take_out(&mut progress, &[message(b'C', b"COPY 1\0"), ready].concat()).unwrap();
        assert!(!progress.desynced);
        assert!(progress.idle());
    }

    #[test]
    fn a_ready_for_query_nothing_awaited_keeps_the_server_with_its_client() {
        let (_, mut progress, _) = taken(message(b'Q', b"SELECT 1\0"), true);
        take_out(&mut progress, &message(b'Z', b"I")).unwrap();
        assert!(progress.idle());
        take_out(&mut progress, &message(b'Z', b"I")).unwrap();
        assert!(progress.desynced);
        assert!(!progress.idle(), "never between transactions again");
    }

    #[test]
    fn every_message_answered_by_ready_for_query_is_awaited() {
        // A function call pipelined with a query: two ReadyForQuery to wait for.
        let mut bytes = message(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        bytes.extend(message(b'Q', b"SELECT 1\0"));
        let (outcome, progress, buf) = taken(bytes.clone(), true);
        assert_eq!(outcome, Ok(()));
        assert_eq!((progress.pending, progress.unsynced), (2, false));
        assert_eq!(&buf[..], &bytes[..]);
        // Extended protocol without a sync yet: the server stays held.
        let (_, progress, _) = taken(message(b'P', b"\0SELECT 1\0\0\0"), true);
        assert_eq!((progress.pending, progress.unsynced), (0, true));
        assert!(!progress.idle());
    }

    #[test]
    fn named_statements_wait_for_session_pooling_and_terminate_stays_here() {
        let named = message(b'P', b"s0\0SELECT 1\0\0\0");
        let (outcome, _, _) = taken(named.clone(), true);
        assert_eq!(outcome.unwrap_err().code, "0A000");
        assert_eq!(taken(named, false).0, Ok(()));
        let mut bytes = message(b'Q', b"SELECT 1\0");
        bytes.extend(TERMINATE);
        let (_, progress, buf) = taken(bytes, false);
        assert!(progress.terminated);
        assert_eq!(&buf[..], &message(b'Q', b"SELECT 1\0")[..]);
    }
}
