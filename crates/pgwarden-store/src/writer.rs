//! The SQLite writer: a thread commits the writes that arrive while it is busy as one
//! transaction (group commit). Concurrent durable writes then share one disk sync instead of
//! queueing for one each, and no async worker ever waits for the disk. A write that need not
//! be synced runs on the caller's thread when the connection is free: it only appends to the
//! log, and two thread hand-offs cost more than that on a busy machine. Such a write never
//! overtakes one queued for the thread, nor waits for another process holding the file's
//! write lock (a `sqlite3` shell): the thread waits for that instead. The thread alone
//! checkpoints the log (once it holds [`CHECKPOINT_PAGES`]), and makes the first commit
//! after, which starts the log over: both sync.

use crate::StoreError;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

/// How long a statement waits for another process holding the file's lock before it fails
/// (`SQLITE_BUSY`); set on every connection of the state.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most writes committed together.
const MAX_BATCH: usize = 256;

/// Prepared statements the writer's connection keeps.
const STATEMENT_CACHE: usize = 64;

/// Pages in the log from which the writer thread checkpoints it (SQLite's own automatic
/// checkpoint, which could run in a write on the caller's thread, is replaced): SQLite's
/// default.
const CHECKPOINT_PAGES: u32 = 1000;

/// One write: `run` executes it on the writer's connection inside the batch's transaction
/// and says whether it succeeded (else its changes are rolled back, the batch's others kept);
/// `reply` sends its outcome to the caller once the batch has committed, or failed to.
struct Job {
    durable: bool,
    run: Box<dyn FnOnce(&Connection) -> bool + Send>,
    reply: Reply,
}

/// How a write's caller hears the outcome of its batch's commit.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The write connection and its thread. Dropping it waits for the thread to finish its
/// writes, then closes the connection, which checkpoints the log (so the files are complete
/// when the store is gone).
pub(crate) struct Writer {
    connection: Arc<Mutex<WriteConnection>>,
    /// Jobs sent to the thread and not yet committed by it.
    queued: Arc<AtomicUsize>,
    /// Pages in the log after the last commit (from SQLite's WAL hook).
    log_pages: Arc<AtomicU32>,
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
    pub(crate) fn start(mut conn: Connection) -> std::io::Result<Writer> {
        // Room for the transaction control and every write's statements.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // SQLite's automatic checkpoint is a WAL hook: this one replaces it.
        let log_pages = Arc::new(AtomicU32::new(0));
        let counted = log_pages.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            counted.store(u32::try_from(pages).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }))
        .map_err(std::io::Error::other)?;
        let connection = Arc::new(Mutex::new(WriteConnection {
            conn,
            sync: SyncMode::Unknown,
        }));
        let queued = Arc::new(AtomicUsize::new(0));
        let (jobs, queue) = mpsc::channel();
        let thread = {
            let (connection, queued, log_pages) =
                (connection.clone(), queued.clone(), log_pages.clone());
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || serve(&connection, &queue, &queued, &log_pages))?
        };
        Ok(Writer {
            connection,
            queued,
            log_pages,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the writer's next transaction and returns its result once that has
    /// committed: synced to disk first if `durable` (`synchronous = FULL`), else written to
    /// the log only (`NORMAL`: it survives a crash of pgwarden, and reaches the disk with the
    /// next durable write or checkpoint). The write happens even if the caller stops waiting.
    /// A write not `durable` runs at once on this thread when the connection is free, no
    /// write waits for the thread, and no checkpoint is due.
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
            self.queued.fetch_add(1, Ordering::SeqCst);
            let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
            if !matches!(sent, Some(Ok(()))) {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::Closed);
            }
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits `job` on this thread if it need not be synced, the connection is free, no
    /// job waits for the thread (which commits in order) and no checkpoint is due; else hands
    /// it back, for the thread.
    fn try_here(&self, job: Job) -> Option<Job> {
        if job.durable {
            return Some(job);
        }
        let Some(mut connection) = self.connection.try_lock() else {
            return Some(job);
        };
        // Read under the lock: the thread counts its jobs off while it holds it.
        if self.queued.load(Ordering::SeqCst) > 0 || checkpoint_due(&self.log_pages) {
            return Some(job);
        }
        if connection.begin(false, false).is_err() {
            // Another process holds the write lock (or the start failed): the thread waits.
            return Some(job);
        }
        let committed = connection.run_batch(vec![job], Ok(()));
        drop(connection);
        committed.answer();
        None
    }
}

/// The writer thread's name.
const THREAD_NAME: &str = "pgwarden-state-writer";

/// Whether the log holds enough pages to checkpoint it.
fn checkpoint_due(log_pages: &AtomicU32) -> bool {
    log_pages.load(Ordering::Relaxed) >= CHECKPOINT_PAGES
}

/// The writer thread: takes every job waiting (at least one) and commits them together,
/// after checkpointing the log when that is due: its commit then starts the log over, which
/// syncs too. (When a reader kept the checkpoint from finishing, the log is not started
/// over; it stays due, and the next batch tries again. A failed checkpoint is an I/O error,
/// which the writes report too.)
fn serve(
    connection: &Mutex<WriteConnection>,
    queue: &mpsc::Receiver<Job>,
    queued: &AtomicUsize,
    log_pages: &AtomicU32,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut connection = connection.lock();
        if checkpoint_due(log_pages) {
            // `PASSIVE`: as far as no reader needs the log, waiting for no one.
            let _ = connection
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        let jobs = batch.len();
        let committed = connection.commit(batch);
        queued.fetch_sub(jobs, Ordering::SeqCst);
        drop(connection);
        committed.answer();
    }
}

/// The write connection, and its `synchronous` setting as the writer last set it.
struct WriteConnection {
    conn: Connection,
    sync: SyncMode,
}

impl WriteConnection {
    /// Runs `batch` in one transaction, each job under a savepoint of its own; returns the
    /// commit's outcome for each job's caller.
    fn commit(&mut self, batch: Vec<Job>) -> Committed {
        let durable = batch.iter().any(|job| job.durable);
        let begun = self.begin(durable, true);
        self.run_batch(batch, begun)
    }

    /// Starts a write transaction, synced at its commit if `durable`. Unless told to `wait`,
    /// fails at once (`SQLITE_BUSY`) instead of waiting up to [`BUSY_TIMEOUT`] for another
    /// process holding the file's write lock.
    fn begin(&mut self, durable: bool, wait: bool) -> rusqlite::Result<()> {
        let conn = &self.conn;
        if !conn.is_autocommit() {
            // A previous batch's ROLLBACK failed (an I/O error): start clean.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let wanted = if durable {
            SyncMode::Full
        } else {
            SyncMode::Normal
        };
        set_sync(conn, &mut self.sync, wanted)?;
        if wait {
            return run(conn, "BEGIN IMMEDIATE");
        }
        conn.busy_timeout(std::time::Duration::ZERO)?;
        let begun = run(conn, "BEGIN IMMEDIATE");
        conn.busy_timeout(BUSY_TIMEOUT)?;
        begun
    }

    /// Runs `batch` in the transaction that `begun` started (or failed to), each job under a
    /// savepoint of its own, and commits it; returns the outcome for each job's caller.
    fn run_batch(&mut self, batch: Vec<Job>, begun: rusqlite::Result<()>) -> Committed {
        let conn = &self.conn;
        let mut outcome = begun;
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
        Committed { replies, outcome }
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

/// A batch's commit, done, with the answers its callers are still to hear: sent once the
/// connection is let go of, so a caller's next write may run on its own thread at once.
struct Committed {
    replies: Vec<Reply>,
    outcome: Result<(), String>,
}

impl Committed {
    /// Tells each caller how the commit went.
    fn answer(self) {
        for reply in self.replies {
            reply(self.outcome.clone().map_err(StoreError::Commit));
        }
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
    use super::{BUSY_TIMEOUT, CHECKPOINT_PAGES, THREAD_NAME, Writer};
    use rusqlite::Connection;
    use std::sync::atomic::Ordering;

    /// A writer on a fresh database in WAL mode (kept while the directory lives).
    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER, pad BLOB)")
            .unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
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

    /// Inserts `x` with `pad` bytes beside it; says whether that ran on the writer's thread.
    async fn insert(writer: &Writer, durable: bool, x: i64, pad: usize) -> bool {
        writer
            .write(durable, move |c| {
                c.execute("INSERT INTO t VALUES (?1, ?2)", (x, vec![0u8; pad]))?;
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
    async fn relaxed_writes_run_here_unless_the_connection_is_busy_durable_ones_on_the_thread() {
        let (_dir, writer) = writer();
        assert!(!insert(&writer, false, 1, 0).await);
        assert!(insert(&writer, true, 2, 0).await);
        assert!(!insert(&writer, false, 3, 0).await);
        // While the thread holds the connection, a relaxed write waits for it there.
        let busy = writer.connection.lock();
        let queued = insert(&writer, false, 4, 0);
        tokio::pin!(queued);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), &mut queued);
        assert!(waited.await.is_err(), "it waits for the connection");
        drop(busy);
        assert!(queued.await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn another_process_holding_the_write_lock_stalls_no_async_worker() {
        let (dir, writer) = writer();
        let other = Connection::open(dir.path().join("state.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        // This runtime's only worker must keep running tasks while the write waits.
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            other.execute_batch("COMMIT").unwrap();
        });
        assert!(insert(&writer, false, 1, 0).await, "left to the thread");
        holder.join().unwrap();
        ticker.abort();
        let ticked = ticks.load(Ordering::SeqCst);
        // About 50 when it is free; none or one when the write holds it (a loaded machine
        // ticks less often, hence the margin).
        assert!(ticked >= 5, "the worker ticked {ticked} times in 500 ms");
        // With the lock free again, relaxed writes run here.
        assert!(!insert(&writer, false, 2, 0).await);
    }

    #[tokio::test]
    async fn a_relaxed_write_never_overtakes_one_waiting_for_the_thread() {
        let (_dir, writer) = writer();
        // As when a job is sent and the thread has not taken the connection yet (the mutex
        // hands it over fairly when a waiter has waited long, so a test cannot make the
        // thread late on purpose).
        writer.queued.fetch_add(1, Ordering::SeqCst);
        assert!(insert(&writer, false, 1, 0).await, "queued behind it");
        writer.queued.fetch_sub(1, Ordering::SeqCst);
        assert!(!insert(&writer, false, 2, 0).await, "none waiting");
    }

    #[tokio::test]
    async fn the_thread_checkpoints_a_full_log_and_starts_it_over() {
        let (dir, writer) = writer();
        // Rows of about a page each: relaxed, on this thread, until the log is full.
        let mut n = 0;
        while writer.log_pages.load(Ordering::Relaxed) < CHECKPOINT_PAGES {
            assert!(!insert(&writer, false, n, 3000).await, "write {n}");
            n += 1;
            assert!(
                n < 2 * i64::from(CHECKPOINT_PAGES),
                "SQLite checkpointed by itself"
            );
        }
        let log = dir.path().join("state.db-wal");
        let full = std::fs::metadata(&log).unwrap().len();
        // Due now: the next write goes to the thread, which checkpoints, then starts the log
        // over with that write.
        assert!(insert(&writer, false, n, 3000).await);
        let pages = writer.log_pages.load(Ordering::Relaxed);
        assert!(pages < 10, "the log was started over: {pages} pages");
        assert!(
            !insert(&writer, false, n + 1, 3000).await,
            "not due any more"
        );
        for x in 0..n {
            insert(&writer, false, x, 3000).await;
        }
        let after = std::fs::metadata(&log).unwrap().len();
        assert!(
            after < full * 3 / 2,
            "the log grew from {full} to {after} bytes"
        );
    }
}
