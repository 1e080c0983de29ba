//! A TCP forwarder on loopback that a test can cut, as a network partition does: from the cut
//! on, nothing passes in either direction and new connections hang, but no connection is
//! closed (so a client notices only by waiting). It also counts the round trips its clients
//! wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A forwarder from a loopback port to `127.0.0.1:<upstream>`; stops when dropped.
pub struct Partition {
    /// The port clients connect to.
    pub port: u16,
    cut: Arc<AtomicBool>,
    round_trips: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<Partition> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicUsize::new(0));
        let (flag, counter) = (cut.clone(), round_trips.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let turns = Turns {
                    round_trips: counter.clone(),
                    server_spoke_last: Arc::default(),
                };
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await; // held open, never served
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, flag.clone(), turns.client()),
                        forward(server_read, client_write, flag, turns.server()),
                    );
                });
            }
        });
        Ok(Partition {
            port,
            cut,
            round_trips,
            task,
        })
    }

    /// Cuts the link: from now on nothing passes.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// How many times so far a client spoke again after its server had: at most the round
    /// trips clients waited for (a client that sends its next request before the answer to
    /// the last one, pipelining it, waits for none; it is counted only if the forwarder
    /// happened to pass some of that answer on first).
    pub fn round_trips(&self) -> usize {
        self.round_trips.load(Ordering::SeqCst)
    }
}

/// Who spoke last on one forwarded connection, for [`Partition::round_trips`].
#[derive(Clone)]
struct Turns {
    round_trips: Arc<AtomicUsize>,
    server_spoke_last: Arc<AtomicBool>,
}

impl Turns {
    /// The client's side: bytes from it after the server's count a round trip.
    fn client(&self) -> Side {
        Side {
            turns: self.clone(),
            is_server: false,
        }
    }

    /// The server's side.
    fn server(&self) -> Side {
        Side {
            turns: self.clone(),
            is_server: true,
        }
    }
}

/// One direction of a forwarded connection, named by who sends on it.
struct Side {
    turns: Turns,
    is_server: bool,
}

impl Side {
    /// Notes that this side sent something (before it is passed on, so the other side cannot
    /// answer first).
    fn spoke(&self) {
        let Turns {
            round_trips,
            server_spoke_last,
        } = &self.turns;
        if self.is_server {
            server_spoke_last.store(true, Ordering::SeqCst);
        } else if server_spoke_last.swap(false, Ordering::SeqCst) {
            round_trips.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` (sent by `side`) to `to` until either closes, or forever holds both once
/// `cut` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    side: Side,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if n > 0 {
            side.spoke();
        }
        if n == 0 || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
