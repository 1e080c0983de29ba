//! The pgwarden server: configuration, state, the lease manager and reaper, and the
//! Vault-compatible HTTP API. [`start`] wires them together.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing
    )
)]

pub mod api;
pub mod audit;
pub mod broker;
pub mod catalog;
pub mod checks;
pub mod config;
pub mod error;
pub mod leadership;
pub mod listener;
pub mod logins;
pub mod metrics;
pub mod orphans;
pub mod policy;
pub mod requests;
pub mod schedule;
pub mod seal;
pub mod static_roles;
pub mod tokens;
pub mod turns;
pub mod ui;

pub use config::{Config, ConfigError};
pub use error::ServerError;

use broker::Broker;
use catalog::Catalog;
use leadership::Leadership;
use metrics::Metrics;
use pgwarden_store::{PostgresStore, SqliteStore, Store};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] pgwarden_store::StoreError),
    /// The data directory or listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Recovery of stored leases failed.
    #[error("recovering leases: {0}")]
    Recover(ServerError),
}

/// A running server.
pub struct Running {
    /// The address the API listens on.
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    reaper: JoinHandle<()>,
    /// On shared state: the task that holds the lead, and gives it up when told to.
    leading: Option<JoinHandle<()>>,
    /// Tells `leading` to give the lead up (after the reaper has stopped).
    resign: watch::Sender<bool>,
    /// The API requests' turns, closed on shutdown: requests still waiting for one get 503.
    turns: Arc<turns::Turns>,
}

/// How long shutdown waits for the work of requests whose client hung up.
const SHUTDOWN_WORK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Running {
    /// Stops accepting requests, finishes those in flight, stops the reaper.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.turns.close();
        let served = self
            .http
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // The listener's drain does not wait for requests whose client hung up.
        if !self.turns.all_back(SHUTDOWN_WORK_TIMEOUT).await {
            tracing::warn!(
                "requests whose client hung up still running after 30s; stopping anyway"
            );
        }
        let _ = self.reaper.await;
        // Only now, with no revocation of this replica under way, may another replica lead.
        let _ = self.resign.send(true);
        if let Some(leading) = self.leading {
            let _ = leading.await;
        }
        served
    }
}

/// Opens the state, recovers leases, checks connections and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let root_token = config.checked_root_token()?;
    pgwarden_core::audit::redact_everywhere(&root_token);
    let database_share = config.http.database_share()?;
    let certificate = config
        .http
        .tls
        .as_ref()
        .map(|files| pgwarden_tls::ReloadingCert::load("http.tls", files))
        .transpose()
        .map_err(ConfigError::Invalid)?;
    let acceptor = certificate
        .as_ref()
        .map(|certificate| certificate.acceptor(&[b"http/1.1"]))
        .transpose()
        .map_err(ConfigError::Invalid)?;
    let sealer = config
        .seal_key
        .as_ref()
        .map(seal::Sealer::new)
        .transpose()
        .map_err(ConfigError::from)?;
    let request_sealer = Arc::new(request_sealer(&config)?);
    let static_sealer = config
        .seal_key
        .as_ref()
        .map(seal::Sealer::new)
        .transpose()
        .map_err(ConfigError::from)?
        .map(Arc::new);
    let (store, leadership) = open_state(&config).await?;
    let catalog = Arc::new(Catalog::load(&config, store.clone(), sealer).await?);
    catalog.finish_root_rotations().await;
    let metrics = Arc::new(Metrics::new());
    let audit = audit::AuditLog::start(
        store.clone(),
        config.audit.file.clone(),
        metrics.clone(),
        audit_chain_key(&config)?,
    );
    let broker = Arc::new(Broker::new(
        store.clone(),
        catalog.clone(),
        metrics.clone(),
        leadership.clone(),
        audit.clone(),
    ));
    let logins = logins::Logins::from_config(&config.auth)?;
    let policy = Arc::new(
        policy::PolicyHolder::load(config.policy_file.as_deref()).map_err(ConfigError::from)?,
    );
    let orphans = Arc::new(orphans::Orphans::new(
        catalog.clone(),
        store.clone(),
        metrics.clone(),
        config.orphans.clone(),
        audit.clone(),
    ));
    let requests = Arc::new(requests::Requests::new(
        store.clone(),
        broker.clone(),
        policy.clone(),
        request_sealer,
        audit.clone(),
        &config.requests,
    ));
    let static_roles = Arc::new(static_roles::StaticRoles::new(
        store.clone(),
        catalog.clone(),
        static_sealer,
        audit.clone(),
    ));
    static_roles.define_from_file(&config.mounts).await?;
    let tokens = tokens::Tokens::new(store.clone());
    let purged = tokens.purge_expired().await.map_err(StartError::Recover)?;
    let recovered = broker.recover().await.map_err(StartError::Recover)?;
    let state = match &config.state.postgresql {
        Some(_) => "the shared PostgreSQL database".to_string(),
        None => format!("SQLite in {}", config.data_dir.display()),
    };
    tracing::info!(leases = recovered, expired_tokens_purged = purged, %state, "state loaded");
    checks::log(&checks::check_catalog(&catalog).await);
    for line in checks::unallowed_roles(&config) {
        tracing::warn!("{line}");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Io {
            what: format!("listening on {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Io {
        what: "reading the listen address".into(),
        source,
    })?;
    let (shutdown, signal) = watch::channel(false);
    let (resign, resigned) = watch::channel(false);
    let leading = if leadership.is_shared() {
        leadership.try_lead(store.as_ref()).await;
        catalog.expect_refreshes();
        tokio::spawn(refresh_catalog(catalog.clone(), signal.clone()));
        Some(tokio::spawn(
            leadership.clone().run(store.clone(), resigned),
        ))
    } else {
        None
    };
    let reaper = tokio::spawn(broker.clone().run_reaper(signal.clone()));
    tokio::spawn(orphans.clone().run(signal.clone()));
    tokio::spawn(requests.clone().run_sweeper(signal.clone()));
    let rotating_broker = broker.clone();
    tokio::spawn(
        static_roles
            .clone()
            .run(move || rotating_broker.is_leader(), signal.clone()),
    );
    let reload_metrics = metrics.clone();
    let reload_audit = audit.clone();
    let policy_file = config
        .policy_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    tokio::spawn(policy.clone().watch(signal.clone(), move |outcome| {
        let result = if outcome.is_ok() { "ok" } else { "rejected" };
        reload_metrics
            .policy_reloads
            .get_or_create(&metrics::ReloadLabels { result })
            .inc();
        let event = audit::policy_reload_event(&policy_file, outcome);
        let audit = reload_audit.clone();
        tokio::spawn(async move { audit.record(event).await });
    }));
    let turns = Arc::new(turns::Turns::new(
        config.http.max_requests_in_flight.get(),
        database_share,
        metrics.http_requests_in_flight.clone(),
        metrics.http_requests_waiting.clone(),
    ));
    let app = api::router(Arc::new(api::AppState {
        broker,
        root_token,
        metrics,
        tokens,
        logins,
        policy,
        orphans,
        settings: config.settings.clone(),
        store: store.clone(),
        requests,
        audit,
        static_roles,
        turns: turns.clone(),
    }));
    let limits = listener::HttpLimits {
        max_connections: config.http.max_connections.get(),
        header_read_timeout: config.http.header_read_timeout.as_duration(),
    };
    if let Some(certificate) = certificate {
        tokio::spawn(certificate.watch(signal.clone()));
    } else if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API is served without TLS beyond this host: tokens and passwords cross the network in clear; set http.tls, or put a TLS terminator in front");
    }
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let http = tokio::spawn(listener::serve(listener, app, limits, acceptor, signal));
    tracing::info!(%addr, scheme, "pgwarden listening");
    Ok(Running {
        addr,
        shutdown,
        http,
        reaper,
        leading,
        resign,
        turns,
    })
}

/// The key the audit chain is keyed with: derived from the seal key, if there is one.
pub fn audit_chain_key(config: &Config) -> Result<Option<pgwarden_core::ChainKey>, StartError> {
    Ok(config
        .seal_key
        .as_ref()
        .map(seal::chain_key)
        .transpose()
        .map_err(ConfigError::from)?)
}

/// The key that seals credentials issued on approval: the configured seal key, or else a
/// random one for this process (then a credential can be read only from this process, until
/// it restarts — which the log says).
fn request_sealer(config: &Config) -> Result<seal::Sealer, StartError> {
    let key = match &config.seal_key {
        Some(key) => key.clone(),
        None => {
            if config.state.postgresql.is_some() {
                tracing::warn!(
                    "no seal key: credentials of approved access requests can be read only from the replica that issued them; set seal_key_file on every replica"
                );
            }
            let random: [u8; 32] = rand::random();
            SecretString::from(hex::encode(random))
        }
    };
    Ok(seal::Sealer::new(&key).map_err(ConfigError::from)?)
}

/// Opens the state store `config` names (SQLite in its data directory, or the shared
/// PostgreSQL database), for tools that read it beside a running server.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Ok(open_state(config).await?.0)
}

/// Opens the configured state: SQLite in `data_dir` (this process always leads), or the
/// shared PostgreSQL database (leadership taken in it).
async fn open_state(config: &Config) -> Result<(Arc<dyn Store>, Arc<Leadership>), StartError> {
    let Some(shared) = &config.state.postgresql else {
        create_private_dir(&config.data_dir)?;
        let store = SqliteStore::open(&config.data_dir)?;
        return Ok((Arc::new(store), Arc::new(Leadership::sole())));
    };
    let store = open_shared_state(shared).await?;
    // The pod's name where there is one, and a random part so that a restarted process is a
    // new holder.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pgwarden".into());
    let holder = format!("{host}-{}", pgwarden_core::names::random_alphanumeric(8));
    Ok((Arc::new(store), Arc::new(Leadership::new(holder))))
}

/// Connects to the shared PostgreSQL state database of `shared` (TLS options as for
/// connections) and creates or upgrades its schema.
pub async fn open_shared_state(
    shared: &config::PostgresStateConfig,
) -> Result<PostgresStore, StartError> {
    let password = match &shared.password_env {
        Some(var) => std::env::var(var).map(SecretString::from).map_err(|_| {
            ConfigError::Invalid(format!(
                "state.postgresql.password_env names {var:?}, which is not set"
            ))
        })?,
        None => SecretString::from(String::new()),
    };
    let target = pgwarden_engine::Target::new(&pgwarden_core::ConnectionDef {
        name: "state".into(),
        connection_url: shared.url.clone(),
        username: String::new(),
        password,
        allowed_roles: Vec::new(),
        verify_connection: true,
        auth: pgwarden_core::AdminAuth::Password,
    })
    .map_err(|e| ConfigError::Invalid(format!("state.postgresql.url: {e}")))?;
    let relaxed = target
        .pool_with("synchronous_commit=off")
        .map_err(|e| ConfigError::Invalid(format!("state.postgresql.url: {e}")))?;
    Ok(PostgresStore::open(target.pool(), relaxed).await?)
}

/// Re-reads the definitions written through the API every second, so that what another
/// replica wrote is served here within a second.
async fn refresh_catalog(catalog: Arc<Catalog>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = catalog.refresh().await {
            tracing::warn!(error = %pgwarden_core::chain(&error), "cannot refresh definitions from the state store");
        }
    }
}

/// Creates `dir` (mode 0700) if it does not exist, and warns when an existing one is open to
/// other users: the state store inside stays 0600 either way.
fn create_private_dir(dir: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartError::Io {
            what: format!("creating data_dir {}", dir.display()),
            source,
        })?;
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format!("{mode:o}"),
                "data_dir is readable by other users; chmod 700 it"
            );
        }
    }
    Ok(())
}
