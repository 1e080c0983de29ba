//! `pgwarden operator crds|run`: the Kubernetes operator's CRDs, and the operator itself.

use crate::cli::settings::BrokerArgs;
use clap::{Args, Subcommand};
use pgwarden_operator::controller::{self, Metrics, Settings, Stopped, SubjectPrefixes};
use std::net::SocketAddr;
use std::time::Duration;

/// How long reconciliations in flight may run on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `pgwarden operator …`
#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Print the CustomResourceDefinitions of PostgresConnection, PostgresRole and
    /// DatabaseAccessRequest (group pgwarden.io), e.g. for `kubectl apply -f -`.
    Crds,
    /// Run the operator: turn PostgresConnections and PostgresRoles into broker definitions,
    /// DatabaseAccessRequests into broker access requests and, once approved, Secrets with a
    /// credential only the request's subjects may read (renewed, rotated at the max TTL,
    /// revoked when the request is deleted).
    ///
    /// Reaches Kubernetes in-cluster (its ServiceAccount) or through KUBECONFIG, and the
    /// broker at --addr with the root token (PGWARDEN_TOKEN or PGWARDEN_TOKEN_FILE): writing
    /// connections and roles is root's. Policy must let `root` request the roles
    /// (`requires_approval: true`, with approvers) — see deploy/operator/README.md.
    Run(Box<RunArgs>),
}

/// Flags of `pgwarden operator run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The broker's database secrets mount the resources use.
    #[arg(long, default_value = "database")]
    mount: String,
    /// Seconds between looks at a request waiting for approval.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    poll: u64,
    /// Seconds between looks at an approved request (a withdrawal in pgwarden revokes its
    /// credentials within this).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    recheck: u64,
    /// The namespace of the leader Lease (coordination.k8s.io) the replicas elect one active
    /// operator with. Default: POD_NAMESPACE, else `pgwarden`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "pgwarden")]
    lease_namespace: String,
    /// Where to serve /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_listen: SocketAddr,
    /// The `subject_prefix` of the broker's Kubernetes auth mount this cluster's service
    /// accounts log in through (none: the unprefixed mount).
    #[arg(long, value_parser = subject_prefix)]
    service_account_prefix: Option<String>,
    /// The `subject_prefix` of the broker's jwt auth mount the people and groups that requests
    /// name log in through (none: the unprefixed mount).
    #[arg(long, value_parser = subject_prefix)]
    people_prefix: Option<String>,
}

/// A `subject_prefix` as the broker takes it.
fn subject_prefix(value: &str) -> Result<String, String> {
    if pgwarden_core::policy::is_subject_prefix(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "must be 1 to {} lowercase letters, digits or '-', as the mount's subject_prefix",
            pgwarden_core::policy::MAX_SUBJECT_PREFIX
        ))
    }
}

/// Runs `pgwarden operator …`.
pub async fn run(command: OperatorCommand) -> Result<(), String> {
    match command {
        OperatorCommand::Crds => pgwarden_operator::crds_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(|e| format!("cannot write the CRDs as YAML: {e}")),
        OperatorCommand::Run(args) => operate(*args).await,
    }
}

/// A prefix as put before subjects (`eu/`), or empty.
fn as_put(prefix: Option<String>) -> String {
    prefix.map(|p| format!("{p}/")).unwrap_or_default()
}

/// This replica's name in the leader election: POD_NAME, else the host name and process id.
fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

async fn operate(args: RunArgs) -> Result<(), String> {
    let broker = args.broker.client()?;
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (in-cluster or KUBECONFIG): {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.metrics_listen))?;
    let metrics = Metrics::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let server = tokio::spawn(controller::serve_metrics(
        listener,
        metrics.clone(),
        shutdown.clone(),
    ));
    let settings = Settings {
        broker,
        mount: args.mount,
        poll: Duration::from_secs(args.poll),
        recheck: Duration::from_secs(args.recheck),
        reporter: "pgwarden-operator".into(),
        lease_namespace: args.lease_namespace,
        identity: identity(),
        subject_prefixes: SubjectPrefixes {
            service_accounts: as_put(args.service_account_prefix),
            people: as_put(args.people_prefix),
        },
    };
    tokio::spawn(async move {
        crate::stop_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(metrics = %args.metrics_listen, "operator running");
    // Reconciliations in flight get a grace period to finish; every step is safe to cut
    // short (a restart picks up where it stopped), so the process ends either way.
    let grace = shutdown.clone();
    let stopped = tokio::select! {
        stopped = controller::run(kube, settings, metrics, shutdown) => stopped,
        () = async { grace.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("the controllers did not stop within {} s; exiting", SHUTDOWN_GRACE.as_secs());
            Stopped::Shutdown
        }
    };
    server.abort();
    match stopped {
        Stopped::Shutdown => {
            tracing::info!("operator stopped");
            Ok(())
        }
        Stopped::LostLeadership => Err(
            "lost the leader Lease (another replica holds it, or it could not be renewed): \
             exiting so that only one operator acts; it is restarted and competes again"
                .into(),
        ),
    }
}
