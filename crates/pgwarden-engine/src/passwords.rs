//! Setting the password of an existing user (static roles): Vault's rotation statements, or
//! pgwarden's own `ALTER ROLE … WITH PASSWORD`, with only a SCRAM verifier reaching the server.

use crate::error::{EngineError, sql};
use crate::quote::{quote_ident, quote_literal};
use crate::scram::NewPassword;
use crate::target::Target;
use crate::users::{in_one_transaction, render_all, user_exists};
use std::future::Future;

impl Target {
    /// Sets existing user `username`'s password to `password` with `statements` (`{{name}}`,
    /// `{{password}}`; empty: `ALTER ROLE … WITH PASSWORD`), in one transaction.
    ///
    /// The transaction first takes an advisory lock for the user, then asks `still_wanted`
    /// whether this password is still the one to set (the caller checks its store), and
    /// commits only if so: two pgwarden replicas setting one user's password are ordered,
    /// and one that was overtaken never lands a stale password after a newer one. Returns
    /// whether the password was set. Waiting for a lock ends after 10 s and a statement after
    /// 30 s. Every error but [`EngineError::CommitUnknown`] and
    /// [`EngineError::TransactionEnded`] (statements that `COMMIT` or `ROLLBACK` themselves)
    /// means the password was certainly not set.
    pub async fn set_password<F, Fut>(
        &self,
        username: &str,
        statements: &[String],
        password: &NewPassword,
        still_wanted: F,
    ) -> Result<bool, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let what = format!("setting the password of user {username:?}");
        let statements = if statements.is_empty() {
            vec![format!(
                "ALTER ROLE {} WITH PASSWORD {};",
                quote_ident(username),
                quote_literal(password.verifier())
            )]
        } else {
            render_all(statements, username, Some(password.verifier()), None)?
        };
        // Out of the pool: should this future be dropped mid-transaction, the connection
        // closes and the server rolls back, instead of going back to the pool in a transaction.
        let client = deadpool_postgres::Object::take(self.client().await?);
        if !user_exists(&*client, username).await? {
            return Err(EngineError::UserGone {
                username: username.to_string(),
            });
        }
        client
            .batch_execute(&format!(
                "BEGIN;\nSET LOCAL idle_in_transaction_session_timeout = '60s';\n\
                 SET LOCAL lock_timeout = '10s';\nSET LOCAL statement_timeout = '30s';\n\
                 SELECT pg_advisory_xact_lock(hashtext({}));",
                quote_literal(&format!("pgwarden static role {username}"))
            ))
            .await
            .map_err(sql(what.clone()))?;
        if !still_wanted().await {
            return Ok(false);
        }
        // Statements that end the transaction would take the advisory lock's ordering with
        // them, and perhaps the password.
        in_one_transaction(&client, "", &statements, &what).await?;
        client
            .batch_execute("COMMIT;")
            .await
            .map_err(|driver| EngineError::CommitUnknown { what, driver })?;
        // Any error above leaves the transaction open: the connection closes with it, which
        // rolls it back.
        Ok(true)
    }
}
