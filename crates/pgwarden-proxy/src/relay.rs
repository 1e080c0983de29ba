//! Relaying a client's session: bytes pass through in the chunks they arrive in, while
//! [`Walker`]s follow the message boundaries to know when a transaction ends (transaction
//! pooling gives the server connection back then) and when the session is idle (a draining
//! proxy closes it then).

use crate::client::Stream;
use crate::config::PoolMode;
use crate::frame::{Seen, Walker};
use crate::metrics::Metrics;
use crate::pool::{Checkout, Pool};
use crate::reply::{self, PgError};
use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Size of each direction's read buffer.
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
    pub pool: Arc<Pool>,
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
    /// Queries and syncs sent whose `ReadyForQuery` has not come back yet.
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

impl Session {
    /// Relays until the client leaves (or the proxy drains); `server` is the connection the
    /// client was welcomed with.
    pub async fn run(mut self, server: Checkout) {
        let mut held = match self.mode {
            PoolMode::Session => Some(server),
            PoolMode::Transaction => {
                self.pool.release(server, true);
                None
            }
        };
        self.point_cancel_at(held.as_ref());
        let mut progress = Progress {
            status: b'I',
            ..Progress::default()
        };
        let mut from_client = vec![0u8; CHUNK];
        let mut from_server = vec![0u8; CHUNK];
        let mut draining = *self.draining.borrow();
        loop {
            if draining && progress.idle() {
                let error = PgError::new(
                    "57P01",
                    "terminating connection: the proxy is shutting down",
                );
                let mut out = BytesMut::new();
                reply::fatal(&mut out, &error);
                let _ = self.client.write_all(&out).await;
                break;
            }
            tokio::select! {
                read = self.client.read(&mut from_client) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Err(error) = self.pass_client_chunk(&from_client[..n], &mut progress, &mut held).await {
                        let mut out = BytesMut::new();
                        reply::fatal(&mut out, &error);
                        let _ = self.client.write_all(&out).await;
                        break;
                    }
                    if progress.terminated {
                        break;
                    }
                }
                read = read_server(&mut held, &mut from_server) => {
                    let n = match read {
                        Ok(0) | Err(_) => {
                            // The server went away (terminated, crashed): so does the session.
                            if let Some(checkout) = held.take() {
                                self.pool.discard(checkout);
                            }
                            break;
                        }
                        Ok(n) => n,
                    };
                    let chunk = &from_server[..n];
                    let walked = progress.server.walk(chunk, |seen| {
                        if let Seen::FirstByte(b'Z', status) = seen {
                            progress.pending = progress.pending.saturating_sub(1);
                            progress.status = status;
                        }
                    });
                    self.metrics.relayed("server_to_client", n);
                    if walked.is_err() || self.client.write_all(chunk).await.is_err() {
                        break;
                    }
                    if self.mode == PoolMode::Transaction && progress.idle()
                        && let Some(checkout) = held.take()
                    {
                        self.pool.release(checkout, true);
                        self.point_cancel_at(None);
                    }
                }
                _ = self.draining.changed(), if !draining => {
                    draining = true;
                }
            }
        }
        self.point_cancel_at(None);
        if let Some(checkout) = held.take() {
            self.give_back(checkout, &progress).await;
        }
    }

    /// Passes a client chunk on, taking a server connection first if none is held.
    async fn pass_client_chunk(
        &mut self,
        chunk: &[u8],
        progress: &mut Progress,
        held: &mut Option<Checkout>,
    ) -> Result<(), PgError> {
        let mut terminated = false;
        let mut named_statement = false;
        progress
            .client
            .walk(chunk, |seen| match seen {
                Seen::Message(b'Q' | b'S') => {
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
        if named_statement && self.mode == PoolMode::Transaction {
            // Its next transaction may run on a server where another client's statement has
            // the same name: refused before anything of this chunk reaches a server.
            return Err(PgError::new(
                "0A000",
                "named prepared statements are not supported with pool_mode transaction: use                  unnamed ones (e.g. psycopg prepare_threshold=None, JDBC prepareThreshold=0,                  tokio-postgres query_typed) or pool_mode session",
            ));
        }
        // `Terminate` is the client's last message: it is not passed on (the server
        // connection outlives the client). Should it not end this chunk whole, the server
        // may have seen part of it: its connection is not reused.
        let chunk = if terminated {
            progress.terminated = true;
            match chunk.strip_suffix(&TERMINATE) {
                Some(before) => before,
                None => {
                    progress.unsynced = true;
                    return Ok(());
                }
            }
        } else {
            chunk
        };
        if chunk.is_empty() {
            return Ok(());
        }
        if held.is_none() {
            let checkout = self.pool.acquire(self.wait).await?;
            self.point_cancel_at(Some(&checkout));
            *held = Some(checkout);
        }
        let Some(checkout) = held.as_mut() else {
            return Ok(());
        };
        self.metrics.relayed("client_to_server", chunk.len());
        if let Err(error) = checkout.server.stream.write_all(chunk).await {
            if let Some(checkout) = held.take() {
                self.pool.discard(checkout);
            }
            return Err(PgError::new(
                "08006",
                format!("the server connection failed: {error}"),
            ));
        }
        Ok(())
    }

    /// Records which server a cancel request should reach.
    fn point_cancel_at(&self, checkout: Option<&Checkout>) {
        *self.cancel.lock() = checkout.map(|c| (c.server.address.clone(), c.server.key));
    }

    /// Returns the connection after the client left: reset and kept if it was between
    /// transactions, else closed.
    async fn give_back(&self, mut checkout: Checkout, progress: &Progress) {
        let clean = progress.idle() && reset(&mut checkout).await;
        if clean {
            self.pool.release(checkout, true);
        } else {
            self.pool.discard(checkout);
        }
    }
}

/// Reads from the held server, or waits forever when none is held.
async fn read_server(held: &mut Option<Checkout>, buf: &mut [u8]) -> std::io::Result<usize> {
    match held {
        Some(checkout) => checkout.server.stream.read(buf).await,
        None => std::future::pending().await,
    }
}

/// `DISCARD ALL`, so the next client finds a fresh session; false if it did not complete.
async fn reset(checkout: &mut Checkout) -> bool {
    let mut out = BytesMut::new();
    if frontend::query("DISCARD ALL", &mut out).is_err() {
        return false;
    }
    let stream = &mut checkout.server.stream;
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
