//! The contract every [`Store`] backend keeps, run against SQLite and against PostgreSQL (a
//! throwaway cluster from the testkit, with a fresh database per check).

use pgwarden_core::audit::KEYED_PREFIX;
use pgwarden_core::static_role::{Rotation, StaticRoleDef};
use pgwarden_core::{
    AccessRequest, AuditEvent, ChainKey, ChainVerifier, Identity, Lease, LeaseState, Outcome,
    Owner, RequestState, RevokeReason, RoleDef, RoleSpec, TokenRecord, Ttl,
};
use pgwarden_store::{
    AuditQuery, ConnectionChange, Durability, PostgresStore, SqliteStore, Store, StoredConnection,
    StoredRequest, StoredStaticRole,
};
use pgwarden_testkit::PgCluster;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::datetime;

/// A store opened on one check's state; every call opens the same state again (as after a
/// restart, or on another replica).
type Open = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send + Sync>;
/// How a check receives its opener.
type Opener<'a> = &'a Open;

fn role() -> RoleDef {
    serde_json::from_str::<RoleSpec>(
        r#"{"db_name":"appdb","preset":"readonly","default_ttl":60,"max_ttl":600}"#,
    )
    .unwrap()
    .into_def("ro")
    .unwrap()
}

/// A pending lease of the root token, for role [`role`], issued at `t0`.
fn root_lease(username: &str, t0: OffsetDateTime) -> Lease {
    Lease::new_pending(
        "database",
        &role(),
        username.into(),
        Owner::root(),
        Ttl::default(),
        t0,
    )
}

async fn a_lease_moves_on_only_from_the_state_its_writer_saw(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let mut lease = root_lease("u", t0);
    store.insert_lease(&lease).await.unwrap();
    lease.state = LeaseState::Active;
    assert!(
        store
            .update_lease(&lease, LeaseState::Pending, Durability::Relaxed)
            .await
            .unwrap()
    );
    // A second activation (another replica's, say) finds it moved on.
    assert!(
        !store
            .update_lease(&lease, LeaseState::Pending, Durability::Relaxed)
            .await
            .unwrap()
    );
    lease.state = LeaseState::Revoking(RevokeReason::Expired);
    assert!(
        store
            .update_lease(&lease, LeaseState::Active, Durability::Relaxed)
            .await
            .unwrap()
    );
    // A renewal racing the revocation cannot make it active again.
    let mut renewed = lease.clone();
    renewed.state = LeaseState::Active;
    assert!(
        !store
            .update_lease(&renewed, LeaseState::Active, Durability::Relaxed)
            .await
            .unwrap()
    );
    let stored = store.get_lease(&lease.id).await.unwrap().unwrap();
    assert_eq!(stored.state, LeaseState::Revoking(RevokeReason::Expired));
    // A failed attempt is recorded whatever the revocation's reason: states compare by name.
    lease.revoke_attempts = 1;
    assert!(
        store
            .update_lease(
                &lease,
                LeaseState::Revoking(RevokeReason::Requested),
                Durability::Synced
            )
            .await
            .unwrap()
    );
    let stored = store.get_lease(&lease.id).await.unwrap().unwrap();
    assert_eq!(stored.state, LeaseState::Revoking(RevokeReason::Expired));
    assert_eq!(stored.revoke_attempts, 1);
    store.delete_lease(&lease.id).await.unwrap();
    assert!(
        !store
            .update_lease(
                &lease,
                LeaseState::Revoking(RevokeReason::Requested),
                Durability::Relaxed
            )
            .await
            .unwrap()
    );
}

async fn due_leases_are_expired_revoking_or_stale_pending_or_stale_rollbacks(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let mut expired = root_lease("expired", t0);
    expired.state = LeaseState::Active;
    let mut live = root_lease("live", t0);
    live.state = LeaseState::Active;
    live.expires_at = t0 + Duration::from_secs(3600);
    let mut revoking = root_lease("revoking", t0);
    revoking.state = LeaseState::Revoking(RevokeReason::Requested);
    revoking.expires_at = t0 + Duration::from_secs(3600);
    let mut stale = root_lease("stale", t0 - Duration::from_secs(600));
    stale.expires_at = t0 + Duration::from_secs(3600);
    let mut in_flight = root_lease("in-flight", t0);
    in_flight.expires_at = t0 + Duration::from_secs(3600);
    // Rolled back while pending: the issuer may still commit its user until `stale`.
    let mut rolled_back_in_flight = root_lease("rolled-back-in-flight", t0);
    rolled_back_in_flight.state = LeaseState::Revoking(RevokeReason::Rollback);
    let mut rolled_back_stale = root_lease("rolled-back-stale", t0 - Duration::from_secs(600));
    rolled_back_stale.state = LeaseState::Revoking(RevokeReason::Rollback);
    for lease in [
        &expired,
        &live,
        &revoking,
        &stale,
        &in_flight,
        &rolled_back_in_flight,
        &rolled_back_stale,
    ] {
        store.insert_lease(lease).await.unwrap();
    }
    let mut due = store
        .due_lease_ids(t0 + Duration::from_secs(120), t0 - Duration::from_secs(60))
        .await
        .unwrap();
    due.sort();
    assert_eq!(
        store.get_lease(&revoking.id).await.unwrap().unwrap().state,
        LeaseState::Revoking(RevokeReason::Requested)
    );
    let mut expected = vec![expired.id, revoking.id, stale.id, rolled_back_stale.id];
    expected.sort();
    assert_eq!(due, expected);
}

async fn one_holder_leads_until_its_lead_lapses(open: Opener<'_>, shared: bool) {
    let store = open().await;
    // Opened before the lead is taken, so that opening it (slow on a loaded machine) cannot
    // outlast the lead.
    let other = if shared { Some(open().await) } else { None };
    let ttl = Duration::from_secs(5);
    assert!(store.lead("replica-a", ttl).await.unwrap());
    assert!(
        store.lead("replica-a", ttl).await.unwrap(),
        "the leader keeps it"
    );
    let Some(other) = other else {
        return; // one process owns an embedded store: it always leads
    };
    assert!(
        !other.lead("replica-b", ttl).await.unwrap(),
        "one leader at a time"
    );
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(
        other.lead("replica-b", ttl).await.unwrap(),
        "a lapsed lead passes on"
    );
    assert!(!store.lead("replica-a", ttl).await.unwrap());
}

async fn leases_survive_reopening(open: Opener<'_>) {
    let t0 = datetime!(2026-11-22 10:00:00.123 UTC);
    let mut lease = root_lease("v-x", t0);
    {
        let store = open().await;
        store.insert_lease(&lease).await.unwrap();
        lease.state = LeaseState::Revoking(RevokeReason::Rollback);
        lease.revoke_attempts = 2;
        lease.last_error = Some("boom".into());
        store
            .update_lease(&lease, LeaseState::Pending, Durability::Relaxed)
            .await
            .unwrap();
    }
    let store = open().await;
    assert_eq!(
        store.get_lease(&lease.id).await.unwrap(),
        Some(lease.clone())
    );
    assert_eq!(store.all_leases().await.unwrap(), vec![lease.clone()]);
    assert_eq!(
        store
            .lease_ids_with_prefix("database/creds/")
            .await
            .unwrap(),
        vec![lease.id.clone()]
    );
    assert!(
        store
            .lease_ids_with_prefix("database/creds/r_")
            .await
            .unwrap()
            .is_empty()
    );
    store.delete_lease(&lease.id).await.unwrap();
    assert_eq!(store.get_lease(&lease.id).await.unwrap(), None);
}

async fn tokens_round_trip_and_find_their_leases(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let token = TokenRecord {
        accessor: "acc1".into(),
        hash: "h1".into(),
        identity: Identity {
            subject: "eu/system:serviceaccount:a:b".into(),
            groups: vec!["g".into()],
            display_name: "kubernetes-a-b".into(),
            metadata: Default::default(),
            subject_prefix: "eu/".into(),
        },
        mount: "kubernetes".into(),
        role: "r".into(),
        issued_at: t0,
        expires_at: t0 + std::time::Duration::from_secs(60),
        max_expires_at: t0 + std::time::Duration::from_secs(600),
        ttl: Ttl::from_secs(60),
    };
    store.insert_token(&token).await.unwrap();
    assert_eq!(
        store.token_by_hash("h1").await.unwrap(),
        Some(token.clone())
    );
    let owner = Owner {
        display_name: "kubernetes-a-b".into(),
        subject: token.identity.subject.clone(),
        token_accessor: Some("acc1".into()),
    };
    let lease = Lease::new_pending("database", &role(), "u".into(), owner, Ttl::default(), t0);
    store.insert_lease(&lease).await.unwrap();
    assert_eq!(
        store.get_lease(&lease.id).await.unwrap().unwrap().owner,
        lease.owner
    );
    store
        .set_token_expiry("acc1", t0 + std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        store
            .token_by_accessor("acc1")
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        t0 + std::time::Duration::from_secs(120)
    );
    assert_eq!(
        store
            .delete_expired_tokens(t0 + std::time::Duration::from_secs(121))
            .await
            .unwrap(),
        1
    );
    assert!(!store.delete_token("acc1").await.unwrap());
}

/// A token of person `user:ola` logged in at `t0`, with `accessor`.
fn ola_token(accessor: &str, t0: OffsetDateTime) -> TokenRecord {
    TokenRecord {
        accessor: accessor.into(),
        hash: format!("hash-{accessor}"),
        identity: Identity {
            subject: "user:ola".into(),
            groups: Vec::new(),
            display_name: "jwt-ola".into(),
            metadata: Default::default(),
            subject_prefix: String::new(),
        },
        mount: "jwt".into(),
        role: "people".into(),
        issued_at: t0,
        expires_at: t0 + std::time::Duration::from_secs(60),
        max_expires_at: t0 + std::time::Duration::from_secs(600),
        ttl: Ttl::from_secs(60),
    }
}

/// A pending lease for `username`, issued at `t0` to the token with `accessor`.
fn ola_lease(accessor: &str, username: &str, t0: OffsetDateTime) -> Lease {
    let owner = Owner {
        display_name: "jwt-ola".into(),
        subject: "user:ola".into(),
        token_accessor: Some(accessor.into()),
    };
    Lease::new_pending(
        "database",
        &role(),
        username.into(),
        owner,
        Ttl::default(),
        t0,
    )
}

async fn a_revoked_token_leaves_its_leases_marked_for_revocation(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let token = |accessor: &str| ola_token(accessor, t0);
    let lease_of = |accessor: &str, username: &str| ola_lease(accessor, username, t0);
    store.insert_token(&token("out")).await.unwrap();
    store.insert_token(&token("kept")).await.unwrap();
    let (pending, mut active, mut failing, other) = (
        lease_of("out", "pending"),
        lease_of("out", "active"),
        lease_of("out", "failing"),
        lease_of("kept", "other"),
    );
    for lease in [&pending, &active, &failing, &other] {
        store.insert_lease(lease).await.unwrap();
    }
    active.state = LeaseState::Active;
    failing.state = LeaseState::Revoking(RevokeReason::Expired);
    for lease in [&active, &failing] {
        assert!(
            store
                .update_lease(lease, LeaseState::Pending, Durability::Synced)
                .await
                .unwrap()
        );
    }
    let mut ids = vec![pending.id.clone(), active.id.clone(), failing.id.clone()];
    ids.sort();
    assert_eq!(store.revoke_token("out").await.unwrap(), ids);
    assert_eq!(store.token_by_hash("hash-out").await.unwrap(), None);
    let state = async |lease: &Lease| store.get_lease(&lease.id).await.unwrap().unwrap().state;
    assert_eq!(
        state(&pending).await,
        LeaseState::Revoking(RevokeReason::Rollback),
        "still being issued: rolled back"
    );
    assert_eq!(
        state(&active).await,
        LeaseState::Revoking(RevokeReason::Requested)
    );
    assert_eq!(
        state(&failing).await,
        LeaseState::Revoking(RevokeReason::Expired),
        "a revocation under way keeps its reason"
    );
    assert_eq!(state(&other).await, LeaseState::Pending, "another token's");
    assert!(store.token_by_hash("hash-kept").await.unwrap().is_some());
    assert!(store.revoke_token("nobody").await.unwrap().is_empty());
}

async fn concurrent_writes_commit_together_and_a_failing_one_fails_alone(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let taken = root_lease("taken", t0);
    store.insert_lease(&taken).await.unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..200 {
        let store = store.clone();
        // Every tenth write reuses the taken id, and fails on the primary key.
        let mut lease = root_lease(&format!("u{n}"), t0);
        if n % 10 == 0 {
            lease.id = taken.id.clone();
        }
        writes.spawn(async move { (n, store.insert_lease(&lease).await) });
    }
    let mut failed = Vec::new();
    for (n, outcome) in writes.join_all().await {
        match outcome {
            Ok(()) => assert_ne!(n % 10, 0, "write {n} reused an id but succeeded"),
            Err(e) => {
                let message = e.to_string();
                // SQLite's and PostgreSQL's words for the same violation.
                assert!(
                    message.contains("UNIQUE constraint failed")
                        || message.contains("duplicate key value"),
                    "write {n}: {message}"
                );
                failed.push(n);
            }
        }
    }
    assert_eq!(failed.len(), 20);
    drop(store);
    // Everything that succeeded was committed, and survives reopening.
    let store = open().await;
    assert_eq!(store.all_leases().await.unwrap().len(), 181);
    assert_eq!(store.get_lease(&taken.id).await.unwrap(), Some(taken));
}

async fn prefix_matching_is_literal(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    let mut a = root_lease("a", t0);
    a.id = "database/creds/a%/1".into();
    let mut b = root_lease("b", t0);
    b.id = "database/creds/ab/1".into();
    store.insert_lease(&a).await.unwrap();
    store.insert_lease(&b).await.unwrap();
    assert_eq!(
        store
            .lease_ids_with_prefix("database/creds/a%")
            .await
            .unwrap(),
        vec![a.id]
    );
}

async fn roles_and_connections_round_trip(open: Opener<'_>) {
    let store = open().await;
    store.put_role("database", &role()).await.unwrap();
    store.put_role("database", &role()).await.unwrap();
    assert_eq!(
        store.roles().await.unwrap(),
        vec![("database".to_string(), role())]
    );
    assert!(store.delete_role("database", "ro").await.unwrap());
    assert!(!store.delete_role("database", "ro").await.unwrap());
    let conn = StoredConnection {
        name: "appdb".into(),
        connection_url: "postgresql://h/db".into(),
        username: "admin".into(),
        sealed_password: vec![1, 2, 3],
        allowed_roles: vec!["appdb-*".into()],
        verify_connection: true,
        sealed_pending_password: None,
    };
    store.put_connection("database", &conn).await.unwrap();
    assert_eq!(
        store.connections().await.unwrap(),
        vec![("database".to_string(), conn.clone())]
    );
    // A root rotation in flight keeps both passwords.
    let rotating = StoredConnection {
        sealed_pending_password: Some(vec![4, 5]),
        ..conn
    };
    store.put_connection("database", &rotating).await.unwrap();
    assert_eq!(
        store.connections().await.unwrap(),
        vec![("database".to_string(), rotating)]
    );
    assert_eq!(
        store.delete_connection("database", "appdb").await.unwrap(),
        ConnectionChange::Changed
    );
    assert!(store.connections().await.unwrap().is_empty());
    assert_eq!(
        store.delete_connection("database", "appdb").await.unwrap(),
        ConnectionChange::Missing
    );
}

/// Connection `appdb` of mount `database`, reaching `url`.
fn appdb_connection(url: &str) -> StoredConnection {
    StoredConnection {
        name: "appdb".into(),
        connection_url: url.into(),
        username: "admin".into(),
        sealed_password: vec![1, 2, 3],
        allowed_roles: vec!["*".into()],
        verify_connection: false,
        sealed_pending_password: None,
    }
}

const HERE: &str = "postgresql://here/appdb";
const THERE: &str = "postgresql://there/appdb";

async fn a_connection_in_use_is_neither_deleted_nor_moved(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-12-08 10:00:00 UTC);
    let write = async |url: &str, expected: Option<&str>, moves: bool| {
        store
            .write_connection("database", &appdb_connection(url), expected, moves)
            .await
            .unwrap()
    };
    // Written only over the connection its writer read.
    assert_eq!(
        write(HERE, Some(HERE), false).await,
        ConnectionChange::Stale
    );
    assert_eq!(write(HERE, None, false).await, ConnectionChange::Changed);
    assert_eq!(write(HERE, None, false).await, ConnectionChange::Stale);
    assert_eq!(
        write(THERE, Some(THERE), true).await,
        ConnectionChange::Stale
    );
    // A lease of another connection, or recorded through another URL, does not use it.
    let elsewhere = serde_json::from_str::<RoleSpec>(
        r#"{"db_name":"otherdb","preset":"readonly","default_ttl":60,"max_ttl":600}"#,
    )
    .unwrap()
    .into_def("other")
    .unwrap();
    let other = Lease {
        role: elsewhere,
        ..root_lease("other", t0)
    };
    store.insert_lease(&other).await.unwrap();
    let stale = root_lease("stale", t0);
    assert!(!store.insert_lease_via(&stale, THERE).await.unwrap());
    assert_eq!(store.get_lease(&stale.id).await.unwrap(), None);

    let used = root_lease("used", t0);
    assert!(store.insert_lease_via(&used, HERE).await.unwrap());
    assert_eq!(store.get_lease(&used.id).await.unwrap(), Some(used.clone()));
    assert_eq!(
        write(THERE, Some(HERE), true).await,
        ConnectionChange::UsedBy(1)
    );
    assert_eq!(
        store.delete_connection("database", "appdb").await.unwrap(),
        ConnectionChange::UsedBy(1)
    );
    assert_eq!(
        store.connections().await.unwrap(),
        vec![("database".to_string(), appdb_connection(HERE))]
    );
    // A rewrite that keeps the server is not a move.
    assert_eq!(
        write(HERE, Some(HERE), false).await,
        ConnectionChange::Changed
    );

    store.delete_lease(&used.id).await.unwrap();
    assert_eq!(
        write(THERE, Some(HERE), true).await,
        ConnectionChange::Changed
    );
    let behind = root_lease("behind", t0);
    assert!(!store.insert_lease_via(&behind, HERE).await.unwrap());
    assert_eq!(
        store.delete_connection("database", "appdb").await.unwrap(),
        ConnectionChange::Changed
    );
    assert_eq!(
        store.delete_connection("database", "appdb").await.unwrap(),
        ConnectionChange::Missing
    );
    let gone = root_lease("gone", t0);
    assert!(!store.insert_lease_via(&gone, THERE).await.unwrap());
    assert_eq!(store.all_leases().await.unwrap(), vec![other]);
}

/// A pending request for `database/appdb-admin` made at `t0`.
fn request(id: &str, t0: OffsetDateTime) -> StoredRequest {
    StoredRequest {
        request: AccessRequest {
            id: id.into(),
            version: 0,
            state: RequestState::Pending,
            requester: "user:ola".into(),
            requester_subjects: vec!["user:ola".into(), "group:dev".into()],
            requester_display: "oidc-ola".into(),
            mount: "database".into(),
            role: "appdb-admin".into(),
            reason: "incident 42 — «quoted»".into(),
            ttl: Ttl::from_secs(3600),
            subjects: vec!["user:ola".into()],
            created_at: t0,
            expires_at: t0 + Duration::from_secs(86_400),
            approvals: vec![],
            denial: None,
            withdrawal: None,
            lease_id: None,
        },
        sealed_credential: None,
    }
}

async fn a_request_changes_only_from_the_version_its_writer_saw(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-11-25 10:00:00 UTC);
    let older = request("req-older", t0);
    store.insert_request(&older).await.unwrap();
    let mut r = request("req-1", t0 + Duration::from_secs(1));
    store.insert_request(&r).await.unwrap();
    assert_eq!(store.get_request("req-1").await.unwrap(), Some(r.clone()));
    // Two approvers decide at once: the second to write finds the version moved on.
    let mut first = r.clone();
    first.request.state = RequestState::Approved;
    first.request.version = 1;
    first.request.lease_id = Some("database/creds/appdb-admin/x".into());
    first.sealed_credential = Some(vec![1, 2, 3]);
    assert!(store.update_request(&first, 0).await.unwrap());
    r.request.state = RequestState::Denied;
    r.request.version = 1;
    assert!(!store.update_request(&r, 0).await.unwrap());
    drop(store);
    let store = open().await;
    assert_eq!(
        store.get_request("req-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_request("req-none").await.unwrap(), None);
    assert_eq!(
        store.all_requests().await.unwrap(),
        vec![first.clone(), older.clone()],
        "newest first"
    );
    // Forgotten only from the version its deleter saw.
    assert!(!store.delete_request("req-1", 0).await.unwrap());
    assert!(store.delete_request("req-1", 1).await.unwrap());
    assert!(!store.delete_request("req-1", 1).await.unwrap(), "gone");
    drop(store);
    let store = open().await;
    assert_eq!(store.all_requests().await.unwrap(), vec![older]);
}

/// Static role `name` of mount `database`, never rotated, due at `t0`.
fn static_role(name: &str, t0: OffsetDateTime) -> StoredStaticRole {
    StoredStaticRole {
        mount: "database".into(),
        def: StaticRoleDef {
            name: name.into(),
            db_name: "appdb".into(),
            username: "legacy app".into(),
            rotation: Rotation::Schedule("0 3 * * *".into()),
            rotation_statements: vec![],
        },
        version: 0,
        sealed_password: None,
        sealed_pending: None,
        last_rotation: None,
        next_rotation: t0,
        from_file: false,
    }
}

async fn a_static_role_changes_only_from_the_version_its_writer_saw(open: Opener<'_>) {
    let store = open().await;
    let t0 = datetime!(2026-12-06 10:00:00.25 UTC);
    let mut role = static_role("legacy", t0);
    assert!(store.insert_static_role(&role).await.unwrap());
    assert!(
        !store.insert_static_role(&role).await.unwrap(),
        "a second insert of the same name is refused"
    );
    // A rotation stores its new password before the database is told...
    let mut pending = role.clone();
    pending.version = 1;
    pending.sealed_pending = Some(vec![1, 2]);
    assert!(store.update_static_role(&pending, 0).await.unwrap());
    // ...and a concurrent writer that saw version 0 loses.
    role.version = 1;
    role.def.rotation = Rotation::Period(Ttl::from_secs(60));
    assert!(!store.update_static_role(&role, 0).await.unwrap());
    let mut done = pending.clone();
    done.version = 2;
    done.sealed_password = done.sealed_pending.take();
    done.last_rotation = Some(t0 + Duration::from_secs(1));
    done.next_rotation = t0 + Duration::from_secs(86_400);
    done.from_file = true;
    assert!(store.update_static_role(&done, 1).await.unwrap());
    drop(store);
    let store = open().await;
    assert_eq!(
        store.get_static_role("database", "legacy").await.unwrap(),
        Some(done.clone())
    );
    let other = static_role("another", t0);
    assert!(store.insert_static_role(&other).await.unwrap());
    assert_eq!(
        store.static_roles().await.unwrap(),
        vec![other, done.clone()]
    );
    assert!(
        !store
            .delete_static_role("database", "legacy", 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_static_role("database", "legacy", 2)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_static_role("database", "legacy").await.unwrap(),
        None
    );
}

fn event(actor: &str, action: &str, n: usize) -> AuditEvent {
    AuditEvent::now(actor, action, &format!("object-{n}"), Outcome::Success)
        .with_detail(format!("detail {n}"))
}

async fn audit_appends_from_replicas_form_one_chain(open: Opener<'_>) {
    // Two handles on the same state: two replicas (or, for SQLite, a reopened file), which
    // share the seal key the chain is keyed with.
    let (a, b) = (open().await, open().await);
    let key = ChainKey::derive(&[3; 32]);
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        appends.spawn(async move {
            let events = [
                event("user:ola", "creds.issue", n),
                event("root", "lease.revoke", n),
            ];
            store
                .append_audit(&events, Durability::Synced, Some(&key))
                .await
                .unwrap()
        });
    }
    for records in appends.join_all().await {
        // Each batch stays together and in order.
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].seq, records[0].seq + 1);
        assert_eq!(records[1].prev_hash, records[0].hash);
    }
    let all = a.audit_records(&AuditQuery::all(1000)).await.unwrap();
    assert_eq!(all.len(), 80);
    assert!(all.iter().all(|r| r.hash.starts_with(KEYED_PREFIX)));
    let mut verifier = ChainVerifier::new(Some(key));
    for record in &all {
        verifier.check(record).unwrap();
    }
    verifier.finish().unwrap();
    assert!(
        ChainVerifier::default().check(&all[0]).is_err(),
        "keyed: not checked without the key"
    );
    let revokes = a
        .audit_records(&AuditQuery {
            after: 10,
            since: None,
            actor: Some("root".into()),
            action: Some("lease.revoke".into()),
            limit: 5,
        })
        .await
        .unwrap();
    assert_eq!(revokes.len(), 5);
    assert!(
        revokes
            .iter()
            .all(|r| r.seq > 10 && r.event.actor == "root")
    );
    let future = a
        .audit_records(&AuditQuery {
            since: Some(OffsetDateTime::now_utc() + Duration::from_secs(60)),
            ..AuditQuery::all(10)
        })
        .await
        .unwrap();
    assert!(future.is_empty());
}

/// A PostgreSQL store on the database at `url`, its relaxed writes on sessions without
/// synchronous commit, as pgwarden opens it.
async fn postgres_store(url: &str) -> PostgresStore {
    let pool = |options: Option<&str>| {
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        if let Some(options) = options {
            config.options(options);
        }
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .build()
            .unwrap()
    };
    PostgresStore::open(pool(None), pool(Some("-c synchronous_commit=off")))
        .await
        .unwrap()
}

/// Every check, each on fresh state from `fresh`.
async fn run_all<F, Fut>(fresh: F, shared: bool)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Open>,
{
    leases_survive_reopening(&fresh().await).await;
    tokens_round_trip_and_find_their_leases(&fresh().await).await;
    a_revoked_token_leaves_its_leases_marked_for_revocation(&fresh().await).await;
    concurrent_writes_commit_together_and_a_failing_one_fails_alone(&fresh().await).await;
    prefix_matching_is_literal(&fresh().await).await;
    roles_and_connections_round_trip(&fresh().await).await;
    a_connection_in_use_is_neither_deleted_nor_moved(&fresh().await).await;
    a_lease_moves_on_only_from_the_state_its_writer_saw(&fresh().await).await;
    due_leases_are_expired_revoking_or_stale_pending_or_stale_rollbacks(&fresh().await).await;
    one_holder_leads_until_its_lead_lapses(&fresh().await, shared).await;
    a_request_changes_only_from_the_version_its_writer_saw(&fresh().await).await;
    a_static_role_changes_only_from_the_version_its_writer_saw(&fresh().await).await;
    audit_appends_from_replicas_form_one_chain(&fresh().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_the_contract() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_all(
        || {
            let dir = Arc::new(tempfile::tempdir().unwrap());
            dirs.lock().unwrap().push(dir.clone());
            let open: Open = Box::new(move || {
                let dir = dir.clone();
                Box::pin(async move {
                    Arc::new(SqliteStore::open(dir.path()).unwrap()) as Arc<dyn Store>
                })
            });
            async move { open }
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_contract() {
    let cluster = PgCluster::start().unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    run_all(
        || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let database = format!("state{n}");
            let url = cluster.superuser_url(&database);
            let su = &su;
            async move {
                su.batch_execute(&format!("CREATE DATABASE {database}"))
                    .await
                    .unwrap();
                let open: Open = Box::new(move || {
                    let url = url.clone();
                    Box::pin(async move { Arc::new(postgres_store(&url).await) as Arc<dyn Store> })
                });
                open
            }
        },
        true,
    )
    .await;
}

/// A cluster with a PostgreSQL store on its database `racing`, for checks that interleave
/// its statements with other sessions'.
async fn racing_store() -> (PgCluster, Arc<dyn Store>) {
    let cluster = PgCluster::start().unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE racing").await.unwrap();
    let store = Arc::new(postgres_store(&cluster.superuser_url("racing")).await);
    (cluster, store)
}

/// Waits until a session of database `racing` running a statement that starts with `prefix`
/// waits for a lock; false if none did within 4 s.
async fn waits_for_a_lock(watcher: &tokio_postgres::Client, prefix: &str) -> bool {
    for _ in 0..200 {
        let waiting = watcher
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE datname = 'racing' \
                 AND wait_event_type = 'Lock' AND starts_with(query, $1)",
                &[&prefix],
            )
            .await
            .unwrap();
        if waiting.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

// A logout on one replica and an issuance on another, interleaved as in the worst case: the
// logout has deleted the token but is held up (here by a lock on one of the token's leases)
// before marking the token's leases, while the issuance records its lease. Had the lease been
// recorded then, its issuer would still read the token (the logout has not committed) and
// activate it, and the logout would not mark it: a crash before the logout revoked it would
// leave the credential active though its token was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_recorded_during_a_logout_is_marked_or_finds_the_token_gone() {
    let (cluster, store) = racing_store().await;
    let t0 = datetime!(2026-11-22 10:00:00 UTC);
    store.insert_token(&ola_token("out", t0)).await.unwrap();
    let first = ola_lease("out", "first", t0);
    store.insert_lease(&first).await.unwrap();

    let holder = cluster.connect_superuser("racing").await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM pgwarden_leases WHERE id = '{}' FOR UPDATE",
            first.id
        ))
        .await
        .unwrap();
    let logout = tokio::spawn({
        let store = store.clone();
        async move { store.revoke_token("out").await.unwrap() }
    });
    let watcher = cluster.connect_superuser("racing").await.unwrap();
    assert!(
        waits_for_a_lock(&watcher, "UPDATE").await,
        "the logout never waited before marking the leases"
    );

    let second = ola_lease("out", "second", t0);
    let mut issuance = tokio::spawn({
        let (store, second) = (store.clone(), second.clone());
        async move {
            store.insert_lease(&second).await.unwrap();
            // What the issuer reads once its lease is recorded.
            store.token_by_accessor("out").await.unwrap().is_some()
        }
    });
    let early = tokio::time::timeout(Duration::from_secs(1), &mut issuance).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    let marked = logout.await.unwrap();
    let token_seen = match early {
        Ok(seen) => seen.unwrap(),
        Err(_) => issuance.await.unwrap(),
    };
    let state = store.get_lease(&second.id).await.unwrap().unwrap().state;
    assert!(
        !token_seen || state == LeaseState::Revoking(RevokeReason::Rollback),
        "the issuer read the token after recording its lease, yet the logout left the lease \
         {state:?} (it marked {marked:?})"
    );
}

// A deletion of a connection through one replica and an issuance through it on another,
// interleaved both ways, then a move first. Had the issuance recorded its lease during the deletion (both
// reading the state before the other's commit), the lease would name a connection gone, and
// its user could never be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_recorded_during_a_connection_change_refuses_it_or_is_not_recorded() {
    let (cluster, store) = racing_store().await;
    let t0 = datetime!(2026-12-08 10:00:00 UTC);
    let holder = cluster.connect_superuser("racing").await.unwrap();
    let watcher = cluster.connect_superuser("racing").await.unwrap();
    store
        .put_connection("database", &appdb_connection(HERE))
        .await
        .unwrap();

    // The issuance first: it has locked the connection and waits (here on another session
    // inserting the same lease id) when the deletion comes. The deletion waits for it, then
    // counts its lease.
    let first = root_lease("first", t0);
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO pgwarden_leases (id, username, owner, mount, role_json, state, \
             issued_at_ms, expires_at_ms, max_expires_at_ms, subject) \
             VALUES ('{}', 'x', 'x', 'x', '{{}}', 'pending', 0, 0, 0, 'x')",
            first.id
        ))
        .await
        .unwrap();
    let issuance = tokio::spawn({
        let (store, first) = (store.clone(), first.clone());
        async move { store.insert_lease_via(&first, HERE).await.unwrap() }
    });
    assert!(
        waits_for_a_lock(&watcher, "WITH token").await,
        "the issuance never waited"
    );
    let deletion = tokio::spawn({
        let store = store.clone();
        async move { store.delete_connection("database", "appdb").await.unwrap() }
    });
    assert!(
        waits_for_a_lock(&watcher, "SELECT connection_url FROM pgwarden_connections").await,
        "the deletion did not wait for the issuance under way"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(issuance.await.unwrap());
    assert_eq!(deletion.await.unwrap(), ConnectionChange::UsedBy(1));
    store.delete_lease(&first.id).await.unwrap();

    // The deletion first: it has not committed when the issuance comes, which waits for it,
    // then records nothing.
    let deletion =
        "BEGIN; DELETE FROM pgwarden_connections WHERE mount = 'database' AND name = 'appdb'";
    issuance_behind(&store, &holder, &watcher, deletion, "the deletion").await;

    // A move first, as the store makes one: the connection locked, then rewritten, not yet
    // committed. (A bare UPDATE of the URL would not make the issuance wait: it locks the
    // row less strongly.) The issuance waits for it, then finds the URL changed.
    store
        .put_connection("database", &appdb_connection(HERE))
        .await
        .unwrap();
    let moving = format!(
        "BEGIN; SELECT 1 FROM pgwarden_connections WHERE mount = 'database' AND name = 'appdb' \
         FOR UPDATE; UPDATE pgwarden_connections SET connection_url = '{THERE}'"
    );
    issuance_behind(&store, &holder, &watcher, &moving, "the move").await;
}

/// Runs `change` on `holder` (a transaction left open), then an issuance through `appdb` at
/// [`HERE`], which must wait for `what` under way, then record nothing once it commits.
async fn issuance_behind(
    store: &Arc<dyn Store>,
    holder: &tokio_postgres::Client,
    watcher: &tokio_postgres::Client,
    change: &str,
    what: &str,
) {
    holder.batch_execute(change).await.unwrap();
    let lease = root_lease("behind", datetime!(2026-12-08 10:00:00 UTC));
    let issuance = tokio::spawn({
        let store = store.clone();
        async move { store.insert_lease_via(&lease, HERE).await.unwrap() }
    });
    assert!(
        waits_for_a_lock(watcher, "WITH token").await,
        "the issuance did not wait for {what} under way"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert!(!issuance.await.unwrap());
    assert!(store.all_leases().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_keeps_everything_and_refuses_a_destination_with_state() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path()).unwrap();
    let t0 = datetime!(2026-11-22 10:00:00.5 UTC);
    let mut lease = root_lease("v-copied", t0);
    lease.state = LeaseState::Revoking(RevokeReason::Expired);
    lease.revoke_attempts = 3;
    lease.last_error = Some("unreachable".into());
    sqlite.insert_lease(&lease).await.unwrap();
    let token = TokenRecord {
        accessor: "acc".into(),
        hash: "hash".into(),
        identity: Identity {
            subject: "system:serviceaccount:ns:sa".into(),
            groups: vec!["g".into()],
            display_name: "kubernetes-ns-sa".into(),
            metadata: Default::default(),
            subject_prefix: String::new(),
        },
        mount: "kubernetes".into(),
        role: "r".into(),
        issued_at: t0,
        expires_at: t0 + Duration::from_secs(60),
        max_expires_at: t0 + Duration::from_secs(600),
        ttl: Ttl::from_secs(60),
    };
    sqlite.insert_token(&token).await.unwrap();
    sqlite.put_role("database", &role()).await.unwrap();
    let connection = StoredConnection {
        name: "appdb".into(),
        connection_url: "postgresql://h/db".into(),
        username: "admin".into(),
        sealed_password: vec![9, 8, 7],
        allowed_roles: vec!["*".into()],
        verify_connection: false,
        sealed_pending_password: Some(vec![6]),
    };
    sqlite
        .put_connection("database", &connection)
        .await
        .unwrap();

    let mut decided = request("req-1", t0);
    decided.request.state = RequestState::Approved;
    decided.sealed_credential = Some(vec![4, 5, 6]);
    sqlite.insert_request(&decided).await.unwrap();
    let mut rotated = static_role("legacy", t0);
    rotated.sealed_password = Some(vec![3, 2, 1]);
    sqlite.insert_static_role(&rotated).await.unwrap();
    let events: Vec<AuditEvent> = (0..1500).map(|n| event("root", "creds.issue", n)).collect();
    let chained = sqlite
        .append_audit(&events, Durability::Relaxed, None)
        .await
        .unwrap();

    let cluster = PgCluster::start().unwrap();
    let postgres = postgres_store(&cluster.superuser_url("postgres")).await;
    let copied = pgwarden_store::copy_state(&sqlite, &postgres)
        .await
        .unwrap();
    assert_eq!(
        copied,
        pgwarden_store::Copied {
            leases: 1,
            tokens: 1,
            roles: 1,
            connections: 1,
            requests: 1,
            static_roles: 1,
            audit_records: 1500,
        }
    );
    assert_eq!(postgres.all_requests().await.unwrap(), vec![decided]);
    assert_eq!(postgres.static_roles().await.unwrap(), vec![rotated]);
    assert_eq!(
        postgres
            .audit_records(&AuditQuery::all(2000))
            .await
            .unwrap(),
        chained,
        "records, hashes included, are copied unchanged"
    );
    // The copy's chain goes on from where the original stopped.
    let next = postgres
        .append_audit(&[event("root", "x", 0)], Durability::Synced, None)
        .await
        .unwrap();
    assert_eq!(next[0].seq, 1501);
    assert_eq!(next[0].prev_hash, chained[1499].hash);
    assert_eq!(postgres.all_leases().await.unwrap(), vec![lease]);
    assert_eq!(postgres.all_tokens().await.unwrap(), vec![token]);
    assert_eq!(
        postgres.roles().await.unwrap(),
        vec![("database".to_string(), role())]
    );
    assert_eq!(
        postgres.connections().await.unwrap(),
        vec![("database".to_string(), connection)]
    );
    let again = pgwarden_store::copy_state(&sqlite, &postgres)
        .await
        .unwrap_err();
    assert!(
        matches!(again, pgwarden_store::StoreError::NotEmpty),
        "{again}"
    );
}
