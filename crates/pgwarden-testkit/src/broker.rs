//! An in-process pgwarden server for tests and benchmarks (cargo feature `server`).
//!
//! [`TestBroker`] writes the configuration every test shares — mount `database` with the
//! connection `appdb` to a [`PgCluster`]'s `appdb` as [`APP_ADMIN`], a fresh data directory,
//! the [`ROOT_TOKEN`] and the [`SEAL_KEY`] — around the roles and extra top-level YAML the test
//! gives, and starts, stops and restarts the server on that data directory.

use crate::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use pgwarden_server::{Config, Running};
use secrecy::SecretString;
use std::net::SocketAddr;
use tempfile::TempDir;

/// The root token of every [`TestBroker`].
pub const ROOT_TOKEN: &str = "test-root-token-0123456789";

/// The seal key (64 hex digits) of every [`TestBroker`], so runtime connections can be stored.
pub const SEAL_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The key the audit chain of every [`TestBroker`] is keyed with (derived from [`SEAL_KEY`]).
pub fn audit_chain_key() -> pgwarden_core::ChainKey {
    pgwarden_server::seal::chain_key(&SecretString::from(SEAL_KEY))
        .expect("SEAL_KEY is 64 hex digits")
}

/// A pgwarden server running in this process, against one cluster, on its own data directory.
///
/// The data directory outlives [`TestBroker::stop`], so [`TestBroker::boot`] restarts the
/// server on the same state; both are deleted when the broker is dropped.
pub struct TestBroker {
    /// The running server; `None` before [`TestBroker::boot`] and after [`TestBroker::stop`].
    pub server: Option<Running>,
    /// The data directory (the SQLite state), kept across restarts.
    pub data: TempDir,
    /// `http://<address>` of the server as last booted; empty before the first boot.
    pub base: String,
    /// The address the next boot listens on: `127.0.0.1:0` (a free port each boot) unless the
    /// test sets one, e.g. to come back on the same port after a restart.
    pub listen: SocketAddr,
    /// The configuration file's text (without the secrets, the data directory and `listen`).
    yaml: String,
}

/// The configuration text of a [`TestBroker`]: mount `database` with connection `appdb` at
/// `url` (templated), the roles in `roles`, then `extra` top-level YAML.
fn config_yaml(url: &str, roles: &str, extra: &str) -> String {
    format!(
        r#"
mounts:
  database:
    connections:
      appdb:
        connection_url: "{url}"
        username: {APP_ADMIN}
        password: {APP_ADMIN_PASSWORD}
        allowed_roles: ["*"]
    roles:
{roles}
{extra}
"#
    )
}

impl TestBroker {
    /// A broker for `cluster` and an empty data directory, not started yet: fill the data
    /// directory or set [`TestBroker::listen`], then call [`TestBroker::boot`].
    ///
    /// `roles` are the role definitions of mount `database` (map entries indented by six
    /// spaces, as under `roles:`); `extra` is top-level YAML appended to the configuration
    /// (auth mounts, `policy_file`, settings, `http`, `orphans`...), or empty.
    pub fn new(cluster: &PgCluster, roles: &str, extra: &str) -> TestBroker {
        TestBroker::at_url(&cluster.templated_url("appdb"), roles, extra)
    }

    /// [`TestBroker::new`] with connection `appdb` at `url` (e.g. several hosts: a primary
    /// and its replicas), not started yet.
    pub fn at_url(url: &str, roles: &str, extra: &str) -> TestBroker {
        TestBroker {
            yaml: config_yaml(url, roles, extra),
            ..TestBroker::new_empty()
        }
    }

    /// A broker with no configuration text yet.
    fn new_empty() -> TestBroker {
        TestBroker {
            server: None,
            data: tempfile::tempdir().expect("a temporary data directory for the test broker"),
            base: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            yaml: String::new(),
        }
    }

    /// A broker on `yaml`, a whole configuration of the test's own (the data directory,
    /// listen address and secrets are still the broker's), not started yet.
    pub fn from_yaml(yaml: String) -> TestBroker {
        TestBroker {
            yaml,
            ..TestBroker::new_empty()
        }
    }

    /// [`TestBroker::new`], then [`TestBroker::boot`].
    pub async fn start(cluster: &PgCluster, roles: &str, extra: &str) -> TestBroker {
        let mut broker = TestBroker::new(cluster, roles, extra);
        broker.boot().await;
        broker
    }

    /// The configuration the server boots with: the parsed YAML, the data directory, the
    /// listen address, [`ROOT_TOKEN`] and [`SEAL_KEY`].
    ///
    /// Panics when the YAML does not parse.
    fn config(&self) -> Config {
        let mut config = Config::parse(&self.yaml)
            .unwrap_or_else(|e| panic!("test broker config: {e}\n{}", self.yaml));
        config.listen = self.listen;
        config.data_dir = self.data.path().to_path_buf();
        config.root_token = Some(SecretString::from(ROOT_TOKEN));
        config.seal_key = Some(SecretString::from(SEAL_KEY));
        config
    }

    /// Starts the server (again) on the data directory and sets [`TestBroker::base`].
    ///
    /// Panics when the server does not start.
    pub async fn boot(&mut self) {
        let running = pgwarden_server::start(self.config())
            .await
            .unwrap_or_else(|e| panic!("test broker did not start: {e}"));
        self.base = format!("http://{}", running.addr);
        self.server = Some(running);
    }

    /// Changes the configuration the next boot reads: `from` (which must be there) becomes `to`.
    pub fn replace_in_config(&mut self, from: &str, to: &str) {
        assert!(
            self.yaml.contains(from),
            "{from:?} is not in the configuration"
        );
        self.yaml = self.yaml.replacen(from, to, 1);
    }

    /// Shuts the server down, if it runs, and keeps the data directory.
    ///
    /// Panics when the shutdown fails.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server
                .shutdown()
                .await
                .unwrap_or_else(|e| panic!("test broker shutdown: {e}"));
        }
    }
}
