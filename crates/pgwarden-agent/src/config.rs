//! The agent's YAML configuration.

use crate::files::Template;
use serde::Deserialize;
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
    #[serde(default = "default_grace", with = "seconds")]
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

/// Durations as integer seconds or `30s`, `5m`, `1h`.
mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Secs(secs) => return Ok(Duration::from_secs(secs)),
            Raw::Text(text) => text,
        };
        let (number, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        let n: u64 = number
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {text:?}")))?;
        let scale = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "invalid duration {text:?}: use 30s, 5m or 1h"
                )));
            }
        };
        Ok(Duration::from_secs(n * scale))
    }
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

/// Built-in file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `PGUSER=… PGPASSWORD=… PGHOST=… PGPORT=… PGDATABASE=…`, one per line.
    Env,
    /// A JSON object.
    Json,
    /// libpq's `.pgpass` line.
    Pgpass,
    /// `postgresql://user:pass@host:port/db`.
    Url,
}

/// What to do when a credential changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OnChange {
    /// Send a signal to the process whose pid is in a file.
    Signal {
        /// The pid file.
        pid_file: PathBuf,
        /// The signal's name, e.g. `SIGHUP`.
        signal: String,
    },
    /// Run a command (argv).
    Command(Vec<String>),
}

impl AgentConfig {
    /// Reads and checks the configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read agent config {}: {e}", path.display()))?;
        let config: AgentConfig = serde_saphyr::from_str(&text)
            .map_err(|e| format!("agent config {}: {e}", path.display()))?;
        config
            .check()
            .map_err(|e| format!("agent config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks what parsing cannot: formats, templates, signals, commands.
    pub fn check(&self) -> Result<(), String> {
        if self.credentials.is_empty() {
            return Err("credentials: list at least one".into());
        }
        for credential in &self.credentials {
            if credential.files.is_empty() {
                return Err(format!(
                    "credential {:?}: list at least one file",
                    credential.path
                ));
            }
            for file in &credential.files {
                match (&file.format, &file.template) {
                    (Some(_), None) => {}
                    (None, Some(template)) => {
                        Template::load(template)?;
                    }
                    _ => {
                        return Err(format!(
                            "file {}: set exactly one of format or template",
                            file.path.display()
                        ));
                    }
                }
            }
            match &credential.on_change {
                Some(OnChange::Signal { signal, .. }) => {
                    crate::on_change::parse_signal(signal)?;
                }
                Some(OnChange::Command(argv)) if argv.is_empty() => {
                    return Err(format!(
                        "credential {:?}: on_change.command is empty",
                        credential.path
                    ));
                }
                _ => {}
            }
        }
        Ok(())
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
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }
}
