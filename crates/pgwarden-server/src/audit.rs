//! The audit log: events go through one appender task that chains them into the state store
//! in batches (one transaction, one disk sync for everything queued meanwhile), then copies
//! them to an optional JSON-lines file. A caller waits until its event is durable, or only
//! until it is written when a durable write of its own follows, or not at all.

use crate::metrics::Metrics;
use pgwarden_core::{AuditEvent, AuditRecord, ChainKey, Outcome, chain};
use pgwarden_store::{Durability, Store};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most events appended in one transaction.
const MAX_BATCH: usize = 512;
/// Longest a caller waits for its record to be stored (the state database may be cut off:
/// the request must still get its answer); the record is appended when it can be.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

tokio::task_local! {
    /// The id of the HTTP request being handled, for its response and its audit records.
    pub static REQUEST_ID: String;
}

/// The current HTTP request's id, or a fresh one outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

/// An event waiting to be appended, how durably, and who hears when it was.
struct Queued {
    event: AuditEvent,
    durability: Durability,
    stored: oneshot::Sender<bool>,
}

/// Appends audit events; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::UnboundedSender<Queued>,
}

impl AuditLog {
    /// Starts the appender over `store`, chaining records with `key` when there is one (a
    /// seal key) and copying them to `file` when set.
    pub fn start(
        store: Arc<dyn Store>,
        file: Option<PathBuf>,
        metrics: Arc<Metrics>,
        key: Option<ChainKey>,
    ) -> AuditLog {
        let (queue, receiver) = mpsc::unbounded_channel();
        let sink = Sink {
            store,
            file,
            metrics,
            key,
        };
        tokio::spawn(append_batches(sink, receiver));
        AuditLog { queue }
    }

    /// Records `event` (its request id filled in from the current request) and waits until it
    /// is durable, for at most [`MAX_WAIT`]; false when it was not stored (yet).
    pub async fn record(&self, event: AuditEvent) -> bool {
        self.wait(event, Durability::Synced).await
    }

    /// Records `event` and waits until it is written, not synced: for a caller whose own
    /// durable write to the state store follows, which makes this record durable too.
    pub async fn record_before(&self, event: AuditEvent) -> bool {
        self.wait(event, Durability::Relaxed).await
    }

    async fn wait(&self, event: AuditEvent, durability: Durability) -> bool {
        let Some(stored) = self.enqueue(event, durability) else {
            return false;
        };
        match tokio::time::timeout(MAX_WAIT, stored).await {
            Ok(stored) => stored.unwrap_or(false),
            Err(_) => {
                tracing::warn!(
                    "an audit record is not stored after {MAX_WAIT:?}; answering without waiting for it"
                );
                false
            }
        }
    }

    /// Records `event` without waiting for it to be stored. It is written without a disk sync
    /// of its own: it survives a crash of pgwarden at once, a power cut from the next durable
    /// write on.
    pub fn submit(&self, event: AuditEvent) {
        self.enqueue(event, Durability::Relaxed);
    }

    fn enqueue(
        &self,
        mut event: AuditEvent,
        durability: Durability,
    ) -> Option<oneshot::Receiver<bool>> {
        if event.request_id.is_empty() {
            event.request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        }
        let (done, stored) = oneshot::channel();
        let queued = Queued {
            event,
            durability,
            stored: done,
        };
        if self.queue.send(queued).is_err() {
            tracing::error!("audit log is closed; an event was not recorded");
            return None;
        }
        Some(stored)
    }
}

/// The appender: takes whatever is queued (up to [`MAX_BATCH`]), appends it in one go (synced
/// if any of it must be) and tells each waiter how it went.
async fn append_batches(sink: Sink, mut receiver: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let durability = if batch.iter().any(|q| q.durability == Durability::Synced) {
            Durability::Synced
        } else {
            Durability::Relaxed
        };
        let (events, waiters): (Vec<AuditEvent>, Vec<oneshot::Sender<bool>>) =
            batch.drain(..).map(|q| (q.event, q.stored)).unzip();
        if sink.append(&events, durability).await.is_ok() {
            for waiter in waiters {
                let _ = waiter.send(true);
            }
            continue;
        }
        // One bad event must not take the others down with it: append them one by one.
        for (event, waiter) in events.into_iter().zip(waiters) {
            let stored = match sink.append(std::slice::from_ref(&event), durability).await {
                Ok(()) => true,
                Err(error) => {
                    sink.metrics.audit_failures.inc();
                    tracing::error!(error = %chain(&error), action = %event.action, "an audit record could not be stored");
                    false
                }
            };
            let _ = waiter.send(stored);
        }
    }
}

/// Where records go: the store's chain, and the file copy.
struct Sink {
    store: Arc<dyn Store>,
    file: Option<PathBuf>,
    metrics: Arc<Metrics>,
    /// Keys the chain (from the seal key).
    key: Option<ChainKey>,
}

impl Sink {
    /// Chains `events` into the store, then copies the records to the file when set.
    async fn append(
        &self,
        events: &[AuditEvent],
        durability: Durability,
    ) -> Result<(), pgwarden_store::StoreError> {
        let records = self
            .store
            .append_audit(events, durability, self.key.as_ref())
            .await?;
        if let Some(path) = &self.file {
            copy_to_file(path, &records, &self.metrics);
        }
        Ok(())
    }
}

/// The record of a policy reload: how many grants are in force, or why the file was rejected.
pub fn policy_reload_event(
    file: &str,
    outcome: Result<usize, &crate::policy::PolicyError>,
) -> AuditEvent {
    match outcome {
        Ok(grants) => AuditEvent::now("pgwarden", "policy.reload", file, Outcome::Success)
            .with_detail(format!("{grants} grant(s) in force")),
        Err(reason) => AuditEvent::now("pgwarden", "policy.reload", file, Outcome::Failure)
            .with_detail(format!(
                "rejected, the previous policy stays in force: {reason}"
            )),
    }
}

/// Appends `records` to the JSON-lines file at `path` (created 0600 if missing).
fn copy_to_file(path: &std::path::Path, records: &[AuditRecord], metrics: &Metrics) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut lines = Vec::new();
    for record in records {
        if serde_json::to_writer(&mut lines, record).is_ok() {
            lines.push(b'\n');
        }
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(&lines));
    if let Err(error) = written {
        metrics.audit_failures.inc_by(records.len() as u64);
        tracing::error!(path = %path.display(), %error, "audit file sink failed; the records are in the state store");
    }
}
