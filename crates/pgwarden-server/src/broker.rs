//! The lease manager: issues users as leases, renews and revokes them, and runs the reaper that
//! drops every user when its lease ends, retrying failed revocations with backoff.

use crate::audit::{AuditLog, REQUEST_ID};
use crate::catalog::Catalog;
use crate::error::ServerError;
use crate::leadership::Leadership;
use crate::metrics::{Metrics, RevokeLabels};
use crate::schedule::Schedule;
use parking_lot::Mutex;
use pgwarden_core::names::generate_username;
use pgwarden_core::wire::DbCredential;
use pgwarden_core::{
    AuditEvent, Lease, LeaseState, Outcome, Owner, RevokeReason, RoleKind, Ttl, chain,
};
use pgwarden_engine::PasswordPool;
use pgwarden_store::{Durability, Store};
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};

/// Revocations the reaper runs at once.
const REAPER_CONCURRENCY: usize = 16;
/// Revocations at once for one request that revokes several leases (by prefix, or a
/// token's): half a database's pool, so one such request leaves room for the rest.
const REVOKE_ALL_CONCURRENCY: usize = 8;
/// Passwords kept hashed ahead of need.
const PASSWORDS_AHEAD: usize = 8;
/// How often a replica on shared state looks in the store for leases due (issued anywhere).
const SHARED_POLL: Duration = Duration::from_secs(1);
/// How long a pending lease on shared state is left to the replica issuing it before the
/// leader rolls it back (its issuer died): an issuance finishes long before.
const SHARED_PENDING_GRACE: Duration = Duration::from_secs(60);
/// Longest wait between revocation retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A freshly issued credential.
pub struct Issued {
    /// The lease as stored.
    pub lease: Lease,
    /// The user's password; returned once, never stored.
    pub password: SecretString,
    /// Where the database is.
    pub endpoint: pgwarden_engine::Endpoint,
}

impl Issued {
    /// The login the API hands out, and the lease it belongs to.
    pub fn into_credential(self) -> (Lease, DbCredential) {
        let credential = DbCredential {
            username: self.lease.username.clone(),
            password: self.password,
            host: self.endpoint.host,
            port: self.endpoint.port,
            database: self.endpoint.database,
            hosts: self.endpoint.hosts,
        };
        (self.lease, credential)
    }
}

/// The result of a renewal.
pub struct Renewed {
    /// The lease after renewal.
    pub lease: Lease,
    /// Seconds left.
    pub ttl: Ttl,
    /// A warning when the increment was capped by the max TTL.
    pub warning: Option<String>,
}

/// Why a lease is being revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its TTL ran out.
    Expired,
    /// Someone asked.
    Requested,
}

/// The lease manager shared by the API and the reaper.
pub struct Broker {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    schedule: Schedule,
    metrics: Arc<Metrics>,
    /// Per-lease locks so renewal and revocation of one lease never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Leases whose last revocation attempt failed.
    failing: Mutex<HashSet<String>>,
    /// Leases the reaper is revoking right now.
    reaping: Mutex<HashSet<String>>,
    /// Whether this replica reaps now.
    leadership: Arc<Leadership>,
    /// New users' passwords, hashed ahead of need.
    passwords: PasswordPool,
    /// Where every dropped user (and failed drop) is recorded.
    audit: AuditLog,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The refusal of an issuance whose token was revoked while it ran.
fn token_revoked_meanwhile() -> ServerError {
    ServerError::Forbidden(
        "the token was revoked while the credential was being issued; nothing was issued".into(),
    )
}

fn not_found(id: &str) -> ServerError {
    ServerError::BadRequest(format!(
        "lease {id:?} not found (it may have expired or been revoked)"
    ))
}

/// Time from now until `at` (zero if it has passed), to the nanosecond.
fn time_until(at: OffsetDateTime) -> Duration {
    let nanos = at
        .unix_timestamp_nanos()
        .saturating_sub(now().unix_timestamp_nanos());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// `prefix` as a folder: itself if empty or ending in `/`, else with a `/` added.
fn as_folder(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// Runs `work` on a task of its own, so it finishes even when the caller is dropped (an HTTP
/// client that hangs up), and waits for its outcome. The task keeps the caller's request id,
/// so the audit records it leaves link to the request that caused them.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ServerError>> + Send + 'static,
) -> Result<T, ServerError> {
    let task = match REQUEST_ID.try_with(Clone::clone) {
        Ok(request_id) => tokio::spawn(REQUEST_ID.scope(request_id, work)),
        Err(_) => tokio::spawn(work),
    };
    task.await.unwrap_or_else(|e| {
        Err(ServerError::Internal(format!(
            "lease operation failed: {e}"
        )))
    })
}

/// Why a lease in state `from` is revoked when `why` asks at `at`: the reason a revocation
/// already under way began with, a rollback while it is being issued; `None` when the reaper
/// finds it renewed (its expiry `expires_at` still ahead).
fn revoke_reason(
    from: LeaseState,
    why: Why,
    expires_at: OffsetDateTime,
    at: OffsetDateTime,
) -> Option<RevokeReason> {
    Some(match (from, why) {
        (LeaseState::Revoking(reason), _) => reason,
        (LeaseState::Pending, _) => RevokeReason::Rollback,
        (LeaseState::Active, Why::Requested) => RevokeReason::Requested,
        (LeaseState::Active, Why::Expired) if expires_at > at => return None,
        (LeaseState::Active, Why::Expired) => RevokeReason::Expired,
    })
}

/// Delay before retry number `attempts` (1, 2, 4 … seconds, at most [`MAX_BACKOFF`]).
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

impl Broker {
    /// A broker over `store` and `catalog`; call [`Broker::recover`] before serving.
    /// `leadership` says when it may reap.
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        leadership: Arc<Leadership>,
        audit: AuditLog,
    ) -> Broker {
        Broker {
            audit,
            leadership,
            store,
            catalog,
            schedule: Schedule::default(),
            metrics,
            locks: Mutex::default(),
            failing: Mutex::default(),
            reaping: Mutex::default(),
            passwords: PasswordPool::start(PASSWORDS_AHEAD),
        }
    }

    /// Whether this replica reaps now.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// The catalog of mounts, connections and roles.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock();
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn update_gauges(&self) {
        self.metrics.leases.set(self.schedule.len() as i64);
        let failing = self.failing.lock().len();
        self.metrics.leases_failing_revocation.set(failing as i64);
    }

    /// Puts every stored lease back on the schedule: unfinished creations are rolled back at
    /// once (on shared state: once their issuer has had time to finish), failing revocations
    /// are retried at once, the rest are revoked at expiry.
    pub async fn recover(&self) -> Result<usize, ServerError> {
        let leases = self.store.all_leases().await?;
        let mut failing = self.failing.lock();
        for lease in &leases {
            let at = match lease.state {
                LeaseState::Pending => lease
                    .issued_at
                    .checked_add(self.pending_grace().try_into().unwrap_or_default())
                    .unwrap_or(lease.issued_at),
                LeaseState::Revoking(_) => now(),
                LeaseState::Active => lease.expires_at,
            };
            if lease.revoke_attempts > 0 {
                failing.insert(lease.id.clone());
            }
            self.schedule.set(&lease.id, at);
        }
        drop(failing);
        self.update_gauges();
        Ok(leases.len())
    }

    /// Creates a user for `role_name` in `mount` on behalf of `owner`; `cap` (from policy)
    /// lowers the role's max TTL. `started`, the request's audit record, is stored (naming the
    /// lease and its user) with the lease's record, before the user exists. Runs to completion
    /// even if the caller goes away.
    pub async fn issue(
        self: &Arc<Self>,
        mount: &str,
        role_name: &str,
        owner: Owner,
        cap: Option<Ttl>,
        started: AuditEvent,
    ) -> Result<Issued, ServerError> {
        let broker = self.clone();
        let (mount, role_name) = (mount.to_string(), role_name.to_string());
        detached(async move {
            broker
                .create_lease(
                    &mount,
                    &role_name,
                    owner,
                    cap,
                    Ttl::default(),
                    Some(started),
                )
                .await
        })
        .await
    }

    /// Issues the credential of an approved access request: it lives `ttl` (already capped by
    /// the grant), within the role's max TTL, and cannot be renewed past that.
    pub async fn issue_approved(
        self: &Arc<Self>,
        mount: &str,
        role_name: &str,
        owner: Owner,
        ttl: Ttl,
    ) -> Result<Issued, ServerError> {
        let broker = self.clone();
        let (mount, role_name) = (mount.to_string(), role_name.to_string());
        detached(async move {
            broker
                .create_lease(&mount, &role_name, owner, Some(ttl), ttl, None)
                .await
        })
        .await
    }

    /// The body of [`Broker::issue`]: `ttl` zero means the role's default. The lease is locked
    /// from before its pending record is written until it is active, so a revocation that
    /// finds it waits and then drops the user.
    async fn create_lease(
        &self,
        mount: &str,
        role_name: &str,
        owner: Owner,
        cap: Option<Ttl>,
        ttl: Ttl,
        started: Option<AuditEvent>,
    ) -> Result<Issued, ServerError> {
        let mut role = self.catalog.role(mount, role_name)?;
        if role.kind == RoleKind::Identity && owner.token_accessor.is_none() {
            return Err(ServerError::BadRequest(format!(
                "role {role_name:?} gives each caller the database role named after its \
                 identity, and the root token has none: log in (auth/<mount>/login) to use it"
            )));
        }
        if let Some(cap) = cap.filter(|cap| *cap < role.max_ttl) {
            role.max_ttl = cap;
            role.default_ttl = role.default_ttl.min(cap);
        }
        let issued_at = now();
        let username =
            generate_username(&owner.display_name, &role.name, issued_at.unix_timestamp());
        let mut lease = Lease::new_pending(mount, &role, username, owner, ttl, issued_at);
        let _guard = self.lock(&lease.id).await;
        let password = self.passwords.take().await;
        let (target, stored_url) = self.catalog.target_for_role(mount, &role)?;
        let admin_roles = self.catalog.admin_roles(mount, &role.db_name)?;
        // The lease is recorded while its user is created, and the user is committed only
        // once the record is durable: no user ever exists that the state does not name.
        let record = async {
            if let Some(event) = started {
                // Written first: the lease's durable record makes it durable too.
                let object = lease.id.clone();
                let detail = format!("user {}", lease.username);
                let event = AuditEvent { object, ..event }.with_detail(detail);
                self.audit.record_before(event).await;
            }
            match stored_url {
                None => self.store.insert_lease(&lease).await?,
                // The connection may have been deleted or moved meanwhile, here or through
                // another replica: the store records the lease only while it holds the URL
                // the user is being made through.
                Some(url) => {
                    if !self.store.insert_lease_via(&lease, &url).await? {
                        return Err(crate::catalog::changed_while_issuing(&role.db_name));
                    }
                }
            }
            Ok::<_, ServerError>(())
        };
        let (begun, recorded) = tokio::join!(
            target.begin_user(
                &role,
                &lease.username,
                &password,
                lease.expires_at,
                &admin_roles,
                &lease.owner.subject,
            ),
            record,
        );
        let created = match (begun, recorded) {
            (Ok(user), Ok(())) => user.commit().await,
            (Ok(user), Err(error)) => {
                user.rollback().await;
                self.metrics.issue_failures.inc();
                return Err(error);
            }
            (Err(failure), Err(error)) => {
                self.metrics.issue_failures.inc();
                if !failure.created_nothing() {
                    // A template that committed by itself: its user may exist unrecorded.
                    let _ = target.rollback_user(&role, &lease.username).await;
                }
                return Err(error);
            }
            (Err(failure), Ok(())) => Err(failure),
        };
        if let Err(error) = created {
            self.metrics.issue_failures.inc();
            tracing::warn!(lease_id = %lease.id, error = %chain(&error), "creating user failed");
            if error.created_nothing() {
                // No user can exist: there is nothing to undo.
                self.store.delete_lease(&lease.id).await?;
            } else {
                // Roll back whatever may exist; if that fails too, the reaper keeps trying.
                self.schedule.set(&lease.id, now());
                self.update_gauges();
            }
            return Err(error.into());
        }
        if self.token_gone(&lease).await? {
            // The token was revoked after this lease was recorded: this issuance must not
            // outlive it. The logout (on another replica) may have rolled the lease back
            // before this user was committed, dropping nothing; it keeps the lease for the
            // issuer's grace, but a creation that took longer finds it forgotten. So the user
            // is dropped here first, then the lease revoked if it is left.
            self.metrics.issue_failures.inc();
            if let Err(error) = target.rollback_user(&lease.role, &lease.username).await {
                tracing::error!(lease_id = %lease.id, username = %lease.username, error = %chain(&error), "dropping the user of a lease whose token was revoked during issuance failed; the orphan sweep will drop it");
            }
            let _ = self.revoke_locked(&lease.id, Why::Requested, None).await;
            return Err(token_revoked_meanwhile());
        }
        lease.state = LeaseState::Active;
        match self
            .store
            .update_lease(&lease, LeaseState::Pending, Durability::Relaxed)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Revoked by something that did not take the lease's lock: undo the user, or
                // leave it to the orphan sweep if that fails.
                self.metrics.issue_failures.inc();
                if let Err(error) = target.rollback_user(&lease.role, &lease.username).await {
                    tracing::error!(lease_id = %lease.id, username = %lease.username, error = %chain(&error), "dropping the user of a lease revoked during issuance failed; the orphan sweep will drop it");
                }
                if self.token_gone(&lease).await? {
                    // Its token's revocation marked it.
                    return Err(token_revoked_meanwhile());
                }
                return Err(ServerError::Conflict(format!(
                    "lease {:?} was revoked while it was being issued; its user was dropped",
                    lease.id
                )));
            }
            Err(error) => {
                self.schedule.set(&lease.id, now());
                return Err(error.into());
            }
        }
        self.schedule.set(&lease.id, lease.expires_at);
        self.metrics.leases_issued.inc();
        self.update_gauges();
        tracing::info!(lease_id = %lease.id, username = %lease.username, ttl = lease.granted_ttl().as_secs(), "issued");
        Ok(Issued {
            lease,
            password: password.password().clone(),
            endpoint: target.endpoint(),
        })
    }

    /// Whether `lease` was issued with a token that has been revoked since.
    async fn token_gone(&self, lease: &Lease) -> Result<bool, ServerError> {
        Ok(match &lease.owner.token_accessor {
            Some(accessor) => self.store.token_by_accessor(accessor).await?.is_none(),
            None => false,
        })
    }

    /// Extends a lease by `increment` (zero: the role's default TTL), never past its max TTL.
    /// Runs to completion even if the caller goes away.
    pub async fn renew(self: &Arc<Self>, id: &str, increment: Ttl) -> Result<Renewed, ServerError> {
        let broker = self.clone();
        let id = id.to_string();
        detached(async move { broker.extend_lease(&id, increment).await }).await
    }

    /// The body of [`Broker::renew`], under the lease's lock.
    async fn extend_lease(&self, id: &str, increment: Ttl) -> Result<Renewed, ServerError> {
        let _guard = self.lock(id).await;
        let mut lease = self
            .store
            .get_lease(id)
            .await?
            .ok_or_else(|| not_found(id))?;
        let at = now();
        if lease.state != LeaseState::Active || at >= lease.expires_at {
            return Err(ServerError::BadRequest(format!(
                "lease {id:?} has expired or is being revoked"
            )));
        }
        let renewal = lease.plan_renewal(increment, at)?;
        let target = self
            .catalog
            .current_target(&lease.mount, &lease.role.db_name)
            .await?;
        target
            .renew_user(&lease.role, &lease.username, renewal.expires_at)
            .await?;
        lease.expires_at = renewal.expires_at;
        lease.last_renewal = Some(at);
        if !self
            .store
            .update_lease(&lease, LeaseState::Active, Durability::Relaxed)
            .await?
        {
            // Revoked meanwhile (on another replica): its user is being dropped.
            return Err(ServerError::BadRequest(format!(
                "lease {id:?} has expired or is being revoked"
            )));
        }
        self.schedule.set(id, lease.expires_at);
        let warning = renewal.warning();
        tracing::info!(lease_id = %id, ttl = renewal.ttl.as_secs(), capped = warning.is_some(), "renewed");
        Ok(Renewed {
            lease,
            ttl: renewal.ttl,
            warning,
        })
    }

    /// Revokes a lease now; an unknown lease is an error. `started`, the request's audit
    /// record, is made durable while the user is dropped. Runs to completion even if the
    /// caller goes away.
    pub async fn revoke(
        self: &Arc<Self>,
        id: &str,
        started: Option<AuditEvent>,
    ) -> Result<(), ServerError> {
        if self.store.get_lease(id).await?.is_none() {
            return Err(not_found(id));
        }
        let broker = self.clone();
        let id = id.to_string();
        detached(async move {
            broker
                .attempt_revocation(&id, Why::Requested, started)
                .await
        })
        .await
    }

    /// Queues a lease for revocation by the reaper (Vault's `"sync": false`).
    /// The lease is marked `revoking` in the store at once, so whichever replica leads
    /// revokes it on its next pass (and no renewal extends it meanwhile).
    pub async fn revoke_later(&self, id: &str) -> Result<(), ServerError> {
        if self.store.get_lease(id).await?.is_none() {
            return Err(not_found(id));
        }
        let _guard = self.lock(id).await;
        // Synced: the caller is told it will happen, so a power cut must not undo the mark.
        self.mark_revoking(id, Why::Requested, Durability::Synced)
            .await?;
        self.schedule.set(id, now());
        Ok(())
    }

    /// Revokes the lease with id `prefix`, or else every lease under the path `prefix`, whole
    /// segments only (`creds/x` covers `creds/x/…`, not `creds/x-admin/…`), as Vault does.
    pub async fn revoke_prefix(self: &Arc<Self>, prefix: &str) -> Result<usize, ServerError> {
        let ids = if !prefix.is_empty() && self.store.get_lease(prefix).await?.is_some() {
            vec![prefix.to_string()]
        } else {
            self.store.lease_ids_with_prefix(&as_folder(prefix)).await?
        };
        self.revoke_all(ids).await
    }

    /// Revokes the token with `accessor` and every lease issued to it (a logout), to the end
    /// even if the caller goes away; returns how many leases. The token goes in the write
    /// that marks its leases `revoking`: should pgwarden stop before dropping their users,
    /// the next start does. An issuance racing this either recorded its lease before that
    /// write (which then marks it too), or finds the token gone once it has recorded it, and
    /// undoes itself (the store orders the two: see [`Store::revoke_token`]).
    pub async fn revoke_token(self: &Arc<Self>, accessor: &str) -> Result<usize, ServerError> {
        let (broker, accessor) = (self.clone(), accessor.to_string());
        detached(async move {
            let ids = broker.store.revoke_token(&accessor).await?;
            // Due now: should a revocation below fail, the reaper keeps at it.
            for id in &ids {
                broker.schedule.set(id, now());
            }
            broker.revoke_all(ids).await
        })
        .await
    }

    /// Revokes each of `ids`, [`REVOKE_ALL_CONCURRENCY`] at a time, on a task of its own (so
    /// it finishes whatever the caller does); reports the first failure after trying all.
    async fn revoke_all(self: &Arc<Self>, ids: Vec<String>) -> Result<usize, ServerError> {
        use futures::StreamExt;
        let broker = self.clone();
        detached(async move {
            let count = ids.len();
            let outcomes: Vec<Result<(), ServerError>> = futures::stream::iter(ids)
                .map(|id| {
                    let broker = broker.clone();
                    async move { broker.attempt_revocation(&id, Why::Requested, None).await }
                })
                .buffered(REVOKE_ALL_CONCURRENCY)
                .collect()
                .await;
            outcomes
                .into_iter()
                .find_map(Result::err)
                .map_or(Ok(count), Err)
        })
        .await
    }

    /// One lease by id.
    pub async fn lookup(&self, id: &str) -> Result<Lease, ServerError> {
        self.store.get_lease(id).await?.ok_or_else(|| not_found(id))
    }

    /// Vault's LIST of `sys/leases/lookup/<prefix>`: the next path segment of every lease
    /// under `prefix` (`role/` for folders, the id's last part for leases).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ServerError> {
        let prefix = as_folder(prefix);
        let mut keys: Vec<String> = self
            .store
            .lease_ids_with_prefix(&prefix)
            .await?
            .iter()
            .map(|id| {
                let rest = &id[prefix.len()..];
                match rest.find('/') {
                    Some(slash) => rest[..=slash].to_string(),
                    None => rest.to_string(),
                }
            })
            .collect();
        keys.dedup();
        Ok(keys)
    }

    /// Tries to drop a lease's user once (`started`: the asking request's audit record). On
    /// success the lease is forgotten; on failure it is kept (visible in lookup and metrics)
    /// and retried after a backoff.
    async fn attempt_revocation(
        &self,
        id: &str,
        why: Why,
        started: Option<AuditEvent>,
    ) -> Result<(), ServerError> {
        let _guard = self.lock(id).await;
        let outcome = self.revoke_locked(id, why, started).await;
        if outcome.is_err() {
            // Failed before its retry was scheduled (the state could not be read or written):
            // try again later rather than forget it until a restart.
            self.schedule
                .set_if_absent(id, Ttl::from_secs(backoff(1).as_secs()).after(now()));
        }
        outcome
    }

    /// [`Broker::attempt_revocation`] for a caller that holds the lease's lock; `started` is
    /// the audit record of the request that asked, made durable while the user is dropped.
    async fn revoke_locked(
        &self,
        id: &str,
        why: Why,
        started: Option<AuditEvent>,
    ) -> Result<(), ServerError> {
        let record_started = async {
            if let Some(event) = started {
                self.audit.record(event).await;
            }
        };
        let marked = self.mark_revoking(id, why, Durability::Relaxed).await;
        let Some((mut lease, reason)) = marked? else {
            // Gone already: nothing to drop, and the request's record is durable all the same.
            record_started.await;
            return Ok(());
        };
        let drop_user = self.drop_user(&lease, reason);
        let (result, ()) = tokio::join!(drop_user, record_started);
        match result {
            Ok(()) if let Some(again) = self.rollback_again_at(&lease, reason) => {
                // The issuer, on another replica, may still commit the user after this drop
                // found nothing: the lease is kept, and dropped again once that cannot be.
                self.schedule.set(id, again);
                self.failing.lock().remove(id);
                self.update_gauges();
                tracing::info!(lease_id = %id, username = %lease.username, "rolled back while its issuer may still be creating it; dropping again in a minute");
                Ok(())
            }
            Ok(()) => {
                self.store.delete_lease(id).await?;
                self.schedule.remove(id);
                self.failing.lock().remove(id);
                let label = reason.as_str();
                self.metrics
                    .leases_revoked
                    .get_or_create(&RevokeLabels { reason: label })
                    .inc();
                self.update_gauges();
                tracing::info!(lease_id = %id, username = %lease.username, reason = label, "revoked");
                let event = AuditEvent::now("pgwarden", "user.drop", id, Outcome::Success)
                    .with_detail(format!("{label}: user {} dropped", lease.username));
                if why == Why::Requested && reason == RevokeReason::Requested {
                    // The request that asked waits for its own record; this one need not
                    // lengthen it.
                    self.audit.submit(event);
                } else {
                    self.audit.record(event).await;
                }
                Ok(())
            }
            Err(error) => {
                lease.revoke_attempts = lease.revoke_attempts.saturating_add(1);
                lease.last_error = Some(error.to_string());
                self.store
                    .update_lease(&lease, lease.state, Durability::Synced)
                    .await?;
                let retry = backoff(lease.revoke_attempts);
                self.schedule
                    .set(id, Ttl::from_secs(retry.as_secs()).after(now()));
                self.failing.lock().insert(id.to_string());
                self.metrics.revocation_failures.inc();
                self.update_gauges();
                tracing::warn!(lease_id = %id, attempts = lease.revoke_attempts, retry_in_s = retry.as_secs(), %error, "revocation failed; will retry");
                self.audit
                    .record(
                        AuditEvent::now("pgwarden", "user.drop", id, Outcome::Failure).with_detail(
                            format!(
                                "attempt {} failed, retrying in {}s: {error}",
                                lease.revoke_attempts,
                                retry.as_secs()
                            ),
                        ),
                    )
                    .await;
                Err(ServerError::Internal(format!(
                    "revoking lease {id:?} failed (attempt {}, retrying in {}s): {error}",
                    lease.revoke_attempts,
                    retry.as_secs()
                )))
            }
        }
    }

    /// Drops `lease`'s user for `reason`. A rollback runs the role's rollback statements, and
    /// a retried one that fails again runs the full revocation too: minimal rollback
    /// statements cannot drop a user that owns objects (one whose activation was lost in a
    /// crash, its credential already in use).
    async fn drop_user(&self, lease: &Lease, reason: RevokeReason) -> Result<(), ServerError> {
        let target = self
            .catalog
            .current_target(&lease.mount, &lease.role.db_name)
            .await?;
        let (role, username) = (&lease.role, &lease.username);
        if reason != RevokeReason::Rollback {
            return Ok(target.revoke_user(role, username).await?);
        }
        match target.rollback_user(role, username).await {
            Err(rollback) if lease.revoke_attempts > 0 => target
                .revoke_user(role, username)
                .await
                .map_err(|revocation| {
                    ServerError::Internal(format!(
                        "the rollback failed ({rollback}), and so did the full revocation: \
                         {revocation}"
                    ))
                }),
            rolled_back => Ok(rolled_back?),
        }
    }

    /// When a rollback of `lease` just done must be done again: on shared state, until the
    /// issuer's grace is over, a creation on another replica may still commit the user that
    /// the rollback did not find (an uncommitted role is invisible to other sessions).
    fn rollback_again_at(&self, lease: &Lease, reason: RevokeReason) -> Option<OffsetDateTime> {
        if reason != RevokeReason::Rollback {
            return None;
        }
        let grace = time::Duration::try_from(self.pending_grace()).ok()?;
        let again = lease.issued_at.checked_add(grace)?;
        (again > now()).then_some(again)
    }

    /// How long a pending lease is left to its issuer before it counts as abandoned.
    fn pending_grace(&self) -> Duration {
        if self.leadership.is_shared() {
            SHARED_PENDING_GRACE
        } else {
            Duration::ZERO
        }
    }

    /// On shared state: schedules the leases due in the store that this replica does not know
    /// of yet (issued, or left failing, on other replicas).
    async fn schedule_due_in_store(&self) {
        let at = now();
        match self
            .store
            .due_lease_ids(
                at,
                at.checked_sub(self.pending_grace().try_into().unwrap_or_default())
                    .unwrap_or(at),
            )
            .await
        {
            Ok(ids) => {
                // Due now even if scheduled later here: a lease this replica issued is
                // scheduled at its expiry, and another replica may have queued its revocation,
                // or failed at it, since. A revocation failing here keeps its backoff.
                let (reaping, failing) = (self.reaping.lock(), self.failing.lock());
                for id in ids
                    .iter()
                    .filter(|id| !reaping.contains(*id) && !failing.contains(*id))
                {
                    self.schedule.set_no_later(id, at);
                }
            }
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot read the leases due from the store");
            }
        }
    }

    /// Moves lease `id` to `revoking` in the store (compare-and-set, so an issuance or renewal
    /// finishing meanwhile, here or on another replica, sees it and undoes itself), unless
    /// there is nothing to do: the lease is gone, or (for an expiry) it was renewed. A lease
    /// already `revoking` (a queued or failed revocation) is revoked whatever its expiry, for
    /// the reason it began with. Returns the lease and why its user is dropped: a rollback
    /// if it was still being issued.
    async fn mark_revoking(
        &self,
        id: &str,
        why: Why,
        durability: Durability,
    ) -> Result<Option<(Lease, RevokeReason)>, ServerError> {
        for _ in 0..3 {
            let Some(mut lease) = self.store.get_lease(id).await? else {
                self.schedule.remove(id);
                self.failing.lock().remove(id);
                return Ok(None);
            };
            let from = lease.state;
            let Some(reason) = revoke_reason(from, why, lease.expires_at, now()) else {
                // Renewed after the reaper picked it up.
                self.schedule.set(id, lease.expires_at);
                return Ok(None);
            };
            if let LeaseState::Revoking(_) = from {
                return Ok(Some((lease, reason)));
            }
            lease.state = LeaseState::Revoking(reason);
            if self.store.update_lease(&lease, from, durability).await? {
                return Ok(Some((lease, reason)));
            }
            // Moved on meanwhile: look again.
        }
        Err(ServerError::Conflict(format!(
            "lease {id:?} keeps changing while being revoked; try again"
        )))
    }

    /// The reaper: sleeps until the earliest scheduled lease is due, revokes everything due
    /// (up to 16 at once), and repeats until `shutdown` turns true. Only while this replica
    /// leads; on shared state it also looks in the store every second for leases due.
    pub async fn run_reaper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(REAPER_CONCURRENCY));
        let shared = self.leadership.is_shared();
        loop {
            let mut wait = self
                .schedule
                .next_due()
                .map(time_until)
                .unwrap_or(Duration::from_secs(3600));
            if shared {
                wait = wait.min(SHARED_POLL);
            }
            if !self.leadership.is_leader() {
                wait = SHARED_POLL; // what is due waits for the lead (or another leader)
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedule.changed() => continue,
                _ = shutdown.changed() => break,
            }
            if !self.leadership.is_leader() {
                // What is due here is the leader's to reap, found in the store: forget it, or
                // the schedule of a replica that never leads would only grow.
                drop(self.schedule.take_due(now()));
                continue;
            }
            if shared {
                self.schedule_due_in_store().await;
            }
            for id in self.schedule.take_due(now()) {
                if !self.reaping.lock().insert(id.clone()) {
                    continue; // under way: its outcome reschedules it if need be
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let broker = self.clone();
                tokio::spawn(async move {
                    // A replica that lost the lead while this waited leaves it to the leader.
                    if broker.leadership.is_leader() {
                        let _ = broker.attempt_revocation(&id, Why::Expired, None).await;
                    }
                    broker.reaping.lock().remove(&id);
                    drop(permit);
                });
            }
        }
        // Let the revocations under way finish (a while at most) before the lead is given up.
        let all = u32::try_from(REAPER_CONCURRENCY).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(MAX_BACKOFF, permits.acquire_many(all)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Why, backoff, revoke_reason};
    use pgwarden_core::{LeaseState, RevokeReason};
    use std::time::Duration;

    #[test]
    fn a_revocation_keeps_the_reason_it_began_with() {
        use LeaseState::{Active, Pending, Revoking};
        use RevokeReason::{Expired, Requested, Rollback};
        let at = time::macros::datetime!(2026-12-07 08:00 UTC);
        let (before, after) = (at - time::Duration::SECOND, at + time::Duration::SECOND);
        let cases = [
            (Pending, Why::Expired, before, Some(Rollback)),
            (Pending, Why::Requested, after, Some(Rollback)),
            (Active, Why::Expired, before, Some(Expired)),
            (Active, Why::Expired, at, Some(Expired)),
            // Renewed after the reaper picked it up.
            (Active, Why::Expired, after, None),
            (Active, Why::Requested, after, Some(Requested)),
            // Retried by the reaper, or asked for again, whatever the expiry.
            (Revoking(Requested), Why::Expired, before, Some(Requested)),
            (Revoking(Requested), Why::Expired, after, Some(Requested)),
            (Revoking(Expired), Why::Requested, before, Some(Expired)),
            (Revoking(Rollback), Why::Requested, after, Some(Rollback)),
            (Revoking(Rollback), Why::Expired, before, Some(Rollback)),
        ];
        for (from, why, expires_at, reason) in cases {
            assert_eq!(
                revoke_reason(from, why, expires_at, at),
                reason,
                "{from:?} {why:?} {expires_at}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(1000), Duration::from_secs(60));
    }
}
