//! The Kubernetes manifests under deploy/ render offline (`kubectl kustomize`), pass
//! kubernetes-validate's strict schema check, and carry what they promise; the configuration
//! files they ship parse as pgwarden's own.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kubectl kustomize deploy/<dir>`, as parsed documents (and the rendered text).
fn render(dir: &str) -> (Vec<Value>, String) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy").join(dir))
        .output()
        .expect("kubectl on PATH (Debian: apt-get install kubernetes-client)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (serde_saphyr::from_multiple(&text).unwrap(), text)
}

/// Runs kubernetes-validate (from the test venv that scripts/test makes) on `text`.
fn validate(name: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, text).unwrap();
    let validator = repo().join(".venv/bin/kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} ({e}): run scripts/test, which installs it",
                validator.display()
            )
        });
    assert!(
        out.status.success(),
        "kubernetes-validate {name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

/// Where `container` of `pod` mounts the volume of Secret (or ConfigMap) `source`.
fn mount_path(container: &Value, pod: &Value, source: &str) -> String {
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == source || v["configMap"]["name"] == source)
        .unwrap_or_else(|| panic!("no volume of {source}"));
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{source} is not mounted"));
    mount["mountPath"].as_str().unwrap().to_string()
}

#[test]
fn the_base_runs_three_hardened_replicas_on_shared_state() {
    let (docs, text) = render("base");
    validate("base", &text);
    let deployment = kind(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "pgwarden");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (&get["path"], &get["scheme"]),
            (&"/v1/sys/health".into(), &"HTTPS".into()),
            "{probe}"
        );
    }
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let secrets: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let key = &e["valueFrom"]["secretKeyRef"];
            Some((e["name"].as_str()?, key["key"].as_str()?))
        })
        .collect();
    assert!(
        secrets.contains(&("PGWARDEN_ROOT_TOKEN", "root-token")),
        "{secrets:?}"
    );
    assert!(
        secrets.contains(&("PGWARDEN_SEAL_KEY", "seal-key")),
        "{secrets:?}"
    );

    assert_eq!(
        kind(&docs, "PodDisruptionBudget")["spec"]["minAvailable"],
        2
    );
    assert_eq!(kind(&docs, "Service")["spec"]["ports"][0]["port"], 8200);
    assert_eq!(
        kind(&docs, "ServiceAccount")["metadata"]["name"],
        "pgwarden"
    );
    assert_eq!(
        kind(&docs, "ClusterRoleBinding")["roleRef"]["name"],
        "system:auth-delegator"
    );

    // The ConfigMap the pods mount is a valid pgwarden configuration, on shared state.
    let config_map = kind(&docs, "ConfigMap");
    let name = config_map["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("pgwarden-config-"),
        "{name}: a content hash rolls the pods"
    );
    let mounted = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["configMap"]["name"] == name);
    assert!(mounted, "the deployment mounts {name}");
    let config =
        pgwarden_server::Config::parse(config_map["data"]["pgwarden.yaml"].as_str().unwrap())
            .unwrap();
    // The API is served over TLS from the mounted Secret pgwarden-tls.
    let tls = config.http.tls.as_ref().expect("the API over TLS");
    let tls_mount = mount_path(container, pod, "pgwarden-tls");
    assert_eq!(
        (tls.cert.to_str(), tls.key.to_str()),
        (
            Some(format!("{tls_mount}/tls.crt").as_str()),
            Some(format!("{tls_mount}/tls.key").as_str())
        )
    );
    let state = config.state.postgresql.expect("state on PostgreSQL");
    assert_eq!(
        state.password_env.as_deref(),
        Some("PGWARDEN_STATE_PASSWORD")
    );
    assert!(secrets.contains(&("PGWARDEN_STATE_PASSWORD", "state-password")));
}

#[test]
fn the_sidecar_example_writes_credentials_before_the_app_starts_and_keeps_them_fresh() {
    let (docs, text) = render("examples/sidecar");
    validate("sidecar", &text);
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    assert_eq!(
        init["args"],
        serde_json::json!(["agent", "--config", "/etc/pgwarden/agent.yaml", "--once"])
    );
    let sidecar = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pgwarden-agent")
        .unwrap();
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Both agents trust pgwarden's CA, mounted where the configuration reads it.
    for agent in [init, sidecar] {
        assert_eq!(
            mount_path(agent, pod, "pgwarden-ca"),
            "/etc/pgwarden-ca",
            "{}",
            agent["name"]
        );
    }

    // The agent configuration it mounts passes `pgwarden agent --check`.
    let agent_yaml = kind(&docs, "ConfigMap")["data"]["agent.yaml"]
        .as_str()
        .unwrap();
    let agent: Value = serde_saphyr::from_str(agent_yaml).unwrap();
    assert_eq!(
        (&agent["address"], &agent["ca_file"]),
        (
            &"https://pgwarden.pgwarden.svc:8200".into(),
            &"/etc/pgwarden-ca/ca.crt".into()
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, agent_yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["agent", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgwarden agent --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `validate_crs.py` (custom resources against their CRDs' schemas) on `files`; returns
/// whether they passed and what it printed.
fn validate_crs(files: &[&Path]) -> (bool, String) {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("crates/pgwarden/tests/validate_crs.py"))
        .arg(repo().join("deploy/operator/crds.yaml"))
        .args(files)
        .output()
        .expect("the test venv's python: run scripts/test, which makes it");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_operator_crds_come_from_the_types_and_the_examples_fit_them() {
    let generated = pgwarden_operator::crds_yaml().unwrap();
    let checked_in = std::fs::read_to_string(repo().join("deploy/operator/crds.yaml")).unwrap();
    assert!(
        checked_in == generated,
        "deploy/operator/crds.yaml is stale: run `pgwarden operator crds > deploy/operator/crds.yaml`"
    );
    let (docs, text) = render("operator");
    validate("operator", &text);
    // Two replicas; the holder of the leader Lease acts, with a Role for that Lease only.
    let deployment = kind(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let leader = kind(&docs, "Role");
    assert_eq!(
        leader["rules"][0]["resources"],
        serde_json::json!(["leases"])
    );
    assert_eq!(
        leader["rules"][0]["verbs"],
        serde_json::json!(["get", "create", "update"])
    );
    assert_eq!(
        leader["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let operator = &pod["containers"][0];
    let ca = format!("{}/ca.crt", mount_path(operator, pod, "pgwarden-tls"));
    assert_eq!(
        operator["args"],
        serde_json::json!([
            "operator",
            "run",
            "--addr",
            "https://pgwarden.pgwarden.svc:8200",
            "--ca-cert",
            ca
        ])
    );
    let account = kind(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        account["metadata"]["namespace"]
    );
    // Least privilege: no wildcard, no delete; Secrets never deleted (they go with their
    // request), Roles and RoleBindings only created (and read back).
    let rules = kind(&docs, "ClusterRole")["rules"].as_array().unwrap();
    let verbs = |resource: &str| -> Vec<&str> {
        let rule = rules
            .iter()
            .find(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
            .unwrap_or_else(|| panic!("no rule for {resource}"));
        rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    };
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            let values = rule[field].as_array().unwrap();
            assert!(!values.iter().any(|v| v == "*" || v == "delete"), "{rule}");
        }
    }
    assert_eq!(
        verbs("secrets"),
        ["get", "list", "watch", "create", "update", "patch"]
    );
    assert_eq!(verbs("rolebindings"), ["get", "create"]);
    assert_eq!(verbs("deployments"), ["list", "patch"]);
    assert_eq!(verbs("databaseaccessrequests/status"), ["patch"]);
    let crd = |kind: &str| {
        docs.iter()
            .find(|d| d["spec"]["names"]["kind"] == kind)
            .unwrap_or_else(|| panic!("no CRD for {kind}"))
    };
    for kind in ["PostgresConnection", "PostgresRole"] {
        assert_eq!(crd(kind)["spec"]["group"], "pgwarden.io");
    }
    let request = &crd("DatabaseAccessRequest")["spec"]["versions"][0];
    assert_eq!(request["subresources"]["status"], serde_json::json!({}));
    let rule = &request["schema"]["openAPIV3Schema"]["x-kubernetes-validations"][0];
    assert!(
        rule["rule"]
            .as_str()
            .unwrap()
            .contains("self.spec == oldSelf.spec"),
        "{rule}"
    );
    let columns: Vec<&str> = request["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Role", "Approved", "Denied", "Secret", "Age"]);

    let examples = repo().join("deploy/operator/examples/team-a.yaml");
    let (ok, report) = validate_crs(&[&examples]);
    assert!(ok, "{report}");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: pgwarden.io/v1alpha1\nkind: DatabaseAccessRequest\nmetadata: {name: r}\n\
         spec:\n  roleRef: {name: reader}\n  subjects: [{kind: Robot, name: x}]\n  tll: 1h\n",
    )
    .unwrap();
    let (ok, report) = validate_crs(&[&broken]);
    assert!(!ok);
    let name = broken.display();
    assert_eq!(
        report,
        format!(
            "{name}: DatabaseAccessRequest r: spec: Additional properties are not allowed ('tll' was unexpected)\n\
             {name}: DatabaseAccessRequest r: spec.subjects.0.kind: 'Robot' is not one of ['ServiceAccount', 'User', 'Group']\n"
        )
    );
}
