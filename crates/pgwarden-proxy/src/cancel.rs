//! Cancel requests: each session gets a random key of its own; a cancel request naming it is
//! passed on to the server running that session's query, with the server's key.

use crate::relay::CancelTarget;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::HashMap;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

/// The sessions' cancel keys.
#[derive(Default)]
pub struct Cancels {
    sessions: Mutex<HashMap<i32, (i32, CancelTarget)>>,
}

/// A session's registration; dropping it forgets the key.
pub struct Registered<'a> {
    cancels: &'a Cancels,
    /// The key the client is given: process id and secret.
    pub key: (i32, i32),
    /// Where its cancel requests go.
    pub target: CancelTarget,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.cancels.sessions.lock().remove(&self.key.0);
    }
}

impl Cancels {
    /// A fresh key (its process id unused by any other session) for a new session.
    pub fn register(&self) -> Registered<'_> {
        let target = CancelTarget::default();
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

    /// Passes a cancel request for key (`pid`, `secret`) on; an unknown key does nothing, as
    /// in PostgreSQL.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let sessions = self.sessions.lock();
            sessions
                .get(&pid)
                .filter(|(known, _)| bool::from(known.to_be_bytes().ct_eq(&secret.to_be_bytes())))
                .and_then(|(_, target)| target.lock().clone())
        };
        let Some((address, (server_pid, server_secret))) = target else {
            return;
        };
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(server_pid, server_secret, &mut out);
        if let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await {
            let _ = stream.write_all(&out).await;
        }
    }
}
