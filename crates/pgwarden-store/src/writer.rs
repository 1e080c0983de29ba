//! The SQLite writer: a thread commits the writes that arrive while it is busy as one
//! transaction (group commit). Concurrent durable writes then share one disk sync instead of
//! queueing for one each, and no async worker ever waits for the disk. A write that need not
//! be synced runs on the caller's thread when the connection is free: it only appends to the
//! log, and two thread hand-offs cost more than that on a busy machine. The thread alone
//! checkpoints the log (every [`CHECKPOINT_EVERY`] commits), since that syncs.

use crate::StoreError;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// Prepared statements the writer's connection keeps.
const STATEMENT_CACHE: usize = 64;

/// Commits between two checkpoints of the log by the writer thread (SQLite's automatic one,
/// which could run in a write on the caller's thread, is off). A commit adds a few pages to
/// the log; SQLite's own default is to checkpoint at 1,000 pages.
const CHECKPOINT_EVERY: u32 = 250;

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
    connection: Arc<Mutex<WriteConnection>>,
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
    /// Starts the writer thread on `conn`, a connection in WAL mode.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Writer> {
        // Room for the transaction control and every write's statements.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(std::io::Error::other)?;
        let connection = Arc::new(Mutex::new(WriteConnection {
            conn,
            sync: SyncMode::Unknown,
            commits_since_checkpoint: 0,
        }));
        let (jobs, queue) = mpsc::channel();
        let served = connection.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || serve(&served, &queue))?;
        Ok(Writer {
            connection,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the writer's next transaction and returns its result once that has
    /// committed: synced to disk first if `durable` (`synchronous = FULL`), else written to
    /// the log only (`NORMAL`: it survives a crash of pgwarden, and reaches the disk with the
    /// next durable write or checkpoint). The write happens even if the caller stops waiting.
    /// A write not `durable` runs at once on this thread when the connection is free and no
    /// checkpoint is due.
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
        let job = Job {
            durable,
            run,
            reply,
        };
        if let Some(job) = self.try_here(job) {
            self.jobs
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(job)
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits `job` on this thread if it need not be synced, the connection is free and no
    /// checkpoint is due; else hands it back, for the writer thread.
    fn try_here(&self, job: Job) -> Option<Job> {
        if job.durable {
            return Some(job);
        }
        let Some(mut connection) = self.connection.try_lock() else {
            return Some(job);
        };
        if connection.commits_since_checkpoint >= CHECKPOINT_EVERY {
            return Some(job);
        }
        connection.commit(vec![job]);
        None
    }
}

/// The writer thread's name.
const THREAD_NAME: &str = "pgwarden-state-writer";

/// The writer thread: takes every job waiting (at least one), commits them together, and
/// checkpoints the log when that is due.
fn serve(connection: &Mutex<WriteConnection>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut connection = connection.lock();
        connection.commit(batch);
        if connection.commits_since_checkpoint >= CHECKPOINT_EVERY {
            connection.checkpoint();
        }
    }
}

/// The write connection, and what the writer knows of its state.
struct WriteConnection {
    conn: Connection,
    /// Its `synchronous` setting.
    sync: SyncMode,
    /// Commits since the log was last checkpointed.
    commits_since_checkpoint: u32,
}

impl WriteConnection {
    /// Runs `batch` in one transaction, each job under a savepoint of its own, and replies to
    /// each with the commit's outcome.
    fn commit(&mut self, batch: Vec<Job>) {
        commit(&self.conn, &mut self.sync, batch);
        self.commits_since_checkpoint = self.commits_since_checkpoint.saturating_add(1);
    }

    /// Copies what the log holds into the database file, as far as no reader needs it
    /// (`PASSIVE`: waits for no one), so the log is reused rather than growing. After a
    /// failure (an I/O error, which the writes report too) it stays due, so every write goes
    /// through the thread, and the next batch tries again.
    fn checkpoint(&mut self) {
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if done.is_ok() {
            self.commits_since_checkpoint = 0;
        }
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
    use super::{CHECKPOINT_EVERY, THREAD_NAME, Writer};
    use rusqlite::Connection;

    /// A writer on a fresh database in WAL mode (kept while the directory lives).
    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        (dir, Writer::start(conn).unwrap())
    }

    /// `PRAGMA synchronous` as a job of `writer` sees it (1: NORMAL, 2: FULL).
    async fn sync_seen(writer: &Writer, durable: bool) -> i64 {
        writer
            .write(durable, |c| {
                Ok(c.query_row("PRAGMA synchronous", [], |row| row.get(0))?)
            })
            .await
            .unwrap()
    }

    /// Whether a write (a row inserted) ran on the writer's thread.
    async fn on_writer_thread(writer: &Writer, durable: bool) -> bool {
        writer
            .write(durable, |c| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(std::thread::current().name() == Some(THREAD_NAME))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_batch_runs_with_the_sync_its_writes_need() {
        let (_dir, writer) = writer();
        // Relaxed, durable, durable again (kept), then relaxed again.
        for (durable, expected) in [(false, 1), (true, 2), (true, 2), (false, 1)] {
            assert_eq!(
                sync_seen(&writer, durable).await,
                expected,
                "durable: {durable}"
            );
        }
    }

    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "keeps the connection busy on purpose"
    )]
    async fn relaxed_writes_run_here_when_the_connection_is_free_durable_ones_on_the_thread() {
        let (_dir, writer) = writer();
        assert!(!on_writer_thread(&writer, false).await);
        assert!(on_writer_thread(&writer, true).await);
        assert!(!on_writer_thread(&writer, false).await);
        // While the thread holds the connection, a relaxed write waits for it there.
        let busy = writer.connection.lock();
        let queued = on_writer_thread(&writer, false);
        tokio::pin!(queued);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), &mut queued);
        assert!(waited.await.is_err(), "it waits for the connection");
        drop(busy);
        assert!(queued.await);
    }

    #[tokio::test]
    async fn only_the_thread_checkpoints_the_log_and_a_due_checkpoint_sends_writes_there() {
        let (dir, writer) = writer();
        for n in 0..CHECKPOINT_EVERY {
            assert!(!on_writer_thread(&writer, false).await, "write {n}");
        }
        let log = dir.path().join("state.db-wal");
        let grown = std::fs::metadata(&log).unwrap().len();
        assert!(grown > 0, "nothing checkpointed the log yet");
        // Due now: the next write goes to the thread, which checkpoints after it.
        assert!(on_writer_thread(&writer, false).await);
        drop(writer.connection.lock()); // the thread answers before it checkpoints
        assert!(!on_writer_thread(&writer, false).await, "not due any more");
        // Checkpointed, the log is written again from its start instead of growing (by as much
        // again as before, without the checkpoint).
        for _ in 2..CHECKPOINT_EVERY {
            on_writer_thread(&writer, false).await;
        }
        let after = std::fs::metadata(&log).unwrap().len();
        assert!(
            after < grown * 3 / 2,
            "the log grew from {grown} to {after} bytes"
        );
    }
}
