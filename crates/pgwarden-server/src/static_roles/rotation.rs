//! One rotation of a static role's password, in three steps that never leave a password
//! nobody knows:
//! 1. a new password is stored, sealed, as the role's *pending* one (compare-and-set on the
//!    row's version; the password in force stays stored too);
//! 2. the database is told, in a transaction that first takes an advisory lock for the user
//!    and checks that the row is still at that version (so a replica that was overtaken
//!    never lands a stale password after a newer one);
//! 3. the row is updated: the pending password becomes the one in force.
//!
//! A crash after 1 or 2 leaves the pending password stored; whoever touches the role next
//! sets it again (which changes nothing if step 2 had happened) and completes step 3. A step 2
//! that certainly failed (any error before `COMMIT`) drops the pending password at once, so
//! the password in force stays the one handed out.

use super::{StaticRoles, changed_meanwhile, key, seal_context};
use crate::error::ServerError;
use pgwarden_core::{AuditEvent, Outcome, chain};
use pgwarden_engine::{EngineError, NewPassword};
use pgwarden_store::StoredStaticRole;
use time::OffsetDateTime;

impl StaticRoles {
    /// Steps 1 to 3 for `role` (which has no pending password). Returns the role as stored
    /// after.
    pub(super) async fn start_rotation(
        &self,
        role: StoredStaticRole,
    ) -> Result<StoredStaticRole, ServerError> {
        let (mount, name) = (role.mount.clone(), role.def.name.clone());
        let password = tokio::task::spawn_blocking(NewPassword::generate)
            .await
            .map_err(|e| ServerError::Internal(format!("making a password: {e}")))?;
        let mut pending = role.clone();
        pending.version = role.version.saturating_add(1);
        pending.sealed_pending = Some(
            self.sealer()?
                .seal(password.password(), &seal_context(&mount, &name))
                .map_err(|e| ServerError::Internal(e.to_string()))?,
        );
        if !self
            .store
            .update_static_role(&pending, role.version)
            .await?
        {
            return Err(changed_meanwhile(&mount, &name));
        }
        self.finish(pending, &password).await
    }

    /// Finishes a rotation `role` holds pending, if any; returns the role as stored after.
    pub(super) async fn settle(
        &self,
        role: StoredStaticRole,
    ) -> Result<StoredStaticRole, ServerError> {
        let Some(sealed) = &role.sealed_pending else {
            return Ok(role);
        };
        let pending = self.open(&role.mount, &role.def.name, sealed)?;
        let password = tokio::task::spawn_blocking(move || NewPassword::from_password(pending))
            .await
            .map_err(|e| ServerError::Internal(format!("hashing a password: {e}")))?;
        tracing::info!(role = %key(&role.mount, &role.def.name), "finishing an unfinished static role rotation");
        self.finish(role, &password).await
    }

    /// Steps 2 and 3: sets `password` (the one `role` holds pending) in the database if the
    /// role is still at its version, then makes it the one in force.
    async fn finish(
        &self,
        role: StoredStaticRole,
        password: &NewPassword,
    ) -> Result<StoredStaticRole, ServerError> {
        let (mount, name) = (role.mount.as_str(), role.def.name.as_str());
        let target = self
            .catalog
            .target_allowing(mount, &role.def.db_name, name)?;
        let store_error = parking_lot::Mutex::new(None);
        let still_pending = || async {
            match self.store.get_static_role(mount, name).await {
                Ok(now) => now.is_some_and(|now| now.version == role.version),
                Err(error) => {
                    *store_error.lock() = Some(error);
                    false
                }
            }
        };
        let set = target
            .set_password(
                &role.def.username,
                &role.def.rotation_statements,
                password,
                still_pending,
            )
            .await;
        match set {
            Ok(true) => {}
            Ok(false) => {
                if let Some(error) = store_error.lock().take() {
                    return Err(error.into());
                }
                return self.finished_by_another(&role).await;
            }
            Err(error @ EngineError::CommitUnknown { .. }) => return Err(error.into()),
            Err(EngineError::TransactionEnded { .. }) => {
                return Err(ServerError::BadRequest(format!(
                    "the rotation_statements of static role {name:?} end the transaction \
                     (COMMIT, ROLLBACK or END): remove that statement and write the role again; \
                     until then the user's password may already be the new one, which pgwarden \
                     keeps and sets again"
                )));
            }
            Err(error) => {
                self.drop_pending(&role).await;
                return Err(match error {
                    EngineError::UserGone { username } => ServerError::BadRequest(format!(
                        "user {username:?} does not exist in connection {:?}: a static role \
                         manages an existing user; create it first",
                        role.def.db_name
                    )),
                    other => other.into(),
                });
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut done = role.clone();
        done.version = role.version.saturating_add(1);
        done.sealed_password = done.sealed_pending.take();
        done.last_rotation = Some(now);
        done.next_rotation = done.def.rotation.next_after(now);
        if !self.store.update_static_role(&done, role.version).await? {
            return self.finished_by_another(&role).await;
        }
        tracing::info!(role = %key(mount, name), username = %done.def.username, "static role password rotated");
        self.audit.submit(AuditEvent::now(
            "pgwarden",
            "static-role.rotated",
            &key(mount, name),
            Outcome::Success,
        ));
        Ok(done)
    }

    /// After losing a race while finishing `role`'s pending password: success if another
    /// request (perhaps on another replica) finished that same password (the role may hold a
    /// newer pending one by now), else a conflict.
    async fn finished_by_another(
        &self,
        role: &StoredStaticRole,
    ) -> Result<StoredStaticRole, ServerError> {
        let (mount, name) = (role.mount.as_str(), role.def.name.as_str());
        match self.store.get_static_role(mount, name).await? {
            Some(now) if now.sealed_password == role.sealed_pending => Ok(now),
            _ => Err(changed_meanwhile(mount, name)),
        }
    }

    /// Forgets `role`'s pending password, which the database certainly did not take, so the
    /// password in force stays the one handed out. Losing the race to another writer is fine:
    /// that writer moved the role on.
    async fn drop_pending(&self, role: &StoredStaticRole) {
        let mut dropped = role.clone();
        dropped.version = role.version.saturating_add(1);
        dropped.sealed_pending = None;
        if let Err(error) = self.store.update_static_role(&dropped, role.version).await {
            tracing::warn!(role = %key(&role.mount, &role.def.name), error = %chain(&error), "cannot forget a password the database did not take; the next rotation sets it");
        }
    }
}
