//! Creating, renewing and revoking dynamic users in a target database.

use crate::error::{EngineError, retried, sql};
use crate::groups::{Group, current_database, join, prepare_identity};
use crate::held::Held;
use crate::quote::{quote_ident, quote_literal};
use crate::scram::NewPassword;
use crate::target::Target;
use pgwarden_core::lease::valid_until;
use pgwarden_core::template::{TemplateValues, render};
use pgwarden_core::{RoleDef, RoleKind, Statements};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

impl Target {
    /// Creates `username` with `password` for `role`, valid until `expires_at` (plus slack):
    /// [`Target::begin_user`], then [`UncommittedUser::commit`].
    pub async fn create_user(
        &self,
        role: &RoleDef,
        username: &str,
        password: &NewPassword,
        expires_at: OffsetDateTime,
        admin_roles: &[RoleDef],
        identity: &str,
    ) -> Result<(), EngineError> {
        self.begin_user(role, username, password, expires_at, admin_roles, identity)
            .await?
            .commit()
            .await
    }

    /// Runs the statements creating `username` with `password` for `role`, valid until
    /// `expires_at` (plus slack), in one transaction left open: the user exists only once
    /// the caller commits it (after recording it durably, which may run meanwhile). Retried
    /// when it fails only because of concurrent work. Only the password's SCRAM verifier is
    /// sent. `admin_roles` are the admin preset roles of this connection: a preset role's
    /// group also gets its privileges on what their users create. `identity` is the caller's
    /// (its policy subject): an identity role's user joins the role named after it.
    pub async fn begin_user(
        &self,
        role: &RoleDef,
        username: &str,
        password: &NewPassword,
        expires_at: OffsetDateTime,
        admin_roles: &[RoleDef],
        identity: &str,
    ) -> Result<UncommittedUser, EngineError> {
        let verifier = password.verifier();
        let until = valid_until(expires_at);
        let client = self.client().await?;
        let statements = match &role.kind {
            RoleKind::Preset {
                preset,
                schemas,
                group_role,
                adopt_group_role,
            } => {
                let group = Group::new(*preset, group_role, schemas, *adopt_group_role);
                self.ensure_group(&client, &group, admin_roles).await?;
                vec![member_of(group.name, username, verifier, &until)]
            }
            RoleKind::Statements(s) => {
                render_all(&s.creation, username, Some(verifier), Some(&until))?
            }
            RoleKind::Identity => {
                prepare_identity(&**client, identity).await?;
                vec![member_of(identity, username, verifier, &until)]
            }
        };
        let what = format!("creating user {username:?} for role {:?}", role.name);
        // Held from here: should this future be dropped mid-transaction, the connection is
        // closed rather than returned to the pool with the transaction open.
        let client = Held::new(client);
        // On failure `client` is closed, not pooled: should `begin_with`'s `ROLLBACK` have
        // failed too, the transaction would be handed to the next caller.
        retried(|| begin_with(&client, &statements, &what)).await?;
        Ok(UncommittedUser { client, what })
    }

    /// Moves `username`'s `VALID UNTIL` to `expires_at` (plus slack).
    pub async fn renew_user(
        &self,
        role: &RoleDef,
        username: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), EngineError> {
        let until = valid_until(expires_at);
        let client = self.client().await?;
        if !user_exists(&**client, username).await? {
            return Err(EngineError::UserGone {
                username: username.to_string(),
            });
        }
        let statements = match &role.kind {
            RoleKind::Statements(Statements { renew, .. }) if !renew.is_empty() => {
                render_all(renew, username, None, Some(&until))?
            }
            _ => vec![format!(
                "ALTER ROLE {} VALID UNTIL {};",
                quote_ident(username),
                quote_literal(&until)
            )],
        };
        for statement in &statements {
            client
                .batch_execute(statement)
                .await
                .map_err(sql(format!("renewing user {username:?}")))?;
        }
        Ok(())
    }

    /// Drops `username` and ends its sessions, here and on the standbys; when objects or
    /// privileges depend on it, first blocks its logins and hands what it owns to the group
    /// role (or the administrator) in every database. A user that does not exist counts as
    /// revoked.
    pub async fn revoke_user(&self, role: &RoleDef, username: &str) -> Result<(), EngineError> {
        let custom = match &role.kind {
            RoleKind::Statements(s) if !s.revocation.is_empty() => {
                Some(Custom::Revocation(&s.revocation))
            }
            _ => None,
        };
        let heir = heir_group(role);
        retried(|| self.drop_user(username, heir, custom)).await
    }

    /// Undoes a creation that may not have finished: the role's rollback statements if it has
    /// any, else the full revocation.
    pub async fn rollback_user(&self, role: &RoleDef, username: &str) -> Result<(), EngineError> {
        let custom = match &role.kind {
            RoleKind::Statements(s) if !s.rollback.is_empty() => {
                Some(Custom::Rollback(&s.rollback))
            }
            _ => None,
        };
        let heir = heir_group(role);
        retried(|| self.drop_user(username, heir, custom)).await
    }

    /// Drops `username`, a user no lease names, handing what it owns to the administrator.
    pub async fn drop_orphan(&self, username: &str) -> Result<(), EngineError> {
        retried(|| self.drop_user(username, None, None)).await
    }

    /// Ends the sessions whose role no longer exists, in any database of the cluster (a drop
    /// leaves them running: those still starting up when a revocation's drop committed, those
    /// of roles dropped by hand); returns how many.
    pub async fn end_sessions_of_dropped_users(&self) -> Result<usize, EngineError> {
        // Held: abandoned mid-statement (a caller's timeout), the connection is closed rather
        // than handed on with the statement still to answer.
        let client = Held::new(self.client().await?);
        let ended = end_dangling_sessions(&client).await;
        if ended.is_ok() {
            // Otherwise closed: a statement that failed or timed out may leave its
            // transaction open.
            drop(client.release());
        }
        ended
    }

    /// Names of the users in this target's cluster shaped like the ones pgwarden generates
    /// (`v-<display>-<role>-<20 random>-<unix time>`), sorted.
    pub async fn generated_users(&self) -> Result<Vec<String>, EngineError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT rolname::text FROM pg_roles \
                 WHERE rolname ~ '^v-[A-Za-z0-9_-]*-[A-Za-z0-9]{20}-[0-9]+$' ORDER BY 1",
                &[],
            )
            .await
            .map_err(sql("listing generated users"))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Drops the user at once when nothing depends on it (see [`drop_if_nothing_depends`]);
    /// else blocks logins, ends sessions, hands owned objects to `heir_group` (or the
    /// administrator), then drops the user, or runs `custom` statements instead of the last
    /// two. Every step can run again, so callers retry it when it fails only because of
    /// concurrent work (drops of users granted privileges on the same objects update the same
    /// catalog rows: `tuple concurrently updated`).
    async fn drop_user(
        &self,
        username: &str,
        heir_group: Option<&str>,
        custom: Option<Custom<'_>>,
    ) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        let oid = if custom.is_none() {
            // Held: should this future be dropped inside the drop's transaction, the
            // connection is closed rather than returned to the pool in it.
            let held = Held::new(client);
            // On failure the connection is closed (by `held`), not pooled: should the
            // `ROLLBACK` after it have failed too, its transaction would be handed on.
            let dropped = drop_if_nothing_depends(&held, username).await?;
            client = held.release();
            match dropped {
                FastDrop::Kept(oid) => oid,
                FastDrop::Dropped => return self.end_sessions_on_replicas(username).await,
            }
        } else {
            match user_oid(&**client, username).await? {
                Some(oid) => oid,
                None => {
                    // Dropped already (by an earlier attempt whose session sweep failed, or
                    // by hand): its sessions may live on, here and on the standbys. Which
                    // dangling sessions were its own is unknown, so without pg_signal_backend
                    // they are left to the sessions pass rather than fail this revocation.
                    client
                        .batch_execute(&end_dangling_sessions_statement(true))
                        .await
                        .map_err(sql("ending the sessions of dropped users"))?;
                    return self.end_sessions_on_replicas(username).await;
                }
            }
        };
        let u = quote_ident(username);
        client
            .batch_execute(&format!("ALTER ROLE {u} NOLOGIN;"))
            .await
            .map_err(sql(format!("blocking logins of {username:?}")))?;
        client
            .batch_execute(&end_sessions(oid))
            .await
            .map_err(sql(format!("ending the sessions of {username:?}")))?;
        if let Some(custom) = custom {
            let (statements, kind) = match custom {
                Custom::Revocation(statements) => (statements, "revocation"),
                Custom::Rollback(statements) => (statements, "rollback"),
            };
            let tx = client
                .transaction()
                .await
                .map_err(sql("starting a transaction"))?;
            for statement in render_all(statements, username, None, None)? {
                tx.batch_execute(&statement).await.map_err(sql(format!(
                    "running the {kind} statements of user {username:?}"
                )))?;
            }
            tx.commit()
                .await
                .map_err(sql(format!("committing revocation of {username:?}")))?;
            return self.end_sessions_on_replicas(username).await;
        }
        let heir = heir_group.map_or_else(|| "CURRENT_USER".to_string(), quote_ident);
        let databases = self.databases_with_dependents(&**client, username).await?;
        if !databases.is_empty() {
            join(&**client, username).await?;
            if let Some(group) = heir_group {
                join(&**client, group).await?;
            }
        }
        let disown = format!("REASSIGN OWNED BY {u} TO {heir};\nDROP OWNED BY {u};");
        let here = current_database(&**client).await?;
        for database in databases.iter().filter(|d| **d != here) {
            let other = self.connect_to(database).await?;
            other.batch_execute(&disown).await.map_err(sql(format!(
                "disowning {username:?} in database {database:?}"
            )))?;
        }
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting a transaction"))?;
        if databases.contains(&here) {
            tx.batch_execute(&disown)
                .await
                .map_err(sql(format!("disowning {username:?} in database {here:?}")))?;
        }
        tx.batch_execute(&format!("DROP ROLE IF EXISTS {u};"))
            .await
            .map_err(sql(format!("dropping user {username:?}")))?;
        tx.commit()
            .await
            .map_err(sql(format!("committing revocation of {username:?}")))?;
        self.end_sessions_on_replicas(username).await
    }

    /// Ends `username`'s sessions on the standbys of a multi-host URL: a standby keeps the
    /// sessions of a role dropped on the primary. Waits (up to [`REPLAY_WAIT`]) until the user
    /// is gone there, so no new session can start after the last sweep. A host that cannot be
    /// reached fails the revocation (it is retried, and stays visible meanwhile): a standby
    /// cut off from pgwarden may still serve the user.
    async fn end_sessions_on_replicas(&self, username: &str) -> Result<(), EngineError> {
        let hosts = self.hosts();
        if hosts.len() < 2 {
            return Ok(());
        }
        for (host, port) in hosts {
            let client = self.connect_to_host(&host, port).await?;
            let standby: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(sql(format!("asking {host}:{port} whether it is a standby")))?
                .get(0);
            if standby {
                end_sessions_until_gone(&client, username, &host, port).await?;
            }
        }
        Ok(())
    }

    /// Databases holding objects owned by, or privileges granted to, `username`.
    async fn databases_with_dependents(
        &self,
        client: &impl GenericClient,
        username: &str,
    ) -> Result<Vec<String>, EngineError> {
        let rows = client
            .query(
                "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 JOIN pg_roles r ON r.oid = s.refobjid \
                 WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1 AND d.datallowconn",
                &[&username],
            )
            .await
            .map_err(sql(format!("finding what {username:?} owns")))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// The sessions of the cluster, as rows of `pid` and `usesysid` (the role's OID): read from
/// the per-backend functions, which fetch only those two fields. The `pg_stat_activity` view
/// also joins `pg_authid` and `pg_database` (which a churn of created and dropped users makes
/// several times slower than the rest of a revocation), and `pg_stat_get_activity` builds
/// some thirty columns per session: about 40 % more of the database's CPU per read.
const SESSIONS: &str = "(SELECT pg_stat_get_backend_pid(id) AS pid, \
                        pg_stat_get_backend_userid(id) AS usesysid \
                        FROM pg_stat_get_backend_idset() AS id) AS sessions";

/// The statement ending the sessions of the cluster (rows of [`SESSIONS`]) for which the SQL
/// `condition` holds.
fn end_sessions_matching(condition: &str) -> String {
    format!("SELECT pg_terminate_backend(pid) FROM {SESSIONS} WHERE {condition};")
}

/// The statement ending every session of role `oid` but this one, in any database of the
/// cluster.
fn end_sessions(oid: u32) -> String {
    end_sessions_matching(&format!("usesysid = {oid} AND pid <> pg_backend_pid()"))
}

/// The query for the OID of role `username` (null if there is none): `to_regrole` reads the
/// role cache, where the `pg_roles` view is planned and joined for every call.
fn oid_of(username: &str) -> String {
    format!(
        "SELECT to_regrole({})::oid",
        quote_literal(&quote_ident(username))
    )
}

/// The condition on a session (a row of [`SESSIONS`]) whose role no longer exists: once a role
/// is dropped, nothing else names its sessions, and PostgreSQL never ends them by itself (they
/// keep what the role had set, such as a preset user's group role). A role's OID cast to
/// `regrole` reads as its name (quoted when it is all digits) while the role exists and as
/// the bare OID after: a cache lookup per session, where a join with `pg_roles` would read
/// every role of the cluster. (`backend_type` would tell client sessions apart, but an
/// administrator without `pg_read_all_stats` sees it as null for other roles' sessions;
/// background processes, and sessions still authenticating, have role 0, which reads as `-`,
/// or an existing one.)
const DANGLING: &str = "usesysid::regrole::text = usesysid::text";

/// Whether the administrator may end other roles' sessions. In a `WHERE` clause PostgreSQL
/// evaluates it once, before reading any session.
const MAY_SIGNAL: &str = "pg_has_role(current_user, 'pg_signal_backend', 'USAGE')";

/// The statement ending the sessions whose role no longer exists ([`DANGLING`]). Without
/// `pg_signal_backend` it fails on the first one (permission denied), or, `if_allowed`, ends
/// none.
fn end_dangling_sessions_statement(if_allowed: bool) -> String {
    if if_allowed {
        end_sessions_matching(&format!("{MAY_SIGNAL} AND {DANGLING}"))
    } else {
        end_sessions_matching(DANGLING)
    }
}

/// Longest the server may work on the sessions pass's statement (waiting for a lock on the
/// roles' catalog, say): under the pass's own limit, so that a pass given up on has no
/// statement left running on the server when the next one starts.
const SESSIONS_STATEMENT_TIMEOUT: &str = "50s";

/// Ends, through `client`, the sessions whose role no longer exists; returns how many.
async fn end_dangling_sessions(client: &tokio_postgres::Client) -> Result<usize, EngineError> {
    let ended = client
        .simple_query(&format!(
            "BEGIN;\nSET LOCAL statement_timeout = '{SESSIONS_STATEMENT_TIMEOUT}';\n{}\nCOMMIT;",
            end_dangling_sessions_statement(false)
        ))
        .await
        .map_err(sql("ending the sessions of dropped users"))?;
    // A backend gone before its signal (`pg_terminate_backend` false) is not counted.
    Ok(ended
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t")))
        .count())
}

/// Longest the fast revocation's `DROP ROLE` waits for a lock on the role: should pgwarden
/// give up on it (a shutdown), the server must not keep it waiting, queueing every later
/// lock on the role, the retry's included, behind it. A revocation that times out is retried.
const DROP_LOCK_TIMEOUT: &str = "10s";

/// What [`drop_if_nothing_depends`] did to a user.
enum FastDrop {
    /// Dropped (or gone already), and the sessions left without a role ended.
    Dropped,
    /// Left as is: objects or privileges depend on it.
    Kept(u32),
}

/// The name of the fast revocation's check before its drop, prepared on every administrative
/// connection ([`prepare_revocation`]).
const CHECK_BEFORE_DROP: &str = "pgwarden_check_before_drop";

/// The name of the fast revocation's sweep after its commit, prepared on every administrative
/// connection ([`prepare_revocation`]).
const SWEEP_AFTER_DROP: &str = "pgwarden_sweep_after_drop";

/// Prepares the fast revocation's two statements reading the sessions, run when an
/// administrative connection opens: planning them for every revocation cost PostgreSQL more
/// CPU than running them (the check, whose parameter is the user's name quoted as an
/// identifier, may be planned again on its first few runs, until its generic plan is chosen).
/// The check fails on the user's first session (permission denied) for an administrator
/// without `pg_signal_backend`, aborting the drop's transaction; with it, its condition is
/// false before any session is read. The sweep ends the sessions left without a role.
pub(crate) fn prepare_revocation() -> String {
    format!(
        "PREPARE {CHECK_BEFORE_DROP}(text) AS {}\nPREPARE {SWEEP_AFTER_DROP} AS {}",
        end_sessions_matching(&format!(
            "NOT {MAY_SIGNAL} AND usesysid = (SELECT to_regrole($1)::oid)"
        )),
        end_dangling_sessions_statement(true),
    )
}

/// The fast revocation, for a user nothing depends on (the usual case), in one round trip:
/// drops it in a transaction of its own, then, once that has committed (no login can find the
/// role after), ends every session whose role no longer exists: the user's sessions from
/// before the drop, and any that logged in meanwhile. A session still starting up then (it
/// shows its role in `pg_stat_activity` only at the end of its start-up, which a client can
/// delay with `post_auth_delay`) is missed here, and ended by the orphan sweep's sessions pass
/// ([`Target::end_sessions_of_dropped_users`]). The server runs the query string whole once
/// it has it, so pgwarden dying meanwhile does not stop the sessions' end after the commit.
///
/// An administrator without `pg_signal_backend` can end no other role's sessions: then, before
/// the drop, a session of the user fails the transaction (permission denied), so the user is
/// kept, and the revocation fails and is retried until its sessions are gone; sessions of
/// other dropped roles are left to the sessions pass. With it, that check costs nothing.
/// (Reading the sessions costs PostgreSQL more CPU than the rest of the revocation: it is
/// read once, after the drop.) Both statements reading the sessions are prepared when the
/// connection opens; should they be gone (a template ran `DEALLOCATE ALL`), the check fails
/// before the drop, and the connection is closed.
async fn drop_if_nothing_depends(
    client: &tokio_postgres::Client,
    username: &str,
) -> Result<FastDrop, EngineError> {
    let dropped = client
        .batch_execute(&format!(
            "BEGIN;\nSET LOCAL idle_in_transaction_session_timeout = '60s';\n\
             SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}';\n\
             EXECUTE {CHECK_BEFORE_DROP}({});\n\
             DROP ROLE IF EXISTS {};\nCOMMIT;\nEXECUTE {SWEEP_AFTER_DROP};",
            quote_literal(&quote_ident(username)),
            quote_ident(username),
        ))
        .await;
    let error = match dropped {
        Ok(()) => return Ok(FastDrop::Dropped),
        Err(error) => error,
    };
    // Ends the transaction if the drop failed (a failure after its commit leaves none). Should
    // even that fail, so does the lookup below, and the caller's `Held` closes the connection;
    // as it does should this future be dropped first: the server then ends the transaction
    // once it notices (a statement under way runs to its end first).
    let _ = client.batch_execute("ROLLBACK;").await;
    let code = error.code();
    match user_oid(client, username).await {
        Ok(Some(oid)) if code == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
            Ok(FastDrop::Kept(oid))
        }
        Ok(Some(_))
            if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) && !refused_by_drop(&error) =>
        {
            Err(sql(format!(
                "user {username:?} has sessions the administrator cannot end without \
             pg_signal_backend; it is kept until they end"
            ))(error))
        }
        // The drop committed; ending the sessions left without a role failed.
        Ok(None) => Err(sql(format!(
            "ending the sessions of dropped roles after dropping user {username:?}"
        ))(error)),
        // Also when the user could not be looked up: the drop's error says more.
        _ => Err(sql(format!("dropping user {username:?}"))(error)),
    }
}

/// Whether `error` is `DROP ROLE`'s own refusal (a role the administrator may not drop: a
/// superuser, or, from PostgreSQL 16, one it has no `ADMIN OPTION` on), not that of ending
/// a session.
fn refused_by_drop(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().and_then(|e| e.routine()) == Some("DropRole")
}

/// A role's own statements, run instead of the default disowning and drop.
#[derive(Clone, Copy)]
enum Custom<'a> {
    /// Its `revocation_statements`.
    Revocation(&'a [String]),
    /// Its `rollback_statements`.
    Rollback(&'a [String]),
}

/// How long a standby may take to replay a user's drop before revocation counts as failed
/// (and is retried).
const REPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// On a standby: ends `username`'s sessions until the user is gone there too, then ends the
/// sessions left without a role (the user's, found by nothing else once its drop replays).
async fn end_sessions_until_gone(
    client: &tokio_postgres::Client,
    username: &str,
    host: &str,
    port: u16,
) -> Result<(), EngineError> {
    let started = tokio::time::Instant::now();
    let failed = || {
        sql(format!(
            "ending the sessions of {username:?} on {host}:{port}"
        ))
    };
    loop {
        let Some(oid) = user_oid(client, username).await? else {
            client
                .batch_execute(&end_dangling_sessions_statement(false))
                .await
                .map_err(failed())?;
            return Ok(());
        };
        client
            .batch_execute(&end_sessions(oid))
            .await
            .map_err(failed())?;
        if started.elapsed() >= REPLAY_WAIT {
            return Err(EngineError::ReplicaLag {
                username: username.to_string(),
                host: format!("{host}:{port}"),
                waited: REPLAY_WAIT.as_secs(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The group that inherits what a user of `role` owns: a preset's group, else none (the
/// administrator).
fn heir_group(role: &RoleDef) -> Option<&str> {
    match &role.kind {
        RoleKind::Preset { group_role, .. } => Some(group_role),
        RoleKind::Statements(_) | RoleKind::Identity => None,
    }
}

/// The statement creating `username`, a member of `group` acting as it by default.
fn member_of(group: &str, username: &str, verifier: &str, until: &str) -> String {
    let u = quote_ident(username);
    format!(
        "CREATE ROLE {u} WITH LOGIN PASSWORD {} VALID UNTIL {} IN ROLE {};\n\
         ALTER ROLE {u} SET role = {};",
        quote_literal(verifier),
        quote_literal(until),
        quote_ident(group),
        quote_literal(group),
    )
}

/// Sends `BEGIN` and a user's creation `statements` in one round trip. On failure the
/// transaction is rolled back, so the connection can be used for a retry (the caller closes
/// it once it gives up: the `ROLLBACK` may have failed too).
async fn begin_with(
    client: &tokio_postgres::Client,
    statements: &[String],
    what: &str,
) -> Result<(), EngineError> {
    // The timeout ends the transaction should pgwarden vanish before committing (the server
    // would otherwise hold its locks until TCP gives up). A template's `COMMIT` or `END` would
    // leave a user existing unrecorded: `in_one_transaction` catches it.
    let outcome = in_one_transaction(
        client,
        "BEGIN;\nSET LOCAL idle_in_transaction_session_timeout = '60s';\n",
        statements,
        what,
    )
    .await;
    if outcome.is_err() {
        let _ = client.batch_execute("ROLLBACK;").await;
    }
    outcome
}

/// Sends `prefix` and `statements` in one round trip, reading the transaction's id before and
/// after the statements: when a statement ended the transaction (`COMMIT`, `END`,
/// `ROLLBACK`), the ids differ and the answer is [`EngineError::TransactionEnded`]. (Creating
/// or altering a role takes an id anyway.)
pub(crate) async fn in_one_transaction(
    client: &tokio_postgres::Client,
    prefix: &str,
    statements: &[String],
    what: &str,
) -> Result<(), EngineError> {
    // A newline ends a trailing `--` comment before each separator.
    let body: String = statements
        .iter()
        .map(|statement| format!("{statement}\n;\n"))
        .collect();
    let messages = client
        .simple_query(&format!(
            "{prefix}SELECT txid_current()::text;\n{body}SELECT txid_current()::text;"
        ))
        .await
        .map_err(sql(what.to_string()))?;
    let ids: Vec<&str> = messages
        .iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .collect();
    match (ids.first(), ids.last()) {
        (Some(first), Some(last)) if first == last => Ok(()),
        _ => Err(EngineError::TransactionEnded {
            what: what.to_string(),
        }),
    }
}

/// A user created in a transaction not yet committed: no one can see or use it. Dropped
/// without [`UncommittedUser::commit`], its connection is closed, which rolls it back.
///
/// Its creation statements have answered before `COMMIT` is sent. Sending `COMMIT` right
/// behind them would save a round trip, but should the connection be cut while they still
/// run (waiting for a lock, say), the server would find that `COMMIT` when they finish and
/// commit a user that pgwarden, told the connection failed, has already rolled back.
pub struct UncommittedUser {
    client: Held,
    what: String,
}

impl UncommittedUser {
    /// Commits the user: from now on it exists. (Dropped before it is first polled, the
    /// connection is closed and the user never exists; after, the `COMMIT` sent runs all the
    /// same, and whether the user exists is unknown to the caller.)
    pub async fn commit(self) -> Result<(), EngineError> {
        // Released before `COMMIT`, which goes out on this future's first poll: should it be
        // dropped before the answer, the connection still commits, in order before whatever
        // its next user sends (closing it could lose the `COMMIT` unsent). Any answer to
        // `COMMIT` ends the transaction; a broken connection the pool discards.
        self.client
            .release()
            .batch_execute("COMMIT;")
            .await
            .map_err(sql(format!("committing: {}", self.what)))
    }

    /// Rolls the user back: it never existed.
    pub async fn rollback(self) {
        if self.client.batch_execute("ROLLBACK;").await.is_ok() {
            drop(self.client.release());
        }
    }
}

/// Renders each statement with the user's name and, where given, password and expiration.
pub(crate) fn render_all(
    statements: &[String],
    username: &str,
    password: Option<&str>,
    expiration: Option<&str>,
) -> Result<Vec<String>, EngineError> {
    let values = TemplateValues {
        name: username,
        password,
        expiration,
    };
    statements
        .iter()
        .map(|s| render(s, &values).map_err(EngineError::from))
        .collect()
}

/// The OID of role `username`, if it exists.
async fn user_oid(client: &impl GenericClient, username: &str) -> Result<Option<u32>, EngineError> {
    // A simple query: one round trip, where a parameterised one takes two (parse, then run).
    let messages = client
        .simple_query(&oid_of(username))
        .await
        .map_err(sql(format!("looking up role {username:?}")))?;
    Ok(first_oid(&messages))
}

/// The first column of the first row among `messages`, as an OID.
fn first_oid(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<u32> {
    messages.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|oid| oid.parse().ok()),
        _ => None,
    })
}

pub(crate) async fn user_exists(
    client: &impl GenericClient,
    username: &str,
) -> Result<bool, EngineError> {
    Ok(user_oid(client, username).await?.is_some())
}
