//! A TCP forwarder on loopback that a test can cut, as a network partition does: from the cut
//! on, nothing passes in either direction and new connections hang, but no connection is
//! closed (so a client notices only by waiting). It can also close every connection at once,
//! as a restarted pooler or load balancer does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A forwarder from a loopback port to `127.0.0.1:<upstream>`; stops when dropped.
pub struct Partition {
    /// The port clients connect to.
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// The connections forwarded so far.
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<Partition> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (flag, opened) = (cut.clone(), links.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let link = tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await; // held open, never served
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, flag.clone()),
                        forward(server_read, client_write, flag),
                    );
                });
                opened
                    .lock()
                    .expect("the list of links")
                    .push(link.abort_handle());
            }
        });
        Ok(Partition {
            port,
            cut,
            links,
            task,
        })
    }

    /// Closes both ends of every connection forwarded so far (bytes on their way may be
    /// lost); new connections are served.
    pub fn sever(&self) {
        for link in self.links.lock().expect("the list of links").drain(..) {
            link.abort();
        }
    }

    /// Cuts the link: from now on nothing passes.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes, or forever holds both once `cut` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if n == 0 || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
