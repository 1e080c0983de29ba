//! Turns for API requests: at most a fixed number are worked on at once, counting those whose
//! client hung up (their work goes on to the end, on a task of its own). Requests for one
//! database's credentials hold at most a share of the turns, so that a database that is slow
//! or unreachable, whose requests keep their turns until its connection attempts give up,
//! cannot hold up the requests for the others.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The turns, shared by every request.
#[derive(Debug)]
pub struct Turns {
    permits: Arc<Semaphore>,
    total: usize,
    /// The most turns the requests for one database hold at once.
    share: usize,
    /// Each database's share, by its name (`<mount>/<connection>`), made on first use and kept
    /// (only the names of connections that had a role, a handful).
    shares: parking_lot::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Requests holding a turn.
    in_use: Gauge,
    /// Requests waiting for one, or for their database's share.
    waiting: Gauge,
}

/// A request's turn (and its database's share, if it has one), given back when dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
    _counted: Counted,
}

/// One unit of a gauge, from its creation until it is dropped (also when the future that
/// holds it is dropped: a client that hangs up while waiting).
#[derive(Debug)]
struct Counted(Gauge);

impl Counted {
    fn enter(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Turns {
    /// `limit` turns (at most [`Semaphore::MAX_PERMITS`]), of which the requests for one
    /// database hold at most `share` (at most `limit`), counted in the gauges `in_use` and
    /// `waiting`.
    pub fn new(limit: usize, share: usize, in_use: Gauge, waiting: Gauge) -> Turns {
        let total = limit.min(Semaphore::MAX_PERMITS);
        Turns {
            permits: Arc::new(Semaphore::new(total)),
            total,
            share: share.clamp(1, total.max(1)),
            shares: parking_lot::Mutex::new(HashMap::new()),
            in_use,
            waiting,
        }
    }

    /// Waits for a turn, held until the returned [`Turn`] is dropped; `None` once closed. A
    /// request for the credentials of `database` (`<mount>/<connection>`) first waits for
    /// that database's share, holding no turn meanwhile.
    pub async fn take(&self, database: Option<&str>) -> Option<Turn> {
        let waiting = Counted::enter(&self.waiting);
        let share = match database {
            Some(database) => Some(self.share_of(database)?.acquire_owned().await.ok()?),
            None => None,
        };
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        drop(waiting);
        Some(Turn {
            _permit: permit,
            _share: share,
            _counted: Counted::enter(&self.in_use),
        })
    }

    /// `database`'s share; `None` once closed.
    fn share_of(&self, database: &str) -> Option<Arc<Semaphore>> {
        let mut shares = self.shares.lock();
        // Read under the lock that `close` takes after closing the turns: a share made now
        // is either seen closed here or closed there.
        if self.permits.is_closed() {
            return None;
        }
        let share = shares
            .entry(database.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)));
        Some(share.clone())
    }

    /// Gives no more turns: requests waiting for one (or for a share), and later ones, get
    /// none.
    pub fn close(&self) {
        self.permits.close();
        for share in self.shares.lock().values() {
            share.close();
        }
    }

    /// Waits, up to `limit`, until every turn given out is back (the work of requests whose
    /// client hung up has ended too); false if some are still out.
    pub async fn all_back(&self, limit: Duration) -> bool {
        let back = async {
            while self.permits.available_permits() < self.total {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(limit, back).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(limit: usize, share: usize) -> Arc<Turns> {
        Arc::new(Turns::new(limit, share, Gauge::default(), Gauge::default()))
    }

    /// Takes a turn for `database` on a task of its own, which holds it until `release`.
    fn taker(
        turns: &Arc<Turns>,
        database: Option<&'static str>,
    ) -> (
        tokio::task::JoinHandle<bool>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (release, released) = tokio::sync::oneshot::channel();
        let turns = turns.clone();
        let task = tokio::spawn(async move {
            let Some(turn) = turns.take(database).await else {
                return false;
            };
            let _ = released.await;
            drop(turn);
            true
        });
        (task, release)
    }

    /// Lets every spawned task run until it waits (the test runtime has one thread).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn counts(turns: &Turns) -> (i64, i64) {
        (turns.in_use.get(), turns.waiting.get())
    }

    #[tokio::test]
    async fn closing_refuses_waiters_and_all_back_waits_for_held_turns() {
        let turns = turns(1, 1);
        let held = turns.take(None).await.expect("a turn");
        let (waiting, _) = taker(&turns, None);
        let (waiting_for_share, _) = taker(&turns, Some("database/appdb"));
        settle().await;
        assert_eq!(counts(&turns), (1, 2));
        turns.close();
        assert!(!waiting.await.unwrap(), "a waiter gets no turn once closed");
        assert!(!waiting_for_share.await.unwrap());
        assert!(turns.take(Some("database/other")).await.is_none());
        assert!(!turns.all_back(Duration::from_millis(50)).await);
        assert_eq!(counts(&turns), (1, 0));
        drop(held);
        assert!(turns.all_back(Duration::from_millis(50)).await);
        assert_eq!(turns.in_use.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let turns = turns(1, 1);
        let _held = turns.take(None).await.expect("a turn");
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take(None)).await;
        assert!(gave_up.is_err());
        assert_eq!(counts(&turns), (1, 0));
    }

    #[tokio::test]
    async fn one_database_holds_at_most_its_share_and_its_waiters_hold_no_turn() {
        let turns = turns(3, 2);
        let (first, release_first) = taker(&turns, Some("database/slow"));
        let (_second, _release_second) = taker(&turns, Some("database/slow"));
        let (third, _release_third) = taker(&turns, Some("database/slow"));
        settle().await;
        assert_eq!(counts(&turns), (2, 1), "the third waits for the share");
        // The last turn is free for another database, and for requests of none.
        let other = turns.take(Some("database/healthy")).await.expect("a turn");
        assert_eq!(counts(&turns), (3, 1));
        drop(other);
        let unshared = turns.take(None).await.expect("a turn");
        drop(unshared);
        // A share given back goes to the database's next request.
        release_first.send(()).unwrap();
        assert!(first.await.unwrap());
        settle().await;
        assert_eq!(counts(&turns), (2, 0));
        assert!(!third.is_finished());
    }

    #[tokio::test]
    async fn a_request_holding_its_share_while_waiting_for_a_turn_gives_both_back_when_it_goes() {
        let turns = turns(1, 1);
        let held = turns.take(None).await.expect("a turn");
        let (waiting, _) = taker(&turns, Some("database/appdb"));
        settle().await;
        assert_eq!(counts(&turns), (1, 1));
        // The client hangs up: its share is free again.
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(counts(&turns), (1, 0));
        drop(held);
        let again =
            tokio::time::timeout(Duration::from_secs(1), turns.take(Some("database/appdb")));
        assert!(again.await.expect("the share is back").is_some());
        // Shutdown refuses a request that holds its share and waits for a turn.
        let _held = turns.take(None).await.expect("a turn");
        let (waiting, _) = taker(&turns, Some("database/appdb"));
        settle().await;
        turns.close();
        assert!(!waiting.await.unwrap());
        assert_eq!(counts(&turns), (1, 0));
    }

    #[test]
    fn limits_are_capped_to_what_a_semaphore_holds_and_a_share_to_the_turns() {
        let capped = turns(usize::MAX, usize::MAX);
        assert_eq!(
            (capped.total, capped.share),
            (Semaphore::MAX_PERMITS, Semaphore::MAX_PERMITS)
        );
        assert_eq!(turns(4, 32).share, 4);
    }
}
