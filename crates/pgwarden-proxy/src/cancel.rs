//! Cancel requests: each session gets a random key of its own; a cancel request naming it is
//! passed on to the server running that session's query, with the server's key. A session
//! keeps its server connection until the cancel requests sent to it have been delivered, so
//! that a late one cannot stop the next client's query there.

use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Longest wait for a server to take a cancel request (it closes the connection once it has
/// signalled the query's process).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A server's address and cancel key.
type ServerKey = (Arc<str>, (i32, i32));

/// Where a session's cancel requests go, and how many are under way.
#[derive(Default)]
pub struct CancelTarget {
    state: Mutex<(Option<ServerKey>, usize)>,
    delivered: Notify,
}

impl CancelTarget {
    /// Points cancel requests at the server with this address and key.
    pub fn point(&self, server: ServerKey) {
        self.state.lock().0 = Some(server);
    }

    /// Stops pointing at a server once no cancel request to it is under way (waiting for
    /// those that are).
    pub async fn unpoint(&self) {
        if self.unpoint_if_quiet() {
            return;
        }
        loop {
            let delivered = self.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if self.unpoint_if_quiet() {
                return;
            }
            delivered.await;
        }
    }

    /// Stops pointing at a server if no cancel request to it is under way.
    fn unpoint_if_quiet(&self) -> bool {
        let mut state = self.state.lock();
        if state.1 == 0 {
            state.0 = None;
        }
        state.1 == 0
    }

    /// The server to cancel, counted as under way until the returned guard drops.
    fn begin(self: &Arc<Self>) -> Option<(ServerKey, Delivering)> {
        let mut state = self.state.lock();
        let server = state.0.clone()?;
        state.1 += 1;
        Some((server, Delivering(self.clone())))
    }
}

/// A cancel request under way.
struct Delivering(Arc<CancelTarget>);

impl Drop for Delivering {
    fn drop(&mut self) {
        self.0.state.lock().1 -= 1;
        self.0.delivered.notify_waiters();
    }
}

/// The sessions' cancel keys.
#[derive(Default)]
pub struct Cancels {
    sessions: Mutex<HashMap<i32, (i32, Arc<CancelTarget>)>>,
}

/// A session's registration; dropping it forgets the key.
pub struct Registered<'a> {
    cancels: &'a Cancels,
    /// The key the client is given: process id and secret.
    pub key: (i32, i32),
    /// Where its cancel requests go.
    pub target: Arc<CancelTarget>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.cancels.sessions.lock().remove(&self.key.0);
    }
}

impl Cancels {
    /// A fresh key (its process id unused by any other session) for a new session.
    pub fn register(&self) -> Registered<'_> {
        let target = Arc::new(CancelTarget::default());
        let mut sessions = self.sessions.lock();
        loop {
            let pid = rand::random::<i32>() & i32::MAX;
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(pid) {
                let secret = rand::random::<i32>();
                slot.insert((secret, target.clone()));
                return Registered {
                    cancels: self,
                    key: (pid, secret),
                    target,
                };
            }
        }
    }

    /// Passes a cancel request for key (`pid`, `secret`) on and waits until the server has
    /// taken it; an unknown key does nothing, as in PostgreSQL.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let sessions = self.sessions.lock();
            sessions
                .get(&pid)
                .filter(|(known, _)| bool::from(known.to_be_bytes().ct_eq(&secret.to_be_bytes())))
                .and_then(|(_, target)| target.begin())
        };
        let Some((server, _delivering)) = target else {
            return;
        };
        deliver(server).await;
    }
}

/// Asks the server at `address` to cancel the query of the process with `key`, and waits
/// (a little) until it has taken the request.
pub async fn deliver((address, (pid, secret)): ServerKey) {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut out);
    let deliver = async {
        let mut stream = tokio::net::TcpStream::connect(&*address).await?;
        stream.write_all(&out).await?;
        // The server closes the connection once the query's process is signalled.
        stream.read(&mut [0; 1]).await
    };
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, deliver).await;
}
