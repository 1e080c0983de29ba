//! The reaper's ordered schedule: lease ids by the time something must happen to them
//! (expiry, or the next revocation retry). Finding what is due costs O(log n), not a scan.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use time::OffsetDateTime;
use tokio::sync::Notify;

/// Lease ids ordered by due time, with a wake-up for the reaper when the earliest changes.
#[derive(Default)]
pub struct Schedule {
    inner: Mutex<Inner>,
    wake: Notify,
}

#[derive(Default)]
struct Inner {
    by_time: BTreeSet<(OffsetDateTime, String)>,
    by_id: HashMap<String, OffsetDateTime>,
}

impl Schedule {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Sets (or moves) `id` to be due at `at`.
    pub fn set(&self, id: &str, at: OffsetDateTime) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_id.insert(id.to_string(), at) {
            inner.by_time.remove(&(old, id.to_string()));
        }
        inner.by_time.insert((at, id.to_string()));
        let earliest = inner.by_time.first().map(|(t, _)| *t) == Some(at);
        drop(inner);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Sets `id` to be due at `at` unless it is scheduled already.
    pub fn set_if_absent(&self, id: &str, at: OffsetDateTime) {
        if !self.lock().by_id.contains_key(id) {
            self.set(id, at);
        }
    }

    /// Sets `id` to be due at `at` unless it is due at or before `at` already.
    pub fn set_no_later(&self, id: &str, at: OffsetDateTime) {
        let due = self.lock().by_id.get(id).copied();
        if due.is_none_or(|due| due > at) {
            self.set(id, at);
        }
    }

    /// Takes `id` off the schedule.
    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(at) = inner.by_id.remove(id) {
            inner.by_time.remove(&(at, id.to_string()));
        }
    }

    /// When the earliest entry is due.
    pub fn next_due(&self) -> Option<OffsetDateTime> {
        self.lock().by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns every id due at or before `now`, earliest first.
    pub fn take_due(&self, now: OffsetDateTime) -> Vec<String> {
        let mut inner = self.lock();
        let mut due = Vec::new();
        while let Some((at, id)) = inner.by_time.pop_first() {
            if at > now {
                inner.by_time.insert((at, id));
                break;
            }
            inner.by_id.remove(&id);
            due.push(id);
        }
        due
    }

    /// How many ids are scheduled.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until an entry earlier than any seen before is added.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

    #[test]
    fn takes_due_entries_in_order_and_moves_rescheduled_ones() {
        let s = Schedule::default();
        s.set("c", T + Duration::from_secs(30));
        s.set("a", T + Duration::from_secs(10));
        s.set("b", T + Duration::from_secs(20));
        s.set("a", T + Duration::from_secs(25)); // renewed
        assert_eq!(s.next_due(), Some(T + Duration::from_secs(20)));
        assert_eq!(s.take_due(T + Duration::from_secs(26)), vec!["b", "a"]);
        assert_eq!(s.len(), 1);
        s.remove("c");
        assert!(s.is_empty());
        assert_eq!(
            s.take_due(T + Duration::from_secs(100)),
            Vec::<String>::new()
        );
    }
}
