//! Turns for API requests: at most a fixed number are worked on at once, counting those whose
//! client hung up (their work goes on to the end, on a task of its own).

use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The turns, shared by every request.
#[derive(Debug)]
pub struct Turns {
    permits: std::sync::Arc<Semaphore>,
    total: usize,
}

impl Turns {
    /// `limit` turns (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(limit: usize) -> Turns {
        let total = limit.min(Semaphore::MAX_PERMITS);
        Turns {
            permits: std::sync::Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits for a turn, held until the returned permit is dropped; `None` once closed.
    pub async fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
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

    #[tokio::test]
    async fn closing_refuses_waiters_and_all_back_waits_for_held_turns() {
        let turns = std::sync::Arc::new(Turns::new(1));
        let held = turns.take().await.expect("a turn");
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        turns.close();
        assert!(!waiting.await.unwrap(), "a waiter gets no turn once closed");
        assert!(!turns.all_back(Duration::from_millis(50)).await);
        drop(held);
        assert!(turns.all_back(Duration::from_millis(50)).await);
    }

    #[test]
    fn a_limit_beyond_what_a_semaphore_holds_is_capped() {
        assert_eq!(Turns::new(usize::MAX).total, Semaphore::MAX_PERMITS);
    }
}
