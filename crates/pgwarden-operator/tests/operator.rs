//! The operator end to end: its controllers against the testkit's fake Kubernetes API server
//! (real JSON, watches, finalizers, status subresource, owner garbage collection), a real
//! pgwarden broker and a real PostgreSQL. Requests are decided in the broker by a person of
//! the policy's approvers, as `pgwarden request approve|deny` does.

use k8s_openapi::api::core::v1::Secret;
use pgwarden_client::{Auth, Client};
use pgwarden_operator::controller::{self, Metrics, Settings};
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::broker::{ROOT_TOKEN, TestBroker};
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use pgwarden_testkit::kube_api::FakeApiServer;
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "team-a";
const SECRETS: &str = "api/v1/secrets";
const REQUESTS: &str = "apis/pgwarden.io/v1alpha1/databaseaccessrequests";
const ROLES: &str = "apis/pgwarden.io/v1alpha1/postgresroles";
const CONNECTIONS: &str = "apis/pgwarden.io/v1alpha1/postgresconnections";
const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
const BROKER_ROLE: &str = "k8s.team-a.reader";

/// The operator (the root token) may request the namespaces' roles; a DBA approves.
const POLICY: &str = r#"
grants:
  - subjects: [root]
    roles: ["database/k8s.*"]
    requires_approval: true
    approvers: ["group:dba"]
"#;

/// A running operator replica: its stop switch and its task.
type Operator = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<controller::Stopped>,
);

/// Stops an operator replica; why it stopped.
async fn stop((switch, task): Operator) -> controller::Stopped {
    switch.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the operator stops")
        .unwrap()
}

struct World {
    cluster: PgCluster,
    broker: TestBroker,
    issuer: TestIssuer,
    api: FakeApiServer,
    operator: Option<Operator>,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        // The operator's log, shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("pgwarden_operator=debug,kube_runtime=info,warn")
            .with_test_writer()
            .try_init();
        let cluster = PgCluster::start_with_appdb().await.unwrap();
        let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY).unwrap();
        let extra = format!(
            r#"
policy_file: "{policy}"
auth:
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [pgwarden]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
"#,
            policy = policy.display(),
            iss = issuer.issuer(),
            jwks = issuer.jwks_url(),
        );
        // (The file's own role, beside which the operator's are written through the API.)
        let file_role = "      file-reader:\n        db_name: appdb\n        preset: readonly\n";
        let broker = TestBroker::start(&cluster, file_role, &extra).await;
        let api = FakeApiServer::start().await;
        let mut world = World {
            cluster,
            broker,
            issuer,
            api,
            operator: None,
            metrics: Metrics::default(),
            _dir: dir,
        };
        world.start_operator();
        world
    }

    fn root(&self) -> Client {
        Client::new(
            &self.broker.base,
            Auth::Token(SecretString::from(ROOT_TOKEN)),
        )
    }

    fn start_operator(&mut self) {
        self.operator = Some(self.spawn_operator("operator-1"));
    }

    /// An operator replica named `identity`: it reconciles once it holds the leader Lease.
    fn spawn_operator(&self, identity: &str) -> Operator {
        let config = kube::Config::new(self.api.url.parse().unwrap());
        let kube = kube::Client::try_from(config).unwrap();
        let settings = Settings {
            broker: self.root(),
            mount: "database".into(),
            poll: Duration::from_millis(200),
            recheck: Duration::from_secs(1),
            reporter: "pgwarden-operator".into(),
            lease_namespace: "pgwarden".into(),
            identity: identity.into(),
            subject_prefixes: Default::default(),
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let shutdown = futures::FutureExt::shared(Box::pin(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let task = tokio::spawn(controller::run(
            kube,
            settings,
            self.metrics.clone(),
            shutdown,
        ));
        (stop, task)
    }

    /// The request's LeaseRenewed condition, once it says the lease was revoked in pgwarden.
    async fn revoked_in_pgwarden(&self) -> Value {
        eventually("the LeaseRenewed condition saying so", || {
            let request = self.request()?;
            let renewed = condition(&request, "LeaseRenewed")?.clone();
            (renewed["reason"] == "RevokedInPgwarden").then_some(renewed)
        })
        .await
    }

    /// Two seconds on, no lease lives.
    async fn nothing_issued_in_its_place(&self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            self.live_leases().await.is_empty(),
            "nothing issued in its place"
        );
    }

    async fn stop_operator(&mut self) {
        let stopped = stop(self.operator.take().unwrap()).await;
        assert_eq!(stopped, controller::Stopped::Shutdown);
    }

    /// A person of group `dba` signed in to the broker.
    async fn approver(&self) -> Client {
        let jwt = self
            .issuer
            .person_token(TestKey::Ec1, "pgwarden", "dana@example.com", &["dba"]);
        let auth = self
            .root()
            .login_as("jwt", "people", SecretString::from(jwt))
            .await
            .unwrap();
        let token = auth.client_token.unwrap();
        Client::new(&self.broker.base, Auth::Token(token))
    }

    /// The namespace's connection (its admin password in a Secret), a readonly role with
    /// `max_ttl`, and a request for it by ServiceAccount `reporter`.
    fn declare(&self, ttl: &str, max_ttl: &str) {
        let admin = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("appdb-admin".into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "password".to_string(),
                    k8s_openapi::ByteString(APP_ADMIN_PASSWORD.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        self.api
            .create(SECRETS, serde_json::to_value(admin).unwrap());
        self.api.create(
            CONNECTIONS,
            json!({
                "apiVersion": "pgwarden.io/v1alpha1", "kind": "PostgresConnection",
                "metadata": {"name": "appdb", "namespace": NS},
                "spec": {
                    // As a user writes it: no credentials in the URL.
                    "url": format!("postgresql://127.0.0.1:{}/appdb?sslmode=disable", self.cluster.port()),
                    "username": APP_ADMIN,
                    "credentialsSecretRef": {"name": "appdb-admin", "key": "password"},
                },
            }),
        );
        self.api.create(
            ROLES,
            json!({
                "apiVersion": "pgwarden.io/v1alpha1", "kind": "PostgresRole",
                "metadata": {"name": "reader", "namespace": NS},
                "spec": {"databaseRef": {"name": "appdb"}, "preset": "readonly",
                         "defaultTTL": ttl, "maxTTL": max_ttl},
            }),
        );
        self.api.create(
            REQUESTS,
            json!({
                "apiVersion": "pgwarden.io/v1alpha1", "kind": "DatabaseAccessRequest",
                "metadata": {"name": "report", "namespace": NS},
                "spec": {"roleRef": {"name": "reader"}, "ttl": ttl, "reason": "monthly report",
                         "subjects": [{"kind": "ServiceAccount", "name": "reporter"}]},
            }),
        );
    }

    /// Deployment `name` of the namespace, restarted on a new user in `secret` when given.
    fn deployment(&self, name: &str, secret: Option<&str>) {
        let annotations = match secret {
            Some(secret) => json!({ controller::RESTART_ANNOTATION: secret }),
            None => json!({}),
        };
        self.api.create(
            DEPLOYMENTS,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": NS, "annotations": annotations},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "app", "image": "app"}]}}},
            }),
        );
    }

    /// When Deployment `name` was last restarted by the operator.
    fn restarted_at(&self, name: &str) -> Option<String> {
        let deployment = self.api.get(DEPLOYMENTS, NS, name)?;
        deployment["spec"]["template"]["metadata"]["annotations"][controller::RESTARTED_AT]
            .as_str()
            .map(str::to_string)
    }

    fn request(&self) -> Option<Value> {
        self.api.get(REQUESTS, NS, "report")
    }

    /// The broker request id, once the operator made it.
    async fn broker_request(&self) -> String {
        eventually("the broker request", || {
            self.request()
                .and_then(|r| r["status"]["requestId"].as_str().map(str::to_string))
        })
        .await
    }

    /// Approves the broker request as a DBA, once the operator made it and wrote the
    /// connection it names (as a DBA would, who checks the database is there); returns its id.
    async fn approve(&self, reason: &str) -> String {
        let id = self.broker_request().await;
        eventually("the connection Ready", || {
            let connection = self.api.get(CONNECTIONS, NS, "appdb")?;
            (condition(&connection, "Ready")?["status"] == "True").then_some(())
        })
        .await;
        let approver = self.approver().await;
        approver.approve_request(&id, reason).await.unwrap();
        id
    }

    /// The credential Secret's username, password and lease annotation, once it holds one
    /// other than `other_than`.
    async fn credential(&self, other_than: Option<&str>) -> (String, String, String) {
        eventually("a credential in the Secret", || {
            let secret: Secret =
                serde_json::from_value(self.api.get(SECRETS, NS, "report-credentials")?).ok()?;
            let lease = secret
                .metadata
                .annotations
                .as_ref()?
                .get("pgwarden.io/lease-id")?
                .clone();
            if Some(lease.as_str()) == other_than {
                return None;
            }
            let data = secret.data?;
            let text = |key: &str| String::from_utf8(data.get(key).unwrap().0.clone()).unwrap();
            Some((text("username"), text("password"), lease))
        })
        .await
    }

    async fn logs_in(&self, user: &str, password: &str) -> bool {
        match self.cluster.connect_as(user, password, "appdb").await {
            Ok(client) => {
                client
                    .query_one("SELECT count(*) FROM items", &[])
                    .await
                    .unwrap();
                true
            }
            Err(_) => false,
        }
    }

    async fn live_leases(&self) -> Vec<String> {
        self.root()
            .list_leases_recursive(&format!("database/creds/{BROKER_ROLE}/"))
            .await
            .unwrap()
    }
}

impl World {
    /// Every kind of call the operator made is granted by its manifests' RBAC
    /// (deploy/operator/operator.yaml): the ClusterRole anywhere, the Role in its namespace.
    fn assert_rbac_allows_every_call(&self) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/operator/operator.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let grants = |rule: &Value, field: &str, value: &str| {
            rule[field].as_array().unwrap().iter().any(|v| v == value)
        };
        let calls = self.api.calls();
        assert!(!calls.is_empty());
        for call in calls {
            let allowed = docs.iter().any(|doc| {
                let applies = match doc["kind"].as_str() {
                    Some("ClusterRole") => true,
                    Some("Role") => doc["metadata"]["namespace"] == call.namespace.as_str(),
                    _ => false,
                };
                applies
                    && doc["rules"].as_array().unwrap().iter().any(|rule| {
                        grants(rule, "apiGroups", &call.group)
                            && grants(rule, "resources", &call.resource)
                            && grants(rule, "verbs", call.verb)
                    })
            });
            assert!(allowed, "the operator's RBAC does not allow {call:?}");
        }
    }
}

/// Polls `check` every 100 ms until it gives a value (panics after 30 s naming `what`).
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`eventually`] for an async condition.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn an_approved_request_gets_a_working_secret_that_survives_restarts_and_goes_with_it() {
    let mut world = World::start().await;
    world.declare("1h", "2h");
    world.deployment("reporter", Some("report-credentials"));
    let role = eventually("the role Ready", || {
        let role = world.api.get(ROLES, NS, "reader")?;
        (condition(&role, "Ready")?["status"] == "True").then_some(role)
    })
    .await;
    assert_eq!(role["status"]["brokerName"], BROKER_ROLE);
    let id = world.broker_request().await;
    let pending = world.root().get_request(&id).await.unwrap();
    assert_eq!(pending.role, format!("database/{BROKER_ROLE}"));
    assert_eq!(pending.subjects, ["system:serviceaccount:team-a:reporter"]);
    assert!(
        pending
            .reason
            .starts_with("monthly report [DatabaseAccessRequest team-a/report ")
    );
    // Nothing before a decision.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(world.api.get(SECRETS, NS, "report-credentials").is_none());
    assert!(world.live_leases().await.is_empty());

    world.approve("ok for the report").await;
    let (user, password, lease) = world.credential(None).await;
    assert!(
        world.logs_in(&user, &password).await,
        "the Secret's credential works"
    );
    let request = world.request().unwrap();
    let approved = condition(&request, "Approved").unwrap();
    assert_eq!(approved["status"], "True");
    assert_eq!(approved["message"], "approved by user:dana@example.com");
    assert_eq!(request["status"]["lease"]["id"], lease.as_str());
    assert_eq!(request["status"]["secretRef"]["name"], "report-credentials");
    // Only the subjects may read the Secret: a Role for that one Secret, bound to them.
    let reader = world
        .api
        .get(
            "apis/rbac.authorization.k8s.io/v1/roles",
            NS,
            "report-credentials",
        )
        .unwrap();
    assert_eq!(
        reader["rules"][0]["resourceNames"],
        json!(["report-credentials"])
    );
    assert_eq!(reader["rules"][0]["verbs"], json!(["get"]));
    let binding = world
        .api
        .get(
            "apis/rbac.authorization.k8s.io/v1/rolebindings",
            NS,
            "report-credentials",
        )
        .unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "reporter", "namespace": NS}])
    );

    // A restart re-adopts the lease: nothing is rewritten, no new user.
    let secret_version =
        world.api.get(SECRETS, NS, "report-credentials").unwrap()["metadata"]["resourceVersion"]
            .clone();
    world.stop_operator().await;
    world.start_operator();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret = world.api.get(SECRETS, NS, "report-credentials").unwrap();
    assert_eq!(secret["metadata"]["resourceVersion"], secret_version);
    assert_eq!(world.live_leases().await.len(), 1);
    assert_eq!(
        world.request().unwrap()["status"]["lease"]["id"],
        lease.as_str()
    );
    assert_eq!(
        world.restarted_at("reporter"),
        None,
        "neither issuing nor a restart restarts"
    );

    // A RoleBinding deleted by hand comes back.
    let bindings = "apis/rbac.authorization.k8s.io/v1/rolebindings";
    world.api.delete(bindings, NS, "report-credentials");
    eventually("the RoleBinding re-created", || {
        world.api.get(bindings, NS, "report-credentials")
    })
    .await;

    // Deleting the Secret by hand: a new credential in a new Secret, the old lease revoked.
    world.api.delete(SECRETS, NS, "report-credentials");
    let (user2, password2, lease2) = world.credential(Some(&lease)).await;
    assert_ne!(user2, user);
    eventually("the opted-in Deployment restarted", || {
        world.restarted_at("reporter")
    })
    .await;
    assert!(world.logs_in(&user2, &password2).await);
    until("the old user dropped", async || {
        !world.cluster.role_exists(&user).await.unwrap()
    })
    .await;
    assert_eq!(world.live_leases().await, [lease2]);

    // A role with live leases is not deleted; the status says why.
    world.api.delete(ROLES, NS, "reader");
    eventually("the role's deletion to wait", || {
        let role = world.api.get(ROLES, NS, "reader")?;
        (condition(&role, "Ready")?["reason"] == "LeasesExist").then_some(())
    })
    .await;
    assert!(world.root().get_request(&id).await.is_ok());

    // Deleting the request revokes the lease first, then the Secret goes with it.
    world.api.delete(REQUESTS, NS, "report");
    eventually("the request gone", || {
        world.request().is_none().then_some(())
    })
    .await;
    assert!(
        !world.cluster.role_exists(&user2).await.unwrap(),
        "revoked before the finalizer went"
    );
    assert!(world.api.get(SECRETS, NS, "report-credentials").is_none());
    assert!(
        world
            .api
            .get(
                "apis/rbac.authorization.k8s.io/v1/rolebindings",
                NS,
                "report-credentials"
            )
            .is_none()
    );
    assert_eq!(
        world.root().get_request(&id).await.unwrap().state,
        pgwarden_core::RequestState::Withdrawn
    );
    // Then the role's deletion goes through.
    eventually("the role gone", || {
        world.api.get(ROLES, NS, "reader").is_none().then_some(())
    })
    .await;
    let gone = world
        .root()
        .read(&format!("database/roles/{BROKER_ROLE}"))
        .await;
    assert!(
        matches!(
            gone,
            Err(pgwarden_client::ClientError::Api { status: 404, .. })
        ),
        "{gone:?}"
    );
    world.stop_operator().await;
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn a_denied_request_gets_no_credential() {
    let world = World::start().await;
    world.declare("1h", "2h");
    let id = world.broker_request().await;
    // Whoever can write the status cannot approve: the decision is the broker's.
    let forged = json!({"status": {"conditions": [{"type": "Approved", "status": "True",
        "reason": "Approved", "message": "trust me", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    world.api.merge_patch(REQUESTS, NS, "report", forged, true);
    let pending = eventually("the forged approval overwritten", || {
        let request = world.request()?;
        let approved = condition(&request, "Approved")?.clone();
        (approved["status"] == "False").then_some(approved)
    })
    .await;
    assert_eq!(pending["reason"], "Pending");
    assert_eq!(
        pending["message"],
        format!(
            "waiting for 1 approval(s) of broker request {id} (`pgwarden request approve {id}` or the approval page)"
        )
    );
    assert!(world.api.get(SECRETS, NS, "report-credentials").is_none());
    world
        .approver()
        .await
        .deny_request(&id, "use the replica")
        .await
        .unwrap();
    let denied = eventually("the Denied condition", || {
        let request = world.request()?;
        let denied = condition(&request, "Denied")?.clone();
        (denied["status"] == "True").then_some(denied)
    })
    .await;
    assert_eq!(denied["status"], "True");
    assert_eq!(denied["reason"], "Denied");
    assert_eq!(
        denied["message"],
        "denied by user:dana@example.com: use the replica"
    );
    assert!(!denied["lastTransitionTime"].is_null());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(world.api.get(SECRETS, NS, "report-credentials").is_none());
    assert!(world.live_leases().await.is_empty());
    assert!(world.cluster.roles_like("v-%").await.unwrap().is_empty());
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn at_the_max_ttl_a_new_user_replaces_the_old_which_ends_on_time() {
    let world = World::start().await;
    world.declare("9s", "9s");
    world.deployment("reporter", Some("other-secret, report-credentials"));
    world.deployment("bystander", None);
    world.approve("short").await;
    let (user, password, lease) = world.credential(None).await;
    assert!(world.logs_in(&user, &password).await);
    let (user2, password2, _) = world.credential(Some(&lease)).await;
    assert_ne!(user2, user);
    eventually("the opted-in Deployment restarted", || {
        world.restarted_at("reporter")
    })
    .await;
    assert_eq!(world.restarted_at("bystander"), None);
    assert!(world.logs_in(&user2, &password2).await);
    // The old user lives out its max TTL (the grace period), then is dropped.
    until("the old user dropped at its max TTL", async || {
        !world.cluster.role_exists(&user).await.unwrap()
    })
    .await;
    assert!(
        world.logs_in(&user2, &password2).await || {
            // It may itself have been replaced meanwhile: the Secret then holds a newer one.
            let (user3, password3, _) = world.credential(None).await;
            world.logs_in(&user3, &password3).await
        }
    );
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn a_failed_renewal_is_an_event_a_condition_and_a_metric_and_is_retried_in_time() {
    let mut world = World::start().await;
    world.declare("24s", "1h");
    world.approve("ok").await;
    let (_, _, lease) = world.credential(None).await;
    // The broker goes away before the renewal is due (when 8 s of 24 are left)...
    let address = world
        .broker
        .base
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    world.broker.listen = address;
    world.broker.stop().await;
    let failed = eventually("the LeaseRenewed condition false", || {
        let request = world.request()?;
        let renewed = condition(&request, "LeaseRenewed")?.clone();
        (renewed["status"] == "False").then_some(renewed)
    })
    .await;
    assert_eq!(failed["reason"], "RenewFailed");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "renewing lease {lease} failed: cannot reach pgwarden at "
        )),
        "{message}"
    );
    let events = world.api.list("apis/events.k8s.io/v1/events", NS);
    let event = events
        .iter()
        .find(|e| e["reason"] == "RenewFailed")
        .unwrap_or_else(|| panic!("no RenewFailed event in {events:#?}"));
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["name"], "report");
    let metrics = world.metrics.render();
    let failures: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pgwarden_operator_renewal_failures_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failures >= 1, "{metrics}");
    // ...and comes back: the retry (within half the time left) renews the lease before it
    // lapses (or, as an approved lease cannot outlive the approved TTL, writes a new user's).
    world.broker.boot().await;
    eventually("the lease renewed", || {
        let request = world.request()?;
        (condition(&request, "LeaseRenewed")?["status"] == "True").then_some(())
    })
    .await;
    let lapsed = world
        .api
        .list("apis/events.k8s.io/v1/events", NS)
        .into_iter()
        .any(|e| e["reason"] == "LeaseLapsed");
    assert!(!lapsed, "the lease lapsed while the broker was away");
    // A replacement writes the Secret and the request's status one after the other: they
    // come to name the same lease, whose user logs in.
    until(
        "the Secret and the status naming the same lease",
        async || {
            let (_, _, lease) = world.credential(None).await;
            world
                .request()
                .is_some_and(|request| request["status"]["lease"]["id"] == lease.as_str())
        },
    )
    .await;
    let (user, password, _) = world.credential(None).await;
    assert!(world.logs_in(&user, &password).await);
    world.stop_operator().await;
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn tampering_in_the_namespace_neither_takes_over_nor_revokes_what_is_not_the_requests() {
    let world = World::start().await;
    // A Secret of the credential's name that is not the request's: never written into.
    let foreign = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "report-credentials", "namespace": NS},
        "data": {"note": "aGVsbG8="},
    });
    world.api.create(SECRETS, foreign);
    world.declare("1h", "2h");
    let id = world.approve("ok").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = world.api.get(SECRETS, NS, "report-credentials").unwrap();
    assert_eq!(untouched["data"], json!({"note": "aGVsbG8="}));
    assert!(untouched["metadata"]["ownerReferences"].is_null());
    assert!(world.request().unwrap()["status"]["lease"].is_null());
    world.api.delete(SECRETS, NS, "report-credentials");
    let (user, _, lease) = world.credential(None).await;

    // Pointing the Secret's annotation at someone else's lease neither adopts nor revokes
    // it: the operator writes a credential of its own and revokes only its previous one.
    let victim = world.root().issue("database/file-reader").await.unwrap();
    world.api.merge_patch(
        SECRETS,
        NS,
        "report-credentials",
        json!({"metadata": {"annotations": {"pgwarden.io/lease-id": victim.lease_id}}}),
        false,
    );
    let (user2, password2, lease2) = world.credential(Some(&victim.lease_id)).await;
    assert_ne!(lease2, lease);
    assert!(world.logs_in(&user2, &password2).await);
    assert!(
        world.root().lookup(&victim.lease_id).await.is_ok(),
        "the victim lease lives"
    );
    until("the request's old user dropped", async || {
        !world.cluster.role_exists(&user).await.unwrap()
    })
    .await;

    // Withdrawn in pgwarden after its approval: every lease revoked, the Secret emptied.
    world.root().withdraw_request(&id).await.unwrap();
    eventually("the Secret emptied", || {
        let secret = world.api.get(SECRETS, NS, "report-credentials")?;
        secret["data"].is_null().then_some(())
    })
    .await;
    until("the user dropped", async || {
        !world.cluster.role_exists(&user2).await.unwrap()
    })
    .await;
    assert!(world.live_leases().await.is_empty());
    let request = world.request().unwrap();
    assert_eq!(
        condition(&request, "Denied").unwrap()["reason"],
        "Withdrawn"
    );
    assert!(request["status"]["lease"].is_null());
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn of_two_replicas_only_the_lease_holder_acts_and_the_other_takes_over_when_it_goes() {
    let mut world = World::start().await;
    let lease = |world: &World| {
        world.api.get(
            "apis/coordination.k8s.io/v1/leases",
            "pgwarden",
            "pgwarden-operator",
        )
    };
    eventually("operator-1 holding the Lease", || {
        (lease(&world)?["spec"]["holderIdentity"] == "operator-1").then_some(())
    })
    .await;
    let second = world.spawn_operator("operator-2");
    world.declare("1h", "2h");
    world.broker_request().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        lease(&world).unwrap()["spec"]["holderIdentity"],
        "operator-1"
    );
    // A graceful stop hands the Lease over at once; the other replica carries on.
    world.stop_operator().await;
    eventually("operator-2 holding the Lease", || {
        (lease(&world)?["spec"]["holderIdentity"] == "operator-2").then_some(())
    })
    .await;
    world.approve("ok").await;
    let (user, password, _) = world.credential(None).await;
    assert!(world.logs_in(&user, &password).await);
    assert_eq!(lease(&world).unwrap()["spec"]["leaseTransitions"], 1);
    world.operator = Some(second);
    world.stop_operator().await;
    world.assert_rbac_allows_every_call();
}

#[tokio::test]
async fn an_approval_revoked_before_the_operator_reads_it_is_not_replaced() {
    let mut world = World::start().await;
    world.declare("1h", "2h");
    world.broker_request().await;
    world.stop_operator().await;
    // Approved and revoked in pgwarden while the operator is away.
    let id = world.approve("ok").await;
    let lease = world
        .root()
        .get_request(&id)
        .await
        .unwrap()
        .lease_id
        .unwrap();
    world.root().revoke(&lease).await.unwrap();
    world.start_operator();
    let revoked = world.revoked_in_pgwarden().await;
    assert_eq!(revoked["status"], "False");
    world.nothing_issued_in_its_place().await;
}

#[tokio::test]
async fn a_lease_revoked_by_hand_in_pgwarden_is_not_replaced() {
    let world = World::start().await;
    world.declare("1h", "2h");
    world.approve("ok").await;
    let (user, _, lease) = world.credential(None).await;
    world.root().revoke(&lease).await.unwrap();
    let revoked = world.revoked_in_pgwarden().await;
    assert_eq!(revoked["status"], "False");
    assert_eq!(
        revoked["message"],
        format!(
            "lease {lease} was revoked in pgwarden before its end: it is not replaced; delete and re-create the request for a new credential"
        )
    );
    eventually("the Secret emptied", || {
        let secret = world.api.get(SECRETS, NS, "report-credentials")?;
        secret["data"].is_null().then_some(())
    })
    .await;
    world.nothing_issued_in_its_place().await;
    assert!(!world.cluster.role_exists(&user).await.unwrap());
    world.assert_rbac_allows_every_call();
}
