//! Setting the password of an existing user (static roles): Vault's rotation statements, or
//! pgwarden's own `ALTER ROLE … WITH PASSWORD`, with only a SCRAM verifier reaching the server.

use crate::error::{EngineError, sql};
use crate::quote::{quote_ident, quote_literal};
use crate::scram::NewPassword;
use crate::target::Target;
use crate::users::{render_all, user_exists};
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
        let outcome = async {
            if !still_wanted().await {
                return Ok(false);
            }
            let started = transaction_id(&client, &what).await?;
            for statement in &statements {
                client
                    .batch_execute(statement)
                    .await
                    .map_err(sql(what.clone()))?;
            }
            // A statement that ended the transaction (`COMMIT`, `ROLLBACK`, `END`) took the
            // advisory lock's ordering with it, and perhaps the password.
            if transaction_id(&client, &what).await? != started {
                return Err(EngineError::TransactionEnded { what: what.clone() });
            }
            client
                .batch_execute("COMMIT;")
                .await
                .map_err(|driver| EngineError::CommitUnknown {
                    what: what.clone(),
                    driver,
                })?;
            Ok(true)
        }
        .await;
        // Not committed: the connection closes with it, which rolls the transaction back.
        outcome
    }
}

/// The id of the transaction `client` is in.
async fn transaction_id(
    client: &tokio_postgres::Client,
    what: &str,
) -> Result<String, EngineError> {
    let messages = client
        .simple_query("SELECT txid_current()::text")
        .await
        .map_err(sql(what.to_string()))?;
    Ok(messages
        .iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}
