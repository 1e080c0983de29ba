//! Turns for API requests: at most a fixed number are worked on at once, counting those whose
//! client hung up (their work goes on to the end, on a task of its own).

use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The turns, shared by every request.
#[derive(Debug)]
pub struct Turns {
    permits: std::sync::Arc<Semaphore>,
    total: usize,
    /// Requests holding a turn.
    in_use: Gauge,
    /// Requests waiting for one.
    waiting: Gauge,
}

/// A request's turn, given back when dropped.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
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
    /// `limit` turns (at most [`Semaphore::MAX_PERMITS`]), counted in the gauges `in_use`
    /// and `waiting`.
    pub fn new(limit: usize, in_use: Gauge, waiting: Gauge) -> Turns {
        let total = limit.min(Semaphore::MAX_PERMITS);
        Turns {
            permits: std::sync::Arc::new(Semaphore::new(total)),
            total,
            in_use,
            waiting,
        }
    }

    /// Waits for a turn, held until the returned [`Turn`] is dropped; `None` once closed.
    pub async fn take(&self) -> Option<Turn> {
        let waiting = Counted::enter(&self.waiting);
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        drop(waiting);
        Some(Turn {
            _permit: permit,
            _counted: Counted::enter(&self.in_use),
        })
    }

    /// Gives no more turns: requests waiting for one, and later ones, get none.
    pub fn close(&self) {
        self.permits.close();
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

    fn turns(limit: usize) -> Turns {
        Turns::new(limit, Gauge::default(), Gauge::default())
    }

    #[tokio::test]
    async fn closing_refuses_waiters_and_all_back_waits_for_held_turns() {
        let turns = std::sync::Arc::new(turns(1));
        let held = turns.take().await.expect("a turn");
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((turns.in_use.get(), turns.waiting.get()), (1, 1));
        turns.close();
        assert!(!waiting.await.unwrap(), "a waiter gets no turn once closed");
        assert!(!turns.all_back(Duration::from_millis(50)).await);
        assert_eq!((turns.in_use.get(), turns.waiting.get()), (1, 0));
        drop(held);
        assert!(turns.all_back(Duration::from_millis(50)).await);
        assert_eq!(turns.in_use.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let turns = turns(1);
        let _held = turns.take().await.expect("a turn");
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take()).await;
        assert!(gave_up.is_err());
        assert_eq!((turns.in_use.get(), turns.waiting.get()), (1, 0));
    }

    #[test]
    fn a_limit_beyond_what_a_semaphore_holds_is_capped() {
        assert_eq!(turns(usize::MAX).total, Semaphore::MAX_PERMITS);
    }
}
