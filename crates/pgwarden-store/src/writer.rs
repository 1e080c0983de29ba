//! The SQLite writer: one thread owns the write connection and commits the writes that arrive
//! while it is busy as one transaction (group commit). Concurrent durable writes then share one
//! disk sync instead of queueing for one each, and no async worker ever waits for the disk.

use crate::StoreError;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// Prepared statements the writer's connection keeps.
const STATEMENT_CACHE: usize = 64;

/// One write: `run` executes it on the writer's connection inside the batch's transaction
/// and says whether it succeeded (else its changes are rolled back, the batch's others kept);
/// `reply` sends its outcome to the caller once the batch has committed, or failed to.
struct Job {
    durable: bool,
    run: Box<dyn FnOnce(&Connection) -> bool + Send>,
    reply: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// The handle to the writer thread. Dropping it waits for the thread to finish its writes
/// and close the connection (so the files are complete when the store is gone).
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Writer> {
        // Room for the transaction control and every write's statements.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pgwarden-state-writer".into())
            .spawn(move || serve(conn, &queue))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the writer's next transaction and returns its result once that has
    /// committed: synced to disk first if `durable` (`synchronous = FULL`), else written to
    /// the log only (`NORMAL`: it survives a crash of pgwarden, and reaches the disk with the
    /// next durable write or checkpoint). The write happens even if the caller stops waiting.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slot = Arc::new(Mutex::new(None));
        let filled = slot.clone();
        let run = Box::new(move |conn: &Connection| {
            let outcome = f(conn);
            let succeeded = outcome.is_ok();
            *filled.lock() = Some(outcome);
            succeeded
        });
        let reply = Box::new(move |committed: Result<(), StoreError>| {
            let outcome = slot.lock().take().unwrap_or_else(|| {
                Err(StoreError::Commit("the write stopped unexpectedly".into()))
            });
            let _ = tx.send(committed.and(outcome));
        });
        self.jobs
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Job {
                durable,
                run,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer thread: takes every job waiting (at least one) and commits them together.
fn serve(conn: Connection, queue: &mpsc::Receiver<Job>) {
    let mut sync = SyncMode::Unknown;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&conn, &mut sync, batch);
    }
}

/// The connection's `synchronous` setting, as last set by the writer.
#[derive(Clone, Copy, PartialEq)]
enum SyncMode {
    /// Not set yet, or setting it failed.
    Unknown,
    /// `FULL`: a commit is synced to disk.
    Full,
    /// `NORMAL`: a commit is written to the log only.
    Normal,
}

/// Sets `synchronous` to `wanted` unless it is that already (a pragma is parsed and run
/// anew each time; most batches keep the previous one's).
fn set_sync(conn: &Connection, sync: &mut SyncMode, wanted: SyncMode) -> rusqlite::Result<()> {
    if *sync != wanted {
        *sync = SyncMode::Unknown;
        let value = if wanted == SyncMode::Full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", value)?;
        *sync = wanted;
    }
    Ok(())
}

/// Runs `statement` (transaction control, without parameters), prepared once per connection.
fn run(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(drop)
}

/// Runs `batch` in one transaction, each job under a savepoint of its own, and replies to
/// each with the commit's outcome.
fn commit(conn: &Connection, sync: &mut SyncMode, batch: Vec<Job>) {
    let durable = batch.iter().any(|job| job.durable);
    if !conn.is_autocommit() {
        // A previous batch's ROLLBACK failed (an I/O error): start clean.
        let _ = conn.execute_batch("ROLLBACK");
    }
    let wanted = if durable {
        SyncMode::Full
    } else {
        SyncMode::Normal
    };
    let mut outcome = set_sync(conn, sync, wanted).and_then(|()| run(conn, "BEGIN IMMEDIATE"));
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if outcome.is_ok() {
            outcome = run_in_savepoint(conn, job.run);
        }
        replies.push(job.reply);
    }
    let outcome = outcome
        .and_then(|()| run(conn, "COMMIT"))
        .map_err(|e| e.to_string());
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(outcome.clone().map_err(StoreError::Commit));
    }
}

/// Runs one job under a savepoint, released if it succeeded, rolled back if it failed or
/// panicked (its caller then hears that it stopped unexpectedly; the batch goes on).
fn run_in_savepoint(
    conn: &Connection,
    job: Box<dyn FnOnce(&Connection) -> bool + Send>,
) -> rusqlite::Result<()> {
    run(conn, "SAVEPOINT job")?;
    let kept = std::panic::catch_unwind(AssertUnwindSafe(|| job(conn))).unwrap_or(false);
    if !kept {
        run(conn, "ROLLBACK TO job")?;
    }
    run(conn, "RELEASE job")
}

#[cfg(test)]
mod tests {
    use super::Writer;
    use rusqlite::Connection;

    /// `PRAGMA synchronous` as a job of `writer` sees it (1: NORMAL, 2: FULL).
    async fn sync_seen(writer: &Writer, durable: bool) -> i64 {
        writer
            .write(durable, |c| {
                Ok(c.query_row("PRAGMA synchronous", [], |row| row.get(0))?)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_batch_runs_with_the_sync_its_writes_need() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        let writer = Writer::start(conn).unwrap();
        // Relaxed, durable, durable again (kept), then relaxed again.
        for (durable, expected) in [(false, 1), (true, 2), (true, 2), (false, 1)] {
            assert_eq!(
                sync_seen(&writer, durable).await,
                expected,
                "durable: {durable}"
            );
        }
    }
}
