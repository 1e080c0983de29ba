//! `rotate-root`: a new administrative password for an API connection that only pgwarden
//! knows, sealed at rest. Set like a static role's: the new password is stored as pending
//! first, then the database is told, then the pending one becomes the password in force. A
//! crash in between leaves both stored; [`Catalog::finish_root_rotations`] (at start-up, and
//! before the next rotation) keeps whichever of the two the database accepts.

use super::{Catalog, Source, seal_context};
use crate::error::ServerError;
use pgwarden_core::{ConnectionDef, chain};
use pgwarden_engine::{NewPassword, Target};
use pgwarden_store::StoredConnection;
use secrecy::SecretString;

impl Catalog {
    /// Rotates the administrative password of API connection `name` of `mount`.
    pub async fn rotate_root(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        let _serial = self.writes.lock().await;
        let entry = self.connection(mount, name)?;
        if entry.source == Source::File {
            return Err(ServerError::BadRequest(format!(
                "connection {name:?} is defined in the configuration file, whose password \
                 pgwarden cannot change; rotate-root works on connections written through the API"
            )));
        }
        let stored = self
            .resolve_pending(mount, self.stored(mount, name).await?)
            .await?;
        let password = tokio::task::spawn_blocking(NewPassword::generate)
            .await
            .map_err(|e| ServerError::Internal(format!("making a password: {e}")))?;
        let sealed = self
            .sealer()?
            .seal(password.password(), &seal_context(mount, name))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let pending = StoredConnection {
            sealed_pending_password: Some(sealed.clone()),
            ..stored
        };
        self.store.put_connection(mount, &pending).await?;
        let still_pending = || async {
            matches!(
                self.stored(mount, name).await,
                Ok(now) if now.sealed_pending_password.as_ref() == Some(&sealed)
            )
        };
        // Until the new password is adopted, connections refused with the old one (once ALTER
        // ROLE commits) try the new one.
        let target = self.target(mount, name)?;
        target.try_next_password(Some(password.password().clone()));
        let set = target
            .set_password(&entry.def.username, &[], &password, still_pending)
            .await;
        let set = match set {
            Err(error @ pgwarden_engine::EngineError::CommitUnknown { .. }) => {
                return Err(error.into());
            }
            Err(error) => {
                // Certainly not set: forget the new password.
                target.try_next_password(None);
                let kept = StoredConnection {
                    sealed_pending_password: None,
                    ..pending
                };
                self.store.put_connection(mount, &kept).await?;
                return Err(error.into());
            }
            Ok(set) => set,
        };
        if !set {
            target.try_next_password(None);
            return Err(ServerError::Conflict(format!(
                "connection {name:?} in mount {mount:?} was changed by another request meanwhile; try again"
            )));
        }
        self.adopt(mount, pending, entry.def, password.password().clone())
            .await?;
        tracing::info!(mount, connection = name, "administrative password rotated");
        Ok(())
    }

    /// Settles every rotation of an API connection's password left half-done (at start-up):
    /// failures are logged, and tried again before that connection's next rotation.
    pub async fn finish_root_rotations(&self) {
        let connections = match self.store.connections().await {
            Ok(connections) => connections,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "cannot look for unfinished root rotations");
                return;
            }
        };
        for (mount, stored) in connections {
            if stored.sealed_pending_password.is_none() {
                continue;
            }
            let _serial = self.writes.lock().await;
            let name = stored.name.clone();
            if let Err(error) = self.resolve_pending(&mount, stored).await {
                tracing::warn!(mount, connection = name, error = %chain(&error), "cannot finish an unfinished root rotation");
            }
        }
    }

    /// Keeps whichever of `stored`'s two passwords the database accepts: the pending one if
    /// the crash came after the database took it, else the one in force. The caller holds
    /// `writes`.
    async fn resolve_pending(
        &self,
        mount: &str,
        stored: StoredConnection,
    ) -> Result<StoredConnection, ServerError> {
        let Some(sealed) = &stored.sealed_pending_password else {
            return Ok(stored);
        };
        let name = stored.name.clone();
        let current = self.connection(mount, &name)?.def;
        let pending = self
            .sealer()?
            .open(sealed, &seal_context(mount, &name))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let with_pending = ConnectionDef {
            password: pending.clone(),
            ..current.clone()
        };
        if Target::new(&with_pending)?.verify().await.is_ok() {
            tracing::info!(
                mount,
                connection = name,
                "finishing an unfinished root rotation"
            );
            return self.adopt(mount, stored, current, pending).await;
        }
        Target::new(&current)?.verify().await?;
        let kept = StoredConnection {
            sealed_pending_password: None,
            ..stored
        };
        self.store.put_connection(mount, &kept).await?;
        Ok(kept)
    }

    /// Makes `stored`'s pending password, `password`, the one in force: in the store, then in
    /// memory, where the connection's target (whoever holds it) signs in with it from now on.
    async fn adopt(
        &self,
        mount: &str,
        stored: StoredConnection,
        def: ConnectionDef,
        password: SecretString,
    ) -> Result<StoredConnection, ServerError> {
        let adopted = StoredConnection {
            sealed_password: stored
                .sealed_pending_password
                .clone()
                .unwrap_or(stored.sealed_password),
            sealed_pending_password: None,
            ..stored
        };
        self.store.put_connection(mount, &adopted).await?;
        self.target(mount, &def.name)?
            .use_password(password.clone());
        self.write(mount, |m| {
            if let Some(entry) = m.connections.get_mut(&def.name) {
                entry.def = ConnectionDef { password, ..def };
            }
            Ok(())
        })?;
        Ok(adopted)
    }

    /// The stored form of API connection `name`.
    async fn stored(&self, mount: &str, name: &str) -> Result<StoredConnection, ServerError> {
        self.store
            .connections()
            .await?
            .into_iter()
            .find(|(m, c)| m == mount && c.name == name)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                ServerError::NotFound(format!("connection {name:?} not found in mount {mount:?}"))
            })
    }
}
