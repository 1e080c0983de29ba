//! The orphan sweep: finds users in the targets that are shaped like pgwarden's but that no
//! lease names (a crash that lost state, a restore from an old backup, a bug), reports them in
//! the log, `/metrics` and `sys/orphans`, and drops them once their grace period has passed.
//! More often, it ends the sessions whose role no longer exists.
//!
//! Listing the users before reading the leases keeps the sweep from racing issuance: a lease
//! row is written before its user is created and deleted only after the user is dropped, so a
//! user listed while its lease exists is still named by a lease read afterwards. A revocation
//! that finishes between the two reads leaves a user listed that no lease names, but that is
//! gone: users found unnamed are listed again, and only those still there count.

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::config::OrphanConfig;
use crate::metrics::Metrics;
use parking_lot::Mutex;
use pgwarden_core::{AuditEvent, Outcome, Ttl, chain};
use pgwarden_engine::EngineError;
use pgwarden_store::Store;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::watch;

/// A user no lease names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The user's name.
    pub username: String,
    /// The connection (`mount/name`) it was found through.
    pub connection: String,
    /// When the sweep first saw it.
    pub first_seen: OffsetDateTime,
    /// When it will be dropped; absent when dropping is off.
    pub drop_at: Option<OffsetDateTime>,
}

/// The sweep and what it last found.
pub struct Orphans {
    catalog: Arc<Catalog>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    config: OrphanConfig,
    found: Mutex<BTreeMap<String, Orphan>>,
    /// The clusters (see [`pgwarden_engine::Target::cluster`]) whose sessions pass is under way.
    sessions_in_flight: Arc<Mutex<HashSet<String>>>,
    audit: AuditLog,
}

impl Orphans {
    /// A sweep over `catalog`'s targets against `store`'s leases; every drop is recorded in
    /// `audit`.
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        config: OrphanConfig,
        audit: AuditLog,
    ) -> Orphans {
        Orphans {
            catalog,
            store,
            metrics,
            config,
            found: Mutex::default(),
            sessions_in_flight: Arc::default(),
            audit,
        }
    }

    /// The orphans found by the last sweep, by name.
    pub fn list(&self) -> Vec<Orphan> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, Orphan>> {
        self.found.lock()
    }

    /// Sweeps users every `interval`, and ends the sessions of dropped roles every
    /// `sessions_interval`, until `shutdown` turns true; neither waits for the other.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        tokio::join!(
            every(self.config.interval, shutdown.clone(), || self.sweep()),
            every(self.config.sessions_interval, shutdown, || {
                self.end_sessions_of_dropped_users()
            }),
        );
    }

    /// Ends, on every cluster, the sessions left running by roles that no longer exist (a
    /// revocation misses those still starting up when its drop commits; a drop by hand ends
    /// none), saying so in the log. One connection per cluster and administrator serves (its
    /// read covers every database), each on a task of its own, for at most
    /// [`SESSIONS_PASS_LIMIT`]; this waits for them for at most one sessions period. A
    /// cluster whose previous pass is still under way (its database slow to answer) is
    /// skipped: it delays neither the others nor the next pass, and never gets a second pass
    /// queued behind the first.
    pub async fn end_sessions_of_dropped_users(&self) {
        let mut passes = Vec::new();
        for (connection, cluster, target) in one_per_key(self.catalog.targets(), |t| t.cluster()) {
            let Some(in_flight) = InFlight::enter(&self.sessions_in_flight, cluster) else {
                continue;
            };
            passes.push(tokio::spawn(async move {
                let ended = tokio::time::timeout(
                    SESSIONS_PASS_LIMIT,
                    target.end_sessions_of_dropped_users(),
                )
                .await;
                log_sessions_pass(&connection, ended);
                drop(in_flight);
            }));
        }
        let period = period_of(self.config.sessions_interval);
        let _ = tokio::time::timeout(period, futures::future::join_all(passes)).await;
    }

    /// One pass: list generated users, subtract those leases name, list again to keep those
    /// still there, report and drop.
    pub async fn sweep(&self) {
        let mut unnamed = self.generated_users().await;
        let named: HashSet<String> = match self.store.all_leases().await {
            Ok(leases) => leases.into_iter().map(|lease| lease.username).collect(),
            Err(error) => {
                tracing::error!(error = %chain(&error), "orphan sweep cannot read leases; skipping");
                return;
            }
        };
        unnamed.retain(|user, _| !named.contains(user));
        if !unnamed.is_empty() {
            let still_there = self.generated_users().await;
            unnamed.retain(|user, _| still_there.contains_key(user));
        }
        let now = OffsetDateTime::now_utc();
        let due = self.record(unnamed, now);
        for orphan in due {
            self.drop_orphan(&orphan).await;
        }
        self.metrics.orphan_users.set(self.lock().len() as i64);
    }

    /// Every generated user in the targets (name → the first connection listing it); a target
    /// that cannot be listed is logged and left out.
    async fn generated_users(&self) -> BTreeMap<String, String> {
        let mut listed = BTreeMap::new();
        for (connection, target) in self.catalog.targets() {
            match target.generated_users().await {
                Ok(users) => {
                    for user in users {
                        listed.entry(user).or_insert_with(|| connection.clone());
                    }
                }
                Err(error) => {
                    tracing::warn!(%connection, error = %chain(&error), "orphan sweep cannot list users");
                }
            }
        }
        listed
    }

    /// Updates what was found from this pass's `unnamed` users (name → connection); returns
    /// the orphans whose grace period is over.
    fn record(&self, unnamed: BTreeMap<String, String>, now: OffsetDateTime) -> Vec<Orphan> {
        let mut found = self.lock();
        found.retain(|user, _| unnamed.contains_key(user));
        for (username, connection) in unnamed {
            if found.contains_key(&username) {
                continue;
            }
            let drop_at = self.config.drop.then(|| self.config.grace.after(now));
            tracing::warn!(%username, %connection, grace_s = self.config.grace.as_secs(), drop = self.config.drop,
                "found a user shaped like pgwarden's that no lease names");
            found.insert(
                username.clone(),
                Orphan {
                    username,
                    connection,
                    first_seen: now,
                    drop_at,
                },
            );
        }
        found
            .values()
            .filter(|o| o.drop_at.is_some_and(|at| at <= now))
            .cloned()
            .collect()
    }

    async fn drop_orphan(&self, orphan: &Orphan) {
        let Some((_, target)) = self
            .catalog
            .targets()
            .into_iter()
            .find(|(name, _)| *name == orphan.connection)
        else {
            return; // The connection was deleted; the next sweep finds the user through another.
        };
        match target.drop_orphan(&orphan.username).await {
            Ok(()) => {
                self.lock().remove(&orphan.username);
                self.metrics.orphan_users_dropped.inc();
                tracing::warn!(username = %orphan.username, connection = %orphan.connection, "dropped an untracked user");
                let event = AuditEvent::now(
                    "pgwarden",
                    "user.drop",
                    &format!("{}/{}", orphan.connection, orphan.username),
                    Outcome::Success,
                )
                .with_detail("orphan: no lease named it");
                self.audit.record(event).await;
            }
            Err(error) => {
                tracing::error!(username = %orphan.username, connection = %orphan.connection, error = %chain(&error), "dropping an untracked user failed; retrying next sweep");
            }
        }
    }
}

/// Shortest period of either pass, whatever the configuration says.
const MIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The period a pass configured with `interval` runs at (at least [`MIN_PERIOD`]).
fn period_of(interval: Ttl) -> std::time::Duration {
    interval.as_duration().max(MIN_PERIOD)
}

/// The first (by name) of `items` for each `key`, sorted by name, with its key.
fn one_per_key<T>(
    mut items: Vec<(String, T)>,
    key: impl Fn(&T) -> String,
) -> Vec<(String, String, T)> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter_map(|(name, item)| {
            let key = key(&item);
            seen.insert(key.clone()).then_some((name, key, item))
        })
        .collect()
}

/// A key's place in a set of passes under way, given up when dropped (also when its task
/// panics or is aborted, so the key is never locked out of later passes).
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Enters `key` into `set`, or `None` when it is there already.
    fn enter(set: &Arc<Mutex<HashSet<String>>>, key: String) -> Option<InFlight> {
        set.lock().insert(key.clone()).then(|| InFlight {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// Longest one connection's sessions pass may take (a connection may take up to the pool's
/// 10 s wait); then it is abandoned, and the next pass tries again.
const SESSIONS_PASS_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Says in the log how the sessions pass on `connection` went (`Err`: it took too long).
fn log_sessions_pass(
    connection: &str,
    ended: Result<Result<usize, EngineError>, tokio::time::error::Elapsed>,
) {
    match ended {
        Ok(Ok(0)) => {}
        Ok(Ok(ended)) => {
            tracing::warn!(%connection, ended, "ended sessions whose role had been dropped")
        }
        Ok(Err(error)) if error.is_permission_denied() => {
            tracing::warn!(%connection, error = %chain(&error), "cannot end the sessions of dropped roles: grant the administrator pg_signal_backend")
        }
        Ok(Err(error)) => {
            tracing::warn!(%connection, error = %chain(&error), "cannot end the sessions of dropped roles")
        }
        Err(_) => {
            tracing::warn!(%connection, limit_s = SESSIONS_PASS_LIMIT.as_secs(), "cannot end the sessions of dropped roles: no answer in time; trying again next pass")
        }
    }
}

/// Runs `pass` every `period` (see [`period_of`]; a pass that overruns delays the next)
/// until `shutdown` turns true, which abandons a pass under way.
async fn every<F: std::future::Future<Output = ()>>(
    period: Ttl,
    mut shutdown: watch::Receiver<bool>,
    mut pass: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval(period_of(period));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = async {
                ticks.tick().await;
                pass().await;
            } => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_serves_each_cluster() {
        let connections = vec![
            ("db/b".to_string(), "admin@h:5432"),
            ("db/c".to_string(), "other@h:5432"),
            ("db/a".to_string(), "admin@h:5432"),
            ("db/d".to_string(), "admin@h2:5432"),
        ];
        let kept: Vec<(String, String)> = one_per_key(connections, |k| k.to_string())
            .into_iter()
            .map(|(name, key, _)| (name, key))
            .collect();
        let expected = [
            ("db/a", "admin@h:5432"),
            ("db/c", "other@h:5432"),
            ("db/d", "admin@h2:5432"),
        ]
        .map(|(name, key)| (name.to_string(), key.to_string()));
        assert_eq!(kept, expected);
    }

    #[tokio::test]
    async fn a_pass_that_panics_leaves_its_cluster_to_the_next() {
        let set = Arc::new(Mutex::new(HashSet::new()));
        let first = InFlight::enter(&set, "c".into()).expect("not under way yet");
        assert!(InFlight::enter(&set, "c".into()).is_none(), "under way");
        let pass = tokio::spawn(async move {
            let _in_flight = first;
            panic!("the pass failed");
        });
        assert!(pass.await.is_err());
        assert!(InFlight::enter(&set, "c".into()).is_some(), "given up");
    }
}
