//! A pooled connection held through a transaction that pgwarden opened itself.

use deadpool_postgres::Object;

/// A pooled connection that may be inside a transaction: it goes back to the pool only
/// through [`Held::release`], once the transaction is over. Dropped before (its future
/// cancelled mid-transaction, or mid-query), it is closed instead, rather than handed to the
/// next caller inside it (an aborted transaction would fail that caller's statements): the
/// server ends the session and its transaction once it notices, at its next read or write (a
/// statement under way, such as one waiting for a lock, runs to its end first).
pub(crate) struct Held(Option<Object>);

impl Held {
    /// Holds `client` until [`Held::release`].
    pub(crate) fn new(client: Object) -> Held {
        Held(Some(client))
    }

    /// The connection, to go back to the pool when dropped: its transaction is over.
    pub(crate) fn release(mut self) -> Object {
        self.0
            .take()
            .unwrap_or_else(|| unreachable!("a held connection is released once"))
    }
}

impl std::ops::Deref for Held {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        match &self.0 {
            Some(client) => client,
            None => unreachable!("a released connection is not used"),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // Out of the pool and closed (its connection task stops).
            drop(Object::take(client));
        }
    }
}
