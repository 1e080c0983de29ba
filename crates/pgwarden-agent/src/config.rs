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
    /// pgwarden's address.
    pub address: String,
    /// How to log in.
    pub auth: AuthConfig,
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
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8210".parse().expect("a valid address")
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
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

/// One credential and its files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The credential path, e.g. `database/creds/appdb-user`.
    pub path: String,
    /// Where to write it.
    pub files: Vec<FileConfig>,
    /// What to do when it changes.
    #[serde(default)]
    pub on_change: Option<OnChange>,
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
    /// The credential path, e.g. `database/creds/appdb-user`.
    pub path: String,
    /// Where to write it (at least one).
    pub files: Vec<OutputFile>,
    /// What to do when it changes.
    pub on_change: Option<Action>,
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
        let deliveries = self
            .credentials
            .iter()
            .map(CredentialConfig::resolve)
            .collect::<Result<_, _>>()?;
        Ok(Agent {
            config: self.clone(),
            deliveries,
        })
    }
}

impl CredentialConfig {
    fn resolve(&self) -> Result<Delivery, String> {
        if self.files.is_empty() {
            return Err(format!(
                "credential {:?}: list at least one file",
                self.path
            ));
        }
        Ok(Delivery {
            path: self.path.clone(),
            files: self
                .files
                .iter()
                .map(FileConfig::resolve)
                .collect::<Result<_, _>>()?,
            on_change: self
                .on_change
                .as_ref()
                .map(|action| action.resolve(&self.path))
                .transpose()?,
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
        assert!(!config.revoke_on_shutdown);
        assert!(
            matches!(config.auth, AuthConfig::Kubernetes { ref mount, ref token_file, .. }
            if mount == "kubernetes" && token_file == &default_token_file())
        );
        let with_token = parse(
            "address: x\nauth: { token: { token_file: /t } }\ngrace_period: 2m\ncredentials:\n  - { path: p, files: [{ path: /f, format: url }], on_change: { command: [/bin/true] } }\n",
        )
        .unwrap();
        assert_eq!(with_token.grace_period, Duration::from_secs(120));
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
}
