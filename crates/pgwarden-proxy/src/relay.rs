//! Relaying a client's session: bytes pass through in the chunks they arrive in, both
//! directions at once (a client that pipelines while the server answers never deadlocks the
//! two), while [`Walker`]s follow the message boundaries to know when a transaction ends
//! (transaction pooling gives the server connection back then) and when the session is idle
//! (a draining proxy closes it then).

use crate::client::Stream;
use crate::config::PoolMode;
use crate::frame::{Seen, Walker};
use crate::metrics::Metrics;
use crate::pool::{Attached, Checkout};
use crate::reply::{self, PgError};
use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

/// Most bytes read from one side before they are passed on.
const CHUNK: usize = 32 * 1024;
/// Longest `DISCARD ALL` may take before a session's connection is closed instead of reused.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// A client's `Terminate` message.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Where the server a client is using can be reached to cancel its query.
pub type CancelTarget = Arc<Mutex<Option<(String, (i32, i32))>>>;

/// One client's session.
pub struct Session {
    /// The client.
    pub client: Stream,
    /// Its pool.
    pub pool: Attached,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Longest wait for a server connection.
    pub wait: Duration,
    /// Turns true when the proxy is draining.
    pub draining: watch::Receiver<bool>,
    /// Updated with the server in use, for cancel requests.
    pub cancel: CancelTarget,
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
}

impl Progress {
    /// Between transactions: nothing in flight either way, no transaction open.
    fn idle(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && self.status == b'I'
            && self.client.at_boundary()
            && self.server.at_boundary()
    }
}

/// A server connection in use: the checkout and its stream's halves.
struct Attachment {
    checkout: Checkout,
    read: ReadHalf<Stream>,
    write: WriteHalf<Stream>,
}

impl Attachment {
    fn new(mut checkout: Checkout) -> Attachment {
        let stream = std::mem::replace(&mut checkout.server().stream, Box::new(tokio::io::empty()));
        let (read, write) = tokio::io::split(stream);
        Attachment {
            checkout,
            read,
            write,
        }
    }

    /// The checkout with its stream whole again.
    fn into_checkout(self) -> Checkout {
        let mut checkout = self.checkout;
        checkout.server().stream = self.read.unsplit(self.write);
        checkout
    }
}

impl Session {
    /// Relays until the client leaves (or the proxy drains); `first` is the connection the
    /// client was welcomed with, if it took one.
    pub async fn run(self, first: Option<Checkout>) {
        let Session {
            client,
            pool,
            mode,
            wait,
            mut draining,
            cancel,
            metrics,
        } = self;
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut held = match (mode, first) {
            (PoolMode::Session, Some(checkout)) => Some(Attachment::new(checkout)),
            (_, other) => {
                if let Some(checkout) = other {
                    checkout.release(true);
                }
                None
            }
        };
        point(&cancel, held.as_ref());
        let mut progress = Progress {
            status: b'I',
            ..Progress::default()
        };
        // Read into the inboxes, then handed whole (no copy) to the outboxes.
        let (mut from_client, mut from_server) = (BytesMut::new(), BytesMut::new());
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let mut closing = *draining.borrow();
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
                && let Some(attached) = held.take()
            {
                attached.into_checkout().release(true);
                point(&cancel, None);
            }
            let reading_client = to_server.is_empty() && !progress.terminated;
            // An outbox passed on whole is dropped first, so its inbox takes its memory back.
            if reading_client {
                to_server = BytesMut::new();
                from_client.reserve(CHUNK);
            }
            if to_client.is_empty() {
                to_client = BytesMut::new();
                from_server.reserve(CHUNK);
            }
            let (server_read, server_write) =
                held.as_mut().map(|a| (&mut a.read, &mut a.write)).unzip();
            tokio::select! {
                read = client_read.read_buf(&mut from_client), if reading_client => {
                    match read {
                        Ok(0) | Err(_) => break None,
                        Ok(_) => {}
                    }
                    to_server = from_client.split();
                    if let Err(error) = take_in(&mut to_server, &mut progress, mode) {
                        break Some(error);
                    }
                    if progress.terminated && to_server.is_empty() {
                        break None;
                    }
                    if held.is_none() && !to_server.is_empty() {
                        match pool.acquire(wait).await {
                            Ok(checkout) => {
                                let attached = Attachment::new(checkout);
                                point(&cancel, Some(&attached));
                                held = Some(attached);
                            }
                            Err(error) => break Some(error),
                        }
                    }
                }
                written = write_some(server_write, &mut to_server), if !to_server.is_empty() => {
                    match written {
                        Ok(n) => {
                            metrics.bytes_to_server.inc_by(n as u64);
                        }
                        Err(error) => {
                            held.take();
                            break Some(PgError::new("08006", format!("the server connection failed: {error}")));
                        }
                    }
                    if progress.terminated && to_server.is_empty() {
                        break None;
                    }
                }
                read = read_some(server_read, &mut from_server), if to_client.is_empty() => {
                    match read {
                        Ok(0) | Err(_) => {
                            // The server went away (terminated, crashed): so does the session.
                            held.take();
                            break None;
                        }
                        Ok(_) => {}
                    }
                    to_client = from_server.split();
                    let walked = progress.server.walk(&to_client, |seen| {
                        if let Seen::FirstByte(b'Z', status) = seen {
                            progress.pending = progress.pending.saturating_sub(1);
                            progress.status = status;
                        }
                    });
                    if walked.is_err() {
                        held.take();
                        break None;
                    }
                }
                written = client_write.write_buf(&mut to_client), if !to_client.is_empty() => {
                    match written {
                        Ok(n) => {
                            metrics.bytes_to_client.inc_by(n as u64);
                        }
                        Err(_) => break None,
                    }
                }
                _ = draining.changed(), if !closing => closing = true,
            }
        };
        if let Some(error) = ending {
            let mut out = BytesMut::new();
            reply::fatal(&mut out, &error);
            let _ = client_write.write_all(&to_client).await;
            let _ = client_write.write_all(&out).await;
        }
        point(&cancel, None);
        if let Some(attached) = held {
            let clean = progress.idle() && to_server.is_empty() && to_client.is_empty();
            give_back(attached.into_checkout(), clean).await;
        }
    }
}

/// Walks what the client sent (appended to `buf`): counts what will be answered with
/// `ReadyForQuery`, drops a final `Terminate`, refuses a named prepared statement in
/// transaction pooling.
fn take_in(buf: &mut BytesMut, progress: &mut Progress, mode: PoolMode) -> Result<(), PgError> {
    let mut terminated = false;
    let mut named_statement = false;
    progress
        .client
        .walk(buf, |seen| match seen {
            Seen::Message(b'Q' | b'S' | b'F') => {
                progress.pending += 1;
                progress.unsynced = false;
            }
            Seen::Message(b'X') => terminated = true,
            // COPY data belongs to the query that started it.
            Seen::Message(b'd' | b'c' | b'f') => {}
            Seen::Message(_) => progress.unsynced = true,
            Seen::FirstByte(b'P', name) => named_statement |= name != 0,
            Seen::FirstByte(..) => {}
        })
        .map_err(|e| PgError::new("08P01", format!("invalid message from the client: {e}")))?;
    if named_statement && mode == PoolMode::Transaction {
        // Its next transaction may run on a server where another client's statement has the
        // same name: refused before anything of this chunk reaches a server.
        return Err(PgError::new(
            "0A000",
            "named prepared statements are not supported with pool_mode transaction: use \
             unnamed ones (e.g. psycopg prepare_threshold=None, JDBC prepareThreshold=0, \
             tokio-postgres query_typed) or pool_mode session",
        ));
    }
    if terminated {
        // `Terminate` is the client's last message: it is not passed on (the server
        // connection outlives the client). Should it not end the data whole, the server may
        // see part of a message: its connection is not reused.
        progress.terminated = true;
        if buf.ends_with(&TERMINATE) {
            buf.truncate(buf.len() - TERMINATE.len());
        } else {
            progress.unsynced = true;
            buf.clear();
        }
    }
    Ok(())
}

/// Writes some of `buf` to the held server (consuming what was written); waits forever
/// when none is held.
async fn write_some(
    server: Option<&mut WriteHalf<Stream>>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    match server {
        Some(server) => {
            let n = server.write(buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            buf.advance(n);
            Ok(n)
        }
        None => std::future::pending().await,
    }
}

/// Reads from the held server into `buf`; waits forever when none is held.
async fn read_some(
    server: Option<&mut ReadHalf<Stream>>,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    match server {
        Some(server) => server.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// Records which server a cancel request should reach.
fn point(cancel: &CancelTarget, attached: Option<&Attachment>) {
    *cancel.lock() = attached
        .and_then(|a| a.checkout.server.as_ref())
        .map(|s| (s.address.clone(), s.key));
}

/// Returns the connection after the client left: reset and kept if it was between
/// transactions (`clean`), else closed.
async fn give_back(mut checkout: Checkout, clean: bool) {
    let reusable = clean && reset(&mut checkout).await;
    checkout.release(reusable);
}

/// `DISCARD ALL`, so the next client finds a fresh session; false if it did not complete.
async fn reset(checkout: &mut Checkout) -> bool {
    let mut out = BytesMut::new();
    if frontend::query("DISCARD ALL", &mut out).is_err() {
        return false;
    }
    let stream = &mut checkout.server().stream;
    let exchange = async {
        stream.write_all(&out).await.ok()?;
        let mut walker = Walker::default();
        let mut buf = vec![0u8; 4096];
        let mut status = None;
        let mut failed = false;
        while status.is_none() {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            walker
                .walk(&buf[..n], |seen| match seen {
                    Seen::Message(b'E') => failed = true,
                    Seen::FirstByte(b'Z', s) => status = Some(s),
                    _ => {}
                })
                .ok()?;
        }
        (!failed && status == Some(b'I') && walker.at_boundary()).then_some(())
    };
    matches!(
        tokio::time::timeout(RESET_TIMEOUT, exchange).await,
        Ok(Some(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn taken(bytes: Vec<u8>, mode: PoolMode) -> (Result<(), PgError>, Progress, BytesMut) {
        let mut progress = Progress {
            status: b'I',
            ..Progress::default()
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let outcome = take_in(&mut buf, &mut progress, mode);
        (outcome, progress, buf)
    }

    #[test]
    fn every_message_answered_by_ready_for_query_is_awaited() {
        // A function call pipelined with a query: two ReadyForQuery to wait for.
        let mut bytes = message(b'F', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        bytes.extend(message(b'Q', b"SELECT 1\0"));
        let (outcome, progress, buf) = taken(bytes.clone(), PoolMode::Transaction);
        assert_eq!(outcome, Ok(()));
        assert_eq!((progress.pending, progress.unsynced), (2, false));
        assert_eq!(&buf[..], &bytes[..]);
        // Extended protocol without a sync yet: the server stays held.
        let (_, progress, _) = taken(message(b'P', b"\0SELECT 1\0\0\0"), PoolMode::Transaction);
        assert_eq!((progress.pending, progress.unsynced), (0, true));
        assert!(!progress.idle());
    }

    #[test]
    fn named_statements_wait_for_session_pooling_and_terminate_stays_here() {
        let named = message(b'P', b"s0\0SELECT 1\0\0\0");
        let (outcome, _, _) = taken(named.clone(), PoolMode::Transaction);
        assert_eq!(outcome.unwrap_err().code, "0A000");
        assert_eq!(taken(named, PoolMode::Session).0, Ok(()));
        let mut bytes = message(b'Q', b"SELECT 1\0");
        bytes.extend(TERMINATE);
        let (_, progress, buf) = taken(bytes, PoolMode::Session);
        assert!(progress.terminated);
        assert_eq!(&buf[..], &message(b'Q', b"SELECT 1\0")[..]);
    }
}
