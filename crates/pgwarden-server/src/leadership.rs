//! Which replica reaps: leadership is a row in the shared state database, held for
//! [`LEAD_TTL`] by the database's clock and renewed every third of it. A replica counts itself
//! leader only until two thirds of the TTL after its last confirmed renewal started, so it
//! stops reaping before another replica can take over, even when the state database is cut off.

use parking_lot::Mutex;
use pgwarden_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a renewal keeps the lead, judged by the state database's clock.
pub const LEAD_TTL: Duration = Duration::from_secs(6);
/// How long after a renewal started this replica still counts itself leader.
const LEAD_TRUSTED: Duration = Duration::from_secs(4);
/// How often the lead is renewed (or sought).
const LEAD_RENEWAL: Duration = Duration::from_secs(2);

/// This replica's view of the leadership.
pub struct Leadership {
    /// This replica's name in the leader row.
    holder: String,
    /// The only process on an embedded store: always leads.
    sole: bool,
    /// Until when this replica may act as leader (local monotonic clock).
    until: Mutex<Option<Instant>>,
}

impl Leadership {
    /// A replica named `holder` that does not lead yet.
    pub fn new(holder: String) -> Leadership {
        Leadership {
            holder,
            sole: false,
            until: Mutex::new(None),
        }
    }

    /// A replica that always leads (an embedded store has one process).
    pub fn sole() -> Leadership {
        Leadership {
            holder: "sole".into(),
            sole: true,
            until: Mutex::new(None),
        }
    }

    /// Whether the state is shared with other replicas (so there is a lead to take).
    pub fn is_shared(&self) -> bool {
        !self.sole
    }

    /// Whether this replica may reap now.
    pub fn is_leader(&self) -> bool {
        self.sole
            || self
                .until
                .lock()
                .is_some_and(|until| Instant::now() < until)
    }

    /// This replica's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lead once; true when this replica leads now.
    pub async fn try_lead(&self, store: &dyn Store) -> bool {
        let started = Instant::now();
        match store.lead(&self.holder, LEAD_TTL).await {
            Ok(true) => {
                let was = self.is_leader();
                *self.until.lock() = started.checked_add(LEAD_TRUSTED);
                if !was {
                    tracing::info!(holder = %self.holder, "this replica now leads (reaps expired leases)");
                }
                true
            }
            outcome => {
                if self.is_leader() {
                    match outcome {
                        Err(error) => {
                            tracing::warn!(holder = %self.holder, %error, "cannot renew the lead; stopping reaping")
                        }
                        _ => {
                            tracing::warn!(holder = %self.holder, "another replica leads; stopping reaping")
                        }
                    }
                }
                *self.until.lock() = None;
                false
            }
        }
    }

    /// Renews the lead every [`LEAD_RENEWAL`] until `resign` turns true (the server sends it
    /// once its reaper has stopped); then gives it up, so another replica takes over at once.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut resign: watch::Receiver<bool>) {
        loop {
            self.try_lead(store.as_ref()).await;
            tokio::select! {
                _ = tokio::time::sleep(LEAD_RENEWAL) => {}
                _ = resign.changed() => break,
            }
        }
        if self.is_leader() {
            *self.until.lock() = None;
            if let Err(error) = store.resign(&self.holder).await {
                tracing::warn!(holder = %self.holder, %error, "cannot give up the lead; another replica takes it when it lapses");
            }
        }
    }
}
