//! The agent's YAML configuration.

use crate::files::{Format, Output, OutputFile, Template};
use crate::on_change::{Action, OnChange};
use pgwarden_core::Ttl;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// pgwarden's address; required when a credential has a `path`.
    #[serde(default)]
    pub address: Option<String>,
    /// A PEM file of the CA certificates to trust, and only those, when `address` is
    /// `https://` with a certificate a private CA signed; else the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// How to log in; required when a credential has a `path`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// What to fetch and where to write it.
    pub credentials: Vec<CredentialConfig>,
    /// Address of `/healthz` and `/readyz` (all interfaces by default, so kubelet probes reach it).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long a replaced lease lives on before it is revoked (in-flight connections finish).
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace_period: Duration,
    /// Revoke the leases when the agent stops (for jobs), after the grace period.
    #[serde(default)]
    pub revoke_on_shutdown: bool,
    /// How often each lease is looked up between renewals, so that one revoked in pgwarden
    /// is replaced within this time rather than at its next renewal; zero: only at renewals.
    #[serde(default = "default_check_interval", deserialize_with = "duration")]
    pub check_interval: Duration,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8210".parse().expect("a valid address")
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_check_interval() -> Duration {
    pgwarden_client::CHECK_INTERVAL
}

/// A duration in the broker's grammar ([`Ttl`]: seconds, `30s`, `5m`, `1h30m`, …).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ttl::deserialize(d).map(Ttl::as_duration)
}

/// How the agent logs in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum AuthConfig {
    /// Kubernetes service-account login.
    Kubernetes {
        /// The login role.
        role: String,
        /// The projected token, re-read at every login.
        #[serde(default = "default_token_file")]
        token_file: PathBuf,
        /// The auth mount.
        #[serde(default = "default_mount")]
        mount: String,
    },
    /// A pgwarden token read from a file.
    Token {
        /// The file holding it.
        token_file: PathBuf,
    },
}

fn default_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

fn default_mount() -> String {
    "kubernetes".into()
}

/// One credential and its files: issued by pgwarden (`path`) or an RDS IAM token (`rds`),
/// exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The credential path: a dynamic role's, e.g. `database/creds/appdb-user`, or a static
    /// role's, e.g. `database/static-creds/appdb-legacy`.
    #[serde(default)]
    pub path: Option<String>,
    /// An RDS IAM auth token made here from the AWS credential chain.
    #[serde(default)]
    pub rds: Option<RdsConfig>,
    /// Where to write it.
    pub files: Vec<FileConfig>,
    /// What to do when it changes.
    #[serde(default)]
    pub on_change: Option<OnChange>,
}

/// An RDS IAM auth token for one database user: the agent signs it with the AWS credentials of
/// the usual chain (environment, web identity, shared-file profiles) and writes it as the
/// password, with the user, host, port and database, in every file format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdsConfig {
    /// The database endpoint's host name (instance, cluster or proxy endpoint).
    pub hostname: String,
    /// The database port (5432 by default).
    #[serde(default = "default_rds_port")]
    pub port: u16,
    /// The database user, granted `rds_iam`.
    pub username: String,
    /// The database's AWS region.
    pub region: String,
    /// The database name written to the files (for the `url` and `env` formats); empty if unset.
    #[serde(default)]
    pub database: Option<String>,
    /// The profile of the shared AWS files, as `aws --profile` (it wins over the environment).
    #[serde(default)]
    pub profile: Option<String>,
    /// How often a new token is made (10 minutes by default; tokens live 15).
    #[serde(default = "default_rds_refresh", deserialize_with = "duration")]
    pub refresh: Duration,
}

fn default_rds_port() -> u16 {
    5432
}

fn default_rds_refresh() -> Duration {
    Duration::from_secs(600)
}

impl RdsConfig {
    /// The name of this credential in logs, `/readyz` and errors: `rds:<user>@<host>:<port>`.
    pub fn name(&self) -> String {
        format!("rds:{}@{}:{}", self.username, self.hostname, self.port)
    }
}

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Issued by pgwarden at the delivery's path.
    Broker,
    /// A static role's password, read from pgwarden at the delivery's path
    /// (`<mount>/static-creds/<name>`) and read again after each rotation.
    Static,
    /// An RDS IAM auth token made by the agent.
    Rds(RdsConfig),
}

impl Source {
    /// Whether the credential is read from pgwarden (so the agent needs its address and a
    /// login).
    pub fn from_pgwarden(&self) -> bool {
        matches!(self, Source::Broker | Source::Static)
    }
}

/// Whether `path` names a static role's credential (`<mount>/static-creds/<name>`).
fn is_static_path(path: &str) -> bool {
    matches!(path.split('/').collect::<Vec<_>>().as_slice(), [_, "static-creds", name] if !name.is_empty())
}

/// One output file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to write (mode 0600, replaced atomically).
    pub path: PathBuf,
    /// A built-in format…
    #[serde(default)]
    pub format: Option<Format>,
    /// …or a template file with `{{username}}`, `{{password}}`, `{{host}}`, `{{port}}`,
    /// `{{database}}`, `{{lease_id}}`.
    #[serde(default)]
    pub template: Option<PathBuf>,
}

/// A credential ready to deliver: its files with their contents' form, and its action.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The credential path, e.g. `database/creds/appdb-user`, or for an RDS token its name
    /// `rds:<user>@<host>:<port>`.
    pub path: String,
    /// Where the credential comes from.
    pub source: Source,
    /// Where to write it (at least one).
    pub files: Vec<OutputFile>,
    /// What to do when it changes.
    pub on_change: Option<Action>,
}

impl Delivery {
    /// Where the lease of a credential from pgwarden is recorded: beside its first file.
    pub fn state_file(&self) -> std::path::PathBuf {
        let first = self
            .files
            .first()
            .map_or(Path::new("."), |f| f.path.as_path());
        crate::files::state_path(first, &self.path)
    }
}

/// Where `file` is, spelled one way whatever way it was written: its existing directory as
/// the file system resolves it (symbolic links, then `..`), else absolute without `.` or `..`.
fn place(file: &Path) -> PathBuf {
    let absolute = std::env::current_dir().unwrap_or_default().join(file);
    if let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name())
        && let Ok(dir) = dir.canonicalize()
    {
        return dir.join(name);
    }
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    lexical
}

/// The configuration checked and resolved once: templates read, signals parsed.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The configuration as written.
    pub config: AgentConfig,
    /// One per configured credential, in order.
    pub deliveries: Vec<Delivery>,
}

impl AgentConfig {
    /// Reads, checks and resolves the configuration file.
    pub fn load(path: &Path) -> Result<Agent, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read agent config {}: {e}", path.display()))?;
        let config: AgentConfig = serde_saphyr::from_str(&text)
            .map_err(|e| format!("agent config {}: {e}", path.display()))?;
        config
            .resolve()
            .map_err(|e| format!("agent config {}: {e}", path.display()))
    }

    /// Checks what parsing cannot: formats, templates, signals, commands.
    pub fn check(&self) -> Result<(), String> {
        self.resolve().map(drop)
    }

    /// Checks the configuration and reads what it refers to, once.
    pub fn resolve(&self) -> Result<Agent, String> {
        if self.credentials.is_empty() {
            return Err("credentials: list at least one".into());
        }
        let deliveries: Vec<Delivery> = self
            .credentials
            .iter()
            .enumerate()
            .map(|(index, credential)| credential.resolve(index))
            .collect::<Result<_, _>>()?;
        if deliveries.iter().any(|d| d.source.from_pgwarden())
            && (self.address.is_none() || self.auth.is_none())
        {
            return Err("address and auth: required when a credential has a path".into());
        }
        // Two leases recorded in one file would each be adopted as the other's.
        let leased: Vec<&Delivery> = deliveries
            .iter()
            .filter(|d| d.source == Source::Broker)
            .collect();
        let places: Vec<_> = leased.iter().map(|d| place(&d.state_file())).collect();
        for (at, delivery) in leased.iter().enumerate() {
            let state = delivery.state_file();
            if let Some(other) = (0..at)
                .find(|&o| places[o] == places[at])
                .map(|o| leased[o])
            {
                return Err(format!(
                    "credentials {:?} and {:?} would record their leases in the same file {}: \
                     write their files to different directories",
                    other.path,
                    delivery.path,
                    state.display()
                ));
            }
        }
        Ok(Agent {
            config: self.clone(),
            deliveries,
        })
    }
}

impl CredentialConfig {
    fn resolve(&self, index: usize) -> Result<Delivery, String> {
        let (path, source) = match (&self.path, &self.rds) {
            (Some(path), None) if is_static_path(path) => (path.clone(), Source::Static),
            (Some(path), None) => (path.clone(), Source::Broker),
            (None, Some(rds)) => {
                if rds.refresh.is_zero()
                    || rds.refresh.as_secs() >= pgwarden_aws::TOKEN_LIFETIME_SECONDS
                {
                    return Err(format!(
                        "credential {:?}: rds.refresh must be more than 0 and less than the token's {} seconds",
                        rds.name(),
                        pgwarden_aws::TOKEN_LIFETIME_SECONDS
                    ));
                }
                (rds.name(), Source::Rds(rds.clone()))
            }
            _ => {
                return Err(format!(
                    "credentials[{index}]: set exactly one of path or rds"
                ));
            }
        };
        if self.files.is_empty() {
            return Err(format!("credential {path:?}: list at least one file"));
        }
        Ok(Delivery {
            source,
            files: self
                .files
                .iter()
                .map(FileConfig::resolve)
                .collect::<Result<_, _>>()?,
            on_change: self
                .on_change
                .as_ref()
                .map(|action| action.resolve(&path))
                .transpose()?,
            path,
        })
    }
}

impl FileConfig {
    fn resolve(&self) -> Result<OutputFile, String> {
        let output = match (self.format, &self.template) {
            (Some(format), None) => Output::Format(format),
            (None, Some(template)) => Output::Template(Template::load(template)?),
            _ => {
                return Err(format!(
                    "file {}: set exactly one of format or template",
                    self.path.display()
                ));
            }
        };
        Ok(OutputFile {
            path: self.path.clone(),
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AgentConfig, String> {
        let config: AgentConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    #[test]
    fn reads_the_documented_shape_with_defaults() {
        let config = parse(
            r#"
address: "http://127.0.0.1:8200"
auth: { kubernetes: { role: team-a } }
credentials:
  - path: database/creds/appdb-user
    files:
      - { path: /pgwarden/appdb.env, format: env }
    on_change: { signal: { pid_file: /run/app.pid, signal: SIGHUP } }
"#,
        )
        .unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.grace_period, Duration::from_secs(30));
        assert_eq!(config.check_interval, Duration::from_secs(300));
        assert!(!config.revoke_on_shutdown);
        assert!(
            matches!(config.auth, Some(AuthConfig::Kubernetes { ref mount, ref token_file, .. })
            if mount == "kubernetes" && token_file == &default_token_file())
        );
        let with_token = parse(
            "address: x\nauth: { token: { token_file: /t } }\ngrace_period: 2m\ncheck_interval: 0\ncredentials:\n  - { path: p, files: [{ path: /f, format: url }], on_change: { command: [/bin/true] } }\n",
        )
        .unwrap();
        assert_eq!(with_token.grace_period, Duration::from_secs(120));
        assert_eq!(with_token.check_interval, Duration::ZERO, "checks off");
    }

    #[test]
    fn a_state_file_reached_through_a_symbolic_link_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(real.join("sub"), dir.path().join("deep")).unwrap();
        // link/b is real/b; deep/../b is real/sub/.. = real/b too (.. after the link).
        for (one, other) in [("real/a", "link/b"), ("real/a", "deep/../b")] {
            let yaml = format!(
                "address: x\nauth: {{ token: {{ token_file: /t }} }}\ncredentials:\n  \
                 - {{ path: db/creds/a, files: [{{ path: {d}/{one}, format: env }}] }}\n  \
                 - {{ path: db/creds/a, files: [{{ path: {d}/{other}, format: env }}] }}\n",
                d = dir.path().display()
            );
            let error = parse(&yaml).unwrap_err();
            assert!(
                error.contains("would record their leases in the same file"),
                "{other}: {error}"
            );
        }
    }

    #[test]
    fn check_names_what_to_fix() {
        let base = "address: x\nauth: { token: { token_file: /t } }\n";
        let cases = [
            ("credentials: []\n", "credentials: list at least one"),
            (
                "credentials:\n  - { path: p, files: [] }\n",
                "credential \"p\": list at least one file",
            ),
            (
                "credentials:\n  - { path: p, files: [{ path: /f }] }\n",
                "file /f: set exactly one of format or template",
            ),
            (
                "credentials:\n  - { path: p, files: [{ path: /f, format: env }], on_change: { signal: { pid_file: /p, signal: SIGWHAT } } }\n",
                "unknown signal \"SIGWHAT\"",
            ),
            (
                "credentials:\n  - { path: p, files: [{ path: /f, format: env }], on_change: { command: [] } }\n",
                "credential \"p\": on_change.command is empty",
            ),
            (
                "credentials:\n  - { path: db/creds/app-db, files: [{ path: /x/a, format: env }] }\n  - { path: db/creds/app_db, files: [{ path: /x/b, format: env }] }\n",
                "credentials \"db/creds/app-db\" and \"db/creds/app_db\" would record their leases in the same file /x/.pgwarden-lease-db_creds_app_db.json: write their files to different directories",
            ),
            (
                "credentials:\n  - { path: db/creds/a, files: [{ path: /x/y/../a, format: env }] }\n  - { path: db/creds/a, files: [{ path: /x/./b, format: env }] }\n",
                "credentials \"db/creds/a\" and \"db/creds/a\" would record their leases in the same file /x/.pgwarden-lease-db_creds_a.json: write their files to different directories",
            ),
        ];
        for (yaml, message) in cases {
            assert_eq!(
                parse(&format!("{base}{yaml}")).unwrap_err(),
                message,
                "{yaml}"
            );
        }
        let err = parse(&format!("{base}grace_period: soon\ncredentials: []\n")).unwrap_err();
        assert!(err.contains("invalid TTL \"soon\""), "{err}");
    }

    #[test]
    fn reads_rds_credentials_beside_broker_ones() {
        let yaml = r#"
address: "http://127.0.0.1:8200"
auth: { token: { token_file: /t } }
credentials:
  - path: database/creds/appdb-user
    files: [{ path: /pgwarden/appdb.env, format: env }]
  - rds: { hostname: db.abc.eu-west-1.rds.amazonaws.com, username: app_iam, region: eu-west-1, database: appdb }
    files: [{ path: /pgwarden/rds.url, format: url }]
    on_change: { command: [/bin/reload] }
  - rds: { hostname: h, port: 6432, username: u, region: us-east-1, profile: prod, refresh: 2s }
    files: [{ path: /pgwarden/rds.env, format: env }]
"#;
        let config = parse(yaml).unwrap();
        let agent = config.resolve().unwrap();
        assert_eq!(agent.deliveries[0].source, Source::Broker);
        assert_eq!(agent.deliveries[0].path, "database/creds/appdb-user");
        let Source::Rds(first) = &agent.deliveries[1].source else {
            panic!("an rds credential")
        };
        assert_eq!(
            first,
            &RdsConfig {
                hostname: "db.abc.eu-west-1.rds.amazonaws.com".into(),
                port: 5432,
                username: "app_iam".into(),
                region: "eu-west-1".into(),
                database: Some("appdb".into()),
                profile: None,
                refresh: Duration::from_secs(600),
            }
        );
        assert_eq!(
            agent.deliveries[1].path,
            "rds:app_iam@db.abc.eu-west-1.rds.amazonaws.com:5432"
        );
        assert!(agent.deliveries[1].on_change.is_some());
        let Source::Rds(second) = &agent.deliveries[2].source else {
            panic!("an rds credential")
        };
        assert_eq!(
            (second.port, second.profile.as_deref(), second.refresh),
            (6432, Some("prod"), Duration::from_secs(2))
        );
        assert_eq!(second.database, None);

        // Only RDS tokens: no broker, so no address or auth.
        let only_rds = parse(
            "credentials:\n  - { rds: { hostname: h, username: u, region: r }, files: [{ path: /f, format: env }] }\n",
        )
        .unwrap();
        assert!(only_rds.address.is_none() && only_rds.auth.is_none());
    }

    #[test]
    fn a_credential_has_exactly_one_source() {
        let base = "address: x\nauth: { token: { token_file: /t } }\ncredentials:\n  - { path: p, files: [{ path: /f, format: env }] }\n";
        let rds = "rds: { hostname: h, username: u, region: r }";
        let cases = [
            (
                format!("{base}  - {{ files: [{{ path: /g, format: env }}] }}\n"),
                "credentials[1]: set exactly one of path or rds",
            ),
            (
                format!("{base}  - {{ path: q, {rds}, files: [{{ path: /g, format: env }}] }}\n"),
                "credentials[1]: set exactly one of path or rds",
            ),
            (
                format!("credentials:\n  - {{ {rds}, files: [] }}\n"),
                "credential \"rds:u@h:5432\": list at least one file",
            ),
            (
                "credentials:\n  - { path: p, files: [{ path: /f, format: env }] }\n".to_string(),
                "address and auth: required when a credential has a path",
            ),
            (
                "address: x\ncredentials:\n  - { path: p, files: [{ path: /f, format: env }] }\n"
                    .to_string(),
                "address and auth: required when a credential has a path",
            ),
            (
                "credentials:\n  - { rds: { hostname: h, username: u, region: r, refresh: 15m }, files: [{ path: /f, format: env }] }\n"
                    .to_string(),
                "credential \"rds:u@h:5432\": rds.refresh must be more than 0 and less than the token's 900 seconds",
            ),
        ];
        for (yaml, message) in cases {
            assert_eq!(parse(&yaml).unwrap_err(), message, "{yaml}");
        }
        let err = parse("credentials:\n  - { rds: { hostname: h, region: r }, files: [{ path: /f, format: env }] }\n").unwrap_err();
        assert!(err.contains("username"), "{err}");
    }
}
